"""LOMPO: offline model-based policy optimisation in a learned latent space (paper Section IV-C,
Algorithm 1 in Appendix D), and LMBRL, the same method with the uncertainty penalty off.

One run is four phases, switched on the `train_step` index (Algorithm 1):

1. Model (`model_steps`): ELBO updates of the latent model (`latent_model.LatentModel`) on
   (batch x length) windows of the dataset, each step's prior from one random forward head
   (Eq. 8). Window batches are prefetched on a background thread (their sampling RNG is a
   function of (seed, step), so prefetching never changes what a run sees and resume is exact).
2. Real buffer (`real_init_transitions`): posterior latent states of real windows, as SAC
   transitions (s_t, a_{t+1}, r_{t+1}, s_{t+1}).
3. Latent buffer warm-up (`latent_init_transitions`): H-step rollouts with uniform random actions
   from posterior states of real windows, each step through a randomly drawn head; reward of
   Eq. 9: mean reward over the heads' samples minus lambda * disagreement (`penalty`).
4. Agent (`agent_steps`): SAC on the latent features [z, h] with batches of `agent_batch` real +
   `agent_batch` latent transitions. Every `epoch_length` updates, `epoch_real_batches` more real
   window batches and `epoch_latent_batches` rollouts of the current (stochastic) policy are
   added; both buffers are FIFO rings.

The model is frozen after phase 1 (as in Algorithm 1). Windows that start mid-episode begin from
a zero state, so their first `burn_in` rows are not used as buffer states (windows that start at
an episode's first row are used whole: the policy must learn the start states it meets).

Evaluation (`policy()`): the RSSM filters the observation history with the posterior mean
(deterministic GRU state and stochastic state kept between steps, the previous action fed in)
and the actor acts with its mode, tanh(mean), on [z, h].

On CUDA the model runs under bf16 autocast; buffers live on the device and the rollout loop
never syncs with the host. Defaults are the authors' (`/work/shared/reference/authors-config.md`
in the project notes; paper Appendix C): `config_for` scales them for the `cpu` and `smoke`
profiles and sets Adroit Pen's 512-unit model at the paper profile.
"""

from __future__ import annotations

import dataclasses
import math
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from lompo_bench.registry import register

