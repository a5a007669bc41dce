"""ONNX forms: a model exported to ONNX and run in onnxruntime (CPU), callable like the model."""
from __future__ import annotations

import io
import warnings

import torch
from torch import nn


def first(out) -> torch.Tensor:
    """A model's output, or the first of its outputs."""
    return out if isinstance(out, torch.Tensor) else out[0]


class OrtModule(nn.Module):
    """An ONNX graph run by onnxruntime (CPU), callable like the model it was exported from (first output, as a
    tensor).  One session per thread count (:meth:`set_threads`), created on first use."""

    def __init__(self, onnx_bytes: bytes, input_name: str = 'input'):
        super().__init__()
        self.onnx_bytes = onnx_bytes
        self.input_name = input_name
        self.threads: int | None = None
        self._sessions: dict = {}

    def set_threads(self, threads: int | None) -> None:
        """Use ``threads`` intra-op threads from now on (the session is created here, not in a timed window)."""
        self.threads = threads
        self.session()

    def session(self):
        if self.threads not in self._sessions:
            from evit_mm.onnx import ort_session
            self._sessions[self.threads] = ort_session(self.onnx_bytes, threads=self.threads)
        return self._sessions[self.threads]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.session().run(None, {self.input_name: x.detach().cpu().contiguous().numpy()})[0]
        return torch.from_numpy(out)


def export_to_ort(model: nn.Module, input_size: tuple[int, int], seed: int) -> tuple[OrtModule, float]:
    """Export ``model`` as it is (no deploy step) at batch 1 with a dynamic batch, and check it in onnxruntime.
    Returns the module and the largest absolute difference to PyTorch on a batch of 2."""
    x = torch.randn(2, 3, *input_size, generator=torch.Generator().manual_seed(seed))
    buf = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter('ignore')
        torch.onnx.export(model, (x[:1],), buf, input_names=['input'], output_names=['output'],
                          dynamic_axes={'input': {0: 'batch'}, 'output': {0: 'batch'}}, opset_version=17,
                          do_constant_folding=True, dynamo=False)
    ort_module = OrtModule(buf.getvalue())
    with torch.inference_mode():
        diff = (ort_module(x) - first(model(x))).abs().max().item()
    return ort_module, diff
