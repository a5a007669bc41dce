"""Reading a zero-shot evaluation's inputs, and accounting for every bad one.

* :class:`ZeroShotDataset`: a COCO or LVIS instance-annotation json plus its image folder. Every annotation is
  checked once on load; one that cannot be prompted (crowd, area < 1, a degenerate or non-finite box, an empty
  or invalid segmentation, an unknown image id, missing keys) is **counted and described** in an
  :class:`IssueLog`, never dropped silently. Segmentations are checked before pycocotools sees them, with the
  checks SAM training uses (:mod:`evit_mm.sam.coco_masks`): RLE of the image's size whose runs add up to height
  x width, polygon coordinates finite and within a small margin of the image.
* :func:`load_detections`: a COCO-results json of detector boxes (e.g. ViTDet's ``coco_vitdet.json``), checked
  the same way (unknown image ids and categories, degenerate boxes, bad scores).

Image paths follow the reference (``eval_efficientvit_sam_model.py``): COCO images are ``image_dir/file_name``;
LVIS images (no ``file_name``; their ``coco_url`` is ``http://images.cocodataset.org/val2017/000000397133.jpg``)
are ``image_dir/<split>/<name>``, i.e. ``image_dir`` is the COCO root holding ``train2017/`` and ``val2017/``
(LVIS v1 val draws from both); ``image_dir/<name>`` is tried second.
"""
from __future__ import annotations

import json
import math
import os.path as osp
from collections import Counter, defaultdict
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from ..coco_masks import BadAnnotation, check_segmentation, decode_segmentation, usable_polygons

__all__ = ['IssueLog', 'ZeroShotDataset', 'load_detections', 'xywh_to_xyxy', 'detect_kind']

#: What each issue kind means (printed in the final table and written to the results json).
ISSUE_KINDS = {
    'crowd': 'crowd annotation (iscrowd=1)',
    'zero_area': 'annotation with area < 1 (the reference skips these too)',
    'degenerate_box': 'annotation box with width or height <= 0, or non-finite values',
    'empty_segmentation': 'annotation without a segmentation (empty list / no polygon with 3 points)',
    'invalid_segmentation': 'annotation whose segmentation cannot be decoded safely (RLE of another size or whose '
                            'runs do not add up to height x width, polygon coordinates non-finite or far outside '
                            'the image)',
    'malformed_annotation': 'annotation missing a key (id, image_id, bbox, segmentation, area)',
    'annotation_unknown_image': 'annotation whose image_id is not in "images"',
    'annotation_unknown_category': 'annotation whose category_id is missing or not in "categories"',
    'empty_mask': 'annotation whose segmentation decodes to no pixel',
    'box_outside_image': 'prompt box that lies entirely outside its image',
    'missing_image': 'image file not found on disk',
    'unreadable_image': 'image file that cannot be decoded',
    'image_size_mismatch': 'image whose size differs from the json\'s height/width',
    'det_unknown_image': 'detection whose image_id is not in the annotation json',
    'det_unknown_category': 'detection whose category_id is not in the annotation json',
    'det_degenerate_box': 'detection box with width or height <= 0, or non-finite values',
    'det_bad_score': 'detection without a finite score',
    'det_malformed': 'detection missing image_id, category_id, bbox or score',
    'no_detections': 'no detection to evaluate: AP is 0',
}

#: Issues that remove an annotation from the prompts *and* from the ground truth of the AP modes.
GT_DROPPING = ('zero_area', 'degenerate_box', 'empty_segmentation', 'invalid_segmentation', 'malformed_annotation',
               'annotation_unknown_image', 'annotation_unknown_category')

#: The fields the ``lvis`` package's evaluation reads from every image / category of an LVIS json (a file without
#: them would end a run with a bare ``KeyError`` after every image was processed).
LVIS_IMAGE_FIELDS = ('not_exhaustive_category_ids', 'neg_category_ids')
LVIS_CATEGORY_FIELDS = ('frequency', )


