"""The four environments, exercised for real (MuJoCo physics, headless rendering, the CLI).

Images are small (32-64 px) and episodes short to keep this file within its time share.
"""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys

import numpy as np
import pytest
from click.testing import CliRunner
from gymnasium.utils.env_checker import check_env

from lompo_bench import rendering
from lompo_bench.cli import cli
from lompo_bench.envs import ENV_NAMES, SPECS, env_attrs, make, render_states
from lompo_bench.errors import UserError

# Simulated seconds per agent step: the base task's control step x the action repeat.
AGENT_STEP_SECONDS = {"walker": 0.025 * 2, "dclaw-screw": 0.1 * 2, "adroit-pen": 0.01 * 4, "sawyer-door": 0.0125 * 4}


def random_actions(env, n, seed=0):
    env.action_space.seed(seed)
    return [env.action_space.sample() for _ in range(n)]


@pytest.mark.parametrize("name", ENV_NAMES)
def test_gymnasium_check_env(name):
    env = make(name, image_size=32)
    check_env(env, skip_render_check=True)
    obs, info = env.reset(seed=1)
    assert set(obs) == ({"image", "proprio", "state"} if SPECS[name].has_proprio else {"image", "state"})
    assert obs["image"].shape == (32, 32, 3) and obs["image"].dtype == np.uint8
    assert info["physics"].dtype == np.float64 and info["physics"].shape == (env.physics_size,)
    assert ("success" in info) == SPECS[name].success_defined
    env.close()


@pytest.mark.parametrize("name", ENV_NAMES)
def test_seed_reproduces_first_frames_and_frames_change(name):
    def first_frames(seed):
        env = make(name, image_size=48, seed=seed)
        obs, _ = env.reset()
        frames = [obs["image"]]
        for action in random_actions(env, 4, seed=seed):
            frames.append(env.step(action)[0]["image"])
        env.close()
        return np.stack(frames)

    a, b = first_frames(7), first_frames(7)
    np.testing.assert_array_equal(a, b)
    # The robot moves under random actions, and the camera sees it.
    assert np.abs(a[-1].astype(int) - a[0].astype(int)).sum() > 0.01 * a[0].size
    if name in ("walker", "dclaw-screw"):  # random initial states (Adroit and Sawyer start fixed)
        c = first_frames(8)
        assert not np.array_equal(a[0], c[0])


@pytest.mark.parametrize("name", ENV_NAMES)
def test_action_repeat_in_simulator_time(name):
    env = make(name, render=False, seed=0)
    _, info = env.reset()
    t0 = info["physics"][0]  # mjSTATE_INTEGRATION starts with the simulation time
    times = []
    for action in random_actions(env, 3):
        times.append(env.step(action)[4]["physics"][0])
    np.testing.assert_allclose(np.diff([t0] + times), AGENT_STEP_SECONDS[name], rtol=1e-6)
    env.close()


@pytest.mark.parametrize("name", ENV_NAMES)
def test_horizon_truncates_and_rewards_in_documented_range(name):
    spec = SPECS[name]
    env = make(name, render=False, seed=3)
    assert "image" not in env.observation_space.spaces
    obs, _ = env.reset()
    assert "image" not in obs
    rewards = []
    for t, action in enumerate(random_actions(env, spec.horizon), start=1):
        obs, reward, terminated, truncated, info = env.step(action)
        rewards.append(reward)
        assert not terminated
        assert truncated == (t == spec.horizon)
        assert env.observation_space.contains(obs)
    low, high = spec.reward_range
    assert low <= min(rewards) and max(rewards) <= high
    with pytest.raises(RuntimeError):
        env.step(env.action_space.sample())
    env.close()


def test_sawyer_sparse_reward_counts_successful_base_steps():
    from metaworld.policies.sawyer_door_open_v3_policy import SawyerDoorOpenV3Policy

    policy = SawyerDoorOpenV3Policy()
    env = make("sawyer-door", render=False, seed=0)
    obs, _ = env.reset()
    rewards, successes, shaped = [], [], []
    for _ in range(40):
        obs, reward, _, _, info = env.step(policy.get_action(obs["state"].astype(np.float64)))
        rewards.append(reward)
        successes.append(info["success"])
        shaped.append(info["shaped_reward"])
    rewards = np.array(rewards)
    assert set(np.unique(rewards)) <= {0.0, 1.0, 2.0, 3.0, 4.0}
    np.testing.assert_array_equal(rewards > 0, successes)
    assert rewards.max() > 0, "Meta-World's scripted policy opens the door within 40 agent steps"
    assert rewards[0] == 0 and shaped[0] > 0  # dense shaping before the sparse reward appears
    # The door is fixed: a new episode starts from the identical physics state.
    first = env.reset()[1]["physics"]
    np.testing.assert_array_equal(first, env.reset(seed=99)[1]["physics"])
    env.close()


