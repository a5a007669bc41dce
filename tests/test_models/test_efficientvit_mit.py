"""Tests of the EfficientViT (MIT) B/L/XL backbones, LiteMLA, the seg head, checkpoint conversion and the converter.

Oracles: timm's ``efficientvit_mit`` (B0-B3, L1-L3) and the ``efficientsam`` package (the reference EfficientViT
code, incl. L0/XL0/XL1 and LiteMLA). Neither has the seg head; the test assembles one from the reference's building
blocks following the reference SegHead recipe (``shared/reference/mit.md`` section 2) and also checks the key
dumps of real official checkpoints in ``shared/reference/keys``. All models have random weights (no downloads).
"""
from __future__ import annotations

import os

import pytest
import torch
from torch import nn

from conftest import KEYS_DIR, key_dump, load_tool, needs_keys, published_layout, randomize_

from evit_mm.models.checkpoint import CheckpointMismatchError
from evit_mm.models.efficientvit_mit import (
    EfficientViTB, GroupedPointwiseConv, LiteMLA, build_efficientvit_backbone, convert_mit_state_dict,
    detect_mit_format, efficientvit_b0, efficientvit_b1, efficientvit_l0, efficientvit_l1, efficientvit_xl0,
    split_mit_state_dict)
from evit_mm.models.seg_head import SEG_HEAD_CONFIGS, EfficientViTSegHead, seg_head_config

TOL = 1e-5


# ----------------------------------------------------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------------------------------------------------

def build_on_meta_then_randomize(factory, seed=0):
    """Build a (large) oracle without paying for its default init, then fill it with our random weights."""
    with torch.device('meta'):
        model = factory()
    return randomize_(model.to_empty(device='cpu'), seed).eval()


def image(*shape, seed=1):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def assert_close(out, ref, tol=TOL, what=''):
    assert out.shape == ref.shape, f'{what}: shape {tuple(out.shape)} vs {tuple(ref.shape)}'
    assert ref.abs().max() > 0.05, f'{what}: reference output is degenerate'
    diff = (out.float() - ref.float()).abs().max().item()
    assert diff <= tol, f'{what}: max abs diff {diff:.3g} > {tol}'


def shapes(sd):
    return {k: tuple(v.shape) for k, v in sd.items()}


def set_attention_eps(model, eps):
    for m in model.modules():
        if type(m).__name__ == 'LiteMLA':
            m.eps = eps


# ----------------------------------------------------------------------------------------------------------------
# architecture: parameter counts and state-dict keys of real official checkpoints
# ----------------------------------------------------------------------------------------------------------------

# backbone parameter counts measured on the reference code (mit.md section 1)
REF_BACKBONE_PARAMS_M = dict(b0=0.683, b1=4.644, b2=14.977, b3=38.997, l0=27.805, l1=38.037, l2=49.090,
                             l3=193.998, xl0=96.623, xl1=167.267)


@pytest.mark.parametrize('arch', sorted(REF_BACKBONE_PARAMS_M))
def test_backbone_param_counts(arch):
    with torch.device('meta'):
        model = build_efficientvit_backbone(arch)
    n = sum(p.numel() for p in model.parameters())
    assert round(n / 1e6, 3) == pytest.approx(REF_BACKBONE_PARAMS_M[arch], abs=1e-3)
    assert len(model.width_list) == (6 if arch.startswith('xl') else 5)


@needs_keys
@pytest.mark.parametrize('dump,arch,prefix', [
    ('cls_b1.txt', 'b1', 'backbone.'), ('cls_l1.txt', 'l1', 'backbone.'),
    ('seg_b0_cityscapes.txt', 'b0', 'backbone.'), ('seg_b1_cityscapes.txt', 'b1', 'backbone.'),
    ('seg_b2_ade20k.txt', 'b2', 'backbone.'), ('seg_l1_cityscapes.txt', 'l1', 'backbone.'),
    ('seg_l2_ade20k.txt', 'l2', 'backbone.'),
    ('sam_l0.txt', 'l0', 'image_encoder.backbone.'), ('sam_xl1.txt', 'xl1', 'image_encoder.backbone.'),
])
def test_backbone_keys_equal_official_checkpoint_keys(dump, arch, prefix):
    with torch.device('meta'):
        model = build_efficientvit_backbone(arch)
    ref = key_dump(dump, prefix)
    ours = shapes(model.state_dict())
    assert sorted(set(ref) - set(ours)) == [] and sorted(set(ours) - set(ref)) == []
    assert ours == ref


