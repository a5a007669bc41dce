"""Smoke test of tools/benchmark.py and its package evit_mm.benchmark: it runs, writes valid JSON / markdown / PNG,
and rejects bad arguments.

Not a timed test: nothing here asserts a speed relation between models.
"""
import json
import os.path as osp

import pytest
import torch

from conftest import ROOT, load_tool
from evit_mm.benchmark import candidates, report, specs, timer
from evit_mm.models.classifier import EfficientViTMClassifier, imagenet_windows

TOOL = osp.join(ROOT, 'tools', 'benchmark.py')


@pytest.fixture(scope='module')
def bench():
    return load_tool('benchmark')


TINY = ['--img-size', '64', '--batch-size', '2', '--duration', '0.2', '--repeats', '1', '--warmup', '0',
        '--progress', 'off']


def test_runs_and_writes_json_table_and_png(bench, tmp_path, capsys):
    out = tmp_path / 'bench'
    threads_before = torch.get_num_threads()
    assert bench.main(['--models', 'efficientvit_m0', *TINY, '--out-dir', str(out)]) == 0
    assert torch.get_num_threads() == threads_before  # the tool restores the thread count

    stdout = capsys.readouterr().out
    assert '| efficientvit_m0 |' in stdout and 'mobilenetv3_large_100' in stdout
    for name in ('benchmark.json', 'benchmark.md', 'speed_vs_params.png'):
        assert str(out / name) in stdout  # it says where the files went

    result = json.loads((out / 'benchmark.json').read_text())
    assert {'meta', 'models', 'results', 'ratios'} <= set(result)
    assert result['meta']['img_size'] == 64 and result['meta']['repeats'] == 1
    assert result['meta']['machine']['cpu_count'] >= 1

    # params: exactly the parameter count of the model that was timed (and of timm's same architecture)
    model = EfficientViTMClassifier('m0', img_size=64)
    info = result['models']['efficientvit_m0']
    assert info['params'] == sum(p.numel() for p in model.parameters()) == info['params_timm']
    backbone = specs.MODEL_SPECS['efficientvit_m0'].backbone()
    assert info['params_backbone'] == sum(p.numel() for p in backbone.parameters())
    assert info['macs'] > 0 and info['macs'] == info['macs_timm']

    rows = result['results']
    got = {(r['model'], r['impl'], r['mode']) for r in rows}
    assert got == {('efficientvit_m0', 'evit_mm', 'eager'), ('efficientvit_m0', 'evit_mm', 'deploy'),
                   ('efficientvit_m0', 'evit_mm', 'onnx'), ('efficientvit_m0', 'timm', 'eager'),
                   ('efficientvit_m0', 'timm', 'fused'), ('efficientvit_m0', 'timm', 'onnx'),
                   ('efficientvit_m0', 'timm', 'channels_last'), ('mobilenetv3_large_100', 'mobilenetv3', 'eager'),
                   ('mobilenetv3_large_100', 'mobilenetv3', 'channels_last'),
                   ('mobilenetv3_large_100', 'mobilenetv3', 'fused_channels_last'),
                   ('mobilenetv3_large_100', 'mobilenetv3', 'onnx')}
    for row in rows:
        assert row['images_per_s'] > 0 and row['ms_per_batch'] > 0 and row['batch_size'] == 2
        assert row['threads'] == 1 and row['device'] == 'cpu' and len(row['windows']) == 1
        assert row['macs'] > 0 and row['params'] > 0
        if row['role'] == 'model' or row['mode'] != 'eager':  # a peer's other forms: against its eager form
            assert row['max_abs_diff'] < 1e-4  # same weights, same function (onnxruntime, BN folding included)
    ratios = result['ratios']
    assert len(ratios) == 1
    assert {'eager/timm', 'deploy/timm', 'deploy/timm_fused', 'onnx/timm_onnx', 'eager/mobilenetv3',
            'deploy/mobilenetv3', 'onnx/mobilenetv3_onnx', 'onnx/deploy', 'deploy/timm_channels_last',
            'deploy/mobilenetv3_channels_last', 'deploy/mobilenetv3_fused_channels_last'} <= set(ratios[0])
    assert all(v > 0 for k, v in ratios[0].items() if '/' in k)

    assert '| efficientvit_m0 |' in (out / 'benchmark.md').read_text()
    from PIL import Image
    with Image.open(out / 'speed_vs_params.png') as img:
        img.verify()
    with Image.open(out / 'speed_vs_params.png') as img:
        assert img.format == 'PNG' and min(img.size) > 100


