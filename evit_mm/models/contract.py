"""The contract every evit_mm model keeps (pure PyTorch): one way to select features, freeze, fuse and load.

* :class:`Fusable`: ``fuse()`` folds the BatchNorms into the convs, in place, once, and returns the model;
  ``is_fused`` says whether it happened. Backbones, the FPN's layers, the seg head, the SAM neck and encoder, the
  whole seg network: all of them. (:func:`evit_mm.deploy` goes further: it fuses, then swaps in the inference-only
  modules.)
* :class:`LoadsPretrained`: ``load_pretrained(src, fmt='auto', *, prefix=None, source=None)`` reads a path or a
  dict, recognises and converts the layouts of the official code, timm and evit_mm, loads strictly (all or
  nothing, with the key diff in the error) and returns a :class:`~evit_mm.models.checkpoint.LoadReport`. A model
  states only its conversion (``_convert_checkpoint``) and, optionally, a hint for a mismatch.
* :class:`EfficientViTBackbone`: what both backbone families share.

  - **Stages are numbered from the stem**: stage 0 is the stem (EfficientViT-B/L/XL: the input stem, stride 2;
    EfficientViT-M: the patch embedding, stride 16), stage *i* > 0 the *i*-th stage after it. This is the MIT
    reference's numbering (its output dict has ``stage0`` ... ``stageN``); timm's ``features_only`` index *i* is
    stage *i* + 1 here.
  - ``out_indices``: the stages ``forward`` returns, in increasing order (negative numbers count from the end).
    Default: every stage but the stem.
  - ``feature_info``: one dict per stage, stem first (``num_chs``, ``reduction``, ``module``, ``stage``);
    ``out_channels`` / ``out_strides`` are those of the returned stages.
  - ``frozen_stages``: ``-1`` freezes nothing, ``k`` freezes stages ``0..k`` (the stem and the first ``k``
    stages after it: mmdet's ResNet convention). Frozen stages get ``requires_grad=False`` and stay in eval mode.
  - ``norm_eval``: every BatchNorm stays in eval mode while training.
"""
from __future__ import annotations

from typing import Any, Mapping, Optional, Sequence

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from .checkpoint import (CheckpointMismatchError, LoadReport, describe_source, load_state_dict_strict,
                         read_checkpoint, strip_prefix)

__all__ = ['Fusable', 'LoadsPretrained', 'EfficientViTBackbone']


class Fusable:
    """``fuse()`` once, in place; ``is_fused`` afterwards. Subclasses implement ``_fuse()``."""

    @property
    def is_fused(self) -> bool:
        """Whether :meth:`fuse` was called (the model is then for inference: its state dict has no BatchNorm)."""
        return self.__dict__.get('_is_fused', False)

    @torch.no_grad()
    def fuse(self):
        """Fold every BatchNorm into the conv before it, in place, using the running statistics (so: on a trained
        model, for inference; load weights first, the state dict changes). Returns ``self``."""
        if not self.is_fused:
            self._fuse()
            self.__dict__['_is_fused'] = True
        return self

    def _fuse(self) -> None:
        raise NotImplementedError


class LoadsPretrained:
    """``load_pretrained(src, fmt='auto', *, prefix=None, source=None) -> LoadReport``, the same for every model.

    Subclasses implement ``_convert_checkpoint(state_dict, fmt) -> (state_dict, LoadReport)``, turning any layout
    they accept into their own keys (``ValueError`` / ``KeyError`` for what they cannot), and may implement
    ``_mismatch_hint(err, state_dict) -> str`` to explain a key mismatch.
    """

    def load_pretrained(self, src: Any, fmt: str = 'auto', *, prefix: Optional[str] = None,
                        source: Optional[str] = None) -> LoadReport:
        """Load a checkpoint (a path, a checkpoint dict or a state dict) strictly.

        Args:
            src: a ``.pth``/``.pt``/``.safetensors`` path (read weights-only) or a dict (``{'model': ...}``,
                ``{'state_dict': ...}`` and bare state dicts all work).
            fmt: the layout, ``'auto'`` (recognised from the keys) or one the model's conversion names.
            prefix: take only the keys under this prefix (stripped), e.g. ``'backbone.'`` of an mm checkpoint;
                by default the model's part is found by the format. A ``module.`` (DataParallel) prefix is
                always removed.
            source: the name errors and the report use (default: the path).

        Returns the :class:`~evit_mm.models.checkpoint.LoadReport`. Any missing, unexpected or wrongly shaped key
        raises :class:`~evit_mm.models.checkpoint.CheckpointMismatchError` listing them, NaN/inf weights raise
        :class:`~evit_mm.models.checkpoint.NonFiniteWeightsError`; either way the weights stay as they were.
        """
        name = describe_source(src, source)
        if getattr(self, 'is_fused', False):
            raise RuntimeError(f'{type(self).__name__} is fused: load weights before fuse() (a fused model has no '
                               'BatchNorm keys)')
        state_dict = read_checkpoint(src)
        if prefix is not None:
            state_dict = strip_prefix(state_dict, prefix, select=True)
            if not state_dict:
                raise KeyError(f'{name}: no key starts with {prefix!r}')
        state_dict = strip_prefix(state_dict, 'module.')
        try:
            converted, report = self._convert_checkpoint(state_dict, fmt)
        except (ValueError, KeyError) as err:
            message = err.args[0] if err.args else type(err).__name__
            raise type(err)(f'{name}: {message}') from None
        report.source = name
        try:
            load_state_dict_strict(self, converted, source=f'{name} ({report.format})')
        except CheckpointMismatchError as err:
            hint = self._mismatch_hint(err, converted)
            if not hint:
                raise
            raise CheckpointMismatchError(f'{err}\nhint: {hint}', err.missing, err.unexpected,
                                          err.shape_mismatch) from None
        report.loaded = len(converted)
        return report

    def _convert_checkpoint(self, state_dict: Mapping[str, torch.Tensor], fmt: str
                            ) -> tuple[Mapping[str, torch.Tensor], LoadReport]:
        raise NotImplementedError

    def _mismatch_hint(self, err: CheckpointMismatchError, state_dict: Mapping[str, torch.Tensor]) -> str:
        return ''


