"""Tiny super-resolution datasets in mmagic's on-disk layouts, built from real photographs (``skimage.data``).

Every high-resolution (HR) image is a crop of a photograph, *downscaled* by 2 (so that it is sharp and free of
the photographs' JPEG/sensor noise at pixel level, like the curated DIV2K/FFHQ images), with sides that are
multiples of 12 (the "mod12" of SR test sets: divisible by 2, 3 and 4). Low-resolution (LR) images are made
from the HR images with mmagic's ``MATLABLikeResize`` (MATLAB ``imresize`` bicubic with anti-aliasing), the
resize that mmagic's own converter (``tools/dataset_converters/glean/preprocess_ffhq_celebahq_dataset.py``)
uses and that produced the published DIV2K / Set5 / Set14 / BSD100 LR images (in MATLAB).

Photographs are split: :data:`TRAIN_PHOTOS` feed DIV2K and the FFHQ training part, :data:`HELD_OUT_PHOTOS`
feed Set5 / Set14 / BSD100 and the FFHQ validation part, so validation never sees a training photograph.

Layouts (what mmagic's configs and converters expect; see docs/super_resolution.md):

* DIV2K (:func:`make_div2k_sample`)::

      DIV2K/DIV2K_train_HR/0001.png ...                  (+ 0801.png ..., the "DIV2K100" images)
      DIV2K/DIV2K_train_LR_bicubic/X2/0001x2.png ...      (X3, X4 likewise)
      DIV2K/DIV2K_train_HR_sub/0001_s001.png ...          (sub-images, as mmagic's div2k converter writes them)
      DIV2K/DIV2K_train_LR_bicubic/X2_sub/0001_s001.png ...
      DIV2K/meta_info_DIV2K800sub_GT.txt                  (names < 0801, "name (h, w, 3)")
      DIV2K/meta_info_DIV2K100sub_GT.txt                  (names >= 0801)

* Set5 / Set14 / BSD100 (:func:`make_sr_testset`): ``<Set>/GTmod12/<name>.png`` and ``<Set>/LRbicx{s}/<name>.png``.
* FFHQ (:func:`make_ffhq_sample`): ``ffhq/images/00000.png`` (GT), ``ffhq/BIx2_down/00000.png`` (LR),
  ``ffhq/meta_info_FFHQ_train3000_GT.txt`` (names 00000...) and ``ffhq/meta_info_FFHQ_val500_GT.txt``
  (names 60000..., FFHQ's conventional validation range 60000-69999).

The builders' defaults are tiny (for tests); :func:`make_sr_config_data` builds all of them at the sizes the
shipped SR configs crop (``configs/efficientvit_sr/``), so those configs run on it unchanged.

mmagic is imported lazily (only its resize); building a dataset needs it, importing this module does not.
"""
from __future__ import annotations

import os
import os.path as osp
from typing import Sequence

import numpy as np

from .coins import _reuse, _stamp

__all__ = ['TRAIN_PHOTOS', 'HELD_OUT_PHOTOS', 'load_photo', 'matlab_resize', 'hr_crops', 'make_div2k_sample',
           'make_sr_testset', 'make_ffhq_sample', 'make_sr_config_data', 'extract_subimages', 'downsample_folder']

#: photographs for training sets (DIV2K, FFHQ train)
TRAIN_PHOTOS = ('astronaut', 'rocket', 'stereo_motorcycle', 'immunohistochemistry', 'hubble_deep_field', 'brick',
                'gravel')
#: photographs for validation/test sets (Set5, Set14, BSD100, FFHQ val) and held-out evaluation
HELD_OUT_PHOTOS = ('chelsea', 'coffee', 'camera', 'clock')


