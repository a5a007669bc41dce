"""Shared by tools/train.py and tools/test.py: build an mmengine Runner for any evit_mm config.

The config's ``default_scope`` (mmdet / mmseg / mmagic) says which downstream library it belongs to. Its
``custom_imports`` import the matching evit_mm adapter, which applies evit_mm's compatibility fixes.
"""
from __future__ import annotations

import argparse
import importlib
import importlib.util
import os
import os.path as osp
import re
from collections import OrderedDict

from evit_mm.compat import apply_all, prepare_cpu_distributed

SCOPES = ('mmdet', 'mmseg', 'mmagic', 'mmengine')


def load_config(path: str, cfg_options: dict | None = None):
    from mmengine.config import Config
    apply_all()
    if not osp.isfile(path):
        raise SystemExit(f'config not found: {path}')
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
CONVERTER = 'python tools/convert_efficientvit_msra.py'


def add_load_args(parser) -> None:
    """The flags of the tools that load a checkpoint into a model (tools/test.py, tools/train.py's load_from)."""
    parser.add_argument('--no-strict', dest='strict', action='store_false',
                        help='load the checkpoint non-strictly (mmengine\'s default): missing and unexpected keys '
                             'are only logged. By default any difference is an error that lists the keys')
    parser.add_argument('--allow-nonfinite', action='store_true',
                        help='load a checkpoint even if some of its weights are NaN or infinite')


def _core_msra():
    from evit_mm.models import efficientvit_msra
    return efficientvit_msra


def _cream_detector_format(state_dict) -> str | None:
    """'cream-det' / 'cream-cls' if ``state_dict`` is a raw Cream EfficientViT-M detector (backbone in Cream's
    layout under ``backbone.``), else None."""
    backbone = {k[len('backbone.'):]: v for k, v in state_dict.items() if k.startswith('backbone.')}
    if not backbone:
        return None
    try:
        fmt = _core_msra().detect_msra_format(backbone)
    except ValueError:
        return None
    return fmt if fmt.startswith('cream') else None


def convert_cream_detector(model, state_dict, filename: str):
    """A raw Cream detector checkpoint, converted in memory for ``model`` (whose backbone must be an
    EfficientViTM); otherwise a ``SystemExit`` with the converter command."""
    from mmengine.logging import print_log
    msra = _core_msra()
    backbone = getattr(model, 'backbone', None)
    stem = osp.splitext(osp.basename(filename))[0]
    command = f'{CONVERTER} {filename} {stem}_evit_mm.pth'
    if not isinstance(backbone, msra.EfficientViTM):
        raise SystemExit(f'{filename} is a raw Cream EfficientViT-M detector checkpoint (backbone in Cream\'s '
                         f'layout), and this model\'s backbone is {type(backbone).__name__}, not EfficientViTM. '
                         f'Convert it first:\n  {command}')
    converted, report = msra.convert_msra_state_dict(state_dict, window_size=backbone.window_sizes,
                                                     return_report=True)
    out = OrderedDict((f'backbone.{k}', v) for k, v in converted.items())
    out.update(report.other)
    print_log(f'{filename}: a raw Cream detector checkpoint ({report.format}), converted in memory '
              f'({report.summary().splitlines()[0]}); to convert it once: {command}', logger='current')
    return out


def _model_state_dict(checkpoint, filename: str):
    """The weights of an mmengine checkpoint (``state_dict``) or of another trainer's (``model``, ...), with
    mmengine's ``module.`` prefix removed."""
    from evit_mm.models.checkpoint import unwrap_state_dict
    if not isinstance(checkpoint, dict):
        raise SystemExit(f'{filename} holds a {type(checkpoint).__name__}, not a checkpoint dict')
    try:
        found = checkpoint['state_dict'] if 'state_dict' in checkpoint else unwrap_state_dict(checkpoint)
    except (TypeError, ValueError) as err:
        raise SystemExit(f'{filename}: {err}') from None
    state_dict = OrderedDict((re.sub(r'^module\.', '', k), v) for k, v in found.items())
    state_dict._metadata = getattr(found, '_metadata', OrderedDict())  # BN versions, as mmengine keeps them
    return state_dict


