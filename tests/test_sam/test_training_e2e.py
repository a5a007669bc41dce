"""EfficientViT-SAM training end to end through tools/train.py, each run in its own process as users run it:
phase 1 (online teacher and from the embedding cache) and phase 2 (from the phase-1 checkpoint) on a tiny
SA-1B-format dataset of real photographs; the loss goes down; a run stopped halfway and resumed in a fresh
process reproduces the uninterrupted run exactly."""
import glob
import json
import os
import os.path as osp
import subprocess
import sys

import pytest
import torch

from conftest import ROOT

CONFIGS = osp.join(ROOT, 'configs', 'efficientvit_sam')
PHASE1 = osp.join(CONFIGS, 'efficientvit-sam-l0_phase1-distill_sa1b-demo.py')
PHASE2 = osp.join(CONFIGS, 'efficientvit-sam-l0_phase2-e2e_sa1b-demo.py')
TOOLS = osp.join(ROOT, 'tools')
STEPS = 4

pytestmark = pytest.mark.slow


@pytest.fixture(scope='module')
def demo(tmp_path_factory):
    from evit_mm.sample_data import make_sa1b_sample
    return make_sa1b_sample(str(tmp_path_factory.mktemp('sa1b_demo')), num_images=4, image_size=96,
                            bad_files=True)


def _run(tool, *args):
    env = dict(os.environ, OMP_NUM_THREADS='1', PYTHONWARNINGS='ignore')
    proc = subprocess.run([sys.executable, osp.join(TOOLS, tool), *args], capture_output=True, text=True,
                          timeout=900, cwd=ROOT, env=env)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    return proc.stdout + proc.stderr


def _train(config, work, options, *extra):
    return _run('train.py', config, '--work-dir', work, *extra, '--cfg-options', *options)


def _scalars(work):
    """{iter: record} of every run logged in ``work`` (a resumed run's records replace none: iters differ)."""
    records = {}
    for path in sorted(glob.glob(osp.join(work, '*', 'vis_data', 'scalars.json'))):
        with open(path) as f:
            for line in f:
                rec = json.loads(line)
                assert rec['iter'] not in records, f'iteration {rec["iter"]} logged twice'
                records[rec['iter']] = rec
    return records


def _weights(path):
    from evit_mm.mm.compat import load_local_checkpoint
    return load_local_checkpoint(path, map_location='cpu')['state_dict']


def _check_resume(config, options, work_straight, tmp_path):
    """Stop after STEPS/2 iterations (as a killed run that saved a checkpoint), resume in a fresh process, and
    compare with the uninterrupted run."""
    work = str(tmp_path / 'stopped')
    half = STEPS // 2
    _train(config, work, options + [f'train_cfg.max_iters={half}'])
    assert osp.isfile(osp.join(work, f'iter_{half}.pth')) and not osp.isfile(osp.join(work, f'iter_{STEPS}.pth'))
    log = _train(config, work, options + [f'train_cfg.max_iters={STEPS}'], '--resume')
    assert f'resumed epoch: 0, iter: {half}' in log
    assert 'the sampler skipped the' in log  # SamIterBasedTrainLoop: no batch was loaded again
    straight, resumed = _scalars(work_straight), _scalars(work)
    assert sorted(resumed) == list(range(1, STEPS + 1))
    for it in range(1, STEPS + 1):
        for key in ('loss', 'lr', 'grad_norm'):
            assert resumed[it][key] == straight[it][key], (it, key, resumed[it][key], straight[it][key])
    a, b = _weights(osp.join(work_straight, f'iter_{STEPS}.pth')), _weights(osp.join(work, f'iter_{STEPS}.pth'))
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)


def _phase1_options(demo):
    return [f'train_dataloader.dataset.data_root={demo["root"]}', f'train_cfg.max_iters={STEPS}',
            'default_hooks.checkpoint.interval=2']


@pytest.fixture(scope='module')
def phase1(demo, tmp_path_factory):
    """The uninterrupted phase-1 run (online teacher)."""
    work = str(tmp_path_factory.mktemp('phase1'))
    _train(PHASE1, work, _phase1_options(demo))
    return work