from .base import Algorithm, DataSpec, Policy
from .latent_model import PENALTIES, LatentModel, LatentState
from .agents import SAC, SACBatch, SACConfig


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
    free_nats: float = 3.0
    kl_balance: float = 0.8
    # Latent data (Eq. 9, Algorithm 1).
    horizon: int = 5  # H
    penalty: Literal["log_prob", "max_var", "mean"] = "log_prob"  # disagreement measure (latent_model.py)
    # lambda (authors: 5; LMBRL: 0). Not re-tuned per profile: after the cpu profile's 2k model steps the
    # heads still disagree by ~0.6-0.7 a step on dataset transitions, so 5x that outweighs walker's
    # reward (0.3-1.9 a step) and the latent rewards turn negative (-1.1 to -3.0 a step, measured).
    penalty_scale: float = 5.0
    burn_in: int = 5
    real_init_transitions: int = 50_000
    latent_init_transitions: int = 50_000
    rollout_starts: int = 0  # start states per rollout batch; 0: every posterior state of a window batch
    real_buffer_size: int = 100_000
    latent_buffer_size: int = 100_000
    # Agent: SAC in the latent space.
    agent_steps: int = 100_000
    agent_batch: int = 256  # per side: 256 real + 256 latent
    epoch_length: int = 200  # SAC updates between buffer refreshes
    epoch_real_batches: int = 1
    epoch_latent_batches: int = 1
    gamma: float = 0.99
    actor_lr: float = 3e-4
    critic_lr: float = 3e-4
    alpha_lr: float = 3e-4
    init_alpha: float = 0.1
    tau: float = 5e-3
    grad_clip: float = 100.0
    actor_hidden: int = 256
    actor_layers: int = 4
    critic_hidden: int = 256
    critic_layers: int = 3

    def __post_init__(self):
        for name in ("model_batch", "depth", "deter", "stoch", "hidden", "heads", "reward_hidden", "horizon",
                     "real_init_transitions", "latent_init_transitions", "real_buffer_size", "latent_buffer_size",
                     "agent_batch", "epoch_length", "actor_hidden", "critic_hidden"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("model_steps", "agent_steps", "burn_in", "rollout_starts", "epoch_real_batches",
                     "epoch_latent_batches", "actor_layers", "critic_layers"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.model_length < 2:
            raise ValueError(f"model_length must be >= 2, got {self.model_length}")
        if self.penalty not in PENALTIES:
            raise ValueError(f"penalty must be one of {', '.join(PENALTIES)}, got {self.penalty!r}")
        if self.penalty_scale < 0:
            raise ValueError(f"penalty_scale must be >= 0, got {self.penalty_scale}")
        if self.heads < 2 and self.penalty != "max_var" and self.penalty_scale > 0:
            raise ValueError("a disagreement penalty needs heads >= 2")
        if self.real_buffer_size < self.agent_batch or self.latent_buffer_size < self.agent_batch:
            raise ValueError("buffer sizes must be >= agent_batch")


PROFILE_SCALING = {
    # cpu: about an hour on 2 cores (benchmarks/bench_lompo.py: 1.3 s per model step and 21 SAC
    # steps/s on one contended core -> ~1 h of training; evaluation comes on top). Batch 16 x 32,
    # half-width convs, a 128-unit GRU: far below the paper's model, and its scores say so.
    "cpu": dict(model_steps=2_000, model_batch=16, model_length=32, depth=16, deter=128, stoch=32, hidden=128,
                reward_hidden=128, real_init_transitions=10_000, latent_init_transitions=10_000,
                rollout_starts=512, real_buffer_size=50_000, latent_buffer_size=50_000, agent_steps=20_000,
                agent_batch=128),
    "smoke": dict(model_steps=4, model_batch=4, model_length=8, depth=8, deter=32, stoch=8, hidden=32,
                  reward_hidden=32, burn_in=2, real_init_transitions=20, latent_init_transitions=100,
                  rollout_starts=0, real_buffer_size=400, latent_buffer_size=1_000, agent_steps=6, agent_batch=16,
                  epoch_length=3, actor_hidden=32, actor_layers=2, critic_hidden=32, critic_layers=2),
}
FIGURE_LABEL_WIDTH = 70  # pixels of row labels left of the frames in model_samples.png
PAPER_ENV_SIZES = {"adroit-pen": dict(deter=512, hidden=512)}  # Appendix C


def phase_lengths(c: LOMPOConfig) -> tuple[int, int, int, int]:
    """train_step calls per phase: model, real-buffer fill, latent warm-up, agent. A real fill batch
    adds at least B x (L - 1 - burn_in) transitions (windows that start at an episode's first row
    keep their first rows too) and a latent one starts x H, so the fills reach their targets."""
    rows = c.model_batch * c.model_length
    real_per_batch = c.model_batch * (c.model_length - 1 - min(c.burn_in, c.model_length - 2))
    starts = min(c.rollout_starts or rows, rows)
    return (c.model_steps, math.ceil(c.real_init_transitions / real_per_batch),
            math.ceil(c.latent_init_transitions / (starts * c.horizon)), c.agent_steps)


class TransitionBuffer:
    """FIFO ring of SAC transitions on feature vectors, kept on the agent's device."""

    FIELDS = ("obs", "action", "reward", "next_obs", "not_done")

    def __init__(self, capacity: int, feature_dim: int, action_dim: int, device):
        self.capacity = capacity
        shapes = {"obs": (feature_dim,), "action": (action_dim,), "reward": (), "next_obs": (feature_dim,),
                  "not_done": ()}
        self.data = {k: torch.zeros((capacity, *shapes[k]), device=device) for k in self.FIELDS}
        self.position = 0  # next row to write
        self.size = 0

    def add(self, batch: dict[str, torch.Tensor]) -> None:
        n = batch["obs"].shape[0]
        if n > self.capacity:  # keep the newest
            batch = {k: v[-self.capacity:] for k, v in batch.items()}
            n = self.capacity
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
                "size": self.size}

    def load_state_dict(self, state: dict) -> None:
        self.size, self.position = int(state["size"]), int(state["position"])
        for k, v in state["data"].items():
            self.data[k][: self.size] = v.to(self.data[k].device)


class LatentPolicy(Policy):
    """Filters observations through the RSSM posterior and acts with the actor's mode."""

    def __init__(self, model: LatentModel, sac: SAC, device, proprio: bool):
        self.model, self.actor, self.device, self.proprio = model, sac.actor, device, proprio
        self.reset()

    def reset(self) -> None:
        self._state = None
        self._action = None

    @torch.no_grad()
    def act(self, obs: dict[str, np.ndarray]) -> np.ndarray:
        batch = {"image": torch.as_tensor(obs["image"], device=self.device)[None]}
        if self.proprio:
            batch["proprio"] = torch.as_tensor(obs["proprio"], dtype=torch.float32, device=self.device)[None]
        embed = self.model.embed(batch)
        first = self._state is None
        if first:  # episode start: zero state and zero action, as row 0 of a stored episode
            self._state = self.model.initial(1, self.device)
            self._action = torch.zeros(1, self.model.action_dim, device=self.device)
        self._state, _ = self.model.obs_step(self._state, self._action, embed, sample=False)
        self._action = self.actor.mode(self._state.features().float())
        return self._action[0].cpu().numpy().astype(np.float32)


@register
class LOMPO(Algorithm):
    """Latent Offline Model-based Policy Optimization (Rafailov et al., 2021)."""

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
        self.model = LatentModel(spec.image_shape, spec.proprio_dim, spec.action_dim, depth=c.depth, deter=c.deter,
                                 stoch=c.stoch, hidden=c.hidden, heads=c.heads, reward_hidden=c.reward_hidden,
                                 free_nats=c.free_nats, kl_balance=c.kl_balance).to(device)
        self.model_optim = torch.optim.Adam(self.model.parameters(), lr=c.model_lr, eps=c.model_eps)
        sac_config = SACConfig.from_config(c)
        self.sac = SAC(self.model.feature_dim, spec.action_dim, sac_config).to(device)
        self.real_buffer = TransitionBuffer(c.real_buffer_size, self.model.feature_dim, spec.action_dim, device)
        self.latent_buffer = TransitionBuffer(c.latent_buffer_size, self.model.feature_dim, spec.action_dim, device)
        self._gradient_steps = 0
        self._keys = ["image", "action", "reward", "is_first", "is_terminal"] + (["proprio"] if spec.proprio_dim else [])
        self.phase_ends = np.cumsum(phase_lengths(c))  # train_step index where each phase ends
        self._autocast = str(device).startswith("cuda")
        # Window batches are sampled ahead on ONE background thread (a Dataset is not shared
        # between threads; the store parallelises its own chunk decoding). On a GPU the model step
        # is short and a paper dataset outgrows the store's chunk cache, so it queues more ahead.
        self.prefetch_depth = 3 if self._autocast else 1
        self._prefetcher = None
        self._pending = {}  # (dataset id, step, stream) -> Future of a window batch

    def total_steps(self) -> int:
        return int(self.phase_ends[-1])

    # ----------------------------------------------------------------------------------------
    # Data

    def _load_windows(self, dataset, step: int, stream: int) -> dict[str, torch.Tensor]:
        """Window batch number `step` of `stream`: a pure function of (seed, step, stream)."""
        rng = np.random.default_rng([self.seed, step, stream])
        arrays = dataset.sample_windows(self.config.model_batch, self.config.model_length, rng, keys=self._keys)
        pin = self._autocast  # page-locked host memory makes the copy to the GPU asynchronous
        out = {}
        for k in self._keys:
            t = torch.from_numpy(np.ascontiguousarray(arrays[k]))
            if k in ("action", "reward", "proprio"):
                t = t.float()
            elif k in ("is_first", "is_terminal"):
                t = t.bool()
            out[k] = (t.pin_memory() if pin else t).to(self.device, non_blocking=True)
        return out

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

    @torch.no_grad()
    def _posterior_windows(self, batch) -> tuple[LatentState, torch.Tensor]:
        """Posterior states (B, L) of a window batch and the mask of rows usable as states."""
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=self._autocast):
            obs = {"image": batch["image"], **({"proprio": batch["proprio"]} if "proprio" in batch else {})}
            posts, _, _ = self.model.observe(self.model.embed(obs), batch["action"], batch["is_first"])
        posts = LatentState(posts.deter.float(), posts.stoch.float())
        L = batch["action"].shape[1]
        late = torch.arange(L, device=batch["action"].device) >= self.config.burn_in
        usable = late.unsqueeze(0) | batch["is_first"][:, :1]  # (B, L)
        return posts, usable

    def _add_real(self, batch) -> None:
        posts, usable = self._posterior_windows(batch)
        features = posts.features()
        keep = usable[:, :-1]
        self.real_buffer.add({"obs": features[:, :-1][keep], "action": batch["action"][:, 1:][keep],
                              "reward": batch["reward"][:, 1:][keep], "next_obs": features[:, 1:][keep],
                              "not_done": 1.0 - batch["is_terminal"][:, 1:][keep].float()})

    def _add_latent(self, batch, random_actions: bool) -> dict[str, torch.Tensor]:
        c = self.config
        posts, usable = self._posterior_windows(batch)
        deter, stoch = posts.deter[usable], posts.stoch[usable]
        if c.rollout_starts and deter.shape[0] > c.rollout_starts:
            pick = torch.randperm(deter.shape[0], device=deter.device)[: c.rollout_starts]
            deter, stoch = deter[pick], stoch[pick]
        actor = None if random_actions else (lambda features: self.sac.actor.sample(features.float())[0])
        with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16, enabled=self._autocast):
            out = self.model.rollout(LatentState(deter, stoch), c.horizon, actor, c.penalty, c.penalty_scale)
        out = {k: v.float() for k, v in out.items()}
        out["not_done"] = torch.ones_like(out["reward"])  # none of the tasks has a terminal state
        self.latent_buffer.add(out)
        return {"latent_reward": out["reward"].mean(), "latent_penalty": out["penalty"].mean()}

    # ----------------------------------------------------------------------------------------
    # Training

    def train_step(self, dataset, step: int) -> dict[str, float]:
        c = self.config
        model_end, real_end, latent_end, _ = (int(x) for x in self.phase_ends)
        if step < model_end:
            metrics = self._model_step(dataset, step, prefetch_until=model_end)
        elif step < real_end:
            self._add_real(self._windows(dataset, step, stream=1))
            metrics = {"real_buffer": torch.tensor(float(self.real_buffer.size))}
        elif step < latent_end:
            metrics = self._add_latent(self._windows(dataset, step, stream=2), random_actions=True)
            metrics["latent_buffer"] = torch.tensor(float(self.latent_buffer.size))
        else:
            agent_step = step - latent_end
            metrics = {}
            if agent_step > 0 and agent_step % c.epoch_length == 0:  # Algorithm 1: refresh both buffers
                for i in range(c.epoch_real_batches):
                    self._add_real(self._windows(dataset, step, stream=10 + i))
                for i in range(c.epoch_latent_batches):
                    metrics.update(self._add_latent(self._windows(dataset, step, stream=100 + i), random_actions=False))
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
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=self._autocast):
            loss, metrics, _ = self.model.loss(batch)
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
        metrics = self.sac.update(SACBatch(obs=batch["obs"], action=batch["action"], reward=batch["reward"],
                                           next_obs=batch["next_obs"], not_done=batch["not_done"]))
        self._gradient_steps += 1
        return metrics

    # ----------------------------------------------------------------------------------------
    # Evaluation, checkpoints, figures

    def policy(self) -> Policy:
        return LatentPolicy(self.model, self.sac, self.device, proprio=self.spec.proprio_dim > 0)

    def state_dict(self) -> dict:
        state = {"model": self.model.state_dict(), "model_optim": self.model_optim.state_dict(),
                 "sac": self.sac.state_dict(), "sac_optim": self.sac.optim_state_dict(),
                 "real_buffer": self.real_buffer.state_dict(), "latent_buffer": self.latent_buffer.state_dict(),
                 "gradient_steps": self._gradient_steps, "torch_rng": torch.get_rng_state()}
        if str(self.device).startswith("cuda"):
            state["cuda_rng"] = torch.cuda.get_rng_state(torch.device(self.device))
        return state

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.model_optim.load_state_dict(state["model_optim"])
        self.sac.load_state_dict(state["sac"])
        self.sac.load_optim_state_dict(state["sac_optim"])
        self.real_buffer.load_state_dict(state["real_buffer"])
        self.latent_buffer.load_state_dict(state["latent_buffer"])
        self._gradient_steps = int(state["gradient_steps"])
        torch.set_rng_state(state["torch_rng"].cpu())
        if "cuda_rng" in state and str(self.device).startswith("cuda"):
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
        cuda = [torch.device(self.device).index or 0] if self._autocast else []
        with torch.random.fork_rng(devices=cuda):
            torch.manual_seed(self.seed)
            self.model.eval()
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=self._autocast):
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
