"""What a lompo-bench dataset store is on disk: names, version, codecs, chunking, checksums.

A store is a Zarr v3 group (DESIGN.md, "Dataset store"): one array per per-row quantity under
``data/``, ``meta/episode_ends`` (exclusive end row of each episode), and group attributes.
Arrays are chunked along time only. Images use ``chunk_len`` rows per chunk (small, so a
random window decodes few frames it does not serve); low-dimensional arrays use longer
chunks (about 256 KiB raw) so a window touches one of their chunks, not several.

Every chunk is compressed by one Blosc codec, written as ``<cname>-<level>[-<shuffle>]``
(``lz4hc-5``, ``zstd-3-bitshuffle``) or ``none``. The default, ``lz4hc-5``, was picked by
measurement on rendered walker frames (``benchmarks/bench_store.py``): about the
compression ratio of zstd-3 (4x on 64 px frames) and 2-3x its decoding speed, which is what
bounds sampling once the data outgrows the cache; its slower encoding (~8k frames/s)
is far faster than the simulator renders.

Checksums are content hashes computed while writing: per array, a BLAKE2b chain over
episodes, ``h_e = blake2b(h_{e-1} || bytes of episode e's rows)``, so a writer can resume
from the last committed episode's digest alone. The dataset id (``checksum``) is a hash over
the per-array checksums.

Format versions (``format_version``):

- 1: the above. Zarr's default skips chunks that hold only the fill value, so a missing
  chunk file cannot be told from an all-zero one, and the attributes are unprotected.
- 2 (written now): every chunk file is written, so a missing one is damage, never zeros;
  ``attribute_checksums`` holds a BLAKE2b digest of every group attribute (reference returns,
  env settings, split, collector, sizes, array checksums, ...) except the writer's bookkeeping
  (``ATTRS_UNCHECKED``), so an edited attribute is caught; new arrays end their codec chain
  with ``crc32c``, so a flipped or truncated chunk fails when it is read, not only in
  ``verify``. The dataset id is unchanged (arrays only), so migrating keeps it.

Version 1 stores still open (with a one-line note); ``lompo-bench datasets migrate PATH``
verifies one and upgrades it to version 2 in place (``integrity.migrate``).
"""

from __future__ import annotations

import hashlib
import json
import os

import numpy as np

from ..errors import UserError

FORMAT_NAME = "lompo-bench/dataset"
FORMAT_VERSION = 2
READABLE_VERSIONS = (1, 2)

# Group attributes not covered by ``attribute_checksums``: the writer's own bookkeeping, which
# changes while a store is written (the per-array checksums they lead to are covered).
ATTRS_UNCHECKED = ("attribute_checksums", "complete", "progress")

DEFAULT_CODEC = "lz4hc-5"
DEFAULT_CHUNK_LEN = 32
DEFAULT_CACHE_BYTES = 1 << 30  # 1 GiB of decoded chunks per open Dataset
DEFAULT_DECODE_THREADS = min(8, os.cpu_count() or 1)

BLOSC_CNAMES = ("lz4", "lz4hc", "zstd", "zlib", "blosclz")
BLOSC_SHUFFLES = ("noshuffle", "shuffle", "bitshuffle")

# Canonical dtypes of the keys DESIGN.md names; any other per-row key keeps its own dtype.
KEY_DTYPES = {
    "image": np.uint8,
    "proprio": np.float32,
    "state": np.float32,
    "physics": np.float64,
    "action": np.float32,
    "reward": np.float32,
    "is_first": np.bool_,
    "is_last": np.bool_,
    "is_terminal": np.bool_,
}
REQUIRED_KEYS = ("action", "reward", "is_first", "is_last", "is_terminal")
FLAG_KEYS = ("is_first", "is_last", "is_terminal")

CHECKSUM_PREFIX = "blake2b-chain:"
_EMPTY_CHAIN = "0" * 64


def parse_codec(spec: str) -> dict:
    """``"lz4hc-5"`` -> ``{"cname": "lz4hc", "clevel": 5, "shuffle": "noshuffle"}``; ``"none"`` -> ``{}``."""
    if spec == "none":
        return {}
    parts = spec.split("-")
    accepted = "none or <cname>-<level>[-<shuffle>] with cname in " + "/".join(BLOSC_CNAMES) + \
        ", level 0-9, shuffle in " + "/".join(BLOSC_SHUFFLES) + " (e.g. lz4hc-5, zstd-3-bitshuffle)"
    if len(parts) not in (2, 3) or parts[0] not in BLOSC_CNAMES or not parts[1].isdigit() \
            or not 0 <= int(parts[1]) <= 9 or (len(parts) == 3 and parts[2] not in BLOSC_SHUFFLES):
        raise UserError(f"unknown codec {spec!r}; accepted: {accepted}")
    return {"cname": parts[0], "clevel": int(parts[1]), "shuffle": parts[2] if len(parts) == 3 else "noshuffle"}


def zarr_compressors(spec: str):
    """The zarr v3 bytes-to-bytes codecs for a codec spec: Blosc (unless ``none``), then a
    CRC32C of the encoded chunk, checked on every read."""
    from zarr.codecs import BloscCodec, Crc32cCodec

    cfg = parse_codec(spec)
    return ([BloscCodec(**cfg)] if cfg else []) + [Crc32cCodec()]


def chunk_rows(row_shape: tuple, dtype, chunk_len: int) -> int:
    """Rows per chunk for an array: ``chunk_len`` for images (rows of 2+ dims), about 256 KiB
    raw (at least ``chunk_len``) for vectors and scalars."""
    if len(row_shape) >= 2:
        return chunk_len
    row_bytes = max(1, int(np.prod(row_shape, dtype=np.int64)) * np.dtype(dtype).itemsize)
    rows = 1 << max(0, int(np.floor(np.log2(max(1, (256 << 10) // row_bytes)))))
    return int(min(max(rows, chunk_len), 1 << 16))


def chain(prev_hex: str | None, data: np.ndarray) -> str:
    """One link of a per-array checksum chain (see the module docstring)."""
    h = hashlib.blake2b(bytes.fromhex(prev_hex or _EMPTY_CHAIN), digest_size=32)
    h.update(memoryview(np.ascontiguousarray(data)).cast("B"))
    return h.hexdigest()


def bytes_checksum(data: np.ndarray) -> str:
    return hashlib.blake2b(memoryview(np.ascontiguousarray(data)).cast("B"), digest_size=32).hexdigest()


def attribute_checksums(attrs: dict) -> dict[str, str]:
    """``{name: digest}`` of every group attribute but ``ATTRS_UNCHECKED``, each over its canonical JSON."""
    out = {}
    for name, value in attrs.items():
        if name not in ATTRS_UNCHECKED:
            text = json.dumps(value, sort_keys=True, separators=(",", ":"))
            out[name] = hashlib.blake2b(text.encode(), digest_size=16).hexdigest()
    return out


def changed_attributes(attrs: dict) -> list[str]:
    """Names of the attributes that differ from ``attrs["attribute_checksums"]`` (added,
    removed or edited); empty when they all match. Only for version 2 stores."""
    stored = attrs.get("attribute_checksums") or {}
    now = attribute_checksums(attrs)
    return sorted(k for k in set(stored) | set(now) if stored.get(k) != now.get(k))


def dataset_id(checksums: dict[str, str]) -> str:
    """The dataset's own checksum: a hash over its per-array checksums (order-independent)."""
    return hashlib.blake2b(json.dumps(checksums, sort_keys=True).encode(), digest_size=16).hexdigest()