class IssueLog:
    """Counts of bad inputs per kind, with the first few messages of each (naming the file, key and value)."""

    def __init__(self, max_examples: int = 5) -> None:
        self.counts: Counter = Counter()
        self.examples: Dict[str, List[str]] = defaultdict(list)
        self.max_examples = max_examples

    def add(self, kind: str, message: str, count: int = 1) -> None:
        if kind not in ISSUE_KINDS:
            raise KeyError(f'unknown issue kind {kind!r}')
        self.counts[kind] += count
        if len(self.examples[kind]) < self.max_examples:
            self.examples[kind].append(message)

    def update(self, other: 'IssueLog') -> None:
        for kind, n in other.counts.items():
            self.counts[kind] += n
            room = self.max_examples - len(self.examples[kind])
            self.examples[kind].extend(other.examples[kind][:max(room, 0)])

    def add_records(self, issues: Sequence[Dict[str, str]]) -> None:
        """Add issues stored in per-image records (``[{'kind', 'message'}, ...]``)."""
        for issue in issues:
            self.add(issue['kind'], issue['message'])

    def __bool__(self) -> bool:
        return bool(self.counts)

    def to_dict(self) -> Dict[str, Dict[str, Any]]:
        return {kind: {'count': n, 'meaning': ISSUE_KINDS[kind], 'examples': list(self.examples[kind])}
                for kind, n in sorted(self.counts.items())}

    def lines(self) -> List[str]:
        return [f'{kind}: {n} ({ISSUE_KINDS[kind]}); e.g. {self.examples[kind][0]}'
                for kind, n in sorted(self.counts.items())]


def xywh_to_xyxy(bbox: Sequence[float]) -> List[float]:
    x, y, w, h = (float(v) for v in bbox)
    return [x, y, x + w, y + h]


def _box_problem(bbox) -> Optional[str]:
    """Why ``bbox`` (COCO xywh) cannot be a prompt, or None."""
    if not isinstance(bbox, (list, tuple)) or len(bbox) != 4:
        return f'bbox {bbox!r} is not [x, y, w, h]'
    try:
        values = [float(v) for v in bbox]
    except (TypeError, ValueError):
        return f'bbox {bbox!r} is not numeric'
    if not all(math.isfinite(v) for v in values):
        return f'bbox {bbox!r} has non-finite values'
    if values[2] <= 0 or values[3] <= 0:
        return f'bbox {bbox!r} has zero or negative width/height'
    return None


def _empty_segmentation(segmentation) -> bool:
    if isinstance(segmentation, list):
        return not any(isinstance(p, (list, tuple)) and len(p) >= 6 for p in segmentation)
    if isinstance(segmentation, dict):
        return 'counts' not in segmentation or 'size' not in segmentation
    return True


def detect_kind(data: Dict[str, Any]) -> str:
    """``'lvis'`` if the json has LVIS's fields (category ``frequency``, image ``neg_category_ids``), else
    ``'coco'``."""
    cats, images = data.get('categories') or [], data.get('images') or []
    if (cats and 'frequency' in cats[0]) or (images and 'neg_category_ids' in images[0]):
        return 'lvis'
    return 'coco'


def check_lvis_fields(data: Dict[str, Any], ann_file: str) -> None:
    """Raise ``ValueError`` naming every LVIS field that some image or category of ``data`` lacks (with the count
    and a first example), before any image is processed."""
    problems = []
    for section, fields in (('images', LVIS_IMAGE_FIELDS), ('categories', LVIS_CATEGORY_FIELDS)):
        for field in fields:
            lacking = [entry.get('id', f'#{i}') for i, entry in enumerate(data[section]) if field not in entry]
            if lacking:
                problems.append(f'{len(lacking)} of the {len(data[section])} {section} lack "{field}" '
                                f'(e.g. id {lacking[0]})')
    if problems:
        raise ValueError(f'{ann_file} is read as an LVIS json, but ' + '; '.join(problems) + '. The LVIS '
                         'evaluation needs these fields (lvis_v1_val.json has them); for a COCO-format file pass '
                         "kind='coco' (tools/eval_sam_zero_shot.py --dataset coco)")


def _load_json(path: str, what: str):
    if not osp.isfile(path):
        raise FileNotFoundError(f'{what} not found: {path}')
    try:
        with open(path) as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise ValueError(f'{what} {path} is not valid JSON: {e}') from None


