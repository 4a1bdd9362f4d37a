"""Read a dataset store lazily, with memory bounded by a cache of decoded chunks.

Plain Zarr slicing pays ~1.5 ms of fixed overhead per ``array[a:b]`` call, more than the
decoding itself (see ``shared/reference/format-measurements.md``). So the reader bypasses
it: it reads each array's ``zarr.json`` once, then fetches chunk files itself, decodes them
with numcodecs' Blosc, and keeps decoded chunks in one LRU cache capped in bytes
(``cache_bytes``). A batch of windows is assembled chunk by chunk: all the window pieces that
fall in one chunk are copied out of it together, so each chunk is decoded at most once per
batch, whatever the cache size; the chunks a batch misses are decoded by a small thread pool
(``decode_threads``), as Blosc releases the GIL.

A store is a local folder or any fsspec URL (``http(s)://``, ``s3://``, ``gs://``,
``file://``; ``Location``). Remote chunks a call misses are fetched together, concurrently,
and, with ``cache_dir`` (or ``$LOMPO_BENCH_CACHE``), their raw bytes are kept on local disk,
keyed by the dataset id, so a second run reads them locally. Writing is local only.

Opening checks the structure cheaply (``structure_problems``: shapes against
``meta/episode_ends``, chunk files present, attribute checksums) and any chunk that cannot
be read becomes a one-line ``UserError`` (``CorruptChunk``) naming the array, the chunk and
``lompo-bench datasets verify`` as the next step: damaged data is never trained on, and a
missing chunk is never read as zeros (version 2 stores write every chunk file).
"""

from __future__ import annotations

import json
import os
import sys
from collections import OrderedDict
from pathlib import Path
from urllib.parse import unquote, urlparse

import numpy as np

from ..errors import UserError
from . import format as fmt

CACHE_DIR_ENV = "LOMPO_BENCH_CACHE"


def verify_hint(store) -> str:
    return f"the store is damaged: run `lompo-bench datasets verify {store}` for the full check"


class CorruptChunk(UserError):
    """A chunk file that is missing or cannot be decoded into the array's chunk shape."""

    def __init__(self, store, key: str, chunk: int, rows: tuple[int, int], reason: str):
        self.key, self.chunk, self.rows, self.reason = key, chunk, rows, reason
        self.problem = f"{key}: chunk {chunk} (rows {rows[0]}-{rows[1] - 1}) {reason}"
        super().__init__(f"{store}: {self.problem}; {verify_hint(store)}")


# -- where a store is -------------------------------------------------------------------------
def is_url(where) -> bool:
    return isinstance(where, str) and "://" in where


