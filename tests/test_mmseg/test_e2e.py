"""The mmseg configs end to end: they build, train 2 iterations and evaluate mIoU (IoUMetric) on tiny Cityscapes /
ADE20K datasets in the real layouts (evit_mm.sample_data), through tools/train.py + tools/test.py, mim and DDP;
the reference evaluation against an independent re-implementation; the benchmark tool's smoke run."""
import glob
import os
import os.path as osp
import re
import subprocess
import sys

import numpy as np
import pytest
import torch

from conftest import ROOT, load_tool, train_two_iterations

CONFIG_DIR = osp.join(ROOT, 'configs', 'efficientvit_seg')
TOOLS = osp.join(ROOT, 'tools')
CITY = [f'efficientvit-{m}_seg_8xb2-160k_cityscapes-1024x2048.py' for m in ('b0', 'b1', 'b2', 'b3', 'l1', 'l2')]
ADE = [f'efficientvit-{m}_seg_8xb2-160k_ade20k-512x512.py' for m in ('b1', 'b2', 'b3', 'l1', 'l2')]
REFERENCE_MIOU = {  # applications/efficientvit_seg/README.md of mit-han-lab/efficientvit
    'b0_cityscapes': 75.653, 'b1_cityscapes': 80.547, 'b2_cityscapes': 82.073, 'b3_cityscapes': 83.016,
    'l1_cityscapes': 82.716, 'l2_cityscapes': 83.228,
    'b1_ade20k': 42.840, 'b2_ade20k': 45.941, 'b3_ade20k': 49.013, 'l1_ade20k': 49.191, 'l2_ade20k': 50.702}

# Small crops and images; everything else (model, recipe, evaluation mode) is the config's.
TINY_TEMPLATE = """
_base_ = [{base!r}]
data_root = {root!r}
crop_size = {crop}
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations'{reduce}),
    dict(type='RandomResize', scale={train_scale}, ratio_range=(0.5, 2.0), keep_ratio=True),
    dict(type='RandomCrop', crop_size=crop_size, cat_max_ratio=0.75),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PhotoMetricDistortion'),
    dict(type='PackSegInputs'),
]
test_pipeline = [
    dict(type='LoadImageFromFile', imdecode_backend='pillow'),
    {test_resize},
    dict(type='LoadAnnotations'{reduce}),
    dict(type='PackSegInputs'),
]
train_dataloader = dict(batch_size=2, num_workers=0, persistent_workers=False,
                        dataset=dict(data_root=data_root, pipeline=train_pipeline))
val_dataloader = dict(batch_size=1, num_workers=0, persistent_workers=False,
                      dataset=dict(data_root=data_root, pipeline=test_pipeline))
test_dataloader = val_dataloader
model = dict(data_preprocessor=dict(size=crop_size), backbone=dict(init_cfg=None))
train_cfg = dict(max_iters={iters}, val_interval={iters})
default_hooks = dict(logger=dict(interval=1), checkpoint=dict(interval={iters}))
"""


def model_key(config):
    m = re.match(r'efficientvit-(\w+)_seg_.*_(cityscapes|ade20k)-', osp.basename(config))
    return f'{m.group(1)}_{m.group(2)}'


@pytest.fixture(scope='module')
def city_data(tmp_path_factory):
    from evit_mm.sample_data import make_cityscapes_sample
    return make_cityscapes_sample(str(tmp_path_factory.mktemp('cityscapes')), num_train=4, num_val=2,
                                  image_size=(64, 128))


@pytest.fixture(scope='module')
def ade_data(tmp_path_factory):
    from evit_mm.sample_data import make_ade20k_sample
    return make_ade20k_sample(str(tmp_path_factory.mktemp('ade20k')), num_train=4, num_val=2, image_size=64)


