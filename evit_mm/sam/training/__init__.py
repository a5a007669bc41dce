"""EfficientViT-SAM training on mmengine: phase 1 (distil SAM ViT-H's image encoder) and phase 2 (end to end on
SA-1B with box/point prompts), plus fine-tuning on COCO-format data. See docs/sam_training.md.

Importing this package registers, in mmengine's root registries (configs use ``default_scope='mmengine'`` and
``custom_imports=dict(imports=['evit_mm.sam.training'])``):

* datasets ``SA1BDataset``, ``SamCocoDataset``; samplers ``SamInfiniteSampler``, ``SamDefaultSampler``;
* transforms ``SamRandomFlip``, ``SamResizeLongestSide``, ``SamPad``, ``SamSamplePrompts``, ``SamPackInputs``;
* models ``SamDistillModel``, ``SamE2EModel`` and their ``SamDataPreprocessor``;
* the optimizer constructor ``SamOptimWrapperConstructor``;
* the training loop ``SamIterBasedTrainLoop`` (resumes without reloading the data already trained on).

It imports mmengine only (no mmdet/mmseg/mmagic).
"""
from ... import mm  # noqa: F401  (importing evit_mm.mm applies the compat fixes: resume, load_from on torch 2.6+)

from .cache import EmbeddingCache  # noqa: E402
from .datasets import (BadSample, SA1BDataset, SamCocoDataset, SamDefaultSampler, SamInfiniteSampler,  # noqa: E402
                       SamMaskDataset)
from .loops import SamIterBasedTrainLoop  # noqa: E402
from .losses import mask_iou_logits, point_sample, sam_mask_loss, uncertain_points  # noqa: E402
from .models import SamDataPreprocessor, SamDistillModel, SamE2EModel, build_training_sam, load_sam_weights  # noqa
from .optim import SamOptimWrapperConstructor  # noqa: E402
from .pipeline import SamPackInputs, SamPad, SamRandomFlip, SamResizeLongestSide, SamSamplePrompts  # noqa: E402
from .teacher import SamTeacher, build_sam_teacher  # noqa: E402

__all__ = [
    'EmbeddingCache', 'BadSample', 'SA1BDataset', 'SamCocoDataset', 'SamMaskDataset', 'SamDefaultSampler',
    'SamInfiniteSampler', 'mask_iou_logits', 'point_sample', 'sam_mask_loss', 'uncertain_points',
    'SamDataPreprocessor', 'SamDistillModel', 'SamE2EModel', 'build_training_sam', 'load_sam_weights', 'SamTeacher',
    'build_sam_teacher', 'SamPackInputs', 'SamPad', 'SamRandomFlip', 'SamResizeLongestSide', 'SamSamplePrompts',
    'SamOptimWrapperConstructor', 'SamIterBasedTrainLoop',
]
