"""Every evit_mm model by name, timm-style: ``create_model(name, pretrained=...)`` and ``list_models(...)``.

Each variant is declared once, here: its architecture row (the tables below, which the model modules read), its
builder with its defaults (norm eps, input size) and the checkpoints published for it (URL, layout, sha256 where
known, the published numbers). The benchmark, the ONNX export, the SAM builders and tools, the zero-shot adapters
and the mm configs (through the ``evit://`` checkpoint scheme) all read names from here.

Names (see ``docs/model_zoo.md``)::

    efficientvit_m0 .. efficientvit_m5            EfficientViT-M backbones (ImageNet weights: 'in1k')
    efficientvit_b0 .. b3, _l0 .. _l3, _xl0, _xl1  EfficientViT-B/L/XL backbones ('r224', 'r256', ... 'r384')
    efficientvit_seg_b1_cityscapes ...             backbone + seg head (11 published: 'cityscapes' / 'ade20k')
    efficientvit_sam_l0 .. _xl1                    EfficientViT-SAM ('sa1b')
    efficientvit_sr_lightweight_x2 / _x3 / _x4, efficientvit_sr_highres_x2   super-resolution (no weights)
    sam_vit_b / sam_vit_l / sam_vit_h              segment_anything's SAM (the phase-1 teacher; 'sa1b')
    retinanet_efficientvit_m4_fpn_1x_coco, mask_rcnn_efficientvit_m4_fpn_1x_coco   Cream's detectors (mmdet)

``name.tag`` picks one checkpoint of a name (``efficientvit_b1.r224``), as in timm.
"""
from __future__ import annotations

import difflib
import fnmatch
import importlib
import os
import os.path as osp
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Union

from torch import nn

from .hub import Weights, fetch, fetch_url

__all__ = ['ModelEntry', 'create_model', 'list_models', 'get_entry', 'resolve_weights', 'resolve_checkpoint',
           'split_name', 'EVIT_SCHEME', 'model_entries', 'variant_key', 'MSRA_ARCHS', 'MSRA_NUM_STAGES',
           'msra_per_stage', 'MIT_B_ARCHS', 'MIT_L_ARCHS',
           'SEG_HEADS', 'SAM_VARIANTS', 'SR_PRESETS', 'SR_SCALES']

EVIT_SCHEME = 'evit://'


@dataclass(frozen=True)
class ModelEntry:
    """One named model: ``build(**kwargs)`` with ``defaults``, and its published checkpoints (the first is the
    default of ``pretrained=True``)."""

    name: str
    family: str
    build: Callable[..., nn.Module]
    defaults: dict = field(default_factory=dict)
    weights: tuple[Weights, ...] = ()
    input_size: Any = None
    config: Optional[str] = None  # the evit_mm config that trains / evaluates it, relative to configs/
    summary: str = ''

    def weight(self, tag: Optional[str] = None) -> Weights:
        if not self.weights:
            raise ValueError(f'{self.name} has no published weights; pass pretrained=<path or URL> to load your own')
        if tag is None:
            return self.weights[0]
        for w in self.weights:
            if w.tag == tag:
                return w
        raise ValueError(f'{self.name} has no weights tagged {tag!r}; published: '
                         f'{", ".join(w.tag for w in self.weights)}')


_ENTRIES: dict[str, ModelEntry] = {}


def _add(name, family, build, weights=(), **kwargs) -> None:
    if name in _ENTRIES:
        raise ValueError(f'{name} is declared twice')
    _ENTRIES[name] = ModelEntry(name, family, build, weights=tuple(weights), **kwargs)


# ------------------------------------------------------------------------------------------------ the variants
# Each architecture row lives here, once; the model modules read their tables from this section (their old names,
# e.g. ``efficientvit_msra.ARCH_SETTINGS``, are these objects). A new variant is a row here plus, where weights are
# published, its checkpoints below.

