"""evit_mm's compatibility fixes for the OpenMMLab stack on torch 2.14 (see evit_mm/mm/compat), and the old import
paths of evit_mm.mm's modules."""
import os
import os.path as osp
import pickle

import pytest
import torch
from conftest import CONFIGS, ROOT, TOOLS, run_python
from torch import nn

from evit_mm.mm.compat import apply_all

apply_all()


class CustomMeta:
    """Stands for any pickled class a weights-only load must refuse."""

    def __init__(self, value):
        self.value = value


def _toy_runner(work_dir, max_epochs, **kwargs):
    from mmengine.model import BaseModel
    from mmengine.runner import Runner
    from torch.utils.data import Dataset

    class Model(BaseModel):
        def __init__(self):
            super().__init__()
            self.linear = nn.Linear(2, 1)

        def forward(self, x, y, mode='tensor'):
            out = self.linear(torch.stack(x))
            if mode == 'loss':
                return {'loss': ((out - torch.stack(y)) ** 2).mean()}
            return out

    class Data(Dataset):
        def __len__(self):
            return 8

        def __getitem__(self, i):
            return {'x': torch.tensor([i, 1.0]), 'y': torch.tensor([2.0 * i])}

    return Runner(
        model=Model(), work_dir=str(work_dir),
        train_dataloader=dict(dataset=Data(), sampler=dict(type='DefaultSampler', shuffle=True), batch_size=2,
                              num_workers=0),
        optim_wrapper=dict(optimizer=dict(type='AdamW', lr=0.01)),
        param_scheduler=dict(type='MultiStepLR', milestones=[1], by_epoch=True),
        train_cfg=dict(by_epoch=True, max_epochs=max_epochs),
        default_hooks=dict(checkpoint=dict(type='CheckpointHook', interval=1)),
        randomness=dict(seed=0), **kwargs)


def test_stock_mmengine_cannot_load_its_checkpoints_on_this_torch(tmp_path):
    """The failure evit_mm fixes: without the fix, torch >= 2.6 refuses mmengine's own checkpoint."""
    runner = _toy_runner(tmp_path / 'a', max_epochs=1)
    runner.train()
    code = f"""
from mmengine.runner.checkpoint import load_from_local
try:
    load_from_local({str(tmp_path / 'a' / 'epoch_1.pth')!r}, 'cpu')
except Exception as err:
    print(type(err).__name__, err)
"""
    proc = run_python(code)
    assert 'UnpicklingError' in proc.stdout and 'HistoryBuffer' in proc.stdout, proc.stdout + proc.stderr


def test_runner_checkpoint_resumes(tmp_path):
    from evit_mm.mm.compat import apply_all
    apply_all()
    first = _toy_runner(tmp_path, max_epochs=1)
    first.train()
    ckpt = tmp_path / 'epoch_1.pth'
    assert ckpt.is_file()
    weights_after_1 = {k: v.clone() for k, v in first.model.state_dict().items()}

    resumed = _toy_runner(tmp_path, max_epochs=2, resume=True, load_from=str(ckpt))
    resumed.train()
    assert resumed.epoch == 2 and resumed.iter == 8  # continued from epoch 1 / iter 4, not from scratch
    assert (tmp_path / 'epoch_2.pth').is_file()
    # the message hub (HistoryBuffer objects) and the optimizer state came back
    saved = torch.load(ckpt, weights_only=False)
    assert resumed.optim_wrapper.optimizer.state_dict()['state'].keys() == \
        saved['optimizer']['state'].keys()
    assert 'train/loss' in resumed.message_hub.log_scalars
    # and training went on from the saved weights: they changed, but only through epoch 2's steps
    assert any(not torch.equal(weights_after_1[k], v) for k, v in resumed.model.state_dict().items())


def test_load_from_and_auto_resume(tmp_path):
    from evit_mm.mm.compat import apply_all
    apply_all()
    _toy_runner(tmp_path, max_epochs=1).train()
    auto = _toy_runner(tmp_path, max_epochs=2, resume=True)  # finds work_dir/last_checkpoint
    auto.train()
    assert auto.epoch == 2
    fresh = _toy_runner(tmp_path / 'b', max_epochs=1, load_from=str(tmp_path / 'epoch_2.pth'))
    fresh.load_or_resume()
    assert all(torch.equal(a, b) for a, b in zip(fresh.model.state_dict().values(),
                                                   auto.model.state_dict().values()))


def test_untrusted_globals_are_still_refused(tmp_path, monkeypatch):
    from evit_mm.mm.compat import TRUST_ENV, load_local_checkpoint
    path = tmp_path / 'custom.pth'
    torch.save({'state_dict': {'w': torch.ones(1)}, 'meta': CustomMeta(1)}, path)
    monkeypatch.delenv(TRUST_ENV, raising=False)
    with pytest.raises(pickle.UnpicklingError, match=TRUST_ENV) as info:
        load_local_checkpoint(str(path), 'cpu')
    assert 'CustomMeta' in str(info.value)
    monkeypatch.setenv(TRUST_ENV, str(path))  # trust is given to the listed files (not '1' for all)
    assert load_local_checkpoint(str(path), 'cpu')['meta'].value == 1


