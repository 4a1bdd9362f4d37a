"""The agents on feature vectors (algorithms/agents.py): the LOMPO authors' deterministic actor-critic
on a hand-made batch whose target, losses and gradients are worked out by hand, and what it shares
with SAC."""

from __future__ import annotations

import math
from copy import deepcopy

import numpy as np
import pytest
import torch

from lompo_bench.algorithms.agents import (AGENTS, SAC, DeterministicActorCritic, DeterministicConfig, SACBatch,
                                           SACConfig, TwinCriticAgent)

torch.set_num_threads(1)

# Q_i(s, a) = w_i . [s, a] + b_i (critic_layers=0 makes each Q one linear map); the actor outputs 0.5 everywhere.
W1, B1 = [1.0, 2.0, 3.0], 0.5
W2, B2 = [2.0, 1.0, -1.0], 0.0
GAMMA, LR, TAU = 0.9, 1e-3, 0.1


def hand_made_agent() -> DeterministicActorCritic:
    config = DeterministicConfig(gamma=GAMMA, tau=TAU, actor_lr=LR, critic_lr=LR, grad_clip=100.0, actor_hidden=4,
                                 actor_layers=1, critic_hidden=4, critic_layers=0)
    torch.manual_seed(0)
    agent = DeterministicActorCritic(2, 1, config)
    with torch.no_grad():
        for q in (agent.critic, agent.critic_target):
            q.net[-1].weight.copy_(torch.tensor([W1, W2]).unsqueeze(-1))
            q.net[-1].bias.copy_(torch.tensor([B1, B2]).view(2, 1, 1))
        agent.actor.net[-1].weight.zero_()
        agent.actor.net[-1].bias.fill_(math.atanh(0.5))
    return agent


def hand_made_batch() -> SACBatch:
    return SACBatch(obs=torch.tensor([[1.0, 0.0], [0.0, 1.0]]), action=torch.tensor([[0.5], [-0.5]]),
                    reward=torch.tensor([1.0, 2.0]), next_obs=torch.tensor([[0.0, 1.0], [1.0, 1.0]]),
                    not_done=torch.tensor([1.0, 0.0]))


def test_deterministic_update_target_and_losses_by_hand():
    agent, batch = hand_made_agent(), hand_made_batch()
    assert torch.allclose(agent.actor(batch.obs), torch.full((2, 1), 0.5))
    # y = r + gamma * not_done * min_i Q_i'(s', actor(s')):
    #   s'=[0,1], a'=0.5: Q1' = 2 + 1.5 + 0.5 = 4, Q2' = 1 - 0.5 = 0.5 -> y = 1 + 0.9 * 0.5 = 1.45
    #   s'=[1,1]: terminal -> y = 2
    target = np.array([1.45, 2.0])
    q1, q2 = np.array([3.0, 1.0]), np.array([1.5, 1.5])  # Q_i(s, a) of the batch's actions
    critic_loss = np.mean((q1 - target) ** 2) + np.mean((q2 - target) ** 2)  # 1.70125 + 0.12625
    # Actor: min_i Q_i(s, 0.5) = min(3, 1.5), min(4, 0.5) -> loss -(1.5 + 0.5) / 2 = -1
    old_critic = [p.detach().clone() for p in agent.critic.parameters()]
    old_target = [p.detach().clone() for p in agent.critic_target.parameters()]
    hidden = agent.actor.net[0](batch.obs).detach().numpy()  # the actor's last hidden layer, before the update

    metrics = agent.update(batch)
    assert float(metrics["target_q"]) == pytest.approx(target.mean())
    assert float(metrics["q"]) == pytest.approx(q1.mean())
    assert float(metrics["critic_loss"]) == pytest.approx(critic_loss)
    assert float(metrics["actor_loss"]) == pytest.approx(-1.0)

    # Critic gradient: dL/d[w_i, b_i] = 2 mean((Q_i - y) [s, a, 1]).
    x = np.array([[1.0, 0.0, 0.5, 1.0], [0.0, 1.0, -0.5, 1.0]])
    grads = [2 * ((q - target)[:, None] * x).mean(0) for q in (q1, q2)]
    assert float(metrics["critic_grad_norm"]) == pytest.approx(np.sqrt(sum((g ** 2).sum() for g in grads)), rel=1e-5)
    # Actor gradient at the critic BEFORE this iteration's critic step: min Q is Q2 on both rows, dQ2/da = -1,
    # d tanh = 1 - 0.5^2 -> dL/d(out bias) = 0.75, dL/d(out weight) = 0.75 * mean(hidden).
    expected_actor_norm = 0.75 * np.sqrt(1.0 + (hidden.mean(0) ** 2).sum())
    assert float(metrics["actor_grad_norm"]) == pytest.approx(expected_actor_norm, rel=1e-6)
    # The actor moved against its gradient (Adam's first step is lr * sign), so Q2's action weight pulls it down.
    assert float(agent.actor.net[-1].bias.detach()) == pytest.approx(math.atanh(0.5) - LR, rel=1e-4)
    # Every critic parameter took Adam's first step, and the target moved tau of the way to the new critic.
    for old, new, old_t, new_t in zip(old_critic, agent.critic.parameters(), old_target, agent.critic_target.parameters()):
        assert not torch.equal(old, new)
        assert torch.allclose(new_t, (1 - TAU) * old_t + TAU * new.detach(), atol=1e-7)
    assert not any(p.requires_grad for p in agent.critic_target.parameters())
    assert all(p.requires_grad for p in agent.critic.parameters())


