"""LOMPO's variational latent model: an RSSM with K stochastic forward heads (paper Section IV-C,
Appendix C; sizes from the authors' Dreamer-v1-style code).

State s_t = (h_t, z_t): a deterministic GRU state h_t (256; Adroit 512) and a stochastic state z_t
(64-d diagonal Gaussian, std = softplus(x) + 0.1).

- Deterministic path, shared by every forward head and by inference:
  h_t = GRU(dense_elu([z_{t-1}, a_t]), h_{t-1}), where a_t is the action that led to o_t (the
  store's row convention; the first row of an episode has a zero action and resets the state).
- K forward heads (K = 7): p_k(z_t | h_t), each two dense layers (hidden, then 2 x stoch) on top of
  the shared pre-GRU layer. All K heads run as one batched matmul (`EnsembleLinear`).
- Inference: q(z_t | h_t, e_t), a dense layer then 2 x stoch, on the GRU state and the observation
  features e_t (`ObservationEncoder`: conv image features, plus proprio where present).
- Heads on the features [z_t, h_t]: image decoder (unit-variance Gaussian), reward (2 x 256 ELU),
  proprio decoder where the task has proprio.

Training (Eq. 8): on (B x L) windows, the ELBO's KL term at each (sequence, step) uses ONE head
drawn uniformly at random, so all heads are grounded in the same latent space that the shared
inference model defines, at the cost of training one model. The loss is
    -E[log p(o_t|s_t) + log p(r_t|s_t) (+ log p(proprio_t|s_t))]
    + kl_scale * [ a * KL(sg(q) || p_k) + (1 - a) * max(KL(q || sg(p_k)), free_nats) ].
Our choice, documented: KL balancing (a = 0.8, as DreamerV2) with free nats (3, as Dreamer-v1)
applied only to the posterior side. Dreamer-v1's plain `max(KL, free_nats)` stops all gradient to
the prior once the KL drops below the free nats, and here the heads' only training signal is that
KL: an untrained head would show spurious disagreement, so the prior side is always trained.

Imagination (Eq. 9): `imagine_step` advances the shared GRU, evaluates all K heads, samples each
head's next z, and moves on with one randomly drawn head per sample. The reward is the mean of
the reward head over the K heads' samples; the disagreement penalty (`penalty` setting) is
  - "log_prob" (authors' default): the std across heads of each head's log-probability of the
    sampled next stochastic state;
  - "max_var": the largest (over heads) L2 norm of a head's std vector (MOPO's max aleatoric);
  - "mean": the mean (over heads) L2 distance of a head's mean from the ensemble mean, as the
    authors' code computes it (their `mean_disagreement`).
Penalised reward = mean reward - lambda * penalty. All of it stays on the device: no host syncs.

Precision (`precision.py`): every method runs under bf16 autocast on the fast path. The state
(h, z) stays fp32 between steps, the layers producing Gaussian parameters and rewards are fp32
output layers, and the KL, log-probabilities and likelihoods are computed in fp32; the bodies
(conv encoder/decoder, pre-GRU layer, GRU gates, hidden layers) run in bf16.
"""

from __future__ import annotations

from typing import Callable, NamedTuple, Optional

import torch
from torch import nn
from torch.nn import functional as F

from .encoders import ConvDecoder, ObservationEncoder, image_log_likelihood, preprocess_images
from .networks import EnsembleLinear, mlp

PENALTIES = ("log_prob", "max_var", "mean")


class LatentState(NamedTuple):
    deter: torch.Tensor  # (..., D)
    stoch: torch.Tensor  # (..., S)

    def features(self) -> torch.Tensor:
        """[z, h]: what every head, the actor and the critic read."""
        return torch.cat([self.stoch, self.deter], -1)


def _std(raw: torch.Tensor, min_std: float) -> torch.Tensor:
    return F.softplus(raw) + min_std


def gaussian_kl(mean_q, std_q, mean_p, std_p) -> torch.Tensor:
    """KL(N(mean_q, std_q) || N(mean_p, std_p)) summed over the last dim."""
    var_ratio = (std_q / std_p).pow(2)
    mean_term = ((mean_q - mean_p) / std_p).pow(2)
    return 0.5 * (var_ratio + mean_term - 1.0 - var_ratio.log()).sum(-1)


