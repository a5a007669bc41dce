"""evit_mm.mm.weights: ``evit://NAME`` in a stock registry build's init_cfg, in ``tools/test.py CONFIG
evit://NAME``, and Cream's detector checkpoints converted for a stock Runner; no shipped config points at a local
checkpoints folder. The files come from the local server of conftest (``server``), in the published layouts."""
import os.path as osp
import re

import pytest
import torch
from conftest import CREAM, HF_SEG, ROOT, load_tool, needs_keys, published_layout, saved


@needs_keys
def test_init_cfg_with_an_evit_name_in_a_stock_registry_build(server):
    from mmdet.registry import MODELS

    import evit_mm.mmdet  # noqa: F401  (registers the backbones and the evit:// scheme)
    from evit_mm.models import EfficientViTM
    published = {'model': published_layout('cream_m4_keys.txt', seed=3)}
    server.files[CREAM + 'efficientvit_m4.pth'] = saved(published)
    from mmengine.registry import DefaultScope
    # Earlier tests may leave another library's default scope current (the SR tests leave mmagic's); a user's
    # mmdet Runner would have made mmdet's current, so the build does here.
    with DefaultScope.overwrite_default_scope('mmdet'):
        backbone = MODELS.build(dict(type='EfficientViTM', arch='m4',
                                     init_cfg=dict(type='Pretrained', checkpoint='evit://efficientvit_m4')))
    backbone.init_weights()
    reference = EfficientViTM('m4')
    reference.load_pretrained(published)
    assert all(torch.equal(backbone.state_dict()[k], v) for k, v in reference.state_dict().items())


TINY_SEG = """
_base_ = [{base!r}]
data_root = {root!r}
test_pipeline = [
    dict(type='LoadImageFromFile', imdecode_backend='pillow'),
    dict(type='Resize', scale=(128, 64), keep_ratio=False, interpolation='bicubic'),
    dict(type='LoadAnnotations'),
    dict(type='PackSegInputs'),
]
val_dataloader = dict(batch_size=1, num_workers=0, persistent_workers=False,
                      dataset=dict(data_root=data_root, pipeline=test_pipeline))
test_dataloader = val_dataloader
"""


@needs_keys
@pytest.mark.slow
def test_tools_test_evaluates_a_published_model_by_name(server, tmp_path):
    """``tools/test.py CONFIG evit://efficientvit_seg_b0_cityscapes``: downloaded, converted (official seg keys ->
    mmseg's) and loaded strictly into the Runner's model, which evaluates the sample data."""
    from evit_mm.sample_data import make_cityscapes_sample
    data = make_cityscapes_sample(str(tmp_path / 'city'), num_train=1, num_val=2, image_size=(64, 128))
    server.files[HF_SEG + 'efficientvit_seg_b0_cityscapes.pt'] = saved(
        {'state_dict': published_layout('seg_b0_cityscapes.txt', seed=4)})
    config = tmp_path / 'tiny_b0.py'
    config.write_text(TINY_SEG.format(
        base=osp.join(ROOT, 'configs', 'efficientvit_seg', 'efficientvit-b0_seg_8xb2-160k_cityscapes-1024x2048.py'),
        root=osp.join(data['root'], '')))
    metrics = load_tool('test').main([str(config), 'evit://efficientvit_seg_b0_cityscapes',
                                      '--work-dir', str(tmp_path / 'work')])
    assert set(metrics) == {'aAcc', 'mIoU', 'mAcc'} and 0.0 <= metrics['mIoU'] <= 100.0
    assert server.gets(HF_SEG + 'efficientvit_seg_b0_cityscapes.pt') == 1
    # the same name through mmengine's loader gives the file as published; the segmentor renamed its keys
    from mmengine.runner.checkpoint import CheckpointLoader
    loaded = CheckpointLoader.load_checkpoint('evit://efficientvit_seg_b0_cityscapes', map_location='cpu')
    assert any(k.startswith('head.') for k in loaded['state_dict'])


@needs_keys
@pytest.mark.slow
def test_a_cream_detector_by_name_is_converted_for_a_stock_runner(server):
    """``evit://retinanet_efficientvit_m4_fpn_1x_coco``: mmengine's loader hands a stock Runner the detector with
    its backbone already in evit_mm's layout, which loads strictly; ``create_model`` gives the same model."""
    from mmengine.runner.checkpoint import CheckpointLoader

    from evit_mm.mm.loading import load_strict
    from evit_mm.models import create_model
    detector = create_model('retinanet_efficientvit_m4_fpn_1x_coco')
    others = {k: torch.randn_like(v) if v.is_floating_point() else v
              for k, v in detector.state_dict().items() if not k.startswith('backbone.')}
    published = {'state_dict': {**published_layout('cream_downstream_m4_keys.txt', seed=5, prefix='backbone.'),
                                **others}, 'meta': {}}
    server.files[CREAM + 'retinanet_efficientvit_m4_fpn_1x_coco.pth'] = saved(published)
    checkpoint = CheckpointLoader.load_checkpoint('evit://retinanet_efficientvit_m4_fpn_1x_coco', map_location='cpu')
    assert checkpoint['meta']['converted_by'] == 'evit_mm'
    load_strict(detector, checkpoint['state_dict'], 'evit://retinanet_efficientvit_m4_fpn_1x_coco')
    trained = create_model('retinanet_efficientvit_m4_fpn_1x_coco', pretrained=True)
    assert server.gets(CREAM + 'retinanet_efficientvit_m4_fpn_1x_coco.pth') == 1
    for key, value in detector.state_dict().items():
        assert torch.equal(trained.state_dict()[key], value), key
    assert torch.equal(trained.state_dict()['bbox_head.retina_cls.weight'], others['bbox_head.retina_cls.weight'])


def test_no_shipped_config_points_at_a_checkpoints_folder():
    import glob
    offenders = [p for p in glob.glob(osp.join(ROOT, 'configs', '**', '*.py'), recursive=True)
                 if re.search(r"""['"]checkpoints/""", open(p).read())]
    assert not offenders
