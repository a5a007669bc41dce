#!/usr/bin/env python
"""Box-prompted instance segmentation with mmdet + EfficientViT-SAM: detector boxes become SAM masks.

Runs configs/efficientvit_sam/box-prompted-sam-l0_retinanet-efficientvit-m0_coins.py (or --config) on the
coins-coco validation images: the detector (e.g. the one trained by tools/quickstart.py) finds the objects,
EfficientViT-SAM segments each box, mmdet's CocoMetric scores boxes and masks, and a PNG shows ground truth
(left) and predicted masks (right).

    python tools/demo_box_prompted_sam.py --detector-checkpoint work_dirs/quickstart/epoch_24.pth \\
        [--sam-checkpoint efficientvit_sam_l0.pt] [--out-dir work_dirs/box_prompted_sam]

Without --sam-checkpoint, SAM has random weights (none can be downloaded here): the pipeline runs end to end,
but the masks mean nothing. With an official checkpoint they are EfficientViT-SAM's zero-shot masks.
"""
import argparse
import json
import os
import os.path as osp
import sys

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
CONFIG = osp.join(ROOT, 'configs', 'efficientvit_sam', 'box-prompted-sam-l0_retinanet-efficientvit-m0_coins.py')


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--config', default=CONFIG)
    parser.add_argument('--detector-checkpoint', required=True,
                        help='weights of the config\'s detector (e.g. work_dirs/quickstart/epoch_24.pth)')
    parser.add_argument('--sam-checkpoint', help='an official EfficientViT-SAM checkpoint (default: random weights)')
    parser.add_argument('--data-root', default=osp.join(ROOT, 'data', 'coins_coco'),
                        help='a coins-coco dataset (used as it is; built with the defaults if missing)')
    parser.add_argument('--out-dir', default=osp.join(ROOT, 'work_dirs', 'box_prompted_sam'))
    parser.add_argument('--num-images', type=int, default=4, help='how many images to draw')
    parser.add_argument('--score-thr', type=float, default=0.3, help='score threshold of the drawn detections')
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    for path, what in ((args.config, 'config'), (args.detector_checkpoint, 'detector checkpoint'),
                       (args.sam_checkpoint, 'SAM checkpoint')):
        if path is not None and not osp.isfile(path):
            raise SystemExit(f'{what} not found: {path}')
    from mmengine.config import Config
    from mmengine.runner import Runner, load_checkpoint

    import evit_mm.mmdet  # noqa: F401  registers BoxPromptedSAM, applies the compatibility fixes
    from evit_mm.mmdet.visualization import draw_predictions
    from evit_mm.sample_data import coco_cfg_options, coins_coco_paths, make_coins_coco

    paths = coins_coco_paths(args.data_root)
    if not osp.isfile(paths['val_ann']):
        paths = make_coins_coco(args.data_root)
    cfg = Config.fromfile(args.config)
    cfg.merge_from_dict(coco_cfg_options(paths))
    cfg.model.sam.checkpoint = args.sam_checkpoint
    cfg.work_dir = args.out_dir
    os.makedirs(args.out_dir, exist_ok=True)

    runner = Runner.from_cfg(cfg)
    load_checkpoint(runner.model.detector, args.detector_checkpoint, map_location='cpu', strict=True)
    metrics = runner.test()
    png = draw_predictions(runner.model, cfg, runner.test_dataloader.dataset, osp.join(args.out_dir, 'masks.png'),
                           args.score_thr, args.num_images, with_masks=True)
    results_file = osp.join(args.out_dir, 'results.json')
    with open(results_file, 'w') as f:
        json.dump({'metrics': metrics, 'sam_checkpoint': args.sam_checkpoint,
                   'detector_checkpoint': args.detector_checkpoint}, f, indent=2)
    print(f"""
bbox mAP {metrics.get('coco/bbox_mAP', 0.0):.3f}   mask mAP {metrics.get('coco/segm_mAP', 0.0):.3f}
  SAM weights  {args.sam_checkpoint or 'random (no --sam-checkpoint): the masks are not meaningful'}
  results      {results_file}
  overlay      {png}  (left: ground truth, right: predicted boxes and masks)""")
    return metrics


if __name__ == '__main__':
    sys.exit(0 if main() is not None else 1)
