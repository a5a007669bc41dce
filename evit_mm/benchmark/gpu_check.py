"""The prepared GPU check behind ``tools/gpu_check.py``: every model family on CUDA in one short run.

For each case (EfficientViT-M0/M5 + FPN, B1/L1 + seg head, SAM-L0/XL1 encoder + predictor + a phase-2 training
step, SR lightweight x2) it

1. **numerics**: runs the model on the device in fp32 and under ``torch.autocast`` (bf16, fp16), forward and
   backward, and compares outputs and gradients with a CPU fp32 run of the same weights (the *relative error* is
   ``max |out - ref| / max |ref|`` per output tensor, the largest over the outputs; the gradients are compared
   as one vector, by the norm of the difference); a NaN/inf or an error above the precision's tolerance fails
   the check. TF32 is off for the
   fp32 comparisons, so that they are strict;
2. **deploy and channels_last**: ``evit_mm.deploy`` applied on the device, and the eager model with NHWC weights
   and inputs, compared the same way;
3. **SAM**: ``EfficientViTSamPredictor`` on the device against the CPU predictor (low-res logits, mask IoU), and
   a phase-2 training step (``SamE2EModel.train_step`` with mmengine's ``AmpOptimWrapper``, skipped with the
   reason when mmengine is missing);
4. **throughput**: the :mod:`evit_mm.benchmark` harness (:func:`~evit_mm.benchmark.candidates.
   build_model_candidates`, :func:`~evit_mm.benchmark.timer.measure_setting`, :func:`~evit_mm.benchmark.report.
   paired_ratio`): evit_mm eager and deploy against timm's same architecture (batch 64 at 224 for M/B/L), the
   SAM encoders against segment_anything's ViT-H encoder (batch 16, each at its own size), SR at 128x128;
5. **torch.compile**: the same forms compiled (evit_mm's deploy form, timm's eager model, ViT-H), in priority
   order (SAM-L0 and ViT-H first), each compiled output checked against the eager one on the device.

One overall time budget (``budget_s``) bounds the run: numerics always run, timings and compiles that would not
fit are skipped with a note in the report. Optional libraries (timm, segment_anything, mmengine, scikit-image)
that are missing make their parts *skipped*, with the reason, never a crash.

``dry_run``: the same code on the CPU with tiny sizes and batches, fp32, tiny windows, no compile (unless asked),
a 2-block stand-in for ViT-H, and without SAM-XL1 and L2 unless named, so that a test runs it
(tests/test_benchmark/test_gpu_check.py).

The models are built in one place, :data:`BUILDERS` (and, for the timings, the benchmark's ``MODEL_SPECS``).
"""
from __future__ import annotations

import contextlib
import copy
import datetime
import importlib
import json
import os
import os.path as osp
import sys
import time
import traceback
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any, Callable, Iterator, Sequence

import torch
from torch import nn

from .candidates import build_model_candidates, randomize_
from .macs import count_macs, count_params
from .machine import machine_info
from .report import paired_ratio
from .timer import Candidate, measure_setting
from ..models.registry import create_model

PRECISIONS = ('fp32', 'bf16', 'fp16')
AMP_DTYPES = {'bf16': torch.bfloat16, 'fp16': torch.float16}

#: Relative-error tolerances (``max |out - ref| / max |ref|``) of a device run against the CPU fp32 run.
#: fp32 runs with TF32 off (summation order only); the autocast ones allow the precision's rounding through a
#: deep network with random weights. Gradients (one vector over all parameters, :func:`gradient_error`) get the
#: same tolerances.
TOLERANCES = {'fp32': 1e-3, 'bf16': 0.1, 'fp16': 0.05}
#: A compiled model's output against the eager model's, on the device, under the same autocast.
COMPILE_TOLERANCE = {'fp32': 1e-3, 'bf16': 0.1, 'fp16': 0.05}
#: Lowest acceptable IoU of the predictor's masks on the device against the CPU's (fp32 / autocast).
MASK_IOU_MIN = {'fp32': 0.99, 'bf16': 0.9, 'fp16': 0.9}

#: What a machine without network needs beside torch, timm, numpy, opencv, rich, pyyaml (docs/gpu.md): the pure
#: Python wheels of these packages (versions: tools/env/constraints.txt).
CARRY_PACKAGES = ('mmengine', 'addict', 'termcolor', 'yapf', 'platformdirs', 'segment-anything')


# ------------------------------------------------------------------------------------------------ the models
class BackboneNeck(nn.Module):
    """An EfficientViT-M backbone and its FPN as the detection configs use them: image -> the pyramid's maps."""

    def __init__(self, backbone: nn.Module, neck: nn.Module):
        super().__init__()
        self.backbone, self.neck = backbone, neck

    def forward(self, x: torch.Tensor):
        return tuple(self.neck(self.backbone(x)))


# The FPN of the RetinaNet configs (configs/efficientvit_m/retinanet_efficientvit-m*_fpn_1x_coco.py)
_FPN = dict(out_channels=256, start_level=0, add_extra_convs='on_input', num_outs=5, num_extra_trans_convs=1)


def _m_fpn(name: str, size: tuple[int, int]) -> nn.Module:
    from evit_mm.models import EfficientViTFPN
    backbone = create_model(name, out_indices=(1, 2, 3))
    return BackboneNeck(backbone, EfficientViTFPN(in_channels=list(backbone.out_channels), **_FPN))


def _sam(name: str, size: tuple[int, int]) -> nn.Module:
    return create_model(name, image_size=size[0])


#: The one place the check builds its models, through the model registry (random weights; the caller randomises
#: the BN statistics): the M backbones with the detection configs' FPN, B1/L1 with their Cityscapes seg head.
BUILDERS: dict[str, Callable[[tuple[int, int]], nn.Module]] = {
    'efficientvit_m0': lambda size: _m_fpn('efficientvit_m0', size),
    'efficientvit_m5': lambda size: _m_fpn('efficientvit_m5', size),
    'efficientvit_b1': lambda size: create_model('efficientvit_seg_b1_cityscapes'),
    'efficientvit_l1': lambda size: create_model('efficientvit_seg_l1_cityscapes'),
    'efficientvit_sam_l0': lambda size: _sam('efficientvit_sam_l0', size),
    'efficientvit_sam_xl1': lambda size: _sam('efficientvit_sam_xl1', size),
    'efficientvit_sr_lightweight_x2': lambda size: create_model('efficientvit_sr_lightweight_x2'),
}


