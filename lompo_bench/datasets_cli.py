"""``lompo-bench datasets``: list, inspect, verify, migrate, re-render and export dataset stores.

``info`` and ``verify`` (and ``export``, through ``Dataset.open``) take a local path or an
fsspec URL (``http(s)://``, ``s3://``, ``gs://``, ``file://``); ``--cache-dir`` (or
``$LOMPO_BENCH_CACHE``) keeps a remote store's raw chunks on local disk.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import click

from . import paths
from .errors import UserError


@click.group()
def datasets():
    """Dataset stores: list | info PATH | verify PATH | migrate PATH | rerender PATH | export PATH | import SRC.

    PATH is a store folder or a URL (http(s)://, s3://, gs://, file://)."""


def _disk_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def _where(path: str):
    """A URL stays a string (``Path`` would collapse its ``//``); anything else is a local path."""
    from .store import is_url

    return path if is_url(path) else Path(path).expanduser()


_cache_dir_option = click.option(
    "--cache-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
    help="Keep a remote store's raw chunks in this folder (default: $LOMPO_BENCH_CACHE, else none).")


def _human(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


@datasets.command("list")
@click.option("--root", type=click.Path(path_type=Path), default=None,
              help="Folder to search (default: $LOMPO_BENCH_HOME/datasets).")
def list_(root):
    """Every dataset store under the datasets folder, one row each."""
    from rich.console import Console
    from rich.table import Table

    from .store import read_attrs

    root = root or paths.datasets_dir()
    stores = sorted(p for p in root.rglob("*.zarr") if (p / "zarr.json").is_file()) if root.exists() else []
    if not stores:
        click.echo(f"no dataset stores under {root} (make one: lompo-bench collect walker --split random)")
        return
    table = Table("path", "env", "split", "episodes", "rows", "disk", "status", "checksum")
    for p in stores:
        try:
            a = read_attrs(p)
        except UserError as exc:
            table.add_row(str(p.relative_to(root)), "", "", "", "", "", f"[red]{exc.format_message()}[/red]", "")
            continue
        status = "complete" if a.get("complete") else "[yellow]incomplete[/yellow]"
        if a.get("format_version") == 1:
            status += " [yellow](format 1: datasets migrate)[/yellow]"
        episodes = a.get("num_episodes", a.get("progress", {}).get("episodes", 0))
        rows = a.get("num_rows", a.get("progress", {}).get("rows", 0))
        table.add_row(str(p.relative_to(root)), str(a.get("env", {}).get("name")), str(a.get("split")),
                      str(episodes), str(rows), _human(_disk_bytes(p)), status, (a.get("checksum") or "")[:12])
    Console().print(table)


@datasets.command()
@click.argument("path")
@click.option("--json", "as_json", is_flag=True, help="All attributes as JSON.")
@_cache_dir_option
def info(path, as_json, cache_dir):
    """What a store holds: env, split, collector, sizes, arrays, checksums (after the cheap structure check)."""
    from .store import Dataset

    ds = Dataset.open(_where(path), cache_bytes=0, allow_incomplete=True, cache_dir=cache_dir)
    arrays = {k: {"shape": list(ds.shape(k)), "dtype": str(ds.reader(k).dtype),
                  "chunk_rows": ds.reader(k).chunk_rows} for k in ds.keys}
    lengths = (ds.episode_ends - ds.episode_starts - 1).tolist()
    summary = {"path": str(path), "format_version": ds.format_version, "num_episodes": ds.num_episodes,
               "num_rows": ds.num_rows, "num_transitions": ds.num_transitions,
               "disk_bytes": ds.location.disk_bytes(), "arrays": arrays,
               "episode_steps": {"min": min(lengths, default=0), "max": max(lengths, default=0)}}
    if as_json:
        click.echo(json.dumps({**summary, "attrs": ds.attrs}, indent=2, default=str))
        return
    a = ds.attrs
    env = a.get("env", {})
    click.echo(f"{path}: {'complete' if a.get('complete') else 'INCOMPLETE (resume by re-running its command)'}")
    click.echo(f"  env        {env.get('name')} (image {env.get('image_size')} px, action repeat "
               f"{env.get('action_repeat')}, horizon {env.get('horizon')})")
    click.echo(f"  split      {a.get('split')}   profile {a.get('profile', '-')}")
    click.echo(f"  collector  {json.dumps(a.get('collector', {}))}")
    click.echo(f"  episodes   {ds.num_episodes} ({summary['episode_steps']['min']}-{summary['episode_steps']['max']} "
               f"steps), {ds.num_transitions} transitions, {ds.num_rows} rows")
    ref = a.get("reference_returns") or {}
    click.echo(f"  reference  random {ref.get('random')}  expert {ref.get('expert')}")
    disk = "size unknown (the server cannot list)" if summary["disk_bytes"] is None else \
        f"{_human(summary['disk_bytes'])} on disk"
    click.echo(f"  storage    format {ds.format_version}, {a.get('storage', {}).get('codec')}, {disk}")
    for k, v in arrays.items():
        click.echo(f"  data/{k:<12} {v['dtype']:<8} {tuple(v['shape'])}")
    click.echo(f"  checksum   {a.get('checksum')}")
    prov = a.get("provenance", {})
    click.echo(f"  made by    lompo-bench {prov.get('package_version')} at {prov.get('commit')}, {prov.get('created')}")


@datasets.command()
@click.argument("path")
@_cache_dir_option
def verify(path, cache_dir):
    """Recompute every checksum and check the structure and attributes; exit 1 naming each problem."""
    from rich.progress import Progress

    from .store import read_attrs, verify as verify_store

    where = _where(path)
    try:
        episodes = read_attrs(where).get("num_episodes") or 0
    except UserError:
        episodes = 0
    if cache_dir is None and os.environ.get("LOMPO_BENCH_CACHE"):
        cache_dir = os.environ["LOMPO_BENCH_CACHE"]
    with Progress(transient=True) as bar:
        task = bar.add_task("verifying", total=episodes or None)
        problems = verify_store(where, progress=lambda done, total: bar.update(task, completed=done),
                                cache_dir=cache_dir)
    if problems:
        for p in problems:
            click.echo(f"problem: {p}", err=True)
        raise SystemExit(1)
    click.echo(f"{path}: ok ({episodes} episodes, all array and attribute checksums match)")


@datasets.command()
@click.argument("path", type=click.Path(path_type=Path))
def migrate(path):
    """Upgrade a format 1 store to the current format in place: verify every array, write the
    chunk files format 1 skipped, add attribute checksums. The dataset id does not change."""
    from rich.progress import Progress

    from .store import migrate as migrate_store, read_attrs

    episodes = read_attrs(path).get("num_episodes") or 0
    with Progress(transient=True) as bar:
        task = bar.add_task("verifying", total=episodes or None)
        done = migrate_store(path, progress=lambda n, total: bar.update(task, completed=n))
    click.echo(done)


@datasets.command()
@click.argument("path")
@click.option("--image-size", type=int, required=True, help="Side of the new square frames, in pixels (32-1024).")
@click.option("--out", type=click.Path(path_type=Path), default=None,
              help="New store (default: <stem>-<size>px.zarr next to PATH).")
@click.option("--overwrite", is_flag=True, help="Replace an existing output store.")
def rerender(path, image_size, out, overwrite):
    """Re-render every frame of a store at another size from its physics states (no retraining)."""
    from .collectors.rerender import rerender as rerender_store

    written = rerender_store(_where(path), image_size, out, overwrite=overwrite)
    click.echo(f"wrote {written}")


# Exchange with other tools (export to / import from D4RL, Minari, V-D4RL, d3rlpy) lives in its own module.
from .interop_cli import export, import_  # noqa: E402

datasets.add_command(export)
datasets.add_command(import_, "import")
