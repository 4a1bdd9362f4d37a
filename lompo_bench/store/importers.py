"""Import episode datasets written by other tools into a verified store.

| format         | source                                              | written by                          |
| -------------- | --------------------------------------------------- | ----------------------------------- |
| `vd4rl-npz`    | a folder of npz files, one per episode              | V-D4RL (Offline DV2 layout, 64 px)  |
| `vd4rl-hdf5`   | a folder of hdf5 shards, one row per step           | V-D4RL (DrQ+BC layout, 84 px)       |
| `npz-episodes` | a folder of npz files, one per episode              | Dreamer-style code, LOMPO's authors |

All three use the store's row convention (DESIGN.md): an episode of T steps is T+1 rows, row
0 the reset observation with a zero action and zero reward, row t the observation after
action t with its reward. Files are read in sorted name order (the order V-D4RL's loaders
read them). Per format:

- ``vd4rl-npz``: ``image`` (T+1, H, W, 3) uint8, ``action``, ``reward``, ``discount``,
  ``is_first``, ``is_last``, ``is_terminal``, all required.
- ``npz-episodes``: ``image``, ``action``, ``reward`` required; ``is_first``/``is_last`` are
  derived (first and last row), ``is_terminal`` read where present, else ``discount == 0``
  where present, else never; ``state`` and ``proprio`` kept where present, other keys ignored.
- ``vd4rl-hdf5``: ``observation`` (N, 3, H, W) uint8, ``action``, ``reward``, ``discount``,
  ``step_type`` (0 first, 1 mid, 2 last). The sorted shards are one stream of rows (an
  episode may continue into the next shard, as ``split_hdf5_shards`` leaves them), split
  into episodes at each first step; a terminal is a last step with discount 0.

The store's ``env`` block is the lompo-bench env named on the command line at the data's
image size (its ``horizon`` the longest episode), so evaluation runs in our env. Reference
returns are given on the command line or left empty (the normalized score is then undefined:
``run`` reports raw returns). The store is written through ``DatasetWriter`` (resumable: a
killed import continues where it stopped when re-run) and verified before the command returns.
"""

from __future__ import annotations

import math
import shutil
import zipfile
from pathlib import Path

import numpy as np

from ..errors import UserError, choice_error
from .exporters import check_target, require

FORMATS = ("vd4rl-npz", "vd4rl-hdf5", "npz-episodes")
_NPZ_REQUIRED = {"vd4rl-npz": ("image", "action", "reward", "discount", "is_first", "is_last", "is_terminal"),
                 "npz-episodes": ("image", "action", "reward")}
_NPZ_KEPT = ("state", "proprio")
_HDF5_KEYS = ("observation", "action", "reward", "discount", "step_type")
_HDF5_BLOCK_ROWS = 2048


class SourceError(UserError):
    """The source data is unusable (as opposed to the target): nothing of it is kept."""


# -- sources ------------------------------------------------------------------------------
def _files(src: Path, suffix: str, format: str) -> list[Path]:
    if not src.exists():
        raise UserError(f"{src} does not exist; expected a folder of *{suffix} files ({format})")
    files = [src] if src.is_file() and src.suffix == suffix else sorted(src.glob(f"*{suffix}")) if src.is_dir() else []
    if not files:
        raise UserError(f"{src} holds no *{suffix} files; --format {format} reads a folder of them")
    return files


