"""The model zoo of the benchmark: every evit_mm model (``MODEL_SPECS``) and the comparison points (``PEER_SPECS``).

Families (a family name selects all its models):

  efficientvit_m    EfficientViT-M0..M5 ImageNet classifiers   peers: timm (same architecture), MobileNetV3-Large
  efficientvit_b    EfficientViT-B0..B3 backbones              peer:  timm (same architecture, forward_features)
  efficientvit_l    EfficientViT-L0..L3 backbones              peer:  timm (L1..L3; timm has no L0)
  efficientvit_seg  EfficientViT-Seg B0..B3/L1/L2 (Cityscapes) peer:  SegFormer-B1 (mmseg)
  efficientvit_sam  EfficientViT-SAM L0..XL1 image encoders    peers: SAM ViT-B / ViT-H (and ViT-L) encoders
  efficientvit_sr   EfficientViT-SR x2, lightweight and        peers: SwinIR-light x2, EDSR, Restormer (mmagic)
                    high-resolution, widths 1.0 and 0.75

timm, the mm libraries and segment_anything are imported only when a model that needs them is built.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import nn

from evit_mm.models.deploy import deploy as _deploy
from evit_mm.models.registry import create_model, get_entry, list_models


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


def _set_litemla_eps(model: nn.Module, eps: float) -> nn.Module:
    """timm's LiteMLA uses eps 1e-5, the reference (and evit_mm) 1e-15: align timm for the output comparison."""
    for m in model.modules():
        if type(m).__name__ == 'LiteMLA' and hasattr(m, 'eps'):
            m.eps = eps
    return model


def _efficientvit_m_weights_from_timm(model: nn.Module, timm_model: nn.Module) -> None:
    """Copy a timm ``efficientvit_m*`` state dict into an ``EfficientViTMClassifier`` (strictly)."""
    model.load_pretrained(timm_model.state_dict(), fmt='timm')


def _mit_weights_from_timm(model: LastFeature, timm_model: TimmFeatures) -> None:
    """Copy a timm ``efficientvit_b*/l*`` state dict into an evit_mm backbone (strictly, evit_mm's converter)."""
    model.backbone.load_pretrained(timm_model.model.state_dict())


def _efficientvit_m_backbone(arch: str) -> Callable[[], nn.Module]:
    def build():
        return create_model(f'efficientvit_{arch}')  # as the detection configs build it: out_indices 1-3, window 7
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
    round (heavy ones).  ``own_size``: its own input size instead of the model's.  ``default``: timed unless
    ``--peers`` says otherwise."""
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
    default: bool = True  # among the default --peers


# ------------------------------------------------------------------------------------------------ peers
def _build_mobilenetv3(input_size):
    import timm
    return timm.create_model('mobilenetv3_large_100', pretrained=False)


class _SegFormer(nn.Module):
    """mmseg's SegFormer-B1 (Cityscapes config: MiT-B1 + SegformerHead, 19 classes): image -> stride-4 logits."""

    def __init__(self):
        super().__init__()
        from mmengine.hub import get_config
        from mmengine.model import revert_sync_batchnorm
        from mmengine.registry import init_default_scope
        from mmseg.registry import MODELS

        import evit_mm.mm  # noqa: F401  (importing evit_mm.mm applies the compat fixes)
        init_default_scope('mmseg')
        cfg = get_config('mmseg::segformer/segformer_mit-b1_8xb1-160k_cityscapes-1024x1024.py').model
        cfg.backbone.init_cfg = None  # no download; speed does not depend on the weights
        cfg.decode_head.num_classes = 19
        self.model = revert_sync_batchnorm(MODELS.build(cfg)).eval()

    def forward(self, x):
        return self.model._forward(x)


# segment_anything's build_sam settings: embed dim, depth, heads, global attention blocks
SAM_VIT = {'vit_b': (768, 12, 12, (2, 5, 8, 11)), 'vit_l': (1024, 24, 16, (5, 11, 17, 23)),
           'vit_h': (1280, 32, 16, (7, 15, 23, 31))}


