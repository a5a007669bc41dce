"""evit_mm.mmdet.visualization: drawings that say when no detection is above the score threshold."""
import os.path as osp
import uuid

import numpy as np
import torch
from conftest import CONFIGS
from torch import nn

from evit_mm.mm.compat import apply_all

apply_all()


def _empty_prediction(image_shape):
    from mmdet.structures import DetDataSample
    from mmengine.structures import InstanceData
    sample, pred = DetDataSample(), InstanceData()
    pred.bboxes, pred.scores, pred.labels = torch.zeros(0, 4), torch.zeros(0), torch.zeros(0, dtype=torch.long)
    sample.pred_instances = pred
    return sample


def test_drawings_say_when_there_is_no_detection_above_the_threshold(tmp_path, coins_coco, monkeypatch):
    """The quick start's PNG (draw_predictions) and the configs' visualizer (--show-dir) write "0 detections above
    <thr>" on an empty prediction panel, which otherwise is the input image, unchanged."""
    import mmcv
    from mmdet.registry import DATASETS, VISUALIZERS
    from mmengine.config import Config
    from mmengine.registry import DefaultScope

    import evit_mm.mmdet  # noqa: F401
    from evit_mm.mmdet import visualization
    from evit_mm.sample_data import coco_cfg_options

    with DefaultScope.overwrite_default_scope('mmdet'):
        built = VISUALIZERS.build(dict(type='DetLocalVisualizer', name=f'vis_{uuid.uuid4().hex}'))
    assert isinstance(built, visualization.NotedDetLocalVisualizer)  # what --show-dir's hook draws with

    cfg = Config.fromfile(osp.join(CONFIGS, 'quickstart', 'retinanet_efficientvit-m0_fpn_coins.py'))
    cfg.merge_from_dict(coco_cfg_options(coins_coco))
    with DefaultScope.overwrite_default_scope('mmdet'):
        dataset = DATASETS.build(cfg.val_dataloader.dataset)
    import mmdet.apis
    monkeypatch.setattr(mmdet.apis, 'inference_detector', lambda model, path: _empty_prediction(None))
    out = visualization.draw_predictions(nn.Module(), cfg, dataset, str(tmp_path / 'det.png'), score_thr=0.3,
                                         num_images=1)
    drawn = mmcv.imread(out, channel_order='rgb')
    image = mmcv.imread(dataset.get_data_info(0)['img_path'], channel_order='rgb')
    h, w = image.shape[:2]
    prediction_panel = drawn[:h, w:2 * w]
    assert prediction_panel.shape == image.shape
    changed = np.argwhere((prediction_panel != image).any(-1))
    assert len(changed), 'the empty prediction panel is the input image: nothing says there is no detection'
    assert changed[:, 0].max() < h // 3 and changed[:, 1].max() < w  # the note, top left
    assert visualization.no_detections_note(0.3) == '0 detections above 0.3'
