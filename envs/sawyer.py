"""Sawyer Door Open: Meta-World's ``door-open-v3`` with a fixed door and a sparse reward.

- **Base step**: one Meta-World step, 0.0125 s (5 physics steps of 2.5 ms). The env's
  action repeat of 4 makes an agent step 0.05 s; the horizon, 125 agent steps, is
  Meta-World's ``max_path_length`` of 500 base steps.
- **Action** (4): end-effector displacement (x, y, z; Meta-World moves the arm through a
  mocap body, 1 cm per unit) and gripper effort, all in [-1, 1].
- **Goal**: fixed: the door stands at Meta-World's default position (0.1, 0.95, 0.15) in
  every episode, so the goal (the opened handle position) is fixed too. The initial state
  is Meta-World's (arm at its home pose), so every episode starts the same.
- **Reward**: ``1.0 * success`` per base step, so [0, 4] per agent step. Success is
  Meta-World's: the handle within 8 cm (along x) of the opened position; ``info["success"]``
  is True for an agent step when any of its base steps succeeded.
  ``info["shaped_reward"]`` is Meta-World's dense reward (v2 shaping, [0, 10] per base step,
  summed over the repeat), for the SAC collector.
- **State** (39): Meta-World's observation (hand position, gripper opening, handle pose,
  the same for the previous base step, and the goal position).
- **Proprio**: none; the paper gives the agent images only.
- **Physics state** includes the mocap pose that drives the arm, so a stored state
  re-renders exactly.
- **Camera**: a free camera looking at the arm and the door from the front-left, upright
  (Meta-World's ``corner`` cameras render upside down through the raw MuJoCo renderer).
"""

from __future__ import annotations

from .core import Task  # first: it picks the OpenGL backend before mujoco is imported

import pickle  # noqa: E402

import numpy as np  # noqa: E402
from metaworld.envs.sawyer_door_v3 import SawyerDoorEnvV3  # noqa: E402
from metaworld.types import Task as MetaWorldTask  # noqa: E402

DOOR_POSITION = np.array([0.1, 0.95, 0.15])  # Meta-World's default `obj_init_pos` for the door


class SawyerDoorOpenTask(Task):
    has_proprio = False
    success_defined = True
    free_camera = dict(lookat=(-0.05, 0.7, 0.2), distance=1.3, azimuth=140.0, elevation=-30.0)

    def __init__(self):
        env = SawyerDoorEnvV3()
        # Meta-World's way to fix a task's random vector (here: the door position).
        task_data = dict(env_cls=SawyerDoorEnvV3, rand_vec=DOOR_POSITION.copy(), partially_observable=False)
        env.set_task(MetaWorldTask(env_name="door-open-v3", data=pickle.dumps(task_data)))
        self._env = env
        self.model = env.model
        self.data = env.data
        self.reset(np.random.default_rng(0))

    @property
    def action_size(self) -> int:
        return 4  # xyz displacement + gripper (the model's 2 actuators are the gripper fingers)

    def reset(self, rng: np.random.Generator) -> None:
        # Deterministic: Meta-World draws nothing once the random vector is frozen.
        self._obs, _ = self._env.reset()

    def step(self, action: np.ndarray) -> tuple[float, dict]:
        self._obs, shaped, _, _, info = self._env.step(np.asarray(action, np.float32))
        success = bool(info["success"])
        return float(success), {"success": success, "shaped_reward": float(shaped)}

    def state(self) -> np.ndarray:
        return np.asarray(self._obs, np.float32)

    def proprio(self) -> None:
        return None

    def close(self) -> None:
        self._env.close()
