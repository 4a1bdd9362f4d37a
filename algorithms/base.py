"""What every algorithm is, to the rest of the suite (d3rlpy-style: Config -> create -> fit).

An algorithm is a class with one config dataclass (the paper's defaults), a per-profile
scaling of it, one `train_step` the runner calls in a loop, and a `policy()` the evaluator
runs in the real environment. The runner (`lompo_bench.runner.Trainer` and its callbacks)
owns everything around the update: the loop, progress, metrics log, checkpoints and resume,
evaluation schedule, the run lock and `result.json`, so an algorithm module reads top to
bottom as its own method and nothing else. An algorithm never prints: what it returns from
`train_step` reaches metrics.csv and TensorBoard.

Construction (`Algorithm(config, spec, ...)`) may raise ValueError/RuntimeError/TypeError for a
config value its networks or optimizers reject; the runner turns that into a one-line error
naming the `--set` that caused it.
"""

from __future__ import annotations

import abc
import dataclasses
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np


@dataclass(frozen=True)
class DataSpec:
    """Shapes an algorithm is built for, read from the dataset it trains on."""

    env: str
    image_shape: tuple[int, int, int]  # (H, W, 3), uint8 in the store
    proprio_dim: int  # 0 where the task has no proprio
    action_dim: int  # actions are in [-1, 1]
    horizon: int  # agent steps per episode
    action_repeat: int

    @classmethod
    def from_dataset(cls, dataset) -> "DataSpec":
        env = dataset.attrs["env"]
        proprio = dataset.shape("proprio")[-1] if "proprio" in dataset.keys else 0
        return cls(env=env["name"], image_shape=tuple(dataset.shape("image")[1:]), proprio_dim=int(proprio),
                   action_dim=int(dataset.shape("action")[-1]), horizon=int(env["horizon"]),
                   action_repeat=int(env["action_repeat"]))


class Policy(abc.ABC):
    """Acts in the real env from observations (image, plus proprio where present).

    Methods that filter a history (LOMPO, SLAC) keep their latent state between `act` calls;
    `reset` starts a new episode."""

    def reset(self) -> None:
        pass

    @abc.abstractmethod
    def act(self, obs: dict[str, np.ndarray]) -> np.ndarray:
        """obs: the env's observation dict (`image` uint8 HxWx3, `proprio` if present).
        Returns a float32 action in [-1, 1]. Deterministic (mean action) for evaluation."""


class BatchPolicy(Policy):
    """A policy that acts in N episodes at once: one forward pass per step for all of them.

    At batch 1 a policy step is mostly per-call overhead (a 64 px LOMPO step: ~1 ms for one
    frame, ~0.3 ms a frame for ten), so the evaluator steps its episodes side by side when a
    policy is one of these. Rows never mix: row i's output depends only on row i's inputs and
    its own per-episode state, so an episode's actions do not depend on what runs beside it."""

    def reset(self, n: int = 1) -> None:
        """Start `n` new episodes, one per row of the following `act_batch` calls."""

    @abc.abstractmethod
    def act_batch(self, obs: dict[str, np.ndarray]) -> np.ndarray:
        """obs: the observation dict with a leading axis of the `n` of `reset(n)`.
        Returns float32 actions, shape (n, action_dim)."""

    def act(self, obs: dict[str, np.ndarray]) -> np.ndarray:
        return self.act_batch({k: np.asarray(v)[None] for k, v in obs.items()})[0]


class Algorithm(abc.ABC):
    name: ClassVar[str]  # registry name, e.g. "lompo"
    Config: ClassVar[type]  # dataclass; field defaults are the paper's (Appendix C / authors' code)
    # Config fields (ints) whose sum is `total_steps()`, e.g. ("model_steps", "agent_steps").
    # `lompo-bench run --steps N` scales them proportionally to add up to N. None: the
    # runner uses the config's `steps` and `*_steps` int fields.
    step_fields: ClassVar[tuple[str, ...] | None] = None

    @classmethod
    def config_for(cls, profile: str, spec: DataSpec) -> Any:
        """The config at a scale profile ("smoke", "cpu", "paper"). "paper" is the defaults,
        with per-env sizes from Appendix C where the paper gives them."""
        return cls.Config()

    def __init__(self, config, spec: DataSpec, device: str = "cpu", seed: int = 0):
        self.config = config
        self.spec = spec
        self.device = device
        self.seed = seed

    # Optional: `phase_ends`, the train_step indices where each phase ends (e.g. LOMPO's model,
    # buffer-fill and agent phases), so the runner's ETA times one phase at a time.

    @abc.abstractmethod
    def total_steps(self) -> int:
        """Number of `train_step` calls a full run makes (all phases together)."""

    @abc.abstractmethod
    def train_step(self, dataset, step: int) -> dict[str, float]:
        """One iteration of the method (phases switch on `step`). Returns scalar metrics."""

    @abc.abstractmethod
    def policy(self) -> Policy:
        """The current policy, for evaluation in the real environment."""

    def gradient_steps(self) -> int:
        """Gradient updates made so far (all networks' updates counted once per iteration)."""
        return getattr(self, "_gradient_steps", 0)

    @abc.abstractmethod
    def state_dict(self) -> dict:
        """Everything needed to resume exactly: networks, optimizers, buffers, RNG states."""

    @abc.abstractmethod
    def load_state_dict(self, state: dict) -> None: ...

    def sample_figures(self, dataset, out_dir) -> list:
        """Optional PNGs for the run directory (e.g. model samples). Returns written paths."""
        return []


def config_fields(config) -> dict:
    return dataclasses.asdict(config)
