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
"""

from __future__ import annotations

import hashlib
import json
import os

import numpy as np

from ..errors import UserError

FORMAT_NAME = "lompo-bench/dataset"
FORMAT_VERSION = 1

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
    """The zarr v3 compressor list for a codec spec."""
    from zarr.codecs import BloscCodec

    cfg = parse_codec(spec)
    return None if not cfg else [BloscCodec(**cfg)]


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


def dataset_id(checksums: dict[str, str]) -> str:
    """The dataset's own checksum: a hash over its per-array checksums (order-independent)."""
    return hashlib.blake2b(json.dumps(checksums, sort_keys=True).encode(), digest_size=16).hexdigest()
