"""EfficientViT-SAM: SAM with an EfficientViT-L/XL image encoder (pure PyTorch + ``segment_anything``).

Paper: "EfficientViT-SAM: Accelerated Segment Anything Model Without Accuracy Loss" (Zhang et al., 2024); the
reference implementation is ``mit-han-lab/efficientvit`` (``efficientvit/models/efficientvit/sam.py``).

The model is SAM with its ViT image encoder swapped:

* **image encoder** = an EfficientViT-L/XL backbone of the core (:class:`~evit_mm.models.efficientvit_mit.
  EfficientViTL`) -> :class:`SamNeck` (per input: 1x1 conv + BN, bicubic resize to 64x64; sum; ``head_depth``
  residual blocks; 1x1 conv to 256) -> ``LayerNorm2d(256)``. Output: ``(B, 256, 64, 64)``, whatever the input
  size (the neck resizes to 64x64, so any input whose size is a multiple of 32 (L) / 64 (XL) works).
* **prompt encoder and mask decoder** are ``segment_anything``'s own ``PromptEncoder(256, (64, 64), (1024,
  1024), 16)`` and ``MaskDecoder(3, TwoWayTransformer(2, 256, 2048, 8), 256, 3, 256)``: the same classes and
  settings as SAM ViT-B/L/H, so SAM's ``prompt_encoder.*`` / ``mask_decoder.*`` weights fit.
* :class:`EfficientViTSam` subclasses ``segment_anything.modeling.Sam``.

Two coordinate frames (as in the reference):

* the **encoder frame**: images are resized so that their longest side is ``image_encoder.img_size`` (512 for
  L0-L2, 1024 for XL0/XL1), normalised with SAM's mean/std and zero-padded at the bottom/right to a square;
* the **prompt frame**: prompts (points, boxes) and the ``input_size`` that :meth:`EfficientViTSam.
  postprocess_masks` crops to are in the frame of the image resized to longest side
  ``prompt_encoder.input_image_size`` = 1024, for every variant. For the 512 models the 64x64 embedding covers
  the padded 512 square, i.e. the padded 1024 square of the prompt frame, so nothing else needs scaling.

Norm eps: the reference sets the eps of *every* ``BatchNorm``/``LayerNorm``/``GroupNorm`` of a SAM model to 1e-6
after construction, including the ``nn.LayerNorm``s of SAM's ``TwoWayTransformer`` (1e-5 in SAM itself);
SAM's ``LayerNorm2d`` (not an ``nn.LayerNorm``) keeps its own 1e-6. :func:`build_efficientvit_sam` does the same.

State-dict keys are the official ones (``image_encoder.backbone.stages.*``, ``image_encoder.neck.input_ops.*``,
``image_encoder.neck.middle.*``, ``image_encoder.neck.output_ops.0.op_list.0.conv.*``, ``image_encoder.norm.*``,
``prompt_encoder.*``, ``mask_decoder.*``), so the published ``efficientvit_sam_*.pt`` files load strictly.
"""
from __future__ import annotations

from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from segment_anything.modeling import MaskDecoder, PromptEncoder, Sam, TwoWayTransformer
from segment_anything.modeling.common import LayerNorm2d
from segment_anything.utils.transforms import ResizeLongestSide
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from .checkpoint import (CheckpointMismatchError, LoadReport, describe_source, load_state_dict_strict,
                         read_checkpoint, strip_prefix)
from .contract import Fusable, LoadsPretrained
from .convert_mit import detect_sam_checkpoint_format
from .efficientvit_mit import EfficientViTL, FusedMBConv, MBConv, ResBlock, Residual
from .layers import ActType, ConvNormAct, DAGHead, OpSequence, Resize, stage_number
from .registry import SAM_VARIANTS as _SAM_VARIANTS, variant_key

