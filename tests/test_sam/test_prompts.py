"""evit_mm.sam.prompts: the one SAM prompt type (SamPrompts), its frame transform (PromptFrame) and the padding of
ragged point sets, and the four places that use it (predictor, training, zero-shot adapter and evaluation,
ONNX inputs)."""
import numpy as np
import pytest
import torch
from segment_anything.utils.transforms import ResizeLongestSide

from conftest import randomize_
from evit_mm.models.sam import build_efficientvit_sam
from evit_mm.sam.prompts import PAD_LABEL, VALID_POINT_LABELS, PromptFrame, SamPrompts, pad_point_sets

SIZES = [(300, 451), (451, 300), (1, 1), (7, 1500), (1024, 1024), (333, 1024), (2000, 3)]


# ----------------------------------------------------------------------------------------------------------------
# frame transform
# ----------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize('size', SIZES)
def test_frame_is_segment_anythings_resize_longest_side_bit_for_bit(size):
    rng = np.random.default_rng(sum(size))
    coords = rng.uniform(-50, 2 * max(size), (3, 5, 2))
    boxes = np.sort(rng.uniform(0, max(size), (6, 2, 2)), axis=1).reshape(6, 4)
    sam = ResizeLongestSide(1024)
    frame = PromptFrame.of_image(size, 1024)
    got = frame.points(coords)
    assert got.dtype == np.float64 and np.array_equal(got, sam.apply_coords(coords, size))
    assert np.array_equal(frame.boxes(boxes), sam.apply_boxes(boxes, size))
    # tensors: float32 arithmetic, as apply_coords_torch (float64 input included)
    for t in (torch.as_tensor(coords, dtype=torch.float32), torch.as_tensor(coords)):
        got = frame.points(t)
        assert got.dtype == torch.float32 and torch.equal(got, sam.apply_coords_torch(t, size))
    tb = torch.as_tensor(boxes, dtype=torch.float32)
    assert torch.equal(frame.boxes(tb), sam.apply_boxes_torch(tb, size))


def test_frame_copies_its_input_and_takes_lists():
    coords = np.array([[10.0, 20.0]])
    t = torch.tensor([[10.0, 20.0]])
    frame = PromptFrame.of_image((100, 200), 1024)  # 100x200 -> 512x1024: scale 5.12 both ways
    assert frame.sx == 1024 / 200 and frame.sy == 512 / 100
    np.testing.assert_array_equal(frame.points([[10, 20]]), [[51.2, 102.4]])
    frame.points(coords)
    frame.points(t)
    assert coords.tolist() == [[10.0, 20.0]] and t.tolist() == [[10.0, 20.0]]
    assert frame.boxes([1, 2, 3, 4]).shape == (1, 4)


def test_square_frame_maps_pixel_centres_and_pixel_boxes():
    frame = PromptFrame.of_square(64, 1024)  # the training pipeline's 64-px encoder square: x16
    assert frame.sx == frame.sy == 16.0
    xs, ys = np.array([0, 3, 63]), np.array([5, 0, 63])
    # pixel x covers [16x, 16x + 16): its centre is 16x + 8, minus the 0.5 the prompt encoder adds back
    np.testing.assert_array_equal(frame.pixel_centres(xs, ys), [[7.5, 87.5], [55.5, 7.5], [1015.5, 1015.5]])
    assert frame.pixel_box(xs, ys) == [0.0, 0.0, 1024.0, 1024.0]
    assert frame.pixel_box(np.array([2, 4]), np.array([1, 1])) == [32.0, 16.0, 80.0, 32.0]


# ----------------------------------------------------------------------------------------------------------------
# padding and batching
# ----------------------------------------------------------------------------------------------------------------

def test_ragged_point_sets_are_padded_with_ignored_points():
    sets = [np.array([[1.0, 2.0]]), np.array([[3.0, 4.0], [5.0, 6.0], [7.0, 8.0]]), np.zeros((0, 2))]
    labels = [np.array([1]), np.array([1, 0, 1]), np.zeros(0, int)]
    coords, labs = pad_point_sets(sets, labels)
    assert coords.shape == (3, 3, 2) and coords.dtype == np.float64
    assert labs.shape == (3, 3) and labs.dtype == np.int64
    np.testing.assert_array_equal(labs, [[1, PAD_LABEL, PAD_LABEL], [1, 0, 1], [PAD_LABEL] * 3])
    np.testing.assert_array_equal(coords[0], [[1, 2], [0, 0], [0, 0]])
    np.testing.assert_array_equal(coords[1], sets[1])
    assert not coords[2].any()
    assert PAD_LABEL == -1 and PAD_LABEL in VALID_POINT_LABELS


