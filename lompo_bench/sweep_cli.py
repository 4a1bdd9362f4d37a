"""`lompo-bench sweep`: a grid of runs on Ray, resumable, optionally published (`sweep.py`)."""

from __future__ import annotations

import os
from pathlib import Path

import click

from . import profiles


@click.command("sweep", context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--algos", required=True, help="Comma-separated algorithms, e.g. lompo,lmbrl,slac,cql,bc.")
@click.option("--envs", "envs", required=True, help="Comma-separated envs: walker, dclaw-screw, adroit-pen, sawyer-door.")
@click.option("--splits", default="medium-replay,medium-expert,expert", show_default=True,
              help="Comma-separated dataset splits.")
@click.option("--seeds", default="0", show_default=True, help="Seeds: a list and/or ranges, e.g. 0-2 or 0,3.")
@click.option("--profile", default=profiles.DEFAULT_PROFILE, show_default=True, help="smoke, cpu or paper.")
@click.option("--set", "settings", multiple=True, metavar="KEY=VALUE",
              help="Override a config field of every algorithm of the grid (repeatable).")
@click.option("--collect", is_flag=True,
              help="Make any missing dataset first (one job per env: its SAC run of seed 0, then the splits).")
@click.option("--publish", is_flag=True, help="Append each finished run to the leaderboard CSV as it completes.")
@click.option("--skip-published", is_flag=True,
              help="With --publish: do not train a run the CSV already has a row for (same algorithm, env, split, "
                   "seed, profile and dataset checksum), so the same sweep on fresh machines builds the table up. "
                   "Not with --set.")
@click.option("--csv", "csv_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Leaderboard CSV for --publish [default: leaderboard/leaderboard.csv of the checkout].")
@click.option("--address", default=None,
              help="Ray cluster to join (default: $RAY_ADDRESS, else a local Ray started on this machine).")
@click.option("--cpus-per-job", type=float, default=1.0, show_default=True)
@click.option("--gpus-per-job", type=float, default=0.0, show_default=True)
@click.option("--local-cpus", type=int, default=None,
              help="CPUs of the local Ray when no cluster is joined (default: all of this machine's).")
@click.option("--runs-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Root of the run directories (default: $LOMPO_BENCH_HOME/runs; same layout as `run`).")
def sweep(algos, envs, splits, seeds, profile, settings, collect, publish, skip_published, csv_path, address,
          cpus_per_job, gpus_per_job, local_cpus, runs_dir):
    """Train every ALGO x ENV x SPLIT x SEED of a grid as Ray jobs, then print Table I for it.

    Finished runs are skipped, interrupted ones resume from their checkpoints: rerunning the
    same command after a kill trains only what is missing. Each job logs to <run_dir>/sweep.log;
    a failed job is reported with its log and does not stop the others (exit status 1 if any
    failed).

    \b
    Example:
      lompo-bench sweep --algos lompo,lmbrl,slac,cql,bc --envs walker --seeds 0-1 --profile cpu --publish
    """
    from lompo_bench.leaderboard import csv_store, table

    from . import sweep as sweeps
    from .errors import UserError

    if local_cpus is not None and local_cpus < 1:
        raise UserError(f"--local-cpus must be >= 1, got {local_cpus}")
    if local_cpus is not None and (address or os.environ.get("RAY_ADDRESS")):
        raise UserError("--local-cpus sizes a local Ray; with --address (or RAY_ADDRESS) the cluster has its own CPUs")
    if csv_path is not None and not publish:
        raise UserError("--csv goes with --publish (the CSV the runs are published to)")
    grid = sweeps.Grid.parse(algos, envs, splits, seeds, profile, settings)
    plan = sweeps.plan(grid, collect=collect, runs_root=runs_dir)
    csv_path = (csv_path or csv_store.default_csv_path()).resolve() if publish else None
    runner = sweeps.Sweep(plan, address=address, cpus_per_job=cpus_per_job, gpus_per_job=gpus_per_job,
                          local_cpus=local_cpus, publish_csv=csv_path, skip_published=skip_published)
    runner.say(f"sweep: {len(grid.algos)} algorithms x {len(grid.envs)} envs x {len(grid.splits)} splits x "
               f"{len(grid.seeds)} seeds [{profile}]: {len(plan.finished)} finished (skipped), "
               f"{sum(j.kind == 'train' for j in plan.jobs)} to train, "
               f"{sum(j.kind == 'collect' for j in plan.jobs)} datasets to collect")
    if csv_path is not None and plan.finished:
        published, refused = sweeps.publish_finished(plan.finished, csv_path)
        if published:
            runner.say(f"published {published} finished run(s) missing from {csv_path}")
        for run_dir, reason in refused:
            runner.say(f"not published {run_dir}: {reason}")
    jobs = runner.run()

    failed = [j for j in jobs if j.state == "failed"]
    rows, notes = sweeps.grid_rows(sweeps.finished_runs(jobs, plan), csv_path)
    rows += [j.published_row for j in jobs if j.published_row is not None]
    click.echo(table.render(rows, "md", profile, source=str(csv_path) if csv_path else "this sweep's run directories"),
               nl=False)
    for note in notes:
        runner.say(f"not in the table: {note}")
    c = runner.counts()
    published_before = sum(j.published_row is not None for j in jobs)
    runner.say(f"sweep finished: {c['done'] - published_before} done, {len(failed)} failed, {len(plan.finished)} "
               f"skipped (already finished)" + (f", {published_before} skipped (already published)"
                                                if published_before else ""))
    for job in failed:
        runner.say(f"  failed {job.key}: {job.message} (log: {job.log_path})")
    if failed:
        click.get_current_context().exit(1)
