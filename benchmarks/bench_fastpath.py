"""The CPU fast path against the reference implementation, side by side in one process.

Reference: fp32 everywhere, the decoder run as Dreamer's layers are constructed
(`ConvDecoder.reference_forward`: the projection to a 1x1 map, every transposed convolution
as a layer, NCHW maps) and the image likelihood as the plain expression on frames
preprocessed twice (encoder input, decoder target), and torch's default (foreach) Adam, as
before the fast path. Fast path (the default, `precision="bf16"`): bf16 autocast for the
bodies with fp32 output layers and losses, the decoder's first transposed convolution as the
matrix product it is on a 1x1 map and its image layer as a sub-pixel convolution, channels-last
maps, in-place conv activations, frames preprocessed once, a fused image likelihood and fused
Adam (algorithms/precision.py, encoders.py, networks.adam). This process keeps glibc's heap
defaults throughout, as a plain Python process has them.

Heap settings (lompo_bench/allocator.py, what every training process applies) cannot be undone
inside a process (glibc then stops adjusting its thresholds), so they are timed apart: the
fast-path model step and BC update in fresh child processes, alternately with glibc's defaults
(``LOMPO_BENCH_MALLOC=default``) and with the settings; the last column multiplies the two
speedups (code path in this process x heap settings in the children).

Timed, at the `cpu` profile's sizes and walker's 64 px frames, on random inputs (speed does
not depend on the pixels):
  - the LOMPO latent-model step (16 x 32 windows, depth 16): loss, backward, clip, Adam;
  - the latent agent updates, 128 real + 128 latent features: SAC (`agents.SAC`) and the
    authors' deterministic actor with twin critics (`agents.DeterministicActorCritic`, LOMPO's
    default agent);
  - the CQL and BC pixel updates (`CQL.update`, `BC.update`, the cpu profile's batch 64);
  - the model step's FLOPs (torch.utils.flop_counter, forward + backward) and the GFLOP/s the
    fast path achieves, as a fraction of a bf16 (and an fp32) matmul timed in the same run.
Rounds interleave every contender (reference, fast, reference, fast, ...) and each figure is
the median over rounds, so both sides get the same share of whatever else the machine runs.

    python benchmarks/bench_fastpath.py [--quick] [--rounds 5] [--threads 1] [--heap-rounds 2]
Writes bench-output/bench_fastpath.json.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
ACTION_DIM = 6  # walker
IMAGE_SIZE = 64  # walker at the paper's and the cpu profile's size
PRECISIONS = {"reference": "fp32", "fast": "bf16"}


def walker_spec():
    from lompo_bench.algorithms.base import DataSpec

    return DataSpec(env="walker", image_shape=(IMAGE_SIZE, IMAGE_SIZE, 3), proprio_dim=0, action_dim=ACTION_DIM,
                    horizon=500, action_repeat=2)


def lompo_cpu_config():
    from lompo_bench.algorithms.lompo import LOMPO

    return LOMPO.config_for("cpu", walker_spec())


def reference_preprocess(images: torch.Tensor) -> torch.Tensor:
    return (images.float() / 255.0 - 0.5).movedim(-1, -3)


def reference_image_log_likelihood(mean, images, target=None):
    """The likelihood before the fast path: preprocesses its own target, plain autograd."""
    return -0.5 * (mean.float() - reference_preprocess(images)).pow(2).flatten(-3).sum(-1)


@contextlib.contextmanager
def reference_image_ops():
    """The latent model's image pre/post-processing as it was: frames preprocessed by the
    encoder and again for the likelihood, which autograd differentiates op by op."""
    from lompo_bench.algorithms import latent_model

    saved = latent_model.preprocess_images, latent_model.image_log_likelihood
    latent_model.preprocess_images = lambda images: images  # the encoder preprocesses (below)
    latent_model.image_log_likelihood = reference_image_log_likelihood
    try:
        yield
    finally:
        latent_model.preprocess_images, latent_model.image_log_likelihood = saved


def model_step(kind: str, seed: int = 0):
    """A closure doing one latent-model gradient step as LOMPO's model phase does, and the
    model. `kind` "reference" runs the decoder's layers as constructed, in fp32."""
    from lompo_bench.algorithms import precision
    from lompo_bench.algorithms.lompo import LOMPO

    c, spec = lompo_cpu_config(), walker_spec()
    agent = LOMPO(c, spec, seed=seed)  # LOMPO's own model and optimizer settings
    model, optim = agent.model, agent.model_optim
    if kind == "reference":
        model.decoder.forward = model.decoder.reference_forward  # the original layer construction
        encode = model.encoder.forward
        # Frames come in as uint8 (reference_image_ops skips the shared preprocessing): the conv
        # encoder preprocesses them itself, as it did.
        model.encoder.forward = lambda obs, preprocessed_image=None: encode(obs)
    rng = np.random.default_rng(seed)
    b, l = c.model_batch, c.model_length
    batch = {"image": torch.from_numpy(rng.integers(0, 256, (b, l, IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8)),
             "action": torch.from_numpy(rng.uniform(-1, 1, (b, l, ACTION_DIM)).astype(np.float32)),
             "reward": torch.from_numpy(rng.uniform(0, 1, (b, l)).astype(np.float32)),
             "is_first": torch.from_numpy(np.arange(l)[None].repeat(b, 0) == 0)}

    def step():
        ops = reference_image_ops() if kind == "reference" else contextlib.nullcontext()
        with precision.autocast(PRECISIONS[kind]), ops:
            loss, _, _ = model.loss(batch)
        optim.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), c.model_grad_clip)
        optim.step()

    return step, model, batch