def test_equal_point_sets_are_stacked_unchanged():
    rng = np.random.default_rng(0)
    sets = [rng.uniform(0, 99, (4, 2)) for _ in range(5)]
    labels = [rng.integers(0, 2, 4) for _ in range(5)]
    coords, labs = pad_point_sets(sets, labels)
    assert np.array_equal(coords, np.stack(sets)) and np.array_equal(labs, np.stack(labels))
    empty = pad_point_sets([], [])
    assert empty[0].shape == (0, 0, 2) and empty[1].shape == (0, 0)


def test_pad_point_sets_rejects_mismatches():
    with pytest.raises(ValueError, match='2 point sets but 1 label sets'):
        pad_point_sets([np.zeros((1, 2))] * 2, [[1]])
    with pytest.raises(ValueError, match='point set 1: 2 points but 1 labels'):
        pad_point_sets([np.zeros((1, 2)), np.zeros((2, 2))], [[1], [1]])


def test_split_into_chunks_and_batch_size():
    p = SamPrompts(point_coords=torch.arange(7 * 2 * 2.0).reshape(7, 2, 2), point_labels=torch.ones(7, 2),
                   boxes=torch.arange(7 * 4.0).reshape(7, 4))
    assert p.batch_size == 7 and SamPrompts().batch_size == 0
    chunks = list(p.split(3))
    assert [c.batch_size for c in chunks] == [3, 3, 1]
    assert torch.equal(torch.cat([c.boxes for c in chunks]), p.boxes)
    assert torch.equal(torch.cat([c.point_coords for c in chunks]), p.point_coords)
    assert all(c.mask_input is None for c in chunks)
    assert list(SamPrompts().split(4)) == []
    with pytest.raises(ValueError, match='chunk size'):
        list(p.split(0))


# ----------------------------------------------------------------------------------------------------------------
# numpy prompts (SamPredictor.predict's input)
# ----------------------------------------------------------------------------------------------------------------

ORIG = (300, 451)


def arrays(**kw):
    return SamPrompts.from_arrays(original_size=ORIG, **kw)


def test_from_arrays_moves_to_the_prompt_frame_like_segment_anything():
    pts, box = np.array([[150.0, 120.0], [300.5, 60.25]]), np.array([60.0, 30.0, 320.0, 280.0])
    p = arrays(point_coords=pts, point_labels=[1, 0], box=box)
    sam = ResizeLongestSide(1024)
    # what SamPredictor.predict hands to predict_torch: float64 arithmetic, then float32 tensors
    want_pts = torch.as_tensor(sam.apply_coords(pts, ORIG), dtype=torch.float)[None]
    want_box = torch.as_tensor(sam.apply_boxes(box, ORIG), dtype=torch.float)
    assert torch.equal(p.point_coords, want_pts) and torch.equal(p.boxes, want_box)
    assert p.point_labels.dtype == torch.int32 and p.point_labels.tolist() == [[1, 0]]
    assert p.mask_input is None and not p.batched


@pytest.mark.parametrize('kwargs,batched,b', [
    (dict(point_coords=np.zeros((2, 2)), point_labels=[1, 1]), False, 1),
    (dict(point_coords=np.zeros((3, 2, 2)), point_labels=np.ones((3, 2))), True, 3),
    (dict(box=[1, 2, 3, 4]), False, 1),
    (dict(box=[[1, 2, 3, 4]]), False, 1),
    (dict(box=[[1, 2, 3, 4]] * 2), True, 2),
    (dict(mask_input=np.zeros((256, 256))), False, 1),
    (dict(mask_input=np.zeros((1, 256, 256))), False, 1),
    (dict(mask_input=np.zeros((2, 1, 256, 256))), True, 2),
    (dict(point_coords=torch.zeros(1, 2), point_labels=torch.ones(1)), False, 1),
])
def test_from_arrays_adds_the_prompt_set_dimension(kwargs, batched, b):
    p = arrays(**kwargs)
    assert p.batched is batched and p.batch_size == b
    if p.mask_input is not None:
        assert p.mask_input.shape == (b, 1, 256, 256)


