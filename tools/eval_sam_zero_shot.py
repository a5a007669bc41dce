#!/usr/bin/env python
"""Zero-shot COCO/LVIS evaluation of a SAM-style model (EfficientViT-SAM's protocol; docs/sam_zero_shot.md).

    python tools/eval_sam_zero_shot.py --ann-file ANN.json --image-dir DIR --model efficientvit_sam_xl1 --pretrained \\
        --mode box points detector [--clicks 1 3 5] [--det-file coco_vitdet.json] --out-dir work_dirs/zs

Modes: ``box`` (every ground-truth box; mIoU), ``points`` (1/3/5 simulated clicks; mIoU), ``detector`` (the
boxes of a COCO-results json, e.g. ViTDet's; mask AP with pycocotools for COCO, the lvis package for LVIS).
Several modes run in one pass (one image-encoder forward per image). The dataset kind (COCO or LVIS) is read
from the json (``--dataset`` to force it). ``--image-dir``: COCO's ``val2017`` for COCO; the COCO root (holding
``train2017/`` and ``val2017/``) for LVIS.

``--model``: a registry name, EfficientViT-SAM ``efficientvit_sam_l0`` ... ``_xl1`` (or ``l0`` ... ``xl1``),
segment-anything's ``sam_vit_b`` ``sam_vit_l`` ``sam_vit_h``, with ``--pretrained`` (the published weights,
downloaded once and cached: docs/model_zoo.md) or ``--checkpoint`` (a path, URL or ``evit://NAME``); with neither
the weights are random and the numbers meaningless. Or ``oracle`` (answers with the ground truth: a check of the
data and of the pipeline, which must give mIoU 100 and AP 1.0, unless two annotations of an image get the very
same prompt; docs/sam_zero_shot.md).

Per-image results go to ``OUT/per_image.jsonl`` as they are made: rerunning the same command resumes an
interrupted run (``--restart`` starts over). At the end: a table on stdout and ``OUT/results.json``.
``--vis N`` draws the prompts and kept masks of the first N images evaluated into ``OUT/vis/*.png``.
Bad inputs (crowd, empty, invalid or degenerate annotations, missing images, detections on unknown images...)
are reported and counted, never dropped silently. A run that evaluates no image at all (e.g. a wrong
``--image-dir``) exits with status 1 after writing its (empty) results.
"""
from __future__ import annotations

import argparse
import json
import os
import os.path as osp
import sys
import time
from collections import Counter


sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))


def parse_args(argv=None):
    from evit_mm.sam.zero_shot import MODES, SAM_MODEL_NAMES
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--ann-file', required=True, help='COCO instances json or LVIS json')
    ap.add_argument('--image-dir', required=True, help='COCO: the image folder (val2017); LVIS: the COCO root')
    ap.add_argument('--model', default='efficientvit_sam_l0',
                    help=f'{", ".join(SAM_MODEL_NAMES)} (or l0 ... xl1, vit_b ...), or oracle '
                         '(default efficientvit_sam_l0)')
    ap.add_argument('--pretrained', action='store_true',
                    help='the model\'s published weights, downloaded once and cached (docs/model_zoo.md)')
    ap.add_argument('--checkpoint', help='model weights: a path, a URL or evit://NAME (default: random weights)')
    ap.add_argument('--mode', nargs='+', choices=MODES, default=['box'], help='prompt mode(s) (default box)')
    ap.add_argument('--clicks', nargs='+', type=int, default=[1, 3, 5], help='click counts to report (points)')
    ap.add_argument('--det-file', help='COCO-results json of detections (mode detector)')
    ap.add_argument('--dataset', choices=['auto', 'coco', 'lvis'], default='auto')
    ap.add_argument('--crowd', choices=['keep', 'skip'], default='keep',
                    help='prompt crowd annotations (keep, as the reference) or skip them; counted either way')
    ap.add_argument('--out-dir', required=True)
    ap.add_argument('--restart', action='store_true', help='discard the results of an earlier run in --out-dir')
    ap.add_argument('--max-images', type=int, help='evaluate only the first N images (by id)')
    ap.add_argument('--batch-size', type=int, default=32, help='prompts per mask-decoder call')
    ap.add_argument('--device', default='cpu')
    ap.add_argument('--vis', type=int, default=0, metavar='N', help='draw the first N evaluated images')
    ap.add_argument('--no-progress', action='store_true')
    args = ap.parse_args(argv)
    if 'detector' in args.mode and not args.det_file:
        ap.error('--mode detector needs --det-file (a COCO-results json of detections, e.g. coco_vitdet.json)')
    if any(c < 1 for c in args.clicks):
        ap.error(f'--clicks must be >= 1, got {args.clicks}')
    if args.max_images is not None and args.max_images < 1:
        ap.error(f'--max-images must be >= 1, got {args.max_images}')
    return args


