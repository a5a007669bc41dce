"""Hardening, third round (issue 21): a kill during a checkpoint save, a NaN resume or loss, bf16 on a CPU without
native bf16, a damaged teacher-embedding cache, incomplete LVIS files, training a deployed model, empty crops in
the automatic mask generator, and the newcomer findings (quick start, drawings, logged backend, warnings, typos).

The kill tests are real SIGKILLs of a training process, sent by the process itself from inside mmengine's file
write (``LocalBackend.put``) after it wrote half of the checkpoint's bytes: that is where a kill hurts, and it makes
the moment deterministic. What is simulated is only the timing of the kill, not its effect."""
import glob
import json
import os
import os.path as osp
import signal
import subprocess
import sys
import uuid
import warnings

import numpy as np
import pytest
import torch
from torch import nn

from conftest import ROOT, run_python

from evit_mm.mm.compat import apply_all

apply_all()

TOOLS = osp.join(ROOT, 'tools')
CONFIGS = osp.join(ROOT, 'configs')


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


# ======================================================================== 4. the teacher-embedding cache's files
def _cache(root, shape=(256, 8, 8), dtype='float16', hflip=False):
    """A 2-shard cache (5 images, shards of 3) written with the cache's own writers."""
    from evit_mm.sam.training.cache import write_meta, write_shard
    meta = dict(version=1, teacher='tiny', teacher_cfg='{}', teacher_size=32, shape=list(shape), dtype=dtype,
                shard_size=3, hflip=hflip, num_images=5)
    write_meta(str(root), meta)
    rng = np.random.default_rng(0)
    for k, ids in enumerate((['a', 'b', 'c'], ['d', 'e'])):
        arrays = [rng.standard_normal((len(ids), *shape)).astype(dtype) for _ in range(2 if hflip else 1)]
        write_shard(str(root), k, ids, arrays[0], arrays[1] if hflip else None)
    return str(root)


def test_cache_refuses_a_truncated_shard_naming_it_and_the_rebuild(tmp_path):
    from evit_mm.sam.training.cache import EmbeddingCache
    root = _cache(tmp_path / 'cache', hflip=True)
    assert EmbeddingCache(root).get('e')['teacher_embedding'].shape == (256, 8, 8)
    shard = tmp_path / 'cache' / 'shard_000001_hflip.npy'
    shard.write_bytes(shard.read_bytes()[:5000])  # a copy that stopped half way
    with pytest.raises(ValueError, match='shard_000001_hflip.npy is truncated') as err:
        EmbeddingCache(root)
    message = str(err.value)
    assert f'python tools/sam_cache_teacher_embeddings.py CONFIG --out {root}' in message
    assert '--shard-size 3 --dtype float16 --hflip --part 1 --num-parts 2' in message
    assert 'rm -f ' + str(tmp_path / 'cache' / 'shard_000001') in message


@pytest.mark.parametrize('bad', ['shape', 'dtype'])
def test_cache_refuses_a_shard_of_another_shape_or_dtype(tmp_path, bad):
    """A shard of a 4x4 grid (or of float32) in a cache whose meta.json says 8x8 float16: refused on open, not
    handed to training."""
    from evit_mm.sam.training.cache import EmbeddingCache, write_shard
    root = _cache(tmp_path / 'cache')
    wrong = np.zeros((2, 256, 4, 4) if bad == 'shape' else (2, 256, 8, 8),
                     np.float16 if bad == 'shape' else np.float32)
    write_shard(root, 1, ['d', 'e'], wrong)
    expected = r'\(2, 256, 4, 4\), but meta.json says \(2, 256, 8, 8\)' if bad == 'shape' else \
        'float32, but meta.json says float16'
    with pytest.raises(ValueError, match=r'shard_000001.npy holds .*' + expected):
        EmbeddingCache(root)


# ============================================================================================ 5. evaluation inputs
@pytest.fixture(scope='module')
def zero_shot_sets(tmp_path_factory):
    from evit_mm.sample_data.zero_shot import make_zero_shot_sets
    return make_zero_shot_sets(str(tmp_path_factory.mktemp('zero_shot')))


