"""One soft actor-critic run per (env, seed, profile): trained on the ground-truth ``state``,
evaluated periodically, every transition recorded, checkpointed and resumable.

Where: ``$LOMPO_BENCH_HOME/runs/sac/<profile>/<env>/seed<S>/``::

    log/chunk_<first row>.npz   the recorded replay log (see below), written as the run goes
    checkpoints/step_<N>/       model.zip (policy, critics, optimizers, temperature),
                                replay_buffer.pkl, state.pt (RNG states, counters, eval curve)
    checkpoints/latest.json     which checkpoint is current (written last, atomically)
    eval.csv, eval.png          evaluation curve (agent step, mean return, per-episode returns)
    reference.json              random-policy and expert reference returns (reference.py)
    final/model.zip             the final policy (samples the ``expert`` split)
    result.json                 written last: the run is complete (expert return, medium point, ...)

Training. stable-baselines3 SAC (hyperparameters per env in ``config.py``) on an env made
with ``render=False`` that exposes only ``state`` (no rendering while training). For
``sawyer-door`` SAC learns from Meta-World's dense ``shaped_reward`` (``info``); the sparse
success reward is what the log and the datasets store as ``reward``, the shaped one is
stored next to it as ``shaped_reward``. Training episode ``i`` is reset with a seed derived
from ``(seed, i)``, so every episode's start is reproducible and independent of the others.

Evaluation. Every ``eval_every`` agent steps (and at step 0 and at the end), the
deterministic policy (the tanh of the Gaussian mean) plays ``E = eval_episodes`` episodes
reset with the fixed seeds ``EVAL_SEED_BASE + j`` (the same for every run and seed). The
curve records the mean return of the dataset reward and of the training reward (they differ
only for sawyer-door). The last evaluation, of the final policy, defines the expert return.

Replay log. Every transition SAC collects, in the dataset row convention (DESIGN.md): a
reset row (zero action and reward, ``is_first``) then one row per agent step with the
observation after the action, the action and its reward; plus ``physics`` (MuJoCo's full
integration state, to render the frame later), ``state``, ``proprio`` where the task has
it, ``shaped_reward`` (sawyer-door), ``is_last``/``is_terminal``, the training ``episode``
index and the agent ``step`` (SAC's step counter when the row was recorded). Rows are
written in npz chunks (write + rename) every ``log_chunk_rows`` rows and at every checkpoint,
so a kill loses at most the rows since the last chunk.

Checkpoints. Every ``checkpoint_every`` agent steps, at the next episode start (so no
episode is cut), the run saves model, optimizers, replay buffer, evaluation curve, the RNG
states (Python, NumPy, torch, the action space's) and the counters into a fresh folder and
then points ``latest.json`` at it (write + rename; older checkpoints are deleted after).
Rerunning the same command after a kill loads the last checkpoint, deletes log chunks
recorded after it, resets the env of the episode that was starting (same seed, same state;
checked) and continues. The result is identical to an uninterrupted run: every random
draw (warm-up actions, replay sampling, policy noise, env resets) comes from restored or
per-episode-seeded generators and MuJoCo is deterministic on one machine. Across machines
or torch thread counts floating-point reductions may differ, and then runs diverge slowly
as any two SAC runs would.

Speed. `CollectorSAC` is SB3's SAC with its `train()` overridden (SB3's own extension point;
SB3 itself is not patched) to do the same update with less work per gradient step: the
critic is frozen while the actor loss backpropagates through it (SB3 computes those critic
weight gradients and then zeroes them unused), the target networks are Polyak-averaged
with foreach ops (the same multiply-add as SB3's per-tensor loop), and the losses are logged
once per `train()` call instead of one host read each per step. Adam runs fused
(`optimizer_kwargs={"fused": True}`, SB3's policy option; the same update in one kernel).
With ``SACConfig.precision = "bf16"`` (the default; walker and D'Claw keep fp32, see
``config.py``) the gradient step runs under bf16
autocast: the MLP bodies compute in bf16 (one core's bf16 matmul is ~4x its fp32 one) while
the policy class ``CollectorSACPolicy`` (``sac_policy.py``) keeps the Q, mean and log-std
output layers, and so every loss, in fp32; acting stays fp32. Same update-to-data ratio,
batch, networks and losses; `benchmarks/bench_collect.py --compare` times it against SB3's own
`SAC` in interleaved rounds. A run keeps the precision it started with (``state.pt``;
checkpoints from before the setting existed resume in fp32), so a resumed run continues as it
began, and ``result.json``'s ``sac_config`` records it.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import os
import random
import shutil
import time
from pathlib import Path

import gymnasium as gym
import numpy as np
import torch

from lompo_bench import paths
from lompo_bench.algorithms.precision import check_precision
from lompo_bench.errors import UserError
from lompo_bench.provenance import stamp

from . import reference, splits
from .config import CollectBudget, SACConfig, budget as get_budget, check_env, sac_config

EVAL_SEED_BASE = 10_000  # evaluation episode j resets with seed EVAL_SEED_BASE + j
LOG_KEYS_ALWAYS = ("state", "physics", "action", "reward", "is_first", "is_last", "is_terminal", "episode", "step")


def check_seed(seed) -> int:
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**31:
        raise UserError(f"seed must be an integer from 0 to 2**31-1, got {seed!r}")
    return seed


def run_dir(env: str, seed: int, profile: str) -> Path:
    return paths.runs_dir() / "sac" / profile / env / f"seed{seed}"


def episode_seed(seed: int, index: int, stream: int = 0) -> int:
    """Reset seed of episode ``index`` of one stream (0: training, 1: expert sampling) of a run."""
    return int(np.random.SeedSequence([seed, stream, index]).generate_state(1)[0])


def make_env(env: str, budget: CollectBudget, seed: int | None = None) -> gym.Env:
    """The task without rendering; smoke budgets shorten episodes with a time limit."""
    from lompo_bench import envs

    base = envs.make(env, seed=seed, render=False)
    if budget.horizon is not None:
        base = gym.wrappers.TimeLimit(base, max_episode_steps=budget.horizon)
    return base


def horizon_of(env: str, budget: CollectBudget) -> int:
    from lompo_bench import envs

    return budget.horizon if budget.horizon is not None else envs.SPECS[env].horizon


def train_reward(reward: float, info: dict) -> float:
    """What SAC learns from: the dense shaped reward where the task provides one."""
    return float(info["shaped_reward"]) if "shaped_reward" in info else float(reward)


# -- replay log -------------------------------------------------------------------------------


class ReplayLog:
    """Rows appended in memory, written to ``log/chunk_<first row>.npz`` (write + rename)."""

    def __init__(self, folder: Path, chunk_rows: int):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.chunk_rows = chunk_rows
        self.pending: list[dict[str, np.ndarray]] = []
        self.flushed_rows = 0

    def append(self, row: dict) -> None:
        self.pending.append(row)
        if len(self.pending) >= self.chunk_rows:
            self.flush(len(self.pending))

    def flush(self, count: int | None = None) -> None:
        """Write the first ``count`` pending rows (all by default) as one chunk."""
        count = len(self.pending) if count is None else count
        if count <= 0:
            return
        rows, self.pending = self.pending[:count], self.pending[count:]
        arrays = {k: np.stack([r[k] for r in rows]) for k in rows[0]}
        final = self.folder / f"chunk_{self.flushed_rows:012d}.npz"
        tmp = final.with_suffix(".tmp.npz")
        np.savez(tmp, **arrays)
        os.replace(tmp, final)
        self.flushed_rows += count

    def truncate(self, rows: int) -> None:
        """Forget everything after row ``rows`` (a resumed run re-records it)."""
        self.pending = []
        for chunk in sorted(self.folder.glob("chunk_*.npz")):
            start = int(chunk.stem.split("_")[1].split(".")[0])
            if chunk.name.endswith(".tmp.npz") or start >= rows:
                chunk.unlink()
                continue
            with np.load(chunk) as data:
                n = len(data["step"])
                if start + n > rows:  # cannot happen with checkpoint-aligned flushes; handled anyway
                    kept = {k: data[k][: rows - start] for k in data.files}
                    tmp = chunk.with_suffix(".tmp.npz")
                    np.savez(tmp, **kept)
                    os.replace(tmp, chunk)
        self.flushed_rows = rows


def load_log(folder: Path) -> dict[str, np.ndarray]:
    """All recorded rows of a run's replay log, in order."""
    chunks = sorted(p for p in Path(folder).glob("chunk_*.npz") if not p.name.endswith(".tmp.npz"))
    if not chunks:
        raise UserError(f"no replay log under {folder}; rerun the collection to (re)train the SAC run")
    parts = []
    expected = 0
    for chunk in chunks:
        start = int(chunk.stem.split("_")[1])
        if start != expected:
            raise UserError(f"replay log {folder} has a gap at row {expected}; delete the run folder and collect again")
        with np.load(chunk) as data:
            parts.append({k: data[k] for k in data.files})
        expected += len(parts[-1]["step"])
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


