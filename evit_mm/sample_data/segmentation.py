"""Semantic-segmentation datasets in Cityscapes' and ADE20K's on-disk layouts, built from real photographs.

Everything comes from images shipped inside scikit-image; the labels are derived programmatically:

1. **Scene ("stuff").** A random crop of a ``skimage.data`` photograph (the coins-coco backgrounds: training
   scenes ``astronaut``, ``coffee``, ``rocket``, ``stereo_motorcycle``, ``brick``, ``grass``, ``camera``,
   ``moon``; validation scenes ``chelsea``, ``gravel``, ``hubble_deep_field``, ``retina``), resized to the
   image size, is over-segmented into SLIC superpixels (``skimage.segmentation.slic``, about one per
   ``24 x 24`` px, compactness 10). Each superpixel gets one category from its mean colour in HSV:

   ========================  =====================================  ==================  =================
   category                  rule (mean colour of the superpixel)    Cityscapes trainId  ADE20K label
   ========================  =====================================  ==================  =================
   ``road``                  saturation < 0.12, value < 0.4          0 road              7 road
   ``building``              saturation < 0.12, value >= 0.4         2 building          2 building
   *void*                    0.12 <= saturation < 0.2 (ambiguous)    255 (ignored)       0 (ignored)
   ``vegetation``            saturation >= 0.2, hue 65-170 deg       8 vegetation        5 tree
   ``sky``                   saturation >= 0.2, hue 170-260 deg      10 sky              3 sky
   ``terrain``               saturation >= 0.2, other hues (warm)    9 terrain           14 earth
   ``coin`` (step 2)         pasted coin pixels                      7 traffic sign      143 plate
   ========================  =====================================  ==================  =================

2. **Objects ("things").** The 24 coins of ``skimage.data.coins()``, segmented by coins-coco's watershed
   (:func:`evit_mm.sample_data.coins.segment_coins`; every 4th coin is a validation coin), are pasted at random
   scales, 90-degree rotations, flips and positions (overlapping earlier coins by a box IoU below 0.1). Their
   visible pixels are ``coin``; a 1-px ring around them is *void*, like the unlabelled gaps between polygons in
   Cityscapes' ``gtFine``.

The class names are those of the real datasets because the formats fix them; the categories are colour/shape
proxies, consistent between images, learnable, and shared by both datasets. Validation images show scenes and
coins never used for training.

Layouts (what mmseg's ``CityscapesDataset`` / ``ADE20KDataset`` read unchanged):

* Cityscapes: ``leftImg8bit/{train,val}/<city>/<city>_<seq>_000019_leftImg8bit.png`` and
  ``gtFine/{train,val}/<city>/<city>_<seq>_000019_gtFine_labelTrainIds.png`` (19 train ids + 255), plus
  ``..._gtFine_labelIds.png`` (the 34 Cityscapes label ids the reference evaluator reads; void -> 0) and
  ``train.txt`` / ``val.txt`` as mmseg's converter writes them. The "city" is the background scene's name.
  Images are ``H x 2H`` like Cityscapes' 1024 x 2048.
* ADE20K: ``images/{training,validation}/ADE_{train,val}_%08d.jpg`` and
  ``annotations/{training,validation}/ADE_{train,val}_%08d.png`` (0 = other, 1..150 = classes; mmseg's
  ``reduce_zero_label`` maps 0 to 255). Image sizes vary (short side within 0.8-1.25 of ``image_size``, aspect
  ratios 1:1, 4:3, 3:4, 3:2, 2:3), as in ADE20K.
"""
from __future__ import annotations

import os
import os.path as osp

import numpy as np

from .coins import (TRAIN_BACKGROUNDS, VAL_BACKGROUNDS, _background, _paste_coins, _resize, _reuse, _split_coins,
                    _stamp)

__all__ = ['SEG_CATEGORIES', 'CITYSCAPES_IDS', 'ADE20K_IDS', 'CITYSCAPES_LABEL_IDS', 'make_cityscapes_sample',
           'make_ade20k_sample', 'compose_scene', 'categorize_superpixels']

