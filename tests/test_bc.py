"""Behaviour cloning from pixels, on real env frames in real dataset stores."""

from __future__ import annotations

import dataclasses
import io

import numpy as np
import pytest
import torch
from conftest import write_scripted_store

from lompo_bench import registry
from lompo_bench.algorithms.augment import random_shift
from lompo_bench.algorithms.base import DataSpec
from lompo_bench.algorithms.bc import BC
from lompo_bench.store import Dataset

torch.set_num_threads(1)

# The scripted demonstrator: a fixed posture offset plus a part that follows the walker's
# joint angles (state[:6] are orientations; the rest positions/velocities), so the actions
# depend on what the frames show.
OFFSET = np.array([0.6, -0.5, 0.4, -0.6, 0.5, -0.4], np.float32)


def demonstrator(obs, rng):
    return np.clip(OFFSET + 0.3 * np.tanh(obs["state"][:6]), -1, 1)


@pytest.fixture(scope="module")
def demo_store(tmp_path_factory):
    root = tmp_path_factory.mktemp("bc")
    train = write_scripted_store(root / "train.zarr", "walker", demonstrator, episodes=3, steps=40, seed=0)
    held_out = write_scripted_store(root / "held_out.zarr", "walker", demonstrator, episodes=1, steps=40, seed=100)
    return Dataset.open(train), Dataset.open(held_out)


def smoke_bc(dataset, seed=0, **overrides) -> BC:
    spec = DataSpec.from_dataset(dataset)
    return BC(dataclasses.replace(BC.config_for("smoke", spec), **overrides), spec, device="cpu", seed=seed)


def held_out_batch(dataset):
    batch = dataset.sample_transitions(64, np.random.default_rng(123))
    return batch["obs"], batch["action"]


def test_bc_is_registered():
    assert registry.get("bc") is BC


def test_action_error_falls_on_held_out_episodes(demo_store):
    train, held_out = demo_store
    obs, actions = held_out_batch(held_out)
    agent = smoke_bc(train, batch_size=32, steps=150)
    before = agent.action_error(obs, actions)
    losses = [agent.train_step(train, step)["bc_loss"] for step in range(agent.total_steps())]
    after = agent.action_error(obs, actions)
    assert np.isfinite(losses).all()
    assert np.mean(losses[-20:]) < np.mean(losses[:20])  # the likelihood of the dataset actions rose
    assert after < 0.5 * before, (before, after)
    assert agent.gradient_steps() == 150


def test_policy_acts_deterministically_from_images(demo_store):
    train, _ = demo_store
    agent = smoke_bc(train)
    for step in range(3):
        agent.train_step(train, step)
    policy = agent.policy()
    frame = train.episode(0)
    obs = {"image": frame["image"][5]}
    a1, a2 = policy.act(obs), policy.act(obs)
    assert a1.dtype == np.float32 and a1.shape == (6,)
    assert np.array_equal(a1, a2) and np.all(np.abs(a1) < 1)
    other = policy.act({"image": frame["image"][30]})
    assert not np.array_equal(a1, other)  # it looks at the image


def test_state_dict_round_trip_continues_identically(demo_store):
    """Restoring a state dict mid-run gives the same next updates as never stopping."""
    train, _ = demo_store
    a = smoke_bc(train, seed=3)
    for step in range(4):
        a.train_step(train, step)
    b = smoke_bc(train, seed=99)  # different init and sampling, then overwritten by the checkpoint
    buffer = io.BytesIO()  # through bytes, as a checkpoint on disk (a live state dict shares Adam's tensors)
    torch.save(a.state_dict(), buffer)
    buffer.seek(0)
    b.load_state_dict(torch.load(buffer, weights_only=False))
    ma = [a.train_step(train, step) for step in range(4, 7)]
    mb = [b.train_step(train, step) for step in range(4, 7)]
    assert ma == mb
    assert b.gradient_steps() == 7


def test_dataset_actions_on_the_bounds_give_finite_loss(demo_store):
    train, _ = demo_store
    agent = smoke_bc(train)
    obs = {"image": torch.as_tensor(train.episode(0)["image"][:4])}
    action = torch.tensor([[1.0, -1.0, 1.0, -1.0, 1.0, -1.0]]).repeat(4, 1)
    metrics = agent.update(obs, action)
    assert torch.isfinite(metrics["bc_loss"])


def test_bad_config_is_a_user_error():
    from lompo_bench.errors import UserError
    from lompo_bench.runner import apply_overrides

    with pytest.raises(UserError, match="action_eps"):
        apply_overrides(BC.Config(), {"action_eps": "2"}, "bc")


def test_random_shift_moves_each_image_within_pad_and_keeps_content():
    images = torch.arange(3 * 2 * 8 * 8, dtype=torch.float32).reshape(3, 2, 8, 8, 1).expand(3, 2, 8, 8, 3)
    shifted = random_shift(images, 2, generator=torch.Generator().manual_seed(0))
    assert shifted.shape == images.shape
    for b in range(3):
        # The same offset for every frame of a sequence, and each frame is an edge-clamped translate.
        matches = [(dy, dx) for dy in range(-2, 3) for dx in range(-2, 3)
                   if all(torch.equal(shifted[b, t, ..., 0], translate(images[b, t, ..., 0], dy, dx)) for t in range(2))]
        assert len(matches) == 1
    assert torch.equal(random_shift(images, 0), images)
    first = random_shift(images.movedim(-1, -3), 2, channels_last=False, generator=torch.Generator().manual_seed(0))
    assert torch.equal(first.movedim(-3, -1), shifted)  # both layouts, same shift
    uint8 = torch.randint(0, 255, (4, 16, 16, 3), dtype=torch.uint8)
    assert random_shift(uint8, 4).dtype == torch.uint8


def test_random_shift_crop_path_equals_the_gathers():
    """On the CPU the shift pads once and crops each image; it equals the two gathers the
    other devices run, for frames, sequences and channels-first maps (whose layout it keeps)."""
    from lompo_bench.algorithms import augment

    frames = torch.randint(0, 255, (6, 3, 16, 16, 3), dtype=torch.uint8)
    maps = torch.randn(6, 3, 16, 16).contiguous(memory_format=torch.channels_last)
    for images, (h_dim, w_dim), channels_last in ((frames, (-3, -2), True), (maps, (-2, -1), False)):
        offsets = torch.randint(-3, 4, (6, 2), generator=torch.Generator().manual_seed(1))
        crop = random_shift(images, 3, channels_last=channels_last, generator=torch.Generator().manual_seed(1))
        assert torch.equal(crop, augment._gather_shift(images, offsets, h_dim, w_dim))
        assert crop.stride() == images.stride()


def translate(frame, dy, dx):
    h, w = frame.shape
    rows = (torch.arange(h) + dy).clamp(0, h - 1)
    cols = (torch.arange(w) + dx).clamp(0, w - 1)
    return frame[rows][:, cols]
