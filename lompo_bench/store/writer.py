"""Append whole episodes to a dataset store, crash-safely, resumably.

Each ``add_episode`` writes in this order, and every single file write is atomic (zarr's
local store writes a temporary file and renames it):

1. the episode's rows into every ``data/*`` array (arrays grown first);
2. the new end row into ``meta/episode_ends``;
3. the commit record, group attribute ``progress = {episodes, rows, chains}``, where
   ``chains`` holds each array's running checksum (see ``format.py``).

A writer killed at any moment (SIGKILL included) leaves a store whose ``progress`` names the
last whole episode. Re-opening it with the same attributes truncates every array back to
that record (dropping a half-written episode) and continues, so a resumed collection equals
an uninterrupted one. Readers refuse the store until ``finalize`` has written the checksums
and, last, ``complete = True``.

Every chunk file is written, all-zero ones included (zarr skips those by default), so a
reader can treat a missing chunk as damage. A write the disk refuses (full, over quota,
read-only, no permission) is a one-line ``UserError`` naming the path and the free space;
the store stays incomplete at its last commit and resumes once there is room.
"""

from __future__ import annotations

import errno
import functools
import shutil
from pathlib import Path

import numpy as np

from .. import provenance
from ..errors import UserError
from . import format as fmt

# Attributes that identify what a store holds: resuming requires them to match.
IDENTITY_ATTRS = ("env", "split", "collector")


def _jsonable(value):
    """Round-trip through JSON types so comparisons with stored attributes are exact."""
    import json

    return json.loads(json.dumps(value))


def is_store(path: Path) -> bool:
    return (Path(path) / "zarr.json").is_file()


def check_out_path(path: Path, what: str = "--out") -> Path:
    """``path`` can hold a new store: not an existing regular file, no regular file among its
    parents. Returns it; raises a one-line ``UserError`` otherwise."""
    if "://" in str(path):
        raise UserError(f"{what} {path}: stores are written to local folders only; write it here and serve or upload the folder")
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise UserError(f"{what} {path} is an existing file, not a folder; choose a new path for the <name>.zarr store")
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                raise UserError(f"{what} {path}: its parent {parent} is a file, not a folder; choose a path inside a folder")
            break
    return path


def _free_space(path: Path) -> str:
    for parent in (path, *path.parents):
        if parent.exists():
            free = shutil.disk_usage(parent).free
            return f"{free / 2**20:.1f} MiB free on {parent}" if free < 2**30 else f"{free / 2**30:.1f} GiB free on {parent}"
    return "free space unknown"


def disk_errors(method):
    """A write the OS refuses becomes a one-line ``UserError`` saying where and what to do."""

    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        try:
            return method(self, *args, **kwargs)
        except OSError as exc:
            raise _disk_error(exc, self.path, self._episodes) from None

    return wrapper


def _disk_error(exc: OSError, path: Path, episodes: int) -> UserError:
    state = f"the store is left incomplete after {episodes} whole episodes"
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        why = "no space left on the device" if exc.errno == errno.ENOSPC else "disk quota exceeded"
        return UserError(f"cannot write {path}: {why} ({_free_space(path)}); {state}: free some space and re-run "
                         f"the same command to resume, or choose another --out")
    return UserError(f"cannot write {path}: {exc.strerror or exc} ({exc.filename or path}); {state}: "
                     f"choose a writable --out, or fix the folder and re-run the same command to resume")


def _write_all_chunks():
    """Zarr config under which all-fill chunks are written too (see the module docstring)."""
    import zarr

    return zarr.config.set({"array.write_empty_chunks": True})


