"""``lompo-bench datasets export``: datasets out to (and in from) the field's other formats."""

from __future__ import annotations

from pathlib import Path

import click


@click.command()
@click.argument("path", type=click.Path(path_type=Path))
@click.option("--format", "fmt", type=click.Choice(["npz", "hdf5", "minari"]), required=True)
@click.option("--out", type=click.Path(path_type=Path), default=None,
              help="Output file (npz/hdf5; default: next to the store) or Minari dataset id.")
@click.option("--overwrite", is_flag=True, help="Replace an existing output.")
def export(path, fmt, out, overwrite):
    """Export to D4RL-style flat keys (npz, hdf5) or a Minari dataset."""
    from .store.exporters import export as export_store

    written = export_store(path, fmt, out, overwrite=overwrite)
    click.echo(f"wrote {written}")