@pytest.mark.parametrize('field', ['not_exhaustive_category_ids', 'neg_category_ids', 'frequency'])
def test_lvis_json_without_a_required_field_is_refused_before_any_image(zero_shot_sets, tmp_path, field):
    """The lvis package reads these fields only when it evaluates, after every image was processed: a bare
    KeyError at the end of the run. They are checked when the file is read, and the message names them."""
    from evit_mm.sam.zero_shot import ZeroShotDataset
    data = json.load(open(zero_shot_sets['lvis_ann']))
    section = 'categories' if field == 'frequency' else 'images'
    for entry in data[section][-1:]:
        del entry[field]
    bad = tmp_path / 'lvis_incomplete.json'
    bad.write_text(json.dumps(data))
    with pytest.raises(ValueError, match=f'1 of the {len(data[section])} {section} lack "{field}"') as err:
        ZeroShotDataset(str(bad), zero_shot_sets['lvis_img'], kind='lvis')
    assert str(bad) in str(err.value)


def test_gt_annotation_of_an_unknown_category_is_counted_and_skipped(zero_shot_sets, tmp_path):
    from evit_mm.sam.zero_shot import ZeroShotDataset
    data = json.load(open(zero_shot_sets['coco_ann']))
    known = {c['id'] for c in data['categories']}
    stray = dict(data['annotations'][0], id=987654, category_id=max(known) + 1000)
    data['annotations'].append(stray)
    path = tmp_path / 'unknown_category.json'
    path.write_text(json.dumps(data))
    ds = ZeroShotDataset(str(path), zero_shot_sets['coco_img'])
    assert ds.issues.counts['annotation_unknown_category'] == 1
    assert 'annotation id 987654' in ds.issues.examples['annotation_unknown_category'][0]
    assert 987654 in ds.dropped_ann_ids and all(a['id'] != 987654 for a in ds.gt_dict()['annotations'])
    assert all(a['id'] != 987654 for anns in ds.anns_by_image.values() for a in anns)


# ============================================================================== 7. empty crops of the mask generator
@pytest.fixture(scope='module')
def sam_l0():
    from evit_mm.models.sam import build_efficientvit_sam
    torch.manual_seed(0)
    return build_efficientvit_sam('l0', image_size=64).eval()


@pytest.mark.parametrize('shape', [(1, 1), (1, 3)])
def test_mask_generator_with_crops_on_a_one_pixel_image(sam_l0, shape):
    """crop_n_layers=1 on an image 1 pixel high or wide: segment_anything's crop grid has crops of zero width or
    height, which are skipped (no pixel, no mask) instead of raising about an image the generator made itself."""
    from evit_mm.sam import EfficientViTSamAutomaticMaskGenerator
    from segment_anything.utils.amg import generate_crop_boxes
    boxes, _ = generate_crop_boxes(shape, 1, 512 / 1500)
    assert any(x1 <= x0 or y1 <= y0 for x0, y0, x1, y1 in boxes)  # what the test is about
    amg = EfficientViTSamAutomaticMaskGenerator(sam_l0, points_per_side=1, crop_n_layers=1, pred_iou_thresh=0.0,
                                                stability_score_thresh=0.0)
    records = amg.generate(np.full((*shape, 3), 128, np.uint8))
    assert records and all(r['segmentation'].shape == shape for r in records)
    assert all(w > 0 and h > 0 for _, _, w, h in (r['crop_box'] for r in records))  # xywh


