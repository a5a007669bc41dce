"""A COCO-format instance dataset of real coins on real photographs ("coins-coco").

Derivation, all from images shipped inside scikit-image:

1. ``skimage.data.coins()`` (a 303x384 photograph of 24 Greek coins, public domain) is segmented with the
   classic marker-based watershed on its Sobel elevation map (background markers < 30, coin markers > 150),
   holes filled and specks removed. This gives the 24 coins, each a binary mask and a crop of the photograph.
2. The coins are split by index into 18 training and 6 validation coins; the background photographs are split
   into a training and a validation set too, so that the validation images show coins and scenes never seen
   in training.
3. Each image is a random crop of a background photograph, resized to ``image_size``, with 2-6 coins pasted at
   random scales (0.6x-1.4x), 90-degree rotations/flips and positions, with at most slight overlaps. The
   ground truth of a coin is what stays visible of its mask after later coins are pasted: its box is the
   visible mask's extent, its polygon the visible mask's outline, its area the visible pixel count.

The result has COCO's layout: ``train2017/``, ``val2017/``, ``annotations/instances_{train,val}2017.json``,
with one category, ``coin``. It loads with pycocotools and mmdet's ``CocoDataset`` unchanged.
"""
from __future__ import annotations

import json
import os
import os.path as osp
from functools import lru_cache

import numpy as np

__all__ = ['COIN_CATEGORY', 'segment_coins', 'make_coins_coco', 'coins_coco_paths', 'coco_cfg_options']

COIN_CATEGORY = {'id': 1, 'name': 'coin', 'supercategory': 'object'}

#: skimage.data photographs used as backgrounds (all ship inside the scikit-image wheel).
TRAIN_BACKGROUNDS = ('astronaut', 'coffee', 'rocket', 'stereo_motorcycle', 'brick', 'grass', 'camera', 'moon')
VAL_BACKGROUNDS = ('chelsea', 'gravel', 'hubble_deep_field', 'retina')


def _reuse(root: str, params: dict, overwrite: bool, name: str = 'evit_mm_sample.json') -> bool:
    """Whether ``root`` already holds a sample built with ``params`` (its stamp file ``name`` says so) and may be
    reused."""
    stamp = osp.join(root, name)
    if not overwrite and osp.isfile(stamp):
        with open(stamp) as f:
            return json.load(f) == params
    return False


def _stamp(root: str, params: dict, name: str = 'evit_mm_sample.json') -> None:
    """Record that ``root`` holds a complete sample built with ``params`` (what :func:`_reuse` reads)."""
    with open(osp.join(root, name), 'w') as f:
        json.dump(params, f)


def _split_coins():
    """The segmented coins split for training (3 of every 4) and validation (every 4th)."""
    coins = segment_coins()
    return [c for i, c in enumerate(coins) if i % 4 != 3], [c for i, c in enumerate(coins) if i % 4 == 3]


