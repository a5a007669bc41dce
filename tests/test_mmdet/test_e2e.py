"""The mmdet configs end to end: they build, train 2 iterations, evaluate with CocoMetric, resume, run via mim."""
import glob
import json
import os
import os.path as osp
import subprocess
import sys

import pytest

from conftest import ROOT, load_tool

CONFIG_DIR = osp.join(ROOT, 'configs', 'efficientvit_m')
RETINANET = [f'retinanet_efficientvit-m{i}_fpn_1x_coco.py' for i in range(6)]
MASK_RCNN = 'mask-rcnn_efficientvit-m4_fpn_1x_coco.py'
TOOLS = osp.join(ROOT, 'tools')

TINY_TEMPLATE = """
_base_ = [{base!r}]
data_root = {root!r}
metainfo = dict(classes=('coin', ), palette=[(220, 20, 60)])
scale = (128, 128)
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', with_bbox=True, with_mask={masks}),
    dict(type='Resize', scale=scale, keep_ratio=True),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PackDetInputs'),
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=scale, keep_ratio=True),
    dict(type='LoadAnnotations', with_bbox=True, with_mask={masks}),
    dict(type='PackDetInputs', meta_keys=('img_id', 'img_path', 'ori_shape', 'img_shape', 'scale_factor')),
]
train_dataloader = dict(batch_size=2, num_workers=0, persistent_workers=False, dataset=dict(
    data_root=data_root, metainfo=metainfo, ann_file='annotations/instances_train2017.json',
    data_prefix=dict(img='train2017/'), pipeline=train_pipeline))
val_dataloader = dict(batch_size=2, num_workers=0, persistent_workers=False, dataset=dict(
    data_root=data_root, metainfo=metainfo, ann_file='annotations/instances_val2017.json',
    data_prefix=dict(img='val2017/'), pipeline=test_pipeline))
test_dataloader = val_dataloader
val_evaluator = dict(ann_file=data_root + 'annotations/instances_val2017.json', metric={metric!r})
test_evaluator = val_evaluator
train_cfg = dict(max_epochs={epochs}, val_interval=1)
default_hooks = dict(logger=dict(interval=1), visualization=dict(draw=False))
model = dict(backbone=dict(init_cfg=None), {heads})
"""


def tiny_config(tmp_path, base, coins, epochs=1):
    """A config inheriting ``base`` that trains on the tiny coins-coco (2 iterations per epoch) at 128 px."""
    masks = 'mask' in base
    heads = ("roi_head=dict(bbox_head=dict(num_classes=1), mask_head=dict(num_classes=1))" if masks
             else "bbox_head=dict(num_classes=1)")
    text = TINY_TEMPLATE.format(base=osp.join(CONFIG_DIR, base), root=osp.join(coins['root'], ''), masks=masks,
                                metric=['bbox', 'segm'] if masks else 'bbox', epochs=epochs, heads=heads)
    path = tmp_path / ('tiny_' + base)
    path.write_text(text)
    return str(path)


def test_every_config_builds():
    from mmengine.config import Config
    from mmengine.registry import DefaultScope
    from mmdet.registry import MODELS

    import evit_mm.mmdet  # noqa: F401
    configs = sorted(glob.glob(osp.join(ROOT, 'configs', '**', '*.py'), recursive=True))
    detection = [c for c in configs if Config.fromfile(c).get('default_scope') == 'mmdet']
    assert len(detection) >= 8
    for path in detection:
        cfg = Config.fromfile(path)
        assert cfg.custom_imports['imports'] == ['evit_mm.mmdet'], path
        with DefaultScope.overwrite_default_scope('mmdet'):  # as the Runner does
            model = MODELS.build(cfg.model)
        backbone = model.detector.backbone if cfg.model.type == 'BoxPromptedSAM' else model.backbone
        n_params = sum(p.numel() for p in backbone.parameters())
        assert n_params > 1e6, path


def test_paper_recipe_is_in_the_configs():
    from mmengine.config import Config
    cfg = Config.fromfile(osp.join(CONFIG_DIR, 'retinanet_efficientvit-m4_fpn_1x_coco.py'))
    opt = cfg.optim_wrapper
    assert (opt.optimizer.type, opt.optimizer.lr, opt.optimizer.weight_decay) == ('AdamW', 1e-4, 0.05)
    assert opt.paramwise_cfg.custom_keys['attention_biases'] == {'decay_mult': 0.}
    warmup, steps = cfg.param_scheduler
    assert (warmup.type, warmup.end, warmup.by_epoch) == ('LinearLR', 500, False)
    assert steps.milestones == [8, 11] and cfg.train_cfg.max_epochs == 12
    assert cfg.train_dataloader.batch_size * 8 == cfg.auto_scale_lr.base_batch_size == 16
    resize = [t for t in cfg.train_pipeline if t.type == 'Resize'][0]
    assert resize.scale == (1333, 800)
    assert cfg.model.bbox_head.anchor_generator.strides == [8, 16, 32, 64, 128]


