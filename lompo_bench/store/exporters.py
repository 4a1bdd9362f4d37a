"""Export a store to the formats other tools read as they are.

| format       | written                         | read by                                                  |
| ------------ | ------------------------------- | -------------------------------------------------------- |
| `npz`/`hdf5` | one file of D4RL's flat keys     | ``np.load`` / ``h5py``, D4RL's ``qlearning_dataset``     |
| `minari`     | a local Minari dataset           | ``minari.load_dataset(id)`` (minari 0.5)                 |
| `vd4rl-npz`  | a folder, one npz per episode    | V-D4RL's Offline DV2 loader (64 px)                      |
| `vd4rl-hdf5` | a folder of hdf5 shards          | V-D4RL's DrQ+BC loader (84 px, channel-first)            |
| `d3rlpy`     | one npz of MDPDataset's arrays   | ``d3rlpy.dataset.MDPDataset(**np.load(f))`` (d3rlpy 2.x) |

**D4RL**, one row per transition (row t-1 -> row t of an episode, in episode order):
``observations`` (the images), ``actions``, ``rewards``, ``terminals``, ``timeouts``
(the episode's last transition, cut by the time limit rather than ended by the task), plus
``next_observations`` as ``d4rl.qlearning_dataset`` returns it, so the last observation of
every episode survives. Where the store has them: ``proprio``/``next_proprio`` and
``infos/state``, ``infos/physics`` (D4RL keeps simulator state under ``infos/``).

**Minari**: Dict observations ``image`` [+ ``proprio``] [+ ``state``], images stored raw
(lossless) unless ``jpeg=True`` asks for Minari's JPEG encoding (lossy, ~8x smaller). The
env spec names ``lompo_bench.envs:make`` with the dataset's env and image size, so
``recover_environment()`` rebuilds the env with lompo-bench installed (no gymnasium
registration needed: gymnasium makes an env from a spec's entry point).

**V-D4RL** (its row convention is ours: row 0 of an episode is the reset, with a zero
action): ``vd4rl-npz`` writes ``<stamp>-<episode>-<rows>.npz`` files (the names sort in
episode order and end in the row count, as its loader parses) with ``image`` (T+1, 64, 64, 3)
uint8, ``action``, ``reward``, ``discount`` (0 on a terminal row, else 1), ``is_first``,
``is_last``, ``is_terminal``. ``vd4rl-hdf5`` writes shards ``000000.hdf5`` ... of whole
episodes, one row per step: ``observation`` (N, 3, 84, 84) uint8, ``action``, ``reward``,
``discount``, ``step_type`` (0 first, 1 mid, 2 last). Stores at another image size are
re-rendered from their physics states first (``collectors.rerender``).

**d3rlpy** (``MDPDataset(observations, actions, rewards, terminals, timeouts)``): row i is
(o_t, a_t, r_{t+1}); images channel-first (N, 3, H, W) uint8. An episode cut by the time
limit keeps all T+1 observations: its last row holds o_T with a zero action and
``timeouts = 1``, which d3rlpy reads as the next observation of the last real transition
(it takes no transition from that row). An episode ended by the task has T rows, the last
with ``terminals = 1``. Images only: ``proprio`` (D'Claw, Adroit) is left out, and said so.

Every output is written to a temporary name beside the target and renamed when whole, so a
failure or a kill leaves the previous output (or nothing) in place, never a partial one.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import shutil
import tempfile
import uuid
import zipfile
from pathlib import Path

import numpy as np

from ..errors import UserError, choice_error
from .reader import Dataset

FORMATS = ("npz", "hdf5", "minari", "vd4rl-npz", "vd4rl-hdf5", "d3rlpy")
FOLDER_FORMATS = ("vd4rl-npz", "vd4rl-hdf5")
_SUFFIX = {"npz": ".npz", "hdf5": ".hdf5", "d3rlpy": ".d3rlpy.npz", "vd4rl-npz": "-vd4rl-npz", "vd4rl-hdf5": "-vd4rl-hdf5"}
VD4RL_IMAGE_SIZE = {"vd4rl-npz": 64, "vd4rl-hdf5": 84}  # Offline DV2's and DrQ+BC's native sizes
VD4RL_SHARD_EPISODES = 100
MINARI_EXTRA = "pip install 'lompo-bench[minari]'"


# -- targets ------------------------------------------------------------------------------
def check_target(out: Path, overwrite: bool, *, folder: bool, what: str = "--out") -> Path:
    """Refuse, in one line and before anything is written, a target that cannot be written:
    a parent that is a file, a file where a folder goes (or the reverse), an existing
    output without ``overwrite``, a place without write permission. Returns ``out``."""
    out = Path(out).expanduser()
    for parent in out.parents:
        if parent.exists():
            if not parent.is_dir():
                raise UserError(f"{what} {out}: {parent} is a file, not a folder; choose an --out inside a folder")
            if not os.access(parent, os.W_OK | os.X_OK):
                raise UserError(f"{what} {out}: cannot write to {parent} (permission denied); choose a writable --out")
            break
    if out.exists() or out.is_symlink():
        if folder and not out.is_dir():
            raise UserError(f"{what} {out} is an existing file; this format writes a folder: choose another --out")
        if not folder and out.is_dir():
            raise UserError(f"{what} {out} is an existing folder; this format writes a file: choose another --out")
        if not overwrite:
            raise UserError(f"{out} exists; pass --overwrite to replace it or choose another --out")
    return out


@contextlib.contextmanager
def atomic_target(out: Path):
    """Yield a temporary path beside ``out``; on success it replaces ``out`` (file or folder),
    on any failure it is removed and ``out`` is left as it was. OS errors become one line."""
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(f".{out.name}.partial-{uuid.uuid4().hex[:8]}")
    except OSError as exc:
        raise UserError(f"cannot write {out}: {exc.strerror or exc}") from None
    try:
        yield tmp
        if out.is_dir() and not out.is_symlink():
            old = out.with_name(f".{out.name}.old-{uuid.uuid4().hex[:8]}")
            os.replace(out, old)
            os.replace(tmp, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out)
    except OSError as exc:
        raise UserError(f"cannot write {out}: {exc.strerror or exc}") from None
    finally:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        elif tmp.exists():
            tmp.unlink()


def require(module: str, message: str) -> None:
    """A one-line ``UserError(message)`` when ``module`` cannot be imported (missing or broken)."""
    try:
        importlib.import_module(module)
    except ImportError:
        raise UserError(message) from None


# -- the one entry point -----------------------------------------------------------------
def export(path, format: str, out=None, *, overwrite: bool = False, jpeg: bool = False,
           image_size: int | None = None, say=None, progress: bool = False) -> Path:
    """Write the store at ``path`` as ``format`` (see the module docstring); returns what was
    written. ``jpeg``: Minari's lossy image encoding. ``image_size``: V-D4RL frame size
    (default 64 for ``vd4rl-npz``, 84 for ``vd4rl-hdf5``). ``say(line)`` receives notes."""
    say = say or (lambda line: None)
    if format not in FORMATS:
        raise choice_error("export format", format, FORMATS)
    if jpeg and format != "minari":
        raise UserError("--jpeg applies to --format minari only (Minari's lossy image encoding)")
    if image_size is not None and format not in FOLDER_FORMATS:
        raise UserError("--image-size applies to --format vd4rl-npz / vd4rl-hdf5 only; for other sizes run "
                        "`lompo-bench datasets rerender` first")
    if format in ("hdf5", "vd4rl-hdf5"):
        require("h5py", "HDF5 export needs h5py, which is not installed: pip install 'lompo-bench[export]'")
    ds = Dataset.open(path, cache_bytes=256 << 20)
    if format == "minari":
        return _export_minari(ds, out, overwrite, jpeg, say)
    if out is None and not isinstance(ds.path, Path):
        raise UserError(f"{ds.path} is a remote store, so there is no folder next to it to write to; pass --out")
    out = Path(out) if out else Path(str(ds.path).removesuffix(".zarr") + _SUFFIX[format])
    out = check_target(out, overwrite, folder=format in FOLDER_FORMATS)
    if "image" not in ds.keys:
        raise UserError(f"{ds.path} has no images (collected with render=False); render them first, then export")
    if format in FOLDER_FORMATS:
        return _export_vd4rl(ds, format, out, image_size or VD4RL_IMAGE_SIZE[format], say, progress)
    with atomic_target(out) as tmp:
        {"npz": _write_npz, "hdf5": _write_hdf5, "d3rlpy": _write_d3rlpy}[format](ds, tmp)
    if format == "d3rlpy" and "proprio" in ds.keys:
        say("d3rlpy arrays hold the images only (one pixel observation, as its image encoders take); "
            "proprio is left out: use --format npz for it")
    return out


# -- D4RL ---------------------------------------------------------------------------------
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
    return cols


def _episode_columns(ds: Dataset, e: int, cols) -> dict[str, np.ndarray]:
    ep = ds.episode(e, keys=sorted({k for k, _ in cols.values()} | {"is_terminal"}))
    out = {name: ep[key][:-1] if side == "prev" else ep[key][1:] for name, (key, side) in cols.items()}
    if "timeouts" in out:
        out["timeouts"] = out["timeouts"] & ~ep["is_terminal"][1:]
    return out


def _shapes(ds: Dataset, cols) -> dict[str, tuple[tuple, np.dtype]]:
    n = ds.num_transitions
    return {name: ((n,) + ds.shape(key)[1:], ds.reader(key).dtype) for name, (key, _) in cols.items()}


def _stream_npz(tmp: Path, members: dict[str, tuple[tuple, np.dtype]], chunks):
    """A standard ``.npz`` (``np.load`` reads it) whose members are streamed:
    ``chunks(name)`` yields the member's rows in order, so memory stays bounded."""
    with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
        for name, (shape, dtype) in members.items():
            with zf.open(name + ".npy", "w", force_zip64=True) as f:
                np.lib.format.write_array_header_2_0(
                    f, {"descr": np.lib.format.dtype_to_descr(np.dtype(dtype)), "fortran_order": False, "shape": shape})
                for part in chunks(name):
                    f.write(np.ascontiguousarray(part, dtype=dtype).tobytes())


