#!/usr/bin/env python
"""Evaluate a checkpoint with any evit_mm config (mmdet, mmseg or mmagic).

    python tools/test.py CONFIG CHECKPOINT [--work-dir DIR] [--show-dir DIR] [--cfg-options k=v ...]
    bash tools/dist_test.sh CONFIG CHECKPOINT GPUS [...]

The same configs also run through ``mim test mmdet|mmseg|mmagic CONFIG --checkpoint CKPT``.
"""
import argparse
import os.path as osp
import sys

sys.path.insert(0, osp.dirname(osp.abspath(__file__)))
from _runner_utils import (add_common_args, build_runner, default_work_dir, export_local_rank,  # noqa: E402
                           load_config, set_launcher)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('config', help='config file')
    parser.add_argument('checkpoint', help='checkpoint file (local path or URL)')
    parser.add_argument('--show-dir', help='save drawn predictions (PNG) into this folder, under the work dir')
    add_common_args(parser)
    return parser.parse_args(argv)


def enable_visualization(cfg, show_dir: str) -> None:
    """Turn on the library's visualization hook and point it at ``show_dir``."""
    hook = cfg.get('default_hooks', {}).get('visualization')
    if hook is None:
        raise SystemExit('--show-dir: the config has no default_hooks.visualization hook')
    hook['draw'] = True
    if 'Det' in hook.get('type', ''):
        hook['test_out_dir'] = show_dir  # mmdet's hook saves into <work_dir>/<timestamp>/<test_out_dir>
    else:  # mmseg's hook draws every `interval`-th image into the visualizer's save_dir
        hook['interval'] = 1
        cfg.visualizer['save_dir'] = osp.join(cfg.work_dir, show_dir)


def main(argv=None):
    args = parse_args(argv)
    export_local_rank(args)
    cfg = load_config(args.config, args.cfg_options)
    set_launcher(cfg, args.launcher)
    default_work_dir(cfg, args.config, args.work_dir)
    cfg.load_from = args.checkpoint
    if args.show_dir:  # (after default_work_dir: the drawings go under the work dir)
        enable_visualization(cfg, args.show_dir)
    runner = build_runner(cfg)
    metrics = runner.test()
    return metrics


if __name__ == '__main__':
    main()
