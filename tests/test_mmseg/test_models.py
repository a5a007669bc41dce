"""The mmseg adapter's modules: decode head, segmentor (reference evaluation, official checkpoints), the
ShortSideResize transform and the optimizer constructor. Random weights, small inputs, no downloads."""
from __future__ import annotations

import glob
import os.path as osp
import re

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from conftest import ROOT, needs_keys, published_layout, randomize_

CONFIG_DIR = osp.join(ROOT, 'configs', 'efficientvit_seg')
CITY_B1 = 'efficientvit-b1_seg_8xb2-160k_cityscapes-1024x2048.py'
ADE_B1 = 'efficientvit-b1_seg_8xb2-160k_ade20k-512x512.py'


@pytest.fixture(autouse=True)
def mmseg_scope():
    """Every test here builds from mmseg's registries, as an mmseg Runner would: with mmseg's default scope current
    (another library's, left by an earlier module's fixtures, would send ``MODELS.build`` to that library)."""
    from mmengine.registry import DefaultScope
    with DefaultScope.overwrite_default_scope('mmseg'):
        yield


def load_cfg(name):
    from mmengine.config import Config
    import evit_mm.mmseg  # noqa: F401
    return Config.fromfile(osp.join(CONFIG_DIR, name))


def build(name, **model_overrides):
    """The segmentor of a config (backbone init_cfg dropped: no checkpoint files here)."""
    from mmengine.registry import init_default_scope
    from mmseg.registry import MODELS
    cfg = load_cfg(name)
    cfg.model.backbone.init_cfg = None
    for k, v in model_overrides.items():
        cfg.model[k] = v
    init_default_scope('mmseg')
    return MODELS.build(cfg.model)


def image(*shape, seed=1):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def sample(ori_shape, img_shape=None, pad=(0, 0, 0, 0), gt=None, num_classes=19, seed=0):
    from mmengine.structures import PixelData
    from mmseg.structures import SegDataSample
    img_shape = tuple(img_shape or ori_shape)
    s = SegDataSample(metainfo=dict(ori_shape=tuple(ori_shape), img_shape=img_shape, padding_size=list(pad),
                                    pad_shape=(img_shape[0] + pad[2] + pad[3], img_shape[1] + pad[0] + pad[1])))
    if gt is not None:
        s.gt_sem_seg = PixelData(data=gt)
    return s


# ----------------------------------------------------------------------------------------------------------------
# decode head
# ----------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize('config', ['b1_cityscapes', 'l1_ade20k'])
def test_decode_head_is_the_core_head(config):
    """Same state-dict keys and shapes as the core head (the reference's), same outputs with the same weights."""
    from mmseg.registry import MODELS

    import evit_mm.mmseg  # noqa: F401
    from evit_mm.models import EfficientViTSegHead, build_efficientvit_backbone, seg_head_config
    ref = seg_head_config(config)
    core = randomize_(EfficientViTSegHead(**ref)).eval()
    head = MODELS.build(dict(
        type='EfficientViTSegDecodeHead', in_channels=ref['in_channel_list'], head_width=ref['head_width'],
        head_depth=ref['head_depth'], expand_ratio=ref['expand_ratio'], middle_op=ref['middle_op'],
        final_expand=ref['final_expand'], num_classes=ref['n_classes'], act=ref['act'],
        norm_eps=ref['norm_eps'])).eval()
    assert {k: v.shape for k, v in head.state_dict().items()} == {k: v.shape for k, v in core.state_dict().items()}
    assert not hasattr(head, 'conv_seg') and head.dropout is None
    head.load_state_dict(core.state_dict())
    backbone = randomize_(build_efficientvit_backbone(config.split('_')[0])).eval()
    with torch.no_grad():
        feats = backbone(image(1, 3, 64, 96))
        out = head(feats)
        torch.testing.assert_close(out, core(feats), rtol=0, atol=0)
        assert out.shape == (1, ref['n_classes'], 8, 12)
        # cls_seg is the reference classifier
        torch.testing.assert_close(head.cls_seg(torch.ones(1, head.channels, 2, 2)),
                                   core.output_ops[0].op_list[-1](torch.ones(1, head.channels, 2, 2)))
        # fuse() (deploy mode) keeps the outputs
        fused = head.fuse()(feats)
    torch.testing.assert_close(fused, out, rtol=1e-4, atol=1e-4)


