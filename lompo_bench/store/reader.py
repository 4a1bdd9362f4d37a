"""Read a dataset store lazily, with memory bounded by a cache of decoded chunks.

Plain Zarr slicing pays ~1.5 ms of fixed overhead per ``array[a:b]`` call, more than the
decoding itself (see ``shared/reference/format-measurements.md``). So the reader bypasses
it: it reads each array's ``zarr.json`` once, then fetches chunk files itself, decodes them
with numcodecs' Blosc, and keeps decoded chunks in one LRU cache capped in bytes
(``cache_bytes``). A batch of windows is assembled chunk by chunk: all the window pieces that
fall in one chunk are copied out of it together, so each chunk is decoded at most once per
batch, whatever the cache size; the chunks a batch misses are decoded by a small thread pool
(``decode_threads``), as Blosc releases the GIL.
"""

from __future__ import annotations

import json
import os
from collections import OrderedDict
from pathlib import Path

import numpy as np

from ..errors import UserError
from . import format as fmt


class CorruptChunk(Exception):
    """A chunk file that cannot be decoded into the array's chunk shape."""

    def __init__(self, key: str, chunk: int, rows: tuple[int, int], reason: str):
        super().__init__(f"{key}: chunk {chunk} (rows {rows[0]}-{rows[1] - 1}) cannot be decoded: {reason}")
        self.key, self.chunk = key, chunk


class ChunkCache:
    """LRU cache of decoded chunks, capped in bytes. Chunks larger than the cap are not kept."""

    def __init__(self, max_bytes: int):
        self.max_bytes = int(max_bytes)
        self.nbytes = 0
        self.hits = self.misses = 0
        self._items: OrderedDict = OrderedDict()

    def get(self, key):
        item = self._items.get(key)
        if item is None:
            self.misses += 1
            return None
        self.hits += 1
        self._items.move_to_end(key)
        return item

    def put(self, key, value: np.ndarray):
        if value.nbytes > self.max_bytes:
            return
        old = self._items.pop(key, None)
        if old is not None:
            self.nbytes -= old.nbytes
        self._items[key] = value
        self.nbytes += value.nbytes
        while self.nbytes > self.max_bytes:
            _, evicted = self._items.popitem(last=False)
            self.nbytes -= evicted.nbytes

    def clear(self):
        self._items.clear()
        self.nbytes = 0