@dataclass(frozen=True)
class Case:
    """One model of the check. ``size``/``dry_size``: the numerics input (H, W); ``timed``: the benchmark
    ``MODEL_SPECS`` entry timed for it, at ``timed_size`` / ``dry_timed_size`` with batch ``batch``."""
    name: str
    label: str
    what: str                          # what the numerics run: the module built by BUILDERS[name]
    size: tuple[int, int]
    dry_size: tuple[int, int]
    timed: str
    timed_size: tuple[int, int]
    batch: int
    dry_timed_size: tuple[int, int] = (64, 64)
    sam: bool = False                  # numerics on the image encoder, plus the predictor and the training step
    input_range: str = 'normal'        # 'normal' (randn) or 'unit' (SR: images in [0, 1])
    numerics: bool = True              # False: timed only
    in_dry_run: bool = True            # False: left out of a dry run unless named (the same code as a lighter case)


CASES: dict[str, Case] = {c.name: c for c in [
    Case('efficientvit_m0', 'EfficientViT-M0 + FPN', 'backbone + FPN (RetinaNet config)', (256, 256), (64, 64),
         'efficientvit_m0', (224, 224), 64),
    Case('efficientvit_m5', 'EfficientViT-M5 + FPN', 'backbone + FPN (RetinaNet config)', (256, 256), (64, 64),
         'efficientvit_m5', (224, 224), 64),
    Case('efficientvit_b1', 'EfficientViT-B1 + seg head', 'backbone + seg head (Cityscapes)', (256, 512),
         (64, 128), 'efficientvit_b1', (224, 224), 64),
    Case('efficientvit_l1', 'EfficientViT-L1 + seg head', 'backbone + seg head (Cityscapes)', (256, 512),
         (64, 128), 'efficientvit_l1', (224, 224), 64),
    Case('efficientvit_sam_l0', 'EfficientViT-SAM-L0', 'image encoder', (512, 512), (64, 64),
         'efficientvit_sam_l0', (512, 512), 16, sam=True),
    Case('efficientvit_sam_xl1', 'EfficientViT-SAM-XL1', 'image encoder', (1024, 1024), (64, 64),
         'efficientvit_sam_xl1', (1024, 1024), 16, sam=True, in_dry_run=False),
    Case('efficientvit_sr_lightweight_x2', 'EfficientViT-SR lightweight x2', 'whole network', (128, 128), (32, 32),
         'efficientvit_sr_x2', (128, 128), 64, dry_timed_size=(32, 32), input_range='unit'),
    # the model of the paper's "48.9x SAM-ViT-H" label (A100, TensorRT fp16, batch 16): timed only
    Case('efficientvit_sam_l2', 'EfficientViT-SAM-L2', 'image encoder', (512, 512), (64, 64),
         'efficientvit_sam_l2', (512, 512), 16, numerics=False, in_dry_run=False),
]}

#: Throughput groups, timed in this order (their windows interleave inside a group): the SAM encoders with ViT-H
#: first (the paper's claim), then each backbone beside timm's.
GROUPS = [('sam', ('efficientvit_sam_l0', 'efficientvit_sam_xl1', 'efficientvit_sam_l2')),
          ('m0', ('efficientvit_m0',)), ('b1', ('efficientvit_b1',)), ('l1', ('efficientvit_l1',)),
          ('m5', ('efficientvit_m5',)), ('sr', ('efficientvit_sr_lightweight_x2',))]
#: torch.compile pairs, in priority order: (case, what is compiled beside it); 'sam_vit_h' is the peer.
COMPILE_ORDER = [('efficientvit_sam_l0', 'sam_vit_h'), ('efficientvit_m0', 'timm'), ('efficientvit_b1', 'timm'),
                 ('efficientvit_l1', 'timm'), ('efficientvit_m5', 'timm'), ('efficientvit_sam_xl1', None),
                 ('efficientvit_sr_lightweight_x2', None), ('efficientvit_sam_l2', None)]

#: SAM ViT-H throughput in the paper's figure (A100, TensorRT fp16, batch 16): ~11 images/s, i.e. L2's 538 / 48.9
#: (also XL1's 182 / 16.5); ../shared/reference/peers.md. The encoders' own: evit_mm.benchmark.specs._PAPER_SAM.
PAPER_SAM_VIT_H_IMAGES_PER_S = 538 / 48.9


# ------------------------------------------------------------------------------------------------ small helpers
def optional(module: str) -> str | None:
    """None when ``module`` imports, else the reason it does not (for the report)."""
    try:
        importlib.import_module(module)
    except Exception as err:  # noqa: BLE001 - ImportError, or a library broken on this machine
        return f'{module} is not importable here ({type(err).__name__}: {err})'
    return None


def flat_outputs(out: Any) -> list[torch.Tensor]:
    """The tensors of a model's output (a tensor, or tuples/lists/dicts of them), in order."""
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, dict):
        out = list(out.values())
    if isinstance(out, (tuple, list)):
        return [t for o in out for t in flat_outputs(o)]
    return []


def relative_error(out: Any, ref: Any) -> float:
    """max over the output tensors of ``max |out - ref| / max |ref|``, computed in float64 on the CPU; ``inf``
    when ``out`` has a NaN/inf (or a tensor of another shape)."""
    outs, refs = flat_outputs(out), flat_outputs(ref)
    if len(outs) != len(refs) or not outs:
        return float('inf')
    worst = 0.0
    for o, r in zip(outs, refs):
        o, r = o.detach().cpu().double(), r.detach().cpu().double()
        if o.shape != r.shape or not torch.isfinite(o).all():
            return float('inf')
        worst = max(worst, ((o - r).abs().max() / r.abs().max().clamp(min=1e-30)).item())
    return worst


def gradient_error(grad: torch.Tensor, ref: torch.Tensor) -> float:
    """``|grad - ref| / |ref|`` (Euclidean norms, float64) of two gradient vectors; ``inf`` when ``grad`` has a
    NaN/inf. The norm, not the largest element: under autocast a few of a million gradients may round badly
    without the update being wrong, and the max of the difference is then noise."""
    grad, ref = grad.detach().cpu().double(), ref.detach().cpu().double()
    if grad.shape != ref.shape or not torch.isfinite(grad).all():
        return float('inf')
    return ((grad - ref).norm() / ref.norm().clamp(min=1e-30)).item()


