"""The bf16 fast path (algorithms/precision.py): fp32 output layers, the exact decoder rewrite,
the fused image likelihood, and both precisions training to the same loss on a real store.

Tolerances, stated once: on these smoke models trained for 40 steps on a real walker store,
the held-out loss (evaluated in fp32) of the bf16 run stays within 2% of the fp32 run's
(measured: 0.1-0.6%), while training moves it by far more than that."""

from __future__ import annotations

import os
import sys

import numpy as np
import pytest
import torch
from torch import nn

from conftest import write_scripted_store
from lompo_bench.algorithms import precision
from lompo_bench.algorithms.encoders import ConvDecoder, decoder_layout, image_log_likelihood, preprocess_images
from lompo_bench.algorithms.networks import EnsembleLinear, TanhGaussianActor, TwinQ, mlp

torch.set_num_threads(1)
SAME_LOSS_RTOL = 0.02


def bf16():
    return precision.autocast("bf16", "cpu")


@pytest.fixture(scope="module")
def walker_store(tmp_path_factory):
    from lompo_bench.store import Dataset

    path = write_scripted_store(tmp_path_factory.mktemp("fastpath") / "walker.zarr", "walker",
                                lambda obs, rng: rng.uniform(-1, 1, 6), episodes=3, steps=40, image_size=32)
    return Dataset.open(path)


# ------------------------------------------------------------------------------------------
# Output layers


def test_fp32_output_layers_return_fp32_inside_autocast():
    torch.manual_seed(0)
    x = torch.randn(5, 12)
    layer = precision.Fp32Linear(12, 3)
    body = nn.Linear(12, 3)
    with bf16():
        assert body(x).dtype == torch.bfloat16  # autocast is on
        out = layer(x.bfloat16())
        assert out.dtype == torch.float32
        ensemble = EnsembleLinear(2, 12, 3, fp32=True)
        assert ensemble(x.expand(2, 5, 12)).dtype == torch.float32
        assert EnsembleLinear(2, 12, 3)(x.expand(2, 5, 12)).dtype == torch.bfloat16
        mean, log_std = TanhGaussianActor(12, 3, hidden=16, layers=2)(x)
        q1, q2 = TwinQ(12, 3, hidden=16, layers=2)(x, torch.zeros(5, 3))
        assert {t.dtype for t in (mean, log_std, q1, q2)} == {torch.float32}
    # Computed in fp32 from fp32 weights: equal to the plain fp32 layer on the rounded input.
    torch.testing.assert_close(out, nn.functional.linear(x.bfloat16().float(), layer.weight, layer.bias))
    # Same state-dict keys as nn.Linear, so checkpoints of either load into the other.
    assert set(layer.state_dict()) == set(body.state_dict())
    assert set(mlp(12, 3, fp32_out=True).state_dict()) == set(mlp(12, 3).state_dict())


def test_autocast_sees_weights_updated_inside_it():
    """An update loop inside one autocast context uses each optimizer step's new weights (plain
    torch.autocast caches a parameter's bf16 copy until the context exits)."""
    layer, x = nn.Linear(4, 4), torch.ones(1, 4)
    optim = torch.optim.SGD(layer.parameters(), lr=1.0)
    with bf16():
        before = layer(x)
        before.float().sum().backward()
        optim.step()
        after = layer(x)
    torch.testing.assert_close(after.float(), nn.functional.linear(x, layer.weight, layer.bias), rtol=1e-2, atol=1e-2)
    assert not torch.equal(before, after)


def test_bf16_keeps_q_values_at_full_scale():
    """Q ~ 50: an fp32 output layer keeps the bf16 critic within 1e-2 of fp32 (a bf16 output
    layer rounds values near 50 to steps of 0.25)."""
    torch.manual_seed(0)
    critic = TwinQ(32, 4, hidden=64, layers=2)
    with torch.no_grad():
        critic.net[-1].bias.fill_(50.0)
    x, a = torch.randn(256, 32), torch.rand(256, 4) * 2 - 1
    q_fp32 = critic(x, a)[0]
    with bf16():
        q_bf16 = critic(x, a)[0]
    assert q_bf16.dtype == torch.float32
    assert (q_bf16 - q_fp32).abs().max() < 1e-2