def _train_and_evaluate(tmp_path, base, coins):
    from mmengine.config import Config
    from mmengine.runner import Runner

    import evit_mm.mmdet  # noqa: F401
    cfg = Config.fromfile(tiny_config(tmp_path, base, coins))
    cfg.work_dir = str(tmp_path / 'work')
    runner = Runner.from_cfg(cfg)
    runner.train()
    assert runner.iter == 2
    return runner.test()


@pytest.mark.parametrize('base', RETINANET)
def test_retinanet_trains_and_evaluates(tmp_path, coins_coco, base):
    metrics = _train_and_evaluate(tmp_path, base, coins_coco)
    # two iterations from scratch detect (almost) nothing; what matters is that CocoMetric ran on the outputs
    assert metrics == {} or 0.0 <= metrics['coco/bbox_mAP'] <= 1.0


@pytest.mark.slow
def test_mask_rcnn_trains_and_evaluates(tmp_path, coins_coco):
    metrics = _train_and_evaluate(tmp_path, MASK_RCNN, coins_coco)
    assert metrics == {} or {'coco/bbox_mAP', 'coco/segm_mAP'} <= set(metrics)


def test_train_tool_resumes(tmp_path, coins_coco):
    train_tool = load_tool('train')
    config = tiny_config(tmp_path, RETINANET[0], coins_coco, epochs=1)
    work = str(tmp_path / 'work')
    train_tool.main([config, '--work-dir', work])
    assert osp.isfile(osp.join(work, 'epoch_1.pth'))
    train_tool.main([config, '--work-dir', work, '--resume', '--cfg-options', 'train_cfg.max_epochs=2'])
    assert osp.isfile(osp.join(work, 'epoch_2.pth'))
    logs = sorted(glob.glob(osp.join(work, '*', '*.log')))
    resumed_log = open(logs[-1]).read()
    assert 'resumed epoch: 1, iter: 2' in resumed_log
    assert 'Epoch(train) [2][2/2]' in resumed_log and 'Epoch(train) [1]' not in resumed_log


def _mim(*args, cwd):
    mim = osp.join(osp.dirname(sys.executable), 'mim')
    env = dict(os.environ, PYTHONWARNINGS='ignore')
    return subprocess.run([mim, *args], capture_output=True, text=True, timeout=900, cwd=cwd, env=env)


@pytest.mark.slow
def test_mim_train_and_test(tmp_path, coins_coco):
    """``mim train mmdet`` runs mmdet's own tools/train.py: the config's custom_imports must bring evit_mm in."""
    config = tiny_config(tmp_path, RETINANET[0], coins_coco)
    work = str(tmp_path / 'mim_work')
    proc = _mim('train', 'mmdet', config, '--work-dir', work, cwd=str(tmp_path))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    checkpoint = osp.join(work, 'epoch_1.pth')
    assert osp.isfile(checkpoint)
    proc = _mim('test', 'mmdet', config, '--checkpoint', checkpoint, '--work-dir', work, cwd=str(tmp_path))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert 'Epoch(test)' in proc.stdout + proc.stderr


def test_test_tool_writes_visualizations(tmp_path, coins_coco):
    """train.py then test.py --show-dir, each in its own process as users run them (in-process, mmengine's
    global visualizer instances from earlier Runners of the session would leak into this one)."""
    config = tiny_config(tmp_path, RETINANET[0], coins_coco)
    work = str(tmp_path / 'work')
    for args in (['train.py', config], ['test.py', config, osp.join(work, 'epoch_1.pth'), '--show-dir', 'vis']):
        proc = subprocess.run([sys.executable, osp.join(TOOLS, args[0]), *args[1:], '--work-dir', work],
                              capture_output=True, text=True, timeout=900)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert 'coco/bbox_mAP' in proc.stdout + proc.stderr or 'Epoch(test)' in proc.stdout + proc.stderr
    pngs = glob.glob(osp.join(work, '*', 'vis', '*.jpg')) + glob.glob(osp.join(work, '*', 'vis', '*.png'))
    with open(coins_coco['val_ann']) as f:
        assert len(pngs) == len(json.load(f)['images'])


@pytest.mark.slow
def test_dist_train_runs_ddp_with_torchrun(tmp_path, coins_coco):
    """tools/dist_train.sh: torchrun + mmengine DDP (gloo on CPU processes here, NCCL on GPUs)."""
    config = tiny_config(tmp_path, RETINANET[0], coins_coco)
    work = str(tmp_path / 'ddp_work')
    env = dict(os.environ, PYTHON=sys.executable, PORT='29517', OMP_NUM_THREADS='1')
    proc = subprocess.run(['bash', osp.join(TOOLS, 'dist_train.sh'), config, '2', '--work-dir', work],
                          capture_output=True, text=True, timeout=900, env=env)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    assert 'Distributed training: True' in out
    # 4 training images, batch 2 per process, 2 processes: one iteration per epoch, not two
    assert 'Epoch(train) [1][1/1]' in out and '[1][2/2]' not in out
    assert osp.isfile(osp.join(work, 'epoch_1.pth'))
