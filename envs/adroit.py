"""Adroit Pen with a fixed goal: gymnasium-robotics' ``AdroitHandPen-v1``, dense reward.

- **Base step**: one gymnasium-robotics step, 0.01 s (5 physics steps of 2 ms). The env's
  action repeat of 4 makes an agent step 0.04 s. The horizon, 50 agent steps (200 base
  steps, 2 s), is gymnasium-robotics' ``max_episode_steps=200`` for this task; it also
  leaves room for the length-50 training windows of the authors' sequence model.
- **Action**: 24 hand joint position targets in [-1, 1], scaled to each actuator's range by
  gymnasium-robotics.
- **Goal**: the same target orientation every episode: roll 0.2739, pitch -0.4604 rad,
  which is the goal ``AdroitHandPen-v1`` draws after ``reset(seed=0)`` (the authors fixed
  the goal by re-seeding the goal sampler at every reset). The initial state is
  gymnasium-robotics' (deterministic: pen in the palm, joints at zero), so every episode
  starts the same; randomness comes from the policy.
- **Reward** (gymnasium-robotics' dense reward, per base step): ``-distance + orientation
  similarity``, ``+10`` when the pen is within 7.5 cm of the goal position with similarity
  > 0.9, another ``+50`` above 0.95, ``-5`` when the pen has dropped (height < 7.5 cm). The
  pen falls onto the table, so the distance stays below 2 m and a base step earns within
  [-8, 61]; an agent step within [-32, 244].
- **Success**: gymnasium-robotics' ``success`` (distance < 7.5 cm and similarity > 0.95),
  True for an agent step when any of its base steps succeeded.
- **Proprio** (48): hand joint positions (24) and velocities (24).
- **State** (45): gymnasium-robotics' observation (hand joints, pen pose and velocity,
  pen and target orientation, their differences).
- **Camera**: a free camera in front of the fingertips, 30 degrees above the palm, framing
  the hand, the pen and the green target pen (the upstream default view shows a small hand).
"""

from __future__ import annotations

from .core import Task  # first: it picks the OpenGL backend before mujoco is imported

import contextlib  # noqa: E402
import io  # noqa: E402

import mujoco  # noqa: E402
import numpy as np  # noqa: E402

with contextlib.redirect_stderr(io.StringIO()):
    # gymnasium-robotics prints a notice about the relocate/hammer/door rewards on import.
    from gymnasium_robotics.envs.adroit_hand.adroit_pen import AdroitHandPenEnv
    from gymnasium_robotics.utils.rotations import euler2quat

GOAL_EULER = np.array([0.2739233746429086, -0.4604265724722594, 0.0])  # AdroitHandPen-v1, reset(seed=0)
NUM_HAND_JOINTS = 24


class AdroitPenTask(Task):
    has_proprio = True
    success_defined = True
    free_camera = dict(lookat=(0.14, -0.2, 0.2), distance=0.65, azimuth=-110.0, elevation=-30.0)

    def __init__(self):
        self._env = AdroitHandPenEnv(reward_type="dense")
        self.model = self._env.model
        self.data = self._env.data
        self._goal_quat = euler2quat(GOAL_EULER)
        self.reset(np.random.default_rng(0))

    def reset(self, rng: np.random.Generator) -> None:
        env = self._env
        env.np_random = rng  # drives the upstream goal draw, overwritten just below
        mujoco.mj_resetData(self.model, self.data)
        env.reset_model()
        self.model.body_quat[env.target_obj_body_id] = self._goal_quat
        mujoco.mj_forward(self.model, self.data)

    def step(self, action: np.ndarray) -> tuple[float, dict]:
        _, reward, _, _, info = self._env.step(np.asarray(action, np.float64))
        return float(reward), {"success": bool(info["success"])}

    def state(self) -> np.ndarray:
        return self._env._get_obs().astype(np.float32)

    def proprio(self) -> np.ndarray:
        qpos = self.data.qpos[:NUM_HAND_JOINTS]
        qvel = self.data.qvel[:NUM_HAND_JOINTS]
        return np.concatenate([qpos, qvel]).astype(np.float32)

    def close(self) -> None:
        self._env.close()
