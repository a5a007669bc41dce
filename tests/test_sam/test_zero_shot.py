"""Zero-shot COCO/LVIS evaluation (evit_mm.sam.zero_shot, tools/eval_sam_zero_shot.py): the clicker, the mIoU and
AP bookkeeping against hand-computed values and against pycocotools/lvis themselves, bad inputs, resuming, the
mmengine metric. The end-to-end runs with real SAM models are in tests/test_sam/test_zero_shot_models.py."""
import json
import os
import os.path as osp
import shutil
import sys

import numpy as np
import pytest
from conftest import ROOT, load_tool, run_python

from evit_mm.mm.compat import apply_all
from evit_mm.sam.zero_shot import (
    MODES,
    Clicker,
    OracleSegmenter,
    ResultStore,
    ZeroShotDataset,
    evaluate_dataset,
    load_detections,
    miou_summary,
    summarize,
)
from evit_mm.sam.zero_shot.evaluate import encode_mask

from .conftest import H, W, _encode, rect, write_image

apply_all()

TOOL = osp.join(ROOT, 'tools', 'eval_sam_zero_shot.py')

# The sample sets' deliberately bad annotations / detections (evit_mm/sample_data/zero_shot.py).
COCO_ISSUES = {'crowd': 1, 'degenerate_box': 1, 'empty_segmentation': 1, 'det_unknown_image': 1,
               'det_degenerate_box': 1}
LVIS_ISSUES = {'degenerate_box': 1, 'det_unknown_image': 1, 'det_degenerate_box': 1}


@pytest.fixture(scope='module')
def sets(tmp_path_factory):
    from evit_mm.sample_data.zero_shot import make_zero_shot_sets
    return make_zero_shot_sets(str(tmp_path_factory.mktemp('zero_shot')))


def run(dataset, model, out, modes=MODES, det_file=None, **kw):
    dets, det_issues = load_detections(det_file, dataset) if det_file else (None, None)
    store = ResultStore(str(out), {'test': 1}, restart=kw.pop('restart', True))
    records = evaluate_dataset(model, dataset, modes, store, detections=dets, progress=False, **kw)
    return records, summarize(records, dataset, modes, extra_issues=det_issues)


# ----------------------------------------------------------------------------------------------------------------
# clicker (hand-made masks; every expected click derived by hand in the comments)
# ----------------------------------------------------------------------------------------------------------------


def test_first_click_is_the_deepest_interior_point():
    # rows 2..8, cols 3..13: the centre row 5 is 4 px from rows 1 and 9; columns 6..10 are >= 4 px from columns 2
    # and 14, so five pixels tie at distance 4 and the first in row-major order wins: (x=6, y=5).
    gt = rect((20, 20), 2, 8, 3, 13)
    click = Clicker(gt).next_click(None)
    assert (click.x, click.y, click.positive) == (6, 5, True)


def test_image_border_counts_as_boundary():
    # a band touching the top, left and right borders: rows 0..4. With the border as boundary the deepest row is
    # 2 (3 px from row -1 and row 5); columns 2..17 are >= 3 px from columns -1 and 20: first is (x=2, y=2).
    # (Without the padding the band's top row would be farthest from any background pixel.)
    gt = rect((10, 20), 0, 4, 0, 19)
    click = Clicker(gt).next_click(None)
    assert (click.x, click.y) == (2, 2)


def test_click_sequence_negative_then_positive():
    gt = rect((20, 20), 2, 8, 3, 13)
    clicker = Clicker(gt)
    assert clicker.next_click(None) == clicker.clicks[0]
    # prediction = gt + a 7x7 false-positive square rows/cols 12..18: its centre (15, 15) is 4 px deep; no FN
    c2 = clicker.next_click(gt | rect((20, 20), 12, 18, 12, 18))
    assert (c2.x, c2.y, c2.positive) == (15, 15, False)
    # prediction misses columns 3..7 of the gt (FN block rows 2..8 x cols 3..7, 3 px deep at columns 5, rows 4..6)
    # and has a 1-px FP: the FN wins; the first of the ties in row-major order is (x=5, y=4)
    pred = gt & ~rect((20, 20), 2, 8, 3, 7)
    pred[19, 0] = True
    c3 = clicker.next_click(pred)
    assert (c3.x, c3.y, c3.positive) == (5, 4, True)
    coords, labels = clicker.prompt()
    assert coords.tolist() == [[6, 5], [15, 15], [5, 4]] and labels.tolist() == [1, 0, 1]