def test_restricted_getattr_only_resolves_history_buffer_statistics(tmp_path):
    from mmengine.logging.history_buffer import HistoryBuffer

    from evit_mm.mm.compat.mmengine_checkpoint import _restricted_getattr
    assert _restricted_getattr(HistoryBuffer, 'mean') is HistoryBuffer.mean
    for obj, name in [(HistoryBuffer, '__init__'), (torch, 'load'), (HistoryBuffer, '__class__')]:
        with pytest.raises(pickle.UnpicklingError):
            _restricted_getattr(obj, name)


# ----------------------------------------------------------------------------------------------------------------
# the mm glue moved into evit_mm.mm: the old paths work for one release, with a DeprecationWarning
# ----------------------------------------------------------------------------------------------------------------

#: old path -> new path (the old modules are shims: evit_mm/mm/_moved.py)
MOVED = {'evit_mm.mm_common': 'evit_mm.mm.common', 'evit_mm.mm_backbones': 'evit_mm.mm.backbones',
         'evit_mm.engine': 'evit_mm.mm.hooks', 'evit_mm.runner_loading': 'evit_mm.mm.loading',
         'evit_mm.mm_weights': 'evit_mm.mm.weights', 'evit_mm.compat': 'evit_mm.mm.compat',
         'evit_mm.compat.mmengine_checkpoint': 'evit_mm.mm.compat.mmengine_checkpoint',
         'evit_mm.compat.mmengine_dist': 'evit_mm.mm.compat.mmengine_dist'}


def test_old_import_paths_give_the_same_objects_with_one_deprecation_warning():
    """In a fresh interpreter, importing each old path warns once (a DeprecationWarning naming the new path and
    the removal, pointing at the importing line), and gives the new module itself: the same objects, the hook
    registered once. ``evit_mm.compat`` is one warning for the package and its two modules, whichever is first."""
    code = f"""
import importlib, json, warnings
MOVED = {MOVED!r}
for new in MOVED.values():  # the new modules first: what the old paths bring is then only their own warning
    importlib.import_module(new)
from mmengine.registry import HOOKS
counts, same, where = {{}}, {{}}, {{}}
for old in ['evit_mm.compat.mmengine_checkpoint', 'evit_mm.compat.mmengine_dist', 'evit_mm.compat',
            'evit_mm.mm_common', 'evit_mm.mm_backbones', 'evit_mm.engine', 'evit_mm.runner_loading',
            'evit_mm.mm_weights']:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always')
        module = importlib.import_module(old)
        again = importlib.import_module(old)
    mine = [w for w in caught if 'evit_mm.' in str(w.message)]
    assert all(w.category is DeprecationWarning for w in mine), [str(w.message) for w in mine]
    counts[old] = [str(w.message) for w in mine]
    where[old] = sorted({{w.filename for w in mine}})
    same[old] = module is again is importlib.import_module(MOVED[old])
from evit_mm.engine import AtomicCheckpointHook
from evit_mm.mm_common import load_pretrained_from_cfg, mm_module
from evit_mm.runner_loading import use_checked_loading
from evit_mm.compat import apply_all
from evit_mm.compat.mmengine_checkpoint import _restricted_getattr
import evit_mm.mm.common, evit_mm.mm.compat, evit_mm.mm.hooks, evit_mm.mm.loading
same['objects'] = (AtomicCheckpointHook is evit_mm.mm.hooks.AtomicCheckpointHook is HOOKS.get('CheckpointHook')
                   is HOOKS.get('AtomicCheckpointHook')
                   and mm_module is evit_mm.mm.common.mm_module
                   and load_pretrained_from_cfg is evit_mm.mm.common.load_pretrained_from_cfg
                   and use_checked_loading is evit_mm.mm.loading.use_checked_loading
                   and apply_all is evit_mm.mm.compat.apply_all
                   and _restricted_getattr is evit_mm.mm.compat.mmengine_checkpoint._restricted_getattr)
print(json.dumps(dict(counts=counts, same=same, where=where)))
"""
    proc = run_python(code)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    import json
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert all(result['same'].values()), result['same']
    counts = result['counts']
    # the compat package and its modules: one warning, from the first of them imported
    assert len(counts.pop('evit_mm.compat.mmengine_checkpoint')) == 1
    assert counts.pop('evit_mm.compat.mmengine_dist') == [] and counts.pop('evit_mm.compat') == []
    for old, messages in counts.items():
        assert len(messages) == 1, (old, messages)
        assert messages[0].startswith(f'{old} is deprecated') and MOVED[old] in messages[0] \
            and 'removed in the next release' in messages[0], messages[0]
    assert all(files == ['<string>'] for files in result['where'].values() if files), result['where']  # importer


