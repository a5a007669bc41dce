"""evit_mm.mm.loading and the compat checkpoint loader: strict tools, scoped trust, weights-only downloads.

tools/test.py and load_from load strictly (an unrelated checkpoint is an error listing the keys, ``--no-strict``
relaxes it) and convert a raw Cream detector checkpoint in memory; EVIT_MM_TRUST_CHECKPOINTS trusts the files it
lists and nothing else, downloads included; NaN weights are refused by the tools and by init_cfg, naming the file."""
import glob
import os
import os.path as osp
import pickle
import re
import types

import pytest
import torch
from conftest import ROOT, load_tool
from torch import nn

DET_CONFIG = osp.join(ROOT, 'configs', 'quickstart', 'retinanet_efficientvit-m0_fpn_coins.py')


class CustomMeta:
    """Stands for any pickled class a weights-only load must refuse."""

    def __init__(self, value):
        self.value = value


def test_test_tool_refuses_an_unrelated_checkpoint(seg_setup, tmp_path):
    """An EfficientViT-M4 file given to a B0 segmentation config: before, mmengine loaded it non-strictly, evaluated
    random weights and exited 0; now the error names the file and lists the keys; --no-strict relaxes it."""
    from evit_mm.models import CheckpointMismatchError, EfficientViTM
    test_tool = load_tool('test')
    unrelated = str(tmp_path / 'm4.pth')
    torch.save({'state_dict': EfficientViTM('m4').state_dict()}, unrelated)
    work = str(tmp_path / 'work')
    with pytest.raises(CheckpointMismatchError) as err:
        test_tool.main([seg_setup['config'], unrelated, '--work-dir', work])
    msg = str(err.value)
    assert unrelated in msg
    assert 'missing in the checkpoint' in msg and 'backbone.input_stem.op_list.0.conv.weight' in msg
    assert 'unexpected in the checkpoint' in msg and 'patch_embed.0.conv.weight' in msg
    assert err.value.missing and err.value.unexpected
    metrics = test_tool.main([seg_setup['config'], unrelated, '--work-dir', work, '--no-strict'])
    assert 'mIoU' in metrics


def test_test_tool_loads_a_matching_checkpoint_strictly(seg_setup, tmp_path):
    """The strict path loads every weight (compared with the model that wrote the checkpoint)."""
    from evit_mm.mm.loading import use_checked_loading
    runner_utils = load_tool('_runner_utils')
    build_runner, load_config = runner_utils.build_runner, runner_utils.load_config
    cfg = load_config(seg_setup['config'])
    cfg.work_dir = str(tmp_path / 'work')
    cfg.load_from = seg_setup['checkpoint']
    runner = build_runner(cfg)
    use_checked_loading(runner)
    runner.load_or_resume()
    expected = seg_setup['model'].state_dict()
    got = runner.model.state_dict()
    assert set(got) == set(expected)
    assert all(torch.equal(got[k], expected[k]) for k in expected)


def test_test_tool_refuses_a_checkpoint_missing_a_weight(seg_setup, tmp_path):
    test_tool = load_tool('test')
    sd = torch.load(seg_setup['checkpoint'], weights_only=True)['state_dict']
    del sd['decode_head.output_ops.0.op_list.0.conv.weight']
    sd['decode_head.extra.weight'] = torch.zeros(1)
    path = str(tmp_path / 'broken.pth')
    torch.save({'state_dict': sd}, path)
    with pytest.raises(RuntimeError, match=r'decode_head\.output_ops\.0\.op_list\.0\.conv\.weight') as err:
        test_tool.main([seg_setup['config'], path, '--work-dir', str(tmp_path / 'w')])
    assert 'decode_head.extra.weight' in str(err.value) and path in str(err.value)


def _toy_runner(model, resume=False):
    """The parts of a Runner that load_checkpoint_checked uses."""
    from mmengine.logging import MMLogger
    return types.SimpleNamespace(model=model, call_hook=lambda *a, **k: None, _resume=resume, _has_loaded=False,
                                 logger=MMLogger.get_current_instance())


def test_load_from_loads_strictly_and_resume_is_unchanged(tmp_path):
    """train.py's load_from goes through the same strict loader; resume keeps mmengine's own loading."""
    from evit_mm.mm.loading import use_checked_loading
    calls = []
    runner = _toy_runner(nn.Linear(2, 2))
    runner.load_checkpoint = lambda filename, map_location='cpu', **kw: calls.append((filename, kw)) or {}
    use_checked_loading(runner)
    path = str(tmp_path / 'other.pth')
    torch.save({'state_dict': {'weight': torch.ones(3, 3)}}, path)
    from evit_mm.models import CheckpointMismatchError
    with pytest.raises(CheckpointMismatchError, match='bias'):
        runner.load_checkpoint(path)
    assert not calls
    runner._resume = True
    runner.load_checkpoint(path, map_location='cpu')
    assert calls == [(path, {})]
    train_tool = load_tool('train')
    assert train_tool.parse_args(['config.py']).strict and not train_tool.parse_args(['c.py', '--no-strict']).strict


