"""The task protocol and the one Gymnasium env every lompo-bench environment is.

A :class:`Task` is one base (un-repeated) MuJoCo task: it owns the raw ``mujoco.MjModel`` /
``mujoco.MjData`` (dm_control tasks hand out ``physics.model.ptr`` / ``physics.data.ptr``),
resets itself, advances one base control step and reports reward, ground-truth state and
proprioception. :class:`ImageEnv` wraps any task the same way:

- **Action repeat.** One agent step is ``spec.action_repeat`` base steps with the same action.
  The reward is the *sum* over the repeat. ``info["success"]`` (where the task defines
  success) is True when *any* base step of the repeat succeeded, so a success reached and
  lost inside one agent step still counts, consistent with summing a success reward.
  ``info["shaped_reward"]`` (Sawyer) is summed like the reward.
- **Horizon.** Episodes last exactly ``spec.horizon`` agent steps and then end with
  ``truncated=True``; ``terminated`` is always False (none of the four tasks has a terminal
  state).
- **Observation.** ``Dict(image uint8 (H, W, 3), [proprio float32 (P,)], state float32 (S,))``.
  With ``render=False`` the ``image`` key is absent and nothing is rendered.
- **Physics state.** ``info["physics"]`` is ``mj_getState(model, data, mjSTATE_INTEGRATION)``
  as float64 (time, qpos, qvel, act, warm start, ctrl, applied forces, mocap poses, ...), so
  :meth:`ImageEnv.render_physics` re-renders exactly the live frame of that state, Meta-World's
  mocap-driven arm included.
- **Consistency.** After the repeat, position-dependent quantities are recomputed
  (``mj_fwdPosition``; plain ``mj_step`` leaves them one substep behind), so the image, the
  state vector and a re-render from ``info["physics"]`` all show the same instant. The
  dynamics are unaffected (no state variable changes).
- **Rendering.** One ``mujoco.Renderer`` per env, created lazily. Before it is created the
  model's scene settings are made fast (no shadow map, no multisampling, no reflections, no
  skybox; see :func:`make_scene_fast`): on a software renderer this is what makes image
  collection affordable. The camera is the task's named/id camera, or a free camera given as
  ``dict(lookat, distance, azimuth, elevation)``.
- **Processes.** Rendering in a process forked from one that has already rendered raises
  a UserError (Mesa's EGL would hang there); use ``spawn``/``forkserver`` workers, or fork
  before rendering. Physics-only use (``render=False``) is unaffected.
- **Seeding.** ``reset(seed=s)`` seeds the task's initial-state distribution and the action
  space; ``make(..., seed=s)`` makes the *first* ``reset()`` use ``s``.
"""

from __future__ import annotations

import abc
import atexit
import os
import weakref
from typing import Any

from lompo_bench import rendering

rendering.choose_gl()  # before the first import of mujoco anywhere (no-op once decided)

import gymnasium as gym  # noqa: E402
import mujoco  # noqa: E402
import numpy as np  # noqa: E402

from lompo_bench.errors import UserError  # noqa: E402

from .spec import MAX_IMAGE_SIZE, MIN_IMAGE_SIZE, EnvSpec, check_image_size  # noqa: E402,F401

PHYSICS_SPEC = mujoco.mjtState.mjSTATE_INTEGRATION


_live_envs: "weakref.WeakSet[ImageEnv]" = weakref.WeakSet()
_exit_hook_registered = False
# GL state does not survive fork(): a child of a process that has rendered hangs when it makes
# a new context (Mesa's EGL display is initialised, its worker threads are gone). The child
# gets a UserError instead, and inherited renderers are parked here so that their __del__
# never runs in the child.
_gl_owner_pid = 0
_inherited_renderers: list = []


def _close_renderers() -> None:
    # Free GL contexts before mujoco's exit hook tears the EGL display down; otherwise every
    # live renderer prints an EGLError from its __del__ at interpreter exit. mujoco registers
    # its hook when the first GL context is made, so ours is registered just after that
    # (atexit runs hooks in reverse order of registration).
    for env in list(_live_envs):
        env._close_renderer()