def _load_strict(model, state_dict, filename: str) -> None:
    """``model.load_state_dict(state_dict)``; any missing (but BN counters), unexpected or wrongly shaped key raises
    a ``CheckpointMismatchError`` that lists them all. The model's own load pre-hooks (e.g. the segmentor's renaming
    of official keys) apply."""
    from evit_mm.models.checkpoint import CheckpointMismatchError, format_key_diff
    seen = {}

    def record(module, keys):  # the root's post-hook runs after every child: the complete lists
        seen.update(missing=list(keys.missing_keys), unexpected=list(keys.unexpected_keys))

    handle = model.register_load_state_dict_post_hook(record)
    shapes = []
    try:
        model.load_state_dict(state_dict, strict=False)
    except RuntimeError as err:  # wrongly shaped tensors (torch reports them even when not strict)
        shapes = [line.strip() for line in str(err).splitlines() if 'size mismatch' in line]
        if not shapes:
            raise
    finally:
        handle.remove()
    missing = [k for k in seen.get('missing', []) if not k.endswith('num_batches_tracked')]
    unexpected = seen.get('unexpected', [])
    if missing or unexpected or shapes:
        lines = [format_key_diff(missing, unexpected)] if missing or unexpected else []
        if shapes:
            lines += [f'  shape mismatch ({len(shapes)}):'] + [f'    {line}' for line in shapes[:20]]
        raise CheckpointMismatchError(
            f'{filename} does not match the {type(model).__name__} of this config:\n' + '\n'.join(lines)
            + '\n(the checkpoint of another model? --no-strict loads the matching tensors and skips the rest)',
            missing, unexpected, shapes)


def load_checkpoint_checked(runner, filename: str, strict: bool = True, allow_nonfinite: bool = False,
                            map_location='cpu'):
    """Load ``filename`` into ``runner.model``: strictly by default (every missing, unexpected or wrongly shaped
    key listed in the error), refusing NaN/inf weights, converting a raw Cream detector checkpoint in memory.
    Returns the checkpoint, as ``Runner.load_checkpoint`` does."""
    from mmengine.model import is_model_wrapper
    from mmengine.runner.checkpoint import _load_checkpoint, load_state_dict
    from evit_mm.models.checkpoint import check_finite

    checkpoint = _load_checkpoint(filename, map_location=map_location)
    runner.call_hook('after_load_checkpoint', checkpoint=checkpoint)
    model = runner.model.module if is_model_wrapper(runner.model) else runner.model
    state_dict = _model_state_dict(checkpoint, filename)
    if _cream_detector_format(state_dict):
        state_dict = convert_cream_detector(model, state_dict, filename)
    if not allow_nonfinite:
        check_finite(state_dict, filename)
    if not strict:
        load_state_dict(model, state_dict, strict=False, logger='current')
    else:
        _load_strict(model, state_dict, filename)
    runner._has_loaded = True
    runner.logger.info(f'Load checkpoint from {filename} ({"strict" if strict else "non-strict"})')
    return checkpoint


def use_checked_loading(runner, strict: bool = True, allow_nonfinite: bool = False) -> None:
    """Make ``runner``'s ``load_from`` go through :func:`load_checkpoint_checked` (strict by default).

    mmengine loads ``load_from`` in ``Runner.load_or_resume`` with ``self.load_checkpoint(path)``, after the
    weights are initialised, and non-strictly. This replaces ``load_checkpoint`` on this runner instance only;
    resuming (``resume=True``) keeps mmengine's own loading unchanged.
    """
    original = runner.load_checkpoint

    def load_checkpoint(filename, map_location='cpu', **kwargs):
        if getattr(runner, '_resume', False):
            return original(filename, map_location=map_location, **kwargs)
        return load_checkpoint_checked(runner, filename, strict=strict, allow_nonfinite=allow_nonfinite,
                                       map_location=map_location)

    runner.load_checkpoint = load_checkpoint
