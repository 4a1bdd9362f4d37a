"""``lompo-bench collect ENV --split SPLIT``: write a dataset store.

Each split is one function in ``SPLIT_WRITERS`` taking the command's options; ``all``
writes every split in order. Re-running the same command resumes an unfinished store.
"""

from __future__ import annotations

from pathlib import Path

import click

from lompo_bench.profiles import DEFAULT_PROFILE, PROFILES, check as check_profile

from lompo_bench.errors import UserError
from lompo_bench.runner import THREADS_HELP

from .config import SAC_SPLITS, SPLIT_CHOICES, check_env, check_split


def _random(env, split, opts) -> Path:
    from .random_policy import collect_random

    return collect_random(env, profile=opts["profile"], seed=opts["seed"], episodes=opts["episodes"],
                          out=opts["out"], image_size=opts["image_size"], overwrite=opts["overwrite"],
                          codec=opts["codec"])


def _sac(env, split, opts) -> Path:
    from .collect import collect_sac_split
    from .config import check_positive

    size = None if opts["episodes"] is None else check_positive("--episodes", opts["episodes"]) * _horizon(env, opts["profile"])
    return collect_sac_split(env, split, profile=opts["profile"], seed=opts["seed"], out=opts["out"],
                             image_size=opts["image_size"], overwrite=opts["overwrite"], size=size,
                             codec=opts["codec"])


def _horizon(env, profile) -> int:
    from .config import budget
    from .sac import horizon_of

    return horizon_of(env, budget(env, profile))


SPLIT_WRITERS = {"random": _random, "medium-replay": _sac, "medium-expert": _sac, "expert": _sac}


@click.command()
@click.argument("env")
@click.option("--split", required=True, help=f"One of: {', '.join(SPLIT_CHOICES)}.")
@click.option("--episodes", type=int, default=None,
              help="Episodes to write (default: the profile's dataset size in whole episodes).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of SAC, the envs and sampling (0 to 2**31-1).")
@click.option("--out", type=click.Path(path_type=Path), default=None,
              help="Store path (*.zarr) or a folder for <split>.zarr stores "
                   "(default: $LOMPO_BENCH_HOME/datasets/[<profile>/]<env>/<split>.zarr).")
@click.option("--profile", default=DEFAULT_PROFILE, show_default=True, help=f"One of: {', '.join(PROFILES)}.")
@click.option("--image-size", type=int, default=None, help="Frame size in pixels (default: the profile's).")
@click.option("--codec", default=None, help="Chunk codec, e.g. lz4hc-5 (default), zstd-3, none.")
@click.option("--overwrite", is_flag=True, help="Replace an existing finished store.")
@click.option("--threads", type=int, default=1, show_default=True, help=THREADS_HELP)
def collect(env, split, threads, **opts):
    """Collect a dataset of ENV (walker, dclaw-screw, adroit-pen, sawyer-door) into a Zarr store."""
    from lompo_bench.runner import check_seed, set_torch_threads

    check_env(env)
    check_profile(opts["profile"])
    check_split(split)
    check_seed(opts["seed"])
    set_torch_threads(threads)
    # SAC splits first, so the random split finds the trained run's expert reference return.
    names = SAC_SPLITS + ("random",) if split == "all" else (split,)
    out = opts["out"]
    if out is not None and split == "all" and out.suffix == ".zarr":
        raise UserError(f"--out {out}: with --split all, --out is a folder for the <split>.zarr stores, not a .zarr path")
    _print_eta(env, opts, names)
    for name in names:
        # --out: a .zarr path is the store itself; anything else is a folder holding <split>.zarr
        opts["out"] = None if out is None else (out if out.suffix == ".zarr" else out / f"{name}.zarr")
        if split == "all" and not opts["overwrite"]:
            from lompo_bench import paths
            from .collect import keep_finished

            target = opts["out"] or paths.dataset_path(env, name, opts["profile"])
            if keep_finished(Path(target), env, name, opts["profile"]):
                click.echo(f"kept {target} (finished)")
                continue
        path = SPLIT_WRITERS[name](env, name, opts)
        click.echo(f"wrote {path}")


def _print_eta(env, opts, names) -> None:
    """The up-front estimate, so nobody starts a 100-hour CPU job unaware."""
    if not any(n in SAC_SPLITS for n in names):
        return
    from .collect import eta_seconds

    eta = eta_seconds(env, opts["profile"], opts["seed"], names)
    if eta >= 60:
        hours, minutes = divmod(round(eta / 60), 60)
        click.echo(f"{env} {opts['profile']}: about {hours} h {minutes:02d} min on 2 CPU cores "
                   f"(SAC at ~80 steps/s; resumable: rerun the same command after an interruption)", err=True)