class Task(abc.ABC):
    """One base (un-repeated) MuJoCo task. The env wrapper adds action repeat, horizon,
    rendering and physics state.

    Subclasses set ``model``, ``data``, ``camera`` (name or id; or ``free_camera``),
    ``has_proprio`` and ``success_defined``, and implement the abstract methods. Once
    constructed, ``state()`` and ``proprio()`` must be callable (the env sizes its spaces
    from them before the first reset).
    """

    model: mujoco.MjModel
    data: mujoco.MjData
    camera: str | int = -1
    # Optional: a free camera ``dict(lookat=(x, y, z), distance=d, azimuth=deg, elevation=deg)``;
    # when set it is used instead of ``camera``.
    free_camera: dict | None = None
    has_proprio: bool = False
    success_defined: bool = False
    # Optional: True when step() already leaves position-dependent quantities (body poses,
    # cameras) computed for the new state (mj_forward / dm_control's step1), so the env can
    # skip its own mj_fwdPosition.
    positions_current_after_step: bool = False

    @property
    def action_size(self) -> int:
        """Dimension of the [-1, 1] action the task accepts (default: one per actuator)."""
        return int(self.model.nu)

    @abc.abstractmethod
    def reset(self, rng: np.random.Generator) -> None:
        """Put the simulator in a fresh initial state drawn with ``rng`` (forwarded)."""

    @abc.abstractmethod
    def step(self, action: np.ndarray) -> tuple[float, dict]:
        """One base control step (all its substeps). Returns (reward, info); info may hold
        ``success`` (bool) and ``shaped_reward`` (float)."""

    @abc.abstractmethod
    def state(self) -> np.ndarray:
        """float32 ground-truth state vector (what the SAC collector learns from)."""

    @abc.abstractmethod
    def proprio(self) -> np.ndarray | None:
        """float32 robot proprioception, or None when the task has none."""

    def after_set_state(self) -> None:
        """Hook called after ``mj_setState`` + ``mj_forward`` (e.g. to refresh caches)."""

    def close(self) -> None:
        """Release anything the task holds (optional)."""


def make_scene_fast(model: mujoco.MjModel, image_size: int) -> None:
    """Cheap scene settings, applied to the model before its first render.

    Default settings render shadow maps (up to 4096^2) and multisample (up to 4x); on a
    software GL renderer that dominates the frame time. Reflections and the skybox are
    turned off per scene (see :func:`make_scene_flags_fast`). The offscreen buffer is grown
    to hold the requested image size.
    """
    model.vis.quality.shadowsize = 0
    model.vis.quality.offsamples = 0
    model.light_castshadow[:] = 0
    model.vis.global_.offwidth = max(int(model.vis.global_.offwidth), image_size)
    model.vis.global_.offheight = max(int(model.vis.global_.offheight), image_size)


def make_scene_flags_fast(scene: mujoco.MjvScene) -> None:
    scene.flags[mujoco.mjtRndFlag.mjRND_SHADOW] = 0
    scene.flags[mujoco.mjtRndFlag.mjRND_REFLECTION] = 0
    scene.flags[mujoco.mjtRndFlag.mjRND_SKYBOX] = 0


def make_camera(model: mujoco.MjModel, camera: str | int, free_camera: dict | None):
    """The ``camera`` argument for ``Renderer.update_scene``: an id, or a free MjvCamera."""
    if free_camera is not None:
        cam = mujoco.MjvCamera()
        mujoco.mjv_defaultFreeCamera(model, cam)
        cam.type = mujoco.mjtCamera.mjCAMERA_FREE
        cam.lookat[:] = free_camera["lookat"]
        cam.distance = free_camera["distance"]
        cam.azimuth = free_camera["azimuth"]
        cam.elevation = free_camera["elevation"]
        return cam
    if isinstance(camera, str):
        cam_id = mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_CAMERA, camera)
        if cam_id < 0:
            raise ValueError(f"model has no camera named {camera!r}")
        return cam_id
    return int(camera)