def test_decode_head_rejects_inconsistent_inputs():
    from mmseg.registry import MODELS

    import evit_mm.mmseg  # noqa: F401
    base = dict(type='EfficientViTSegDecodeHead', in_channels=(256, 128, 64), head_width=64, head_depth=1,
                expand_ratio=4, middle_op='mbconv', final_expand=None, num_classes=19)
    with pytest.raises(ValueError, match='in_index'):
        MODELS.build(dict(base, in_index=[0, 1, 2]))
    with pytest.raises(ValueError, match='multiple_select'):
        MODELS.build(dict(base, input_transform='resize_concat'))
    with pytest.raises(ValueError, match='stage4'):
        MODELS.build(dict(base, backbone_out_indices=(1, 2, 3)))
    head = MODELS.build(dict(base, backbone_out_indices=(2, 3, 4)))
    assert head.in_index == (2, 1, 0)


def _table_head(key):
    from evit_mm.models import SEG_HEAD_CONFIGS, EfficientViTSegHead
    return EfficientViTSegHead(**SEG_HEAD_CONFIGS[key])


#: the decode-head arguments that a named head fills in, with their SEG_HEAD_CONFIGS fields
HEAD_FIELDS = dict(in_channels='in_channel_list', head_width='head_width', head_depth='head_depth',
                   expand_ratio='expand_ratio', middle_op='middle_op', final_expand='final_expand',
                   num_classes='n_classes', fid_list='fid_list', stride_list='stride_list', head_stride='head_stride',
                   act='act', norm_eps='norm_eps')


@pytest.mark.parametrize('name', sorted(osp.basename(p) for p in glob.glob(osp.join(CONFIG_DIR, '*.py'))))
def test_every_seg_config_names_its_head_and_builds_the_table_head(name):
    """Each seg config names its head (SEG_HEAD_CONFIGS) and restates none of the table's numbers, and the model
    it builds has exactly the head the table describes: the same state-dict keys and shapes, the same settings."""
    from evit_mm.models import SEG_HEAD_CONFIGS
    cfg = load_cfg(name).model.decode_head
    arch, dataset = re.match(r'efficientvit-(\w+)_seg_.*_(cityscapes|ade20k)-', name).groups()
    assert cfg.head == f'{arch}_{dataset}'
    assert not set(cfg) & set(HEAD_FIELDS), f'{name} restates what head={cfg.head!r} gives'
    ref = SEG_HEAD_CONFIGS[cfg.head]
    with torch.device('meta'):
        head = build(name).decode_head
        core = _table_head(cfg.head)
    assert {k: v.shape for k, v in head.state_dict().items()} == {k: v.shape for k, v in core.state_dict().items()}
    assert (tuple(head.in_channels), head.head_width, head.num_classes, head.fid_list, head.stride_list,
            head.head_stride, head.act, head.norm_eps, head.dropout_ratio) == (
        ref['in_channel_list'], ref['head_width'], ref['n_classes'], ref['fid_list'], ref['stride_list'],
        ref['head_stride'], ref['act'], ref['norm_eps'], ref['dropout'])
    assert head.channels == (round(ref['head_width'] * ref['final_expand']) if ref['final_expand']
                             else ref['head_width'])
    assert (len(head.middle.op_list), head.head) == (ref['head_depth'], cfg.head)
    assert repr(head.middle) == repr(core.middle) and repr(head.output_ops) == repr(core.output_ops)
    assert repr(head.input_ops) == repr(core.input_ops)


def test_a_named_head_takes_agreeing_values_and_refuses_others():
    """``head=`` fills in the table's numbers; a value given besides must agree (ValueError naming it) and a head
    without a name needs every number."""
    from mmseg.registry import MODELS

    import evit_mm.mmseg  # noqa: F401
    from evit_mm.models import SEG_HEAD_CONFIGS
    ref = SEG_HEAD_CONFIGS['l1_ade20k']
    named = MODELS.build(dict(type='EfficientViTSegDecodeHead', head='l1_ade20k'))
    agreeing = MODELS.build(dict(type='EfficientViTSegDecodeHead', head='l1_ade20k', num_classes=150,
                                 in_channels=list(ref['in_channel_list']), final_expand=8.0, act='gelu'))
    spelled = MODELS.build(dict(type='EfficientViTSegDecodeHead', **{k: ref[f] for k, f in HEAD_FIELDS.items()}))
    shapes = {k: v.shape for k, v in _table_head('l1_ade20k').state_dict().items()}
    for head in (named, agreeing, spelled):
        assert {k: v.shape for k, v in head.state_dict().items()} == shapes
        assert (head.num_classes, head.act, head.norm_eps) == (150, 'gelu', 1e-7)
    with pytest.raises(ValueError, match=r"num_classes=19 \(the table: 150\)"):
        MODELS.build(dict(type='EfficientViTSegDecodeHead', head='l1_ade20k', num_classes=19))
    with pytest.raises(ValueError, match=r"head_depth=5 .*final_expand=None"):
        MODELS.build(dict(type='EfficientViTSegDecodeHead', head='l1_ade20k', final_expand=None, head_depth=5))
    with pytest.raises(ValueError, match='unknown seg head config'):
        MODELS.build(dict(type='EfficientViTSegDecodeHead', head='b9_cityscapes'))
    with pytest.raises(TypeError, match="head_width"):
        MODELS.build(dict(type='EfficientViTSegDecodeHead', in_channels=(256, 128, 64), head_depth=1,
                          expand_ratio=4, middle_op='mbconv', final_expand=None, num_classes=19))