#: EfficientViT-M0..M5 (Cream ``classification/model/build.py``; timm agrees). ``kernels`` are the per-head kernel
#: sizes of the depthwise conv on the queries, shared by all stages (stage ``i`` uses the first ``num_heads[i]``).
#:
#: **M0 uses (5, 5, 5, 5)**, as in Cream's classification code, its released ImageNet checkpoint and timm.
#: Cream's *detection* code declares M0 with (7, 5, 3, 3); its loader uses ``strict=False`` and would
#: silently skip the 18 mismatching query-conv weights of the official checkpoint.  There is no official
#: M0 detection checkpoint; to load one trained with Cream's detection code, build the model with
#: ``kernels=(7, 5, 3, 3)`` (``infer_msra_arch`` reads the kernels off any checkpoint).  M1..M5 are the same in
#: both codebases.
MSRA_ARCHS: dict[str, dict[str, tuple]] = {
    name: dict(embed_dims=dims, depths=depths, num_heads=heads, kernels=kernels, key_dims=(16, 16, 16))
    for name, dims, depths, heads, kernels in [
        ('m0', (64, 128, 192), (1, 2, 3), (4, 4, 4), (5, 5, 5, 5)),
        ('m1', (128, 144, 192), (1, 2, 3), (2, 3, 3), (7, 5, 3, 3)),
        ('m2', (128, 192, 224), (1, 2, 3), (4, 3, 2), (7, 5, 3, 3)),
        ('m3', (128, 240, 320), (1, 2, 3), (4, 3, 4), (5, 5, 5, 5)),
        ('m4', (128, 256, 384), (1, 2, 3), (4, 4, 4), (7, 5, 3, 3)),
        ('m5', (192, 288, 384), (1, 3, 4), (3, 3, 4), (7, 5, 3, 3)),
    ]
}

#: EfficientViT-M's stages after the stem (strides 16, 32, 64): every per-stage setting of a row holds this many.
MSRA_NUM_STAGES = 3


def msra_per_stage(value, name: str) -> tuple[int, ...]:
    """A per-stage EfficientViT-M setting (one positive int for every stage, or one each) as a tuple; the model
    and the checkpoint converter both read window sizes and widths through it."""
    values = (value,) * MSRA_NUM_STAGES if isinstance(value, int) else tuple(value)
    if len(values) != MSRA_NUM_STAGES or not all(isinstance(v, int) and v > 0 for v in values):
        raise ValueError(f'{name} must be a positive int or {MSRA_NUM_STAGES} positive ints, got {value!r}')
    return values

#: EfficientViT-B0..B3 (reference ``efficientvit_backbone_b*``); ``norm_eps`` is the official checkpoints' value.
MIT_B_ARCHS: dict[str, dict[str, Any]] = {
    'b0': dict(width_list=(8, 16, 32, 64, 128), depth_list=(1, 2, 2, 2, 2), dim=16, norm_eps=1e-5),
    'b1': dict(width_list=(16, 32, 64, 128, 256), depth_list=(1, 2, 3, 3, 4), dim=16, norm_eps=1e-5),
    'b2': dict(width_list=(24, 48, 96, 192, 384), depth_list=(1, 3, 4, 4, 6), dim=32, norm_eps=1e-5),
    'b3': dict(width_list=(32, 64, 128, 256, 512), depth_list=(1, 4, 6, 6, 9), dim=32, norm_eps=1e-5),
}
_L = dict(block_list=('res', 'fmb', 'fmb', 'mb', 'att'), expand_list=(1, 4, 4, 4, 6),
          fewer_norm_list=(False, False, False, True, True))
_XL = dict(block_list=('res', 'fmb', 'fmb', 'fmb', 'att@3', 'att@3'), expand_list=(1, 4, 4, 4, 4, 6),
           fewer_norm_list=(False, False, False, False, True, True))
#: EfficientViT-L0..L3, XL0/XL1 (reference ``efficientvit_backbone_l*`` / ``xl*``); ``norm_eps``: 1e-7 for L1-L3
#: (seg/cls checkpoints), 1e-6 for L0, XL0 and XL1 (SAM only).
MIT_L_ARCHS: dict[str, dict[str, Any]] = {
    'l0': dict(width_list=(32, 64, 128, 256, 512), depth_list=(1, 1, 1, 4, 4), norm_eps=1e-6, **_L),
    'l1': dict(width_list=(32, 64, 128, 256, 512), depth_list=(1, 1, 1, 6, 6), norm_eps=1e-7, **_L),
    'l2': dict(width_list=(32, 64, 128, 256, 512), depth_list=(1, 2, 2, 8, 8), norm_eps=1e-7, **_L),
    'l3': dict(width_list=(64, 128, 256, 512, 1024), depth_list=(1, 2, 2, 8, 8), norm_eps=1e-7, **_L),
    'xl0': dict(width_list=(32, 64, 128, 256, 512, 1024), depth_list=(0, 1, 1, 2, 3, 3), norm_eps=1e-6, **_XL),
    'xl1': dict(width_list=(32, 64, 128, 256, 512, 1024), depth_list=(1, 2, 2, 4, 6, 6), norm_eps=1e-6, **_XL),
}

