"""evit_mm: the EfficientViT families for the OpenMMLab 2.x stack and segment-anything.

Importing this package imports no mm library (nor torch); the per-library adapters are ``evit_mm.mmdet`` and
``evit_mm.mmseg``, the pure-PyTorch models are in ``evit_mm.models``, EfficientViT-SAM in ``evit_mm.sam``;
``evit_mm.deploy(model)`` is the inference form of any of them, ``evit_mm.onnx`` their ONNX export.
"""
from .version import __version__

__all__ = ['__version__', 'build_efficientvit_sam', 'deploy']


def __getattr__(name):
    # Loaded on first use, so that `import evit_mm` stays cheap.
    if name == 'build_efficientvit_sam':
        from .models.sam import build_efficientvit_sam
        return build_efficientvit_sam
    if name == 'deploy':
        from .models.deploy import deploy
        return deploy
    raise AttributeError(f'module {__name__!r} has no attribute {name!r}')