def load_photo(name: str) -> np.ndarray:
    """A ``skimage.data`` photograph as an ``HxWx3`` uint8 RGB array (grey photographs are repeated to 3
    channels; ``stereo_motorcycle`` is its left view)."""
    from skimage import data
    if not hasattr(data, name):
        raise ValueError(f'skimage.data has no photograph {name!r}')
    img = getattr(data, name)()
    if isinstance(img, tuple):
        img = img[0]
    img = np.asarray(img)
    if img.dtype != np.uint8:
        raise ValueError(f'skimage.data.{name} is not an 8-bit photograph (dtype {img.dtype})')
    if img.ndim == 2:
        img = np.repeat(img[:, :, None], 3, axis=2)
    return np.ascontiguousarray(img[:, :, :3])


def matlab_resize(img: np.ndarray, scale: float | None = None, output_shape: Sequence[int] | None = None
                  ) -> np.ndarray:
    """Resize a uint8 ``HxWxC`` image with mmagic's ``MATLABLikeResize`` (bicubic, anti-aliased when shrinking),
    rounding back to uint8 exactly like mmagic's FFHQ converter does."""
    from mmagic.datasets.transforms import MATLABLikeResize
    resize = MATLABLikeResize(keys=['img'], scale=scale, output_shape=output_shape)
    out = resize({'img': img.astype(np.float64) / 255.0})['img']
    return np.around(np.clip(out, 0.0, 1.0) * 255.0).astype(np.uint8)


def hr_crops(name: str, size: Sequence[int], num: int, rng: np.random.Generator, downscale: int = 2
             ) -> list[np.ndarray]:
    """``num`` HR images of ``size`` (h, w): random crops of ``downscale * size`` from photograph ``name``,
    shrunk by ``downscale`` with :func:`matlab_resize`. Crops that do not fit are taken at the largest scale
    that does."""
    photo = load_photo(name)
    h, w = size
    ph, pw = photo.shape[:2]
    f = min(downscale, ph / h, pw / w)
    if f < 1:
        raise ValueError(f'photograph {name!r} ({ph}x{pw}) is smaller than the HR size {h}x{w}')
    ch, cw = int(round(h * f)), int(round(w * f))
    out = []
    for _ in range(num):
        y = int(rng.integers(0, ph - ch + 1))
        x = int(rng.integers(0, pw - cw + 1))
        crop = photo[y:y + ch, x:x + cw]
        out.append(crop if (ch, cw) == (h, w) else matlab_resize(crop, output_shape=(h, w)))
    return out


def _imwrite(path: str, rgb: np.ndarray) -> None:
    import cv2
    os.makedirs(osp.dirname(path), exist_ok=True)
    if not cv2.imwrite(path, np.ascontiguousarray(rgb[:, :, ::-1])):
        raise OSError(f'could not write {path}')


def _imread(path: str) -> np.ndarray:
    import cv2
    img = cv2.imread(path, cv2.IMREAD_COLOR)
    if img is None:
        raise OSError(f'could not read image {path}')
    return img[:, :, ::-1]


def downsample_folder(gt_dir: str, lr_dir: str, scale: int, suffix: str = '') -> list[str]:
    """Write a bicubic (MATLAB-like) ``1/scale`` copy of every PNG in ``gt_dir`` into ``lr_dir`` (``name`` ->
    ``name{suffix}.png``). This is how LR folders such as ``BIx2_down`` or ``LRbicx2`` are made; GT sides
    should be multiples of ``scale``. Returns the written names."""
    names = sorted(f for f in os.listdir(gt_dir) if f.lower().endswith('.png'))
    if not names:
        raise FileNotFoundError(f'no .png images in {gt_dir}')
    written = []
    for name in names:
        gt = _imread(osp.join(gt_dir, name))
        if gt.shape[0] % scale or gt.shape[1] % scale:
            raise ValueError(f'{osp.join(gt_dir, name)}: size {gt.shape[:2]} is not a multiple of scale {scale}')
        out = osp.splitext(name)[0] + suffix + '.png'
        _imwrite(osp.join(lr_dir, out), matlab_resize(gt, scale=1.0 / scale))
        written.append(out)
    return written


