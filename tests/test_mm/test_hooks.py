"""Checkpoints survive a failed save, ``--resume`` survives a bad ``last_checkpoint``, and a resumed run reproduces
the uninterrupted one (evit_mm.mm.hooks.AtomicCheckpointHook, registered as mmengine's ``CheckpointHook``)."""
import builtins
import glob
import os
import os.path as osp
import random
import shutil
import signal
import subprocess
import sys
import uuid

import numpy as np
import pytest
import torch
from conftest import CONFIGS, ROOT, TOOLS, load_tool, run_python
from torch import nn

import evit_mm.mm.hooks  # noqa: F401  (registers the hook; the adapters import it too)
from evit_mm.mm.compat import apply_all

apply_all()  # mmengine's checkpoint loading on this torch (the adapters apply it)


# ------------------------------------------------------------------------------------------- a toy mmengine run
class NoisyDataset(torch.utils.data.Dataset):
    """Samples drawn from Python's, numpy's and torch's global generators, as data augmentations do."""

    def __len__(self):
        return 8

    def __getitem__(self, index):
        x = torch.tensor([index / 8, random.random(), float(np.random.rand()), float(torch.rand(()))])
        return dict(inputs=x, labels=torch.tensor(float(index % 2)))


def _toy_model():
    from mmengine.model import BaseModel

    class Toy(BaseModel):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 1)

        def forward(self, inputs, labels=None, mode='tensor'):
            out = self.fc(nn.functional.dropout(inputs, 0.5, self.training)).squeeze(-1)  # torch's generator
            if mode == 'loss':
                return dict(loss=((out - labels) ** 2).mean())
            return [dict(pred=o) for o in out] if mode == 'predict' else out

    return Toy()


def _recorder():
    from mmengine.hooks import Hook

    class Recorder(Hook):
        """Records the loss of every iteration; with ``stop_at``, stops training there, like a killed run."""
        priority = 'LOWEST'

        def __init__(self, stop_at=None):
            self.losses, self.stop_at = {}, stop_at

        def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None):
            step = runner.iter + 1  # 1-based, as in the logs
            self.losses[step] = outputs['loss'].detach().item()
            if self.stop_at is not None and step == self.stop_at:
                runner.train_loop.stop_training = True

    return Recorder


def _metric():
    from mmengine.evaluator import BaseMetric

    class Count(BaseMetric):
        def process(self, data_batch, data_samples):
            self.results.append(len(data_samples))

        def compute_metrics(self, results):
            return dict(n=sum(results))

    return Count()


def toy_runner(work_dir, by_epoch=True, length=3, stop_at=None, resume=False, max_keep_ckpts=-1, load_from=None,
               **loader_options):
    """A 4-iteration-per-epoch run (``length`` epochs, or ``4 * length`` iterations) validated every epoch."""
    from mmengine.runner import Runner
    loader = dict(dataset=NoisyDataset(), sampler=dict(type='DefaultSampler' if by_epoch else 'InfiniteSampler',
                                                        shuffle=True),
                  batch_size=2, num_workers=0, collate_fn=dict(type='default_collate'))
    loader.update(loader_options)
    train_cfg = (dict(by_epoch=True, max_epochs=length, val_interval=1) if by_epoch else
                 dict(by_epoch=False, max_iters=4 * length, val_interval=4))
    recorder = _recorder()(stop_at)
    torch.manual_seed(0)  # the model is built before the Runner seeds the generators
    runner = Runner(
        model=_toy_model(), work_dir=str(work_dir), train_dataloader=loader, train_cfg=train_cfg,
        val_dataloader=dict(loader, sampler=dict(type='DefaultSampler', shuffle=False)), val_cfg=dict(),
        val_evaluator=[_metric()], optim_wrapper=dict(optimizer=dict(type='SGD', lr=0.05)),
        default_hooks=dict(checkpoint=dict(type='CheckpointHook', interval=1 if by_epoch else 4, by_epoch=by_epoch,
                                           max_keep_ckpts=max_keep_ckpts)),
        custom_hooks=[recorder], randomness=dict(seed=0), resume=resume, load_from=load_from,
        log_level='WARNING', experiment_name=f'toy_{uuid.uuid4().hex}', default_scope='mmengine')
    return runner, recorder