class Location:
    """A store's root: a local folder, or a read-only fsspec URL (``file://`` URLs are local folders).

    Paths inside the store are ``/``-separated strings (``"data/image/zarr.json"``).
    """

    def __init__(self, where, *, storage_options: dict | None = None, cache_dir=None):
        if isinstance(where, Location):
            where = where.where
        text = os.fspath(where) if not isinstance(where, str) else where
        if text.startswith("file://"):
            text = unquote(urlparse(text).path)
        self.url = text.rstrip("/") if is_url(text) else None
        self.path = None if self.url else Path(text).expanduser()
        self.storage_options = dict(storage_options or {})
        self.cache_dir = None if cache_dir is None else Path(cache_dir).expanduser()
        self.cache_key: str | None = None  # the dataset id, set once the store is known to be complete
        self._fs = None

    @property
    def where(self):
        return self.url or self.path

    @property
    def local(self) -> bool:
        return self.url is None

    def __str__(self):
        return self.url or str(self.path)

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_fs"] = None  # rebuilt in the receiving process
        return state

    @property
    def fs(self):
        if self._fs is None:
            import fsspec

            try:
                self._fs, _ = fsspec.core.url_to_fs(self.url, **self.storage_options)
            except (ImportError, ValueError) as exc:
                scheme = self.url.split("://", 1)[0]
                raise UserError(f"cannot read {self.url}: {exc}; accepted: local paths, file://, http(s)://, "
                                f"s3:// (s3fs), gs:// (gcsfs) URLs; install the fsspec backend for {scheme}://") from None
        return self._fs

    def _remote(self, rel: str) -> str:
        return f"{self.url}/{rel}"

    def _cached(self, rel: str) -> Path | None:
        if self.cache_dir is None or self.cache_key is None or self.local:
            return None
        return self.cache_dir / self.cache_key / rel

    def read(self, rel: str) -> bytes:
        """The bytes of one file; ``FileNotFoundError`` when it is not there; other failures as ``OSError``."""
        if self.local:
            return (self.path / rel).read_bytes()
        return self.read_many([rel])[0]

    def read_many(self, rels: list[str]) -> list[bytes]:
        """Several files at once: remote ones are fetched concurrently (one batch of requests)."""
        if self.local:
            return [self.read(r) for r in rels]
        out: list = [None] * len(rels)
        fetch = []
        for i, rel in enumerate(rels):
            cached = self._cached(rel)
            if cached is not None and cached.is_file():
                out[i] = cached.read_bytes()
            else:
                fetch.append(i)
        if fetch:
            urls = [self._remote(rels[i]) for i in fetch]
            try:
                got = self.fs.cat(urls, on_error="return")
            except Exception as exc:  # a transport failure (refused connection, DNS, auth)
                raise _remote_error(self, exc) from None
            for i, url in zip(fetch, urls):
                value = got.get(url, got.get(self.fs._strip_protocol(url))) if isinstance(got, dict) else got
                if isinstance(value, FileNotFoundError):
                    raise FileNotFoundError(url)
                if isinstance(value, BaseException):
                    raise _remote_error(self, value)
                out[i] = bytes(value)
                cached = self._cached(rels[i])
                if cached is not None:
                    _write_atomic(cached, out[i])
        return out

    def exists(self, rel: str) -> bool:
        if self.local:
            return (self.path / rel).exists()
        try:
            return bool(self.fs.exists(self._remote(rel)))
        except Exception as exc:
            raise _remote_error(self, exc) from None

    def missing(self, rels: list[str]) -> list[str]:
        """Which of ``rels`` are not there (local stores: one ``stat`` each; remote: not checked,
        since a listing costs a request per chunk: a missing remote chunk fails when it is read)."""
        if not self.local:
            return []
        return [r for r in rels if not os.path.isfile(self.path / r)]

    def disk_bytes(self) -> int | None:
        if self.local:
            return sum(f.stat().st_size for f in self.path.rglob("*") if f.is_file())
        try:
            return int(self.fs.du(self.url.split("://", 1)[1] if not self.url.startswith("http") else self.url))
        except Exception:
            return None  # e.g. HTTP servers cannot list folders


def _remote_error(loc: Location, exc: BaseException) -> UserError:
    return UserError(f"cannot read {loc}: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}; "
                     f"check the URL, the server and its credentials (storage options / environment)")


def _write_atomic(path: Path, data: bytes) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_bytes(data)
        os.replace(tmp, path)
    except OSError:
        pass  # the cache is an optimization: a full or read-only cache folder only costs speed


