"""ONNX export of EfficientViT-SAM: the image encoder and the prompt encoder + mask decoder, as two graphs.

* **Encoder** (:class:`SamEncoderOnnxModel`): input ``input_image`` ``(B, 3, S, S)`` float32, already resized,
  normalised and padded (:func:`~evit_mm.sam.transforms.preprocess_image`; ``S`` = 512 for L0-L2, 1024 for XL);
  output ``image_embeddings`` ``(B, 256, 64, 64)``. Input/output names are the reference's.
* **Decoder** (:class:`SamDecoderOnnxModel`): the inputs and outputs of ``segment_anything``'s ONNX decoder
  (``scripts/export_onnx_model.py``): ``image_embeddings`` ``(1, 256, 64, 64)``, ``point_coords`` ``(1, N, 2)`` in
  the 1024 prompt frame, ``point_labels`` ``(1, N)`` (float: 1 fg, 0 bg, 2/3 box corners, -1 padding),
  ``mask_input`` ``(1, 1, 256, 256)``, ``has_mask_input`` ``(1,)``, ``orig_im_size`` ``(2,)`` ->
  ``masks`` ``(1, M, H, W)`` logits at the original size, ``iou_predictions`` ``(1, M)``, ``low_res_masks``
  ``(1, M, 256, 256)``, with ``M = 4`` (token 0 = SAM's single-mask output, 1-3 = the multimask outputs) or 1 with
  ``return_single_mask``. :func:`decoder_inputs` builds these arrays from original-image prompts as SAM's
  notebook does (a box becomes two corner points; without a box, a padding point is appended).

The decoder wrapper subclasses ``segment_anything.utils.onnx.SamOnnxModel`` (its point/mask embedding and mask
selection), with two changes: coordinates and masks live in the 1024 *prompt* frame (``SamOnnxModel`` uses
``image_encoder.img_size``, which is 512 for the L models), and the mask prediction broadcasts the single image
embedding over the prompt batch instead of calling ``repeat_interleave`` (which TensorRT and other consumers
reject: reference issue #78), and crops without ``int()`` on tensors (which the tracer would freeze).

:func:`export_encoder` / :func:`export_decoder` write the files; :func:`check_onnx` (from :mod:`evit_mm.onnx`) runs
a file in onnxruntime. Export ``evit_mm.deploy(model, channels_last=False)`` to get the BN-folded encoder.
"""
from __future__ import annotations

from typing import Dict, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from segment_anything.utils.onnx import SamOnnxModel
from torch import nn

from ..onnx import check_onnx  # noqa: F401  (shared with the backbone/seg exports; part of this module's API)
from ..onnx import torch_onnx_export
from .prompts import SamPrompts

__all__ = ['SamEncoderOnnxModel', 'SamDecoderOnnxModel', 'export_encoder', 'export_decoder', 'decoder_inputs',
           'check_onnx', 'ENCODER_INPUTS', 'ENCODER_OUTPUTS', 'DECODER_INPUTS', 'DECODER_OUTPUTS']

ENCODER_INPUTS = ['input_image']
ENCODER_OUTPUTS = ['image_embeddings']
DECODER_INPUTS = ['image_embeddings', 'point_coords', 'point_labels', 'mask_input', 'has_mask_input', 'orig_im_size']
DECODER_OUTPUTS = ['masks', 'iou_predictions', 'low_res_masks']


class SamEncoderOnnxModel(nn.Module):
    """The image encoder alone: normalised, padded ``(B, 3, S, S)`` images -> ``(B, 256, 64, 64)``."""

    def __init__(self, model) -> None:
        super().__init__()
        self.image_encoder = model.image_encoder
        self.img_size = int(model.image_encoder.img_size)

    def forward(self, input_image: torch.Tensor) -> torch.Tensor:
        return self.image_encoder(input_image)