# ------------------------------------------------------------------------------------------- atomic checkpoints
@pytest.mark.slow
def test_every_adapter_swaps_in_the_hook():
    """``default_hooks.checkpoint=dict(type='CheckpointHook')`` builds the atomic hook in each library's scope
    once its evit_mm adapter is imported (configs do it through custom_imports; mim train too)."""
    code = """
import importlib
from mmengine.registry import DefaultScope
for scope in ('mmdet', 'mmseg', 'mmagic'):
    importlib.import_module('evit_mm.' + scope)
    hooks = importlib.import_module(scope + '.registry').HOOKS
    with DefaultScope.overwrite_default_scope(scope):
        print(scope, type(hooks.build(dict(type='CheckpointHook', interval=1))).__name__)
"""
    proc = run_python(code)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.split() == ['mmdet', 'AtomicCheckpointHook', 'mmseg', 'AtomicCheckpointHook',
                                   'mmagic', 'AtomicCheckpointHook']


def _failing_put(monkeypatch, fail_on):
    """Make mmengine's local file writes of ``fail_on`` write half their bytes, then fail (a kill / full disk)."""
    from mmengine.fileio.backends import LocalBackend
    put = LocalBackend.put

    def half_put(self, obj, filepath):
        if osp.basename(str(filepath)).startswith(fail_on):
            with open(filepath, 'wb') as f:
                f.write(obj[:len(obj) // 2])
            raise OSError(28, 'No space left on device (simulated)')
        return put(self, obj, filepath)

    monkeypatch.setattr(LocalBackend, 'put', half_put)


def test_failed_save_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    from evit_mm.mm.hooks import is_loadable_checkpoint
    work = tmp_path / 'work'
    runner, _ = toy_runner(work, length=2, max_keep_ckpts=1)
    _failing_put(monkeypatch, 'epoch_2')
    with pytest.raises(OSError, match='simulated'):
        runner.train()
    assert is_loadable_checkpoint(str(work / 'epoch_1.pth')), 'the kept checkpoint was deleted before the save'
    assert not (work / 'epoch_2.pth').exists(), 'a half-written checkpoint under the final name'
    assert not glob.glob(str(work / '*.tmp'))
    assert (work / 'last_checkpoint').read_text() == str(work / 'epoch_1.pth')
    monkeypatch.undo()
    resumed, recorder = toy_runner(work, length=2, max_keep_ckpts=1, resume=True)
    resumed.train()
    assert sorted(recorder.losses) == [5, 6, 7, 8]  # epoch 2 only
    assert sorted(p.name for p in work.glob('*.pth')) == ['epoch_2.pth']  # max_keep_ckpts=1 still applies


def test_last_checkpoint_is_written_atomically(tmp_path, monkeypatch):
    runner, _ = toy_runner(tmp_path, length=1)
    real_open = open

    def no_partial_last_checkpoint(path, mode='r', *args, **kwargs):
        assert not (str(path).endswith('last_checkpoint') and 'w' in mode), 'last_checkpoint written in place'
        return real_open(path, mode, *args, **kwargs)

    monkeypatch.setattr(builtins, 'open', no_partial_last_checkpoint)
    runner.train()
    monkeypatch.undo()
    assert (tmp_path / 'last_checkpoint').read_text() == str(tmp_path / 'epoch_1.pth')


# ------------------------------------------------------------------------------------------ --resume fallbacks
@pytest.fixture(scope='module')
def two_epochs(tmp_path_factory):
    """A work dir with epoch_1.pth and epoch_2.pth of the toy run."""
    work = tmp_path_factory.mktemp('two_epochs')
    runner, _ = toy_runner(work, length=2)
    runner.train()
    return work


def _copy_work_dir(src, dst):
    shutil.copytree(src, dst)
    record = dst / 'last_checkpoint'
    record.write_text(record.read_text().replace(str(src), str(dst)))
    return dst


@pytest.mark.parametrize('damage', ['empty', 'missing_target', 'truncated_target', 'no_record'])
def test_resume_falls_back_to_the_newest_complete_checkpoint(tmp_path, two_epochs, damage):
    from evit_mm.mm.hooks import find_resume_checkpoint
    work = _copy_work_dir(two_epochs, tmp_path / 'work')
    record, newest = work / 'last_checkpoint', work / 'epoch_2.pth'
    if damage == 'empty':
        record.write_text('')
        expected = newest
    elif damage == 'missing_target':
        record.write_text(str(work / 'epoch_3.pth'))
        expected = newest
    elif damage == 'truncated_target':  # killed while writing epoch_2.pth in place (stock mmengine)
        data = newest.read_bytes()
        newest.write_bytes(data[:len(data) // 2])
        expected = work / 'epoch_1.pth'
    else:
        record.unlink()
        expected = newest
    assert find_resume_checkpoint(str(work)) == str(expected)
    (work / 'epoch_7.pth.tmp').write_bytes(b'left by a save that was killed')
    runner, recorder = toy_runner(work, length=3, resume=True)
    runner.train()
    assert not glob.glob(str(work / '*.tmp'))
    start = int(expected.name[len('epoch_'):-len('.pth')])
    assert min(recorder.losses) == 4 * start + 1


def test_resume_without_any_checkpoint_starts_from_scratch(tmp_path):
    from evit_mm.mm.hooks import find_resume_checkpoint
    (tmp_path / 'last_checkpoint').write_text('')
    assert find_resume_checkpoint(str(tmp_path)) is None
    runner, recorder = toy_runner(tmp_path, length=1, resume=True)
    runner.train()
    assert min(recorder.losses) == 1


def test_resume_from_a_truncated_file_names_it(tmp_path, two_epochs):
    work = _copy_work_dir(two_epochs, tmp_path / 'work')
    bad = work / 'epoch_2.pth'
    bad.write_bytes(bad.read_bytes()[:1000])
    runner, _ = toy_runner(work, length=3, resume=True, load_from=str(bad))
    with pytest.raises(RuntimeError, match='epoch_2.pth: not a complete checkpoint'):
        runner.train()


def test_train_tool_resume_with_empty_last_checkpoint(tmp_path, two_epochs, monkeypatch):
    """``tools/train.py --resume`` (auto) on a work dir whose last_checkpoint is empty."""
    from evit_mm.mm.hooks import find_resume_checkpoint
    work = _copy_work_dir(two_epochs, tmp_path / 'work')
    (work / 'last_checkpoint').write_text('')
    train_tool = load_tool('train')
    config = tmp_path / 'toy.py'
    config.write_text('default_scope = "mmengine"\n')
    captured = {}

    def capture(cfg):  # the config the Runner would be built from; stop there
        captured['cfg'] = cfg
        raise _Captured

    monkeypatch.setattr(train_tool, 'build_runner', capture)
    with pytest.raises(_Captured):
        train_tool.main([str(config), '--work-dir', str(work), '--resume'])
    cfg = captured['cfg']
    assert cfg.resume and cfg.load_from == find_resume_checkpoint(str(work)) == str(work / 'epoch_2.pth')


class _Captured(Exception):
    pass


# ------------------------------------------------------------------------------------------ reproducible resume
def test_resume_with_persistent_workers_warns(tmp_path, two_epochs):
    """Their random state is out of the checkpoint's reach: the resume says so."""
    work = _copy_work_dir(two_epochs, tmp_path / 'work')
    runner, _ = toy_runner(work, length=3, resume=True, num_workers=1, persistent_workers=True)
    runner.train()
    log = ''.join(open(p).read() for p in glob.glob(str(work / '*' / '*.log')))
    assert 'persistent workers' in log and 'persistent_workers=False' in log


@pytest.mark.parametrize('by_epoch', [True, False], ids=['epoch_based', 'iter_based'])
def test_resumed_toy_run_reproduces_the_uninterrupted_one(tmp_path, by_epoch):
    straight, straight_losses = toy_runner(tmp_path / 'straight', by_epoch=by_epoch, length=3)
    straight.train()
    first, _ = toy_runner(tmp_path / 'resumed', by_epoch=by_epoch, length=3, stop_at=4)
    first.train()
    resumed, resumed_losses = toy_runner(tmp_path / 'resumed', by_epoch=by_epoch, length=3, resume=True)
    resumed.train()
    assert sorted(resumed_losses.losses) == list(range(5, 13))
    assert resumed_losses.losses == {i: straight_losses.losses[i] for i in range(5, 13)}
    final = [torch.load(p / ('epoch_3.pth' if by_epoch else 'iter_12.pth'), weights_only=False)['state_dict']
             for p in (tmp_path / 'straight', tmp_path / 'resumed')]
    assert all(torch.equal(final[0][k], final[1][k]) for k in final[0])


QUICKSTART = osp.join(ROOT, 'configs', 'quickstart', 'retinanet_efficientvit-m0_fpn_coins.py')


def _quickstart_runner(coins, work_dir, stop_at=None, resume=False, **loader):
    """The quick-start config (RandomResize, RandomFlip, cosine schedule, its dataloader workers) on the tiny
    coins-coco at 128 px, 2 iterations per epoch, 2 epochs; ``loader`` overrides train_dataloader settings."""
    from mmengine.config import Config
    from mmengine.runner import Runner

    import evit_mm.mmdet  # noqa: F401
    from evit_mm.sample_data import coco_cfg_options
    cfg = Config.fromfile(QUICKSTART)
    cfg.merge_from_dict(coco_cfg_options(coins))
    cfg.train_dataloader.batch_size = 2
    cfg.train_dataloader.update(loader)
    cfg.train_pipeline[2].scale = (128, 128)
    cfg.train_dataloader.dataset.pipeline = cfg.train_pipeline
    cfg.train_cfg.max_epochs, cfg.train_cfg.val_interval = 2, 3
    cfg.param_scheduler[-1].end = 2
    cfg.default_hooks.checkpoint.interval = 1
    cfg.default_hooks.logger.interval = 1
    cfg.work_dir, cfg.randomness, cfg.resume = str(work_dir), dict(seed=0), resume
    cfg.experiment_name = f'quickstart_{uuid.uuid4().hex}'
    cfg.log_level = 'WARNING'
    runner = Runner.from_cfg(cfg)
    recorder = _recorder()(stop_at)
    runner.register_hook(recorder)
    return runner, recorder


@pytest.mark.slow
def test_resumed_quickstart_reproduces_the_uninterrupted_run(tmp_path, coins_coco):
    """RetinaNet quick start: 2 epochs straight vs 1 epoch, then a resume in a new Runner; epoch 2's losses and
    the final weights are equal bit for bit on the CPU."""
    _assert_resume_reproduces(lambda *a, **kw: _quickstart_runner(coins_coco, *a, **kw), tmp_path, 'epoch_2.pth')


def _assert_resume_reproduces(make_runner, tmp_path, last: str) -> None:
    """4 iterations straight vs 2, then a resume in a new Runner: iterations 3-4 give the same losses, and the
    ``last`` checkpoints the same weights, bit for bit."""
    straight, straight_losses = make_runner(tmp_path / 'straight')
    straight.train()
    first, _ = make_runner(tmp_path / 'resumed', stop_at=2)
    first.train()
    resumed, resumed_losses = make_runner(tmp_path / 'resumed', resume=True)
    resumed.train()
    assert sorted(straight_losses.losses) == [1, 2, 3, 4] and sorted(resumed_losses.losses) == [3, 4]
    assert resumed_losses.losses == {i: straight_losses.losses[i] for i in (3, 4)}
    final = [torch.load(p / last, weights_only=False)['state_dict']
             for p in (tmp_path / 'straight', tmp_path / 'resumed')]
    assert all(torch.equal(final[0][k], final[1][k]) for k in final[0])


SEG_CONFIG = osp.join(ROOT, 'configs', 'efficientvit_seg', 'efficientvit-b0_seg_8xb2-160k_cityscapes-1024x2048.py')


def _segmentation_runner(city, work_dir, stop_at=None, resume=False):
    """EfficientViT-B0 Cityscapes (iteration-based, mmseg's random resize / crop / flip / photometric
    distortion) on a tiny Cityscapes at 64x128 crops: 4 iterations, a checkpoint every 2."""
    from mmengine.config import Config
    from mmengine.runner import Runner

    import evit_mm.mmseg  # noqa: F401
    cfg = Config.fromfile(SEG_CONFIG)
    crop = (64, 128)
    cfg.train_dataloader.update(batch_size=2, num_workers=0, persistent_workers=False)
    cfg.train_dataloader.dataset.update(data_root=osp.join(city['root'], ''), pipeline=[
        dict(type='LoadImageFromFile'), dict(type='LoadAnnotations'),
        dict(type='RandomResize', scale=(256, 64), ratio_range=(0.5, 2.0), keep_ratio=True),
        dict(type='RandomCrop', crop_size=crop, cat_max_ratio=0.75), dict(type='RandomFlip', prob=0.5),
        dict(type='PhotoMetricDistortion'), dict(type='PackSegInputs')])
    cfg.val_dataloader = cfg.val_cfg = cfg.val_evaluator = None
    cfg.test_dataloader = cfg.test_cfg = cfg.test_evaluator = None
    cfg.model.data_preprocessor.size = crop
    cfg.model.backbone.init_cfg = None
    cfg.model.decode_head.dropout_ratio = 0.1  # mmseg's usual head dropout: random numbers drawn by the model too
    cfg.train_cfg = dict(type='IterBasedTrainLoop', max_iters=4)
    cfg.default_hooks.checkpoint.update(interval=2)
    cfg.work_dir, cfg.randomness, cfg.resume = str(work_dir), dict(seed=0), resume
    cfg.experiment_name, cfg.log_level = f'seg_{uuid.uuid4().hex}', 'WARNING'
    runner = Runner.from_cfg(cfg)
    recorder = _recorder()(stop_at)
    runner.register_hook(recorder)
    return runner, recorder


@pytest.mark.slow
def test_resumed_segmentation_run_reproduces_the_uninterrupted_run(tmp_path):
    """mmseg, iteration-based: 4 iterations straight vs 2, then a resume (which reloads and discards 2 batches);
    iterations 3-4 give the same losses and final weights bit for bit on the CPU. (Without the head's dropout,
    stock mmengine reproduces this run too: its re-drawing of the skipped batches replays the data's random
    stream, and nothing else drew random numbers.)"""
    from evit_mm.sample_data import make_cityscapes_sample
    city = make_cityscapes_sample(str(tmp_path / 'cityscapes'), num_train=4, num_val=2, image_size=(64, 128))
    _assert_resume_reproduces(lambda *a, **kw: _segmentation_runner(city, *a, **kw), tmp_path, 'iter_4.pth')


# =========================================================================== 1. every Runner gets the atomic hook
@pytest.mark.slow
def test_every_config_builds_the_atomic_checkpoint_hook():
    """Each evit_mm config, read as mim reads it (``Config.fromfile`` runs its ``custom_imports``), builds
    ``default_hooks.checkpoint`` as the atomic hook in its own scope: the SAM training configs (default scope
    mmengine, ``evit_mm.sam.training``) as well as the mmdet / mmseg / mmagic ones. The configs that import the
    same modules are read in one fresh interpreter per group, so that no group's imports help another's."""
    from mmengine.config import Config
    groups = {}
    for path in sorted(glob.glob(osp.join(CONFIGS, '*', '*.py'))):
        cfg = Config.fromfile(path, import_custom_modules=False)
        imports = tuple((cfg.get('custom_imports') or {}).get('imports', ()))
        groups.setdefault(imports, []).append(path)
    assert len(groups) >= 4, groups.keys()  # mmdet, mmseg, mmagic, SAM training (at least)
    built = {}
    for paths in groups.values():
        code = f"""
import importlib, os.path as osp
from mmengine.config import Config
from mmengine.registry import DefaultScope
for path in {paths!r}:
    cfg = Config.fromfile(path)
    scope = cfg.get('default_scope', 'mmengine')
    hooks = importlib.import_module(scope + '.registry').HOOKS
    hook_cfg = dict((cfg.get('default_hooks') or {{}}).get('checkpoint') or dict(type='CheckpointHook'))
    with DefaultScope.overwrite_default_scope(scope):
        print(osp.basename(path), type(hooks.build(hook_cfg)).__name__)
"""
        proc = run_python(code, timeout=600)
        assert proc.returncode == 0, proc.stderr[-3000:]
        built.update(line.split() for line in proc.stdout.splitlines())
    assert len(built) == len(glob.glob(osp.join(CONFIGS, '*', '*.py'))) > 30
    plain = sorted(name for name, hook in built.items() if hook != 'AtomicCheckpointHook')
    assert not plain, f'configs whose runs get mmengine\'s plain CheckpointHook: {plain}'


#: Runs a tool like ``python tools/X.py ...``, except that mmengine's local file write of the checkpoint whose name
#: starts with $EVIT_KILL_AT writes half of the bytes and then SIGKILLs the process (a kill during the save).
_KILLING_LAUNCHER = r"""
import os, runpy, signal, sys
from mmengine.fileio.backends import LocalBackend
put, target = LocalBackend.put, os.environ['EVIT_KILL_AT']

def put_then_die(self, obj, filepath):
    if os.path.basename(str(filepath)).startswith(target):
        with open(filepath, 'wb') as f:
            f.write(obj[:len(obj) // 2])
            f.flush()
            os.fsync(f.fileno())
        os.kill(os.getpid(), signal.SIGKILL)
    return put(self, obj, filepath)

LocalBackend.put = put_then_die
tool = sys.argv.pop(1)
sys.argv[0] = tool
runpy.run_path(tool, run_name='__main__')
"""


def _train(config, work, options, *extra, kill_at=None):
    env = dict(os.environ, OMP_NUM_THREADS='1', PYTHONWARNINGS='ignore')
    args = [osp.join(TOOLS, 'train.py'), config, '--work-dir', str(work), *extra, '--cfg-options', *options]
    if kill_at:
        env['EVIT_KILL_AT'] = kill_at
        args = ['-c', _KILLING_LAUNCHER] + args
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=900, cwd=ROOT, env=env)


def _weights(path):
    from evit_mm.mm.compat import load_local_checkpoint
    return load_local_checkpoint(str(path), map_location='cpu')


def _kill_and_resume(config, options, tmp_path, steps=4):
    """An uninterrupted run of ``steps`` iterations (a checkpoint every ``steps // 2``) against one killed while
    writing its last checkpoint and resumed with ``--resume``: what the kill left, then the resumed weights."""
    from evit_mm.mm.hooks import RNG_KEY, is_loadable_checkpoint
    half, straight, work = steps // 2, tmp_path / 'straight', tmp_path / 'killed'
    options = options + [f'train_cfg.max_iters={steps}', f'default_hooks.checkpoint.interval={half}']
    proc = _train(config, straight, options)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    proc = _train(config, work, options, kill_at=f'iter_{steps}')
    assert proc.returncode == -signal.SIGKILL, proc.stdout[-3000:] + proc.stderr[-3000:]
    final = work / f'iter_{steps}.pth'
    assert not final.exists(), f'{final.name} was being written in place: killed, it is a truncated file ' \
                               f'({final.stat().st_size} bytes) under the final name'
    assert (work / f'iter_{steps}.pth.tmp').exists()  # what the kill interrupted: the temporary file
    kept = work / f'iter_{half}.pth'
    assert is_loadable_checkpoint(str(kept)) and (work / 'last_checkpoint').read_text() == str(kept)
    assert RNG_KEY in _weights(kept), 'the checkpoint holds no random generator states'

    proc = _train(config, work, options, '--resume')
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    log = proc.stdout + proc.stderr
    assert f'resumed epoch: 0, iter: {half}' in log and f'restored the random generator states saved at iteration ' \
                                                        f'{half}' in log
    assert not glob.glob(str(work / '*.tmp'))
    a, b = _weights(straight / f'iter_{steps}.pth')['state_dict'], _weights(final)['state_dict']
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), 'the resumed run differs'


@pytest.mark.slow
def test_sam_run_killed_while_saving_resumes_where_it_was(tmp_path):
    """EfficientViT-SAM phase 1 through tools/train.py (no --resume on the first run: mmengine's stock hook
    until now), SIGKILLed while writing iter_4.pth, then ``--resume``: iter_2 is resumed, RNG states and all,
    and the final weights equal the uninterrupted run's bit for bit."""
    from evit_mm.sample_data import make_sa1b_sample
    demo = make_sa1b_sample(str(tmp_path / 'sa1b'), num_images=4, image_size=96)
    config = osp.join(CONFIGS, 'efficientvit_sam', 'efficientvit-sam-l0_phase1-distill_sa1b-demo.py')
    _kill_and_resume(config, [f'train_dataloader.dataset.data_root={demo["root"]}'], tmp_path)


@pytest.mark.slow
def test_mmseg_run_killed_while_saving_resumes_where_it_was(tmp_path):
    """EfficientViT-B0 (mmseg, random crops, flips and head dropout) on a tiny Cityscapes, through tools/train.py:
    the same kill during the save of iter_4.pth, the same exact resume."""
    from evit_mm.sample_data import make_cityscapes_sample
    city = make_cityscapes_sample(str(tmp_path / 'cityscapes'), num_train=4, num_val=2, image_size=(64, 128))
    seg = osp.join(CONFIGS, 'efficientvit_seg', 'efficientvit-b0_seg_8xb2-160k_cityscapes-1024x2048.py')
    config = tmp_path / 'tiny_seg.py'
    config.write_text(f"""_base_ = [{seg!r}]
crop_size = (64, 128)
model = dict(data_preprocessor=dict(size=crop_size), backbone=dict(init_cfg=None),
             decode_head=dict(dropout_ratio=0.1))
train_dataloader = dict(batch_size=2, num_workers=0, persistent_workers=False, dataset=dict(
    data_root={osp.join(city['root'], '')!r}, pipeline=[
        dict(type='LoadImageFromFile'), dict(type='LoadAnnotations'),
        dict(type='RandomResize', scale=(256, 64), ratio_range=(0.5, 2.0), keep_ratio=True),
        dict(type='RandomCrop', crop_size=crop_size, cat_max_ratio=0.75), dict(type='RandomFlip', prob=0.5),
        dict(type='PhotoMetricDistortion'), dict(type='PackSegInputs')]))
val_dataloader = val_cfg = val_evaluator = test_dataloader = test_cfg = test_evaluator = None
train_cfg = dict(_delete_=True, type='IterBasedTrainLoop', max_iters=4)
randomness = dict(seed=0)
""")
    _kill_and_resume(str(config), [], tmp_path)


# ================================================================================== 2. NaN resumes, NaN losses
class _Data(torch.utils.data.Dataset):
    """8 samples; ``nan_at`` makes that sample's input NaN (a diverging batch)."""

    def __init__(self, nan_at=None):
        self.nan_at = nan_at

    def __len__(self):
        return 8

    def __getitem__(self, index):
        x = torch.full((4,), index / 8.0)
        if index == self.nan_at:
            x[0] = float('nan')
        return dict(inputs=x, labels=torch.tensor(float(index % 2)))


def _toy_runner(work_dir, epochs=2, nan_at=None, resume=False, load_from=None, checkpoint=None):
    from mmengine.model import BaseModel
    from mmengine.runner import Runner

    class Toy(BaseModel):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 1)

        def forward(self, inputs, labels=None, mode='tensor'):
            out = self.fc(inputs).squeeze(-1)
            return dict(loss=((out - labels) ** 2).mean()) if mode == 'loss' else out

    loader = dict(dataset=_Data(nan_at), sampler=dict(type='DefaultSampler', shuffle=False), batch_size=2,
                  num_workers=0, collate_fn=dict(type='default_collate'))
    return Runner(model=Toy(), work_dir=str(work_dir), train_dataloader=loader,
                  train_cfg=dict(by_epoch=True, max_epochs=epochs), optim_wrapper=dict(optimizer=dict(type='SGD',
                                                                                                  lr=0.01)),
                  default_hooks=dict(checkpoint=dict(type='CheckpointHook', interval=1, **(checkpoint or {}))),
                  randomness=dict(seed=0), resume=resume, load_from=load_from, log_level='WARNING',
                  experiment_name=f'toy_{uuid.uuid4().hex}', default_scope='mmengine')


@pytest.fixture
def nan_checkpoint(tmp_path):
    """A work dir with epoch_1.pth whose weights were then made NaN (a diverged run's save, a damaged file)."""
    _toy_runner(tmp_path, epochs=1).train()
    path = tmp_path / 'epoch_1.pth'
    checkpoint = torch.load(path, weights_only=False)
    checkpoint['state_dict']['fc.weight'][0, 0] = float('nan')
    torch.save(checkpoint, path)
    return path


def test_resume_refuses_nonfinite_weights(nan_checkpoint):
    from evit_mm.models.checkpoint import NonFiniteWeightsError
    for load_from in (None, str(nan_checkpoint)):  # --resume (the work dir's newest) and --resume PATH
        runner = _toy_runner(nan_checkpoint.parent, resume=True, load_from=load_from)
        with pytest.raises(NonFiniteWeightsError, match=str(nan_checkpoint)) as err:
            runner.train()
        assert 'fc.weight' in str(err.value) and '--allow-nonfinite' in str(err.value)
    assert sorted(p.name for p in nan_checkpoint.parent.glob('*.pth')) == ['epoch_1.pth']  # nothing saved


def test_resume_with_allow_nonfinite_then_stops_at_the_nan_loss(nan_checkpoint):
    """The override of load_from works for --resume too (tools/train.py --allow-nonfinite goes through
    use_checked_loading); the NaN weights then give a NaN loss, which stops the run at its first iteration."""
    from evit_mm.mm.hooks import NonFiniteLossError
    from evit_mm.mm.loading import use_checked_loading
    runner = _toy_runner(nan_checkpoint.parent, resume=True)
    use_checked_loading(runner, allow_nonfinite=True)
    with pytest.raises(NonFiniteLossError, match=r'loss is nan at iteration 5 \(epoch 2\)'):
        runner.train()
    assert not (nan_checkpoint.parent / 'epoch_2.pth').exists()


def test_nonfinite_loss_stops_the_run_naming_the_iteration(tmp_path):
    from evit_mm.mm.hooks import NonFiniteLossError
    runner = _toy_runner(tmp_path / 'stop', nan_at=5)  # sample 5: iteration 3 (batches of 2, in order)
    with pytest.raises(NonFiniteLossError, match=r'loss is nan at iteration 3 \(epoch 1\)') as err:
        runner.train()
    assert 'check_finite_loss=False' in str(err.value)
    assert not list((tmp_path / 'stop').glob('*.pth'))
    opted_out = _toy_runner(tmp_path / 'go_on', nan_at=5, checkpoint=dict(check_finite_loss=False))
    opted_out.train()  # mmengine's behaviour, chosen explicitly
    assert (tmp_path / 'go_on' / 'epoch_2.pth').exists()


@pytest.mark.slow
def test_nonfinite_loss_on_one_rank_stops_every_rank():
    """DDP: the loss diverges on rank 1 only (its batch); both ranks raise at that iteration, none waits forever
    in the next all-reduce. Two gloo processes, the hook's check called as the loop calls it."""
    code = """
import os, types, torch, torch.distributed as dist, torch.multiprocessing as mp

def work(rank):
    os.environ.update(MASTER_ADDR='127.0.0.1', MASTER_PORT='29533')
    dist.init_process_group('gloo', rank=rank, world_size=2)
    from evit_mm.mm.hooks import AtomicCheckpointHook, NonFiniteLossError
    from mmengine.logging import MessageHub
    hook = AtomicCheckpointHook(interval=1)
    runner = types.SimpleNamespace(iter=6, epoch=0, train_loop=None,
                                   message_hub=MessageHub.get_instance(f'nan_rank_{rank}'))
    loss = torch.tensor(float('nan') if rank == 1 else 0.5)
    try:
        hook._check_loss(runner, dict(loss=loss))
        print(rank, 'went on', flush=True)
    except NonFiniteLossError as err:
        print(rank, 'stopped:', err, flush=True)
    dist.destroy_process_group()

mp.start_processes(work, nprocs=2, start_method='fork')
"""
    proc = run_python(code, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = sorted(proc.stdout.splitlines())
    assert lines[0].startswith('0 stopped: the training loss is NaN/inf on another rank at iteration 7'), lines
    assert lines[1].startswith('1 stopped: the training loss is nan at iteration 7'), lines