def test_deterministic_update_actor_off_and_extra_critic_term():
    agent, batch = hand_made_agent(), hand_made_batch()
    actor_before = [p.detach().clone() for p in agent.actor.parameters()]
    calls = []

    def extra(a, b, q1, q2):
        calls.append(a)
        return 0.0 * q1.sum(), {"extra_term": torch.tensor(7.0)}

    metrics = agent.update(batch, extra_critic_loss=extra, update_actor=False)
    assert calls == [agent] and float(metrics["extra_term"]) == 7.0 and "actor_loss" not in metrics
    assert all(torch.equal(a, b) for a, b in zip(actor_before, agent.actor.parameters()))


def test_exploration_noise_is_clipped_gaussian_around_the_actor():
    agent = hand_made_agent()
    features = torch.zeros(20_000, 2)
    torch.manual_seed(1)
    actions = agent.explore(features, 0.2)
    assert actions.min() >= -1 and actions.max() <= 1
    assert float(actions.mean()) == pytest.approx(0.5, abs=0.01) and float(actions.std()) == pytest.approx(0.2, abs=0.01)
    assert torch.equal(agent.explore(features[:3], 0.0), torch.full((3, 1), 0.5))
    assert torch.equal(agent.actor.mode(features[:3]), agent.actor(features[:3]))


@pytest.mark.parametrize("name", sorted(AGENTS))
def test_agents_share_the_twin_critic_and_round_trip_their_state(name):
    cls, config_cls = AGENTS[name]
    config = config_cls(actor_hidden=16, actor_layers=2, critic_hidden=16, critic_layers=2)
    torch.manual_seed(0)
    agent = cls(6, 2, config)
    assert isinstance(agent, TwinCriticAgent)
    g = torch.Generator().manual_seed(0)
    batch = SACBatch(obs=torch.randn(32, 6, generator=g), action=torch.rand(32, 2, generator=g) * 2 - 1,
                     reward=torch.randn(32, generator=g), next_obs=torch.randn(32, 6, generator=g),
                     not_done=torch.ones(32))
    for _ in range(3):
        agent.update(batch)
    torch.manual_seed(0)
    copy = cls(6, 2, config)
    # Deep copies: an optimizer's load_state_dict keeps the given tensors, which the next update changes in place.
    copy.load_state_dict(deepcopy(agent.state_dict()))
    copy.load_optim_state_dict(deepcopy(agent.optim_state_dict()))
    torch.manual_seed(5)  # SAC samples actions: both draw the same noise
    a = agent.update(batch)
    torch.manual_seed(5)
    b = copy.update(batch)
    assert {k: float(v) for k, v in a.items()} == {k: float(v) for k, v in b.items()}
    assert set(agent.optim_state_dict()) == ({"actor", "critic", "alpha"} if name == "sac" else {"actor", "critic"})


def test_sac_config_keeps_its_own_defaults():
    assert SACConfig().act == "relu" and DeterministicConfig().act == "elu"
    assert isinstance(SAC(4, 1, SACConfig(actor_layers=1, critic_layers=1)), TwinCriticAgent)


def test_fused_adam_takes_the_same_steps_as_torch_default_adam():
    from lompo_bench.algorithms.networks import adam, mlp

    torch.manual_seed(0)
    nets = [mlp(8, 3, 16, 2, "elu") for _ in range(2)]
    nets[1].load_state_dict(nets[0].state_dict())
    start = [p.detach().clone() for p in nets[0].parameters()]
    fused = adam(nets[0].parameters(), lr=1e-2, eps=1e-4, weight_decay=1e-3)
    plain = torch.optim.Adam(nets[1].parameters(), lr=1e-2, eps=1e-4, weight_decay=1e-3)
    assert fused.defaults["fused"] and not plain.defaults["fused"]
    x = torch.randn(32, 8)
    for _ in range(20):
        for net, optim in zip(nets, (fused, plain)):
            optim.zero_grad()
            net(x).pow(2).mean().backward()
            optim.step()
    for a, b in zip(nets[0].parameters(), nets[1].parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    assert all((p - p0).abs().max() > 1e-3 for p, p0 in zip(nets[0].parameters(), start))  # it did train