@needs_keys
@pytest.mark.parametrize('dump,config', [
    ('seg_b0_cityscapes.txt', 'b0_cityscapes'), ('seg_b1_cityscapes.txt', 'b1_cityscapes'),
    ('seg_b2_ade20k.txt', 'b2_ade20k'), ('seg_l1_cityscapes.txt', 'l1_cityscapes'),
    ('seg_l2_ade20k.txt', 'l2_ade20k'),
])
def test_seg_head_keys_equal_official_checkpoint_keys(dump, config):
    head = EfficientViTSegHead.from_config(config)
    assert shapes(head.state_dict()) == key_dump(dump, 'head.')


@needs_keys
@pytest.mark.parametrize('dump,config', [('seg_b1_cityscapes.txt', 'b1_cityscapes'),
                                         ('seg_l2_ade20k.txt', 'l2_ade20k')])
def test_official_seg_checkpoint_loads_strictly(dump, config):
    """A state dict with exactly the official seg checkpoint's keys and shapes loads into backbone + head."""
    arch = config.split('_')[0]
    ckpt = published_layout(dump)
    assert detect_mit_format(ckpt) == 'official'
    backbone, head = build_efficientvit_backbone(arch), EfficientViTSegHead.from_config(config)
    report = backbone.load_pretrained({'state_dict': ckpt})
    assert report.format == 'official' and report.part == 'backbone.' and report.loaded == len(backbone.state_dict())
    assert set(report.other) == {k for k in ckpt if k.startswith('head.')}
    assert head.load_pretrained(ckpt).part == 'head.'
    key = f'stages.{4 if arch.startswith("l") else 3}.op_list.1.context_module.main.qkv.conv.weight'
    torch.testing.assert_close(backbone.state_dict()[key], ckpt['backbone.' + key], rtol=0, atol=0)
    key = 'output_ops.0.op_list.0.conv.weight'
    torch.testing.assert_close(head.state_dict()[key], ckpt['head.' + key], rtol=0, atol=0)


# total (backbone + head) parameter counts of the reference seg models (mit.md section 2)
REF_SEG_PARAMS_M = dict(b0_cityscapes=0.707, b1_cityscapes=4.803, b1_ade20k=4.791, b2_cityscapes=15.324,
                        b2_ade20k=15.293, b3_cityscapes=39.603, b3_ade20k=39.546, l1_cityscapes=40.242,
                        l1_ade20k=40.410, l2_cityscapes=52.608, l2_ade20k=51.462)


def test_seg_head_config_table_complete():
    assert set(SEG_HEAD_CONFIGS) == set(REF_SEG_PARAMS_M)
    assert seg_head_config('efficientvit-seg-l2-ade20k')['final_expand'] == 8
    with pytest.raises(ValueError, match='unknown seg head config'):
        seg_head_config('b0_ade20k')  # the reference has no B0 ADE20K model