def test_empty_arrays_count_as_not_given():
    p = arrays(point_coords=np.zeros((0, 2)), point_labels=np.zeros(0), box=np.zeros((0, 4)))
    assert p.point_coords is None and p.point_labels is None and p.boxes is None and p.batch_size == 0
    assert arrays(point_labels=[]).point_labels is None


@pytest.mark.parametrize('kwargs,match', [
    (dict(point_labels=[1]), 'point_labels given without point_coords'),
    (dict(point_coords=[[1, 2]]), 'point_labels must be supplied if point_coords is supplied.'),
    (dict(point_coords=[[1, 2], [3, 4]], point_labels=[1]), 'one label per point'),
    (dict(point_coords=[1, 2], point_labels=[1]), r'\(N, 2\) or \(B, N, 2\), got \(2,\)'),
    (dict(point_coords=[[1, 2]], point_labels=[0.5]), 'point_labels must be integers'),
    (dict(point_coords=[[1, 2]], point_labels=[np.nan]), 'point_labels must be integers'),
    (dict(box=[1, 2, 3]), r'box must be \(4,\) or \(B, 4\) XYXY, got \(3,\)'),
    (dict(point_coords=np.zeros((0, 2)), point_labels=[1]), 'point_coords is empty but point_labels has 1'),
    (dict(point_coords='abc', point_labels=[1]), 'point_coords must be a numeric array, got str'),
    (dict(box=[object()]), 'box must be a numeric array'),
])
def test_from_arrays_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        arrays(**kwargs)


# ----------------------------------------------------------------------------------------------------------------
# checks (predict_torch's input)
# ----------------------------------------------------------------------------------------------------------------

IN = (683, 1024)  # ORIG in the prompt frame


def checked(**kw):
    return SamPrompts(**kw).checked(IN)


@pytest.mark.parametrize('kwargs,match', [
    (dict(point_labels=torch.ones(1, 1)), 'point_labels given without point_coords'),
    (dict(point_coords=torch.zeros(1, 1, 2)), 'point_labels must be supplied'),
    (dict(point_coords=torch.zeros(1, 2), point_labels=torch.ones(1)), r'must be \(B, N, 2\), got \(1, 2\)'),
    (dict(point_coords=torch.zeros(1, 2, 2), point_labels=torch.ones(1, 3)), r'expected \(B, N\)'),
    (dict(point_coords=torch.tensor([[[np.inf, 1.0]]]), point_labels=torch.ones(1, 1)), 'NaN or infinite'),
    (dict(point_coords=torch.zeros(1, 1, 2), point_labels=torch.tensor([[0.5]])), 'must be integers'),
    (dict(point_coords=torch.zeros(1, 2, 2), point_labels=torch.tensor([[1, 7]])),
     r'must be in \(-1, 0, 1, 2, 3\) \(1 foreground, 0 background\), got \[7\]'),
    (dict(boxes=torch.zeros(1, 3)), r'boxes must be \(B, 4\) XYXY'),
    (dict(boxes=torch.tensor([[0.0, np.nan, 1, 1]])), 'boxes contain NaN'),
    (dict(boxes=torch.tensor([[10.0, 0, 5, 5]])), 'x0 <= x1 and y0 <= y1'),
    (dict(boxes=torch.tensor([[0.0, 700, 5, 800], [0, 0, 1, 1]])), r'^1 box\(es\) lie entirely outside the image'),
    (dict(boxes=torch.tensor([[1025.0, 0, 1100, 5]])), 'entirely outside'),
    (dict(mask_input=torch.zeros(1, 256, 256)), r'mask_input must be \(B, 1, 256, 256\) low-res logits'),
    (dict(mask_input=torch.full((1, 1, 256, 256), np.nan)), 'mask_input contains NaN'),
    (dict(), 'no prompt given'),
    (dict(point_coords=torch.zeros(1, 0, 2), point_labels=torch.zeros(1, 0)), 'no prompt given'),
    (dict(boxes=torch.zeros(2, 4), mask_input=torch.zeros(3, 1, 256, 256)), r'batch size B: \[2, 3\]'),
    (dict(point_coords=torch.zeros(2, 1, 2), point_labels=torch.tensor([[1], [-1]])),
     r'prompt set\(s\) \[1\] hold only padding points'),
])
def test_checks_and_their_messages(kwargs, match):
    with pytest.raises(ValueError, match=match):
        checked(**kwargs)


