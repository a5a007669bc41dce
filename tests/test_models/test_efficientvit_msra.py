"""Tests of the EfficientViT-M backbone, its checkpoint conversion, the converter CLI and the EfficientViTFPN neck.

Oracles: timm's independent ``efficientvit_m0..m5`` (random weights, randomised BN statistics), checkpoints in the
official Cream layouts built here from timm state dicts with the key mapping of the reference notes (checked
against the reference key dumps when they are available), and direct recomputation with functional ops.
"""
from __future__ import annotations

import argparse
import copy
import fractions
import itertools
import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings, strategies as st
from torch import nn

from conftest import key_dump, load_tool, needs_keys, randomize_

from evit_mm.models.checkpoint import CheckpointMismatchError
from evit_mm.models.convert_msra import convert_msra_state_dict, detect_msra_format, infer_msra_arch
from evit_mm.models.efficientvit_msra import (ARCH_SETTINGS, EfficientViTM, efficientvit_m0, efficientvit_m4,
                                              relative_offset_index)
from evit_mm.models.efficientvit_msra_fpn import EfficientViTFPN

try:
    import timm
except ImportError:  # pragma: no cover
    timm = None

needs_timm = pytest.mark.skipif(timm is None, reason='timm is not installed')
ARCHS = sorted(ARCH_SETTINGS)
BN = nn.modules.batchnorm._BatchNorm


# ----------------------------------------------------------------------------------------------------- helpers
def stage_sizes(h: int, w: int) -> list[tuple[int, int]]:
    """Map sizes after the patch embedding (4 stride-2 convs) and the two downsamplings."""
    def down(r):
        return (r - 1) // 2 + 1
    for _ in range(4):
        h, w = down(h), down(w)
    sizes = [(h, w)]
    for _ in range(2):
        h, w = down(h), down(w)
        sizes.append((h, w))
    return sizes


def timm_model(name: str, img_size: int = 224, seed: int = 0, **kwargs) -> nn.Module:
    model = timm.create_model(f'efficientvit_{name}', pretrained=False, img_size=img_size, **kwargs)
    return randomize_(model, seed, attention_biases=True).eval()


def timm_windows(model) -> tuple[int, ...]:
    return tuple(stage.blocks[0].mixer.m.attn.resolution for stage in model.stages)


def max_diff(a, b) -> float:
    return max((x - y).abs().max().item() for x, y in zip(a, b))


def cream_offset_index(res: int) -> torch.Tensor:
    """The reference's numbering: offsets (|dy|, |dx|) numbered in order of first appearance."""
    points = list(itertools.product(range(res), range(res)))
    offsets, idxs = {}, []
    for p1 in points:
        for p2 in points:
            off = (abs(p1[0] - p2[0]), abs(p1[1] - p2[1]))
            idxs.append(offsets.setdefault(off, len(offsets)))
    return torch.tensor(idxs).view(len(points), len(points))


def timm_key_to_cream(key: str) -> str:
    """Inverse of the Cream -> timm mapping of the reference notes (msra.md 2.3, explicit rule)."""
    parts = key.split('.')
    if parts[0] == 'patch_embed':
        parts[1] = str(2 * (int(parts[1][len('conv'):]) - 1))
    elif parts[0] == 'stages':
        stage = int(parts[1])
        if parts[2] == 'blocks':
            j, rest = int(parts[3]) + (3 if stage else 0), parts[4:]
        elif parts[3] == 'patchmerge':
            j, rest = 1, parts[4:]
        else:
            j, rest = {'res1': 0, 'res2': 2}[parts[3]], parts[4:]
        parts = [f'blocks{stage + 1}', str(j), *rest]
    if parts[-2] == 'conv':
        parts[-2] = 'c'
    elif parts[-2] == 'linear':
        parts[-2] = 'l'
    return '.'.join(parts)


def cream_cls_state_dict(timm_sd) -> dict[str, torch.Tensor]:
    """A Cream classification state dict (as in the released efficientvit_m*.pth) from a timm one."""
    out = {}
    for key, value in timm_sd.items():
        new = timm_key_to_cream(key)
        out[new] = value.clone()
        if new.endswith('attention_biases'):
            side = math.isqrt(value.shape[1])
            out[new.replace('attention_biases', 'attention_bias_idxs')] = cream_offset_index(side)
    return out


