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
    moves as one. `pad=0` returns the input unchanged."""
    if pad <= 0:
        return images
    if channels_last:
        return random_shift(images.movedim(-1, -3), pad, channels_last=False, generator=generator).movedim(-3, -1)
    b, h, w = images.shape[0], images.shape[-2], images.shape[-1]
    device = images.device
    offsets = torch.randint(-pad, pad + 1, (b, 2), generator=generator,
                            device=generator.device if generator is not None else "cpu").to(device)
    rows = (torch.arange(h, device=device)[None, :] + offsets[:, :1]).clamp_(0, h - 1)  # (B, H)
    cols = (torch.arange(w, device=device)[None, :] + offsets[:, 1:]).clamp_(0, w - 1)  # (B, W)
    flat = images.reshape(b, -1, h, w)  # (B, M, H, W), M = everything between batch and space
    m = flat.shape[1]
    row_index = rows[:, None, :, None].expand(b, m, h, w)
    shifted = torch.gather(flat, 2, row_index)
    col_index = cols[:, None, None, :].expand(b, m, h, w)
    shifted = torch.gather(shifted, 3, col_index)
    return shifted.reshape(images.shape)