#: The reference's seg heads (``seg.py``), by ``'<model>_<dataset>'``: (in_channel_list, head_width, head_depth,
#: expand_ratio, middle_op, final_expand, n_classes). Every one reads stage4/3/2 (strides 32/16/8) at stride 8.
SEG_HEADS: dict[str, tuple] = {
    'b0_cityscapes': ((128, 64, 32), 32, 1, 4, 'mbconv', 4, 19),
    'b1_cityscapes': ((256, 128, 64), 64, 3, 4, 'mbconv', 4, 19),
    'b2_cityscapes': ((384, 192, 96), 96, 3, 4, 'mbconv', 4, 19),
    'b3_cityscapes': ((512, 256, 128), 128, 3, 4, 'mbconv', 4, 19),
    'l1_cityscapes': ((512, 256, 128), 256, 3, 1, 'fmbconv', None, 19),
    'l2_cityscapes': ((512, 256, 128), 256, 5, 1, 'fmbconv', None, 19),
    'b1_ade20k': ((256, 128, 64), 64, 3, 4, 'mbconv', None, 150),
    'b2_ade20k': ((384, 192, 96), 96, 3, 4, 'mbconv', None, 150),
    'b3_ade20k': ((512, 256, 128), 128, 3, 4, 'mbconv', None, 150),
    'l1_ade20k': ((512, 256, 128), 128, 3, 4, 'fmbconv', 8, 150),
    'l2_ade20k': ((512, 256, 128), 128, 3, 4, 'fmbconv', 8, 150),
}

_NECK_L = dict(fid_list=('stage4', 'stage3', 'stage2'), in_channel_list=(512, 256, 128), head_width=256,
               expand_ratio=1, middle_op='fmb', image_size=512)
_NECK_XL = dict(fid_list=('stage5', 'stage4', 'stage3'), in_channel_list=(1024, 512, 256), head_width=256,
                expand_ratio=4, middle_op='fmb', image_size=1024)
#: The five published EfficientViT-SAM variants (reference ``sam.py``): backbone arch, neck, encoder input size.
SAM_VARIANTS: dict[str, dict[str, Any]] = {
    'l0': dict(backbone='l0', head_depth=4, **_NECK_L),
    'l1': dict(backbone='l1', head_depth=8, **_NECK_L),
    'l2': dict(backbone='l2', head_depth=12, **_NECK_L),
    'xl0': dict(backbone='xl0', head_depth=6, **_NECK_XL),
    'xl1': dict(backbone='xl1', head_depth=12, **_NECK_XL),
}

#: EfficientViT-SR settings. ``lightweight``: DIV2K-trained x2/x3/x4 models for small LR images (BSD100 160x240);
#: ``highres``: FFHQ 512 -> 1024, a stride-4 working resolution so that attention runs on 128x128 tokens.
SR_PRESETS: dict[str, dict] = {
    'lightweight': dict(channels=48, width=128, depth=6, down=2, dim=16, expand_ratio=2),
    'highres': dict(channels=48, width=192, depth=8, down=4, dim=16, expand_ratio=2),
}
#: the upscale factors each SR setting is named for (``efficientvit_sr_lightweight_x3``)
SR_SCALES = {'lightweight': (2, 3, 4), 'highres': (2,)}


def variant_key(name: str, family: str = '') -> str:
    """The table key of a variant name, the one normaliser of every family: ``'EfficientViT-B1'`` -> ``'b1'``,
    ``'efficientvit_sam_xl1'`` (family ``'sam'``) -> ``'xl1'``, ``'efficientvit-seg-b1-cityscapes'`` (``'seg'``) ->
    ``'b1_cityscapes'``."""
    key = str(name).strip().lower().replace('-', '_')
    key = key[len('efficientvit_'):] if key.startswith('efficientvit_') else key
    if family and key.startswith(family + '_'):
        key = key[len(family) + 1:]
    return key


