"""The one place where the app builds its model: :func:`load_sam_model`."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

from ...models.sam import normalize_variant

__all__ = ['ModelInfo', 'load_sam_model']


@dataclass(frozen=True)
class ModelInfo:
    """What the page shows about the model."""
    name: str  #: registry-style name, e.g. ``efficientvit_sam_l0``
    variant: str  #: ``l0`` ... ``xl1``
    weights: str  #: the checkpoint path, ``published (efficientvit_sam_l0)`` or ``random (seed N)``
    random_weights: bool
    encoder_size: int  #: the image encoder's input size (512 for L0-L2, 1024 for XL0/XL1 unless overridden)

    @property
    def title(self) -> str:
        return f'EfficientViT-SAM-{self.variant.upper()}'


def load_sam_model(name: str = 'efficientvit_sam_l0', checkpoint: Optional[str] = None, *,
                   pretrained: bool = False, encoder_size: Optional[int] = None, seed: int = 0, device: str = 'cpu'):
    """Build the EfficientViT-SAM model ``name`` (``efficientvit_sam_l0`` ... ``efficientvit_sam_xl1``, or
    ``l0`` ... ``xl1``) in eval mode through the model registry (:func:`evit_mm.models.create_model`), with
    ``checkpoint`` (a path, a URL or an ``evit://`` name, loaded strictly), or ``pretrained=True`` (the published
    weights, downloaded once into the cache), or neither: random weights drawn with ``seed`` (reproducible: the
    same seed gives the same model).

    ``encoder_size`` changes the encoder's input size (a multiple of 32 for L, 64 for XL; smaller is faster and
    less accurate; the default is the variant's own).

    Returns ``(model, ModelInfo)``. Raises ``ValueError`` for an unknown name or a bad size, ``FileNotFoundError``
    / ``RuntimeError`` (with the checkpoint's name) for a missing or mismatched checkpoint.
    """
    from ...models.registry import create_model
    variant = normalize_variant(name)
    registry_name = f'efficientvit_sam_{variant}'
    random_weights = checkpoint is None and not pretrained
    if random_weights:
        torch.manual_seed(seed)
    kwargs = {} if encoder_size is None else {'image_size': int(encoder_size)}
    model = create_model(registry_name, pretrained=checkpoint or bool(pretrained), **kwargs).to(device).eval()
    weights = (f'random (seed {seed})' if random_weights else str(checkpoint) if checkpoint is not None
               else f'published ({registry_name})')
    info = ModelInfo(name=registry_name, variant=variant, weights=weights, random_weights=random_weights,
                     encoder_size=int(model.image_encoder.img_size))
    return model, info
