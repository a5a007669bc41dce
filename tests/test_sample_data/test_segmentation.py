"""Tiny Cityscapes / ADE20K datasets built from real photographs (evit_mm.sample_data.segmentation)."""
import glob
import os
import os.path as osp

import numpy as np
import pytest
from PIL import Image


@pytest.fixture(scope='module')
def city(tmp_path_factory):
    from evit_mm.sample_data import make_cityscapes_sample
    return make_cityscapes_sample(str(tmp_path_factory.mktemp('city')), num_train=4, num_val=2, image_size=(64, 128))


@pytest.fixture(scope='module')
def ade(tmp_path_factory):
    from evit_mm.sample_data import make_ade20k_sample
    return make_ade20k_sample(str(tmp_path_factory.mktemp('ade')), num_train=5, num_val=2, image_size=64)


def test_cityscapes_layout_and_labels(city):
    from evit_mm.sample_data.segmentation import CITYSCAPES_IDS, CITYSCAPES_LABEL_IDS
    cities = {}
    for split, n in (('train', 4), ('val', 2)):
        images = sorted(glob.glob(osp.join(city['root'], 'leftImg8bit', split, '*', '*_leftImg8bit.png')))
        assert len(images) == n
        cities[split] = {osp.basename(osp.dirname(p)) for p in images}
        names = []
        for path in images:
            city_name = osp.basename(osp.dirname(path))
            stem = osp.basename(path)[:-len('_leftImg8bit.png')]
            assert stem.startswith(city_name + '_') and stem.endswith('_000019')
            names.append(f'{city_name}/{stem}')
            ann_dir = osp.join(city['root'], 'gtFine', split, city_name)
            img = np.asarray(Image.open(path))
            train_ids = np.asarray(Image.open(osp.join(ann_dir, stem + '_gtFine_labelTrainIds.png')))
            label_ids = np.asarray(Image.open(osp.join(ann_dir, stem + '_gtFine_labelIds.png')))
            assert img.shape == (64, 128, 3) and img.dtype == np.uint8
            assert train_ids.shape == label_ids.shape == (64, 128) and train_ids.dtype == np.uint8
            assert set(np.unique(train_ids)) <= set(CITYSCAPES_IDS.values()) | {255}
            # labelIds are the same map in Cityscapes' 34-id space (void -> 0 'unlabeled')
            lut = np.zeros(256, np.uint8)
            lut[:19] = CITYSCAPES_LABEL_IDS
            assert np.array_equal(label_ids, lut[train_ids])
            # coins are pasted in grey: every coin pixel is grey in the (lossless) image, and is surrounded by
            # an ignored ring
            coin = train_ids == CITYSCAPES_IDS['coin']
            assert coin.sum() > 20
            assert (img[coin, 0] == img[coin, 1]).all() and (img[coin, 1] == img[coin, 2]).all()
            border = np.zeros_like(coin)
            border[1:-1, 1:-1] = coin[1:-1, 1:-1] & ~(coin[:-2, 1:-1] & coin[2:, 1:-1] & coin[1:-1, :-2]
                                                        & coin[1:-1, 2:])
            rows, cols = np.nonzero(border)
            neighbours = np.stack([train_ids[rows - 1, cols], train_ids[rows + 1, cols], train_ids[rows, cols - 1],
                                   train_ids[rows, cols + 1]])
            assert set(np.unique(neighbours)) <= {CITYSCAPES_IDS['coin'], 255}
            assert (train_ids == 255).mean() < 0.5
        with open(osp.join(city['root'], f'{split}.txt')) as f:
            assert f.read().split() == sorted(names)
    assert not cities['train'] & cities['val']  # validation scenes ("cities") are unseen in training


def test_cityscapes_loads_in_mmseg(city):
    from mmengine.registry import init_default_scope
    from mmseg.registry import DATASETS

    import evit_mm.mmseg  # noqa: F401
    init_default_scope('mmseg')
    dataset = DATASETS.build(dict(
        type='CityscapesDataset', data_root=city['root'],
        data_prefix=dict(img_path='leftImg8bit/val', seg_map_path='gtFine/val'),
        pipeline=[dict(type='LoadImageFromFile'), dict(type='LoadAnnotations'), dict(type='PackSegInputs')]))
    assert len(dataset) == 2 and len(dataset.metainfo['classes']) == 19
    item = dataset[0]
    assert item['inputs'].shape == (3, 64, 128)
    gt = item['data_samples'].gt_sem_seg.data
    assert gt.shape == (1, 64, 128) and int(gt.max()) == 255 and int(gt[gt != 255].max()) <= 18