def cream_det_state_dict(cls_sd, window: int = 7) -> dict[str, torch.Tensor]:
    """What Cream's detection backbone holds after its init_weights() on a classification checkpoint."""
    out = {}
    for key, value in cls_sd.items():
        if key.startswith('head.') or key.endswith('attention_bias_idxs'):
            continue
        if key.endswith('attention_biases') and value.shape[1] != window ** 2:
            side = math.isqrt(value.shape[1])
            value = F.interpolate(value.view(1, -1, side, side), size=(window, window), mode='bicubic')
            value = value.view(-1, window ** 2)
        out[key] = value
        if key.endswith('attention_biases'):
            out[key.replace('attention_biases', 'attention_bias_idxs')] = cream_offset_index(window)
    return out


# ----------------------------------------------------------------------------------------------------- architecture
def test_arch_settings_are_the_reference_ones():
    reference = {  # Cream classification/model/build.py (== timm)
        'm0': ([64, 128, 192], [1, 2, 3], [4, 4, 4], [5, 5, 5, 5]),
        'm1': ([128, 144, 192], [1, 2, 3], [2, 3, 3], [7, 5, 3, 3]),
        'm2': ([128, 192, 224], [1, 2, 3], [4, 3, 2], [7, 5, 3, 3]),
        'm3': ([128, 240, 320], [1, 2, 3], [4, 3, 4], [5, 5, 5, 5]),
        'm4': ([128, 256, 384], [1, 2, 3], [4, 4, 4], [7, 5, 3, 3]),
        'm5': ([192, 288, 384], [1, 3, 4], [3, 3, 4], [7, 5, 3, 3]),
    }
    assert set(ARCH_SETTINGS) == set(reference)
    for name, (dims, depths, heads, kernels) in reference.items():
        s = ARCH_SETTINGS[name]
        assert (list(s['embed_dims']), list(s['depths']), list(s['num_heads']), list(s['kernels'])) == \
            (dims, depths, heads, kernels), name
        assert tuple(s['key_dims']) == (16, 16, 16)


@needs_timm
@pytest.mark.parametrize('name', ARCHS)
def test_parameter_count_equals_timm_without_head(name):
    model = EfficientViTM(name, window_size=(7, 7, 4))
    reference = timm.create_model(f'efficientvit_{name}', pretrained=False)
    expected = sum(p.numel() for k, p in reference.named_parameters() if not k.startswith('head.'))
    assert sum(p.numel() for p in model.parameters()) == expected


def test_detection_backbone_size():
    # msra.md: Cream's M4 detection backbone (7x7 tables everywhere) has 8.419M parameters
    assert round(sum(p.numel() for p in efficientvit_m4().parameters()) / 1e6, 3) == 8.419


@pytest.mark.parametrize('res', [1, 2, 4, 7])
def test_offset_index_numbering_matches_reference(res):
    assert torch.equal(relative_offset_index(res), cream_offset_index(res))


def test_arch_dict_and_factories():
    custom = dict(embed_dims=(32, 48, 64), depths=(1, 1, 1), num_heads=(2, 2, 4), kernels=(3, 5, 3, 3))
    model = EfficientViTM(custom, window_size=(5, 4, 3)).eval()
    outs = model(torch.randn(1, 3, 96, 80))
    assert [o.shape[1] for o in outs] == [32, 48, 64]
    assert efficientvit_m0().arch_settings['kernels'] == (5, 5, 5, 5)
    assert efficientvit_m0(kernels=(7, 5, 3, 3)).arch_settings['kernels'] == (7, 5, 3, 3)
    with pytest.raises(ValueError, match='unknown'):
        EfficientViTM('m9')
    with pytest.raises(ValueError, match='missing keys'):
        EfficientViTM(dict(embed_dims=(32, 48, 64)))
    with pytest.raises(ValueError, match='kernels'):
        EfficientViTM('m4', kernels=(7, 5))


