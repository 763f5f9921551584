"""Random crop with padding and horizontal flip of a training batch: the
standard CIFAR augmentation.

He, K., Zhang, X., Ren, S., Sun, J., *Deep Residual Learning for Image
Recognition*, CVPR 2016, Sec. 4.2: "4 pixels are padded on each side, and a
32x32 crop is randomly sampled from the padded image or its horizontal flip";
RepDistiller's CIFAR-100 pipeline (``dataset/cifar100.py``:
``RandomCrop(32, padding=4)``, ``RandomHorizontalFlip()``) is the same, with
p = 0.5. For an image x of C x H x W and padding p, per image

    P = x padded by p on each side with the normalised value of black,
        (0 - mean_c) / std_c in channel c (torchvision pads the [0, 1] image
        with 0 before normalising: the same pixels);
    (dy, dx) uniform in {0, ..., 2p}^2,  f ~ Bernoulli(0.5);
    y[c, i, j] = P[c, dy + i, dx + j]             if not f,
                 P[c, dy + i, dx + (W - 1 - j)]   if f (the crop, mirrored).

It runs on the whole batch at once on the batch's device (one offset and one
flip per image), drawn from torch's global random generator in this order:
``randint(0, 2p + 1, (B, 2))`` for (dy, dx), then ``rand(B) < 0.5`` for f.
The training loop re-seeds that generator every epoch from (seed, role,
epoch), so a resumed run draws the same crops; the loop applies it to the
training batch only, before the objective, so a teacher and its student see the
same augmented images, and evaluation never sees it.
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

import torch
from torch import Tensor

from kdlens.data.catalog import DATASETS
from kdlens.errors import UsageError

AUGMENTS = ("none", "crop_flip")
CROP_PADDING = 4  # He et al. 2016, Sec. 4.2; RepDistiller


def black(mean: Sequence[float], std: Sequence[float]) -> tuple[float, ...]:
    """The normalised value of a black pixel, (0 - mean_c) / std_c per channel."""
    return tuple(-m / s for m, s in zip(mean, std))


def crop_flip(images: Tensor, offsets: Tensor, flips: Tensor, padding: int, fill: Sequence[float]) -> Tensor:
    """``images`` (B, C, H, W) padded by ``padding`` with ``fill`` (one value per
    channel), cropped back to H x W at ``offsets`` (B, 2) = (dy, dx) in
    0..2 * padding, and mirrored left to right where ``flips`` (B,) is True."""
    if images.dim() != 4:
        raise UsageError(f"images of shape {tuple(images.shape)}: expected a batch (B, C, H, W)")
    b, c, h, w = images.shape
    if len(fill) != c:
        raise UsageError(f"fill has {len(fill)} values: expected one per channel ({c})")
    if offsets.shape != (b, 2) or bool(((offsets < 0) | (offsets > 2 * padding)).any()):
        raise UsageError(f"offsets of shape {tuple(offsets.shape)}: expected ({b}, 2) in 0..{2 * padding}")
    device = images.device
    value = torch.tensor(fill, dtype=images.dtype, device=device).view(1, c, 1, 1)
    padded = value.expand(b, c, h + 2 * padding, w + 2 * padding).clone()
    padded[:, :, padding:padding + h, padding:padding + w] = images
    offsets = offsets.to(device)
    rows = offsets[:, :1] + torch.arange(h, device=device)  # (B, H)
    columns = torch.arange(w, device=device)
    columns = torch.where(flips.to(device).view(b, 1), w - 1 - columns, columns) + offsets[:, 1:]  # (B, W)
    batch = torch.arange(b, device=device).view(b, 1, 1)
    picked = padded.permute(0, 2, 3, 1)[batch, rows[:, :, None], columns[:, None, :]]  # (B, H, W, C)
    return picked.permute(0, 3, 1, 2).contiguous()


class CropFlip:
    """``crop_flip`` with offsets and flips drawn per image from torch's global generator."""

    def __init__(self, padding: int, fill: Sequence[float]) -> None:
        if isinstance(padding, bool) or not isinstance(padding, int) or padding < 0:
            raise UsageError(f"crop_padding = {padding!r}: expected an integer >= 0")
        self.padding, self.fill = padding, tuple(float(v) for v in fill)

    def __call__(self, images: Tensor) -> Tensor:
        b = images.shape[0]
        offsets = torch.randint(0, 2 * self.padding + 1, (b, 2), device=images.device)
        flips = torch.rand(b, device=images.device) < 0.5
        return crop_flip(images, offsets, flips, self.padding, self.fill)

    def __repr__(self) -> str:
        return f"CropFlip(padding={self.padding}, fill={self.fill})"


def augmentation(data: Any) -> Optional[CropFlip]:
    """The training-batch augmentation a data config section asks for (its
    ``augment`` and ``crop_padding``; black from its dataset's ``mean`` and
    ``std``), or None for ``augment: none`` and sections without the option."""
    kind = getattr(data, "augment", "none")
    if kind == "none":
        return None
    if kind != "crop_flip":
        raise UsageError(f"data.augment = {kind!r}: expected one of {', '.join(AUGMENTS)}")
    dataset = DATASETS.get(data.name)
    return CropFlip(getattr(data, "crop_padding", CROP_PADDING), black(dataset.mean, dataset.std))