class ZeroShotDataset:
    """A COCO- or LVIS-format annotation json and its images, validated.

    Args:
        ann_file: instances json (COCO ``instances_val2017.json`` or LVIS ``lvis_v1_val.json``).
        image_dir: COCO: the folder of the images (``val2017``); LVIS: the COCO root holding ``train2017/`` and
            ``val2017/`` (see the module docstring).
        kind: ``'coco'``, ``'lvis'`` or ``'auto'`` (from the json's fields, :func:`detect_kind`).
        crowd: ``'keep'`` (prompt crowd annotations too, as the reference does) or ``'skip'``; counted either
            way.

    Attributes: ``kind``, ``data`` (the json), ``image_ids`` (sorted), ``images`` (id -> entry),
    ``anns_by_image`` (id -> the annotations that can be prompted), ``category_ids``, ``issues`` (an
    :class:`IssueLog` of the annotation problems), ``dropped_ann_ids`` (annotations that are not ground truth
    for the AP modes either).
    """

    def __init__(self, ann_file: str, image_dir: str, kind: str = 'auto', crowd: str = 'keep') -> None:
        if crowd not in ('keep', 'skip'):
            raise ValueError(f"crowd must be 'keep' or 'skip', got {crowd!r}")
        self.ann_file, self.image_dir, self.crowd = ann_file, image_dir, crowd
        data = _load_json(ann_file, 'annotation file')
        if not isinstance(data, dict):
            raise ValueError(f'{ann_file}: expected a COCO/LVIS json object, got a {type(data).__name__}')
        missing = [k for k in ('images', 'annotations', 'categories') if k not in data]
        if missing:
            raise ValueError(f'{ann_file}: not a COCO/LVIS instances json: missing key(s) {missing}')
        if kind == 'auto':
            kind = detect_kind(data)
        if kind not in ('coco', 'lvis'):
            raise ValueError(f"kind must be 'coco', 'lvis' or 'auto', got {kind!r}")
        if kind == 'lvis':
            check_lvis_fields(data, ann_file)
        self.kind, self.data = kind, data
        self.images: Dict[int, Dict[str, Any]] = {}
        for i, img in enumerate(data['images']):
            if 'id' not in img or 'height' not in img or 'width' not in img:
                raise ValueError(f'{ann_file}: images[{i}] lacks id/height/width: {img}')
            if 'file_name' not in img and 'coco_url' not in img:
                raise ValueError(f'{ann_file}: image {img["id"]} has neither file_name nor coco_url')
            self.images[img['id']] = img
        self.image_ids = sorted(self.images)
        self.category_ids = sorted(c['id'] for c in data['categories'])
        self._category_set = set(self.category_ids)
        self.issues = IssueLog()
        self.anns_by_image: Dict[int, List[Dict[str, Any]]] = {i: [] for i in self.image_ids}
        self.dropped_ann_ids: set = set()
        name = osp.basename(ann_file)
        for i, ann in enumerate(data['annotations']):
            problem = self._check(ann, i, name)
            if problem is None:
                self.anns_by_image[ann['image_id']].append(ann)
                continue
            kind_, message = problem
            self.issues.add(kind_, message)
            if kind_ == 'crowd':
                if crowd == 'keep':
                    self.anns_by_image[ann['image_id']].append(ann)
            else:
                self.dropped_ann_ids.add(ann.get('id', f'#{i}'))

    def _check(self, ann: Dict[str, Any], index: int, name: str) -> Optional[Tuple[str, str]]:
        where = f'{name}: annotation id {ann.get("id", "?")} (annotations[{index}], image {ann.get("image_id", "?")})'
        lacking = [k for k in ('id', 'image_id', 'bbox', 'segmentation', 'area') if k not in ann]
        if lacking:
            return 'malformed_annotation', f'{where}: missing {lacking}: skipped'
        if ann['image_id'] not in self.images:
            return 'annotation_unknown_image', f'{where}: image_id {ann["image_id"]} is not in "images": skipped'
        if ann.get('category_id') not in self._category_set:
            return ('annotation_unknown_category',
                    f'{where}: category_id {ann.get("category_id")!r} is not in "categories": skipped')
        box = _box_problem(ann['bbox'])
        if box is not None:
            return 'degenerate_box', f'{where}: {box}: skipped'
        if not (isinstance(ann['area'], (int, float)) and ann['area'] >= 1):
            return 'zero_area', f'{where}: area {ann["area"]!r} < 1: skipped'
        if _empty_segmentation(ann['segmentation']):
            return 'empty_segmentation', f'{where}: empty segmentation {str(ann["segmentation"])[:60]}: skipped'
        img = self.images[ann['image_id']]
        try:
            check_segmentation(usable_polygons(ann['segmentation']), int(img['height']), int(img['width']))
        except BadAnnotation as e:
            return 'invalid_segmentation', f'{where}: {e}: skipped'
        if ann.get('iscrowd', 0):
            action = 'prompted like any annotation (--crowd skip to skip)' if self.crowd == 'keep' else 'skipped'
            return 'crowd', f'{where}: iscrowd=1: {action}'
        return None

    # -- images ------------------------------------------------------------------------------------------------
    def image_path(self, image_id: int) -> str:
        """Where image ``image_id`` should be (see the module docstring); the first candidate that exists, else
        the first candidate."""
        img = self.images[image_id]
        candidates = []
        if img.get('file_name'):
            candidates.append(osp.join(self.image_dir, img['file_name']))
        if img.get('coco_url'):
            parts = img['coco_url'].rstrip('/').split('/')
            candidates.append(osp.join(self.image_dir, parts[-2], parts[-1]))
            candidates.append(osp.join(self.image_dir, parts[-1]))
        for path in candidates:
            if osp.isfile(path):
                return path
        return candidates[0]

    def load_image(self, image_id: int) -> Tuple[Optional[np.ndarray], Optional[Tuple[str, str]]]:
        """``(rgb uint8 HxWx3, None)``, or ``(None, (issue kind, message))`` when the image cannot be used."""
        path = self.image_path(image_id)
        if not osp.isfile(path):
            n = len(self.anns_by_image[image_id])
            return None, ('missing_image', f'image {image_id}: {path} not found ({n} annotation(s) not evaluated)')
        try:
            from PIL import Image
            with Image.open(path) as im:
                rgb = np.asarray(im.convert('RGB'))
        except Exception as e:  # PIL raises many types for corrupt files
            return None, ('unreadable_image', f'image {image_id}: {path} cannot be read: {e}')
        img = self.images[image_id]
        if rgb.shape[:2] != (img['height'], img['width']):
            return None, ('image_size_mismatch', f'image {image_id}: {path} is {rgb.shape[1]}x{rgb.shape[0]} but '
                                                 f'{osp.basename(self.ann_file)} says {img["width"]}x{img["height"]}')
        return rgb, None

    def gt_mask(self, ann: Dict[str, Any]) -> np.ndarray:
        img = self.images[ann['image_id']]
        return decode_segmentation(ann['segmentation'], int(img['height']), int(img['width']),
                                   skip_short_polygons=True)

    # -- ground truth for the AP modes ---------------------------------------------------------------------------
    def gt_dict(self) -> Dict[str, Any]:
        """The annotation json without the annotations that are not valid ground truth (``dropped_ann_ids``:
        area < 1, degenerate boxes, empty segmentations...). Crowd annotations stay: COCOeval treats them as
        regions to ignore."""
        data = dict(self.data)
        data['annotations'] = [a for i, a in enumerate(self.data['annotations'])
                               if a.get('id', f'#{i}') not in self.dropped_ann_ids]
        return data