# ----------------------------------------------------------------------------------------------------- timm parity
@needs_timm
@pytest.mark.parametrize('name', ARCHS)
def test_parity_with_timm_imagenet_windows(name):
    """timm at img_size=224 uses windows (7, 7, 4); same weights through the conversion -> same features."""
    reference = timm_model(name, 224, seed=1)
    windows = timm_windows(reference)
    assert windows == (7, 7, 4)
    model = EfficientViTM(name, window_size=windows)
    model.load_pretrained(reference.state_dict())
    model.eval()
    # 224: exact windows; 160x96: padded windows everywhere, maps smaller than a window in the last stage
    for size in [(224, 224), (160, 96)]:
        x = torch.randn(1, 3, *size, generator=torch.Generator().manual_seed(2))
        with torch.no_grad():
            expected = reference.forward_intermediates(x, intermediates_only=True)
            actual = model(x)
        assert [tuple(a.shape[2:]) for a in actual] == stage_sizes(*size)
        assert max(e.abs().max().item() for e in expected) > 1.0  # non-trivial features
        assert max_diff(actual, expected) <= 1e-5


@needs_timm
@pytest.mark.parametrize('name', ARCHS)
def test_parity_with_timm_window_7_everywhere(name):
    """timm at img_size=448 has 7x7 windows in every stage, as Cream's detection backbone and our default."""
    reference = timm_model(name, 448, seed=3)
    assert timm_windows(reference) == (7, 7, 7)
    model = EfficientViTM(name)  # default window 7
    model.load_pretrained(reference.state_dict())
    model.eval()
    # 272x208: maps 17x13, 9x7, 5x4 -> padding in every stage, and a last map smaller than one window (where
    # Cream's detection code crashes); timm pads that map to one window, as we do
    for size in [(272, 208)]:
        x = torch.randn(1, 3, *size, generator=torch.Generator().manual_seed(4))
        with torch.no_grad():
            expected = reference.forward_intermediates(x, intermediates_only=True)
            actual = model(x)
        assert max_diff(actual, expected) <= 1e-5


@needs_timm
def test_parity_with_timm_several_windows_per_stage():
    reference = timm_model('m4', 448, seed=5)
    model = EfficientViTM('m4')
    model.load_pretrained(reference.state_dict())
    model.eval()
    x = torch.randn(1, 3, 480, 464)  # maps 30x29, 15x15, 8x8: 5x5, 3x3 and 2x2 windows, padded
    with torch.no_grad():
        assert max_diff(model(x), reference.forward_intermediates(x, intermediates_only=True)) <= 1e-5


@needs_timm
def test_parity_with_timm_float64():
    reference = timm_model('m2', 448, seed=5).double()
    model = EfficientViTM('m2')
    model.load_pretrained(reference.state_dict())
    model.eval().double()
    x = torch.randn(1, 3, 144, 208, dtype=torch.float64)
    with torch.no_grad():
        assert max_diff(model(x), reference.forward_intermediates(x, intermediates_only=True)) <= 1e-10


# ----------------------------------------------------------------------------------------------------- checkpoints
@needs_timm
@needs_keys
def test_cream_key_mapping_reproduces_reference_dumps():
    """The Cream-layout dicts built by these tests have exactly the keys/shapes of the real Cream M4 models."""
    cls_dump = key_dump('cream_m4_keys.txt')
    det_dump = key_dump('cream_downstream_m4_keys.txt')
    cls_sd = cream_cls_state_dict(timm_model('m4', 224).state_dict())
    assert {k: tuple(v.shape) for k, v in cls_sd.items()} == cls_dump
    det_sd = cream_det_state_dict(cls_sd)
    assert {k: tuple(v.shape) for k, v in det_sd.items()} == det_dump