class DatasetWriter:
    """Writes one dataset store. Use ``DatasetWriter.open(path, attrs)``; see the module docstring."""

    def __init__(self, group, path: Path, codec: str, chunk_len: int):
        self._group = group
        self.path = path
        self.codec = codec
        self.chunk_len = chunk_len
        progress = group.attrs.get("progress", {"episodes": 0, "rows": 0, "chains": {}})
        self._episodes = int(progress["episodes"])
        self._rows = int(progress["rows"])
        self._chains = dict(progress["chains"])
        self._schema = {k: (v[0], tuple(v[1])) for k, v in group.attrs.get("schema", {}).items()}
        self._arrays = {}
        self._truncate_to_commit()

    # -- opening -------------------------------------------------------------------------
    @classmethod
    def open(cls, path, attrs: dict, *, overwrite: bool = False, codec: str = fmt.DEFAULT_CODEC,
             chunk_len: int = fmt.DEFAULT_CHUNK_LEN) -> "DatasetWriter":
        """Create the store at ``path``, or resume the one there if its identity attributes
        (``env``, ``split``, ``collector``) match ``attrs``. ``overwrite`` replaces an existing store."""
        path = check_out_path(path)
        try:
            return cls._open(path, attrs, overwrite, codec, chunk_len)
        except OSError as exc:
            raise _disk_error(exc, path, 0) from None

    @classmethod
    def _open(cls, path: Path, attrs: dict, overwrite: bool, codec: str, chunk_len: int) -> "DatasetWriter":
        import zarr

        fmt.parse_codec(codec)
        if not isinstance(chunk_len, int) or chunk_len < 1:
            raise UserError(f"chunk_len must be a positive integer, got {chunk_len!r}")
        attrs = _jsonable(attrs)
        if path.exists():
            if not is_store(path):
                if path.is_dir() and not any(path.iterdir()):
                    path.rmdir()
                else:
                    raise UserError(f"{path} exists and is not a dataset store; not touching it: choose another --out")
            elif overwrite:
                shutil.rmtree(path)
            else:
                group = zarr.open_group(str(path), mode="r+")
                stored = dict(group.attrs)
                if stored.get("format") != fmt.FORMAT_NAME:
                    raise UserError(f"{path} is a Zarr group but not a lompo-bench dataset; pass --overwrite to replace it or choose another --out")
                if stored.get("format_version") not in fmt.READABLE_VERSIONS:
                    raise UserError(f"{path} has store format version {stored.get('format_version')}, this writer appends to "
                                    f"versions {', '.join(map(str, fmt.READABLE_VERSIONS))} only; pass --overwrite to rewrite it")
                for key in IDENTITY_ATTRS:
                    if key in attrs and stored.get(key) != attrs[key]:
                        raise UserError(f"{path} already holds a dataset with a different {key} "
                                        f"({_describe(stored.get(key))} vs requested {_describe(attrs[key])}); "
                                        f"pass --overwrite to replace it or choose another --out")
                storage = stored.get("storage", {})
                return cls(group, path, storage.get("codec", codec), int(storage.get("chunk_len", chunk_len)))
        path.parent.mkdir(parents=True, exist_ok=True)
        group = zarr.open_group(str(path), mode="w", zarr_format=3)
        group.attrs.update(cls._new_attrs(attrs, codec, chunk_len))
        return cls(group, path, codec, chunk_len)

    @staticmethod
    def _new_attrs(attrs: dict, codec: str, chunk_len: int) -> dict:
        return {
            "format": fmt.FORMAT_NAME,
            "format_version": fmt.FORMAT_VERSION,
            **attrs,
            "storage": {"codec": codec, "chunk_len": chunk_len},
            "provenance": provenance.stamp(),
            "progress": {"episodes": 0, "rows": 0, "chains": {}},
            "complete": False,
        }

    # -- state ---------------------------------------------------------------------------
    @property
    def num_episodes(self) -> int:
        return self._episodes

    @property
    def num_rows(self) -> int:
        return self._rows

    @property
    def attrs(self) -> dict:
        return dict(self._group.attrs)

    def _array(self, key: str):
        if key not in self._arrays:
            with _write_all_chunks():
                self._arrays[key] = self._group[key]
        return self._arrays[key]

    def _truncate_to_commit(self):
        """Drop anything written after the last commit record (a killed writer's half episode)."""
        if self._episodes == 0:
            # Nothing committed: whatever arrays exist are from an interrupted first episode.
            for name in ("data", "meta"):
                if name in self._group:
                    del self._group[name]
            self._schema = {}
            return
        for key in self._schema:
            arr = self._array(f"data/{key}")
            if arr.shape[0] != self._rows:
                arr.resize((self._rows,) + arr.shape[1:])
        ends = self._array("meta/episode_ends")
        if ends.shape[0] != self._episodes:
            ends.resize((self._episodes,))
        if int(ends[self._episodes - 1]) != self._rows:
            raise UserError(f"{self.path} is corrupt: meta/episode_ends does not match its progress record; "
                            f"pass --overwrite to start it again")

    # -- writing -------------------------------------------------------------------------
    def _check_episode(self, arrays: dict) -> dict:
        missing = [k for k in fmt.REQUIRED_KEYS if k not in arrays]
        if missing:
            raise UserError(f"episode is missing keys {missing}; required: {', '.join(fmt.REQUIRED_KEYS)}")
        out = {}
        for key, value in arrays.items():
            value = np.asarray(value)
            if key in fmt.KEY_DTYPES:
                value = value.astype(fmt.KEY_DTYPES[key], copy=False)
            out[key] = np.ascontiguousarray(value)
        lengths = {k: v.shape[0] if v.ndim else 0 for k, v in out.items()}
        rows = lengths["reward"]
        if rows < 2 or len(set(lengths.values())) != 1:
            raise UserError(f"an episode of T steps has T+1 >= 2 rows in every array; got lengths {lengths}")
        first, last, terminal = out["is_first"], out["is_last"], out["is_terminal"]
        if not first[0] or first[1:].any() or not last[-1] or last[:-1].any() or terminal[:-1].any():
            raise UserError("episode flags break the row convention: is_first only on row 0, is_last only on "
                            "the last row, is_terminal only on the last row")
        if self._schema:
            schema = {k: (str(v.dtype), v.shape[1:]) for k, v in out.items()}
            if schema != self._schema:
                raise UserError(f"episode arrays {schema} do not match the store's {self._schema}")
        return out

    @disk_errors
    def add_episode(self, arrays: dict[str, np.ndarray]) -> None:
        """Append one episode (T+1 rows per array, DESIGN.md's row convention). Durable once it returns."""
        arrays = self._check_episode(arrays)
        if self._group.attrs.get("complete"):
            self._group.attrs["complete"] = False  # appending to a finished store reopens it
        n = next(iter(arrays.values())).shape[0]
        start, stop = self._rows, self._rows + n
        if not self._schema:
            for key, value in arrays.items():
                with _write_all_chunks():
                    self._arrays[f"data/{key}"] = self._group.create_array(
                    f"data/{key}", shape=(0,) + value.shape[1:], dtype=value.dtype,
                    chunks=(fmt.chunk_rows(value.shape[1:], value.dtype, self.chunk_len),) + value.shape[1:],
                        compressors=fmt.zarr_compressors(self.codec), fill_value=np.zeros((), value.dtype).item())
            with _write_all_chunks():
                self._arrays["meta/episode_ends"] = self._group.create_array(
                    "meta/episode_ends", shape=(0,), dtype=np.int64, chunks=(4096,),
                    compressors=fmt.zarr_compressors("zstd-3"), fill_value=0)
            self._schema = {k: (str(v.dtype), v.shape[1:]) for k, v in arrays.items()}
            self._group.attrs["schema"] = {k: [d, list(s)] for k, (d, s) in self._schema.items()}
        chains = dict(self._chains)
        for key, value in arrays.items():
            arr = self._array(f"data/{key}")
            arr.resize((stop,) + value.shape[1:])
            arr[start:stop] = value
            chains[key] = fmt.chain(chains.get(key), value)
        ends = self._array("meta/episode_ends")
        ends.resize((self._episodes + 1,))
        ends[self._episodes] = stop
        # The commit point: one atomic rewrite of the group's metadata.
        self._group.attrs["progress"] = {"episodes": self._episodes + 1, "rows": stop, "chains": chains}
        self._episodes, self._rows, self._chains = self._episodes + 1, stop, chains

    @disk_errors
    def update_attrs(self, **kw) -> None:
        """Set group attributes (e.g. ``reference_returns``); identity and bookkeeping keys are the writer's.
        On a finished store this reopens it (``complete = False``) until ``finalize`` re-seals the attributes."""
        reserved = {"format", "format_version", "progress", "schema", "checksums", "checksum", "complete", "storage",
                    "attribute_checksums"}
        bad = reserved.intersection(kw)
        if bad:
            raise UserError(f"attributes {sorted(bad)} are managed by the writer and cannot be set")
        if self._group.attrs.get("complete"):
            self._group.attrs["complete"] = False
        self._group.attrs.update(_jsonable(kw))

    @disk_errors
    def finalize(self) -> str:
        """Write the checksums and the dataset id, then ``complete = True`` last. Returns the id."""
        if self._episodes == 0:
            raise UserError(f"{self.path} has no episodes; nothing to finalize")
        ends = np.asarray(self._array("meta/episode_ends")[:], dtype=np.int64)
        checksums = {f"data/{k}": fmt.CHECKSUM_PREFIX + h for k, h in sorted(self._chains.items())}
        checksums["meta/episode_ends"] = "blake2b:" + fmt.bytes_checksum(ends)
        ident = fmt.dataset_id(checksums)
        if self._group.attrs.get("format_version") != fmt.FORMAT_VERSION:
            # A version 1 store resumed by this writer: its skipped all-fill chunks become files.
            write_missing_chunks(self._group, [f"data/{k}" for k in self._schema] + ["meta/episode_ends"])
        attrs = dict(self._group.attrs)
        attrs.update({
            "format_version": fmt.FORMAT_VERSION, "checksums": checksums, "checksum": ident,
            "num_episodes": self._episodes, "num_rows": self._rows,
            "num_transitions": self._rows - self._episodes, "finalized": provenance.now(),
        })
        attrs = _jsonable(attrs)
        attrs["attribute_checksums"] = fmt.attribute_checksums(attrs)
        self._group.attrs.update({k: v for k, v in attrs.items() if k != "complete"})
        self._group.attrs["complete"] = True
        return ident


def write_missing_chunks(group, keys) -> int:
    """Write every chunk file a version 1 store skipped (all fill value) as a real file; returns how many.
    Only for chunks zarr reads as fill: what it reads is written back unchanged."""
    import zarr

    written = 0
    for key in keys:
        with _write_all_chunks():
            arr = group[key]
        rows = arr.chunks[0]
        for c in range(-(-arr.shape[0] // rows)):
            if not _chunk_file(group, key, arr, c).exists():
                lo, hi = c * rows, min((c + 1) * rows, arr.shape[0])
                with zarr.config.set({"array.write_empty_chunks": True}):
                    arr[lo:hi] = arr[lo:hi]
                written += 1
    return written


def _chunk_file(group, key: str, arr, c: int) -> Path:
    root = Path(str(group.store.root))
    return root / key / arr.metadata.encode_chunk_key((c,) + (0,) * (arr.ndim - 1))


def _describe(value) -> str:
    if isinstance(value, dict):
        keys = [k for k in ("name", "algorithm", "image_size", "seed") if k in value]
        return ", ".join(f"{k}={value[k]}" for k in keys) or str(value)[:80]
    return repr(value)
