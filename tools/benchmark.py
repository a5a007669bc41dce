#!/usr/bin/env python
"""One benchmark for every evit_mm model against what a user would run instead, side by side in one run.

Families (``--models``; a family name selects all its models, ``--quick`` one small model of each):

  efficientvit_m    EfficientViT-M0..M5 ImageNet classifiers   peers: timm (same architecture), MobileNetV3-Large
  efficientvit_b    EfficientViT-B0..B3 backbones              peer:  timm (same architecture, forward_features)
  efficientvit_l    EfficientViT-L0..L3 backbones              peer:  timm (L1..L3; timm has no L0)
  efficientvit_seg  EfficientViT-Seg B0..B3/L1/L2 (Cityscapes) peer:  SegFormer-B1 (mmseg)
  efficientvit_sam  EfficientViT-SAM L0..XL1 image encoders    peers: SAM ViT-B / ViT-H encoders (segment_anything)
  efficientvit_sr   EfficientViT-SR x2 (lightweight)           peer:  SwinIR-light x2 (mmagic)

Forms of each evit_mm model:

  evit_mm eager    the model in eval mode, as trained
  evit_mm deploy   ``evit_mm.deploy(model)``: BNs folded, constant attention biases, channels_last weights
  evit_mm onnx     the deploy form exported to ONNX (``evit_mm.onnx``), run in onnxruntime (CPU only)

and of the peers: ``eager``; timm's same architecture also ``fused`` (``timm.utils.reparameterize_model``),
``channels_last`` (its eager model with NHWC weights, the layout of evit_mm's deploy form) and ``onnx`` (timm's eager
model exported the same way); MobileNetV3-Large also ``channels_last``, ``fused_channels_last`` (BNs folded, as
Cream's speed test removes them, and NHWC weights) and ``onnx``.  The evit_mm and timm models
run identical weights (timm's, with randomised BatchNorm statistics and attention biases, copied through evit_mm's
converters) and their outputs are compared before any timing (``max_abs_diff``; timm's LiteMLA eps is set to the
reference's 1e-15 for the comparison).  Every ONNX graph is checked against its PyTorch model in onnxruntime.

Protocols (those of the papers; Cream's ``classification/speed_test.py`` for the CPU):

  CPU  ``--device cpu``: fp32, ``--threads`` threads (1; ``all``), batch 16 at 224x224 for the M/B/L classifiers
       and backbones, batch 1 for the dense models at their own sizes (seg 512x1024, SAM 512/1024, SR 128x128 LR);
       ``--batch-size`` / ``--img-size`` override both.  onnxruntime runs with the same thread count.
  GPU  ``--device cuda``: autocast (``--amp fp16``, the paper's; or bf16), the largest power-of-two batch that fits
       (doubling until out-of-memory or ``--max-batch``), plus batch-1 latency.  Without a GPU it prints why and
       skips.  (onnxruntime is CPU only here.)

Timing: ``--warmup`` seconds of untimed iterations per candidate, then ``--repeats`` windows of ``--duration``
seconds (at least one iteration each); throughput = images / time of a window, reported as the median over the
windows.  Windows are interleaved in rounds (one window of every candidate per round; a model's forms back to
back, a light shared peer such as MobileNetV3 after every model of its family, heavy peers once per round), so
that load changes on a shared machine hit the compared models alike.  By default (``--interleave model``) one
model is built, timed and freed at a time, with its timm forms and its family's peers beside it, so that memory is
that of the largest model; ``--interleave all`` builds everything first and interleaves all candidates.  Each
ratio is the median over the windows of the ratio to the other candidate's window nearest in time.  Params are
counted on the timed model; MACs with ``torch.utils.flop_counter.FlopCounterMode`` at batch 1 on the meta device,
reported as multiply-accumulates (conv + matmul only), the papers' convention.

Outputs: markdown tables on stdout, and in ``--out-dir``: ``benchmark.json`` (every window, the machine, the
settings), ``benchmark.md`` (the tables) and ``speed_vs_params.png``.

Examples:
  python tools/benchmark.py --quick                           # every family, tiny, about a minute
  python tools/benchmark.py --models efficientvit_m --threads 1 all
  python tools/benchmark.py --models efficientvit_m5 efficientvit_b1 --duration 2 --repeats 9
  python tools/benchmark.py --models efficientvit_sam_l0 --peers sam_vit_b
  python tools/benchmark.py --models efficientvit_m --device cuda --amp fp16

Models are declared in ``MODEL_SPECS`` (one ``ModelSpec`` each) and peers in ``PEER_SPECS``.
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import datetime
import io
import json
import math
import os
import os.path as osp
import platform
import shlex
import statistics
import sys
import time
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import torch
from torch import nn

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))


def _import_evit_mm():
    try:
        import evit_mm  # noqa: F401
    except ImportError:  # running from a checkout without `pip install -e .`
        sys.path.insert(0, ROOT)
    from evit_mm.models import efficientvit_msra, fuse
    return efficientvit_msra, fuse


def _deploy(model: nn.Module) -> nn.Module:
    _import_evit_mm()
    import evit_mm.deploy
    return evit_mm.deploy.deploy(model)


# =============================================================================================== models
class EfficientViTMClassifier(nn.Module):
    """The ImageNet model of the paper: EfficientViT-M backbone, global average pool, BatchNorm1d, Linear.

    The attention windows are those of the ImageNet models at ``img_size`` (Cream's classification code and
    timm: ``min(7, feature size)`` per stage, computed from ``img_size // 16``, i.e. (7, 7, 4) at 224), so the
    model is exactly timm's ``efficientvit_m*`` (same parameters, same MACs, same outputs for the same weights).
    ``fuse()`` folds the backbone (``EfficientViTM.fuse``) and the head's BatchNorm into the Linear.
    """

    def __init__(self, arch: str, img_size: int = 224, num_classes: int = 1000):
        super().__init__()
        msra, _ = _import_evit_mm()
        self.backbone = msra.EfficientViTM(arch, out_indices=(2,), window_size=imagenet_windows(img_size))
        channels = self.backbone.embed_dims[-1]
        self.head_bn = nn.BatchNorm1d(channels)
        self.head = nn.Linear(channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.backbone(x)[-1].mean((2, 3))
        return self.head(self.head_bn(x))

    @torch.no_grad()
    def fuse(self) -> 'EfficientViTMClassifier':
        _, fuse = _import_evit_mm()
        self.backbone.fuse()
        if isinstance(self.head_bn, nn.BatchNorm1d):
            self.head = fuse.fuse_bn_linear(self.head_bn, self.head)
            self.head_bn = nn.Identity()
        return self


def imagenet_windows(img_size: int) -> tuple[int, int, int]:
    """Per-stage attention windows of the ImageNet EfficientViT-M models at ``img_size`` (timm's rule)."""
    res, windows = img_size // 16, []
    for stage in range(3):
        if stage:
            res = (res - 1) // 2 + 1
        windows.append(max(1, min(7, res)))
    return tuple(windows)


class LastFeature(nn.Module):
    """A backbone returning a tuple of features -> its last one (the deepest stage), as one tensor."""

    def __init__(self, backbone: nn.Module):
        super().__init__()
        self.backbone = backbone

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone(x)[-1]


class TimmFeatures(nn.Module):
    """A timm classifier -> ``forward_features`` (stem + stages, no head): timm's version of a backbone."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.forward_features(x)


class OrtModule(nn.Module):
    """An ONNX graph run by onnxruntime (CPU), callable like the model it was exported from (first output, as a
    tensor).  One session per thread count (:meth:`set_threads`), created on first use."""

    def __init__(self, onnx_bytes: bytes, input_name: str = 'input'):
        super().__init__()
        self.onnx_bytes = onnx_bytes
        self.input_name = input_name
        self.threads: int | None = None
        self._sessions: dict = {}

    def set_threads(self, threads: int | None) -> None:
        """Use ``threads`` intra-op threads from now on (the session is created here, not in a timed window)."""
        self.threads = threads
        self.session()

    def session(self):
        if self.threads not in self._sessions:
            _import_evit_mm()
            from evit_mm.onnx import ort_session
            self._sessions[self.threads] = ort_session(self.onnx_bytes, threads=self.threads)
        return self._sessions[self.threads]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.session().run(None, {self.input_name: x.detach().cpu().contiguous().numpy()})[0]
        return torch.from_numpy(out)


def export_to_ort(model: nn.Module, input_size: tuple[int, int], seed: int) -> tuple[OrtModule, float]:
    """Export ``model`` as it is (no deploy step) at batch 1 with a dynamic batch, and check it in onnxruntime.
    Returns the module and the largest absolute difference to PyTorch on a batch of 2."""
    x = torch.randn(2, 3, *input_size, generator=torch.Generator().manual_seed(seed))
    buf = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter('ignore')
        torch.onnx.export(model, (x[:1],), buf, input_names=['input'], output_names=['output'],
                          dynamic_axes={'input': {0: 'batch'}, 'output': {0: 'batch'}}, opset_version=17,
                          do_constant_folding=True, dynamo=False)
    ort_module = OrtModule(buf.getvalue())
    with torch.inference_mode():
        diff = (ort_module(x) - _first(model(x))).abs().max().item()
    return ort_module, diff


def _channels_last(model: nn.Module) -> nn.Module:
    return copy.deepcopy(model).to(memory_format=torch.channels_last).eval()


@torch.no_grad()
def fold_batchnorm(model: nn.Module, example: torch.Tensor) -> nn.Module:
    """A copy of ``model`` with every BatchNorm folded into the conv that runs just before it (timm's
    ``BatchNormAct2d`` becomes its activation), found by running ``example`` with hooks: what Cream's speed test
    does to every model it times (it removes the BNs), for peers that have no folding of their own
    (MobileNetV3).  The caller checks the outputs."""
    from evit_mm.models.fuse import fuse_conv_bn
    model = copy.deepcopy(model).eval()
    order, hooks = [], []
    for module in model.modules():
        if isinstance(module, (nn.Conv2d, nn.BatchNorm2d)):
            hooks.append(module.register_forward_hook(lambda m, i, o: order.append(m)))
    model(example)
    for h in hooks:
        h.remove()
    where = {id(m): (parent, name) for parent in model.modules() for name, m in parent.named_children()}
    for prev, module in zip(order, order[1:]):
        if isinstance(module, nn.BatchNorm2d) and type(prev) is nn.Conv2d and prev.out_channels == module.num_features:
            parent, name = where[id(prev)]
            setattr(parent, name, fuse_conv_bn(prev, module))
            parent, name = where[id(module)]
            act, drop = getattr(module, 'act', nn.Identity()), getattr(module, 'drop', nn.Identity())
            setattr(parent, name, nn.Sequential(drop, act) if not isinstance(drop, nn.Identity) else act)
    return model


def _first(out) -> torch.Tensor:
    return out if isinstance(out, torch.Tensor) else out[0]


def _max_abs_diff(out: torch.Tensor, ref: torch.Tensor, what: str, log: Callable[[str], None]) -> float:
    """max |out - ref|, with a warning when it exceeds 1e-3 of the reference's scale (not the same function)."""
    diff = (out - ref).abs().max().item()
    if diff > 1e-3 * max(1.0, ref.abs().max().item()):
        log(f'WARNING: {what} by {diff:.3g}')
    return diff


def _set_litemla_eps(model: nn.Module, eps: float) -> nn.Module:
    """timm's LiteMLA uses eps 1e-5, the reference (and evit_mm) 1e-15: align timm for the output comparison."""
    for m in model.modules():
        if type(m).__name__ == 'LiteMLA' and hasattr(m, 'eps'):
            m.eps = eps
    return model


def _efficientvit_m_weights_from_timm(model: EfficientViTMClassifier, timm_model: nn.Module) -> None:
    """Copy a timm ``efficientvit_m*`` state dict into ``model`` (strictly; with evit_mm's converter)."""
    msra, _ = _import_evit_mm()
    sd = timm_model.state_dict()
    backbone = msra.convert_msra_state_dict(sd, fmt='timm', window_size=model.backbone.window_sizes)
    model.backbone.load_state_dict(backbone, strict=True)
    model.head_bn.load_state_dict({k[len('head.bn.'):]: v for k, v in sd.items() if k.startswith('head.bn.')})
    model.head.load_state_dict({k[len('head.linear.'):]: v for k, v in sd.items() if k.startswith('head.linear.')})


def _mit_weights_from_timm(model: LastFeature, timm_model: TimmFeatures) -> None:
    """Copy a timm ``efficientvit_b*/l*`` state dict into an evit_mm backbone (strictly, evit_mm's converter)."""
    model.backbone.load_pretrained(timm_model.model.state_dict())


def _efficientvit_m_backbone(arch: str) -> Callable[[], nn.Module]:
    def build():
        msra, _ = _import_evit_mm()
        return msra.EfficientViTM(arch)  # as the detection configs build it: out_indices (0, 1, 2), window 7
    return build


@dataclass(frozen=True)
class ModelSpec:
    """One benchmarkable evit_mm model.

    build(input_size) -> the evit_mm model in eval mode (a whole model that a user would run);
    deploy(model) -> its deploy form (may work in place; it gets a deep copy);
    input_size: default (H, W); cpu_batch: default CPU batch;
    timm_build(input_size) -> timm's implementation of the same architecture (None: no timm peer);
    weights_from_timm(model, timm_model): copy timm's weights into the evit_mm model;
    backbone: builds the backbone alone, as the mm configs use it (for its parameter count);
    peers: the family's shared comparison points (``PEER_SPECS`` keys);
    paper: published numbers, stored in the JSON for comparison.
    """
    name: str
    family: str
    label: str
    build: Callable[[tuple[int, int]], nn.Module]
    deploy: Callable[[nn.Module], nn.Module] = _deploy
    input_size: tuple[int, int] = (224, 224)
    cpu_batch: int = 16
    timm_name: str | None = None
    timm_build: Callable[[tuple[int, int]], nn.Module] | None = None
    weights_from_timm: Callable[[nn.Module, nn.Module], None] | None = None
    backbone: Callable[[], nn.Module] | None = None
    peers: tuple[str, ...] = ()
    paper: dict = field(default_factory=dict)


@dataclass(frozen=True)
class PeerSpec:
    """A comparison point.  ``per_model``: derived from each ModelSpec (timm's same architecture); otherwise one
    fixed model built by ``build(input_size)``, measured with the models of ``families``.  ``onnx``: also run
    its ONNX export.  ``every_model``: time it after every model of its family (light peers) instead of once per
    round (heavy ones).  ``own_size``: its own input size instead of the model's."""
    name: str
    label: str
    per_model: bool
    build: Callable[[tuple[int, int]], nn.Module] | None = None
    families: tuple[str, ...] = ()
    onnx: bool = False
    every_model: bool = True
    own_size: tuple[int, int] | None = None
    model_name: str = ''
    description: str = ''


# ------------------------------------------------------------------------------------------------ peers
def _build_mobilenetv3(input_size):
    import timm
    return timm.create_model('mobilenetv3_large_100', pretrained=False)


class _SegFormer(nn.Module):
    """mmseg's SegFormer-B1 (Cityscapes config: MiT-B1 + SegformerHead, 19 classes): image -> stride-4 logits."""

    def __init__(self):
        super().__init__()
        _import_evit_mm()
        from mmengine.hub import get_config
        from mmengine.model import revert_sync_batchnorm
        from mmengine.registry import init_default_scope
        from mmseg.registry import MODELS

        from evit_mm.compat import apply_all
        apply_all()
        init_default_scope('mmseg')
        cfg = get_config('mmseg::segformer/segformer_mit-b1_8xb1-160k_cityscapes-1024x1024.py').model
        cfg.backbone.init_cfg = None  # no download; speed does not depend on the weights
        cfg.decode_head.num_classes = 19
        self.model = revert_sync_batchnorm(MODELS.build(cfg)).eval()

    def forward(self, x):
        return self.model._forward(x)


def _build_sam_vit(name):
    def build(input_size):
        sys.path.insert(0, osp.dirname(osp.abspath(__file__)))
        from sam_benchmark import build_encoder
        encoder, _ = build_encoder(name, input_size[0], fuse=False)
        return encoder
    return build


def _build_swinir(input_size):
    from mmagic.models.editors.swinir.swinir_net import SwinIRNet
    # SwinIR's "lightweight" x2 model (Liang et al. 2021, Table 3: 0.88M params): 60 channels, 4 RSTBs of 6 layers,
    # window 8, mlp ratio 2, pixel-shuffle-direct upsampler
    return SwinIRNet(upscale=2, in_chans=3, img_size=64, window_size=8, img_range=1.0, depths=[6, 6, 6, 6],
                     embed_dim=60, num_heads=[6, 6, 6, 6], mlp_ratio=2, upsampler='pixelshuffledirect',
                     resi_connection='1conv', drop_path_rate=0.0)


#: Comparison points (``--peers``).
PEER_SPECS: dict[str, PeerSpec] = {
    'timm': PeerSpec('timm', 'timm', per_model=True,
                     description="timm's implementation of the same architecture: eager, BN-fused, ONNX"),
    'mobilenetv3': PeerSpec('mobilenetv3', 'MobileNetV3-Large', per_model=False, build=_build_mobilenetv3,
                            families=('efficientvit_m',), onnx=True, model_name='mobilenetv3_large_100',
                            description='timm mobilenetv3_large_100, eager and ONNX (the paper\'s CPU baseline)'),
    'segformer': PeerSpec('segformer', 'SegFormer-B1 (mmseg)', per_model=False, build=lambda s: _SegFormer(),
                          families=('efficientvit_seg',), every_model=False, model_name='segformer_b1',
                          description='mmseg segformer_mit-b1 Cityscapes model (EncoderDecoder._forward)'),
    'sam_vit_b': PeerSpec('sam_vit_b', 'SAM ViT-B encoder', per_model=False, build=_build_sam_vit('vit_b'),
                          families=('efficientvit_sam',), every_model=False, own_size=(1024, 1024),
                          model_name='sam_vit_b', description="segment_anything ImageEncoderViT, SAM's ViT-B"),
    'sam_vit_h': PeerSpec('sam_vit_h', 'SAM ViT-H encoder', per_model=False, build=_build_sam_vit('vit_h'),
                          families=('efficientvit_sam',), every_model=False, own_size=(1024, 1024),
                          model_name='sam_vit_h', description="segment_anything ImageEncoderViT, SAM's ViT-H"),
    'swinir': PeerSpec('swinir', 'SwinIR-light x2 (mmagic)', per_model=False, build=_build_swinir,
                       families=('efficientvit_sr',), every_model=False, model_name='swinir_light_x2',
                       description='mmagic SwinIRNet with the lightweight x2 settings of the SwinIR paper'),
}


# ------------------------------------------------------------------------------------------------ evit_mm models
# Paper numbers (Cream's EfficientViT README; ../shared/reference/msra.md): ImageNet-1k top-1 (%), MACs (M) at
# 224, V100 throughput (images/s, batch 2048, AMP).  CPU: only M0 is published: 228.4 images/s (Intel Xeon
# E5-2690 v4, 1 thread, batch 16) and 340.1 images/s in ONNX.
_PAPER_M = {
    'm0': dict(top1=63.2, mmacs=79, gpu_images_per_s=27644, cpu_images_per_s=228.4, onnx_images_per_s=340.1),
    'm1': dict(top1=68.4, mmacs=167, gpu_images_per_s=20093),
    'm2': dict(top1=70.8, mmacs=201, gpu_images_per_s=18218),
    'm3': dict(top1=73.4, mmacs=263, gpu_images_per_s=16644),
    'm4': dict(top1=74.3, mmacs=299, gpu_images_per_s=15914),
    'm5': dict(top1=77.1, mmacs=522, gpu_images_per_s=10621),
}
# MIT (../shared/reference/mit.md): seg Cityscapes GMACs at 1024x2048, A100/Orin latency (TensorRT fp16); SAM:
# GMACs, Orin batch-1 latency (ms) and A100 batch-16 throughput (images/s) of the whole image encoder.
_PAPER_SEG = {'b0': dict(gmacs_1024x2048=4.4), 'b1': dict(gmacs_1024x2048=25), 'b2': dict(gmacs_1024x2048=74),
              'b3': dict(gmacs_1024x2048=179), 'l1': dict(gmacs_1024x2048=282, a100_images_per_s=122,
                                                           orin_latency_ms=45.9),
              'l2': dict(gmacs_1024x2048=396, a100_images_per_s=102, orin_latency_ms=60.0)}
_PAPER_SAM = {'l0': dict(gmacs=35, orin_latency_ms=8.2, a100_images_per_s=762),
              'l1': dict(gmacs=49, orin_latency_ms=10.2, a100_images_per_s=638),
              'l2': dict(gmacs=69, orin_latency_ms=12.9, a100_images_per_s=538),
              'xl0': dict(gmacs=185, orin_latency_ms=22.5, a100_images_per_s=278),
              'xl1': dict(gmacs=322, orin_latency_ms=37.2, a100_images_per_s=182)}


def _m_spec(arch: str) -> ModelSpec:
    import timm  # noqa: F401  (fail early with a clear ImportError)

    def timm_build(input_size, arch=arch):
        import timm
        return timm.create_model(f'efficientvit_{arch}', pretrained=False, img_size=input_size[0])

    def deploy(model):
        return _deploy(model.fuse())  # the head's BatchNorm1d too (it is not an evit_mm module)

    return ModelSpec(
        name=f'efficientvit_{arch}', family='efficientvit_m', label=f'EfficientViT-{arch.upper()}',
        build=lambda size, arch=arch: EfficientViTMClassifier(arch, size[0]).eval(), deploy=deploy,
        timm_name=f'efficientvit_{arch}', timm_build=timm_build, weights_from_timm=_efficientvit_m_weights_from_timm,
        backbone=_efficientvit_m_backbone(arch), peers=('mobilenetv3',), paper=_PAPER_M[arch])


def _mit_spec(arch: str, timm_available: bool) -> ModelSpec:
    family = 'efficientvit_b' if arch.startswith('b') else 'efficientvit_l'

    def build(size, arch=arch):
        _import_evit_mm()
        from evit_mm.models import build_efficientvit_backbone
        return LastFeature(build_efficientvit_backbone(arch, out_indices=(-1,))).eval()

    def timm_build(size, arch=arch):
        import timm
        model = _set_litemla_eps(timm.create_model(f'efficientvit_{arch}', pretrained=False), 1e-15)
        model.head = nn.Identity()  # forward_features does not run it; keep it out of the parameter count
        return TimmFeatures(model)

    return ModelSpec(
        name=f'efficientvit_{arch}', family=family, label=f'EfficientViT-{arch.upper()}', build=build,
        timm_name=f'efficientvit_{arch}' if timm_available else None,
        timm_build=timm_build if timm_available else None,
        weights_from_timm=_mit_weights_from_timm if timm_available else None)


def _seg_spec(arch: str) -> ModelSpec:
    def build(size, arch=arch):
        _import_evit_mm()
        from evit_mm.models import EfficientViTSeg
        return EfficientViTSeg(f'{arch}_cityscapes').eval()

    return ModelSpec(name=f'efficientvit_seg_{arch}', family='efficientvit_seg',
                     label=f'EfficientViT-Seg-{arch.upper()}', build=build, input_size=(512, 1024), cpu_batch=1,
                     peers=('segformer',), paper=_PAPER_SEG[arch])


def _sam_spec(variant: str) -> ModelSpec:
    def build(size, variant=variant):
        _import_evit_mm()
        from evit_mm.models.sam import build_efficientvit_sam
        return build_efficientvit_sam(variant, image_size=size[0]).image_encoder.eval()

    size = 1024 if variant.startswith('xl') else 512
    return ModelSpec(name=f'efficientvit_sam_{variant}', family='efficientvit_sam',
                     label=f'EfficientViT-SAM-{variant.upper()}', build=build, input_size=(size, size), cpu_batch=1,
                     peers=('sam_vit_b', 'sam_vit_h'), paper=_PAPER_SAM[variant])


def _sr_spec() -> ModelSpec | None:
    def build(size):
        _import_evit_mm()
        from evit_mm.models.sr import efficientvit_sr_lightweight
        return efficientvit_sr_lightweight(scale=2).eval()

    return ModelSpec(name='efficientvit_sr_x2', family='efficientvit_sr', label='EfficientViT-SR x2', build=build,
                     input_size=(128, 128), cpu_batch=1, peers=('swinir',))


def _sr_available() -> bool:
    return osp.exists(osp.join(ROOT, 'evit_mm', 'models', 'sr.py'))


def _all_specs() -> dict[str, ModelSpec]:
    specs = [_m_spec(f'm{i}') for i in range(6)]
    specs += [_mit_spec(a, True) for a in ('b0', 'b1', 'b2', 'b3')]
    specs += [_mit_spec('l0', False)] + [_mit_spec(a, True) for a in ('l1', 'l2', 'l3')]
    specs += [_seg_spec(a) for a in ('b0', 'b1', 'b2', 'b3', 'l1', 'l2')]
    specs += [_sam_spec(v) for v in ('l0', 'l1', 'l2', 'xl0', 'xl1')]
    if _sr_available():
        specs.append(_sr_spec())
    return {s.name: s for s in specs}


#: The models this tool knows, by CLI name.  Families are selected by their name too (``efficientvit_m``).
MODEL_SPECS: dict[str, ModelSpec] = _all_specs()

#: ``--quick``: one small model per family, tiny inputs; (model, input size, peers).
QUICK = [('efficientvit_m0', (64, 64)), ('efficientvit_b0', (64, 64)), ('efficientvit_l1', (64, 64)),
         ('efficientvit_seg_b0', (64, 128)), ('efficientvit_sam_l0', (64, 64)), ('efficientvit_sr_x2', (32, 32))]
QUICK_PEERS = ['timm', 'mobilenetv3', 'segformer', 'sam_vit_b', 'swinir']

FAMILIES = ('efficientvit_m', 'efficientvit_b', 'efficientvit_l', 'efficientvit_seg', 'efficientvit_sam',
            'efficientvit_sr')


def families() -> dict[str, list[str]]:
    out: dict[str, list[str]] = {f: [] for f in FAMILIES}
    for spec in MODEL_SPECS.values():
        out[spec.family].append(spec.name)
    return out


# =============================================================================================== helpers
def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@torch.no_grad()
def randomize_(model: nn.Module, seed: int = 0) -> nn.Module:
    """Give every BatchNorm non-trivial statistics and affine terms and every attention-bias table non-zero
    values (deterministically), so that no residual branch is the identity and output checks mean something."""
    gen = torch.Generator().manual_seed(seed)

    def uniform(t, lo, hi):
        t.copy_(torch.rand(t.shape, generator=gen) * (hi - lo) + lo)

    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            if module.running_mean is not None:
                module.running_mean.copy_(torch.randn(module.running_mean.shape, generator=gen) * 0.1)
                uniform(module.running_var, 0.5, 1.5)
            if module.weight is not None:
                uniform(module.weight, 0.5, 1.0)
                module.bias.copy_(torch.randn(module.bias.shape, generator=gen) * 0.05)
    for name, param in model.named_parameters():
        if 'attention_biases' in name:
            param.copy_(torch.randn(param.shape, generator=gen) * 0.5)
    return model


def cpu_model_name() -> str:
    try:
        with open('/proc/cpuinfo') as f:
            for line in f:
                if line.startswith('model name'):
                    return line.split(':', 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or 'unknown'


def machine_info(devices: Sequence[str]) -> dict:
    import timm
    msra, _ = _import_evit_mm()
    import evit_mm
    info = dict(machine=platform.machine(), cpu=cpu_model_name(), cpu_count=os.cpu_count(),
                torch_default_threads=torch.get_num_threads(), platform=platform.platform(),
                python=platform.python_version(), torch=torch.__version__, timm=timm.__version__,
                evit_mm=evit_mm.__version__)
    try:
        import onnxruntime
        info['onnxruntime'] = onnxruntime.__version__
    except ImportError:
        pass
    if 'cuda' in devices and torch.cuda.is_available():
        info['gpu'] = torch.cuda.get_device_name(0)
        info['cuda'] = torch.version.cuda
    return info


def is_oom(err: BaseException) -> bool:
    """Whether an exception means "this batch does not fit" (CUDA OOM, or cuDNN/indexing limits of huge batches)."""
    if isinstance(err, getattr(torch.cuda, 'OutOfMemoryError', ())):
        return True
    text = str(err)
    return isinstance(err, RuntimeError) and any(
        s in text for s in ('out of memory', 'CUDNN_STATUS_NOT_SUPPORTED', 'CUDNN_STATUS_ALLOC_FAILED',
                            'canUse32BitIndexMath', 'INT_MAX'))


def largest_pow2_batch(try_batch: Callable[[int], Any], max_batch: int, on_oom: Callable[[], Any] = lambda: None,
                       start: int = 1) -> int:
    """The largest power of two ``b <= max_batch`` for which ``try_batch(b)`` does not run out of memory.

    Doubles from ``start`` until ``try_batch`` raises an out-of-memory error (see :func:`is_oom`) or
    ``max_batch`` is passed, then backs off to the last size that worked.  ``on_oom`` runs after each failure
    (e.g. ``torch.cuda.empty_cache``).  Raises the error if even ``start`` does not fit.
    """
    best, batch = None, start
    while batch <= max_batch:
        try:
            try_batch(batch)
        except Exception as err:  # noqa: BLE001 - only out-of-memory errors are expected
            if not is_oom(err):
                raise
            del err
            on_oom()
            break
        best, batch = batch, batch * 2
    if best is None:
        raise RuntimeError(f'even a batch of {start} does not fit in memory')
    return best


# =============================================================================================== candidates
@dataclass
class Candidate:
    """One measured model: (model name, implementation, mode)."""
    key: str              # unique, e.g. 'efficientvit_m0/evit_mm/deploy'
    model_name: str       # the ModelSpec name (or the peer's model name)
    impl: str             # 'evit_mm' | 'timm' | a peer's name
    mode: str             # 'eager' | 'deploy' | 'fused' | 'onnx'
    role: str             # 'model' | 'peer'
    module: nn.Module
    params: int
    macs: int
    spec: str             # the ModelSpec this candidate belongs to ('' for a shared peer)
    max_abs_diff: float | None = None
    input_size: tuple[int, int] | None = None  # (H, W); None: the run's --img-size
    cpu_batch: int | None = None
    family: str = ''
    peer: str = ''        # PEER_SPECS key of a shared peer
    every_model: bool = True


def count_macs(model: nn.Module, input_size: tuple[int, int] | int, device='cpu') -> int:
    """Multiply-accumulates of one image (FlopCounterMode counts 2 FLOPs per MAC: conv and matmul ops only).

    Counted on a copy on the ``meta`` device (no arithmetic, so even SAM ViT-H takes a moment); models that do not
    run on ``meta`` are counted with a real forward."""
    from torch.utils.flop_counter import FlopCounterMode
    h, w = (input_size, input_size) if isinstance(input_size, int) else input_size
    for dev in ('meta', device):
        counter = FlopCounterMode(display=False)
        try:
            m = copy.deepcopy(model).to(dev) if dev == 'meta' else model
            with counter, torch.inference_mode():
                m(torch.zeros(1, 3, h, w, device=dev))
            return counter.get_total_flops() // 2
        except Exception:  # noqa: BLE001 - an op without a meta kernel: count for real
            if dev != 'meta':
                raise
    raise AssertionError('unreachable')


def _size_of(spec: ModelSpec, img_size: int | tuple | None, sizes: dict | None) -> tuple[int, int]:
    if sizes and spec.name in sizes:
        return tuple(sizes[spec.name])
    if img_size is None:
        return tuple(spec.input_size)
    return (img_size, img_size) if isinstance(img_size, int) else tuple(img_size)


def build_model_candidates(spec: ModelSpec, size: tuple[int, int], peers: Sequence[str], seed: int,
                           log: Callable[[str], None], onnx: bool = False, peer_channels_last: bool = False
                           ) -> tuple[list[Candidate], dict]:
    """Build one evit_mm model's forms (and timm's same architecture, with the same weights) and check outputs.

    Returns the candidates and the model's info (params, MACs, ...) for the JSON."""
    from timm.utils import reparameterize_model

    log(f'building {spec.name} at {size[0]}x{size[1]} ...')
    x = torch.randn(2, 3, *size, generator=torch.Generator().manual_seed(seed))
    model = spec.build(size).eval()
    timm_model = None
    if spec.timm_build is not None and 'timm' in peers:
        timm_model = spec.timm_build(size).eval()
        randomize_(timm_model, seed)
        spec.weights_from_timm(model, timm_model)
    else:
        randomize_(model, seed)
    with torch.inference_mode():
        eager_out = _first(model(x))
    deployed = spec.deploy(copy.deepcopy(model)).eval()
    items = [('evit_mm', 'eager', model), ('evit_mm', 'deploy', deployed)]
    if timm_model is not None:
        items += [('timm', 'eager', timm_model), ('timm', 'fused', reparameterize_model(timm_model).eval())]
        if peer_channels_last:
            items.append(('timm', 'channels_last', _channels_last(timm_model)))
    ref_out, reference = eager_out, 'evit_mm eager'
    if timm_model is not None:
        with torch.inference_mode():
            ref_out, reference = _first(timm_model(x)), 'timm eager'
    outputs = {}
    with torch.inference_mode():
        for impl, mode, m in items:
            outputs[(impl, mode)] = _first(m(x))
    if onnx:
        for impl, source in [('evit_mm', copy.deepcopy(deployed).to(memory_format=torch.contiguous_format)),
                             ('timm', timm_model)]:
            if source is None:
                continue
            try:
                ort_module, diff = export_to_ort(source, size, seed)
            except Exception as err:  # noqa: BLE001 - report and go on without this form
                log(f'WARNING: ONNX export of {spec.name} ({impl}) failed, skipped: {type(err).__name__}: {err}')
                continue
            if diff > 1e-4:
                log(f'WARNING: {spec.name} {impl} ONNX differs from PyTorch by {diff:.3g}')
            items.append((impl, 'onnx', ort_module))
            with torch.inference_mode():
                outputs[(impl, 'onnx')] = ort_module(x)
    macs = {'evit_mm': count_macs(model, size)}
    info = dict(label=spec.label, family=spec.family, params=count_params(model),
                params_deploy=count_params(deployed), macs=macs['evit_mm'], input_size=list(size),
                params_backbone=count_params(spec.backbone()) if spec.backbone else None,
                timm_name=spec.timm_name, paper=spec.paper, reference_output=reference)
    if timm_model is not None:
        info['params_timm'] = count_params(timm_model)
        info['macs_timm'] = macs['timm'] = count_macs(timm_model, size)
    candidates = []
    for impl, mode, m in items:
        diff = _max_abs_diff(outputs[(impl, mode)], ref_out, f'{spec.name} {impl} {mode} differs from {reference}', log)
        candidates.append(Candidate(key=f'{spec.name}/{impl}/{mode}', model_name=spec.name, impl=impl, mode=mode,
                                    role='model', module=m,
                                    params=info['params'] if impl == 'evit_mm' else info['params_timm'],
                                    macs=macs[impl], spec=spec.name, max_abs_diff=diff, input_size=size,
                                    cpu_batch=spec.cpu_batch, family=spec.family))
    return candidates, info


def build_peer_candidates(peer: str, size: tuple[int, int], family: str, cpu_batch: int, seed: int,
                          log: Callable[[str], None], onnx: bool = False, peer_channels_last: bool = False
                          ) -> tuple[list[Candidate], dict]:
    """Build one shared peer (MobileNetV3, SegFormer, SAM ViT, SwinIR) in its forms, for the models of ``family``."""
    p = PEER_SPECS[peer]
    log(f'building peer {p.label} at {size[0]}x{size[1]} ...')
    m = p.build(size).eval()
    randomize_(m, seed)
    macs = count_macs(m, size)
    params = count_params(m)
    forms = [('eager', m)]
    diffs = {}  # each other form's max abs diff to the eager form
    if peer_channels_last and p.every_model:
        forms.append(('channels_last', _channels_last(m)))
        # the strongest eager form: BNs folded (as Cream's speed test does) and NHWC weights
        forms.append(('fused_channels_last', _channels_last(fold_batchnorm(m, torch.randn(1, 3, *size)))))
        x = torch.randn(2, 3, *size, generator=torch.Generator().manual_seed(seed))
        with torch.inference_mode():
            ref = _first(m(x))
            for mode, module in forms[1:]:
                what = f'{p.label} {mode} differs from its eager form'
                diffs[mode] = _max_abs_diff(_first(module(x)), ref, what, log)
    if onnx and p.onnx:
        try:
            ort_module, diffs['onnx'] = export_to_ort(m, size, seed)
            forms.append(('onnx', ort_module))
            if diffs['onnx'] > 1e-4:
                log(f'WARNING: {p.label} ONNX differs from PyTorch by {diffs["onnx"]:.3g}')
        except Exception as err:  # noqa: BLE001
            log(f'WARNING: ONNX export of {p.label} failed, skipped: {type(err).__name__}: {err}')
    candidates = [Candidate(key=f'{p.model_name}/{peer}/{mode}', model_name=p.model_name, impl=peer, mode=mode,
                            role='peer', module=module, params=params, macs=macs, spec='', input_size=size,
                            cpu_batch=cpu_batch, family=family, peer=peer, every_model=p.every_model,
                            max_abs_diff=diffs.get(mode))
                  for mode, module in forms]
    info = dict(label=p.label, family=family, params=params, macs=macs, peer=peer, input_size=list(size),
                description=p.description)
    return candidates, info


@dataclass
class Group:
    """What is built, timed and freed together: one evit_mm model (all its forms, timm's too) and the shared peers
    timed beside it.  ``peers``: (peer, input size, family, CPU batch) of each shared peer in this group."""
    spec: ModelSpec
    size: tuple[int, int]
    peers: list[tuple[str, tuple[int, int], str, int]]


def plan_groups(specs: Sequence[ModelSpec], peers: Sequence[str], img_size: int | tuple | None,
                sizes: dict | None = None, peer_own_size: bool = True, peer_windows: str = 'per-model'
                ) -> list[Group]:
    """One group per model, in order.  A light shared peer of the model's family (MobileNetV3; ``every_model``)
    joins every group of the family (``peer_windows='per-model'``) or only the family's last one (``'once'``);
    heavy peers (SAM ViT, SegFormer, SwinIR) join the family's last group.  A peer runs at its own size
    (``peer_own_size``) or at that of its family's first model, with that model's CPU batch."""
    groups = []
    for i, spec in enumerate(specs):
        family = spec.family
        first = next(s for s in specs if s.family == family)
        last_of_family = all(s.family != family for s in specs[i + 1:])
        group_peers = []
        for peer in peers:
            p = PEER_SPECS[peer]
            if p.per_model or family not in p.families:
                continue
            if (p.every_model and peer_windows == 'per-model') or last_of_family:
                size = p.own_size if (p.own_size and peer_own_size) else _size_of(first, img_size, sizes)
                group_peers.append((peer, size, family, first.cpu_batch))
        groups.append(Group(spec, _size_of(spec, img_size, sizes), group_peers))
    return groups


def build_candidates(specs: Sequence[ModelSpec], peers: Sequence[str], img_size: int | tuple | None, seed: int,
                     log: Callable[[str], None], onnx: bool = False, peer_own_size: bool = True,
                     sizes: dict[str, tuple[int, int]] | None = None, peer_channels_last: bool = False
                     ) -> tuple[list[Candidate], dict]:
    """Build every model to measure at once (``--interleave all``): CPU, eval mode, identical weights where
    possible, outputs checked.

    ``img_size``: an int or (H, W) for every model, or None for each spec's own size.  ``onnx``: add the ONNX
    forms (exported and checked here).  ``peer_own_size``: shared peers with a size of their own (SAM ViT: 1024)
    use it; otherwise they run at the size of their family's first model.  ``sizes``: per-model (H, W) overrides
    (``--quick``).  ``peer_channels_last``: also time timm's model and the light peers (MobileNetV3) with
    channels_last weights, the layout evit_mm's deploy form uses (one line for a user:
    ``model.to(memory_format=torch.channels_last)``), so that the layout's share of the gain is visible."""
    candidates: list[Candidate] = []
    model_info: dict[str, dict] = {}
    peers_built = set()
    groups = plan_groups(specs, peers, img_size, sizes, peer_own_size)
    for group in groups:
        cands, model_info[group.spec.name] = build_model_candidates(group.spec, group.size, peers, seed, log, onnx,
                                                                     peer_channels_last)
        candidates += cands
    for group in groups:
        for peer, size, family, cpu_batch in group.peers:
            if peer in peers_built:
                continue
            peers_built.add(peer)
            cands, info = build_peer_candidates(peer, size, family, cpu_batch, seed, log, onnx, peer_channels_last)
            candidates += cands
            model_info[PEER_SPECS[peer].model_name] = info
    return candidates, model_info


# =============================================================================================== timing
class Timer:
    """Runs a candidate for fixed durations and records (images, seconds) per window."""

    def __init__(self, module: nn.Module, batch: int, img_size, device: str, amp_dtype=None):
        h, w = (img_size, img_size) if isinstance(img_size, int) else img_size
        self.module, self.batch, self.device = module, batch, device
        self.x = torch.randn(batch, 3, h, w, device=device)
        self.amp_dtype = amp_dtype

    def step(self) -> None:
        with _autocast(self.device, self.amp_dtype):
            self.module(self.x)
        if self.device == 'cuda':
            torch.cuda.synchronize()  # as the paper: each iteration is complete when it is timed

    def run_for(self, seconds: float) -> tuple[int, float]:
        """Iterations until ``seconds`` have passed (at least one); returns (iterations, elapsed seconds)."""
        n, start = 0, time.perf_counter()
        while True:
            self.step()
            n += 1
            elapsed = time.perf_counter() - start
            if elapsed >= seconds:
                return n, elapsed


def _progress(total: int, enabled: bool, desc: str):
    try:
        from tqdm import tqdm
    except ImportError:  # pragma: no cover - tqdm is a dependency of the environment
        enabled = False
    if not enabled:
        class _Null:
            def update(self, n=1): pass
            def set_postfix_str(self, s): pass
            def set_description_str(self, s): pass
            def close(self): pass
        return _Null()
    print(desc, file=sys.stderr, flush=True)
    return tqdm(total=total, file=sys.stderr, dynamic_ncols=True, leave=False, mininterval=0.5)


def measure_setting(candidates: list[Candidate], setting: dict, args, log, progress: bool,
                    t0: float | None = None, desc: str | None = None) -> list[dict]:
    """Measure every candidate under one setting, in rounds of one window per candidate (:func:`window_order`).

    ``setting``: ``device``, ``protocol`` ('cpu': fp32 at a fixed batch; 'gpu': autocast ``args.amp``, batch
    ``'max'`` (power-of-two search) or fixed, plus batch-1 latency), ``batch_size`` (None: each candidate's
    own CPU batch), ``threads`` (cpu), ``label``.  ONNX candidates run on the CPU protocol only.
    The protocol is independent of the device, so the GPU protocol's logic also runs (and is tested) on a CPU.
    ``t0``: the clock origin of the windows' times (``time.perf_counter()``; shared by the groups of a run so that
    windows of different groups can be paired); ``desc``: the progress bar's label (default: the setting's).
    """
    device, protocol = setting['device'], setting['protocol']
    amp_dtype = AMP_DTYPES.get(args.amp) if protocol == 'gpu' else None
    cuda = device == 'cuda'
    empty_cache = torch.cuda.empty_cache if cuda else (lambda: None)
    candidates = [c for c in candidates if not (isinstance(c.module, OrtModule) and (cuda or protocol == 'gpu'))]
    rows, timers, latency_timers = [], {}, {}
    if setting.get('threads'):
        torch.set_num_threads(setting['threads'])
    if cuda:
        torch.backends.cudnn.benchmark = True
    load_before = _loadavg()
    for cand in candidates:
        if isinstance(cand.module, OrtModule):
            cand.module.set_threads(setting.get('threads'))
        else:
            cand.module.to(device)
    try:
        for cand in candidates:
            size = cand.input_size or args.img_size
            h, w = (size, size) if isinstance(size, int) else size
            batch = setting['batch_size'] or cand.cpu_batch or 1
            if batch == 'max':
                def try_batch(b, cand=cand):
                    x = torch.randn(b, 3, h, w, device=device)
                    with torch.inference_mode(), _autocast(device, amp_dtype):
                        cand.module(x)
                    if cuda:
                        torch.cuda.synchronize()
                batch = largest_pow2_batch(try_batch, args.max_batch, on_oom=empty_cache)
                empty_cache()
                log(f'{cand.key}: largest power-of-two batch = {batch}' +
                    (' (the --max-batch cap)' if batch * 2 > args.max_batch else ''))
            timers[cand.key] = Timer(cand.module, batch, (h, w), device, amp_dtype)
            if protocol == 'gpu':
                latency_timers[cand.key] = Timer(cand.module, 1, (h, w), device, amp_dtype)

        phases = [('throughput', timers)] + ([('latency', latency_timers)] if latency_timers else [])
        order = window_order(candidates, args.peer_windows)
        total = sum(len(t) * (1 if args.warmup > 0 else 0) + len(order) * args.repeats for _, t in phases)
        bar = _progress(total, progress, desc or setting['label'])
        results: dict[tuple[str, str], dict] = {}
        t0 = time.perf_counter() if t0 is None else t0
        with torch.inference_mode():
            for phase, phase_timers in phases:
                for key, timer in phase_timers.items():
                    timer.step()  # always one untimed call: lazy initialisation (oneDNN primitives, ORT) is not timed
                    if args.warmup > 0:
                        bar.set_description_str(f'{phase} warm-up {key}')
                        timer.run_for(args.warmup)
                        bar.update()
                windows = {key: [] for key in phase_timers}
                for rep in range(args.repeats):
                    for key in order:
                        timer = phase_timers[key]
                        bar.set_description_str(f'{phase} {rep + 1}/{args.repeats} {key}')
                        if args.warmup > 0:
                            timer.step()  # re-warm the caches after the other models ran
                        start = time.perf_counter() - t0
                        n, elapsed = timer.run_for(args.duration)
                        windows[key].append(dict(iterations=n, seconds=round(elapsed, 6),
                                                 images_per_s=timer.batch * n / elapsed,
                                                 t=round(start + elapsed / 2, 3)))
                        bar.set_postfix_str(f'{timer.batch * n / elapsed:.1f} img/s')
                        bar.update()
                for key, wins in windows.items():
                    results[(phase, key)] = dict(batch_size=phase_timers[key].batch, windows=wins)
        bar.close()
    finally:
        for cand in candidates:
            if not isinstance(cand.module, OrtModule):
                cand.module.to('cpu')
        timers.clear()
        latency_timers.clear()
        empty_cache()
    load_after = _loadavg()

    for cand in candidates:
        res = results[('throughput', cand.key)]
        ips = statistics.median(w['images_per_s'] for w in res['windows'])
        size = cand.input_size or args.img_size
        row = dict(setting=setting['label'], device=device, protocol=protocol, threads=setting.get('threads'),
                   precision=args.amp if amp_dtype is not None else 'fp32', model=cand.model_name, impl=cand.impl,
                   mode=cand.mode, role=cand.role, spec=cand.spec, family=cand.family, peer=cand.peer,
                   params=cand.params, macs=cand.macs,
                   input_size=list(size) if not isinstance(size, int) else [size, size],
                   batch_size=res['batch_size'], images_per_s=ips, ms_per_batch=1000.0 * res['batch_size'] / ips,
                   images_per_s_best=max(w['images_per_s'] for w in res['windows']),
                   windows=res['windows'], max_abs_diff=cand.max_abs_diff, loadavg_before=load_before,
                   loadavg_after=load_after)
        if ('latency', cand.key) in results:
            lat = results[('latency', cand.key)]
            row['latency_ms'] = statistics.median(1000.0 / w['images_per_s'] for w in lat['windows'])
            row['latency_windows'] = lat['windows']
        rows.append(row)
    return rows


def warn_if_loaded(rows: Sequence[dict], log) -> None:
    """Once per setting: warn when the 1-minute load average exceeded the CPU count as one of its timings
    started (other processes competed for the cores)."""
    for setting in dict.fromkeys(r['setting'] for r in rows):
        loads = [r['loadavg_before'] for r in rows if r['setting'] == setting and r.get('loadavg_before') is not None]
        if loads and max(loads) > (os.cpu_count() or 1):
            log(f'WARNING: the 1-minute load average reached {max(loads):.2f} on {os.cpu_count()} CPUs while '
                f'"{setting}" was timed: other processes compete for the cores; compare ratios, and distrust '
                'multi-thread figures')


def merge_rows(into: dict, row: dict) -> None:
    """Add ``row``'s windows (the same candidate and setting, timed in another group) to ``into`` and recompute
    the medians: a shared peer timed beside every model gets one row with all its windows."""
    into['windows'] = into['windows'] + row['windows']
    into['images_per_s'] = statistics.median(w['images_per_s'] for w in into['windows'])
    into['images_per_s_best'] = max(w['images_per_s'] for w in into['windows'])
    into['ms_per_batch'] = 1000.0 * into['batch_size'] / into['images_per_s']
    if 'latency_windows' in row:
        into['latency_windows'] = into.get('latency_windows', []) + row['latency_windows']
        into['latency_ms'] = statistics.median(1000.0 / w['images_per_s'] for w in into['latency_windows'])
    into['loadavg_after'] = row['loadavg_after']


def run_by_model(args, settings: Sequence[dict], log, progress: bool) -> tuple[list[dict], dict]:
    """Build, time and free one group (:func:`plan_groups`: a model's forms and the peers timed beside it) at a
    time, so that a run's memory is that of its largest model rather than the sum of all of them (a run of
    B0..B3 and L0..L3 built at once needs more than 22 GiB).  A light peer (MobileNetV3) stays built for the
    whole family and its windows from every group make one row.  Windows share one clock, so a ratio still pairs
    each window with the other candidate's nearest one.  Returns (rows, models info)."""
    import gc

    groups = plan_groups(args.specs, args.peers, args.img_size, args.sizes, peer_own_size=not args.quick,
                         peer_windows=args.peer_windows)
    models, peer_models, merged = {}, {}, {}
    kept: dict[tuple[str, str], list[Candidate]] = {}  # (peer, family) -> the light peer's candidates
    t0 = time.perf_counter()
    for i, group in enumerate(groups):
        cands, models[group.spec.name] = build_model_candidates(group.spec, group.size, args.peers, args.seed, log,
                                                                args.onnx, args.peer_channels_last)
        for peer, size, family, cpu_batch in group.peers:
            if (peer, family) not in kept:
                built, peer_models[PEER_SPECS[peer].model_name] = build_peer_candidates(
                    peer, size, family, cpu_batch, args.seed, log, args.onnx, args.peer_channels_last)
                kept[(peer, family)] = built
            cands += kept[(peer, family)]
        for setting in settings:
            desc = f"{setting['label']} | {group.spec.name} ({i + 1}/{len(groups)})"
            for row in measure_setting(cands, setting, args, log, progress, t0=t0, desc=desc):
                key = (row['setting'], row['model'], row['impl'], row['mode'])
                if key in merged:
                    merge_rows(merged[key], row)
                else:
                    merged[key] = row
        del cands
        later = {g.spec.family for g in groups[i + 1:]}
        for key in [k for k in kept if k[1] not in later or not PEER_SPECS[k[0]].every_model]:
            del kept[key]  # the family is done (or a heavy peer: timed in its one group)
        gc.collect()
    labels = [s['label'] for s in settings]
    rows = sorted(merged.values(), key=lambda r: (labels.index(r['setting']), r['role'] == 'peer'))
    return rows, {**models, **peer_models}


def window_order(candidates: Sequence[Candidate], peer_windows: str = 'per-model') -> list[str]:
    """The keys timed in one round: each model's candidates back to back; a light shared peer of the model's
    family (MobileNetV3; ``every_model``) after every model of the family (``'per-model'``: each ratio against it
    then pairs windows that ran side by side) or once after the family (``'once'``); heavy peers (SAM ViT,
    SegFormer, SwinIR) always once per round, after their family's last model."""
    groups: dict[str, list[Candidate]] = {}
    for cand in candidates:
        if cand.role == 'model':
            groups.setdefault(cand.spec, []).append(cand)
    peers = [cand for cand in candidates if cand.role == 'peer']
    order: list[str] = []
    specs = list(groups)
    for i, spec in enumerate(specs):
        family = groups[spec][0].family
        order += [c.key for c in groups[spec]]
        last_of_family = all(groups[s][0].family != family for s in specs[i + 1:])
        for p in peers:
            if p.family != family:
                continue
            if (p.every_model and peer_windows == 'per-model') or last_of_family:
                order.append(p.key)
    order += [p.key for p in peers if p.key not in order]  # peers of a family with no model selected
    return order


def _loadavg() -> float | None:
    try:
        return os.getloadavg()[0]
    except (OSError, AttributeError):
        return None


AMP_DTYPES = {'fp16': torch.float16, 'bf16': torch.bfloat16}


def _autocast(device: str, dtype):
    return torch.autocast(device, dtype=dtype) if dtype is not None else contextlib.nullcontext()


# =============================================================================================== reporting
#: (name, numerator (impl, mode), denominator (impl, mode)); '{peer}' stands for each shared peer of the family.
RATIOS = [
    ('eager/timm', ('evit_mm', 'eager'), ('timm', 'eager')),
    ('deploy/timm', ('evit_mm', 'deploy'), ('timm', 'eager')),
    ('deploy/timm_fused', ('evit_mm', 'deploy'), ('timm', 'fused')),
    ('onnx/timm_onnx', ('evit_mm', 'onnx'), ('timm', 'onnx')),
    ('eager/{peer}', ('evit_mm', 'eager'), ('{peer}', 'eager')),
    ('deploy/{peer}', ('evit_mm', 'deploy'), ('{peer}', 'eager')),
    ('onnx/{peer}_onnx', ('evit_mm', 'onnx'), ('{peer}', 'onnx')),
    ('deploy/timm_channels_last', ('evit_mm', 'deploy'), ('timm', 'channels_last')),
    ('deploy/{peer}_channels_last', ('evit_mm', 'deploy'), ('{peer}', 'channels_last')),
    ('deploy/{peer}_fused_channels_last', ('evit_mm', 'deploy'), ('{peer}', 'fused_channels_last')),
    ('onnx/deploy', ('evit_mm', 'onnx'), ('evit_mm', 'deploy')),
]


def paired_ratio(a: dict, b: dict) -> float:
    """Median, over a's timed windows, of a's images/s over that of b's window nearest in time (the two ran side
    by side, so a change of machine load between rounds cancels out)."""
    wb = b['windows']
    ratios = []
    for x in a['windows']:
        y = min(wb, key=lambda w: abs(w['t'] - x['t']))
        ratios.append(x['images_per_s'] / y['images_per_s'])
    return statistics.median(ratios)


def ratio_names(family_peers: Sequence[str]) -> list[str]:
    names = []
    for name, _, den in RATIOS:
        if '{peer}' in name:
            names += [name.format(peer=p) for p in family_peers]
        else:
            names.append(name)
    return names


def compute_ratios(rows: list[dict]) -> list[dict]:
    """Throughput ratios per (setting, model): evit_mm against timm's same architecture and against the shared
    peers of its family (``deploy/mobilenetv3``: evit_mm deploy over MobileNetV3-Large eager, ...).

    Each ratio pairs windows that ran side by side (:func:`paired_ratio`); the ratio of the median throughputs
    is kept too, under ``of_medians``.
    """
    out = []
    for setting in dict.fromkeys(r['setting'] for r in rows):
        srows = [r for r in rows if r['setting'] == setting]
        for name in dict.fromkeys(r['spec'] for r in srows if r['role'] == 'model'):
            mine = [r for r in srows if r['spec'] == name and r['role'] == 'model']
            family = mine[0].get('family', '')
            by = {(r['impl'], r['mode']): r for r in mine}
            peers = {}
            for r in srows:
                if r['role'] == 'peer' and r.get('family', '') == family:
                    peers[(r.get('peer') or _peer_of(r['model']), r['mode'])] = r
            entry = dict(setting=setting, model=name)
            of_medians = {}
            for ratio, num, den in RATIOS:
                pairs = []
                if '{peer}' in ratio:
                    for peer in dict.fromkeys(p for p, _ in peers):
                        pairs.append((ratio.format(peer=peer), by.get(num), peers.get((peer, den[1]))))
                else:
                    pairs.append((ratio, by.get(num), by.get(den)))
                for rname, a, b in pairs:
                    if a and b:
                        entry[rname] = paired_ratio(a, b)
                        of_medians[rname] = a['images_per_s'] / b['images_per_s']
            entry['of_medians'] = of_medians
            out.append(entry)
    return out


def _peer_of(model_name: str) -> str:
    for key, p in PEER_SPECS.items():
        if p.model_name == model_name:
            return key
    return model_name


def _fmt_speed(row: dict | None, protocol: str) -> str:
    if row is None:
        return '–'
    if protocol == 'gpu':
        return f"{row['images_per_s']:.0f} @{row['batch_size']} / {row.get('latency_ms', float('nan')):.2f} ms"
    ips = row['images_per_s']
    return f"{ips:.1f} ({row['ms_per_batch']:.0f} ms)" if ips >= 10 else f"{ips:.3g} ({row['ms_per_batch']:.0f} ms)"


def markdown_tables(result: dict) -> str:
    meta, rows, ratios = result['meta'], result['results'], result['ratios']
    lines = ['Models (params of the timed model; MACs per image at its input size, conv + matmul; backbone params: '
             'the EfficientViT-M detection backbone alone):', '',
             '| model | family | input | params (M) | params deploy (M) | backbone params (M) | GMACs evit_mm | '
             'GMACs timm |', '|---|---|---|---|---|---|---|---|']

    def m(v, scale=1e6, digits=3):
        return '–' if v is None else f'{v / scale:.{digits}f}'
    for name, info in result['models'].items():
        size = info.get('input_size')
        size = f'{size[0]}x{size[1]}' if size else '–'
        lines.append(f"| {name} | {info.get('family', '')}{' (peer)' if info.get('peer') else ''} | {size} | "
                     f"{m(info['params'])} | {m(info.get('params_deploy'))} | {m(info.get('params_backbone'))} | "
                     f"{m(info['macs'], 1e9, 3)} | {m(info.get('macs_timm'), 1e9, 3)} |")
    for setting in dict.fromkeys(r['setting'] for r in rows):
        srows = [r for r in rows if r['setting'] == setting]
        protocol = srows[0]['protocol']
        unit = ('images/s @ largest power-of-two batch / batch-1 latency' if protocol == 'gpu'
                else 'images/s (time per batch)')
        load = [v for r in srows for v in (r.get('loadavg_before'), r.get('loadavg_after')) if v is not None]
        load_text = f"; 1-min load average {min(load):.1f} to {max(load):.1f}" if load else ''
        lines += ['', f"### {setting}", '',
                  f"{unit}, median of {meta['repeats']} windows of {meta['duration']:g} s{load_text}. Ratios: median "
                  "over the windows of the ratio to the other model's nearest window.", '']
        for family in dict.fromkeys(r.get('family', '') for r in srows):
            frows = [r for r in srows if r.get('family', '') == family]
            lines += ['| model | implementation | batch | eager | deploy / fused | channels_last | onnxruntime | '
                      'max abs diff |', '|---|---|---|---|---|---|---|---|']
            groups: dict[tuple, dict] = {}
            for r in frows:
                impl = r['impl'] if r['role'] == 'model' else 'peer'
                groups.setdefault((r['model'], impl), {})[r['mode']] = r
            for (model, impl), by in groups.items():
                diffs = [r['max_abs_diff'] for r in by.values() if r.get('max_abs_diff') is not None]
                any_row = next(iter(by.values()))
                label = impl if impl != 'peer' else result['models'].get(model, {}).get('label', model) + ' (peer)'
                fused = by.get('deploy') or by.get('fused') or by.get('fused_channels_last')
                lines.append(f"| {model} | {label} | {any_row['batch_size']} | {_fmt_speed(by.get('eager'), protocol)} "
                             f"| {_fmt_speed(fused, protocol)}{' (NHWC)' if 'fused_channels_last' in by else ''} | "
                             f"{_fmt_speed(by.get('channels_last'), protocol)} | "
                             f"{_fmt_speed(by.get('onnx'), protocol)} | {f'{max(diffs):.1e}' if diffs else '–'} |")
            entries = [e for e in ratios if e['setting'] == setting and
                       result['models'].get(e['model'], {}).get('family') == family]
            names = [n for n in dict.fromkeys(k for e in entries for k in e if k not in ('setting', 'model',
                                                                                         'of_medians'))]
            if entries and names:
                lines += ['', '| model | ' + ' | '.join(names) + ' |', '|---|' + '---|' * len(names)]
                for e in entries:
                    lines.append(f"| {e['model']} | " + ' | '.join(f"{e[n]:.2f}x" if n in e else '–' for n in names)
                                 + ' |')
            lines.append('')
    lines.append(f"Command: `{meta['command']}`  ")
    mi = meta['machine']
    lines.append(f"Machine: {mi['machine']}, {mi['cpu']}, {mi['cpu_count']} CPUs"
                 + (f", {mi['gpu']}" if 'gpu' in mi else '')
                 + f"; torch {mi['torch']}, timm {mi['timm']}, onnxruntime {mi.get('onnxruntime', '–')}, "
                   f"evit_mm {mi['evit_mm']}; {meta['date']}")
    return '\n'.join(lines)


def plot_speed_vs_params(result: dict, path: str) -> None:
    """images/s against parameters, one panel per setting, log-log; a colour per (implementation, form), a
    marker per family, peers as black/grey symbols labelled by name."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    rows = result['results']
    settings = list(dict.fromkeys(r['setting'] for r in rows))
    fig, axes = plt.subplots(1, len(settings), figsize=(7.5 * len(settings), 5.5), squeeze=False)
    colors = {('evit_mm', 'deploy'): 'tab:red', ('evit_mm', 'eager'): 'tab:orange', ('evit_mm', 'onnx'): 'tab:purple',
              ('timm', 'eager'): 'tab:blue', ('timm', 'fused'): 'tab:cyan', ('timm', 'onnx'): 'tab:green',
              ('timm', 'channels_last'): 'tab:olive'}
    markers = dict(zip(FAMILIES, 'osD^vP'))
    for ax, setting in zip(axes[0], settings):
        srows = [r for r in rows if r['setting'] == setting]
        seen = set()
        for (impl, mode), color in colors.items():
            for family in FAMILIES:
                pts = sorted((r['params'] / 1e6, r['images_per_s'], r['spec']) for r in srows if r['role'] == 'model'
                             and (r['impl'], r['mode']) == (impl, mode) and r.get('family') == family)
                if not pts:
                    continue
                label = f'{impl} {mode}' if (impl, mode) not in seen else None
                seen.add((impl, mode))
                ax.plot([p[0] for p in pts], [p[1] for p in pts], color=color, marker=markers[family], ls='-',
                        lw=1, ms=5, label=label)
                if (impl, mode) == ('evit_mm', 'deploy'):
                    for px, py, name in pts:
                        short = result['models'].get(name, {}).get('label', name).replace('EfficientViT-', '')
                        ax.annotate(short, (px, py), textcoords='offset points', xytext=(4, 4), fontsize=7)
        for r in (r for r in srows if r['role'] == 'peer'):
            name = result['models'].get(r['model'], {}).get('label', r['model'])
            ax.plot([r['params'] / 1e6], [r['images_per_s']], color='black' if r['mode'] == 'eager' else 'grey',
                    marker='*', ms=11, ls='none')
            form = '' if r['mode'] == 'eager' else f" {r['mode']}"
            ax.annotate(f'{name}{form}', (r['params'] / 1e6, r['images_per_s']),
                        textcoords='offset points', xytext=(5, -9), fontsize=7)
        for family in dict.fromkeys(r.get('family') for r in srows if r['role'] == 'model'):
            ax.plot([], [], color='grey', marker=markers.get(family, 'o'), ls='none', label=family)
        ax.set_xscale('log')
        ax.set_yscale('log')
        ax.set_xlabel('parameters (M)')
        ax.set_ylabel('images / s')
        ax.set_title(setting, fontsize=9)
        ax.grid(True, which='both', alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle('evit_mm vs timm and the peers (stars): throughput against parameters', fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# =============================================================================================== CLI
def _threads(text: str):
    if text == 'all':
        return 'all'
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive int or 'all', got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be positive (or 'all'), got {value}")
    return value


def _positive(kind):
    def parse(text):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f'expected a positive {kind.__name__}, got {text!r}') from None
        if not (value > 0 and math.isfinite(value)):
            raise argparse.ArgumentTypeError(f'must be positive, got {text}')
        return value
    parse.__name__ = f'positive {kind.__name__}'
    return parse


def _non_negative(text):
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f'expected a number of seconds, got {text!r}') from None
    if not (value >= 0 and math.isfinite(value)):
        raise argparse.ArgumentTypeError(f'must be >= 0, got {text}')
    return value


def _gpu_batch(text):
    return 'max' if text == 'max' else _positive(int)(text)


def build_parser() -> argparse.ArgumentParser:
    doc_head, doc_rest = __doc__.split('\n\n', 1)
    parser = argparse.ArgumentParser(description=doc_head, epilog=doc_rest,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    known = ', '.join(list(families()) + list(MODEL_SPECS))
    parser.add_argument('--models', nargs='+', default=['efficientvit_m'], metavar='NAME',
                        help=f'models or families to benchmark (default: efficientvit_m = M0..M5; all: every '
                             f'family); known: {known}')
    parser.add_argument('--quick', action='store_true',
                        help='one small model per family at a tiny size, batch 2, 0.1 s windows, no warm-up: checks '
                             'that every family runs (seconds, not a measurement); overrides --models')
    parser.add_argument('--peers', nargs='*', default=list(PEER_SPECS), metavar='PEER',
                        help=f"comparison points: {', '.join(PEER_SPECS)} (default: all; each is used with the "
                             "families it belongs to; none: --peers)")
    parser.add_argument('--no-onnx', dest='onnx', action='store_false',
                        help='skip the onnxruntime forms (evit_mm and timm exported to ONNX)')
    parser.add_argument('--no-peer-channels-last', dest='peer_channels_last', action='store_false',
                        help='do not also time timm and MobileNetV3 with channels_last weights')
    parser.add_argument('--device', nargs='+', default=['cpu'], choices=['cpu', 'cuda'],
                        help='cpu: the CPU protocol; cuda: the GPU protocol (skipped with a message without a GPU)')
    parser.add_argument('--threads', nargs='+', type=_threads, default=[1], metavar='N',
                        help="CPU threads, positive ints or 'all' (torch's default); several run in turn (default 1)")
    parser.add_argument('--batch-size', type=_positive(int), default=None,
                        help='CPU batch size (default: 16 for M/B/L, 1 for seg/SAM/SR)')
    parser.add_argument('--gpu-batch-size', type=_gpu_batch, default='max',
                        help="GPU batch: 'max' (largest power of two that fits, default) or a positive int")
    parser.add_argument('--max-batch', type=_positive(int), default=4096,
                        help='upper bound of the GPU batch search (default 4096; the paper uses 2048)')
    parser.add_argument('--amp', choices=['fp16', 'bf16', 'off'], default='fp16',
                        help='GPU autocast dtype (default fp16, as the paper); the CPU protocol is always fp32')
    parser.add_argument('--img-size', type=_positive(int), default=None,
                        help='square input resolution for every model (default: each model\'s own: 224 for M/B/L, '
                             '512x1024 seg, 512/1024 SAM, 128 SR)')
    parser.add_argument('--warmup', type=_non_negative, default=2.0,
                        help='seconds of untimed iterations per model before timing (default 2; 0: none)')
    parser.add_argument('--duration', type=_positive(float), default=10.0,
                        help='seconds per timed window (default 10)')
    parser.add_argument('--repeats', type=_positive(int), default=3,
                        help='timed windows per model; the median is reported (default 3)')
    parser.add_argument('--peer-windows', choices=['per-model', 'once'], default='per-model',
                        help='time a light shared peer (MobileNetV3) after every model of its family (default), so '
                             'that each ratio against it pairs adjacent windows, or once per round')
    parser.add_argument('--interleave', choices=['model', 'all'], default='model',
                        help='model (default): build, time and free one model at a time (its evit_mm and timm '
                             "forms, its family's peers beside it), so memory is that of the largest model; all: "
                             'build every candidate first and interleave all of them in each round (memory: all '
                             'models at once)')
    parser.add_argument('--seed', type=int, default=0, help='seed of the inputs and weights')
    parser.add_argument('--out-dir', default=osp.join('work_dirs', 'benchmark'),
                        help='where benchmark.json, benchmark.md and speed_vs_params.png go '
                             '(default work_dirs/benchmark)')
    parser.add_argument('--progress', choices=['auto', 'on', 'off'], default='auto',
                        help='tqdm progress bar on stderr (auto: for runs estimated at 20 s or more)')
    return parser


def resolve_models(parser: argparse.ArgumentParser, names: Sequence[str]) -> list[ModelSpec]:
    fams = families()
    selected, unknown, empty = [], [], []
    for name in names:
        key = name.lower().replace('-', '_')
        if key == 'all':
            selected.extend(n for f in fams.values() for n in f)
        elif key in MODEL_SPECS:
            selected.append(key)
        elif key in fams:
            if not fams[key]:
                empty.append(key)
            selected.extend(fams[key])
        else:
            unknown.append(name)
    if unknown:
        parser.error(f"unknown model(s): {', '.join(unknown)}. Known models: {', '.join(MODEL_SPECS)}; "
                     f"families: {', '.join(f'{k} ({len(v)} models)' for k, v in fams.items())}")
    for key in empty:
        print(f'{key}: skipped, evit_mm/models/sr.py does not exist in this checkout', file=sys.stderr)
    return [MODEL_SPECS[name] for name in dict.fromkeys(selected)]


def parse_args(argv=None):
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    if '--quick' in argv:
        parser.set_defaults(batch_size=2, duration=0.1, repeats=1, warmup=0.0)
    args = parser.parse_args(argv)
    args.sizes = {}
    if args.quick:
        args.models = [name for name, _ in QUICK if name in MODEL_SPECS]
        args.sizes = {name: size for name, size in QUICK}
        if '--peers' not in argv:
            args.peers = list(QUICK_PEERS)
        missing = [name for name, _ in QUICK if name not in MODEL_SPECS]
        if missing:
            print(f"--quick: skipped {', '.join(missing)} (evit_mm/models/sr.py does not exist)", file=sys.stderr)
    args.specs = resolve_models(parser, args.models)
    peers = [p.lower() for p in args.peers if p.lower() != 'none']
    bad = [p for p in peers if p not in PEER_SPECS]
    if bad:
        parser.error(f"unknown peer(s): {', '.join(bad)}. Known peers: {', '.join(PEER_SPECS)} (or none)")
    args.peers = list(dict.fromkeys(peers))
    if args.img_size is not None and args.img_size < 16:
        parser.error(f'--img-size must be at least 16 (the models have stride 16 or more), got {args.img_size}')
    args.device = list(dict.fromkeys(args.device))
    args.threads = list(dict.fromkeys(args.threads))
    return args


def _command(argv) -> str:
    if argv is None:
        argv = sys.argv[1:]
    return 'python tools/benchmark.py ' + shlex.join(argv) if argv else 'python tools/benchmark.py'


def _settings(args) -> list[dict]:
    settings = []
    for device in args.device:
        if device == 'cuda':
            if not torch.cuda.is_available():
                built = torch.version.cuda or 'no CUDA (CPU-only build)'
                print(f'--device cuda: no CUDA GPU is available (torch.cuda.is_available() is False; torch '
                      f'{torch.__version__}, built with {built}). Skipping the GPU protocol.', flush=True)
                continue
            label = (f"CUDA {torch.cuda.get_device_name(0)}, AMP {args.amp}, "
                     f"batch {args.gpu_batch_size if args.gpu_batch_size != 'max' else 'max pow2'}")
            settings.append(dict(device='cuda', protocol='gpu', batch_size=args.gpu_batch_size, label=label))
        else:
            for threads in args.threads:
                n = torch.get_num_threads() if threads == 'all' else threads
                name = f'all threads ({n})' if threads == 'all' else f"{n} thread{'s' if n > 1 else ''}"
                batch = f'batch {args.batch_size}' if args.batch_size else 'batch 16 (M/B/L) or 1 (seg/SAM/SR)'
                settings.append(dict(device='cpu', protocol='cpu', threads=n, batch_size=args.batch_size,
                                     label=f'CPU, {name}, {batch}, fp32'))
    return settings


def main(argv=None) -> int:
    args = parse_args(argv)
    log = lambda msg: print(msg, file=sys.stderr, flush=True)  # noqa: E731

    settings = _settings(args)
    if not settings:
        print('Nothing to run (no available device among --device ' + ' '.join(args.device) + ').', flush=True)
        return 0
    if not args.specs:
        print('Nothing to run (no model selected).', flush=True)
        return 0

    n_forms = 2 + args.onnx
    n_model = sum(n_forms + (1 + n_forms + args.peer_channels_last) * ('timm' in args.peers and
                                                                      s.timm_build is not None) for s in args.specs)
    fams = {s.family for s in args.specs}
    n_peer = sum(1 + PEER_SPECS[p].onnx * args.onnx for p in args.peers
                 if not PEER_SPECS[p].per_model and fams & set(PEER_SPECS[p].families))
    estimate = len(settings) * ((n_model + n_peer) * args.warmup + (n_model + n_peer * 2) * args.repeats
                                * args.duration)
    progress = args.progress == 'on' or (args.progress == 'auto' and estimate >= 20)

    saved_threads = torch.get_num_threads()
    try:
        log(f'{len(args.specs)} model(s) x {len(settings)} setting(s): at least {estimate / 60:.1f} min of timing '
            '(more where one call outlasts a window; building, output checks and ONNX export come on top)')
        if args.interleave == 'model':
            rows, models = run_by_model(args, settings, log, progress)
        else:
            candidates, models = build_candidates(args.specs, args.peers, args.img_size, args.seed, log,
                                                  onnx=args.onnx, peer_own_size=not args.quick, sizes=args.sizes,
                                                  peer_channels_last=args.peer_channels_last)
            rows = []
            for setting in settings:
                rows += measure_setting(candidates, setting, args, log, progress)
        warn_if_loaded(rows, log)
    finally:
        torch.set_num_threads(saved_threads)

    meta = dict(command=_command(argv), date=datetime.datetime.now().isoformat(timespec='seconds'),
                img_size=args.img_size, quick=args.quick, cpu_batch_size=args.batch_size,
                gpu_batch_size=args.gpu_batch_size, max_batch=args.max_batch, amp=args.amp, warmup_s=args.warmup,
                duration=args.duration, repeats=args.repeats, seed=args.seed, peers=args.peers, onnx=args.onnx,
                peer_channels_last=args.peer_channels_last,
                peer_windows=args.peer_windows, interleave=args.interleave,
                statistic='median over repeats of images/s of a timed window; ms_per_batch = 1000 * batch / that',
                flops_convention='MACs (multiply-accumulates) per image at batch 1, counted by '
                                 'torch.utils.flop_counter.FlopCounterMode (conv + matmul ops) and divided by 2; '
                                 'elementwise ops are not counted',
                weights='timm random init with randomised BatchNorm statistics and attention biases (seed), '
                        'copied into evit_mm: both implementations run identical weights; models without a timm '
                        'peer: random weights with randomised BatchNorm statistics',
                machine=machine_info(args.device))
    result = dict(meta=meta, models=models, results=rows, ratios=compute_ratios(rows))

    os.makedirs(args.out_dir, exist_ok=True)
    json_path = osp.join(args.out_dir, 'benchmark.json')
    md_path = osp.join(args.out_dir, 'benchmark.md')
    png_path = osp.join(args.out_dir, 'speed_vs_params.png')
    table = markdown_tables(result)
    with open(json_path, 'w') as f:
        json.dump(result, f, indent=1)
    with open(md_path, 'w') as f:
        f.write(table + '\n')
    plot_speed_vs_params(result, png_path)
    print(table)
    print()
    print(f'wrote {osp.abspath(json_path)}')
    print(f'wrote {osp.abspath(md_path)}')
    print(f'wrote {osp.abspath(png_path)}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