def test_adroit_goal_is_fixed_and_matches_upstream_seed_0():
    import contextlib
    import io

    with contextlib.redirect_stderr(io.StringIO()):
        from gymnasium_robotics.envs.adroit_hand.adroit_pen import AdroitHandPenEnv

    upstream = AdroitHandPenEnv()
    upstream.reset(seed=0)
    expected = upstream.model.body_quat[upstream.target_obj_body_id].copy()
    env = make("adroit-pen", render=False)
    task = env.unwrapped.task
    for seed in (0, 1, 2):
        env.reset(seed=seed)
        np.testing.assert_allclose(task.model.body_quat[task._env.target_obj_body_id], expected)
    env.close()


@pytest.mark.parametrize("name", ENV_NAMES)
def test_rerender_from_stored_physics_equals_live_frame(name):
    env = make(name, image_size=40, seed=2)
    obs, info = env.reset()
    stored_images, stored_physics = [obs["image"]], [info["physics"]]
    for action in random_actions(env, 6, seed=2):
        obs, _, _, _, info = env.step(action)
        stored_images.append(obs["image"])
        stored_physics.append(info["physics"])
    live_physics = env.unwrapped.get_physics()
    # Same env, mid-episode: the frame comes back and the live episode is untouched.
    np.testing.assert_array_equal(env.unwrapped.render_physics(stored_physics[3]), stored_images[3])
    np.testing.assert_array_equal(env.unwrapped.get_physics(), live_physics)
    # A different env instance (what dataset tools do), in one batch.
    batch = render_states(name, np.stack(stored_physics), image_size=40)
    np.testing.assert_array_equal(batch, np.stack(stored_images))
    env.close()


def _render_in_child(env, physics, queue):
    try:
        env.unwrapped.render_physics(physics)
        queue.put("rendered")
    except UserError as exc:
        queue.put(f"UserError: {exc}")


def test_forked_child_of_a_rendering_process_gets_a_user_error_not_a_hang():
    # Collectors and data loaders may fork; a new GL context in such a child hangs in Mesa.
    import multiprocessing

    env = make("walker", image_size=32, seed=0)
    obs, info = env.reset()
    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    child = context.Process(target=_render_in_child, args=(env, info["physics"], queue))
    child.start()
    message = queue.get(timeout=60)
    child.join(timeout=60)
    assert child.exitcode == 0
    assert message.startswith("UserError: cannot render in a process forked") and "spawn" in message
    # The parent renders on, unaffected.
    np.testing.assert_array_equal(env.unwrapped.render_physics(info["physics"]), obs["image"])
    env.close()


def test_physics_of_the_wrong_shape_is_a_user_error():
    env = make("walker", image_size=32, seed=0)
    _, info = env.reset()
    with pytest.raises(UserError, match=r"accepted: \(N, \d+\) float64"):
        render_states("walker", np.zeros((2, info["physics"].size + 1)), image_size=32)
    with pytest.raises(UserError, match="from info\\['physics'\\]"):
        env.unwrapped.render_physics(info["physics"][:-1])
    env.close()


def test_fast_scene_settings_are_applied_before_the_first_render():
    import mujoco

    env = make("walker", image_size=32)
    env.reset(seed=0)
    model = env.unwrapped.task.model
    assert model.vis.quality.shadowsize == 0 and model.vis.quality.offsamples == 0
    flags = env.unwrapped._renderer.scene.flags
    assert not flags[mujoco.mjtRndFlag.mjRND_SHADOW] and not flags[mujoco.mjtRndFlag.mjRND_REFLECTION]
    env.close()


