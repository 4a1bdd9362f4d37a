#!/usr/bin/env python
"""Does the ensemble penalty tell dataset actions from others? Measured on a run's trained model.

    python scripts/penalty-contrast.py ~/.lompo-bench/runs/lompo/cpu/walker/medium-replay/seed0 \
        [--batches 8] [--seed 0]

Loads the run's ``checkpoint.pt`` (the latent model and actor as the run left them; a finished
run's last checkpoint is its final state) and its dataset, draws ``--batches`` window batches of
the run's size, and from the same posterior states rolls out ``--horizon`` imagined steps (the
run's own horizon by default; each step through one randomly drawn head, as LOMPO does) with
(a) the dataset's next actions, open loop, (b) the same with the rollout noise the agent
explores with (N(0, 0.2), clipped), (c) the actor's noise-free actions, (d) uniform random
actions. For
every penalty kind the latent model defines (``log_prob``, the run's default and the authors';
``max_var``; ``mean``) it prints, at the first and the last step, the mean penalty of each action
set, the ratio random / data and the fraction of start states where the random actions'
penalty exceeds the dataset actions' (0.5: no discrimination). A penalty that does its job rises from data to random.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch


def load_run(run_dir: Path):
    from lompo_bench import registry
    from lompo_bench.algorithms.base import DataSpec
    from lompo_bench.store import Dataset

    config = json.loads((run_dir / "config.json").read_text())
    cls = registry.get(config["algorithm"])
    dataset = Dataset.open(config["dataset_path"])
    spec = DataSpec.from_dataset(dataset)
    base = cls.config_for(config["profile"], spec)
    algo_config = type(base)(**{**base.__dict__, **config["config"]})
    agent = cls(algo_config, spec, device="cpu", seed=config["seed"])
    state = torch.load(run_dir / "checkpoint.pt", map_location="cpu", weights_only=False)
    agent.load_state_dict(state["algorithm"])
    return agent, dataset, config, int(state["step"])


@torch.no_grad()
def contrast(agent, dataset, batches: int, seed: int, horizon: int) -> dict[str, dict[str, np.ndarray]]:
    """Penalties (kind -> action set -> (horizon, N) array) along `horizon`-step open-loop rollouts
    from the same posterior states, every step through one randomly drawn head as LOMPO rolls out."""
    from lompo_bench.algorithms.latent_model import PENALTIES, LatentState, disagreement

    c, model = agent.config, agent.model
    out: dict[str, dict[str, list]] = {p: {} for p in PENALTIES}
    rng = np.random.default_rng(seed)
    gen = torch.Generator().manual_seed(seed)
    for _ in range(batches):
        windows = agent._to_device(dataset.sample_windows(c.model_batch, c.model_length, rng, keys=agent._keys))
        posts = agent._posterior(windows)
        L = windows["action"].shape[1]
        rows = L - horizon  # start rows with `horizon` dataset actions after them
        start = LatentState(posts.deter[:, :rows].flatten(0, 1), posts.stoch[:, :rows].flatten(0, 1))
        data = torch.stack([windows["action"][:, 1 + k: 1 + k + rows].flatten(0, 1).float() for k in range(horizon)])
        n, dim = data.shape[1:]
        actors = {
            "data": lambda k, f: data[k],
            "data+noise": lambda k, f: (data[k] + c.rollout_noise * torch.randn(n, dim, generator=gen)).clamp(-1, 1),
            "policy": lambda k, f: agent.agent.actor.mode(f).float(),
            "random": lambda k, f: torch.rand(n, dim, generator=gen) * 2 - 1,
        }
        for name, act in actors.items():
            state, per_step = start, {kind: [] for kind in PENALTIES}
            for k in range(horizon):
                head = torch.randint(model.heads, (n,), generator=gen)
                state, info = model.imagine_step(state, act(k, state.features()), head=head)
                for kind in PENALTIES:  # every kind from the same ensemble output and chosen sample
                    per_step[kind].append(disagreement(kind, info["means"].float(), info["stds"].float(),
                                                       state.stoch.float()))
            for kind in PENALTIES:
                out[kind].setdefault(name, []).append(torch.stack(per_step[kind]))
    return {k: {a: torch.cat(v, 1).numpy() for a, v in d.items()} for k, d in out.items()}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--batches", type=int, default=8, help="window batches of the run's size (default 8)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--horizon", type=int, default=None, help="rollout steps (default: the run's horizon)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    torch.manual_seed(args.seed)  # the latent model's own sampling in imagine_step
    agent, dataset, config, step = load_run(args.run_dir)
    horizon = args.horizon or agent.config.horizon
    results = contrast(agent, dataset, args.batches, args.seed, horizon)
    n = next(iter(next(iter(results.values())).values())).shape[1]
    print(f"{config['algorithm']} {config['env']}/{config['split']} [{config['profile']}] seed {config['seed']}, "
          f"checkpoint at step {step}, {n} start states, {horizon}-step rollouts; run's penalty: "
          f"{config['config'].get('penalty')}, lambda {config['config'].get('penalty_scale')}")
    print("| penalty | step | data | data+noise | policy | random | random / data | P(random > data) |")
    print("|---|---|---|---|---|---|---|---|")
    for kind, sets in results.items():
        for k in sorted({0, horizon - 1}):
            means = {a: float(v[k].mean()) for a, v in sets.items()}
            above = float((sets["random"][k] > sets["data"][k]).mean())
            print(f"| {kind} | {k + 1} | " + " | ".join(f"{means[a]:.4g}" for a in ("data", "data+noise", "policy", "random"))
                  + f" | {means['random'] / means['data']:.3f} | {above:.2f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