def tiny_config(tmp_path, base, data, iters=2):
    """A config inheriting ``base`` that trains on the tiny dataset (64x128 / 64x64 crops)."""
    if 'cityscapes' in base:
        fields = dict(crop=(64, 128), reduce='', train_scale=(256, 64),
                      test_resize="dict(type='Resize', scale=(128, 64), keep_ratio=False, interpolation='bicubic')")
    else:
        fields = dict(crop=(64, 64), reduce=', reduce_zero_label=True', train_scale=(256, 64),
                      test_resize="dict(type='ShortSideResize', short_side=64, size_divisor=32)")
    text = TINY_TEMPLATE.format(base=osp.join(CONFIG_DIR, base), root=osp.join(data['root'], ''), iters=iters,
                                **fields)
    path = tmp_path / ('tiny_' + osp.basename(base))
    path.write_text(text)
    return str(path)


# ----------------------------------------------------------------------------------------------------------------
# configs
# ----------------------------------------------------------------------------------------------------------------

def test_every_config_builds_with_the_reference_architecture():
    from mmengine.config import Config
    from mmengine.registry import init_default_scope
    from mmseg.registry import MODELS

    import evit_mm.mmseg  # noqa: F401
    from evit_mm.models import SEG_HEAD_CONFIGS, EfficientViTSegHead, build_efficientvit_backbone
    configs = sorted(glob.glob(osp.join(CONFIG_DIR, '*.py')))
    assert sorted(osp.basename(c) for c in configs) == sorted(CITY + ADE)
    init_default_scope('mmseg')
    for path in configs:
        cfg = Config.fromfile(path)
        key = model_key(path)
        assert cfg.custom_imports['imports'] == ['evit_mm.mmseg'], path
        assert cfg.default_scope == 'mmseg'
        # the head is the reference's, by name (SEG_HEAD_CONFIGS; test_mmseg_models checks the head it builds)
        ref = SEG_HEAD_CONFIGS[key]
        assert cfg.model.decode_head.head == key, path
        arch = key.split('_')[0]
        assert cfg.model.backbone.arch == arch
        assert f'Reference mIoU {REFERENCE_MIOU[key]:.3f}' in open(path).read(), path
        cfg.model.backbone.init_cfg = None
        with torch.device('meta'):
            model = MODELS.build(cfg.model)
            core_backbone = build_efficientvit_backbone(arch, norm_eps=ref['norm_eps'])
            core_head = EfficientViTSegHead(**ref)
        assert type(model).__name__ == 'EfficientViTEncoderDecoder'
        n = sum(p.numel() for p in model.parameters())
        assert n == sum(p.numel() for p in core_backbone.parameters()) + sum(p.numel() for p in core_head.parameters())
        assert model.backbone.norm_eps == model.decode_head.norm_eps == ref['norm_eps']
        # evaluation as the reference: whole image, bicubic, the dataset's resize rule, labels at full size
        assert dict(model.test_cfg) == {'mode': 'whole', 'resize_mode': 'bicubic'}
        test = cfg.test_dataloader.dataset.pipeline
        assert [t.type for t in test] == ['LoadImageFromFile', 'ShortSideResize' if 'ade20k' in key else 'Resize',
                                          'LoadAnnotations', 'PackSegInputs']
        if 'ade20k' in key:
            assert (test[1].short_side, test[1].size_divisor, test[1].interpolation) == (512, 32, 'bicubic')
            assert cfg.test_dataloader.dataset.type == 'ADE20KDataset' and test[2].reduce_zero_label
        else:
            assert (test[1].scale, test[1].keep_ratio, test[1].interpolation) == ((2048, 1024), False, 'bicubic')
            assert cfg.test_dataloader.dataset.type == 'CityscapesDataset'


