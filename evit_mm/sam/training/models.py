"""mmengine models for the two EfficientViT-SAM training phases (thin wrappers around ``EfficientViTSam``).

* :class:`SamDistillModel` (phase 1): the student's image encoder learns to reproduce the teacher's
  ``(256, 64, 64)`` embeddings (SAM ViT-H), with an MSE loss. The teacher's embeddings come from the
  embedding cache (the dataset adds them to each sample) or, without one, from the teacher run online on the
  same image at the teacher's input size. The student is the whole EfficientViT-SAM: its prompt encoder and
  mask decoder (SAM ViT-H's, ``decoder_checkpoint``) are frozen, so a phase-1 checkpoint is a complete model,
  as the reference's ``distilled_model/*.pt`` from which its phase 2 starts.
* :class:`SamE2EModel` (phase 2): everything trains; per image, the prompts the pipeline sampled run through
  the prompt encoder and mask decoder; loss :func:`~.losses.sam_mask_loss` (20 BCE + dice on uncertain points,
  best of the multimask outputs). The IoU head is not supervised by default (as the reference);
  ``iou_loss_weight > 0`` adds SAM's MSE between predicted and actual IoU.

Both keep the model under ``self.sam``: checkpoints hold ``sam.image_encoder.*``, ``sam.prompt_encoder.*``,
``sam.mask_decoder.*`` and nothing of the teacher. ``init_checkpoint`` takes a phase-1/phase-2 checkpoint or an
official ``efficientvit_sam_*.pt`` and loads it strictly.
"""
from __future__ import annotations

import os.path as osp
from typing import Dict, List, Optional, Sequence

import torch
import torch.nn.functional as F
from mmengine.logging import print_log
from mmengine.model import BaseDataPreprocessor, BaseModel
from mmengine.registry import MODELS

from ...models.checkpoint import strip_prefix, unwrap_state_dict
from ...models.sam import SAM_PIXEL_MEAN, SAM_PIXEL_STD, EfficientViTSam, build_efficientvit_sam
from ..prompts import SamPrompts
from .losses import mask_iou_logits, sam_mask_loss
from .teacher import build_sam_teacher

__all__ = ['SamDataPreprocessor', 'SamDistillModel', 'SamE2EModel', 'build_training_sam', 'load_sam_weights']


@MODELS.register_module()
class SamDataPreprocessor(BaseDataPreprocessor):
    """Stack, move to the device and normalise with SAM's mean/std (the pipeline padded with the mean, so the
    padding becomes 0). ``teacher_img`` of the samples (online teacher) becomes ``teacher_inputs``."""

    def __init__(self, mean: Sequence[float] = SAM_PIXEL_MEAN, std: Sequence[float] = SAM_PIXEL_STD,
                 non_blocking: bool = False):
        super().__init__(non_blocking)
        self.register_buffer('mean', torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1), False)
        self.register_buffer('std', torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1), False)

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        return (images.float() - self.mean) / self.std

    def forward(self, data: dict, training: bool = False) -> dict:
        data = self.cast_data(data)
        inputs = data['inputs']
        inputs = torch.stack(list(inputs)) if isinstance(inputs, (list, tuple)) else inputs
        samples = data.get('data_samples')
        out = dict(inputs=self.normalize(inputs), data_samples=samples)
        if samples and all('teacher_img' in s for s in samples):
            out['teacher_inputs'] = self.normalize(torch.stack([s.teacher_img for s in samples]))
            for s in samples:
                del s.teacher_img
        return out


def build_training_sam(variant: str = 'l0', image_size: Optional[int] = None, checkpoint: Optional[str] = None,
                       decoder_checkpoint: Optional[str] = None,
                       backbone_checkpoint: Optional[str] = None) -> EfficientViTSam:
    """EfficientViT-SAM ``variant`` in train mode (arguments of :func:`~evit_mm.models.sam.build_efficientvit_sam`;
    ``decoder_checkpoint``: SAM ViT-H's prompt encoder and mask decoder, as the reference's students).
    ``backbone_checkpoint``: EfficientViT-L/XL backbone weights to start phase 1 from (an ImageNet
    classification checkpoint, official or timm; loaded strictly by ``EfficientViTL.load_pretrained``)."""
    model = build_efficientvit_sam(variant, checkpoint, decoder_checkpoint=decoder_checkpoint, image_size=image_size)
    if backbone_checkpoint:
        model.image_encoder.backbone.load_pretrained(backbone_checkpoint)
    return model.train()