def test_clicker_ties_clicked_pixels_and_perfect_predictions():
    # FN and FP 3x3 squares, both 2 px deep at their centres: a tie goes to the FP (negative click), as the reference
    gt, pred = rect((10, 10), 0, 2, 0, 2), rect((10, 10), 6, 8, 6, 8)
    c = Clicker(gt).next_click(pred)
    assert (c.x, c.y, c.positive) == (7, 7, False)
    # a clicked pixel is not clicked again: the 3x3 FN square's centre (1, 1) first, then the first 1-px-deep pixel
    clicker = Clicker(gt)
    assert (clicker.next_click(None).x, clicker.clicks[0].y) == (1, 1)
    c = clicker.next_click(np.zeros_like(gt))
    assert (c.x, c.y, c.positive) == (0, 0, True)
    # nothing left to correct
    assert Clicker(gt).next_click(gt) is None


def test_distance_transform_equals_opencvs_on_real_masks(sets):
    """The clicker's distances (scipy, exact EDT, border padded) are the reference's cv2.distanceTransform(DIST_L2,
    DIST_MASK_PRECISE) of the padded mask, on the coin masks of the sample set."""
    import cv2

    from evit_mm.sam.zero_shot import padded_distance
    ds = ZeroShotDataset(sets['coco_ann'], sets['coco_img'])
    masks = [ds.gt_mask(a) for i in ds.image_ids for a in ds.anns_by_image[i]]
    masks.append(np.ones_like(masks[0]))  # a mask that fills the image: only the border bounds it
    for mask in masks:
        ref = cv2.distanceTransform(np.pad(mask, 1).astype(np.uint8), cv2.DIST_L2, cv2.DIST_MASK_PRECISE)[1:-1, 1:-1]
        np.testing.assert_allclose(padded_distance(mask), ref, rtol=1e-6, atol=1e-5)


# ----------------------------------------------------------------------------------------------------------------
# hand-computed IoUs and APs: rectangles on a real photograph, an oracle that shifts the ground truth by 4 px
# ----------------------------------------------------------------------------------------------------------------

RECTS = {  # name: (x, y, w, h); area = w * h lands in COCO's small / medium / large bucket
    'small': (10, 10, 20, 10),     # 200
    'medium': (50, 10, 40, 40),    # 1600
    'large': (120, 60, 120, 100),  # 12000
}
DX = 4
# A w-wide rectangle moved sideways by DX overlaps itself on (w - DX) columns out of (w + DX): IoU = (w-DX)/(w+DX)
HAND_IOU = {'small': 100 * 16 / 24, 'medium': 100 * 36 / 44, 'large': 100 * 116 / 124}


@pytest.fixture(scope='module')
def rect_set(tmp_path_factory):
    from PIL import Image
    from skimage import data
    root = str(tmp_path_factory.mktemp('rects'))
    image = data.chelsea()[:200, :300]
    os.makedirs(osp.join(root, 'images'))
    Image.fromarray(image).save(osp.join(root, 'images', 'chelsea.png'))
    anns = []
    for i, (name, (x, y, w, h)) in enumerate(RECTS.items(), 1):
        mask = rect(image.shape[:2], y, y + h - 1, x, x + w - 1)
        anns.append({'id': i, 'image_id': 7, 'category_id': 1, 'bbox': [x, y, w, h], 'area': w * h,
                     'segmentation': encode_mask(mask), 'iscrowd': 0})
    coco = {'images': [{'id': 7, 'file_name': 'chelsea.png', 'height': 200, 'width': 300}], 'annotations': anns,
            'categories': [{'id': 1, 'name': 'rectangle'}]}
    ann_file, det_file = osp.join(root, 'rects.json'), osp.join(root, 'dets.json')
    json.dump(coco, open(ann_file, 'w'))
    json.dump([{'image_id': 7, 'category_id': 1, 'bbox': a['bbox'], 'score': s}
               for a, s in zip(anns, (0.9, 0.8, 0.7))], open(det_file, 'w'))
    return ann_file, osp.join(root, 'images'), det_file


