"""EfficientViT-SAM predictor and automatic mask generator: consistency, batches, input handling, errors.

Real photographs (scikit-image); an L0 model with random weights and randomised BatchNorm statistics, run with a
256 encoder input to keep the suite fast (the prompt frame stays 1024, so the 512-vs-1024 frame handling is
exercised at an even larger ratio; parity at the native 512 is in tests/test_models/test_sam.py).
"""
from __future__ import annotations

import math
import threading
import warnings

import numpy as np
import pytest
import torch
from conftest import randomize_

from evit_mm.mm.compat import apply_all
from evit_mm.models.sam import build_efficientvit_sam
from evit_mm.sam import (
    EfficientViTSamAutomaticMaskGenerator,
    EfficientViTSamPredictor,
    as_rgb_uint8,
    get_preprocess_shape,
    preprocess_image,
)

apply_all()

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


# ============================================================================== 7. empty crops of the mask generator
@pytest.fixture(scope='module')
def sam_l0():
    from evit_mm.models.sam import build_efficientvit_sam
    torch.manual_seed(0)
    return build_efficientvit_sam('l0', image_size=64).eval()


@pytest.mark.parametrize('shape', [(1, 1), (1, 3)])
def test_mask_generator_with_crops_on_a_one_pixel_image(sam_l0, shape):
    """crop_n_layers=1 on an image 1 pixel high or wide: segment_anything's crop grid has crops of zero width or
    height, which are skipped (no pixel, no mask) instead of raising about an image the generator made itself."""
    from segment_anything.utils.amg import generate_crop_boxes

    from evit_mm.sam import EfficientViTSamAutomaticMaskGenerator
    boxes, _ = generate_crop_boxes(shape, 1, 512 / 1500)
    assert any(x1 <= x0 or y1 <= y0 for x0, y0, x1, y1 in boxes)  # what the test is about
    amg = EfficientViTSamAutomaticMaskGenerator(sam_l0, points_per_side=1, crop_n_layers=1, pred_iou_thresh=0.0,
                                                stability_score_thresh=0.0)
    records = amg.generate(np.full((*shape, 3), 128, np.uint8))
    assert records and all(r['segmentation'].shape == shape for r in records)
    assert all(w > 0 and h > 0 for _, _, w, h in (r['crop_box'] for r in records))  # xywh


# ======================================================================== 3. bf16 autocast on a CPU without bf16
@pytest.mark.parametrize('fast_bf16', [False, True], ids=['no_bf16_cpu', 'bf16_cpu'])
def test_cpu_bf16_autocast_runs_the_encoder_in_fp32_where_bf16_is_slow(sam_l0, monkeypatch, fast_bf16):
    """On a CPU without oneDNN bf16 (this one: AVX2), the encoder runs in float32 with one warning; where bf16 is
    fast it runs under autocast as asked (there the encoder is a stub that records the autocast state: the real
    bf16 encoder would take the slow path on this CPU). The masks are float32/bool either way."""
    from evit_mm.sam import predictor as predictor_module
    monkeypatch.setattr(predictor_module, 'cpu_has_fast_bf16', lambda: fast_bf16)
    monkeypatch.setattr(predictor_module, '_warned_slow_bf16', False)
    encoder, autocast_in_encoder = sam_l0.image_encoder, []

    def recording_encoder(x):
        autocast_in_encoder.append(torch.is_autocast_cpu_enabled())
        if fast_bf16:
            return torch.zeros(x.shape[0], 256, *sam_l0.prompt_encoder.image_embedding_size, dtype=torch.bfloat16)
        return encoder(x)

    predictor = predictor_module.EfficientViTSamPredictor(sam_l0)
    predictor.model = _EncoderSwapped(sam_l0, recording_encoder)
    image = np.random.default_rng(0).integers(0, 255, (48, 64, 3), dtype=np.uint8)
    with warnings.catch_warnings(record=True) as caught, torch.autocast('cpu', dtype=torch.bfloat16):
        warnings.simplefilter('always')
        predictor.set_image(image)
        predictor.set_image(image)
        masks, scores, _ = predictor.predict(box=np.array([5, 5, 40, 30]))
    slow = [w for w in caught if issubclass(w.category, predictor_module.SlowCpuBf16Warning)]
    assert len(slow) == (0 if fast_bf16 else 1)  # once per process, not per image
    assert autocast_in_encoder == [fast_bf16] * 2
    assert predictor.features.dtype == (torch.bfloat16 if fast_bf16 else torch.float32)
    assert masks.dtype == bool and scores.dtype == np.float32