def _write_npz(ds: Dataset, tmp: Path):
    cols = _columns(ds)
    _stream_npz(tmp, _shapes(ds, cols),
                lambda name: (_episode_columns(ds, e, {name: cols[name]})[name] for e in range(ds.num_episodes)))


def _write_hdf5(ds: Dataset, tmp: Path):
    import h5py

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


# -- d3rlpy -------------------------------------------------------------------------------
def d3rlpy_episode(ep: dict) -> dict[str, np.ndarray]:
    """One episode of the store as MDPDataset rows (see the module docstring)."""
    terminated = bool(ep["is_terminal"][-1])
    n = len(ep["reward"]) - 1 if terminated else len(ep["reward"])
    actions = np.zeros((n,) + ep["action"].shape[1:], np.float32)
    rewards = np.zeros(n, np.float32)
    steps = len(ep["reward"]) - 1
    actions[:steps] = ep["action"][1:]
    rewards[:steps] = ep["reward"][1:]
    terminals = np.zeros(n, np.float32)
    timeouts = np.zeros(n, np.float32)
    (terminals if terminated else timeouts)[-1] = 1.0
    return {"observations": ep["image"][:n].transpose(0, 3, 1, 2), "actions": actions, "rewards": rewards,
            "terminals": terminals, "timeouts": timeouts}


