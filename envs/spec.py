"""What defines each environment, without importing a simulator.

:class:`EnvSpec` holds an env's fixed settings and names the module that builds its task;
``SPECS`` (re-exported by ``lompo_bench.envs``) is the registry. Nothing here imports
mujoco, so listing envs, validating arguments and ``lompo-bench --help`` stay fast and do not
need OpenGL.
"""

from __future__ import annotations

import dataclasses
import importlib

import numpy as np

from lompo_bench.errors import UserError, choice_error

MIN_IMAGE_SIZE = 32
MAX_IMAGE_SIZE = 1024


@dataclasses.dataclass(frozen=True)
class EnvSpec:
    """The fixed settings of one registered environment."""

    name: str
    base: str  # the upstream task it is built on, in words
    action_repeat: int
    horizon: int  # agent steps per episode
    image_size: int  # the paper's image size
    has_proprio: bool
    camera: str  # the view, in words (for `envs list` and dataset attributes)
    reward_range: tuple[float, float]  # per agent step (i.e. summed over the repeat)
    description: str
    task: str = ""  # "module:factory" building the Task, imported lazily
    success_defined: bool = False
    task_kwargs: tuple = ()  # ((key, value), ...) passed to the factory

    def build_task(self):
        """A fresh instance of the env's :class:`~lompo_bench.envs.core.Task`."""
        module_name, attr = self.task.split(":")
        factory = getattr(importlib.import_module(module_name), attr)
        return factory(**dict(self.task_kwargs))


def check_image_size(image_size) -> int:
    """An int in [MIN_IMAGE_SIZE, MAX_IMAGE_SIZE], else a one-line UserError."""
    if isinstance(image_size, bool) or not isinstance(image_size, (int, np.integer)):
        raise UserError(f"image size must be an integer from {MIN_IMAGE_SIZE} to {MAX_IMAGE_SIZE}, got {image_size!r}")
    if not MIN_IMAGE_SIZE <= int(image_size) <= MAX_IMAGE_SIZE:
        raise UserError(f"image size {image_size} out of range; accepted: {MIN_IMAGE_SIZE} to {MAX_IMAGE_SIZE} pixels")
    return int(image_size)


SPECS: dict[str, EnvSpec] = {
    spec.name: spec
    for spec in (
        EnvSpec(
            name="walker",
            base="dm_control walker-walk",
            action_repeat=2,
            horizon=500,
            image_size=64,
            has_proprio=False,
            camera="dm_control 'side' camera (tracks the centre of mass)",
            reward_range=(0.0, 2.0),
            description="Planar biped; walk forward at 1 m/s. Images only.",
            task="lompo_bench.envs.walker:WalkerWalkTask",
            success_defined=False,
        ),
        # Literal, so listing envs does not load MuJoCo; tests/test_envs.py checks these
        # numbers against the constants of envs/dclaw.py.
        EnvSpec(
            name="dclaw-screw",
            base="D'Claw screw (ROBEL, rebuilt on mujoco): turn the valve continuously",
            action_repeat=2,
            horizon=40,
            image_size=128,
            has_proprio=True,
            camera="claw_view: fixed, outside the claw, looking down at the valve at about 45 degrees",
            reward_range=(-64.63341239411523, 62.83185307179586),
            description=(
                "Three 3-DoF fingers turn a three-pronged valve counter-clockwise as fast as possible; "
                "reward 5 x valve speed minus pose and joint-speed costs; 9-D servo position targets; "
                "40 agent steps of 0.2 s"
            ),
            task="lompo_bench.envs.dclaw:DClawScrewTask",
            success_defined=False,
        ),
        EnvSpec(
            name="adroit-pen",
            base="gymnasium-robotics AdroitHandPen-v1",
            action_repeat=4,
            horizon=50,
            image_size=128,
            has_proprio=True,
            camera="free camera in front of the fingertips, 30 degrees above the palm",
            reward_range=(-32.0, 244.0),
            description="24-DoF hand; twirl the pen to a fixed target orientation.",
            task="lompo_bench.envs.adroit:AdroitPenTask",
            success_defined=True,
        ),
        EnvSpec(
            name="sawyer-door",
            base="Meta-World door-open-v3",
            action_repeat=4,
            horizon=125,
            image_size=128,
            has_proprio=False,
            camera="free camera, front-left of the arm and door",
            reward_range=(0.0, 4.0),
            description="Sawyer arm; open the door. Reward 1 per base step on success, else 0.",
            task="lompo_bench.envs.sawyer:SawyerDoorOpenTask",
            success_defined=True,
        ),
    )
}
ENV_NAMES = tuple(SPECS)


def get_spec(name: str) -> EnvSpec:
    if name not in SPECS:
        raise choice_error("env", name, ENV_NAMES)
    return SPECS[name]
