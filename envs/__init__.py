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

Importing this package is cheap: ``SPECS`` and friends need no simulator. The simulator
side (``core``, then each task's module) is imported on first use; ``core`` chooses the
headless OpenGL backend (``lompo_bench.rendering.choose_gl``) before it imports mujoco.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from lompo_bench.errors import UserError

from .spec import ENV_NAMES, SPECS, EnvSpec, check_image_size, get_spec

if TYPE_CHECKING:
    from .core import ImageEnv, Task

__all__ = ["ENV_NAMES", "SPECS", "EnvSpec", "ImageEnv", "Task", "get_spec", "make", "render_states", "env_attrs"]


def __getattr__(name):  # PEP 562: the simulator side loads on first use
    if name in ("ImageEnv", "Task", "PHYSICS_SPEC"):
        from . import core

        return getattr(core, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


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
    from lompo_bench import rendering

    from .core import ImageEnv

    if render:
        rendering.require_gl()
    task = spec.build_task()
    return ImageEnv(task, spec, size, render=render, seed=seed, render_mode=render_mode, fast_scene=fast_scene)


def _register_with_gymnasium() -> None:
    """``gymnasium.make("lompo_bench/walker-v0", image_size=64)`` builds the same env as :func:`make`
    (Minari's ``recover_environment()`` and other gymnasium tools find the envs this way)."""
    import gymnasium

    for env_name in ENV_NAMES:
        env_id = f"lompo_bench/{env_name}-v0"
        if env_id not in gymnasium.registry:
            gymnasium.register(env_id, entry_point="lompo_bench.envs:make", kwargs={"name": env_name},
                               disable_env_checker=True)


_register_with_gymnasium()

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


def _camera_view(task) -> dict:
    """The exact view, JSON-ready: a model camera's name/id, or the free camera's pose."""
    if task.free_camera is not None:
        return {"free": {k: (list(v) if isinstance(v, (tuple, list)) else float(v)) for k, v in task.free_camera.items()}}
    return {"model_camera": task.camera}


def env_attrs(name: str, image_size: int | None = None) -> dict:
    """The ``env`` block of a dataset's attributes: everything needed to rebuild the env."""
    spec = get_spec(name)
    size = spec.image_size if image_size is None else check_image_size(image_size)
    import mujoco

    from .core import PHYSICS_SPEC

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
            "camera_view": _camera_view(env.task),
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