def extract_subimages(src_dir: str, dst_dir: str, crop_size: int, step: int, thresh_size: int = 0) -> list[str]:
    """Cut every image of ``src_dir`` into overlapping ``crop_size`` squares, named and placed as mmagic's
    ``tools/dataset_converters/div2k/preprocess_div2k_dataset.py`` does (``0001x2.png`` ->
    ``0001_s001.png``, ...; row-major; a last row/column flush with the border if more than ``thresh_size``
    pixels would be left over). Returns the written names."""
    import re
    written = []
    for fname in sorted(os.listdir(src_dir)):
        stem, ext = osp.splitext(fname)
        stem = re.sub('x[2348]', '', stem)
        img = _imread(osp.join(src_dir, fname))
        h, w = img.shape[:2]
        if h < crop_size or w < crop_size:
            raise ValueError(f'{osp.join(src_dir, fname)} ({h}x{w}) is smaller than the crop size {crop_size}')
        hs = list(range(0, h - crop_size + 1, step))
        if h - (hs[-1] + crop_size) > thresh_size:
            hs.append(h - crop_size)
        ws = list(range(0, w - crop_size + 1, step))
        if w - (ws[-1] + crop_size) > thresh_size:
            ws.append(w - crop_size)
        index = 0
        for y in hs:
            for x in ws:
                index += 1
                name = f'{stem}_s{index:03d}{ext}'
                _imwrite(osp.join(dst_dir, name), img[y:y + crop_size, x:x + crop_size])
                written.append(name)
    return written


def _check_size(size: Sequence[int], multiple: int, what: str) -> tuple[int, int]:
    h, w = (size, size) if isinstance(size, int) else tuple(size)
    if h % multiple or w % multiple:
        raise ValueError(f'{what} {h}x{w}: both sides must be multiples of {multiple}')
    return h, w


def _photo_cycle(photos: Sequence[str], n: int) -> list[str]:
    return [photos[i % len(photos)] for i in range(n)]


