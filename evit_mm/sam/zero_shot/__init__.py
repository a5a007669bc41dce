"""Zero-shot COCO/LVIS evaluation of SAM-style models (EfficientViT-SAM's protocol, mit.md §3.3).

Prompts from ground-truth boxes (mIoU), from a detector's boxes (mask AP with pycocotools / lvis), or from 1/3/5
simulated clicks (mIoU); for EfficientViT-SAM, segment-anything's SAM, or anything that implements
:class:`PromptableSegmenter`. ``tools/eval_sam_zero_shot.py`` is the command line; the mmengine metric is in
:mod:`evit_mm.sam.zero_shot.metric` (imported separately, so that this package needs no mmengine).
"""
from .adapters import SAM_MODEL_NAMES, OracleSegmenter, PromptableSegmenter, SamAdapter, build_zero_shot_sam
from .clicker import Click, Clicker, padded_distance
from .data import ISSUE_KINDS, IssueLog, ZeroShotDataset, detect_kind, load_detections
from .evaluate import (AREA_RANGES, MODES, ResultStore, coco_mask_ap, encode_mask, evaluate_dataset, evaluate_image,
                       format_table, lvis_mask_ap, mask_iou, miou_summary, summarize)

__all__ = [
    'SAM_MODEL_NAMES', 'OracleSegmenter', 'PromptableSegmenter', 'SamAdapter', 'build_zero_shot_sam',
    'Click', 'Clicker', 'padded_distance',
    'ISSUE_KINDS', 'IssueLog', 'ZeroShotDataset', 'detect_kind', 'load_detections',
    'AREA_RANGES', 'MODES', 'ResultStore', 'coco_mask_ap', 'encode_mask', 'evaluate_dataset', 'evaluate_image',
    'format_table', 'lvis_mask_ap', 'mask_iou', 'miou_summary', 'summarize',
]


def __getattr__(name: str):
    if name == 'build_sam_model':  # the old name, kept importable for one release (0.1.x)
        import warnings
        warnings.warn('evit_mm.sam.zero_shot.build_sam_model is deprecated: use build_zero_shot_sam (the same '
                      'function)', DeprecationWarning, stacklevel=2)
        return build_zero_shot_sam
    raise AttributeError(f'module {__name__!r} has no attribute {name!r}')
