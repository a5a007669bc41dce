"""evit_mm's mmengine glue, shared by the per-library adapters (``evit_mm.mmdet``, ``evit_mm.mmseg``,
``evit_mm.mmagic``), ``evit_mm.sam.training`` and the tools.

- :mod:`evit_mm.mm.compat`: the fixes that make the published OpenMMLab 2.x stack run on today's PyTorch
  (weights-only checkpoint loading, CPU ``torchrun``), see ``docs/compatibility.md``;
- :mod:`evit_mm.mm.hooks`: the checkpoint hook every Runner gets (atomic saves, random-generator states, refused
  NaN resumes and losses);
- :mod:`evit_mm.mm.loading`: strict ``load_from`` for a Runner (``tools/train.py``, ``tools/test.py``, scripts);
- :mod:`evit_mm.mm.weights`: the ``evit://NAME`` checkpoint scheme;
- :mod:`evit_mm.mm.common`: a pure-PyTorch core module as an mmengine ``BaseModule`` (``mm_module``), and
  ``init_cfg=dict(type='Pretrained')`` loaded strictly (``load_pretrained_from_cfg``);
- :mod:`evit_mm.mm.backbones`: the backbones both the mmdet and the mmseg adapter register.

Importing this package needs mmengine (and ``evit_mm.models``) only, never mmdet, mmseg or mmagic: importing one
adapter does not import the other libraries. It applies the fixes (:func:`~evit_mm.mm.compat.apply_all`) once,
here, so every way into evit_mm that needs mmengine goes through it. ``backbones`` (which needs
segment-anything) is imported by the adapters that register it, not here.
"""
from .compat import apply_all

__all__ = ['apply_all']

apply_all()
