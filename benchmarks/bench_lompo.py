"""LOMPO training speed at the `cpu` and `paper` network sizes, through `LOMPO.train_step`.

For each profile: latent-model gradient steps/s (and frames/s: batch x length per step), the
share of model-step time spent waiting for window batches from a real dataset store (the
batches are prefetched on a background thread; the target is < 5%), the time of one buffer-fill
batch (posterior of real windows; H-step ensemble rollouts), SAC agent steps/s (256+256 or the
profile's batch, buffer refreshes every `epoch_length` steps included), and the projected
wall time of a whole run at that profile (training only; evaluation comes on top).

The store is a walker dataset of uniform-random episodes rendered here at 64 px (the paper's
and the cpu profile's walker size), or `--store PATH`. Timings on a shared machine vary: run
it alone for figures you quote.

    python benchmarks/bench_lompo.py [--device cpu|cuda] [--profiles cpu,paper] [--model-steps 4]
        [--agent-steps 200] [--threads 1] [--store PATH]
Writes bench-output/bench_lompo.json.

Measured here (2 shared cores, load 3-9 from other jobs, 1 thread, walker 64 px, warm store cache):
  cpu   16x32 windows, depth 16, deter 128: 1.33 s/model step (385 frames/s), data wait 0.0%,
        21 SAC steps/s at 128+128, projected training 1.0 h at 2,000 model + 20,000 agent steps
  paper 64x50 windows, depth 32, deter 256: 22 s/model step (145 frames/s), data wait 0.0%,
        17 SAC steps/s at 256+256, projected 155 h: the paper profile is for an accelerator.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent


def random_walker_store(path: Path, episodes: int, steps: int, image_size: int = 64):
    from lompo_bench import envs
    from lompo_bench.store import Dataset, DatasetWriter

    env = envs.make("walker", image_size=image_size, seed=0)
    writer = DatasetWriter.open(path, {"env": envs.env_attrs("walker", image_size), "split": "random",
                                       "collector": {"algorithm": "uniform-random", "seed": 0}})
    rng = np.random.default_rng(0)
    for e in range(episodes):
        obs, info = env.reset(seed=e)
        rows = {"image": [obs["image"]], "action": [np.zeros(6, np.float32)], "reward": [0.0]}
        for _ in range(steps):
            action = rng.uniform(-1, 1, 6).astype(np.float32)
            obs, reward, *_ = env.step(action)
            rows["image"].append(obs["image"]), rows["action"].append(action), rows["reward"].append(reward)
        arrays = {k: np.stack(v) for k, v in rows.items()}
        n = steps + 1
        arrays.update(is_first=np.arange(n) == 0, is_last=np.arange(n) == n - 1, is_terminal=np.zeros(n, bool))
        writer.add_episode(arrays)
    writer.finalize()
    return Dataset.open(path)


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def bench_profile(profile: str, dataset, device: str, model_steps: int, agent_steps: int) -> dict:
    from lompo_bench.algorithms.base import DataSpec
    from lompo_bench.algorithms.lompo import LOMPO, phase_lengths

    spec = DataSpec.from_dataset(dataset)
    full = LOMPO.config_for(profile, spec)
    c = full
    rows = c.model_batch * c.model_length
    # A short run with the profile's sizes: the measured model steps (+1 warm-up), one batch
    # of each fill, then the measured agent steps (covering a buffer refresh).
    config = dataclasses.replace(full, model_steps=model_steps + 1, agent_steps=agent_steps + 1,
                                 real_fill_steps=1, latent_init_transitions=1)
    agent = LOMPO(config, spec, device=device, seed=0)
    step, waits, model_times = 0, [], []
    agent.train_step(dataset, step)  # warm-up (allocations, first chunk reads)
    step += 1
    for _ in range(model_steps):
        sync(device)
        t0 = time.perf_counter()
        metrics = agent.train_step(dataset, step)
        sync(device)
        model_times.append(time.perf_counter() - t0)
        waits.append(metrics["data_wait_s"])
        step += 1
    fill_times = []
    for _ in range(2):  # one real fill batch, one latent warm-up batch
        sync(device)
        t0 = time.perf_counter()
        agent.train_step(dataset, step)
        sync(device)
        fill_times.append(time.perf_counter() - t0)
        step += 1
    agent.train_step(dataset, step)  # first SAC step: warm-up
    step += 1
    sync(device)
    t0 = time.perf_counter()
    for _ in range(agent_steps):
        agent.train_step(dataset, step)
        step += 1
    sync(device)
    agent_time = (time.perf_counter() - t0) / agent_steps

    # Sampling alone, for reference: a window batch straight from the store (warm cache).
    rng = np.random.default_rng(1)
    t0 = time.perf_counter()
    for _ in range(3):
        dataset.sample_windows(c.model_batch, c.model_length, rng, keys=["image", "action", "reward", "is_first", "is_terminal"])
    sample_time = (time.perf_counter() - t0) / 3

    model_time = float(np.median(model_times))
    _, real_batches, latent_batches, _ = phase_lengths(full)
    projected = (full.model_steps * model_time + real_batches * fill_times[0] + latent_batches * fill_times[1]
                 + full.agent_steps * agent_time)
    return {
        "profile": profile, "device": device, "image_size": spec.image_shape[0],
        "model_batch": f"{c.model_batch}x{c.model_length}", "deter": c.deter, "depth": c.depth,
        "model_step_s": model_time, "model_steps_per_s": 1 / model_time, "frames_per_s": rows / model_time,
        "data_wait_share": float(np.sum(waits) / np.sum(model_times)),
        "sample_windows_s": sample_time,
        "real_fill_batch_s": fill_times[0], "latent_fill_batch_s": fill_times[1],
        "agent_batch": 2 * c.agent_batch, "agent_step_s": agent_time, "agent_steps_per_s": 1 / agent_time,
        "model_steps": full.model_steps, "agent_steps": full.agent_steps,
        "projected_train_h": projected / 3600,
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--profiles", default="cpu,paper")
    parser.add_argument("--model-steps", type=int, default=None, help="measured model steps (default: cpu 8, paper 2)")
    parser.add_argument("--agent-steps", type=int, default=None, help="measured SAC steps (default: cpu 300, paper 100)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads (default 1: on a shared, oversubscribed machine 2 threads spin-wait "
                             "and run up to 10x slower; on an idle 2-core machine use 2)")
    parser.add_argument("--store", default=None, help="a walker dataset store (default: write a random one)")
    parser.add_argument("--out", default=str(ROOT / "bench-output" / "bench_lompo.json"))
    args = parser.parse_args(argv)
    torch.set_num_threads(max(1, args.threads))
    from lompo_bench.store import Dataset

    with tempfile.TemporaryDirectory() as tmp:
        if args.store:
            dataset = Dataset.open(args.store)
        else:
            print("writing a random walker store (8 episodes x 250 steps, 64 px) ...", file=sys.stderr)
            dataset = random_walker_store(Path(tmp) / "walker.zarr", episodes=8, steps=250)
        results = []
        for profile in args.profiles.split(","):
            model_steps = args.model_steps or (8 if profile == "cpu" else 2)
            agent_steps = args.agent_steps or (300 if profile == "cpu" else 100)
            if args.device.startswith("cuda"):
                model_steps, agent_steps = max(model_steps, 20), max(agent_steps, 1000)
            print(f"{profile}: {model_steps} model steps, {agent_steps} agent steps on {args.device} ...", file=sys.stderr)
            results.append(bench_profile(profile, dataset, args.device, model_steps, agent_steps))
            print(f"  {json.dumps(results[-1])}", file=sys.stderr, flush=True)

    print(f"\nLOMPO train_step on {args.device} ({torch.get_num_threads()} threads), walker 64 px")
    header = ("profile", "batch", "model step", "frames/s", "data wait", "real fill", "latent fill", "agent steps/s",
              "projected run")
    print(" | ".join(header))
    for r in results:
        print(" | ".join([r["profile"], r["model_batch"], f"{r['model_step_s']:.3f} s", f"{r['frames_per_s']:.0f}",
                          f"{100 * r['data_wait_share']:.1f}%", f"{r['real_fill_batch_s']:.2f} s",
                          f"{r['latent_fill_batch_s']:.2f} s", f"{r['agent_steps_per_s']:.0f} (x{r['agent_batch']})",
                          f"{r['projected_train_h']:.2f} h"]))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"device": args.device, "threads": torch.get_num_threads(), "results": results}, indent=2))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
