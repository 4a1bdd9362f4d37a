"""Walker Walk: dm_control's ``walker-walk``, physics, reward and initial states unchanged.

- **Base step**: one dm_control control step, 0.025 s (10 physics steps of 2.5 ms); the env's
  action repeat of 2 makes an agent step 0.05 s, and the horizon of 500 agent steps is
  dm_control's 1000-step (25 s) episode.
- **Action**: 6 joint torques in [-1, 1] (the actuators' own control range).
- **Reward**: dm_control's walk reward in [0, 1] per base step (standing x upright x forward
  speed of 1 m/s), so [0, 2] per agent step.
- **State** (24): dm_control's observation, in its order: body orientations (14), torso
  height (1), velocities (9). No proprioception key: the paper feeds images only.
- **Initial state**: dm_control's, joint angles drawn uniformly within their limits, drawn
  with the seed ``reset`` receives.
- **Camera**: dm_control's ``side`` camera (camera 0), which tracks the walker's centre of
  mass, as in the paper and the Dreamer line of work.
"""

from __future__ import annotations

from .core import Task  # first: it picks the OpenGL backend before mujoco is imported

import numpy as np  # noqa: E402
from dm_control import suite  # noqa: E402


class WalkerWalkTask(Task):
    camera = "side"
    has_proprio = False
    success_defined = False
    positions_current_after_step = True  # dm_control's step ends with mj_step1

    def __init__(self):
        env = suite.load("walker", "walk")
        self._physics = env.physics
        self._dm_task = env.task
        # Substeps per control step, as dm_control's Environment computes them.
        self._n_sub_steps = int(round(env.control_timestep() / self._physics.timestep()))
        self.model = self._physics.model.ptr
        self.data = self._physics.data.ptr
        self.reset(np.random.default_rng(0))

    def reset(self, rng: np.random.Generator) -> None:
        # dm_control tasks draw initial states from their own RandomState.
        self._dm_task._random = np.random.RandomState(int(rng.integers(2**31 - 1)))
        with self._physics.reset_context():
            self._dm_task.initialize_episode(self._physics)

    def step(self, action: np.ndarray) -> tuple[float, dict]:
        # What dm_control's control.Environment.step does, minus its time-limit bookkeeping.
        self._dm_task.before_step(action, self._physics)
        self._physics.step(self._n_sub_steps)
        self._dm_task.after_step(self._physics)
        return float(self._dm_task.get_reward(self._physics)), {}

    def state(self) -> np.ndarray:
        observation = self._dm_task.get_observation(self._physics)
        return np.concatenate([np.ravel(v) for v in observation.values()]).astype(np.float32)

    def proprio(self) -> None:
        return None