def autocast(device: str, precision: str):
    """``torch.autocast`` for bf16/fp16, nothing for fp32."""
    if precision == 'fp32':
        return contextlib.nullcontext()
    return torch.autocast(device, dtype=AMP_DTYPES[precision])


@contextlib.contextmanager
def strict_fp32() -> Iterator[None]:
    """TF32 off (cuBLAS and cuDNN) for the duration: fp32 on the device then differs from the CPU by summation
    order only."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def _precision_context(device: str, precision: str):
    stack = contextlib.ExitStack()
    if precision == 'fp32':
        stack.enter_context(strict_fp32())
    stack.enter_context(autocast(device, precision))
    return stack


def _sync(device: str) -> None:
    if device == 'cuda':
        torch.cuda.synchronize()


class Deadline:
    """The run's time budget: ``left()`` seconds remain of ``budget_s`` from the start."""

    def __init__(self, budget_s: float, clock: Callable[[], float] = time.perf_counter):
        self.budget_s, self.clock = float(budget_s), clock
        self.start = clock()

    def elapsed(self) -> float:
        return self.clock() - self.start

    def left(self) -> float:
        return self.budget_s - self.elapsed()

    def allows(self, seconds: float) -> bool:
        return self.left() >= seconds


# ------------------------------------------------------------------------------------------------ the report
class Report:
    """Check rows (pass / fail / skip / error, with the measured value and its tolerance), timing rows, notes."""

    def __init__(self, log: Callable[[str], None] = lambda msg: None):
        self.checks: list[dict] = []
        self.throughput: list[dict] = []
        self.models: dict[str, dict] = {}
        self.compile: list[dict] = []
        self.notes: list[str] = []
        self.log = log

    def add(self, case: str, check: str, precision: str = '-', *, value: float | None = None,
            tol: float | None = None, status: str | None = None, note: str = '', higher_is_better: bool = False,
            **extra) -> dict:
        """A check row; without ``status`` it is ``pass`` when ``value`` is finite and within ``tol`` (at most, or
        at least with ``higher_is_better``), else ``fail``."""
        if status is None:
            finite = value is not None and value == value and abs(value) != float('inf')
            within = tol is None or (value >= tol if higher_is_better else value <= tol) if finite else False
            status = 'pass' if finite and within else 'fail'
        row = dict(case=case, check=check, precision=precision, value=value, tol=tol, status=status, note=note,
                   **extra)
        self.checks.append(row)
        shown = '' if value is None else f' {value:.3g}' + (f' (tol {tol:g})' if tol is not None else '')
        self.log(f'[{status}] {case} {check} {precision}{shown}{" - " + note if note else ""}')
        return row

    def skip(self, case: str, check: str, reason: str, precision: str = '-') -> dict:
        return self.add(case, check, precision, status='skip', note=reason)

    def note(self, text: str) -> None:
        self.notes.append(text)
        self.log(f'note: {text}')

    @contextlib.contextmanager
    def guard(self, case: str, check: str, precision: str = '-') -> Iterator[None]:
        """Runs a check's code; an exception becomes an ``error`` row (with the exception) and the run goes on."""
        try:
            yield
        except Exception as err:  # noqa: BLE001 - one broken check must not hide the others
            self.add(case, check, precision, status='error', note=f'{type(err).__name__}: {err}'[:500],
                     traceback=traceback.format_exc(limit=4)[-2000:])
            if torch.cuda.is_available():
                torch.cuda.empty_cache()

    def failed(self) -> list[dict]:
        return [r for r in self.checks if r['status'] in ('fail', 'error')]