# ------------------------------------------------------------------------------------------
# The decoder rewrite


def original_decoder(decoder: ConvDecoder, image_size: int, depth: int) -> nn.Module:
    """The decoder as Dreamer builds it, from `decoder_layout`, holding `decoder`'s weights."""

    class Original(nn.Module):
        def __init__(self):
            super().__init__()
            self.project = nn.Linear(decoder.project.in_features, 32 * depth)
            layers, in_ch = [], 32 * depth
            layout = decoder_layout(image_size, depth)
            for i, (ch, k, p) in enumerate(layout):
                layers.append(nn.ConvTranspose2d(in_ch, ch, kernel_size=k, stride=2, padding=p))
                if i < len(layout) - 1:
                    layers.append(nn.ReLU())
                in_ch = ch
            self.net = nn.Sequential(*layers)

        def forward(self, features):
            x = self.net(self.project(features).reshape(-1, 32 * depth, 1, 1))
            if x.shape[-1] != image_size:
                x = nn.functional.interpolate(x, size=(image_size, image_size), mode="bilinear", align_corners=False)
            return x.reshape(*features.shape[:-1], 3, image_size, image_size)

    original = Original()
    original.load_state_dict(decoder.state_dict())  # the state-dict layout is unchanged
    return original


@pytest.mark.parametrize("image_size", [32, 48, 64, 128])
def test_decoder_rewrite_is_the_original_function(image_size):
    torch.manual_seed(0)
    depth = 4
    decoder = ConvDecoder(20, image_size, depth=depth)
    original = original_decoder(decoder, image_size, depth)
    features = torch.randn(3, 2, 20, requires_grad=True)
    fast, ref = decoder(features), original(features)
    assert fast.shape == ref.shape == (3, 2, 3, image_size, image_size)
    torch.testing.assert_close(fast, ref, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(decoder.reference_forward(features), ref, rtol=1e-5, atol=1e-6)
    # Same gradients too, for the features and every weight.
    upstream = torch.randn_like(ref)
    grads_fast = torch.autograd.grad(fast, [features, *decoder.parameters()], upstream)
    grads_ref = torch.autograd.grad(ref, [features, *original.parameters()], upstream)
    for a, b in zip(grads_fast, grads_ref):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    # In bf16 the rewrite stays close to the fp32 original (pixels are in [-0.5, 0.5]).
    with bf16():
        fast_bf16 = decoder(features)
    assert (fast_bf16.float() - ref).abs().max() < 0.05 * ref.abs().max()


@pytest.mark.parametrize("out_channels", [3, 16])
@pytest.mark.parametrize("kernel", [2, 4, 6])
def test_subpixel_layer_is_the_transposed_convolution(kernel, out_channels):
    torch.manual_seed(0)
    layer = nn.ConvTranspose2d(5, out_channels, kernel_size=kernel, stride=2)
    assert ConvDecoder._subpixel_applies(layer)
    x = torch.randn(2, 5, 7, 7).contiguous(memory_format=torch.channels_last).requires_grad_()
    fast, ref = ConvDecoder._subpixel(layer, x), layer(x)
    assert fast.shape == ref.shape == (2, out_channels, 2 * 6 + kernel, 2 * 6 + kernel)
    assert fast.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(fast, ref, rtol=1e-5, atol=1e-5)
    upstream = torch.randn_like(ref)
    for a, b in zip(torch.autograd.grad(fast, [x, *layer.parameters()], upstream),
                    torch.autograd.grad(ref, [x, *layer.parameters()], upstream)):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
    # Odd kernels, padding and wide outputs keep the transposed convolution.
    for other in (nn.ConvTranspose2d(5, 3, 5, stride=2), nn.ConvTranspose2d(5, 3, 4, stride=2, padding=1),
                  nn.ConvTranspose2d(5, ConvDecoder.SUBPIXEL_MAX_OUT + 1, 6, stride=2)):
        assert not ConvDecoder._subpixel_applies(other)


def test_image_log_likelihood_matches_the_plain_expression():
    torch.manual_seed(0)
    images = torch.randint(0, 256, (2, 3, 16, 16, 3), dtype=torch.uint8)
    mean = (torch.rand(2, 3, 3, 16, 16) - 0.5).requires_grad_()
    plain = -0.5 * (mean - (images.float() / 255 - 0.5).movedim(-1, -3)).pow(2).flatten(-3).sum(-1)
    fused = image_log_likelihood(mean, images)
    torch.testing.assert_close(fused, plain)
    torch.testing.assert_close(image_log_likelihood(mean, images, target=preprocess_images(images)), plain)
    weights = torch.randn(2, 3)
    torch.testing.assert_close(torch.autograd.grad(fused, mean, weights)[0], torch.autograd.grad(plain, mean, weights)[0])
    with bf16():  # a bf16 mean: fp32 result, bf16 gradient
        mean_bf16 = mean.detach().bfloat16().requires_grad_()
        ll = image_log_likelihood(mean_bf16, images)
    assert ll.dtype == torch.float32
    (grad,) = torch.autograd.grad(ll.sum(), mean_bf16)
    assert grad.dtype == torch.bfloat16


# ------------------------------------------------------------------------------------------
# Both precisions train to the same loss


def windows(dataset, seed, batch=6, length=10):
    keys = ["image", "action", "reward", "is_first", "is_terminal"]
    arrays = dataset.sample_windows(batch, length, np.random.default_rng(seed), keys=keys)
    out = {k: torch.as_tensor(v) for k, v in arrays.items()}
    out["action"], out["reward"] = out["action"].float(), out["reward"].float()
    out["is_first"] = out["is_first"].bool()
    return out


def train_latent_model(dataset, precision_name: str, steps: int = 40) -> tuple[float, float]:
    """(held-out loss before, after) `steps` Adam steps under `precision_name`, evaluated in fp32."""
    from lompo_bench.algorithms.base import DataSpec
    from lompo_bench.algorithms.latent_model import LatentModel

    spec = DataSpec.from_dataset(dataset)
    torch.manual_seed(0)
    model = LatentModel(spec.image_shape, spec.proprio_dim, spec.action_dim, depth=8, deter=32, stoch=8, hidden=32,
                        heads=3, reward_hidden=32)
    optim = torch.optim.Adam(model.parameters(), lr=1e-3)
    held_out = windows(dataset, seed=1000)

    def evaluate():
        torch.manual_seed(1)
        with torch.no_grad():
            return float(model.loss(held_out)[0])

    before = evaluate()
    torch.manual_seed(2)
    for step in range(steps):
        with precision.autocast(precision_name, "cpu"):
            loss, metrics, posts = model.loss(windows(dataset, seed=step))
        assert loss.dtype == torch.float32 and posts.deter.dtype == torch.float32
        optim.zero_grad(set_to_none=True)
        loss.backward()
        optim.step()
    return before, evaluate()


def test_latent_model_trains_to_the_same_loss_in_both_precisions(walker_store):
    before, fp32 = train_latent_model(walker_store, "fp32")
    before_bf16, bf16_loss = train_latent_model(walker_store, "bf16")
    assert before == before_bf16  # same initial weights and held-out batch
    assert before - fp32 > 10 * SAME_LOSS_RTOL * abs(fp32)  # training moved the loss a lot ...
    assert abs(bf16_loss - fp32) <= SAME_LOSS_RTOL * abs(fp32)  # ... and bf16 lands at the same place


def test_latent_model_imagines_in_fp32_state_under_autocast(walker_store):
    from lompo_bench.algorithms.base import DataSpec
    from lompo_bench.algorithms.latent_model import LatentModel, LatentState

    spec = DataSpec.from_dataset(walker_store)
    torch.manual_seed(0)
    model = LatentModel(spec.image_shape, spec.proprio_dim, spec.action_dim, depth=8, deter=32, stoch=8, hidden=32,
                        heads=3, reward_hidden=32)
    batch = windows(walker_store, seed=0)
    with torch.no_grad(), bf16():
        posts, _, _ = model.observe(model.embed({"image": batch["image"]}), batch["action"], batch["is_first"])
        start = LatentState(posts.deter.flatten(0, 1), posts.stoch.flatten(0, 1))
        out = model.rollout(start, 3, penalty_scale=1.0)
    assert {v.dtype for v in out.values()} == {torch.float32}
    assert out["obs"].shape == (3 * start.deter.shape[0], model.feature_dim)
    assert torch.isfinite(out["reward"]).all() and (out["penalty"] > 0).all()


def train_bc(dataset, precision_name: str, steps: int = 40) -> tuple[float, float]:
    from lompo_bench.algorithms.base import DataSpec
    from lompo_bench.algorithms.bc import BC, BCConfig, to_tensors

    config = BCConfig(steps=steps, batch_size=16, encoder_depth=8, actor_hidden=32, actor_layers=2,
                      precision=precision_name)
    bc = BC(config, DataSpec.from_dataset(dataset), seed=0)
    held_out = dataset.sample_transitions(64, np.random.default_rng(1000))
    obs, action = to_tensors(held_out["obs"], "cpu"), torch.as_tensor(held_out["action"]).float()

    def evaluate():
        with torch.no_grad():
            target = action.clamp(-1 + config.action_eps, 1 - config.action_eps)
            return float(-bc.actor.log_prob(bc.encoder(obs), target).mean())

    before = evaluate()
    for step in range(steps):
        metrics = bc.train_step(dataset, step)
        assert np.isfinite(metrics["bc_loss"])
    return before, evaluate()


def test_bc_trains_to_the_same_loss_in_both_precisions(walker_store):
    before, fp32 = train_bc(walker_store, "fp32")
    before_bf16, bf16_loss = train_bc(walker_store, "bf16")
    assert before == before_bf16
    assert before - fp32 > 10 * SAME_LOSS_RTOL * abs(fp32)
    assert abs(bf16_loss - fp32) <= SAME_LOSS_RTOL * abs(fp32)


def test_precision_is_validated_on_every_config():
    from lompo_bench.algorithms.bc import BCConfig
    from lompo_bench.algorithms.cql import CQLConfig
    from lompo_bench.algorithms.slac import SLACConfig
    from lompo_bench.errors import UserError

    for config in (BCConfig, CQLConfig, SLACConfig):
        assert config().precision == precision.DEFAULT_PRECISION == "bf16"
        assert config(precision="fp32").precision == "fp32"
        with pytest.raises(UserError, match="precision"):
            config(precision="fp16")
    # Policies act one frame at a time: fp32 on CPU (faster at batch 1), the run's precision on a GPU.
    assert precision.acting_precision("bf16", "cpu") == "fp32"
    assert precision.acting_precision("bf16", "cuda") == "bf16"


HEAP_PROBE = """
import resource, torch
from lompo_bench import allocator
from lompo_bench.algorithms.base import DataSpec
from lompo_bench.algorithms.bc import BC
torch.set_num_threads(1)
applied = allocator.tune()
spec = DataSpec(env="walker", image_shape=(64, 64, 3), proprio_dim=0, action_dim=6, horizon=500, action_repeat=2)
bc = BC(BC.config_for("cpu", spec), spec, seed=0)  # the cpu profile's batch 64 at 64 px
obs = {"image": torch.randint(0, 256, (64, 64, 64, 3), dtype=torch.uint8)}
action = torch.rand(64, 6) * 2 - 1
for _ in range(3):
    bc.update(obs, action)
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(8):
    bc.update(obs, action)
print(applied, (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) // 8)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_heap_settings_stop_refaulting_freed_memory():
    """allocator.tune keeps freed tensor memory in the heap: a real BC update at the cpu
    profile's sizes, after warm-up, faults few pages in, where with glibc's defaults
    (LOMPO_BENCH_MALLOC=default) it faults thousands in at every update."""
    import subprocess

    def probe(mode):
        env = {**os.environ, "LOMPO_BENCH_MALLOC": mode, "OMP_NUM_THREADS": "1"}
        out = subprocess.run([sys.executable, "-c", HEAP_PROBE], env=env, capture_output=True, text=True, check=True)
        applied, faults = out.stdout.split()
        return applied == "True", int(faults)

    tuned_applied, tuned = probe("tuned")
    default_applied, default = probe("default")
    assert tuned_applied and not default_applied
    # A ratio, not absolute counts: how many pages a default heap re-faults depends on the machine
    # (measured 1,900-2,800 per update on two; tuned 40-380: 5x fewer at the least).
    assert default > 1000 and tuned * 2 < default, (tuned, default)
