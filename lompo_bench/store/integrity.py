"""Check a store end to end: structure, row convention, and every array's content checksum.

``verify(path)`` returns a list of problems, each naming the array and what is wrong; an
empty list means the store is sound. It reads every chunk once, episode by episode, with a
small cache, so memory stays bounded whatever the dataset size.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import UserError
from . import format as fmt
from .reader import ArrayReader, CorruptChunk, Dataset, read_all_rows, read_attrs

_VERIFY_CACHE_BYTES = 64 << 20


def verify(path, progress=None) -> list[str]:
    """Problems found in the store at ``path`` (empty: sound). ``progress(done, total)`` is called per episode."""
    path = Path(path)
    try:
        attrs = read_attrs(path)
    except UserError as exc:
        return [exc.format_message()]
    if not attrs.get("complete"):
        return [f"store: incomplete (never finalized; {attrs.get('progress', {}).get('episodes', 0)} whole "
                f"episodes written); re-run the command that wrote it to resume"]
    problems: list[str] = []
    schema = attrs.get("schema", {})
    rows, episodes = attrs.get("num_rows"), attrs.get("num_episodes")
    for key in fmt.REQUIRED_KEYS:
        if key not in schema:
            problems.append(f"data/{key}: missing from the store's schema")
    try:
        ends_reader = ArrayReader(path, "meta/episode_ends")
    except (OSError, ValueError, KeyError) as exc:
        return problems + [f"meta/episode_ends: unreadable ({exc})"]
    if ends_reader.shape != (episodes,):
        return problems + [f"meta/episode_ends: shape {ends_reader.shape}, expected ({episodes},) episodes"]
    for key, (dtype, row_shape) in schema.items():
        try:
            reader = ArrayReader(path, f"data/{key}")
        except (OSError, ValueError, KeyError) as exc:
            problems.append(f"data/{key}: unreadable metadata ({exc})")
            continue
        expected = (rows,) + tuple(row_shape)
        if reader.shape != expected or str(reader.dtype) != dtype:
            problems.append(f"data/{key}: shape {reader.shape} {reader.dtype}, expected {expected} {dtype}")
    if problems:
        return problems

    try:
        ends = read_all_rows(ends_reader, episodes)
    except CorruptChunk as exc:
        return [str(exc)]
    stored = attrs.get("checksums", {})
    if "blake2b:" + fmt.bytes_checksum(ends) != stored.get("meta/episode_ends"):
        problems.append("meta/episode_ends: checksum mismatch: the episode boundaries changed after writing")
    lengths = np.diff(np.concatenate([[0], ends]))
    if (lengths < 2).any() or ends[-1] != rows:
        problems.append(f"meta/episode_ends: episodes must have >= 2 rows and end at row {rows}")
        return problems

    ds = Dataset(path, attrs, _VERIFY_CACHE_BYTES, allow_incomplete=False)
    chains: dict[str, str | None] = {k: None for k in schema}
    broken: set[str] = set()
    for e in range(episodes):
        lo, hi = int(ds.episode_starts[e]), int(ds.episode_ends[e])
        for key in schema:
            if key in broken:
                continue
            try:
                data = ds.read(key, lo, hi)
            except CorruptChunk as exc:
                problems.append(str(exc).replace(f"{exc.key}:", f"data/{key}:", 1))
                broken.add(key)
                continue
            chains[key] = fmt.chain(chains[key], data)
            if key in fmt.FLAG_KEYS:
                rule = {"is_first": data[0] and not data[1:].any(),
                        "is_last": data[-1] and not data[:-1].any(),
                        "is_terminal": not data[:-1].any()}[key]
                if not rule:
                    problems.append(f"data/{key}: episode {e} (rows {lo}-{hi - 1}) breaks the row convention")
                    broken.add(key)
        if progress:
            progress(e + 1, episodes)
    for key in schema:
        if key in broken:
            continue
        want = stored.get(f"data/{key}")
        got = fmt.CHECKSUM_PREFIX + chains[key]
        if want != got:
            problems.append(f"data/{key}: checksum mismatch (stored {str(want)[-12:]}, recomputed {got[-12:]}): "
                            f"the array's content changed after writing")
    if not problems and attrs.get("checksum") != fmt.dataset_id(stored):
        problems.append("store: dataset checksum does not match the per-array checksums")
    return problems
