"""`lompo-bench run` (train + evaluate one algorithm on one dataset) and `lompo-bench algos list`."""

from __future__ import annotations

import dataclasses

import click

from . import profiles
from .errors import UserError
from .runner import THREADS_HELP


@click.command("run", context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("algo")
@click.option("--env", "env", required=True, help="walker, dclaw-screw, adroit-pen or sawyer-door.")
@click.option("--split", default=None, help="Dataset split (default medium-expert, or the --data store's own).")
@click.option("--seed", default=0, show_default=True, type=int,
              help="Seed of the networks, sampling and evaluation (0 to 2**31-1).")
@click.option("--profile", default=profiles.DEFAULT_PROFILE, show_default=True,
              help="smoke (seconds), cpu (15-40 min a run on one core) or paper (the paper's sizes; an accelerator).")
@click.option("--data", default=None,
              help="Dataset store (a path, or a URL such as https://... or s3://...) to train on (default: $LOMPO_BENCH_HOME/datasets/[<profile>/]<env>/<split>.zarr).")
@click.option("--steps", type=int, default=None,
              help="Gradient steps in all; the algorithm's phases are scaled proportionally.")
@click.option("--set", "settings", multiple=True, metavar="KEY=VALUE",
              help="Override a config field (repeatable); `lompo-bench algos list` shows the keys.")
@click.option("--out", type=click.Path(), default=None,
              help="Run directory (default: $LOMPO_BENCH_HOME/runs/<algo>/<profile>/<env>/<split>/seed<N>).")
@click.option("--eval-episodes", type=int, default=None, help="Episodes per evaluation, >= 1 (default 10; smoke 2).")
@click.option("--eval-every", type=int, default=None, help="Steps between evaluations, >= 1 (default: 10-20 per run).")
@click.option("--checkpoint-every", type=int, default=None, help="Steps between checkpoints, >= 1 (default: 20 per run).")
@click.option("--device", default=None, help="cpu or cuda (default: cuda if available, else cpu).")
@click.option("--overwrite", is_flag=True, help="Redo a finished run in the same run directory.")
@click.option("--threads", type=int, default=1, show_default=True, help=THREADS_HELP)
@click.option("--no-progress", is_flag=True, help="No progress bar (messages still go to stderr).")
def run(algo, env, split, seed, profile, data, steps, settings, out, eval_episodes, eval_every,
        checkpoint_every, device, overwrite, threads, no_progress):
    """Train ALGO on a dataset of ENV, evaluate it in the real env from images, write result.json.

    Rerunning the same command resumes a killed run from its last checkpoint.

    \b
    Example:
      lompo-bench run bc --env walker --profile smoke
      lompo-bench run lompo --env adroit-pen --set penalty_lambda=1.0 --seed 1
    """
    from .runner import parse_settings, run as run_algorithm, set_torch_threads

    set_torch_threads(threads)
    run_dir = run_algorithm(algo, env, split, seed=seed, profile=profile, data=data, steps=steps,
                            overrides=parse_settings(settings), out=out, device=device,
                            eval_episodes=eval_episodes, eval_every=eval_every,
                            checkpoint_every=checkpoint_every, overwrite=overwrite, progress=not no_progress)
    click.echo(str(run_dir / "result.json"))


@click.group("algos", context_settings={"help_option_names": ["-h", "--help"]})
def algos():
    """The registered algorithms and their configs."""


def _spec_for(env: str, profile: str):
    """The DataSpec of the profile's default dataset of `env` if it exists, else of the env itself."""
    from . import paths
    from .runner import DEFAULT_SPLIT
    from lompo_bench import envs
    from lompo_bench.algorithms.base import DataSpec

    if env not in envs.ENV_NAMES:
        from .errors import choice_error

        raise choice_error("env", env, envs.ENV_NAMES)
    path = paths.dataset_path(env, DEFAULT_SPLIT, profile)
    if path.exists():
        from .store import Dataset

        return DataSpec.from_dataset(Dataset.open(path)), f"from {path}"
    made = envs.make(env)
    try:
        space = made.observation_space
        spec = envs.SPECS[env]
        data_spec = DataSpec(env=env, image_shape=tuple(space["image"].shape),
                             proprio_dim=int(space["proprio"].shape[0]) if "proprio" in space.spaces else 0,
                             action_dim=int(made.action_space.shape[0]), horizon=int(spec.horizon),
                             action_repeat=int(spec.action_repeat))
    finally:
        made.close()
    return data_spec, f"paper image size; no {profile} dataset at {path}"


@algos.command("list")
@click.option("--profile", default=None, help="Show the values this profile uses (needs --env).")
@click.option("--env", "env", default=None, help="Env whose dataset shapes the scaled values.")
def list_algos(profile, env):
    """Each algorithm with its config fields and defaults (the paper's), and with --profile and
    --env the values that profile uses."""
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    from . import registry

    if profile is not None:
        profiles.check(profile)
    if (profile is None) != (env is None):
        raise UserError("--profile and --env go together (the scaled values depend on both); pass both or neither")
    spec, spec_note = _spec_for(env, profile) if env else (None, None)
    console = Console()
    for name in registry.available():
        cls = registry.get(name)
        summary = " ".join((cls.__doc__ or "").strip().split("\n\n")[0].split())
        defaults = cls.Config()
        scaled = cls.config_for(profile, spec) if spec is not None else None
        console.print(f"[bold]{name}[/bold]  {summary}")
        table = Table(show_edge=False, pad_edge=False)
        table.add_column("key")
        table.add_column("type")
        table.add_column("default (paper)")
        if scaled is not None:
            table.add_column(f"{profile} / {env}")
        from .runner import config_types, type_name

        types_ = config_types(defaults)
        for f in dataclasses.fields(defaults):
            tp = types_[f.name]
            cells = [escape(c) for c in (f.name, type_name(tp), repr(getattr(defaults, f.name)))]
            if scaled is not None:
                value = getattr(scaled, f.name)
                shown = escape(repr(value))
                cells.append(shown if value == getattr(defaults, f.name) else f"[cyan]{shown}[/cyan]")
            table.add_row(*cells)
        console.print(table)
        console.print()
    if spec_note:
        console.print(f"[dim]{profile} values for {env}: {spec_note}[/dim]")
    console.print("[dim]Override any key with `lompo-bench run ALGO --set key=value`.[/dim]")
