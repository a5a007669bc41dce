"""The zero-shot protocols of EfficientViT-SAM, for any :class:`~.adapters.PromptableSegmenter`.

Modes (all may run in one pass: one image-encoder forward per image serves all of them):

* ``'box'``: every usable ground-truth annotation's box (COCO ``[x, y, w, h]`` -> ``[x0, y0, x1, y1]`` in
  original pixels) prompts the model; the candidate with the highest predicted IoU is kept; its IoU with the
  annotation's mask (x100) is recorded. Summary: mIoU over all annotations and per size, by the annotation's
  ``area`` field: small ``< 32**2``, medium ``[32**2, 96**2)``, large ``>= 96**2`` (COCO's half-open ranges; the
  reference's filter includes both ends of each range, which differs only for areas of exactly 1024 / 9216).
* ``'points'``: the clicker of :mod:`.clicker`, ``max(clicks)`` rounds; each round re-sends all clicks so far,
  keeps the highest-scoring candidate, and records the IoU after every round, so that one pass gives the 1-,
  3- and 5-click mIoU (each equal to a separate k-click run, the protocol being deterministic). An annotation
  whose clicker stops (nothing left to click, see :mod:`.clicker`) keeps its last prediction and IoU.
* ``'detector'``: each detection of a COCO-results json prompts the model with its box; the kept mask, RLE
  encoded, becomes a result with the detection's category and score; mask AP with pycocotools' ``COCOeval``
  (COCO; ``maxDets`` 1/10/100) or the ``lvis`` package's ``LVISEval`` (LVIS; 300 detections per image).

:func:`evaluate_image` evaluates one image into a json-able record; :class:`ResultStore` appends records to a
jsonl file as they are made (so an interrupted run resumes where it stopped); :func:`evaluate_dataset` runs
the loop with a progress bar; :func:`summarize` turns records into the metrics (the tool and the mmengine
metric both call it).
"""
from __future__ import annotations

import contextlib
import io
import json
import os
import os.path as osp
import tempfile
import warnings
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np

from ..prompts import pad_point_sets
from .clicker import Clicker
from .data import IssueLog, ZeroShotDataset, xywh_to_xyxy

__all__ = ['MODES', 'AREA_RANGES', 'mask_iou', 'evaluate_image', 'ResultStore', 'evaluate_dataset', 'summarize',
           'miou_summary', 'coco_mask_ap', 'lvis_mask_ap', 'format_table', 'encode_mask']

MODES = ('box', 'points', 'detector')
#: The size buckets of the mIoU summary (annotation ``area``; COCO's ranges, half-open).
AREA_RANGES = {'small': (0, 32 ** 2), 'medium': (32 ** 2, 96 ** 2), 'large': (96 ** 2, float('inf'))}


def mask_iou(pred: np.ndarray, gt: np.ndarray) -> float:
    """IoU of two bool masks, x100 (the reference's unit). ``gt`` must not be empty."""
    inter = np.count_nonzero(pred & gt)
    union = np.count_nonzero(pred | gt)
    return 100.0 * inter / union


def encode_mask(mask: np.ndarray) -> Dict[str, Any]:
    """COCO compressed RLE of a bool ``(H, W)`` mask, json-able."""
    from pycocotools import mask as mask_utils
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {'size': [int(v) for v in rle['size']], 'counts': rle['counts'].decode('ascii')}


