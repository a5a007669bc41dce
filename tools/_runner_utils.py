"""Shared by tools/train.py and tools/test.py: build an mmengine Runner for any evit_mm config.

The config's ``default_scope`` (mmdet / mmseg / mmagic) says which downstream library it belongs to. Its
``custom_imports`` import the matching evit_mm adapter, which applies evit_mm's compatibility fixes.
"""
from __future__ import annotations

import argparse
import contextlib
import difflib
import glob
import importlib
import importlib.util
import os
import os.path as osp
import re

from evit_mm.mm.compat import prepare_cpu_distributed  # importing evit_mm.mm applies the compat fixes, once

SCOPES = ('mmdet', 'mmseg', 'mmagic', 'mmengine')
CONFIG_ROOT = osp.join(osp.dirname(osp.dirname(osp.abspath(__file__))), 'configs')


def _did_you_mean(word: str, candidates, n: int = 3) -> str:
    matches = difflib.get_close_matches(word, sorted(set(candidates)), n=n, cutoff=0.6)
    return f"; did you mean {' or '.join(repr(m) for m in matches)}?" if matches else ''


def missing_config_message(path: str) -> str:
    """'config not found', with the closest existing config paths (those next to ``path``, or evit_mm's)."""
    folder = osp.dirname(path)
    if folder and osp.isdir(folder):
        candidates = glob.glob(osp.join(glob.escape(folder), '*.py'))
    else:
        candidates = [osp.relpath(p) for p in glob.glob(osp.join(CONFIG_ROOT, '**', '*.py'), recursive=True)]
    return f'config not found: {path}' + _did_you_mean(path, candidates)


_UNREGISTERED = re.compile(r"`?'?([\w.:]+)'? is not in the (\w+)::([\w ]+) registry")


def registry_suggestion(message: str) -> str | None:
    """For mmengine's "X is not in the SCOPE::NAME registry" error: the closest registered names (the registry of
    that scope and its parents), or None when the message is another one."""
    found = _UNREGISTERED.search(message)
    if not found:
        return None
    name, scope, registry_name = found.groups()
    from mmengine.registry import Registry
    try:
        module = importlib.import_module(f'{scope}.registry')
    except ImportError:
        return None
    candidates = []
    for registry in vars(module).values():
        while isinstance(registry, Registry) and registry.name == registry_name:
            candidates += list(registry.module_dict)
            registry = registry.parent
    return f'{name} is not a registered {registry_name} type (scope {scope})' + _did_you_mean(name.split('.')[-1],
                                                                                            candidates)


@contextlib.contextmanager
def registry_hints():
    """Turn mmengine's unknown-type ``KeyError`` (a typo in a config's ``type=``) into an error that names the
    closest registered types."""
    try:
        yield
    except KeyError as err:
        hint = registry_suggestion(str(err))
        if hint is None:
            raise
        raise SystemExit(f'error: {hint}\n  ({err.args[0] if err.args else err})') from None


def load_config(path: str, cfg_options: dict | None = None):
    from mmengine.config import Config
    if not osp.isfile(path):
        raise SystemExit(missing_config_message(path))
    cfg = Config.fromfile(path)
    if cfg_options:
        cfg.merge_from_dict(cfg_options)
    scope = cfg.get('default_scope', 'mmengine')
    if scope not in SCOPES:
        raise SystemExit(f"{path}: default_scope '{scope}' is not one of {SCOPES}")
    # The adapter registers evit_mm's modules; configs import it through custom_imports already, this makes
    # configs that forgot it work as well.
    adapter = f'evit_mm.{scope}'
    if scope != 'mmengine' and importlib.util.find_spec(adapter) is not None:
        importlib.import_module(adapter)
    return cfg


def set_launcher(cfg, launcher: str) -> None:
    cfg.launcher = launcher
    prepare_cpu_distributed(cfg)  # without CUDA: gloo process group, DDP on CPU processes


def default_work_dir(cfg, config_path: str, work_dir: str | None) -> None:
    if work_dir is not None:
        cfg.work_dir = work_dir
    elif cfg.get('work_dir') is None:
        cfg.work_dir = osp.join('./work_dirs', osp.splitext(osp.basename(config_path))[0])


def build_runner(cfg):
    from mmengine.runner import Runner
    if 'runner_type' not in cfg:
        return Runner.from_cfg(cfg)
    scope = cfg.get('default_scope', 'mmengine')
    registry = importlib.import_module(f'{scope}.registry')
    return registry.RUNNERS.build(cfg)


def add_common_args(parser) -> None:
    from mmengine.config import DictAction
    parser.add_argument('--work-dir', help='where logs and checkpoints go (default ./work_dirs/<config name>)')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                        help='override config settings, e.g. train_dataloader.batch_size=4')
    parser.add_argument('--launcher', choices=['none', 'pytorch', 'slurm', 'mpi'], default='none',
                        help='job launcher; tools/dist_train.sh uses pytorch (torchrun)')
    parser.add_argument('--local_rank', '--local-rank', type=int, default=0, help=argparse.SUPPRESS)


def export_local_rank(args) -> None:
    if 'LOCAL_RANK' not in os.environ:
        os.environ['LOCAL_RANK'] = str(args.local_rank)


# ---------------------------------------------------------------------------------------------- checkpoint loading
# The loading itself (use_checked_loading, load_checkpoint_checked, ...) is evit_mm.mm.loading.
def add_load_args(parser) -> None:
    """The flags of the tools that load a checkpoint into a model (tools/test.py, tools/train.py's load_from)."""
    parser.add_argument('--no-strict', dest='strict', action='store_false',
                        help='load the checkpoint non-strictly (mmengine\'s default): missing and unexpected keys '
                             'are only logged. By default any difference is an error that lists the keys')
    parser.add_argument('--allow-nonfinite', action='store_true',
                        help='load a checkpoint even if some of its weights are NaN or infinite')