@needs_timm
def test_cream_classification_checkpoint(tmp_path):
    reference = timm_model('m4', 224, seed=6)
    path = tmp_path / 'efficientvit_m4.pth'
    torch.save({'model': cream_cls_state_dict(reference.state_dict())}, path)

    # 1. default (detection) windows: the 4x4 tables of the last stage are resized to 7x7 as Cream does
    model = EfficientViTM('m4')
    report = model.load_pretrained(str(path))
    assert report.format == 'cream-cls' and not report.unrecognised
    assert sorted(k for k, *_ in report.resized) == [f'stages.2.blocks.{j}.attn.attention_biases' for j in range(3)]
    assert sum(k.endswith('attention_bias_idxs') for k in report.dropped) == 6
    assert sum(k.startswith('head.') for k in report.dropped) == 7
    timm_sd = reference.state_dict()
    for j in range(3):
        table = timm_sd[f'stages.2.blocks.{j}.mixer.m.attn.attention_biases']
        expected = F.interpolate(table.view(1, 4, 4, 4), size=(7, 7), mode='bicubic', align_corners=False)
        loaded = model.stages[2].blocks[j].attn.attention_biases
        assert torch.allclose(loaded, expected.view(4, 49), atol=1e-6)
    torch.testing.assert_close(model.stages[2].blocks[0].attn.qkvs[1].conv.weight,
                               timm_sd['stages.2.blocks.0.mixer.m.attn.qkvs.1.conv.weight'], rtol=0, atol=0)
    # stages 0 and 1 have 7x7 windows in both, so their features are timm's
    model.eval()
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        expected = reference.forward_intermediates(x, intermediates_only=True)
        actual = model(x)
    assert max_diff(actual[:2], expected[:2]) <= 1e-5
    assert (actual[2] - expected[2]).abs().max() > 1e-3  # different last-stage window: not the same model

    # 2. classification windows (7, 7, 4): no resizing, and every stage equals timm
    model = EfficientViTM('m4', window_size=(7, 7, 4))
    assert not model.load_pretrained(str(path)).resized
    model.eval()
    with torch.no_grad():
        assert max_diff(model(x), expected) <= 1e-5


@needs_timm
def test_cream_detection_checkpoint(tmp_path):
    reference = timm_model('m4', 224, seed=7)
    cls_sd = cream_cls_state_dict(reference.state_dict())
    det_sd = cream_det_state_dict(cls_sd)
    detector = {f'backbone.{k}': v for k, v in det_sd.items()}
    detector['neck.lateral_convs.0.conv.weight'] = torch.zeros(256, 128, 1, 1)
    detector['bbox_head.retina_cls.bias'] = torch.zeros(720)
    path = tmp_path / 'retinanet_efficientvit_m4_fpn_1x_coco.pth'
    torch.save({'meta': {'epoch': 12, 'CLASSES': ('person', 'car')}, 'state_dict': detector}, path)

    model = EfficientViTM('m4')
    report = model.load_pretrained(str(path))
    assert report.format == 'cream-det' and report.from_detector and not report.resized
    assert set(report.other) == {'neck.lateral_convs.0.conv.weight', 'bbox_head.retina_cls.bias'}
    from_cls = EfficientViTM('m4')
    from_cls.load_pretrained({'model': cls_sd})
    for (k1, v1), (k2, v2) in zip(model.state_dict().items(), from_cls.state_dict().items()):
        assert k1 == k2 and torch.equal(v1, v2), k1


@needs_timm
def test_m0_detection_kernels_are_not_silently_skipped():
    """Cream's detection code declares M0 with kernels (7, 5, 3, 3): such weights must not load into (5, 5, 5, 5)."""
    reference = timm_model('m0', 224, seed=8, kernels=[7, 5, 3, 3])
    det_sd = cream_det_state_dict(cream_cls_state_dict(reference.state_dict()))
    model = EfficientViTM('m0')
    before = copy.deepcopy(model.state_dict())
    with pytest.raises(CheckpointMismatchError) as info:
        model.load_pretrained(det_sd)
    err = info.value
    assert len(err.shape_mismatch) == 18 and all('.attn.dws.' in k for k, *_ in err.shape_mismatch)
    assert 'kernels=(7, 5, 3, 3)' in str(err)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())  # untouched
    assert infer_msra_arch(det_sd)['name'] == 'm0' and infer_msra_arch(det_sd)['kernels'] == (7, 5, 3, 3)
    EfficientViTM('m0', kernels=(7, 5, 3, 3)).load_pretrained(det_sd)


@needs_timm
def test_timm_safetensors_and_evit_mm_roundtrip(tmp_path):
    from safetensors.torch import save_file
    reference = timm_model('m1', 448, seed=9)
    path = tmp_path / 'model.safetensors'
    save_file(reference.state_dict(), str(path))
    model = EfficientViTM('m1')
    assert model.load_pretrained(str(path)).format == 'timm'
    # an export without the BN step counters still loads (they are restored as 0)
    trimmed = {k: v for k, v in reference.state_dict().items() if not k.endswith('num_batches_tracked')}
    report = EfficientViTM('m1').load_pretrained(trimmed)
    assert len(report.added) == sum(isinstance(m, BN) for m in model.modules())
    again = EfficientViTM('m1')
    assert again.load_pretrained(model.state_dict()).format == 'evit_mm'
    assert all(torch.equal(v, again.state_dict()[k]) for k, v in model.state_dict().items())


