"""BoxPromptedSAM: mmdet detector boxes prompt EfficientViT-SAM; masks come back in the original image frame."""
import os.path as osp

import pytest
import torch

from conftest import ROOT, load_tool

CONFIG = osp.join(ROOT, 'configs', 'efficientvit_sam', 'box-prompted-sam-l0_retinanet-efficientvit-m0_coins.py')


def _runner(tmp_path, coins):
    from mmengine.config import Config
    from mmengine.runner import Runner

    import evit_mm.mmdet  # noqa: F401
    from evit_mm.sample_data import coco_cfg_options
    cfg = Config.fromfile(CONFIG)
    cfg.merge_from_dict(coco_cfg_options(coins))
    for loader in ('train_dataloader', 'val_dataloader', 'test_dataloader'):
        cfg[loader].num_workers = 0
        cfg[loader].persistent_workers = False
    cfg.work_dir = str(tmp_path / 'work')
    return Runner.from_cfg(cfg)


def test_masks_land_on_the_prompting_boxes(tmp_path, coins_coco, monkeypatch):
    """Feed known boxes through the whole chain (original frame -> detector input -> SAM prompt frame -> masks
    -> original frame) with a SAM whose "mask" is its prompt box: the masks must reproduce the boxes."""
    from mmengine.structures import InstanceData

    from evit_mm.sam.predictor import EfficientViTSamPredictor
    runner = _runner(tmp_path, coins_coco)
    model = runner.model.eval()
    batch = next(iter(runner.test_dataloader))
    data = model.data_preprocessor(batch, False)
    boxes_by_image = []

    def fake_detector_predict(inputs, samples, rescale=True):
        for sample in samples:
            h, w = sample.ori_shape
            boxes = torch.tensor([[0.1 * w, 0.2 * h, 0.5 * w, 0.6 * h], [0.55 * w, 0.5 * h, 0.95 * w, 0.9 * h]])
            boxes_by_image.append(boxes)
            sample.pred_instances = InstanceData(bboxes=boxes, scores=torch.tensor([0.9, 0.8]),
                                                 labels=torch.zeros(2, dtype=torch.long))
        return samples

    def box_painting_predict_torch(self, boxes=None, multimask_output=True, return_logits=False,
                                   image_index=None, **kwargs):
        h, w = self.original_sizes[image_index]
        scale = max(h, w) / self.prompt_size  # prompt frame (1024) -> this image's frame
        ys, xs = torch.arange(h)[:, None] + 0.5, torch.arange(w)[None, :] + 0.5
        masks = []
        for x0, y0, x1, y1 in (boxes.reshape(-1, 4) * scale).tolist():
            masks.append(((xs >= x0) & (xs <= x1) & (ys >= y0) & (ys <= y1)).float() * 2 - 1)
        logits = torch.stack(masks)[:, None].repeat(1, 3 if multimask_output else 1, 1, 1)
        iou = torch.rand(len(masks), logits.shape[1])
        return logits, iou, None

    monkeypatch.setattr(model.detector, 'predict', fake_detector_predict)
    monkeypatch.setattr(EfficientViTSamPredictor, 'predict_torch', box_painting_predict_torch)
    results = model.predict(data['inputs'], data['data_samples'], rescale=True)
    for result, boxes in zip(results, boxes_by_image):
        masks = result.pred_instances.masks
        assert masks.shape[1:] == tuple(result.ori_shape) and masks.dtype == torch.bool
        for mask, (x0, y0, x1, y1) in zip(masks, boxes.tolist()):
            ys, xs = torch.nonzero(mask, as_tuple=True)
            # each resize (original -> detector input -> mask back to the original) costs at most a pixel
            assert abs(xs.min().item() - x0) <= 2 and abs(xs.max().item() + 1 - x1) <= 2
            assert abs(ys.min().item() - y0) <= 2 and abs(ys.max().item() + 1 - y1) <= 2


def test_no_detections_give_empty_masks(tmp_path, coins_coco, monkeypatch):
    from mmengine.structures import InstanceData
    runner = _runner(tmp_path, coins_coco)
    model = runner.model.eval()
    data = model.data_preprocessor(next(iter(runner.test_dataloader)), False)

    def nothing(inputs, samples, rescale=True):
        for sample in samples:
            sample.pred_instances = InstanceData(bboxes=torch.zeros(0, 4), scores=torch.zeros(0),
                                                 labels=torch.zeros(0, dtype=torch.long))
        return samples

    monkeypatch.setattr(model.detector, 'predict', nothing)
    for result in model.predict(data['inputs'], data['data_samples']):
        assert result.pred_instances.masks.shape == (0, *result.ori_shape)


def test_training_is_refused(tmp_path, coins_coco):
    runner = _runner(tmp_path, coins_coco)
    with pytest.raises(NotImplementedError, match='only predicts'):
        runner.model.loss(None, None)


@pytest.mark.slow
def test_demo_tool_end_to_end(tmp_path, coins_coco):
    """tools/demo_box_prompted_sam.py: CocoMetric on boxes and masks, a PNG overlay, a results json."""
    import json

    from mmengine.config import Config
    from mmengine.registry import DefaultScope
    from mmdet.registry import MODELS
    from PIL import Image

    import evit_mm.mmdet  # noqa: F401
    detector_cfg = Config.fromfile(CONFIG).model.detector
    with DefaultScope.overwrite_default_scope('mmdet'):
        detector = MODELS.build(detector_cfg)
    checkpoint = tmp_path / 'detector.pth'
    torch.save({'state_dict': detector.state_dict()}, checkpoint)
    demo = load_tool('demo_box_prompted_sam')
    out = tmp_path / 'out'
    metrics = demo.main(['--detector-checkpoint', str(checkpoint), '--data-root', coins_coco['root'],
                         '--out-dir', str(out), '--num-images', '1'])
    assert isinstance(metrics, dict)
    assert Image.open(out / 'masks.png').size[0] > 0
    assert json.loads((out / 'results.json').read_text())['detector_checkpoint'] == str(checkpoint)
    with pytest.raises(SystemExit, match='not found'):
        demo.main(['--detector-checkpoint', str(tmp_path / 'missing.pth')])


def test_sam_encoder_as_an_mm_backbone(tmp_path):
    """EfficientViTSamEncoder: the image encoder of an official checkpoint, loaded strictly through init_cfg."""
    from mmdet.registry import MODELS

    import evit_mm.mmdet  # noqa: F401
    from evit_mm.models.checkpoint import CheckpointMismatchError
    from evit_mm.models.sam import build_efficientvit_sam
    sam = build_efficientvit_sam('l0')
    for p in sam.image_encoder.parameters():  # make the weights recognisable
        p.data.normal_(0, 0.02)
    path = tmp_path / 'efficientvit_sam_l0.pt'
    torch.save({'state_dict': sam.state_dict()}, path)
    backbone = MODELS.build(dict(type='EfficientViTSamEncoder', variant='l0',
                                 init_cfg=dict(type='Pretrained', checkpoint=str(path))))
    backbone.init_weights()
    backbone.eval()
    x = torch.randn(1, 3, 512, 512)
    with torch.no_grad():
        (embedding, ) = backbone(x)
        assert torch.equal(embedding, sam.image_encoder(x))
    with pytest.raises(ValueError, match='512x512'):
        backbone(torch.randn(1, 3, 256, 256))
    broken = {k: v for k, v in sam.state_dict().items() if 'neck' not in k}
    with pytest.raises(CheckpointMismatchError, match='neck'):
        backbone.load_pretrained(broken)