def make_div2k_sample(root: str, num_train: int = 4, num_test: int = 2, hr_size: Sequence[int] = (144, 192),
                      scales: Sequence[int] = (2, 3, 4), crop_size: int = 96, step: int = 48, seed: int = 0,
                      overwrite: bool = False) -> dict:
    """A tiny DIV2K in the layout mmagic's SR configs read (see the module docstring).

    ``num_train`` HR images ``0001.png ...`` come from :data:`TRAIN_PHOTOS`, ``num_test`` images ``0801.png ...``
    (the part mmagic's converter lists in ``meta_info_DIV2K100sub_GT.txt``) from :data:`HELD_OUT_PHOTOS`. The
    HR side must be a multiple of 12 and ``crop_size`` / ``step`` multiples of every scale, like the converter's
    defaults (480 / 240). Returns the paths (``root``, ``hr``, ``hr_sub``, ``lr`` / ``lr_sub`` per scale,
    ``ann_train``, ``ann_test``).
    """
    hr_size = _check_size(hr_size, 12, 'hr_size')
    for s in scales:
        if crop_size % s or step % s:
            raise ValueError(f'crop_size {crop_size} and step {step} must be multiples of every scale ({s})')
    params = dict(kind='div2k', num_train=num_train, num_test=num_test, hr_size=list(hr_size), scales=list(scales),
                  crop_size=crop_size, step=step, seed=seed)
    paths = dict(root=root, hr=osp.join(root, 'DIV2K_train_HR'), hr_sub=osp.join(root, 'DIV2K_train_HR_sub'),
                 ann_train=osp.join(root, 'meta_info_DIV2K800sub_GT.txt'),
                 ann_test=osp.join(root, 'meta_info_DIV2K100sub_GT.txt'))
    for s in scales:
        paths[f'lr_x{s}'] = osp.join(root, 'DIV2K_train_LR_bicubic', f'X{s}')
        paths[f'lr_x{s}_sub'] = osp.join(root, 'DIV2K_train_LR_bicubic', f'X{s}_sub')
    if _reuse(root, params, overwrite):
        return paths
    rng = np.random.default_rng(seed)
    os.makedirs(root, exist_ok=True)
    items = [(f'{i + 1:04d}', p) for i, p in enumerate(_photo_cycle(TRAIN_PHOTOS, num_train))]
    items += [(f'{801 + i:04d}', p) for i, p in enumerate(_photo_cycle(HELD_OUT_PHOTOS, num_test))]
    for name, photo in items:
        hr = hr_crops(photo, hr_size, 1, rng)[0]
        _imwrite(osp.join(paths['hr'], f'{name}.png'), hr)
        for s in scales:
            _imwrite(osp.join(paths[f'lr_x{s}'], f'{name}x{s}.png'), matlab_resize(hr, scale=1.0 / s))
    subs = extract_subimages(paths['hr'], paths['hr_sub'], crop_size, step)
    for s in scales:
        extract_subimages(paths[f'lr_x{s}'], paths[f'lr_x{s}_sub'], crop_size // s, step // s)
    with open(paths['ann_train'], 'w') as f_train, open(paths['ann_test'], 'w') as f_test:
        for name in subs:  # the converter's annotation format and split
            (f_train if name[:4] < '0801' else f_test).write(f'{name} ({crop_size}, {crop_size}, 3)\n')
    _stamp(root, params)
    return paths


def make_sr_testset(root: str, num_images: int = 2, gt_size: Sequence[int] = (96, 144), scales: Sequence[int] = (2,),
                    photos: Sequence[str] = HELD_OUT_PHOTOS, seed: int = 0, overwrite: bool = False) -> dict:
    """A tiny SR test set in the Set5 / Set14 / BSD100 layout: ``root/GTmod12/<photo>_<i>.png`` and
    ``root/LRbicx{s}/<same name>.png`` for every scale (BSD100's 480x320 GTmod12 images give the paper's
    160x240 x2 inputs). Returns ``root``, ``gt`` and ``lr_x{s}`` paths."""
    gt_size = _check_size(gt_size, 12, 'gt_size')
    params = dict(kind='sr_testset', num_images=num_images, gt_size=list(gt_size), scales=list(scales),
                  photos=list(photos), seed=seed)
    paths = dict(root=root, gt=osp.join(root, 'GTmod12'), **{f'lr_x{s}': osp.join(root, f'LRbicx{s}') for s in scales})
    if _reuse(root, params, overwrite):
        return paths
    rng = np.random.default_rng(seed)
    os.makedirs(root, exist_ok=True)
    for i, photo in enumerate(_photo_cycle(photos, num_images)):
        gt = hr_crops(photo, gt_size, 1, rng)[0]
        name = f'{photo}_{i}.png'
        _imwrite(osp.join(paths['gt'], name), gt)
        for s in scales:
            _imwrite(osp.join(paths[f'lr_x{s}'], name), matlab_resize(gt, scale=1.0 / s))
    _stamp(root, params)
    return paths


def make_ffhq_sample(root: str, num_train: int = 4, num_val: int = 2, size: int = 96, scale: int = 2, seed: int = 0,
                     overwrite: bool = False, val_size: int | None = None, train_photos: Sequence[str] = TRAIN_PHOTOS,
                     val_photos: Sequence[str] = HELD_OUT_PHOTOS) -> dict:
    """A tiny FFHQ-style SR set: square GT images ``images/00000.png ...`` (training, from ``train_photos``) and
    ``images/60000.png ...`` (validation, from ``val_photos``, ``val_size`` square, ``size`` by default), their
    ``1/scale`` bicubic copies in ``BIx{scale}_down/`` and the two annotation files (the paper's split: the first
    3000 training images, the first 500 validation images). Returns ``root``, ``gt``, ``lr``, ``ann_train``,
    ``ann_val``."""
    val_size = size if val_size is None else val_size
    for side in (size, val_size):
        if side % scale:
            raise ValueError(f'size {side} must be a multiple of scale {scale}')
    params = dict(kind='ffhq', num_train=num_train, num_val=num_val, size=size, scale=scale, seed=seed)
    if (val_size, tuple(train_photos), tuple(val_photos)) != (size, TRAIN_PHOTOS, HELD_OUT_PHOTOS):
        params.update(val_size=val_size, train_photos=list(train_photos), val_photos=list(val_photos))
    paths = dict(root=root, gt=osp.join(root, 'images'), lr=osp.join(root, f'BIx{scale}_down'),
                 ann_train=osp.join(root, 'meta_info_FFHQ_train3000_GT.txt'),
                 ann_val=osp.join(root, 'meta_info_FFHQ_val500_GT.txt'))
    if _reuse(root, params, overwrite):
        return paths
    rng = np.random.default_rng(seed)
    os.makedirs(root, exist_ok=True)
    split = [(f'{i:05d}', p, 'ann_train', size) for i, p in enumerate(_photo_cycle(train_photos, num_train))]
    split += [(f'{60000 + i:05d}', p, 'ann_val', val_size)
              for i, p in enumerate(_photo_cycle(val_photos, num_val))]
    lines = {'ann_train': [], 'ann_val': []}
    for name, photo, ann, side in split:
        gt = hr_crops(photo, (side, side), 1, rng)[0]
        _imwrite(osp.join(paths['gt'], f'{name}.png'), gt)
        _imwrite(osp.join(paths['lr'], f'{name}.png'), matlab_resize(gt, scale=1.0 / scale))
        lines[ann].append(f'{name}.png ({side}, {side}, 3)\n')
    for ann, text in lines.items():
        with open(paths[ann], 'w') as f:
            f.writelines(text)
    _stamp(root, params)
    return paths


#: LR training patch side of the lightweight SR configs (mmagic's SwinIR-light recipe: ``gt_patch_size = 64 * scale``)
CONFIG_LQ_PATCH = 64
#: GT training patch side of the high-resolution (FFHQ) SR configs
CONFIG_HIGHRES_GT_PATCH = 512
#: training photographs with both sides >= CONFIG_HIGHRES_GT_PATCH
_LARGE_TRAIN_PHOTOS = ('astronaut', 'hubble_deep_field')


def make_sr_config_data(data_root: str = 'data', scales: Sequence[int] = (2, 3, 4), seed: int = 0,
                        overwrite: bool = False) -> dict:
    """Every dataset the configs of ``configs/efficientvit_sr/`` read, under ``data_root`` (``DIV2K``, ``BSD100``,
    ``Set5``, ``Set14``, ``ffhq``), large enough for their training crops, so that the shipped configs run on it
    as they are (``python tools/train.py CONFIG`` from the directory holding ``data_root='data'``).

    The builders' defaults are smaller than the configs' crops (their DIV2K sub-images are 96 px, 48 px at x2,
    below the 64 px LR patches of the recipe): here the DIV2K sub-images are the smallest multiple of every
    scale that gives LR sub-images of at least :data:`CONFIG_LQ_PATCH` px at the largest scale, and the FFHQ
    training images are :data:`CONFIG_HIGHRES_GT_PATCH` px (cut from the two training photographs that large;
    the validation images stay small). Returns the paths of each set, by set name.
    """
    from math import gcd
    lcm = 1
    for s in scales:
        lcm = lcm * s // gcd(lcm, s)
    crop = -(-CONFIG_LQ_PATCH * max(scales) // lcm) * lcm
    hr = -(-crop // 12) * 12 + 12  # a multiple of 12, larger than the crop: 2x2 overlapping sub-images
    step = lcm * max(1, crop // (2 * lcm))
    paths = {'DIV2K': make_div2k_sample(osp.join(data_root, 'DIV2K'), num_train=2, num_test=1, hr_size=(hr, hr),
                                        scales=scales, crop_size=crop, step=step, seed=seed, overwrite=overwrite)}
    for i, name in enumerate(('BSD100', 'Set5', 'Set14')):
        paths[name] = make_sr_testset(osp.join(data_root, name), num_images=2, scales=scales, seed=seed + i,
                                      overwrite=overwrite)
    paths['ffhq'] = make_ffhq_sample(osp.join(data_root, 'ffhq'), num_train=2, num_val=2,
                                     size=CONFIG_HIGHRES_GT_PATCH, val_size=96, seed=seed, overwrite=overwrite,
                                     train_photos=_LARGE_TRAIN_PHOTOS)
    return paths
