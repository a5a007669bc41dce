"""The EfficientViT-M ImageNet classifier of the paper (backbone + pooled BatchNorm1d + Linear), pure PyTorch."""
from __future__ import annotations

import torch
from torch import nn

from . import efficientvit_msra, fuse


def imagenet_windows(img_size: int) -> tuple[int, int, int]:
    """Per-stage attention windows of the ImageNet EfficientViT-M models at ``img_size`` (timm's rule)."""
    res, windows = img_size // 16, []
    for stage in range(3):
        if stage:
            res = (res - 1) // 2 + 1
        windows.append(max(1, min(7, res)))
    return tuple(windows)


class EfficientViTMClassifier(nn.Module):
    """The ImageNet model of the paper: EfficientViT-M backbone, global average pool, BatchNorm1d, Linear.

    The attention windows are those of the ImageNet models at ``img_size`` (Cream's classification code and
    timm: ``min(7, feature size)`` per stage, computed from ``img_size // 16``, i.e. (7, 7, 4) at 224), so the
    model is exactly timm's ``efficientvit_m*`` (same parameters, same MACs, same outputs for the same weights).
    ``fuse()`` folds the backbone (``EfficientViTM.fuse``) and the head's BatchNorm into the Linear.
    """

    def __init__(self, arch: str, img_size: int = 224, num_classes: int = 1000):
        super().__init__()
        self.backbone = efficientvit_msra.EfficientViTM(arch, out_indices=(2,), window_size=imagenet_windows(img_size))
        channels = self.backbone.embed_dims[-1]
        self.head_bn = nn.BatchNorm1d(channels)
        self.head = nn.Linear(channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.backbone(x)[-1].mean((2, 3))
        return self.head(self.head_bn(x))

    @torch.no_grad()
    def fuse(self) -> 'EfficientViTMClassifier':
        self.backbone.fuse()
        if isinstance(self.head_bn, nn.BatchNorm1d):
            self.head = fuse.fuse_bn_linear(self.head_bn, self.head)
            self.head_bn = nn.Identity()
        return self

    @torch.no_grad()
    def load_timm_state_dict(self, state_dict: dict) -> None:
        """Load a timm ``efficientvit_m*`` state dict (strictly; through evit_mm's converter)."""
        backbone = efficientvit_msra.convert_msra_state_dict(state_dict, fmt='timm',
                                                             window_size=self.backbone.window_sizes)
        self.backbone.load_state_dict(backbone, strict=True)
        for prefix, module in (('head.bn.', self.head_bn), ('head.linear.', self.head)):
            module.load_state_dict({k[len(prefix):]: v for k, v in state_dict.items() if k.startswith(prefix)})
