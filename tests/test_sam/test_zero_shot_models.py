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

from evit_mm.sam.zero_shot import (MODES, Clicker, ResultStore, SamAdapter, ZeroShotDataset, build_zero_shot_sam,
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
    return {name: SamAdapter.from_model(build_zero_shot_sam(name), cache_size=4) for name in ('l0', 'sam_vit_b')}


# (LVIS with L0 runs through the tool below. Every click round costs a mask-decoder call per annotation, which
# is slow for ViT-B on a CPU: 5 rounds with L0, fewer with ViT-B; the clicker is the same code for both.)
@pytest.mark.parametrize('name, kind, clicks', [('l0', 'coco', (1, 3, 5)), ('sam_vit_b', 'coco', (1, 3)),
                                                ('sam_vit_b', 'lvis', (1,))],
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
    from conftest import load_tool
    out, tool = tmp_path / 'out', load_tool('eval_sam_zero_shot')
    code = tool.main(['--ann-file', sets['lvis_ann'], '--image-dir', sets['lvis_img'], '--model', 'l0',
                      '--mode', 'box', 'points', 'detector', '--clicks', '1', '3', '--det-file',
                      sets['lvis_det'], '--out-dir', str(out), '--vis', '1', '--no-progress'])
    assert code == 0
    captured = capsys.readouterr()
    assert 'neither --pretrained nor --checkpoint: random weights' in captured.err
    assert '| 3 click | mIoU |' in captured.out and '5 click' not in captured.out
    res = json.load(open(out / 'results.json'))
    assert res['dataset'] == 'lvis' and set(res['points']) == {'1_click', '3_click'}
    assert set(res['detector']) >= {'AP', 'APr', 'APc', 'APf'}
    assert res['box']['count'] == PROMPTED['lvis'] and res['detector']['detections'] == DETECTIONS['lvis']
    assert {k: v['count'] for k, v in res['issues'].items()} == ISSUES['lvis']
    assert len(os.listdir(out / 'vis')) == 3


def test_metric_in_mmdets_test_loop_equals_cocometric(tmp_path, coins_coco, monkeypatch):
    """SamZeroShotMetric inside an mmengine Runner's test loop, next to mmdet's own CocoMetric, on BoxPromptedSAM's
    predictions (detector boxes -> SAM masks): both must report the same segm AP. The detector is replaced by
    one that returns the ground-truth boxes, and SAM's masks by its prompt boxes filled (so that the AP is
    neither 0 nor 1 on round coins)."""
    import torch
    from mmengine.config import Config
    from mmengine.runner import Runner
    from mmengine.structures import InstanceData

    import evit_mm.mmdet  # noqa: F401
    import evit_mm.sam.zero_shot.metric  # noqa: F401
    from evit_mm.sam.predictor import EfficientViTSamPredictor
    from evit_mm.sample_data import coco_cfg_options
    from conftest import ROOT
    cfg = Config.fromfile(os.path.join(ROOT, 'configs', 'efficientvit_sam',
                                       'box-prompted-sam-l0_retinanet-efficientvit-m0_coins.py'))
    cfg.merge_from_dict(coco_cfg_options(coins_coco))
    cfg.test_dataloader.num_workers = 0
    cfg.test_dataloader.persistent_workers = False
    cfg.test_evaluator = [dict(type='CocoMetric', ann_file=coins_coco['val_ann'], metric=['segm']),
                          dict(type='SamZeroShotMetric', ann_file=coins_coco['val_ann'], modes=['detector'])]
    cfg.work_dir = str(tmp_path / 'work')
    runner = Runner.from_cfg(cfg)
    gt = json.load(open(coins_coco['val_ann']))

    def gt_box_detector(inputs, samples, rescale=True):
        for sample in samples:
            boxes = [[x, y, x + w, y + h] for a in gt['annotations'] if a['image_id'] == sample.img_id
                     for x, y, w, h in [a['bbox']]]
            n = len(boxes)
            sample.pred_instances = InstanceData(bboxes=torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
                                                 scores=torch.linspace(0.9, 0.5, n), labels=torch.zeros(n).long())
        return samples

    def box_painting_predict_torch(self, boxes=None, multimask_output=True, return_logits=False,
                                   image_index=None, **kwargs):
        h, w = self.original_sizes[image_index]
        scale = max(h, w) / self.prompt_size
        ys, xs = torch.arange(h)[:, None] + 0.5, torch.arange(w)[None, :] + 0.5
        masks = [((xs >= x0) & (xs <= x1) & (ys >= y0) & (ys <= y1)).float() * 2 - 1
                 for x0, y0, x1, y1 in (boxes.reshape(-1, 4) * scale).tolist()]
        logits = torch.stack(masks)[:, None].repeat(1, 3 if multimask_output else 1, 1, 1)
        return logits, torch.rand(len(masks), logits.shape[1]), None

    monkeypatch.setattr(runner.model.detector, 'predict', gt_box_detector)
    monkeypatch.setattr(EfficientViTSamPredictor, 'predict_torch', box_painting_predict_torch)
    metrics = runner.test()
    ours = metrics['sam_zero_shot/detector/AP']
    assert 0.05 < ours < 0.95
    assert ours == pytest.approx(metrics['coco/segm_mAP'], abs=5e-4)  # CocoMetric rounds to 3 decimals
    assert metrics['sam_zero_shot/detector/AP50'] == pytest.approx(metrics['coco/segm_mAP_50'], abs=5e-4)
