"""End to end: the three zero-shot modes on the tiny COCO and LVIS sets with real SAM-style models (random
weights): EfficientViT-SAM-L0 (evit_mm's predictor) and segment-anything's own ViT-B (its ``SamPredictor``).

With random weights the numbers mean nothing; what is checked is everything around them: every prompt reaches
the model and comes back as a record, the clicks follow the protocol, the mask AP is computed, the inputs'
issues are reported, the adapter answers as the model's own predictor does, and an image shared by the two sets
goes through the image encoder once."""
import json
import os

import numpy as np
import pytest

from evit_mm.sam.zero_shot import (MODES, Clicker, ResultStore, SamAdapter, ZeroShotDataset, build_sam_model,
                                   evaluate_dataset, load_detections, mask_iou, summarize)
from evit_mm.sam.zero_shot.data import xywh_to_xyxy

pytestmark = pytest.mark.slow

ISSUES = {'coco': {'crowd': 1, 'degenerate_box': 1, 'empty_segmentation': 1, 'det_unknown_image': 1,
                   'det_degenerate_box': 1},
          'lvis': {'degenerate_box': 1, 'det_unknown_image': 1, 'det_degenerate_box': 1}}
PROMPTED = {'coco': 12, 'lvis': 11}     # coins (+ the crowd region in COCO)
DETECTIONS = {'coco': 12, 'lvis': 13}   # coins + false positives


@pytest.fixture(scope='module')
def sets(tmp_path_factory):
    from evit_mm.sample_data.zero_shot import make_zero_shot_sets
    return make_zero_shot_sets(str(tmp_path_factory.mktemp('zero_shot_models')))


@pytest.fixture(scope='module')
def adapters():
    """One model of each kind for the whole module; embeddings cached by image path, so the LVIS set (the same
    photographs) costs no encoder forward."""
    return {name: SamAdapter.from_model(build_sam_model(name), cache_size=4) for name in ('l0', 'sam_vit_b')}


# (LVIS with L0 runs through the tool below; 3 clicks on LVIS to keep the decoder calls few)
@pytest.mark.parametrize('name, kind, clicks', [('l0', 'coco', (1, 3, 5)), ('sam_vit_b', 'coco', (1, 3, 5)),
                                                ('sam_vit_b', 'lvis', (1, 3))],
                         ids=['l0-coco', 'vit_b-coco', 'vit_b-lvis'])
def test_three_modes_end_to_end(sets, adapters, name, kind, clicks, tmp_path):
    from segment_anything import SamPredictor

    from evit_mm.sam import EfficientViTSamPredictor
    adapter = adapters[name]
    expected_predictor = EfficientViTSamPredictor if name == 'l0' else SamPredictor
    assert type(adapter.predictor) is expected_predictor
    ds = ZeroShotDataset(sets[f'{kind}_ann'], sets[f'{kind}_img'])
    dets, det_issues = load_detections(sets[f'{kind}_det'], ds)
    store = ResultStore(str(tmp_path / 'r.jsonl'), {'model': name})
    records = evaluate_dataset(adapter, ds, MODES, store, clicks, detections=dets, progress=False)
    res = summarize(records, ds, MODES, clicks, extra_issues=det_issues)

    assert res['images_evaluated'] == 2
    assert res['box']['count'] == PROMPTED[kind]
    assert all(0 <= e['iou'] <= 100 for r in records for e in r['box'])
    assert set(res['points']) == {f'{k}_click' for k in clicks}
    for k in clicks:
        assert res['points'][f'{k}_click']['count'] == PROMPTED[kind]
        assert 0 <= res['points'][f'{k}_click']['mIoU'] <= 100
    assert 0 <= res['detector']['AP'] <= 1 and res['detector']['detections'] == DETECTIONS[kind]
    assert {k: v['count'] for k, v in res['issues'].items()} == ISSUES[kind]
    for r in records:
        image = ds.images[r['image_id']]
        anns = {a['id']: a for a in ds.anns_by_image[r['image_id']]}
        for e in r['points']:
            # the first click is the model-independent deepest GT point; the next ones follow the predictions
            first = Clicker(ds.gt_mask(anns[e['ann_id']])).next_click(None)
            assert e['clicks'][0] == [first.x, first.y, 1]
            assert 1 <= len(e['clicks']) <= max(clicks) and len(e['ious']) == max(clicks)
        for d in r['detector']:
            assert d['segmentation']['size'] == [image['height'], image['width']]

    # the adapter's batched answer = the model's own predictor, one box at a time (SAM's predict API)
    r = records[-1]
    ann = ds.anns_by_image[r['image_id']][0]
    image, _ = ds.load_image(r['image_id'])
    adapter.set_image(image, r['image_id'], ds.image_path(r['image_id']))
    masks, scores, _ = adapter.predictor.predict(box=np.array(xywh_to_xyxy(ann['bbox'])), multimask_output=True)
    direct = mask_iou(masks[scores.argmax()], ds.gt_mask(ann))
    assert r['box'][0]['ann_id'] == ann['id'] and r['box'][0]['iou'] == pytest.approx(direct, abs=0.5)

    # both sets show the same two photographs: two encoder forwards per model in all
    assert adapter.encoder_calls == 2
    assert adapter.predictor.is_image_set and adapter.predictor.original_size == (image.shape[0], image.shape[1])


def test_tool_lvis_with_efficientvit_sam_l0(sets, tmp_path, capsys):
    from test_sam_zero_shot import load_tool
    out = tmp_path / 'out'
    code = load_tool().main(['--ann-file', sets['lvis_ann'], '--image-dir', sets['lvis_img'], '--model', 'l0',
                             '--mode', 'box', 'points', 'detector', '--clicks', '1', '3', '--det-file',
                             sets['lvis_det'], '--out-dir', str(out), '--vis', '1', '--no-progress'])
    assert code == 0
    captured = capsys.readouterr()
    assert 'no --checkpoint: random weights' in captured.err
    assert '| 3 click | mIoU |' in captured.out and '5 click' not in captured.out
    res = json.load(open(out / 'results.json'))
    assert res['dataset'] == 'lvis' and set(res['points']) == {'1_click', '3_click'}
    assert set(res['detector']) >= {'AP', 'APr', 'APc', 'APf'}
    assert res['box']['count'] == PROMPTED['lvis'] and res['detector']['detections'] == DETECTIONS['lvis']
    assert {k: v['count'] for k, v in res['issues'].items()} == ISSUES['lvis']
    assert len(os.listdir(out / 'vis')) == 3