def test_unknown_model_lists_the_known_ones(bench, capsys):
    with pytest.raises(SystemExit) as exc:
        bench.main(['--models', 'efficientvit_m9'])
    assert exc.value.code != 0
    err = capsys.readouterr().err
    assert 'efficientvit_m9' in err
    assert all(f'efficientvit_m{i}' in err for i in range(6))
    assert all(family in err for family in specs.FAMILIES)


def test_every_family_is_known():
    fams = specs.families()
    assert [len(fams[f]) for f in ('efficientvit_m', 'efficientvit_b', 'efficientvit_l', 'efficientvit_seg',
                                    'efficientvit_sam')] == [6, 4, 4, 6, 5]
    sr = ['efficientvit_sr_x2', 'efficientvit_sr_x2_w0.75', 'efficientvit_sr_highres_x2',
          'efficientvit_sr_highres_x2_w0.75']  # what tools/benchmark_sr.py timed, now in the one tool
    assert fams['efficientvit_sr'] == sr
    # --quick runs one model of every family
    assert sorted(specs.MODEL_SPECS[n].family for n, _ in specs.QUICK) == sorted(specs.FAMILIES)
    for spec in specs.MODEL_SPECS.values():  # every model has a peer, except L0 (timm has no L0; SAM-L0 has peers)
        assert spec.peers or spec.timm_build is not None or spec.name == 'efficientvit_l0', spec.name


@pytest.mark.slow
def test_quick_runs_every_family_from_one_command(bench, tmp_path, capsys):
    out = tmp_path / 'quick'
    assert bench.main(['--quick', '--progress', 'off', '--out-dir', str(out)]) == 0
    result = json.loads((out / 'benchmark.json').read_text())
    families = {r['family'] for r in result['results'] if r['role'] == 'model'}
    assert families == set(specs.FAMILIES)
    peers = {r['peer'] for r in result['results'] if r['role'] == 'peer'}
    assert {'mobilenetv3', 'segformer', 'sam_vit_b'} <= peers
    for row in result['results']:
        assert row['images_per_s'] > 0
        if row['role'] == 'model':  # every evit_mm form (deploy, onnxruntime) computes the eager model's function
            assert row['max_abs_diff'] < 1e-4, (row['model'], row['mode'], row['max_abs_diff'])
    for entry in result['ratios']:  # every model is compared with something
        assert any('/' in k and k != 'onnx/deploy' for k in entry if k not in ('setting', 'model')), entry
    assert (out / 'speed_vs_params.png').stat().st_size > 10000


@pytest.mark.parametrize('bad, what', [
    (['--batch-size', '0'], '--batch-size'),
    (['--threads', '0'], '--threads'),
    (['--threads', 'many'], '--threads'),
    (['--duration', '-1'], '--duration'),
    (['--repeats', '0'], '--repeats'),
    (['--warmup', '-2'], '--warmup'),
    (['--img-size', '8'], '--img-size'),
    (['--img-size', '64x8'], '--img-size'),
    (['--img-size', '64by64'], '--img-size'),
    (['--img-size', '64x64x3'], '--img-size'),
    (['--peers', 'resnet'], 'resnet'),
])
def test_bad_arguments_give_clear_errors(bench, capsys, bad, what):
    with pytest.raises(SystemExit) as exc:
        bench.parse_args(bad)
    assert exc.value.code == 2
    assert what in capsys.readouterr().err


@pytest.mark.skipif(torch.cuda.is_available(), reason='checks the message given without a GPU')
def test_cuda_without_a_gpu_says_so_and_skips(bench, tmp_path, capsys):
    assert bench.main(['--device', 'cuda', '--out-dir', str(tmp_path / 'gpu')]) == 0
    out = capsys.readouterr().out
    assert 'no CUDA GPU is available' in out and 'Skipping the GPU protocol' in out
    assert not (tmp_path / 'gpu').exists()