@lru_cache(maxsize=1)
def segment_coins():
    """Segment ``skimage.data.coins()``. Returns a list of ``(crop, mask)`` pairs (uint8 HxW, bool HxW),
    ordered by position (row-major), one per coin."""
    from scipy import ndimage as ndi
    from skimage import data, filters, measure, segmentation

    image = data.coins()
    markers = np.zeros_like(image)
    markers[image < 30] = 1
    markers[image > 150] = 2
    foreground = segmentation.watershed(filters.sobel(image), markers) == 2
    foreground = ndi.binary_fill_holes(foreground)
    labels = measure.label(foreground)
    coins = []
    for region in measure.regionprops(labels):
        if region.area < 200:  # specks and noise
            continue
        r0, c0, r1, c1 = region.bbox
        coins.append(((r0, c0), image[r0:r1, c0:c1].copy(), region.image.copy()))
    coins.sort(key=lambda c: (c[0][0] // 60, c[0][1]))  # rows of coins are ~75 px apart
    return [(crop, mask) for _, crop, mask in coins]


def _background(name: str) -> np.ndarray:
    from skimage import data
    image = getattr(data, name)()
    if isinstance(image, tuple):  # stereo_motorcycle: (left, right, disparity); take the left view
        image = image[0]
    if image.ndim == 2:
        image = np.stack([image] * 3, axis=-1)
    return np.ascontiguousarray(image[..., :3])


def _resize(array: np.ndarray, shape, order: int) -> np.ndarray:
    from skimage.transform import resize
    out = resize(array, shape, order=order, preserve_range=True, anti_aliasing=order > 0)
    return out.astype(array.dtype) if array.dtype != bool else out > 0.5


def _polygons(mask: np.ndarray) -> list[list[float]]:
    """Outline(s) of a binary mask as COCO polygons ``[x0, y0, x1, y1, ...]`` in pixel-corner coordinates."""
    from skimage import measure
    padded = np.pad(mask, 1).astype(np.uint8)
    polys = []
    for contour in measure.find_contours(padded, 0.5):
        contour = measure.approximate_polygon(contour - 1, tolerance=0.75)
        if len(contour) < 3:
            continue
        xy = np.flip(contour, axis=1) + 0.5  # (row, col) of pixel centres -> (x, y)
        polys.append([round(float(v), 2) for v in xy.reshape(-1)])
    return polys


def _compose(rng, background: np.ndarray, coins, size: int, max_coins: int):
    """One image: a random crop of ``background`` with coins pasted. Returns (image, [visible masks])."""
    h, w = background.shape[:2]
    side = int(rng.uniform(0.5, 1.0) * min(h, w))
    y0, x0 = rng.integers(0, h - side + 1), rng.integers(0, w - side + 1)
    canvas = _resize(background[y0:y0 + side, x0:x0 + side], (size, size), order=1).copy()
    return canvas, _paste_coins(rng, canvas, coins, max_coins)


def _paste_coins(rng, canvas: np.ndarray, coins, max_coins: int) -> list[np.ndarray]:
    """Paste 2 to ``max_coins`` of ``coins`` onto ``canvas`` (HxWx3, in place) at random scales (0.6x-1.4x of
    ``min(H, W) / 320``), 90-degree rotations, flips and positions, overlapping earlier coins by a box IoU below
    0.1. Returns the visible mask of each pasted coin, in pasting order (later coins hide earlier ones)."""
    h, w = canvas.shape[:2]
    owner = np.zeros((h, w), np.int32)  # which pasted coin each pixel shows (0: background)
    boxes = []
    for _ in range(int(rng.integers(2, max_coins + 1))):
        crop, mask = _transform_coin(rng, *coins[int(rng.integers(len(coins)))], min(h, w))
        ch, cw = crop.shape
        if ch >= h or cw >= w:
            continue
        for _attempt in range(20):  # place with at most a slight overlap with earlier coins
            top, left = int(rng.integers(0, h - ch)), int(rng.integers(0, w - cw))
            box = (left, top, left + cw, top + ch)
            if all(_iou(box, b) < 0.1 for b in boxes):
                break
        else:
            continue
        boxes.append(box)
        region = canvas[top:top + ch, left:left + cw]
        region[mask] = crop[mask][:, None]
        owner[top:top + ch, left:left + cw][mask] = len(boxes)
    return [owner == i for i in range(1, len(boxes) + 1)]


def _transform_coin(rng, crop: np.ndarray, mask: np.ndarray, short_side: int):
    """A coin's crop and mask for a canvas whose short side is ``short_side``: resized by a random 0.6x-1.4x of
    ``short_side / 320`` (at least 8 px a side), rotated by a random multiple of 90 degrees, flipped with
    probability 0.5."""
    scale = rng.uniform(0.6, 1.4) * short_side / 320
    ch, cw = max(8, round(crop.shape[0] * scale)), max(8, round(crop.shape[1] * scale))
    crop, mask = _resize(crop, (ch, cw), order=1), _resize(mask, (ch, cw), order=0)
    k = int(rng.integers(4))
    crop, mask = np.rot90(crop, k), np.rot90(mask, k)
    if rng.random() < 0.5:
        crop, mask = crop[:, ::-1], mask[:, ::-1]
    return crop, mask


def _iou(a, b) -> float:
    iw = max(0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union else 0.0


def _write_split(root, split, num_images, backgrounds, coins, rng, size, max_coins, min_area):
    from PIL import Image
    image_dir = osp.join(root, f'{split}2017')
    os.makedirs(image_dir, exist_ok=True)
    images, annotations = [], []
    backgrounds = [_background(name) for name in backgrounds]
    for image_id in range(1, num_images + 1):
        image, masks = _compose(rng, backgrounds[(image_id - 1) % len(backgrounds)], coins, size, max_coins)
        file_name = f'{image_id:012d}.jpg'
        Image.fromarray(image).save(osp.join(image_dir, file_name), quality=95)
        images.append({'id': image_id, 'file_name': file_name, 'width': size, 'height': size})
        for mask in masks:
            area = int(mask.sum())
            if area < min_area:  # (almost) hidden under later coins
                continue
            ys, xs = np.nonzero(mask)
            x0, y0 = int(xs.min()), int(ys.min())
            annotations.append({
                'id': len(annotations) + 1, 'image_id': image_id, 'category_id': COIN_CATEGORY['id'],
                'bbox': [x0, y0, int(xs.max()) + 1 - x0, int(ys.max()) + 1 - y0], 'area': area,
                'segmentation': _polygons(mask), 'iscrowd': 0})
    coco = {
        'info': {'description': 'evit_mm coins-coco: coins of skimage.data.coins() pasted on skimage.data '
                                'photographs; annotations derived from the watershed segmentation',
                 'version': '1.0', 'contributor': 'evit_mm.sample_data'},
        'licenses': [{'id': 1, 'name': 'public domain / CC0 (scikit-image sample data)', 'url': ''}],
        'images': images, 'annotations': annotations, 'categories': [COIN_CATEGORY]}
    ann_file = osp.join(root, 'annotations', f'instances_{split}2017.json')
    os.makedirs(osp.dirname(ann_file), exist_ok=True)
    with open(ann_file, 'w') as f:
        json.dump(coco, f)
    return ann_file


def coins_coco_paths(root: str) -> dict:
    """The files of a coins-coco dataset at ``root`` (whether or not they exist yet)."""
    paths = {'root': root,
             'train_ann': osp.join(root, 'annotations', 'instances_train2017.json'),
             'val_ann': osp.join(root, 'annotations', 'instances_val2017.json'),
             'train_img': osp.join(root, 'train2017'), 'val_img': osp.join(root, 'val2017')}
    return paths


def coco_cfg_options(paths: dict) -> dict:
    """Overrides that point a COCO-format mm config (its dataloaders and CocoMetric evaluators) at the dataset
    of ``paths`` (as returned by :func:`make_coins_coco`): for ``Config.merge_from_dict`` or ``--cfg-options``."""
    root = osp.join(paths['root'], '')
    options = {f'{loader}.dataset.data_root': root for loader in ('train_dataloader', 'val_dataloader',
                                                                    'test_dataloader')}
    options.update({'val_evaluator.ann_file': paths['val_ann'], 'test_evaluator.ann_file': paths['val_ann']})
    return options


def make_coins_coco(root: str, num_train: int = 48, num_val: int = 12, image_size: int = 320, seed: int = 0,
                    max_coins: int = 6, overwrite: bool = False) -> dict:
    """Build coins-coco under ``root`` (see the module docstring). Deterministic for a given seed.

    Returns ``{'root', 'train_ann', 'val_ann', 'train_img', 'val_img'}``. An existing dataset built with the
    same arguments is reused unless ``overwrite``.
    """
    if num_train < 1 or num_val < 1:
        raise ValueError('num_train and num_val must be >= 1')
    if image_size < 64:
        raise ValueError(f'image_size must be >= 64, got {image_size}')
    params = dict(num_train=num_train, num_val=num_val, image_size=image_size, seed=seed, max_coins=max_coins)
    paths = coins_coco_paths(root)
    if _reuse(root, params, overwrite, name='coins_coco.json'):
        return paths
    train_coins, val_coins = _split_coins()
    rng = np.random.default_rng(seed)
    min_area = max(16, (image_size // 40) ** 2)
    _write_split(root, 'train', num_train, TRAIN_BACKGROUNDS, train_coins, rng, image_size, max_coins, min_area)
    _write_split(root, 'val', num_val, VAL_BACKGROUNDS, val_coins, rng, image_size, max_coins, min_area)
    _stamp(root, params, name='coins_coco.json')
    return paths