class SamDecoderOnnxModel(SamOnnxModel):
    """Prompt encoder + mask decoder + mask post-processing for export (see the module docstring)."""

    def __init__(self, model, return_single_mask: bool = False, use_stability_score: bool = False) -> None:
        super().__init__(model, return_single_mask=return_single_mask, use_stability_score=use_stability_score)
        self.img_size = int(model.prompt_encoder.input_image_size[0])  # the prompt frame, 1024

    def _predict_masks(self, image_embeddings, image_pe, sparse, dense) -> Tuple[torch.Tensor, torch.Tensor]:
        """``MaskDecoder.predict_masks`` with the one image broadcast over the prompt batch (no
        ``repeat_interleave``); the same modules and arithmetic otherwise."""
        dec = self.model.mask_decoder
        output_tokens = torch.cat([dec.iou_token.weight, dec.mask_tokens.weight], dim=0)
        output_tokens = output_tokens.unsqueeze(0).expand(sparse.size(0), -1, -1)
        tokens = torch.cat((output_tokens, sparse), dim=1)
        src = image_embeddings + dense  # (1, C, h, w) + (B, C, h, w): broadcast
        pos_src = image_pe.expand(src.shape[0], -1, -1, -1)
        b, c, h, w = src.shape
        hs, src = dec.transformer(src, pos_src, tokens)
        iou_token_out = hs[:, 0, :]
        mask_tokens_out = hs[:, 1:(1 + dec.num_mask_tokens), :]
        src = src.transpose(1, 2).reshape(b, c, h, w)
        upscaled = dec.output_upscaling(src)
        hyper_in = torch.stack([mlp(mask_tokens_out[:, i, :]) for i, mlp in enumerate(dec.output_hypernetworks_mlps)],
                               dim=1)
        b, c, h, w = upscaled.shape
        masks = (hyper_in @ upscaled.reshape(b, c, h * w)).reshape(b, -1, h, w)
        return masks, dec.iou_prediction_head(iou_token_out)

    def mask_postprocessing(self, masks: torch.Tensor, orig_im_size: torch.Tensor) -> torch.Tensor:
        masks = F.interpolate(masks, size=(self.img_size, self.img_size), mode='bilinear', align_corners=False)
        prepadded = self.resize_longest_image_size(orig_im_size, self.img_size)
        masks = masks[..., :prepadded[0], :prepadded[1]]
        size = orig_im_size.to(torch.int64)
        return F.interpolate(masks, size=(size[0], size[1]), mode='bilinear', align_corners=False)

    @torch.no_grad()
    def forward(self, image_embeddings: torch.Tensor, point_coords: torch.Tensor, point_labels: torch.Tensor,
                mask_input: torch.Tensor, has_mask_input: torch.Tensor, orig_im_size: torch.Tensor):
        sparse = self._embed_points(point_coords, point_labels)
        dense = self._embed_masks(mask_input, has_mask_input)
        masks, scores = self._predict_masks(image_embeddings, self.model.prompt_encoder.get_dense_pe(), sparse, dense)
        if self.use_stability_score:
            from segment_anything.utils.amg import calculate_stability_score
            scores = calculate_stability_score(masks, self.model.mask_threshold, self.stability_score_offset)
        if self.return_single_mask:
            masks, scores = self.select_masks(masks, scores, point_coords.shape[1])
        return self.mask_postprocessing(masks, orig_im_size), scores, masks


def decoder_inputs(original_size: Sequence[int], image_embeddings=None, point_coords=None, point_labels=None,
                   box=None, mask_input=None, prompt_size: int = 1024) -> Dict[str, np.ndarray]:
    """The decoder graph's inputs from one prompt set in original-image pixels (as SAM's ONNX notebook builds
    them; :meth:`~evit_mm.sam.prompts.SamPrompts.onnx_inputs`): points and box corners (labels 2, 3) are scaled
    to the prompt frame; without a box a padding point (label -1) is appended; ``mask_input`` ``(1, 256, 256)``
    low-res logits or ``None``."""
    prompts = SamPrompts.from_arrays(point_coords, point_labels, box, mask_input, original_size=original_size,
                                     prompt_size=prompt_size)
    out = prompts.onnx_inputs()
    out['orig_im_size'] = np.array(original_size, np.float32)
    if image_embeddings is not None:
        emb = image_embeddings
        if isinstance(emb, torch.Tensor):
            emb = emb.detach().cpu().numpy()
        out['image_embeddings'] = np.asarray(emb, np.float32)
    return out


def _export(module: nn.Module, args: tuple, path: str, input_names, output_names, dynamic_axes,
            opset: int, dynamo: bool) -> str:
    return torch_onnx_export(module, args, path, input_names=input_names, output_names=output_names,
                             dynamic_axes=dynamic_axes, opset_version=opset, dynamo=dynamo, external_data=False)


def export_encoder(model, path: str, batch_size: int = 1, dynamic_batch: bool = True, opset: int = 17,
                   dynamo: bool = False) -> str:
    """Write the image encoder to ``path`` (``input_image`` -> ``image_embeddings``; dynamic batch by default).
    ``dynamo=False`` uses PyTorch's TorchScript-based exporter, ``True`` the ``torch.export`` one."""
    wrapper = SamEncoderOnnxModel(model).eval()
    s = wrapper.img_size
    x = torch.randn(batch_size, 3, s, s)
    axes = {'input_image': {0: 'batch'}, 'image_embeddings': {0: 'batch'}} if dynamic_batch else None
    return _export(wrapper, (x,), path, ENCODER_INPUTS, ENCODER_OUTPUTS, axes, opset, dynamo)


def export_decoder(model, path: str, return_single_mask: bool = False, opset: int = 17, dynamo: bool = False) -> str:
    """Write the prompt encoder + mask decoder (+ post-processing) to ``path``; ``point_coords``/``point_labels``
    have a dynamic number of points."""
    wrapper = SamDecoderOnnxModel(model, return_single_mask=return_single_mask).eval()
    emb = model.prompt_encoder.image_embedding_size
    mh, mw = model.prompt_encoder.mask_input_size
    args = (torch.randn(1, model.prompt_encoder.embed_dim, *emb), torch.randint(0, 1024, (1, 5, 2)).float(),
            torch.randint(0, 4, (1, 5)).float(), torch.randn(1, 1, mh, mw), torch.tensor([1.0]),
            torch.tensor([1500.0, 2250.0]))
    axes = {'point_coords': {1: 'num_points'}, 'point_labels': {1: 'num_points'}}
    return _export(wrapper, args, path, DECODER_INPUTS, DECODER_OUTPUTS, axes, opset, dynamo)
