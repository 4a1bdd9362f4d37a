"""D'Claw Screw: the model, the servo mapping, the reward's sign and range, physics state
round trips and the registered env, all on the real simulator at smoke scale."""

import mujoco
import numpy as np
import pytest

from lompo_bench.envs import dclaw
from lompo_bench.envs.core import ImageEnv
from lompo_bench.errors import UserError

# A hand-made four-phase gait in joint space, the same for every finger (top, mid, bot):
# press down behind a prong, sweep counter-clockwise, sweep on, lift, swing back. Each
# transition is spread over two base steps to keep the joint speeds moderate.
GAIT_WAYPOINTS = np.array(
    [
        [-0.42, -0.33, 0.0],
        [0.0, -0.37, 0.02],
        [0.42, -0.33, 0.0],
        [0.42, -1.047, 1.047],
        [-0.42, -1.047, 1.047],
    ]
)


def gait_targets(mirror: bool = False) -> list[np.ndarray]:
    """One gait cycle of per-step joint targets (9,), starting from the lifted swing-back."""
    targets = []
    for i in range(len(GAIT_WAYPOINTS)):
        a, b = GAIT_WAYPOINTS[i - 1], GAIT_WAYPOINTS[i]
        for frac in (0.5, 1.0):
            q = a + (b - a) * frac
            if mirror:  # the clockwise gait: sweep the other way
                q = q * np.array([-1.0, 1.0, 1.0])
            targets.append(np.tile(q, 3))
    return targets


def run_gait(task, steps, mirror=False):
    """From the reset pose: lift and swing back first (a finger lowered on its way back
    would push a prong the wrong way), then cycle the gait."""
    cycle = gait_targets(mirror)
    targets = [cycle[-1]] + cycle * (steps // len(cycle) + 1)
    rewards, infos = [], []
    for k in range(steps):
        reward, info = task.step(task.targets_to_action(targets[k]))
        rewards.append(reward)
        infos.append(info)
    return np.array(rewards), infos


def test_model_compiles_with_the_documented_structure():
    task = dclaw.DClawScrewTask()
    model = task.model
    assert (model.nq, model.nv, model.nu) == (10, 10, 9)
    assert model.opt.timestep * dclaw.SUBSTEPS == pytest.approx(0.1)
    np.testing.assert_allclose(task.ranges[:3], [[-0.48, 0.48], [-np.pi / 3, np.pi / 3], [-np.pi / 2, np.pi / 2]], atol=1e-5)
    np.testing.assert_allclose(task.ranges, np.tile(task.ranges[:3], (3, 1)))
    assert mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_CAMERA, dclaw.CAMERA) >= 0
    # every servo is a position actuator over exactly its joint's range
    np.testing.assert_allclose(model.actuator_ctrlrange, task.ranges, atol=1e-6)
    assert np.all(model.actuator_gainprm[:, 0] > 0) and np.all(model.actuator_biasprm[:, 1] < 0)
    assert task.state().shape == (dclaw.STATE_SIZE,) and task.state().dtype == np.float32
    assert task.proprio().shape == (dclaw.PROPRIO_SIZE,)


def test_action_maps_linearly_onto_the_joint_ranges():
    task = dclaw.DClawScrewTask()
    low, high = task.ranges.T
    np.testing.assert_allclose(task.action_to_targets(-np.ones(9)), low)
    np.testing.assert_allclose(task.action_to_targets(np.ones(9)), high)
    np.testing.assert_allclose(task.action_to_targets(np.zeros(9)), (low + high) / 2)
    np.testing.assert_allclose(task.action_to_targets(np.full(9, 5.0)), high)  # clipped
    action = np.random.default_rng(0).uniform(-1, 1, 9)
    np.testing.assert_allclose(task.targets_to_action(task.action_to_targets(action)), action)


