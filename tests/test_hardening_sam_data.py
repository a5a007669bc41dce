"""Hardening of SAM's annotation decoding and of the zero-shot tool, on real and deliberately bad inputs.

* Bad segmentations (a polygon coordinate of 1e9, RLE runs summing past height x width) in SA-1B / COCO training
  data and in zero-shot ground truth are counted and skipped, naming the annotation id, **before pycocotools
  sees them**: the ``guarded_pycocotools`` fixture makes pycocotools fail the test (instead of crashing the
  process) if it is ever handed such data.
* The zero-shot tool fails a run that evaluated no image; the clicker's stopping and tie rules; the oracle on
  nested masks.
"""
import json

import numpy as np
import pytest

from conftest import load_tool

from evit_mm.sam.coco_masks import BadAnnotation, decode_segmentation, polygon_margin, rle_counts

H, W = 64, 80  # the test image: a crop of skimage's astronaut
HUGE = 1e9  # a polygon coordinate that crashes pycocotools (1e7 makes it allocate > 1 GB for a small mask)


def _encode(mask):
    from pycocotools import mask as mask_utils
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {'size': [int(v) for v in rle['size']], 'counts': rle['counts'].decode('ascii')}


def rect(shape, y0, y1, x0, x1):
    m = np.zeros(shape, bool)
    m[y0:y1 + 1, x0:x1 + 1] = True
    return m


def overflowing_rle():
    """A compressed RLE labelled ``[H, W]`` whose runs add up to H x (W + 1): a valid encoding of a wider mask."""
    rle = _encode(rect((H, W + 1), 10, 20, 10, 30))
    assert sum(rle_counts(rle['counts'])) == H * (W + 1)
    return {'size': [H, W], 'counts': rle['counts']}


@pytest.fixture
def guarded_pycocotools(monkeypatch):
    """pycocotools that raises AssertionError, instead of crashing, when asked to draw a polygon coordinate beyond
    1e5 or to decode an RLE whose runs do not add up to height x width. Returns the list of its calls."""
    from pycocotools import mask as mask_utils
    fr_py_objects, decode, calls = mask_utils.frPyObjects, mask_utils.decode, []

    def guarded_fr_py_objects(obj, h, w):
        if isinstance(obj, list) and obj and isinstance(obj[0], list):
            assert all(abs(v) < 1e5 for poly in obj for v in poly), f'pycocotools got polygon {obj}'
        calls.append(('frPyObjects', obj))
        return fr_py_objects(obj, h, w)

    def guarded_decode(rle):
        for r in (rle if isinstance(rle, list) else [rle]):
            counts = r['counts'].decode() if isinstance(r['counts'], bytes) else r['counts']
            assert sum(rle_counts(counts)) == r['size'][0] * r['size'][1], f'pycocotools got RLE {r}'
        calls.append(('decode', rle))
        return decode(rle)

    monkeypatch.setattr(mask_utils, 'frPyObjects', guarded_fr_py_objects)
    monkeypatch.setattr(mask_utils, 'decode', guarded_decode)
    return calls


def write_image(folder, name='img.png'):
    from PIL import Image
    from skimage import data
    image = data.astronaut()[:H, :W]
    Image.fromarray(image).save(folder / name)
    return image


# ----------------------------------------------------------------------------------------------------------------
# item 1: the shared check (evit_mm.sam.coco_masks), used by training and by the zero-shot evaluation
# ----------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize('x, y', [(HUGE, 10), (10, -HUGE), (1e7, 1e7), (W + polygon_margin(W) + 1, 10),
                                  (10, -polygon_margin(H) - 0.5)])
def test_polygon_far_outside_the_image_is_rejected_before_pycocotools(guarded_pycocotools, x, y):
    with pytest.raises(BadAnnotation, match=f'outside the {W}x{H} image'):
        decode_segmentation([[1, 1, 20, 1, x, y, 1, 20]], H, W)
    assert guarded_pycocotools == []


