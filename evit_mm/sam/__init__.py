"""EfficientViT-SAM on segment-anything's API (pure PyTorch + ``segment_anything``, no mm imports).

- :func:`build_efficientvit_sam` / :data:`efficientvit_sam_model_registry`: the models (``evit_mm.models.sam``);
- :class:`EfficientViTSamPredictor`: ``SamPredictor`` for EfficientViT-SAM, plus image batches;
- :class:`EfficientViTSamAutomaticMaskGenerator`: ``SamAutomaticMaskGenerator`` on EfficientViT-SAM;
- ``transforms``: the reference's preprocessing and input-image normalisation; :class:`EfficientViTSamTransform`,
  the predictor's ``transform`` (prompts to the 1024 frame, images to the encoder size);
- ``prompts``: :class:`~evit_mm.sam.prompts.SamPrompts`, the one prompt type (checks, frame transform, padding and
  batching) of the predictor, training, the zero-shot evaluation and the ONNX inputs.
"""
from ..models.sam import (SAM_VARIANTS, EfficientViTSam, EfficientViTSamImageEncoder, SamNeck,
                          build_efficientvit_sam, detect_sam_checkpoint_format, efficientvit_sam_model_registry,
                          load_efficientvit_sam_checkpoint, load_sam_prompt_decoder)
from .automatic_mask_generator import EfficientViTSamAutomaticMaskGenerator
from .predictor import EfficientViTSamPredictor
from .transforms import (EfficientViTSamTransform, as_rgb_uint8, get_preprocess_shape, preprocess_image,
                         resize_longest_side)

__all__ = [
    'SAM_VARIANTS', 'EfficientViTSam', 'EfficientViTSamImageEncoder', 'SamNeck', 'build_efficientvit_sam',
    'efficientvit_sam_model_registry', 'load_efficientvit_sam_checkpoint', 'load_sam_prompt_decoder',
    'detect_sam_checkpoint_format', 'EfficientViTSamPredictor', 'EfficientViTSamAutomaticMaskGenerator',
    'as_rgb_uint8', 'get_preprocess_shape', 'preprocess_image', 'resize_longest_side', 'EfficientViTSamTransform',
]
