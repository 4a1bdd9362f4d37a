"""Gradient updates per second of our pixel baselines against d3rlpy's, same shapes and sizes.

One function per algorithm (`bench_bc`, ...); each times our update and d3rlpy's on the same
pixel batch shapes with the same network sizes, in one process on this machine, and returns
rows for the table. Both sides start every update from a host (numpy) batch in their
library's own sampled format (ours: uint8 HxWx3 frames; d3rlpy's: float32 3xHxW, what its
replay buffer hands out), so host-to-device transfer, pixel scaling and the gradient step
are all counted; dataset sampling is not (it differs by storage, not by algorithm).

Network sizes, BC: the paper's conv encoder for the image size (4 layers at 64 px: channels
32-64-128-256, kernel 4, stride 2) then one 256-unit hidden layer and the Gaussian head:
ours is `ObservationEncoder` + `TanhGaussianActor(hidden=256, layers=1)`, d3rlpy's is
`PixelEncoderFactory(filters=<same convs>, feature_size=256)` + its stochastic policy head.
Augmentation is off on both sides (d3rlpy 2 has none) and timed separately for ours.

d3rlpy is benchmark-only and cannot live in the project's environment: its release pins
gymnasium==1.0.0 (we pin 1.4.0) and imports the old `gym`, whose presence makes
stable-baselines3 print a deprecation banner in every collector run. So it goes into a
folder of its own that only this script puts on `sys.path` (after the venv's packages):
    .venv/bin/pip install --no-deps --target .venv/bench-deps d3rlpy==2.8.1 gym==0.26.2 \
        gym-notices==0.1.0 dataclasses-json==0.6.7 marshmallow==3.26.2 typing-inspect==0.9.0 \
        mypy-extensions==1.2.0 structlog==26.1.0 colorama==0.4.6 scikit-learn==1.9.1 \
        joblib==1.6.0 threadpoolctl==3.8.0 narwhals==2.29.0
(h5py, its last dependency, is in the project's `export` extra.) Without d3rlpy the
benchmark still times ours and says d3rlpy is missing.

    python benchmarks/bench_baselines.py [--device cpu|cuda] [--batch 256] [--image-size 64] [--precision bf16|fp32]
Writes bench-output/bench_baselines.json.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
ACTION_DIM = 6  # walker


def conv_filters(image_size: int) -> list[list[int]]:
    """Our encoder's convolutions as d3rlpy (channels, kernel, stride) triples."""
    from lompo_bench.algorithms.encoders import ConvEncoder

    return [[ch, 4, 2] for ch in ConvEncoder(image_size).channels]


def time_updates(update, iters: int, warmup: int, device: str) -> float:
    """Updates per second of `update()` (a closure doing one full gradient step)."""
    for _ in range(warmup):
        update()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(iters):
        update()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return iters / (time.perf_counter() - start)


BENCH_DEPS = ROOT / ".venv" / "bench-deps"


def d3rlpy_available() -> str | None:
    if BENCH_DEPS.is_dir() and str(BENCH_DEPS) not in sys.path:
        sys.path.append(str(BENCH_DEPS))  # appended: the venv's numpy/torch/gymnasium win
    try:
        import d3rlpy  # noqa: F401
    except Exception as exc:  # ImportError, or a version clash surfacing on import
        return f"d3rlpy not usable ({type(exc).__name__}: {exc}); see this file's docstring to install it"
    return None


# --------------------------------------------------------------------------------------------
# BC


