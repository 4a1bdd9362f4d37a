"""`lompo-bench leaderboard publish | table | plot`."""

from __future__ import annotations

from pathlib import Path

import click

from lompo_bench.errors import UserError
from lompo_bench.profiles import PROFILES

from . import csv_store, table
from .plot import plot as plot_blocks

CSV_OPTION = click.option("--csv", "csv_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
                          help="Leaderboard CSV [default: leaderboard/leaderboard.csv of the checkout].")
PROFILE_OPTION = click.option("--profile", type=click.Choice(PROFILES), default=None,
                              help="Only this profile [default: every profile, each in its own block].")


@click.group()
def leaderboard():
    """Publish finished runs to the leaderboard CSV and regenerate the paper's Table I from it."""


@leaderboard.command()
@click.argument("run_dirs", nargs=-1, required=True, type=click.Path(path_type=Path))
@CSV_OPTION
@click.option("--no-verify", is_flag=True,
              help="Do not re-verify the runs' datasets (needed when a dataset is not on this machine); "
                   "the row records dataset_verified=false.")
@click.option("--dry-run", is_flag=True, help="Check the runs and report, write nothing.")
def publish(run_dirs, csv_path, no_verify, dry_run):
    """Append one row per finished run directory (its result.json) to the leaderboard.

    Each run's dataset is re-verified, its normalized score recomputed from the raw return
    and the dataset's reference returns; runs already published, with missing fields or with
    an incomplete or corrupt dataset are refused, one line each (exit status 1 if any was).
    """
    report = csv_store.publish(run_dirs, csv_path, verify=not no_verify, dry_run=dry_run)
    verb = "would publish" if dry_run else "published"
    for run_dir, row in report.published:
        click.echo(f"{verb} {run_dir}: {row['algorithm']} {row['env']}/{row['split']} seed {row['seed']} "
                   f"[{row['profile']}] score {row['normalized_score']:.1f} (run_id {row['run_id']})")
    for run_dir, reason in report.refused:
        click.echo(f"refused {run_dir}: {reason}", err=True)
    click.echo(f"{len(report.published)} {verb}, {len(report.refused)} refused -> {report.csv_path}"
               + (" (dry run: nothing written)" if dry_run else ""))
    if report.refused:
        click.get_current_context().exit(1)


@leaderboard.command("table")
@PROFILE_OPTION
@click.option("--format", "fmt", type=click.Choice(table.FORMATS), default="md", show_default=True)
@CSV_OPTION
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write to this file instead of standard output.")
def table_command(profile, fmt, csv_path, out):
    """Table I: (env, split) x algorithm, mean ± std over seeds beside the paper's value, plus
    each algorithm's IQM with a 95% stratified-bootstrap interval."""
    csv_path = csv_path or csv_store.default_csv_path()
    csv_store.clean_stale_temps(csv_path)
    rows = csv_store.read_rows(csv_path)
    text = table.render(rows, fmt, profile, source=_display_path(csv_path))
    if out is None:
        click.echo(text, nl=False)
    else:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text)
        click.echo(f"wrote {out} ({len(rows)} rows from {csv_path})", err=True)


@leaderboard.command("plot")
@PROFILE_OPTION
@CSV_OPTION
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="PNG to write.")
def plot_command(profile, csv_path, out):
    """Per-cell bars (mean ± std over seeds) with the paper's values as markers, and each
    algorithm's IQM with its 95% interval."""
    if out.suffix.lower() != ".png":
        raise UserError(f"--out {out} is not a .png file; accepted: a path ending in .png")
    csv_path = csv_path or csv_store.default_csv_path()
    csv_store.clean_stale_temps(csv_path)
    rows = csv_store.read_rows(csv_path)
    plot_blocks(table.build(rows, profile), out)
    click.echo(f"wrote {out}")


def _display_path(path: Path) -> str:
    try:
        root = csv_store.paths.repo_root()
        return str(path.resolve().relative_to(root)) if root else str(path)
    except ValueError:
        return str(path)
