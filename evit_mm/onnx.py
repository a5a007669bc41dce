"""ONNX export of evit_mm's backbones, classifiers and segmentation models, checked in onnxruntime.

:func:`export_onnx` writes any image model (``(B, 3, H, W)`` -> a tensor or a tuple of tensors) to an ONNX file
and, by default, runs the file in onnxruntime on a random batch and compares every output with PyTorch: the
export fails (``AssertionError``) when an output differs by more than ``atol`` (1e-4).

By default the graph is exported from the model's **deploy form** (:func:`evit_mm.deploy` on a copy, NCHW):
BatchNorms folded, EfficientViT-M's attention bias a constant, its query scale folded into the query convs. The
check then compares onnxruntime with the *original* model in eval mode, so it covers the folding too. The graph
is traced at a fixed image size (the attention windows and LiteMLA's path depend on it) with a dynamic batch.

EfficientViT-SAM's encoder/decoder export (two graphs, segment-anything's decoder interface) is in
:mod:`evit_mm.sam.onnx`, which shares :func:`check_onnx` and :func:`ort_session` with this module.
"""
from __future__ import annotations

import copy
import os
import warnings
from dataclasses import dataclass, field
from typing import Dict, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch import nn

__all__ = ['export_onnx', 'check_onnx', 'ort_session', 'torch_onnx_export', 'OnnxExport', 'DEFAULT_OPSET']

#: Opset of the exports (LayerNorm, the SAM decoder's ops and every op used here exist in 17).
DEFAULT_OPSET = 17


@dataclass
class OnnxExport:
    """What :func:`export_onnx` wrote and how close onnxruntime came to PyTorch."""
    path: str
    input_shape: Tuple[int, ...]
    output_names: list = field(default_factory=list)
    output_shapes: list = field(default_factory=list)
    max_abs_diff: Optional[float] = None  # onnxruntime vs the original model in eval mode (None: not checked)
    max_abs_diff_deploy: Optional[float] = None  # PyTorch deploy form vs the original model


def ort_session(path: Union[str, bytes], threads: Optional[int] = None):
    """An onnxruntime CPU session with the default (full) graph optimisations; ``threads`` sets the intra-op
    thread count (None: onnxruntime's default, one per core)."""
    import onnxruntime as ort
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if threads is not None:
        opts.intra_op_num_threads = int(threads)
        opts.inter_op_num_threads = 1
    src = os.fspath(path) if not isinstance(path, bytes) else path
    return ort.InferenceSession(src, opts, providers=['CPUExecutionProvider'])


def check_onnx(path: str, feeds: Dict[str, np.ndarray], expected: Optional[Sequence] = None,
               atol: float = 1e-4) -> Tuple[list, float]:
    """Run ``path`` in onnxruntime (CPU) on ``feeds``; with ``expected`` (PyTorch outputs), return the largest
    absolute difference and raise ``AssertionError`` if it exceeds ``atol`` or a shape differs."""
    sess = ort_session(path)
    names = {i.name for i in sess.get_inputs()}
    outs = sess.run(None, {k: v for k, v in feeds.items() if k in names})
    diff = 0.0
    if expected is not None:
        if len(outs) != len(expected):
            raise AssertionError(f'onnxruntime returned {len(outs)} outputs, PyTorch {len(expected)}')
        for o, e in zip(outs, expected):
            e = e.detach().cpu().numpy() if isinstance(e, torch.Tensor) else np.asarray(e)
            if o.shape != e.shape:
                raise AssertionError(f'onnxruntime output shape {o.shape} != PyTorch {e.shape}')
            diff = max(diff, float(np.abs(o.astype(np.float64) - e).max()) if o.size else 0.0)
        if diff > atol:
            raise AssertionError(f'onnxruntime differs from PyTorch by {diff:.3g} > {atol}')
    return outs, diff


def _as_tuple(out) -> tuple:
    if isinstance(out, torch.Tensor):
        return (out,)
    if isinstance(out, (list, tuple)) and all(isinstance(o, torch.Tensor) for o in out):
        return tuple(out)
    raise TypeError(f'export_onnx needs a model returning a tensor or a tuple of tensors, got {type(out).__name__}')


def torch_onnx_export(module: nn.Module, args: tuple, path, **kwargs) -> str:
    """``torch.onnx.export(module, args, path, do_constant_folding=True, **kwargs)`` into ``path`` (its folder
    created), without the tracer's warnings. Returns the path. Shared by every evit_mm ONNX export."""
    path = os.fspath(path)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with warnings.catch_warnings():
        warnings.filterwarnings('ignore', category=torch.jit.TracerWarning)
        warnings.filterwarnings('ignore', category=UserWarning)
        warnings.filterwarnings('ignore', category=DeprecationWarning)
        torch.onnx.export(module, args, path, do_constant_folding=True, **kwargs)
    return path


def export_onnx(model: nn.Module, path: str, img_size: Union[int, Sequence[int]] = 224, batch_size: int = 1,
                dynamic_batch: bool = True, deploy: bool = True, check: bool = True, atol: float = 1e-4,
                opset: int = DEFAULT_OPSET, input_name: str = 'input',
                output_names: Optional[Sequence[str]] = None, seed: int = 0) -> OnnxExport:
    """Export ``model`` (not modified) to ``path`` for ``(batch_size, 3, H, W)`` images and check it.

    Args:
        img_size: ``H`` = ``W`` or ``(H, W)``: the traced size (fixed in the graph).
        dynamic_batch: make the batch dimension of the input and outputs dynamic.
        deploy: export the deploy form (:func:`evit_mm.deploy`, NCHW) of a copy of the model.
        check: run the file in onnxruntime and compare with the eval-mode PyTorch model (``atol``).
        output_names: default ``output`` for one output, ``out0``, ``out1``, ... for several.

    Returns an :class:`OnnxExport`; raises ``AssertionError`` when the check fails.
    """
    h, w = (img_size, img_size) if isinstance(img_size, int) else tuple(img_size)
    model = model.eval()
    x = torch.randn(batch_size, 3, h, w, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        reference = _as_tuple(model(x))
    exported = model
    deploy_diff = None
    if deploy:
        from .models.deploy import deploy as to_deploy
        exported = to_deploy(copy.deepcopy(model), channels_last=False)
        with torch.no_grad():
            deployed_out = _as_tuple(exported(x))
        deploy_diff = max(float((a - b).abs().max()) for a, b in zip(deployed_out, reference))
    names = list(output_names) if output_names is not None else (
        ['output'] if len(reference) == 1 else [f'out{i}' for i in range(len(reference))])
    if len(names) != len(reference):
        raise ValueError(f'{len(names)} output names for {len(reference)} outputs')
    axes = None
    if dynamic_batch:
        axes = {input_name: {0: 'batch'}, **{n: {0: 'batch'} for n in names}}
    path = torch_onnx_export(exported, (x,), path, input_names=[input_name], output_names=names, dynamic_axes=axes,
                             opset_version=opset, dynamo=False)
    result = OnnxExport(path=path, input_shape=tuple(x.shape), output_names=names,
                        output_shapes=[tuple(r.shape) for r in reference], max_abs_diff_deploy=deploy_diff)
    if check:
        _, result.max_abs_diff = check_onnx(path, {input_name: x.numpy()}, reference, atol=atol)
    return result
