"""The model contract (evit_mm.models.contract): every backbone numbers, selects, freezes, fuses and loads the same
way, and every model loads checkpoints through one load_pretrained that returns one LoadReport."""
from __future__ import annotations

import copy
import inspect
from collections import OrderedDict

import pytest
import torch
from conftest import randomize_
from torch import nn

from evit_mm.models import (CheckpointMismatchError, EfficientViTB, EfficientViTL, EfficientViTM, EfficientViTSeg,
                            EfficientViTSegHead)
from evit_mm.models.checkpoint import LoadReport, strip_prefix
from evit_mm.models.classifier import EfficientViTMClassifier
from evit_mm.models.contract import EfficientViTBackbone, Fusable, LoadsPretrained
from evit_mm.models.registry import create_model, model_entries


def _registry_backbones() -> list[str]:
    """The smallest (first declared) variant of every registry family whose models are backbones: built on the
    meta device, so finding them costs nothing. Only evit_mm's own models (``efficientvit_*``): the detectors and
    Meta's SAM are not backbones."""
    first = {}
    for name, entry in model_entries().items():
        if name.startswith('efficientvit_'):
            first.setdefault(entry.family, name)
    names = []
    for name in first.values():
        with torch.device('meta'):
            if isinstance(create_model(name), EfficientViTBackbone):
                names.append(name)
    return names


BACKBONES = _registry_backbones()
#: fuse() is also checked on M4: its heads' query kernels differ (7/5/3/3), M0's are all 5
FUSABLE = [*BACKBONES, 'efficientvit_m4']
BN = nn.modules.batchnorm._BatchNorm


def _image(batch=1, h=64, w=128):
    """Tiny inputs: every stage (down to stride 64) gets at least one pixel, and h != w catches swapped sizes."""
    return torch.randn(batch, 3, h, w, generator=torch.Generator().manual_seed(batch))


def _on_meta(name, **kwargs):
    with torch.device('meta'):
        return create_model(name, **kwargs)


def test_every_backbone_class_is_checked():
    assert {type(_on_meta(name)) for name in BACKBONES} == {EfficientViTM, EfficientViTB, EfficientViTL}
    assert [name for name in BACKBONES if 'xl' in name], 'the six-stage XL backbones are checked too'