# -- the env SAC trains on ---------------------------------------------------------------------


class RecordingStateEnv(gym.Wrapper):
    """Exposes ``state`` only, rewards with the training reward, resets episode ``i`` with
    ``episode_seed(seed, i)`` (whatever seed the caller passes) and records every row."""

    def __init__(self, env: gym.Env, seed: int, log, stream: int = 0, reward_scale: float = 1.0):
        super().__init__(env)
        self.stream = stream
        self.reward_scale = float(reward_scale)
        self.observation_space = env.observation_space["state"]
        self.run_seed = seed
        self.log = log
        self.next_episode = 0  # index of the episode the next reset starts
        self.episode_steps = 0
        self.total_steps = 0  # agent steps taken (equals SAC's num_timesteps)
        self.zero_action = np.zeros(env.action_space.shape, np.float32)
        self.has_shaped = env.unwrapped.env_spec.name == "sawyer-door"

    def _record(self, obs, info, action, reward, shaped, is_first, is_last, is_terminal):
        if self.log is None:
            return
        row = {k: np.asarray(obs[k], np.float32) for k in ("state", "proprio") if k in obs}
        row.update(
            physics=np.asarray(info["physics"], np.float64), action=np.asarray(action, np.float32),
            reward=np.float32(reward), is_first=np.bool_(is_first), is_last=np.bool_(is_last),
            is_terminal=np.bool_(is_terminal), episode=np.int64(self.next_episode - 1),
            step=np.int64(self.total_steps),
        )
        if shaped is not None:
            row["shaped_reward"] = np.float32(shaped)
        self.log.append(row)

    def reset(self, *, seed=None, options=None):
        obs, info = self.env.reset(seed=episode_seed(self.run_seed, self.next_episode, self.stream))
        self.next_episode += 1
        self.episode_steps = 0
        self._record(obs, info, self.zero_action, 0.0, 0.0 if self.has_shaped else None, True, False, False)
        return obs["state"], info

    def step(self, action):
        action = np.clip(np.asarray(action, np.float32), -1.0, 1.0)
        obs, reward, terminated, truncated, info = self.env.step(action)
        self.episode_steps += 1
        self.total_steps += 1
        shaped = info.get("shaped_reward", 0.0) if self.has_shaped else None
        self._record(obs, info, action, reward, shaped, False, terminated or truncated, terminated)
        return obs["state"], train_reward(reward, info) * self.reward_scale, terminated, truncated, info


