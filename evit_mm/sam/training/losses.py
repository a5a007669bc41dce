"""Phase-2 mask loss: ``bce_weight * BCE + dice_weight * dice`` on point-sampled logits, minimum over outputs.

As the reference trainer (which takes it from SAM-HQ, which takes it from Mask2Former/PointRend):

* the loss is not computed on every pixel but on ``num_points`` points per mask (112 x 112 = 12544): of
  ``oversample_ratio * num_points`` uniformly random points, the ``importance_ratio`` fraction whose predicted
  logit is closest to 0 (the most uncertain), plus uniformly random points for the rest;
* at those points: sigmoid binary cross-entropy (mean over points) and the dice loss
  ``1 - (2 sum(p t) + 1) / (sum p + sum t + 1)``;
* with several output masks per prompt (multimask), only the best one (lowest loss) counts.

The logits are sampled bilinearly from the decoder's 256x256 low-res output and the targets from the padded
encoder-size masks (both cover the same padded square), which is what upsampling the logits first and then
sampling would give, without materialising the upsampled maps. Random points come from a ``torch.Generator``
seeded per image, so a resumed run samples what the uninterrupted run sampled.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
import torch.nn.functional as F

__all__ = ['point_sample', 'uncertain_points', 'sam_mask_loss', 'mask_iou_logits']


def point_sample(maps: torch.Tensor, coords: torch.Tensor) -> torch.Tensor:
    """Bilinear values of ``maps`` ``(K, C, H, W)`` at ``coords`` ``(K, P, 2)`` (x, y in [0, 1], over the whole
    map) -> ``(K, C, P)``. Points in the outer half pixel take the border values (PointRend pads with zeros,
    which halves logits and targets there and makes the image border look uncertain)."""
    grid = (2.0 * coords - 1.0).unsqueeze(2)
    return F.grid_sample(maps, grid, mode='bilinear', padding_mode='border', align_corners=False).squeeze(3)


def uncertain_points(logits: torch.Tensor, num_points: int, oversample_ratio: float, importance_ratio: float,
                     generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """PointRend's training point selection for ``logits`` ``(K, 1, H, W)`` -> coords ``(K, num_points, 2)``."""
    k = logits.shape[0]
    num_over = max(num_points, int(num_points * oversample_ratio))
    num_important = int(importance_ratio * num_points)
    num_random = num_points - num_important
    coords = torch.rand(k, num_over, 2, generator=generator, device=logits.device)
    with torch.no_grad():
        uncertainty = -point_sample(logits.detach().float(), coords)[:, 0].abs()
    top = uncertainty.topk(num_important, dim=1).indices
    chosen = torch.gather(coords, 1, top.unsqueeze(-1).expand(-1, -1, 2))
    if num_random:
        extra = torch.rand(k, num_random, 2, generator=generator, device=logits.device)
        chosen = torch.cat([chosen, extra], dim=1)
    return chosen


def sam_mask_loss(logits: torch.Tensor, targets: torch.Tensor, num_points: int = 112 * 112,
                  oversample_ratio: float = 3.0, importance_ratio: float = 0.75, bce_weight: float = 20.0,
                  dice_weight: float = 1.0, generator: Optional[torch.Generator] = None
                  ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-prompt losses.

    Args:
        logits: ``(N, C, h, w)`` mask logits (C outputs per prompt).
        targets: ``(N, H, W)`` ground truth in [0, 1] (soft masks allowed), covering the same square.
    Returns:
        ``(loss, bce, dice)``, each ``(N,)``: the weighted loss of the best output of each prompt, and that
        output's BCE and dice terms.
    """
    n, c = logits.shape[:2]
    flat = logits.float().reshape(n * c, 1, *logits.shape[-2:])
    target = targets.float().unsqueeze(1).repeat_interleave(c, dim=0)
    coords = uncertain_points(flat, num_points, oversample_ratio, importance_ratio, generator)
    point_logits = point_sample(flat, coords)[:, 0]
    point_targets = point_sample(target, coords)[:, 0]
    bce = F.binary_cross_entropy_with_logits(point_logits, point_targets, reduction='none').mean(-1)
    prob = point_logits.sigmoid()
    dice = 1 - (2 * (prob * point_targets).sum(-1) + 1) / (prob.sum(-1) + point_targets.sum(-1) + 1)
    loss = (bce_weight * bce + dice_weight * dice).reshape(n, c)
    best = loss.argmin(dim=1, keepdim=True)
    pick = lambda t: t.reshape(n, c).gather(1, best)[:, 0]  # noqa: E731
    return pick(loss), pick(bce), pick(dice)


def mask_iou_logits(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """IoU of each predicted mask (logit > 0) with its target, at the logits' resolution: ``(N, C)``. The targets
    ``(N, H, W)`` are area-averaged to that resolution and thresholded at 0.5."""
    t = F.interpolate(targets.float().unsqueeze(1), logits.shape[-2:], mode='area') >= 0.5
    p = logits > 0
    inter = (p & t).flatten(2).sum(-1).float()
    union = (p | t).flatten(2).sum(-1).float()
    return inter / union.clamp(min=1)
