"""mmagic 1.x adapter: registers evit_mm's super-resolution network in mmagic's ``MODELS`` registry.

Configs load it with ``custom_imports = dict(imports=['evit_mm.mmagic'], allow_failed_imports=False)``, which is
what makes ``mim train mmagic <config>`` work. Importing it also applies evit_mm's torch-2.14 compatibility fixes
(:mod:`evit_mm.mm.compat`). It imports mmagic's registry and mmengine only, never mmdet or mmseg (mmagic's own
dataset transforms import mmdet optionally when a *dataset* is built; that is mmagic's business).

Registered in ``MODELS``:

- ``EfficientViTSR``: :class:`evit_mm.models.sr.EfficientViTSR` plus mmengine's ``init_cfg``, used as the
  ``generator`` of mmagic's ``BaseEditModel``. It takes the ``[0, 1]`` images that mmagic's
  ``DataPreprocessor(mean=[0, 0, 0], std=[255, 255, 255])`` produces and returns the upscaled image in the same
  range, like mmagic's EDSR/SwinIR generators. See docs/super_resolution.md.

No compatibility fix specific to mmagic was needed on this stack (numpy 1.26 is pinned for mmagic's
``np.bool8``; mmengine's checkpoint loading fix in :mod:`evit_mm.mm.compat` covers mmagic's resume/test too).
"""
from mmagic.registry import MODELS

from ..mm.common import mm_module
from ..models import sr

EfficientViTSR = MODELS.register_module(module=mm_module(sr.EfficientViTSR))

__all__ = ['EfficientViTSR']