@pytest.mark.parametrize("seed", [0, 1])
def test_servos_track_their_targets_within_the_ranges(seed):
    task = dclaw.DClawScrewTask()
    rng = np.random.default_rng(seed)
    task.reset(rng)
    # lift the fingers clear of the valve first, then hold random targets
    lifted = task.targets_to_action(np.tile([0.0, -np.pi / 3, np.pi / 2], 3))
    for _ in range(3):
        task.step(lifted)
    low, high = task.ranges.T
    for action in (rng.uniform(-1, 1, 9), np.tile([1.0, -1.0, 1.0], 3), np.tile([-1.0, -1.0, 1.0], 3)):
        before = task.data.qpos[:9].copy()
        target = task.action_to_targets(action)
        for _ in range(5):
            task.step(action)
        after = task.data.qpos[:9]
        assert np.all(after >= low - 0.03) and np.all(after <= high + 0.03)
        moved = np.abs(target - before) > 0.2
        # closer than before on every joint asked to move far, and near the target overall
        assert np.all(np.abs(target - after)[moved] < np.abs(target - before)[moved])
        assert np.max(np.abs(target - after)) < 0.25, (target, after)
        np.testing.assert_allclose(task.last_action(), np.clip(action, -1, 1), atol=1e-9)


def test_scripted_gait_turns_the_valve_and_earns_positive_reward():
    task = dclaw.DClawScrewTask()
    rng = np.random.default_rng(3)
    turned, returns = [], []
    for _ in range(3):
        task.reset(rng)
        start = task.valve_angle()
        rewards, infos = run_gait(task, 40)
        turned.append(task.valve_angle() - start)
        returns.append(rewards.sum())
        # the turn term is the valve's mean speed over each step, with the valve's sign
        assert sum(i["turn_speed"] for i in infos) * 0.1 == pytest.approx(turned[-1], abs=1e-9)
    assert min(turned) > 1.0, turned  # counter-clockwise, more than 1 rad in 4 s
    assert min(returns) > 20.0, returns

    # holding the nominal pose earns about nothing and does not move the valve
    task.reset(np.random.default_rng(4))
    start = task.valve_angle()
    hold = task.targets_to_action(dclaw.NOMINAL_POSE)
    still = sum(task.step(hold)[0] for _ in range(40))
    assert abs(task.valve_angle() - start) < 0.05
    assert -5.0 < still < 1.0 and still < min(returns)


def test_turning_the_other_way_is_penalised_and_direction_flips_it():
    ccw, cw = dclaw.DClawScrewTask(), dclaw.DClawScrewTask(direction=-1)
    for task in (ccw, cw):
        task.reset(np.random.default_rng(5))
    start = ccw.valve_angle()
    rewards_ccw, _ = run_gait(ccw, 30, mirror=True)
    rewards_cw, _ = run_gait(cw, 30, mirror=True)
    assert ccw.valve_angle() - start < -1.0  # the mirrored gait turns clockwise
    assert cw.valve_angle() == ccw.valve_angle()  # same physics, only the reward differs
    assert rewards_ccw.sum() < -20.0 < 20.0 < rewards_cw.sum()


def test_rewards_stay_in_the_documented_range_and_follow_the_formula():
    task = dclaw.DClawScrewTask()
    rng = np.random.default_rng(6)
    low, high = dclaw.BASE_REWARD_RANGE
    for _ in range(2):
        task.reset(rng)
        for _ in range(80):
            reward, info = task.step(rng.uniform(-1, 1, 9))
            assert low <= reward <= high
            assert 0.0 <= info["pose_cost"] <= dclaw.POSE_COST_MAX
            assert 0.0 <= info["velocity_cost"] <= dclaw.VELOCITY_COST_MAX + 1e-9
            expected = (
                dclaw.TURN_WEIGHT * np.clip(info["turn_speed"], -dclaw.MAX_TURN_SPEED, dclaw.MAX_TURN_SPEED)
                - dclaw.POSE_WEIGHT * info["pose_cost"]
                - dclaw.VELOCITY_WEIGHT * info["velocity_cost"]
            )
            assert reward == pytest.approx(expected)
    assert dclaw.REWARD_RANGE == (2 * low, 2 * high)
    # the bounds are attained by the formula's extremes, so they are tight
    worst = {"turn_speed": -100.0, "pose_cost": dclaw.POSE_COST_MAX, "velocity_cost": dclaw.VELOCITY_COST_MAX}
    assert task.reward(worst) == pytest.approx(low)
    assert task.reward({"turn_speed": 100.0, "pose_cost": 0.0, "velocity_cost": 0.0}) == pytest.approx(high)


