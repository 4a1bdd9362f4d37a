"""Headless OpenGL backend selection for MuJoCo rendering.

MuJoCo (and dm_control) read ``MUJOCO_GL`` once, when they are first imported, so the
backend must be decided before that: :func:`choose_gl` is called at the top of
``lompo_bench.envs.core``, which every task module imports before mujoco.

- A ``MUJOCO_GL`` the user set is respected as is (and a ``PYOPENGL_PLATFORM`` of egl or
  osmesa limits the choice to that backend, since mujoco requires the two to agree).
- Otherwise ``egl`` is tried first (Mesa's llvmpipe on a CPU-only box, the GPU where there is
  one), then ``osmesa``. Each candidate is probed by a tiny offscreen render in a subprocess
  (about 0.5 s), because a backend that fails to load makes ``import mujoco`` itself fail.
  The winner is written to ``os.environ["MUJOCO_GL"]``, so child processes skip the probe.
  If mujoco was imported before lompo_bench.envs.core (so it chose GLFW, which needs a display),
  the winner is swapped into the loaded ``mujoco.gl_context``.
- If neither works, ``MUJOCO_GL`` is set to ``disabled`` so that physics (and
  ``make(..., render=False)``) still works, and the first attempt to render raises a
  one-line :class:`~lompo_bench.errors.UserError` naming the Debian packages to install.
"""

from __future__ import annotations

import os
import subprocess
import sys

from lompo_bench.errors import UserError

CANDIDATES = ("egl", "osmesa")
DISABLED = ("off", "disable", "disabled", "false", "0")
PACKAGES = {"egl": "libegl1 libegl-mesa0 libgl1-mesa-dri", "osmesa": "libosmesa6"}

_PROBE = """
import mujoco
model = mujoco.MjModel.from_xml_string(
    '<mujoco><worldbody><light pos="0 0 3"/><geom size="0.5"/></worldbody></mujoco>')
data = mujoco.MjData(model)
mujoco.mj_forward(model, data)
renderer = mujoco.Renderer(model, 32, 32)
renderer.update_scene(data)
assert renderer.render().max() > 0, "blank frame"
renderer.close()
"""

_probe_failures: dict[str, str] = {}


def probe(backend: str, timeout: float = 60.0) -> tuple[bool, str]:
    """Whether a tiny MuJoCo offscreen render works with ``MUJOCO_GL=backend``, and why not."""
    env = dict(os.environ, MUJOCO_GL=backend, PYOPENGL_PLATFORM=backend)
    try:
        proc = subprocess.run(
            [sys.executable, "-c", _PROBE], env=env, capture_output=True, text=True, timeout=timeout
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return False, str(exc)
    lines = (proc.stderr or "").strip().splitlines()
    return proc.returncode == 0, (lines[-1] if lines else "")


def choose_gl() -> str:
    """Decide ``MUJOCO_GL`` (see the module docstring) and return it; never raises."""
    current = os.environ.get("MUJOCO_GL")
    if current is not None:
        return current
    pyopengl = os.environ.get("PYOPENGL_PLATFORM", "").lower()
    candidates = (pyopengl,) if pyopengl in CANDIDATES else CANDIDATES  # mujoco insists they agree
    late = "mujoco" in sys.modules  # imported before us: it picked GLFW, which needs a display
    for backend in candidates:
        ok, why = probe(backend)
        if ok:
            os.environ["MUJOCO_GL"] = backend
            if late:
                _switch_loaded_mujoco(backend)
            return backend
        _probe_failures[backend] = why
    os.environ["MUJOCO_GL"] = "disabled"
    return "disabled"


def _switch_loaded_mujoco(backend: str) -> None:
    """Point an already imported mujoco at ``backend``: ``mujoco.Renderer`` looks the context
    class up in ``mujoco.gl_context`` each time it is created."""
    import importlib

    import mujoco.gl_context

    module = importlib.import_module(f"mujoco.{backend}")
    mujoco.gl_context.GLContext = module.GLContext


def no_gl_message() -> str:
    if _probe_failures:
        reasons = "; ".join(f"{b}: {why}" if why else b for b, why in _probe_failures.items())
        what = f"no headless OpenGL backend works (tried MUJOCO_GL={', '.join(_probe_failures)}: {reasons})"
    else:
        what = f"rendering is off (MUJOCO_GL={os.environ.get('MUJOCO_GL', '')})"
    return (
        f"{what}; install the Debian packages {PACKAGES['egl']} (egl) or {PACKAGES['osmesa']} (osmesa), "
        "or set MUJOCO_GL yourself"
    )


def require_gl() -> None:
    """Raise the one-line UserError when rendering is impossible in this process."""
    if os.environ.get("MUJOCO_GL", "").lower().strip() in DISABLED:
        raise UserError(no_gl_message())