def test_phase1_distills_caches_and_resumes(demo, phase1, tmp_path):
    losses = [_scalars(phase1)[i]['loss_distill'] for i in range(1, STEPS + 1)]
    assert losses[-1] < 0.9 * losses[0], losses

    # the same run from the embedding cache: the same first-step loss (fp32 cache)
    cache = str(tmp_path / 'cache')
    out = _run('sam_cache_teacher_embeddings.py', PHASE1, '--out', cache, '--dtype', 'float32', '--hflip',
               '--shard-size', '3', '--cfg-options', f'train_dataloader.dataset.data_root={demo["root"]}')
    assert '3 shards of 3' in out and 'teacher embeddings: 100%' in out
    cached_work = str(tmp_path / 'cached')
    log = _train(PHASE1, cached_work, _phase1_options(demo)[:1] + [
        'train_cfg.max_iters=1', 'model.teacher=None', f'train_dataloader.dataset.embedding_cache={cache}'])
    assert 'teacher_img' not in log
    first_cached, first_online = _scalars(cached_work)[1], _scalars(phase1)[1]
    assert first_cached['loss_distill'] == pytest.approx(first_online['loss_distill'], rel=1e-6, abs=0)

    _check_resume(PHASE1, _phase1_options(demo), phase1, tmp_path)


def _phase2_options(demo, phase1):
    return [f'train_dataloader.dataset.data_root={demo["root"]}', f'train_cfg.max_iters={STEPS}',
            'default_hooks.checkpoint.interval=2', f'model.init_checkpoint={phase1}/iter_{STEPS}.pth',
            'train_dataloader.dataset.num_masks=4', 'model.loss.num_points=256', 'optim_wrapper.optimizer.lr=0.0003']


def _fixed_batch_loss(checkpoint, demo):
    """Phase-2 loss of the weights in ``checkpoint`` on a fixed batch (the first two images, pass 0)."""
    from mmengine.config import Config
    from mmengine.dataset import pseudo_collate
    from mmengine.registry import DATASETS, MODELS
    from evit_mm.sam.training import load_sam_weights
    cfg = Config.fromfile(PHASE2)
    dataset = DATASETS.build(dict(cfg.train_dataloader.dataset, data_root=demo['root'], num_masks=4))
    model = MODELS.build(dict(cfg.model, loss=dict(num_points=256)))
    load_sam_weights(model.sam, checkpoint)
    model.train()
    with torch.no_grad():
        return float(model(**model.data_preprocessor(pseudo_collate([dataset[0], dataset[1]]), True),
                           mode='loss')['loss_mask'])


def test_phase2_trains_from_phase1_skips_bad_files_and_resumes(demo, phase1, tmp_path):
    options = _phase2_options(demo, phase1)
    work = str(tmp_path / 'straight')
    log = _train(PHASE2, work, options)
    assert f'EfficientViT-SAM weights loaded from {phase1}/iter_{STEPS}.pth (strict)' in log
    # 8 listed images (sa_901 has no json): 4 good, 4 bad; 4 steps of 2 images meet the bad ones
    assert 'sa_901.json: missing json' in log
    assert 'sa_902.json: invalid annotation' in log and 'RLE run lengths add up to' in log
    assert 'sa_904.json: bad sample: unreadable annotation file' in log
    records = _scalars(work)
    assert all(0 < records[i]['loss_mask'] < 100 for i in range(1, STEPS + 1))
    before = _fixed_batch_loss(f'{phase1}/iter_{STEPS}.pth', demo)
    after = _fixed_batch_loss(osp.join(work, f'iter_{STEPS}.pth'), demo)
    assert after < 0.95 * before, (before, after)

    _check_resume(PHASE2, options, work, tmp_path)


def test_phase2_runs_ddp_through_dist_train_and_scales_the_lr(demo, phase1, tmp_path):
    """tools/dist_train.sh: torchrun + mmengine DDP (gloo on CPU here), 2 processes; auto_scale_lr multiplies the
    lr by the world size (2 processes x 2 images over the demo's base batch of 2); the first-step lr of the cosine
    schedule is its base lr."""
    options = _phase2_options(demo, phase1)
    work = str(tmp_path / 'ddp')
    env = dict(os.environ, PYTHON=sys.executable, PORT='29519', OMP_NUM_THREADS='1', PYTHONWARNINGS='ignore')
    proc = subprocess.run(['bash', osp.join(TOOLS, 'dist_train.sh'), PHASE2, '2', '--work-dir', work,
                           '--cfg-options', *options, 'train_cfg.max_iters=2'],
                          capture_output=True, text=True, timeout=900, cwd=ROOT, env=env)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    assert 'Distributed training: True' in out
    assert 'LR is set based on batch size of 2 and the current batch size is 4. Scaling the original LR by 2.0' in out
    records = _scalars(work)
    assert sorted(records) == [1, 2]
    assert records[1]['lr'] == pytest.approx(2 * 0.0003, rel=1e-6)  # options set lr 0.0003
    assert all(0 < records[i]['loss_mask'] < 100 for i in (1, 2))
    assert osp.isfile(osp.join(work, 'iter_2.pth'))