@pytest.mark.parametrize('config', sorted(REF_SEG_PARAMS_M))
def test_seg_model_params_and_output_shape(config):
    arch = config.split('_')[0]
    with torch.device('meta'):
        backbone = build_efficientvit_backbone(arch)
    head = EfficientViTSegHead.from_config(config).eval()
    n = sum(p.numel() for p in backbone.parameters()) + sum(p.numel() for p in head.parameters())
    assert round(n / 1e6, 3) == pytest.approx(REF_SEG_PARAMS_M[config], abs=1e-3)
    bn_eps = {m.eps for m in head.modules() if isinstance(m, nn.BatchNorm2d)}
    assert bn_eps == {1e-7 if arch.startswith('l') else 1e-5} == {backbone.norm_eps}
    # features as the backbone returns them for a 64x96 image: out_indices (1, 2, 3, 4), strides 4..32
    feats = [image(1, c, 64 // s, 96 // s, seed=i) for i, (c, s) in
             enumerate(zip(backbone.width_list[1:], backbone.strides[1:]))]
    with torch.no_grad():
        out = head(feats)
    assert out.shape == (1, SEG_HEAD_CONFIGS[config]['n_classes'], 8, 12)


# ----------------------------------------------------------------------------------------------------------------
# parity with timm (converted timm state dicts)
# ----------------------------------------------------------------------------------------------------------------

def _timm_parity(arch, sizes):
    timm = pytest.importorskip('timm')
    ref = build_on_meta_then_randomize(lambda: timm.create_model(f'efficientvit_{arch}'), seed=3)
    # timm's LiteMLA uses eps 1e-5 (the reference 1e-15); align the oracle to the reference value
    set_attention_eps(ref, 1e-15)
    timm_sd = ref.state_dict()
    assert detect_mit_format(timm_sd) == 'timm'
    ours = build_efficientvit_backbone(arch)
    assert ours.load_pretrained(timm_sd).format == 'timm'
    ours.eval()
    for size in sizes:
        x = image(2, 3, *size)
        with torch.no_grad():
            want = ref.forward_intermediates(x, intermediates_only=True)
            got = ours(x)
        assert len(got) == len(want) == 4
        for i, (o, r) in enumerate(zip(got, want)):
            assert_close(o, r, what=f'{arch} {size} stage{i + 1}')


# Sizes are chosen so both LiteMLA paths run: e.g. B at 128 px has an 8x8 map at stride 16 (linear path) and 4x4 at
# stride 32 (<= head dim 16/32: quadratic path); L (attention at stride 32 only) at 160x224 has 5x7 = 35 > 32 tokens
# (linear path), at 64x96 2x3 (quadratic path).
@pytest.mark.parametrize('arch,sizes', [
    ('b0', [(128, 128)]), ('b1', [(128, 96)]), ('b2', [(128, 96)]), ('b3', [(128, 96)]),
    ('l1', [(160, 224), (64, 96)]), ('l2', [(64, 96)]),
])
def test_parity_with_timm(arch, sizes):
    _timm_parity(arch, sizes)


@pytest.mark.slow
def test_parity_with_timm_l3():
    _timm_parity('l3', [(160, 224), (64, 64)])


def test_timm_conversion_gives_official_cls_keys():
    """timm B1/L1 (backbone + classifier) convert to exactly the official cls checkpoint's keys and shapes."""
    timm = pytest.importorskip('timm')
    for arch, dump in (('b1', 'cls_b1.txt'), ('l1', 'cls_l1.txt')):
        if not os.path.isdir(KEYS_DIR):
            pytest.skip('reference key dumps not available')
        with torch.device('meta'):
            sd = timm.create_model(f'efficientvit_{arch}').state_dict()
        converted = convert_mit_state_dict(sd)
        assert shapes(converted) == key_dump(dump, '')


# ----------------------------------------------------------------------------------------------------------------
# parity with the reference code (efficientsam package): L0, XL0, XL1 and B1, all stages incl. the stem
# ----------------------------------------------------------------------------------------------------------------

_XL_REF = dict(block_list=['res', 'fmb', 'fmb', 'fmb', 'att@3', 'att@3'], expand_list=[1, 4, 4, 4, 4, 6],
               fewer_norm_list=[False, False, False, False, True, True])


def _reference_backbone(arch):
    bb = pytest.importorskip('efficientsam.models.efficientvit.backbone')
    if arch == 'xl0':
        return lambda: bb.EfficientViTLargeBackbone([32, 64, 128, 256, 512, 1024], [0, 1, 1, 2, 3, 3], **_XL_REF)
    if arch == 'xl1':
        return lambda: bb.EfficientViTLargeBackbone([32, 64, 128, 256, 512, 1024], [1, 2, 2, 4, 6, 6], **_XL_REF)
    return getattr(bb, f'efficientvit_backbone_{arch}')


def _reference_parity(arch, sizes):
    set_norm_eps = pytest.importorskip('efficientsam.models.nn.norm').set_norm_eps
    ref = build_on_meta_then_randomize(_reference_backbone(arch), seed=5)
    ours = build_efficientvit_backbone(arch)
    set_norm_eps(ref, ours.norm_eps)  # what the reference model zoos do after construction
    ours.load_pretrained(ref.state_dict())
    ours.eval()
    for size in sizes:
        x = image(1, 3, *size)
        with torch.no_grad():
            want, got = ref(x), ours.forward_dict(x)
        assert list(got) == list(want)
        for k in want:
            if k != 'input':
                assert_close(got[k], want[k], what=f'{arch} {size} {k}')


# XL at 160x224: the stride-32 map is 5x7 (35 > 32: linear path), the stride-64 map 3x4 (quadratic path)
@pytest.mark.parametrize('arch,sizes', [('b1', [(128, 96)]), ('l0', [(160, 224), (64, 64)]),
                                        ('xl0', [(160, 224)])])
def test_parity_with_reference_backbone(arch, sizes):
    _reference_parity(arch, sizes)


def test_parity_with_reference_backbone_xl1():
    _reference_parity('xl1', [(192, 256), (64, 64)])


# ----------------------------------------------------------------------------------------------------------------
# LiteMLA: paths, eps, precision
# ----------------------------------------------------------------------------------------------------------------

def _mla_pair(channels=64, dim=16, scales=(5,), seed=0):
    ops = pytest.importorskip('efficientsam.models.nn.ops')
    ref = randomize_(ops.LiteMLA(channels, channels, dim=dim, scales=scales), seed).eval()
    ours = LiteMLA(channels, channels, dim=dim, scales=scales).eval()
    ours.load_state_dict(ref.state_dict(), strict=True)
    return ours, ref


@pytest.mark.parametrize('bias', [False, True])
def test_grouped_pointwise_conv_equals_grouped_conv(bias):
    conv = randomize_(GroupedPointwiseConv(48, 24, groups=6, bias=bias))
    assert isinstance(conv, nn.Conv2d) and conv.weight.shape == (24, 8, 1, 1)
    x = image(2, 48, 5, 7)
    want = torch.nn.functional.conv2d(x, conv.weight, conv.bias, groups=6)
    torch.testing.assert_close(conv(x), want, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(conv(x.contiguous(memory_format=torch.channels_last)), want, rtol=1e-6, atol=1e-6)


def test_training_step_matches_reference():
    """Train-mode forward (batch statistics), gradients and running-statistics updates equal the reference's,
    in float64 so that any structural difference stands out: guards the in-place activations and the reorganised
    attention under autograd."""
    reference = pytest.importorskip('efficientsam.models.efficientvit.backbone')
    ref = build_on_meta_then_randomize(reference.efficientvit_backbone_b1, seed=6).double().train()
    ours = efficientvit_b1().double()
    ours.load_pretrained(ref.state_dict())
    ours.train()
    x = image(2, 3, 96, 128).double()
    want, got = ref(x), ours(x)
    weights = [image(*f.shape, seed=10 + i).double() for i, f in enumerate(got)]
    sum((f * w).sum() for f, w in zip(got, weights)).backward()
    sum((want[f'stage{i + 1}'] * w).sum() for i, w in enumerate(weights)).backward()
    for i, f in enumerate(got):
        assert_close(f, want[f'stage{i + 1}'], tol=1e-10, what=f'train stage{i + 1}')
    ref_grads = dict(ref.named_parameters())
    scale = max(p.grad.abs().max().item() for p in ref.parameters())
    for name, p in ours.named_parameters():
        diff = (p.grad - ref_grads[name].grad).abs().max().item()
        assert diff <= 1e-10 * scale, f'{name}: gradient differs by {diff:.3g} (scale {scale:.3g})'
    for k, v in ref.state_dict().items():  # running statistics updated alike
        torch.testing.assert_close(ours.state_dict()[k], v, rtol=1e-10, atol=1e-12, msg=k)


def test_litemla_defaults_match_reference():
    ours, ref = _mla_pair()
    assert ours.eps == ref.eps == 1e-15
    assert ours.heads == 4 and ours.dim == 16


@pytest.mark.parametrize('hw', [(4, 4), (1, 17), (3, 5), (16, 16)])
def test_litemla_fp32_matches_reference(hw):
    """(4, 4) and (3, 5) are quadratic-path sizes (H*W <= dim=16), (1, 17) and (16, 16) linear-path ones."""
    ours, ref = _mla_pair()
    x = image(2, 64, *hw)
    with torch.no_grad():
        assert_close(ours(x), ref(x), what=f'LiteMLA {hw}')


def test_litemla_path_selection_follows_reference(monkeypatch):
    mla = LiteMLA(64, 64, dim=16).eval()
    calls = []
    monkeypatch.setattr(mla, '_linear_attention', lambda qkv: calls.append('linear') or torch.zeros(
        qkv.shape[0], qkv.shape[1] // 3, *qkv.shape[2:]))
    monkeypatch.setattr(mla, '_quadratic_attention', lambda qkv: calls.append('quadratic') or torch.zeros(
        qkv.shape[0], qkv.shape[1] // 3, *qkv.shape[2:]))
    with torch.no_grad():
        for hw in [(4, 4), (2, 8), (1, 16), (1, 17), (5, 4)]:
            mla(image(1, 64, *hw))
    # one call per branch (qkv and its one aggregation scale), both on the path the map size selects
    assert calls == [path for path in ['quadratic', 'quadratic', 'quadratic', 'linear', 'linear'] for _ in range(2)]


def test_litemla_linear_and_quadratic_paths_agree():
    mla = randomize_(LiteMLA(64, 64, dim=16)).double().eval()
    qkv = mla.qkv(image(1, 64, 6, 7).double())
    qkv = torch.cat([qkv] + [op(qkv) for op in mla.aggreg], dim=1)
    lin, quad = mla._linear_attention(qkv), mla._quadratic_attention(qkv)
    torch.testing.assert_close(lin, quad, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize('dtype', [torch.bfloat16, torch.float16])
@pytest.mark.parametrize('hw', [(4, 4), (24, 24)])
def test_litemla_half_precision_matches_reference(dtype, hw):
    ours, ref = _mla_pair()
    ours, ref = ours.to(dtype), ref.to(dtype)
    x = image(1, 64, *hw).to(dtype)
    with torch.no_grad():
        got, want, exact = ours(x), ref(x), ours.float()(x.float())
    assert got.dtype == dtype and torch.isfinite(got).all()
    # same precision policy as the reference: both land equally close to the fp32 result
    tol = 0.05 if dtype == torch.bfloat16 else 5e-3
    torch.testing.assert_close(got.float(), want.float(), rtol=tol, atol=tol)
    assert (got.float() - exact).abs().max() <= 2 * (want.float() - exact).abs().max() + 1e-3


def test_litemla_fp16_upcast_prevents_overflow():
    """Large activations over many tokens overflow fp16 sums; the fp16 path upcasts like the reference."""
    torch.manual_seed(0)
    mla = LiteMLA(32, 32, dim=16, scales=()).eval()
    with torch.no_grad():
        mla.qkv.conv.weight.fill_(0.5)  # every q, k, v channel = 0.5 * sum(x): big and positive
    x = torch.full((1, 32, 64, 64), 8.0)  # q = k = v = 128 over 4096 tokens: sum_j k v ~ 6.7e7 >> fp16 max
    with torch.no_grad():
        got = mla.half()(x.half())
    assert torch.isfinite(got).all()


def test_litemla_autocast_bf16_cpu():
    mla = randomize_(LiteMLA(64, 64, dim=16)).eval()
    x = image(1, 64, 12, 12)
    with torch.no_grad(), torch.autocast('cpu', dtype=torch.bfloat16):
        out = mla(x)
    assert torch.isfinite(out).all()
    with torch.no_grad():
        ref = mla(x)
    torch.testing.assert_close(out.float(), ref, rtol=0.1, atol=0.1)


# ----------------------------------------------------------------------------------------------------------------
# unknown archs, with_cp (out_indices, frozen_stages, norm_eval, fuse: tests/test_models/test_contract.py)
# ----------------------------------------------------------------------------------------------------------------

def test_unknown_arch_is_refused():
    with pytest.raises(ValueError, match='unknown arch'):
        EfficientViTB('b9')


def test_with_cp_gives_same_gradients():
    x = image(2, 3, 32, 64)
    a = randomize_(efficientvit_b0()).train()
    b = randomize_(efficientvit_b0(with_cp=True)).train()
    sum(f.sum() for f in a(x)).backward()
    sum(f.sum() for f in b(x)).backward()
    for (n, pa), (_, pb) in zip(a.named_parameters(), b.named_parameters()):
        torch.testing.assert_close(pa.grad, pb.grad, rtol=1e-4, atol=1e-6, msg=n)


# ----------------------------------------------------------------------------------------------------------------
# fuse / deploy mode of the seg head (the backbones': tests/test_models/test_contract.py)
# ----------------------------------------------------------------------------------------------------------------

def test_seg_head_fuse_keeps_outputs():
    backbone = randomize_(efficientvit_b0()).eval()
    head = randomize_(EfficientViTSegHead.from_config('b0_cityscapes'), seed=2).eval()
    with torch.no_grad():
        feats = backbone(image(1, 3, 64, 128))
        want = head(feats)
        got = head.fuse()(feats)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in head.modules())
    assert_close(got, want)


# ----------------------------------------------------------------------------------------------------------------
# seg head vs a SegHead assembled from the reference's building blocks
# ----------------------------------------------------------------------------------------------------------------

def _reference_seg_head(cfg):
    """The reference SegHead (a DAGBlock), assembled from efficientsam's ops per mit.md section 2."""
    ops = pytest.importorskip('efficientsam.models.nn.ops')
    act = cfg['act']
    inputs = {}
    for fid, cin, stride in zip(cfg['fid_list'], cfg['in_channel_list'], cfg['stride_list']):
        factor = stride // cfg['head_stride']
        conv = ops.ConvLayer(cin, cfg['head_width'], 1, norm='bn2d', act_func=None)
        inputs[fid] = conv if factor == 1 else ops.OpSequential([conv, ops.UpSampleLayer(factor=factor)])
    middle = []
    for _ in range(cfg['head_depth']):
        if cfg['middle_op'] == 'mbconv':
            block = ops.MBConv(cfg['head_width'], cfg['head_width'], expand_ratio=cfg['expand_ratio'], norm='bn2d',
                               act_func=(act, act, None))
        else:
            block = ops.FusedMBConv(cfg['head_width'], cfg['head_width'], expand_ratio=cfg['expand_ratio'],
                                    norm='bn2d', act_func=(act, None))
        middle.append(ops.ResidualBlock(block, ops.IdentityLayer()))
    fe = cfg['final_expand']
    out = ops.OpSequential([
        None if fe is None else ops.ConvLayer(cfg['head_width'], cfg['head_width'] * fe, 1, norm='bn2d',
                                              act_func=act),
        ops.ConvLayer(cfg['head_width'] * (fe or 1), cfg['n_classes'], 1, use_bias=True, dropout=cfg['dropout'],
                      norm=None, act_func=None)])
    head = ops.DAGBlock(inputs, 'add', None, middle=ops.OpSequential(middle), outputs={'segout': out})
    for m in head.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.eps = cfg['norm_eps']
    return head


@pytest.mark.parametrize('config', ['b0_cityscapes', 'b1_ade20k', 'l1_cityscapes', 'l1_ade20k'])
def test_seg_head_parity_with_reference_ops(config):
    cfg = seg_head_config(config)
    ref = randomize_(_reference_seg_head(cfg), seed=4).eval()
    head = EfficientViTSegHead(**cfg).eval()
    head.load_pretrained({f'head.{k}': v for k, v in ref.state_dict().items()})  # strict: same keys
    g = torch.Generator().manual_seed(7)
    h, w = 48, 80
    feats = {f'stage{i}': torch.randn(2, c, h * 8 // s, w * 8 // s, generator=g)
             for i, c, s in zip((4, 3, 2), cfg['in_channel_list'], (32, 16, 8))}
    feats['stage1'] = torch.randn(2, 1, 1, 1)
    with torch.no_grad():
        want = ref(dict(feats))['segout']
        got_dict = head(feats)
        got_tuple = head((feats['stage1'], feats['stage2'], feats['stage3'], feats['stage4']))
    assert want.shape == (2, cfg['n_classes'], h, w)
    assert_close(got_dict, want, what=config)
    torch.testing.assert_close(got_tuple, got_dict, rtol=0, atol=0)


def test_seg_head_input_mapping_and_odd_sizes():
    head = EfficientViTSegHead.from_config('b0_cityscapes', backbone_out_indices=(2, 3, 4)).eval()
    assert head.in_index == (2, 1, 0)
    backbone = efficientvit_b0(out_indices=(2, 3, 4)).eval()
    with torch.no_grad():
        out = head(backbone(image(1, 3, 100, 75)))  # not multiples of 32: the reference would fail to add
    assert out.shape == (1, 19, 13, 10)
    with pytest.raises(ValueError, match='does not provide'):
        EfficientViTSegHead.from_config('b0_cityscapes', backbone_out_indices=(1, 2, 3))
    with pytest.raises(ValueError, match='expected 3'):
        head([torch.zeros(1)] * 4)


def test_seg_head_dropout_and_bf16():
    head = randomize_(EfficientViTSegHead.from_config('b1_ade20k', dropout=0.1))
    cls = head.output_ops[0].op_list[-1]
    assert isinstance(cls.dropout, nn.Dropout2d) and cls.dropout.p == 0.1
    backbone = randomize_(efficientvit_b1())
    x = image(1, 3, 64, 64)
    for m in (head, backbone):
        m.eval().to(torch.bfloat16)
    with torch.no_grad():
        out = head(backbone(x.to(torch.bfloat16)))
    assert out.dtype == torch.bfloat16 and torch.isfinite(out).all()


# ----------------------------------------------------------------------------------------------------------------
# conversion and strict loading
# ----------------------------------------------------------------------------------------------------------------

def test_format_detection_and_conversion():
    b0 = efficientvit_b0()
    bare = b0.state_dict()
    assert detect_mit_format(bare) == 'backbone'
    full = convert_mit_state_dict(bare)
    assert list(full) == [f'backbone.{k}' for k in bare]
    assert detect_mit_format(full) == 'official'
    assert convert_mit_state_dict(full) == full
    ddp = {f'module.{k}': v for k, v in full.items()}
    assert list(convert_mit_state_dict(ddp)) == list(full)
    sam = {f'image_encoder.backbone.{k}': v for k, v in bare.items()}
    sam['image_encoder.norm.weight'] = torch.ones(256)
    sam['mask_decoder.iou_token.weight'] = torch.ones(1, 256)
    assert detect_mit_format(sam) == 'sam'
    backbone_sd, head_sd = split_mit_state_dict(sam)
    assert list(backbone_sd) == list(bare) and head_sd == {}
    with pytest.raises(ValueError, match='not an EfficientViT'):
        detect_mit_format({'conv1.weight': torch.zeros(1)})
    with pytest.raises(ValueError, match='unknown source format'):
        convert_mit_state_dict(bare, 'onnx')


def test_timm_conversion_rejects_unknown_keys():
    timm = pytest.importorskip('timm')
    sd = timm.create_model('efficientvit_b0').state_dict()
    sd['head.extra.weight'] = torch.zeros(3)
    with pytest.raises(ValueError, match='head.extra.weight'):
        convert_mit_state_dict(sd)


def test_mismatch_raises_with_key_diff():
    model = efficientvit_b1()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    sd = dict(efficientvit_b0().state_dict())  # wrong arch: shape mismatches and unexpected keys
    with pytest.raises(CheckpointMismatchError) as err:
        model.load_pretrained(sd)
    assert err.value.shape_mismatch and 'input_stem.op_list.0.conv.weight' in str(err.value)
    assert all(torch.equal(model.state_dict()[k], v) for k, v in before.items())  # untouched

    sd = dict(model.state_dict())
    del sd['stages.3.op_list.1.context_module.main.proj.norm.running_var']
    sd['stages.9.op_list.0.conv.weight'] = torch.zeros(1)
    with pytest.raises(CheckpointMismatchError) as err:
        model.load_pretrained(sd)
    assert err.value.missing == ['stages.3.op_list.1.context_module.main.proj.norm.running_var']
    assert err.value.unexpected == ['stages.9.op_list.0.conv.weight']
    assert 'stages.9.op_list.0.conv.weight' in str(err.value)

    head = EfficientViTSegHead.from_config('b1_cityscapes')
    other = {f'head.{k}': v for k, v in EfficientViTSegHead.from_config('b1_ade20k').state_dict().items()}
    with pytest.raises(CheckpointMismatchError, match='output_ops.0.op_list'):
        head.load_pretrained(other)
    with pytest.raises(ValueError, match='classification checkpoint'):
        head.load_pretrained({'backbone.stages.0.op_list.0.conv.weight': torch.zeros(1),
                              'head.op_list.0.conv.weight': torch.zeros(1)})


def test_load_pretrained_with_prefix_and_file(tmp_path):
    src = randomize_(efficientvit_b0())
    mm = {f'backbone.{k}': v for k, v in src.state_dict().items()}
    mm.update({'decode_head.conv_seg.weight': torch.zeros(1)})
    path = tmp_path / 'mm.pth'
    torch.save({'state_dict': mm, 'meta': {}}, path)
    model = efficientvit_b0()
    report = model.load_pretrained(str(path), prefix='backbone.')
    assert report.source == str(path) and report.format == 'backbone'
    for k, v in src.state_dict().items():
        assert torch.equal(model.state_dict()[k], v)
    with pytest.raises(KeyError, match='no key starts with'):
        efficientvit_b0().load_pretrained(mm, prefix='encoder.')


# ----------------------------------------------------------------------------------------------------------------
# the converter CLI
# ----------------------------------------------------------------------------------------------------------------

def _load_cli():
    return load_tool('convert_efficientvit_mit')


def test_converter_cli_timm_round_trip(tmp_path, capsys):
    timm = pytest.importorskip('timm')
    cli = _load_cli()
    ref = randomize_(timm.create_model('efficientvit_b0'), seed=9).eval()
    set_attention_eps(ref, 1e-15)
    src = tmp_path / 'timm_b0.pth'
    torch.save(ref.state_dict(), src)

    dst = tmp_path / 'out' / 'b0_backbone.pth'
    assert cli.main([str(src), str(dst), '--part', 'backbone', '--arch', 'b0']) == 0
    assert 'timm format' in capsys.readouterr().out
    ckpt = torch.load(dst, weights_only=True)
    assert ckpt['meta']['source_format'] == 'timm' and ckpt['meta']['part'] == 'backbone'
    model = efficientvit_b0()
    model.load_pretrained(str(dst))
    model.eval()
    x = image(1, 3, 128, 128)
    with torch.no_grad():
        for o, r in zip(model(x), ref.forward_intermediates(x, intermediates_only=True)):
            assert_close(o, r)

    # full layout (backbone + cls head, official key names), then again from that file (identity)
    full = tmp_path / 'b0_full.pth'
    assert cli.main([str(src), str(full)]) == 0
    again = tmp_path / 'b0_again.pth'
    assert cli.main([str(full), str(again), '--arch', 'b0']) == 0
    a, b = torch.load(full, weights_only=True)['state_dict'], torch.load(again, weights_only=True)['state_dict']
    assert list(a) == list(b) and all(torch.equal(a[k], b[k]) for k in a)
    assert 'head.op_list.3.linear.weight' in a

    assert cli.main([str(full), str(again)]) == 1  # exists
    assert 'exists' in capsys.readouterr().err


def test_converter_cli_seg_and_errors(tmp_path, capsys):
    cli = _load_cli()
    backbone, head = efficientvit_b0(), EfficientViTSegHead.from_config('b0_cityscapes')
    seg = {**{f'backbone.{k}': v for k, v in backbone.state_dict().items()},
           **{f'head.{k}': v for k, v in head.state_dict().items()}}
    src = tmp_path / 'seg_b0.pt'
    torch.save({'state_dict': seg}, src)
    dst = tmp_path / 'head.pth'
    assert cli.main([str(src), str(dst), '--part', 'head', '--arch', 'b0', '--seg-head', 'b0_cityscapes']) == 0
    EfficientViTSegHead.from_config('b0_cityscapes').load_pretrained(str(dst), prefix='')

    capsys.readouterr()
    assert cli.main([str(src), str(tmp_path / 'x.pth'), '--arch', 'b1']) == 1
    err = capsys.readouterr().err
    assert 'verification failed' in err and 'shape mismatch' in err
    assert cli.main([str(src), str(tmp_path / 'y.pth'), '--seg-head', 'b0_ade20k'.replace('b0', 'b1')]) == 1
    assert 'output_ops' in capsys.readouterr().err
    assert cli.main([str(tmp_path / 'missing.pt'), str(tmp_path / 'z.pth')]) == 1
    assert 'not found' in capsys.readouterr().err
    junk = tmp_path / 'junk.pt'
    torch.save({'fc.weight': torch.zeros(2)}, junk)
    assert cli.main([str(junk), str(tmp_path / 'z.pth')]) == 1
    assert 'not an EfficientViT' in capsys.readouterr().err
    assert not (tmp_path / 'x.pth').exists() and not (tmp_path / 'z.pth').exists()
    with pytest.raises(SystemExit):
        cli.main([str(src), str(dst), '--arch', 'b7'])


# ----------------------------------------------------------------------------------------------------------------
# half precision: no NaN / inf
# ----------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize('factory,size', [
    (efficientvit_l0, (160, 224)),  # stride-32 map 5x7 = 35 tokens > 32: linear path
    (efficientvit_l1, (64, 96)),  # 2x3: quadratic path
    (efficientvit_xl0, (64, 96)),  # XL: attention at strides 32 and 64
])
def test_bf16_forward_is_finite_small(factory, size):
    model = randomize_(factory()).eval()
    x = image(1, 3, *size)
    with torch.no_grad():
        ref = model(x)
        with torch.autocast('cpu', dtype=torch.bfloat16):
            auto = model(x)
        pure = model.to(torch.bfloat16)(x.to(torch.bfloat16))
    for a, p, r in zip(auto, pure, ref):
        assert torch.isfinite(a).all() and torch.isfinite(p).all()
        assert p.dtype == torch.bfloat16
        assert (p.float() - r).abs().max() < 0.1 * r.abs().max() + 0.1


def _cpu_bf16_is_fast() -> bool:
    from evit_mm.sam.predictor import cpu_has_fast_bf16
    return cpu_has_fast_bf16()


# Without oneDNN bf16 (AVX2-only CPUs) torch runs bf16 depthwise convolutions group by group: L1 at 128x128 takes
# 23x its fp32 time, and these full-size forwards take many minutes each. They need an AVX-512 CPU (or a GPU:
# test_half_precision_cuda_full_resolution); the small-size bf16 tests above run everywhere.
needs_fast_cpu_bf16 = pytest.mark.skipif(not _cpu_bf16_is_fast(), reason='this CPU has no oneDNN bf16 '
                                         '(AVX2 only): full-size CPU bf16 forwards take minutes here')


@pytest.mark.slow
@needs_fast_cpu_bf16
def test_bf16_b0_seg_at_cityscapes_resolution():
    backbone = randomize_(efficientvit_b0()).eval()
    head = randomize_(EfficientViTSegHead.from_config('b0_cityscapes'), seed=3).eval()
    with torch.no_grad(), torch.autocast('cpu', dtype=torch.bfloat16):
        out = head(backbone(image(1, 3, 1024, 2048)))
    assert out.shape == (1, 19, 128, 256) and torch.isfinite(out).all()


@pytest.mark.slow
@needs_fast_cpu_bf16
@pytest.mark.parametrize('arch', ['l0', 'l1', 'l2', 'l3'])
def test_bf16_l_at_512(arch):
    model = randomize_(build_efficientvit_backbone(arch)).eval()
    with torch.no_grad(), torch.autocast('cpu', dtype=torch.bfloat16):
        feats = model(image(1, 3, 512, 512))
    assert all(torch.isfinite(f).all() for f in feats)


@pytest.mark.gpu
@pytest.mark.parametrize('dtype', [torch.float16, torch.bfloat16])
def test_half_precision_cuda_full_resolution(dtype):
    backbone = randomize_(efficientvit_b0()).eval().cuda()
    head = randomize_(EfficientViTSegHead.from_config('b0_cityscapes'), seed=3).eval().cuda()
    with torch.no_grad(), torch.autocast('cuda', dtype=dtype):
        out = head(backbone(image(1, 3, 1024, 2048).cuda()))
    assert torch.isfinite(out).all()
    for arch in ('l1', 'l2'):
        model = randomize_(build_efficientvit_backbone(arch)).eval().cuda()
        with torch.no_grad(), torch.autocast('cuda', dtype=dtype):
            assert all(torch.isfinite(f).all() for f in model(image(1, 3, 512, 512).cuda()))

