#!/usr/bin/env python
"""Train with any evit_mm config (mmdet, mmseg or mmagic) on mmengine's Runner.

    python tools/train.py CONFIG [--work-dir DIR] [--amp] [--resume [CKPT]] [--cfg-options k=v ...]
    bash tools/dist_train.sh CONFIG GPUS [...]         # DDP through torchrun

The same configs also run through ``mim train mmdet|mmseg|mmagic CONFIG``.
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
    parser.add_argument('--amp', action='store_true', help='automatic mixed precision')
    parser.add_argument('--amp-dtype', choices=['float16', 'bfloat16'], default=None,
                        help='AMP dtype (default: float16 with a dynamic loss scale)')
    parser.add_argument('--auto-scale-lr', action='store_true',
                        help='scale the lr by (total batch size) / auto_scale_lr.base_batch_size')
    parser.add_argument('--resume', nargs='?', type=str, const='auto',
                        help='resume from CKPT, or from the latest checkpoint in the work dir if no path is given')
    add_load_args(parser)  # how load_from is loaded (strict by default); --resume is unaffected
    add_common_args(parser)
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    export_local_rank(args)
    cfg = load_config(args.config, args.cfg_options)
    set_launcher(cfg, args.launcher)
    default_work_dir(cfg, args.config, args.work_dir)

    if args.amp or args.amp_dtype:
        wrapper = cfg.optim_wrapper
        if wrapper.get('type', 'OptimWrapper') not in ('OptimWrapper', 'AmpOptimWrapper'):
            raise SystemExit(f"--amp needs optim_wrapper.type OptimWrapper, not {wrapper.get('type')}")
        wrapper.type = 'AmpOptimWrapper'
        if args.amp_dtype == 'bfloat16':
            wrapper.dtype = 'bfloat16'  # no loss scaling needed: bf16 has fp32's range
        else:
            wrapper.loss_scale = 'dynamic'

    if args.auto_scale_lr:
        if 'auto_scale_lr' not in cfg or 'base_batch_size' not in cfg.auto_scale_lr:
            raise SystemExit('--auto-scale-lr needs auto_scale_lr.base_batch_size in the config')
        cfg.auto_scale_lr.enable = True

    if args.resume == 'auto':  # the newest complete checkpoint of the work dir, whatever last_checkpoint says
        from evit_mm.mm.hooks import find_resume_checkpoint
        cfg.load_from = find_resume_checkpoint(cfg.work_dir)
        cfg.resume = cfg.load_from is not None
    elif args.resume is not None:
        cfg.resume, cfg.load_from = True, args.resume

    with registry_hints():  # a typo in a type= names the closest registered types
        runner = build_runner(cfg)
        use_checked_loading(runner, strict=args.strict, allow_nonfinite=args.allow_nonfinite)
        runner.train()


if __name__ == '__main__':
    main()
