"""The shared networks and LOMPO's latent model, on real env frames in a real dataset store.

`write_random_store` (also used by test_lompo.py) writes a small store of random-policy episodes
from a real environment with `lompo_bench.store.DatasetWriter`.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lompo_bench.algorithms.latent_model import LatentModel, LatentState, disagreement
from lompo_bench.algorithms.agents import SAC, SACBatch, SACConfig
from lompo_bench.algorithms.encoders import ConvDecoder, ConvEncoder, decoder_layout
from lompo_bench.algorithms.networks import TanhGaussianActor, TwinQ

torch.set_num_threads(1)


def write_random_store(path, env_name: str, image_size: int = 32, episodes: int = 3, steps: int = 40, seed: int = 0):
    """A finalized store of `episodes` random-policy episodes of `steps` agent steps each."""
    from lompo_bench import envs
    from lompo_bench.store import Dataset, DatasetWriter

    env = envs.make(env_name, image_size=image_size, seed=seed)
    writer = DatasetWriter.open(path, {"env": envs.env_attrs(env_name, image_size), "split": "random",
                                       "collector": {"algorithm": "uniform-random", "seed": seed}})
    rng = np.random.default_rng(seed)
    for e in range(episodes):
        obs, info = env.reset(seed=seed + e)
        rows = {k: [v] for k, v in obs.items()}
        rows.update(physics=[info["physics"]], action=[np.zeros(env.action_space.shape, np.float32)], reward=[0.0])
        for _ in range(steps):
            action = rng.uniform(-1, 1, env.action_space.shape).astype(np.float32)
            obs, reward, terminated, truncated, info = env.step(action)
            for k, v in obs.items():
                rows[k].append(v)
            rows["physics"].append(info["physics"])
            rows["action"].append(action)
            rows["reward"].append(reward)
        arrays = {k: np.stack(v) for k, v in rows.items()}
        n = steps + 1
        arrays["is_first"] = np.arange(n) == 0
        arrays["is_last"] = np.arange(n) == n - 1
        arrays["is_terminal"] = np.zeros(n, bool)
        writer.add_episode(arrays)
    writer.update_attrs(reference_returns={"random": 0.0, "expert": 100.0, "episodes": episodes,
                                           "definition": "test values"})
    writer.finalize()
    return Dataset.open(path)


@pytest.fixture(scope="module")
def walker_store(tmp_path_factory):
    return write_random_store(tmp_path_factory.mktemp("store") / "walker.zarr", "walker")


def window_batch(dataset, batch=8, length=12, seed=0):
    keys = ["image", "action", "reward", "is_first", "is_terminal"] + (["proprio"] if "proprio" in dataset.keys else [])
    arrays = dataset.sample_windows(batch, length, np.random.default_rng(seed), keys=keys)
    out = {k: torch.as_tensor(v) for k, v in arrays.items()}
    for k in ("action", "reward", "proprio"):
        if k in out:
            out[k] = out[k].float()
    out["is_first"] = out["is_first"].bool()
    return out


def small_model(dataset, **kw):
    from lompo_bench.algorithms.base import DataSpec

    spec = DataSpec.from_dataset(dataset)
    sizes = dict(depth=8, deter=32, stoch=8, hidden=32, heads=7, reward_hidden=32)
    sizes.update(kw)
    return LatentModel(spec.image_shape, spec.proprio_dim, spec.action_dim, **sizes)


# ------------------------------------------------------------------------------------------
# networks


@pytest.mark.parametrize("size,channels", [(64, [32, 64, 128, 256]), (128, [32, 64, 128, 256, 256])])
def test_conv_encoder_and_decoder_follow_appendix_c(size, channels):
    encoder = ConvEncoder(size, depth=32)
    assert encoder.channels == channels  # Appendix C: 4 layers at 64 px, 5 at 128 px
    images = torch.randint(0, 256, (2, 3, size, size, 3), dtype=torch.uint8)
    assert encoder(images).shape == (2, 3, encoder.out_dim)
    layout = decoder_layout(size)
    assert [ch for ch, _, _ in layout] == ([128, 64, 32, 3] if size == 64 else [128, 64, 32, 32, 3])
    decoder = ConvDecoder(20, size)
    assert decoder.decoded_size == size  # exact arithmetic, no resizing at the paper's sizes
    assert decoder(torch.zeros(2, 3, 20)).shape == (2, 3, 3, size, size)


def test_decoder_handles_other_sizes_and_rejects_tiny_images():
    from lompo_bench.errors import UserError

    assert ConvDecoder(8, 48, depth=4)(torch.zeros(1, 8)).shape == (1, 3, 48, 48)
    with pytest.raises(UserError, match="image size"):
        ConvEncoder(16)


def test_tanh_gaussian_actor_log_prob_matches_sample():
    actor = TanhGaussianActor(5, 3, hidden=16, layers=2)
    features = torch.randn(64, 5)
    action, log_prob = actor.sample(features)
    assert action.abs().max() < 1 and action.shape == (64, 3)
    assert torch.allclose(actor.log_prob(features, action), log_prob, atol=1e-3)
    assert torch.equal(actor.mode(features), actor.mode(features))


def test_twin_q_members_are_independent():
    critic = TwinQ(4, 2, hidden=8, layers=2)
    q1, q2 = critic(torch.randn(3, 5, 4), torch.randn(3, 5, 2))
    assert q1.shape == q2.shape == (3, 5) and not torch.allclose(q1, q2)


def test_sac_learns_a_one_step_bandit_and_extra_loss_reaches_shared_params():
    torch.manual_seed(0)
    encoder = torch.nn.Linear(3, 4)
    sac = SAC(4, 1, SACConfig(actor_hidden=32, actor_layers=2, critic_hidden=32, critic_layers=2, gamma=0.0,
                              actor_lr=3e-3, critic_lr=3e-3), critic_extra_params=encoder.parameters())
    calls = []

    def extra(agent, batch, q1, q2):
        calls.append(1)
        return 0.0 * q1.mean(), {"extra": torch.tensor(1.0)}

    before = encoder.weight.detach().clone()
    for _ in range(150):
        obs = torch.randn(64, 3)
        action = torch.rand(64, 1) * 2 - 1
        reward = -(action[:, 0] - 0.5).pow(2)  # best action: 0.5
        features = encoder(obs)
        metrics = sac.update(SACBatch(features, action, reward, features.detach(), torch.ones(64)), extra)
    assert len(calls) == 150 and "extra" in metrics
    assert not torch.equal(before, encoder.weight)  # the critic loss trained the shared encoder
    best = sac.actor.mode(encoder(torch.randn(256, 3))).mean().item()
    assert abs(best - 0.5) < 0.2, best


# ------------------------------------------------------------------------------------------
# latent model


def test_heads_are_vectorised_like_separate_networks(walker_store):
    model = small_model(walker_store)
    deter = torch.randn(10, model.deter_dim)
    means, stds = model.priors(deter)
    for k in range(model.heads):
        hidden = torch.nn.functional.elu(deter @ model.prior_hidden.weight[k] + model.prior_hidden.bias[k])
        out = hidden @ model.prior_out.weight[k] + model.prior_out.bias[k]
        mean, raw = out.chunk(2, -1)
        assert torch.allclose(means[k], mean, atol=1e-5)
        assert torch.allclose(stds[k], torch.nn.functional.softplus(raw) + 0.1, atol=1e-5)
    assert stds.min() >= 0.1


def test_observe_resets_at_episode_starts(walker_store):
    model = small_model(walker_store)
    batch = window_batch(walker_store)
    embed = model.embed({"image": batch["image"]})
    action, first = batch["action"], torch.zeros_like(batch["is_first"])
    first[:, 3] = True
    posts, _, _ = model.observe(embed, action, first, sample=False)
    fresh, _, _ = model.observe(embed[:, 3:], action[:, 3:], first[:, 3:], sample=False)
    assert torch.allclose(posts.deter[:, 3:], fresh.deter, atol=1e-5)  # history before the reset is forgotten


def test_penalty_is_zero_when_all_heads_agree(walker_store):
    model = small_model(walker_store)
    with torch.no_grad():
        for layer in (model.prior_hidden, model.prior_out):
            layer.weight[:] = layer.weight[0:1].clone()
            layer.bias[:] = layer.bias[0:1].clone()
    state = LatentState(torch.randn(32, model.deter_dim), torch.randn(32, model.stoch_dim))
    action = torch.rand(32, model.action_dim) * 2 - 1
    with torch.no_grad():
        for kind in ("log_prob", "mean"):
            _, info = model.imagine_step(state, action, penalty=kind)
            assert info["penalty"].abs().max() < 1e-4, kind
        _, info = model.imagine_step(state, action, penalty="max_var")
        assert torch.allclose(info["penalty"], info["stds"][0].norm(dim=-1))  # one head's spread
    with pytest.raises(Exception, match="penalty"):
        disagreement("bogus", info["means"], info["stds"], info["means"][0])


def test_penalties_on_hand_made_heads():
    # Three heads, one sample, 2-d state: head means (0, 0), (2, 0), (4, 0) -> ensemble mean (2, 0);
    # distances 2, 0, 2. "mean" is the authors' mean over heads (4 / 3), "max_var" the widest head.
    means = torch.tensor([[[0.0, 0.0]], [[2.0, 0.0]], [[4.0, 0.0]]])
    stds = torch.tensor([[[1.0, 1.0]], [[3.0, 4.0]], [[1.0, 2.0]]])
    sample = torch.tensor([[2.0, 0.0]])
    assert torch.allclose(disagreement("mean", means, stds, sample), torch.tensor([4.0 / 3.0]))
    assert torch.allclose(disagreement("max_var", means, stds, sample), torch.tensor([5.0]))
    log_probs = torch.stack([torch.distributions.Normal(means[k, 0], stds[k, 0]).log_prob(sample[0]).sum()
                             for k in range(3)])
    assert torch.allclose(disagreement("log_prob", means, stds, sample), log_probs.std(correction=0).view(1))


def test_elbo_rises_and_penalty_grows_away_from_the_data(walker_store):
    torch.manual_seed(0)
    model = small_model(walker_store)
    optim = torch.optim.Adam(model.parameters(), lr=3e-3)
    held_out = window_batch(walker_store, seed=123)

    def held_out_elbo():
        torch.manual_seed(1)
        with torch.no_grad():
            return model.loss(held_out)[1]["elbo"].item()

    start = held_out_elbo()
    for step in range(40):
        loss, metrics, _ = model.loss(window_batch(walker_store, seed=step))
        optim.zero_grad()
        loss.backward()
        optim.step()
    end = held_out_elbo()
    assert end > start + 0.2 * abs(start), (start, end)

    # Disagreement on posterior states of real data vs the same states pushed far from the data.
    with torch.no_grad():
        posts, _, _ = model.observe(model.embed({"image": held_out["image"]}), held_out["action"], held_out["is_first"])
        near = LatentState(posts.deter.reshape(-1, model.deter_dim), posts.stoch.reshape(-1, model.stoch_dim))
        far = LatentState(near.deter, near.stoch + 10.0 * torch.randn_like(near.stoch))
        action = held_out["action"].reshape(-1, model.action_dim)
        for kind in ("log_prob", "mean"):  # the disagreement kinds ("max_var" is one head's spread)
            torch.manual_seed(2)
            p_near = model.imagine_step(near, action, penalty=kind)[1]["penalty"].mean()
            torch.manual_seed(2)
            p_far = model.imagine_step(far, action, penalty=kind)[1]["penalty"].mean()
            assert p_far > 1.5 * p_near, (kind, p_near.item(), p_far.item())


def test_rollout_reward_is_mean_reward_minus_lambda_penalty(walker_store):
    model = small_model(walker_store)
    start = LatentState(torch.randn(16, model.deter_dim), torch.randn(16, model.stoch_dim))
    with torch.no_grad():
        torch.manual_seed(3)
        plain = model.rollout(start, horizon=5, penalty_scale=0.0)
        torch.manual_seed(3)
        penalised = model.rollout(start, horizon=5, penalty_scale=5.0)
    assert plain["obs"].shape == (80, model.feature_dim) and plain["action"].abs().max() <= 1
    assert torch.allclose(plain["reward"], plain["raw_reward"])
    assert torch.allclose(penalised["reward"], plain["raw_reward"] - 5.0 * plain["penalty"], atol=1e-5)
    assert (penalised["penalty"] > 0).all()
