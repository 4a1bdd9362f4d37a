"""D'Claw Screw: turn a three-pronged valve continuously with a three-fingered claw.

The paper's second task (Appendix A) is a modified ROBEL D'Claw screw task: "continuously
turn the valve as fast as possible", with a dense penalty for finger positioning and a
reward for turning. ROBEL itself (``robel`` 0.1.2) cannot be installed today (gym<0.14,
mujoco-py 2.0), so the robot is rebuilt here on the ``mujoco`` bindings from ROBEL's
published description; the model is ``assets/dclaw_screw.xml`` (primitives, no meshes).

Robot. Three identical fingers hang from a ring of radius 10 cm, 120 degrees apart (at
90, 210, 330 degrees around the valve axis). Each finger is a chain of three servos:
``top`` swings the finger sideways (range +-0.48 rad, positive moves the fingertip
counter-clockwise seen from above), ``mid`` and ``bot`` bend it (ranges +-pi/3 and
+-pi/2 rad, negative bends toward the valve axis). Links are 4.5, 6.8 and 8.5 cm, each
servo housing 80 g, fingertips rubber-capped spheres (friction 1.2). Servos are MuJoCo
position actuators with ROBEL's published gains (kp 2 N m/rad, joint damping 0.1,
armature 0.001) and a 3 N m torque limit (the Dynamixel's stall torque is 3-4 N m). The
valve, a hub with three fat prongs reaching 10 cm from its axis (one red, so the angle
is visible in images), spins freely about the vertical axis with viscous damping 0.05
N m s/rad (ROBEL: 0.1 nominal, 0.005-0.1 randomised) and dry friction 0.005 N m, so it
stops soon after the fingers let go: turning it continuously takes continuous work.
Sweeping the ``top`` joints while pressing down covers about 170 degrees per finger, so
every finger can reach a prong from any valve angle.

Timing. Physics timestep 0.0025 s; one base control step is 40 substeps = 0.1 s (ROBEL's
frame skip; the authors' fork runs 80-step episodes at 0.1 s per step). The env applies
an action repeat of 2 on top, so one agent step is 0.2 s and the horizon is 40 agent
steps (8 s, the same 80 base steps as the authors').

Action. 9 numbers in [-1, 1] (finger 0 top/mid/bot, finger 1 ..., finger 2 ...), mapped
linearly onto each servo's joint range: ``target = low + (a + 1) / 2 * (high - low)``;
out-of-range values are clipped. The servo target is written to ``data.ctrl``, so it is
part of the physics state.

Reward, per base step (the env sums the two steps of an agent step):

    r = 5 * clip(direction * turn_speed, -2 pi, 2 pi) - 0.1 * pose_cost - 0.05 * velocity_cost

- ``turn_speed`` is the valve's mean angular velocity over the step (angle change / 0.1 s,
  rad/s); ``direction = +1`` is counter-clockwise seen from above (positive about +z).
  The weight 5 is the authors' fork's; the clip at one turn per second keeps the reward
  bounded (a good policy turns at 1-3 rad/s).
- ``pose_cost = || q - q_nominal ||_2`` over the 9 joint positions (clipped into their
  ranges), with ``q_nominal = (0, -pi/3, pi/3)`` per finger, ROBEL's reset pose: fingers
  bent in around the valve, fingertips pointing down just above the prongs. At most
  ``POSE_COST_MAX`` (5.87).
- ``velocity_cost = || qdot * [|qdot| >= 0.5] ||_2``, ROBEL's penalty on fast joints, each
  velocity clipped to ROBEL's joint speed range +-2 pi/3 rad/s (at most 2 pi).

The cost weights (0.1, 0.05; ROBEL's own turn task uses 1 and 1) are ours: the authors'
fork states the form, not the weights, and with unit weights holding still (return about
-4) would beat most turning policies and score about 90 on the normalised scale. With
these weights turning dominates: holding the nominal pose earns about 0 per episode, the
uniform random policy about -50 (it barely moves the valve), the scripted gait in
``tests/test_dclaw.py`` (press behind a prong, sweep counter-clockwise, lift, swing back)
about +300 (7 rad in 8 s). Per base step the reward lies in
``BASE_REWARD_RANGE`` = (-32.3, 31.4); per agent step in ``REWARD_RANGE`` = (-64.6, 62.8).
``info`` from :meth:`DClawScrewTask.step` holds the raw terms.

Observation. ``state`` (30 floats, what the SAC collector learns from): joint positions
(9), joint velocities (9), valve angle as (cos, sin), valve angular velocity, and the last
action (9, read back from the servo targets, so it survives a physics-state round trip).
``proprio`` (18): joint positions and velocities, what the real robot's servos report.
The image comes from the fixed camera ``claw_view`` (see the XML): outside the claw,
looking down at the valve at about 45 degrees, all fingertips and prongs in view.

Reset. Fingers at the nominal pose plus uniform noise of +-0.05 rad per joint (clipped
into the ranges), at rest, servo targets at the nominal pose; valve angle uniform in
[-pi, pi), at rest.

Success. Not defined (``success_defined = False``): the task is to keep turning, with no
natural end state; the return is the measure.
"""