@pytest.mark.parametrize('name', [CITY_B1, 'efficientvit-l1_seg_8xb2-160k_ade20k-512x512.py'])
def test_every_parameter_gets_a_gradient(name):
    """DDP with find_unused_parameters=False (mmengine's default) needs every trainable parameter in the graph:
    in particular no leftover conv_seg."""
    model = build(name)
    model.init_weights()
    model.train()
    num_classes = model.decode_head.num_classes
    gt = torch.randint(0, num_classes, (1, 64, 64), generator=torch.Generator().manual_seed(0))
    gt[:, :4] = 255
    losses = model.loss(image(2, 3, 64, 64), [sample((64, 64), gt=gt), sample((64, 64), gt=gt)])
    assert set(losses) == {'decode.loss_ce', 'decode.acc_seg'}
    losses['decode.loss_ce'].backward()
    unused = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert unused == []
    assert not any('conv_seg' in n for n, _ in model.named_parameters())


def test_classifier_init_follows_mmseg():
    model = build(CITY_B1)
    model.init_weights()
    conv = model.decode_head.classifier.conv
    assert conv.bias.abs().max() == 0
    assert 0.005 < conv.weight.std().item() < 0.02


# ----------------------------------------------------------------------------------------------------------------
# the reference's evaluation: whole image, logits resized once, bicubically, to the label size
# ----------------------------------------------------------------------------------------------------------------

def test_bicubic_eval_resizes_head_logits_once_to_the_label_size():
    model = randomize_(build(CITY_B1)).eval()
    assert model.test_cfg.mode == 'whole' and model.resize_mode == 'bicubic'
    x = image(1, 3, 64, 128)
    ori = (100, 150)  # e.g. an image that the test pipeline resized to 64x128
    with torch.no_grad():
        head_logits = model.decode_head(model.backbone(x))
        expected = F.interpolate(head_logits, size=ori, mode='bicubic', align_corners=False)[0]
        out = model.predict(x, [sample(ori, img_shape=(64, 128))])[0]
    assert head_logits.shape[-2:] == (8, 16)
    torch.testing.assert_close(out.seg_logits.data, expected, rtol=0, atol=1e-6)
    assert torch.equal(out.pred_sem_seg.data, expected.argmax(0, keepdim=True))
    # not the same as mmseg's two bilinear resizes, which resize_mode=None gives
    model.test_cfg['resize_mode'] = None
    with torch.no_grad():
        mmseg_way = model.predict(x, [sample(ori, img_shape=(64, 128))])[0].seg_logits.data
        two_step = F.interpolate(F.interpolate(head_logits, size=(64, 128), mode='bilinear'), size=ori,
                                 mode='bilinear')[0]
    torch.testing.assert_close(mmseg_way, two_step, rtol=0, atol=1e-6)
    assert (mmseg_way - expected).abs().max() > 1e-3