def _write_d3rlpy(ds: Dataset, tmp: Path):
    lengths = ds.episode_ends - ds.episode_starts
    terminated = np.array([bool(ds.read("is_terminal", int(hi) - 1, int(hi))[0]) for hi in ds.episode_ends], bool)
    n = int(lengths.sum() - terminated.sum())
    h, w, c = ds.shape("image")[1:]
    members = {"observations": ((n, c, h, w), np.uint8), "actions": ((n,) + ds.shape("action")[1:], np.float32),
               "rewards": ((n,), np.float32), "terminals": ((n,), np.float32), "timeouts": ((n,), np.float32)}
    _stream_npz(tmp, members, lambda name: (d3rlpy_episode(ds.episode(e))[name] for e in range(ds.num_episodes)))


# -- V-D4RL -------------------------------------------------------------------------------
def vd4rl_npz_episode(ep: dict) -> dict[str, np.ndarray]:
    """One episode in Offline DV2's npz layout (same rows as the store)."""
    terminal = ep["is_terminal"].astype(bool)
    return {"image": ep["image"], "action": ep["action"].astype(np.float32), "reward": ep["reward"].astype(np.float32),
            "discount": (1.0 - terminal).astype(np.float32), "is_first": ep["is_first"].astype(bool),
            "is_last": ep["is_last"].astype(bool), "is_terminal": terminal}


def vd4rl_step_types(rows: int) -> np.ndarray:
    step_type = np.ones(rows, np.uint8)
    step_type[0], step_type[-1] = 0, 2
    return step_type


def _frames_at(ds: Dataset, size: int, workdir: Path, say, progress: bool) -> Dataset:
    """``ds`` itself when its frames are ``size`` px, else a re-rendered copy in ``workdir``."""
    have = ds.shape("image")[1]
    if have == size:
        return ds
    if "physics" not in ds.keys:
        raise UserError(f"{ds.path} has {have} px frames and no physics states to re-render them at {size} px; "
                        f"pass --image-size {have} to export them as they are")
    if not isinstance(ds.path, Path):
        raise UserError(f"{ds.path} is a remote store; re-rendering its {have} px frames at {size} px needs a local "
                        f"copy: export with --image-size {have}, or copy the store here first")
    from lompo_bench.collectors.rerender import rerender

    say(f"re-rendering {have} px -> {size} px frames from the stored physics states (lompo-bench datasets rerender)")
    return Dataset.open(rerender(ds.path, size, workdir / f"{size}px.zarr", progress=progress), cache_bytes=256 << 20)


