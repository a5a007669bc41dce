"""``SamZeroShotMetric``: the zero-shot evaluation as an mmengine metric (registered in mmengine's ``METRICS``).

It takes the same per-image records as ``tools/eval_sam_zero_shot.py`` and computes the same numbers with the
same function (:func:`~evit_mm.sam.zero_shot.evaluate.summarize`), so the evaluation runs inside any mmengine
``Runner``/``Evaluator``. Each data sample given to :meth:`process` is either

* a record made by :func:`~evit_mm.sam.zero_shot.evaluate.evaluate_image`, under ``'zero_shot'`` (all modes); or
* an mmdet-style prediction (``img_id`` and ``pred_instances`` with ``masks``, ``scores``, ``labels``), e.g. from
  ``BoxPromptedSAM`` (detector boxes -> SAM masks) in mmdet's test loop: it becomes a ``'detector'`` record
  (label ``i`` -> the ``i``-th category id of the annotation json, sorted, unless ``label_to_category`` is given),
  and the metric computes COCO or LVIS mask AP.

Only mmengine is imported (not mmdet/mmseg/mmagic). In a config::

    custom_imports = dict(imports=['evit_mm.sam.zero_shot.metric'], allow_failed_imports=False)
    test_evaluator = dict(type='SamZeroShotMetric', ann_file='data/lvis/lvis_v1_val.json', modes=['detector'])
"""
from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence

import numpy as np
from mmengine.evaluator import BaseMetric
from mmengine.registry import METRICS

from .data import ZeroShotDataset, load_detections
from .evaluate import MODES, encode_mask, summarize

__all__ = ['SamZeroShotMetric', 'flatten_results']


def flatten_results(results: Dict[str, Any]) -> Dict[str, float]:
    """``summarize``'s nested dict -> flat ``{'box/mIoU': ..., 'points/1_click/mIoU_small': ..., 'detector/AP':
    ...}`` of numbers (the form mmengine logs); empty buckets are left out."""
    flat: Dict[str, float] = {}

    def walk(prefix: str, d: Dict[str, Any]) -> None:
        for k, v in d.items():
            if isinstance(v, dict):
                walk(f'{prefix}{k}/', v)
            elif isinstance(v, (int, float)) and not isinstance(v, bool) and v is not None:
                flat[f'{prefix}{k}'] = float(v)

    for mode in MODES:
        if mode in results:
            walk(f'{mode}/', results[mode])
    return flat


def _np(x) -> np.ndarray:
    if hasattr(x, 'detach'):
        x = x.detach().cpu().numpy()
    elif hasattr(x, 'to_ndarray'):  # mmdet BitmapMasks
        x = x.to_ndarray()
    return np.asarray(x)


@METRICS.register_module()
class SamZeroShotMetric(BaseMetric):
    """Zero-shot mIoU (GT boxes, clicks) and mask AP (detector boxes) of a SAM-style model.

    Args:
        ann_file: the COCO or LVIS annotation json.
        modes: which of ``'box'``, ``'points'``, ``'detector'`` to report.
        clicks: numbers of clicks to report for ``'points'``.
        dataset: ``'coco'``, ``'lvis'`` or ``'auto'``.
        crowd: ``'keep'`` / ``'skip'`` crowd annotations (counted either way).
        det_file: the detections json the ``'detector'`` records came from, so that its bad entries are
            counted in the report too (optional).
        label_to_category: category id of each model label (default: the json's category ids, sorted).
    """
    default_prefix: Optional[str] = 'sam_zero_shot'

    def __init__(self, ann_file: str, modes: Sequence[str] = ('box',), clicks: Sequence[int] = (1, 3, 5),
                 dataset: str = 'auto', crowd: str = 'keep', det_file: Optional[str] = None,
                 label_to_category: Optional[Sequence[int]] = None, collect_device: str = 'cpu',
                 prefix: Optional[str] = None) -> None:
        super().__init__(collect_device=collect_device, prefix=prefix)
        bad = [m for m in modes if m not in MODES]
        if bad:
            raise ValueError(f'unknown mode(s) {bad}; modes are {MODES}')
        self.modes, self.clicks = tuple(modes), tuple(sorted(clicks))
        self.dataset = ZeroShotDataset(ann_file, '', kind=dataset, crowd=crowd)
        self.det_issues = load_detections(det_file, self.dataset)[1] if det_file else None
        self.label_to_category = list(label_to_category or self.dataset.category_ids)

    def _detector_record(self, sample: Dict[str, Any]) -> Dict[str, Any]:
        image_id = sample.get('img_id', sample.get('image_id'))
        if image_id not in self.dataset.images:
            raise ValueError(f'data sample img_id {image_id!r} is not an image of {self.dataset.ann_file}')
        pred = sample['pred_instances']
        masks, scores, labels = _np(pred['masks']).astype(bool), _np(pred['scores']), _np(pred['labels'])
        dets = []
        for i, (mask, score, label) in enumerate(zip(masks, scores, labels)):
            if not 0 <= int(label) < len(self.label_to_category):
                raise ValueError(f'image {image_id}: label {int(label)} has no category (label_to_category has '
                                 f'{len(self.label_to_category)} entries)')
            dets.append({'image_id': image_id, 'category_id': self.label_to_category[int(label)],
                         'score': float(score), 'det_index': i, 'segmentation': encode_mask(mask)})
        return {'image_id': image_id, 'status': 'ok', 'issues': [], 'detector': dets}

    def process(self, data_batch: Any, data_samples: Sequence[Any]) -> None:
        for sample in data_samples:
            if hasattr(sample, 'to_dict'):
                sample = sample.to_dict()
            if 'zero_shot' in sample:
                record = dict(sample['zero_shot'])
            elif 'pred_instances' in sample:
                record = self._detector_record(sample)
            else:
                raise ValueError('SamZeroShotMetric needs data samples with a "zero_shot" record or '
                                 f'"pred_instances"; got keys {sorted(sample)}')
            record.pop('_masks', None)
            self.results.append(record)

    def compute_metrics(self, results: List[Dict[str, Any]]) -> Dict[str, float]:
        by_image = {r['image_id']: r for r in results}  # one record per image (repeats from padding collapse)
        records = [by_image[i] for i in sorted(by_image)]
        summary = summarize(records, self.dataset, self.modes, self.clicks, self.det_issues)
        self.last_summary = summary
        flat = flatten_results(summary)
        flat['issues'] = float(sum(v['count'] for v in summary['issues'].values()))
        return flat