def load_sam_weights(sam: EfficientViTSam, path: str) -> None:
    """Load a phase-1/phase-2 checkpoint (mmengine's, keys ``sam.*``) or an official EfficientViT-SAM file into
    ``sam``, strictly."""
    from mmengine.runner.checkpoint import CheckpointLoader

    from ... import mm  # noqa: F401  (importing evit_mm.mm applies the compat fixes)
    if not osp.isfile(path) and '://' not in path:
        raise FileNotFoundError(f'init_checkpoint not found: {path}')
    state_dict = unwrap_state_dict(CheckpointLoader.load_checkpoint(path, map_location='cpu'))
    if any(k.startswith('sam.') for k in state_dict):  # a training checkpoint: the student's part
        state_dict = strip_prefix(state_dict, 'sam.', select=True)
    sam.load_pretrained(state_dict, source=path)
    print_log(f'EfficientViT-SAM weights loaded from {path} (strict)', logger='current')


class _SamTrainModel(BaseModel):
    def __init__(self, sam: dict, init_checkpoint: Optional[str] = None, data_preprocessor: Optional[dict] = None,
                 init_cfg: Optional[dict] = None):
        super().__init__(data_preprocessor=data_preprocessor or dict(type='SamDataPreprocessor'), init_cfg=init_cfg)
        self.sam = build_training_sam(**sam)
        self.init_checkpoint = init_checkpoint

    def init_weights(self) -> None:
        super().init_weights()
        if self.init_checkpoint:
            load_sam_weights(self.sam, self.init_checkpoint)


@MODELS.register_module()
class SamDistillModel(_SamTrainModel):
    """Phase 1: distil the teacher's image embeddings into EfficientViT-SAM's image encoder (MSE).

    Args:
        sam: :func:`build_training_sam` arguments of the student (``variant``, ``image_size``,
            ``decoder_checkpoint`` = the teacher's SAM checkpoint, for the frozen prompt encoder/mask decoder).
        teacher: :func:`~.teacher.build_sam_teacher` arguments, for the online teacher; ``None`` when the data
            come with cached embeddings. Kept out of the state dict, the optimizer and DDP.
        loss_weight: scale of the MSE.
    """

    def __init__(self, sam: dict = dict(variant='l0'), teacher: Optional[dict] = None, loss_weight: float = 1.0,
                 init_checkpoint: Optional[str] = None, data_preprocessor: Optional[dict] = None,
                 init_cfg: Optional[dict] = None):
        super().__init__(sam, init_checkpoint, data_preprocessor, init_cfg)
        self.sam.prompt_encoder.requires_grad_(False)
        self.sam.mask_decoder.requires_grad_(False)
        self.loss_weight = loss_weight
        # a tuple hides the teacher from state_dict(), parameters() (optimizer, DDP) and train()
        self._teacher = (build_sam_teacher(**teacher),) if teacher else None

    @property
    def teacher(self):
        return self._teacher[0] if self._teacher else None

    def _apply(self, fn, *args, **kwargs):
        super()._apply(fn, *args, **kwargs)
        if self._teacher:
            self._teacher[0]._apply(fn, *args, **kwargs)
        return self

    def teacher_embeddings(self, data_samples, teacher_inputs: Optional[torch.Tensor]) -> torch.Tensor:
        if data_samples and all('teacher_embedding' in s for s in data_samples):
            return torch.stack([s.teacher_embedding for s in data_samples])
        if self.teacher is None or teacher_inputs is None:
            raise RuntimeError('SamDistillModel needs teacher embeddings: give the dataset an embedding_cache, or '
                               'the model a teacher and the pipeline a teacher_size (SamResizeLongestSide/SamPad)')
        return self.teacher(teacher_inputs)

    def forward(self, inputs: torch.Tensor, data_samples=None, mode: str = 'tensor',
                teacher_inputs: Optional[torch.Tensor] = None):
        embeddings = self.sam.image_encoder(inputs)
        if mode == 'loss':
            target = self.teacher_embeddings(data_samples, teacher_inputs)
            if target.shape != embeddings.shape:
                raise ValueError(f'student embeddings {tuple(embeddings.shape)} and teacher embeddings '
                                 f'{tuple(target.shape)} differ in shape')
            return {'loss_distill': self.loss_weight * F.mse_loss(embeddings.float(), target.float())}
        if mode == 'predict':
            return list(embeddings)
        return embeddings