def test_checked_normalises_clips_and_keeps_the_rest():
    p = checked(point_coords=torch.tensor([[[-5.0, 2000.0]]], dtype=torch.float64),
                point_labels=torch.tensor([[1]], dtype=torch.int64),
                boxes=torch.tensor([[[-10.0, 5.0, 2000.0, 700.0]]]))
    assert p.point_coords.dtype == torch.float32 and p.point_labels.dtype == torch.int32
    assert p.point_coords.tolist() == [[[-5.0, 2000.0]]]  # points outside the image are SAM's business
    assert p.boxes.tolist() == [[0.0, 5.0, 1024.0, 683.0]]  # (B, 1, 4) -> (B, 4), clipped to the image
    # padding next to a box is allowed; padding-only sets only raise without box or mask input
    checked(point_coords=torch.zeros(1, 1, 2), point_labels=-torch.ones(1, 1), boxes=torch.tensor([[1.0, 1, 9, 9]]))
    checked(point_coords=torch.zeros(1, 1, 2), point_labels=-torch.ones(1, 1), mask_input=torch.zeros(1, 1, 256, 256))
    p = checked(point_coords=torch.zeros(1, 0, 2), point_labels=torch.zeros(1, 0), boxes=torch.zeros(0, 4),
                mask_input=torch.zeros(1, 1, 256, 256))
    assert p.point_coords is None and p.boxes is None and p.batch_size == 1
    assert SamPrompts(mask_input=torch.zeros(1, 1, 64, 64)).checked(IN, (64, 64)).mask_input.shape == (1, 1, 64, 64)


def test_encode_hands_the_prompts_to_the_prompt_encoder():
    calls = []

    def encoder(points, boxes, masks):
        calls.append((points, boxes, masks))
        return 'sparse', 'dense'

    c, lab, b = torch.zeros(1, 1, 2), torch.ones(1, 1), torch.zeros(1, 4)
    assert SamPrompts(c, lab, b).encode(encoder) == ('sparse', 'dense')
    assert calls[-1][0][0] is c and calls[-1][0][1] is lab and calls[-1][1] is b and calls[-1][2] is None
    SamPrompts(boxes=b).encode(encoder)
    assert calls[-1] == (None, b, None)


def test_from_sample_reads_training_fields():
    from mmengine.structures import BaseDataElement
    s = BaseDataElement(boxes=torch.zeros(3, 4))
    p = SamPrompts.from_sample(s)
    assert p.boxes is s.boxes and p.point_coords is None and p.point_labels is None and p.mask_input is None
    s = BaseDataElement(point_coords=torch.zeros(3, 2, 2), point_labels=torch.ones(3, 2))
    p = SamPrompts.from_sample(s)
    assert p.point_coords is s.point_coords and p.point_labels is s.point_labels and p.boxes is None


# ----------------------------------------------------------------------------------------------------------------
# ONNX layout
# ----------------------------------------------------------------------------------------------------------------

def _notebook_inputs(original_size, point_coords=None, point_labels=None, box=None, mask_input=None):
    """segment-anything's ONNX notebook's recipe, written out (what decoder_inputs returned before SamPrompts)."""
    coords = np.zeros((0, 2)) if point_coords is None else np.asarray(point_coords, np.float64).reshape(-1, 2)
    labels = np.zeros(0) if point_labels is None else np.asarray(point_labels, np.float64).reshape(-1)
    if box is not None:
        coords = np.concatenate([coords, np.asarray(box, np.float64).reshape(2, 2)])
        labels = np.concatenate([labels, [2.0, 3.0]])
    else:
        coords = np.concatenate([coords, [[0.0, 0.0]]])
        labels = np.concatenate([labels, [-1.0]])
    coords = ResizeLongestSide(1024).apply_coords(coords, original_size)
    return {'point_coords': coords[None].astype(np.float32), 'point_labels': labels[None].astype(np.float32),
            'mask_input': (np.zeros((1, 1, 256, 256), np.float32) if mask_input is None
                           else np.asarray(mask_input, np.float32).reshape(1, 1, 256, 256)),
            'has_mask_input': np.array([0.0 if mask_input is None else 1.0], np.float32),
            'orig_im_size': np.array(original_size, np.float32)}