def test_mismatch_lists_missing_and_unexpected_keys():
    sd = efficientvit_m0().state_dict()
    removed = 'stages.1.blocks.0.attn.qkvs.2.conv.weight'
    del sd[removed]
    sd['stages.1.blocks.0.attn.not_a_layer.weight'] = torch.zeros(1)
    model = efficientvit_m0()
    with pytest.raises(CheckpointMismatchError) as info:
        model.load_pretrained(sd)
    assert info.value.missing == [removed]
    assert info.value.unexpected == ['stages.1.blocks.0.attn.not_a_layer.weight']
    assert removed in str(info.value) and 'not_a_layer' in str(info.value)
    wrong_arch = r'patch_embed\.0\.conv\.weight: checkpoint \(16, 3, 3, 3\)'
    with pytest.raises(CheckpointMismatchError, match=wrong_arch) as info:
        efficientvit_m0().load_pretrained(EfficientViTM('m1').state_dict())
    assert 'hint' not in str(info.value)  # the kernel hint is only for otherwise matching models


def test_format_detection_and_errors():
    assert detect_msra_format({'patch_embed.0.c.weight': 0, 'head.l.weight': 0}) == 'cream-cls'
    assert detect_msra_format({'backbone.patch_embed.0.c.weight': 0}) == 'cream-det'
    assert detect_msra_format({'patch_embed.conv1.conv.weight': 0}) == 'timm'
    assert detect_msra_format(efficientvit_m0().state_dict()) == 'evit_mm'
    with pytest.raises(ValueError, match='not an EfficientViT-M state dict'):
        detect_msra_format({'conv1.weight': torch.zeros(1)})
    with pytest.raises(ValueError, match='declared'):
        convert_msra_state_dict({'patch_embed.0.c.weight': torch.zeros(1)}, fmt='timm')
    model = efficientvit_m0().fuse()
    with pytest.raises(RuntimeError, match='before fuse'):
        model.load_pretrained(efficientvit_m0().state_dict())


# ----------------------------------------------------------------------------------------------------- shapes
@settings(max_examples=15, deadline=None)
@given(h=st.integers(16, 200), w=st.integers(16, 200), batch=st.integers(1, 2),
       windows=st.sampled_from([7, (7, 7, 4), (5, 3, 2)]))
def test_any_input_size(h, w, batch, windows):
    model = _small_model(windows)
    with torch.no_grad():
        outs = model(torch.randn(batch, 3, h, w))
    assert [tuple(o.shape) for o in outs] == \
        [(batch, c, *hw) for c, hw in zip((64, 128, 192), stage_sizes(h, w))]
    assert all(torch.isfinite(o).all() for o in outs)


_SMALL_MODELS: dict = {}


def _small_model(windows):
    if windows not in _SMALL_MODELS:
        _SMALL_MODELS[windows] = randomize_(efficientvit_m0(window_size=windows), attention_biases=True).eval()
    return _SMALL_MODELS[windows]


@pytest.mark.parametrize('size', [16, 112, 224, 320, 384, 448, 512])
def test_small_last_maps_do_not_crash(size):
    # last map 1x1, 2x2, 4x4, 5x5, 6x6 (Cream's detection code crashes), 7x7 and 8x8
    outs = _small_model(7)(torch.randn(1, 3, size, size))
    assert tuple(outs[-1].shape[2:]) == stage_sizes(size, size)[-1]


# ----------------------------------------------------------------------------------------------------- bias cache
def _with_new_biases(model, seed):
    sd = copy.deepcopy(model.state_dict())
    g = torch.Generator().manual_seed(seed)
    for key in sd:
        if key.endswith('attention_biases'):
            sd[key] = torch.randn(sd[key].shape, generator=g)
    return sd


