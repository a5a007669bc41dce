"""Box-prompted instance segmentation in mmdet: any mmdet detector's boxes become EfficientViT-SAM masks.

This is the zero-shot protocol of EfficientViT-SAM (detector boxes as prompts, one mask per box, the box's
score kept) as an mmdet model, so that mmdet's test loop, ``CocoMetric(metric=['bbox', 'segm'])`` and its
visualizer work on it unchanged. It only predicts: train the detector with its own config.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from mmdet.models.detectors.base import BaseDetector
from mmdet.registry import MODELS

from ..models.sam import build_efficientvit_sam
from ..sam.predictor import EfficientViTSamPredictor
from ..sam.transforms import get_preprocess_shape


@MODELS.register_module()
class BoxPromptedSAM(BaseDetector):
    """An mmdet detector followed by EfficientViT-SAM prompted with its boxes.

    Args:
        detector (dict): config of any mmdet detector (its own ``data_preprocessor`` is not used: this model's
            is, and should be the detector's).
        sam (dict): arguments of :func:`evit_mm.models.sam.build_efficientvit_sam`, e.g.
            ``dict(variant='l0', checkpoint='efficientvit_sam_l0.pt')``.
        multimask_output (bool): ask SAM for 3 masks per box and keep the one with the highest predicted IoU
            (the reference's evaluation setting) instead of the single-mask output.
        max_boxes (int): at most this many boxes per image are segmented (the highest-scoring ones).
        data_preprocessor (dict): mmdet's ``DetDataPreprocessor`` config.
    """

    def __init__(self, detector: dict, sam: dict, multimask_output: bool = True, max_boxes: int = 100,
                 data_preprocessor: dict | None = None, init_cfg=None):
        super().__init__(data_preprocessor=data_preprocessor, init_cfg=init_cfg)
        detector = dict(detector)
        detector.pop('data_preprocessor', None)
        self.detector = MODELS.build(detector)
        self.sam = build_efficientvit_sam(**sam)
        self.multimask_output = multimask_output
        self.max_boxes = max_boxes

    def loss(self, batch_inputs, batch_data_samples):
        raise NotImplementedError('BoxPromptedSAM only predicts; train the detector with its own config')

    def _forward(self, batch_inputs, batch_data_samples=None):
        return self.detector._forward(batch_inputs, batch_data_samples)

    def extract_feat(self, batch_inputs):
        return self.detector.extract_feat(batch_inputs)

    def _images(self, batch_inputs, samples):
        """The detector's input images back in 0-255 RGB, without the batch padding."""
        preprocessor = self.data_preprocessor
        images = []
        for inputs, sample in zip(batch_inputs, samples):
            h, w = sample.img_shape
            image = inputs[:, :h, :w].float() * preprocessor.std + preprocessor.mean
            if not getattr(preprocessor, '_channel_conversion', True):  # the pipeline kept BGR
                image = image.flip(0)
            images.append(image.clamp(0, 255))
        return images

    @torch.no_grad()
    def predict(self, batch_inputs, batch_data_samples, rescale: bool = True):
        results = self.detector.predict(batch_inputs, batch_data_samples, rescale=rescale)
        predictor = EfficientViTSamPredictor(self.sam)
        images = self._images(batch_inputs, results)
        # (not segment_anything's ResizeLongestSide.apply_image_torch: it takes B and C for the image size)
        sizes = [tuple(image.shape[-2:]) for image in images]
        predictor.set_torch_image_batch(
            [F.interpolate(image[None], get_preprocess_shape(*size, predictor.encoder_size), mode='bilinear',
                           align_corners=False, antialias=True)[0] for image, size in zip(images, sizes)],
            sizes)
        for index, (image, sample) in enumerate(zip(images, results)):
            instances = sample.pred_instances
            if len(instances) > self.max_boxes:
                instances = instances[instances.scores.topk(self.max_boxes).indices]
            h, w = image.shape[-2:]
            out_h, out_w = sample.ori_shape if rescale else (h, w)
            if len(instances) == 0:
                instances.masks = torch.zeros((0, out_h, out_w), dtype=torch.bool, device=image.device)
                sample.pred_instances = instances
                continue
            boxes = instances.bboxes
            if rescale:  # the detector returned boxes in the original image: back to its input scale
                boxes = boxes * boxes.new_tensor(sample.scale_factor).repeat(2)
            boxes = predictor.transform.apply_boxes_torch(boxes, (h, w))
            logits, iou, _ = predictor.predict_torch(boxes=boxes, multimask_output=self.multimask_output,
                                                     return_logits=True, image_index=index)
            if self.multimask_output:  # keep the mask SAM rates best, as the reference evaluation does
                logits = logits[torch.arange(len(logits)), iou.argmax(dim=1)][:, None]
            if (out_h, out_w) != (h, w):
                logits = F.interpolate(logits, (out_h, out_w), mode='bilinear', align_corners=False)
            instances.masks = logits[:, 0] > self.sam.mask_threshold
            sample.pred_instances = instances
        return results
