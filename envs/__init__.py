"""The four image environments of the LOMPO paper (Appendix A).

| name          | base                                   | repeat | horizon | obs                  | px  |
| ------------- | -------------------------------------- | ------ | ------- | -------------------- | --- |
| `walker`      | dm_control walker-walk                 | 2      | 500     | image                | 64  |
| `dclaw-screw` | D'Claw screw (ROBEL kinematics, own MJCF) | 2      | 40      | image + proprio      | 128 |
| `adroit-pen`  | gymnasium-robotics Adroit pen, fixed goal | 4   | 50      | image + proprio      | 128 |
| `sawyer-door` | Meta-World door-open-v3, 1.0 * success | 4      | 125     | image                | 128 |

``make(name, image_size=None, seed=None, render=True)`` returns an :class:`~.core.ImageEnv`
(Gymnasium API; behaviour documented in ``core``; each task's reward, state and camera in
its module). ``image_size=None`` is the paper's size; any size from 32 to 1024 works.
``render=False`` drops the ``image`` key for fast state-only collection; frames are then
rendered later from ``info["physics"]`` with :func:`render_states`.

The headless OpenGL backend is chosen (``lompo_bench.rendering.choose_gl``) before anything
imports mujoco; task modules are imported only when their env is made.
"""

from __future__ import annotations

from lompo_bench import rendering

rendering.choose_gl()  # must precede any mujoco / dm_control import

import mujoco  # noqa: E402
import numpy as np  # noqa: E402

from lompo_bench.errors import UserError, choice_error  # noqa: E402

from .core import PHYSICS_SPEC, EnvSpec, ImageEnv, Task, check_image_size  # noqa: E402

__all__ = ["ENV_NAMES", "SPECS", "EnvSpec", "ImageEnv", "Task", "make", "render_states", "env_attrs"]

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
        # Mirrors `dclaw.SPEC` (kept literal so listing envs does not import the task;
        # tests/test_envs.py checks the two agree).
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


def make(
    name: str,
    *,
    image_size: int | None = None,
    seed: int | None = None,
    render: bool = True,
    render_mode: str | None = None,
    fast_scene: bool = True,
) -> ImageEnv:
    """Build env ``name`` (see the table above). ``seed`` seeds the first ``reset()``.

    ``fast_scene=False`` keeps MuJoCo's default scene settings (shadows, multisampling,
    reflections); it exists for the rendering benchmark.
    """
    spec = get_spec(name)
    size = spec.image_size if image_size is None else check_image_size(image_size)
    if render:
        rendering.require_gl()
    task = spec.build_task()
    return ImageEnv(task, spec, size, render=render, seed=seed, render_mode=render_mode, fast_scene=fast_scene)


_renderers: dict[tuple[str, int], ImageEnv] = {}


def render_states(name: str, physics: np.ndarray, image_size: int | None = None) -> np.ndarray:
    """Frames of stored physics states: ``(N, Q) float64 -> (N, H, W, 3) uint8``.

    One hidden env per (name, size) is kept for re-use, so batches are cheap after the first.
    """
    spec = get_spec(name)
    size = spec.image_size if image_size is None else check_image_size(image_size)
    physics = np.asarray(physics, np.float64)
    if physics.ndim == 1:
        physics = physics[None]
    key = (name, size)
    if key not in _renderers:
        env = make(name, image_size=size, render=True)
        env.reset(seed=0)
        _renderers[key] = env
    env = _renderers[key]
    if physics.ndim != 2 or physics.shape[1] != env.physics_size:
        raise UserError(
            f"physics states of shape {physics.shape} do not fit {name}; accepted: (N, {env.physics_size}) float64"
        )
    out = np.empty((len(physics), size, size, 3), np.uint8)
    for i, state in enumerate(physics):
        out[i] = env.render_physics(state)
    return out


def env_attrs(name: str, image_size: int | None = None) -> dict:
    """The ``env`` block of a dataset's attributes: everything needed to rebuild the env."""
    spec = get_spec(name)
    size = spec.image_size if image_size is None else check_image_size(image_size)
    env = make(name, image_size=size, render=False)
    try:
        obs_space = env.observation_space
        attrs = {
            "name": spec.name,
            "base": spec.base,
            "action_repeat": spec.action_repeat,
            "horizon": spec.horizon,
            "image_size": size,
            "paper_image_size": spec.image_size,
            "camera": spec.camera,
            "has_proprio": spec.has_proprio,
            "success_defined": spec.success_defined,
            "obs_keys": ["image"] + [k for k in obs_space.spaces],
            "action_size": int(env.action_space.shape[0]),
            "state_size": int(obs_space["state"].shape[0]),
            "proprio_size": int(obs_space["proprio"].shape[0]) if spec.has_proprio else 0,
            "physics_size": int(env.physics_size),
            "physics_spec": f"mj_getState mjSTATE_INTEGRATION ({int(PHYSICS_SPEC)})",
            "mujoco_version": mujoco.__version__,
            "reward_range": list(spec.reward_range),
            "description": spec.description,
        }
    finally:
        env.close()
    return attrs