@pytest.mark.parametrize('name', BACKBONES)
def test_stage_numbering_and_feature_info_describe_the_outputs(name):
    """Stage 0 is the stem; by default every other stage is returned; feature_info's widths and strides are what
    forward really returns, for every stage; out_indices picks stages (in stage order, negative from the end) and
    forward runs no stage past the last one picked."""
    default = _on_meta(name)
    n = default.num_stages
    assert isinstance(default, EfficientViTBackbone) and len(default.feature_info) == n
    assert default.out_indices == tuple(range(1, n))
    assert [f['stage'] for f in default.feature_info] == list(range(n))
    everything = create_model(name, out_indices=tuple(range(n))).eval()
    assert everything.feature_info == default.feature_info
    x = _image()
    with torch.no_grad():
        outs = everything(x)
        by_stage = everything.forward_dict(x)
    assert [o.shape[1] for o in outs] == [f['num_chs'] for f in default.feature_info]
    assert [(64 // o.shape[-2], 128 // o.shape[-1]) for o in outs] == [(s, s) for s in default.strides]
    assert list(default.strides) == [f['reduction'] for f in default.feature_info]
    for i, (info, out) in enumerate(zip(everything.feature_info, outs)):
        assert torch.equal(by_stage[f'stage{i}'], out), i  # forward_dict: the reference's stage0 .. stageN
        assert isinstance(everything.get_submodule(info['module']), nn.Module)  # the module computing the stage
    assert torch.equal(by_stage['stage_final'], outs[-1]) and torch.equal(by_stage['input'], x)

    picked = create_model(name, out_indices=(-2, 1)).eval()
    assert picked.out_indices == (1, n - 2)
    assert picked.out_channels == tuple(default.feature_info[i]['num_chs'] for i in (1, n - 2))
    assert picked.out_strides == tuple(default.feature_info[i]['reduction'] for i in (1, n - 2))
    picked.load_state_dict(everything.state_dict())
    last = picked.get_submodule(picked.feature_info[-1]['module'])
    last.forward = lambda *a: pytest.fail('a stage after the last one picked ran')
    with torch.no_grad():
        got = picked(x)
    assert len(got) == 2 and torch.equal(got[0], outs[1]) and torch.equal(got[1], outs[n - 2])
    for bad in [(n,), (), (1, 1), (-n - 1,)]:
        with pytest.raises(ValueError, match='out_indices'):
            _on_meta(name, out_indices=bad)
    for bad in (n, -2):
        with pytest.raises(ValueError, match='frozen_stages'):
            _on_meta(name, frozen_stages=bad)


@pytest.mark.parametrize('name', BACKBONES)
@pytest.mark.parametrize('frozen', [-1, 1, 'all'])
def test_frozen_stages_freeze_the_stem_and_the_first_stages(name, frozen):
    """frozen_stages=k: the stem and stages 1..k take no gradient and keep their BatchNorm statistics in
    training (eval mode, also after eval() / train()); the other stages train."""
    if frozen == 'all':
        frozen = _on_meta(name).num_stages - 1
    model = randomize_(create_model(name, frozen_stages=frozen), what='batchnorm', bn_weights=True)
    stages = [model.get_submodule(info['module']) for info in model.feature_info]
    model.eval().train()
    assert model.training
    for i, stage in enumerate(stages):
        assert all(p.requires_grad == (i > frozen) for p in stage.parameters()), i
        assert all(m.training == (i > frozen) for m in stage.modules()), i
    stats = [copy.deepcopy([(m.running_mean, m.running_var) for m in stage.modules() if isinstance(m, BN)])
             for stage in stages]
    loss = sum(o.sum() for o in model(_image(batch=2)))
    # the gradient reaches every stage that trains (its first parameter stands for it: cheaper than all of them)
    trained = [next(stage.parameters()) for stage in stages[frozen + 1:]]
    assert loss.requires_grad == bool(trained)
    if trained:
        grads = torch.autograd.grad(loss, trained)
        assert all(g.abs().sum() > 0 for g in grads)
    for i, (stage, before) in enumerate(zip(stages, stats)):
        bns = [m for m in stage.modules() if isinstance(m, BN)]
        same = [torch.equal(m.running_mean, a) and torch.equal(m.running_var, b) for m, (a, b) in zip(bns, before)]
        assert all(same) if i <= frozen else not all(same), i


@pytest.mark.parametrize('name', BACKBONES)
def test_norm_eval_keeps_every_batchnorm_in_eval_mode(name):
    """norm_eval: in training every BatchNorm stays in eval mode (statistics unchanged by a forward, also after
    eval() / train()) while the rest trains; without it the BatchNorms train."""
    model = create_model(name, norm_eval=True).train()
    bns = [m for m in model.modules() if isinstance(m, BN)]
    assert bns and not any(m.training for m in bns)
    assert model.training and all(m.training for m in model.modules() if not isinstance(m, BN))
    assert all(p.requires_grad for p in model.parameters())  # only the norms' mode changes
    stats = copy.deepcopy([(m.running_mean, m.running_var) for m in bns])
    with torch.no_grad():
        model(_image(batch=2))
    assert all(torch.equal(m.running_mean, a) and torch.equal(m.running_var, b) for m, (a, b) in zip(bns, stats))
    model.eval().train()
    assert not any(m.training for m in bns)
    plain = _on_meta(name).train()
    assert all(m.training for m in plain.modules() if isinstance(m, BN))


@pytest.mark.parametrize('name', FUSABLE)
def test_fuse_keeps_the_outputs_once_in_place_and_no_loading_afterwards(name):
    """fuse() folds every BatchNorm away: the same function (in float64 to rounding; in float32 within 1e-5),
    fewer parameters; once, in place; weights cannot be loaded afterwards."""
    model = randomize_(create_model(name), seed=10, what='batchnorm', bn_weights=True, attention_biases=True).eval()
    x = _image(1, 64, 64)
    weights = copy.deepcopy(model.state_dict())
    n_params = sum(p.numel() for p in model.parameters())
    with torch.no_grad():
        want32 = model(x)
        want64 = model.double()(x.double())
        assert not model.is_fused
        assert model.fuse() is model and model.is_fused
        fused_keys = list(model.state_dict())
        assert model.fuse() is model and list(model.state_dict()) == fused_keys  # a second call changes nothing
        got64 = model(x.double())
        scale = max(w.abs().max().item() for w in want64)
        assert scale > 0.5  # non-degenerate outputs
        assert max((g - w).abs().max().item() for g, w in zip(got64, want64)) < 1e-9 * scale
        for got, want in zip(model.float()(x), want32):  # folding changes float32's rounding, no more
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert not any(isinstance(m, BN) for m in model.modules())
    assert sum(p.numel() for p in model.parameters()) < n_params
    with pytest.raises(RuntimeError, match='before fuse'):
        model.load_pretrained(weights)


def _every_loader():
    """(name, model, checkpoint, format, the model's expected state dict or None) for every evit_mm model with a
    load_pretrained."""
    m0, b0 = randomize_(EfficientViTM('m0')), randomize_(EfficientViTB('b0'))
    seg = randomize_(EfficientViTSeg('b0_cityscapes'))
    yield 'EfficientViTM', EfficientViTM('m0'), m0.state_dict(), 'evit_mm', m0.state_dict()
    yield ('EfficientViTB', EfficientViTB('b0'), {f'backbone.{k}': v for k, v in b0.state_dict().items()},
           'official', b0.state_dict())
    yield ('EfficientViTSegHead', EfficientViTSegHead.from_config('b0_cityscapes'),
           {f'head.{k}': v for k, v in seg.head.state_dict().items()}, 'official', seg.head.state_dict())
    yield 'EfficientViTSeg', EfficientViTSeg('b0_cityscapes'), seg.state_dict(), 'official', seg.state_dict()
    timm = pytest.importorskip('timm')
    cls = timm.create_model('efficientvit_m0', num_classes=10)
    yield 'EfficientViTMClassifier', EfficientViTMClassifier('m0', num_classes=10), cls.state_dict(), 'timm', None


def test_every_model_loads_through_the_same_call_and_reports_the_same_way(tmp_path):
    seen = set()
    for name, model, checkpoint, fmt, expected in _every_loader():
        path = tmp_path / f'{name}.pth'
        torch.save({'model': OrderedDict((f'module.{k}', v) for k, v in checkpoint.items())}, path)
        report = model.load_pretrained(str(path))  # a DataParallel file, inside a {'model': ...} wrapper
        assert isinstance(report, LoadReport) and report.format == fmt, name
        assert report.source == str(path) and report.loaded == len(model.state_dict()), name
        assert str(path) in report.summary()
        if expected is not None:
            assert all(torch.equal(v, expected[k]) for k, v in model.state_dict().items()), name
        seen.add(name)
    assert len(seen) == 5


def test_a_mismatch_leaves_the_weights_and_names_the_file(tmp_path):
    model = EfficientViTSegHead.from_config('b1_cityscapes')  # 19 classes
    before = copy.deepcopy(model.state_dict())
    other = EfficientViTSegHead.from_config('b1_ade20k').state_dict()  # 150 classes
    path = tmp_path / 'ade.pth'
    torch.save({f'head.{k}': v for k, v in other.items()}, path)
    with pytest.raises(CheckpointMismatchError, match='shape mismatch') as err:
        model.load_pretrained(str(path))
    assert str(path) in str(err.value)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_one_load_pretrained_signature_everywhere():
    """Every evit_mm class with load_pretrained (core and adapters) has the contract's, and fuse()/is_fused come
    from Fusable."""
    import evit_mm.mmdet  # noqa: F401  (registers the adapters' classes too)
    import evit_mm.mmseg  # noqa: F401
    from evit_mm.mmseg import EfficientViTEncoderDecoder, EfficientViTSegDecodeHead
    from evit_mm.models.efficientvit_msra_fpn import EfficientViTFPN
    from evit_mm.models.sam import EfficientViTSam, EfficientViTSamBackbone, EfficientViTSamImageEncoder
    want = inspect.signature(LoadsPretrained.load_pretrained)
    loaders = [EfficientViTM, EfficientViTB, EfficientViTL, EfficientViTSegHead, EfficientViTSeg,
               EfficientViTMClassifier, EfficientViTSam, EfficientViTSamBackbone, EfficientViTEncoderDecoder,
               EfficientViTSegDecodeHead, evit_mm.mmdet.EfficientViTM, evit_mm.mmseg.EfficientViTB]
    for cls in loaders:
        assert inspect.signature(cls.load_pretrained) == want, cls
    fusables = [EfficientViTM, EfficientViTB, EfficientViTL, EfficientViTSegHead, EfficientViTSeg, EfficientViTFPN,
                EfficientViTMClassifier, EfficientViTSamBackbone, EfficientViTSamImageEncoder,
                EfficientViTSegDecodeHead]
    for cls in fusables:
        assert issubclass(cls, Fusable) and cls.fuse is Fusable.fuse, cls
    assert [f for f in ('deployed', 'fused', 'switch_to_deploy') if any(hasattr(c, f) for c in fusables)] == []


def test_strip_prefix_is_the_one_prefix_stripper():
    sd = OrderedDict([('module.backbone.a', 1), ('module.head.b', 2)])
    sd._metadata = OrderedDict([('module', {'v': 1}), ('module.backbone', {'v': 2}), ('module.head', {'v': 3})])
    stripped = strip_prefix(sd, 'module.')
    assert list(stripped) == ['backbone.a', 'head.b']
    assert stripped._metadata == OrderedDict([('', {'v': 1}), ('backbone', {'v': 2}), ('head', {'v': 3})])
    backbone = strip_prefix(stripped, 'backbone.', select=True)
    assert backbone == {'a': 1} and backbone._metadata == OrderedDict([('', {'v': 2})])
    assert strip_prefix({'a': 1, 'x.b': 2}, 'x.') == {'a': 1, 'b': 2}  # other keys are kept unless select
    assert strip_prefix({'a': 1}, 'x.', select=True) == {}
    with pytest.raises(ValueError, match='collide'):
        strip_prefix({'module.a': 1, 'a': 2}, 'module.')
    assert strip_prefix({'backbone.neck.x': 1, 'neck.x': 2}, 'backbone.', select=True) == {'neck.x': 1}