def test_env_attrs_describe_the_env():
    attrs = env_attrs("adroit-pen", image_size=64)
    assert attrs["name"] == "adroit-pen" and attrs["image_size"] == 64 and attrs["paper_image_size"] == 128
    assert attrs["action_repeat"] == 4 and attrs["horizon"] == SPECS["adroit-pen"].horizon
    assert attrs["obs_keys"] == ["image", "proprio", "state"]
    assert attrs["action_size"] == 24 and attrs["proprio_size"] == 48 and attrs["state_size"] == 45
    assert attrs["physics_size"] > 0 and attrs["has_proprio"] is True
    assert attrs["camera_view"]["free"]["azimuth"] == -110.0
    assert env_attrs("walker")["camera_view"] == {"model_camera": "side"}
    import json

    json.dumps(attrs, allow_nan=False)  # stored as dataset attributes


def test_registry_entry_matches_the_dclaw_module_constants():
    from lompo_bench.envs import dclaw

    spec = SPECS["dclaw-screw"]
    assert dclaw.SPEC is spec
    assert (spec.action_repeat, spec.horizon, spec.image_size) == (dclaw.ACTION_REPEAT, dclaw.HORIZON, dclaw.IMAGE_SIZE)
    assert spec.reward_range == pytest.approx(dclaw.REWARD_RANGE)
    assert spec.camera.startswith(dclaw.CAMERA)


@pytest.mark.parametrize("bad", [31, 0, -64, 5000, 64.0, "64", True])
def test_bad_image_size_is_a_user_error(bad):
    with pytest.raises(UserError, match="image size"):
        make("walker", image_size=bad)


def test_unknown_env_is_a_user_error():
    with pytest.raises(UserError, match="unknown env 'walker-run'; accepted: walker, dclaw-screw"):
        make("walker-run")


@pytest.mark.parametrize(
    "args, message",
    [
        (["envs", "show", "nope"], "error: unknown env 'nope'; accepted: walker, dclaw-screw, adroit-pen, sawyer-door"),
        (["envs", "show", "walker", "--image-size", "16"], "error: image size 16 out of range; accepted: 32 to 1024 pixels"),
        (["envs", "show", "walker", "--steps", "0"], "error: --steps 0 out of range; accepted: 1 to 500 (the walker horizon)"),
        (["envs", "show", "walker", "--out", "strip.gif"], "error: --out 'strip.gif' is not a .png file; accepted: a path ending in .png"),
    ],
)
def test_cli_bad_input_is_one_line_error(tmp_path, args, message):
    if "--out" not in args:
        args = args + ["--out", str(tmp_path / "x.png")]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 2
    assert result.stderr.strip() == message
    assert "Traceback" not in result.output
    assert not (tmp_path / "x.png").exists()


def test_cli_list_and_show(tmp_path):
    result = CliRunner().invoke(cli, ["envs", "list"])
    assert result.exit_code == 0, result.output
    for name in ENV_NAMES:
        assert name in result.output
    out = tmp_path / "strip.png"
    result = CliRunner().invoke(
        cli, ["envs", "show", "walker", "--image-size", "32", "--steps", "10", "--frames", "4", "--out", str(out)]
    )
    assert result.exit_code == 0, result.output
    from PIL import Image

    strip = np.asarray(Image.open(out))
    assert strip.shape == (64, 4 * 64, 3)  # 4 frames of 32 px, enlarged 2x
    frames = strip.reshape(64, 4, 64, 3).transpose(1, 0, 2, 3)
    assert not np.array_equal(frames[0], frames[-1])


def test_gl_choice_respects_user_setting_and_names_packages(monkeypatch):
    monkeypatch.setenv("MUJOCO_GL", "osmesa")
    assert rendering.choose_gl() == "osmesa"
    monkeypatch.setenv("MUJOCO_GL", "disabled")
    with pytest.raises(UserError, match="libegl1 libegl-mesa0 libgl1-mesa-dri .*libosmesa6"):
        rendering.require_gl()
    assert rendering.probe("no-such-backend")[0] is False


def test_gl_backend_is_chosen_in_a_fresh_process():
    env = {k: v for k, v in os.environ.items() if k not in ("MUJOCO_GL", "PYOPENGL_PLATFORM")}
    # Listing envs needs no simulator; the backend is chosen when the simulator side loads.
    code = (
        "import os, sys, lompo_bench.envs; assert 'mujoco' not in sys.modules; "
        "import lompo_bench.envs.core; print(os.environ['MUJOCO_GL'])"
    )
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() in rendering.CANDIDATES
