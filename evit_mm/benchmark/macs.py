"""Parameter and multiply-accumulate counts (the papers' convention: conv + matmul MACs per image)."""
from __future__ import annotations

import copy

import torch
from torch import nn


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def count_macs(model: nn.Module, input_size: tuple[int, int] | int, device='cpu') -> int:
    """Multiply-accumulates of one image (FlopCounterMode counts 2 FLOPs per MAC: conv and matmul ops only)."""
    return macs_and_output_shape(model, input_size, device)[0]


def macs_and_output_shape(model: nn.Module, input_size: tuple[int, int] | int, device='cpu'
                          ) -> tuple[int, list[int]]:
    """Multiply-accumulates of one image and the shape of its (first) output, without the batch dimension.

    Counted on a copy on the ``meta`` device (no arithmetic, so even SAM ViT-H takes a moment); models that do not
    run on ``meta`` are counted with a real forward."""
    from torch.utils.flop_counter import FlopCounterMode
    h, w = (input_size, input_size) if isinstance(input_size, int) else input_size
    for dev in ('meta', device):
        counter = FlopCounterMode(display=False)
        try:
            m = copy.deepcopy(model).to(dev) if dev == 'meta' else model
            with counter, torch.inference_mode():
                out = m(torch.zeros(1, 3, h, w, device=dev))
            out = out if isinstance(out, torch.Tensor) else out[0]
            return counter.get_total_flops() // 2, list(out.shape[1:])
        except Exception:  # noqa: BLE001 - an op without a meta kernel: count for real
            if dev != 'meta':
                raise
    raise AssertionError('unreachable')