def build_sam_vit_encoder(name: str, image_size: int = 1024, seed: int = 0) -> nn.Module:
    """segment_anything's ``ImageEncoderViT`` with SAM's settings for ``name`` (vit_b, vit_l, vit_h), random
    weights (built on ``meta`` to skip the slow default init, then filled with small random values)."""
    from functools import partial

    from segment_anything.modeling import ImageEncoderViT
    if name not in SAM_VIT:
        raise ValueError(f'unknown SAM ViT {name!r}; known: {", ".join(SAM_VIT)}')
    dim, depth, heads, glob = SAM_VIT[name]
    with torch.device('meta'):
        enc = ImageEncoderViT(depth=depth, embed_dim=dim, img_size=image_size, mlp_ratio=4,
                              norm_layer=partial(nn.LayerNorm, eps=1e-6), num_heads=heads, patch_size=16,
                              qkv_bias=True, use_rel_pos=True, global_attn_indexes=glob, window_size=14, out_chans=256)
    enc = enc.to_empty(device='cpu')
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for n, t in enc.state_dict(keep_vars=True).items():
            t.copy_(torch.randn(t.shape, generator=g) * 0.02 if t.dim() > 1 else
                    (torch.ones(t.shape) if n.endswith('weight') else torch.zeros(t.shape)))
    return enc.eval()


def _build_sam_vit(name):
    return lambda input_size: build_sam_vit_encoder(name, input_size[0])


def _sam_vit_peer(name: str, default: bool = True) -> PeerSpec:
    size = name[len('vit_'):].upper()
    return PeerSpec(f'sam_{name}', f'SAM ViT-{size} encoder', per_model=False, build=_build_sam_vit(name),
                    families=('efficientvit_sam',), every_model=False, own_size=(1024, 1024), model_name=f'sam_{name}',
                    description=f"segment_anything ImageEncoderViT, SAM's ViT-{size}", default=default)


def _build_mmagic_generator(config: str) -> Callable[[tuple[int, int]], nn.Module]:
    """A peer built by mmagic's registry from the ``model.generator`` of a config shipped with mmagic."""
    def build(input_size):
        from mmagic.registry import MODELS
        from mmengine.hub import get_config
        from mmengine.registry import init_default_scope
        init_default_scope('mmagic')
        return MODELS.build(get_config(config).model.generator)
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
    'sam_vit_b': _sam_vit_peer('vit_b'),
    'sam_vit_h': _sam_vit_peer('vit_h'),
    'sam_vit_l': _sam_vit_peer('vit_l', default=False),
    'swinir': PeerSpec('swinir', 'SwinIR-light x2 (mmagic)', per_model=False, build=_build_swinir,
                       families=('efficientvit_sr',), every_model=False, model_name='swinir_light_x2',
                       description='mmagic SwinIRNet with the lightweight x2 settings of the SwinIR paper'),
    # Restormer has no upsampler (it restores at its input size): timed on the same LR input as the others, the
    # cheapest way it could serve x2 SR, so a speed-up over it is a lower bound
    'restormer': PeerSpec('restormer', 'Restormer (mmagic)', per_model=False,
                          build=_build_mmagic_generator('mmagic::restormer/restormer_official_dfwb-color-sigma15.py'),
                          families=('efficientvit_sr',), every_model=False, model_name='restormer',
                          description="mmagic Restormer of its restormer_official_dfwb-color-sigma15 config "
                                      "(the paper's high-resolution SR baseline; no upsampler)"),
    'edsr': PeerSpec('edsr', 'EDSR x2 (mmagic)', per_model=False,
                     build=_build_mmagic_generator('mmagic::edsr/edsr_x2c64b16_1xb16-300k_div2k.py'),
                     families=('efficientvit_sr',), every_model=False, model_name='edsr_x2',
                     description='mmagic EDSRNet of its edsr_x2c64b16 config (64 channels, 16 blocks)'),
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
    def timm_build(input_size, arch=arch):
        import timm
        return timm.create_model(f'efficientvit_{arch}', pretrained=False, img_size=input_size[0])

    def deploy(model):
        return _deploy(model.fuse())  # the head's BatchNorm1d too (it is not an evit_mm module)

    return ModelSpec(
        name=f'efficientvit_{arch}', family='efficientvit_m', label=f'EfficientViT-{arch.upper()}',
        build=lambda size, arch=arch: _m_classifier(arch, size[0]), deploy=deploy,
        timm_name=f'efficientvit_{arch}', timm_build=timm_build, weights_from_timm=_efficientvit_m_weights_from_timm,
        backbone=_efficientvit_m_backbone(arch), peers=('mobilenetv3',), paper=_PAPER_M[arch])


def _m_classifier(arch: str, img_size: int) -> nn.Module:
    from evit_mm.models.classifier import EfficientViTMClassifier
    return EfficientViTMClassifier(arch, img_size).eval()