__all__ = [
    'SAM_VARIANTS', 'SAM_PIXEL_MEAN', 'SAM_PIXEL_STD', 'SAM_NORM_EPS',
    'SamNeck', 'EfficientViTSamImageEncoder', 'EfficientViTSam',
    'build_efficientvit_sam', 'build_efficientvit_sam_image_encoder', 'EfficientViTSamBackbone',
    'efficientvit_sam_model_registry',
    'load_efficientvit_sam_checkpoint', 'load_sam_prompt_decoder', 'detect_sam_checkpoint_format',
    'set_norm_eps', 'normalize_variant',
]

#: SAM's pixel statistics (RGB, 0-255), used by every variant.
SAM_PIXEL_MEAN = (123.675, 116.28, 103.53)
SAM_PIXEL_STD = (58.395, 57.12, 57.375)
#: The eps the reference gives every norm layer of an EfficientViT-SAM model.
SAM_NORM_EPS = 1e-6

#: The five published variants (reference ``sam.py``): backbone arch, neck settings, encoder input size; declared
#: in the registry (:data:`evit_mm.models.registry.SAM_VARIANTS`).
SAM_VARIANTS: Dict[str, Dict[str, Any]] = _SAM_VARIANTS


def normalize_variant(variant: str) -> str:
    """``'l0'`` from ``'l0'``, ``'L0'``, ``'efficientvit-sam-l0'``, ``'efficientvit_sam_xl1'`` ..."""
    key = variant_key(variant, 'sam')
    if key not in SAM_VARIANTS:
        raise ValueError(f'unknown EfficientViT-SAM variant {variant!r}; known: {", ".join(SAM_VARIANTS)}')
    return key


def set_norm_eps(model: nn.Module, eps: float = SAM_NORM_EPS) -> nn.Module:
    """Set the eps of every ``BatchNorm``, ``nn.LayerNorm`` and ``GroupNorm`` in ``model`` (what the reference's
    model zoo does after building a SAM model). SAM's ``LayerNorm2d`` is not an ``nn.LayerNorm`` and keeps its
    own eps (1e-6), as in the reference."""
    for m in model.modules():
        if isinstance(m, (nn.GroupNorm, nn.LayerNorm, _BatchNorm)):
            m.eps = eps
    return model


# --------------------------------------------------------------------------------------------------------------
# Image encoder
# --------------------------------------------------------------------------------------------------------------

