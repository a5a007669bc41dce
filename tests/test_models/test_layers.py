"""The shared building blocks of evit_mm.models.layers: one ConvNormAct for every family, one DAG head for the seg
head and the SAM neck, one Resize. Key layouts of whole models against the official dumps are checked in
test_efficientvit_mit.py / test_sam.py / test_efficientvit_msra.py (in this folder); here: each family's layer
names, the fuse() contract of the shared class, and the DAG head's behaviour. Tiny random models only."""
from __future__ import annotations

import pytest
import torch
from torch import nn

import evit_mm
from evit_mm.models import layers
from evit_mm.models.efficientvit_msra import ConvBN, EfficientViTM, ResidualDWConvBN
from evit_mm.models.efficientvit_msra_fpn import EfficientViTFPN
from evit_mm.models.layers import ConvNormAct, DAGHead, OpSequence, Resize
from evit_mm.models.sam import SamNeck
from evit_mm.models.seg_head import EfficientViTSegHead

from conftest import randomize_


def _fpn_inputs():
    g = torch.Generator().manual_seed(1)
    return [torch.randn(1, c, s, s, generator=g) for c, s in ((32, 8), (48, 4), (64, 2))]


def _sam_neck():
    return SamNeck(('stage4', 'stage3', 'stage2'), (24, 16, 8), head_width=16, head_depth=1, expand_ratio=1,
                   middle_op='fmb', out_dim=8, embed_size=8)


# ----------------------------------------------------------------------------------------------------------------
# one ConvNormAct
# ----------------------------------------------------------------------------------------------------------------

def test_every_family_uses_the_one_conv_norm_act():
    """EfficientViT-M (ConvBN), -B/L, the FPN, the seg head and the SAM neck all build their conv layers from
    layers.ConvNormAct; no model defines a conv layer class of its own any more."""
    models = {
        'msra': EfficientViTM('m0'),
        'mit': evit_mm.models.efficientvit_b0(),
        'fpn': EfficientViTFPN([32, 48, 64], 16, num_outs=5, num_extra_trans_convs=1, norm_cfg=dict(type='BN')),
        'seg': EfficientViTSegHead.from_config('b0_cityscapes'),
        'sam': _sam_neck(),
    }
    for name, model in models.items():
        convs = [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))]
        owners = {type(m) for m in model.modules() if any(c is m.__dict__['_modules'].get('conv') for c in convs)}
        assert owners, name
        assert all(issubclass(t, ConvNormAct) for t in owners), (name, owners)
    assert issubclass(ConvBN, ConvNormAct) and issubclass(ResidualDWConvBN, ConvBN)
    from evit_mm.models import efficientvit_mit, efficientvit_msra_fpn
    assert efficientvit_mit.ConvNormAct is ConvNormAct
    assert not hasattr(efficientvit_msra_fpn, 'ConvNormAct') or efficientvit_msra_fpn.ConvNormAct is ConvNormAct


def test_layer_names_per_family():
    """Each family keeps its checkpoints' names: MIT conv/norm, MSRA conv/bn, FPN conv/bn|gn + activate."""
    mit = ConvNormAct(4, 8, 3, act='gelu')
    assert list(mit.state_dict()) == ['conv.weight', 'norm.weight', 'norm.bias', 'norm.running_mean',
                                      'norm.running_var', 'norm.num_batches_tracked']
    assert mit.norm_layer is mit.norm and isinstance(mit.act, nn.GELU)
    msra = ConvBN(4, 8, 3, 1, 1, bn_weight_init=0.0)
    assert [k for k in msra.state_dict() if k.endswith('weight')] == ['conv.weight', 'bn.weight']
    assert msra.norm_layer is msra.bn and torch.all(msra.bn.weight == 0)
    fpn = EfficientViTFPN([32, 48, 64], 16, num_outs=4, num_extra_trans_convs=1,
                          norm_cfg=dict(type='BN'), act_cfg=dict(type='PReLU'))
    keys = set(fpn.state_dict())
    for key in ('lateral_convs.0.conv.weight', 'lateral_convs.0.bn.weight', 'lateral_convs.0.activate.weight',
                'extra_trans_convs.0.bn.running_var', 'fpn_convs.2.activate.weight'):
        assert key in keys
    assert not any('.norm.' in k or '.act.' in k for k in keys)
    gn = EfficientViTFPN([32, 48, 64], 16, num_outs=3, norm_cfg=dict(type='GN', num_groups=4))
    assert 'fpn_convs.0.gn.weight' in gn.state_dict() and 'fpn_convs.0.conv.bias' not in gn.state_dict()


def test_conv_norm_act_arguments():
    with pytest.raises(ValueError, match='odd'):
        ConvNormAct(4, 4, 2)
    up = ConvNormAct(4, 4, 2, 2, padding=0, transposed=True)  # even kernels need an explicit padding
    assert isinstance(up.conv, nn.ConvTranspose2d) and up(torch.zeros(1, 4, 3, 3)).shape == (1, 4, 6, 6)
    prelu = nn.PReLU()
    assert ConvNormAct(4, 4, act=prelu).act is prelu  # a module is used as given
    with pytest.raises(ValueError, match='unknown activation'):
        ConvNormAct(4, 4, act='swishy')


