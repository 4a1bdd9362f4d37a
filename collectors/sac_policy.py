"""`CollectorSACPolicy`: SB3's SAC policy with fp32 output layers, for the collector's bf16 step.

Under the bf16 fast path (``SACConfig.precision``, ``algorithms/precision.py``) the MLP bodies
of SAC's actor and critics run in bf16 autocast inside the gradient step, but the layers whose
outputs a loss compares at full scale (the Q values, the actor's mean and log-std) must stay
fp32: bf16's 8-bit mantissa puts a Q of ~50 off by ~0.1. This policy is SB3's own ``SACPolicy``
(SB3's extension point: ``policy=`` a class) whose ``make_actor``/``make_critic`` swap those
layers for ``Fp32Linear``, a Linear layer with the same parameters and state-dict keys that
always computes in fp32. Outside autocast it computes exactly what ``nn.Linear`` does, so an
fp32 run with this policy is SB3's SAC.

Its own module, importable by name, so that SB3's saved ``model.zip`` refers to the class by
reference (``lompo_bench.collectors.sac_policy.CollectorSACPolicy``).
"""

from __future__ import annotations

from stable_baselines3.sac.policies import SACPolicy
from torch import nn

from lompo_bench.algorithms.precision import Fp32Linear


def fp32_copy(layer: nn.Linear) -> Fp32Linear:
    """The same layer as `Fp32Linear`. Built with `skip_init`: a fresh initialization would draw
    from torch's RNG and shift every later draw, so the run would no longer be SB3's."""
    new = nn.utils.skip_init(Fp32Linear, layer.in_features, layer.out_features, bias=layer.bias is not None)
    new.load_state_dict(layer.state_dict())
    return new


class CollectorSACPolicy(SACPolicy):
    """``SACPolicy`` whose actor mean/log-std and critic Q outputs compute in fp32."""

    def make_actor(self, features_extractor=None):
        actor = super().make_actor(features_extractor)
        if isinstance(actor.mu, nn.Linear):  # gSDE wraps mu in a Sequential: left as SB3 builds it
            actor.mu = fp32_copy(actor.mu)
        if isinstance(actor.log_std, nn.Linear):
            actor.log_std = fp32_copy(actor.log_std)
        return actor

    def make_critic(self, features_extractor=None):
        critic = super().make_critic(features_extractor)
        for q_net in critic.q_networks:  # the Sequentials registered as qf0, qf1: edited in place
            q_net[-1] = fp32_copy(q_net[-1])
        return critic