@MODELS.register_module()
class SamE2EModel(_SamTrainModel):
    """Phase 2 (and fine-tuning): EfficientViT-SAM end to end with box/point prompts.

    Args:
        sam: :func:`build_training_sam` arguments.
        init_checkpoint: phase-1 checkpoint (or an official EfficientViT-SAM file) to start from.
        loss: :func:`~.losses.sam_mask_loss` settings (``num_points``, ``oversample_ratio``,
            ``importance_ratio``, ``bce_weight``, ``dice_weight``).
        iou_loss_weight: weight of the MSE between the IoU head's predictions and the actual IoU of every
            output mask (SAM's IoU loss); 0 (the reference) leaves the IoU head unsupervised.
    """

    def __init__(self, sam: dict = dict(variant='l0'), init_checkpoint: Optional[str] = None,
                 loss: Optional[dict] = None, iou_loss_weight: float = 0.0, data_preprocessor: Optional[dict] = None,
                 init_cfg: Optional[dict] = None):
        super().__init__(sam, init_checkpoint, data_preprocessor, init_cfg)
        self.loss_cfg = dict(num_points=112 * 112, oversample_ratio=3.0, importance_ratio=0.75, bce_weight=20.0,
                             dice_weight=1.0)
        self.loss_cfg.update(loss or {})
        self.iou_loss_weight = float(iou_loss_weight)

    def decode(self, embedding: torch.Tensor, sample) -> tuple:
        """Mask logits ``(N, C, 256, 256)`` and predicted IoUs ``(N, C)`` for one image's prompts."""
        sparse, dense = SamPrompts.from_sample(sample).encode(self.sam.prompt_encoder)
        return self.sam.mask_decoder(image_embeddings=embedding, image_pe=self.sam.prompt_encoder.get_dense_pe(),
                                     sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense,
                                     multimask_output=bool(sample.metainfo.get('multimask', False)))

    def forward(self, inputs: torch.Tensor, data_samples=None, mode: str = 'tensor', **kwargs):
        embeddings = self.sam.image_encoder(inputs)
        if mode == 'tensor':
            return embeddings
        outputs = [self.decode(embeddings[i:i + 1], s) for i, s in enumerate(data_samples)]
        if mode == 'predict':
            return [dict(low_res_logits=low, iou_predictions=iou) for low, iou in outputs]
        losses: Dict[str, List[torch.Tensor]] = {'loss': [], 'bce': [], 'dice': [], 'iou': []}
        for (low, iou_pred), s in zip(outputs, data_samples):
            target = s.gt_masks.float() / 255.0
            generator = torch.Generator(device=low.device).manual_seed(int(s.metainfo['sample_seed']))
            loss, bce, dice = sam_mask_loss(low, target, generator=generator, **self.loss_cfg)
            losses['loss'].append(loss)
            losses['bce'].append(bce.detach())
            losses['dice'].append(dice.detach())
            if self.iou_loss_weight:
                losses['iou'].append(((iou_pred.float() - mask_iou_logits(low.detach(), target)) ** 2).flatten())
        out = {'loss_mask': torch.cat(losses['loss']).mean(), 'bce': torch.cat(losses['bce']).mean(),
               'dice': torch.cat(losses['dice']).mean()}
        if self.iou_loss_weight:
            out['loss_iou'] = self.iou_loss_weight * torch.cat(losses['iou']).mean()
        return out