# ------------------------------------------------------------------------------------------------ builders
# Lazy imports: listing names costs nothing, and SAM (segment_anything) and the detectors (mmdet) are imported
# only when such a model is built.

def _lazy(module: str, builder: str, *args):
    """A builder that imports ``module`` (relative to this package) when first called and returns
    ``module.builder(*args, **kwargs)``."""
    def build(**kwargs):
        return getattr(importlib.import_module(module, __package__), builder)(*args, **kwargs)
    return build


def _msra(arch):
    return _lazy('.efficientvit_msra', 'EfficientViTM', arch)


def _mit(arch):
    return _lazy('.efficientvit_mit', 'build_efficientvit_backbone', arch)


def _seg(config):
    return _lazy('.seg_head', 'EfficientViTSeg', config)


def _sam(variant):
    return _lazy('.sam', 'build_efficientvit_sam', variant)


def _sr(preset, scale):
    return _lazy('.sr', f'efficientvit_sr_{preset}', scale)


def _sam_vit(arch):
    def build(**kwargs):
        from segment_anything import sam_model_registry
        return sam_model_registry[arch](**kwargs).eval()
    return build


def _detector(config):
    return _lazy('..mmdet.zoo', 'build_detector', config)  # mmengine + mmdet, imported here only


# ------------------------------------------------------------------------------------------------ MSRA (Cream)
_CREAM = 'https://github.com/xinyuliu-jeffrey/EfficientViT_Model_Zoo/releases/download/v1.0/'
_CREAM_TOP1 = {'m0': 63.2, 'm1': 68.4, 'm2': 70.8, 'm3': 73.4, 'm4': 74.3, 'm5': 77.1}
for _arch in MSRA_ARCHS:
    _add(f'efficientvit_{_arch}', 'efficientvit_m', _msra(_arch), input_size=224,
         weights=[Weights('in1k', f'{_CREAM}efficientvit_{_arch}.pth', 'cream-cls',
                          metrics={'top1': _CREAM_TOP1[_arch]}, resolution=224, source='Cream README (ImageNet-1k val)')
                  ] if _arch in _CREAM_TOP1 else [],
         summary=f'EfficientViT-{_arch.upper()} backbone (strides 16/32/64)')

for _det, _cfg, _metrics, _what in [
        ('retinanet_efficientvit_m4_fpn_1x_coco', 'efficientvit_m/retinanet_efficientvit-m4_fpn_1x_coco.py',
         {'box_AP': 32.7, 'AP50': 52.2, 'AP75': 34.1}, 'RetinaNet'),
        ('mask_rcnn_efficientvit_m4_fpn_1x_coco', 'efficientvit_m/mask-rcnn_efficientvit-m4_fpn_1x_coco.py',
         {'mask_AP': 31.0, 'AP50': 51.2, 'AP75': 32.2}, 'Mask R-CNN')]:
    _add(_det, 'detector', _detector(_cfg), config=_cfg, input_size=(1333, 800),
         weights=[Weights('coco', f'{_CREAM}{_det}.pth', 'cream-det', metrics=_metrics, resolution=(1333, 800),
                          source='Cream downstream README (COCO val2017)')],
         summary=f'{_what} + EfficientViT-M4 + FPN, COCO 1x (mmdet)')

# ------------------------------------------------------------------------------------------------ MIT (han-cai)
_CLS = 'https://huggingface.co/han-cai/efficientvit-cls/resolve/main/'
_CLS_RES = {'b1': (288, 256, 224), 'b2': (288, 256, 224), 'b3': (288, 256, 224), 'l1': (224,),
            'l2': (384, 320, 288, 256, 224), 'l3': (384, 320, 288, 256, 224)}
for _arch in (*MIT_B_ARCHS, *MIT_L_ARCHS):
    _add(f'efficientvit_{_arch}', f'efficientvit_{_arch.rstrip("0123")}', _mit(_arch),
         input_size=_CLS_RES.get(_arch, (224,))[0],
         weights=[Weights(f'r{r}', f'{_CLS}efficientvit_{_arch}_r{r}.pt', 'mit-cls', resolution=r,
                          source='han-cai/efficientvit-cls (ImageNet-1k)') for r in _CLS_RES.get(_arch, ())],
         summary=f'EfficientViT-{_arch.upper()} backbone (strides 2..{2 ** (6 if _arch.startswith("xl") else 5)})')

