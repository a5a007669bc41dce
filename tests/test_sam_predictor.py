"""EfficientViT-SAM predictor and automatic mask generator: consistency, batches, input handling, errors.

Real photographs (scikit-image); an L0 model with random weights and randomised BatchNorm statistics, run with a
256 encoder input to keep the suite fast (the prompt frame stays 1024, so the 512-vs-1024 frame handling is
exercised at an even larger ratio; parity at the native 512 is in test_sam.py).
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from evit_mm.models.sam import build_efficientvit_sam
from evit_mm.sam import (EfficientViTSamAutomaticMaskGenerator, EfficientViTSamPredictor, as_rgb_uint8,
                         get_preprocess_shape, preprocess_image)

from conftest import randomize_

skimage_data = pytest.importorskip('skimage.data')

SIZE = 256


@pytest.fixture(scope='module')
def model():
    torch.manual_seed(0)
    return randomize_(build_efficientvit_sam('l0', image_size=SIZE), what='batchnorm', bn_weights=True)


@pytest.fixture(scope='module')
def chelsea():
    return np.ascontiguousarray(skimage_data.chelsea())  # 300x451 RGB


@pytest.fixture(scope='module')
def predictor(model, chelsea):
    p = EfficientViTSamPredictor(model)
    p.set_image(chelsea)
    return p


def close(a, b, tol=1e-5):
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    assert a.shape == b.shape, (a.shape, b.shape)
    diff = np.abs(a - b).max() if a.size else 0.0
    assert diff <= tol, f'max abs diff {diff:.3g} > {tol}'


POINTS = np.array([[150.0, 120.0], [300.0, 60.0]])
LABELS = np.array([1, 0])
BOX = np.array([60.0, 30.0, 320.0, 280.0])


# ----------------------------------------------------------------------------------------------------------------
# consistency
# ----------------------------------------------------------------------------------------------------------------

def test_frames_and_shapes(predictor, chelsea):
    assert predictor.original_size == (300, 451)
    assert predictor.input_size == get_preprocess_shape(300, 451, 1024) == (681, 1024)  # the 1024 prompt frame
    assert predictor.get_image_embedding().shape == (1, 256, 64, 64)
    masks, iou, low = predictor.predict(POINTS, LABELS)
    assert masks.shape == (3, 300, 451) and masks.dtype == bool
    assert iou.shape == (3,) and low.shape == (3, 256, 256)
    masks, iou, low = predictor.predict(POINTS, LABELS, multimask_output=False, return_logits=True)
    assert masks.shape == (1, 300, 451) and masks.dtype == np.float32


def test_embedding_is_the_encoder_of_the_preprocessed_image(model, predictor, chelsea):
    with torch.no_grad():
        want = model.image_encoder(preprocess_image(chelsea, SIZE))
    close(predictor.features, want, 1e-5)


def test_predict_matches_predict_torch(predictor):
    for kw in (dict(point_coords=POINTS, point_labels=LABELS), dict(box=BOX),
               dict(point_coords=POINTS[:1], point_labels=LABELS[:1], box=BOX, multimask_output=False)):
        got = predictor.predict(return_logits=True, **kw)
        t = predictor.transform
        coords = labels = boxes = None
        if 'point_coords' in kw:
            coords = t.apply_coords_torch(torch.as_tensor(kw['point_coords'])[None], predictor.original_size)
            labels = torch.as_tensor(kw['point_labels'])[None]
        if 'box' in kw:
            boxes = t.apply_boxes_torch(torch.as_tensor(kw['box'])[None], predictor.original_size)
        want = predictor.predict_torch(coords, labels, boxes, multimask_output=kw.get('multimask_output', True),
                                       return_logits=True)
        for g, w in zip(got, want):
            close(g, w[0].numpy())


def test_boxes_batch_equals_one_by_one(predictor):
    boxes = np.array([BOX, [200.0, 100.0, 400.0, 250.0], [10.0, 10.0, 90.0, 120.0]])
    masks, iou, low = predictor.predict(box=boxes, return_logits=True)
    assert masks.shape == (3, 3, 300, 451) and iou.shape == (3, 3)
    for i, b in enumerate(boxes):
        m, s, lr = predictor.predict(box=b, return_logits=True)
        close(masks[i], m, 1e-4)
        close(iou[i], s, 1e-5)
    # points per box, batched
    pts = np.stack([POINTS[:1] + i * 20 for i in range(3)])
    masks, iou, _ = predictor.predict(pts, np.ones((3, 1)), box=boxes, multimask_output=False)
    assert masks.shape == (3, 1, 300, 451)
    m, s, _ = predictor.predict(pts[1], np.ones(1), box=boxes[1], multimask_output=False)
    assert np.array_equal(masks[1], m) and abs(iou[1, 0] - s[0]) < 1e-5


def test_mask_input_round_trip(predictor):
    masks, iou, low = predictor.predict(POINTS, LABELS, return_logits=True)
    best = low[int(np.argmax(iou))][None]  # (1, 256, 256), as SAM's notebooks pass it
    with_mask = predictor.predict(POINTS, LABELS, mask_input=best, multimask_output=False, return_logits=True)
    without = predictor.predict(POINTS, LABELS, multimask_output=False, return_logits=True)
    assert np.abs(with_mask[0] - without[0]).max() > 1e-3  # the mask prompt is used
    again = predictor.predict(POINTS, LABELS, mask_input=best[0], multimask_output=False, return_logits=True)
    close(again[0], with_mask[0])  # (256, 256) accepted as well
    coords = predictor.transform.apply_coords_torch(torch.as_tensor(POINTS)[None], predictor.original_size)
    t = predictor.predict_torch(coords, torch.as_tensor(LABELS)[None], mask_input=torch.as_tensor(best)[None],
                                multimask_output=False, return_logits=True)
    close(t[0][0].numpy(), with_mask[0])
    only_mask = predictor.predict(mask_input=best)
    assert only_mask[0].shape == (3, 300, 451)


def test_image_batch_equals_one_by_one(model, chelsea):
    imgs = [chelsea, skimage_data.coffee()[::2, ::2], skimage_data.camera()[::4, ::3]]  # last one grayscale
    single = EfficientViTSamPredictor(model)
    batch = EfficientViTSamPredictor(model)
    batch.set_image_batch(imgs)
    assert batch.num_images == 3 and batch.features.shape == (3, 256, 64, 64)
    prompts = [dict(point_coords=POINTS * s, point_labels=LABELS) for s in (1.0, 0.5, 0.4)]
    boxes = [BOX, BOX * 0.5, None]
    got = batch.predict_batch([p['point_coords'] for p in prompts], [p['point_labels'] for p in prompts], boxes)
    for i, img in enumerate(imgs):
        single.set_image(img)
        close(batch.features[i:i + 1], single.features, 1e-4)
        assert batch.original_sizes[i] == single.original_size and batch.input_sizes[i] == single.input_size
        want = single.predict(box=boxes[i], **prompts[i])
        by_index = batch.predict(box=boxes[i], image_index=i, **prompts[i])
        for w, g, b in zip(want, (got[0][i], got[1][i], got[2][i]), by_index):
            assert g.shape == w.shape
            if w.dtype == bool:
                assert (g != w).mean() < 1e-3 and np.array_equal(g, b)
            else:
                close(g, w, 1e-4)
    with pytest.raises(ValueError, match='pass image_index'):
        batch.predict(POINTS, LABELS)
    with pytest.raises(IndexError, match='out of range'):
        batch.predict(POINTS, LABELS, image_index=3)
    with pytest.raises(ValueError, match='2 entries for 3 images'):
        batch.predict_batch(box_batch=[BOX, BOX])


def test_set_torch_image_checks_sizes(model, chelsea):
    p = EfficientViTSamPredictor(model)
    resized = p.image_transform.apply_image(chelsea)
    t = torch.as_tensor(resized).permute(2, 0, 1)[None]
    p.set_torch_image(t, chelsea.shape[:2])
    assert p.input_size == (681, 1024)
    with pytest.raises(ValueError, match='longest side must be the encoder size 256'):
        p.set_torch_image(torch.zeros(1, 3, 300, 451), chelsea.shape[:2])
    with pytest.raises(ValueError, match='wrong original_image_size'):
        p.set_torch_image(t, (451, 300))
    with pytest.raises(ValueError, match='set_torch_image_batch'):
        p.set_torch_image(t.repeat(2, 1, 1, 1), chelsea.shape[:2])


def test_works_with_segment_anything_sam():
    """The predictor also drives a plain segment_anything Sam (both frames 1024) exactly like SamPredictor."""
    from segment_anything import SamPredictor
    from segment_anything.modeling import ImageEncoderViT, Sam
    torch.manual_seed(0)
    tiny = build_efficientvit_sam('l0', image_size=SIZE)
    sam = Sam(ImageEncoderViT(img_size=1024, patch_size=16, embed_dim=32, depth=1, num_heads=2, out_chans=256,
                              window_size=16, global_attn_indexes=()), tiny.prompt_encoder, tiny.mask_decoder).eval()
    img = skimage_data.coffee()[::3, ::3]
    ours, theirs = EfficientViTSamPredictor(sam), SamPredictor(sam)
    ours.set_image(img)
    theirs.set_image(img)
    assert ours.input_size == theirs.input_size
    for kw in (dict(point_coords=POINTS * 0.5, point_labels=LABELS), dict(box=BOX * 0.4)):
        for g, w in zip(ours.predict(return_logits=True, **kw), theirs.predict(return_logits=True, **kw)):
            close(g, w, 1e-5)


# ----------------------------------------------------------------------------------------------------------------
# images people have
# ----------------------------------------------------------------------------------------------------------------

def test_image_conversions():
    rgb = skimage_data.coffee()[::4, ::4]
    gray = skimage_data.camera()[::8, ::8]
    gray3 = np.repeat(gray[..., None], 3, 2)
    assert np.array_equal(as_rgb_uint8(gray), gray3)
    assert np.array_equal(as_rgb_uint8(gray[..., None]), gray3)
    assert np.array_equal(as_rgb_uint8(np.dstack([rgb, np.full(rgb.shape[:2], 7, np.uint8)])), rgb)  # RGBA
    assert np.array_equal(as_rgb_uint8(rgb.astype(np.uint16) * 257), rgb)  # 16-bit
    assert np.array_equal(as_rgb_uint8(rgb / 255.0), rgb)  # float in [0, 1]
    assert np.array_equal(as_rgb_uint8(rgb.astype(np.float32)), rgb)  # float in [0, 255]
    assert np.array_equal(as_rgb_uint8(rgb[..., ::-1], 'BGR'), rgb)
    assert np.array_equal(as_rgb_uint8(rgb.astype(np.int64)), rgb)
    assert np.array_equal(as_rgb_uint8(gray > 100), np.repeat((gray > 100)[..., None], 3, 2).astype(np.uint8) * 255)
    from PIL import Image
    assert np.array_equal(as_rgb_uint8(Image.fromarray(rgb)), rgb)
    with pytest.raises(ValueError, match='channels first'):
        as_rgb_uint8(np.moveaxis(rgb, 2, 0))
    with pytest.raises(ValueError, match='NaN'):
        as_rgb_uint8(np.full((8, 8, 3), np.nan))
    with pytest.raises(ValueError, match=r'\[0, 255\]'):
        as_rgb_uint8(np.full((8, 8), 1000, np.int32))
    with pytest.raises(ValueError, match='empty image'):
        as_rgb_uint8(np.zeros((0, 5, 3), np.uint8))
    with pytest.raises(ValueError, match='image_format'):
        as_rgb_uint8(rgb, 'HSV')


def test_gray_rgba_16bit_images_give_the_rgb_result(model):
    gray = skimage_data.camera()[::6, ::6]
    p = EfficientViTSamPredictor(model)
    p.set_image(np.repeat(gray[..., None], 3, 2))
    want = p.features.clone()
    for variant in (gray, gray.astype(np.uint16) * 257, np.dstack([np.repeat(gray[..., None], 3, 2),
                                                                    np.zeros_like(gray)])):
        p.set_image(variant)
        assert torch.equal(p.features, want)


@pytest.mark.parametrize('shape', [(20, 30), (5, 3), (1, 1), (2, 1000)])
def test_small_images(model, shape):
    """Images smaller than the 64 px the embedding has: the longest side is resized up to the encoder size as
    any other image, and masks come back at the original size."""
    img = np.tile(skimage_data.astronaut(), (1, 2, 1))[:shape[0], :shape[1]]
    p = EfficientViTSamPredictor(model)
    p.set_image(img)
    masks, iou, _ = p.predict(np.array([[shape[1] / 2, shape[0] / 2]]), np.array([1]))
    assert masks.shape == (3, *shape) and np.isfinite(iou).all()


def test_too_elongated_image(model):
    with pytest.raises(ValueError, match='too elongated'):
        EfficientViTSamPredictor(model).set_image(np.zeros((1, 3000, 3), np.uint8))


# ----------------------------------------------------------------------------------------------------------------
# prompts: errors and documented results
# ----------------------------------------------------------------------------------------------------------------

def test_no_image_set(model):
    p = EfficientViTSamPredictor(model)
    with pytest.raises(RuntimeError, match='An image must be set'):
        p.predict(POINTS, LABELS)
    with pytest.raises(RuntimeError, match='An image must be set'):
        p.predict_torch(torch.zeros(1, 1, 2), torch.ones(1, 1))
    with pytest.raises(RuntimeError, match='An image must be set'):
        p.get_image_embedding()
    with pytest.raises(RuntimeError, match='set_image_batch'):
        p.predict_batch()


@pytest.mark.parametrize('kwargs,match', [
    (dict(point_labels=LABELS), 'point_labels given without point_coords'),
    (dict(point_coords=POINTS), 'point_labels must be supplied'),
    (dict(point_coords=POINTS, point_labels=LABELS[:1]), 'one label per point'),
    (dict(point_coords=POINTS[:, :1], point_labels=LABELS), r'\(N, 2\) or \(B, N, 2\)'),
    (dict(point_coords=np.array([[np.nan, 3.0]]), point_labels=[1]), 'NaN'),
    (dict(point_coords=POINTS, point_labels=[1, 5]), r'must be in \(-1, 0, 1, 2, 3\)'),
    (dict(point_coords=POINTS, point_labels=[1, 0.5]), 'must be integers'),
    (dict(box=[1, 2, 3]), r'\(4,\) or \(B, 4\)'),
    (dict(box=[np.nan, 2, 30, 40]), 'NaN'),
    (dict(box=[100, 20, 50, 40]), 'x0 <= x1'),
    (dict(box=[500, 20, 600, 40]), 'entirely outside'),
    (dict(box=[-90, -50, -10, -1]), 'entirely outside'),
    (dict(mask_input=np.zeros((1, 64, 64))), r'\(B, 1, 256, 256\)'),
    (dict(box=np.array([BOX, BOX]), point_coords=np.stack([POINTS] * 3), point_labels=np.ones((3, 2))),
     'batch size'),
    (dict(), 'no prompt given'),
    (dict(point_coords=np.zeros((0, 2)), point_labels=np.zeros(0), box=np.zeros((0, 4))), 'no prompt given'),
    (dict(point_coords=np.zeros((0, 2)), point_labels=[1]), 'point_coords is empty'),
    (dict(point_coords='abc', point_labels=[1]), 'numeric'),
])
def test_bad_prompts_raise_clear_errors(predictor, kwargs, match):
    with pytest.raises(ValueError, match=match):
        predictor.predict(**kwargs)


def test_empty_arrays_count_as_not_given(predictor):
    want = predictor.predict(box=BOX, return_logits=True)
    got = predictor.predict(point_coords=np.zeros((0, 2)), point_labels=np.zeros(0), box=BOX, return_logits=True)
    for g, w in zip(got, want):
        close(g, w, 0)
    got = predictor.predict(point_coords=POINTS, point_labels=LABELS, box=np.zeros((0, 4)), return_logits=True)
    for g, w in zip(got, predictor.predict(POINTS, LABELS, return_logits=True)):
        close(g, w, 0)


def test_boxes_are_clipped_to_the_image(predictor):
    """A box sticking out of the image gives the result of the box clipped to the image (documented)."""
    h, w = predictor.original_size
    got = predictor.predict(box=[-40, 100, w + 80, h + 5], return_logits=True)
    want = predictor.predict(box=[0, 100, w, h], return_logits=True)
    for g, x in zip(got, want):
        close(g, x, 1e-5)


def test_points_outside_the_image_are_passed_on(predictor):
    masks, iou, _ = predictor.predict(np.array([[-20.0, 50.0], [500.0, 400.0]]), np.array([1, 1]))
    assert masks.shape == (3, 300, 451) and np.isfinite(iou).all()


def test_predict_torch_accepts_sam_style_box_shape(predictor):
    boxes = predictor.transform.apply_boxes_torch(torch.as_tensor(BOX)[None], predictor.original_size)
    a = predictor.predict_torch(boxes=boxes, return_logits=True)
    b = predictor.predict_torch(boxes=boxes[:, None], return_logits=True)  # (B, 1, 4), as SamPredictor.predict passes
    for x, y in zip(a, b):
        assert torch.equal(x, y)


# ----------------------------------------------------------------------------------------------------------------
# automatic mask generator
# ----------------------------------------------------------------------------------------------------------------

SAM_RECORD_KEYS = {'segmentation', 'area', 'bbox', 'predicted_iou', 'point_coords', 'stability_score', 'crop_box'}


@pytest.mark.parametrize('output_mode', ['binary_mask', 'coco_rle'])
def test_amg_records(model, output_mode):
    img = skimage_data.coins()[::3, ::3]  # grayscale, 101x128
    amg = EfficientViTSamAutomaticMaskGenerator(model, points_per_side=2, pred_iou_thresh=0.0,
                                                stability_score_thresh=0.0, output_mode=output_mode)
    records = amg.generate(img)
    assert records and all(set(r) == SAM_RECORD_KEYS for r in records)
    for r in records:
        if output_mode == 'binary_mask':
            assert r['segmentation'].shape == img.shape and r['segmentation'].dtype == bool
            assert r['area'] == int(r['segmentation'].sum())
        else:
            assert r['segmentation']['size'] == list(img.shape) and isinstance(r['segmentation']['counts'], str)
        x, y, w, h = r['bbox']
        assert 0 <= x and 0 <= y and x + w <= img.shape[1] and y + h <= img.shape[0]
        assert r['crop_box'] == [0, 0, img.shape[1], img.shape[0]]
    # SAM's defaults and argument checks are kept
    default = EfficientViTSamAutomaticMaskGenerator(model)
    assert (default.pred_iou_thresh, default.stability_score_thresh, default.points_per_batch) == (0.88, 0.95, 64)
    assert len(default.point_grids[0]) == 32 * 32
    with pytest.raises(AssertionError):
        EfficientViTSamAutomaticMaskGenerator(model, points_per_side=None)


@pytest.mark.slow
def test_amg_with_crops(model):
    img = skimage_data.coffee()[::5, ::5]
    amg = EfficientViTSamAutomaticMaskGenerator(model, points_per_side=1, crop_n_layers=1, pred_iou_thresh=0.0,
                                                stability_score_thresh=0.0, box_nms_thresh=1.0, crop_nms_thresh=1.0)
    records = amg.generate(img)
    from segment_anything.utils.amg import generate_crop_boxes
    crop_boxes, _ = generate_crop_boxes(img.shape[:2], 1, 512 / 1500)
    assert records and all(r['crop_box'] in crop_boxes for r in records)
    assert all(math.isfinite(r['predicted_iou']) and r['segmentation'].shape == img.shape[:2] for r in records)