def _export_vd4rl(ds: Dataset, format: str, out: Path, size: int, say, progress: bool) -> Path:
    from lompo_bench.envs import check_image_size

    size = check_image_size(size)
    with atomic_target(out) as tmp:
        tmp.mkdir()
        work = Path(tempfile.mkdtemp(prefix=".rerender-", dir=out.parent))
        try:
            src = _frames_at(ds, size, work, say, progress)
            (_write_vd4rl_npz if format == "vd4rl-npz" else _write_vd4rl_hdf5)(src, tmp)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    return out


def _write_vd4rl_npz(ds: Dataset, folder: Path):
    stamp = str(ds.attrs.get("finalized", "19700101T000000"))[:19].replace("-", "").replace(":", "")
    for e in range(ds.num_episodes):
        ep = vd4rl_npz_episode(ds.episode(e, keys=("image", "action", "reward", "is_first", "is_last", "is_terminal")))
        np.savez_compressed(folder / f"{stamp}-{e:06d}-{len(ep['reward'])}.npz", **ep)


def _write_vd4rl_hdf5(ds: Dataset, folder: Path):
    import h5py

    keys = ("image", "action", "reward", "is_terminal")
    for first in range(0, ds.num_episodes, VD4RL_SHARD_EPISODES):
        episodes = range(first, min(first + VD4RL_SHARD_EPISODES, ds.num_episodes))
        rows = int(ds.episode_ends[episodes[-1]] - ds.episode_starts[episodes[0]])
        h, w, c = ds.shape("image")[1:]
        with h5py.File(folder / f"{first // VD4RL_SHARD_EPISODES:06d}.hdf5", "w") as f:
            obs = f.create_dataset("observation", (rows, c, h, w), np.uint8, chunks=(min(rows, 32), c, h, w),
                                   compression="gzip")
            act = f.create_dataset("action", (rows,) + ds.shape("action")[1:], np.float32)
            rew, dis = (f.create_dataset(k, (rows,), np.float32) for k in ("reward", "discount"))
            step = f.create_dataset("step_type", (rows,), np.uint8)
            row = 0
            for e in episodes:
                ep = ds.episode(e, keys=keys)
                n = len(ep["reward"])
                obs[row:row + n] = ep["image"].transpose(0, 3, 1, 2)
                act[row:row + n] = ep["action"]
                rew[row:row + n] = ep["reward"]
                dis[row:row + n] = 1.0 - ep["is_terminal"]
                step[row:row + n] = vd4rl_step_types(n)
                row += n


# -- Minari -------------------------------------------------------------------------------
def minari_env_spec(ds: Dataset):
    """A gymnasium ``EnvSpec`` that rebuilds the dataset's env through ``lompo_bench.envs.make``
    (None for an env this version does not know, e.g. an imported dataset's foreign env)."""
    import gymnasium as gym

    from lompo_bench.envs import SPECS

    env = ds.attrs.get("env") or {}
    if env.get("name") not in SPECS or not env.get("image_size"):
        return None
    horizon = int(env.get("horizon") or SPECS[env["name"]].horizon)
    return gym.envs.registration.EnvSpec(
        id=f"lompo_bench/{env['name']}-v0", entry_point="lompo_bench.envs:make",
        kwargs={"name": env["name"], "image_size": int(env["image_size"])}, max_episode_steps=horizon,
        disable_env_checker=True)