class EfficientViTBackbone(Fusable, LoadsPretrained, nn.Module):
    """The backbone contract (see the module docstring). A subclass builds its modules, then calls
    :meth:`_setup_stages` with the stage widths and strides, stem first, and names the stage modules in the same
    order in :meth:`_stage_module_names`."""

    def _setup_stages(self, channels: Sequence[int], strides: Sequence[int], out_indices, frozen_stages: int,
                      norm_eval: bool) -> None:
        modules = self._stage_module_names()
        if not len(channels) == len(strides) == len(modules):
            raise AssertionError('one width, stride and module per stage')
        self.feature_info = [dict(num_chs=int(c), reduction=int(s), module=m, stage=i)
                             for i, (c, s, m) in enumerate(zip(channels, strides, modules))]
        n = len(channels)
        if out_indices is None:
            out_indices = tuple(range(1, n))
        elif isinstance(out_indices, int):
            out_indices = (out_indices,)
        selected = []
        for i in out_indices:
            if not isinstance(i, int) or not -n <= i < n:
                raise ValueError(f'out_indices entry {i!r} out of range: stages are 0 (the stem) .. {n - 1}')
            selected.append(i % n)
        if not selected or len(set(selected)) != len(selected):
            raise ValueError(f'out_indices must be non-empty and unique, got {tuple(out_indices)}')
        if not -1 <= frozen_stages < n:
            raise ValueError(f'frozen_stages must be in [-1, {n - 1}] (-1: none; k: the stem and stages 1..k), '
                             f'got {frozen_stages}')
        self.out_indices = tuple(sorted(selected))
        self.frozen_stages = frozen_stages
        self.norm_eval = norm_eval
        self._freeze_stages()

    def _stage_module_names(self) -> list[str]:
        """The qualified names of the stage modules, stem first (read once, by :meth:`_setup_stages`)."""
        raise NotImplementedError

    def _stage_modules(self) -> list[nn.Module]:
        return [self.get_submodule(f['module']) for f in self.feature_info]

    # -- what adapters and necks read ------------------------------------------------------------------------
    @property
    def num_stages(self) -> int:
        """Number of stages, the stem included."""
        return len(self.feature_info)

    @property
    def strides(self) -> tuple[int, ...]:
        """The output stride of every stage, stem first."""
        return tuple(f['reduction'] for f in self.feature_info)

    @property
    def out_channels(self) -> tuple[int, ...]:
        """Channels of the features ``forward`` returns."""
        return tuple(self.feature_info[i]['num_chs'] for i in self.out_indices)

    @property
    def out_strides(self) -> tuple[int, ...]:
        """Strides of the features ``forward`` returns."""
        return tuple(self.feature_info[i]['reduction'] for i in self.out_indices)

    # -- forward -----------------------------------------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """The outputs of the stages in ``out_indices``. Stages past the last one needed are not run."""
        outs = []
        for i, stage in enumerate(self._stage_modules()[:self.out_indices[-1] + 1]):
            x = stage(x)
            if i in self.out_indices:
                outs.append(x)
        return tuple(outs)

    def forward_dict(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Every stage's output in the MIT reference's dict: ``input``, ``stage0`` ... ``stageN``, ``stage_final``."""
        out = {'input': x}
        for i, stage in enumerate(self._stage_modules()):
            out[f'stage{i}'] = x = stage(x)
        out['stage_final'] = x
        return out

    # -- training-time behaviour -------------------------------------------------------------------------------
    def _freeze_stages(self) -> None:
        for stage in self._stage_modules()[:self.frozen_stages + 1]:
            stage.eval()
            for param in stage.parameters():
                param.requires_grad = False

    def train(self, mode: bool = True):
        """Set the mode, keeping frozen stages (and, with ``norm_eval``, every BatchNorm) in eval mode."""
        super().train(mode)
        if mode:
            self._freeze_stages()
            if self.norm_eval:
                for module in self.modules():
                    if isinstance(module, _BatchNorm):
                        module.eval()
        return self