def test_training_recipe_is_in_the_configs():
    from mmengine.config import Config
    for name, crop in ((CITY[1], (1024, 1024)), (ADE[0], (512, 512))):
        cfg = Config.fromfile(osp.join(CONFIG_DIR, name))
        opt = cfg.optim_wrapper
        assert (opt.optimizer.type, opt.optimizer.lr, opt.optimizer.weight_decay) == ('AdamW', 1e-4, 0.05)
        assert opt.constructor == 'EfficientViTOptimWrapperConstructor' and opt.clip_grad.max_norm == 2.0
        assert opt.paramwise_cfg.custom_keys == {'decode_head': {'lr_mult': 10.0}}
        assert opt.paramwise_cfg.norm_decay_mult == opt.paramwise_cfg.bias_decay_mult == 0.0
        warmup, decay = cfg.param_scheduler
        assert (warmup.type, warmup.end, decay.type, decay.begin, decay.end) == (
            'LinearLR', 1500, 'CosineAnnealingLR', 1500, 160000)
        assert cfg.train_cfg.max_iters == 160000
        assert cfg.train_dataloader.batch_size * 8 == cfg.auto_scale_lr.base_batch_size == 16
        assert cfg.crop_size == crop and cfg.model.data_preprocessor.size == crop
        crop_t = [t for t in cfg.train_pipeline if t.type == 'RandomCrop'][0]
        assert crop_t.crop_size == crop and crop_t.cat_max_ratio == 0.75
        assert [t.type for t in cfg.train_dataloader.dataset.pipeline][2:] == [
            'RandomResize', 'RandomCrop', 'RandomFlip', 'PhotoMetricDistortion', 'PackSegInputs']
        assert cfg.sync_bn == 'torch'
        assert cfg.model.decode_head.loss_decode.avg_non_ignore


# ----------------------------------------------------------------------------------------------------------------
# train 2 iterations + evaluate mIoU on the tiny datasets
# ----------------------------------------------------------------------------------------------------------------

def _train_and_test(tmp_path, base, data):
    config = tiny_config(tmp_path, base, data)
    work = str(tmp_path / 'work')
    checkpoint, state_dict = train_two_iterations(config, work)
    assert any(k.startswith('decode_head.input_ops.') for k in state_dict)
    metrics = load_tool('test').main([config, checkpoint, '--work-dir', work])
    assert set(metrics) == {'aAcc', 'mIoU', 'mAcc'}
    assert 0.0 <= metrics['mIoU'] <= 100.0
    return metrics


@pytest.mark.parametrize('base', [CITY[1], CITY[4]])  # B1, L1
def test_cityscapes_trains_and_evaluates(tmp_path, city_data, base):
    _train_and_test(tmp_path, base, city_data)


@pytest.mark.parametrize('base', [ADE[0], ADE[3]])  # B1, L1
def test_ade20k_trains_and_evaluates(tmp_path, ade_data, base):
    _train_and_test(tmp_path, base, ade_data)


@pytest.mark.slow
@pytest.mark.parametrize('base', [CITY[0], CITY[2], CITY[3], CITY[5], ADE[1], ADE[2], ADE[4]])
def test_other_configs_train_and_evaluate(tmp_path, city_data, ade_data, base):
    _train_and_test(tmp_path, base, city_data if 'cityscapes' in base else ade_data)


@pytest.mark.slow
def test_tiny_training_learns_the_sample_labels(tmp_path):
    """100 iterations of B0 from scratch fit the 8 training images of a tiny Cityscapes well beyond the majority
    class (47.6 % of their labelled pixels): images and labels are aligned, the labels are learnable and the
    loss / ignore handling trains. (lr 1e-3 and a short cosine schedule for so few steps.)"""
    from mmengine.config import Config
    from mmengine.runner import Runner
    from PIL import Image

    from evit_mm.sample_data import make_cityscapes_sample
    data = make_cityscapes_sample(str(tmp_path / 'city8'), num_train=8, num_val=1, image_size=(64, 128))
    labels = np.concatenate([np.asarray(Image.open(f)).ravel() for f in
                             glob.glob(osp.join(data['train_ann'], '*', '*_gtFine_labelTrainIds.png'))])
    labels = labels[labels != 255]
    majority = 100 * np.bincount(labels).max() / labels.size
    cfg = Config.fromfile(tiny_config(tmp_path, CITY[0], data, iters=100))
    cfg.work_dir = str(tmp_path / 'work')
    cfg.randomness = dict(seed=0)
    cfg.param_scheduler = [dict(type='LinearLR', start_factor=0.1, by_epoch=False, begin=0, end=10),
                           dict(type='CosineAnnealingLR', eta_min=0.0, by_epoch=False, begin=10, end=100)]
    cfg.optim_wrapper.optimizer.lr = 1e-3
    cfg.default_hooks.logger.interval = 50
    cfg.test_dataloader.dataset.data_prefix = dict(img_path='leftImg8bit/train', seg_map_path='gtFine/train')
    runner = Runner.from_cfg(cfg)
    runner.train()
    metrics = runner.test()
    assert majority < 50 and metrics['aAcc'] > majority + 7.5, (majority, metrics)