def test_shifted_masks_give_the_hand_computed_ious(rect_set, tmp_path):
    ann_file, image_dir, det_file = rect_set
    ds = ZeroShotDataset(ann_file, image_dir)
    records, res = run(ds, OracleSegmenter(ds, shift=(DX, 0)), tmp_path / 'r.jsonl', det_file=det_file)
    ious = {e['area']: e['iou'] for e in records[0]['box']}
    for name, (x, y, w, h) in RECTS.items():
        assert ious[w * h] == pytest.approx(HAND_IOU[name], abs=1e-9)
        assert res['box'][f'mIoU_{name}'] == pytest.approx(HAND_IOU[name], abs=1e-9)
        assert res['box'][f'count_{name}'] == 1
    assert res['box']['mIoU'] == pytest.approx(np.mean(list(HAND_IOU.values())), abs=1e-9)
    for k in (1, 3, 5):  # the oracle ignores negative clicks: the shifted mask stays
        assert res['points'][f'{k}_click']['mIoU'] == pytest.approx(res['box']['mIoU'], abs=1e-9)
    for entry, (name, (x, y, w, h)) in zip(records[0]['points'], RECTS.items()):
        # click 1: the rectangle's deepest point; click 2: FN and FP strips are both DX wide, equally deep: a tie,
        # which goes to the FP strip (columns x+w .. x+w+DX-1): a negative click there
        (x1, y1, l1), (x2, y2, l2) = entry['clicks'][:2]
        assert l1 == 1 and x <= x1 < x + w and y <= y1 < y + h
        assert l2 == 0 and x + w <= x2 < x + w + DX and y <= y2 < y + h
        assert len(entry['clicks']) == 5 and len(entry['ious']) == 5
    # mask AP by size: one object per bucket, matched at the IoU thresholds 0.50..0.95 up to its IoU:
    # small 0.667 -> 4 of 10 thresholds, medium 0.818 -> 7, large 0.935 -> 9
    assert res['detector']['APs'] == pytest.approx(0.4)
    assert res['detector']['APm'] == pytest.approx(0.7)
    assert res['detector']['APl'] == pytest.approx(0.9)


def test_area_buckets_are_cocos_half_open_ranges():
    entries = [{'area': a, 'iou': v} for a, v in ((1023.9, 10), (1024, 20), (9215, 30), (9216, 40))]
    s = miou_summary(entries)
    assert (s['mIoU_small'], s['mIoU_medium'], s['mIoU_large'], s['mIoU']) == (10, 25, 40, 25)
    assert miou_summary([])['mIoU'] is None


# ----------------------------------------------------------------------------------------------------------------
# the tiny COCO and LVIS sets: oracle = perfect, shifted oracle = pycocotools' / lvis' own numbers, bad inputs
# ----------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize('kind', ['coco', 'lvis'])
def test_oracle_is_perfect_and_bad_inputs_are_counted(sets, kind, tmp_path):
    ds = ZeroShotDataset(sets[f'{kind}_ann'], sets[f'{kind}_img'])
    assert ds.kind == kind
    records, res = run(ds, OracleSegmenter(ds), tmp_path / 'r.jsonl', det_file=sets[f'{kind}_det'])
    n_coins = 11
    n_prompted = n_coins + (kind == 'coco')  # the crowd region is prompted too (as the reference)
    assert res['box']['mIoU'] == 100 and res['box']['count'] == n_prompted
    for k in (1, 3, 5):
        assert res['points'][f'{k}_click']['mIoU'] == 100
    assert res['detector']['AP'] == 1.0 and res['detector']['AP50'] == 1.0
    assert res['detector']['detections'] == n_coins + 1 + (kind == 'lvis')  # + false positive(s), low scores
    expected = COCO_ISSUES if kind == 'coco' else LVIS_ISSUES
    assert {k: v['count'] for k, v in res['issues'].items()} == expected
    for v in res['issues'].values():  # every issue comes with a message naming the file and the entry
        assert v['examples'] and osp.basename(sets[f'{kind}_ann' if 'det' not in v['examples'][0] else
                                                   f'{kind}_det']) in v['examples'][0]