def test_polygon_slightly_outside_the_image_decodes_as_pycocotools_does(guarded_pycocotools):
    """Vertices within the margin (max(4 px, 5 % of the side)) go to pycocotools unchanged; it clips to the image."""
    from pycocotools import mask as mask_utils
    assert polygon_margin(W) == 4 and polygon_margin(1000) == 50
    poly = [-3.5, -1, W + 4, -1, W + 4, H + 0.5, -3.5, H + 0.5]
    mask = decode_segmentation([poly], H, W)
    assert mask.all()  # the polygon covers the whole image
    rle = mask_utils.merge(mask_utils.frPyObjects([[10, 5, W + 2, 30, 12, H + 3]], H, W))
    np.testing.assert_array_equal(decode_segmentation([[10, 5, W + 2, 30, 12, H + 3]], H, W),
                                  mask_utils.decode(rle).astype(bool))


def test_rle_runs_past_height_x_width_are_rejected_before_pycocotools(guarded_pycocotools):
    with pytest.raises(BadAnnotation, match=f'add up to {H * (W + 1)}'):
        decode_segmentation(overflowing_rle(), H, W)
    with pytest.raises(BadAnnotation, match='add up to'):
        decode_segmentation({'size': [H, W], 'counts': [H * W, 5]}, H, W)
    assert guarded_pycocotools == []


# ----------------------------------------------------------------------------------------------------------------
# item 1: training datasets (COCO format, SA-1B)
# ----------------------------------------------------------------------------------------------------------------

def test_coco_training_skips_and_counts_absurd_polygons_and_bad_rle(coins_coco, tmp_path, guarded_pycocotools):
    from mmengine.registry import DATASETS
    import evit_mm.sam.training  # noqa: F401  (registers SamCocoDataset)
    record = json.load(open(coins_coco['train_ann']))
    anns = record['annotations']
    image_id = anns[0]['image_id']
    img = next(i for i in record['images'] if i['id'] == image_id)
    h, w = img['height'], img['width']
    huge = dict(anns[0], id=900001, segmentation=[[1, 1, 30, 1, HUGE, 40]])
    bad_rle = dict(anns[0], id=900002, segmentation={'size': [h, w], 'counts': [h * w - 3, 10]})
    record['annotations'] = anns + [huge, bad_rle]
    ann_file = tmp_path / 'instances.json'
    ann_file.write_text(json.dumps(record))
    ds = DATASETS.build(dict(type='SamCocoDataset', ann_file=str(ann_file),
                             data_prefix=dict(img=coins_coco['train_img']), num_masks=8, pipeline=[]))
    samples = [ds[i] for i in range(len(ds))]  # the bad annotations' image is still used, with its other masks
    assert all(s['gt_masks'].shape[0] == 8 for s in samples)
    assert ds.bad_counts == {'invalid annotation': 2}, ds.bad_files
    reasons = ds.bad_files[f'{ann_file} (image {image_id})']
    assert any('annotation id 900001' in r and f'outside the {w}x{h} image' in r for r in reasons), reasons
    assert any('annotation id 900002' in r and 'add up to' in r for r in reasons), reasons


def test_sa1b_skips_and_counts_absurd_polygons_and_bad_rle(tmp_path, guarded_pycocotools):
    from mmengine.registry import DATASETS

    import evit_mm.sam.training  # noqa: F401  (registers SA1BDataset)
    from evit_mm.sample_data.sa1b import encode_sa1b_annotation
    from PIL import Image
    from skimage import data
    Image.fromarray(data.astronaut()[:H, :W]).save(tmp_path / 'sa_1.jpg')
    good = encode_sa1b_annotation(rect((H, W), 5, 30, 5, 40), 7)
    anns = [good, dict(good, id=8, segmentation=[[1, 1, 30, 1, 10, -HUGE]]),
            dict(good, id=9, segmentation=overflowing_rle())]
    json.dump({'image': {'image_id': 1, 'width': W, 'height': H, 'file_name': 'sa_1.jpg'}, 'annotations': anns},
              open(tmp_path / 'sa_1.json', 'w'))
    ds = DATASETS.build(dict(type='SA1BDataset', data_root=str(tmp_path), num_masks=3, pipeline=[]))
    sample = ds[0]
    assert sample['gt_masks'].shape == (3, H, W) and all(np.array_equal(m, rect((H, W), 5, 30, 5, 40))
                                                         for m in sample['gt_masks'])
    assert ds.bad_counts == {'invalid annotation': 2}, ds.bad_files
    reasons = ds.bad_files[str(tmp_path / 'sa_1.json')]
    assert any(r.startswith('invalid annotation: annotation id 8: polygon 0') for r in reasons), reasons
    assert any('annotation id 9: RLE run lengths add up to' in r for r in reasons), reasons