class SamNeck(DAGHead):
    """The EfficientViT-SAM neck (reference ``SamNeck``, a :class:`~evit_mm.models.layers.DAGHead`).

    For each input in ``fid_list`` order: 1x1 conv + BN (no activation), bicubic resize to ``embed_size``; the
    branches are summed, run through ``head_depth`` residual ``middle_op`` blocks (``'fmb'`` FusedMBConv, ``'mb'``
    MBConv, ``'res'`` ResBlock; BN everywhere, activation ``act``) and projected by a 1x1 conv (with bias, no norm)
    to ``out_dim`` channels.

    Args:
        fid_list: the backbone stages read, reference names (``('stage4', 'stage3', 'stage2')`` for L,
            ``('stage5', 'stage4', 'stage3')`` for XL).
        in_channel_list: their channels.
        head_width, head_depth, expand_ratio, middle_op: the fused map's width, the number of middle blocks,
            their expand ratio and type.
        out_dim: output channels (256, SAM's embedding width).
        embed_size: output spatial size (64, SAM's embedding size).
        act: activation (``'gelu'``, the tanh approximation, as the reference).
        norm_eps: BatchNorm eps (1e-6 for every SAM model).

    ``forward`` takes the features as a sequence in ``fid_list`` order or as a dict keyed by the stage names.
    Module names give the reference's keys: ``input_ops.{i}.op_list.0.{conv,norm}``, ``middle.op_list.{k}.main``,
    ``output_ops.0.op_list.0.conv``.
    """

    def __init__(self, fid_list: Sequence[str], in_channel_list: Sequence[int], head_width: int, head_depth: int,
                 expand_ratio: float, middle_op: str, out_dim: int = 256, embed_size: int = 64,
                 act: ActType = 'gelu', norm_eps: float = SAM_NORM_EPS):
        if len(fid_list) != len(in_channel_list):
            raise ValueError('fid_list and in_channel_list must have the same length')
        blocks = {'fmb': FusedMBConv, 'mb': MBConv, 'res': ResBlock}
        if middle_op not in blocks:
            raise ValueError(f"middle_op must be one of {sorted(blocks)}, got {middle_op!r}")
        input_ops = [OpSequence([ConvNormAct(cin, head_width, 1, norm_eps=norm_eps), Resize(embed_size)])
                     for cin in in_channel_list]
        block = blocks[middle_op]
        middle = OpSequence([Residual(block(head_width, head_width, 1, expand_ratio, act=act, norm_eps=norm_eps))
                             for _ in range(head_depth)])
        super().__init__(input_ops, middle, [OpSequence([ConvNormAct(head_width, out_dim, 1, bias=True, norm=False)])])
        self.fid_list = tuple(fid_list)
        self.stage_ids = tuple(stage_number(f) for f in fid_list)
        self.embed_size = int(embed_size)
        self.out_dim = out_dim

    def forward(self, feats: Union[Sequence[torch.Tensor], Mapping[str, torch.Tensor]]) -> torch.Tensor:
        if isinstance(feats, Mapping):
            feats = [feats[f] for f in self.fid_list]
        elif isinstance(feats, torch.Tensor):
            raise TypeError('SamNeck takes a sequence or dict of backbone features, not a tensor')
        if len(feats) != len(self.input_ops):
            raise ValueError(f'SamNeck expects {len(self.input_ops)} features ({", ".join(self.fid_list)}), '
                             f'got {len(feats)}')
        return self.forward_dag(feats)


class EfficientViTSamImageEncoder(Fusable, nn.Module):
    """``backbone`` -> ``neck`` -> ``norm`` (``LayerNorm2d(256)``): images ``(B, 3, S, S)`` -> ``(B, 256, 64, 64)``.

    ``img_size`` is the encoder's input size ``S`` (512 for L0-L2, 1024 for XL0/XL1): the size images are
    resized (longest side) and padded to. The backbone returns exactly the stages the neck reads.
    """

    def __init__(self, backbone: EfficientViTL, neck: SamNeck, img_size: int = 1024, out_dim: int = 256):
        super().__init__()
        if tuple(backbone.out_indices) != tuple(sorted(neck.stage_ids)):
            raise ValueError(f'the backbone returns stages {tuple(backbone.out_indices)}, the neck reads '
                             f'{neck.stage_ids}: build the backbone with out_indices={tuple(sorted(neck.stage_ids))}')
        self.backbone = backbone
        self.neck = neck
        self.norm = LayerNorm2d(out_dim, eps=SAM_NORM_EPS)
        self.img_size = int(img_size)

    def _fuse(self) -> None:
        self.backbone.fuse()
        self.neck.fuse()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(f'the image encoder takes (B, 3, H, W) images, got shape {tuple(x.shape)}')
        feats = self.backbone(x)  # in stage order; the neck sums them in its fid_list order
        return self.norm(self.neck({f'stage{i}': f for i, f in zip(self.backbone.out_indices, feats)}))


# --------------------------------------------------------------------------------------------------------------
# The composed model
# --------------------------------------------------------------------------------------------------------------

