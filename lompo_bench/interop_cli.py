"""``lompo-bench datasets export`` / ``import``: datasets out to and in from the field's other formats
(layouts: ``store/exporters.py`` and ``store/importers.py``)."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from .store.exporters import FORMATS as EXPORT_FORMATS
from .store.importers import FORMATS as IMPORT_FORMATS


@click.command()
@click.argument("path")  # a store folder or URL
@click.option("--format", "fmt", type=click.Choice(EXPORT_FORMATS), required=True,
              help="npz/hdf5: D4RL keys; minari: a local Minari dataset; vd4rl-npz: V-D4RL's Offline DV2 "
                   "folder (64 px); vd4rl-hdf5: V-D4RL's DrQ+BC shards (84 px); d3rlpy: MDPDataset arrays.")
@click.option("--out", type=click.Path(path_type=Path), default=None,
              help="Output file or folder (default: next to the store), or the Minari dataset id "
                   "(default lompo-bench/<env>-<split>-v0, under $MINARI_DATASETS_PATH).")
@click.option("--overwrite", is_flag=True, help="Replace an existing output (only once the new one is whole).")
@click.option("--jpeg", is_flag=True,
              help="Minari only: JPEG-encode the images (LOSSY, ~8x smaller). Default: raw, bit-exact.")
@click.option("--image-size", type=int, default=None,
              help="V-D4RL only: frame size (default 64 for vd4rl-npz, 84 for vd4rl-hdf5); other sizes than "
                   "the store's are re-rendered from its physics states.")
def export(path, fmt, out, overwrite, jpeg, image_size):
    """Export a store for other tools: D4RL keys, Minari, V-D4RL, d3rlpy."""
    from .store.exporters import export as export_store

    written = export_store(path, fmt, out, overwrite=overwrite, jpeg=jpeg, image_size=image_size,
                           say=click.echo, progress=sys.stderr.isatty())
    click.echo(f"wrote {written}")


@click.command("import")
@click.argument("src", type=click.Path(path_type=Path))
@click.option("--format", "fmt", type=click.Choice(IMPORT_FORMATS), required=True,
              help="vd4rl-npz: V-D4RL's Offline DV2 npz folder; vd4rl-hdf5: V-D4RL's DrQ+BC hdf5 shards; "
                   "npz-episodes: one npz per episode with image/action/reward[/discount] (LOMPO's authors).")
@click.option("--env", required=True, help="The lompo-bench env the data was collected in (e.g. walker).")
@click.option("--out", type=click.Path(path_type=Path), required=True, help="The new store (<name>.zarr).")
@click.option("--split", default="imported", show_default=True, help="Split name recorded in the store.")
@click.option("--random-return", type=float, default=None,
              help="Reference return of a random policy (the 0 of the normalized score).")
@click.option("--expert-return", type=float, default=None,
              help="Reference return of an expert (the 100). Without both, the normalized score is undefined.")
@click.option("--overwrite", is_flag=True, help="Replace an existing complete store.")
def import_(src, fmt, env, out, split, random_return, expert_return, overwrite):
    """Import episodes written by other tools (V-D4RL, Dreamer-style npz) into a verified store."""
    from .store.importers import import_episodes

    written = import_episodes(src, fmt, env, out, split=split, random_return=random_return,
                              expert_return=expert_return, overwrite=overwrite, say=click.echo, progress=sys.stderr.isatty())
    click.echo(f"wrote {written} (verified)")