def test_ade20k_layout_labels_and_mmseg_loading(ade):
    from mmengine.registry import init_default_scope
    from mmseg.registry import DATASETS

    import evit_mm.mmseg  # noqa: F401
    from evit_mm.sample_data.segmentation import ADE20K_IDS
    shapes = set()
    for split, folder, n in (('train', 'training', 5), ('val', 'validation', 2)):
        images = sorted(glob.glob(osp.join(ade['root'], 'images', folder, '*.jpg')))
        assert [osp.basename(p) for p in images] == [f'ADE_{split}_{i:08d}.jpg' for i in range(1, n + 1)]
        for path in images:
            ann = osp.join(ade['root'], 'annotations', folder, osp.basename(path)[:-4] + '.png')
            img, label = np.asarray(Image.open(path)), np.asarray(Image.open(ann))
            assert img.shape[:2] == label.shape and label.dtype == np.uint8
            assert 51 <= min(label.shape) <= 80  # short side within 0.8-1.25 x 64
            assert set(np.unique(label)) <= set(ADE20K_IDS.values()) | {0}
            assert (label == ADE20K_IDS['coin']).any()
            shapes.add(label.shape)
    assert len(shapes) > 3  # varied sizes and aspect ratios, as ADE20K
    init_default_scope('mmseg')
    dataset = DATASETS.build(dict(
        type='ADE20KDataset', data_root=ade['root'],
        data_prefix=dict(img_path='images/training', seg_map_path='annotations/training'),
        pipeline=[dict(type='LoadImageFromFile'), dict(type='LoadAnnotations', reduce_zero_label=True),
                  dict(type='PackSegInputs')]))
    assert len(dataset) == 5 and len(dataset.metainfo['classes']) == 150
    values = set()
    for i in range(len(dataset)):
        values |= set(dataset[i]['data_samples'].gt_sem_seg.data.unique().tolist())
    # reduce_zero_label: 0 ("other") -> 255 ignored, k -> k - 1
    assert values <= {v - 1 for v in ADE20K_IDS.values()} | {255}
    assert ADE20K_IDS['coin'] - 1 in values and dataset.metainfo['classes'][ADE20K_IDS['coin'] - 1] == 'plate'


def test_categories_follow_the_colour_rules():
    """Each superpixel gets the category of its mean colour (module docstring table)."""
    from evit_mm.sample_data.segmentation import SEG_CATEGORIES, categorize_superpixels
    colours = {'vegetation': (40, 140, 40), 'sky': (70, 130, 200), 'terrain': (170, 100, 40),
               'road': (60, 60, 62), 'building': (200, 200, 205), None: (150, 135, 125)}  # last: saturation 0.17, void
    image = np.zeros((8, 8 * len(colours), 3), np.uint8)
    segments = np.zeros((8, 8 * len(colours)), np.int64)
    for i, rgb in enumerate(colours.values()):
        image[:, 8 * i:8 * (i + 1)] = rgb
        segments[:, 8 * i:8 * (i + 1)] = i
    cats = categorize_superpixels(image, segments)[0, ::8]
    assert [SEG_CATEGORIES[c] if c >= 0 else None for c in cats] == list(colours)


def test_the_reference_class_names_match_the_categories():
    from mmseg.datasets import ADE20KDataset, CityscapesDataset

    from evit_mm.sample_data.segmentation import ADE20K_IDS, CITYSCAPES_IDS
    city = CityscapesDataset.METAINFO['classes']
    ade = ADE20KDataset.METAINFO['classes']
    assert {k: city[v] for k, v in CITYSCAPES_IDS.items()} == {
        'road': 'road', 'building': 'building', 'vegetation': 'vegetation', 'sky': 'sky', 'terrain': 'terrain',
        'coin': 'traffic sign'}
    assert {k: ade[v - 1] for k, v in ADE20K_IDS.items()} == {
        'road': 'road', 'building': 'building', 'vegetation': 'tree', 'sky': 'sky', 'terrain': 'earth',
        'coin': 'plate'}


def test_deterministic_and_reused(tmp_path):
    from evit_mm.sample_data import make_ade20k_sample, make_cityscapes_sample
    a = make_cityscapes_sample(str(tmp_path / 'a'), num_train=1, num_val=1, image_size=(64, 128), seed=5)
    b = make_cityscapes_sample(str(tmp_path / 'b'), num_train=1, num_val=1, image_size=(64, 128), seed=5)
    rel = 'gtFine/train/astronaut/astronaut_000000_000019_gtFine_labelTrainIds.png'
    assert np.array_equal(np.asarray(Image.open(osp.join(a['root'], rel))),
                          np.asarray(Image.open(osp.join(b['root'], rel))))
    mtime = os.path.getmtime(osp.join(a['root'], rel))
    make_cityscapes_sample(str(tmp_path / 'a'), num_train=1, num_val=1, image_size=(64, 128), seed=5)
    assert os.path.getmtime(osp.join(a['root'], rel)) == mtime
    c = make_ade20k_sample(str(tmp_path / 'c'), num_train=1, num_val=1, image_size=64, seed=5)
    d = make_ade20k_sample(str(tmp_path / 'd'), num_train=1, num_val=1, image_size=64, seed=6)
    rel = 'annotations/training/ADE_train_00000001.png'
    assert not np.array_equal(np.asarray(Image.open(osp.join(c['root'], rel))),
                              np.asarray(Image.open(osp.join(d['root'], rel))))


def test_bad_arguments_are_refused(tmp_path):
    from evit_mm.sample_data import make_ade20k_sample, make_cityscapes_sample
    with pytest.raises(ValueError, match='image_size'):
        make_cityscapes_sample(str(tmp_path), image_size=(32, 64))
    with pytest.raises(ValueError, match='image_size'):
        make_ade20k_sample(str(tmp_path), image_size=32)
    with pytest.raises(ValueError, match='num_train'):
        make_ade20k_sample(str(tmp_path), num_train=0)
