"""Batched stochastic augmentations in plain torch ops (no torchvision).

Row r's random draws come from ``(key, ids[r])`` through counter-based hashing, so a view does
not depend on which batch, worker or rank produced it.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from dist_contrast.data.seeding import row_normal, row_uniform

_AFFINE, _NOISE, _ERASE, _DROPOUT = range(1, 5)


class ImageAugment:
    """Random rotation + sub-pixel shift, gaussian noise, and random erasing of one patch.

    Values are clamped back to [0, 1]. Rotation and shift go through one affine resample so
    each image is interpolated once, not twice.

    Shape: [n, C, H, W] -> [n, C, H, W].
    """

    def __init__(
        self, max_shift: float, max_rotation_deg: float, noise_std: float, erase_prob: float
    ) -> None:
        self.max_shift = max_shift
        self.max_rotation_deg = max_rotation_deg
        self.noise_std = noise_std
        self.erase_prob = erase_prob

    def __call__(self, inputs: Tensor, ids: Tensor, key: int) -> Tensor:
        out = self._affine(inputs, ids, key)
        if self.noise_std > 0:
            noise = row_normal(key, _NOISE, ids, out[0].numel()).view_as(out)
            out = out + self.noise_std * noise
        out = self._erase(out, ids, key)
        return out.clamp_(0.0, 1.0)

    def _affine(self, images: Tensor, ids: Tensor, key: int) -> Tensor:
        height, width = images.shape[-2:]
        draws = 2 * row_uniform(key, _AFFINE, ids, 3) - 1  # [n, 3] in (-1, 1)
        angle = draws[:, 0] * math.radians(self.max_rotation_deg)
        cos, sin = angle.cos(), angle.sin()
        # affine_grid works in [-1, 1] coordinates: a shift of s pixels is 2s/size.
        shift_x = draws[:, 1] * 2 * self.max_shift / width
        shift_y = draws[:, 2] * 2 * self.max_shift / height
        theta = torch.stack(
            [torch.stack([cos, -sin, shift_x], 1), torch.stack([sin, cos, shift_y], 1)], 1
        )  # [n, 2, 3]
        grid = F.affine_grid(theta, list(images.shape), align_corners=False)
        return F.grid_sample(images, grid, padding_mode="zeros", align_corners=False)

    def _erase(self, images: Tensor, ids: Tensor, key: int) -> Tensor:
        if self.erase_prob <= 0:
            return images
        height, width = images.shape[-2:]
        draws = row_uniform(key, _ERASE, ids, 5)  # [n, 5]: apply?, size h, size w, top, left
        # Patches a quarter to a half of each side: enough to hide a stroke, not the digit.
        patch_h = (height / 4 + draws[:, 1] * height / 4).ceil()
        patch_w = (width / 4 + draws[:, 2] * width / 4).ceil()
        top = (draws[:, 3] * (height - patch_h + 1)).floor()
        left = (draws[:, 4] * (width - patch_w + 1)).floor()
        rows = torch.arange(height, dtype=torch.float32)[None, :, None]  # [1, H, 1]
        cols = torch.arange(width, dtype=torch.float32)[None, None, :]  # [1, 1, W]
        inside = (
            (rows >= top[:, None, None])
            & (rows < (top + patch_h)[:, None, None])
            & (cols >= left[:, None, None])
            & (cols < (left + patch_w)[:, None, None])
        )  # [n, H, W]
        erase = inside & (draws[:, 0] < self.erase_prob)[:, None, None]
        return images.masked_fill(erase.unsqueeze(1), 0.0)


class FeatureAugment:
    """Gaussian noise plus feature dropout for tabular features.

    Dropped features are set to 0 without the 1/(1-p) rescaling of training dropout: on
    standardised features 0 is the column mean, i.e. "this feature is unknown".

    Shape: [n, D] -> [n, D].
    """

    def __init__(self, noise_std: float, feature_dropout: float) -> None:
        self.noise_std = noise_std
        self.feature_dropout = feature_dropout

    def __call__(self, inputs: Tensor, ids: Tensor, key: int) -> Tensor:
        out = inputs.clone()
        width = inputs.shape[1]
        if self.noise_std > 0:
            out += self.noise_std * row_normal(key, _NOISE, ids, width)
        if self.feature_dropout > 0:
            out *= row_uniform(key, _DROPOUT, ids, width) >= self.feature_dropout
        return out