@pytest.mark.parametrize('norm_cfg,folded', [(dict(type='BN'), True), (dict(type='GN', num_groups=4), False)])
def test_fpn_deploy_folds_batchnorm_only(norm_cfg, folded):
    """deploy() reaches the FPN's layers through the shared fuse(): BNs after plain convs are folded (same
    outputs), BNs after the transposed convs and other norms stay (folding them would be wrong)."""
    fpn = randomize_(EfficientViTFPN([32, 48, 64], 16, num_outs=5, num_extra_trans_convs=2,
                                     norm_cfg=norm_cfg, act_cfg=dict(type='ReLU'))).eval()
    x = _fpn_inputs()
    with torch.no_grad():
        want = fpn(x)
        evit_mm.deploy(fpn, channels_last=False)
        got = fpn(x)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    assert (getattr(fpn.fpn_convs[0], 'norm_layer', None) is None) == folded
    assert (fpn.fpn_convs[0].conv.bias is not None) == folded  # the folded BN's shift became the conv bias
    assert fpn.extra_trans_convs[0].norm_layer is not None  # a norm after a transposed conv is kept


def test_convbn_fuse_in_place_and_fused():
    """ConvBN has both the shared in-place fuse() and its own fused() (a new conv, used by EfficientViTM.fuse);
    the residual depthwise one stays right either way."""
    x = torch.randn(2, 6, 5, 5)
    for layer in (ConvBN(6, 6, 3, 1, 1, groups=6), ResidualDWConvBN(6)):
        randomize_(layer).eval()
        with torch.no_grad():
            want = layer(x)
            # fused() of the residual one folds the identity into the kernel's centre tap
            torch.testing.assert_close(layer.fused()(x), want, rtol=1e-5, atol=1e-5)
            layer.fuse()
            assert layer.bn is None and 'bn.weight' not in layer.state_dict()
            torch.testing.assert_close(layer(x), want, rtol=1e-5, atol=1e-5)


# ----------------------------------------------------------------------------------------------------------------
# one DAG head
# ----------------------------------------------------------------------------------------------------------------

def test_seg_head_and_sam_neck_are_dag_heads():
    seg, neck = EfficientViTSegHead.from_config('b0_cityscapes'), _sam_neck()
    for head in (seg, neck):
        assert isinstance(head, DAGHead) and head.merge == 'add'
        assert [n for n, _ in head.named_children()] == ['input_ops', 'middle', 'output_ops']
    # SAM neck: every branch resized to the embedding size, whatever the input sizes
    feats = [torch.randn(1, c, s, s) for c, s in ((24, 2), (16, 4), (8, 8))]
    assert neck(feats).shape == (1, 8, 8, 8)
    # seg head: branches brought to the finest input's size at head stride, also for sizes not a multiple of 32
    feats = [torch.randn(1, c, *s) for c, s in ((16, (13, 15)), (32, (7, 8)), (64, (4, 4)), (128, (2, 2)))]
    assert seg.eval()(feats).shape == (1, 19, 7, 8)


def _tiny_dag(merge):
    inputs = [ConvNormAct(3, 4, norm=False, bias=True), OpSequence([ConvNormAct(5, 4), Resize(factor=2)])]
    return DAGHead(inputs, nn.Identity(), [ConvNormAct(4 if merge == 'add' else 8, 2, bias=True, norm=False)],
                   merge=merge).eval()


@pytest.mark.parametrize('merge', ['add', 'cat'])
def test_dag_head_merge(merge):
    torch.manual_seed(0)
    head = _tiny_dag(merge)
    a, b = torch.randn(1, 3, 6, 6), torch.randn(1, 5, 3, 3)
    with torch.no_grad():
        ya = head.input_ops[0](a)
        yb = head.input_ops[1](b)
        merged = ya + yb if merge == 'add' else torch.cat([ya, yb], 1)
        torch.testing.assert_close(head.forward_dag([a, b]), head.output_ops[0](merged))
        # size reaches a trailing Resize: a 5x6 target for an odd-sized finest input
        assert head.forward_dag([torch.randn(1, 3, 5, 6), b], size=(5, 6)).shape == (1, 2, 5, 6)


def test_dag_head_errors_and_fuse():
    with pytest.raises(ValueError, match="'add' or 'cat'"):
        DAGHead([nn.Identity()], nn.Identity(), [nn.Identity()], merge='mul')
    head = randomize_(_tiny_dag('add')).eval()
    with pytest.raises(ValueError, match='2 inputs, got 1'):
        head.forward_dag([torch.randn(1, 3, 6, 6)])
    x = [torch.randn(1, 3, 6, 6), torch.randn(1, 5, 3, 3)]
    with torch.no_grad():
        want = head.forward_dag(x)
        assert head.fuse() is head
        assert all(m.norm_layer is None for m in head.modules() if isinstance(m, ConvNormAct))
        torch.testing.assert_close(head.forward_dag(x), want, rtol=1e-5, atol=1e-5)


# ----------------------------------------------------------------------------------------------------------------
# one Resize
# ----------------------------------------------------------------------------------------------------------------

def test_resize():
    x = torch.randn(1, 2, 4, 6)
    with pytest.raises(ValueError, match='exactly one of size and factor'):
        Resize()
    with pytest.raises(ValueError, match='exactly one of size and factor'):
        Resize(8, factor=2)
    assert Resize(factor=1)(x) is x and Resize((4, 6))(x) is x
    torch.testing.assert_close(Resize(factor=2)(x), torch.nn.functional.interpolate(x, scale_factor=2,
                                                                                      mode='bicubic'))
    torch.testing.assert_close(Resize(8)(x), torch.nn.functional.interpolate(x, (8, 8), mode='bicubic'))
    assert Resize(factor=2)(x, size=(9, 11)).shape[-2:] == (9, 11)
    half = Resize(8)(x.half())
    assert half.dtype == torch.float32  # computed in fp32, as the reference
    assert 'factor=2' in repr(Resize(factor=2)) and 'size=(8, 8)' in repr(Resize(8))
    assert layers.stage_number('stage4') == 4
    with pytest.raises(ValueError, match='stageK'):
        layers.stage_number('res4')
