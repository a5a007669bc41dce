"""Every evit_mm model by name, timm-style: ``create_model(name, pretrained=...)`` and ``list_models(...)``.

Each named model is declared once, in :data:`_ENTRIES` below: its builder with its defaults (arch, norm eps,
input size) and the checkpoints published for it (URL, layout, sha256 where known, the published numbers). The
benchmark, the ONNX export, the SAM builders and tools, the zero-shot adapters and the mm configs (through the
``evit://`` checkpoint scheme) all read names from here.

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
import os
import os.path as osp
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Union

from torch import nn

from .hub import Weights, fetch, fetch_url

__all__ = ['ModelEntry', 'create_model', 'list_models', 'get_entry', 'resolve_weights', 'resolve_checkpoint',
           'split_name', 'EVIT_SCHEME', 'model_entries']

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


# ------------------------------------------------------------------------------------------------ builders
# Lazy imports: listing names costs nothing, and SAM (segment_anything) and the detectors (mmdet) are imported
# only when such a model is built.

def _msra(arch):
    def build(**kwargs):
        from .efficientvit_msra import EfficientViTM
        return EfficientViTM(arch, **kwargs)
    return build


def _mit(arch):
    def build(**kwargs):
        from .efficientvit_mit import build_efficientvit_backbone
        return build_efficientvit_backbone(arch, **kwargs)
    return build


def _seg(config):
    def build(**kwargs):
        from .seg_head import EfficientViTSeg
        return EfficientViTSeg(config, **kwargs)
    return build


def _sam(variant):
    def build(**kwargs):
        from .sam import build_efficientvit_sam
        return build_efficientvit_sam(variant, **kwargs)
    return build


def _sr(preset, scale):
    def build(**kwargs):
        from . import sr
        return getattr(sr, f'efficientvit_sr_{preset}')(scale, **kwargs)
    return build


def _sam_vit(arch):
    def build(**kwargs):
        from segment_anything import sam_model_registry
        return sam_model_registry[arch](**kwargs).eval()
    return build


def _detector(config):
    def build(**kwargs):
        from ..mmdet.zoo import build_detector  # mmengine + mmdet, imported here only
        return build_detector(config, **kwargs)
    return build


# ------------------------------------------------------------------------------------------------ MSRA (Cream)
_CREAM = 'https://github.com/xinyuliu-jeffrey/EfficientViT_Model_Zoo/releases/download/v1.0/'
_CREAM_TOP1 = {'m0': 63.2, 'm1': 68.4, 'm2': 70.8, 'm3': 73.4, 'm4': 74.3, 'm5': 77.1}
for _arch, _top1 in _CREAM_TOP1.items():
    _add(f'efficientvit_{_arch}', 'efficientvit_m', _msra(_arch), input_size=224,
         weights=[Weights('in1k', f'{_CREAM}efficientvit_{_arch}.pth', 'cream-cls', metrics={'top1': _top1},
                          resolution=224, source='Cream README (ImageNet-1k val)')],
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
for _arch in ('b0', 'b1', 'b2', 'b3', 'l0', 'l1', 'l2', 'l3', 'xl0', 'xl1'):
    _add(f'efficientvit_{_arch}', f'efficientvit_{_arch.rstrip("0123")}', _mit(_arch),
         input_size=_CLS_RES.get(_arch, (224,))[0],
         weights=[Weights(f'r{r}', f'{_CLS}efficientvit_{_arch}_r{r}.pt', 'mit-cls', resolution=r,
                          source='han-cai/efficientvit-cls (ImageNet-1k)') for r in _CLS_RES.get(_arch, ())],
         summary=f'EfficientViT-{_arch.upper()} backbone (strides 2..{2 ** (6 if _arch.startswith("xl") else 5)})')

_SEG = 'https://huggingface.co/han-cai/efficientvit-seg/resolve/main/'
_SEG_MIOU = {'b0_cityscapes': 75.653, 'b1_cityscapes': 80.547, 'b2_cityscapes': 82.073, 'b3_cityscapes': 83.016,
             'l1_cityscapes': 82.716, 'l2_cityscapes': 83.228, 'b1_ade20k': 42.840, 'b2_ade20k': 45.941,
             'b3_ade20k': 49.013, 'l1_ade20k': 49.191, 'l2_ade20k': 50.702}
for _key, _miou in _SEG_MIOU.items():
    _arch, _data = _key.split('_')
    _size = (1024, 2048) if _data == 'cityscapes' else (512, 512)
    _suffix = '8xb2-160k_cityscapes-1024x2048' if _data == 'cityscapes' else '8xb2-160k_ade20k-512x512'
    _add(f'efficientvit_seg_{_key}', 'efficientvit_seg', _seg(_key), input_size=_size,
         config=f'efficientvit_seg/efficientvit-{_arch}_seg_{_suffix}.py',
         weights=[Weights(_data, f'{_SEG}efficientvit_seg_{_key}.pt', 'mit-seg', metrics={'mIoU': _miou},
                          resolution=_size, source='mit-han-lab/efficientvit segmentation README')],
         summary=f'EfficientViT-{_arch.upper()} + seg head, {_data}')

_SAM = 'https://huggingface.co/mit-han-lab/efficientvit-sam/resolve/main/'
_SAM_MAP = {'l0': (45.7, 41.8), 'l1': (46.2, 42.1), 'l2': (46.6, 42.7), 'xl0': (47.5, 43.9), 'xl1': (47.8, 44.4)}
for _arch, (_coco, _lvis) in _SAM_MAP.items():
    _size = 1024 if _arch.startswith('xl') else 512
    _add(f'efficientvit_sam_{_arch}', 'efficientvit_sam', _sam(_arch), input_size=_size,
         config=f'efficientvit_sam/efficientvit-sam-{_arch}_phase2-e2e_sa1b.py',
         weights=[Weights('sa1b', f'{_SAM}efficientvit_sam_{_arch}.pt', 'efficientvit_sam', resolution=_size,
                          metrics={'coco_mAP': _coco, 'lvis_mAP': _lvis},
                          source='mit-han-lab/efficientvit SAM README (zero-shot, ViTDet boxes)')],
         summary=f'EfficientViT-SAM-{_arch.upper()} (encoder input {_size})')

for _preset, _scales in (('lightweight', (2, 3, 4)), ('highres', (2,))):
    for _scale in _scales:
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