# -- evaluation ---------------------------------------------------------------------------------


def episode_returns(env: gym.Env, seeds, act) -> dict:
    """One episode per reset seed; ``act(obs, rng)`` picks each action, ``rng`` seeded by the
    episode's seed. Returns of the dataset reward and of the reward SAC trains on."""
    returns, train_returns = [], []
    for seed in seeds:
        rng = np.random.default_rng(seed)
        obs, _ = env.reset(seed=seed)
        done, ret, tret = False, 0.0, 0.0
        while not done:
            obs, reward, terminated, truncated, info = env.step(act(obs, rng))
            ret += float(reward)
            tret += train_reward(reward, info)
            done = terminated or truncated
        returns.append(ret)
        train_returns.append(tret)
    return {"mean_return": float(np.mean(returns)), "mean_train_return": float(np.mean(train_returns)),
            "returns": returns, "train_returns": train_returns}


def evaluate_policy(model, env: gym.Env, episodes: int, seed_base: int = EVAL_SEED_BASE,
                    deterministic: bool = True) -> dict:
    """Returns of ``episodes`` fixed-seed episodes of the SAC policy."""
    return episode_returns(env, range(seed_base, seed_base + episodes),
                           lambda obs, rng: model.predict(obs["state"], deterministic=deterministic)[0])


