"""A tiny dataset in SA-1B's on-disk format ("sa1b-demo"), built from real photographs with real object masks.

SA-1B ships as ``.tar`` shards (``sa_000000.tar`` ...), each holding pairs ``sa_<id>.jpg`` + ``sa_<id>.json``. The
json holds ``{"image": {"image_id", "width", "height", "file_name"}, "annotations": [...]}``; every annotation has
a ``segmentation`` in COCO's compressed RLE (``{"size": [h, w], "counts": "..."}``), a ``bbox`` (xywh), an
``area``, ``predicted_iou``, ``stability_score``, ``point_coords`` and ``crop_box``. sa1b-demo has exactly that
layout, with all images from ``skimage.data``:

* ``sa_1``: the ``coins()`` photograph itself (303x384) with its 24 coins, segmented by the watershed of
  :func:`evit_mm.sample_data.coins.segment_coins` (real objects, real masks);
* ``sa_2`` ...: the coins pasted onto the other scikit-image photographs as in coins-coco (random crop of a
  scene, 2-6 coins at random scales/rotations/positions; a coin's mask is what stays visible of it). Every other
  image is cropped to a 3:4 landscape, so sizes and aspect ratios vary as in SA-1B.

``point_coords`` is the visible mask's deepest interior point, ``predicted_iou`` and ``stability_score`` are 1
(ground truth). :func:`make_sa1b_sample` can also pack the pairs into a ``.tar`` shard and add deliberately
broken annotation files, for the tests of the loaders' error handling (see :data:`BAD_FILES`).
"""
from __future__ import annotations

import json
import os
import os.path as osp
import tarfile

import numpy as np

from .coins import TRAIN_BACKGROUNDS, _background, _compose, _reuse, _stamp, segment_coins

__all__ = ['make_sa1b_sample', 'BAD_FILES', 'encode_sa1b_annotation']

#: The broken files ``bad_files=True`` adds, by stem, and what is wrong with each (images are valid photographs).
BAD_FILES = {
    'sa_901': 'missing json (an image without its annotation file)',
    'sa_902': 'invalid RLE: the run lengths do not add up to height x width',
    'sa_903': 'every mask empty',
    'sa_904': 'not valid JSON (truncated file)',
    'sa_905': 'one invalid RLE (illegal characters) and one empty mask among valid masks: the image stays usable',
}


def encode_sa1b_annotation(mask: np.ndarray, ann_id: int) -> dict:
    """An SA-1B annotation record for a binary mask (compressed COCO RLE, xywh box, area, deepest point)."""
    from pycocotools import mask as mask_utils
    from scipy import ndimage as ndi
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    rle['counts'] = rle['counts'].decode('ascii')
    ys, xs = np.nonzero(mask)
    depth = ndi.distance_transform_edt(np.pad(mask, 1))[1:-1, 1:-1]
    py, px = np.unravel_index(int(np.argmax(depth)), depth.shape)
    h, w = mask.shape
    return {'id': int(ann_id), 'segmentation': rle, 'area': int(mask.sum()),
            'bbox': [int(xs.min()), int(ys.min()), int(xs.max() - xs.min() + 1), int(ys.max() - ys.min() + 1)],
            'predicted_iou': 1.0, 'stability_score': 1.0, 'point_coords': [[float(px) + 0.5, float(py) + 0.5]],
            'crop_box': [0, 0, int(w), int(h)]}


def _coins_photo():
    """``skimage.data.coins()`` as RGB and the 24 watershed masks placed at their positions in it."""
    from scipy import ndimage as ndi
    from skimage import data, filters, measure, segmentation
    image = data.coins()
    markers = np.zeros_like(image)
    markers[image < 30] = 1
    markers[image > 150] = 2
    foreground = ndi.binary_fill_holes(segmentation.watershed(filters.sobel(image), markers) == 2)
    labels = measure.label(foreground)
    masks = [labels == r.label for r in measure.regionprops(labels) if r.area >= 200]
    assert len(masks) == len(segment_coins())  # the same 24 coins as coins-coco
    return np.stack([image] * 3, axis=-1), masks


def _write_pair(folder: str, stem: str, image: np.ndarray, masks, image_id: int, first_ann_id: int) -> None:
    from PIL import Image
    h, w = image.shape[:2]
    Image.fromarray(image).save(osp.join(folder, stem + '.jpg'), quality=95)
    record = {'image': {'image_id': image_id, 'width': int(w), 'height': int(h), 'file_name': stem + '.jpg'},
              'annotations': [encode_sa1b_annotation(m, first_ann_id + i) for i, m in enumerate(masks)]}
    with open(osp.join(folder, stem + '.json'), 'w') as f:
        json.dump(record, f)


