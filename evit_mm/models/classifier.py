"""The EfficientViT-M ImageNet classifier of the paper (backbone + pooled BatchNorm1d + Linear), pure PyTorch."""
from __future__ import annotations

import torch
from torch import nn

from . import convert_msra, efficientvit_msra, fuse
from .checkpoint import strip_prefix
from .contract import Fusable, LoadsPretrained


def imagenet_windows(img_size: int) -> tuple[int, int, int]:
    """Per-stage attention windows of the ImageNet EfficientViT-M models at ``img_size`` (timm's rule)."""
    res, windows = img_size // 16, []
    for stage in range(3):
        if stage:
            res = (res - 1) // 2 + 1
        windows.append(max(1, min(7, res)))
    return tuple(windows)


class EfficientViTMClassifier(Fusable, LoadsPretrained, nn.Module):
    """The ImageNet model of the paper: EfficientViT-M backbone, global average pool, BatchNorm1d, Linear.

    The attention windows are those of the ImageNet models at ``img_size`` (Cream's classification code and
    timm: ``min(7, feature size)`` per stage, computed from ``img_size // 16``, i.e. (7, 7, 4) at 224), so the
    model is exactly timm's ``efficientvit_m*`` (same parameters, same MACs, same outputs for the same weights).
    ``fuse()`` folds the backbone (``EfficientViTM.fuse``) and the head's BatchNorm into the Linear;
    ``load_pretrained`` takes timm's ``efficientvit_m*`` state dicts.
    """

    def __init__(self, arch: str, img_size: int = 224, num_classes: int = 1000):
        super().__init__()
        self.backbone = efficientvit_msra.EfficientViTM(arch, out_indices=(-1,), window_size=imagenet_windows(img_size))
        channels = self.backbone.embed_dims[-1]
        self.head_bn = nn.BatchNorm1d(channels)
        self.head = nn.Linear(channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.backbone(x)[-1].mean((2, 3))
        return self.head(self.head_bn(x))

    def _fuse(self) -> None:
        self.backbone.fuse()
        self.head = fuse.fuse_bn_linear(self.head_bn, self.head)
        self.head_bn = nn.Identity()

    def _convert_checkpoint(self, state_dict, fmt):
        """A timm ``efficientvit_m*`` state dict: the backbone through evit_mm's converter, timm's ``head.bn`` /
        ``head.linear`` as ``head_bn`` / ``head``."""
        backbone, report = convert_msra.convert_msra_state_dict(state_dict, fmt='timm' if fmt == 'auto' else fmt,
                                                                window_size=self.backbone.window_sizes,
                                                                return_report=True)
        converted = {f'backbone.{k}': v for k, v in backbone.items()}
        converted.update((f'head_bn.{k}', v) for k, v in strip_prefix(state_dict, 'head.bn.', select=True).items())
        converted.update((f'head.{k}', v) for k, v in strip_prefix(state_dict, 'head.linear.', select=True).items())
        report.dropped = [k for k in report.dropped if not k.startswith(('head.bn.', 'head.linear.'))]
        return converted, report