class _EncoderSwapped:
    """``model`` with another image encoder (the rest delegated)."""

    def __init__(self, model, encoder):
        self._model, self.image_encoder = model, encoder

    def __getattr__(self, name):
        return getattr(self._model, name)


def test_this_machines_bf16_probe_agrees_with_its_cpu_flags():
    """The probe says "fast" only on CPUs with AVX-512 (oneDNN's bf16 needs avx512bw/vl/dq at least)."""
    from evit_mm.sam.predictor import cpu_has_fast_bf16
    with open('/proc/cpuinfo') as f:
        flags = next((line.split(':', 1)[1].split() for line in f if line.startswith('flags')), [])
    if not flags:
        pytest.skip('no /proc/cpuinfo flags')
    if cpu_has_fast_bf16():
        assert {'avx512bw', 'avx512vl', 'avx512dq'} <= set(flags)
    else:
        assert not ({'avx512_bf16', 'amx_bf16'} & set(flags))


SMALL_SIZE = 64


SMALL_POINTS = np.array([[20.0, 15.0], [45.0, 30.0]])


SMALL_LABELS = np.array([1, 0])


@pytest.fixture(scope='module')
def small_model():
    torch.manual_seed(0)
    return randomize_(build_efficientvit_sam('l0', image_size=SMALL_SIZE), what='batchnorm', bn_weights=True)