def _evit_to_cream(key: str) -> str:
    """evit_mm EfficientViTM key -> Cream's detection backbone key (the inverse of the converter's renaming)."""
    parts = key.split('.')
    if len(parts) >= 2 and parts[-2] == 'conv':
        parts[-2] = 'c'
    key = '.'.join(parts)
    if key.startswith('patch_embed.'):
        return key
    m = re.match(r'^stages\.(\d+)\.blocks\.(\d+)\.(.+)$', key)
    if m:
        stage, j, rest = int(m.group(1)), int(m.group(2)), m.group(3)
        j += 3 if stage else 0
        m2 = re.match(r'^(dw0|dw1|ffn0|ffn1)\.(.+)$', rest)
        if m2:
            rest = f'{m2.group(1)}.m.{m2.group(2)}'
        elif rest.startswith('attn.proj.'):
            rest = 'mixer.m.attn.proj.1.' + rest[len('attn.proj.'):]
        else:
            rest = 'mixer.m.' + rest
        return f'blocks{stage + 1}.{j}.{rest}'
    m = re.match(r'^stages\.(\d+)\.downsample\.(\w+)\.(.+)$', key)
    stage, part, rest = int(m.group(1)), m.group(2), m.group(3)
    if part == 'merge':
        return f'blocks{stage + 1}.1.{rest}'
    j, k = {'dw_pre': (0, 0), 'ffn_pre': (0, 1), 'dw_post': (2, 0), 'ffn_post': (2, 1)}[part]
    return f'blocks{stage + 1}.{j}.{k}.m.{rest}'


@pytest.fixture(scope='module')
def retinanet_m0():
    from mmdet.registry import MODELS
    from mmengine.config import Config
    from mmengine.registry import init_default_scope

    import evit_mm.mmdet  # noqa: F401
    cfg = Config.fromfile(DET_CONFIG)
    cfg.model.backbone.init_cfg = None
    init_default_scope('mmdet')

    def build(seed):
        torch.manual_seed(seed)
        return MODELS.build(cfg.model)
    return build


def test_raw_cream_detector_checkpoint_is_converted(retinanet_m0, tmp_path):
    """A Cream detector file (mmdet 2.x, backbone in Cream's layout) given to test.py / load_from."""
    from evit_mm.mm.loading import load_checkpoint_checked
    from evit_mm.models.convert_msra import convert_msra_state_dict
    source = retinanet_m0(0)
    sd = source.state_dict()
    cream = {(f'backbone.{_evit_to_cream(k[9:])}' if k.startswith('backbone.') else k): v for k, v in sd.items()}
    # the renaming above is the converter's inverse: it is recognised as Cream's and converts back exactly
    back, report = convert_msra_state_dict({k: v for k, v in cream.items() if k.startswith('backbone.')},
                                           return_report=True)
    assert report.format == 'cream-det' and set(back) == {k[9:] for k in sd if k.startswith('backbone.')}
    path = str(tmp_path / 'retinanet_efficientvit_m0_cream.pth')
    torch.save({'state_dict': cream, 'meta': {'mmdet_version': '2.28.2'}}, path)
    target = retinanet_m0(1)
    assert not torch.equal(target.state_dict()['backbone.patch_embed.0.conv.weight'],
                           sd['backbone.patch_embed.0.conv.weight'])
    load_checkpoint_checked(_toy_runner(target), path)
    got = target.state_dict()
    assert all(torch.equal(got[k], sd[k]) for k in sd)
    # a model whose backbone is not an EfficientViTM: refused, with the converter command
    other = nn.Module()
    other.backbone = nn.Linear(2, 2)
    with pytest.raises(SystemExit, match=re.escape(f'python tools/convert_efficientvit_msra.py {path} ')):
        load_checkpoint_checked(_toy_runner(other), path)


def test_nonfinite_weights_refused_by_the_tools(tmp_path):
    from evit_mm.mm.loading import load_checkpoint_checked
    from evit_mm.models.checkpoint import NonFiniteWeightsError
    model = nn.Linear(2, 2)
    sd = model.state_dict()
    sd['weight'] = torch.tensor([[1.0, float('nan')], [0.0, 1.0]])
    path = str(tmp_path / 'nan.pth')
    torch.save({'state_dict': sd}, path)
    with pytest.raises(NonFiniteWeightsError, match=re.escape(path)) as err:
        load_checkpoint_checked(_toy_runner(model), path)
    assert err.value.keys == ['weight'] and 'NaN' in str(err.value)
    load_checkpoint_checked(_toy_runner(model), path, allow_nonfinite=True)
    assert torch.isnan(model.weight).any()