def test_old_compat_submodule_first_in_a_fresh_interpreter():
    """``import evit_mm.compat.mmengine_checkpoint`` before anything else: one warning, the new module."""
    code = """
import warnings
warnings.simplefilter('always')
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter('always')
    from evit_mm.compat.mmengine_dist import prepare_cpu_distributed
import evit_mm.mm.compat.mmengine_dist as new
mine = [str(w.message) for w in caught if 'evit_mm.' in str(w.message)]
print(len(mine), prepare_cpu_distributed is new.prepare_cpu_distributed, 'evit_mm.mm.compat' in mine[0])
"""
    proc = run_python(code)
    assert proc.stdout.split() == ['1', 'True', 'True'], proc.stdout + proc.stderr


def _old_path_imports(path, package, old=tuple(MOVED)):
    """The module paths among ``old`` that the file at ``path`` (a module of ``package``) imports, relative imports
    resolved, or, in configs/, names as a string (``custom_imports``)."""
    import ast
    found = []
    for node in ast.walk(ast.parse(open(path).read())):
        names = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ''
            if node.level:
                parts = package.split('.')
                parent = '.'.join(parts[:len(parts) - node.level + 1])
                base = f'{parent}.{base}' if base else parent
            names = [base] + [f'{base}.{alias.name}' for alias in node.names]
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and package.startswith('configs'):
            names = [node.value]
        found += [n for n in names if n in old or n.startswith(tuple(f'{o}.' for o in old))]
    return found


def test_nothing_in_the_package_tools_or_configs_uses_an_old_path():
    """evit_mm/, tools/ and configs/ import evit_mm.mm's modules by their new paths (the shims are for users)."""
    import glob
    import os.path as osp
    offenders = {}
    for top in ('evit_mm', 'tools', 'configs'):
        for path in glob.glob(osp.join(ROOT, top, '**', '*.py'), recursive=True):
            rel = osp.relpath(path, ROOT)
            if '.mim' in rel.split(osp.sep):
                continue
            module = rel[:-3].replace(osp.sep, '.')
            package = module[:-len('.__init__')] if module.endswith('.__init__') else module.rpartition('.')[0]
            found = _old_path_imports(path, package)
            if found:
                offenders[rel] = found
    assert not offenders, offenders
    # the check sees relative imports (what the moved modules use) and the configs' strings
    assert _old_path_imports(osp.join(ROOT, 'evit_mm', 'mm', 'compat', '__init__.py'), 'evit_mm.mm.compat',
                             old=('evit_mm.mm.hooks',)) == ['evit_mm.mm.hooks']
    config = osp.join(ROOT, 'configs', 'efficientvit_seg', '_base_', 'efficientvit_seg_160k.py')
    assert _old_path_imports(config, 'configs.efficientvit_seg._base_', old=('evit_mm.mmseg',)) == ['evit_mm.mmseg']


def test_cpu_distributed_config_logs_the_backend_that_runs():
    """A torchrun run without CUDA uses gloo; the config that the Runner logs and dumps says gloo, not the bases'
    nccl."""
    code = """
import os, torch.distributed as dist
os.environ.update(RANK='0', WORLD_SIZE='1', LOCAL_RANK='0', MASTER_ADDR='127.0.0.1', MASTER_PORT='29531')
from mmengine.config import Config
from evit_mm.mm.compat import prepare_cpu_distributed
cfg = Config(dict(launcher='pytorch', env_cfg=dict(cudnn_benchmark=False, dist_cfg=dict(backend='nccl'))))
prepare_cpu_distributed(cfg)
print(dist.get_backend(), cfg.env_cfg.dist_cfg.backend, cfg.env_cfg.cudnn_benchmark)
dist.destroy_process_group()
"""
    proc = run_python(code, env=dict(os.environ, CUDA_VISIBLE_DEVICES=''))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split() == ['gloo', 'gloo', 'False']


@pytest.mark.slow
def test_tools_print_no_pkg_resources_warning():
    """mmengine imports and reloads pkg_resources when it reads a config (setuptools' deprecation warning, twice);
    the tools' config loading (every entry point's) prints none."""
    code = f"""
import importlib.util, sys
sys.path.insert(0, {TOOLS!r})
import _runner_utils
_runner_utils.load_config({osp.join(CONFIGS, 'quickstart', 'retinanet_efficientvit-m0_fpn_coins.py')!r})
print('loaded')
"""
    env = {k: v for k, v in os.environ.items() if k != 'PYTHONWARNINGS'}
    proc = run_python(code, env=env)
    assert proc.returncode == 0 and 'loaded' in proc.stdout, proc.stderr[-2000:]
    assert 'pkg_resources' not in proc.stderr, proc.stderr
