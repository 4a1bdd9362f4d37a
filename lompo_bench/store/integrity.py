"""Check a store end to end, and upgrade an old one in place.

``verify(path)`` returns a list of problems, each naming the array (or attribute) and what
is wrong; an empty list means the store is sound. It makes the cheap checks every open makes
(``reader.structure_problems``: shapes, episode boundaries, chunk files, attribute
checksums), then reads every chunk once, episode by episode, with a small cache, so memory
stays bounded whatever the dataset size, recomputing every array's content checksum.

``migrate(path)`` verifies a format 1 store's arrays, writes the chunk files zarr skipped
and the attribute checksums, and marks it format 2 (``format.py``); the dataset id stays.
"""

from __future__ import annotations

import numpy as np

from ..errors import UserError
from . import format as fmt
from .reader import CorruptChunk, Dataset, Location, read_attrs, structure_problems

_VERIFY_CACHE_BYTES = 64 << 20


def migrate_hint(loc) -> str:
    return f"run `lompo-bench datasets migrate {loc}` to verify it and add them"


def verify(path, progress=None, *, storage_options: dict | None = None, cache_dir=None,
           require_attribute_checksums: bool = True) -> list[str]:
    """Problems found in the store at ``path`` (a folder or an fsspec URL; empty: sound).
    ``progress(done, total)`` is called per episode. A format 1 store is a problem (its
    attributes cannot be checked) unless ``require_attribute_checksums`` is False."""
    loc = Location(path, storage_options=storage_options, cache_dir=cache_dir)
    try:
        attrs = read_attrs(loc)
    except UserError as exc:
        return [exc.format_message()]
    if not attrs.get("complete"):
        return [f"store: incomplete (never finalized; {attrs.get('progress', {}).get('episodes', 0)} whole "
                f"episodes written); re-run the command that wrote it to resume"]
    problems, _, ends = structure_problems(loc, attrs)
    if attrs.get("format_version") == 1 and require_attribute_checksums:
        problems.append(f"store: format 1, its attributes (reference returns, env, split, collector, ...) carry no "
                        f"checksums; {migrate_hint(loc)}")
    if problems or ends is None:
        return problems or ["meta/episode_ends: empty store"]

    schema = attrs.get("schema", {})
    ds = Dataset(loc, attrs, _VERIFY_CACHE_BYTES, allow_incomplete=False, decode_threads=1, check=False)
    chains: dict[str, str | None] = {k: None for k in schema}
    broken: set[str] = set()
    for e in range(ds.num_episodes):
        lo, hi = int(ds.episode_starts[e]), int(ds.episode_ends[e])
        for key in schema:
            if key in broken:
                continue
            try:
                data = ds.read(key, lo, hi)
            except CorruptChunk as exc:
                problems.append(exc.problem)
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
            progress(e + 1, ds.num_episodes)
    stored = attrs.get("checksums", {})
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


def migrate(path, progress=None) -> str:
    """Upgrade the local format 1 store at ``path`` to the current format in place, after
    verifying every array; returns what was done (one line). Refuses a store with problems."""
    import zarr

    from .writer import _write_all_chunks, check_out_path, disk_errors, write_missing_chunks

    loc = Location(path)
    if not loc.local:
        raise UserError(f"{loc}: only local stores can be migrated (writing is local); migrate a local copy and upload it")
    attrs = read_attrs(loc)
    version = attrs.get("format_version")
    if version == fmt.FORMAT_VERSION:
        changed = fmt.changed_attributes(attrs) if attrs.get("complete") else []
        if changed:
            raise UserError(f"{loc} is already format {version} but its attributes {', '.join(changed)} changed after "
                            f"writing; run `lompo-bench datasets verify {loc}`")
        return f"{loc} is already format {version}; nothing to do"
    problems = verify(loc.path, progress, require_attribute_checksums=False)
    if problems:
        raise UserError(f"{loc} cannot be migrated, its content does not verify: {problems[0]}"
                        f"{f' (and {len(problems) - 1} more)' if len(problems) > 1 else ''}; "
                        f"re-collect it (`--overwrite`)")
    check_out_path(loc.path, "store")

    class _Migration:  # disk errors while upgrading read like the writer's
        path, _episodes = loc.path, int(attrs["num_episodes"])

        @disk_errors
        def run(self):
            with _write_all_chunks():
                group = zarr.open_group(str(loc.path), mode="r+")
            keys = [f"data/{k}" for k in attrs.get("schema", {})] + ["meta/episode_ends"]
            written = write_missing_chunks(group, keys)
            upgraded = dict(group.attrs)
            upgraded["format_version"] = fmt.FORMAT_VERSION
            upgraded["migrated"] = {"from_version": version, "chunk_files_written": written}
            upgraded["attribute_checksums"] = fmt.attribute_checksums(upgraded)
            group.attrs.update(upgraded)  # one atomic rewrite of zarr.json: the upgrade's commit point
            return written

    written = _Migration().run()
    return (f"{loc}: verified and upgraded from format {version} to {fmt.FORMAT_VERSION} "
            f"({written} skipped all-zero chunk files written, attribute checksums added; dataset id unchanged)")
