"""Drawing ground truth next to predictions for a few dataset images, as one PNG (mmdet's visualizer)."""
from __future__ import annotations

import mmcv
import numpy as np
import torch
from mmdet.apis import inference_detector
from mmdet.structures.mask import PolygonMasks
from mmdet.visualization import DetLocalVisualizer
from mmengine.structures import InstanceData


def gt_instances(info: dict, with_masks: bool = False) -> InstanceData:
    """The ground truth of a dataset entry (``dataset.get_data_info(i)``) as InstanceData."""
    kept = [inst for inst in info['instances'] if not inst.get('ignore_flag', 0)]
    gt = InstanceData()
    gt.bboxes = torch.tensor([inst['bbox'] for inst in kept], dtype=torch.float32).reshape(-1, 4)
    gt.labels = torch.tensor([inst['bbox_label'] for inst in kept], dtype=torch.long)
    if with_masks:
        polygons = PolygonMasks([[np.asarray(p) for p in inst['mask']] for inst in kept],
                                info['height'], info['width'])
        gt.masks = torch.from_numpy(polygons.to_ndarray()).bool()
    return gt


def draw_predictions(model, cfg, dataset, out_file: str, score_thr: float = 0.3, num_images: int = 4,
                     with_masks: bool = False) -> str:
    """Run ``model`` on the first ``num_images`` of ``dataset``; ground truth on the left, predictions with
    ``score >= score_thr`` on the right, one row per image, saved to ``out_file``."""
    model.cfg = cfg  # inference_detector builds its test pipeline from model.cfg
    model.eval()
    visualizer = DetLocalVisualizer(name=f'evit_mm_vis_{id(model)}')
    visualizer.dataset_meta = dict(classes=cfg.metainfo['classes'], palette=cfg.metainfo['palette'])
    rows = []
    for idx in range(min(num_images, len(dataset))):
        info = dataset.get_data_info(idx)
        image = mmcv.imread(info['img_path'], channel_order='rgb')
        result = inference_detector(model, info['img_path'])
        result.gt_instances = gt_instances(info, with_masks)
        visualizer.add_datasample(f'image_{idx}', image, result, draw_gt=True, draw_pred=True,
                                  pred_score_thr=score_thr, show=False)
        rows.append(visualizer.get_image())
    width = max(r.shape[1] for r in rows)
    canvas = np.concatenate([np.pad(r, ((0, 0), (0, width - r.shape[1]), (0, 0))) for r in rows], axis=0)
    mmcv.imwrite(canvas[..., ::-1], out_file)
    return out_file