from __future__ import annotations

from pathlib import Path

import mujoco
import numpy as np

from lompo_bench.envs.core import Task
from lompo_bench.envs.spec import SPECS
from lompo_bench.errors import UserError

ASSET_PATH = Path(__file__).resolve().parent / "assets" / "dclaw_screw.xml"

SUBSTEPS = 40  # x 0.0025 s = 0.1 s per base control step, as in ROBEL
ACTION_REPEAT = 2
HORIZON = 40  # agent steps: 80 base steps of 0.1 s, the authors' episode length
IMAGE_SIZE = 128  # the paper's
CAMERA = "claw_view"

FINGER_JOINTS = tuple(f"finger{i}_{j}" for i in range(3) for j in ("top", "mid", "bot"))
VALVE_JOINT = "valve"
NOMINAL_POSE = np.array([0.0, -np.pi / 3, np.pi / 3] * 3)
RESET_NOISE = 0.05  # rad, uniform, per finger joint

TURN_DIRECTION = 1.0  # +1: counter-clockwise seen from above
TURN_WEIGHT = 5.0  # the authors' fork
POSE_WEIGHT = 0.1
VELOCITY_WEIGHT = 0.05
MAX_TURN_SPEED = 2 * np.pi  # rad/s, clip of the turning term
JOINT_SPEED_THRESHOLD = 0.5  # rad/s, slower joints are not penalised
JOINT_SPEED_CLIP = 2 * np.pi / 3  # rad/s, ROBEL's joint speed range

STATE_SIZE = 9 + 9 + 2 + 1 + 9
PROPRIO_SIZE = 9 + 9


def _joint_ranges(model: mujoco.MjModel) -> np.ndarray:
    ids = [mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_JOINT, name) for name in FINGER_JOINTS]
    return model.jnt_range[ids].copy()


def _pose_cost_max(ranges: np.ndarray) -> float:
    worst = np.maximum(np.abs(ranges[:, 0] - NOMINAL_POSE), np.abs(ranges[:, 1] - NOMINAL_POSE))
    return float(np.linalg.norm(worst))


_RANGES = _joint_ranges(mujoco.MjModel.from_xml_path(str(ASSET_PATH)))
POSE_COST_MAX = _pose_cost_max(_RANGES)
VELOCITY_COST_MAX = float(np.sqrt(9) * JOINT_SPEED_CLIP)
TURN_REWARD_MAX = TURN_WEIGHT * MAX_TURN_SPEED
BASE_REWARD_RANGE = (
    -(POSE_WEIGHT * POSE_COST_MAX + VELOCITY_WEIGHT * VELOCITY_COST_MAX + TURN_REWARD_MAX),
    TURN_REWARD_MAX,
)
REWARD_RANGE = (ACTION_REPEAT * BASE_REWARD_RANGE[0], ACTION_REPEAT * BASE_REWARD_RANGE[1])


