"""Tiny COCO- and LVIS-format sets for the zero-shot SAM evaluation, from real photographs.

The images and the coin annotations are coins-coco's validation split (:func:`~evit_mm.sample_data.coins.
make_coins_coco`: coins of ``skimage.data.coins()`` pasted on ``skimage.data`` photographs). On top of them:

* ``annotations/zero_shot_coco.json``: COCO instances json = the coin annotations + **bad annotations** that an
  evaluation must count, not drop silently: a crowd region (``iscrowd=1``, RLE), an annotation with a zero-width
  box and area 0, and one with an empty segmentation;
* ``annotations/zero_shot_lvis.json``: the same images and coins in LVIS v1's format: images without
  ``file_name`` but with ``coco_url`` (``http://images.cocodataset.org/val2017/<name>``), ``neg_category_ids`` /
  ``not_exhaustive_category_ids``; categories with ``frequency``, ``synonyms``, ``image_count``...; a second,
  rare category (``bottle_cap``) with no instance, listed as a negative of the first image; no ``iscrowd`` (LVIS
  has none); plus the zero-area bad annotation. The image root is the dataset root (``<root>/val2017/...``, as
  LVIS's images live under COCO's root);
* ``detections/coco_detections.json`` / ``detections/lvis_detections.json``: COCO-results lists standing in for
  a detector's output: every usable coin's box, jittered by up to 1 px, with descending scores; one false
  positive (a background box, lowest score); and bad entries: a detection on an unknown image id and one with a
  zero-height box (LVIS: also a ``bottle_cap`` false positive on the image that lists it as negative).
"""
from __future__ import annotations

import copy
import json
import os
import os.path as osp

import numpy as np

from .coins import make_coins_coco

__all__ = ['make_zero_shot_sets', 'LVIS_CATEGORIES']

LVIS_CATEGORIES = [
    {'id': 1, 'name': 'coin', 'synonyms': ['coin'], 'synset': 'coin.n.01', 'def': 'a flat metal piece used as money',
     'frequency': 'f', 'image_count': 0, 'instance_count': 0},
    {'id': 2, 'name': 'bottle_cap', 'synonyms': ['bottle_cap'], 'synset': 'cap.n.02',
     'def': 'a top (as for a bottle)', 'frequency': 'r', 'image_count': 0, 'instance_count': 0},
]


def _rle(mask: np.ndarray) -> dict:
    from pycocotools import mask as mask_utils
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {'size': [int(v) for v in rle['size']], 'counts': rle['counts'].decode('ascii')}


def _free_box(anns, size: int, side: int):
    """A ``side`` x ``side`` box (xywh) of the image that no annotation box touches (for background prompts)."""
    for y in range(0, size - side, 4):
        for x in range(0, size - side, 4):
            if all(x + side <= a['bbox'][0] or a['bbox'][0] + a['bbox'][2] <= x or
                   y + side <= a['bbox'][1] or a['bbox'][1] + a['bbox'][3] <= y for a in anns):
                return [x, y, side, side]
    raise RuntimeError('no free background box found')


def _detections(anns, images, rng, unknown_image_id: int):
    dets = []
    good = [a for a in anns if a['area'] >= 1 and a['bbox'][2] > 0 and a['bbox'][3] > 0 and not a.get('iscrowd')
            and a['segmentation']]
    scores = np.linspace(0.95, 0.5, len(good))
    for ann, score in zip(good, scores):
        x, y, w, h = ann['bbox']
        jx, jy = rng.uniform(-1, 1, 2)
        dets.append({'image_id': ann['image_id'], 'category_id': 1, 'bbox': [round(x + jx, 2), round(y + jy, 2), w, h],
                     'score': round(float(score), 4)})
    first = images[0]
    size = first['width']
    dets.append({'image_id': first['id'], 'category_id': 1,
                 'bbox': _free_box([a for a in anns if a['image_id'] == first['id']], size, 12), 'score': 0.05})
    dets.append({'image_id': unknown_image_id, 'category_id': 1, 'bbox': [1, 1, 10, 10], 'score': 0.9})
    dets.append({'image_id': first['id'], 'category_id': 1, 'bbox': [5, 5, 10, 0], 'score': 0.8})
    return dets