def agent_update(kind: str, agent: str = "sac"):
    """One update of a latent agent (`agents.AGENTS[agent]`) at LOMPO's cpu-profile sizes."""
    from lompo_bench.algorithms import precision
    from lompo_bench.algorithms.agents import AGENTS, SACBatch

    c = lompo_cpu_config()
    torch.manual_seed(0)
    feature_dim, n = c.stoch + c.deter, 2 * c.agent_batch
    cls, config_cls = AGENTS[agent]
    learner = cls(feature_dim, ACTION_DIM, config_cls.from_config(c))
    g = torch.Generator().manual_seed(0)
    batch = SACBatch(obs=torch.randn(n, feature_dim, generator=g), action=torch.rand(n, ACTION_DIM, generator=g) * 2 - 1,
                     reward=torch.rand(n, generator=g), next_obs=torch.randn(n, feature_dim, generator=g),
                     not_done=torch.ones(n))

    def step():
        with precision.autocast(PRECISIONS[kind]):
            learner.update(batch)

    return step


def pixel_batch(batch: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    frames = lambda: torch.from_numpy(rng.integers(0, 256, (batch, IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8))
    return ({"image": frames()}, torch.from_numpy(rng.uniform(-1, 1, (batch, ACTION_DIM)).astype(np.float32)),
            torch.from_numpy(rng.normal(size=batch).astype(np.float32)), {"image": frames()}, torch.zeros(batch))


def cql_update(kind: str):
    from lompo_bench.algorithms.cql import CQL

    config = CQL.config_for("cpu", walker_spec())
    config = type(config)(**{**config.__dict__, "precision": PRECISIONS[kind]})
    cql = CQL(config, walker_spec(), seed=0)
    obs, action, reward, next_obs, terminal = pixel_batch(config.batch_size)
    return lambda: cql.update(obs, action, reward, next_obs, terminal)


def bc_update(kind: str):
    from lompo_bench.algorithms.bc import BC

    config = BC.config_for("cpu", walker_spec())
    config = type(config)(**{**config.__dict__, "precision": PRECISIONS[kind]})
    bc = BC(config, walker_spec(), seed=0)
    obs, action, *_ = pixel_batch(config.batch_size)
    return lambda: bc.update(obs, action)


def build_contender(build, kind: str):
    """`build(kind)`, with torch's default (unfused) Adam and out-of-place conv activations on
    the reference side."""
    from unittest import mock

    from lompo_bench.algorithms import encoders, networks

    reference = kind == "reference"
    conv_activation = (lambda name, inplace=False: networks.activation(name)) if reference else networks.activation
    with mock.patch.object(networks, "FUSED_ADAM", not reference), mock.patch.object(encoders, "activation", conv_activation):
        return build(kind)


def matmul_rate(dtype: torch.dtype, n: int = 1024, reps: int = 8) -> float:
    """GFLOP/s of an n x n x n matmul in `dtype` (best of `reps`)."""
    a, b = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)
    torch.mm(a, b)
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best / 1e9


def count_flops(step) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        step()
    return counter.get_total_flops()


# What is timed: name -> build(kind) returning the update closure.
BUILDERS = {"model step": lambda kind: model_step(kind)[0], "latent SAC update": agent_update,
            "deterministic agent update": lambda kind: agent_update(kind, "deterministic"),
            "CQL update": cql_update, "BC update": bc_update}
HEAP_TIMED = {"model step": 6, "BC update": 40}  # fast-path steps timed per child process


def heap_child(name: str, iters: int) -> float:
    """Seconds per fast-path step of `name` in this (fresh) process, after warm-up."""
    from lompo_bench import allocator

    allocator.tune()  # a no-op under LOMPO_BENCH_MALLOC=default
    update = build_contender(BUILDERS[name], "fast")
    for _ in range(4):
        update()
    t0 = time.perf_counter()
    for _ in range(iters):
        update()
    return (time.perf_counter() - t0) / iters


def heap_speedups(names, rounds: int, threads: int) -> dict:
    """Per name: median seconds per step with glibc's defaults and with the heap settings,
    each in fresh child processes, alternating default / tuned `rounds` times."""
    import os
    import subprocess

    out = {}
    for name in names:
        runs = {"default": [], "tuned": []}
        for _ in range(rounds):
            for heap in runs:
                env = {**os.environ, "LOMPO_BENCH_MALLOC": "default" if heap == "default" else "tuned"}
                child = subprocess.run([sys.executable, __file__, "--heap-child", name, "--threads", str(threads)],
                                       env=env, capture_output=True, text=True, check=True)
                runs[heap].append(float(child.stdout.strip().splitlines()[-1]))
        out[name] = {heap: statistics.median(v) for heap, v in runs.items()} | {"rounds_s": runs}
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="3 rounds of fewer iterations (about 1-2 min)")
    parser.add_argument("--rounds", type=int, default=None, help="interleaved rounds (default 5; --quick 3)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads (default 1; more only on an idle machine: on shared cores extra "
                             "threads spin-wait and run many times slower)")
    parser.add_argument("--only", default=None, help="comma-separated subset: model,sac,deterministic,cql,bc")
    parser.add_argument("--heap-rounds", type=int, default=None,
                        help="default/tuned child-process pairs per timed update (default 2; --quick 1; 0: skip)")
    parser.add_argument("--heap-child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--out", default=str(ROOT / "bench-output" / "bench_fastpath.json"))
    args = parser.parse_args(argv)
    torch.set_num_threads(max(1, args.threads))
    if args.heap_child:
        print(heap_child(args.heap_child, HEAP_TIMED[args.heap_child]))
        return 0
    rounds = args.rounds or (3 if args.quick else 5)
    # Iterations per round and contender: ~1 s of work each at the cpu sizes.
    agent_iters = 10 if args.quick else 20
    iters = {"model step": 1, "latent SAC update": agent_iters, "deterministic agent update": agent_iters,
             "CQL update": 2 if args.quick else 4, "BC update": 4 if args.quick else 8}
    builders = dict(BUILDERS)
    if args.only:
        keep = {"model": "model step", "sac": "latent SAC update", "deterministic": "deterministic agent update",
                "cql": "CQL update", "bc": "BC update"}
        builders = {keep[k]: builders[keep[k]] for k in args.only.split(",")}
    c = lompo_cpu_config()
    sizes = {"model step": f"{c.model_batch}x{c.model_length} windows, depth {c.depth}, deter {c.deter}",
             "latent SAC update": f"{c.agent_batch} real + {c.agent_batch} latent",
             "deterministic agent update": f"{c.agent_batch} real + {c.agent_batch} latent",
             "CQL update": "batch 64, depth 32", "BC update": "batch 64, depth 32"}

    print(f"building contenders ({torch.get_num_threads()} thread(s)) ...", file=sys.stderr)
    contenders = {(name, kind): build_contender(build, kind) for name, build in builders.items() for kind in PRECISIONS}
    for update in contenders.values():  # warm-up: allocations, oneDNN primitive creation
        update()
        update()
    times: dict = {key: [] for key in contenders}
    for r in range(rounds):
        for (name, kind), update in contenders.items():
            t0 = time.perf_counter()
            for _ in range(iters[name]):
                update()
            times[(name, kind)].append((time.perf_counter() - t0) / iters[name])
        print(f"  round {r + 1}/{rounds}: " + ", ".join(f"{n} {k} {1e3 * t[-1]:.0f} ms" for (n, k), t in times.items()),
              file=sys.stderr, flush=True)

    rows = []
    for name in builders:
        ref, fast = (statistics.median(times[(name, k)]) for k in PRECISIONS)
        rows.append({"what": name, "sizes": sizes[name], "reference_s": ref, "fast_s": fast, "speedup": ref / fast,
                     "reference_rounds_s": times[(name, "reference")], "fast_rounds_s": times[(name, "fast")]})
    print(f"\nFast path vs reference on CPU ({torch.get_num_threads()} thread(s)), cpu-profile sizes, walker 64 px; "
          f"median of {rounds} interleaved rounds")
    print("| update | sizes | reference (fp32) | fast path (bf16) | speedup |")
    print("| --- | --- | --- | --- | --- |")
    for r in rows:
        print(f"| {r['what']} | {r['sizes']} | {1e3 * r['reference_s']:.1f} ms | {1e3 * r['fast_s']:.1f} ms "
              f"| {r['speedup']:.2f}x |")
    heap_rounds = args.heap_rounds if args.heap_rounds is not None else (1 if args.quick else 2)
    heap = heap_speedups([n for n in HEAP_TIMED if n in builders], heap_rounds, torch.get_num_threads()) if heap_rounds > 0 else {}
    if heap:
        print("\nHeap settings (lompo_bench/allocator.py), fast path, fresh child processes; median of "
              f"{heap_rounds} default/tuned pairs")
        print("| update | glibc defaults | heap settings | heap speedup | code path x heap |")
        print("| --- | --- | --- | --- | --- |")
        for r in rows:
            if r["what"] in heap:
                h = heap[r["what"]]
                r["heap"] = h
                r["heap_speedup"] = h["default"] / h["tuned"]
                r["total_speedup"] = r["speedup"] * r["heap_speedup"]
                print(f"| {r['what']} | {1e3 * h['default']:.1f} ms | {1e3 * h['tuned']:.1f} ms "
                      f"| {r['heap_speedup']:.2f}x | {r['total_speedup']:.2f}x |")
    gflops = {}
    model = next((r for r in rows if r["what"] == "model step"), None)
    if model is not None:  # the achieved rate against a matmul timed now, on the same machine state
        # The model's own work: the reference's FLOPs (the sub-pixel layers compute a few more).
        flops = count_flops(model_step("reference")[0])
        bf16_rate, fp32_rate = matmul_rate(torch.bfloat16), matmul_rate(torch.float32)
        gflops = {"model_step_gflop": flops / 1e9, "reference_gflop_per_s": flops / 1e9 / model["reference_s"],
                  "fast_gflop_per_s": flops / 1e9 / model["fast_s"], "bf16_matmul_gflop_per_s": bf16_rate,
                  "fp32_matmul_gflop_per_s": fp32_rate}
        if "heap" in model:  # the rate a training process gets
            gflops["fast_heap_gflop_per_s"] = flops / 1e9 / model["heap"]["tuned"]
        print(f"\nmodel step: {gflops['model_step_gflop']:.1f} GFLOP (forward + backward); reference "
              f"{gflops['reference_gflop_per_s']:.0f} GFLOP/s, fast path {gflops['fast_gflop_per_s']:.0f} GFLOP/s = "
              f"{gflops['fast_gflop_per_s'] / bf16_rate:.2f} of a bf16 matmul ({bf16_rate:.0f} GFLOP/s; fp32 matmul "
              f"{fp32_rate:.0f} GFLOP/s)")
        if "fast_heap_gflop_per_s" in gflops:
            print(f"with the heap settings: {gflops['fast_heap_gflop_per_s']:.0f} GFLOP/s = "
                  f"{gflops['fast_heap_gflop_per_s'] / bf16_rate:.2f} of the bf16 matmul")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"threads": torch.get_num_threads(), "rounds": rounds, "rows": rows, **gflops},
                              indent=2))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