def write_eval_curve(folder: Path, curve: list[dict], env: str) -> None:
    """eval.csv (atomic) and eval.png."""
    tmp = folder / "eval.csv.tmp"
    with open(tmp, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["step", "mean_return", "mean_train_return", "returns"])
        for row in curve:
            w.writerow([row["step"], f"{row['mean_return']:.6g}", f"{row['mean_train_return']:.6g}",
                        " ".join(f"{r:.6g}" for r in row["returns"])])
    os.replace(tmp, folder / "eval.csv")
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(6, 3.5))
        steps = [r["step"] for r in curve]
        ax.plot(steps, [r["mean_return"] for r in curve], marker="o", ms=3, label="return")
        if any(r["mean_train_return"] != r["mean_return"] for r in curve):
            ax.plot(steps, [r["mean_train_return"] for r in curve], marker="o", ms=3, label="shaped return (trained on)")
            ax.legend()
        ax.set_xlabel("SAC agent steps")
        ax.set_ylabel(f"eval return ({len(curve[0]['returns'])} episodes)")
        ax.set_title(f"SAC on {env} (state)")
        ax.grid(alpha=0.3)
        fig.tight_layout()
        fig.savefig(folder / "eval.png.tmp.png", dpi=100)
        plt.close(fig)
        os.replace(folder / "eval.png.tmp.png", folder / "eval.png")
    except Exception as exc:  # a figure is never worth losing a run for
        print(f"warning: could not draw eval.png: {exc}")


# -- checkpoints --------------------------------------------------------------------------------


def _rng_states(model) -> dict:
    return {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state(),
            "action_space": model.action_space.np_random.bit_generator.state}


def _set_rng_states(model, states: dict) -> None:
    random.setstate(states["python"])
    np.random.set_state(states["numpy"])
    torch.set_rng_state(states["torch"])
    model.action_space.np_random.bit_generator.state = states["action_space"]


def save_checkpoint(folder: Path, model, extra: dict) -> None:
    ckpts = folder / "checkpoints"
    ckpts.mkdir(parents=True, exist_ok=True)
    name = f"step_{model.num_timesteps:012d}"
    tmp = ckpts / (name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    model.save(tmp / "model.zip")
    model.save_replay_buffer(tmp / "replay_buffer.pkl")
    torch.save({**extra, "rng": _rng_states(model), "num_timesteps": model.num_timesteps}, tmp / "state.pt")
    final = ckpts / name
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    _write_json(ckpts / "latest.json", {"checkpoint": name, "step": model.num_timesteps})
    for old in ckpts.iterdir():
        if old.is_dir() and old.name != name:
            shutil.rmtree(old, ignore_errors=True)


def _write_json(path: Path, obj) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, default=_json_default))
    os.replace(tmp, path)


def _json_default(o):
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(type(o))


def latest_checkpoint(folder: Path) -> Path | None:
    pointer = folder / "checkpoints" / "latest.json"
    if not pointer.exists():
        return None
    try:
        name = json.loads(pointer.read_text())["checkpoint"]
    except (ValueError, KeyError) as exc:
        raise UserError(f"corrupt checkpoint pointer {pointer} ({exc}); delete {folder} to retrain") from None
    ckpt = folder / "checkpoints" / name
    missing = [f for f in ("model.zip", "replay_buffer.pkl", "state.pt") if not (ckpt / f).exists()]
    if missing:
        raise UserError(f"corrupt checkpoint {ckpt} (missing {', '.join(missing)}); delete {folder} to retrain")
    return ckpt


# -- the run ------------------------------------------------------------------------------------


def load_result(env: str, seed: int, profile: str) -> dict | None:
    path = run_dir(env, seed, profile) / "result.json"
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text())
    except ValueError:
        raise UserError(f"corrupt run result {path}; delete {path.parent} to retrain") from None


