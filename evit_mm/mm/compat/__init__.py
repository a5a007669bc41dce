"""Fixes that make the published OpenMMLab 2.x stack run on today's PyTorch, applied from inside evit_mm.

Nothing in site-packages is edited: each fix hooks a public extension point of the library it fixes and is
applied (idempotently) by :mod:`evit_mm.mm` when it is imported, which every evit_mm adapter, tool and training
module does. See ``docs/compatibility.md``.
"""
import warnings

from .mmengine_dist import prepare_cpu_distributed
from .mmengine_checkpoint import (TRUST_ENV, is_trusted, load_http_checkpoint, load_local_checkpoint,
                                  mmengine_safe_globals, patch_mmengine_checkpoint)

__all__ = ['apply_all', 'prepare_cpu_distributed', 'patch_mmengine_checkpoint', 'load_local_checkpoint',
           'load_http_checkpoint', 'is_trusted', 'mmengine_safe_globals', 'TRUST_ENV']


def apply_all() -> None:
    """Apply every compatibility fix, register the ``evit://`` checkpoint scheme (:mod:`evit_mm.mm.weights`) and
    install evit_mm's checkpoint hook (:mod:`evit_mm.mm.hooks`: atomic saves, random-generator states, refused NaN
    resumes and losses) as every scope's ``CheckpointHook``. Needs mmengine. Safe to call many times.

    Importing :mod:`evit_mm.mm` calls it, and every way into evit_mm imports that: the adapters (``evit_mm.mmdet`` /
    ``mmseg`` / ``mmagic``), ``evit_mm.sam.training`` and the tools, so a Runner built from any evit_mm config, by
    evit_mm's tools or by ``mim`` (the configs' ``custom_imports``), gets the same hook whatever its library.
    """
    # mmengine imports (and reloads) pkg_resources to find the mm packages' configs: setuptools' deprecation
    # warning, twice per run, about mmengine's code, not actionable here (setuptools < 82 is pinned for it)
    warnings.filterwarnings('ignore', message='pkg_resources is deprecated as an API', category=UserWarning)
    patch_mmengine_checkpoint()
    from .. import hooks  # noqa: F401  (importing it registers the hook in mmengine's root HOOKS)
