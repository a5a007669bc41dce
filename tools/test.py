#!/usr/bin/env python
"""Evaluate a checkpoint with any evit_mm config (mmdet, mmseg or mmagic).

    python tools/test.py CONFIG CHECKPOINT [--work-dir DIR] [--show-dir DIR] [--no-strict] [--cfg-options k=v ...]
    bash tools/dist_test.sh CONFIG CHECKPOINT GPUS [...]

The checkpoint is loaded strictly: a key the model lacks or a weight the checkpoint lacks is an error that lists
them (``--no-strict`` loads the matching keys only, as mmengine does); NaN/inf weights are refused
(``--allow-nonfinite``); a raw Cream EfficientViT-M detector checkpoint is converted in memory.

The same configs also run through ``mim test mmdet|mmseg|mmagic CONFIG --checkpoint CKPT``.
"""
import argparse
import os.path as osp
import sys

from evit_mm.mm.loading import use_checked_loading

sys.path.insert(0, osp.dirname(osp.abspath(__file__)))
from _runner_utils import (add_common_args, add_load_args, build_runner, default_work_dir,  # noqa: E402
                           export_local_rank, load_config, registry_hints, set_launcher)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('config', help='config file')
    parser.add_argument('checkpoint', help='checkpoint file (local path or URL)')
    parser.add_argument('--show-dir', help='save drawn predictions (PNG) into this folder, under the work dir')
    add_load_args(parser)
    add_common_args(parser)
    return parser.parse_args(argv)


#: Hooks that draw test predictions when they are not in default_hooks (mmagic's are custom hooks).
CUSTOM_VISUALIZATION_HOOKS = ('BasicVisualizationHook',)


def enable_visualization(cfg, show_dir: str) -> None:
    """Turn on the library's visualization hook and point it at ``show_dir`` (under the work dir)."""
    hook = cfg.get('default_hooks', {}).get('visualization')
    if hook is not None:
        hook['draw'] = True
        if 'Det' in hook.get('type', ''):
            hook['test_out_dir'] = show_dir  # mmdet's hook saves into <work_dir>/<timestamp>/<test_out_dir>
        else:  # mmseg's hook draws every `interval`-th image into the visualizer's save_dir
            hook['interval'] = 1
            cfg.visualizer['save_dir'] = osp.join(cfg.work_dir, show_dir)
        return
    custom = [h for h in cfg.get('custom_hooks') or [] if h.get('type') in CUSTOM_VISUALIZATION_HOOKS]
    if not custom and cfg.get('default_scope') != 'mmagic':
        raise SystemExit('--show-dir: the config has no visualization hook (default_hooks.visualization, or '
                         f'one of {CUSTOM_VISUALIZATION_HOOKS} in custom_hooks)')
    if cfg.get('visualizer') is None:
        raise SystemExit('--show-dir: the config has no visualizer to draw with')
    if not custom:  # mmagic: its BasicVisualizationHook draws every test image into the visualizer's save_dir
        cfg.custom_hooks = list(cfg.get('custom_hooks') or []) + [dict(type='BasicVisualizationHook')]
        custom = cfg.custom_hooks[-1:]
    for h in custom:
        h['on_test'] = True
        h['interval'] = dict(h['interval'], test=1) if isinstance(h.get('interval'), dict) else 1
    cfg.visualizer['save_dir'] = osp.join(cfg.work_dir, show_dir)


def drop_training(cfg) -> None:
    """Remove the training part of the config: testing needs none of it. Some visualization hooks read
    ``runner.iter``, which builds the train loop, and with it the training set (an error when only the test data
    exists, e.g. after ``--cfg-options test_dataloader.dataset.data_root=...``)."""
    for key in ('train_dataloader', 'train_cfg', 'optim_wrapper', 'param_scheduler'):
        cfg[key] = None
    cfg.resume = False


def main(argv=None):
    args = parse_args(argv)
    export_local_rank(args)
    cfg = load_config(args.config, args.cfg_options)
    set_launcher(cfg, args.launcher)
    default_work_dir(cfg, args.config, args.work_dir)
    cfg.load_from = args.checkpoint
    drop_training(cfg)
    if args.show_dir:  # (after default_work_dir: the drawings go under the work dir)
        enable_visualization(cfg, args.show_dir)
    with registry_hints():  # a typo in a type= names the closest registered types
        runner = build_runner(cfg)
        use_checked_loading(runner, strict=args.strict, allow_nonfinite=args.allow_nonfinite)
        metrics = runner.test()
    return metrics


if __name__ == '__main__':
    main()