# ----------------------------------------------------------------------------------------------------------------
# the reference evaluation, end to end, against an independent re-implementation of the reference's script
# ----------------------------------------------------------------------------------------------------------------

def test_ade20k_reference_evaluation_matches_the_reference_procedure(tmp_path, ade_data):
    """mmseg's test pipeline + EfficientViTEncoderDecoder(resize_mode='bicubic') predict what the reference's
    eval_efficientvit_seg_model.py procedure predicts: PIL RGB -> cv2 INTER_CUBIC to short side S, long side
    ceil(long/short*S/32)*32 -> /255, ImageNet normalisation -> model -> bicubic to the label size -> argmax;
    and IoUMetric's per-class IoU equals the reference's intersection/union counts (labels - 1, 0 ignored)."""
    import cv2
    from mmengine.config import Config
    from mmengine.dataset import pseudo_collate
    from mmengine.registry import init_default_scope
    from mmseg.evaluation import IoUMetric
    from mmseg.registry import DATASETS, MODELS
    from PIL import Image

    from conftest import randomize_
    cfg = Config.fromfile(tiny_config(tmp_path, ADE[0], ade_data))
    init_default_scope('mmseg')
    model = randomize_(MODELS.build(cfg.model), seed=3).eval()
    dataset = DATASETS.build(cfg.test_dataloader.dataset)
    metric = IoUMetric(iou_metrics=['mIoU'])
    metric.dataset_meta = dataset.metainfo
    mean = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)
    inter, union = np.zeros(150), np.zeros(150)
    assert len(dataset) == 2
    for i in range(len(dataset)):
        item = dataset[i]
        with torch.no_grad():
            out = model.test_step(pseudo_collate([item]))[0]
        metric.process([item], [out.to_dict()])
        # the reference procedure, written independently
        path = item['data_samples'].img_path
        rgb = np.array(Image.open(path).convert('RGB'))
        label = np.array(Image.open(item['data_samples'].seg_map_path), dtype=np.int64) - 1
        h, w = rgb.shape[:2]
        if h < w:
            th, tw = 64, int(np.ceil(w / h * 64 / 32) * 32)
        else:
            tw, th = 64, int(np.ceil(h / w * 64 / 32) * 32)
        if (th, tw) != (h, w):
            rgb = cv2.resize(rgb, dsize=(tw, th), interpolation=cv2.INTER_CUBIC)
        x = ((torch.as_tensor(rgb.transpose(2, 0, 1), dtype=torch.float32) / 255 - mean) / std)[None]
        with torch.no_grad():
            logits = model.decode_head(model.backbone(x))
            logits = torch.nn.functional.interpolate(logits, size=label.shape, mode='bicubic', align_corners=False)
        pred = logits.argmax(1)[0].numpy()
        ours = out.pred_sem_seg.data[0].numpy()
        assert ours.shape == label.shape
        assert (ours == pred).mean() > 0.999, (ours != pred).sum()
        valid = label >= 0
        for c in range(150):
            p, t = (pred == c) & valid, (label == c) & valid
            inter[c] += (p & t).sum()
            union[c] += (p | t).sum()
    results = metric.compute_metrics(metric.results)
    ref_iou = inter[union > 0] / union[union > 0]
    assert results['mIoU'] == pytest.approx(round(100 * ref_iou.mean(), 2), abs=0.011)