def test_bicubic_eval_removes_padding_and_handles_flip_and_slide():
    model = randomize_(build(CITY_B1)).eval()
    x = image(1, 3, 64, 128)
    with torch.no_grad():
        head_logits = model.decode_head(model.backbone(x))
        # padded input: 56x120 image + 8 rows / 8 columns of padding (right, bottom)
        up = F.interpolate(head_logits, size=(64, 128), mode='bicubic', align_corners=False)[:, :, :56, :120]
        expected = F.interpolate(up, size=(70, 150), mode='bicubic', align_corners=False)[0]
        out = model.predict(x, [sample((70, 150), img_shape=(56, 120), pad=(0, 8, 0, 8))])[0]
        torch.testing.assert_close(out.seg_logits.data, expected, rtol=0, atol=1e-6)
        flipped = sample((64, 128))
        flipped.set_metainfo(dict(flip=True, flip_direction='horizontal'))
        out = model.predict(x, [flipped])[0]
        torch.testing.assert_close(out.seg_logits.data, F.interpolate(
            head_logits, size=(64, 128), mode='bicubic', align_corners=False)[0].flip(-1), rtol=0, atol=1e-6)
        # slide mode: crops resized with resize_mode, averaged, then resized to the original size
        model.test_cfg.update(mode='slide', crop_size=(64, 64), stride=(64, 64))
        out = model.predict(x, [sample((64, 128))])[0]
        left = F.interpolate(model.decode_head(model.backbone(x[..., :64])), size=(64, 64), mode='bicubic')
        right = F.interpolate(model.decode_head(model.backbone(x[..., 64:])), size=(64, 64), mode='bicubic')
        torch.testing.assert_close(out.seg_logits.data, torch.cat([left, right], -1)[0], rtol=0, atol=1e-5)


def test_resize_mode_is_validated():
    with pytest.raises(ValueError, match='resize_mode'):
        build(CITY_B1, test_cfg=dict(mode='whole', resize_mode='area'))


@pytest.mark.parametrize('hw,expected', [((300, 451), (512, 800)), ((451, 300), (800, 512)),
                                         ((512, 683), (512, 704)), ((512, 512), (512, 512)),
                                         ((1024, 2048), (512, 1024))])
def test_short_side_resize_follows_the_reference_rule(hw, expected):
    from evit_mm.mmseg import ShortSideResize
    assert ShortSideResize(512, 32).target_size(*hw) == expected


def test_short_side_resize_equals_cv2_bicubic():
    import cv2
    from skimage import data

    from evit_mm.mmseg import ShortSideResize
    img = np.ascontiguousarray(data.chelsea()[..., ::-1])  # 300x451, BGR as mmcv loads it
    t = ShortSideResize(short_side=128, size_divisor=32)
    out = t(dict(img=img.copy(), img_shape=img.shape[:2], ori_shape=img.shape[:2]))
    th = 128
    tw = int(np.ceil(451 / 300 * th / 32) * 32)
    assert out['img'].shape[:2] == (th, tw) == out['img_shape']
    assert np.array_equal(out['img'], cv2.resize(img, dsize=(tw, th), interpolation=cv2.INTER_CUBIC))
    same = t(dict(img=img[:128, :192].copy()))  # already 128 x 192: untouched, as the reference skips it
    assert np.array_equal(same['img'], img[:128, :192]) and same['scale_factor'] == (1.0, 1.0)


# ----------------------------------------------------------------------------------------------------------------
# official seg checkpoints (backbone.* + head.*)
# ----------------------------------------------------------------------------------------------------------------

@needs_keys
@pytest.mark.parametrize('dump,config', [('seg_b1_cityscapes.txt', CITY_B1),
                                         ('seg_l2_ade20k.txt', 'efficientvit-l2_seg_8xb2-160k_ade20k-512x512.py')])
def test_official_seg_checkpoint_loads_strictly(tmp_path, dump, config):
    from mmengine.runner.checkpoint import load_checkpoint

    from evit_mm.mmseg import official_seg_to_mmseg
    official = published_layout(dump)
    path = str(tmp_path / 'official.pt')
    torch.save({'state_dict': official}, path)
    # the mmseg model's keys are the official ones with head. -> decode_head.
    model = build(config)
    assert set(model.state_dict()) == set(official_seg_to_mmseg(official))

    def check(m):
        sd = m.state_dict()
        qkv = next(k for k in official if k.endswith('context_module.main.qkv.conv.weight'))
        for key in (qkv, 'head.output_ops.0.op_list.0.conv.weight',
                    'head.middle.op_list.2.main.point_conv.norm.running_var'):
            assert torch.equal(sd[key.replace('head.', 'decode_head.', 1)], official[key]), key

    # 1. segmentor init_cfg=Pretrained: converted and loaded strictly
    model = build(config, init_cfg=dict(type='Pretrained', checkpoint=path))
    model.init_weights()
    check(model)
    # 2. backbone and decode head init_cfg=Pretrained with the same file: each takes its part, strictly
    from mmengine.registry import init_default_scope
    from mmseg.registry import MODELS
    cfg = load_cfg(config)
    cfg.model.backbone.init_cfg = dict(type='Pretrained', checkpoint=path)
    cfg.model.decode_head.init_cfg = dict(type='Pretrained', checkpoint=path)
    init_default_scope('mmseg')
    model = MODELS.build(cfg.model)
    model.init_weights()
    check(model)
    # 3. model-level loads of the official file (load_from, mim test --checkpoint, tools/test.py): the official
    #    head.* keys are renamed by the segmentor's pre-hook; strict loads pass
    model = build(config)
    load_checkpoint(model, path, strict=True)
    check(model)
    model = build(config)
    model.load_state_dict(official, strict=True)
    check(model)


