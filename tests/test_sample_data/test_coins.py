"""coins-coco: a COCO-format dataset built from real photographs (evit_mm.sample_data)."""
import json
import os

import numpy as np
import pytest
from conftest import CONFIGS
from PIL import Image


def test_watershed_separates_the_24_coins():
    from evit_mm.sample_data import segment_coins
    coins = segment_coins()
    assert len(coins) == 24
    for crop, mask in coins:
        assert crop.shape == mask.shape and mask.dtype == bool
        fill = mask.mean()
        assert 0.6 < fill < 0.9, fill  # a disc fills pi/4 of its box


def test_layout_and_annotations_are_consistent(coins_coco):
    from pycocotools import mask as mask_utils
    from pycocotools.coco import COCO
    for split in ('train', 'val'):
        coco = COCO(coins_coco[f'{split}_ann'])
        assert coco.loadCats(coco.getCatIds()) == [{'id': 1, 'name': 'coin', 'supercategory': 'object'}]
        assert coco.getAnnIds(), split
        for img in coco.loadImgs(coco.getImgIds()):
            path = os.path.join(coins_coco[f'{split}_img'], img['file_name'])
            assert Image.open(path).size == (img['width'], img['height'])
        for ann in coco.loadAnns(coco.getAnnIds()):
            x, y, w, h = ann['bbox']
            assert w > 0 and h > 0 and ann['area'] > 0 and ann['iscrowd'] == 0
            decoded = coco.annToMask(ann).astype(bool)
            ys, xs = np.nonzero(decoded)
            # the polygon outline reproduces the visible mask's box to within a pixel
            assert abs(xs.min() - x) <= 1 and abs(ys.min() - y) <= 1
            assert abs(xs.max() + 1 - (x + w)) <= 1 and abs(ys.max() + 1 - (y + h)) <= 1
            assert abs(decoded.sum() - ann['area']) <= 0.25 * ann['area']
            assert mask_utils.area(mask_utils.encode(np.asfortranarray(decoded.astype(np.uint8)))) > 0


def test_deterministic_and_reused(tmp_path):
    from evit_mm.sample_data import make_coins_coco
    a = make_coins_coco(str(tmp_path / 'a'), num_train=2, num_val=1, image_size=96, seed=3)
    b = make_coins_coco(str(tmp_path / 'b'), num_train=2, num_val=1, image_size=96, seed=3)
    with open(a['train_ann']) as fa, open(b['train_ann']) as fb:
        assert json.load(fa) == json.load(fb)
    img_a = np.asarray(Image.open(os.path.join(a['train_img'], '000000000001.jpg')))
    img_b = np.asarray(Image.open(os.path.join(b['train_img'], '000000000001.jpg')))
    assert np.array_equal(img_a, img_b)
    mtime = os.path.getmtime(a['train_ann'])
    make_coins_coco(str(tmp_path / 'a'), num_train=2, num_val=1, image_size=96, seed=3)
    assert os.path.getmtime(a['train_ann']) == mtime  # same arguments: the dataset is reused, not rebuilt


def test_bad_arguments_are_refused(tmp_path):
    from evit_mm.sample_data import make_coins_coco
    with pytest.raises(ValueError, match='image_size'):
        make_coins_coco(str(tmp_path), image_size=32)
    with pytest.raises(ValueError, match='num_train'):
        make_coins_coco(str(tmp_path), num_train=0)


def test_coco_cfg_options_point_an_mmdet_config_at_the_dataset(coins_coco):
    from mmengine.config import Config

    from evit_mm.sample_data import coco_cfg_options
    cfg = Config.fromfile(os.path.join(CONFIGS, 'quickstart', 'retinanet_efficientvit-m0_fpn_coins.py'))
    cfg.merge_from_dict(coco_cfg_options(coins_coco))
    for loader in ('train_dataloader', 'val_dataloader', 'test_dataloader'):
        assert cfg[loader].dataset.data_root == os.path.join(coins_coco['root'], '')
        assert os.path.isfile(os.path.join(cfg[loader].dataset.data_root, cfg[loader].dataset.ann_file))
    assert cfg.val_evaluator.ann_file == cfg.test_evaluator.ann_file == coins_coco['val_ann']