def test_gpu_batch_search_doubles_then_backs_off():
    tried = []

    def try_batch(b):
        tried.append(b)
        if b > 300:
            raise torch.cuda.OutOfMemoryError('CUDA out of memory. Tried to allocate ...')

    assert timer.largest_pow2_batch(try_batch, max_batch=4096) == 256
    assert tried == [1, 2, 4, 8, 16, 32, 64, 128, 256, 512]
    assert timer.largest_pow2_batch(lambda b: None, max_batch=64) == 64  # capped
    with pytest.raises(ValueError):  # other errors are not taken for out-of-memory
        timer.largest_pow2_batch(lambda b: (_ for _ in ()).throw(ValueError('boom')), max_batch=8)


def test_gpu_protocol_logic_runs_on_cpu():
    """The GPU protocol (autocast, power-of-two batch search, batch-1 latency) is device independent: run it on
    the CPU with bf16 autocast so that its code is exercised without a GPU."""
    import argparse
    cands, models = candidates.build_candidates([specs.MODEL_SPECS['efficientvit_m0']], [], 32, 0, lambda msg: None)
    assert [(c.impl, c.mode) for c in cands] == [('evit_mm', 'eager'), ('evit_mm', 'deploy')]
    args = argparse.Namespace(amp='bf16', img_size=32, max_batch=4, warmup=0.0, duration=0.05, repeats=1,
                              peer_windows='per-model')
    setting = dict(device='cpu', protocol='gpu', batch_size='max', label='simulated GPU protocol')
    rows = timer.measure_setting(cands, setting, args, lambda msg: None, progress=False)
    for row in rows:
        assert row['batch_size'] == 4 and row['precision'] == 'bf16'  # capped by max_batch
        assert row['images_per_s'] > 0 and row['latency_ms'] > 0 and len(row['latency_windows']) == 1
    result = dict(meta=dict(img_size=32, repeats=1, duration=0.05, command='x', date='d',
                            machine=dict(machine='m', cpu='c', cpu_count=1, torch='t', timm='t', evit_mm='e')),
                  models=models, results=rows, ratios=report.compute_ratios(rows))
    assert '@4 /' in report.markdown_tables(result)  # "images/s @batch / latency" cells


def test_rounds_put_the_shared_peer_next_to_every_model_and_ratios_pair_neighbours():
    def cand(key, spec, role='model'):
        return timer.Candidate(key=key, model_name=spec or key, impl='x', mode='y', role=role, module=None,
                               params=1, macs=1, spec=spec)
    cands = [cand('a/e', 'a'), cand('a/d', 'a'), cand('b/e', 'b'), cand('mnv3', '', role='peer')]
    assert timer.window_order(cands) == ['a/e', 'a/d', 'mnv3', 'b/e', 'mnv3']
    assert timer.window_order(cands, 'once') == ['a/e', 'a/d', 'b/e', 'mnv3']

    def row(*windows):  # (time, images/s) per window
        return dict(windows=[dict(t=t, images_per_s=v) for t, v in windows])
    # the load halves the speed of everything from t=10 on: each window is compared with its neighbour in time
    a = row((1, 200), (11, 100))
    b = row((2, 100), (12, 50), (30, 10))
    assert report.paired_ratio(a, b) == pytest.approx(2.0)


def test_imagenet_windows_match_the_paper():
    # (7, 7, 4) at 224, as Cream's classification code and timm; never 0 at tiny sizes
    assert imagenet_windows(224) == (7, 7, 4)
    assert imagenet_windows(64) == (4, 2, 1)
    assert min(imagenet_windows(16)) >= 1


