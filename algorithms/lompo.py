"""LOMPO: offline model-based policy optimisation in a learned latent space (paper Section IV-C,
Algorithm 1 in Appendix D), and LMBRL, the same method with the uncertainty penalty off.

The defaults are what the authors' code does (rmrafailov/LOMPO `lompo.py`/`models.py`/`buffer.py`,
read against `/work/shared/reference/authors-config.md` in the project notes); each choice is a
named setting so the alternatives stay one `--set` away. One run is four phases, switched on the
`train_step` index:

1. Model (`model_steps`): ELBO updates of the latent model (`latent_model.LatentModel`) on
   (batch x length) windows, each step's prior from one random forward head (Eq. 8), with
   `kl_scale * KL(posterior || prior)`: no KL balancing and no free nats (`kl_balance`,
   `free_nats` switch them on). Window batches are prefetched on a background thread (their
   sampling RNG is a function of (seed, step), so prefetching never changes what a run sees).
2. Real buffer (`real_fill_steps` calls): EVERY episode of the dataset is filtered through the
   (sampled) posterior from its first row; the transitions (s_t, a_{t+1}, r_{t+1}, s_{t+1}) of
   the whole dataset go into the real buffer.
3. Latent warm-up (`latent_init_transitions`): H-step rollouts from the posterior states of every
   row of a window batch, with the untrained actor's action plus N(0, `rollout_noise`^2), clipped
   (`warmup_actions=uniform`: uniform random actions). Each step every head predicts, the next
   state is the sample of ONE randomly chosen head for the whole batch, and the reward is the
   reward head at that next state (`latent_reward=chosen_head`; `mean_of_heads`: the paper's
   Eq. 9 wording) minus lambda * `penalty` (the heads' disagreement).
4. Agent (`agent_steps`): the authors' deterministic actor-critic (`agent=deterministic`,
   `agents.DeterministicActorCritic`; `agent=sac`: SAC) on the latent features [z, h], batches of
   `agent_batch` real + `agent_batch` latent transitions. Every `epoch_length` updates (a block)
   `epoch_real_episodes` more dataset episodes are filtered into the real buffer (cycling through
   the dataset in order, as the authors' episode iterator) and one window batch is rolled out
   with the current actor (plus the exploration noise) into the latent buffer.

Both buffers are FIFO rings whose capacity is, by default, the dataset's number of transitions,
as in the authors' code (`LatentReplayBuffer(steps, steps)`; their config's `buffer_size = 2e6` is
never used): the real buffer always holds the whole dataset (a re-filtered episode replaces its
own older copy), the latent one the newest rollouts (walker paper: ~6 blocks of 16,000). Memory
grows with what is stored, so a large `--set latent_buffer_size=2000000` costs nothing up front.

Diagnostics (on every block and at the last step): `latent_reward` (penalised), `latent_raw_reward`,
`latent_penalty`, `q_real`/`q_latent` (critic on buffer samples), and the penalty *contrast*: from
the posterior states of the block's window batch, one imagined step with the dataset's actions
(`penalty_data`), the current actor's actions (`penalty_policy`) and uniform random actions
(`penalty_random`). A penalty that does its job rises from data to policy to random.

Evaluation (`policy()`): the RSSM filters the observation history (a sampled posterior as in
training, `eval_posterior=sample`, from a generator seeded per episode, so an evaluation is
repeatable and never touches the training RNG; `mean`: the posterior mean) and the actor acts
without noise.

Precision: the model step, the fills, the rollouts and the agent updates run under
`precision.autocast(config.precision, device)` (bf16 autocast, or nothing for `fp32`); acting does
too on a GPU, in fp32 on a CPU (one frame at a time, where autocast measured slower). The model
is frozen after phase 1 (as in Algorithm 1).

Deviations on purpose: the `cpu` and `smoke` profiles shrink sizes and steps (`PROFILE_SCALING`,
with the measured step times behind them); buffers grow on demand instead of being preallocated;
the real-buffer fill is split over `real_fill_steps` calls (checkpoints between them); `free_nats`
(off by default) clamps only the posterior side of the KL (latent_model.py).
"""

from __future__ import annotations

import dataclasses
import math
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Literal, Optional

import numpy as np
import torch

from lompo_bench.errors import choice_error
from lompo_bench.registry import register

from . import precision
from .agents import AGENTS, SACBatch
from .base import Algorithm, BatchPolicy, DataSpec, Policy
from .latent_model import PENALTIES, LatentModel, LatentState
from .networks import ACTIVATIONS, adam

LATENT_REWARDS = ("chosen_head", "mean_of_heads")
EVAL_POSTERIORS = ("sample", "mean")
WARMUP_ACTIONS = ("policy", "uniform")