def _best(masks: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """The highest-scoring candidate of each prompt set: ``(B, C, H, W)``, ``(B, C)`` -> ``(B, H, W)``."""
    return masks[np.arange(len(masks)), scores.argmax(axis=1)]


def _outside(box: Sequence[float], h: int, w: int) -> bool:
    x0, y0, x1, y1 = box
    return x1 < 0 or y1 < 0 or x0 > w or y0 > h


def _promptable_gts(dataset: ZeroShotDataset, image_id: int, h: int, w: int,
                    issues: List[Dict[str, str]]) -> List[Tuple[Dict[str, Any], np.ndarray]]:
    """``(ann, mask)`` of the image's annotations that can be prompted; the others are skipped with an issue (a box
    outside the image, an empty mask)."""
    gts = []
    for ann in dataset.anns_by_image[image_id]:
        if _outside(xywh_to_xyxy(ann['bbox']), h, w):
            issues.append({'kind': 'box_outside_image', 'message':
                           f'annotation {ann["id"]} (image {image_id}): bbox {ann["bbox"]} lies '
                           f'outside the {w}x{h} image: skipped'})
            continue
        mask = dataset.gt_mask(ann)
        if not mask.any():
            issues.append({'kind': 'empty_mask', 'message':
                           f'annotation {ann["id"]} (image {image_id}): segmentation decodes to an '
                           'empty mask: skipped'})
            continue
        gts.append((ann, mask))
    return gts


def _box_prompts(model, gts) -> Tuple[List[Dict[str, Any]], List[np.ndarray]]:
    """The ``box`` mode: each annotation's box prompts the model once; its records and predicted masks."""
    records, kept = [], []
    if gts:
        boxes = np.array([xywh_to_xyxy(a['bbox']) for a, _ in gts])
        best = _best(*model.predict(boxes=boxes))
        for (ann, gt), pred in zip(gts, best):
            records.append({'ann_id': ann['id'], 'area': float(ann['area']), 'iou': mask_iou(pred, gt)})
            kept.append(pred)
    return records, kept


def _point_prompts(model, gts, rounds: int) -> Tuple[List[Dict[str, Any]], List[np.ndarray]]:
    """The ``points`` mode: ``rounds`` rounds of clicks (:class:`Clicker`), every annotation's prompt set batched
    in one call per round; its records (the IoU after each round, the clicks) and final masks."""
    clickers = [Clicker(gt) for _, gt in gts]
    preds: List[Optional[np.ndarray]] = [None] * len(gts)
    ious: List[List[float]] = [[] for _ in gts]
    for _ in range(rounds):
        active = [i for i, clicker in enumerate(clickers) if clicker.next_click(preds[i]) is not None]
        # every active prompt set has the same number of clicks (so nothing is padded): a clicker that found
        # nothing to click (a perfect prediction, or every error pixel clicked already) keeps its prediction,
        # hence stays inactive
        if active:
            prompts = [clickers[i].prompt() for i in active]
            coords, labels = pad_point_sets([p[0] for p in prompts], [p[1] for p in prompts])
            best = _best(*model.predict(point_coords=coords, point_labels=labels))
            for i, pred in zip(active, best):
                preds[i] = pred
        for i, (_, gt) in enumerate(gts):
            ious[i].append(mask_iou(preds[i], gt))
    records = [{'ann_id': ann['id'], 'area': float(ann['area']), 'ious': iou_list,
                'clicks': [[c.x, c.y, c.label] for c in clicker.clicks]}
               for (ann, _), clicker, iou_list in zip(gts, clickers, ious)]
    return records, list(preds)


def _detector_prompts(model, detections, image_id: int, h: int, w: int,
                      issues: List[Dict[str, str]]) -> Tuple[List[Dict[str, Any]], List[np.ndarray]]:
    """The ``detector`` mode: each detection's box prompts the model (boxes outside the image are skipped with an
    issue); the COCO results (RLE masks) and the masks."""
    records, kept = [], []
    dets = []
    for det in detections:
        if _outside(xywh_to_xyxy(det['bbox']), h, w):
            issues.append({'kind': 'box_outside_image', 'message':
                           f'detection {det["det_index"]} (image {image_id}): bbox {det["bbox"]} '
                           f'lies outside the {w}x{h} image: skipped'})
        else:
            dets.append(det)
    if dets:
        best = _best(*model.predict(boxes=np.array([xywh_to_xyxy(d['bbox']) for d in dets])))
        for det, pred in zip(dets, best):
            records.append({'image_id': image_id, 'category_id': det['category_id'], 'score': float(det['score']),
                            'det_index': det['det_index'], 'segmentation': encode_mask(pred)})
            kept.append(pred)
    return records, kept


def evaluate_image(model, dataset: ZeroShotDataset, image_id: int, image: np.ndarray, modes: Sequence[str],
                   clicks: Sequence[int] = (1, 3, 5), detections: Optional[List[Dict[str, Any]]] = None,
                   cache_key=None, keep_masks: bool = False) -> Dict[str, Any]:
    """Evaluate ``modes`` on one image. Returns the image's record::

        {'image_id', 'status': 'ok', 'issues': [{'kind', 'message'}],
         'box': [{'ann_id', 'area', 'iou'}], 'points': [{'ann_id', 'area', 'ious': [per round], 'clicks':
         [[x, y, label], ...]}], 'detector': [{'image_id', 'category_id', 'score', 'det_index', 'segmentation'}]}

    (only the modes asked for). With ``keep_masks`` the record also holds ``'_masks'`` (mode -> list of the kept
    masks, for drawing; not json-able).
    """
    h, w = image.shape[:2]
    record: Dict[str, Any] = {'image_id': image_id, 'status': 'ok', 'issues': []}
    kept: Dict[str, list] = {}
    model.set_image(image, image_id, cache_key)
    gts = _promptable_gts(dataset, image_id, h, w, record['issues']) if 'box' in modes or 'points' in modes else []
    if 'box' in modes:
        record['box'], kept['box'] = _box_prompts(model, gts)
    if 'points' in modes:
        record['points'], kept['points'] = _point_prompts(model, gts, max(clicks))
    if 'detector' in modes:
        record['detector'], kept['detector'] = _detector_prompts(model, detections or [], image_id, h, w,
                                                                 record['issues'])
    if keep_masks:
        record['_masks'] = kept
    return record


class ResultStore:
    """Per-image records in a jsonl file, appended (and flushed) one by one, so a run can resume.

    The first line is a header holding the run's ``fingerprint`` (annotation file, modes, model...); reopening
    with another fingerprint is an error rather than a silent mix of two runs. A last line cut short by a
    kill is dropped (that image is evaluated again).
    """

    def __init__(self, path: str, fingerprint: Dict[str, Any], restart: bool = False) -> None:
        self.path, self.fingerprint = path, json.loads(json.dumps(fingerprint))
        self.records: Dict[int, Dict[str, Any]] = {}
        self.resumed = 0
        os.makedirs(osp.dirname(osp.abspath(path)), exist_ok=True)
        if restart or not osp.isfile(path):
            with open(path, 'w') as f:
                f.write(json.dumps({'header': self.fingerprint}) + '\n')
            return
        with open(path, 'rb') as f:
            raw = f.read()
        lines = raw.split(b'\n')
        good_bytes = 0
        for n, line in enumerate(lines):
            if not line.strip():
                good_bytes += len(line) + 1
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError:
                if n == len(lines) - 1 or all(not rest.strip() for rest in lines[n + 1:]):
                    warnings.warn(f'{path}: dropping a truncated last line (interrupted write); that image will '
                                  'be evaluated again')
                    break
                raise ValueError(f'{path}: line {n + 1} is not valid JSON; delete the file or pass --restart')
            if n == 0:
                if obj.get('header') != self.fingerprint:
                    raise ValueError(f'{path} holds results of another run ({obj.get("header")}), not of '
                                     f'{self.fingerprint}: use another --out-dir, or --restart to discard them')
            else:
                self.records[obj['image_id']] = obj
            good_bytes += len(line) + 1
        if good_bytes < len(raw):
            with open(path, 'r+b') as f:
                f.truncate(min(good_bytes, len(raw)))
        with open(path, 'rb') as f:  # make sure the file ends with a newline before appending
            data = f.read()
        if data and not data.endswith(b'\n'):
            with open(path, 'ab') as f:
                f.write(b'\n')
        self.resumed = len(self.records)

    def __contains__(self, image_id: int) -> bool:
        return image_id in self.records

    def append(self, record: Dict[str, Any]) -> None:
        record = {k: v for k, v in record.items() if not k.startswith('_')}
        with open(self.path, 'a') as f:
            f.write(json.dumps(record) + '\n')
            f.flush()
            os.fsync(f.fileno())
        self.records[record['image_id']] = record


def evaluate_dataset(model, dataset: ZeroShotDataset, modes: Sequence[str], store: ResultStore,
                     clicks: Sequence[int] = (1, 3, 5), detections: Optional[Dict[int, list]] = None,
                     image_ids: Optional[Iterable[int]] = None, progress: bool = True,
                     on_record: Optional[Callable[[Dict[str, Any]], None]] = None) -> List[Dict[str, Any]]:
    """Evaluate every image of ``dataset`` (or ``image_ids``) that ``store`` does not hold yet; each record is
    appended to ``store`` as soon as it is made. ``on_record`` sees each new record (with its ``'_masks'``).
    Returns the records of all the images asked for (resumed ones included), in image-id order."""
    for mode in modes:
        if mode not in MODES:
            raise ValueError(f'unknown mode {mode!r}; modes are {MODES}')
    if 'detector' in modes and detections is None:
        raise ValueError("mode 'detector' needs detections (a COCO-results json)")
    ids = list(dataset.image_ids if image_ids is None else image_ids)
    todo = [i for i in ids if i not in store]
    from tqdm import tqdm
    bar = tqdm(total=len(ids), initial=len(ids) - len(todo), desc='zero-shot ' + '+'.join(modes), unit='img',
               disable=not progress, dynamic_ncols=True)
    for image_id in todo:
        image, problem = dataset.load_image(image_id)
        if image is None:
            record = {'image_id': image_id, 'status': problem[0],
                      'issues': [{'kind': problem[0], 'message': problem[1]}]}
            bar.write(f'warning: {problem[1]}')
        else:
            record = evaluate_image(model, dataset, image_id, image, modes, clicks,
                                    (detections or {}).get(image_id, []), cache_key=dataset.image_path(image_id),
                                    keep_masks=on_record is not None)
        store.append(record)
        if on_record is not None:
            on_record(record)
        bar.update(1)
    bar.close()
    return [store.records[i] for i in ids]


# ------------------------------------------------------------------------------------------------------------
# metrics
# ------------------------------------------------------------------------------------------------------------

def miou_summary(entries: Sequence[Dict[str, Any]], key: str = 'iou', index: Optional[int] = None
                 ) -> Dict[str, Any]:
    """mIoU (x100) over ``entries`` (``{'area', key}``; ``index`` picks one round of a list) and per size
    bucket; a bucket without annotation gives ``None``."""
    def value(e):
        return e[key] if index is None else e[key][index]
    out: Dict[str, Any] = {'mIoU': float(np.mean([value(e) for e in entries])) if entries else None,
                           'count': len(entries)}
    for name, (lo, hi) in AREA_RANGES.items():
        sel = [value(e) for e in entries if lo <= e['area'] < hi]
        out[f'mIoU_{name}'] = float(np.mean(sel)) if sel else None
        out[f'count_{name}'] = len(sel)
    return out


COCO_STAT_NAMES = ('AP', 'AP50', 'AP75', 'APs', 'APm', 'APl', 'AR1', 'AR10', 'AR100', 'ARs', 'ARm', 'ARl')
LVIS_STAT_NAMES = ('AP', 'AP50', 'AP75', 'APs', 'APm', 'APl', 'APr', 'APc', 'APf')


def coco_mask_ap(gt: Dict[str, Any], results: List[Dict[str, Any]], image_ids: Sequence[int]) -> Dict[str, Any]:
    """pycocotools ``COCOeval(iouType='segm')`` of ``results`` (RLE ``segmentation``, ``score``, ``category_id``,
    ``image_id``) on the images ``image_ids`` of ground truth ``gt`` (a COCO json dict); maxDets 1/10/100.
    Returns its 12 stats (fractions) and the printed summary."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        coco_gt = COCO()
        coco_gt.dataset = gt
        coco_gt.createIndex()
        coco_dt = coco_gt.loadRes([{k: r[k] for k in ('image_id', 'category_id', 'score', 'segmentation')}
                                   for r in results])
        ev = COCOeval(coco_gt, coco_dt, 'segm')
        ev.params.imgIds = list(image_ids)
        ev.params.maxDets = [1, 10, 100]
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    stats = {name: float(v) for name, v in zip(COCO_STAT_NAMES, ev.stats)}
    stats['summary'] = _stat_lines(buf.getvalue())
    return stats


def _stat_lines(printed: str) -> str:
    """The AP/AR lines of what COCOeval/LVISEval printed, without their progress and timing lines ("DONE
    (t=0.01s)"), so that the same evaluation always gives the same summary (a resumed run equals a straight one)."""
    return ''.join(line for line in printed.splitlines(keepends=True)
                   if 'Average Precision' in line or 'Average Recall' in line)


@contextlib.contextmanager
def _numpy_float_alias():
    """lvis 0.5.3 (the last release) calls ``np.float``, which numpy >= 1.24 removed: provide the alias (=
    the builtin ``float``, what it always was) for the duration of the call only."""
    added = 'float' not in np.__dict__
    if added:
        np.float = float  # type: ignore[attr-defined]
    try:
        yield
    finally:
        if added:
            del np.float


def lvis_mask_ap(gt: Dict[str, Any], results: List[Dict[str, Any]], image_ids: Sequence[int],
                 max_dets: int = 300) -> Dict[str, Any]:
    """The ``lvis`` package's ``LVISEval`` (segm) of ``results`` on images ``image_ids`` of LVIS ground truth
    ``gt`` (a json dict), at most ``max_dets`` results per image (LVIS's 300). Returns the stats (fractions)."""
    from lvis import LVIS, LVISEval, LVISResults
    import logging
    with tempfile.TemporaryDirectory() as tmp:  # the lvis API reads its ground truth from a file
        path = osp.join(tmp, 'gt.json')
        with open(path, 'w') as f:
            json.dump(gt, f)
        buf = io.StringIO()
        level = logging.getLogger('lvis').level
        logging.getLogger('lvis').setLevel(logging.ERROR)
        try:
            with contextlib.redirect_stdout(buf), _numpy_float_alias(), warnings.catch_warnings():
                warnings.filterwarnings('ignore', category=DeprecationWarning, module='lvis')  # its logger.warn
                lvis_gt = LVIS(path)
                dts = LVISResults(lvis_gt, [{k: r[k] for k in ('image_id', 'category_id', 'score', 'segmentation')}
                                            for r in results], max_dets=max_dets)
                ev = LVISEval(lvis_gt, dts, 'segm')
                ev.params.img_ids = list(image_ids)
                ev.run()
                ev.print_results()
        finally:
            logging.getLogger('lvis').setLevel(level)
    res = ev.get_results()
    stats = {name: float(res[name]) for name in LVIS_STAT_NAMES}
    stats['summary'] = _stat_lines(buf.getvalue())
    return stats


def summarize(records: Sequence[Dict[str, Any]], dataset: ZeroShotDataset, modes: Sequence[str],
              clicks: Sequence[int] = (1, 3, 5), extra_issues: Optional[IssueLog] = None) -> Dict[str, Any]:
    """Metrics of ``records`` (as :func:`evaluate_image` makes them): per mode mIoU (box; points per number of
    clicks) or mask AP (detector), plus counts of every issue (the dataset's, ``extra_issues`` (e.g. the
    detection file's) and the per-image ones)."""
    issues = IssueLog()
    issues.update(dataset.issues)
    if extra_issues is not None:
        issues.update(extra_issues)
    ok = [r for r in records if r['status'] == 'ok']
    for r in records:
        issues.add_records(r.get('issues', []))
    out: Dict[str, Any] = {'dataset': dataset.kind, 'ann_file': dataset.ann_file, 'images': len(records),
                           'images_evaluated': len(ok), 'modes': list(modes)}
    if 'box' in modes:
        out['box'] = miou_summary([e for r in ok for e in r.get('box', [])])
    if 'points' in modes:
        entries = [e for r in ok for e in r.get('points', [])]
        out['points'] = {f'{k}_click': miou_summary(entries, 'ious', k - 1) for k in sorted(clicks)}
    if 'detector' in modes:
        results = [d for r in ok for d in r.get('detector', [])]
        image_ids = [r['image_id'] for r in ok]
        if not results:
            issues.add('no_detections', f'no detection on the {len(ok)} evaluated image(s)')
            names = COCO_STAT_NAMES if dataset.kind == 'coco' else LVIS_STAT_NAMES
            out['detector'] = {name: 0.0 for name in names}
        elif dataset.kind == 'coco':
            out['detector'] = coco_mask_ap(dataset.gt_dict(), results, image_ids)
        else:
            out['detector'] = lvis_mask_ap(dataset.gt_dict(), results, image_ids)
        out['detector']['detections'] = len(results)
    out['issues'] = issues.to_dict()
    return out


def _fmt(v, scale: float = 1.0) -> str:
    return '-' if v is None or (isinstance(v, float) and v < 0) else f'{v * scale:.3f}'


def format_table(results: Dict[str, Any]) -> str:
    """The summary as a markdown table (mIoU x100; AP as a fraction, as COCOeval prints it), plus the issues."""
    lines = [f'{results["dataset"].upper()} {results["ann_file"]}: {results["images_evaluated"]}/{results["images"]} '
             'images evaluated', '', '| prompt | metric | all | small | medium | large | annotations |',
             '|---|---|---|---|---|---|---|']
    rows = []
    if 'box' in results:
        rows.append(('GT box', results['box']))
    for name, s in (results.get('points') or {}).items():
        rows.append((name.replace('_', ' '), s))
    for name, s in rows:
        lines.append(f'| {name} | mIoU | {_fmt(s["mIoU"])} | {_fmt(s["mIoU_small"])} | {_fmt(s["mIoU_medium"])} | '
                     f'{_fmt(s["mIoU_large"])} | {s["count"]} |')
    if 'detector' in results:
        d = results['detector']
        lines.append(f'| detector box | mask AP | {_fmt(d["AP"])} | {_fmt(d["APs"])} | {_fmt(d["APm"])} | '
                     f'{_fmt(d["APl"])} | {d["detections"]} detections |')
        extra = ', '.join(f'{k} {_fmt(d[k])}' for k in ('AP50', 'AP75', 'APr', 'APc', 'APf') if k in d)
        lines += ['', f'mask AP: {extra}']
    if results['issues']:
        lines += ['', 'inputs not evaluated as given (counted, see results json for examples):']
        lines += [f'  {k}: {v["count"]} ({v["meaning"]}); e.g. {v["examples"][0]}'
                  for k, v in results['issues'].items()]
    return '\n'.join(lines)