#: The proxy categories, in the order of the category map :func:`compose_scene` returns (-1 is void).
SEG_CATEGORIES = ('road', 'building', 'vegetation', 'sky', 'terrain', 'coin')
#: category -> Cityscapes trainId (void -> 255)
CITYSCAPES_IDS = {'road': 0, 'building': 2, 'vegetation': 8, 'sky': 10, 'terrain': 9, 'coin': 7}
#: category -> ADE20K annotation value (1-based; void -> 0, which reduce_zero_label ignores)
ADE20K_IDS = {'road': 7, 'building': 2, 'vegetation': 5, 'sky': 3, 'terrain': 14, 'coin': 143}
#: Cityscapes trainId -> labelId (cityscapesscripts' label table); 255 -> 0 ('unlabeled')
CITYSCAPES_LABEL_IDS = (7, 8, 11, 12, 13, 17, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 31, 32, 33)

_NEUTRAL_SAT, _COLOR_SAT, _DARK = 0.12, 0.2, 0.4
_ADE_ASPECTS = (1.0, 4 / 3, 3 / 4, 3 / 2, 2 / 3)


def categorize_superpixels(image: np.ndarray, segments: np.ndarray) -> np.ndarray:
    """Category map (indices into :data:`SEG_CATEGORIES`, -1 = void) from a superpixel map and its RGB image,
    by the mean-colour rules in the module docstring."""
    from skimage.color import rgb2hsv
    n = int(segments.max()) + 1
    counts = np.bincount(segments.ravel(), minlength=n).astype(np.float64)
    rgb = image.reshape(-1, 3).astype(np.float64) / 255.0
    mean = np.stack([np.bincount(segments.ravel(), weights=rgb[:, c], minlength=n) for c in range(3)], axis=1)
    mean /= np.maximum(counts, 1)[:, None]
    hsv = rgb2hsv(mean[None])[0]
    hue, sat, val = hsv[:, 0] * 360, hsv[:, 1], hsv[:, 2]
    cat = np.full(n, -1, np.int64)
    neutral = sat < _NEUTRAL_SAT
    cat[neutral & (val < _DARK)] = SEG_CATEGORIES.index('road')
    cat[neutral & (val >= _DARK)] = SEG_CATEGORIES.index('building')
    colored = sat >= _COLOR_SAT
    green = (hue >= 65) & (hue < 170)
    blue = (hue >= 170) & (hue < 260)
    cat[colored & green] = SEG_CATEGORIES.index('vegetation')
    cat[colored & blue] = SEG_CATEGORIES.index('sky')
    cat[colored & ~green & ~blue] = SEG_CATEGORIES.index('terrain')
    return cat[segments]