def make_zero_shot_sets(root: str, num_images: int = 2, image_size: int = 128, seed: int = 0) -> dict:
    """Build the sets under ``root`` (see the module docstring); deterministic. Returns the paths:
    ``{'coco_ann', 'coco_img', 'coco_det', 'lvis_ann', 'lvis_img', 'lvis_det', 'root'}`` (``lvis_img`` is the
    root holding ``val2017/``, as for real LVIS)."""
    paths = make_coins_coco(root, num_train=1, num_val=num_images, image_size=image_size, seed=seed)
    with open(paths['val_ann']) as f:
        coco = json.load(f)
    rng = np.random.default_rng(seed)
    images, anns = coco['images'], coco['annotations']
    next_id = max(a['id'] for a in anns) + 1
    first = images[0]
    size = first['width']

    # bad annotations, all on the first image
    crowd_box = _free_box([a for a in anns if a['image_id'] == first['id']], size, 16)
    crowd_mask = np.zeros((first['height'], first['width']), bool)
    x, y, w, h = crowd_box
    crowd_mask[y:y + h, x:x + w] = True
    bad = [
        {'id': next_id, 'image_id': first['id'], 'category_id': 1, 'bbox': crowd_box, 'area': int(crowd_mask.sum()),
         'segmentation': _rle(crowd_mask), 'iscrowd': 1},
        {'id': next_id + 1, 'image_id': first['id'], 'category_id': 1, 'bbox': [20, 20, 0, 6], 'area': 0,
         'segmentation': [[20, 20, 20, 26, 20, 23]], 'iscrowd': 0},
        {'id': next_id + 2, 'image_id': first['id'], 'category_id': 1, 'bbox': [30, 30, 6, 6], 'area': 36,
         'segmentation': [], 'iscrowd': 0},
    ]
    coco_zs = dict(coco, annotations=anns + bad)
    coco_zs['info'] = dict(coco['info'], description=coco['info']['description'] +
                           '; zero-shot test set with deliberately bad annotations (crowd, zero area, empty)')
    ann_dir, det_dir = osp.join(root, 'annotations'), osp.join(root, 'detections')
    os.makedirs(det_dir, exist_ok=True)
    out = {'root': root, 'coco_ann': osp.join(ann_dir, 'zero_shot_coco.json'), 'coco_img': paths['val_img'],
           'coco_det': osp.join(det_dir, 'coco_detections.json'),
           'lvis_ann': osp.join(ann_dir, 'zero_shot_lvis.json'), 'lvis_img': root,
           'lvis_det': osp.join(det_dir, 'lvis_detections.json')}
    unknown = max(im['id'] for im in images) + 1000
    with open(out['coco_ann'], 'w') as f:
        json.dump(coco_zs, f)
    with open(out['coco_det'], 'w') as f:
        json.dump(_detections(coco_zs['annotations'], images, rng, unknown), f)

    # LVIS v1 layout
    lvis_images = []
    for im in images:
        lvis_images.append({'id': im['id'], 'height': im['height'], 'width': im['width'], 'license': 1,
                            'coco_url': f'http://images.cocodataset.org/val2017/{im["file_name"]}',
                            'flickr_url': '', 'date_captured': '2026-01-01 00:00:00',
                            'neg_category_ids': [2] if im['id'] == first['id'] else [],
                            'not_exhaustive_category_ids': []})
    lvis_anns = [{k: v for k, v in a.items() if k != 'iscrowd'} for a in anns] + \
        [{k: v for k, v in bad[1].items() if k != 'iscrowd'}]
    cats = copy.deepcopy(LVIS_CATEGORIES)
    cats[0]['image_count'] = len({a['image_id'] for a in anns})
    cats[0]['instance_count'] = len(anns)
    lvis = {'info': coco_zs['info'], 'licenses': coco['licenses'], 'images': lvis_images, 'annotations': lvis_anns,
            'categories': cats}
    with open(out['lvis_ann'], 'w') as f:
        json.dump(lvis, f)
    lvis_dets = _detections(lvis_anns, images, rng, unknown)
    lvis_dets.append({'image_id': first['id'], 'category_id': 2,
                      'bbox': _free_box([a for a in anns if a['image_id'] == first['id']], size, 10), 'score': 0.04})
    with open(out['lvis_det'], 'w') as f:
        json.dump(lvis_dets, f)
    return out
