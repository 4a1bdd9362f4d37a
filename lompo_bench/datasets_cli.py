"""``lompo-bench datasets``: list, inspect, verify and export dataset stores."""

from __future__ import annotations

import json
from pathlib import Path

import click

from . import paths
from .errors import UserError


@click.group()
def datasets():
    """Dataset stores: list | info PATH | verify PATH | export PATH --format {npz,hdf5,minari}."""


def _disk_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


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
        episodes = a.get("num_episodes", a.get("progress", {}).get("episodes", 0))
        rows = a.get("num_rows", a.get("progress", {}).get("rows", 0))
        table.add_row(str(p.relative_to(root)), str(a.get("env", {}).get("name")), str(a.get("split")),
                      str(episodes), str(rows), _human(_disk_bytes(p)), status, (a.get("checksum") or "")[:12])
    Console().print(table)


@datasets.command()
@click.argument("path", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="All attributes as JSON.")
def info(path, as_json):
    """What a store holds: env, split, collector, sizes, arrays, checksums."""
    from .store import Dataset

    ds = Dataset.open(path, cache_bytes=0, allow_incomplete=True)
    arrays = {k: {"shape": list(ds.shape(k)), "dtype": str(ds.reader(k).dtype),
                  "chunk_rows": ds.reader(k).chunk_rows} for k in ds.keys}
    lengths = (ds.episode_ends - ds.episode_starts - 1).tolist()
    summary = {"path": str(path), "num_episodes": ds.num_episodes, "num_rows": ds.num_rows,
               "num_transitions": ds.num_transitions, "disk_bytes": _disk_bytes(Path(path)), "arrays": arrays,
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
    click.echo(f"  storage    {a.get('storage', {}).get('codec')}, {_human(summary['disk_bytes'])} on disk")
    for k, v in arrays.items():
        click.echo(f"  data/{k:<12} {v['dtype']:<8} {tuple(v['shape'])}")
    click.echo(f"  checksum   {a.get('checksum')}")
    prov = a.get("provenance", {})
    click.echo(f"  made by    lompo-bench {prov.get('package_version')} at {prov.get('commit')}, {prov.get('created')}")


@datasets.command()
@click.argument("path", type=click.Path(path_type=Path))
def verify(path):
    """Recompute every checksum and check the structure; exit 1 naming each problem."""
    from rich.progress import Progress

    from .store import read_attrs, verify as verify_store

    try:
        episodes = read_attrs(path).get("num_episodes") or 0
    except UserError:
        episodes = 0
    with Progress(transient=True) as bar:
        task = bar.add_task("verifying", total=episodes or None)
        problems = verify_store(path, progress=lambda done, total: bar.update(task, completed=done))
    if problems:
        for p in problems:
            click.echo(f"problem: {p}", err=True)
        raise SystemExit(1)
    click.echo(f"{path}: ok ({episodes} episodes, all checksums match)")


@datasets.command()
@click.argument("path", type=click.Path(path_type=Path))
@click.option("--image-size", type=int, required=True, help="Side of the new square frames, in pixels (32-1024).")
@click.option("--out", type=click.Path(path_type=Path), default=None,
              help="New store (default: <stem>-<size>px.zarr next to PATH).")
@click.option("--overwrite", is_flag=True, help="Replace an existing output store.")
def rerender(path, image_size, out, overwrite):
    """Re-render every frame of a store at another size from its physics states (no retraining)."""
    from .collectors.rerender import rerender as rerender_store

    written = rerender_store(path, image_size, out, overwrite=overwrite)
    click.echo(f"wrote {written}")


# Exchange with other tools (export to / import from D4RL, Minari, V-D4RL, d3rlpy) lives in its own module.
from .interop_cli import export  # noqa: E402

datasets.add_command(export)