def compose_scene(rng: np.random.Generator, background: np.ndarray, coins, size: tuple[int, int],
                  max_coins: int = 5):
    """One image and its category map: a random crop of ``background`` resized to ``size = (h, w)``, its
    superpixels categorised, coins pasted. Returns ``(image uint8 HxWx3, categories int64 HxW, coin_masks)``."""
    from scipy import ndimage as ndi
    from skimage.segmentation import slic

    h, w = size
    bh, bw = background.shape[:2]
    cw_max = min(bw, bh * w / h)
    cw = rng.uniform(0.5, 1.0) * cw_max
    ch = cw * h / w
    cw, ch = max(8, int(round(cw))), max(8, int(round(ch)))
    y0, x0 = int(rng.integers(0, bh - ch + 1)), int(rng.integers(0, bw - cw + 1))
    canvas = _resize(background[y0:y0 + ch, x0:x0 + cw], (h, w), order=1).copy()
    segments = slic(canvas, n_segments=max(4, h * w // (24 * 24)), compactness=10, start_label=0,
                    channel_axis=-1)
    categories = categorize_superpixels(canvas, segments)

    masks = _paste_coins(rng, canvas, coins, max_coins)
    coin = np.zeros((h, w), bool)
    for mask in masks:
        coin |= mask
    categories[coin] = SEG_CATEGORIES.index('coin')
    categories[ndi.binary_dilation(coin) & ~coin] = -1  # unlabelled ring around objects
    return canvas, categories, masks


def _to_ids(categories: np.ndarray, table: dict, void: int) -> np.ndarray:
    lut = np.array([table[c] for c in SEG_CATEGORIES] + [void], np.uint8)
    return lut[np.where(categories < 0, len(SEG_CATEGORIES), categories)]


def _check_counts(num_train, num_val):
    if num_train < 1 or num_val < 1:
        raise ValueError('num_train and num_val must be >= 1')


def _layout(root: str, num_classes: int, image_dir: str, ann_dir: str, folders) -> dict:
    """The paths a builder returns: ``root``, ``num_classes`` and ``{train,val}_img`` / ``{train,val}_ann``
    (``root/<image_dir>/<folder>`` and ``root/<ann_dir>/<folder>``, one folder per split)."""
    paths = {'root': root, 'num_classes': num_classes}
    for split, folder in zip(('train', 'val'), folders):
        paths[f'{split}_img'] = osp.join(root, image_dir, folder)
        paths[f'{split}_ann'] = osp.join(root, ann_dir, folder)
    return paths


def _build(root: str, params: dict, paths: dict, overwrite: bool, write_split) -> dict:
    """Write both splits of a dataset under ``root`` and stamp it, unless it was already built with ``params``
    (which hold ``num_train``, ``num_val`` and ``seed``). ``write_split(rng, split, count, backgrounds, coins)``
    writes one split: ``count`` images of the scenes ``backgrounds`` (name -> photograph, in the split's scene
    order) with ``coins`` pasted, drawing from the one generator ``rng`` of both splits. Returns ``paths``."""
    if _reuse(root, params, overwrite):
        return paths
    train_coins, val_coins = _split_coins()
    rng = np.random.default_rng(params['seed'])
    for split, count, scenes, coins in (('train', params['num_train'], TRAIN_BACKGROUNDS, train_coins),
                                        ('val', params['num_val'], VAL_BACKGROUNDS, val_coins)):
        write_split(rng, split, count, {name: _background(name) for name in scenes}, coins)
    _stamp(root, params)
    return paths


def make_cityscapes_sample(root: str, num_train: int = 8, num_val: int = 4, image_size=(128, 256), seed: int = 0,
                           max_coins: int = 5, overwrite: bool = False) -> dict:
    """Build a tiny Cityscapes (``leftImg8bit/`` + ``gtFine/``, see the module docstring) under ``root``.

    ``image_size`` is ``(height, width)`` (Cityscapes is 1024 x 2048). Deterministic for a seed; an existing
    dataset built with the same arguments is reused unless ``overwrite``. Returns the paths: ``root``,
    ``{train,val}_img`` / ``{train,val}_ann`` (split folders) and ``num_classes`` (19).
    """
    _check_counts(num_train, num_val)
    h, w = (int(image_size), 2 * int(image_size)) if np.isscalar(image_size) else map(int, image_size)
    if min(h, w) < 64:
        raise ValueError(f'image_size must be at least 64 px on each side, got {(h, w)}')
    params = dict(kind='cityscapes', num_train=num_train, num_val=num_val, image_size=[h, w], seed=seed,
                  max_coins=max_coins)
    paths = _layout(root, 19, 'leftImg8bit', 'gtFine', ('train', 'val'))

    def write_split(rng, split, count, backgrounds, coins):
        _write_cityscapes_split(rng, paths, split, count, backgrounds, coins, (h, w), max_coins)
    return _build(root, params, paths, overwrite, write_split)


def _write_cityscapes_split(rng, paths: dict, split: str, count: int, backgrounds: dict, coins, size, max_coins):
    """One split of :func:`make_cityscapes_sample`: images, both label maps and ``<split>.txt``."""
    from PIL import Image
    label_ids = np.zeros(256, np.uint8)
    label_ids[:len(CITYSCAPES_LABEL_IDS)] = CITYSCAPES_LABEL_IDS
    scenes = list(backgrounds)
    names = []
    for i in range(count):
        city = scenes[i % len(scenes)]
        image, categories, _ = compose_scene(rng, backgrounds[city], coins, size, max_coins)
        train_ids = _to_ids(categories, CITYSCAPES_IDS, 255)
        stem = f'{city}_{i // len(scenes):06d}_000019'
        img_dir = osp.join(paths[f'{split}_img'], city)
        ann_dir = osp.join(paths[f'{split}_ann'], city)
        os.makedirs(img_dir, exist_ok=True)
        os.makedirs(ann_dir, exist_ok=True)
        Image.fromarray(image).save(osp.join(img_dir, f'{stem}_leftImg8bit.png'))
        Image.fromarray(train_ids).save(osp.join(ann_dir, f'{stem}_gtFine_labelTrainIds.png'))
        Image.fromarray(label_ids[train_ids]).save(osp.join(ann_dir, f'{stem}_gtFine_labelIds.png'))
        names.append(f'{city}/{stem}')
    with open(osp.join(paths['root'], f'{split}.txt'), 'w') as f:
        f.writelines(n + '\n' for n in sorted(names))


def make_ade20k_sample(root: str, num_train: int = 8, num_val: int = 4, image_size: int = 128, seed: int = 0,
                       max_coins: int = 5, overwrite: bool = False) -> dict:
    """Build a tiny ADE20K (``images/`` + ``annotations/``, see the module docstring) under ``root`` (the
    counterpart of ``ADEChallengeData2016/``).

    ``image_size`` is the typical short side; each image's short side is drawn from 0.8-1.25x of it and its
    aspect ratio from 1:1, 4:3, 3:4, 3:2, 2:3. Deterministic for a seed; reused unless ``overwrite``. Returns
    ``root``, ``{train,val}_img`` / ``{train,val}_ann`` and ``num_classes`` (150).
    """
    _check_counts(num_train, num_val)
    if image_size < 64:
        raise ValueError(f'image_size must be >= 64, got {image_size}')
    params = dict(kind='ade20k', num_train=num_train, num_val=num_val, image_size=int(image_size), seed=seed,
                  max_coins=max_coins)
    paths = _layout(root, 150, 'images', 'annotations', ('training', 'validation'))

    def write_split(rng, split, count, backgrounds, coins):
        _write_ade20k_split(rng, paths, split, count, backgrounds, coins, image_size, max_coins)
    return _build(root, params, paths, overwrite, write_split)


def _write_ade20k_split(rng, paths: dict, split: str, count: int, backgrounds: dict, coins, image_size: int,
                        max_coins: int):
    """One split of :func:`make_ade20k_sample`: ``ADE_<split>_%08d.jpg`` images and their ``.png`` labels."""
    from PIL import Image
    scenes = list(backgrounds)
    os.makedirs(paths[f'{split}_img'], exist_ok=True)
    os.makedirs(paths[f'{split}_ann'], exist_ok=True)
    for i in range(count):
        short = int(round(image_size * rng.uniform(0.8, 1.25)))
        aspect = _ADE_ASPECTS[int(rng.integers(len(_ADE_ASPECTS)))]
        size = (short, int(round(short * aspect))) if aspect >= 1 else (int(round(short / aspect)), short)
        image, categories, _ = compose_scene(rng, backgrounds[scenes[i % len(scenes)]], coins, size, max_coins)
        labels = _to_ids(categories, ADE20K_IDS, 0)
        stem = f'ADE_{split}_{i + 1:08d}'
        Image.fromarray(image).save(osp.join(paths[f'{split}_img'], stem + '.jpg'), quality=95)
        Image.fromarray(labels).save(osp.join(paths[f'{split}_ann'], stem + '.png'))
