"""Evaluation speed: episodes one at a time vs side by side (issue 12's evaluation lead).

A run's evaluations (10 x 10 walker episodes of 500 steps at the cpu profile) were ~16% of a
cpu-profile LOMPO run, and half of each evaluation step was the policy's forward pass on one
frame, mostly per-call overhead. `evaluate` now steps the episodes of a `BatchPolicy` side by
side, one env each, one forward pass a step for all of them. For each algorithm at the cpu
profile (walker, 64 px, untrained networks: the cost does not depend on the weights), three
rates in env steps/s, interleaved over rounds so that load from other processes hits all alike:

- ``one``: `evaluate` with one env: the episodes one at a time (what every run did before).
- ``side by side``: `evaluate` with `--batch` envs (the runner's default, `EVAL_BATCH`).
- ``env only``: the same envs stepped with random actions, no policy: the ceiling.

Figures go to ``bench-output/bench_evaluation.json``.

    python benchmarks/bench_evaluation.py [--algos lompo,slac,cql,bc] [--episodes 10] [--horizon 100] [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from lompo_bench import registry
from lompo_bench.algorithms.base import DataSpec
from lompo_bench.evaluation import EVAL_BATCH, evaluate, make_eval_env

ROOT = Path(__file__).resolve().parent.parent
SPEC = DataSpec(env="walker", image_shape=(64, 64, 3), proprio_dim=0, action_dim=6, horizon=500, action_repeat=2)


def env_only(envs, episodes: int, seed: int) -> None:
    for first in range(0, episodes, len(envs)):
        for i, env in enumerate(envs[: episodes - first]):
            env.reset(seed=seed + first + i)
            env.action_space.seed(seed + first + i)
        running = list(envs[: episodes - first])
        while running:
            running = [e for e in running if not any(e.step(e.action_space.sample())[2:4])]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--algos", default="lompo,slac,cql,bc")
    parser.add_argument("--episodes", type=int, default=10)
    parser.add_argument("--horizon", type=int, default=100, help="agent steps per episode (walker's own: 500)")
    parser.add_argument("--batch", type=int, default=EVAL_BATCH)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)

    width = min(args.batch, args.episodes)
    envs = [make_eval_env("walker", image_size=64, horizon=args.horizon, seed=0) for _ in range(width)]
    steps = args.episodes * args.horizon
    policies = {}
    for name in args.algos.split(","):
        cls = registry.get(name)
        policies[name] = cls(cls.config_for("cpu", SPEC), SPEC, device="cpu", seed=0).policy()
    contenders = {"env only": lambda: env_only(envs, args.episodes, seed=0)}
    for name, policy in policies.items():
        contenders[f"{name} one"] = lambda p=policy: evaluate(p, envs[:1], episodes=args.episodes, seed=0)
        contenders[f"{name} side by side"] = lambda p=policy: evaluate(p, envs, episodes=args.episodes, seed=0)
    times: dict[str, list[float]] = {k: [] for k in contenders}
    for _ in range(args.rounds):
        for key, run in contenders.items():
            start = time.perf_counter()
            run()
            times[key].append(time.perf_counter() - start)
    for env in envs:
        env.close()

    rate = {k: steps / statistics.median(v) for k, v in times.items()}
    print(f"walker 64 px, {args.episodes} episodes x {args.horizon} steps, {width} side by side, "
          f"median of {args.rounds} rounds, one torch thread")
    print(f"{'algorithm':<10} {'one (steps/s)':>14} {'side by side':>13} {'speedup':>8} {'env only':>9}")
    rows = {}
    for name in policies:
        one, together = rate[f"{name} one"], rate[f"{name} side by side"]
        rows[name] = {"one_steps_per_s": one, "side_by_side_steps_per_s": together, "speedup": together / one}
        print(f"{name:<10} {one:>14.0f} {together:>13.0f} {together / one:>7.2f}x {rate['env only']:>9.0f}")
    out = ROOT / "bench-output"
    out.mkdir(exist_ok=True)
    (out / "bench_evaluation.json").write_text(json.dumps({
        "episodes": args.episodes, "horizon": args.horizon, "batch": width, "rounds": args.rounds,
        "env_only_steps_per_s": rate["env only"], "algorithms": rows,
        "machine": f"{platform.machine()} {platform.processor() or ''}".strip()}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