# ----------------------------------------------------------------------------------------------------------------
# item 1: zero-shot ground truth
# ----------------------------------------------------------------------------------------------------------------

def bad_gt_set(tmp_path):
    """One image, one good annotation (id 1) and three whose segmentation pycocotools cannot decode safely."""
    write_image(tmp_path)
    good = {'image_id': 1, 'category_id': 1, 'bbox': [10, 10, 21, 11], 'area': 231, 'iscrowd': 0,
            'segmentation': _encode(rect((H, W), 10, 20, 10, 30))}
    anns = [dict(good, id=1),
            dict(good, id=2, segmentation=[[10, 10, 30, 10, HUGE, 20]]),                      # absurd polygon
            dict(good, id=3, segmentation=overflowing_rle()),                                # runs past H x W
            dict(good, id=4, segmentation={'size': [H, W], 'counts': [H * W, 7]}, iscrowd=1)]  # same, uncompressed
    ann_file = tmp_path / 'gt.json'
    json.dump({'images': [{'id': 1, 'file_name': 'img.png', 'height': H, 'width': W}], 'annotations': anns,
               'categories': [{'id': 1, 'name': 'thing'}]}, open(ann_file, 'w'))
    dets = tmp_path / 'dets.json'
    json.dump([{'image_id': 1, 'category_id': 1, 'bbox': [10, 10, 21, 11], 'score': 0.9}], open(dets, 'w'))
    return str(ann_file), str(dets)


def test_zero_shot_counts_and_skips_bad_gt_segmentations(tmp_path, guarded_pycocotools, capsys):
    from evit_mm.sam.zero_shot import ZeroShotDataset
    ann_file, dets = bad_gt_set(tmp_path)
    ds = ZeroShotDataset(ann_file, str(tmp_path))
    assert ds.issues.counts == {'invalid_segmentation': 3} and ds.dropped_ann_ids == {2, 3, 4}
    assert [a['id'] for a in ds.gt_dict()['annotations']] == [1]  # not ground truth for the AP modes either
    messages = ds.issues.examples['invalid_segmentation']
    assert 'annotation id 2' in messages[0] and 'outside the 80x64 image' in messages[0]
    assert 'annotation id 3' in messages[1] and f'add up to {H * (W + 1)}' in messages[1]
    assert 'annotation id 4' in messages[2] and f'add up to {H * W + 7}' in messages[2]

    out, tool = tmp_path / 'out', load_tool('eval_sam_zero_shot')
    assert tool.main(['--ann-file', ann_file, '--image-dir', str(tmp_path), '--model', 'oracle', '--mode',
                      'box', 'points', 'detector', '--det-file', dets, '--out-dir', str(out),
                      '--no-progress']) == 0
    res = json.load(open(out / 'results.json'))
    assert res['images_evaluated'] == 1 and res['box']['count'] == 1 and res['box']['mIoU'] == 100
    assert res['points']['1_click']['mIoU'] == 100 and res['detector']['AP'] == pytest.approx(1.0)
    assert res['issues']['invalid_segmentation']['count'] == 3
    assert 'invalid_segmentation: 3' in capsys.readouterr().out


# ----------------------------------------------------------------------------------------------------------------
# item 8: the zero-shot tool, the clicker, the oracle
# ----------------------------------------------------------------------------------------------------------------