def _toy_mmengine_model():
    from mmengine.model import BaseModel

    class Toy(BaseModel):
        def __init__(self):
            super().__init__()
            self.linear = nn.Linear(2, 2)
            self.norm = nn.BatchNorm1d(2)

        def forward(self, inputs, data_samples=None, mode='tensor'):
            return self.norm(self.linear(inputs))
    return Toy()


def test_use_checked_loading_from_the_package_on_a_runner(tmp_path):
    """One's own script: a plain mmengine Runner, made strict with ``evit_mm.mm.loading`` (no tools/)."""
    from mmengine.runner import Runner

    from evit_mm.mm.loading import use_checked_loading
    from evit_mm.models import CheckpointMismatchError

    def runner_loading(checkpoint, name, **kwargs):
        path = str(tmp_path / name)
        torch.save(checkpoint, path)
        runner = Runner(model=_toy_mmengine_model(), work_dir=str(tmp_path / 'work'), load_from=path)
        use_checked_loading(runner, **kwargs)
        runner.load_or_resume()
        return runner, path

    source = _toy_mmengine_model()
    for p in source.parameters():
        nn.init.normal_(p)
    # DataParallel's module. prefix is removed; every tensor is loaded (BN counters included)
    wrapped = {f'module.{k}': v for k, v in source.state_dict().items()}
    runner, _ = runner_loading({'state_dict': wrapped, 'meta': {}}, 'wrapped.pth')
    got = runner.model.state_dict()
    assert set(got) == set(source.state_dict())
    assert all(torch.equal(got[k], v) for k, v in source.state_dict().items())
    # another model's checkpoint is refused, naming the file and the keys; strict=False loads what matches
    other = dict(source.state_dict(), **{'head.weight': torch.ones(1)})
    del other['norm.weight']
    with pytest.raises(CheckpointMismatchError, match='norm.weight') as err:
        runner_loading({'state_dict': other}, 'other.pth')
    assert 'head.weight' in str(err.value) and str(tmp_path / 'other.pth') in str(err.value)
    assert err.value.missing == ['norm.weight'] and err.value.unexpected == ['head.weight']
    runner, _ = runner_loading({'state_dict': other}, 'other.pth', strict=False)
    assert torch.equal(runner.model.state_dict()['linear.weight'], source.linear.weight.detach())


def test_model_state_dict_strips_module_and_keeps_the_bn_metadata():
    from evit_mm.mm.loading import model_state_dict
    found = torch.nn.DataParallel(nn.Sequential(nn.BatchNorm1d(2))).state_dict()
    state_dict = model_state_dict({'state_dict': found}, 'dp.pth')
    assert list(state_dict) == [k[len('module.'):] for k in found]
    assert state_dict._metadata['0'] == found._metadata['module.0']
    assert model_state_dict({'model': {'w': torch.ones(1)}}, 'plain.pth')._metadata == {}
    # two keys that become one, or no checkpoint dict at all: a message naming the file
    with pytest.raises(SystemExit, match=r'clash\.pth.*module\.w'):
        model_state_dict({'state_dict': {'module.w': torch.ones(1), 'w': torch.zeros(1)}}, 'clash.pth')
    with pytest.raises(SystemExit, match=r'list\.pth holds a list'):
        model_state_dict([], 'list.pth')


def test_runner_loading_needs_no_downstream_library_and_models_do_not_import_it():
    """evit_mm.mm.loading imports mmengine and evit_mm.models only; evit_mm.models stays free of it."""
    import ast
    tree = ast.parse(open(osp.join(ROOT, 'evit_mm', 'mm', 'loading.py')).read())
    imported = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    imported |= {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module}
    roots = {name.split('.')[0] for name in imported}
    assert roots <= {'__future__', 'os', 'collections', 'mmengine', 'evit_mm'}, roots
    assert {name for name in imported if name.startswith('evit_mm')} <= {
        'evit_mm.models', 'evit_mm.models.checkpoint', 'evit_mm.models.convert_msra',
        'evit_mm.models.efficientvit_msra'}
    for path in glob.glob(osp.join(ROOT, 'evit_mm', 'models', '**', '*.py'), recursive=True):
        source = open(path).read()
        assert 'runner_loading' not in source and not re.search(r'evit_mm\.mm\b|from \.\.mm\b', source), path