class EfficientViTSam(LoadsPretrained, Sam):
    """SAM with an EfficientViT image encoder; a ``segment_anything.modeling.Sam``.

    Differences from ``Sam`` (all forced by the encoder input being smaller than the prompt frame for L0-L2; for
    XL0/XL1 both frames are 1024 and everything is as in SAM):

    * :attr:`image_size` = ``(prompt frame, encoder input)``, e.g. ``(1024, 512)``, as the reference;
    * :meth:`preprocess` pads to ``image_encoder.img_size`` (the encoder input) and rejects larger images;
    * :meth:`postprocess_masks` upsamples the low-res masks to the *prompt* frame (1024) and crops to
      ``input_size`` **in the prompt frame** (the reference's convention);
    * :meth:`forward` takes images resized to the encoder size (longest side ``image_encoder.img_size``) and
      prompts in the prompt frame, and returns SAM's list of dicts.
    """

    def __init__(self, image_encoder: EfficientViTSamImageEncoder, prompt_encoder: PromptEncoder,
                 mask_decoder: MaskDecoder, pixel_mean: Sequence[float] = SAM_PIXEL_MEAN,
                 pixel_std: Sequence[float] = SAM_PIXEL_STD) -> None:
        super().__init__(image_encoder, prompt_encoder, mask_decoder, list(pixel_mean), list(pixel_std))
        if tuple(prompt_encoder.input_image_size) != (prompt_encoder.input_image_size[0],) * 2:
            raise ValueError('the prompt frame must be square')

    @property
    def prompt_size(self) -> int:
        """The side of the prompt frame (1024)."""
        return int(self.prompt_encoder.input_image_size[0])

    @property
    def image_size(self) -> Tuple[int, int]:
        """``(prompt frame, encoder input)`` sizes, as the reference's ``EfficientViTSam.image_size``."""
        return self.prompt_size, int(self.image_encoder.img_size)

    def prompt_frame_size(self, original_size: Sequence[int]) -> Tuple[int, int]:
        """The ``(H, W)`` of an image of ``original_size`` resized to longest side 1024: the ``input_size`` that
        :meth:`postprocess_masks` takes."""
        return ResizeLongestSide.get_preprocess_shape(int(original_size[0]), int(original_size[1]),
                                                      self.prompt_size)

    def preprocess(self, x: torch.Tensor) -> torch.Tensor:
        """Normalise (SAM's mean/std, 0-255 input) and zero-pad bottom/right to the encoder's square input.
        ``x``: ``(3, h, w)`` or ``(B, 3, h, w)`` with ``max(h, w) <= image_encoder.img_size``."""
        s = self.image_encoder.img_size
        if x.dim() not in (3, 4) or x.shape[-3] != 3:
            raise ValueError(f'preprocess takes (3, H, W) or (B, 3, H, W) images, got {tuple(x.shape)}')
        h, w = x.shape[-2:]
        if h > s or w > s:
            raise ValueError(f'image of size {h}x{w} is larger than the encoder input {s}x{s}: resize its '
                             f'longest side to {s} first (ResizeLongestSide({s}))')
        x = (x.to(self.pixel_mean.dtype) - self.pixel_mean) / self.pixel_std
        return F.pad(x, (0, s - w, 0, s - h))

    def postprocess_masks(self, masks: torch.Tensor, input_size: Tuple[int, ...],
                          original_size: Tuple[int, ...]) -> torch.Tensor:
        """Low-res masks ``(B, C, 256, 256)`` -> ``(B, C, *original_size)``: bilinear to the 1024 prompt frame,
        crop to ``input_size`` (the image's size in that frame, see :meth:`prompt_frame_size`), bilinear to
        ``original_size`` (as the reference).

        Raises ``ValueError`` when ``input_size`` is not in the prompt frame (its longest side is not 1024): that is
        what segment_anything's ``SamPredictor`` passes for L0-L2 (it maps images *and prompts* to the 512 encoder
        frame), whose masks would otherwise be silently wrong."""
        p = self.prompt_size
        if max(int(input_size[0]), int(input_size[1])) != p:
            s = int(self.image_encoder.img_size)
            raise ValueError(
                f'input_size {tuple(int(v) for v in input_size)} is not in the {p} prompt frame (longest side {p}): '
                f'EfficientViT-SAM takes prompts and input_size in the {p} frame and images resized to {s} for its '
                f'encoder. segment_anything\'s SamPredictor / SamAutomaticMaskGenerator use the encoder size for both '
                'and would return wrong masks: use evit_mm.sam.EfficientViTSamPredictor / '
                'EfficientViTSamAutomaticMaskGenerator (input_size = model.prompt_frame_size(original_size)).')
        masks = F.interpolate(masks, (p, p), mode='bilinear', align_corners=False)
        masks = masks[..., :int(input_size[0]), :int(input_size[1])]
        return F.interpolate(masks, tuple(int(s) for s in original_size), mode='bilinear', align_corners=False)

    @torch.no_grad()
    def forward(self, batched_input: List[Dict[str, Any]], multimask_output: bool) -> List[Dict[str, torch.Tensor]]:
        """End-to-end prediction, with ``Sam.forward``'s interface.

        Each record: ``'image'`` ``(3, h, w)`` (0-255, RGB) resized to longest side ``image_encoder.img_size``;
        ``'original_size'`` ``(H, W)``; optional ``'point_coords'`` ``(B, N, 2)`` + ``'point_labels'`` ``(B, N)``,
        ``'boxes'`` ``(B, 4)``, ``'mask_inputs'`` ``(B, 1, 256, 256)``, with coordinates in the 1024 prompt frame
        (``ResizeLongestSide(1024).apply_coords(coords, original_size)``). Returns, per image, ``masks``
        ``(B, C, H, W)`` bool, ``iou_predictions`` ``(B, C)`` and ``low_res_logits`` ``(B, C, 256, 256)``.
        """
        images = torch.stack([self.preprocess(rec['image']) for rec in batched_input], dim=0)
        embeddings = self.image_encoder(images)
        outputs = []
        for rec, emb in zip(batched_input, embeddings):
            points = (rec['point_coords'], rec['point_labels']) if 'point_coords' in rec else None
            sparse, dense = self.prompt_encoder(points=points, boxes=rec.get('boxes'), masks=rec.get('mask_inputs'))
            low_res, iou = self.mask_decoder(
                image_embeddings=emb.unsqueeze(0), image_pe=self.prompt_encoder.get_dense_pe(),
                sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense, multimask_output=multimask_output)
            original_size = tuple(int(s) for s in rec['original_size'])
            masks = self.postprocess_masks(low_res, self.prompt_frame_size(original_size), original_size)
            outputs.append({'masks': masks > self.mask_threshold, 'iou_predictions': iou,
                            'low_res_logits': low_res})
        return outputs

    def _convert_checkpoint(self, state_dict, fmt):
        """An official EfficientViT-SAM checkpoint (``efficientvit_sam_{l0..xl1}.pt``: ``image_encoder.backbone/neck/
        norm``, ``prompt_encoder``, ``mask_decoder``), as it is. A SAM ViT checkpoint raises ``ValueError``
        pointing to :func:`load_sam_prompt_decoder`."""
        found = detect_sam_checkpoint_format(state_dict)
        if found != 'efficientvit_sam' or fmt not in ('auto', found):
            kind = {'sam_vit': 'SAM ViT', 'prompt_decoder': 'prompt-encoder/mask-decoder'}.get(found, found)
            raise ValueError(f'this is a {kind} checkpoint, not an EfficientViT-SAM one: it has no EfficientViT image '
                             'encoder. Load its prompt encoder and mask decoder with load_sam_prompt_decoder(model, '
                             'path) (or build_efficientvit_sam(..., decoder_checkpoint=path)).')
        return state_dict, LoadReport(format=found)


