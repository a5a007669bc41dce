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

BACKBONES = {
    'm0': lambda **kw: EfficientViTM('m0', **kw),
    'b0': lambda **kw: EfficientViTB('b0', **kw),
    'l0': lambda **kw: EfficientViTL('l0', **kw),
    'xl0': lambda **kw: EfficientViTL('xl0', **kw),
}


@pytest.mark.parametrize('name', sorted(BACKBONES))
def test_stage_numbering_and_feature_info_describe_the_outputs(name):
    """Stage 0 is the stem; by default every other stage is returned; feature_info's widths and strides are what
    forward really returns, for every stage."""
    build = BACKBONES[name]
    model = build()
    n = model.num_stages
    assert isinstance(model, EfficientViTBackbone) and len(model.feature_info) == n
    assert model.out_indices == tuple(range(1, n))
    assert [f['stage'] for f in model.feature_info] == list(range(n))
    everything = build(out_indices=tuple(range(n))).eval()
    x = torch.randn(1, 3, 128, 128)
    with torch.no_grad():
        outs = everything(x)
    assert [o.shape[1] for o in outs] == [f['num_chs'] for f in model.feature_info]
    assert [128 // o.shape[-1] for o in outs] == [f['reduction'] for f in model.feature_info] == list(model.strides)
    for info in model.feature_info:  # 'module' names the module that computes the stage
        assert isinstance(model.get_submodule(info['module']), nn.Module)
    picked = build(out_indices=(-1, 1))
    assert picked.out_indices == (1, n - 1)  # stage order, negative counts from the end
    assert picked.out_channels == tuple(model.feature_info[i]['num_chs'] for i in (1, n - 1))
    assert picked.out_strides == tuple(model.feature_info[i]['reduction'] for i in (1, n - 1))
    for bad in [(n,), (), (1, 1), (-n - 1,)]:
        with pytest.raises(ValueError):
            build(out_indices=bad)


@pytest.mark.parametrize('name', sorted(BACKBONES))
@pytest.mark.parametrize('frozen', [-1, 0, 1])
def test_frozen_stages_freeze_the_stem_and_the_first_stages(name, frozen):
    model = BACKBONES[name](frozen_stages=frozen)
    model.train()
    for i, info in enumerate(model.feature_info):
        module = model.get_submodule(info['module'])
        assert all(p.requires_grad == (i > frozen) for p in module.parameters()), (name, i)
        assert all(m.training == (i > frozen) for m in module.modules()), (name, i)
    with pytest.raises(ValueError, match='frozen_stages'):
        BACKBONES[name](frozen_stages=model.num_stages)


@pytest.mark.parametrize('name', sorted(BACKBONES))
def test_norm_eval_keeps_every_batchnorm_in_eval_mode(name):
    model = BACKBONES[name](norm_eval=True).train()
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    assert model.training and bns and not any(m.training for m in bns)


@pytest.mark.parametrize('name', sorted(BACKBONES))
def test_fuse_once_in_place_and_no_loading_afterwards(name):
    model = randomize_(BACKBONES[name](), what='batchnorm').eval()
    weights = copy.deepcopy(model.state_dict())
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        want = model(x)
        assert not model.is_fused
        assert model.fuse() is model and model.is_fused
        fused_keys = list(model.state_dict())
        assert model.fuse() is model and list(model.state_dict()) == fused_keys  # a second call changes nothing
        for a, b in zip(model(x), want):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
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
