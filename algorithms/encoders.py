"""Image encoders and decoders shared by every pixel-based algorithm (Appendix C sizes).

`preprocess_images(uint8 (..., H, W, 3)) -> float (..., 3, H, W)` in [-0.5, 0.5].
`ConvEncoder(image_size, depth=32)`: stride-2, kernel-4 convolutions without padding; 64 px
gets 4 layers [32, 64, 128, 256] (64 -> 31 -> 14 -> 6 -> 2), 128 px gets 5 layers
[32, 64, 128, 256, 256] (128 -> 63 -> 30 -> 14 -> 6 -> 2). Other sizes >= 32 get layers
added while the feature map stays at least 2x2. `.out_dim` is the flattened feature size.
`ConvDecoder(feature_dim, image_size, depth=32)`: Dreamer's decoder, a dense projection to a
1x1 map followed by stride-2 transposed convolutions, returning the *mean* image (the
likelihood is a unit-variance Gaussian, so the log-likelihood is -0.5 * squared error).
See `ConvDecoder` for the exact kernel arithmetic per size.
`ObservationEncoder(image_shape, proprio_dim)`: conv features of the image, concatenated with
an MLP embedding of proprioception where the task has it.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from .networks import activation, mlp



def preprocess_images(images: torch.Tensor) -> torch.Tensor:
    """uint8 (..., H, W, 3) -> float32 (..., 3, H, W) scaled to [-0.5, 0.5] (the authors' scaling).

    Float input is taken as already in [0, 255] pixel units (e.g. a float copy of the frames).
    The result is a channels-last view (what the convolutions want); computed in place on one
    fp32 copy, as it is the largest tensor of a model step."""
    x = images.float() if images.dtype != torch.float32 else images.clone()
    return x.div_(255.0).sub_(0.5).movedim(-1, -3)


def _check_image_size(image_size: int) -> int:
    if not isinstance(image_size, int) or image_size < 32:
        from lompo_bench.errors import UserError

        raise UserError(f"image size {image_size!r} is not supported; accepted: an integer >= 32 (the paper uses 64 and 128)")
    return image_size


def encoder_layer_count(image_size: int) -> int:
    """Stride-2 kernel-4 layers (no padding) while the feature map stays at least 2x2:
    32 -> 3, 64 -> 4 (the paper's Walker encoder), 128 -> 5 (D'Claw/Adroit/Door)."""
    size, layers = _check_image_size(image_size), 0
    while (size - 4) // 2 + 1 >= 2:
        size = (size - 4) // 2 + 1
        layers += 1
    return layers


class ConvEncoder(nn.Module):
    """Image -> flat features. Channels depth * [1, 2, 4, 8, 8, ...], kernel 4, stride 2.

    Input: uint8 (..., H, W, 3) with any leading batch dims (pass `preprocess=False` to feed
    already-preprocessed float (..., 3, H, W)). Output: (..., out_dim)."""

    def __init__(self, image_size: int, depth: int = 32, act: str = "relu"):
        super().__init__()
        self.image_size = image_size
        n = encoder_layer_count(image_size)
        channels = [depth * min(2**i, 8) for i in range(n)]
        layers, in_ch, size = [], 3, image_size
        for ch in channels:
            layers += [nn.Conv2d(in_ch, ch, kernel_size=4, stride=2), activation(act, inplace=True)]
            in_ch, size = ch, (size - 4) // 2 + 1
        self.net = nn.Sequential(*layers)
        self.out_dim = in_ch * size * size
        self.channels = channels

    def forward(self, images: torch.Tensor, preprocess: bool = True) -> torch.Tensor:
        x = preprocess_images(images) if preprocess else images
        batch_shape = x.shape[:-3]
        x = self.net(x.reshape(-1, *x.shape[-3:]))
        return x.reshape(*batch_shape, self.out_dim)


def decoder_layout(image_size: int, depth: int = 32) -> list[tuple[int, int, int]]:
    """(out_channels, kernel, padding) per transposed-conv layer, all stride 2, from a 1x1 map.

    32 px:  kernels [5, 6, 6]            1 -> 5 -> 14 -> 32
    64 px:  kernels [5, 5, 6, 6]         1 -> 5 -> 13 -> 30 -> 64    (Dreamer, paper Appendix C)
    128 px: kernels [5, 5, 6, 6, 4 (p1)] 1 -> 5 -> 13 -> 30 -> 64 -> 128
    The paper lists kernels [5, 5, 5, 4, 4] for 128 px, which from a 1x1 map gives
    1 -> 5 -> 13 -> 29 -> 60 -> 122, not 128, for any stride-2 padding; we keep the paper's
    five layers and channels [128, 64, 32, 32, 3] and use Dreamer's exact 64 px arithmetic
    followed by one exact doubling layer (kernel 4, padding 1). Larger powers of two add more
    doubling layers; other sizes decode to the next power of two down and are resized
    bilinearly to the exact size (see `ConvDecoder`)."""
    size = 2 ** int(math.floor(math.log2(_check_image_size(image_size))))
    n = int(math.log2(size)) - 2  # 32 -> 3, 64 -> 4, 128 -> 5
    if size == 32:
        kernels = [(5, 0), (6, 0), (6, 0)]
    else:
        kernels = [(5, 0), (5, 0), (6, 0), (6, 0)] + [(4, 1)] * (n - 4)
    hidden = [4 * depth, 2 * depth, depth] + [depth] * max(0, n - 4)
    channels = hidden[: n - 1] + [3]
    return [(ch, k, p) for ch, (k, p) in zip(channels, kernels)]


class ConvDecoder(nn.Module):
    """Features (..., feature_dim) -> mean image (..., 3, H, W) in the preprocessed scale.

    Dense projection to a (32 * depth, 1, 1) map, then the transposed convolutions of
    `decoder_layout`. Training uses a unit-variance Gaussian likelihood around this mean,
    compared against `preprocess_images(target)`; `to_uint8` turns a mean into a frame.

    The layers are built as Dreamer builds them (`self.net`, so the state dict is Dreamer's
    layout and old checkpoints load with the same meaning), but `forward` computes the same
    function faster: the first transposed convolution sees a 1x1 map, where it *is* a matrix
    product (out[o, y, x] = sum_c in[c] * W[c, o, y, x] + b[o]), and the maps run channels-last,
    the layout oneDNN's convolutions want. `reference_forward` runs the layers as constructed
    (what the fast path is tested and benchmarked against).

    Under bf16 autocast on CPU, oneDNN's bf16 transposed convolution is slow on small maps: the
    5x5 -> 13x13 layer runs 1.45x faster in fp32 (benchmarks/bench_fastpath.py, measured with
    one thread), so transposed convolutions whose input is smaller than `CPU_FP32_BELOW` px run
    in fp32 there; the larger ones are faster in bf16 and stay in it. Narrow even-kernel layers
    without padding (at most `SUBPIXEL_MAX_OUT` output channels: the image layer, and the
    13x13 -> 30x30 layer at the cpu profile's depth 16) run as the sub-pixel convolution they
    equal (`_subpixel`): one ordinary convolution to 4 x O channels on the padded input, then
    an interleave of the four phases. Measured (one thread, fwd + bwd, batch 512, idle): image
    layer 89 vs 110 ms, 13 -> 30 layer 69 vs 82 ms; wider layers were not measured."""

    CPU_FP32_BELOW = 8
    SUBPIXEL_MAX_OUT = 16  # transposed convs with at most this many output channels go sub-pixel

    def __init__(self, feature_dim: int, image_size: int, depth: int = 32, act: str = "relu"):
        super().__init__()
        self.image_size = image_size
        self.embed_channels = 32 * depth
        self.project = nn.Linear(feature_dim, self.embed_channels)
        layers, in_ch, size = [], self.embed_channels, 1
        layout = decoder_layout(image_size, depth)
        for i, (ch, k, p) in enumerate(layout):
            layers.append(nn.ConvTranspose2d(in_ch, ch, kernel_size=k, stride=2, padding=p))
            if i < len(layout) - 1:
                layers.append(activation(act, inplace=True))
            in_ch, size = ch, (size - 1) * 2 - 2 * p + k
        self.net = nn.Sequential(*layers)
        self.decoded_size = size  # equals image_size for powers of two

    def _first_layer_as_matmul(self, x: torch.Tensor) -> torch.Tensor:
        """net[0] on a (N, C) 1x1 map as one matmul -> (N, O, k, k) channels-last. Exact unless
        padding crops the k x k output (never for `decoder_layout`'s first layer)."""
        first = self.net[0]
        c, o, kh, kw = first.weight.shape
        if first.padding != (0, 0):
            return first(x.reshape(-1, c, 1, 1)).contiguous(memory_format=torch.channels_last)
        # Weight (C, O, kh, kw) -> rows (kh, kw, O): the product lands directly in channels-last order.
        weight = first.weight.permute(2, 3, 1, 0).reshape(kh * kw * o, c)
        y = F.linear(x, weight, first.bias.repeat(kh * kw))
        return y.reshape(-1, kh, kw, o).permute(0, 3, 1, 2)  # (N, O, kh, kw), channels-last strides

    @staticmethod
    def _subpixel(layer: nn.ConvTranspose2d, x: torch.Tensor) -> torch.Tensor:
        """A stride-2, padding-0, even-kernel (2k) transposed convolution as the same function:
        output pixel (2i + a, 2j + b) sums x[i - t, j - u] * W[:, :, 2t + a, 2u + b] over
        t, u < k, which is a k x k convolution of the input padded by k - 1 whose 4 x O output
        channels are the phases (a, b), interleaved back by a pixel shuffle."""
        c, o, kh, kw = layer.weight.shape
        k = kh // 2
        # W[c, o, 2t + a, 2u + b] -> K[a, b, o, c, k-1-t, k-1-u] (a correlation reads the taps reversed);
        # phase-major output channels, so the interleave is one copy of (b, o) runs (`_PhaseShuffle`).
        w = layer.weight.reshape(c, o, k, 2, k, 2).permute(3, 5, 1, 0, 2, 4).flip(-1, -2).reshape(4 * o, c, k, k)
        y = F.conv2d(F.pad(x, (k - 1,) * 4), w, layer.bias.repeat(4))
        return _PhaseShuffle.apply(y.contiguous(memory_format=torch.channels_last))

    @classmethod
    def _subpixel_applies(cls, layer: nn.ConvTranspose2d) -> bool:
        kh, kw = layer.kernel_size
        return (layer.out_channels <= cls.SUBPIXEL_MAX_OUT and kh == kw and kh % 2 == 0 and layer.stride == (2, 2)
                and layer.padding == (0, 0) and layer.output_padding == (0, 0) and layer.dilation == (1, 1))

    def _finish(self, x: torch.Tensor, batch_shape) -> torch.Tensor:
        if self.decoded_size != self.image_size:
            x = F.interpolate(x, size=(self.image_size, self.image_size), mode="bilinear", align_corners=False)
        return x.reshape(*batch_shape, 3, self.image_size, self.image_size)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        batch_shape = features.shape[:-1]
        x = self._first_layer_as_matmul(self.project(features).reshape(-1, self.embed_channels))
        cpu_bf16 = x.device.type == "cpu" and torch.is_autocast_enabled("cpu")
        for layer in self.net[1:]:
            if cpu_bf16 and isinstance(layer, nn.ConvTranspose2d) and x.shape[-1] < self.CPU_FP32_BELOW:
                with torch.autocast("cpu", enabled=False):
                    x = layer(x.float())
            elif cpu_bf16 and isinstance(layer, nn.ConvTranspose2d) and self._subpixel_applies(layer):
                x = self._subpixel(layer, x)
            else:
                x = layer(x)
        return self._finish(x, batch_shape)

    def reference_forward(self, features: torch.Tensor) -> torch.Tensor:
        """The decoder exactly as constructed: the projection to a 1x1 map and every transposed
        convolution as a layer, contiguous (NCHW) maps."""
        batch_shape = features.shape[:-1]
        x = self.project(features).reshape(-1, self.embed_channels, 1, 1)
        return self._finish(self.net(x), batch_shape)

    @staticmethod
    def to_uint8(mean: torch.Tensor) -> torch.Tensor:
        """(..., 3, H, W) mean in [-0.5, 0.5] -> uint8 (..., H, W, 3)."""
        return ((mean.float().clamp(-0.5, 0.5) + 0.5) * 255.0).round().to(torch.uint8).movedim(-3, -1)


class _PhaseShuffle(torch.autograd.Function):
    """(N, 4 * O, h, w) channels-last, channel (2a + b) * O + o -> (N, O, 2h, 2w) channels-last
    with out[:, o, 2i + a, 2j + b] = in[:, (2a + b) * O + o, i, j]: F.pixel_shuffle with the phases
    major, so each direction is one copy of contiguous (b, o) runs (2.5-4x faster than
    pixel_shuffle's forward and backward on channels-last bf16 maps)."""

    @staticmethod
    def forward(ctx, y: torch.Tensor) -> torch.Tensor:
        n, c4, h, w = y.shape
        o = c4 // 4
        out = torch.empty((n, o, 2 * h, 2 * w), dtype=y.dtype, device=y.device, memory_format=torch.channels_last)
        # A fresh tensor, not a view: the next layer's activation may run in place on it.
        out.permute(0, 2, 3, 1).view(n, h, 2, w, 2, o).copy_(
            y.permute(0, 2, 3, 1).reshape(n, h, w, 2, 2, o).permute(0, 1, 3, 2, 4, 5))
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        n, o, hh, ww = grad.shape
        h, w = hh // 2, ww // 2
        g = grad.contiguous(memory_format=torch.channels_last)
        out = torch.empty((n, 4 * o, h, w), dtype=g.dtype, device=g.device, memory_format=torch.channels_last)
        out.permute(0, 2, 3, 1).view(n, h, w, 2, 2, o).copy_(
            g.permute(0, 2, 3, 1).view(n, h, 2, w, 2, o).permute(0, 1, 3, 2, 4, 5))
        return out


class _GaussianImageLogLikelihood(torch.autograd.Function):
    """-0.5 * ||mean - target||^2 per image, in fp32, with two passes over the pixels forward
    and one backward (the autograd of the plain expression makes ~6 image-sized passes and
    copies, a fifth of a model step at the cpu sizes). The target gets no gradient."""

    @staticmethod
    def forward(ctx, mean: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        diff = torch.sub(mean, target.float())  # a bf16 mean is promoted: the error is fp32
        ctx.save_for_backward(diff)
        ctx.mean_dtype = mean.dtype
        return -0.5 * torch.linalg.vector_norm(diff, dim=(-3, -2, -1)).square()

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (diff,) = ctx.saved_tensors
        return (diff * -grad[..., None, None, None]).to(ctx.mean_dtype), None


def image_log_likelihood(mean: torch.Tensor, images: torch.Tensor, target: torch.Tensor | None = None) -> torch.Tensor:
    """Unit-variance Gaussian log-likelihood per image (summed over pixels, constants dropped),
    computed in fp32 whatever the mean's dtype.

    mean: (..., 3, H, W) decoder output; images: uint8 (..., H, W, 3); `target`: the images
    already through `preprocess_images`, where the caller has them. Returns (...)."""
    target = preprocess_images(images) if target is None else target
    return _GaussianImageLogLikelihood.apply(mean, target)


class ObservationEncoder(nn.Module):
    """Observation dict -> features: conv features of `image`, plus an MLP embedding of
    `proprio` concatenated to them where the task has proprioception (proprio_dim > 0).

    Inputs are tensors with any leading batch dims: `image` uint8 (..., H, W, 3), `proprio`
    float (..., P). `.out_dim` = conv features + proprio embedding size."""

    def __init__(self, image_shape, proprio_dim: int = 0, depth: int = 32, proprio_hidden: int = 256,
                 proprio_layers: int = 2, proprio_out: int = 128, act: str = "relu"):
        super().__init__()
        image_size = int(image_shape[0])
        if tuple(image_shape) != (image_size, image_size, 3):
            from lompo_bench.errors import UserError

            raise UserError(f"image shape {tuple(image_shape)} is not supported; accepted: square RGB (S, S, 3)")
        self.conv = ConvEncoder(image_size, depth, act=act)
        self.proprio_dim = int(proprio_dim)
        self.proprio = (mlp(self.proprio_dim, proprio_out, proprio_hidden, proprio_layers, act="elu")
                        if self.proprio_dim else None)
        self.out_dim = self.conv.out_dim + (proprio_out if self.proprio_dim else 0)

    def forward(self, obs: dict, preprocessed_image: torch.Tensor | None = None) -> torch.Tensor:
        """`preprocessed_image`: `preprocess_images(obs["image"])`, where the caller has it (a
        model that also reconstructs the frames computes it once)."""
        features = (self.conv(obs["image"]) if preprocessed_image is None
                    else self.conv(preprocessed_image, preprocess=False))
        if self.proprio is not None:
            features = torch.cat([features, self.proprio(obs["proprio"].float())], -1)
        return features