@pytest.mark.parametrize('kw', [
    dict(point_coords=[[150.3, 120.7], [300.0, 60.0]], point_labels=[1, 0]),
    dict(box=[60.2, 30.0, 320.0, 280.9]),
    dict(point_coords=[[150.0, 120.0]], point_labels=[1], box=[60.0, 30.0, 320.0, 280.0]),
    dict(point_coords=[[1.0, 2.0]], point_labels=[1], mask_input=np.linspace(-3, 3, 256 * 256).reshape(1, 256, 256)),
    dict(),
])
def test_decoder_inputs_are_the_notebooks(kw):
    from evit_mm.sam.onnx import decoder_inputs
    emb = torch.randn(1, 256, 64, 64)
    got = decoder_inputs(ORIG, emb, **kw)
    want = _notebook_inputs(ORIG, **kw)
    assert list(got) == list(want) + ['image_embeddings']
    for k, v in want.items():
        assert got[k].dtype == v.dtype and np.array_equal(got[k], v), k
    assert np.array_equal(got['image_embeddings'], emb.numpy())
    with pytest.raises(ValueError, match='one prompt set'):
        decoder_inputs(ORIG, box=[[1, 2, 3, 4]] * 2)


# ----------------------------------------------------------------------------------------------------------------
# the users: predictor, training pipeline, zero-shot adapter
# ----------------------------------------------------------------------------------------------------------------

@pytest.fixture(scope='module')
def model():
    torch.manual_seed(0)
    return randomize_(build_efficientvit_sam('l0', image_size=128), what='batchnorm', bn_weights=True).eval()


def _image(seed, shape=(90, 120)):
    return np.random.default_rng(seed).integers(0, 256, (*shape, 3), dtype=np.uint8)


def test_predictor_on_padded_ragged_point_sets(model):
    """Ragged click sets, padded and predicted as one batch, give each set what it gives alone (padded the same
    way); padding changes SAM's answer, so it is not silently dropped either."""
    from evit_mm.sam import EfficientViTSamPredictor
    p = EfficientViTSamPredictor(model)
    p.set_image(_image(1))
    sets = [np.array([[30.0, 40.0]]), np.array([[60.0, 20.0], [10.0, 80.0], [100.0, 50.0]])]
    labels = [np.array([1]), np.array([1, 0, 1])]
    coords, labs = pad_point_sets(sets, labels)
    masks, iou, low = p.predict(coords, labs, return_logits=True)
    assert masks.shape == (2, 3, 90, 120) and labs[0].tolist() == [1, -1, -1]
    for i in range(2):
        alone = p.predict(coords[i], labs[i], return_logits=True)
        np.testing.assert_allclose(low[i], alone[2], atol=1e-4)
        np.testing.assert_allclose(iou[i], alone[1], atol=1e-5)
    unpadded = p.predict(sets[0], labels[0], return_logits=True)[2]
    assert np.abs(unpadded - low[0]).max() > 1e-3


def test_predict_and_predict_torch_agree(model):
    """predict (numpy, original pixels) and predict_torch (prompt frame) run the same checked prompts."""
    from evit_mm.sam import EfficientViTSamPredictor
    p = EfficientViTSamPredictor(model)
    p.set_image(_image(2))
    box = np.array([10.0, 5.0, 80.0, 70.0])
    want = p.predict(box=box, return_logits=True)
    t = torch.as_tensor(p.transform.apply_boxes(box, p.original_size), dtype=torch.float)
    got = p.predict_torch(boxes=t, return_logits=True)
    for g, w in zip(got, want):
        assert np.array_equal(g[0].numpy(), w)
    assert not got[2].requires_grad


