"""Drawing ground truth next to predictions for a few dataset images, as one PNG (mmdet's visualizer).

:class:`NotedDetLocalVisualizer` is mmdet's ``DetLocalVisualizer`` that writes "0 detections above <thr>" on a
prediction panel with nothing to draw, instead of leaving it looking like the input image. Importing
``evit_mm.mmdet`` registers it under ``DetLocalVisualizer`` in mmdet's ``VISUALIZERS``, so the configs' visualizer
(``tools/test.py --show-dir``, mmdet's DetVisualizationHook) is this one; :func:`draw_predictions` (the quick
start's PNG) uses it too.
"""
from __future__ import annotations

import mmcv
import numpy as np
import torch
from mmdet.registry import VISUALIZERS
from mmdet.structures.mask import PolygonMasks
from mmdet.visualization import DetLocalVisualizer
from mmengine.structures import InstanceData

__all__ = ['NotedDetLocalVisualizer', 'draw_predictions', 'gt_instances', 'no_detections_note']


def no_detections_note(score_thr: float) -> str:
    """What an empty prediction panel says (mmdet draws the predictions with ``score > score_thr``)."""
    return f'0 detections above {score_thr:g}'


class NotedDetLocalVisualizer(DetLocalVisualizer):
    """mmdet's ``DetLocalVisualizer`` (same arguments and drawings); a prediction panel without any instance above
    ``pred_score_thr`` carries the note :func:`no_detections_note`."""

    _score_thr = None

    def add_datasample(self, name, image, data_sample=None, draw_gt=True, draw_pred=True, show=False, wait_time=0,
                       out_file=None, pred_score_thr=0.3, step=0):
        self._score_thr = pred_score_thr
        try:
            return super().add_datasample(name, image, data_sample=data_sample, draw_gt=draw_gt,
                                          draw_pred=draw_pred, show=show, wait_time=wait_time, out_file=out_file,
                                          pred_score_thr=pred_score_thr, step=step)
        finally:
            self._score_thr = None

    def _draw_instances(self, image, instances, classes, palette):
        drawn = super()._draw_instances(image, instances, classes, palette)
        if self._score_thr is None or 'scores' not in instances or len(instances) > 0:
            return drawn  # the ground truth (no scores), or something was drawn
        self.set_image(drawn)
        size = max(10, min(drawn.shape[:2]) // 20)
        self.draw_texts(no_detections_note(self._score_thr), positions=np.array([[size // 2, size // 2]]),
                        colors='white', font_sizes=size,
                        bboxes=dict(facecolor='black', alpha=0.8, pad=0.7, edgecolor='none'))
        return self.get_image()


VISUALIZERS.register_module(name='NotedDetLocalVisualizer', module=NotedDetLocalVisualizer, force=True)
VISUALIZERS.register_module(name='DetLocalVisualizer', module=NotedDetLocalVisualizer, force=True)


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
    ``score > score_thr`` on the right ("0 detections above <score_thr>" where there is none), one row per image,
    saved to ``out_file``."""
    from mmdet.apis import inference_detector
    model.cfg = cfg  # inference_detector builds its test pipeline from model.cfg
    model.eval()
    visualizer = NotedDetLocalVisualizer(name=f'evit_mm_vis_{id(model)}')
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