def _load_npz(path: Path) -> dict[str, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        raise SourceError(f"{path} cannot be read as npz ({exc})") from None


def _npz_episodes(files: list[Path], format: str, ignored: set):
    required = _NPZ_REQUIRED[format]
    for path in files:
        data = _load_npz(path)
        missing = [k for k in required if k not in data]
        if missing:
            raise SourceError(f"{path} lacks {', '.join(missing)}; --format {format} needs {', '.join(required)}")
        rows = len(data["reward"])
        ep = {"image": data["image"], "action": data["action"], "reward": data["reward"]}
        ep.update({k: data[k] for k in _NPZ_KEPT if k in data})
        ignored.update(set(data) - set(ep) - {"discount", "is_first", "is_last", "is_terminal"})
        if format == "vd4rl-npz":
            ep.update(is_first=data["is_first"], is_last=data["is_last"], is_terminal=data["is_terminal"])
            if np.any(data["is_terminal"].astype(bool) != (np.asarray(data["discount"]) == 0)):
                raise SourceError(f"{path}: is_terminal disagrees with discount == 0; V-D4RL's layout has them equal")
        else:
            ep.update(is_first=np.arange(rows) == 0, is_last=np.arange(rows) == rows - 1)
            ep["is_terminal"] = (data["is_terminal"] if "is_terminal" in data
                                 else np.asarray(data["discount"]) == 0 if "discount" in data else np.zeros(rows, bool))
        yield path.name, ep


def _hdf5_episodes(files: list[Path]):
    """Episodes of the shard stream, split at first steps (see the module docstring)."""
    import h5py

    current: list[dict] = []
    where = None

    def close(name):
        ep = {k: np.concatenate([block[k] for block in current]) for k in current[0]}
        step = ep.pop("step_type")
        if step[-1] != 2:
            raise SourceError(f"the episode starting at {where} ends at {name} without a last step (step_type 2); "
                              f"each episode must run from step_type 0 to 2")
        if np.any(step[1:-1] != 1):
            raise SourceError(f"the episode starting at {where} has a step_type other than 1 inside it")
        discount = ep.pop("discount")
        ep.update(image=ep.pop("observation").transpose(0, 2, 3, 1), is_first=step == 0, is_last=step == 2,
                  is_terminal=(step == 2) & (discount == 0))
        return ep

    for path in files:
        try:
            f = h5py.File(path, "r")
        except OSError as exc:
            raise SourceError(f"{path} cannot be read as hdf5 ({exc})") from None
        with f:
            missing = [k for k in _HDF5_KEYS if k not in f]
            if missing:
                raise SourceError(f"{path} lacks {', '.join(missing)}; --format vd4rl-hdf5 needs {', '.join(_HDF5_KEYS)}")
            if f["observation"].ndim != 4 or f["observation"].shape[1] != 3:
                raise SourceError(f"{path}: observation of shape {f['observation'].shape}; DrQ+BC's layout is "
                                  f"channel-first (N, 3, H, W)")
            lengths = {k: f[k].shape[0] for k in _HDF5_KEYS}
            if len(set(lengths.values())) != 1:
                raise SourceError(f"{path}: arrays of different lengths {lengths}; every array has one row per step")
            n = lengths["step_type"]
            for lo in range(0, n, _HDF5_BLOCK_ROWS):
                block = {k: f[k][lo:lo + _HDF5_BLOCK_ROWS] for k in _HDF5_KEYS}
                step = block["step_type"].astype(np.int64)
                if np.any((step < 0) | (step > 2)):
                    raise SourceError(f"{path}: step_type values {sorted(set(step.tolist()) - {0, 1, 2})}; accepted: 0, 1, 2")
                block["step_type"] = step
                cuts = [0] + np.flatnonzero(step == 0).tolist() + [len(step)]
                for a, b in zip(cuts[:-1], cuts[1:]):
                    if a == b:
                        continue
                    if step[a] == 0 and current:
                        yield where, close(f"{path.name} row {lo + a - 1}")
                        current = []
                    if step[a] == 0:
                        where = f"{path.name} row {lo + a}"
                    elif not current:
                        raise SourceError(f"{path.name} row {lo + a} continues an episode that never started "
                                          f"(no step_type 0 before it); the first shard must start an episode")
                    current.append({k: v[a:b] for k, v in block.items()})
    if current:
        yield where, close(f"{files[-1].name} (end)")


# -- checks -------------------------------------------------------------------------------
def _check_image(name: str, image) -> int:
    """The side of an episode's square uint8 frames."""
    image = np.asarray(image)
    if image.dtype != np.uint8 or image.ndim != 4 or image.shape[-1] != 3 or image.shape[1] != image.shape[2]:
        raise SourceError(f"{name}: images of shape {image.shape} and dtype {image.dtype}; accepted: "
                          f"(rows, H, H, 3) uint8 square frames")
    return int(image.shape[1])


def _check_episode(name: str, ep: dict, action_size: int, env: str) -> dict:
    image = np.asarray(ep["image"])
    _check_image(name, image)
    action = np.asarray(ep["action"], np.float32)
    if action.ndim != 2 or action.shape[1] != action_size:
        raise SourceError(f"{name}: actions of shape {action.shape}; {env} takes {action_size}-D actions")
    if np.any(action[0] != 0):
        raise SourceError(f"{name}: row 0 has a non-zero action; the row convention puts the reset observation "
                        f"with a zero action on row 0 (row t holds the action that led to it)")
    if not np.all(np.isfinite(action)) or not np.all(np.isfinite(ep["reward"])):
        raise SourceError(f"{name}: non-finite actions or rewards")
    rows = len(image)
    lengths = {k: len(v) for k, v in ep.items()}
    if rows < 2 or len(set(lengths.values())) != 1:
        raise SourceError(f"{name}: an episode of T steps has T+1 >= 2 rows in every array; got lengths {lengths}")
    first, last, terminal = (np.asarray(ep[k], bool) for k in ("is_first", "is_last", "is_terminal"))
    if not first[0] or first[1:].any() or not last[-1] or last[:-1].any() or terminal[:-1].any():
        raise SourceError(f"{name}: flags break the row convention: is_first only on row 0, is_last and "
                          f"is_terminal (discount 0) only on the last row")
    return {**ep, "action": action}


def _reference(random_return, expert_return) -> dict:
    if (random_return is None) != (expert_return is None):
        raise UserError("give both --random-return and --expert-return, or neither (the normalized score "
                        "then stays undefined)")
    if random_return is None:
        return {"random": None, "expert": None,
                "definition": "not given at import: the normalized score is undefined for this dataset"}
    for name, value in (("--random-return", random_return), ("--expert-return", expert_return)):
        if not math.isfinite(float(value)):
            raise UserError(f"{name} {value!r}: accepted: a finite number")
    if float(expert_return) == float(random_return):
        raise UserError("--expert-return equals --random-return; accepted: reference returns that differ")
    return {"random": float(random_return), "expert": float(expert_return),
            "definition": "given on the command line at import"}


def _refuse_complete(out: Path, overwrite: bool):
    from .writer import is_store

    if overwrite or not is_store(out):
        return
    from .reader import read_attrs

    if read_attrs(out).get("complete"):
        raise UserError(f"{out} already exists; pass --overwrite to replace it, or choose another --out")


# -- the one entry point -----------------------------------------------------------------
def import_episodes(src, format: str, env: str, out, *, split: str = "imported", random_return=None,
                    expert_return=None, overwrite: bool = False, say=None, progress: bool = False) -> Path:
    """Write the episodes at ``src`` (``format``, see the module docstring) as a store at ``out``
    for lompo-bench env ``env``; returns ``out``."""
    from tqdm.auto import tqdm

    from lompo_bench import envs

    from .integrity import verify
    from .writer import DatasetWriter

    say = say or (lambda line: None)
    if format not in FORMATS:
        raise choice_error("import format", format, FORMATS)
    spec = envs.get_spec(env)
    reference = _reference(random_return, expert_return)
    src = Path(src).expanduser()
    if format == "vd4rl-hdf5":
        require("h5py", "--format vd4rl-hdf5 needs h5py, which is not installed: pip install 'lompo-bench[export]'")
    files = _files(src, ".hdf5" if format == "vd4rl-hdf5" else ".npz", format)
    out = check_target(out, True, folder=True)
    _refuse_complete(out, overwrite)

    ignored: set = set()
    episodes = _hdf5_episodes(files) if format == "vd4rl-hdf5" else _npz_episodes(files, format, ignored)
    first = next(episodes, None)
    if first is None:
        raise UserError(f"{src} holds no episodes")
    image_size = envs.check_image_size(_check_image(first[0], first[1]["image"]))
    env_block = dict(envs.env_attrs(env, image_size))
    collector = {"algorithm": f"imported ({format})", "source": str(src.resolve()), "files": len(files)}
    writer = DatasetWriter.open(out, {"env": env_block, "split": split, "collector": collector}, overwrite=overwrite)
    created, skip, longest = writer.num_episodes == 0, writer.num_episodes, 0
    if skip:
        say(f"resuming {out}: {skip} episodes already imported")

    def all_episodes():
        yield first
        yield from episodes

    try:
        with tqdm(desc=f"import {format}", unit="episode", disable=not progress, dynamic_ncols=True) as bar:
            for i, (name, ep) in enumerate(all_episodes()):
                ep = _check_episode(name, ep, env_block["action_size"], env)
                longest = max(longest, len(ep["reward"]) - 1)
                if i >= skip:
                    writer.add_episode(ep)
                bar.update(1)
        if writer.num_episodes != i + 1:
            raise UserError(f"{out} holds {writer.num_episodes} episodes but {src} has {i + 1}; the source changed "
                            f"since the interrupted import: pass --overwrite to import it again")
        if longest != env_block["horizon"]:
            env_block["horizon"] = longest  # evaluation episodes last as long as the data's
            writer.update_attrs(env=env_block)
        writer.update_attrs(reference_returns={**reference, "episodes": writer.num_episodes})
        writer.finalize()
    except SourceError:
        if created:
            shutil.rmtree(out, ignore_errors=True)  # bad source data: leave no store behind
        raise
    except OSError as exc:
        raise UserError(f"cannot write {out}: {exc.strerror or exc}") from None
    if ignored:
        say(f"ignored keys not in the store's layout: {', '.join(sorted(ignored))}")
    if image_size != spec.image_size:
        say(f"{image_size} px frames ({env}'s paper size is {spec.image_size} px); runs evaluate at {image_size} px")
    problems = verify(out)
    if problems:
        raise UserError(f"{out} was written but does not verify: {problems[0]}")
    return out