def test_bias_cache_survives_load_state_dict():
    model = randomize_(efficientvit_m0(), seed=11, attention_biases=True).eval()
    x = torch.randn(1, 3, 128, 96)
    with torch.no_grad():
        before = model(x)  # builds the cache
        new_sd = _with_new_biases(model, seed=12)
        model.load_state_dict(new_sd)
        after = model(x)
        fresh = efficientvit_m0().eval()
        fresh.load_state_dict(new_sd)
        expected = fresh(x)
    assert max_diff(before, expected) > 1e-3  # the new biases matter ...
    assert max_diff(after, expected) == 0  # ... and are used (Cream's cache would be stale)


def test_bias_cache_survives_dtype_and_device_moves():
    model = randomize_(efficientvit_m0(), seed=13, attention_biases=True).eval()
    x = torch.randn(1, 3, 128, 96)
    with torch.no_grad():
        model(x)  # cache built in float32
        expected = copy.deepcopy(model).double()  # converted before any cache exists
        model.double()
        torch.testing.assert_close(model(x.double()), expected(x.double()), rtol=0, atol=0)
        model.to('meta')  # Cream's plain-attribute cache fails here ("not on the expected device")
        outs = model(torch.empty(1, 3, 128, 96, dtype=torch.float64, device='meta'))
    assert all(o.device.type == 'meta' for o in outs)


def test_bias_cache_follows_in_place_updates_and_gradients():
    model = randomize_(efficientvit_m0(), seed=14, attention_biases=True).eval()
    x = torch.randn(1, 3, 96, 96)
    with torch.inference_mode():
        model(x)  # cache built inside inference mode
    attn = model.stages[0].blocks[0].attn
    with torch.no_grad():
        attn.attention_biases.add_(1.0)  # e.g. an optimizer step or an EMA update
        attn.attention_biases[0, 0] = 5.0
        after = model(x)
        fresh = efficientvit_m0().eval()
        fresh.load_state_dict(model.state_dict())
        assert max_diff(after, fresh(x)) == 0
    # a gradient reaches the tables in train and in eval mode
    for mode in (True, False):
        model.train(mode)
        model.zero_grad()
        sum(o.sum() for o in model(x)).backward()
        assert attn.attention_biases.grad is not None and attn.attention_biases.grad.abs().sum() > 0


@pytest.mark.gpu
def test_cuda_after_eval_and_autocast():
    model = randomize_(efficientvit_m0(), seed=16, attention_biases=True).eval()
    x = torch.randn(2, 3, 160, 128)
    tf32 = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = False  # compare at float32 precision
    try:
        with torch.no_grad():
            expected = model(x)  # builds the bias cache on the CPU
            model.cuda()
            actual = model(x.cuda())
            with torch.autocast('cuda', dtype=torch.float16):
                half = model(x.cuda())
    finally:
        torch.backends.cudnn.allow_tf32 = tf32
    for a, e in zip(actual, expected):
        torch.testing.assert_close(a.cpu(), e, rtol=1e-4, atol=1e-4)
    assert all(h.dtype == torch.float16 and torch.isfinite(h).all() for h in half)


def test_no_weight_decay():
    model = efficientvit_m4()
    names = model.no_weight_decay()
    assert len(names) == sum(ARCH_SETTINGS['m4']['depths'])
    assert all('attention_biases' in n for n in names)
    assert names <= dict(model.named_parameters()).keys()
    assert not any('attention_bias_idxs' in k for k in model.state_dict())


# ----------------------------------------------------------------------------------------------------- neck
M4_FEATURES = [(128, 16, 20), (256, 8, 10), (384, 4, 5)]  # a 256x320 image through M4


def _features(batch=1):
    return [torch.randn(batch, *shape) for shape in M4_FEATURES]