class ImageEnv(gym.Env):
    """A :class:`Task` as a Gymnasium env with action repeat, a fixed horizon, image
    observations and the physics state in ``info`` (see the module docstring)."""

    metadata = {"render_modes": ["rgb_array"], "render_fps": 30}

    def __init__(
        self,
        task: Task,
        spec: EnvSpec,
        image_size: int,
        render: bool = True,
        seed: int | None = None,
        render_mode: str | None = None,
        fast_scene: bool = True,
    ):
        self.task = task
        self.env_spec = spec
        self.image_size = check_image_size(image_size)
        self.render_images = bool(render)
        self.render_mode = render_mode
        self.fast_scene = bool(fast_scene)
        self._initial_seed = seed
        self._renderer: mujoco.Renderer | None = None
        self._renderer_pid = 0
        self._camera = None
        self._steps = 0
        self._needs_reset = True

        spaces: dict[str, gym.Space] = {}
        if self.render_images:
            spaces["image"] = gym.spaces.Box(0, 255, (self.image_size, self.image_size, 3), np.uint8)
        probe_proprio = task.proprio()
        if task.has_proprio:
            spaces["proprio"] = gym.spaces.Box(-np.inf, np.inf, probe_proprio.shape, np.float32)
        spaces["state"] = gym.spaces.Box(-np.inf, np.inf, task.state().shape, np.float32)
        self.observation_space = gym.spaces.Dict(spaces)
        self.action_space = gym.spaces.Box(-1.0, 1.0, (task.action_size,), np.float32)
        self.physics_size = int(mujoco.mj_stateSize(task.model, PHYSICS_SPEC))

    # -- rendering ---------------------------------------------------------------------

    def _ensure_renderer(self) -> mujoco.Renderer:
        global _gl_owner_pid, _exit_hook_registered
        if self._renderer is not None and self._renderer_pid != os.getpid():
            _inherited_renderers.append(self._renderer)
            self._renderer = None
        if self._renderer is None:
            rendering.require_gl()
            if _gl_owner_pid and _gl_owner_pid != os.getpid():
                raise UserError(
                    "cannot render in a process forked from one that has rendered (OpenGL state does not "
                    "survive fork); accepted: start workers with the 'spawn' or 'forkserver' method, or fork "
                    "before the parent renders"
                )
            model = self.task.model
            if self.fast_scene:
                make_scene_fast(model, self.image_size)
            else:
                model.vis.global_.offwidth = max(int(model.vis.global_.offwidth), self.image_size)
                model.vis.global_.offheight = max(int(model.vis.global_.offheight), self.image_size)
            self._renderer = mujoco.Renderer(model, self.image_size, self.image_size)
            self._renderer_pid = _gl_owner_pid = os.getpid()
            _live_envs.add(self)
            if not _exit_hook_registered:
                atexit.register(_close_renderers)
                _exit_hook_registered = True
            if self.fast_scene:
                make_scene_flags_fast(self._renderer.scene)
            self._camera = make_camera(model, self.task.camera, self.task.free_camera)
        return self._renderer

    def _render_live(self) -> np.ndarray:
        renderer = self._ensure_renderer()
        renderer.update_scene(self.task.data, self._camera)
        return renderer.render()

    def render(self):
        """``render_mode="rgb_array"``: the current frame (rendered even with render=False)."""
        if self.render_mode != "rgb_array":
            return None
        return self._render_live()

    def get_physics(self) -> np.ndarray:
        out = np.empty(self.physics_size, np.float64)
        mujoco.mj_getState(self.task.model, self.task.data, out, PHYSICS_SPEC)
        return out

    def set_physics(self, physics: np.ndarray) -> None:
        physics = np.asarray(physics, np.float64)
        if physics.shape != (self.physics_size,):
            raise UserError(
                f"physics state of shape {physics.shape} does not fit {self.env_spec.name}; "
                f"accepted: ({self.physics_size},) float64 from info['physics']"
            )
        self._load_physics(physics)

    def _load_physics(self, physics: np.ndarray) -> None:
        model, data = self.task.model, self.task.data
        mujoco.mj_setState(model, data, physics, PHYSICS_SPEC)
        mujoco.mj_forward(model, data)
        # mj_forward overwrites the solver warm start (part of the state) with the fresh
        # acceleration; setting the state again keeps it exact. Kinematics do not depend on it.
        mujoco.mj_setState(model, data, physics, PHYSICS_SPEC)
        self.task.after_set_state()

    def render_physics(self, physics: np.ndarray) -> np.ndarray:
        """The frame of a stored physics state; the live episode is left untouched."""
        live = self.get_physics()
        try:
            self.set_physics(physics)
            return self._render_live()
        finally:
            self._load_physics(live)

    # -- Gymnasium API -------------------------------------------------------------------

    def _observation(self) -> dict[str, np.ndarray]:
        obs: dict[str, np.ndarray] = {}
        if self.render_images:
            obs["image"] = self._render_live()
        if self.task.has_proprio:
            obs["proprio"] = np.asarray(self.task.proprio(), np.float32)
        obs["state"] = np.asarray(self.task.state(), np.float32)
        return obs

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        if seed is None and self._initial_seed is not None:
            seed, self._initial_seed = self._initial_seed, None
        super().reset(seed=seed)
        if seed is not None:
            self.action_space.seed(seed)
        self.task.reset(self.np_random)
        self._steps = 0
        self._needs_reset = False
        info: dict[str, Any] = {"physics": self.get_physics()}
        if self.task.success_defined:
            info["success"] = False
        return self._observation(), info

    def step(self, action):
        if self._needs_reset:
            raise RuntimeError("call reset() before step() (the episode has ended or not begun)")
        action = np.clip(np.asarray(action, np.float32).reshape(self.action_space.shape), -1.0, 1.0)
        total = 0.0
        success = False
        shaped = None
        for _ in range(self.env_spec.action_repeat):
            reward, task_info = self.task.step(action)
            total += float(reward)
            success = success or bool(task_info.get("success", False))
            if "shaped_reward" in task_info:
                shaped = (shaped or 0.0) + float(task_info["shaped_reward"])
        # mj_step leaves positions-derived quantities (body poses, cameras, sites) at the
        # state *before* its last integration; recompute them for the new state so the frame,
        # the observation and a later re-render from info["physics"] all agree. Touches no
        # state variable, so the dynamics are unchanged.
        if not self.task.positions_current_after_step:
            mujoco.mj_fwdPosition(self.task.model, self.task.data)
        self._steps += 1
        truncated = self._steps >= self.env_spec.horizon
        self._needs_reset = truncated
        info: dict[str, Any] = {"physics": self.get_physics()}
        if self.task.success_defined:
            info["success"] = success
        if shaped is not None:
            info["shaped_reward"] = shaped
        return self._observation(), total, False, truncated, info

    def _close_renderer(self) -> None:
        if self._renderer is None:
            return
        if self._renderer_pid == os.getpid():
            self._renderer.close()
        else:
            _inherited_renderers.append(self._renderer)
        self._renderer = None

    def close(self):
        self._close_renderer()
        self.task.close()
