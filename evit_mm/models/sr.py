"""EfficientViT for single-image super-resolution (pure PyTorch, no mm imports).

The EfficientViT paper (Cai et al., ICCV 2023) reports super-resolution results (lightweight SR on DIV2K ->
BSD100 x2, and high-resolution SR on FFHQ 512 -> 1024), but its SR code was never released
(mit-han-lab/efficientvit issue #45). This network is evit_mm's own design around the paper's EfficientViT
module; docs/super_resolution.md explains the choices and compares it with mmagic's SR models.

Data flow (``s`` = upscale factor, ``d`` = working stride, ``C`` = ``channels``, ``W`` = ``width``)::

    x (N,3,H,W) in [0,1] ----------------------------------------------------------- bicubic x s ---+
      |                                                                                            |
      head: conv3x3 3->C                       (shallow features, LR resolution)                   |
      |------------------------------------------------ long skip -------+                        |
      to_work: PixelUnshuffle(d) + conv1x1 C*d^2 -> W                      |                        |
      body: depth x EfficientViTBlock(W)  (LiteMLA + MBConv, H/d x W/d)   |                        |
      from_work: conv1x1 W -> C*d^2 + PixelShuffle(d)  --------------------+ (+)                    |
      fuse: conv3x3 C->C                       (local detail back at LR resolution)                |
      upsampler: conv3x3 C -> 3*s^2 + PixelShuffle(s)  ----------------------------------------- (+) -> y

* **Where the speed comes from.** All EfficientViT blocks run at ``1/d`` of the LR resolution (``d = 2`` for
  the lightweight setting, ``4`` for 512x512 -> 1024 high-resolution inputs), i.e. on ``d^2`` times fewer
  tokens; pixel-unshuffle keeps every input pixel (it is a lossless space-to-depth), so nothing is thrown away
  before the first learned layer. LiteMLA's global ReLU linear attention costs O(tokens), so the whole network
  is linear in the number of pixels, unlike window attention (SwinIR) or transposed attention over channels
  (Restormer) whose constants are much larger.
* **Global residual.** The network predicts the difference to bicubic upsampling, so an untrained network is
  already a bicubic upsampler and training only has to learn the missing high frequencies.
* **Norms.** The EfficientViT module uses BatchNorm after LiteMLA's projection and the MBConv's last conv.
  For SR, where the exact intensity scale matters and batches are small patches, BN is commonly dropped (EDSR,
  SwinIR use none / LayerNorm). ``norm='none'`` (default) removes these BNs and gives their convs a bias;
  ``norm='bn'`` keeps the module exactly as in the classification/segmentation backbones.
* **Any input size.** Inputs whose sides are not multiples of ``d`` are padded (reflection) to the next
  multiple and the output is cropped back to ``s*H x s*W``.

Input / output range: ``forward`` takes ``N,3,H,W`` images in ``[0, 1]`` and returns ``N,3,s*H,s*W`` in the
same range (not clamped). mmagic's ``DataPreprocessor(mean=[0,0,0], std=[255,255,255])``, which every mmagic SR
config uses, produces exactly that.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .efficientvit_mit import ConvNormAct, EfficientViTBlock
from .registry import SR_PRESETS as _SR_PRESETS

__all__ = ['EfficientViTSR', 'efficientvit_sr_lightweight', 'efficientvit_sr_highres', 'SR_PRESETS']

#: Named settings (``lightweight``: DIV2K x2/x3/x4 for small LR images; ``highres``: FFHQ 512 -> 1024 at a
#: stride-4 working resolution), declared in the registry (:data:`evit_mm.models.registry.SR_PRESETS`).
SR_PRESETS: dict[str, dict] = _SR_PRESETS


def _round_to(value: float, divisor: int = 8) -> int:
    return max(divisor, int(value / divisor + 0.5) * divisor)  # half rounds up: 36 -> 40


def _strip_batchnorm_(module: nn.Module) -> None:
    """Remove every BatchNorm of the EfficientViT blocks in place: the conv in front of it gets a (zero) bias
    instead, so a BN-free block has the same parameter layout as ``fewer_norm`` convs elsewhere."""
    for m in module.modules():
        if isinstance(m, ConvNormAct) and m.norm is not None:
            if m.conv.bias is None:
                m.conv.bias = nn.Parameter(torch.zeros(m.conv.out_channels))
            m.norm = None


class EfficientViTSR(nn.Module):
    """EfficientViT super-resolution network (see the module docstring for the data flow and the reasons).

    The defaults are the ``lightweight`` preset (:data:`SR_PRESETS`).

    Args:
        scale: upscale factor (2, 3 or 4; any integer >= 1 works).
        width_mult: multiplies ``channels`` and ``width`` (the paper's 0.75-width variant is ``0.75``); both are
            rounded to multiples of 8.
        in_channels: image channels (3).
        channels: feature width at LR resolution (shallow features, fuse conv, upsampler).
        width: feature width of the EfficientViT blocks at the working resolution.
        depth: number of EfficientViT blocks.
        down: working stride (2 or 4): the blocks see ``H/down x W/down`` tokens.
        dim: LiteMLA head dimension (heads = width // dim).
        expand_ratio: MBConv expansion of the blocks.
        scales: LiteMLA multi-scale aggregation kernel sizes.
        act: activation of the MBConvs (an efficientvit_mit name: 'hswish', 'gelu', 'relu', ...).
        norm: ``'none'`` (default, BN-free blocks) or ``'bn'`` (the EfficientViT module's BatchNorms).
        residual: interpolation of the global residual: ``'bicubic'`` (default), ``'bilinear'`` or ``'none'``.
    """

    def __init__(self, scale: int = 2, width_mult: float = 1.0, in_channels: int = 3, channels: int = 48,
                 width: int = 128, depth: int = 6, down: int = 2, dim: int = 16, expand_ratio: float = 2,
                 scales: Sequence[int] = (5,), act: str = 'hswish', norm: str = 'none',
                 residual: str = 'bicubic'):
        super().__init__()
        if int(scale) != scale or scale < 1:
            raise ValueError(f'EfficientViTSR: scale must be a positive integer, got {scale!r}')
        if down < 1 or int(down) != down:
            raise ValueError(f'EfficientViTSR: down must be a positive integer, got {down!r}')
        if norm not in ('none', 'bn'):
            raise ValueError(f"EfficientViTSR: norm must be 'none' or 'bn', got {norm!r}")
        if residual not in ('bicubic', 'bilinear', 'none'):
            raise ValueError(f"EfficientViTSR: residual must be 'bicubic', 'bilinear' or 'none', got {residual!r}")
        if width_mult <= 0:
            raise ValueError(f'EfficientViTSR: width_mult must be > 0, got {width_mult!r}')
        channels = _round_to(channels * width_mult)
        width = _round_to(width * width_mult)
        if width < dim:
            raise ValueError(f'EfficientViTSR: width {width} is smaller than the head dim {dim}')
        self.scale, self.down, self.residual = int(scale), int(down), residual
        self.channels, self.width, self.depth = channels, width, depth
        self.in_channels = in_channels

        self.head = nn.Conv2d(in_channels, channels, 3, padding=1)
        self.to_work = nn.Sequential(nn.PixelUnshuffle(self.down),
                                     nn.Conv2d(channels * self.down ** 2, width, 1))
        self.body = nn.Sequential(*[EfficientViTBlock(width, dim=dim, expand_ratio=expand_ratio, scales=scales,
                                                      act=act) for _ in range(depth)])
        if norm == 'none':
            _strip_batchnorm_(self.body)
        self.from_work = nn.Sequential(nn.Conv2d(width, channels * self.down ** 2, 1), nn.PixelShuffle(self.down))
        self.fuse = nn.Conv2d(channels, channels, 3, padding=1)
        self.upsampler = nn.Sequential(nn.Conv2d(channels, in_channels * self.scale ** 2, 3, padding=1),
                                       nn.PixelShuffle(self.scale))

    def _pad(self, x: torch.Tensor) -> torch.Tensor:
        H, W = x.shape[-2:]
        ph, pw = (-H) % self.down, (-W) % self.down
        if ph or pw:
            # reflection needs pad < size; tiny inputs fall back to replication
            mode = 'reflect' if ph < H and pw < W else 'replicate'
            x = F.pad(x, (0, pw, 0, ph), mode=mode)
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f'EfficientViTSR expects N,{self.in_channels},H,W images, got shape {tuple(x.shape)}')
        H, W = x.shape[-2:]
        shallow = self.head(self._pad(x))
        feat = self.from_work(self.body(self.to_work(shallow)))
        out = self.upsampler(self.fuse(feat + shallow))[..., :H * self.scale, :W * self.scale]
        if self.residual != 'none':
            out = out + F.interpolate(x, scale_factor=self.scale, mode=self.residual, align_corners=False)
        return out

    def extra_repr(self) -> str:
        return f'scale={self.scale}, down={self.down}, residual={self.residual!r}'


def efficientvit_sr_lightweight(scale: int = 2, width_mult: float = 1.0, **kwargs) -> EfficientViTSR:
    """The lightweight setting (DIV2K training, BSD100/Set5/Set14 tests; x2, x3, x4)."""
    return EfficientViTSR(scale, width_mult, **{**SR_PRESETS['lightweight'], **kwargs})


def efficientvit_sr_highres(scale: int = 2, width_mult: float = 1.0, **kwargs) -> EfficientViTSR:
    """The high-resolution setting (FFHQ 512 -> 1024, x2): stride-4 working resolution."""
    return EfficientViTSR(scale, width_mult, **{**SR_PRESETS['highres'], **kwargs})