def bench_bc(args) -> list[dict]:
    """Our BC and d3rlpy's timed in interleaved rounds (A, B, A, B, ...), each reported as the
    median over rounds: on a shared machine the load drifts, and interleaving gives both
    sides the same share of it."""
    from lompo_bench.algorithms.base import DataSpec
    from lompo_bench.algorithms.bc import BC, BCConfig, to_tensors

    rng = np.random.default_rng(0)
    size, batch, device = args.image_size, args.batch, args.device
    images = rng.integers(0, 256, (batch, size, size, 3), dtype=np.uint8)
    actions = rng.uniform(-1, 1, (batch, ACTION_DIM)).astype(np.float32)
    spec = DataSpec(env="walker", image_shape=(size, size, 3), proprio_dim=0, action_dim=ACTION_DIM,
                    horizon=500, action_repeat=2)
    contenders, params = {}, {}

    def ours_with_pad(pad):
        config = BCConfig(batch_size=batch, actor_hidden=256, actor_layers=1, augment_pad=pad, precision=args.precision)
        ours = BC(config, spec, device=device, seed=0)

        def update():
            obs = to_tensors({"image": images}, device)
            ours.update(obs, torch.as_tensor(actions).to(device))

        return update, sum(p.numel() for p in ours.params), config

    for pad in (0, 4):
        name = "lompo-bench" + (f" (random shift {pad} px)" if pad else "")
        contenders[name], params[name], config = ours_with_pad(pad)

    missing = d3rlpy_available()
    if not missing:
        import d3rlpy
        from d3rlpy.dataset import TransitionMiniBatch

        d3_config = d3rlpy.algos.BCConfig(
            batch_size=batch, learning_rate=config.lr, policy_type="stochastic",
            observation_scaler=d3rlpy.preprocessing.PixelObservationScaler(),
            encoder_factory=d3rlpy.models.PixelEncoderFactory(filters=conv_filters(size), feature_size=256))
        theirs = d3_config.create(device=device if device != "cuda" else "cuda:0")
        theirs.create_impl((3, size, size), ACTION_DIM)
        obs_f32 = images.transpose(0, 3, 1, 2).astype(np.float32)
        column = np.zeros((batch, 1), np.float32)
        minibatch = TransitionMiniBatch(observations=obs_f32, actions=actions, rewards=column,
                                        next_observations=obs_f32, next_actions=actions, terminals=column,
                                        intervals=np.ones((batch, 1), np.float32), transitions=[])
        name = f"d3rlpy {d3rlpy.__version__}"
        contenders[name] = lambda: theirs.update(minibatch)
        params[name] = sum(p.numel() for p in theirs.impl.modules.imitator.parameters())

    per_round = max(1, args.iters // args.rounds)  # --iters updates per contender in all
    rates = race(contenders, rounds=args.rounds, iters=per_round, warmup=args.warmup, device=device)
    rows = [{"algorithm": "bc", "impl": name, "updates_per_s": float(np.median(r)), "best_updates_per_s": max(r),
             "rounds": r, "params": params[name]} for name, r in rates.items()]
    if missing:
        rows.append({"algorithm": "bc", "impl": "d3rlpy", "updates_per_s": None, "note": missing})
    return rows


def race(contenders: dict, *, rounds: int, iters: int, warmup: int, device: str) -> dict[str, list[float]]:
    """Updates/s of each closure per round, the contenders taking turns within every round."""
    for update in contenders.values():
        for _ in range(warmup):
            update()
    rates: dict[str, list[float]] = {name: [] for name in contenders}
    for _ in range(rounds):
        for name, update in contenders.items():
            rates[name].append(time_updates(update, iters, 0, device))
    return rates


# --------------------------------------------------------------------------------------------
# CQL


def bench_cql(args) -> list[dict]:
    """CQL(H) with fixed alpha 5 and 10 sampled actions per source on both sides.

    Sizes: the paper's conv encoder, then one 256-unit hidden layer per head: ours is one
    `ObservationEncoder` shared by the twin critics (the design of algorithms/cql.py) with
    `TwinQ(hidden=256, layers=1)` and `TanhGaussianActor(hidden=256, layers=1)`; d3rlpy's is
    `PixelEncoderFactory(filters=<same convs>, feature_size=256)` for its actor and for each
    of its two critics (d3rlpy gives every critic and the actor an encoder of its own and
    re-encodes the image for every sampled action). Its Lagrangian is off
    (`alpha_learning_rate=0`), matching our default fixed alpha.

    On CPU d3rlpy's update takes tens of seconds at batch 256, so the CQL rows use
    `--cql-batch` (default: 32 on CPU, `--batch` on CUDA) and d3rlpy is timed over
    `max(2, iters // 10)` updates."""
    from lompo_bench.algorithms.base import DataSpec
    from lompo_bench.algorithms.bc import to_tensors
    from lompo_bench.algorithms.cql import CQL, CQLConfig

    device, size = args.device, args.image_size
    batch = args.cql_batch or (args.batch if device.startswith("cuda") else 32)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (batch, size, size, 3), dtype=np.uint8)
    next_images = rng.integers(0, 256, (batch, size, size, 3), dtype=np.uint8)
    actions = rng.uniform(-1, 1, (batch, ACTION_DIM)).astype(np.float32)
    rewards = rng.normal(size=batch).astype(np.float32)
    terminals = np.zeros(batch, np.float32)
    spec = DataSpec(env="walker", image_shape=(size, size, 3), proprio_dim=0, action_dim=ACTION_DIM,
                    horizon=500, action_repeat=2)
    label = f"cql b{batch}"
    rows = []

    for pad in (0, 4):
        config = CQLConfig(batch_size=batch, actor_hidden=256, actor_layers=1, critic_hidden=256, critic_layers=1,
                           augment_pad=pad, precision=args.precision)
        ours = CQL(config, spec, device=device, seed=0)

        def update_ours():
            ours.update(to_tensors({"image": images}, device), torch.as_tensor(actions).to(device),
                        torch.as_tensor(rewards).to(device), to_tensors({"image": next_images}, device),
                        torch.as_tensor(terminals).to(device))

        ups = time_updates(update_ours, args.iters, args.warmup, device)
        params = sum(p.numel() for m in (ours.encoder, ours.sac.actor, ours.sac.critic) for p in m.parameters())
        rows.append({"algorithm": label, "impl": "lompo-bench" + (f" (random shift {pad} px)" if pad else ""),
                     "updates_per_s": ups, "params": params})

    missing = d3rlpy_available()
    if missing:
        rows.append({"algorithm": label, "impl": "d3rlpy", "updates_per_s": None, "note": missing})
        return rows
    import d3rlpy
    from d3rlpy.dataset import TransitionMiniBatch

    encoder = d3rlpy.models.PixelEncoderFactory(filters=conv_filters(size), feature_size=256)
    d3_config = d3rlpy.algos.CQLConfig(
        batch_size=batch, gamma=config.gamma, tau=config.tau, actor_learning_rate=config.actor_lr,
        critic_learning_rate=config.critic_lr, temp_learning_rate=config.alpha_lr, alpha_learning_rate=0.0,
        initial_temperature=config.init_alpha, initial_alpha=1.0, conservative_weight=config.cql_alpha,
        n_action_samples=config.cql_num_actions, n_critics=2,
        observation_scaler=d3rlpy.preprocessing.PixelObservationScaler(),
        actor_encoder_factory=encoder, critic_encoder_factory=encoder)
    theirs = d3_config.create(device=device if device != "cuda" else "cuda:0")
    theirs.create_impl((3, size, size), ACTION_DIM)
    minibatch = TransitionMiniBatch(
        observations=images.transpose(0, 3, 1, 2).astype(np.float32), actions=actions, rewards=rewards[:, None],
        next_observations=next_images.transpose(0, 3, 1, 2).astype(np.float32), next_actions=actions,
        terminals=terminals[:, None], intervals=np.ones((batch, 1), np.float32), transitions=[])
    iters = max(2, args.iters // 10)
    ups = time_updates(lambda: theirs.update(minibatch), iters, 1, device)
    params = sum(p.numel() for m in (theirs.impl.modules.policy, theirs.impl.modules.q_funcs) for p in m.parameters())
    rows.append({"algorithm": label, "impl": f"d3rlpy {d3rlpy.__version__}", "updates_per_s": ups, "params": params})
    return rows


BENCHES = {"bc": bench_bc, "cql": bench_cql}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--precision", default="bf16", choices=("bf16", "fp32"),
                        help="our side's precision (default: the bf16 fast path; d3rlpy runs fp32)")
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--iters", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=5,
                        help="BC: the --iters timed updates are split into this many interleaved rounds; "
                             "the median round is reported.")
    parser.add_argument("--cql-batch", type=int, default=None,
                        help="Batch of the CQL rows (default: 32 on CPU, where d3rlpy's CQL is very slow; --batch on CUDA).")
    parser.add_argument("--only", choices=sorted(BENCHES), action="append", help="Run only these benches.")
    parser.add_argument("--out", default=str(ROOT / "bench-output" / "bench_baselines.json"))
    args = parser.parse_args(argv)
    torch.manual_seed(0)

    rows = []
    for name in args.only or BENCHES:
        rows += BENCHES[name](args)
    print(f"gradient updates/s, batch {args.batch} x {args.image_size}px, {args.device}, "
          f"torch threads {torch.get_num_threads()}, {args.iters} timed updates after {args.warmup} warm-up")
    print(f"{'algorithm':<10} {'implementation':<36} {'updates/s':>10} {'params':>10}")
    for r in rows:
        ups = f"{r['updates_per_s']:.2f}" if r.get("updates_per_s") else "-"
        print(f"{r['algorithm']:<10} {r['impl']:<36} {ups:>10} {r.get('params', ''):>10}")
        if r.get("note"):
            print(f"{'':<10} {r['note']}")
    from lompo_bench.provenance import stamp

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"settings": vars(args), "rows": rows, **stamp()}, indent=2, default=str) + "\n")
    print(f"wrote {out}", file=sys.stderr)


if __name__ == "__main__":
    main()