# ------------------------------------------------------------------------------------------------ numerics
def _input(case: Case, size: tuple[int, int], batch: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    if case.input_range == 'unit':
        return torch.rand(batch, 3, *size, generator=g)
    return torch.randn(batch, 3, *size, generator=g)


def _build(case: Case, size: tuple[int, int], seed: int) -> nn.Module:
    torch.manual_seed(seed)
    model = BUILDERS[case.name](size)
    randomize_(model, seed)
    return model.eval()


def _loss(out: Any) -> torch.Tensor:
    """A scalar of every output (in float32), so that every output gets a gradient."""
    return sum(t.float().square().mean() for t in flat_outputs(out))


def _gradients(model: nn.Module, x: torch.Tensor, device: str, precision: str, train: bool = False
               ) -> tuple[float, dict]:
    """Forward + backward of a copy of ``model`` on ``device``; (loss, {param name: grad on CPU}).

    Eval mode by default: BatchNorm then normalises with its running statistics, so the gradients are a
    well-conditioned function of the weights (in train mode, a batch of 2 at a coarse stage's 2x2 map leaves
    BatchNorm 8 values to normalise, and rounding differences grow without bound)."""
    m = copy.deepcopy(model).to(device).train(train)
    with _precision_context(device, precision):
        loss = _loss(m(x.to(device)))
        loss.backward()
    grads = {n: p.grad.detach().float().cpu() for n, p in m.named_parameters() if p.grad is not None}
    return loss.item(), grads


def check_numerics(case: Case, model: nn.Module, x: torch.Tensor, device: str, precisions: Sequence[str],
                   report: Report) -> None:
    """Forward (eager, deploy, channels_last) and backward on ``device`` against the CPU fp32 run."""
    from evit_mm.models.deploy import deploy
    with torch.inference_mode():
        ref = model(x)
    ref_loss, ref_grads = _gradients(model, x, 'cpu', 'fp32')
    ref_vec = torch.cat([g.reshape(-1) for g in ref_grads.values()])

    with report.guard(case.name, 'forward eager', '*'):
        m = copy.deepcopy(model).to(device)
        for p in precisions:
            with torch.inference_mode(), _precision_context(device, p):
                out = m(x.to(device))
            report.add(case.name, 'forward eager', p, value=relative_error(out, ref), tol=TOLERANCES[p])
        del m
    with report.guard(case.name, 'forward channels_last', '*'):
        m = copy.deepcopy(model).to(device, memory_format=torch.channels_last)
        xc = x.to(device).contiguous(memory_format=torch.channels_last)
        for p in precisions:
            with torch.inference_mode(), _precision_context(device, p):
                out = m(xc)
            report.add(case.name, 'forward channels_last', p, value=relative_error(out, ref), tol=TOLERANCES[p])
        del m
    with report.guard(case.name, 'forward deploy', '*'):
        m = deploy(copy.deepcopy(model).to(device))  # folded, swapped and made NHWC on the device
        for p in precisions:
            with torch.inference_mode(), _precision_context(device, p):
                out = m(x.to(device))
            report.add(case.name, 'forward deploy', p, value=relative_error(out, ref), tol=TOLERANCES[p])
        del m
    for p in precisions:
        with report.guard(case.name, 'backward', p):
            loss, grads = _gradients(model, x, device, p)
            if set(grads) != set(ref_grads):
                missing = sorted(set(ref_grads) - set(grads))[:5]
                report.add(case.name, 'backward', p, status='fail',
                           note=f'parameters with a gradient differ from the CPU run (e.g. missing {missing})')
                continue
            vec = torch.cat([grads[n].reshape(-1) for n in ref_grads])
            report.add(case.name, 'backward', p, value=gradient_error(vec, ref_vec), tol=TOLERANCES[p],
                       note=f'eval mode; loss {loss:.6g} (CPU fp32 {ref_loss:.6g}); {len(grads)} parameter '
                            'gradients as one vector')
        with report.guard(case.name, 'backward train mode', p):
            loss, grads = _gradients(model, x, device, p, train=True)
            bad = [n for n, g in grads.items() if not torch.isfinite(g).all()]
            finite = not bad and loss == loss and abs(loss) != float('inf')
            report.add(case.name, 'backward train mode', p, status='pass' if finite else 'fail',
                       note=f'loss {loss:.6g}; {len(grads)} gradients, ' +
                            (f'non-finite: {bad[:3]}' if bad else 'all finite') + ' (BatchNorm on batch statistics)')


def _test_image(size: int = 512):
    """An RGB uint8 image: scikit-image's astronaut, or a deterministic random image without scikit-image."""
    import numpy as np
    try:
        from skimage import data
        img = data.astronaut()
    except Exception:  # noqa: BLE001 - scikit-image is optional here
        img = np.random.default_rng(0).integers(0, 256, (size, size, 3), dtype=np.uint8)
    return img[:size, :size]


def check_predictor(case: Case, sam: nn.Module, device: str, precisions: Sequence[str], report: Report) -> None:
    """``EfficientViTSamPredictor`` on ``device`` against the CPU predictor: one box prompt, multimask output."""
    import numpy as np

    from evit_mm.sam import EfficientViTSamPredictor
    img = _test_image()
    h, w = img.shape[:2]
    box = np.array([w * 0.25, h * 0.2, w * 0.75, h * 0.9])

    def predict(model, dev, p):
        predictor = EfficientViTSamPredictor(model)
        with _precision_context(dev, p):
            predictor.set_image(img)
            masks, iou, low = predictor.predict(box=box, multimask_output=True)
        return masks, iou, low

    ref_masks, ref_iou, ref_low = predict(sam, 'cpu', 'fp32')
    dev_sam = copy.deepcopy(sam).to(device)
    for p in precisions:
        with report.guard(case.name, 'predictor', p):
            masks, iou, low = predict(dev_sam, device, p)
            err = relative_error(torch.from_numpy(low), torch.from_numpy(ref_low))
            inter = np.logical_and(masks, ref_masks).sum()
            union = np.logical_or(masks, ref_masks).sum()
            mask_iou = float(inter / union) if union else 1.0
            report.add(case.name, 'predictor logits', p, value=err, tol=TOLERANCES[p],
                       note=f'box prompt on a {w}x{h} image, 3 masks; low-res logits against the CPU fp32 predictor')
            report.add(case.name, 'predictor masks IoU', p, value=mask_iou, tol=MASK_IOU_MIN[p],
                       higher_is_better=True, note='IoU of the 3 binary masks with the CPU fp32 predictor\'s')


@contextlib.contextmanager
def _quiet_mmengine() -> Iterator[None]:
    """mmengine's current logger at WARNING for the duration."""
    import logging

    from mmengine.logging import MMLogger
    logger = MMLogger.get_current_instance()
    level = logger.level
    logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        logger.setLevel(level)


def check_train_step(case: Case, size: int, device: str, amp: str, report: Report, seed: int, steps: int = 3,
                     num_points: int | None = None) -> None:
    """Phase-2 training: ``SamE2EModel.train_step`` on synthetic box-prompted masks with mmengine's
    ``AmpOptimWrapper`` (``OptimWrapper`` on the CPU, where mmengine refuses the AMP one) and the training
    configs' optimizer (AdamW, no decay on norms and biases, gradient clipping)."""
    reason = optional('mmengine') or optional('segment_anything')
    if reason:
        report.skip(case.name, 'phase-2 train step', reason)
        return
    with report.guard(case.name, 'phase-2 train step', amp):
        from mmengine.optim import build_optim_wrapper
        from mmengine.structures import BaseDataElement

        from evit_mm.sam.training import SamE2EModel
        torch.manual_seed(seed)
        loss_cfg = dict(num_points=num_points) if num_points else None
        model = SamE2EModel(sam=dict(variant=case.name.rsplit('_', 1)[-1], image_size=size), loss=loss_cfg)
        model.to(device)
        cuda = device == 'cuda'
        wrapper_cfg = dict(type='AmpOptimWrapper', dtype={'bf16': 'bfloat16', 'fp16': 'float16'}[amp]) if cuda \
            else dict(type='OptimWrapper')
        with _quiet_mmengine():  # its optimizer constructor logs three lines per parameter
            wrapper = build_optim_wrapper(model, dict(
                wrapper_cfg, constructor='SamOptimWrapperConstructor',
                optimizer=dict(type='AdamW', lr=1e-4, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.1),
                paramwise_cfg=dict(custom_keys={'norm': dict(decay_mult=0.0), 'bias': dict(decay_mult=0.0)}),
                clip_grad=dict(max_norm=2.0)))
        g = torch.Generator().manual_seed(seed)
        scale = 1024 / size  # prompts live in SAM's 1024 frame
        samples, inputs = [], []
        for i in range(2):
            inputs.append(torch.randint(0, 256, (3, size, size), generator=g, dtype=torch.uint8).float())
            masks, boxes = torch.zeros(2, size, size, dtype=torch.uint8), []
            for k in range(2):
                x0, y0 = (torch.randint(0, size // 2, (2,), generator=g)).tolist()
                x1, y1 = x0 + size // 4 + k * size // 8, y0 + size // 3
                masks[k, y0:y1, x0:x1] = 255
                boxes.append([x0 * scale, y0 * scale, x1 * scale, y1 * scale])
            samples.append(BaseDataElement(metainfo=dict(multimask=bool(i), sample_seed=seed + i), gt_masks=masks,
                                           boxes=torch.tensor(boxes, dtype=torch.float32)))
        data = dict(inputs=inputs, data_samples=samples)
        before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
        losses = []
        for _ in range(steps):
            log_vars = model.train_step(data, wrapper)
            losses.append(float(torch.as_tensor(log_vars['loss']).detach()))
        _sync(device)
        changed = sum(not torch.equal(before[n], p.detach()) for n, p in model.named_parameters() if n in before)
        finite = all(torch.isfinite(p).all() for p in model.parameters())
        ok = all(v == v and abs(v) != float('inf') for v in losses) and finite and changed > 0
        wrapper_name = type(wrapper).__name__
        scaler = getattr(wrapper, 'loss_scaler', None)
        note = (f'{wrapper_name}; {steps} steps of 2 images at {size}, 2 box prompts each; losses '
                f'{", ".join(f"{v:.4g}" for v in losses)}; {changed}/{len(before)} trainable tensors updated; '
                f'parameters finite: {finite}' + (f'; loss scale {scaler.get_scale():g}' if scaler else ''))
        if not cuda:
            note += " (mmengine's AmpOptimWrapper needs CUDA: the CPU run uses OptimWrapper, fp32)"
        report.add(case.name, 'phase-2 train step', amp if cuda else 'fp32', status='pass' if ok else 'fail',
                   note=note, value=losses[-1])


# ------------------------------------------------------------------------------------------------ throughput
def _tiny_vit_h(size: int) -> nn.Module:
    """The dry run's stand-in for ViT-H: segment_anything's ImageEncoderViT with 2 blocks of width 64."""
    from functools import partial

    from segment_anything.modeling import ImageEncoderViT
    return ImageEncoderViT(img_size=size, patch_size=16, embed_dim=64, depth=2, num_heads=2, mlp_ratio=4,
                           out_chans=256, qkv_bias=True, norm_layer=partial(nn.LayerNorm, eps=1e-6),
                           use_rel_pos=True, window_size=14, global_attn_indexes=(1,)).eval()


def _vit_h_candidate(size: int, batch: int, dry_run: bool, seed: int) -> tuple[Candidate, dict]:
    from .specs import build_sam_vit_encoder
    module = _tiny_vit_h(size) if dry_run else build_sam_vit_encoder('vit_h', size, seed)
    label = 'SAM ViT-H encoder' + (' (dry run: 2 blocks of width 64)' if dry_run else '')
    params, macs = count_params(module), count_macs(module, (size, size))
    cand = Candidate(key='sam_vit_h/sam_vit_h/eager', model_name='sam_vit_h', impl='sam_vit_h', mode='eager',
                     role='peer', module=module, params=params, macs=macs, spec='', input_size=(size, size),
                     cpu_batch=batch, family='efficientvit_sam', peer='sam_vit_h', every_model=False)
    return cand, dict(label=label, params=params, macs=macs, input_size=[size, size], peer='sam_vit_h')


@dataclass
class Timing:
    """The built candidates of the timed groups, kept for the compile phase."""
    by_case: dict[str, list[Candidate]] = field(default_factory=dict)
    vit_h: Candidate | None = None


def timing_precision(opts) -> str:
    """The autocast dtype of the timings and compile checks: ``--amp`` on CUDA, fp32 in the dry run (CPU autocast
    is slow and not what the check is about)."""
    return 'fp32' if opts.dry_run else opts.amp


def _measure(cands: list[Candidate], opts, device: str, t0: float, label: str, log) -> list[dict]:
    amp = timing_precision(opts)
    setting = dict(device=device, protocol='gpu', batch_size=None, latency=False,
                   label=f'{device}, {amp if amp == "fp32" else "autocast " + amp}, fixed batch')
    args = SimpleNamespace(amp='off' if amp == 'fp32' else amp, img_size=None, max_batch=1, warmup=opts.warmup,
                           repeats=opts.repeats, duration=opts.duration, peer_windows='once')
    return measure_setting(cands, setting, args, log, progress=False, t0=t0, desc=label)


def _window_seconds(opts, n: int) -> float:
    """Timing seconds of ``n`` candidates (warm-up and windows; a call that outlasts a window comes on top)."""
    return n * (opts.warmup + opts.repeats * opts.duration)


def _group_seconds(opts, names: Sequence[str]) -> float:
    """A rough estimate of one group's building and timing (three forms per model, ViT-H beside SAM)."""
    return _window_seconds(opts, 3 * len(names) + 1) + 5 * len(names)


def run_throughput(opts, cases: Sequence[Case], device: str, deadline: Deadline, report: Report, t0: float,
                   groups: Sequence[tuple[str, Sequence[str]]] = GROUPS, timing: Timing | None = None) -> Timing:
    """Time every group's eager and deploy forms (and timm's, and ViT-H beside the SAM encoders); adds the built
    candidates to ``timing`` (a new one by default) for :func:`run_compile`."""
    timm_reason = optional('timm')
    sam_reason = optional('segment_anything')
    if timm_reason and not any('timm comparison skipped' in n for n in report.notes):
        report.note(f'timm comparison skipped: {timm_reason}')
    timing = Timing() if timing is None else timing
    selected = {c.name for c in cases}
    for group, names in groups:
        names = [n for n in names if n in selected]
        if not names:
            continue
        if names[0].startswith('efficientvit_sam') and sam_reason:
            report.note(f'throughput of {", ".join(names)} skipped: {sam_reason}')
            continue
        estimate = _group_seconds(opts, names)
        if not deadline.allows(estimate + opts.reserve_s):
            report.note(f'throughput of {", ".join(names)} skipped: {deadline.left():.0f} s of the budget left, '
                        f'about {estimate:.0f} s needed')
            continue
        cands: list[Candidate] = []
        for name in names:
            case = CASES[name]
            size = case.dry_timed_size if opts.dry_run else case.timed_size
            batch = 2 if opts.dry_run else case.batch
            with report.guard(name, 'throughput build'):
                from .specs import MODEL_SPECS
                spec = MODEL_SPECS[case.timed]
                built, info = build_model_candidates(spec, size, [] if timm_reason else ['timm'], opts.seed,
                                                     report.log)
                built = [c for c in built if c.mode in ('eager', 'deploy')]
                for c in built:
                    c.cpu_batch = batch
                    if c.max_abs_diff is not None and c.impl == 'timm':
                        report.add(name, 'CPU output vs timm', 'fp32', value=c.max_abs_diff,
                                   note='max abs diff, same weights (the benchmark\'s check)')
                report.models[name] = {k: v for k, v in info.items() if k != 'paper'} | dict(
                    paper=info.get('paper'), batch=batch)
                timing.by_case[name] = built
                cands += built
        if group == 'sam' and cands:
            size = 64 if opts.dry_run else 1024
            with report.guard('sam_vit_h', 'throughput build'):
                timing.vit_h, report.models['sam_vit_h'] = _vit_h_candidate(size, 2 if opts.dry_run else 16,
                                                                            opts.dry_run, opts.seed)
                report.models['sam_vit_h']['batch'] = timing.vit_h.cpu_batch
                cands.append(timing.vit_h)
        if not cands:
            continue
        with report.guard(group, 'throughput'):
            report.log(f'timing {", ".join(c.key for c in cands)} ({deadline.left():.0f} s left)')
            report.throughput += _measure(cands, opts, device, t0, f'throughput {group}', report.log)
    return timing


def _compile_form(case: str, impl: str, timing: Timing) -> Candidate | None:
    if impl == 'sam_vit_h':
        return timing.vit_h
    mode = 'deploy' if impl == 'evit_mm' else 'eager'
    return next((c for c in timing.by_case.get(case, []) if c.impl == impl and c.mode == mode), None)


def run_compile(opts, device: str, timing: Timing, deadline: Deadline, report: Report, t0: float,
                pairs: Sequence[tuple[str, str | None]] = COMPILE_ORDER, keep_s: float = 0.0) -> None:
    """Compile ``pairs`` (of :data:`COMPILE_ORDER`) in turn while the budget allows, keeping ``keep_s`` seconds
    for what comes after; check and time each pair. A compile's time is estimated from the slowest so far (or
    ``opts.compile_guess_s`` before the first)."""
    amp = timing_precision(opts)
    for case, other in pairs:
        sources = [c for c in (_compile_form(case, 'evit_mm', timing),
                               _compile_form(case, other, timing) if other else None) if c is not None]
        if not sources:
            continue
        names = ' and '.join(c.key for c in sources)
        guess = max([c['seconds'] * 1.2 for c in report.compile], default=opts.compile_guess_s)
        need = guess * len(sources) + _window_seconds(opts, len(sources)) + opts.reserve_s + keep_s
        if not deadline.allows(need):
            report.note(f'torch.compile of {names} skipped: {deadline.left():.0f} s of the budget left, about '
                        f'{need:.0f} s needed (compile time estimated at {guess:.0f} s per model)')
            continue
        compiled = []
        for src in sources:
            with report.guard(src.model_name, 'compile', amp):
                module = torch.compile(src.module, backend=getattr(opts, 'compile_backend', 'inductor'))
                h, w = src.input_size
                x = torch.randn(src.cpu_batch, 3, h, w, device=device)
                src.module.to(device)
                start = time.perf_counter()
                with torch.inference_mode(), autocast(device, amp):
                    out = module(x)
                    _sync(device)
                    seconds = time.perf_counter() - start
                    eager = src.module(x)
                report.compile.append(dict(key=src.key, seconds=round(seconds, 1)))
                report.add(src.model_name, f'compile ({src.impl} {src.mode})', amp,
                           value=relative_error(out, eager), tol=COMPILE_TOLERANCE[amp],
                           note=f'compiled in {seconds:.1f} s; output against the eager module on the device, '
                                f'batch {src.cpu_batch}')
                del out, eager, x
                compiled.append(Candidate(**{**src.__dict__, 'key': f'{src.model_name}/{src.impl}/compile',
                                             'mode': 'compile', 'module': module}))
        if compiled:
            with report.guard(case, 'throughput compile'):
                report.throughput += _measure(compiled, opts, device, t0, f'compiled {names}', report.log)
        for c in compiled:
            c.module = None  # free the compiled graph's buffers
        if device == 'cuda':
            torch.cuda.empty_cache()


def ratios(rows: Sequence[dict]) -> list[dict]:
    """Paired throughput ratios (:func:`~evit_mm.benchmark.report.paired_ratio`): evit_mm against timm's same
    architecture, the compiled forms against the eager ones, the SAM encoders against ViT-H (with the paper's)."""
    by = {(r['model'], r['impl'], r['mode']): r for r in rows}
    out = []

    def add(model, name, a, b, **extra):
        if a in by and b in by:
            out.append(dict(model=model, ratio=name, value=paired_ratio(by[a], by[b]), **extra))

    for model in dict.fromkeys(r['model'] for r in rows if r['role'] == 'model'):
        add(model, 'eager / timm eager', (model, 'evit_mm', 'eager'), (model, 'timm', 'eager'))
        add(model, 'deploy / timm eager', (model, 'evit_mm', 'deploy'), (model, 'timm', 'eager'))
        add(model, 'compile / timm compile', (model, 'evit_mm', 'compile'), (model, 'timm', 'compile'))
        add(model, 'deploy / eager', (model, 'evit_mm', 'deploy'), (model, 'evit_mm', 'eager'))
        add(model, 'compile / eager', (model, 'evit_mm', 'compile'), (model, 'evit_mm', 'eager'))
        if model.startswith('efficientvit_sam'):
            from .specs import _PAPER_SAM
            paper = _PAPER_SAM.get(model.rsplit('_', 1)[-1], {}).get('a100_images_per_s')
            paper_ratio = round(paper / PAPER_SAM_VIT_H_IMAGES_PER_S, 1) if paper else None
            vit = ('sam_vit_h', 'sam_vit_h')
            add(model, 'eager / SAM ViT-H eager', (model, 'evit_mm', 'eager'), vit + ('eager',), paper=paper_ratio)
            add(model, 'deploy / SAM ViT-H eager', (model, 'evit_mm', 'deploy'), vit + ('eager',), paper=paper_ratio)
            add(model, 'compile / SAM ViT-H compile', (model, 'evit_mm', 'compile'), vit + ('compile',),
                paper=paper_ratio)
    return out


# ------------------------------------------------------------------------------------------------ the run
def select_cases(names: Sequence[str] | None, dry_run: bool = False) -> list[Case]:
    """The cases named (by default all, or in a dry run all with ``in_dry_run``: SAM-XL1 and L2 run the code of
    SAM-L0 with 4-6 times its parameters); ``ValueError`` names an unknown one and lists the known ones."""
    if not names:
        return [c for c in CASES.values() if c.in_dry_run or not dry_run]
    unknown = [n for n in names if n not in CASES]
    if unknown:
        raise ValueError(f"unknown case(s): {', '.join(unknown)}; known: {', '.join(CASES)}")
    return [CASES[n] for n in dict.fromkeys(names)]


def run(opts, command: str = '', log: Callable[[str], None] = lambda msg: None,
        write: Callable[[dict], None] | None = None) -> dict:
    """Run the check (options: see ``tools/gpu_check.py``); returns the result dict (also passed to ``write``
    after each phase, so that a run cut short leaves a report)."""
    deadline = Deadline(opts.budget_s)
    device = 'cpu' if opts.dry_run else 'cuda'
    if device == 'cuda' and not torch.cuda.is_available():
        raise RuntimeError(f'no CUDA GPU is available (torch {torch.__version__}, built with CUDA '
                           f'{torch.version.cuda}); run with --dry-run to exercise the check on the CPU')
    report = Report(log)
    cases = select_cases(opts.models, opts.dry_run)
    if opts.dry_run and not opts.models:
        report.note('dry run: ' + ', '.join(n for n, c in CASES.items() if not c.in_dry_run) + ' left out (the code '
                    'of efficientvit_sam_l0 at 4-6x its parameters; name them with --models to include them)')
    precisions = [p for p in PRECISIONS if p == 'fp32' or p in opts.precisions]
    compile_on = opts.compile == 'on' or (opts.compile == 'auto' and not opts.dry_run)
    result = dict(meta=dict(command=command, date=datetime.datetime.now().isoformat(timespec='seconds'),
                            device=device, dry_run=opts.dry_run, budget_s=opts.budget_s, amp=opts.amp,
                            timing_precision=timing_precision(opts),
                            precisions=precisions, compile=compile_on, seed=opts.seed,
                            compile_backend=getattr(opts, 'compile_backend', 'inductor'),
                            windows=dict(warmup_s=opts.warmup, duration_s=opts.duration, repeats=opts.repeats),
                            tolerances=dict(forward_and_grad=TOLERANCES, compile=COMPILE_TOLERANCE,
                                            mask_iou_min=MASK_IOU_MIN),
                            machine=machine_info([device]), optional={
                                m: optional(m) or 'ok' for m in ('timm', 'segment_anything', 'mmengine', 'skimage')},
                            relative_error='outputs: max |out - ref| / max |ref| per output tensor, the largest '
                                           'over the outputs; gradients: |g - g_ref| / |g_ref| (Euclidean norms) '
                                           'of all parameter gradients as one vector; fp32 with TF32 off'))

    def snapshot(phase: str) -> dict:
        result.update(checks=report.checks, throughput=report.throughput, ratios=ratios(report.throughput),
                      models=report.models, compile=report.compile, notes=report.notes)
        result['meta'].update(elapsed_s=round(deadline.elapsed(), 1), phase=phase)
        if write:
            write(result)
        return result

    torch.manual_seed(opts.seed)
    sam_reason = optional('segment_anything')
    for case in cases:
        if not case.numerics:
            continue
        if case.sam and sam_reason:
            report.skip(case.name, 'numerics', sam_reason)
            continue
        if not deadline.allows(opts.reserve_s):
            report.skip(case.name, 'numerics', f'the budget of {opts.budget_s:g} s is spent')
            continue
        start = time.perf_counter()
        size = case.dry_size if opts.dry_run else case.size
        with report.guard(case.name, 'build'):
            model = _build(case, size, opts.seed)
            target = model.image_encoder if case.sam else model
            x = _input(case, size, 1 if case.sam and not opts.dry_run else 2, opts.seed)
            report.log(f'{case.name}: {case.what} at {size[0]}x{size[1]}, batch {x.shape[0]}')
            check_numerics(case, target, x, device, precisions, report)
            if case.sam:
                check_predictor(case, model, device, precisions, report)
                check_train_step(case, size[0], device, opts.amp, report, opts.seed, steps=2 if opts.dry_run else 3,
                                 num_points=256 if opts.dry_run else None)
            del model, target
        report.log(f'{case.name}: numerics done in {time.perf_counter() - start:.1f} s '
                   f'({deadline.left():.0f} s of the budget left)')
        snapshot(f'numerics {case.name}')

    t0 = time.perf_counter()
    if opts.throughput:
        # the SAM group and its compiled pair (SAM-L0 against ViT-H, the paper's claim) first, keeping time for the
        # other groups' eager timings; then those; then the other compiles, in priority order
        selected = {c.name for c in cases}
        first, rest = GROUPS[:1], GROUPS[1:]
        timing = run_throughput(opts, cases, device, deadline, report, t0, groups=first)
        snapshot('throughput sam')
        if compile_on:
            keep = sum(_group_seconds(opts, [n for n in names if n in selected]) for _, names in rest
                       if any(n in selected for n in names))
            run_compile(opts, device, timing, deadline, report, t0, pairs=COMPILE_ORDER[:1], keep_s=keep)
        run_throughput(opts, cases, device, deadline, report, t0, groups=rest, timing=timing)
        snapshot('throughput')
        if compile_on:
            run_compile(opts, device, timing, deadline, report, t0, pairs=COMPILE_ORDER[1:])
        else:
            report.note('torch.compile skipped (--compile off' + (', the dry run\'s default)' if opts.dry_run else ')'))
    return snapshot('done')


# ------------------------------------------------------------------------------------------------ outputs
def _fmt(v, digits=3):
    if v is None:
        return '–'
    if isinstance(v, float):
        return f'{v:.{digits}g}' if abs(v) >= 1e-3 or v == 0 else f'{v:.1e}'
    return str(v)


def markdown(result: dict) -> str:
    meta, mi = result['meta'], result['meta']['machine']
    failed = [r for r in result['checks'] if r['status'] in ('fail', 'error')]
    counts = {s: sum(r['status'] == s for r in result['checks']) for s in ('pass', 'fail', 'error', 'skip')}
    where = mi.get('gpu') or f"CPU ({mi['cpu']}, dry run)"
    lines = [f"# evit_mm GPU check: {where}", '',
             f"**{'FAILED' if failed else 'passed'}**: {counts['pass']} checks passed, {counts['fail']} failed, "
             f"{counts['error']} errors, {counts['skip']} skipped; {meta['elapsed_s']} s of a {meta['budget_s']:g} s "
             f"budget.", '',
             f"torch {mi['torch']}" + (f", CUDA {mi['cuda']}" if mi.get('cuda') else '') +
             f", timm {mi.get('timm') or '–'}, Python {mi['python']}, evit_mm {mi['evit_mm']}; {meta['date']}; "
             f"`{meta['command']}`", '',
             'Optional libraries: ' + '; '.join(f'{k}: {v}' for k, v in meta['optional'].items()), '',
             f"Relative error: {meta['relative_error']}.", '', '## Checks', '',
             '| case | check | precision | value | tolerance | status | note |', '|---|---|---|---|---|---|---|']
    for r in result['checks']:
        tol = '–' if r['tol'] is None else (f"≥ {r['tol']:g}" if 'IoU' in r['check'] else f"≤ {r['tol']:g}")
        lines.append(f"| {r['case']} | {r['check']} | {r['precision']} | {_fmt(r['value'])} | {tol} | "
                     f"{r['status']} | {r['note'].replace('|', '/')} |")
    if result['throughput']:
        amp = meta['timing_precision']
        lines += ['', f"## Throughput ({amp if amp == 'fp32' else 'autocast ' + amp}, fixed batch; median of "
                      f"{meta['windows']['repeats']} "
                      f"windows of {meta['windows']['duration_s']:g} s after {meta['windows']['warmup_s']:g} s of "
                      'warm-up)', '',
                  '| model | implementation | form | input | batch | images/s | ms / batch | params (M) | GMACs |',
                  '|---|---|---|---|---|---|---|---|---|']
        for r in result['throughput']:
            lines.append(f"| {r['model']} | {r['impl']} | {r['mode']} | {r['input_size'][0]}x{r['input_size'][1]} | "
                         f"{r['batch_size']} | {r['images_per_s']:.1f} | {r['ms_per_batch']:.2f} | "
                         f"{r['params'] / 1e6:.2f} | {r['macs'] / 1e9:.2f} |")
    if result['ratios']:
        lines += ['', '## Ratios (paired windows)', '', '| model | ratio | measured | paper (A100, TensorRT fp16) |',
                  '|---|---|---|---|']
        for r in result['ratios']:
            paper = f"{r['paper']:.1f}x" if r.get('paper') else '–'
            lines.append(f"| {r['model']} | {r['ratio']} | {r['value']:.2f}x | {paper} |")
    if result['compile']:
        lines += ['', 'Compile times: ' + ', '.join(f"{c['key']} {c['seconds']} s" for c in result['compile'])]
    if result['notes']:
        lines += ['', '## Notes', ''] + [f'- {n}' for n in result['notes']]
    return '\n'.join(lines) + '\n'


def write_report(result: dict, out_dir: str) -> dict[str, str]:
    """``gpu_check.json`` and ``gpu_check.md`` in ``out_dir`` (written to a temporary name first)."""
    os.makedirs(out_dir, exist_ok=True)
    paths = dict(json=osp.join(out_dir, 'gpu_check.json'), md=osp.join(out_dir, 'gpu_check.md'))
    for kind, text in (('json', json.dumps(result, indent=1, default=str)), ('md', markdown(result))):
        tmp = paths[kind] + '.tmp'
        with open(tmp, 'w') as f:
            f.write(text)
        os.replace(tmp, paths[kind])
    return paths


# ------------------------------------------------------------------------------------------------ the carry list
def carry_pins(constraints: str | None = None) -> dict[str, str]:
    """The exact versions of :data:`CARRY_PACKAGES` in ``tools/env/constraints.txt``."""
    path = constraints or osp.join(osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__)))), 'tools', 'env',
                                   'constraints.txt')
    pins = {}
    with open(path) as f:
        for line in f:
            name, sep, version = line.split('#')[0].strip().partition('==')
            if sep and name.lower() in CARRY_PACKAGES:
                pins[name.lower()] = version.strip()
    missing = [p for p in CARRY_PACKAGES if p not in pins]
    if missing:
        raise ValueError(f'{path} pins no version of {", ".join(missing)}')
    return {p: pins[p] for p in CARRY_PACKAGES}


def carry_command(dest: str = '.whl', constraints: str | None = None) -> str:
    """The ``pip download`` command that fetches the carry list's wheels for Python 3.12 on x86-64 Linux."""
    pins = carry_pins(constraints)
    return ('python -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp '
            '--platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 '
            f'-d {dest} ' + ' '.join(f'{p}=={v}' for p, v in pins.items()))


def main_module_names() -> list[str]:
    """What the check imports of evit_mm (tests/test_benchmark/test_gpu_check.py imports them with the mm libraries
    blocked)."""
    benchmark = ('gpu_check', 'candidates', 'timer', 'report', 'specs', 'machine', 'macs')
    return ['evit_mm.models', 'evit_mm.models.sam', 'evit_mm.sam', 'evit_mm.models.deploy'] + [
        f'evit_mm.benchmark.{name}' for name in benchmark]


if __name__ == '__main__':  # pragma: no cover
    sys.exit('run tools/gpu_check.py')