def _write_bad_files(folder: str, image: np.ndarray, good_masks) -> list:
    """The files of :data:`BAD_FILES`, using ``image`` (a real photograph) and its valid ``good_masks``."""
    from PIL import Image
    h, w = image.shape[:2]
    good = [encode_sa1b_annotation(m, 9000 + i) for i, m in enumerate(good_masks[:3])]

    def write(stem, annotations=None, text=None):
        Image.fromarray(image).save(osp.join(folder, stem + '.jpg'), quality=95)
        if text is None and annotations is None:
            return
        if text is None:
            text = json.dumps({'image': {'image_id': int(stem[3:]), 'width': w, 'height': h,
                                         'file_name': stem + '.jpg'}, 'annotations': annotations})
        with open(osp.join(folder, stem + '.json'), 'w') as f:
            f.write(text)

    write('sa_901')
    short = dict(good[0], segmentation=dict(good[0]['segmentation']))
    short['segmentation']['counts'] = short['segmentation']['counts'][:-3]  # drop the last runs
    write('sa_902', [short])
    empty = np.zeros((h, w), bool)
    from pycocotools import mask as mask_utils
    empty_rle = mask_utils.encode(np.asfortranarray(empty.astype(np.uint8)))
    empty_rle['counts'] = empty_rle['counts'].decode('ascii')
    empty_ann = dict(good[1], segmentation=empty_rle, area=0)
    write('sa_903', [empty_ann, dict(empty_ann, id=9100)])
    write('sa_904', text=json.dumps({'image': {'image_id': 904}, 'annotations': good})[:-40])
    garbage = dict(good[2], segmentation={'size': [h, w], 'counts': 'not an RLE \x7f~~'})
    write('sa_905', good[:2] + [garbage, empty_ann])
    return sorted(BAD_FILES)


def make_sa1b_sample(root: str, num_images: int = 6, image_size: int = 160, seed: int = 0, bad_files: bool = False,
                     tar: bool = False, overwrite: bool = False) -> dict:
    """Build sa1b-demo under ``root`` (see the module docstring). Deterministic for a seed.

    Args:
        num_images: valid images: the coins photograph plus ``num_images - 1`` composites.
        image_size: the composites' longest side (>= 64).
        bad_files: also write the broken files of :data:`BAD_FILES` (``sa_901`` ... ``sa_905``).
        tar: additionally pack every pair (and the bad files) into ``root/shards/sa_000000.tar`` (SA-1B's
            distribution format: a flat tar of ``.jpg`` / ``.json`` members).
        overwrite: rebuild even if ``root`` holds a dataset built with the same arguments.

    Returns ``{'root', 'images' (the folder of pairs), 'stems' (valid images), 'bad' (bad stems), 'tar'
    (path or None)}``.
    """
    if num_images < 1:
        raise ValueError(f'num_images must be >= 1, got {num_images}')
    if image_size < 64:
        raise ValueError(f'image_size must be >= 64, got {image_size}')
    params = dict(kind='sa1b', num_images=num_images, image_size=int(image_size), seed=seed,
                  bad_files=bool(bad_files), tar=bool(tar))
    folder = osp.join(root, 'images')
    tar_path = osp.join(root, 'shards', 'sa_000000.tar') if tar else None
    stems = [f'sa_{i}' for i in range(1, num_images + 1)]
    out = {'root': root, 'images': folder, 'stems': stems, 'bad': sorted(BAD_FILES) if bad_files else [],
           'tar': tar_path}
    if _reuse(root, params, overwrite):
        return out
    os.makedirs(folder, exist_ok=True)
    rng = np.random.default_rng(seed)
    coins = segment_coins()
    photo, photo_masks = _coins_photo()
    _write_pair(folder, stems[0], photo, photo_masks, 1, 1)
    ann_id = 1 + len(photo_masks)
    min_area = max(16, (image_size // 40) ** 2)
    for i, stem in enumerate(stems[1:], start=1):
        scene = _background(TRAIN_BACKGROUNDS[(i - 1) % len(TRAIN_BACKGROUNDS)])
        image, masks = _compose(rng, scene, coins, image_size, max_coins=6)
        if i % 2 == 0:  # a 3:4 landscape crop
            top = int(rng.integers(0, image_size // 4 + 1))
            image = image[top:top + image_size * 3 // 4]
            masks = [m[top:top + image_size * 3 // 4] for m in masks]
        masks = [m for m in masks if m.sum() >= min_area]
        if not masks:  # never happens with the default seed; keep the dataset valid anyway
            masks = [photo_masks[0][:image.shape[0], :image.shape[1]]]
        _write_pair(folder, stem, np.ascontiguousarray(image), masks, i + 1, ann_id)
        ann_id += len(masks)
    if bad_files:
        _write_bad_files(folder, photo, photo_masks)
    if tar:
        os.makedirs(osp.dirname(tar_path), exist_ok=True)
        with tarfile.open(tar_path, 'w') as t:
            for name in sorted(os.listdir(folder)):
                t.add(osp.join(folder, name), arcname=name)
    _stamp(root, params)
    return out