# -- decoded chunks ---------------------------------------------------------------------------
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
    """One Zarr v3 array of a store, read chunk by chunk (time-chunked arrays only).

    ``strict``: a missing chunk file is damage (version 2 stores write every chunk); otherwise
    (version 1) it reads as the fill value, as zarr does.
    """

    def __init__(self, root, key: str, *, strict: bool = True):
        self.loc = root if isinstance(root, Location) else Location(root)
        self.key = key
        self.strict = strict
        try:
            meta = json.loads(self.loc.read(f"{key}/zarr.json"))
            self.shape = tuple(meta["shape"])
            self.dtype = np.dtype(meta["data_type"])
            chunks = tuple(meta["chunk_grid"]["configuration"]["chunk_shape"])
        except FileNotFoundError:
            raise UserError(f"{self.loc}: {key} is missing (no {key}/zarr.json); {verify_hint(self.loc)}") from None
        except (ValueError, KeyError, TypeError) as exc:
            raise UserError(f"{self.loc}: {key}/zarr.json is unreadable ({type(exc).__name__}: {exc}); "
                            f"{verify_hint(self.loc)}") from None
        if chunks[1:] != self.shape[1:]:
            raise UserError(f"{key} is chunked along more than time ({chunks}); this reader needs time-only chunks")
        self.chunk_rows = chunks[0]
        self.chunk_shape = chunks
        self.fill = np.asarray(meta.get("fill_value", 0) or 0, dtype=self.dtype)
        encoding = meta.get("chunk_key_encoding", {})
        sep = encoding.get("configuration", {}).get("separator", "/")
        self._prefix = "c" + sep if encoding.get("name", "default") == "default" else ""
        self._suffix = sep.join(["0"] * (len(self.shape) - 1))
        self._sep = sep
        self.codecs = [c["name"] for c in meta["codecs"]]
        self._decode = self._decoder(meta["codecs"])

    def _decoder(self, codecs: list):
        names = list(self.codecs)
        accepted = f"{self.key} uses codecs {names}; this reader supports bytes [+ blosc] [+ crc32c]"
        if not names or names[0] != "bytes":
            raise UserError(accepted)
        endian = (codecs[0].get("configuration") or {}).get("endian", "little")
        dtype = self.dtype.newbyteorder("<" if endian == "little" else ">") if self.dtype.itemsize > 1 else self.dtype
        crc = names[-1] == "crc32c"
        if crc:
            names = names[:-1]
        if names not in (["bytes"], ["bytes", "blosc"]):
            raise UserError(accepted)
        self._crc, self._blosc = 4 * crc, names == ["bytes", "blosc"]
        blosc = None
        if names == ["bytes", "blosc"]:
            from numcodecs import blosc
        check = None
        if crc:
            from numcodecs import CRC32C

            check = CRC32C()

        def decode(raw: bytes) -> np.ndarray:
            if check is not None:
                try:
                    raw = check.decode(raw)  # the payload, after comparing the stored checksum
                except (RuntimeError, ValueError):
                    raise ValueError("its CRC32C does not match its bytes (changed after writing)") from None
            if blosc is not None:
                # Blosc trusts its header: a truncated frame would decode past its end.
                # (header: 16 bytes, compressed size at bytes 12-15)
                cbytes = int.from_bytes(bytes(raw[12:16]), "little") if len(raw) >= 16 else -1
                if cbytes != len(raw):
                    raise ValueError(f"truncated: {len(raw)} of {cbytes} compressed bytes")
                raw = blosc.decompress(raw)
            return np.frombuffer(raw, dtype=dtype)

        return decode

    def chunk_key(self, c: int) -> str:
        """The chunk file of chunk ``c``, relative to the store root."""
        return f"{self.key}/{self._prefix}{c}" + (self._sep + self._suffix if self._suffix else "")

    def chunk_path(self, c: int) -> Path:
        return self.loc.path / self.chunk_key(c)

    def chunk_file_problem(self, c: int) -> str | None:
        """What is wrong with local chunk file ``c`` seen from outside (missing, or not the size
        its Blosc header and checksum say: truncated or extended), without decoding it."""
        try:
            with open(self.chunk_path(c), "rb") as f:
                head, size = f.read(16), os.fstat(f.fileno()).st_size
        except FileNotFoundError:
            return "missing" if self.strict else None
        except OSError as exc:
            return f"unreadable: {exc.strerror or exc}"
        want = self._crc
        if self._blosc:
            want += int.from_bytes(head[12:16], "little") if len(head) == 16 else -1
        else:
            want += int(np.prod(self.chunk_shape, dtype=np.int64)) * self.dtype.itemsize
        return None if size == want else f"{size} bytes where its header says {want}"

    @property
    def num_chunks(self) -> int:
        return -(-self.shape[0] // self.chunk_rows)

    def rows_of(self, c: int) -> tuple[int, int]:
        return c * self.chunk_rows, min((c + 1) * self.chunk_rows, self.shape[0])

    def decode_chunk(self, c: int, raw: bytes | None) -> np.ndarray:
        """Chunk ``c`` from its file's bytes (``None``: the file is missing)."""
        if raw is None:
            if self.strict:
                raise CorruptChunk(self.loc, self.key, c, self.rows_of(c), "is missing (its chunk file was deleted)")
            return np.full(self.chunk_shape, self.fill, dtype=self.dtype)
        try:
            flat = self._decode(raw)
            return flat.reshape(self.chunk_shape).astype(self.dtype, copy=False)
        except Exception as exc:  # numcodecs raises RuntimeError/ValueError on a damaged frame
            raise CorruptChunk(self.loc, self.key, c, self.rows_of(c),
                               f"cannot be decoded: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from None

    def read_chunk(self, c: int) -> np.ndarray:
        """Decoded chunk ``c``: ``(chunk_rows, *row_shape)``."""
        try:
            raw = self.loc.read(self.chunk_key(c))
        except FileNotFoundError:
            raw = None
        except OSError as exc:
            raise CorruptChunk(self.loc, self.key, c, self.rows_of(c), f"cannot be read ({exc.strerror or exc})") from None
        return self.decode_chunk(c, raw)

    def read_chunks(self, ids: list[int]) -> list[np.ndarray]:
        """Several chunks: remote files fetched in one concurrent batch, then decoded."""
        raws = []
        for c in ids:  # fetched together; a missing one is found by fetching it alone
            raws.append(self.chunk_key(c))
        try:
            got = self.loc.read_many(raws)
        except FileNotFoundError:
            return [self.read_chunk(c) for c in ids]
        return [self.decode_chunk(c, raw) for c, raw in zip(ids, got)]


# -- structure --------------------------------------------------------------------------------
def read_attrs(path, *, storage_options: dict | None = None) -> dict:
    """The group attributes of a store, or a one-line ``UserError`` saying why it is not one."""
    loc = path if isinstance(path, Location) else Location(path, storage_options=storage_options)
    try:
        raw = loc.read("zarr.json")
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
        if loc.local:
            why = "does not exist" if not loc.path.exists() else "is not a Zarr store (no zarr.json)"
        else:
            why = "is not reachable or not a Zarr store (no zarr.json at that URL)"
        raise UserError(f"{loc} {why}; expected a dataset store written by `lompo-bench collect` "
                        f"(a <split>.zarr folder or its URL; `lompo-bench datasets list` shows local ones)") from None
    except OSError as exc:
        raise UserError(f"{loc}/zarr.json cannot be read ({exc.strerror or exc})") from None
    try:
        meta = json.loads(raw)
    except ValueError as exc:
        raise UserError(f"{loc}/zarr.json cannot be read ({exc}); the store is damaged") from None
    attrs = meta.get("attributes", {}) if isinstance(meta, dict) else {}
    if not isinstance(meta, dict) or meta.get("node_type") != "group" or attrs.get("format") != fmt.FORMAT_NAME:
        node = meta.get("node_type", "node") if isinstance(meta, dict) else "file"
        raise UserError(f"{loc} is a Zarr {node} but not a lompo-bench dataset "
                        f"(format {attrs.get('format')!r}, expected {fmt.FORMAT_NAME!r})")
    if attrs.get("format_version") not in fmt.READABLE_VERSIONS:
        raise UserError(f"{loc} has store format version {attrs.get('format_version')!r}; this lompo-bench "
                        f"reads versions {', '.join(map(str, fmt.READABLE_VERSIONS))}: upgrade lompo-bench or "
                        f"re-collect the dataset")
    return attrs


def committed_size(attrs: dict, allow_incomplete: bool) -> tuple[int, int]:
    """(rows, episodes) a reader may read: the finished sizes, or an unfinished store's last commit."""
    if allow_incomplete and not attrs.get("complete"):
        progress = attrs.get("progress", {})
        return int(progress.get("rows", 0)), int(progress.get("episodes", 0))
    try:
        return int(attrs["num_rows"]), int(attrs["num_episodes"])
    except (KeyError, TypeError, ValueError):
        raise UserError("the store is marked complete but has no num_rows/num_episodes attributes") from None


def structure_problems(loc: Location, attrs: dict, *, allow_incomplete: bool = False):
    """The cheap checks every open makes: ``(problems, readers, episode_ends)``.

    Every array's stored shape and dtype against the schema and the row count, the episode
    boundaries (decoded, checksummed, consistent), every chunk file present (version 2) and
    of the size its header says (local stores: 16 bytes read per chunk file), and, on a
    finished version 2 store, the attribute checksums. Decodes no chunk but those of
    ``meta/episode_ends``.
    """
    complete = bool(attrs.get("complete"))
    strict = attrs.get("format_version", 1) >= 2
    try:
        rows, episodes = committed_size(attrs, allow_incomplete)
    except UserError as exc:
        return [f"store: {exc.format_message()}"], {}, None
    problems: list[str] = []
    if complete and strict:
        changed = fmt.changed_attributes(attrs)
        if changed:
            problems.append(f"attributes {', '.join(changed)}: changed after writing (attribute checksum mismatch)")
    schema = attrs.get("schema", {}) if episodes else {}
    for key in fmt.REQUIRED_KEYS:
        if episodes and key not in schema:
            problems.append(f"data/{key}: missing from the store's schema")
    readers: dict[str, ArrayReader] = {}
    for key, spec in schema.items():
        try:
            reader = ArrayReader(loc, f"data/{key}", strict=strict)
        except UserError as exc:
            problems.append(f"data/{key}: {exc.format_message()}")
            continue
        dtype, row_shape = spec
        expected = (rows,) + tuple(row_shape)
        stored_ok = reader.shape == expected or (not complete and reader.shape[0] >= rows
                                                 and reader.shape[1:] == expected[1:])
        if not stored_ok or str(reader.dtype) != dtype:
            problems.append(f"data/{key}: stored shape {reader.shape} {reader.dtype}, expected {expected} {dtype} "
                            f"({rows} rows)")
            continue
        readers[key] = reader
    ends = None
    if episodes:
        try:
            ends_reader = ArrayReader(loc, "meta/episode_ends", strict=strict)
        except UserError as exc:
            return problems + [f"meta/episode_ends: {exc.format_message()}"], readers, None
        if ends_reader.shape[0] != episodes and (complete or ends_reader.shape[0] < episodes):
            return problems + [f"meta/episode_ends: stored shape {ends_reader.shape}, expected ({episodes},) episodes"], \
                readers, None
        try:
            ends = read_all_rows(ends_reader, episodes)
        except CorruptChunk as exc:
            return problems + [exc.problem], readers, None
        stored = (attrs.get("checksums") or {}).get("meta/episode_ends")
        if complete and stored != "blake2b:" + fmt.bytes_checksum(ends):
            problems.append("meta/episode_ends: checksum mismatch: the episode boundaries changed after writing")
        lengths = np.diff(np.concatenate([[0], ends]))
        if (lengths < 2).any() or ends[-1] != rows:
            problems.append(f"meta/episode_ends: episodes must have >= 2 rows and the last must end at row {rows} "
                            f"(the store's row count); it ends at {int(ends[-1])}")
        readers["meta/episode_ends"] = ends_reader
    if loc.local:
        for reader in readers.values():
            n = -(-(rows if reader.key != "meta/episode_ends" else episodes) // reader.chunk_rows)
            bad = [(c, why) for c in range(n) if (why := reader.chunk_file_problem(c))]
            if bad:
                (first, why), (lo, hi) = bad[0], reader.rows_of(bad[0][0])
                problems.append(f"{reader.key}: {len(bad)} of {n} chunk files damaged (first: chunk {first}, "
                                f"rows {lo}-{hi - 1}, {why})")
    readers.pop("meta/episode_ends", None)
    return problems, readers, ends


_NOTED: set[str] = set()


def note_old_format(loc: Location) -> str:
    """The one-line note a version 1 store opens with (printed once per store and process)."""
    note = (f"note: {loc} is store format 1: its attributes carry no checksums and a missing chunk file cannot be "
            f"told from zeros; `lompo-bench datasets migrate {loc}` verifies it and upgrades it to format "
            f"{fmt.FORMAT_VERSION} in place")
    if str(loc) not in _NOTED:
        _NOTED.add(str(loc))
        print(note, file=sys.stderr)
    return note


class Dataset:
    """A dataset store opened for reading. ``Dataset.open(path)``; see ``docs/interfaces.md``."""

    def __init__(self, path, attrs: dict, cache_bytes: int, allow_incomplete: bool,
                 decode_threads: int | None = None, *, check: bool = True):
        self.location = path if isinstance(path, Location) else Location(path)
        self.path = self.location.where  # a Path, or the URL string of a remote store
        self.decode_threads = max(1, int(decode_threads or fmt.DEFAULT_DECODE_THREADS))
        self.attrs = attrs
        self.cache = ChunkCache(cache_bytes)
        self.keys = tuple(attrs.get("schema", {}))
        self.format_version = attrs.get("format_version")
        self.notes: list[str] = []
        if attrs.get("complete") and attrs.get("checksum"):
            self.location.cache_key = str(attrs["checksum"])  # raw chunk bytes of a finished store never change
        self._rows, episodes = committed_size(attrs, allow_incomplete)
        problems, readers, ends = structure_problems(self.location, attrs, allow_incomplete=allow_incomplete)
        if check and problems:
            more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
            raise UserError(f"{self.location}: {problems[0]}{more}; {verify_hint(self.location)}")
        self._readers: dict[str, ArrayReader] = readers
        self.episode_ends = ends if ends is not None else np.zeros(0, np.int64)
        self.episode_starts = np.concatenate([[0], self.episode_ends[:-1]]).astype(np.int64)
        self._starts_cache: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        if self.format_version != fmt.FORMAT_VERSION and check:
            self.notes.append(note_old_format(self.location))

    @classmethod
    def open(cls, path, *, cache_bytes: int = fmt.DEFAULT_CACHE_BYTES, allow_incomplete: bool = False,
             decode_threads: int | None = None, cache_dir=None, storage_options: dict | None = None) -> "Dataset":
        """``path``: a store folder or an fsspec URL (``http(s)://``, ``s3://``, ``gs://``, ``file://``).
        ``cache_bytes``: cap of the decoded-chunk cache; ``decode_threads``: threads decoding the
        chunks one call needs (default: up to 8, one per core); ``allow_incomplete``: read an
        unfinished store up to its last whole episode; ``cache_dir`` (default ``$LOMPO_BENCH_CACHE``):
        where raw chunks of a remote store are kept; ``storage_options``: passed to fsspec
        (e.g. ``{"endpoint_url": ...}`` for an S3-compatible server)."""
        if cache_dir is None and os.environ.get(CACHE_DIR_ENV):
            cache_dir = os.environ[CACHE_DIR_ENV]
        loc = Location(path, storage_options=storage_options, cache_dir=cache_dir)
        attrs = read_attrs(loc)
        if not attrs.get("complete") and not allow_incomplete:
            episodes = attrs.get("progress", {}).get("episodes", 0)
            raise UserError(f"{loc} is incomplete ({episodes} whole episodes written, never finalized); "
                            f"re-run the command that wrote it to resume, or pass --overwrite to start again")
        return cls(loc, attrs, cache_bytes, allow_incomplete, decode_threads)

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
                raise UserError(f"{self.location} has no array {key!r}; it has: {', '.join(self.keys)}")
            self._readers[key] = ArrayReader(self.location, f"data/{key}", strict=self.format_version >= 2)
        return self._readers[key]

    # -- chunk access --------------------------------------------------------------------
    def _chunks(self, reader: ArrayReader, ids: list[int]) -> list[np.ndarray]:
        """Decoded chunks ``ids``: from the cache, the missing ones fetched (remote: in one batch),
        decoded (in parallel when ``decode_threads`` > 1: Blosc releases the GIL) and cached."""
        found = [self.cache.get((reader.key, c)) for c in ids]
        missing = [c for c, chunk in zip(ids, found) if chunk is None]
        if not self.location.local and missing:
            decoded = iter(reader.read_chunks(missing))
        elif len(missing) > 1 and self.decode_threads > 1:
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
        if not self.location.local:
            group = max(group, 64)  # remote: one batch of requests is worth more than the memory
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
                raise UserError(f"window length {length} is longer than every episode of {self.location} "
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
        return (f"Dataset({str(self.location)!r}, env={self.env!r}, split={self.split!r}, "
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
    n = -(-rows // reader.chunk_rows)
    ids = list(range(n))
    step = 1 if reader.loc.local else 64
    for g in range(0, n, step):
        chunks = reader.read_chunks(ids[g:g + step]) if step > 1 else [reader.read_chunk(g)]
        for c, chunk in zip(ids[g:g + step], chunks):
            lo = c * reader.chunk_rows
            hi = min(lo + reader.chunk_rows, rows)
            out[lo:hi] = chunk[: hi - lo]
    return out