# ----------------------------------------------------------------------------------------------------------------
# mim, DDP, benchmark tool
# ----------------------------------------------------------------------------------------------------------------

def _run(args, cwd, timeout=900):
    env = dict(os.environ, PYTHONWARNINGS='ignore', PYTHON=sys.executable)
    return subprocess.run(args, capture_output=True, text=True, timeout=timeout, cwd=cwd, env=env)


@pytest.mark.slow
@pytest.mark.parametrize('base,data', [(CITY[1], 'city_data'), (ADE[0], 'ade_data')])
def test_mim_train_and_test(tmp_path, request, base, data):
    """``mim train mmseg`` runs mmseg's own tools/train.py: the config's custom_imports must bring evit_mm in."""
    config = tiny_config(tmp_path, base, request.getfixturevalue(data))
    work = str(tmp_path / 'mim_work')
    mim = osp.join(osp.dirname(sys.executable), 'mim')
    proc = _run([mim, 'train', 'mmseg', config, '--work-dir', work], cwd=str(tmp_path))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    checkpoint = osp.join(work, 'iter_2.pth')
    assert osp.isfile(checkpoint)
    proc = _run([mim, 'test', 'mmseg', config, '--checkpoint', checkpoint, '--work-dir', work], cwd=str(tmp_path))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert 'mIoU' in proc.stdout + proc.stderr


@pytest.mark.slow
def test_ddp_training_without_find_unused_parameters(tmp_path, city_data):
    """Two DDP processes (gloo on CPU), find_unused_parameters=False: a parameter without gradient would stop the
    second iteration. sync_bn is switched off because torch's SyncBatchNorm runs on GPUs only."""
    config = tiny_config(tmp_path, CITY[1], city_data)
    work = str(tmp_path / 'ddp_work')
    proc = _run(['bash', osp.join(TOOLS, 'dist_train.sh'), config, '2', '--work-dir', work,
                 '--cfg-options', 'sync_bn=None'], cwd=ROOT)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert osp.isfile(osp.join(work, 'iter_2.pth'))


def test_benchmark_tool_smoke(tmp_path, capsys):
    """tools/benchmark.py times EfficientViT-Seg-B1 against mmseg's SegFormer-B1 (what tools/benchmark_seg.py
    did): both at the given HxW, outputs at each head's native stride, ratios against the peer."""
    import json
    import runpy
    out = tmp_path / 'bench'
    tool = runpy.run_path(osp.join(TOOLS, 'benchmark.py'))
    assert tool['main'](['--models', 'efficientvit_seg_b1', '--peers', 'segformer', '--img-size', '64x128',
                         '--no-onnx', '--duration', '0.05', '--repeats', '1', '--warmup', '0', '--progress', 'off',
                         '--out-dir', str(out)]) == 0
    saved = json.loads((out / 'benchmark.json').read_text())
    rows = {(r['model'], r['impl'], r['mode']): r for r in saved['results']}
    assert set(rows) == {('efficientvit_seg_b1', 'evit_mm', 'eager'), ('efficientvit_seg_b1', 'evit_mm', 'deploy'),
                         ('segformer_b1', 'segformer', 'eager')}
    assert all(r['input_size'] == [64, 128] and r['batch_size'] == 1 for r in rows.values())
    assert rows[('efficientvit_seg_b1', 'evit_mm', 'deploy')]['max_abs_diff'] < 1e-4  # BN folding keeps the function
    # logits for 19 classes at each head's native stride: EfficientViT 8, SegFormer 4
    assert saved['models']['efficientvit_seg_b1']['output_shape'] == [19, 8, 16]
    assert saved['models']['segformer_b1']['output_shape'] == [19, 16, 32]
    (ratios,) = saved['ratios']
    assert ratios['eager/segformer'] > 0 and ratios['deploy/segformer'] > 0
    assert saved['meta']['command'].startswith('python tools/benchmark.py --models efficientvit_seg_b1')
    assert '| efficientvit_seg_b1 | evit_mm | 1 |' in capsys.readouterr().out