@needs_keys
def test_checkpoint_mismatch_names_the_keys(tmp_path):
    from evit_mm.models.checkpoint import CheckpointMismatchError
    official = published_layout('seg_b1_cityscapes.txt')
    broken = dict(official)
    del broken['head.middle.op_list.1.main.depth_conv.conv.weight']
    broken['head.extra.weight'] = torch.zeros(1)
    path = str(tmp_path / 'broken.pt')
    torch.save(broken, path)
    model = build(CITY_B1, init_cfg=dict(type='Pretrained', checkpoint=path))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(CheckpointMismatchError) as err:
        model.init_weights()
    msg = str(err.value)
    assert 'decode_head.middle.op_list.1.main.depth_conv.conv.weight' in msg and 'decode_head.extra.weight' in msg
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())  # nothing half-loaded
    # the same through the decode head's own init_cfg (keys relative to the head)
    from mmengine.registry import init_default_scope
    from mmseg.registry import MODELS
    cfg = load_cfg(CITY_B1)
    cfg.model.backbone.init_cfg = None
    cfg.model.decode_head.init_cfg = dict(type='Pretrained', checkpoint=path)
    init_default_scope('mmseg')
    with pytest.raises(CheckpointMismatchError, match=r'middle\.op_list\.1\.main\.depth_conv\.conv\.weight'):
        MODELS.build(cfg.model).init_weights()
    # an ADE20K checkpoint in a Cityscapes model: the classifier's shape is named
    ade = published_layout('seg_b2_ade20k.txt')
    path = str(tmp_path / 'ade.pt')
    torch.save(ade, path)
    model = build('efficientvit-b2_seg_8xb2-160k_cityscapes-1024x2048.py',
                  init_cfg=dict(type='Pretrained', checkpoint=path))
    with pytest.raises(CheckpointMismatchError, match='decode_head.output_ops.0.op_list.0.conv.weight'):
        model.init_weights()


# ----------------------------------------------------------------------------------------------------------------
# optimizer: head lr x10 and no decay on norms / biases, together
# ----------------------------------------------------------------------------------------------------------------

def test_optimizer_groups_follow_the_recipe():
    from mmengine.optim import DefaultOptimWrapperConstructor, build_optim_wrapper
    cfg = load_cfg(CITY_B1)
    model = build(CITY_B1)
    wrapper = build_optim_wrapper(model, cfg.optim_wrapper)
    assert type(wrapper.optimizer).__name__ == 'AdamW'
    groups = {id(g['params'][0]): g for g in wrapper.optimizer.param_groups}
    named = dict(model.named_parameters())
    base_lr, base_wd = cfg.optim_wrapper.optimizer.lr, cfg.optim_wrapper.optimizer.weight_decay

    def lr_wd(name):
        g = groups[id(named[name])]
        return g['lr'], g['weight_decay']

    head_norm = 'decode_head.input_ops.0.op_list.0.norm.weight'
    assert lr_wd(head_norm) == (base_lr * 10, 0.0)
    assert lr_wd('decode_head.output_ops.0.op_list.1.conv.bias') == (base_lr * 10, 0.0)
    assert lr_wd('decode_head.middle.op_list.0.main.inverted_conv.conv.weight') == (base_lr * 10, base_wd)
    assert lr_wd('backbone.input_stem.op_list.0.norm.weight') == (base_lr, 0.0)
    assert lr_wd('backbone.stages.2.op_list.0.main.inverted_conv.conv.bias') == (base_lr, 0.0)
    assert lr_wd('backbone.stages.2.op_list.1.context_module.main.qkv.conv.weight') == (base_lr, base_wd)
    assert len(groups) == len(named)
    # mmengine's default constructor would decay the head's norms: the reason for the custom constructor
    opt_cfg = {k: v for k, v in cfg.optim_wrapper.items() if k not in ('constructor', 'paramwise_cfg')}
    plain = DefaultOptimWrapperConstructor(opt_cfg, cfg.optim_wrapper.paramwise_cfg)(model)
    g = {id(g['params'][0]): g for g in plain.optimizer.param_groups}[id(named[head_norm])]
    assert g['weight_decay'] == base_wd