def check_trained_to_budget(result: dict, env: str, seed: int, profile: str, budget: CollectBudget) -> dict:
    """A finished run trained for fewer steps than the profile's budget now asks (the budget was
    raised after it ran) is not an expert by today's definition: never reused silently."""
    steps = int(result.get("sac_steps", budget.sac_steps))
    trained, wanted = result.get("sac_config", {}), _asdict(effective_config(env, budget))
    changed = [k for k in ALGORITHM_KEYS if k in trained and _same_value(trained[k]) != _same_value(wanted[k])]
    if trained.get("reward_scale", 1.0) != wanted["reward_scale"]:
        changed.append("reward_scale")
    if changed:
        folder = run_dir(env, seed, profile)
        raise UserError(f"the SAC run {folder} was trained with other settings ({', '.join(changed)}) than "
                        f"collectors/config.py now gives {env}: move {folder} and the {env} {profile} datasets "
                        f"made from it ({paths.datasets_dir() / profile / env}) aside to retrain")
    if steps < budget.sac_steps:
        folder = run_dir(env, seed, profile)
        raise UserError(f"the SAC run {folder} was trained for {steps} steps, but the {profile} budget of {env} is "
                        f"now {budget.sac_steps} (collectors/config.py): delete {folder} and the {env} {profile} "
                        f"datasets made from it ({paths.datasets_dir() / profile / env}) to retrain with the budget")
    return result


# The settings that make a SAC run a different algorithm (a finished run with others is not reused).
ALGORITHM_KEYS = ("learning_rate", "batch_size", "gamma", "tau", "net_arch", "ent_coef")


def _same_value(v):
    return list(v) if isinstance(v, (list, tuple)) else v


def effective_config(env: str, budget: CollectBudget) -> SACConfig:
    """The env's SAC settings with the profile's warm-up and a buffer no larger than the run."""
    cfg = sac_config(env)
    warmup = budget.learning_starts if budget.learning_starts is not None else cfg.learning_starts
    return dataclasses.replace(cfg, learning_starts=warmup, buffer_size=min(cfg.buffer_size, budget.sac_steps),
                               net_arch=budget.net_arch or cfg.net_arch, batch_size=budget.batch_size or cfg.batch_size)


