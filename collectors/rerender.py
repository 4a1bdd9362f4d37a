"""Re-render a whole dataset at another image size, without retraining or recollecting.

Every store holds the MuJoCo ``physics`` state of every row, so its frames can be drawn
again at any size: ``rerender(path, image_size, out=None)`` writes a new store with the same
episodes and the same arrays (``action``, ``reward``, ``state``, ``physics``, ``proprio``,
flags, extras such as ``shaped_reward``), only ``image`` rendered afresh at ``image_size``
(``lompo_bench.envs.render_states``), and the same attributes except ``env.image_size``
plus a ``rerendered_from`` record (source path, source dataset id, source image size). The
default output is ``<stem>-<size>px.zarr`` next to the source. Like every store write it
resumes after a kill and refuses to replace an existing complete store without
``overwrite``. The source may be a URL (``Dataset.open``); the output is always local.
"""

from __future__ import annotations

from pathlib import Path

from tqdm.auto import tqdm

from lompo_bench.errors import UserError

# Attributes the store writer manages itself; everything else is carried over.
_WRITER_KEYS = {"format", "format_version", "storage", "provenance", "progress", "complete", "schema",
                "checksums", "checksum", "num_episodes", "num_rows", "num_transitions", "finalized"}


def default_out(path: Path, image_size: int) -> Path:
    path = Path(path)
    return path.with_name(f"{path.name.removesuffix('.zarr')}-{image_size}px.zarr")


def rerender(path, image_size: int, out=None, *, overwrite: bool = False, progress: bool = True) -> Path:
    """Write ``out`` (default :func:`default_out`) with every frame of ``path`` re-rendered at ``image_size``."""
    from lompo_bench import envs
    from lompo_bench.store import Dataset, DatasetWriter, check_out_path, is_url

    from .collect import check_target

    remote = is_url(path)
    path = path if remote else Path(path)
    image_size = envs.check_image_size(image_size)
    if out is None and remote:
        raise UserError(f"{path} is a URL; pass --out with a local path for the re-rendered store (writing is local)")
    out = check_out_path(default_out(path, image_size) if out is None else Path(out))
    source = Dataset.open(path, cache_bytes=0)
    if not remote and out.resolve() == path.resolve():
        raise UserError(f"--out {out} is the source store itself; choose another path")
    check_target(out, overwrite)
    attrs = {k: v for k, v in source.attrs.items() if k not in _WRITER_KEYS}
    env = dict(attrs.get("env") or {})
    name = env.get("name") or source.env
    if name not in envs.SPECS:
        raise UserError(f"{path} has env {name!r}, which this version cannot render; accepted: {', '.join(envs.ENV_NAMES)}")
    if "physics" not in source.keys:
        raise UserError(f"{path} holds no physics states (data/physics), so its frames cannot be re-rendered")
    source_size = env.get("image_size")
    env["image_size"] = image_size
    attrs["env"] = env
    attrs["rerendered_from"] = {"path": str(path), "dataset_id": source.checksum, "image_size": source_size}
    writer = DatasetWriter.open(out, attrs, overwrite=overwrite)
    with tqdm(total=source.num_episodes, initial=writer.num_episodes, unit="episode",
              desc=f"rerender {image_size}px", dynamic_ncols=True, disable=not progress) as bar:
        for i in range(writer.num_episodes, source.num_episodes):
            episode = source.episode(i)
            episode["image"] = envs.render_states(name, episode["physics"], image_size)
            writer.add_episode(episode)
            bar.update(1)
    writer.finalize()
    return out