_SEG = 'https://huggingface.co/han-cai/efficientvit-seg/resolve/main/'
_SEG_MIOU = {'b0_cityscapes': 75.653, 'b1_cityscapes': 80.547, 'b2_cityscapes': 82.073, 'b3_cityscapes': 83.016,
             'l1_cityscapes': 82.716, 'l2_cityscapes': 83.228, 'b1_ade20k': 42.840, 'b2_ade20k': 45.941,
             'b3_ade20k': 49.013, 'l1_ade20k': 49.191, 'l2_ade20k': 50.702}
for _key in SEG_HEADS:
    _arch, _data = _key.split('_')
    _size = (1024, 2048) if _data == 'cityscapes' else (512, 512)
    _suffix = '8xb2-160k_cityscapes-1024x2048' if _data == 'cityscapes' else '8xb2-160k_ade20k-512x512'
    _add(f'efficientvit_seg_{_key}', 'efficientvit_seg', _seg(_key), input_size=_size,
         config=f'efficientvit_seg/efficientvit-{_arch}_seg_{_suffix}.py',
         weights=[Weights(_data, f'{_SEG}efficientvit_seg_{_key}.pt', 'mit-seg', metrics={'mIoU': _SEG_MIOU[_key]},
                          resolution=_size, source='mit-han-lab/efficientvit segmentation README')]
         if _key in _SEG_MIOU else [],
         summary=f'EfficientViT-{_arch.upper()} + seg head, {_data}')

_SAM = 'https://huggingface.co/mit-han-lab/efficientvit-sam/resolve/main/'
_SAM_MAP = {'l0': (45.7, 41.8), 'l1': (46.2, 42.1), 'l2': (46.6, 42.7), 'xl0': (47.5, 43.9), 'xl1': (47.8, 44.4)}
for _arch, _variant in SAM_VARIANTS.items():
    _size = _variant['image_size']
    _add(f'efficientvit_sam_{_arch}', 'efficientvit_sam', _sam(_arch), input_size=_size,
         config=f'efficientvit_sam/efficientvit-sam-{_arch}_phase2-e2e_sa1b.py',
         weights=[Weights('sa1b', f'{_SAM}efficientvit_sam_{_arch}.pt', 'efficientvit_sam', resolution=_size,
                          metrics=dict(zip(('coco_mAP', 'lvis_mAP'), _SAM_MAP[_arch])),
                          source='mit-han-lab/efficientvit SAM README (zero-shot, ViTDet boxes)')]
         if _arch in _SAM_MAP else [],
         summary=f'EfficientViT-SAM-{_arch.upper()} (encoder input {_size})')

for _preset in SR_PRESETS:
    for _scale in SR_SCALES[_preset]:
        _add(f'efficientvit_sr_{_preset}_x{_scale}', 'efficientvit_sr', _sr(_preset, _scale),
             summary=f'EfficientViT super-resolution, {_preset} x{_scale} (no published weights)')

# ------------------------------------------------------------------------------------------------ SAM (Meta)
_META = 'https://dl.fbaipublicfiles.com/segment_anything/'
for _arch, _file in (('vit_b', 'sam_vit_b_01ec64.pth'), ('vit_l', 'sam_vit_l_0b3195.pth'),
                     ('vit_h', 'sam_vit_h_4b8939.pth')):
    _add(f'sam_{_arch}', 'sam', _sam_vit(_arch), input_size=1024,
         weights=[Weights('sa1b', _META + _file, 'sam_vit', sha256=_file[-10:-4], resolution=1024,
                          source='segment_anything (Meta)')],
         summary=f'segment_anything SAM {_arch.replace("_", "-").upper()} (the phase-1 teacher is ViT-H)')


# ------------------------------------------------------------------------------------------------ the API
def model_entries() -> dict[str, ModelEntry]:
    """Every declared entry, by name (read-only use)."""
    return dict(_ENTRIES)


