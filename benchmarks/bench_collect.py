"""Collector speed: SAC agent steps/s with and without the recorded replay log, and what
rendering frames from physics states costs at dataset-write time.

    python benchmarks/bench_collect.py [--env walker] [--steps 600] [--frames 200]
    python benchmarks/bench_collect.py --compare [--env walker] [--steps 600] [--rounds 5]

1. SAC (the env's cpu-profile settings: 256x256 MLPs, batch 256, one update per step) on the
   ``state`` env, timed over ``--steps`` agent steps after a warm-up that fills the buffer,
   once recording every row (physics state included) and once without recording.
2. The env alone (uniform-random actions, no SAC), recording vs not: the per-step cost of
   recording without the SAC update hiding it.
3. Writing one dataset episode by episode: rendering the frames from physics states
   (``render_states``) vs the store write (compression, checksums), per frame, at the
   profile's and the paper's image sizes.

``--compare`` instead times SB3's own ``SAC`` against the collector's ``CollectorSAC``
(collectors/sac.py: the same algorithm with a leaner gradient step, bf16 bodies by default;
also shown in fp32) in interleaved rounds of
``--steps / --rounds`` agent steps each, both recording, and reports the median steps/s of
each and their ratio (``bench-output/bench_collect_compare.json``).

Prints a table and writes ``bench-output/bench_collect.json``. Timings are wall-clock on
whatever else the machine is doing.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np


def time_sac(env_name: str, steps: int, record: bool, warmup: int) -> float:
    """Agent steps/s of SB3 SAC with one gradient update per step."""
    from stable_baselines3.common.vec_env import DummyVecEnv

    from lompo_bench.collectors import config, sac

    budget = config.budget(env_name, "cpu")
    cfg = sac.effective_config(env_name, budget)
    import dataclasses

    cfg = dataclasses.replace(cfg, learning_starts=warmup)
    tmp = Path(tempfile.mkdtemp())
    log = sac.ReplayLog(tmp / "log", budget.log_chunk_rows) if record else None
    wrapper = sac.RecordingStateEnv(sac.make_env(env_name, budget), 0, log)
    model = sac._new_model(env_name, DummyVecEnv([lambda: wrapper]), cfg, budget, 0)
    model.learn(total_timesteps=warmup + 1)  # fills the buffer, first update
    start = time.perf_counter()
    model.learn(total_timesteps=steps, reset_num_timesteps=False)
    if log is not None:
        log.flush()
    elapsed = time.perf_counter() - start
    shutil.rmtree(tmp, ignore_errors=True)
    return steps / elapsed


def compare_sac(env_name: str, steps: int, rounds: int, warmup: int) -> dict:
    """Agent steps/s of SB3's SAC and of CollectorSAC (in fp32 and at its default precision),
    same settings and seed, interleaved."""
    import dataclasses
    import statistics

    import torch
    from stable_baselines3 import SAC
    from stable_baselines3.common.vec_env import DummyVecEnv

    from lompo_bench.collectors import config, sac

    torch.set_num_threads(1)  # as the collector runs
    budget = config.budget(env_name, "cpu")
    cfg = dataclasses.replace(sac.effective_config(env_name, budget), learning_starts=warmup)
    tmp = Path(tempfile.mkdtemp())
    models = {}
    for name in ("sb3 SAC", "CollectorSAC fp32", "CollectorSAC"):
        log = sac.ReplayLog(tmp / name.replace(" ", "_"), budget.log_chunk_rows)
        wrapper = sac.RecordingStateEnv(sac.make_env(env_name, budget), 0, log)
        model = sac._new_model(env_name, DummyVecEnv([lambda: wrapper]), cfg, budget, 0)
        if name == "sb3 SAC":  # SB3's own class and optimizer settings
            model = SAC("MlpPolicy", model.env, learning_rate=cfg.learning_rate, buffer_size=cfg.buffer_size,
                        learning_starts=cfg.learning_starts, batch_size=cfg.batch_size, tau=cfg.tau, gamma=cfg.gamma,
                        train_freq=cfg.train_freq, gradient_steps=cfg.gradient_steps, ent_coef=cfg.ent_coef,
                        policy_kwargs={"net_arch": list(cfg.net_arch)}, seed=0, device="auto", verbose=0)
        elif name == "CollectorSAC fp32":  # the leaner step without the bf16 autocast
            model.precision = "fp32"
        model.learn(total_timesteps=warmup + 1)  # fills the buffer, first update
        models[name] = model
    per_round = max(1, steps // rounds)
    rates: dict[str, list[float]] = {name: [] for name in models}
    for _ in range(rounds):
        for name, model in models.items():
            start = time.perf_counter()
            model.learn(total_timesteps=per_round, reset_num_timesteps=False)
            rates[name].append(per_round / (time.perf_counter() - start))
    shutil.rmtree(tmp, ignore_errors=True)
    medians = {name: statistics.median(r) for name, r in rates.items()}
    return {"env": env_name, "batch_size": cfg.batch_size, "net_arch": list(cfg.net_arch), "rounds": rates,
            "steps_per_s": medians, "speedup": medians["CollectorSAC"] / medians["sb3 SAC"],
            "speedup_fp32": medians["CollectorSAC fp32"] / medians["sb3 SAC"]}


def time_env(env_name: str, steps: int, record: bool) -> float:
    from lompo_bench.collectors import config, sac

    budget = config.budget(env_name, "cpu")
    tmp = Path(tempfile.mkdtemp())
    log = sac.ReplayLog(tmp / "log", budget.log_chunk_rows) if record else None
    env = sac.RecordingStateEnv(sac.make_env(env_name, budget), 0, log)
    rng = np.random.default_rng(0)
    env.reset()
    start = time.perf_counter()
    for _ in range(steps):
        _, _, term, trunc, _ = env.step(rng.uniform(-1, 1, env.action_space.shape))
        if term or trunc:
            env.reset()
    if log is not None:
        log.flush()
    elapsed = time.perf_counter() - start
    shutil.rmtree(tmp, ignore_errors=True)
    return steps / elapsed


def time_write(env_name: str, frames: int, image_size: int) -> dict:
    """Per-frame render and store-write time for one episode-by-episode dataset write."""
    from lompo_bench import envs
    from lompo_bench.collectors import config, sac
    from lompo_bench.collectors.collect import play_episode
    from lompo_bench.store import DatasetWriter

    budget = config.budget(env_name, "cpu")
    sim = sac.make_env(env_name, budget)

    class Uniform:  # a stand-in policy: what matters here is the rows, not their quality
        rng = np.random.default_rng(0)

        def predict(self, obs, deterministic=False):
            return self.rng.uniform(-1, 1, sim.action_space.shape).astype(np.float32), None

    episodes, rows = [], 0
    while rows < frames:
        ep = play_episode(Uniform(), sim, 0, len(episodes), deterministic=False)
        episodes.append(ep)
        rows += len(ep["physics"])
    envs.render_states(env_name, episodes[0]["physics"][:1], image_size)  # renderer start-up, not per frame
    tmp = Path(tempfile.mkdtemp())
    writer = DatasetWriter.open(tmp / "bench.zarr", {"env": {"name": env_name}, "split": "bench", "collector": {}})
    render_s = write_s = 0.0
    for ep in episodes:
        t0 = time.perf_counter()
        image = envs.render_states(env_name, ep["physics"], image_size)
        t1 = time.perf_counter()
        writer.add_episode({**{k: v for k, v in ep.items() if k not in ("episode", "step")}, "image": image})
        write_s += time.perf_counter() - t1
        render_s += t1 - t0
    writer.finalize()
    shutil.rmtree(tmp, ignore_errors=True)
    return {"frames": rows, "render_ms_per_frame": 1e3 * render_s / rows, "write_ms_per_frame": 1e3 * write_s / rows,
            "render_share": render_s / (render_s + write_s)}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--env", default="walker")
    parser.add_argument("--steps", type=int, default=600, help="timed SAC agent steps per variant")
    parser.add_argument("--frames", type=int, default=200, help="frames written per image size")
    parser.add_argument("--compare", action="store_true", help="SB3's SAC vs CollectorSAC, interleaved rounds")
    parser.add_argument("--rounds", type=int, default=5, help="rounds of --compare")
    args = parser.parse_args()
    if args.compare:
        res = compare_sac(args.env, args.steps, args.rounds, warmup=300)
        print(f"SAC agent steps/s on {args.env} (batch {res['batch_size']}, {res['net_arch']}, one update per step, "
              f"recording), median of {args.rounds} interleaved rounds")
        for name, rate in res["steps_per_s"].items():
            print(f"  {name:<18}{rate:>8.1f}")
        print(f"  {'speedup (fp32)':<18}{res['speedup_fp32']:>8.2f}x")
        print(f"  {'speedup':<18}{res['speedup']:>8.2f}x")
        dest = Path("bench-output")
        dest.mkdir(exist_ok=True)
        (dest / "bench_collect_compare.json").write_text(json.dumps(res, indent=2))
        print(f"wrote {dest / 'bench_collect_compare.json'}")
        return

    from lompo_bench import envs

    out = {"env": args.env, "steps": args.steps}
    out["sac_steps_per_s_recording"] = time_sac(args.env, args.steps, True, warmup=300)
    out["sac_steps_per_s_plain"] = time_sac(args.env, args.steps, False, warmup=300)
    out["env_steps_per_s_recording"] = time_env(args.env, 5 * args.steps, True)
    out["env_steps_per_s_plain"] = time_env(args.env, 5 * args.steps, False)
    sizes = sorted({64, envs.SPECS[args.env].image_size, 84})
    out["write"] = {str(s): time_write(args.env, args.frames, s) for s in sizes}

    from lompo_bench.provenance import stamp

    out["provenance"] = stamp()
    print(f"{'measure':<44}{'value':>12}")
    print(f"{'SAC agent steps/s, recording':<44}{out['sac_steps_per_s_recording']:>12.1f}")
    print(f"{'SAC agent steps/s, not recording':<44}{out['sac_steps_per_s_plain']:>12.1f}")
    print(f"{'env steps/s (no SAC), recording':<44}{out['env_steps_per_s_recording']:>12.1f}")
    print(f"{'env steps/s (no SAC), not recording':<44}{out['env_steps_per_s_plain']:>12.1f}")
    for s, w in out["write"].items():
        print(f"{f'render ms/frame at {s}px':<44}{w['render_ms_per_frame']:>12.2f}")
        print(f"{f'store write ms/frame at {s}px':<44}{w['write_ms_per_frame']:>12.2f}")
        print(f"{f'rendering share of write time at {s}px':<44}{100 * w['render_share']:>11.0f}%")
    dest = Path("bench-output")
    dest.mkdir(exist_ok=True)
    (dest / "bench_collect.json").write_text(json.dumps(out, indent=2))
    print(f"wrote {dest / 'bench_collect.json'}")


if __name__ == "__main__":
    main()