def test_tool_fails_when_no_image_was_evaluated(tmp_path, capsys):
    tool = load_tool('eval_sam_zero_shot')
    ann = {'image_id': 1, 'category_id': 1, 'bbox': [10, 10, 21, 11], 'area': 231, 'iscrowd': 0, 'id': 1,
           'segmentation': _encode(rect((H, W), 10, 20, 10, 30))}
    json.dump({'images': [{'id': 1, 'file_name': 'gone.png', 'height': H, 'width': W}], 'annotations': [ann],
               'categories': [{'id': 1, 'name': 'thing'}]}, open(tmp_path / 'gt.json', 'w'))
    args = ['--ann-file', str(tmp_path / 'gt.json'), '--image-dir', str(tmp_path), '--model', 'oracle',
            '--no-progress']
    assert tool.main(args + ['--out-dir', str(tmp_path / 'a')]) == 1
    captured = capsys.readouterr()
    assert 'error: no image was evaluated (of 1 image(s): 1 missing image; check --image-dir)' in captured.err
    assert '0/1 images evaluated' in captured.out  # the table and results.json are still written
    assert json.load(open(tmp_path / 'a' / 'results.json'))['images_evaluated'] == 0

    json.dump({'images': [], 'annotations': [], 'categories': [{'id': 1, 'name': 'thing'}]},
              open(tmp_path / 'empty.json', 'w'))
    args[1] = str(tmp_path / 'empty.json')
    assert tool.main(args + ['--out-dir', str(tmp_path / 'b')]) == 1
    assert 'empty.json lists no image' in capsys.readouterr().err

    write_image(tmp_path, 'gone.png')  # the same run with its image present succeeds
    args[1] = str(tmp_path / 'gt.json')
    assert tool.main(args + ['--out-dir', str(tmp_path / 'c')]) == 0
    with pytest.raises(SystemExit):  # --max-images 0 used to mean "all images"
        tool.main(args + ['--out-dir', str(tmp_path / 'd'), '--max-images', '0'])
    assert '--max-images must be >= 1, got 0' in capsys.readouterr().err


class IgnoringModel:
    """Answers every prompt with an empty mask (a model that ignores the clicks)."""

    def __init__(self):
        self.calls = 0

    def set_image(self, image, image_id, cache_key=None):
        self.shape = image.shape[:2]

    def predict(self, boxes=None, point_coords=None, point_labels=None):
        self.calls += 1
        n = len(boxes) if boxes is not None else len(point_coords)
        return np.zeros((n, 1) + self.shape, bool), np.ones((n, 1), np.float32)


def test_clicker_stops_when_every_error_pixel_was_clicked(tmp_path):
    """Documented behaviour: a 1-pixel mask whose click the model ignores gets no second click (the reference
    would click pixel (0, 0) as negative); the evaluation keeps the last prediction for the remaining rounds."""
    from evit_mm.sam.zero_shot import Clicker, ResultStore, ZeroShotDataset, evaluate_dataset
    gt = np.zeros((H, W), bool)
    gt[30, 40] = True
    clicker = Clicker(gt)
    first = clicker.next_click(None)
    assert (first.x, first.y, first.positive) == (40, 30, True)
    assert clicker.next_click(np.zeros_like(gt)) is None  # the only error pixel was clicked already
    assert clicker.next_click(np.zeros_like(gt)) is None and len(clicker.clicks) == 1

    write_image(tmp_path)
    ann = {'id': 1, 'image_id': 1, 'category_id': 1, 'bbox': [40, 30, 1, 1], 'area': 1, 'iscrowd': 0,
           'segmentation': _encode(gt)}
    json.dump({'images': [{'id': 1, 'file_name': 'img.png', 'height': H, 'width': W}], 'annotations': [ann],
               'categories': [{'id': 1, 'name': 'thing'}]}, open(tmp_path / 'gt.json', 'w'))
    ds, model = ZeroShotDataset(str(tmp_path / 'gt.json'), str(tmp_path)), IgnoringModel()
    store = ResultStore(str(tmp_path / 'r.jsonl'), {'t': 1}, restart=True)
    record, = evaluate_dataset(model, ds, ['points'], store, clicks=(1, 3, 5), progress=False)
    assert record['points'][0]['ious'] == [0.0] * 5 and record['points'][0]['clicks'] == [[40, 30, 1]]
    assert model.calls == 1  # rounds 2..5 had nothing to click


def test_clicker_breaks_exact_ties_in_row_major_order():
    """Documented difference from cv2: a 14 x 17 rectangle (rows 1..14, cols 1..17 of a 16 x 19 image) is 7 px deep
    at rows 7 and 8, columns 7..11 (10 exact ties): the clicker takes the first, (x=7, y=7). cv2's float32 transform
    may rank another of them first; whichever it picks is one of the exact ties."""
    import cv2
    from evit_mm.sam.zero_shot import Clicker, padded_distance
    gt = rect((16, 19), 1, 14, 1, 17)
    depth = padded_distance(gt)
    ties = set(zip(*np.nonzero(depth == 7.0)))
    assert depth.max() == 7.0 and ties == {(y, x) for y in (7, 8) for x in range(7, 12)}
    click = Clicker(gt).next_click(None)
    assert (click.x, click.y) == (7, 7)
    ref = cv2.distanceTransform(np.pad(gt, 1).astype(np.uint8), cv2.DIST_L2, cv2.DIST_MASK_PRECISE)[1:-1, 1:-1]
    ys, xs = np.nonzero(ref == ref.max())
    assert (ys[0], xs[0]) in ties