# --------------------------------------------------------------------------------------------------------------
# Checkpoints
# --------------------------------------------------------------------------------------------------------------

def load_efficientvit_sam_checkpoint(model: EfficientViTSam, src) -> EfficientViTSam:
    """``model.load_pretrained(src)`` (see :meth:`EfficientViTSam._convert_checkpoint`); returns ``model``."""
    model.load_pretrained(src)
    return model


def load_sam_prompt_decoder(model: Sam, src) -> Sam:
    """Populate ``model.prompt_encoder`` and ``model.mask_decoder`` strictly from a SAM checkpoint (ViT-B/L/H
    ``sam_vit_*.pth``, an EfficientViT-SAM checkpoint, or a dict holding only these two parts); the image
    encoder is left untouched. Raises :class:`~evit_mm.models.checkpoint.CheckpointMismatchError` listing the
    key differences of each part on a mismatch.

    Note: EfficientViT-SAM runs the decoder's ``nn.LayerNorm``s with eps 1e-6 (SAM: 1e-5); the eps is not part of
    the checkpoint and stays 1e-6, so outputs differ from SAM's own decoder by about that much."""
    name = describe_source(src)
    sd = strip_prefix(read_checkpoint(src), 'module.')
    detect_sam_checkpoint_format(sd)  # a clear error for unrelated dicts
    for part in ('prompt_encoder', 'mask_decoder'):
        sub = strip_prefix(sd, part + '.', select=True)
        if not sub:
            raise CheckpointMismatchError(f'{name} holds no {part}.* weights', missing=[f'{part}.*'])
        load_state_dict_strict(getattr(model, part), sub, source=f'{name} [{part}.*]')
    return model


