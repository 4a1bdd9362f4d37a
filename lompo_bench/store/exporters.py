"""Export a store to the flat formats other tools read: D4RL-style npz / HDF5, and Minari.

D4RL layout, one row per transition (row t-1 -> row t of an episode, in episode order):
``observations`` (the images), ``actions``, ``rewards``, ``terminals``, ``timeouts``
(the episode's last transition, cut by the time limit rather than ended by the task), plus
``next_observations`` as ``d4rl.qlearning_dataset`` returns it, so the last observation of
every episode survives. Where the store has them: ``proprio``/``next_proprio`` (D4RL has no
slot for a second observation part), and ``infos/state``, ``infos/physics`` as D4RL keeps
simulator state under ``infos/``. Both files are written episode by episode (bounded memory)
to a temporary name and renamed when whole.
"""

from __future__ import annotations

import importlib.util
import os
import zipfile
from pathlib import Path

import numpy as np

from ..errors import UserError, choice_error
from .reader import Dataset

FORMATS = ("npz", "hdf5", "minari")
_SUFFIX = {"npz": ".npz", "hdf5": ".hdf5"}


def _columns(ds: Dataset) -> dict[str, tuple[str, str]]:
    """Export key -> (store key, 'prev' rows t-1 | 'next' rows t)."""
    cols = {"observations": ("image", "prev"), "actions": ("action", "next"), "rewards": ("reward", "next"),
            "terminals": ("is_terminal", "next"), "timeouts": ("is_last", "next"),
            "next_observations": ("image", "next")}
    if "proprio" in ds.keys:
        cols.update(proprio=("proprio", "prev"), next_proprio=("proprio", "next"))
    for key in ("state", "physics"):
        if key in ds.keys:
            cols[f"infos/{key}"] = (key, "prev")
    if "image" not in ds.keys:
        raise UserError(f"{ds.path} has no images (collected with render=False); render them first, then export")
    return cols


def _episode_columns(ds: Dataset, e: int, cols) -> dict[str, np.ndarray]:
    ep = ds.episode(e, keys=sorted({k for k, _ in cols.values()}))
    out = {name: ep[key][:-1] if side == "prev" else ep[key][1:] for name, (key, side) in cols.items()}
    if "timeouts" in out:
        out["timeouts"] = out["timeouts"] & ~out["terminals"]
    return out


def export(path, format: str, out=None, *, overwrite: bool = False) -> Path:
    """Write the store at ``path`` as ``format`` (npz | hdf5 | minari); returns what was written."""
    if format not in FORMATS:
        raise choice_error("export format", format, FORMATS)
    ds = Dataset.open(path, cache_bytes=256 << 20)
    if format == "minari":
        return _export_minari(ds, out, overwrite)
    out = Path(out) if out else Path(str(ds.path).removesuffix(".zarr") + _SUFFIX[format])
    if out.exists() and not overwrite:
        raise UserError(f"{out} exists; pass --overwrite to replace it or choose another --out")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".partial")
    (_write_npz if format == "npz" else _write_hdf5)(ds, tmp)
    os.replace(tmp, out)
    return out


def _shapes(ds: Dataset, cols) -> dict[str, tuple[tuple, np.dtype]]:
    n = ds.num_transitions
    return {name: ((n,) + ds.shape(key)[1:], ds.reader(key).dtype) for name, (key, _) in cols.items()}


def _write_npz(ds: Dataset, tmp: Path):
    """A standard ``.npz`` (``np.load`` reads it), each member streamed episode by episode."""
    cols = _columns(ds)
    with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
        for name, (shape, dtype) in _shapes(ds, cols).items():
            with zf.open(name + ".npy", "w", force_zip64=True) as f:
                np.lib.format.write_array_header_2_0(
                    f, {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False, "shape": shape})
                for e in range(ds.num_episodes):
                    f.write(np.ascontiguousarray(_episode_columns(ds, e, {name: cols[name]} | _flag_deps(cols, name))[name]).tobytes())


def _flag_deps(cols, name):
    # timeouts need terminals to mask out task terminations
    return {"terminals": cols["terminals"]} if name == "timeouts" else {}


def _write_hdf5(ds: Dataset, tmp: Path):
    try:
        import h5py
    except ImportError:
        raise UserError("HDF5 export needs h5py: pip install 'lompo-bench[export]' (or pip install h5py)") from None
    cols = _columns(ds)
    with h5py.File(tmp, "w") as f:
        dsets = {}
        for name, (shape, dtype) in _shapes(ds, cols).items():
            chunks = (min(shape[0], 64),) + shape[1:]
            dsets[name] = f.create_dataset(name, shape=shape, dtype=dtype, chunks=chunks,
                                           compression="gzip" if len(shape) > 2 else None)
        row = 0
        for e in range(ds.num_episodes):
            ep = _episode_columns(ds, e, cols)
            n = len(ep["actions"])
            for name, value in ep.items():
                dsets[name][row:row + n] = value
            row += n
        f.attrs["env"] = ds.env or ""
        f.attrs["split"] = ds.split or ""
        f.attrs["source_checksum"] = ds.checksum or ""


def _export_minari(ds: Dataset, out, overwrite: bool) -> Path:
    """A local Minari dataset (minari >= 0.5 API: ``EpisodeBuffer`` + ``create_dataset_from_buffers``),
    Dict observations ``image`` [+ ``proprio``] + ``state``, spaces built from the store's shapes."""
    if importlib.util.find_spec("minari") is None:
        raise UserError("Minari export needs the minari package, which is not installed: pip install minari "
                        "(or use --format npz / hdf5)")
    import gymnasium as gym
    import minari
    from minari.data_collector import EpisodeBuffer

    dataset_id = str(out) if out else f"lompo-bench/{ds.env}-{ds.split}-v0"
    if dataset_id in minari.list_local_datasets():
        if not overwrite:
            raise UserError(f"Minari dataset {dataset_id!r} exists; pass --overwrite to replace it")
        minari.delete_dataset(dataset_id)
    obs_keys = [k for k in ("image", "proprio", "state") if k in ds.keys]

    def box(key, low, high):
        return gym.spaces.Box(low, high, ds.shape(key)[1:], ds.reader(key).dtype)

    obs_space = gym.spaces.Dict({k: box(k, 0, 255) if k == "image" else box(k, -np.inf, np.inf) for k in obs_keys})
    buffers = []
    for e in range(ds.num_episodes):
        ep = ds.episode(e)
        buffers.append(EpisodeBuffer(
            id=e, observations={k: ep[k] for k in obs_keys}, actions=ep["action"][1:], rewards=ep["reward"][1:],
            terminations=ep["is_terminal"][1:], truncations=ep["is_last"][1:] & ~ep["is_terminal"][1:], infos={}))
    minari.create_dataset_from_buffers(
        dataset_id=dataset_id, buffer=buffers, env=None, observation_space=obs_space,
        action_space=box("action", -1.0, 1.0), algorithm_name=str(ds.attrs.get("collector", {}).get("algorithm")),
        description=f"lompo-bench {ds.env}/{ds.split}, exported from store {ds.checksum}")
    return Path(minari.storage.get_dataset_path(dataset_id))