def collector_sac_class():
    """`CollectorSAC`: SB3's SAC with a leaner `train()` (same algorithm; see the module doc).
    Built on first use so that importing this module does not import stable-baselines3."""
    global _COLLECTOR_SAC
    if _COLLECTOR_SAC is not None:
        return _COLLECTOR_SAC
    from stable_baselines3 import SAC
    from stable_baselines3.common.utils import polyak_update
    from torch.nn import functional as F

    from lompo_bench.algorithms.precision import autocast

    class CollectorSAC(SAC):
        """SB3 SAC whose gradient step skips work whose result SB3 discards (module doc).
        `precision` ("bf16" or "fp32", `SACConfig.precision`) is set by whoever builds or loads it."""

        precision = "fp32"

        def train(self, gradient_steps: int, batch_size: int = 64) -> None:
            self.policy.set_training_mode(True)
            optimizers = [self.actor.optimizer, self.critic.optimizer]
            if self.ent_coef_optimizer is not None:
                optimizers += [self.ent_coef_optimizer]
            self._update_learning_rate(optimizers)
            critic_params, target_params = list(self.critic.parameters()), list(self.critic_target.parameters())
            logged: dict[str, list[torch.Tensor]] = {"ent_coef": [], "actor_loss": [], "critic_loss": [],
                                                     "ent_coef_loss": []}
            with autocast(self.precision):
                self._gradient_steps(gradient_steps, batch_size, critic_params, target_params, logged)
            self._n_updates += gradient_steps
            self.logger.record("train/n_updates", self._n_updates, exclude="tensorboard")
            for name, values in logged.items():
                if values:
                    self.logger.record(f"train/{name}", float(torch.stack([v.reshape(()) for v in values]).mean()))

        def _gradient_steps(self, gradient_steps, batch_size, critic_params, target_params, logged) -> None:
            for gradient_step in range(gradient_steps):
                data = self.replay_buffer.sample(batch_size, env=self._vec_normalize_env)
                discounts = data.discounts if data.discounts is not None else self.gamma
                if self.use_sde:
                    self.actor.reset_noise()
                actions_pi, log_prob = self.actor.action_log_prob(data.observations)
                log_prob = log_prob.reshape(-1, 1)

                # Temperature (as SB3: its loss sees log_prob detached, its step comes first).
                ent_coef_loss = None
                if self.ent_coef_optimizer is not None and self.log_ent_coef is not None:
                    ent_coef = torch.exp(self.log_ent_coef.detach())
                    ent_coef_loss = -(self.log_ent_coef * (log_prob + self.target_entropy).detach()).mean()
                    logged["ent_coef_loss"].append(ent_coef_loss.detach())
                else:
                    ent_coef = self.ent_coef_tensor
                logged["ent_coef"].append(ent_coef)
                if ent_coef_loss is not None and self.ent_coef_optimizer is not None:
                    self.ent_coef_optimizer.zero_grad()
                    ent_coef_loss.backward()
                    self.ent_coef_optimizer.step()

                # Critic: clipped double-Q TD target with the entropy bonus.
                with torch.no_grad():
                    next_actions, next_log_prob = self.actor.action_log_prob(data.next_observations)
                    next_q = torch.cat(self.critic_target(data.next_observations, next_actions), dim=1)
                    next_q = torch.min(next_q, dim=1, keepdim=True)[0] - ent_coef * next_log_prob.reshape(-1, 1)
                    target_q = data.rewards + (1 - data.dones) * discounts * next_q
                current_q = self.critic(data.observations, data.actions)
                critic_loss = 0.5 * sum(F.mse_loss(q, target_q) for q in current_q)
                logged["critic_loss"].append(critic_loss.detach())
                self.critic.optimizer.zero_grad()
                critic_loss.backward()
                self.critic.optimizer.step()

                # Actor, through a frozen critic: SB3 also computes the critic's weight gradients
                # here, which the next critic zero_grad() throws away unused.
                self.critic.requires_grad_(False)
                try:
                    q_pi = torch.cat(self.critic(data.observations, actions_pi), dim=1)
                    actor_loss = (ent_coef * log_prob - torch.min(q_pi, dim=1, keepdim=True)[0]).mean()
                    self.actor.optimizer.zero_grad()
                    actor_loss.backward()
                finally:
                    self.critic.requires_grad_(True)
                self.actor.optimizer.step()
                logged["actor_loss"].append(actor_loss.detach())

                if gradient_step % self.target_update_interval == 0:
                    # SB3's polyak_update, one foreach op per step instead of two per tensor.
                    with torch.no_grad():
                        torch._foreach_mul_(target_params, 1 - self.tau)
                        torch._foreach_add_(target_params, critic_params, alpha=self.tau)
                    if self.batch_norm_stats:
                        polyak_update(self.batch_norm_stats, self.batch_norm_stats_target, 1.0)

    _COLLECTOR_SAC = CollectorSAC
    return CollectorSAC


_COLLECTOR_SAC = None


def _new_model(env_name: str, vec_env, cfg: SACConfig, budget: CollectBudget, seed: int):
    from .sac_policy import CollectorSACPolicy

    model = collector_sac_class()(
        CollectorSACPolicy, vec_env, learning_rate=cfg.learning_rate, buffer_size=cfg.buffer_size,
        learning_starts=cfg.learning_starts,
        batch_size=cfg.batch_size, tau=cfg.tau, gamma=cfg.gamma, train_freq=cfg.train_freq,
        gradient_steps=cfg.gradient_steps, ent_coef=cfg.ent_coef,
        policy_kwargs={"net_arch": list(cfg.net_arch), "optimizer_kwargs": {"fused": True}}, seed=seed,
        device="auto", verbose=0,
    )
    model.precision = check_precision(cfg.precision)
    return model