def load_detections(det_file: str, dataset: ZeroShotDataset) -> Tuple[Dict[int, List[Dict[str, Any]]], IssueLog]:
    """Read a COCO-results json (``[{image_id, category_id, bbox: [x, y, w, h], score}, ...]``).

    Returns ``(detections by image id, issues)``: each kept detection is the json's dict with ``det_index`` (its
    position in the file) added; detections on unknown images or categories, with degenerate boxes or without a
    finite score are counted in the issues and not evaluated.
    """
    dets = _load_json(det_file, 'detection file')
    if isinstance(dets, dict) and 'annotations' in dets:
        raise ValueError(f'{det_file} looks like an annotation json, not a COCO-results list of detections')
    if not isinstance(dets, list):
        raise ValueError(f'{det_file}: expected a list of detections, got a {type(dets).__name__}')
    name, issues = osp.basename(det_file), IssueLog()
    cats = set(dataset.category_ids)
    by_image: Dict[int, List[Dict[str, Any]]] = defaultdict(list)
    for i, det in enumerate(dets):
        where = f'{name}: detections[{i}]'
        if not isinstance(det, dict) or any(k not in det for k in ('image_id', 'category_id', 'bbox', 'score')):
            issues.add('det_malformed', f'{where}: {str(det)[:80]} lacks image_id/category_id/bbox/score: skipped')
            continue
        if det['image_id'] not in dataset.images:
            issues.add('det_unknown_image', f'{where}: image_id {det["image_id"]!r} is not in '
                                            f'{osp.basename(dataset.ann_file)}: skipped')
            continue
        if det['category_id'] not in cats:
            issues.add('det_unknown_category', f'{where}: category_id {det["category_id"]!r} is not in '
                                               f'{osp.basename(dataset.ann_file)}: skipped')
            continue
        box = _box_problem(det['bbox'])
        if box is not None:
            issues.add('det_degenerate_box', f'{where} (image {det["image_id"]}): {box}: skipped')
            continue
        if not isinstance(det['score'], (int, float)) or not math.isfinite(det['score']):
            issues.add('det_bad_score', f'{where}: score {det["score"]!r} is not a finite number: skipped')
            continue
        by_image[det['image_id']].append(dict(det, det_index=i))
    return dict(by_image), issues