def gaussian_log_prob(x, mean, std) -> torch.Tensor:
    """log N(x; mean, std) summed over the last dim (broadcasting)."""
    z = (x - mean) / std
    return (-0.5 * z.pow(2) - std.log() - 0.9189385332046727).sum(-1)


def disagreement(kind: str, means: torch.Tensor, stds: torch.Tensor, sample: torch.Tensor) -> torch.Tensor:
    """Ensemble disagreement per sample. means/stds: (K, N, S); sample: (N, S) -> (N,)."""
    if kind == "log_prob":
        log_probs = gaussian_log_prob(sample.unsqueeze(0), means, stds)  # (K, N)
        return log_probs.std(0, correction=0)
    if kind == "max_var":
        return stds.norm(dim=-1).amax(0)
    if kind == "mean":
        return (means - means.mean(0, keepdim=True)).norm(dim=-1).mean(0)
    from lompo_bench.errors import choice_error

    raise choice_error("penalty", kind, PENALTIES)


class LatentModel(nn.Module):
    """RSSM with a shared GRU, K stochastic forward heads and an inference network (see module doc)."""

    def __init__(self, image_shape, proprio_dim: int, action_dim: int, *, depth: int = 32, deter: int = 256,
                 stoch: int = 64, hidden: int = 256, heads: int = 7, reward_hidden: int = 256,
                 reward_layers: int = 2, min_std: float = 0.1, free_nats: float = 3.0, kl_balance: float = 0.8,
                 kl_scale: float = 1.0):
        super().__init__()
        self.deter_dim, self.stoch_dim, self.heads, self.action_dim = deter, stoch, heads, action_dim
        self.proprio_dim = int(proprio_dim)
        self.min_std, self.free_nats, self.kl_balance, self.kl_scale = min_std, free_nats, kl_balance, kl_scale
        self.encoder = ObservationEncoder(image_shape, proprio_dim, depth=depth)
        self.feature_dim = stoch + deter
        # Shared deterministic path.
        self.pre_gru = nn.Sequential(nn.Linear(stoch + action_dim, hidden), nn.ELU())
        self.gru = nn.GRUCell(hidden, deter)
        # K forward heads: hidden layer + Gaussian parameters, batched over heads.
        self.prior_hidden = EnsembleLinear(heads, deter, hidden)
        self.prior_out = EnsembleLinear(heads, hidden, 2 * stoch, fp32=True)
        # Inference network on [h_t, e_t].
        self.posterior = mlp(deter + self.encoder.out_dim, 2 * stoch, hidden, 1, act="elu", fp32_out=True)
        self.decoder = ConvDecoder(self.feature_dim, int(image_shape[0]), depth=depth)
        self.reward_head = mlp(self.feature_dim, 1, reward_hidden, reward_layers, act="elu", fp32_out=True)
        self.proprio_head = (mlp(self.feature_dim, self.proprio_dim, hidden, 2, act="elu", fp32_out=True)
                             if self.proprio_dim else None)

    # ----------------------------------------------------------------------------------------
    # Building blocks

    def initial(self, batch: int, device=None) -> LatentState:
        device = device or self.gru.weight_hh.device
        return LatentState(torch.zeros(batch, self.deter_dim, device=device),
                           torch.zeros(batch, self.stoch_dim, device=device))

    def embed(self, obs: dict) -> torch.Tensor:
        return self.encoder(obs)

    def deter_step(self, state: LatentState, action: torch.Tensor) -> torch.Tensor:
        """The shared GRU: (z_{t-1}, h_{t-1}, a_t) -> h_t (fp32; the gates' matmuls follow autocast)."""
        x = self.pre_gru(torch.cat([state.stoch, action.to(state.stoch.dtype)], -1))
        return self.gru(x, state.deter).float()

    def priors(self, deter: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """All K heads at once: deter (..., D) -> means, stds (K, ..., S), in float32."""
        batch_shape = deter.shape[:-1]
        x = deter.reshape(1, -1, self.deter_dim).expand(self.heads, -1, -1)
        out = self.prior_out(F.elu(self.prior_hidden(x))).float()
        mean, raw_std = out.chunk(2, -1)
        shape = (self.heads, *batch_shape, self.stoch_dim)
        return mean.reshape(shape), _std(raw_std, self.min_std).reshape(shape)

    def posterior_dist(self, deter: torch.Tensor, embed: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mean, raw_std = self.posterior(torch.cat([deter, embed.to(deter.dtype)], -1)).float().chunk(2, -1)
        return mean, _std(raw_std, self.min_std)

    def obs_step(self, state: LatentState, action: torch.Tensor, embed: torch.Tensor,
                 is_first: Optional[torch.Tensor] = None, sample: bool = True) -> tuple[LatentState, tuple]:
        """Filter one step: advance the GRU with a_t, then infer z_t from (h_t, e_t).
        `is_first` (N,) resets the state (and action) of those rows first."""
        if is_first is not None:
            keep = (~is_first.bool()).to(state.deter.dtype).unsqueeze(-1)
            state = LatentState(state.deter * keep, state.stoch * keep)
            action = action * keep
        deter = self.deter_step(state, action)
        mean, std = self.posterior_dist(deter, embed)
        stoch = mean + std * torch.randn_like(std) if sample else mean
        return LatentState(deter, stoch), (mean, std)

    def observe(self, embed: torch.Tensor, action: torch.Tensor, is_first: torch.Tensor,
                state: Optional[LatentState] = None, sample: bool = True):
        """Filter (B, L) sequences. Returns (posterior states (B, L, ...), (means, stds) (B, L, S),
        last state). Only the GRU and the inference net run in the time loop; the K heads are
        evaluated afterwards on all h_t at once (they do not feed back into the recurrence)."""
        B, L = action.shape[:2]
        state = state if state is not None else self.initial(B, embed.device)
        deters, stochs, means, stds = [], [], [], []
        for t in range(L):
            state, (mean, std) = self.obs_step(state, action[:, t], embed[:, t], is_first[:, t], sample)
            deters.append(state.deter), stochs.append(state.stoch), means.append(mean), stds.append(std)
        posts = LatentState(torch.stack(deters, 1), torch.stack(stochs, 1))
        return posts, (torch.stack(means, 1), torch.stack(stds, 1)), state

    def reward(self, features: torch.Tensor) -> torch.Tensor:
        return self.reward_head(features).squeeze(-1).float()

    # ----------------------------------------------------------------------------------------
    # Training

    def loss(self, batch: dict) -> tuple[torch.Tensor, dict, LatentState]:
        """Negative ELBO of Eq. 8 on a window batch of tensors (B, L, ...): `image` uint8,
        `action`, `reward`, `is_first`, and `proprio` where present. Returns (loss, metrics,
        posterior states)."""
        obs = {"image": batch["image"]}
        if self.proprio_dim:
            obs["proprio"] = batch["proprio"]
        frames = preprocess_images(batch["image"])  # once: the encoder's input and the decoder's target
        embed = self.encoder(obs, preprocessed_image=frames)
        posts, (post_mean, post_std), _ = self.observe(embed, batch["action"], batch["is_first"])
        features = posts.features()
        image_ll = image_log_likelihood(self.decoder(features), batch["image"], target=frames).mean()
        reward_ll = (-0.5 * (self.reward(features) - batch["reward"].float()).pow(2)).mean()
        recon = image_ll + reward_ll
        metrics = {"image_ll": image_ll.detach(), "reward_ll": reward_ll.detach()}
        if self.proprio_dim:
            proprio_ll = (-0.5 * (self.proprio_head(features).float() - batch["proprio"].float()).pow(2)).sum(-1).mean()
            recon = recon + proprio_ll
            metrics["proprio_ll"] = proprio_ll.detach()
        # Eq. 8: one randomly drawn forward head per (sequence, step).
        prior_means, prior_stds = self.priors(posts.deter)  # (K, B, L, S)
        head = torch.randint(self.heads, posts.deter.shape[:-1], device=posts.deter.device)
        index = head.unsqueeze(0).unsqueeze(-1).expand(1, *head.shape, self.stoch_dim)
        prior_mean = prior_means.gather(0, index).squeeze(0)
        prior_std = prior_stds.gather(0, index).squeeze(0)
        kl_prior = gaussian_kl(post_mean.detach(), post_std.detach(), prior_mean, prior_std).mean()
        kl_post = gaussian_kl(post_mean, post_std, prior_mean.detach(), prior_std.detach()).mean()
        kl = self.kl_balance * kl_prior + (1 - self.kl_balance) * torch.clamp(kl_post, min=self.free_nats)
        loss = -recon + self.kl_scale * kl
        metrics.update(model_loss=loss.detach(), kl=kl_post.detach(), elbo=(recon - kl_post).detach())
        return loss, metrics, posts

    # ----------------------------------------------------------------------------------------
    # Imagination

    def imagine_step(self, state: LatentState, action: torch.Tensor, head: Optional[torch.Tensor | int] = None,
                     penalty: str = "log_prob") -> tuple[LatentState, dict]:
        """One latent step through the ensemble (Eq. 9 ingredients).

        head: None draws one head per sample; an int or (N,) tensor picks it. Returns the next
        state (z from the chosen head) and a dict with `reward` (mean over the K heads' samples),
        `penalty` (disagreement of kind `penalty`), `head`, `means`/`stds` (K, N, S)."""
        deter = self.deter_step(state, action)
        means, stds = self.priors(deter)  # (K, N, S)
        samples = means + stds * torch.randn_like(stds)
        N = deter.shape[0]
        if head is None:
            head = torch.randint(self.heads, (N,), device=deter.device)
        elif isinstance(head, int):
            head = torch.full((N,), head, device=deter.device, dtype=torch.long)
        stoch = samples.gather(0, head.view(1, N, 1).expand(1, N, self.stoch_dim)).squeeze(0)
        head_features = torch.cat([samples.to(deter.dtype), deter.unsqueeze(0).expand(self.heads, -1, -1)], -1)
        reward = self.reward(head_features).mean(0)
        pen = disagreement(penalty, means, stds, stoch)
        return LatentState(deter, stoch.to(deter.dtype)), {"reward": reward, "penalty": pen, "head": head,
                                                             "means": means, "stds": stds}

    def rollout(self, start: LatentState, horizon: int, actor: Optional[Callable] = None, penalty: str = "log_prob",
                penalty_scale: float = 0.0) -> dict[str, torch.Tensor]:
        """H-step latent rollouts from `start` (N states), each step through a random head.

        actor: features -> action; None takes uniform random actions in [-1, 1]. Returns flat
        transitions (H * N): `obs`, `action`, `reward` (penalised: mean reward - scale * penalty),
        `next_obs`, `penalty`, `raw_reward`."""
        state = start
        out = {k: [] for k in ("obs", "action", "reward", "next_obs", "penalty", "raw_reward")}
        for _ in range(horizon):
            features = state.features()
            if actor is None:
                action = torch.rand(features.shape[0], self.action_dim, device=features.device) * 2 - 1
            else:
                action = actor(features)
            state, info = self.imagine_step(state, action, penalty=penalty)
            out["obs"].append(features)
            out["action"].append(action)
            out["raw_reward"].append(info["reward"])
            out["penalty"].append(info["penalty"])
            out["reward"].append(info["reward"] - penalty_scale * info["penalty"])
            out["next_obs"].append(state.features())
        return {k: torch.cat(v, 0) for k, v in out.items()}

    @torch.no_grad()
    def open_loop(self, batch: dict, context: int) -> dict[str, torch.Tensor]:
        """For model-sample figures (paper Appendix E): posterior reconstructions of every frame,
        and predictions that see only the first `context` frames and then imagine the rest from
        the real actions through random heads. Returns uint8 (B, L, H, W, 3) `recon`, `open_loop`."""
        obs = {"image": batch["image"]}
        if self.proprio_dim:
            obs["proprio"] = batch["proprio"]
        embed = self.embed(obs)
        posts, _, _ = self.observe(embed, batch["action"], batch["is_first"], sample=False)
        recon = self.decoder(posts.features())
        state = LatentState(posts.deter[:, context - 1], posts.stoch[:, context - 1])
        imagined = []
        for t in range(context, batch["action"].shape[1]):
            state, _ = self.imagine_step(state, batch["action"][:, t])
            imagined.append(state.features())
        predicted = recon[:, :context]
        if imagined:
            predicted = torch.cat([predicted, self.decoder(torch.stack(imagined, 1))], 1)
        return {"recon": ConvDecoder.to_uint8(recon), "open_loop": ConvDecoder.to_uint8(predicted)}