def _mit_spec(arch: str, timm_available: bool) -> ModelSpec:
    family = 'efficientvit_b' if arch.startswith('b') else 'efficientvit_l'

    def build(size, arch=arch):
        return LastFeature(create_model(f'efficientvit_{arch}', out_indices=(-1,))).eval()

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
        return create_model(f'efficientvit_seg_{arch}_cityscapes').eval()

    return ModelSpec(name=f'efficientvit_seg_{arch}', family='efficientvit_seg',
                     label=f'EfficientViT-Seg-{arch.upper()}', build=build, input_size=(512, 1024), cpu_batch=1,
                     peers=('segformer',), paper=_PAPER_SEG[arch])


def _sam_spec(variant: str) -> ModelSpec:
    def build(size, variant=variant):
        return create_model(f'efficientvit_sam_{variant}', image_size=size[0]).image_encoder.eval()

    size = get_entry(f'efficientvit_sam_{variant}').input_size
    return ModelSpec(name=f'efficientvit_sam_{variant}', family='efficientvit_sam',
                     label=f'EfficientViT-SAM-{variant.upper()}', build=build, input_size=(size, size), cpu_batch=1,
                     peers=('sam_vit_b', 'sam_vit_h'), paper=_PAPER_SAM[variant])


def _sr_spec(preset: str, width: float) -> ModelSpec:
    """EfficientViT-SR x2: ``lightweight`` (efficientvit_sr_x2) or ``highres`` (efficientvit_sr_highres_x2), at
    width 1.0 or 0.75 (``_w0.75``)."""
    def build(size, preset=preset, width=width):
        return create_model(f'efficientvit_sr_{preset}_x2', width_mult=width).eval()

    highres, narrow = preset == 'highres', width != 1
    name = 'efficientvit_sr' + '_highres' * highres + '_x2' + (f'_w{width}' if narrow else '')
    label = 'EfficientViT-SR' + ' high-res' * highres + ' x2' + (f' w{width}' if narrow else '')
    return ModelSpec(name=name, family='efficientvit_sr', label=label, build=build, input_size=(128, 128),
                     cpu_batch=1, peers=('swinir', 'edsr', 'restormer'))


def _archs(family: str, prefix: str, suffix: str = '') -> list[str]:
    """The archs of a registry family (``efficientvit_b`` -> b0 .. b3), from the registry's names."""
    return [n[len(prefix):len(n) - len(suffix)] for n in list_models(f'{prefix}*{suffix}')
            if get_entry(n).family == family]


def _all_specs() -> dict[str, ModelSpec]:
    specs = [_m_spec(a) for a in _archs('efficientvit_m', 'efficientvit_')]
    specs += [_mit_spec(a, True) for a in _archs('efficientvit_b', 'efficientvit_')]
    specs += [_mit_spec(a, a != 'l0') for a in _archs('efficientvit_l', 'efficientvit_')]  # timm has no L0
    specs += [_seg_spec(a) for a in _archs('efficientvit_seg', 'efficientvit_seg_', '_cityscapes')]
    specs += [_sam_spec(v) for v in _archs('efficientvit_sam', 'efficientvit_sam_')]
    specs += [_sr_spec(p, w) for p in ('lightweight', 'highres') for w in (1.0, 0.75)]
    return {s.name: s for s in specs}


#: The models the benchmark knows, by CLI name.  Families are selected by their name too (``efficientvit_m``).
MODEL_SPECS: dict[str, ModelSpec] = _all_specs()

#: ``--quick``: one small model per family, tiny inputs; (model, input size, peers).
QUICK = [('efficientvit_m0', (64, 64)), ('efficientvit_b0', (64, 64)), ('efficientvit_l1', (64, 64)),
         ('efficientvit_seg_b0', (64, 128)), ('efficientvit_sam_l0', (64, 64)), ('efficientvit_sr_x2', (32, 32))]
QUICK_PEERS = ['timm', 'mobilenetv3', 'segformer', 'sam_vit_b', 'swinir']
#: the peers timed when ``--peers`` is not given
DEFAULT_PEERS = [name for name, peer in PEER_SPECS.items() if peer.default]

FAMILIES = ('efficientvit_m', 'efficientvit_b', 'efficientvit_l', 'efficientvit_seg', 'efficientvit_sam',
            'efficientvit_sr')


def families() -> dict[str, list[str]]:
    out: dict[str, list[str]] = {f: [] for f in FAMILIES}
    for spec in MODEL_SPECS.values():
        out[spec.family].append(spec.name)
    return out