def test_reset_is_seeded_and_near_the_nominal_pose():
    task = dclaw.DClawScrewTask()
    angles = []
    for seed in range(6):
        task.reset(np.random.default_rng(seed))
        qpos = task.data.qpos[:9]
        assert np.max(np.abs(qpos - dclaw.NOMINAL_POSE)) <= dclaw.RESET_NOISE + 1e-12
        assert np.all(task.data.qvel == 0)
        np.testing.assert_allclose(task.data.ctrl, dclaw.NOMINAL_POSE)
        angles.append(task.valve_angle())
    assert len(set(angles)) == 6 and all(-np.pi <= a < np.pi for a in angles)
    task.reset(np.random.default_rng(2))
    again = task.state()
    task.reset(np.random.default_rng(2))
    np.testing.assert_array_equal(task.state(), again)


def test_physics_state_round_trip_reproduces_the_simulation():
    env = ImageEnv(dclaw.DClawScrewTask(), dclaw.SPEC, 64, render=False, seed=7)
    env.reset()
    rng = np.random.default_rng(7)
    for _ in range(5):
        env.step(rng.uniform(-1, 1, 9))
    saved = env.get_physics()
    saved_state = env.task.state()
    actions = rng.uniform(-1, 1, (8, 9)).astype(np.float32)
    first = [env.step(a) for a in actions]
    env.set_physics(saved)
    np.testing.assert_array_equal(env.task.state(), saved_state)  # last action included
    second = [env.step(a) for a in actions]
    for (obs1, r1, *_, info1), (obs2, r2, *_, info2) in zip(first, second):
        np.testing.assert_array_equal(obs1["state"], obs2["state"])
        np.testing.assert_array_equal(info1["physics"], info2["physics"])
        assert r1 == r2


def test_bad_input_is_a_one_line_user_error():
    task = dclaw.DClawScrewTask()
    with pytest.raises(UserError, match=r"shape \(4,\) not accepted; accepted: shape \(9,\)"):
        task.step(np.zeros(4))
    with pytest.raises(UserError, match="direction 2 not accepted"):
        dclaw.DClawScrewTask(direction=2)


def red_fraction(image):
    r, g, b = (image[..., c].astype(int) for c in range(3))
    return np.mean((r > 150) & (g < 90) & (b < 90))


def test_registered_env_renders_claw_and_valve():
    from lompo_bench import envs

    env = envs.make("dclaw-screw", image_size=64, seed=0)
    obs, info = env.reset()
    assert set(obs) == {"image", "proprio", "state"}
    assert obs["image"].shape == (64, 64, 3) and obs["image"].dtype == np.uint8
    assert obs["proprio"].shape == (18,) and obs["state"].shape == (30,)
    assert "success" not in info
    assert red_fraction(obs["image"]) > 0.005  # the red prong is in view
    steps, truncated = 0, False
    while not truncated:
        obs, reward, terminated, truncated, info = env.step(env.action_space.sample())
        steps += 1
        assert not terminated and envs.SPECS["dclaw-screw"].reward_range[0] <= reward <= envs.SPECS["dclaw-screw"].reward_range[1]
    assert steps == dclaw.HORIZON == 40
    np.testing.assert_array_equal(env.unwrapped.render_physics(info["physics"]), obs["image"])
    env.close()

    big = envs.make("dclaw-screw", seed=0)  # the paper's 128 px
    image = big.reset()[0]["image"]
    assert image.shape == (128, 128, 3) and red_fraction(image) > 0.005
    big.close()