@dataclass
class LOMPOConfig:
    # Latent model (Appendix C; authors' code).
    model_steps: int = 25_000
    model_batch: int = 64  # sequences per batch
    model_length: int = 50  # steps per sequence
    model_lr: float = 6e-4
    model_eps: float = 1e-4
    model_grad_clip: float = 100.0
    depth: int = 32  # conv channels depth * [1, 2, 4, 8(, 8)]
    deter: int = 256  # GRU size (Adroit Pen: 512)
    stoch: int = 64
    hidden: int = 256  # forward heads / inference / pre-GRU width (Adroit Pen: 512)
    heads: int = 7  # K forward models
    reward_hidden: int = 256
    kl_scale: float = 1.0  # authors: 1.0 * KL(posterior || prior)
    kl_balance: Optional[float] = None  # None: the plain KL (authors); a in [0, 1]: a * KL(sg(q)||p) + (1-a) * KL(q||sg(p))
    free_nats: float = 0.0  # authors: none; > 0 clamps the posterior side of the KL from below
    # Latent data (Eq. 9, Algorithm 1).
    horizon: int = 5  # H
    # Disagreement measure (latent_model.py). Measured at the cpu profile (scripts/penalty-contrast.py,
    # walker medium-expert seed 0 at its end, 1,728 posterior starts): the authors' log_prob does not tell
    # uniform-random from dataset actions (random > data in 51% of starts, after 1 and 5 steps); max_var
    # does (83% / 94%, mean ratio 1.04 / 1.30), mean weakly (56% / 74%). Kept: the authors' choice.
    penalty: Literal["log_prob", "max_var", "mean"] = "log_prob"
    # lambda (authors: 5; LMBRL: 0). Kept at 5 at the cpu profile by measurement (session 10, walker
    # Intel version, seeds 0-2 each): medium-expert LOMPO 29.0 +- 26.5 vs LMBRL (lambda 0) -1.5 +- 0.2,
    # every LOMPO seed above every LMBRL seed; on medium-replay both stay near the random score (RESULTS.md).
    penalty_scale: float = 5.0
    latent_reward: Literal["chosen_head", "mean_of_heads"] = "chosen_head"  # reward head at the chosen head's next state
    rollout_noise: float = 0.2  # std of the Gaussian added to the deterministic actor's rollout actions
    warmup_actions: Literal["policy", "uniform"] = "policy"  # warm-up rollouts: actor + noise (authors), or uniform
    burn_in: int = 0  # rollout starts skip this many first rows of windows that start mid-episode (authors: 0)
    rollout_starts: int = 0  # start states per rollout batch; 0: every posterior state of a window batch
    latent_init_transitions: int = 50_000
    real_fill_steps: int = 10  # train_step calls the whole-dataset real-buffer fill is split into
    real_buffer_size: int = 0  # 0: the dataset's number of transitions (authors)
    latent_buffer_size: int = 0  # 0: the dataset's number of transitions (authors' code)
    # Agent in the latent space.
    agent: Literal["deterministic", "sac"] = "deterministic"  # authors: deterministic actor, twin Q
    agent_act: str = "elu"  # hidden activation of actor and critic (authors: ELU)
    agent_steps: int = 100_000
    agent_batch: int = 256  # per side: 256 real + 256 latent
    epoch_length: int = 200  # agent updates between buffer refreshes (a block)
    epoch_real_episodes: int = 1  # dataset episodes re-filtered into the real buffer per block
    epoch_latent_batches: int = 1  # window batches rolled out into the latent buffer per block
    gamma: float = 0.99
    actor_lr: float = 3e-4
    critic_lr: float = 3e-4
    alpha_lr: float = 3e-4  # agent=sac only
    init_alpha: float = 0.1  # agent=sac only
    tau: float = 5e-3
    grad_clip: float = 100.0
    actor_hidden: int = 256
    actor_layers: int = 4
    critic_hidden: int = 256
    critic_layers: int = 3
    # Acting in the environment.
    eval_posterior: Literal["sample", "mean"] = "sample"  # authors: a sampled posterior, as in training
    precision: str = precision.DEFAULT_PRECISION  # bf16 autocast fast path, or fp32

    def __post_init__(self):
        for name in ("model_batch", "depth", "deter", "stoch", "hidden", "heads", "reward_hidden", "horizon",
                     "latent_init_transitions", "real_fill_steps", "agent_batch", "epoch_length", "actor_hidden",
                     "critic_hidden", "actor_layers"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("model_steps", "agent_steps", "burn_in", "rollout_starts", "real_buffer_size",
                     "latent_buffer_size", "epoch_real_episodes", "epoch_latent_batches", "critic_layers"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.model_length < 2:
            raise ValueError(f"model_length must be >= 2, got {self.model_length}")
        for name, accepted in (("penalty", PENALTIES), ("latent_reward", LATENT_REWARDS), ("agent", tuple(AGENTS)),
                               ("eval_posterior", EVAL_POSTERIORS), ("warmup_actions", WARMUP_ACTIONS),
                               ("agent_act", tuple(ACTIVATIONS))):
            if getattr(self, name) not in accepted:
                raise ValueError(f"{name} must be one of {', '.join(accepted)}, got {getattr(self, name)!r}")
        precision.check_precision(self.precision)
        for name in ("penalty_scale", "kl_scale", "free_nats", "rollout_noise"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.kl_balance is not None and not 0.0 <= self.kl_balance <= 1.0:
            raise ValueError(f"kl_balance must be None (no balancing) or in [0, 1], got {self.kl_balance}")
        if self.heads < 2 and self.penalty != "max_var" and self.penalty_scale > 0:
            raise ValueError("a disagreement penalty needs heads >= 2")
        for name in ("real_buffer_size", "latent_buffer_size"):
            if 0 < getattr(self, name) < self.agent_batch:
                raise ValueError(f"{name} must be 0 (the dataset's size) or >= agent_batch, got {getattr(self, name)}")


PROFILE_SCALING = {
    # cpu: the authors' recipe shrunk (same phases, same agent) to <= ~25 min on one core, evaluation
    # included. Sizes: 16 x 32 windows, half-width convs, 128-unit GRU, 128 + 128 agent batches; the
    # walker cpu dataset is 20K transitions (40 episodes), so both rings hold 20K (latent: ~8 blocks of
    # 16 x 32 x 5 = 2,560 rollouts), and the warm-up is half of that (authors: 50K of walker's 100K).
    # Step times (benchmark in the lompo-bench #11 report; fp32, 1 thread, medians of 3 interleaved rounds
    # on a machine at load 7-10, so only their RATIOS are usable): per agent update 1, model step 25,
    # rollout block (rollout + contrast + Q means) 11, filtering one 500-step episode 5, one evaluation
    # env step (physics + 64 px render + filtering + actor) 0.13. Anchored at the 1.33 s per model step
    # measured earlier at these sizes (benchmarks/bench_lompo.py, load 3-9) that is: agent update 53 ms,
    # rollout block 0.58 s, whole-dataset fill 11 s, evaluation 3.4 s per 500-step episode; the runner's
    # cpu schedule (10 evaluations x 10 episodes) costs ~345 s. bf16 autocast (the default) measured
    # 0.76x (model step), 0.79x (agent update), 0.76x (rollouts), 1.27x (fill) of fp32 in the same rounds.
    # Those loaded-machine numbers overstate the model step: idle, one thread, the issue (#12) measured
    # 0.50 s fp32 per model step at these sizes, and the bf16 fast path halves it (bench_fastpath).
    # Budget: 2,000 model steps and 20,000 agent updates, the authors' 1:4 ratio (25K : 100K), ~100
    # blocks; the same step counts as the former SAC recipe, so a whole run times the fast path and the
    # agent change at equal budget. Measured (bf16): 34-44 min a run with the other core busy (model step
    # ~0.65 s, update ~25 ms loaded); idle-core estimate from bench_fastpath (0.60 s, 24 ms) ~30 min.
    "cpu": dict(model_steps=2_000, model_batch=16, model_length=32, depth=16, deter=128, stoch=32, hidden=128,
                reward_hidden=128, real_fill_steps=4, latent_init_transitions=10_000, agent_steps=20_000,
                agent_batch=128),
    "smoke": dict(model_steps=4, model_batch=4, model_length=8, depth=8, deter=32, stoch=8, hidden=32,
                  reward_hidden=32, real_fill_steps=2, latent_init_transitions=100, agent_steps=6, agent_batch=16,
                  epoch_length=3, actor_hidden=32, actor_layers=2, critic_hidden=32, critic_layers=2),
}
FIGURE_LABEL_WIDTH = 70  # pixels of row labels left of the frames in model_samples.png
PAPER_ENV_SIZES = {"adroit-pen": dict(deter=512, hidden=512)}  # Appendix C


def rollout_starts_per_batch(c: LOMPOConfig) -> int:
    """Start states of one rollout batch (at least: windows that start at an episode's first row keep
    their first rows too)."""
    usable = c.model_batch * (c.model_length - min(c.burn_in, c.model_length - 1))
    return min(c.rollout_starts or usable, usable)


def phase_lengths(c: LOMPOConfig) -> tuple[int, int, int, int]:
    """train_step calls per phase: model, real-buffer fill, latent warm-up, agent."""
    return (c.model_steps, c.real_fill_steps, math.ceil(c.latent_init_transitions / (rollout_starts_per_batch(c) * c.horizon)),
            c.agent_steps)


class TransitionBuffer:
    """FIFO ring of transitions on feature vectors, on the agent's device. Storage grows (doubling)
    with what is stored, up to `capacity` rows; then the oldest rows are overwritten."""

    FIELDS = ("obs", "action", "reward", "next_obs", "not_done")

    def __init__(self, capacity: int, feature_dim: int, action_dim: int, device):
        self.capacity, self.device = int(capacity), device
        self._shapes = {"obs": (feature_dim,), "action": (action_dim,), "reward": (), "next_obs": (feature_dim,),
                        "not_done": ()}
        self.data = {k: torch.zeros((0, *self._shapes[k]), device=device) for k in self.FIELDS}
        self.position = 0  # next row to write
        self.size = 0

    def _grow(self, rows: int) -> None:
        allocated = self.data["obs"].shape[0]
        if rows > allocated:
            new = min(self.capacity, max(rows, 2 * allocated))
            self.data = {k: torch.cat([v, v.new_zeros((new - allocated, *self._shapes[k]))]) for k, v in self.data.items()}

    def add(self, batch: dict[str, torch.Tensor]) -> None:
        n = batch["obs"].shape[0]
        if n > self.capacity:  # keep the newest
            batch = {k: v[-self.capacity:] for k, v in batch.items()}
            n = self.capacity
        self._grow(min(self.capacity, self.position + n))
        rows = (self.position + torch.arange(n, device=self.data["obs"].device)) % self.capacity
        for k in self.FIELDS:
            self.data[k][rows] = batch[k].detach().to(self.data[k].dtype)
        self.position = (self.position + n) % self.capacity
        self.size = min(self.size + n, self.capacity)

    def sample(self, batch: int) -> dict[str, torch.Tensor]:
        index = torch.randint(self.size, (batch,), device=self.data["obs"].device)
        return {k: v[index] for k, v in self.data.items()}

    def state_dict(self) -> dict:
        return {"data": {k: v[: self.size].cpu() for k, v in self.data.items()}, "position": self.position,
                "size": self.size, "capacity": self.capacity}

    def load_state_dict(self, state: dict) -> None:
        self.capacity = int(state.get("capacity", self.capacity))
        self.size, self.position = int(state["size"]), int(state["position"])
        self.data = {k: torch.zeros((0, *self._shapes[k]), device=self.device) for k in self.FIELDS}
        self._grow(self.size)
        for k, v in state["data"].items():
            self.data[k][: self.size] = v.to(self.data[k].device)


class LatentPolicy(BatchPolicy):
    """Filters observations through the RSSM posterior (sampled or mean) and acts with the actor's
    noise-free action. Posterior samples come from a generator per episode, seeded (seed, episode
    number), so a fresh policy repeats its episodes exactly, alone or side by side, and never
    draws from the training RNG."""

    def __init__(self, model: LatentModel, actor, device, proprio: bool, sample: bool = True, seed: int = 0,
                 precision_name: str = "fp32"):
        self.model, self.actor, self.device, self.proprio = model, actor, device, proprio
        self.sample, self.seed, self.precision = sample, seed, precision_name
        self._episode = -1
        self.reset()

    def reset(self, n: int = 1) -> None:
        self._state = None
        self._action = None
        self._rngs = []
        for _ in range(n):
            self._episode += 1
            rng = torch.Generator(device=self.device)
            rng.manual_seed(int(np.random.SeedSequence([self.seed, 31_337, self._episode]).generate_state(1)[0]))
            self._rngs.append(rng)

    @torch.no_grad()
    def act_batch(self, obs: dict[str, np.ndarray]) -> np.ndarray:
        n = len(self._rngs)
        # fp32 on CPU: bf16 autocast measured 1.4x slower than fp32 for one frame.
        with precision.autocast(self.precision if str(self.device).startswith("cuda") else "fp32", self.device):
            batch = {"image": torch.as_tensor(obs["image"], device=self.device)}
            if self.proprio:
                batch["proprio"] = torch.as_tensor(obs["proprio"], dtype=torch.float32, device=self.device)
            if batch["image"].shape[0] != n:
                raise ValueError(f"act_batch got {batch['image'].shape[0]} observations after reset({n})")
            embed = self.model.embed(batch)
            if self._state is None:  # episode start: zero state and zero action, as row 0 of a stored episode
                self._state = self.model.initial(n, self.device)
                self._action = torch.zeros(n, self.model.action_dim, device=self.device)
            # One posterior filtering step (LatentModel.obs_step), each row with its episode's generator.
            deter = self.model.deter_step(self._state, self._action)
            mean, std = self.model.posterior_dist(deter, embed)
            if self.sample:
                noise = torch.stack([torch.randn(mean.shape[1:], generator=g, device=mean.device) for g in self._rngs])
                stoch = mean + std * noise
            else:
                stoch = mean
            self._state = LatentState(deter.float(), stoch.float())
            self._action = self.actor.mode(self._state.features()).float()
        return self._action.cpu().numpy().astype(np.float32)


@register
class LOMPO(Algorithm):
    """Latent Offline Model-based Policy Optimization (Rafailov et al., 2021), as in the authors' code:
    deterministic actor-critic, whole dataset in the real buffer, plain KL, sampled posteriors
    (deviations: profile sizes; buffers grow on demand)."""

    name = "lompo"
    Config = LOMPOConfig
    step_fields = ("model_steps", "agent_steps")  # what `--steps` scales; the buffer fills follow from sizes

    @classmethod
    def config_for(cls, profile: str, spec: DataSpec) -> LOMPOConfig:
        config = cls.Config()
        if profile == "paper":
            config = dataclasses.replace(config, **PAPER_ENV_SIZES.get(spec.env, {}))
        else:
            config = dataclasses.replace(config, **PROFILE_SCALING[profile])
        # A window fits inside one episode (T + 1 rows): D'Claw's 40-step episodes are shorter
        # than the authors' 50-step windows.
        return dataclasses.replace(config, model_length=min(config.model_length, spec.horizon + 1))

    def __init__(self, config: LOMPOConfig, spec: DataSpec, device: str = "cpu", seed: int = 0):
        super().__init__(config, spec, device, seed)
        c = config
        torch.manual_seed(seed)
        # The plain KL (authors) is balancing at a = 0.5 at twice the scale: a * KL(sg(q)||p) +
        # (1 - a) * KL(q||sg(p)) has half the gradient of KL(q||p) on each side.
        balance, kl_scale = (0.5, 2.0 * c.kl_scale) if c.kl_balance is None else (c.kl_balance, c.kl_scale)
        self.model = LatentModel(spec.image_shape, spec.proprio_dim, spec.action_dim, depth=c.depth, deter=c.deter,
                                 stoch=c.stoch, hidden=c.hidden, heads=c.heads, reward_hidden=c.reward_hidden,
                                 free_nats=c.free_nats, kl_balance=balance, kl_scale=kl_scale).to(device)
        self.model_optim = adam(self.model.parameters(), lr=c.model_lr, eps=c.model_eps)
        agent_cls, agent_config_cls = AGENTS[c.agent]
        agent_config = dataclasses.replace(agent_config_cls.from_config(c), act=c.agent_act)
        self.agent = agent_cls(self.model.feature_dim, spec.action_dim, agent_config).to(device)
        self.real_buffer: Optional[TransitionBuffer] = None  # sized by the dataset at the first fill
        self.latent_buffer: Optional[TransitionBuffer] = None
        self._gradient_steps = 0
        self._keys = ["image", "action", "reward", "is_first", "is_terminal"] + (["proprio"] if spec.proprio_dim else [])
        self.phase_ends = np.cumsum(phase_lengths(c))  # train_step index where each phase ends
        self._cuda = str(device).startswith("cuda")
        # Window batches are sampled ahead on ONE background thread (a Dataset is not shared
        # between threads; the store parallelises its own chunk decoding). On a GPU the model step
        # is short and a paper dataset outgrows the store's chunk cache, so it queues more ahead.
        self.prefetch_depth = 3 if self._cuda else 1
        self._prefetcher = None
        self._pending = {}  # (dataset id, step, stream) -> Future of a window batch

    def total_steps(self) -> int:
        return int(self.phase_ends[-1])

    def _autocast(self):
        return precision.autocast(self.config.precision, self.device)

    # ----------------------------------------------------------------------------------------
    # Data

    def _to_device(self, arrays: dict) -> dict[str, torch.Tensor]:
        out = {}
        for k in self._keys:
            t = torch.from_numpy(np.ascontiguousarray(arrays[k]))
            if k in ("action", "reward", "proprio"):
                t = t.float()
            elif k in ("is_first", "is_terminal"):
                t = t.bool()
            # Page-locked host memory makes the copy to the GPU asynchronous.
            out[k] = (t.pin_memory() if self._cuda else t).to(self.device, non_blocking=True)
        return out

    def _load_windows(self, dataset, step: int, stream: int) -> dict[str, torch.Tensor]:
        """Window batch number `step` of `stream`: a pure function of (seed, step, stream)."""
        rng = np.random.default_rng([self.seed, step, stream])
        return self._to_device(dataset.sample_windows(self.config.model_batch, self.config.model_length, rng,
                                                      keys=self._keys))

    def _windows(self, dataset, step: int, stream: int = 0, prefetch_until: int = 0) -> dict[str, torch.Tensor]:
        """The window batch of (step, stream), then queue steps step+1 .. min(step+depth, prefetch_until - 1)
        of the same stream on the prefetch threads (depth: `prefetch_depth`)."""
        key = (id(dataset), step, stream)
        future = self._pending.pop(key, None)
        batch = future.result() if future is not None else self._load_windows(dataset, step, stream)
        for stale in [k for k in self._pending if k[0] != id(dataset) or k[2] != stream or k[1] < step]:
            self._pending.pop(stale).cancel()
        ahead = range(step + 1, min(step + 1 + self.prefetch_depth, prefetch_until))
        if len(ahead):
            if self._prefetcher is None:
                self._prefetcher = ThreadPoolExecutor(max_workers=1, thread_name_prefix="lompo-windows")
            for s in ahead:
                if (id(dataset), s, stream) not in self._pending:
                    self._pending[(id(dataset), s, stream)] = self._prefetcher.submit(self._load_windows, dataset, s, stream)
        return batch

    def _drain(self) -> None:
        """Wait for queued window batches (before anything else reads the dataset on this thread)."""
        for future in self._pending.values():
            future.cancel() or future.exception()
        self._pending.clear()

    def _ensure_buffers(self, dataset) -> None:
        """Both rings, sized by the dataset where the config says 0 (the authors' capacity)."""
        c, dim, A = self.config, self.model.feature_dim, self.spec.action_dim
        if self.real_buffer is None:
            self.real_buffer = TransitionBuffer(c.real_buffer_size or dataset.num_transitions, dim, A, self.device)
        if self.latent_buffer is None:
            self.latent_buffer = TransitionBuffer(c.latent_buffer_size or dataset.num_transitions, dim, A, self.device)

    @torch.no_grad()
    def _posterior(self, batch) -> LatentState:
        """Sampled posterior states (B, T) of sequences that each start at row 0 of `batch` from a zero state."""
        c = self.config
        B, T = batch["action"].shape[:2]
        with self._autocast():
            obs = {"image": batch["image"], **({"proprio": batch["proprio"]} if "proprio" in batch else {})}
            # The conv encoder sees at most one model batch of frames at a time (whole episodes are long).
            flat = {k: v.reshape(1, B * T, *v.shape[2:]) for k, v in obs.items()}
            chunk = c.model_batch * c.model_length
            embed = torch.cat([self.model.embed({k: v[:, i: i + chunk] for k, v in flat.items()})
                               for i in range(0, B * T, chunk)], 1).reshape(B, T, -1)
            posts, _, _ = self.model.observe(embed, batch["action"], batch["is_first"])
        return LatentState(posts.deter.float(), posts.stoch.float())

    def _fill_episodes(self, dataset, episodes: list[int]) -> None:
        """Filter whole episodes from their first rows and add all their transitions to the real buffer.
        Episodes are filtered together in groups, padded at the end to the group's longest (the
        RSSM is causal, so padding never changes an earlier state; padded rows are dropped)."""
        self._drain()  # the dataset is read on this thread
        c = self.config
        group_rows = 4 * c.model_batch * c.model_length
        i = 0
        while i < len(episodes):
            group, rows = [], 0
            while i < len(episodes) and (not group or rows + self._episode_rows(dataset, episodes[i]) <= group_rows):
                rows += self._episode_rows(dataset, episodes[i])
                group.append(episodes[i])
                i += 1
            parts = [dataset.episode(e, keys=self._keys) for e in group]
            T = max(len(p["action"]) for p in parts)
            valid = np.zeros((len(parts), T), bool)
            padded = {k: np.zeros((len(parts), T, *parts[0][k].shape[1:]), parts[0][k].dtype) for k in self._keys}
            for b, p in enumerate(parts):
                n = len(p["action"])
                valid[b, :n] = True
                for k in self._keys:
                    padded[k][b, :n] = p[k]
            batch = self._to_device(padded)
            features = self._posterior(batch).features()
            keep = torch.as_tensor(valid[:, 1:], device=features.device)  # transition t -> t + 1 inside the episode
            self.real_buffer.add({"obs": features[:, :-1][keep], "action": batch["action"][:, 1:][keep],
                                  "reward": batch["reward"][:, 1:][keep], "next_obs": features[:, 1:][keep],
                                  "not_done": 1.0 - batch["is_terminal"][:, 1:][keep].float()})

    @staticmethod
    def _episode_rows(dataset, e: int) -> int:
        return int(dataset.episode_ends[e] - dataset.episode_starts[e])

    def _window_starts(self, batch) -> LatentState:
        """Rollout start states of a window batch: the posterior state of every row (after `burn_in`
        for windows that start mid-episode), `rollout_starts` of them at random where set."""
        c = self.config
        posts = self._posterior(batch)
        L = batch["action"].shape[1]
        usable = (torch.arange(L, device=posts.deter.device) >= c.burn_in).unsqueeze(0) | batch["is_first"][:, :1]
        deter, stoch = posts.deter[usable], posts.stoch[usable]
        if c.rollout_starts and deter.shape[0] > c.rollout_starts:
            pick = torch.randperm(deter.shape[0], device=deter.device)[: c.rollout_starts]
            deter, stoch = deter[pick], stoch[pick]
        return LatentState(deter, stoch)

    def _imagine(self, state: LatentState, action: torch.Tensor) -> tuple[LatentState, torch.Tensor, torch.Tensor]:
        """One imagined step through ONE randomly drawn head for the whole batch (authors). Returns
        (next state, raw reward per `latent_reward`, penalty)."""
        c = self.config
        N = action.shape[0]
        head = torch.randint(c.heads, (1,), device=action.device).repeat(N)
        next_state, info = self.model.imagine_step(state, action, head=head, penalty=c.penalty)
        if c.latent_reward == "chosen_head":
            reward = self.model.reward(next_state.features())
        else:
            reward = info["reward"]
        return next_state, reward.float(), info["penalty"].float()

    def _uniform_actions(self, n: int) -> torch.Tensor:
        return torch.rand(n, self.spec.action_dim, device=self.device) * 2 - 1

    @torch.no_grad()
    def _add_latent(self, batch, warmup: bool) -> dict[str, torch.Tensor]:
        """H-step rollouts from every start state of a window batch into the latent buffer."""
        c = self.config
        if warmup and c.warmup_actions == "uniform":
            act: Callable = lambda features: self._uniform_actions(features.shape[0])
        else:
            act = lambda features: self.agent.explore(features, c.rollout_noise)
        state = self._window_starts(batch)
        out = {k: [] for k in ("obs", "action", "reward", "next_obs", "penalty", "raw_reward")}
        with self._autocast():
            for _ in range(c.horizon):
                features = state.features().float()
                action = act(features).float()
                state, raw_reward, penalty = self._imagine(state, action)
                out["obs"].append(features)
                out["action"].append(action)
                out["raw_reward"].append(raw_reward)
                out["penalty"].append(penalty)
                out["reward"].append(raw_reward - c.penalty_scale * penalty)
                out["next_obs"].append(state.features().float())
        out = {k: torch.cat(v, 0) for k, v in out.items()}
        out["not_done"] = torch.ones_like(out["reward"])  # none of the tasks has a terminal state
        self.latent_buffer.add(out)
        return {"latent_reward": out["reward"].mean(), "latent_raw_reward": out["raw_reward"].mean(),
                "latent_penalty": out["penalty"].mean()}

    @torch.no_grad()
    def penalty_contrast(self, batch) -> dict[str, torch.Tensor]:
        """Mean penalty of one imagined step from the same posterior states (every row of the window
        batch but the last) with the dataset's actions, the current actor's (noise-free) actions and
        uniform random actions. The same head draw serves all three."""
        posts = self._posterior(batch)
        start = LatentState(posts.deter[:, :-1].flatten(0, 1), posts.stoch[:, :-1].flatten(0, 1))
        n = start.deter.shape[0]
        actions = {"data": batch["action"][:, 1:].flatten(0, 1),
                   "policy": self.agent.actor.mode(start.features()).float(),
                   "random": self._uniform_actions(n)}
        head_seed = int(torch.randint(2**62, ()).item())
        out = {}
        with self._autocast():
            for name, action in actions.items():
                with torch.random.fork_rng(devices=[torch.device(self.device).index or 0] if self._cuda else []):
                    torch.manual_seed(head_seed)  # same head and same noise for the three action sets
                    _, _, penalty = self._imagine(start, action)
                out[f"penalty_{name}"] = penalty.mean()
        return out

    @torch.no_grad()
    def _q_means(self) -> dict[str, torch.Tensor]:
        n = self.config.agent_batch
        out = {}
        with self._autocast():
            for name, buffer in (("q_real", self.real_buffer), ("q_latent", self.latent_buffer)):
                sample = buffer.sample(n)
                q1, q2 = self.agent.critic(sample["obs"], sample["action"])
                out[name] = torch.min(q1, q2).float().mean()
        return out

    # ----------------------------------------------------------------------------------------
    # Training

    def train_step(self, dataset, step: int) -> dict[str, float]:
        c = self.config
        model_end, real_end, latent_end, total = (int(x) for x in self.phase_ends)
        if step < model_end:
            metrics = self._model_step(dataset, step, prefetch_until=model_end)
        elif step < real_end:
            self._ensure_buffers(dataset)
            n, i = dataset.num_episodes, step - model_end
            self._fill_episodes(dataset, list(range(i * n // c.real_fill_steps, (i + 1) * n // c.real_fill_steps)))
            metrics = {"real_buffer": torch.tensor(float(self.real_buffer.size))}
        elif step < latent_end:
            self._ensure_buffers(dataset)
            metrics = self._add_latent(self._windows(dataset, step, stream=2), warmup=True)
            metrics["latent_buffer"] = torch.tensor(float(self.latent_buffer.size))
        else:
            self._ensure_buffers(dataset)
            agent_step = step - latent_end
            metrics = {}
            if agent_step > 0 and agent_step % c.epoch_length == 0:  # Algorithm 1: refresh both buffers
                block = agent_step // c.epoch_length
                # The episodes after the last one filtered, cycling through the dataset in order.
                first = (block - 1) * c.epoch_real_episodes
                self._fill_episodes(dataset, [(first + j) % dataset.num_episodes for j in range(c.epoch_real_episodes)])
                for i in range(c.epoch_latent_batches):
                    batch = self._windows(dataset, step, stream=100 + i)
                    metrics.update(self._add_latent(batch, warmup=False))
                    if i == 0:
                        metrics.update(self.penalty_contrast(batch))
                metrics.update(self._q_means())
            elif step == total - 1:  # the contrast and Q values at the end of the run
                metrics.update(self.penalty_contrast(self._windows(dataset, step, stream=200)))
                metrics.update(self._q_means())
            metrics.update(self._agent_step())
        # One host sync for all metrics.
        names = list(metrics)
        values = torch.stack([torch.as_tensor(metrics[k], dtype=torch.float32).to(self.device) for k in names]).tolist()
        return dict(zip(names, values))

    def _model_step(self, dataset, step: int, prefetch_until: int) -> dict:
        import time

        t0 = time.perf_counter()
        batch = self._windows(dataset, step, stream=0, prefetch_until=prefetch_until)
        wait = time.perf_counter() - t0
        self.model.train()
        with self._autocast():
            loss, metrics, _ = self.model.loss(batch)
        if self.config.kl_balance is None:  # report the authors' loss value (the optimised one counts the KL twice)
            metrics["model_loss"] = -(metrics["elbo"] + metrics["kl"]) + self.config.kl_scale * metrics["kl"]
        self.model_optim.zero_grad(set_to_none=True)
        loss.backward()
        metrics["model_grad_norm"] = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.config.model_grad_clip)
        self.model_optim.step()
        self._gradient_steps += 1
        metrics["data_wait_s"] = torch.tensor(wait)
        return metrics

    def _agent_step(self) -> dict:
        n = self.config.agent_batch
        real, latent = self.real_buffer.sample(n), self.latent_buffer.sample(n)
        batch = {k: torch.cat([real[k], latent[k]], 0) for k in TransitionBuffer.FIELDS}
        with self._autocast():
            metrics = self.agent.update(SACBatch(obs=batch["obs"], action=batch["action"], reward=batch["reward"],
                                                 next_obs=batch["next_obs"], not_done=batch["not_done"]))
        self._gradient_steps += 1
        return metrics

    # ----------------------------------------------------------------------------------------
    # Evaluation, checkpoints, figures

    def policy(self) -> Policy:
        return LatentPolicy(self.model, self.agent.actor, self.device, proprio=self.spec.proprio_dim > 0,
                            sample=self.config.eval_posterior == "sample", seed=self.seed,
                            precision_name=self.config.precision)

    def state_dict(self) -> dict:
        state = {"model": self.model.state_dict(), "model_optim": self.model_optim.state_dict(),
                 "agent": self.agent.state_dict(), "agent_optim": self.agent.optim_state_dict(),
                 "real_buffer": self.real_buffer.state_dict() if self.real_buffer is not None else None,
                 "latent_buffer": self.latent_buffer.state_dict() if self.latent_buffer is not None else None,
                 "gradient_steps": self._gradient_steps, "torch_rng": torch.get_rng_state()}
        if self._cuda:
            state["cuda_rng"] = torch.cuda.get_rng_state(torch.device(self.device))
        return state

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.model_optim.load_state_dict(state["model_optim"])
        self.agent.load_state_dict(state["agent"])
        self.agent.load_optim_state_dict(state["agent_optim"])
        dim, A = self.model.feature_dim, self.spec.action_dim
        for name in ("real_buffer", "latent_buffer"):
            buffer = None
            if state[name] is not None:
                buffer = TransitionBuffer(state[name]["capacity"], dim, A, self.device)
                buffer.load_state_dict(state[name])
            setattr(self, name, buffer)
        self._gradient_steps = int(state["gradient_steps"])
        torch.set_rng_state(state["torch_rng"].cpu())
        if "cuda_rng" in state and self._cuda:
            torch.cuda.set_rng_state(state["cuda_rng"].cpu(), torch.device(self.device))
        self._drain()

    def sample_figures(self, dataset, out_dir) -> list:
        """`model_samples.png` (paper Appendix E): for a few real windows, rows of observed frames,
        posterior reconstructions, and open-loop predictions that see the first 5 frames and then
        imagine the rest from the real actions through random forward heads."""
        from PIL import Image, ImageDraw

        self._drain()  # the dataset is read here; no prefetch thread may read it concurrently
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        sequences, length, context = 3, min(self.config.model_length, 30), 5
        context = min(context, length - 1)
        rng = np.random.default_rng([self.seed, 7_777])
        arrays = dataset.sample_windows(sequences, length, rng, keys=self._keys)
        batch = {k: torch.as_tensor(np.ascontiguousarray(arrays[k])).to(self.device) for k in self._keys}
        for k in ("action", "reward", "proprio"):
            if k in batch:
                batch[k] = batch[k].float()
        batch["is_first"] = batch["is_first"].bool()
        # Figures must not change the training run's random stream.
        cuda = [torch.device(self.device).index or 0] if self._cuda else []
        with torch.random.fork_rng(devices=cuda):
            torch.manual_seed(self.seed)
            self.model.eval()
            with self._autocast():
                samples = self.model.open_loop(batch, context)
            self.model.train()
        observed = arrays["image"]
        recon, predicted = samples["recon"].cpu().numpy(), samples["open_loop"].cpu().numpy()
        columns = list(range(0, length, max(1, length // 10)))[:10]
        H, W = observed.shape[2:4]
        gap = 4
        grid = np.full((sequences * (3 * H + gap), len(columns) * W, 3), 255, np.uint8)
        for s in range(sequences):
            for row, frames in enumerate((observed, recon, predicted)):
                top = s * (3 * H + gap) + row * H
                for j, t in enumerate(columns):
                    grid[top: top + H, j * W: (j + 1) * W] = frames[s, t]
        # 2x upscale, row labels on the left, a red line where open-loop prediction starts.
        scale = 2
        frames_img = Image.fromarray(grid).resize((grid.shape[1] * scale, grid.shape[0] * scale), Image.NEAREST)
        canvas = Image.new("RGB", (FIGURE_LABEL_WIDTH + frames_img.width, frames_img.height), "white")
        canvas.paste(frames_img, (FIGURE_LABEL_WIDTH, 0))
        draw = ImageDraw.Draw(canvas)
        split = next((j for j, t in enumerate(columns) if t >= context), None)
        for s in range(sequences):
            for row, label in enumerate(("observed", "posterior", "open loop")):
                top = scale * (s * (3 * H + gap) + row * H)
                draw.text((4, top + scale * H // 2 - 6), label, fill="black")
            if split is not None:
                x = FIGURE_LABEL_WIDTH + scale * split * W
                top = scale * (s * (3 * H + gap) + 2 * H)
                draw.line([(x, top), (x, top + scale * H - 1)], fill="red", width=2)
        path = out_dir / "model_samples.png"
        canvas.save(path)
        return [path]


@dataclass
class LMBRLConfig(LOMPOConfig):
    penalty_scale: float = 0.0  # lambda = 0: no uncertainty penalty (the paper's LMBRL baseline)


@register
class LMBRL(LOMPO):
    """LOMPO's latent model and policy optimisation without the uncertainty penalty (lambda = 0)."""

    name = "lmbrl"
    Config = LMBRLConfig