def test_neck_retinanet_strides_8_to_128():
    neck = EfficientViTFPN([128, 256, 384], 256, num_outs=5, start_level=0, add_extra_convs='on_input',
                           num_extra_trans_convs=1)
    outs = neck(_features(2))
    # strides 8, 16, 32, 64, 128 of a 256x320 image
    assert [tuple(o.shape) for o in outs] == [(2, 256, 32, 40), (2, 256, 16, 20), (2, 256, 8, 10), (2, 256, 4, 5),
                                              (2, 256, 2, 3)]
    shapes = {k: tuple(v.shape) for k, v in neck.state_dict().items()}
    # Cream's parameter names (ConvModule layout), so its released neck weights load as they are
    assert shapes == {
        **{f'lateral_convs.{i}.conv.weight': (256, c, 1, 1) for i, c in enumerate([128, 256, 384])},
        **{f'lateral_convs.{i}.conv.bias': (256,) for i in range(3)},
        **{f'fpn_convs.{i}.conv.weight': (256, 256, 3, 3) for i in range(3)},
        'fpn_convs.3.conv.weight': (256, 384, 3, 3),  # stride-2 conv on the C5 input
        **{f'fpn_convs.{i}.conv.bias': (256,) for i in range(4)},
        'extra_trans_convs.0.conv.weight': (256, 256, 2, 2), 'extra_trans_convs.0.conv.bias': (256,),
        'extra_fpn_convs.0.conv.weight': (256, 256, 3, 3), 'extra_fpn_convs.0.conv.bias': (256,),
    }


def test_neck_mask_rcnn_strides_4_to_64_and_wiring():
    neck = EfficientViTFPN([128, 256, 384], 256, num_outs=5, num_extra_trans_convs=2)
    feats = _features()
    with torch.no_grad():
        outs = neck(feats)
        assert [tuple(o.shape[2:]) for o in outs] == [(64, 80), (32, 40), (16, 20), (8, 10), (4, 5)]
        # recompute Cream's wiring with functional ops
        lat = [F.conv2d(f, c.conv.weight, c.conv.bias) for f, c in zip(feats, neck.lateral_convs)]
        lat[1] = lat[1] + F.interpolate(lat[2], size=lat[1].shape[2:], mode='nearest')
        lat[0] = lat[0] + F.interpolate(lat[1], size=lat[0].shape[2:], mode='nearest')
        t = neck.extra_trans_convs
        s8 = F.conv_transpose2d(lat[0], t[0].conv.weight, t[0].conv.bias, stride=2)
        s4 = F.conv_transpose2d(s8, t[1].conv.weight, t[1].conv.bias, stride=2)
        e = neck.extra_fpn_convs  # Cream applies extra_fpn_convs[0] to the finest level
        expected = [F.conv2d(s4, e[0].conv.weight, e[0].conv.bias, padding=1),
                    F.conv2d(s8, e[1].conv.weight, e[1].conv.bias, padding=1)]
        expected += [F.conv2d(x, c.conv.weight, c.conv.bias, padding=1) for x, c in zip(lat, neck.fpn_convs)]
    assert max_diff(outs, expected) < 1e-5


def test_neck_options_and_init():
    neck = EfficientViTFPN([128, 256, 384], 64, num_outs=6, num_extra_trans_convs=0)  # Cream: NameError
    outs = neck(_features())
    assert [tuple(o.shape[2:]) for o in outs] == [(16, 20), (8, 10), (4, 5), (2, 3), (1, 2), (1, 1)]
    neck = EfficientViTFPN([128, 256, 384], 32, num_outs=4, start_level=1, num_extra_trans_convs=1,
                           add_extra_convs='on_output', relu_before_extra_convs=True,
                           norm_cfg=dict(type='BN'), act_cfg=dict(type='ReLU'))
    outs = neck(_features())
    assert [tuple(o.shape[2:]) for o in outs] == [(16, 20), (8, 10), (4, 5), (2, 3)]
    assert all((o >= 0).all() for o in outs)
    assert 'lateral_convs.0.bn.weight' in neck.state_dict() and neck.lateral_convs[0].conv.bias is None
    for m in neck.modules():
        if isinstance(m, nn.Conv2d):  # xavier uniform, zero bias
            bound = math.sqrt(6 / (m.weight[0].numel() + m.weight.shape[0] * m.weight[0, 0].numel()))
            assert m.weight.abs().max() <= bound + 1e-6
    with pytest.raises(ValueError):
        EfficientViTFPN([128, 256, 384], 256, num_outs=3, num_extra_trans_convs=1)
    with pytest.raises(ValueError):
        EfficientViTFPN([128, 256, 384], 256, num_outs=5, norm_cfg=dict(type='Weird'))