def train(env: str, seed: int = 0, profile: str = "paper", *, progress: bool = True,
          stop_after: int | None = None) -> dict:
    """Train (or resume, or reuse) the SAC run of (env, seed, profile); returns its result.

    ``stop_after``: stop (after a checkpoint) once this many agent steps are done; for
    tests and benchmarks. The run then stays resumable and no result is written.
    A second process asking for the same unfinished run gets a one-line error (a lock on
    the run folder) instead of training it twice.
    """
    check_env(env)
    check_seed(seed)
    budget = get_budget(env, profile)
    done = load_result(env, seed, profile)
    if done is not None:
        return check_trained_to_budget(done, env, seed, profile, budget)
    cfg = effective_config(env, budget)
    folder = run_dir(env, seed, profile)
    folder.mkdir(parents=True, exist_ok=True)
    lock = _lock(folder)  # the kernel drops it when the process dies, SIGKILL included
    try:
        return _train(env, seed, profile, budget, cfg, folder, progress, stop_after)
    finally:
        lock.close()


def _train(env, seed, profile, budget, cfg, folder, progress, stop_after) -> dict:
    from stable_baselines3.common.callbacks import BaseCallback
    from stable_baselines3.common.vec_env import DummyVecEnv

    done = load_result(env, seed, profile)  # another command finished it meanwhile: reuse it
    if done is not None:
        return done
    # SAC's MLPs are small: one thread is as fast on an idle machine and avoids OpenMP's
    # collapse when the cores are shared (measured: 64x64 linear, 20 us with 1 thread,
    # 1.9 ms with 2 while another process ran). One fixed count also keeps resume bit-exact.
    torch.set_num_threads(1)
    ckpt = latest_checkpoint(folder)
    log = ReplayLog(folder / "log", budget.log_chunk_rows)
    wrapper = RecordingStateEnv(make_env(env, budget), seed, log, reward_scale=cfg.reward_scale)
    vec_env = DummyVecEnv([lambda: wrapper])
    eval_env = make_env(env, budget)

    if ckpt is None:
        log.truncate(0)
        model = _new_model(env, vec_env, cfg, budget, seed)
        state = {"curve": [], "next_eval": 0, "next_ckpt": budget.checkpoint_every, "log_rows": 0,
                 "next_episode": 0, "wall_time_s": 0.0, "precision": cfg.precision}
    else:
        try:
            state = torch.load(ckpt / "state.pt", weights_only=False)
            model = collector_sac_class().load(ckpt / "model.zip", env=vec_env, device="auto")
            model.load_replay_buffer(ckpt / "replay_buffer.pkl")
        except Exception as exc:  # any unreadable file: say which, keep everything on disk
            raise UserError(f"corrupt checkpoint {ckpt} ({type(exc).__name__}); delete {folder} to retrain") from None
        log.truncate(state["log_rows"])
        # The precision the run started with (runs from before the setting: fp32).
        state.setdefault("precision", "fp32")
        cfg = dataclasses.replace(cfg, precision=state["precision"])
        model.precision = state["precision"]
        wrapper.next_episode = state["next_episode"]
        wrapper.total_steps = model.num_timesteps
        saved_obs = model._last_obs
        model._last_obs = None  # learn() resets the env: episode `next_episode`, same seed
        _set_rng_states(model, state["rng"])
        resumed_obs, _ = wrapper.reset()
        if saved_obs is not None and not np.array_equal(np.asarray(saved_obs)[0], resumed_obs):
            raise UserError(f"checkpoint {ckpt} does not match the env's reset state; delete {folder} to retrain")
        model._last_obs = resumed_obs[None]
        model._last_episode_starts = np.ones((1,), dtype=bool)

    total = budget.sac_steps if stop_after is None else min(stop_after, budget.sac_steps)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=budget.sac_steps, initial=model.num_timesteps, unit="step", desc=f"SAC {env}",
                   dynamic_ncols=True, smoothing=0.05)
        if state["curve"]:
            bar.set_postfix(eval_return=f"{state['curve'][-1]['mean_return']:.1f}", refresh=False)

    def do_eval():
        res = evaluate_policy(model, eval_env, budget.eval_episodes)
        state["curve"] = [r for r in state["curve"] if r["step"] < model.num_timesteps]
        state["curve"].append({"step": model.num_timesteps, **res})
        write_eval_curve(folder, state["curve"], env)
        if bar is not None:
            bar.set_postfix(eval_return=f"{res['mean_return']:.1f}", refresh=False)

    def do_checkpoint():
        # The episode that is starting (its reset row is recorded) belongs after the checkpoint:
        # a resumed run resets it again with the same seed and records it again.
        keep = log.flushed_rows + len(log.pending) - wrapper.episode_steps - 1
        log.flush()
        state.update(log_rows=keep, next_episode=wrapper.next_episode - 1,
                     wall_time_s=state["wall_time_s"] + time.time() - t0[0])
        t0[0] = time.time()
        save_checkpoint(folder, model, state)

    t0 = [time.time()]

    class Hooks(BaseCallback):
        def _on_rollout_start(self) -> None:
            n = model.num_timesteps
            if n >= state["next_eval"]:
                do_eval()
                state["next_eval"] = (n // budget.eval_every + 1) * budget.eval_every
            if n >= state["next_ckpt"] and wrapper.episode_steps == 0 and n > 0:
                state["next_ckpt"] = (n // budget.checkpoint_every + 1) * budget.checkpoint_every
                do_checkpoint()
            if bar is not None and n % 25 == 0:
                bar.update(n - bar.n)

        def _on_step(self) -> bool:
            return True

    remaining = total - model.num_timesteps
    if remaining > 0:
        model.learn(total_timesteps=remaining, callback=Hooks(), reset_num_timesteps=False)
    if bar is not None:
        bar.update(model.num_timesteps - bar.n)

    if model.num_timesteps < budget.sac_steps:  # stopped early on request
        if wrapper.episode_steps != 0:
            raise RuntimeError("stop_after must fall on an episode boundary")
        do_checkpoint()
        if bar is not None:
            bar.close()
        return {"stopped_at": model.num_timesteps}

    # The end: the final evaluation defines the expert return.
    if not state["curve"] or state["curve"][-1]["step"] != model.num_timesteps:
        do_eval()
    if bar is not None:
        bar.close()
    log.flush()
    (folder / "final").mkdir(exist_ok=True)
    model.save(folder / "final" / "model.tmp.zip")
    os.replace(folder / "final" / "model.tmp.zip", folder / "final" / "model.zip")

    rand = reference.random_returns(env, profile)
    final_eval = state["curve"][-1]
    horizon = horizon_of(env, budget)
    medium = splits.medium_point(state["curve"], rand["mean_train_return"], final_eval["mean_train_return"],
                                 min_step=horizon, max_step=model.num_timesteps - horizon)
    wall = state["wall_time_s"] + time.time() - t0[0]

    result = {
        "env": env, "seed": seed, "profile": profile, "sac_steps": model.num_timesteps,
        "horizon": horizon_of(env, budget), "eval_episodes": budget.eval_episodes,
        "expert_return": final_eval["mean_return"], "expert_train_return": final_eval["mean_train_return"],
        "expert_returns": final_eval["returns"],
        "random_return": rand["mean_return"], "random_train_return": rand["mean_train_return"],
        "random_episodes": rand["episodes"],
        "medium": medium, "curve": state["curve"], "log_rows": log.flushed_rows,
        "sac_config": _asdict(cfg), "budget": _asdict(budget), "wall_time_s": wall,
        "trained_on": "shaped_reward" if env == "sawyer-door" else "reward",
        **stamp(),
    }
    _write_json(folder / "result.json", result)
    shutil.rmtree(folder / "checkpoints", ignore_errors=True)  # the replay buffer is no longer needed
    return result


def _lock(folder: Path):
    """An exclusive lock on the run folder, so two commands never train the same run at once."""
    import fcntl

    handle = open(folder / ".lock", "a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        raise UserError(f"another process is training the SAC run {folder}; wait for it to finish "
                         f"(this command then reuses the run)") from None
    return handle


def _asdict(obj) -> dict:
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(obj).items()}


def load_final_policy(env: str, seed: int, profile: str):
    from stable_baselines3 import SAC

    path = run_dir(env, seed, profile) / "final" / "model.zip"
    try:
        return SAC.load(path, device="auto")
    except Exception as exc:
        raise UserError(f"cannot load the final SAC policy {path} ({type(exc).__name__}); delete {path.parent.parent} to retrain") from None