def test_training_prompts_are_the_old_arithmetic():
    """SamSamplePrompts draws the same numbers as before the prompt-frame arithmetic moved to PromptFrame."""
    from evit_mm.sam.training.pipeline import SamSamplePrompts
    masks = np.zeros((3, 64, 64), np.uint8)
    masks[0, 5:20, 7:30] = 255
    masks[1, 40:41, 2:60] = 90  # a sliver below 50%: its strongest pixels
    masks[2, 30:64, 50:64] = 200
    t = SamSamplePrompts(max_points=6)
    seen = set()
    for seed in range(8):
        got = t({'gt_masks': masks, 'rng': np.random.default_rng(seed)})
        rng = np.random.default_rng(seed)  # the old code, written out
        use_box = bool(rng.random() < 0.5)
        rng.random()
        num_points = int(rng.integers(1, 7))
        scale = 1024 / 64
        boxes, points = [], []
        for m in masks:
            ys, xs = np.nonzero(m >= 128)
            if len(xs) == 0:
                ys, xs = np.nonzero(m == m.max())
            if use_box:
                boxes.append([xs.min() * scale, ys.min() * scale, (xs.max() + 1) * scale, (ys.max() + 1) * scale])
            else:
                pick = rng.choice(len(xs), num_points, replace=len(xs) < num_points)
                points.append(np.stack([(xs[pick] + 0.5) * scale - 0.5, (ys[pick] + 0.5) * scale - 0.5], -1))
        if use_box:
            seen.add('box')
            assert got['boxes'].dtype == np.float32 and np.array_equal(got['boxes'], np.asarray(boxes, np.float32))
        else:
            seen.add('points')
            want = np.asarray(points, np.float32)
            assert got['point_coords'].dtype == np.float32 and np.array_equal(got['point_coords'], want)
            assert got['point_labels'].dtype == np.int64 and np.array_equal(got['point_labels'],
                                                                           np.ones(want.shape[:2], np.int64))
    assert seen == {'box', 'points'}


def test_zero_shot_adapter_prompts_and_embedding_cache(model):
    """SamAdapter maps prompts as apply_*_torch + predict_torch did, in chunks; a cached image gets its own
    embedding back (EfficientViTSamPredictor keeps its image per thread: restoring attributes did not)."""
    from evit_mm.sam.zero_shot import SamAdapter
    a = SamAdapter.from_model(model, batch_size=2, cache_size=2)
    im1, im2 = _image(3), _image(4, (70, 50))
    boxes = np.array([[10.0, 5.0, 80.0, 70.0], [0.0, 0.0, 30.0, 30.0], [50.0, 40.0, 119.0, 89.0]])
    a.set_image(im1, 1, 'one')
    m1, s1 = a.predict(boxes=boxes)
    p = a.predictor
    t = p.transform.apply_boxes_torch(torch.as_tensor(boxes, dtype=torch.float32), p.original_size)
    want = [p.predict_torch(boxes=t[s:s + 2], multimask_output=True) for s in (0, 2)]  # chunks of batch_size
    assert np.array_equal(m1, torch.cat([w[0] for w in want]).numpy())
    assert np.array_equal(s1, torch.cat([w[1] for w in want]).numpy())
    clicks = pad_point_sets([np.array([[20.0, 30.0]]), np.array([[60.0, 50.0]])], [[1], [1]])
    mc, sc = a.predict(point_coords=clicks[0], point_labels=clicks[1])
    c = p.transform.apply_coords_torch(torch.as_tensor(clicks[0], dtype=torch.float32), p.original_size)
    wm, ws, _ = p.predict_torch(c, torch.as_tensor(clicks[1], dtype=torch.int), multimask_output=True)
    assert np.array_equal(mc, wm.numpy()) and np.array_equal(sc, ws.numpy())

    a.set_image(im2, 2, 'two')
    a.predict(boxes=boxes[:1])
    a.set_image(im1, 1, 'one')
    assert a.encoder_calls == 2
    m3, s3 = a.predict(boxes=boxes)
    assert np.array_equal(m3, m1) and np.array_equal(s3, s1)
    assert m3.shape[-2:] == im1.shape[:2]


def test_old_zero_shot_builder_name_warns():
    import evit_mm.sam.zero_shot as zs
    with pytest.warns(DeprecationWarning, match='build_zero_shot_sam'):
        from evit_mm.sam.zero_shot import build_sam_model
    assert build_sam_model is zs.build_zero_shot_sam
    with pytest.raises(AttributeError):
        zs.no_such_name