def split_name(name: str) -> tuple[str, Optional[str]]:
    """``'efficientvit_b1.r224'`` -> ``('efficientvit_b1', 'r224')``; the name is normalised (case, ``-``)."""
    base, _, tag = str(name).strip().partition('.')
    return base.lower().replace('-', '_'), (tag or None)


def get_entry(name: str) -> ModelEntry:
    """The entry of ``name`` (``'efficientvit_b1'`` or ``'efficientvit_b1.r224'``); an unknown name raises
    ``KeyError`` with the closest names."""
    base, _ = split_name(name)
    if base not in _ENTRIES:
        close = difflib.get_close_matches(base, _ENTRIES, n=4, cutoff=0.5)
        hint = f'; did you mean {", ".join(close)}?' if close else ''
        raise KeyError(f'unknown model {name!r}{hint} (list_models() lists all {len(_ENTRIES)})')
    return _ENTRIES[base]


def list_models(pattern: str = '*', pretrained: bool = False) -> list[str]:
    """Registered names matching the shell-style ``pattern``; with ``pretrained=True`` one ``name.tag`` per
    published checkpoint, as timm lists them."""
    names = []
    for name, entry in _ENTRIES.items():
        if pretrained:
            names += [f'{name}.{w.tag}' for w in entry.weights if fnmatch.fnmatch(f'{name}.{w.tag}', pattern)
                      or fnmatch.fnmatch(name, pattern)]
        elif fnmatch.fnmatch(name, pattern):
            names.append(name)
    return sorted(names)


def resolve_weights(name: str, pretrained: Union[bool, str] = True) -> tuple[ModelEntry, Weights]:
    """The entry and the published :class:`Weights` that ``name`` + ``pretrained`` (True or a tag) mean."""
    entry = get_entry(name)
    _, tag = split_name(name)
    if isinstance(pretrained, str):
        tag = pretrained
    return entry, entry.weight(tag)


def resolve_checkpoint(src: str, progress: Optional[bool] = None) -> str:
    """A local file for ``src``: ``evit://NAME[.TAG]`` (a published checkpoint, fetched and cached), an
    ``http(s)://`` URL (downloaded the same checked way) or a path (returned as it is)."""
    src = os.fspath(src)
    if src.startswith(EVIT_SCHEME):
        entry, weights = resolve_weights(src[len(EVIT_SCHEME):])
        return fetch(weights, name=f'{entry.name}.{weights.tag}', progress=progress)
    if src.startswith(('http://', 'https://')):
        return fetch_url(src, progress=progress)
    return src


def create_model(name: str, pretrained: Union[bool, str, os.PathLike] = False, **kwargs) -> nn.Module:
    """Build the model ``name`` (see :func:`list_models`) with its defaults overridden by ``kwargs``.

    Args:
        name: a registered name, optionally with a checkpoint tag: ``'efficientvit_b1.r224'``.
        pretrained: ``False`` (no weights), ``True`` (the name's default checkpoint, or the one its tag picks),
            a tag (``'r288'``, ``'cityscapes'``), an ``evit://`` name, a URL or a local path. Published files are
            downloaded once into the cache (see :mod:`evit_mm.models.hub`), converted from their published layout
            and loaded strictly.
    """
    entry = get_entry(name)
    model = entry.build(**{**entry.defaults, **kwargs})
    if pretrained is False or pretrained is None:
        return model
    if pretrained is True or (isinstance(pretrained, str) and '/' not in pretrained and '.' not in pretrained
                              and not osp.exists(pretrained)):
        entry, weights = resolve_weights(name, pretrained)
        path = fetch(weights, name=f'{entry.name}.{weights.tag}')
    else:
        path = resolve_checkpoint(pretrained)
    load_into(model, path)
    return model


def load_into(model: nn.Module, path: str) -> None:
    """Load a checkpoint file into a registry model: through its ``load_pretrained`` (conversion + strict load)
    where it has one, else strictly as it is."""
    if hasattr(model, 'load_pretrained'):
        model.load_pretrained(path)
        return
    if hasattr(model, 'load_published'):  # Cream's detectors (evit_mm.mmdet.zoo)
        model.load_published(path)
        return
    from .checkpoint import load_state_dict_strict, read_checkpoint
    load_state_dict_strict(model, read_checkpoint(path), source=path)
