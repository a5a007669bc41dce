"""EfficientViT-SAM predictor and mask generator on misuse and edge cases: threads sharing one predictor, CPU bf16
autocast, mask-generator settings that used to crash, padding-only prompts, segment_anything's own SamPredictor
wrapped around an L model, and ``predictor.transform.apply_image``.

A tiny L0 (random weights, randomised BatchNorm statistics) with a 64 px encoder input keeps every test fast; the
prompt frame stays 1024, so the encoder-vs-prompt frame handling is exercised at a 16x ratio.
"""
from __future__ import annotations

import threading

import numpy as np
import pytest
import torch

from evit_mm.models.sam import build_efficientvit_sam
from evit_mm.sam import EfficientViTSamAutomaticMaskGenerator, EfficientViTSamPredictor

from conftest import randomize_

SIZE = 64
POINTS = np.array([[20.0, 15.0], [45.0, 30.0]])
LABELS = np.array([1, 0])


@pytest.fixture(scope='module')
def model():
    torch.manual_seed(0)
    return randomize_(build_efficientvit_sam('l0', image_size=SIZE), what='batchnorm', bn_weights=True)


def make_image(seed: int, shape=(48, 64)) -> np.ndarray:
    """A smooth random RGB image (blurred noise plus a bright disc), different for every seed."""
    rng = np.random.default_rng(seed)
    h, w = shape
    img = rng.random((h // 8 + 1, w // 8 + 1, 3)).repeat(8, 0).repeat(8, 1)[:h, :w] * 160
    yy, xx = np.mgrid[:h, :w]
    cy, cx = rng.uniform(0.3, 0.7) * h, rng.uniform(0.3, 0.7) * w
    img[(yy - cy) ** 2 + (xx - cx) ** 2 < (min(h, w) / 4) ** 2] += 90
    return np.clip(img, 0, 255).astype(np.uint8)


def single_threaded(model, image, **prompt):
    p = EfficientViTSamPredictor(model)
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


# ----------------------------------------------------------------------------------------------------------------
# item 2: one predictor shared by threads
# ----------------------------------------------------------------------------------------------------------------

def test_threads_interleaving_set_image_and_predict_each_get_their_own_image(model):
    """A sets its image, B sets another, then A predicts: A gets the masks of its own image (per-thread state)."""
    imgs = {'a': make_image(1), 'b': make_image(2, (60, 40))}
    want = {k: single_threaded(model, im, point_coords=POINTS, point_labels=LABELS) for k, im in imgs.items()}
    shared = EfficientViTSamPredictor(model)
    got = {}
    a_set, b_set, a_done = threading.Event(), threading.Event(), threading.Event()

    def thread_a():
        shared.set_image(imgs['a'])
        a_set.set()
        assert b_set.wait(30)
        got['a'] = shared.predict(POINTS, LABELS, return_logits=True)
        a_done.set()

    def thread_b():
        assert a_set.wait(30)
        shared.set_image(imgs['b'])
        b_set.set()
        assert a_done.wait(30)
        got['b'] = shared.predict(POINTS, LABELS, return_logits=True)

    run_threads(thread_a, thread_b)
    for k in imgs:
        assert_same(got[k], want[k])


@pytest.mark.slow
def test_threads_hammering_one_predictor_get_correct_results(model):
    """Two threads, different images and prompts, many set_image + predict rounds each, free-running: every
    result equals the single-threaded one (no other thread's masks, no IndexError)."""
    imgs = [make_image(3), make_image(4, (40, 56))]
    prompts = [dict(point_coords=POINTS, point_labels=LABELS), dict(box=np.array([5.0, 4.0, 40.0, 30.0]))]
    want = [single_threaded(model, im, **pr) for im, pr in zip(imgs, prompts)]
    shared = EfficientViTSamPredictor(model)
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


def test_threads_share_an_image_set_by_another_thread(model):
    """A thread that sets no image of its own predicts on the image set last (e.g. set in the main thread,
    prompted from a worker); reset_image in the setting thread clears it for them too."""
    img = make_image(5)
    want = single_threaded(model, img, point_coords=POINTS, point_labels=LABELS)
    p = EfficientViTSamPredictor(model)
    p.set_image(img)
    got = {}
    run_threads(lambda: got.update(r=p.predict(POINTS, LABELS, return_logits=True), n=p.num_images,
                                   size=p.original_size, emb=p.get_image_embedding()))
    assert_same(got['r'], want)
    assert got['n'] == 1 and got['size'] == img.shape[:2] and torch.equal(got['emb'], p.features)
    p.reset_image()
    run_threads(lambda: got.update(is_set=p.is_image_set))
    assert got['is_set'] is False


def test_one_mask_generator_shared_by_threads(model):
    """``generate`` from two threads on one mask generator gives each thread the records of its own image."""
    imgs = [make_image(6), make_image(7, (56, 44))]
    kw = dict(points_per_side=2, pred_iou_thresh=0.0, stability_score_thresh=0.0)
    want = [EfficientViTSamAutomaticMaskGenerator(model, **kw).generate(im) for im in imgs]
    assert all(want)
    shared = EfficientViTSamAutomaticMaskGenerator(model, **kw)
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


# ----------------------------------------------------------------------------------------------------------------
# item 7: CPU bf16 autocast
# ----------------------------------------------------------------------------------------------------------------

def test_predict_under_cpu_bf16_autocast(model):
    img = make_image(8)
    want = single_threaded(model, img, point_coords=POINTS, point_labels=LABELS)
    p = EfficientViTSamPredictor(model)
    with torch.autocast('cpu', dtype=torch.bfloat16):
        p.set_image(img)
        logits, iou, low = p.predict(POINTS, LABELS, return_logits=True)
        masks, _, _ = p.predict(POINTS, LABELS)
        t_masks, t_iou, t_low = p.predict_torch(
            torch.as_tensor(p.transform.apply_coords(POINTS, img.shape[:2]))[None], torch.as_tensor(LABELS)[None])
    assert logits.dtype == iou.dtype == low.dtype == np.float32 and masks.dtype == bool
    assert t_iou.dtype == t_low.dtype == torch.float32 and t_masks.dtype == torch.bool
    scale = np.abs(want[2]).max()
    assert np.abs(low - want[2]).max() < 0.1 * scale  # bf16 has ~3 significant digits
    assert np.abs(iou - want[1]).max() < 0.05
    assert (masks == (want[0] > 0)).mean() > 0.95
    # an image set under autocast, prompted without it (and the reverse)
    out = p.predict(POINTS, LABELS, return_logits=True)
    assert np.abs(out[2] - want[2]).max() < 0.1 * scale
    p.set_image(img)
    with torch.autocast('cpu', dtype=torch.bfloat16):
        out = p.predict(POINTS, LABELS, return_logits=True)
    assert out[2].dtype == np.float32 and np.abs(out[2] - want[2]).max() < 0.1 * scale


# ----------------------------------------------------------------------------------------------------------------
# item 7: automatic mask generator settings
# ----------------------------------------------------------------------------------------------------------------

def test_amg_with_crops_and_no_mask_passing_returns_no_records(model):
    """crop_n_layers=1 and thresholds no mask passes: [] (segment_anything itself raised IndexError)."""
    amg = EfficientViTSamAutomaticMaskGenerator(model, points_per_side=1, crop_n_layers=1, pred_iou_thresh=1e6,
                                                stability_score_thresh=0.0)
    assert amg.generate(make_image(9)) == []


def test_amg_with_crops_where_only_some_crops_have_masks(model):
    """Crops without masks next to crops with masks: the records keep integer crop boxes."""
    img = make_image(10, (64, 96))
    amg = EfficientViTSamAutomaticMaskGenerator(model, points_per_side=1, crop_n_layers=1, pred_iou_thresh=0.0,
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
def test_amg_rejects_settings_that_crashed(model, kwargs, match):
    with pytest.raises(ValueError, match=match):
        EfficientViTSamAutomaticMaskGenerator(model, **kwargs)


def test_amg_keeps_segment_anything_checks(model):
    with pytest.raises(AssertionError):
        EfficientViTSamAutomaticMaskGenerator(model, points_per_side=None)
    grid = [np.array([[0.5, 0.5]])]
    amg = EfficientViTSamAutomaticMaskGenerator(model, points_per_side=None, point_grids=grid, pred_iou_thresh=0.0,
                                                stability_score_thresh=0.0)
    assert len(amg.generate(make_image(11))) >= 1


# ----------------------------------------------------------------------------------------------------------------
# item 7: prompts made only of padding points
# ----------------------------------------------------------------------------------------------------------------

def test_padding_only_points_raise(model):
    p = EfficientViTSamPredictor(model)
    p.set_image(make_image(12))
    with pytest.raises(ValueError, match='only padding points'):
        p.predict(POINTS, np.array([-1, -1]))
    with pytest.raises(ValueError, match=r'prompt set\(s\) \[1\]'):
        p.predict(np.stack([POINTS, POINTS]), np.array([[1, -1], [-1, -1]]))
    with pytest.raises(ValueError, match='only padding points'):
        p.predict_torch(torch.zeros(1, 3, 2), -torch.ones(1, 3))
    # padding next to a real prompt is what it is for
    masks, iou, _ = p.predict(POINTS, np.array([1, -1]))
    assert masks.shape == (3, 48, 64) and np.isfinite(iou).all()
    masks, _, _ = p.predict(POINTS, np.array([-1, -1]), box=np.array([5.0, 5.0, 40.0, 30.0]))
    assert masks.shape == (3, 48, 64)
    _, _, low = p.predict(box=np.array([5.0, 5.0, 40.0, 30.0]))
    masks, _, _ = p.predict(POINTS, np.array([-1, -1]), mask_input=low[:1])
    assert masks.shape == (3, 48, 64)


# ----------------------------------------------------------------------------------------------------------------
# item 7: frames: segment_anything's SamPredictor, predictor.transform
# ----------------------------------------------------------------------------------------------------------------

def test_segment_anything_sam_predictor_on_an_l_model_fails_loudly(model):
    """segment_anything's SamPredictor resizes images *and prompts* to the encoder size (64 here, 512 for L0-L2),
    but the prompt encoder works in the 1024 frame: its masks would silently be wrong. They raise instead."""
    from segment_anything import SamAutomaticMaskGenerator, SamPredictor
    img = make_image(13)
    sam_predictor = SamPredictor(model)
    sam_predictor.set_image(img)
    with pytest.raises(ValueError, match='EfficientViTSamPredictor'):
        sam_predictor.predict(POINTS, LABELS)
    with pytest.raises(ValueError, match='EfficientViTSamPredictor'):
        SamAutomaticMaskGenerator(model, points_per_side=1).generate(img)


def test_transform_apply_image_feeds_set_torch_image(model):
    """As in segment_anything, ``predictor.transform.apply_image`` gives the image set_torch_image takes, and
    ``apply_coords``/``apply_boxes`` give the prompts predict_torch takes (the 1024 prompt frame)."""
    img = make_image(14, (30, 50))
    want = single_threaded(model, img, point_coords=POINTS, point_labels=LABELS)
    p = EfficientViTSamPredictor(model)
    resized = p.transform.apply_image(img)
    assert resized.shape == (38, 64, 3)  # longest side = the encoder size
    p.set_torch_image(torch.as_tensor(resized).permute(2, 0, 1)[None], img.shape[:2])
    coords = p.transform.apply_coords(POINTS, img.shape[:2])
    assert np.allclose(coords, POINTS * [1024 / 50, 614 / 30])  # the prompt frame: (614, 1024)
    masks, iou, low = p.predict_torch(torch.as_tensor(coords)[None], torch.as_tensor(LABELS)[None],
                                      return_logits=True)
    assert_same((masks[0].numpy(), iou[0].numpy(), low[0].numpy()), want)
    assert np.allclose(p.transform.apply_boxes(np.array([[0.0, 0.0, 50.0, 30.0]]), img.shape[:2]),
                       [[0, 0, 1024, 614]])
    # the torch variant resizes (B, 3, H, W) batches to the encoder size as well
    t = p.transform.apply_image_torch(torch.as_tensor(img).permute(2, 0, 1)[None].float())
    assert t.shape == (1, 3, 38, 64)
    p.set_torch_image(t, img.shape[:2])
    assert p.input_size == (614, 1024)


def test_predictor_deepcopy_keeps_the_image(model):
    """The per-thread state does not stop copying a predictor (or a mask generator holding one)."""
    import copy
    img = make_image(15)
    p = EfficientViTSamPredictor(model)
    p.set_image(img)
    want = p.predict(POINTS, LABELS, return_logits=True)
    q = copy.deepcopy(p)
    assert q.is_image_set and q.original_size == img.shape[:2]
    assert_same(q.predict(POINTS, LABELS, return_logits=True), want, 1e-5)
    q.reset_image()
    assert p.is_image_set and not q.is_image_set
    seen = {}
    run_threads(lambda: seen.update(p=p.is_image_set, q=q.is_image_set))
    assert seen == {'p': True, 'q': False}
    assert copy.deepcopy(EfficientViTSamAutomaticMaskGenerator(model, points_per_side=1)).predictor.model is not None