# ======================================================================== 3. bf16 autocast on a CPU without bf16
@pytest.mark.parametrize('fast_bf16', [False, True], ids=['no_bf16_cpu', 'bf16_cpu'])
def test_cpu_bf16_autocast_runs_the_encoder_in_fp32_where_bf16_is_slow(sam_l0, monkeypatch, fast_bf16):
    """On a CPU without oneDNN bf16 (this one: AVX2), the encoder runs in float32 with one warning; where bf16 is
    fast it runs under autocast as asked (there the encoder is a stub that records the autocast state: the real
    bf16 encoder would take the slow path on this CPU). The masks are float32/bool either way."""
    from evit_mm.sam import predictor as predictor_module
    monkeypatch.setattr(predictor_module, 'cpu_has_fast_bf16', lambda: fast_bf16)
    monkeypatch.setattr(predictor_module, '_warned_slow_bf16', False)
    encoder, autocast_in_encoder = sam_l0.image_encoder, []

    def recording_encoder(x):
        autocast_in_encoder.append(torch.is_autocast_cpu_enabled())
        if fast_bf16:
            return torch.zeros(x.shape[0], 256, *sam_l0.prompt_encoder.image_embedding_size, dtype=torch.bfloat16)
        return encoder(x)

    predictor = predictor_module.EfficientViTSamPredictor(sam_l0)
    predictor.model = _EncoderSwapped(sam_l0, recording_encoder)
    image = np.random.default_rng(0).integers(0, 255, (48, 64, 3), dtype=np.uint8)
    with warnings.catch_warnings(record=True) as caught, torch.autocast('cpu', dtype=torch.bfloat16):
        warnings.simplefilter('always')
        predictor.set_image(image)
        predictor.set_image(image)
        masks, scores, _ = predictor.predict(box=np.array([5, 5, 40, 30]))
    slow = [w for w in caught if issubclass(w.category, predictor_module.SlowCpuBf16Warning)]
    assert len(slow) == (0 if fast_bf16 else 1)  # once per process, not per image
    assert autocast_in_encoder == [fast_bf16] * 2
    assert predictor.features.dtype == (torch.bfloat16 if fast_bf16 else torch.float32)
    assert masks.dtype == bool and scores.dtype == np.float32


class _EncoderSwapped:
    """``model`` with another image encoder (the rest delegated)."""

    def __init__(self, model, encoder):
        self._model, self.image_encoder = model, encoder

    def __getattr__(self, name):
        return getattr(self._model, name)


def test_this_machines_bf16_probe_agrees_with_its_cpu_flags():
    """The probe says "fast" only on CPUs with AVX-512 (oneDNN's bf16 needs avx512bw/vl/dq at least)."""
    from evit_mm.sam.predictor import cpu_has_fast_bf16
    with open('/proc/cpuinfo') as f:
        flags = next((line.split(':', 1)[1].split() for line in f if line.startswith('flags')), [])
    if not flags:
        pytest.skip('no /proc/cpuinfo flags')
    if cpu_has_fast_bf16():
        assert {'avx512bw', 'avx512vl', 'avx512dq'} <= set(flags)
    else:
        assert not ({'avx512_bf16', 'amx_bf16'} & set(flags))


# ============================================================================================ 6. a deployed model
def test_training_a_deployed_model_is_refused_naming_the_swapped_modules():
    import evit_mm
    from evit_mm.models.deploy import DeployedModelTrainingError
    from evit_mm.models import EfficientViTM
    model = EfficientViTM('m0')
    evit_mm.deploy(model)
    x = torch.randn(1, 3, 64, 64)
    model(x)  # eval mode: inference as before
    model.train()
    with pytest.raises(DeployedModelTrainingError, match=r'stages\.\d+\..*\(DeployedCascadedGroupAttention\) is '
                                                         r'an inference-only module swapped in by evit_mm.deploy'):
        model(x)
    with torch.no_grad():
        model.eval()(x)  # back in eval mode, it runs again


# ============================================================================================ 8. newcomer findings
def test_quickstart_makes_idle_openmp_threads_sleep_before_torch_loads():
    """The quick start's speed on a shared 2-core machine: spinning OpenMP threads (the default) fought the other
    processes (40.6 s per iteration under a load of 5, against 3.2 s with PASSIVE). The policy must be in the
    environment before torch (libgomp) is loaded, and a user's own setting wins."""
    code = f"""
import importlib.util, os, sys
spec = importlib.util.spec_from_file_location('quickstart', {osp.join(TOOLS, 'quickstart.py')!r})
spec.loader.exec_module(importlib.util.module_from_spec(spec))
print(os.environ.get('OMP_WAIT_POLICY'), 'torch' in sys.modules)
"""
    env = {k: v for k, v in os.environ.items() if k != 'OMP_WAIT_POLICY'}
    assert run_python(code, env=env).stdout.split() == ['PASSIVE', 'False']
    assert run_python(code, env=dict(env, OMP_WAIT_POLICY='ACTIVE')).stdout.split() == ['ACTIVE', 'False']