def test_neck_without_transposed_convs_equals_mmdet_fpn():
    mmdet_necks = pytest.importorskip('mmdet.models.necks')
    kwargs = dict(in_channels=[128, 256, 384], out_channels=64, num_outs=5, start_level=0,
                  add_extra_convs='on_input')
    ours = EfficientViTFPN(**kwargs)
    theirs = mmdet_necks.FPN(**kwargs)
    theirs.load_state_dict(ours.state_dict())  # same names, strict
    feats = _features()
    with torch.no_grad():
        assert max_diff(ours(feats), theirs(feats)) < 1e-6


# ----------------------------------------------------------------------------------------------------- CLI
def _cli():
    return load_tool('convert_efficientvit_msra')


@needs_timm
def test_cli_converts_cream_checkpoints(tmp_path, capsys):
    cli = _cli()
    reference = timm_model('m0', 224, seed=15)
    cls_sd = cream_cls_state_dict(reference.state_dict())
    src = tmp_path / 'efficientvit_m0.pth'
    torch.save({'model': cls_sd}, src)
    dst = tmp_path / 'out' / 'm0.pth'
    assert cli.main([str(src), str(dst)]) == 0
    printed = capsys.readouterr().out
    assert 'cream-cls' in printed and 'arch: m0' in printed
    saved = torch.load(dst, weights_only=True)
    assert saved['meta']['source_format'] == 'cream-cls'
    assert f'({len(saved["state_dict"])} keys)' in printed
    efficientvit_m0().load_pretrained(str(dst))

    # a whole detector: the backbone is converted, the rest is kept; --backbone-only drops the rest
    det = {f'backbone.{k}': v for k, v in cream_det_state_dict(cls_sd).items()}
    det['neck.fpn_convs.0.conv.bias'] = torch.zeros(256)
    src = tmp_path / 'det.pth'
    torch.save({'state_dict': det}, src)
    assert cli.main([str(src), str(tmp_path / 'det_out.pth')]) == 0
    out = torch.load(tmp_path / 'det_out.pth', weights_only=True)['state_dict']
    assert 'neck.fpn_convs.0.conv.bias' in out and 'backbone.stages.0.blocks.0.attn.attention_biases' in out
    assert cli.main([str(src), str(tmp_path / 'bb.pth'), '--backbone-only', '--format', 'cream-det']) == 0
    out = torch.load(tmp_path / 'bb.pth', weights_only=True)['state_dict']
    assert all(k.startswith(('patch_embed.', 'stages.')) for k in out)


@needs_timm
def test_cli_errors(tmp_path, capsys):
    cli = _cli()
    src = tmp_path / 'm4.pth'
    torch.save(timm_model('m4', 224).state_dict(), src)
    assert cli.main([str(src), str(tmp_path / 'x.pth'), '--arch', 'm3']) == 1
    err = capsys.readouterr().err
    assert 'shape mismatch' in err and 'stages.0.blocks.0' in err
    assert cli.main([str(src), str(tmp_path / 'x.pth'), '--format', 'cream-cls']) == 1
    assert 'declared' in capsys.readouterr().err
    junk = tmp_path / 'junk.pth'
    torch.save({'conv.weight': torch.zeros(1)}, junk)
    assert cli.main([str(junk), str(tmp_path / 'x.pth')]) == 1
    assert 'not an EfficientViT-M state dict' in capsys.readouterr().err
    assert cli.main([str(tmp_path / 'missing.pth'), str(tmp_path / 'x.pth')]) == 1
    # arbitrary pickled objects are refused (weights_only) unless --allow-pickle is given
    odd = tmp_path / 'odd.pth'
    torch.save({'model': timm_model('m4', 224).state_dict(), 'extra': fractions.Fraction(1, 3)}, odd)
    assert cli.main([str(odd), str(tmp_path / 'x.pth')]) == 1
    assert '--allow-pickle' in capsys.readouterr().err
    assert not (tmp_path / 'x.pth').exists()
    assert cli.main([str(odd), str(tmp_path / 'x.pth'), '--allow-pickle']) == 0
    # Cream's training checkpoints store their argparse.Namespace: allowed without --allow-pickle
    with_args = tmp_path / 'with_args.pth'
    torch.save({'model': timm_model('m4', 224).state_dict(), 'args': argparse.Namespace(lr=1e-3)}, with_args)
    assert cli.main([str(with_args), str(tmp_path / 'y.pth')]) == 0
    assert efficientvit_m4().load_pretrained(str(with_args)).format == 'timm'
