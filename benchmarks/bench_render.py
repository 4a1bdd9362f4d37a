"""Rendering speed of the four envs: agent steps/s with images, our scene settings vs
MuJoCo's defaults, and vs a bare MuJoCo render of the same scene and size.

For each env and image size (64 and 84 px by default) three rates are measured side by side
in one process, interleaved over several rounds so that load from other processes hits all
three alike:

- ``default``: ``make(name, fast_scene=False)``: env steps (physics x action repeat + state
  + render) with the model's own scene settings (shadow maps, multisampling, reflections,
  skybox).
- ``ours``: ``make(name)``: the same with lompo-bench's fast scene settings.
- ``bare``: ``Renderer.update_scene`` + ``Renderer.render`` alone on the ``ours`` renderer:
  no physics, no env; the ceiling for ``ours``.
- ``physics``: ``make(name, render=False)``: env steps without images, i.e. the upstream
  task's own cost (physics x action repeat, reward, state). ``1 / (1/bare + 1/physics)`` is
  what ``ours`` can reach at best; the table shows it as ``bound``.

Targets (issue 2): ours >= 8x default, ours >= 80% of bare. Figures go to
``bench-output/bench_render.json``.

    python benchmarks/bench_render.py [--envs walker,adroit-pen] [--sizes 64,84] [--seconds 1.0] [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import numpy as np

from lompo_bench.envs import ENV_NAMES, make
from lompo_bench.provenance import stamp


def rate(fn, seconds: float, min_calls: int = 3) -> tuple[int, float]:
    """(calls, elapsed) of calling fn for about `seconds` (at least `min_calls` times)."""
    calls, start = 0, time.perf_counter()
    while True:
        fn()
        calls += 1
        elapsed = time.perf_counter() - start
        if elapsed >= seconds and calls >= min_calls:
            return calls, elapsed


def stepper(env, seed: int):
    env.action_space.seed(seed)
    env.reset(seed=seed)
    horizon = env.unwrapped.env_spec.horizon

    def step():
        # Stay mid-episode: reset (not timed separately) when the horizon is reached.
        if env.unwrapped._steps >= horizon:
            env.reset()
        env.step(env.action_space.sample())

    return step


def bare_renderer(env):
    inner = env.unwrapped
    inner._ensure_renderer()

    def render():
        inner._renderer.update_scene(inner.task.data, inner._camera)
        inner._renderer.render()

    return render


def measure(name: str, size: int, seconds: float, rounds: int) -> dict:
    default_env = make(name, image_size=size, fast_scene=False)
    ours_env = make(name, image_size=size)
    physics_env = make(name, render=False)
    runners = {
        "default": stepper(default_env, 0),
        "ours": stepper(ours_env, 0),
        "bare": bare_renderer(ours_env),
        "physics": stepper(physics_env, 0),
    }
    totals = {key: [0, 0.0] for key in runners}
    for key, fn in runners.items():  # warm-up: GL contexts, shader compilation, caches
        rate(fn, 0.0, min_calls=2)
    for _ in range(rounds):
        for key, fn in runners.items():
            calls, elapsed = rate(fn, seconds / (3 if key == "default" else 1))
            totals[key][0] += calls
            totals[key][1] += elapsed
    for env in (default_env, ours_env, physics_env):
        env.close()
    per_s = {key: calls / elapsed for key, (calls, elapsed) in totals.items()}
    return {
        "env": name,
        "image_size": size,
        "default_steps_per_s": per_s["default"],
        "ours_steps_per_s": per_s["ours"],
        "bare_renders_per_s": per_s["bare"],
        "physics_steps_per_s": per_s["physics"],
        "bound_steps_per_s": 1.0 / (1.0 / per_s["bare"] + 1.0 / per_s["physics"]),
        "speedup_vs_default": per_s["ours"] / per_s["default"],
        "fraction_of_bare": per_s["ours"] / per_s["bare"],
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--envs", default=",".join(ENV_NAMES))
    parser.add_argument("--sizes", default="64,84")
    parser.add_argument("--seconds", type=float, default=1.0, help="per measurement and round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", default="bench-output/bench_render.json")
    args = parser.parse_args(argv)

    rows = []
    header = (
        f"{'env':<12} {'px':>3} {'default/s':>10} {'ours/s':>8} {'bare/s':>8} {'physics/s':>10} {'bound/s':>8}"
        f" {'ours/default':>13} {'ours/bare':>10} {'ours/bound':>11}"
    )
    print(header)
    print("-" * len(header))
    for name in args.envs.split(","):
        for size in (int(s) for s in args.sizes.split(",")):
            row = measure(name, size, args.seconds, args.rounds)
            rows.append(row)
            print(
                f"{name:<12} {size:>3} {row['default_steps_per_s']:>10.1f} {row['ours_steps_per_s']:>8.1f} "
                f"{row['bare_renders_per_s']:>8.1f} {row['physics_steps_per_s']:>10.1f} {row['bound_steps_per_s']:>8.1f}"
                f" {row['speedup_vs_default']:>12.1f}x {row['fraction_of_bare']:>10.0%}"
                f" {row['ours_steps_per_s'] / row['bound_steps_per_s']:>11.0%}",
                flush=True,
            )
    speedups = [r["speedup_vs_default"] for r in rows]
    fractions = [r["fraction_of_bare"] for r in rows]
    print(f"min ours/default {min(speedups):.1f}x (target >= 8x); min ours/bare {min(fractions):.0%} (target >= 80%)")
    result = {
        "benchmark": "bench_render",
        "rows": rows,
        "settings": vars(args),
        "mujoco_gl": os.environ.get("MUJOCO_GL"),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "cpu_count": os.cpu_count(),
        "machine": platform.processor() or platform.machine(),
        "provenance": stamp(),
        "units": "agent steps per second with rendering (default, ours), without (physics); renders per second (bare)",
        "note": "wall-clock rates; other processes on the machine slow all columns alike (interleaved rounds)",
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