def nested_set(tmp_path, inner, outer, order):
    write_image(tmp_path)
    masks = {'inner': inner, 'outer': outer}
    anns = []
    for k, name in enumerate(order, 1):
        ys, xs = np.nonzero(masks[name])
        anns.append({'id': k, 'image_id': 1, 'category_id': 1, 'iscrowd': 0, 'area': int(masks[name].sum()),
                     'bbox': [int(xs.min()), int(ys.min()), int(xs.ptp()) + 1, int(ys.ptp()) + 1],
                     'segmentation': _encode(masks[name])})
    ann_file = tmp_path / f'nested_{"_".join(order)}.json'
    json.dump({'images': [{'id': 1, 'file_name': 'img.png', 'height': H, 'width': W}], 'annotations': anns,
               'categories': [{'id': 1, 'name': 'thing'}]}, open(ann_file, 'w'))
    dets = tmp_path / 'dets.json'
    json.dump([{'image_id': 1, 'category_id': 1, 'bbox': a['bbox'], 'score': 0.9 - 0.1 * i} for i, a in
               enumerate(anns)], open(dets, 'w'))
    return str(ann_file), str(dets)


def run_oracle(tmp_path, ann_file, dets):
    from evit_mm.sam.zero_shot import (OracleSegmenter, ResultStore, ZeroShotDataset, evaluate_dataset,
                                       load_detections, summarize)
    ds = ZeroShotDataset(ann_file, str(tmp_path))
    detections, _ = load_detections(dets, ds)
    store = ResultStore(str(tmp_path / 'r.jsonl'), {'t': 1}, restart=True)
    modes = ('box', 'points', 'detector')
    records = evaluate_dataset(OracleSegmenter(ds), ds, modes, store, detections=detections, progress=False)
    return records, summarize(records, ds, modes)


@pytest.mark.parametrize('order', [('outer', 'inner'), ('inner', 'outer')])
def test_oracle_is_perfect_on_nested_masks(tmp_path, order):
    # outer: rows/cols 10..49, deepest pixel (29, 29); inner: rows/cols 25..44, deepest (34, 34). The outer mask's
    # first click lies inside the inner mask too, and the inner's inside the outer: "the mask under the first
    # positive click" answered one of them with the other (IoU 25); the oracle now tells them apart.
    outer, inner = rect((H, W), 10, 49, 10, 49), rect((H, W), 25, 44, 25, 44)
    records, res = run_oracle(tmp_path, *nested_set(tmp_path, inner, outer, order))
    assert [e['clicks'][0] for e in records[0]['points']] == [[29, 29, 1] if n == 'outer' else [34, 34, 1]
                                                               for n in order]
    assert res['box']['mIoU'] == 100 and res['detector']['AP'] == pytest.approx(1.0)
    assert all(res['points'][f'{k}_click']['mIoU'] == 100 for k in (1, 3, 5))


def test_oracle_on_concentric_masks_needs_a_second_click(tmp_path):
    """Documented limit: concentric squares share their deepest pixel, so their first clicks are the same prompt
    and the oracle answers both with the first annotation (IoU 400/1600 = 25 for the other); the clicker's second
    click (negative, in the ring) tells them apart."""
    outer, inner = rect((H, W), 10, 49, 10, 49), rect((H, W), 20, 39, 20, 39)
    records, res = run_oracle(tmp_path, *nested_set(tmp_path, inner, outer, ('outer', 'inner')))
    points = records[0]['points']
    assert points[0]['clicks'][0] == points[1]['clicks'][0] == [29, 29, 1]
    assert points[0]['ious'] == [100.0] * 5 and points[1]['ious'] == [25.0] + [100.0] * 4
    assert points[1]['clicks'][1][2] == 0 and not inner[points[1]['clicks'][1][1], points[1]['clicks'][1][0]]
    assert res['box']['mIoU'] == 100 and res['points']['3_click']['mIoU'] == 100