class ArrayReader:
    """One Zarr v3 array of a store, read chunk by chunk (time-chunked arrays only)."""

    def __init__(self, root: Path, key: str):
        self.key = key
        self.dir = root / key
        meta = json.loads((self.dir / "zarr.json").read_text())
        self.shape = tuple(meta["shape"])
        self.dtype = np.dtype(meta["data_type"])
        chunks = tuple(meta["chunk_grid"]["configuration"]["chunk_shape"])
        if chunks[1:] != self.shape[1:]:
            raise UserError(f"{key} is chunked along more than time ({chunks}); this reader needs time-only chunks")
        self.chunk_rows = chunks[0]
        self.chunk_shape = chunks
        self.fill = np.asarray(meta.get("fill_value", 0) or 0, dtype=self.dtype)
        sep = meta.get("chunk_key_encoding", {}).get("configuration", {}).get("separator", "/")
        self._suffix = sep.join(["0"] * (len(self.shape) - 1))
        self._sep = sep
        self._decode = self._decoder(meta["codecs"])

    def _decoder(self, codecs: list):
        names = [c["name"] for c in codecs]
        if not names or names[0] != "bytes":
            raise UserError(f"{self.key} uses codecs {names}; this reader supports bytes [+ blosc]")
        endian = (codecs[0].get("configuration") or {}).get("endian", "little")
        dtype = self.dtype.newbyteorder("<" if endian == "little" else ">") if self.dtype.itemsize > 1 else self.dtype
        if names == ["bytes"]:
            return lambda raw: np.frombuffer(raw, dtype=dtype)
        if names == ["bytes", "blosc"]:
            from numcodecs import blosc

            return lambda raw: np.frombuffer(blosc.decompress(raw), dtype=dtype)
        raise UserError(f"{self.key} uses codecs {names}; this reader supports bytes [+ blosc]")

    def chunk_path(self, c: int) -> Path:
        return self.dir / ("c" + self._sep + str(c) + (self._sep + self._suffix if self._suffix else ""))

    @property
    def num_chunks(self) -> int:
        return -(-self.shape[0] // self.chunk_rows)

    def read_chunk(self, c: int) -> np.ndarray:
        """Decoded chunk ``c``: ``(chunk_rows, *row_shape)``; a missing file is the fill value."""
        path = self.chunk_path(c)
        rows = (c * self.chunk_rows, min((c + 1) * self.chunk_rows, self.shape[0]))
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            return np.full(self.chunk_shape, self.fill, dtype=self.dtype)
        try:
            flat = self._decode(raw)
            return flat.reshape(self.chunk_shape).astype(self.dtype, copy=False)
        except Exception as exc:  # numcodecs raises RuntimeError/ValueError on a damaged frame
            raise CorruptChunk(self.key, c, rows, str(exc) or type(exc).__name__) from None


class Dataset:
    """A dataset store opened for reading. ``Dataset.open(path)``; see ``docs/interfaces.md``."""

    def __init__(self, path: Path, attrs: dict, cache_bytes: int, allow_incomplete: bool,
                 decode_threads: int | None = None):
        self.path = path
        self.decode_threads = max(1, int(decode_threads or fmt.DEFAULT_DECODE_THREADS))
        self.attrs = attrs
        self.cache = ChunkCache(cache_bytes)
        self._readers: dict[str, ArrayReader] = {}
        self.keys = tuple(attrs.get("schema", {}))
        if allow_incomplete and not attrs.get("complete"):
            progress = attrs.get("progress", {})
            self._rows, episodes = int(progress.get("rows", 0)), int(progress.get("episodes", 0))
        else:
            self._rows, episodes = int(attrs["num_rows"]), int(attrs["num_episodes"])
        ends = ArrayReader(path, "meta/episode_ends") if episodes else None
        self.episode_ends = read_all_rows(ends, episodes) if ends else np.zeros(0, np.int64)
        self.episode_starts = np.concatenate([[0], self.episode_ends[:-1]]).astype(np.int64)
        self._starts_cache: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    @classmethod
    def open(cls, path, *, cache_bytes: int = fmt.DEFAULT_CACHE_BYTES, allow_incomplete: bool = False,
             decode_threads: int | None = None) -> "Dataset":
        """``cache_bytes``: cap of the decoded-chunk cache; ``decode_threads``: threads decoding the
        chunks one call needs (default: up to 8, one per core); ``allow_incomplete``: read an
        unfinished store up to its last whole episode."""
        path = Path(path)
        attrs = read_attrs(path)
        if not attrs.get("complete") and not allow_incomplete:
            episodes = attrs.get("progress", {}).get("episodes", 0)
            raise UserError(f"{path} is incomplete ({episodes} whole episodes written, never finalized); "
                            f"re-run the command that wrote it to resume, or pass --overwrite to start again")
        return cls(path, attrs, cache_bytes, allow_incomplete, decode_threads)

    # -- metadata ------------------------------------------------------------------------
    @property
    def num_episodes(self) -> int:
        return len(self.episode_ends)

    @property
    def num_rows(self) -> int:
        return self._rows

    @property
    def num_transitions(self) -> int:
        return self._rows - self.num_episodes

    @property
    def env(self) -> str:
        return self.attrs.get("env", {}).get("name")

    @property
    def split(self) -> str:
        return self.attrs.get("split")

    @property
    def checksum(self) -> str | None:
        return self.attrs.get("checksum")

    @property
    def reference_returns(self) -> tuple[float | None, float | None]:
        ref = self.attrs.get("reference_returns") or {}
        return ref.get("random"), ref.get("expert")

    def shape(self, key: str) -> tuple:
        return (self._rows,) + self.reader(key).shape[1:]

    def reader(self, key: str) -> ArrayReader:
        if key not in self._readers:
            if key not in self.keys:
                raise UserError(f"{self.path} has no array {key!r}; it has: {', '.join(self.keys)}")
            self._readers[key] = ArrayReader(self.path, f"data/{key}")
        return self._readers[key]

    # -- chunk access --------------------------------------------------------------------
    def _chunks(self, reader: ArrayReader, ids: list[int]) -> list[np.ndarray]:
        """Decoded chunks ``ids``: from the cache, the missing ones decoded (in parallel when
        ``decode_threads`` > 1: Blosc releases the GIL) and put into the cache."""
        found = [self.cache.get((reader.key, c)) for c in ids]
        missing = [c for c, chunk in zip(ids, found) if chunk is None]
        if len(missing) > 1 and self.decode_threads > 1:
            decoded = iter(_decode_pool(self.decode_threads).map(reader.read_chunk, missing))
        else:
            decoded = (reader.read_chunk(c) for c in missing)
        for i, c in enumerate(ids):
            if found[i] is None:
                found[i] = next(decoded)
                self.cache.put((reader.key, c), found[i])
        return found

    def read(self, key: str, start: int, stop: int) -> np.ndarray:
        """Rows ``[start, stop)`` of one array (a copy), through the chunk cache."""
        if not 0 <= start <= stop <= self._rows:
            raise UserError(f"rows {start}:{stop} are outside {key}'s 0:{self._rows}")
        return self._gather(key, np.array([start]), stop - start)[0]

    def array(self, key: str) -> np.ndarray:
        """The whole array in memory (only when asked: it may be large)."""
        return read_all_rows(self.reader(key), self._rows)

    def episode(self, i: int, keys=None) -> dict[str, np.ndarray]:
        if not -self.num_episodes <= i < self.num_episodes:
            raise UserError(f"episode {i} does not exist; the dataset has {self.num_episodes} episodes")
        i %= self.num_episodes
        lo, hi = int(self.episode_starts[i]), int(self.episode_ends[i])
        return {k: self.read(k, lo, hi) for k in (keys or self.keys)}

    def _gather(self, key: str, starts: np.ndarray, length: int) -> np.ndarray:
        """``out[b] = rows[starts[b] : starts[b] + length]``, chunk by chunk: every window piece
        inside one chunk is copied while that chunk is at hand, so each is decoded once per call."""
        reader = self.reader(key)
        rows = reader.chunk_rows
        out = np.empty((len(starts), length) + reader.shape[1:], reader.dtype)
        first = starts // rows
        last = (starts + length - 1) // rows
        by_chunk: dict[int, list[int]] = {}  # chunk -> windows that touch it
        for b in range(len(starts)):
            for c in range(int(first[b]), int(last[b]) + 1):
                by_chunk.setdefault(c, []).append(b)
        ids = sorted(by_chunk)
        group = max(1, 4 * self.decode_threads)  # chunks decoded ahead: bounds the memory held per call
        for g in range(0, len(ids), group):
            for c, chunk in zip(ids[g:g + group], self._chunks(reader, ids[g:g + group])):
                for b in by_chunk[c]:
                    a = int(starts[b])
                    lo, hi = max(a, c * rows), min(a + length, (c + 1) * rows)
                    out[b, lo - a: hi - a] = chunk[lo - c * rows: hi - c * rows]
        return out

    # -- sampling ------------------------------------------------------------------------
    def _window_starts(self, length: int):
        """Per episode: first valid window start and cumulative number of valid starts."""
        if length not in self._starts_cache:
            counts = np.maximum(self.episode_ends - self.episode_starts - length + 1, 0)
            if length < 1 or counts.sum() == 0:
                longest = int((self.episode_ends - self.episode_starts).max(initial=0))
                raise UserError(f"window length {length} is longer than every episode of {self.path} "
                                f"(longest: {longest} rows); use a length between 1 and {longest}")
            self._starts_cache[length] = (self.episode_starts, np.cumsum(counts))
        return self._starts_cache[length]

    def sample_starts(self, batch: int, length: int, rng: np.random.Generator) -> np.ndarray:
        """Uniform random start rows of ``batch`` windows of ``length`` rows inside one episode each."""
        ep_starts, cum = self._window_starts(length)
        u = rng.integers(0, cum[-1], size=batch)
        ep = np.searchsorted(cum, u, side="right")
        return ep_starts[ep] + u - np.concatenate([[0], cum[:-1]])[ep]

    def sample_windows(self, batch: int, length: int, rng: np.random.Generator, keys=None) -> dict[str, np.ndarray]:
        """``{key: (batch, length, ...)}``: windows of consecutive rows, never crossing an episode boundary."""
        starts = self.sample_starts(batch, length, rng)
        return {k: self._gather(k, starts, length) for k in (keys or self.keys)}

    def sample_transitions(self, batch: int, rng: np.random.Generator, obs_keys=None) -> dict:
        """Flat transitions for model-free methods: row t-1 -> row t of one episode.

        ``obs``/``next_obs`` hold ``obs_keys`` (default: image and proprio, where present);
        ``timeout`` marks the last transition of an episode that was cut by the time limit.
        """
        obs_keys = tuple(obs_keys or [k for k in ("image", "proprio") if k in self.keys])
        w = self.sample_windows(batch, 2, rng, keys=obs_keys + ("action", "reward", "is_last", "is_terminal"))
        terminal = w["is_terminal"][:, 1]
        return {
            "obs": {k: w[k][:, 0] for k in obs_keys},
            "action": w["action"][:, 1],
            "reward": w["reward"][:, 1],
            "next_obs": {k: w[k][:, 1] for k in obs_keys},
            "terminal": terminal,
            "timeout": w["is_last"][:, 1] & ~terminal,
        }

    def __getstate__(self):
        # Sent to a worker process: ship the metadata, not the decoded chunks.
        state = self.__dict__.copy()
        state["cache"] = ChunkCache(self.cache.max_bytes)
        state["_readers"] = {}
        return state

    def __repr__(self):
        return (f"Dataset({str(self.path)!r}, env={self.env!r}, split={self.split!r}, "
                f"episodes={self.num_episodes}, rows={self.num_rows})")


_POOL: tuple | None = None  # (pid, threads, executor): one per process, rebuilt after a fork


def _decode_pool(threads: int):
    global _POOL
    if _POOL is None or _POOL[0] != os.getpid() or _POOL[1] < threads:
        from concurrent.futures import ThreadPoolExecutor

        _POOL = (os.getpid(), threads, ThreadPoolExecutor(threads, thread_name_prefix="lompo-bench-decode"))
    return _POOL[2]


def read_all_rows(reader: ArrayReader, rows: int) -> np.ndarray:
    """The first ``rows`` rows of an array, chunk by chunk, bypassing the cache."""
    out = np.empty((rows,) + reader.shape[1:], reader.dtype)
    for c in range(-(-rows // reader.chunk_rows)):
        lo = c * reader.chunk_rows
        hi = min(lo + reader.chunk_rows, rows)
        out[lo:hi] = reader.read_chunk(c)[: hi - lo]
    return out


def read_attrs(path: Path) -> dict:
    """The group attributes of a store, or a one-line ``UserError`` saying why it is not one."""
    path = Path(path)
    meta_file = path / "zarr.json"
    if not meta_file.is_file():
        why = "does not exist" if not path.exists() else "is not a Zarr store (no zarr.json)"
        raise UserError(f"{path} {why}; expected a dataset store written by `lompo-bench collect` "
                        f"(a <split>.zarr folder; `lompo-bench datasets list` shows them)")
    try:
        meta = json.loads(meta_file.read_text())
    except (OSError, ValueError) as exc:
        raise UserError(f"{path}/zarr.json cannot be read ({exc}); the store is damaged") from None
    attrs = meta.get("attributes", {})
    if meta.get("node_type") != "group" or attrs.get("format") != fmt.FORMAT_NAME:
        raise UserError(f"{path} is a Zarr {meta.get('node_type', 'node')} but not a lompo-bench dataset "
                        f"(format {attrs.get('format')!r}, expected {fmt.FORMAT_NAME!r})")
    if attrs.get("format_version") != fmt.FORMAT_VERSION:
        raise UserError(f"{path} has store format version {attrs.get('format_version')!r}; this lompo-bench "
                        f"reads version {fmt.FORMAT_VERSION}: upgrade lompo-bench or re-collect the dataset")
    return attrs