def test_one_model_at_a_time_frees_each_group_and_merges_the_peer_windows(bench, tmp_path, monkeypatch):
    """The default run builds, times and frees one model at a time (memory: the largest model, not the sum);
    MobileNetV3, timed beside every M model, ends up as one row holding all its windows."""
    import gc
    import weakref
    alive = []  # weak references to the modules of the groups built so far
    build = candidates.build_model_candidates

    def spy(spec, *args, **kwargs):
        gc.collect()
        assert [ref() for ref in alive if ref() is not None] == [], 'the previous model was not freed'
        cands, info = build(spec, *args, **kwargs)
        alive.extend(weakref.ref(c.module) for c in cands)
        return cands, info

    monkeypatch.setattr(candidates, 'build_model_candidates', spy)
    args = ['--models', 'efficientvit_m0', 'efficientvit_m1', *TINY]
    assert bench.main([*args, '--out-dir', str(tmp_path / 'model')]) == 0
    assert len(alive) == 2 * 7  # both models: evit_mm eager/deploy/onnx, timm eager/fused/channels_last/onnx

    result = json.loads((tmp_path / 'model' / 'benchmark.json').read_text())
    assert result['meta']['interleave'] == 'model'
    rows = result['results']
    peer = [r for r in rows if r['role'] == 'peer' and r['mode'] == 'eager']
    assert len(peer) == 1 and len(peer[0]['windows']) == 2  # one window beside each model, one row
    assert [r['role'] for r in rows] == sorted((r['role'] for r in rows), key=lambda role: role == 'peer')
    assert [e['model'] for e in result['ratios']] == ['efficientvit_m0', 'efficientvit_m1']
    # each model's ratio against MobileNetV3 pairs it with the MobileNetV3 window of its own group
    by = {(r['model'], r['impl'], r['mode']): r for r in rows}
    for e in result['ratios']:
        mine, mnv3 = by[(e['model'], 'evit_mm', 'eager')]['windows'][0], peer[0]['windows']
        nearest = min(mnv3, key=lambda w: abs(w['t'] - mine['t']))
        assert e['eager/mobilenetv3'] == pytest.approx(mine['images_per_s'] / nearest['images_per_s'])
    assert mnv3[0]['t'] < by[('efficientvit_m1', 'evit_mm', 'eager')]['windows'][0]['t'] < mnv3[1]['t']

    # --interleave all: every candidate built first (and kept: no spy), the same rows
    monkeypatch.setattr(candidates, 'build_model_candidates', build)
    assert bench.main([*args, '--interleave', 'all', '--out-dir', str(tmp_path / 'all')]) == 0
    rows_all = json.loads((tmp_path / 'all' / 'benchmark.json').read_text())['results']
    assert {(r['model'], r['impl'], r['mode']) for r in rows_all} == {(r['model'], r['impl'], r['mode']) for r in rows}


def test_fold_batchnorm_removes_every_bn_of_mobilenetv3_and_keeps_its_function():
    import copy
    import timm
    from conftest import randomize_
    model = randomize_(timm.create_model('mobilenetv3_large_100'), 0, 'batchnorm', bn_weights=True).eval()
    x = torch.randn(2, 3, 64, 64)
    before = copy.deepcopy(model)
    folded = candidates.fold_batchnorm(model, x[:1])
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())
    assert sum(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules()) > 40  # the input model is untouched
    with torch.no_grad():
        want = before(x)
        assert torch.equal(model(x), want)
        assert (folded(x) - want).abs().max() <= 1e-4 * want.abs().max()


def test_a_loaded_machine_is_warned_about_once_per_setting():
    logged = []
    cpus = __import__('os').cpu_count()
    rows = [dict(setting='a', loadavg_before=cpus + 1.5), dict(setting='a', loadavg_before=cpus + 3.0),
            dict(setting='b', loadavg_before=0.1), dict(setting='c', loadavg_before=None)]
    timer.warn_if_loaded(rows, logged.append)
    assert len(logged) == 1 and f'{cpus + 3.0:.2f}' in logged[0] and '"a"' in logged[0]


def test_the_harness_imports_no_mm_library_timm_onnxruntime_or_segment_anything():
    """evit_mm.benchmark (and the CLI's --help) imports the heavy libraries only when a model that needs them is
    built; `import evit_mm` does not import the harness at all."""
    from conftest import run_python
    heavy = {'mmengine', 'mmcv', 'mmdet', 'mmseg', 'mmagic', 'timm', 'onnxruntime', 'segment_anything'}
    code = f"""
import contextlib, io, json, runpy, sys
import evit_mm
assert 'evit_mm.benchmark' not in sys.modules
from evit_mm.benchmark import candidates, machine, macs, options, report, runner, specs, timer
sys.argv = ['benchmark.py', '--help']
with contextlib.redirect_stdout(io.StringIO()) as out, contextlib.suppress(SystemExit):
    runpy.run_path({TOOL!r}, run_name='__main__')
assert '--img-size' in out.getvalue()
print(json.dumps(sorted({{m.split('.')[0] for m in sys.modules}})))
"""
    proc = run_python(code)
    assert proc.returncode == 0, proc.stderr
    loaded = set(json.loads(proc.stdout.strip().splitlines()[-1]))
    assert 'evit_mm' in loaded and not loaded & heavy, loaded & heavy