def _export_minari(ds: Dataset, out, overwrite: bool, jpeg: bool, say) -> Path:
    """A local Minari dataset (minari 0.5: ``EpisodeBuffer`` + ``create_dataset_from_buffers``),
    built under a temporary Minari root beside the real one and moved in when whole."""
    require("minari", f"Minari export needs the minari package, which is not installed: {MINARI_EXTRA}")
    require("h5py", f"Minari export needs h5py (minari's HDF5 backend), which is not installed: {MINARI_EXTRA}")
    import gymnasium as gym
    import minari
    from minari.data_collector import EpisodeBuffer
    from minari.dataset.minari_dataset import parse_dataset_id

    dataset_id = str(out) if out else f"lompo-bench/{ds.env}-{ds.split}-v0"
    try:
        parse_dataset_id(dataset_id)
    except ValueError:
        raise UserError(f"--out {dataset_id!r} is not a Minari dataset id; accepted: [namespace/]name-v<version>, "
                        f"e.g. lompo-bench/walker-random-v0") from None
    root = check_target(_minari_root(), True, folder=True, what="Minari datasets folder (MINARI_DATASETS_PATH)")
    target = root / dataset_id
    check_target(target, overwrite, folder=True, what=f"Minari dataset {dataset_id!r} at")
    if "image" not in ds.keys:
        raise UserError(f"{ds.path} has no images (collected with render=False); render them first, then export")
    _remove_stale_partials(root)

    obs_keys = [k for k in ("image", "proprio", "state") if k in ds.keys]

    def box(key, low, high):
        return gym.spaces.Box(low, high, ds.shape(key)[1:], ds.reader(key).dtype)

    obs_space = gym.spaces.Dict({k: box(k, 0, 255) if k == "image" else box(k, -np.inf, np.inf) for k in obs_keys})

    def buffers():  # one episode in memory at a time: minari's storage iterates over what it is given
        for e in range(ds.num_episodes):
            ep = ds.episode(e, keys=obs_keys + ["action", "reward", "is_terminal", "is_last"])
            yield EpisodeBuffer(
                id=e, observations={k: ep[k] for k in obs_keys}, actions=ep["action"][1:], rewards=ep["reward"][1:],
                terminations=ep["is_terminal"][1:], truncations=ep["is_last"][1:] & ~ep["is_terminal"][1:], infos={})

    spec = minari_env_spec(ds)
    random_return, expert_return = ds.reference_returns
    refs = {"ref_min_score": random_return, "ref_max_score": expert_return} \
        if random_return is not None and expert_return is not None else {}
    from lompo_bench import __version__

    staging = root.parent / f".{root.name}.lompo-bench-partial-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    saved = os.environ.get("MINARI_DATASETS_PATH")
    try:
        os.environ["MINARI_DATASETS_PATH"] = str(staging)
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # minari warns about every optional field left out
            minari.create_dataset_from_buffers(
                dataset_id=dataset_id, buffer=buffers(), env=spec, observation_space=obs_space,
                action_space=box("action", -1.0, 1.0), jpeg_encoding=jpeg,
                algorithm_name=str(ds.attrs.get("collector", {}).get("algorithm")),
                requirements=[f"lompo-bench>={__version__}"] if spec is not None else None,
                description=f"lompo-bench {ds.env}/{ds.split}, exported from store {ds.checksum}"
                            + (" (images JPEG-encoded: lossy)" if jpeg else ""), **refs)
        os.environ["MINARI_DATASETS_PATH"] = str(root)
        _move_in(staging, root, dataset_id)
    except OSError as exc:
        raise UserError(f"cannot write Minari dataset {dataset_id!r} under {root}: {exc.strerror or exc}") from None
    finally:
        if saved is None:
            os.environ.pop("MINARI_DATASETS_PATH", None)
        else:
            os.environ["MINARI_DATASETS_PATH"] = saved
        shutil.rmtree(staging, ignore_errors=True)
    say(f"Minari dataset {dataset_id!r}: images " + ("JPEG-encoded (lossy)" if jpeg else "stored raw (lossless)")
        + ("" if spec else "; no env spec (this env is not one of lompo-bench's), so recover_environment() is unavailable"))
    return target


def _minari_root() -> Path:
    return Path(os.environ.get("MINARI_DATASETS_PATH") or Path.home() / ".minari" / "datasets").expanduser()


def _move_in(staging: Path, root: Path, dataset_id: str):
    """Move the finished dataset from the staging root into ``root`` (replacing the old one, if
    any, only now), with the namespace metadata files minari keeps along the path."""
    from minari.namespace import NAMESPACE_METADATA_FILENAME

    parts = Path(dataset_id).parts
    for depth in range(1, len(parts)):
        level = root.joinpath(*parts[:depth])
        level.mkdir(parents=True, exist_ok=True)
        meta = level / NAMESPACE_METADATA_FILENAME
        if not meta.exists():
            shutil.copyfile(staging.joinpath(*parts[:depth]) / NAMESPACE_METADATA_FILENAME, meta)
    target = root / dataset_id
    if target.exists():
        old = staging / ".replaced"
        os.replace(target, old)
    os.replace(staging / dataset_id, target)


def _remove_stale_partials(root: Path):
    """Staging roots left by killed exports (their process is gone)."""
    for stale in root.parent.glob(f".{root.name}.lompo-bench-partial-*"):
        try:
            pid = int(stale.name.rsplit("-", 2)[-2])
            os.kill(pid, 0)
        except ProcessLookupError:
            shutil.rmtree(stale, ignore_errors=True)
        except (ValueError, PermissionError):
            pass
