"""The old import paths of the modules now in :mod:`evit_mm.mm`, kept for one release.

Each old module (``evit_mm.mm_common``, ``evit_mm.engine``, ``evit_mm.compat`` ...) is a shim that calls
:func:`alias_old_path`: it warns once, with a ``DeprecationWarning`` naming the new path, and puts the new module in
``sys.modules`` under the old name, so the old path gives the very same module and objects (nothing is imported,
and no hook is registered, twice).
"""
from __future__ import annotations

import importlib
import sys
import warnings

__all__ = ['alias_old_path']


def _importer_stacklevel(old: str) -> int:
    """The ``stacklevel`` that points the warning at the code that imported the old path: past this file, the
    shim's own body and ``importlib.import_module``. (``warnings`` itself skips importlib's bootstrap frames, so
    they are not counted.)"""
    frame, level = sys._getframe(1), 1  # stacklevel 1: this function's caller (alias_old_path)
    while frame is not None:
        filename = frame.f_code.co_filename
        if not ('importlib' in filename and '_bootstrap' in filename):
            if (filename != __file__ and frame.f_globals.get('__name__') != old
                    and not filename.endswith('importlib/__init__.py')):
                return level
            level += 1
        frame = frame.f_back
    return 2  # the shim


def alias_old_path(old: str, new: str, submodules: tuple[str, ...] = ()) -> None:
    """Make ``import old`` (and ``import old.<submodule>``) give ``new`` (``new.<submodule>``), with one
    ``DeprecationWarning``. Called from the old module's body."""
    module = importlib.import_module(new)
    warnings.warn(f'{old} is deprecated and will be removed in the next release; it moved to {new}: import that '
                  'instead', DeprecationWarning, stacklevel=_importer_stacklevel(old))
    sys.modules[old] = module
    for name in submodules:
        sys.modules[f'{old}.{name}'] = importlib.import_module(f'{new}.{name}')