# --------------------------------------------------------------------------------------------------------------
# Builder
# --------------------------------------------------------------------------------------------------------------

def build_efficientvit_sam_image_encoder(variant: str = 'l0', image_size: Optional[int] = None,
                                         norm_eps: float = SAM_NORM_EPS) -> EfficientViTSamImageEncoder:
    """The image encoder of EfficientViT-SAM ``variant`` alone (arguments as :func:`build_efficientvit_sam`)."""
    key = normalize_variant(variant)
    cfg = SAM_VARIANTS[key]
    size = int(cfg['image_size'] if image_size is None else image_size)
    stride = 2 ** (max(stage_number(f) for f in cfg['fid_list']) + 1)
    if size <= 0 or size % stride:
        raise ValueError(f'image_size for {key} must be a positive multiple of {stride}, got {image_size}')
    stages = tuple(stage_number(f) for f in cfg['fid_list'])
    backbone = EfficientViTL(cfg['backbone'], out_indices=stages, norm_eps=norm_eps)
    neck = SamNeck(cfg['fid_list'], cfg['in_channel_list'], cfg['head_width'], cfg['head_depth'],
                   cfg['expand_ratio'], cfg['middle_op'], norm_eps=norm_eps)
    return set_norm_eps(EfficientViTSamImageEncoder(backbone, neck, img_size=size), norm_eps)


class EfficientViTSamBackbone(Fusable, LoadsPretrained, nn.Module):
    """EfficientViT-SAM's image encoder as a backbone for dense prediction (registered in mmdet and mmseg as
    ``EfficientViTSamEncoder``).

    Takes normalised ``(B, 3, S, S)`` images, ``S`` the encoder size (512 for L0-L2, 1024 for XL0/XL1; pad or
    resize to it in the pipeline, as SAM does), and returns a 1-tuple with the ``(B, 256, 64, 64)`` image
    embedding. :meth:`load_pretrained` takes the ``image_encoder.*`` weights of an official EfficientViT-SAM
    checkpoint (or an encoder-only state dict), strictly.
    """

    def __init__(self, variant: str = 'l0', image_size: Optional[int] = None, norm_eps: float = SAM_NORM_EPS):
        super().__init__()
        self.encoder = build_efficientvit_sam_image_encoder(variant, image_size, norm_eps)
        self.variant = normalize_variant(variant)
        self.out_channels = (256, )

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor]:
        size = self.encoder.img_size
        if tuple(x.shape[-2:]) != (size, size):
            raise ValueError(f'EfficientViT-SAM-{self.variant.upper()} encodes {size}x{size} images, got '
                             f'{tuple(x.shape[-2:])}: resize/pad to {size} in the data pipeline')
        return (self.encoder(x), )

    def _convert_checkpoint(self, state_dict, fmt):
        """The ``image_encoder.*`` part of an EfficientViT-SAM checkpoint, or an encoder-only state dict."""
        if any(k.startswith('image_encoder.') for k in state_dict):
            other = {k: v for k, v in state_dict.items() if not k.startswith('image_encoder.')}
            encoder = strip_prefix(state_dict, 'image_encoder.', select=True)
            report = LoadReport(format='efficientvit_sam', part='image_encoder.', other=other)
        else:
            encoder, report = state_dict, LoadReport(format='image_encoder')
        return {f'encoder.{k}': v for k, v in encoder.items()}, report

    def _fuse(self) -> None:
        self.encoder.fuse()