def test_crowd_skip(sets, tmp_path):
    ds = ZeroShotDataset(sets['coco_ann'], sets['coco_img'], crowd='skip')
    records, res = run(ds, OracleSegmenter(ds), tmp_path / 'r.jsonl', modes=('box',))
    assert res['box']['count'] == 11 and res['issues']['crowd']['count'] == 1
    assert 'skipped' in res['issues']['crowd']['examples'][0]


def _coco_ap_directly(ann_file, results, drop_ids):
    """COCOeval run by hand on the annotation file (minus the annotations the sample set made invalid)."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval
    gt = COCO(ann_file)
    for i in drop_ids:
        gt.dataset['annotations'] = [a for a in gt.dataset['annotations'] if a['id'] != i]
    gt.createIndex()
    dt = gt.loadRes([{k: r[k] for k in ('image_id', 'category_id', 'score', 'segmentation')} for r in results])
    ev = COCOeval(gt, dt, 'segm')
    ev.evaluate(), ev.accumulate(), ev.summarize()
    return ev.stats


def test_coco_ap_equals_pycocotools(sets, tmp_path):
    ds = ZeroShotDataset(sets['coco_ann'], sets['coco_img'])
    records, res = run(ds, OracleSegmenter(ds, shift=(2, 1)), tmp_path / 'r.jsonl', modes=('detector',),
                       det_file=sets['coco_det'])
    assert 0 < res['detector']['AP'] < 1  # shifted masks: not perfect
    bad_ids = [a['id'] for a in json.load(open(sets['coco_ann']))['annotations']
               if a['area'] < 1 or not a['segmentation']]
    assert len(bad_ids) == 2
    stats = _coco_ap_directly(sets['coco_ann'], [d for r in records for d in r['detector']], bad_ids)
    for name, value in zip(('AP', 'AP50', 'AP75', 'APs', 'APm', 'APl'), stats):
        assert res['detector'][name] == pytest.approx(value, abs=1e-12), name


def test_lvis_ap_equals_lvis_package(sets, tmp_path):
    from lvis import LVIS, LVISEval, LVISResults

    from evit_mm.sam.zero_shot.evaluate import _numpy_float_alias
    ds = ZeroShotDataset(sets['lvis_ann'], sets['lvis_img'])
    records, res = run(ds, OracleSegmenter(ds, shift=(2, 1)), tmp_path / 'r.jsonl', modes=('detector',),
                       det_file=sets['lvis_det'])
    assert 0 < res['detector']['AP'] < 1
    data = json.load(open(sets['lvis_ann']))
    data['annotations'] = [a for a in data['annotations'] if a['area'] >= 1]
    clean = tmp_path / 'lvis_clean.json'
    json.dump(data, open(clean, 'w'))
    gt = LVIS(str(clean))
    results = [{k: d[k] for k in ('image_id', 'category_id', 'score', 'segmentation')}
               for r in records for d in r['detector']]
    with _numpy_float_alias():
        ev = LVISEval(gt, LVISResults(gt, results, max_dets=300), 'segm')
        ev.run()
    for name in ('AP', 'AP50', 'AP75', 'APs', 'APf'):
        assert res['detector'][name] == pytest.approx(ev.get_results()[name], abs=1e-12), name


def test_missing_image_is_reported_and_the_rest_evaluated(sets, tmp_path):
    image_dir = tmp_path / 'images'
    shutil.copytree(sets['coco_img'], image_dir)
    ds = ZeroShotDataset(sets['coco_ann'], str(image_dir))
    os.remove(ds.image_path(ds.image_ids[0]))
    records, res = run(ds, OracleSegmenter(ds), tmp_path / 'r.jsonl', det_file=sets['coco_det'])
    assert [r['status'] for r in records] == ['missing_image', 'ok']
    assert res['images'] == 2 and res['images_evaluated'] == 1
    assert res['issues']['missing_image']['count'] == 1
    assert 'not found' in res['issues']['missing_image']['examples'][0]
    assert res['box']['count'] == 5 and res['box']['mIoU'] == 100  # image 2's five coins
    assert res['detector']['AP'] == 1.0  # AP over the images evaluated


def test_bad_files_give_clear_errors(sets, tmp_path):
    with pytest.raises(FileNotFoundError, match='annotation file not found'):
        ZeroShotDataset(str(tmp_path / 'nope.json'), '.')
    (tmp_path / 'broken.json').write_text('{"images": [')
    with pytest.raises(ValueError, match='not valid JSON'):
        ZeroShotDataset(str(tmp_path / 'broken.json'), '.')
    (tmp_path / 'dets.json').write_text('[]')
    with pytest.raises(ValueError, match='expected a COCO/LVIS json object, got a list'):
        ZeroShotDataset(str(tmp_path / 'dets.json'), '.')
    (tmp_path / 'partial.json').write_text('{"images": [], "categories": []}')
    with pytest.raises(ValueError, match=r"partial.json: not a COCO/LVIS .*: missing key\(s\) \['annotations'\]"):
        ZeroShotDataset(str(tmp_path / 'partial.json'), '.')
    ds = ZeroShotDataset(sets['coco_ann'], sets['coco_img'])
    with pytest.raises(ValueError, match='looks like an annotation json'):
        load_detections(sets['coco_ann'], ds)


# ----------------------------------------------------------------------------------------------------------------
# resuming
# ----------------------------------------------------------------------------------------------------------------

class Interrupt(Exception):
    pass


class CountingOracle(OracleSegmenter):
    """Counts the images it is given, and can fail at the n-th (a kill in the middle of a run)."""

    def __init__(self, dataset, fail_at=None, **kw):
        super().__init__(dataset, **kw)
        self.images_seen, self.fail_at = [], fail_at

    def set_image(self, image, image_id, cache_key=None):
        if self.fail_at is not None and len(self.images_seen) == self.fail_at:
            raise Interrupt
        self.images_seen.append(image_id)
        super().set_image(image, image_id, cache_key)


def test_an_interrupted_run_resumes_and_gives_the_same_result(sets, tmp_path):
    ds = ZeroShotDataset(sets['coco_ann'], sets['coco_img'])
    _, full = run(ds, OracleSegmenter(ds, shift=(1, 2)), tmp_path / 'full.jsonl', det_file=sets['coco_det'])
    path = tmp_path / 'part.jsonl'
    with pytest.raises(Interrupt):
        run(ds, CountingOracle(ds, fail_at=1, shift=(1, 2)), path, det_file=sets['coco_det'])
    assert len(path.read_text().splitlines()) == 2  # header + the first image
    with open(path, 'a') as f:
        f.write('{"image_id": 2, "status": "ok", "iss')  # a write cut short by the kill
    model = CountingOracle(ds, shift=(1, 2))
    with pytest.warns(UserWarning, match='truncated last line'):
        _, resumed = run(ds, model, path, det_file=sets['coco_det'], restart=False)
    assert model.images_seen == [ds.image_ids[1]]  # only the image not done before
    assert resumed == full
    # another run's file is not mixed in
    with pytest.raises(ValueError, match='another run'):
        ResultStore(str(path), {'test': 2})


def test_tool_resumes_and_writes_results(sets, tmp_path, capsys):
    import subprocess
    tool, out = load_tool('eval_sam_zero_shot'), tmp_path / 'out'
    args = ['--ann-file', sets['coco_ann'], '--image-dir', sets['coco_img'], '--model', 'oracle', '--mode', 'box',
            'points', 'detector', '--det-file', sets['coco_det'], '--out-dir', str(out), '--no-progress']
    assert tool.main(args + ['--max-images', '1']) == 0  # in-process: "interrupted" after one image
    assert '1/1 images evaluated' in capsys.readouterr().out
    p = subprocess.run([sys.executable, TOOL] + args + ['--vis', '1'], capture_output=True, text=True, cwd=ROOT)
    assert p.returncode == 0, p.stderr
    assert 'resuming: 1 of 2 images already evaluated' in p.stdout
    assert '| GT box | mIoU | 100.000 |' in p.stdout and '| detector box | mask AP | 1.000 |' in p.stdout
    assert 'det_unknown_image: 1' in p.stdout and 'crowd: 1' in p.stderr
    res = json.load(open(out / 'results.json'))
    assert res['images_evaluated'] == 2 and res['resumed_images'] == 1 and res['detector']['AP'] == 1.0
    assert sorted(os.listdir(out / 'vis')) == ['2_box.png', '2_detector.png', '2_points.png']
    with pytest.raises(SystemExit, match='another run'):
        tool.main(args + ['--clicks', '1'])
    with pytest.raises(SystemExit):
        tool.main([a for a in args if a not in ('--det-file', sets['coco_det'])])
    assert '--mode detector needs --det-file' in capsys.readouterr().err


# ----------------------------------------------------------------------------------------------------------------
# the mmengine metric
# ----------------------------------------------------------------------------------------------------------------

def test_metric_equals_the_tool_and_takes_mmdet_style_predictions(sets, tmp_path):
    from mmengine.registry import METRICS

    import evit_mm.sam.zero_shot.metric  # noqa: F401  (registers SamZeroShotMetric)
    from evit_mm.sam.zero_shot.metric import flatten_results
    ds = ZeroShotDataset(sets['coco_ann'], sets['coco_img'])
    oracle = OracleSegmenter(ds, shift=(2, 0))
    records, res = run(ds, oracle, tmp_path / 'r.jsonl', det_file=sets['coco_det'])
    metric = METRICS.build(dict(type='SamZeroShotMetric', ann_file=sets['coco_ann'], modes=list(MODES),
                                det_file=sets['coco_det']))
    metric.process({}, [{'zero_shot': r} for r in records])
    out = metric.evaluate(len(records))
    assert out == {f'sam_zero_shot/{k}': v for k, v in flatten_results(res).items()} | {
        'sam_zero_shot/issues': float(sum(COCO_ISSUES.values()))}
    assert out['sam_zero_shot/box/mIoU'] == res['box']['mIoU'] and out['sam_zero_shot/detector/AP'] == \
        res['detector']['AP']

    # mmdet-style samples (img_id + pred_instances with masks/scores/labels), e.g. from BoxPromptedSAM
    from pycocotools import mask as mask_utils
    samples = []
    for r in records:
        dets = r['detector']
        masks = np.stack([mask_utils.decode({'size': d['segmentation']['size'],
                                             'counts': d['segmentation']['counts'].encode()}) for d in dets])
        samples.append({'img_id': r['image_id'], 'pred_instances': {
            'masks': masks.astype(bool), 'scores': np.array([d['score'] for d in dets]),
            'labels': np.zeros(len(dets), np.int64)}})
    metric = METRICS.build(dict(type='SamZeroShotMetric', ann_file=sets['coco_ann'], modes=['detector']))
    metric.process({}, samples)
    assert metric.evaluate(len(samples))['sam_zero_shot/detector/AP'] == res['detector']['AP']


def test_core_needs_no_mm_library_and_the_metric_only_mmengine():
    p = run_python('import sys, evit_mm.sam.zero_shot\n'
                   'assert not [m for m in ("mmengine", "mmcv", "mmdet", "mmseg", "mmagic") if m in sys.modules]\n'
                   'import evit_mm.sam.zero_shot.metric\n'
                   'print(sorted(m for m in ("mmengine", "mmcv", "mmdet", "mmseg", "mmagic") if m in sys.modules))')
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip() == "['mmengine']"


def test_every_kind_of_bad_annotation_and_image_is_counted(tmp_path):
    """One entry per kind of problem, each counted under its own name with a message naming the entry."""
    from PIL import Image
    from skimage import data
    image = data.astronaut()[:64, :80]
    for name in ('ok.png', 'small.png'):
        Image.fromarray(image if name == 'ok.png' else image[:32]).save(tmp_path / name)
    (tmp_path / 'corrupt.png').write_bytes(b'not a png')
    seg = encode_mask(rect((64, 80), 10, 19, 10, 29))
    good = {'image_id': 1, 'category_id': 1, 'bbox': [10, 10, 20, 10], 'area': 200, 'segmentation': seg}
    anns = [dict(good, id=1),
            dict(good, id=2, area=0.5),                                        # zero_area
            dict(good, id=3, bbox=[10, 10, float('nan'), 10]),                 # degenerate_box
            {k: v for k, v in dict(good, id=4).items() if k != 'segmentation'},  # malformed_annotation
            dict(good, id=5, image_id=99),                                     # annotation_unknown_image
            dict(good, id=6, bbox=[200, 200, 10, 10]),                         # box_outside_image (at run time)
            dict(good, id=7, segmentation=[[1, 1, 2, 2, 3, 3]]),               # empty_mask (collinear polygon)
            dict(good, id=8, image_id=2), dict(good, id=9, image_id=3), dict(good, id=10, image_id=4)]
    images = [{'id': 1, 'file_name': 'ok.png', 'height': 64, 'width': 80},
              {'id': 2, 'file_name': 'small.png', 'height': 64, 'width': 80},    # image_size_mismatch
              {'id': 3, 'file_name': 'corrupt.png', 'height': 64, 'width': 80},  # unreadable_image
              {'id': 4, 'file_name': 'gone.png', 'height': 64, 'width': 80}]     # missing_image
    ann_file = tmp_path / 'bad.json'
    json.dump({'images': images, 'annotations': anns, 'categories': [{'id': 1, 'name': 'x'}]}, open(ann_file, 'w'))
    ds = ZeroShotDataset(str(ann_file), str(tmp_path))
    records, res = run(ds, OracleSegmenter(ds), tmp_path / 'r.jsonl', modes=('box', 'points'))
    assert {k: v['count'] for k, v in res['issues'].items()} == {
        'zero_area': 1, 'degenerate_box': 1, 'malformed_annotation': 1, 'annotation_unknown_image': 1,
        'box_outside_image': 1, 'empty_mask': 1, 'image_size_mismatch': 1, 'unreadable_image': 1,
        'missing_image': 1}
    assert res['box']['count'] == 1 and res['box']['mIoU'] == 100 and res['images_evaluated'] == 1
    assert 'annotation id 2' in res['issues']['zero_area']['examples'][0]
    assert 'gone.png not found' in res['issues']['missing_image']['examples'][0]
    assert 'small.png is 80x32' in res['issues']['image_size_mismatch']['examples'][0]


# ============================================================================================ 5. evaluation inputs
@pytest.fixture(scope='module')
def zero_shot_sets(tmp_path_factory):
    from evit_mm.sample_data.zero_shot import make_zero_shot_sets
    return make_zero_shot_sets(str(tmp_path_factory.mktemp('zero_shot')))


@pytest.mark.parametrize('field', ['not_exhaustive_category_ids', 'neg_category_ids', 'frequency'])
def test_lvis_json_without_a_required_field_is_refused_before_any_image(zero_shot_sets, tmp_path, field):
    """The lvis package reads these fields only when it evaluates, after every image was processed: a bare
    KeyError at the end of the run. They are checked when the file is read, and the message names them."""
    from evit_mm.sam.zero_shot import ZeroShotDataset
    data = json.load(open(zero_shot_sets['lvis_ann']))
    section = 'categories' if field == 'frequency' else 'images'
    for entry in data[section][-1:]:
        del entry[field]
    bad = tmp_path / 'lvis_incomplete.json'
    bad.write_text(json.dumps(data))
    with pytest.raises(ValueError, match=f'1 of the {len(data[section])} {section} lack "{field}"') as err:
        ZeroShotDataset(str(bad), zero_shot_sets['lvis_img'], kind='lvis')
    assert str(bad) in str(err.value)


def test_gt_annotation_of_an_unknown_category_is_counted_and_skipped(zero_shot_sets, tmp_path):
    from evit_mm.sam.zero_shot import ZeroShotDataset
    data = json.load(open(zero_shot_sets['coco_ann']))
    known = {c['id'] for c in data['categories']}
    stray = dict(data['annotations'][0], id=987654, category_id=max(known) + 1000)
    data['annotations'].append(stray)
    path = tmp_path / 'unknown_category.json'
    path.write_text(json.dumps(data))
    ds = ZeroShotDataset(str(path), zero_shot_sets['coco_img'])
    assert ds.issues.counts['annotation_unknown_category'] == 1
    assert 'annotation id 987654' in ds.issues.examples['annotation_unknown_category'][0]
    assert 987654 in ds.dropped_ann_ids and all(a['id'] != 987654 for a in ds.gt_dict()['annotations'])
    assert all(a['id'] != 987654 for anns in ds.anns_by_image.values() for a in anns)


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
    from evit_mm.sam.zero_shot import (
        OracleSegmenter,
        ResultStore,
        ZeroShotDataset,
        evaluate_dataset,
        load_detections,
        summarize,
    )
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
