"""Image augmentation shared by the pixel-based baselines (BC, CQL, SLAC).

Random shift (DrQ, Kostrikov et al. 2020): move each image by up to `pad` pixels in x and y,
filling the border by repeating the edge pixels. It is the one augmentation that reliably
helps model-free RL from pixels, and costs one gather.

Edge replication is done by clamping the source indices instead of padding a copy, so it
works on uint8 frames straight from the store as well as on float tensors, on any device.
"""

from __future__ import annotations

import torch


def random_shift(images: torch.Tensor, pad: int = 4, *, channels_last: bool = True,
                 generator: torch.Generator | None = None) -> torch.Tensor:
    """Shift `images` by a random integer offset in [-pad, pad] per leading index.

    images: (B, ..., H, W, C) if `channels_last` else (B, ..., C, H, W). One offset is drawn
    per batch element and applied to all its middle dimensions, so a sequence (B, L, ...)
    moves as one. The output keeps the input's layout (channels-last frames stay
    channels-last, which the CPU convolutions prefer). `pad=0` returns the input unchanged."""
    if pad <= 0:
        return images
    h_dim, w_dim = (-3, -2) if channels_last else (-2, -1)
    b, h, w = images.shape[0], images.shape[h_dim], images.shape[w_dim]
    device = images.device
    offsets = torch.randint(-pad, pad + 1, (b, 2), generator=generator,
                            device=generator.device if generator is not None else "cpu").to(device)
    rows = (torch.arange(h, device=device)[None, :] + offsets[:, :1]).clamp_(0, h - 1)  # (B, H)
    cols = (torch.arange(w, device=device)[None, :] + offsets[:, 1:]).clamp_(0, w - 1)  # (B, W)
    row_shape, col_shape = [b] + [1] * (images.dim() - 1), [b] + [1] * (images.dim() - 1)
    row_shape[h_dim], col_shape[w_dim] = h, w
    shifted = images.gather(h_dim, rows.view(row_shape).expand(images.shape))
    return shifted.gather(w_dim, cols.view(col_shape).expand(images.shape))
