#!/usr/bin/env python
"""evit_mm's quick-start job: a short but real detection run on CPU.

1. builds coins-coco, a COCO-format dataset of real coins on real photographs (docs/sample_data.md);
2. trains RetinaNet + EfficientViT-M0 from scratch with mmdet's stock Runner
   (configs/quickstart/retinanet_efficientvit-m0_fpn_coins.py);
3. evaluates bbox mAP on the held-out validation images with mmdet's CocoMetric;
4. draws ground truth (left) and detections (right) of validation images into a PNG;
5. prints where everything went.

    python tools/quickstart.py [--work-dir work_dirs/quickstart] [--epochs N] [--device cpu|cuda]
"""
import argparse
import json
import os
import os.path as osp
import sys
import time

# Idle OpenMP threads sleep instead of spinning. Set before torch is imported (libgomp reads it once). On a
# shared 2-core machine, spinning threads fight the other processes and the dataloader worker for the cores:
# under a load of about 5 the stock policy ran this job at 40.6 s per iteration, PASSIVE at 3.2 s (same
# threads and worker; README.md, quick start). Set OMP_WAIT_POLICY yourself to override.
os.environ.setdefault('OMP_WAIT_POLICY', 'PASSIVE')

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
CONFIG = osp.join(ROOT, 'configs', 'quickstart', 'retinanet_efficientvit-m0_fpn_coins.py')


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--work-dir', default=osp.join(ROOT, 'work_dirs', 'quickstart'))
    parser.add_argument('--data-root', default=osp.join(ROOT, 'data', 'coins_coco'))
    parser.add_argument('--epochs', type=int, default=None, help='training epochs (default: the config\'s)')
    parser.add_argument('--num-train', type=int, default=48, help='training images to build')
    parser.add_argument('--num-val', type=int, default=12, help='validation images to build')
    parser.add_argument('--image-size', type=int, default=320)
    parser.add_argument('--score-thr', type=float, default=0.3, help='score threshold of the drawn detections')
    parser.add_argument('--seed', type=int, default=0)
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    start = time.time()
    from mmengine.config import Config
    from mmengine.runner import Runner

    import evit_mm.mmdet  # noqa: F401  registers the models, applies the compatibility fixes
    from evit_mm.mmdet.visualization import draw_predictions
    from evit_mm.sample_data import coco_cfg_options, make_coins_coco

    print(f'[1/4] building coins-coco in {args.data_root}', flush=True)
    paths = make_coins_coco(args.data_root, num_train=args.num_train, num_val=args.num_val,
                            image_size=args.image_size, seed=args.seed)

    cfg = Config.fromfile(CONFIG)
    data_options = coco_cfg_options(paths)
    cfg.merge_from_dict(data_options)
    if args.epochs is not None:
        cfg.train_cfg.max_epochs = args.epochs
        cfg.param_scheduler[-1].end = args.epochs
        cfg.default_hooks.checkpoint.interval = args.epochs
    cfg.train_cfg.val_interval = cfg.train_cfg.max_epochs + 1  # evaluated once, below
    cfg.work_dir = args.work_dir
    cfg.randomness = dict(seed=args.seed)
    os.makedirs(args.work_dir, exist_ok=True)

    print(f'[2/4] training RetinaNet-EfficientViT-M0 for {cfg.train_cfg.max_epochs} epochs '
          f'({args.num_train} images, batch {cfg.train_dataloader.batch_size})', flush=True)
    runner = Runner.from_cfg(cfg)
    runner.train()

    print('[3/4] evaluating bbox mAP on the validation images (mmdet CocoMetric)', flush=True)
    metrics = runner.val_loop.run()
    if 'coco/bbox_mAP' not in metrics:  # CocoMetric returns nothing when the model detected nothing
        print('warning: no detections on the validation images; mAP is 0', flush=True)
        metrics = {f'coco/bbox_{k}': 0.0 for k in ('mAP', 'mAP_50', 'mAP_75', 'mAP_s', 'mAP_m', 'mAP_l')}

    print('[4/4] drawing detections', flush=True)
    png = osp.join(args.work_dir, 'detections.png')
    draw_predictions(runner.model, cfg, runner.val_dataloader.dataset, png, args.score_thr)

    results = {
        'bbox_mAP': metrics['coco/bbox_mAP'], 'bbox_mAP_50': metrics['coco/bbox_mAP_50'],
        'bbox_mAP_75': metrics['coco/bbox_mAP_75'], 'metrics': metrics,
        'epochs': cfg.train_cfg.max_epochs, 'seconds': round(time.time() - start, 1),
    }
    results_file = osp.join(args.work_dir, 'quickstart_results.json')
    with open(results_file, 'w') as f:
        json.dump(results, f, indent=2)
    checkpoint = osp.join(args.work_dir, f'epoch_{cfg.train_cfg.max_epochs}.pth')
    test_options = ' '.join(f'{k}={v}' for k, v in data_options.items() if k.startswith('test_'))
    print(f"""
Quick start done in {results['seconds']:.0f} s.
  bbox mAP      {results['bbox_mAP']:.3f}   (AP50 {results['bbox_mAP_50']:.3f}, AP75 {results['bbox_mAP_75']:.3f})
  dataset       {paths['root']}  (COCO layout; docs/sample_data.md)
  config        {osp.relpath(CONFIG, os.getcwd())}
  logs          {runner.log_dir}
  checkpoint    {checkpoint}
  results       {results_file}
  detections    {png}  (left: ground truth, right: detections with score > {args.score_thr})
Evaluate the checkpoint again with:
  .venv/bin/python tools/test.py {osp.relpath(CONFIG, os.getcwd())} {checkpoint} \\
      --cfg-options {test_options}""")
    return results


if __name__ == '__main__':
    sys.exit(0 if main() else 1)