def test_trust_is_scoped_to_the_listed_files(tmp_path, monkeypatch):
    from evit_mm.mm.compat import TRUST_ENV, load_local_checkpoint
    listed, other = tmp_path / 'listed.pth', tmp_path / 'other.pth'
    for path in (listed, other):
        torch.save({'state_dict': {'w': torch.ones(1)}, 'meta': CustomMeta(1)}, path)
    monkeypatch.setenv(TRUST_ENV, os.pathsep.join([str(tmp_path / 'missing.pth'), str(listed)]))
    assert load_local_checkpoint(str(listed), 'cpu')['meta'].value == 1
    with pytest.raises(pickle.UnpicklingError, match='CustomMeta') as err:
        load_local_checkpoint(str(other), 'cpu')
    assert str(other) in str(err.value) and TRUST_ENV in str(err.value)
    # a relative spelling of a listed file is the same file
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv(TRUST_ENV, 'listed.pth')
    assert load_local_checkpoint(str(listed), 'cpu')['meta'].value == 1
    # '1' no longer trusts everything, and says what to do instead
    monkeypatch.setenv(TRUST_ENV, '1')
    with pytest.raises(pickle.UnpicklingError, match='no longer trusts every file') as err:
        load_local_checkpoint(str(other), 'cpu')
    assert f'{TRUST_ENV}={osp.realpath(other)}' in str(err.value)


def test_downloaded_pretrained_file_is_loaded_weights_only(tmp_path, monkeypatch):
    """mmengine downloads http(s):// checkpoints with torch.hub.load_state_dict_from_url(weights_only=False);
    evit_mm's loader downloads into torch.hub's folder and loads the file weights-only."""
    from mmengine.runner.checkpoint import CheckpointLoader

    from evit_mm.mm.compat import TRUST_ENV, apply_all
    apply_all()
    served = tmp_path / 'served.pth'
    torch.save({'state_dict': {'w': torch.ones(1)}, 'meta': CustomMeta(2)}, served)
    monkeypatch.setenv('TORCH_HOME', str(tmp_path / 'torch_home'))
    downloads = []

    def fake_download(url, dst, *args, **kwargs):
        downloads.append(url)
        with open(served, 'rb') as src, open(dst, 'wb') as out:
            out.write(src.read())

    monkeypatch.setattr(torch.hub, 'download_url_to_file', fake_download)
    monkeypatch.delenv(TRUST_ENV, raising=False)
    url = 'https://example.com/models/evil.pth'
    with pytest.raises(pickle.UnpicklingError, match='CustomMeta'):
        CheckpointLoader.load_checkpoint(url, map_location='cpu')
    cached = osp.join(str(tmp_path / 'torch_home'), 'hub', 'checkpoints', 'evil.pth')
    assert downloads == [url] and osp.isfile(cached)
    monkeypatch.setenv(TRUST_ENV, cached)  # trusting the downloaded file by its path
    assert CheckpointLoader.load_checkpoint(url, map_location='cpu')['meta'].value == 2
    assert downloads == [url]  # cached: not downloaded again


def test_empty_history_buffer_checkpoint_loads_weights_only(tmp_path, monkeypatch):
    """An empty HistoryBuffer pickles builtins.bytes; mmengine's load_checkpoint of such a file failed."""
    from mmengine.logging import HistoryBuffer, MessageHub
    from mmengine.runner.checkpoint import load_checkpoint

    from evit_mm.mm.compat import TRUST_ENV, apply_all
    apply_all()
    monkeypatch.delenv(TRUST_ENV, raising=False)
    hub = MessageHub.get_instance('test_empty_history_buffer')
    hub.update_scalar('train/loss', 0.5)
    model = nn.Linear(2, 2)
    path = str(tmp_path / 'hub.pth')
    torch.save({'state_dict': model.state_dict(), 'message_hub': hub.state_dict(),
                'buffers': {'empty': HistoryBuffer()}}, path)
    assert 'builtins.bytes' in torch.serialization.get_unsafe_globals_in_checkpoint(path)
    target = nn.Linear(2, 2)
    checkpoint = load_checkpoint(target, path, map_location='cpu', strict=True)
    assert isinstance(checkpoint['buffers']['empty'], HistoryBuffer)
    assert torch.equal(target.weight, model.weight)


def test_nonfinite_pretrained_init_cfg_names_the_file(tmp_path):
    from mmdet.registry import MODELS
    from mmengine.registry import init_default_scope

    import evit_mm.mmdet  # noqa: F401
    from evit_mm.models import EfficientViTM
    from evit_mm.models.checkpoint import NonFiniteWeightsError
    sd = EfficientViTM('m0').state_dict()
    sd['patch_embed.2.bn.running_var'] = torch.full_like(sd['patch_embed.2.bn.running_var'], float('inf'))
    path = str(tmp_path / 'inf_backbone.pth')
    torch.save(sd, path)
    init_default_scope('mmdet')
    backbone = MODELS.build(dict(type='EfficientViTM', arch='m0', init_cfg=dict(type='Pretrained', checkpoint=path)))
    with pytest.raises(NonFiniteWeightsError, match=re.escape(path)) as err:
        backbone.init_weights()
    assert err.value.keys == ['patch_embed.2.bn.running_var']