def build_efficientvit_sam(variant: str = 'l0', checkpoint=None, *, decoder_checkpoint=None,
                           image_size: Optional[int] = None, norm_eps: float = SAM_NORM_EPS,
                           pretrained: bool = False) -> EfficientViTSam:
    """Build EfficientViT-SAM ``variant`` (``'l0'``, ``'l1'``, ``'l2'``, ``'xl0'``, ``'xl1'``; also
    ``'efficientvit-sam-l0'`` ...), in eval mode.

    Args:
        variant: which model.
        checkpoint: an official EfficientViT-SAM checkpoint (a path, a URL, an ``evit://`` name or a state dict),
            loaded strictly (see :func:`load_efficientvit_sam_checkpoint`).
        pretrained: without ``checkpoint``, the variant's published weights, downloaded once into the cache
            (:mod:`evit_mm.models.hub`; the same as ``checkpoint='evit://efficientvit_sam_<variant>'``).
        decoder_checkpoint: a SAM checkpoint (ViT-B/L/H ``sam_vit_*.pth``) whose ``prompt_encoder`` and
            ``mask_decoder`` weights to load (after ``checkpoint``), see :func:`load_sam_prompt_decoder`.
        image_size: the encoder input size; default the variant's (512 for L0-L2, 1024 for XL0/XL1). Must be a
            multiple of 32 (L) / 64 (XL). Prompts always live in the 1024 frame.
        norm_eps: eps of every norm layer (1e-6, the reference's value).
    """
    key = normalize_variant(variant)
    encoder = build_efficientvit_sam_image_encoder(key, image_size, norm_eps)
    embed = 64
    model = EfficientViTSam(
        image_encoder=encoder,
        prompt_encoder=PromptEncoder(embed_dim=256, image_embedding_size=(embed, embed),
                                     input_image_size=(1024, 1024), mask_in_chans=16),
        mask_decoder=MaskDecoder(num_multimask_outputs=3,
                                 transformer=TwoWayTransformer(depth=2, embedding_dim=256, mlp_dim=2048, num_heads=8),
                                 transformer_dim=256, iou_head_depth=3, iou_head_hidden_dim=256))
    set_norm_eps(model, norm_eps)
    model.variant = key
    if checkpoint is None and pretrained:
        checkpoint = f'evit://efficientvit_sam_{key}'
    if checkpoint is not None:
        load_efficientvit_sam_checkpoint(model, checkpoint)
    if decoder_checkpoint is not None:
        load_sam_prompt_decoder(model, decoder_checkpoint)
    return model.eval()


def _builder(key):
    def build(checkpoint=None, **kwargs) -> EfficientViTSam:
        return build_efficientvit_sam(key, checkpoint, **kwargs)
    build.__name__ = f'build_efficientvit_sam_{key}'
    build.__doc__ = f'EfficientViT-SAM-{key.upper()} (see build_efficientvit_sam).'
    return build


#: ``segment_anything.sam_model_registry``-style builders: ``efficientvit_sam_model_registry['l0'](checkpoint)``.
efficientvit_sam_model_registry = {key: _builder(key) for key in SAM_VARIANTS}