def make_image(seed: int, shape=(48, 64)) -> np.ndarray:
    """A smooth random RGB image (blurred noise plus a bright disc), different for every seed."""
    rng = np.random.default_rng(seed)
    h, w = shape
    img = rng.random((h // 8 + 1, w // 8 + 1, 3)).repeat(8, 0).repeat(8, 1)[:h, :w] * 160
    yy, xx = np.mgrid[:h, :w]
    cy, cx = rng.uniform(0.3, 0.7) * h, rng.uniform(0.3, 0.7) * w
    img[(yy - cy) ** 2 + (xx - cx) ** 2 < (min(h, w) / 4) ** 2] += 90
    return np.clip(img, 0, 255).astype(np.uint8)


def single_threaded(small_model, image, **prompt):
    p = EfficientViTSamPredictor(small_model)
    p.set_image(image)
    return p.predict(return_logits=True, **prompt)


def assert_same(got, want, tol=1e-6):
    for g, w in zip(got, want):
        assert g.shape == w.shape
        assert np.abs(g.astype(np.float64) - w.astype(np.float64)).max() <= tol


def run_threads(*targets):
    errors = []

    def wrap(fn):
        def run():
            try:
                fn()
            except BaseException as e:  # noqa: BLE001 - reported by the test
                errors.append(e)
        return run

    threads = [threading.Thread(target=wrap(t)) for t in targets]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not any(t.is_alive() for t in threads), 'a thread hung'
    if errors:
        raise errors[0]


def test_threads_interleaving_set_image_and_predict_each_get_their_own_image(small_model):
    """A sets its image, B sets another, then A predicts: A gets the masks of its own image (per-thread state)."""
    imgs = {'a': make_image(1), 'b': make_image(2, (60, 40))}
    want = {k: single_threaded(small_model, im, point_coords=SMALL_POINTS, point_labels=SMALL_LABELS)
            for k, im in imgs.items()}
    shared = EfficientViTSamPredictor(small_model)
    got = {}
    a_set, b_set, a_done = threading.Event(), threading.Event(), threading.Event()

    def thread_a():
        shared.set_image(imgs['a'])
        a_set.set()
        assert b_set.wait(30)
        got['a'] = shared.predict(SMALL_POINTS, SMALL_LABELS, return_logits=True)
        a_done.set()

    def thread_b():
        assert a_set.wait(30)
        shared.set_image(imgs['b'])
        b_set.set()
        assert a_done.wait(30)
        got['b'] = shared.predict(SMALL_POINTS, SMALL_LABELS, return_logits=True)

    run_threads(thread_a, thread_b)
    for k in imgs:
        assert_same(got[k], want[k])


@pytest.mark.slow
def test_threads_hammering_one_predictor_get_correct_results(small_model):
    """Two threads, different images and prompts, many set_image + predict rounds each, free-running: every
    result equals the single-threaded one (no other thread's masks, no IndexError)."""
    imgs = [make_image(3), make_image(4, (40, 56))]
    prompts = [dict(point_coords=SMALL_POINTS, point_labels=SMALL_LABELS), dict(box=np.array([5.0, 4.0, 40.0, 30.0]))]
    want = [single_threaded(small_model, im, **pr) for im, pr in zip(imgs, prompts)]
    shared = EfficientViTSamPredictor(small_model)
    wrong = []

    def worker(i):
        def run():
            for _ in range(5):
                shared.set_image(imgs[i])
                for _ in range(2):
                    got = shared.predict(return_logits=True, **prompts[i])
                    if got[0].shape != want[i][0].shape or np.abs(got[2] - want[i][2]).max() > 1e-6:
                        wrong.append(i)
        return run

    run_threads(worker(0), worker(1))
    assert not wrong, f'{len(wrong)} predictions returned another image\'s masks'


def test_threads_share_an_image_set_by_another_thread(small_model):
    """A thread that sets no image of its own predicts on the image set last (e.g. set in the main thread,
    prompted from a worker); reset_image in the setting thread clears it for them too."""
    img = make_image(5)
    want = single_threaded(small_model, img, point_coords=SMALL_POINTS, point_labels=SMALL_LABELS)
    p = EfficientViTSamPredictor(small_model)
    p.set_image(img)
    got = {}
    run_threads(lambda: got.update(r=p.predict(SMALL_POINTS, SMALL_LABELS, return_logits=True), n=p.num_images,
                                   size=p.original_size, emb=p.get_image_embedding()))
    assert_same(got['r'], want)
    assert got['n'] == 1 and got['size'] == img.shape[:2] and torch.equal(got['emb'], p.features)
    p.reset_image()
    run_threads(lambda: got.update(is_set=p.is_image_set))
    assert got['is_set'] is False


def test_one_mask_generator_shared_by_threads(small_model):
    """``generate`` from two threads on one mask generator gives each thread the records of its own image."""
    imgs = [make_image(6), make_image(7, (56, 44))]
    kw = dict(points_per_side=2, pred_iou_thresh=0.0, stability_score_thresh=0.0)
    want = [EfficientViTSamAutomaticMaskGenerator(small_model, **kw).generate(im) for im in imgs]
    assert all(want)
    shared = EfficientViTSamAutomaticMaskGenerator(small_model, **kw)
    got = [[], []]

    def worker(i):
        return lambda: [got[i].append(shared.generate(imgs[i])) for _ in range(2)]

    run_threads(worker(0), worker(1))
    for i in range(2):
        for records in got[i]:
            assert len(records) == len(want[i])
            for r, w in zip(records, want[i]):
                assert np.array_equal(r['segmentation'], w['segmentation'])
                assert r['predicted_iou'] == pytest.approx(w['predicted_iou'], abs=1e-6)


def test_predict_under_cpu_bf16_autocast(small_model):
    img = make_image(8)
    want = single_threaded(small_model, img, point_coords=SMALL_POINTS, point_labels=SMALL_LABELS)
    p = EfficientViTSamPredictor(small_model)
    with torch.autocast('cpu', dtype=torch.bfloat16):
        p.set_image(img)
        logits, iou, low = p.predict(SMALL_POINTS, SMALL_LABELS, return_logits=True)
        masks, _, _ = p.predict(SMALL_POINTS, SMALL_LABELS)
        t_masks, t_iou, t_low = p.predict_torch(
            torch.as_tensor(p.transform.apply_coords(SMALL_POINTS, img.shape[:2]))[None],
            torch.as_tensor(SMALL_LABELS)[None])
    assert logits.dtype == iou.dtype == low.dtype == np.float32 and masks.dtype == bool
    assert t_iou.dtype == t_low.dtype == torch.float32 and t_masks.dtype == torch.bool
    scale = np.abs(want[2]).max()
    assert np.abs(low - want[2]).max() < 0.1 * scale  # bf16 has ~3 significant digits
    assert np.abs(iou - want[1]).max() < 0.05
    assert (masks == (want[0] > 0)).mean() > 0.95
    # an image set under autocast, prompted without it (and the reverse)
    out = p.predict(SMALL_POINTS, SMALL_LABELS, return_logits=True)
    assert np.abs(out[2] - want[2]).max() < 0.1 * scale
    p.set_image(img)
    with torch.autocast('cpu', dtype=torch.bfloat16):
        out = p.predict(SMALL_POINTS, SMALL_LABELS, return_logits=True)
    assert out[2].dtype == np.float32 and np.abs(out[2] - want[2]).max() < 0.1 * scale


def test_amg_with_crops_and_no_mask_passing_returns_no_records(small_model):
    """crop_n_layers=1 and thresholds no mask passes: [] (segment_anything itself raised IndexError)."""
    amg = EfficientViTSamAutomaticMaskGenerator(small_model, points_per_side=1, crop_n_layers=1, pred_iou_thresh=1e6,
                                                stability_score_thresh=0.0)
    assert amg.generate(make_image(9)) == []


def test_amg_with_crops_where_only_some_crops_have_masks(small_model):
    """Crops without masks next to crops with masks: the records keep integer crop boxes."""
    img = make_image(10, (64, 96))
    amg = EfficientViTSamAutomaticMaskGenerator(small_model, points_per_side=1, crop_n_layers=1, pred_iou_thresh=0.0,
                                                stability_score_thresh=0.0, box_nms_thresh=1.0, crop_nms_thresh=1.0)
    original = amg._process_crop
    calls = []

    def every_other_crop_empty(image, crop_box, layer_idx, orig_size):
        calls.append(crop_box)
        data = original(image, crop_box, layer_idx, orig_size)
        if len(calls) % 2 == 0:
            data.filter(torch.zeros(len(data['rles']), dtype=torch.bool))
        return data

    amg._process_crop = every_other_crop_empty
    records = amg.generate(img)
    assert len(calls) == 5 and records
    assert all(all(isinstance(v, int) for v in r['crop_box']) for r in records)


@pytest.mark.parametrize('kwargs,match', [
    (dict(points_per_side=0), 'points_per_side must be a positive integer'),
    (dict(points_per_side=-3), 'points_per_side must be a positive integer'),
    (dict(points_per_side=2.5), 'points_per_side must be a positive integer'),
    (dict(points_per_batch=0), 'points_per_batch must be a positive integer'),
    (dict(crop_n_layers=-1), 'crop_n_layers must be a non-negative integer'),
    (dict(crop_n_points_downscale_factor=0), 'crop_n_points_downscale_factor must be a positive integer'),
    (dict(points_per_side=2, crop_n_layers=2, crop_n_points_downscale_factor=2),
     r'crop layer 2 would get 0 points per side \(2 // 2\*\*2\)'),
])
def test_amg_rejects_settings_that_crashed(small_model, kwargs, match):
    with pytest.raises(ValueError, match=match):
        EfficientViTSamAutomaticMaskGenerator(small_model, **kwargs)


def test_amg_keeps_segment_anything_checks(small_model):
    with pytest.raises(AssertionError):
        EfficientViTSamAutomaticMaskGenerator(small_model, points_per_side=None)
    grid = [np.array([[0.5, 0.5]])]
    amg = EfficientViTSamAutomaticMaskGenerator(small_model, points_per_side=None, point_grids=grid,
                                                pred_iou_thresh=0.0,
                                                stability_score_thresh=0.0)
    assert len(amg.generate(make_image(11))) >= 1


def test_padding_only_points_raise(small_model):
    p = EfficientViTSamPredictor(small_model)
    p.set_image(make_image(12))
    with pytest.raises(ValueError, match='only padding points'):
        p.predict(SMALL_POINTS, np.array([-1, -1]))
    with pytest.raises(ValueError, match=r'prompt set\(s\) \[1\]'):
        p.predict(np.stack([SMALL_POINTS, SMALL_POINTS]), np.array([[1, -1], [-1, -1]]))
    with pytest.raises(ValueError, match='only padding points'):
        p.predict_torch(torch.zeros(1, 3, 2), -torch.ones(1, 3))
    # padding next to a real prompt is what it is for
    masks, iou, _ = p.predict(SMALL_POINTS, np.array([1, -1]))
    assert masks.shape == (3, 48, 64) and np.isfinite(iou).all()
    masks, _, _ = p.predict(SMALL_POINTS, np.array([-1, -1]), box=np.array([5.0, 5.0, 40.0, 30.0]))
    assert masks.shape == (3, 48, 64)
    _, _, low = p.predict(box=np.array([5.0, 5.0, 40.0, 30.0]))
    masks, _, _ = p.predict(SMALL_POINTS, np.array([-1, -1]), mask_input=low[:1])
    assert masks.shape == (3, 48, 64)


def test_segment_anything_sam_predictor_on_an_l_model_fails_loudly(small_model):
    """segment_anything's SamPredictor resizes images *and prompts* to the encoder size (64 here, 512 for L0-L2),
    but the prompt encoder works in the 1024 frame: its masks would silently be wrong. They raise instead."""
    from segment_anything import SamAutomaticMaskGenerator, SamPredictor
    img = make_image(13)
    sam_predictor = SamPredictor(small_model)
    sam_predictor.set_image(img)
    with pytest.raises(ValueError, match='EfficientViTSamPredictor'):
        sam_predictor.predict(SMALL_POINTS, SMALL_LABELS)
    with pytest.raises(ValueError, match='EfficientViTSamPredictor'):
        SamAutomaticMaskGenerator(small_model, points_per_side=1).generate(img)


def test_transform_apply_image_feeds_set_torch_image(small_model):
    """As in segment_anything, ``predictor.transform.apply_image`` gives the image set_torch_image takes, and
    ``apply_coords``/``apply_boxes`` give the prompts predict_torch takes (the 1024 prompt frame)."""
    img = make_image(14, (30, 50))
    want = single_threaded(small_model, img, point_coords=SMALL_POINTS, point_labels=SMALL_LABELS)
    p = EfficientViTSamPredictor(small_model)
    resized = p.transform.apply_image(img)
    assert resized.shape == (38, 64, 3)  # longest side = the encoder size
    p.set_torch_image(torch.as_tensor(resized).permute(2, 0, 1)[None], img.shape[:2])
    coords = p.transform.apply_coords(SMALL_POINTS, img.shape[:2])
    assert np.allclose(coords, SMALL_POINTS * [1024 / 50, 614 / 30])  # the prompt frame: (614, 1024)
    masks, iou, low = p.predict_torch(torch.as_tensor(coords)[None], torch.as_tensor(SMALL_LABELS)[None],
                                      return_logits=True)
    assert_same((masks[0].numpy(), iou[0].numpy(), low[0].numpy()), want)
    assert np.allclose(p.transform.apply_boxes(np.array([[0.0, 0.0, 50.0, 30.0]]), img.shape[:2]),
                       [[0, 0, 1024, 614]])
    # the torch variant resizes (B, 3, H, W) batches to the encoder size as well
    t = p.transform.apply_image_torch(torch.as_tensor(img).permute(2, 0, 1)[None].float())
    assert t.shape == (1, 3, 38, 64)
    p.set_torch_image(t, img.shape[:2])
    assert p.input_size == (614, 1024)


def test_predictor_deepcopy_keeps_the_image(small_model):
    """The per-thread state does not stop copying a predictor (or a mask generator holding one)."""
    import copy
    img = make_image(15)
    p = EfficientViTSamPredictor(small_model)
    p.set_image(img)
    want = p.predict(SMALL_POINTS, SMALL_LABELS, return_logits=True)
    q = copy.deepcopy(p)
    assert q.is_image_set and q.original_size == img.shape[:2]
    assert_same(q.predict(SMALL_POINTS, SMALL_LABELS, return_logits=True), want, 1e-5)
    q.reset_image()
    assert p.is_image_set and not q.is_image_set
    seen = {}
    run_threads(lambda: seen.update(p=p.is_image_set, q=q.is_image_set))
    assert seen == {'p': True, 'q': False}
    generator = EfficientViTSamAutomaticMaskGenerator(small_model, points_per_side=1)
    assert copy.deepcopy(generator).predictor.model is not None