def _empty_prediction(image_shape):
    from mmdet.structures import DetDataSample
    from mmengine.structures import InstanceData
    sample, pred = DetDataSample(), InstanceData()
    pred.bboxes, pred.scores, pred.labels = torch.zeros(0, 4), torch.zeros(0), torch.zeros(0, dtype=torch.long)
    sample.pred_instances = pred
    return sample


def test_drawings_say_when_there_is_no_detection_above_the_threshold(tmp_path, coins_coco, monkeypatch):
    """The quick start's PNG (draw_predictions) and the configs' visualizer (--show-dir) write "0 detections above
    <thr>" on an empty prediction panel, which otherwise is the input image, unchanged."""
    import mmcv
    from mmdet.registry import VISUALIZERS
    from mmengine.config import Config
    from mmengine.registry import DefaultScope
    import evit_mm.mmdet  # noqa: F401
    from evit_mm.mmdet import visualization
    from evit_mm.sample_data import coco_cfg_options
    from mmdet.registry import DATASETS

    with DefaultScope.overwrite_default_scope('mmdet'):
        built = VISUALIZERS.build(dict(type='DetLocalVisualizer', name=f'vis_{uuid.uuid4().hex}'))
    assert isinstance(built, visualization.NotedDetLocalVisualizer)  # what --show-dir's hook draws with

    cfg = Config.fromfile(osp.join(CONFIGS, 'quickstart', 'retinanet_efficientvit-m0_fpn_coins.py'))
    cfg.merge_from_dict(coco_cfg_options(coins_coco))
    with DefaultScope.overwrite_default_scope('mmdet'):
        dataset = DATASETS.build(cfg.val_dataloader.dataset)
    import mmdet.apis
    monkeypatch.setattr(mmdet.apis, 'inference_detector', lambda model, path: _empty_prediction(None))
    out = visualization.draw_predictions(nn.Module(), cfg, dataset, str(tmp_path / 'det.png'), score_thr=0.3,
                                         num_images=1)
    drawn = mmcv.imread(out, channel_order='rgb')
    image = mmcv.imread(dataset.get_data_info(0)['img_path'], channel_order='rgb')
    h, w = image.shape[:2]
    prediction_panel = drawn[:h, w:2 * w]
    assert prediction_panel.shape == image.shape
    changed = np.argwhere((prediction_panel != image).any(-1))
    assert len(changed), 'the empty prediction panel is the input image: nothing says there is no detection'
    assert changed[:, 0].max() < h // 3 and changed[:, 1].max() < w  # the note, top left
    assert visualization.no_detections_note(0.3) == '0 detections above 0.3'


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


def test_typos_in_a_config_path_or_a_type_name_get_the_closest_matches(tmp_path):
    from conftest import load_tool
    train = load_tool('train')
    typo = osp.join(CONFIGS, 'quickstart', 'retinanet_efficientvit-m0_fpn_coin.py')
    with pytest.raises(SystemExit, match=r"config not found: .*coin\.py; did you mean '.*fpn_coins\.py'"):
        train.main([typo])
    config = tmp_path / 'typo.py'
    config.write_text(f"_base_ = [{osp.join(CONFIGS, 'quickstart', 'retinanet_efficientvit-m0_fpn_coins.py')!r}]\n"
                      "model = dict(backbone=dict(type='EfficientViTMM'))\n")
    with pytest.raises(SystemExit, match=r"EfficientViTMM is not a registered model type \(scope mmdet\); did you "
                                         r"mean 'EfficientViTM'"):
        train.main([str(config), '--work-dir', str(tmp_path / 'work')])


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