def draw(record, dataset, out_dir: str, detections) -> list:
    """PNGs of one image: per mode, its prompts and the masks kept."""
    from PIL import Image, ImageDraw

    from evit_mm.sam.visualize import overlay  # masks filled and outlined, as tools/sam_demo.py draws them
    from evit_mm.sam.zero_shot.data import xywh_to_xyxy
    image, _ = dataset.load_image(record['image_id'])
    written = []
    for mode, masks in record['_masks'].items():
        im = Image.fromarray(overlay(image, [m.astype(bool) for m in masks], alpha=0.45))
        d = ImageDraw.Draw(im)
        if mode == 'box':
            by_id = {a['id']: a for a in dataset.anns_by_image[record['image_id']]}
            boxes = [xywh_to_xyxy(by_id[e['ann_id']]['bbox']) for e in record['box']]
        elif mode == 'detector':
            boxes = [xywh_to_xyxy(detections[e['det_index']]['bbox']) for e in record['detector']]
        else:
            boxes = []
        for b in boxes:
            d.rectangle(b, outline=(0, 255, 0))
        if mode == 'points':
            for e in record['points']:
                for x, y, label in e['clicks']:
                    d.ellipse([x - 2, y - 2, x + 2, y + 2], fill=(0, 255, 0) if label else (255, 0, 0))
        path = osp.join(out_dir, f'{record["image_id"]}_{mode}.png')
        im.save(path)
        written.append(path)
    return written


def no_image_reason(records, ann_file: str) -> str:
    """Why a run evaluated no image: the json lists none, or what happened to each (counts by status)."""
    if not records:
        return f'{ann_file} lists no image'
    counts = Counter(r['status'] for r in records)
    statuses = ', '.join(f'{n} {status.replace("_", " ")}' for status, n in sorted(counts.items()))
    return f'of {len(records)} image(s): {statuses}; check --image-dir'


def main(argv=None) -> int:
    args = parse_args(argv)
    from evit_mm.sam.zero_shot import (OracleSegmenter, ResultStore, SamAdapter, ZeroShotDataset, build_zero_shot_sam,
                                       evaluate_dataset, format_table, load_detections, summarize)
    try:
        dataset = ZeroShotDataset(args.ann_file, args.image_dir, kind=args.dataset, crowd=args.crowd)
        dets, det_issues = (load_detections(args.det_file, dataset) if 'detector' in args.mode else (None, None))
    except (FileNotFoundError, ValueError) as e:
        raise SystemExit(f'error: {e}')
    for line in dataset.issues.lines() + (det_issues.lines() if det_issues else []):
        print(f'warning: {line}', file=sys.stderr)

    fingerprint = {'ann_file': osp.abspath(args.ann_file), 'image_dir': osp.abspath(args.image_dir),
                   'dataset': dataset.kind, 'modes': sorted(args.mode), 'max_clicks': max(args.clicks),
                   'det_file': osp.abspath(args.det_file) if args.det_file else None, 'model': args.model,
                   'checkpoint': (args.checkpoint if '://' in args.checkpoint else osp.abspath(args.checkpoint))
                   if args.checkpoint else None, 'pretrained': args.pretrained, 'crowd': args.crowd}
    os.makedirs(args.out_dir, exist_ok=True)
    try:
        store = ResultStore(osp.join(args.out_dir, 'per_image.jsonl'), fingerprint, restart=args.restart)
    except ValueError as e:
        raise SystemExit(f'error: {e}')
    image_ids = dataset.image_ids[:args.max_images] if args.max_images else dataset.image_ids
    if store.resumed:
        print(f'resuming: {sum(i in store for i in image_ids)} of {len(image_ids)} images already evaluated in '
              f'{store.path}')

    model = None
    if any(i not in store for i in image_ids):
        if args.model == 'oracle':
            model = OracleSegmenter(dataset)
        else:
            if args.checkpoint is None and not args.pretrained:
                print('warning: neither --pretrained nor --checkpoint: random weights, the numbers are meaningless',
                      file=sys.stderr)
            try:
                sam = build_zero_shot_sam(args.model, args.checkpoint, args.device, pretrained=args.pretrained)
                model = SamAdapter.from_model(sam, batch_size=args.batch_size)
            except (ValueError, FileNotFoundError, RuntimeError) as e:
                raise SystemExit(f'error: {e}')

    det_list = json.load(open(args.det_file)) if args.vis and args.det_file else None
    vis_dir, drawn = osp.join(args.out_dir, 'vis'), []

    def on_record(record):
        if len(drawn) < args.vis and record['status'] == 'ok':
            os.makedirs(vis_dir, exist_ok=True)
            drawn.append(draw(record, dataset, vis_dir, det_list))

    t0 = time.perf_counter()
    records = evaluate_dataset(model, dataset, args.mode, store, args.clicks, dets, image_ids,
                               progress=not args.no_progress, on_record=on_record if args.vis else None)
    elapsed = time.perf_counter() - t0
    results = summarize(records, dataset, args.mode, args.clicks, det_issues)
    results.update(run=fingerprint, seconds_this_run=round(elapsed, 2), resumed_images=store.resumed)
    with open(osp.join(args.out_dir, 'results.json'), 'w') as f:
        json.dump(results, f, indent=1)
    print(format_table(results))
    print(f'\nwrote {osp.join(args.out_dir, "results.json")} and {store.path}'
          + (f'; {sum(map(len, drawn))} PNG(s) in {vis_dir}' if drawn else ''))
    if results['images_evaluated'] == 0:
        print(f'error: no image was evaluated ({no_image_reason(records, args.ann_file)}): the numbers above are '
              'not a result', file=sys.stderr)
        return 1
    return 0


if __name__ == '__main__':
    sys.exit(main())
