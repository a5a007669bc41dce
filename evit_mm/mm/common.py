"""What every mm adapter shares: turning a pure-PyTorch core module into an mmengine ``BaseModule``.

Imports mmengine only (never mmdet/mmseg/mmagic), so each adapter can use it without pulling in the others.
"""
from __future__ import annotations

import copy

from mmengine.logging import print_log
from mmengine.model import BaseModule
from mmengine.runner.checkpoint import CheckpointLoader

from ..models.checkpoint import LoadReport, unwrap_state_dict

__all__ = ['mm_module', 'load_pretrained_from_cfg']


def load_pretrained_from_cfg(module, init_cfg: dict) -> LoadReport:
    """Load ``init_cfg=dict(type='Pretrained', checkpoint=..., prefix=None)`` into a module that
    :class:`~evit_mm.models.contract.LoadsPretrained` (a core module, a decode head, a whole segmentor).

    The file is fetched by mmengine (local path, ``http(s)://``, ``open-mmlab://``, ``evit://`` ...), then handed to
    the module's ``load_pretrained``, which recognises the official formats, converts them and loads *strictly*: a
    mismatch raises an error listing the missing and unexpected keys instead of mmengine's silent
    ``strict=False``. Errors name the file; NaN or infinite weights are refused.

    The load is strict, so every parameter and buffer of ``module`` now comes from the file: the module and its
    mmengine submodules are marked initialised (``_is_init``), and no later ``init_weights`` call re-initialises
    them. Returns the load's :class:`~evit_mm.models.checkpoint.LoadReport`.
    """
    checkpoint = CheckpointLoader.load_checkpoint(init_cfg['checkpoint'], map_location='cpu', logger='current')
    prefix = init_cfg.get('prefix')
    if prefix and not prefix.endswith('.'):
        prefix += '.'
    report = module.load_pretrained(unwrap_state_dict(checkpoint), prefix=prefix or None,
                                    source=str(init_cfg['checkpoint']))
    print_log(f"{type(module).__name__}: loaded {init_cfg['checkpoint']} (strict; {report.format} layout)",
              logger='current')
    for m in module.modules():
        if hasattr(m, '_is_init'):
            m._is_init = True
    return report


def mm_module(core_cls: type, name: str | None = None) -> type:
    """A subclass of ``core_cls`` that is also an mmengine ``BaseModule`` taking ``init_cfg``.

    ``init_cfg=dict(type='Pretrained', checkpoint=...)`` goes through :func:`load_pretrained_from_cfg` (strict,
    with format conversion); any other ``init_cfg`` is mmengine's; without one, the core's own initialisation
    stays as constructed.
    """

    def __init__(self, *args, init_cfg=None, **kwargs):
        # MRO: adapted -> core_cls -> BaseModule -> nn.Module, so core_cls's super().__init__() runs
        # BaseModule.__init__(init_cfg=None); the real init_cfg is set afterwards.
        core_cls.__init__(self, *args, **kwargs)
        self.init_cfg = copy.deepcopy(init_cfg)

    def init_weights(self):
        cfg = self.init_cfg
        if isinstance(cfg, dict) and cfg.get('type') == 'Pretrained':
            if not hasattr(self, 'load_pretrained'):
                raise TypeError(f'{type(self).__name__} cannot load Pretrained weights')
            load_pretrained_from_cfg(self, cfg)
        elif cfg is None and hasattr(core_cls, 'init_weights'):
            core_cls.init_weights(self)
        else:
            BaseModule.init_weights(self)

    name = name or core_cls.__name__
    return type(name, (core_cls, BaseModule), {
        '__init__': __init__,
        'init_weights': init_weights,
        '__doc__': core_cls.__doc__,
        '__module__': core_cls.__module__,
        '__qualname__': name,
    })