class DClawScrewTask(Task):
    """One base (0.1 s) step of D'Claw Screw; see the module docstring for the details."""

    camera = CAMERA
    has_proprio = True
    success_defined = False

    def __init__(self, direction: float = TURN_DIRECTION):
        if direction not in (1, -1):
            raise UserError(f"valve direction {direction!r} not accepted; accepted: 1 (counter-clockwise), -1 (clockwise)")
        self.direction = float(direction)
        self.model = mujoco.MjModel.from_xml_path(str(ASSET_PATH))
        self.data = mujoco.MjData(self.model)
        model = self.model
        joint_ids = [mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_JOINT, n) for n in FINGER_JOINTS]
        self._finger_qpos = model.jnt_qposadr[joint_ids]
        self._finger_qvel = model.jnt_dofadr[joint_ids]
        valve = mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_JOINT, VALVE_JOINT)
        self._valve_qpos = int(model.jnt_qposadr[valve])
        self._valve_qvel = int(model.jnt_dofadr[valve])
        actuators = [mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_ACTUATOR, n) for n in FINGER_JOINTS]
        if min(actuators) < 0 or actuators != list(range(9)):
            raise RuntimeError(f"{ASSET_PATH.name}: expected one position actuator per finger joint, in order")
        self.ranges = model.jnt_range[joint_ids].copy()
        self._low, self._high = self.ranges[:, 0], self.ranges[:, 1]
        # A valid state before the first reset (the env sizes its spaces from it).
        self._set_pose(NOMINAL_POSE, valve_angle=0.0)

    # -- action mapping -------------------------------------------------------------------

    def action_to_targets(self, action: np.ndarray) -> np.ndarray:
        """[-1, 1]^9 -> servo position targets inside the joint ranges (clipped)."""
        action = np.clip(np.asarray(action, np.float64), -1.0, 1.0)
        return self._low + (action + 1.0) * 0.5 * (self._high - self._low)

    def targets_to_action(self, targets: np.ndarray) -> np.ndarray:
        return 2.0 * (np.asarray(targets, np.float64) - self._low) / (self._high - self._low) - 1.0

    # -- Task protocol ----------------------------------------------------------------------

    def _set_pose(self, finger_qpos: np.ndarray, valve_angle: float) -> None:
        mujoco.mj_resetData(self.model, self.data)
        self.data.qpos[self._finger_qpos] = finger_qpos
        self.data.qpos[self._valve_qpos] = valve_angle
        self.data.ctrl[:] = NOMINAL_POSE
        mujoco.mj_forward(self.model, self.data)

    def reset(self, rng: np.random.Generator) -> None:
        noise = rng.uniform(-RESET_NOISE, RESET_NOISE, size=9)
        pose = np.clip(NOMINAL_POSE + noise, self._low, self._high)
        self._set_pose(pose, valve_angle=float(rng.uniform(-np.pi, np.pi)))

    def step(self, action: np.ndarray) -> tuple[float, dict]:
        action = np.asarray(action, np.float64)
        if action.shape != (9,):
            raise UserError(f"D'Claw action of shape {action.shape} not accepted; accepted: shape (9,), values in [-1, 1]")
        self.data.ctrl[:] = self.action_to_targets(action)
        angle_before = float(self.data.qpos[self._valve_qpos])
        # (the env recomputes body poses for the new state before rendering)
        mujoco.mj_step(self.model, self.data, nstep=SUBSTEPS)
        turn_speed = (float(self.data.qpos[self._valve_qpos]) - angle_before) / (SUBSTEPS * self.model.opt.timestep)
        terms = self.reward_terms(self.data.qpos[self._finger_qpos], self.data.qvel[self._finger_qvel], turn_speed)
        return self.reward(terms), terms

    def reward_terms(self, qpos: np.ndarray, qvel: np.ndarray, turn_speed: float) -> dict[str, float]:
        """The raw reward terms of the module docstring (costs unweighted)."""
        fast = np.abs(qvel) >= JOINT_SPEED_THRESHOLD
        return {
            "turn_speed": float(turn_speed),
            "pose_cost": float(np.linalg.norm(np.clip(qpos, self._low, self._high) - NOMINAL_POSE)),
            "velocity_cost": float(np.linalg.norm(np.clip(qvel, -JOINT_SPEED_CLIP, JOINT_SPEED_CLIP)[fast])),
        }

    def reward(self, terms: dict[str, float]) -> float:
        turn = np.clip(self.direction * terms["turn_speed"], -MAX_TURN_SPEED, MAX_TURN_SPEED)
        return float(
            TURN_WEIGHT * turn - POSE_WEIGHT * terms["pose_cost"] - VELOCITY_WEIGHT * terms["velocity_cost"]
        )

    def valve_angle(self) -> float:
        """Unwrapped valve angle (rad, counter-clockwise positive)."""
        return float(self.data.qpos[self._valve_qpos])

    def last_action(self) -> np.ndarray:
        """The action behind the current servo targets (nominal pose right after reset)."""
        return self.targets_to_action(self.data.ctrl[:9])

    def state(self) -> np.ndarray:
        angle = self.valve_angle()
        return np.concatenate(
            [
                self.data.qpos[self._finger_qpos],
                self.data.qvel[self._finger_qvel],
                [np.cos(angle), np.sin(angle), self.data.qvel[self._valve_qvel]],
                self.last_action(),
            ]
        ).astype(np.float32)

    def proprio(self) -> np.ndarray:
        return np.concatenate([self.data.qpos[self._finger_qpos], self.data.qvel[self._finger_qvel]]).astype(np.float32)


# The registry entry lives in the simulator-free `envs/spec.py` (listing envs must not load
# MuJoCo); tests/test_envs.py checks it against this module's constants.
SPEC = SPECS["dclaw-screw"]
