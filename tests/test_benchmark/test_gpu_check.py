"""tools/gpu_check.py (evit_mm.benchmark.gpu_check): the prepared GPU check runs on the CPU with --dry-run, reports
what it skips instead of crashing, keeps to its budget, and its pure-PyTorch part imports without the mm libraries.

Not a timed test: the dry run's numbers are not compared with anything.
"""
import json
import os.path as osp
import re
import sys
import textwrap
from types import SimpleNamespace

import pytest
import torch

from conftest import ROOT, load_tool, run_python
from evit_mm.benchmark import gpu_check
from evit_mm.benchmark.timer import Candidate

TOOL = osp.join(ROOT, 'tools', 'gpu_check.py')
MM = ('mmcv', 'mmdet', 'mmseg', 'mmagic', 'mmengine')

# A subprocess preamble: every import of an mm library (and of whatever `extra` names) raises ImportError.
BLOCKER = """
import sys
class _Blocker:
    blocked = {blocked!r}
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in self.blocked:
            raise ModuleNotFoundError(f'No module named {{name!r}} (blocked by the test)', name=name)
        return None
sys.meta_path.insert(0, _Blocker())
"""


@pytest.fixture(scope='module')
def tool():
    return load_tool('gpu_check')


def _opts(**kw):
    base = dict(dry_run=True, models=None, amp='fp16', precisions=[], compile='off', throughput=True, budget_s=600.0,
                warmup=0.0, duration=0.05, repeats=1, compile_guess_s=60.0, reserve_s=0.0, seed=0)
    return SimpleNamespace(**{**base, **kw})


# ------------------------------------------------------------------------------------------ the whole dry run
@pytest.fixture(scope='module')
def dry_run(tool, tmp_path_factory):
    out = tmp_path_factory.mktemp('gpu_check')
    code = tool.main(['--dry-run', '--out-dir', str(out)])
    return code, json.loads((out / 'gpu_check.json').read_text()), (out / 'gpu_check.md').read_text()


@pytest.mark.slow
def test_dry_run_checks_every_case_and_passes(dry_run):
    code, result, md = dry_run
    failed = [(r['case'], r['check'], r['precision'], r['note']) for r in result['checks']
              if r['status'] in ('fail', 'error')]
    assert code == 0 and not failed, failed
    assert result['meta']['dry_run'] and result['meta']['device'] == 'cpu' and result['meta']['phase'] == 'done'
    by_case = {}
    for r in result['checks']:
        by_case.setdefault(r['case'], set()).add((r['check'], r['precision'], r['status']))
    assert any('efficientvit_sam_xl1, efficientvit_sam_l2 left out' in n for n in result['notes'])
    for case in gpu_check.CASES.values():
        if not case.numerics or not case.in_dry_run:
            continue
        got = by_case[case.name]
        for check in ('forward eager', 'forward channels_last', 'forward deploy', 'backward', 'backward train mode'):
            assert (check, 'fp32', 'pass') in got, (case.name, check)
        if case.sam:  # the predictor on both devices and mmengine's training step (OptimWrapper on the CPU)
            assert {('predictor logits', 'fp32', 'pass'), ('predictor masks IoU', 'fp32', 'pass'),
                    ('phase-2 train step', 'fp32', 'pass')} <= got, case.name
    train = [r for r in result['checks'] if r['check'] == 'phase-2 train step']
    assert all('OptimWrapper' in r['note'] and 'needs CUDA' in r['note'] for r in train)
    # each CPU run agrees with itself: the fp32 errors of a dry run are rounding only
    fp32 = [r['value'] for r in result['checks'] if r['precision'] == 'fp32' and r['check'].startswith('forward')]
    assert fp32 and max(fp32) < 1e-4


@pytest.mark.slow
def test_dry_run_times_every_group_and_writes_both_reports(dry_run):
    code, result, md = dry_run
    rows = {(r['model'], r['impl'], r['mode']) for r in result['throughput']}
    for case in (c for c in gpu_check.CASES.values() if c.in_dry_run):
        spec = case.timed
        assert (spec, 'evit_mm', 'eager') in rows and (spec, 'evit_mm', 'deploy') in rows, spec
        if case.name.startswith(('efficientvit_m', 'efficientvit_b', 'efficientvit_l')):
            assert (spec, 'timm', 'eager') in rows, spec
    assert ('sam_vit_h', 'sam_vit_h', 'eager') in rows
    assert all(r['batch_size'] == 2 for r in result['throughput'])  # the dry run's batch
    ratios = {(r['model'], r['ratio']): r for r in result['ratios']}
    sam = ratios[('efficientvit_sam_l0', 'eager / SAM ViT-H eager')]
    assert sam['value'] > 0 and sam['paper'] == pytest.approx(762 / (538 / 48.9), abs=0.05)
    assert ('efficientvit_m0', 'eager / timm eager') in ratios
    assert any('torch.compile skipped' in n for n in result['notes'])
    # the markdown report has every case and the verdict
    assert md.startswith('# evit_mm GPU check: CPU') and '**passed**' in md
    for name, case in gpu_check.CASES.items():
        assert (f'| {name} |' in md) == case.in_dry_run, name


@pytest.mark.slow
def test_dry_run_with_autocast_and_compile(tool, tmp_path):
    """The autocast (bf16) checks and the torch.compile phase, on one small case (dynamo's tracing with the eager
    backend: inductor's code generation on a CPU takes minutes)."""
    out = tmp_path / 'gc'
    code = tool.main(['--dry-run', '--models', 'efficientvit_m0', '--precisions', 'bf16', '--compile', 'on',
                      '--compile-backend', 'eager', '--out-dir', str(out)])
    result = json.loads((out / 'gpu_check.json').read_text())
    failed = [(r['check'], r['precision'], r['note']) for r in result['checks'] if r['status'] in ('fail', 'error')]
    assert code == 0 and not failed, failed
    checks = {(r['check'], r['precision']) for r in result['checks'] if r['status'] == 'pass'}
    assert {('forward eager', 'bf16'), ('forward deploy', 'bf16'), ('backward', 'bf16'),
            ('compile (evit_mm deploy)', 'fp32'), ('compile (timm eager)', 'fp32')} <= checks
    modes = {(r['impl'], r['mode']) for r in result['throughput']}
    assert {('evit_mm', 'compile'), ('timm', 'compile')} <= modes
    assert [c['key'] for c in result['compile']] == ['efficientvit_m0/evit_mm/deploy', 'efficientvit_m0/timm/eager']


# ------------------------------------------------------------------------------------------ without mm libraries
def test_the_pure_pytorch_core_imports_and_runs_without_the_mm_libraries():
    """evit_mm.models, the SAM predictor, evit_mm.deploy and the benchmark parts the check uses import with
    mmcv/mmdet/mmseg/mmagic/mmengine unimportable, as on a GPU machine without them (the slow test below runs the
    SAM part of the check that way: predictor included, training step skipped)."""
    code = BLOCKER.format(blocked=set(MM)) + textwrap.dedent(f"""
        import importlib, json
        import torch
        for name in {gpu_check.main_module_names()!r}:
            importlib.import_module(name)
        from evit_mm.models import efficientvit_m0
        from evit_mm.sam import EfficientViTSamPredictor
        from evit_mm.benchmark import gpu_check
        feats = efficientvit_m0().eval()(torch.randn(1, 3, 64, 64))
        assert len(feats) == 3
        print(json.dumps(dict(loaded=sorted({{m.split('.')[0] for m in sys.modules}}),
                              reason=gpu_check.optional('mmengine'))))
    """)
    proc = run_python(code)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert not set(out['loaded']) & set(MM), set(out['loaded']) & set(MM)
    assert 'mmengine is not importable' in out['reason'] and 'blocked by the test' in out['reason']


@pytest.mark.slow
def test_dry_run_without_mm_libraries_skips_only_the_training_step():
    code = BLOCKER.format(blocked=set(MM)) + textwrap.dedent(f"""
        import runpy
        sys.argv = [{TOOL!r}, '--dry-run', '--models', 'efficientvit_sam_l0', '--no-throughput', '--out-dir',
                    sys.argv[1]]
        runpy.run_path({TOOL!r}, run_name='__main__')
    """)
    import subprocess
    import tempfile
    with tempfile.TemporaryDirectory() as out:
        proc = subprocess.run([sys.executable, '-c', code, out], capture_output=True, text=True, timeout=600,
                              cwd=ROOT)
        assert proc.returncode == 0, proc.stderr[-3000:]
        result = json.loads(open(osp.join(out, 'gpu_check.json')).read())
    status = {(r['check'], r['precision']): r for r in result['checks']}
    train = status[('phase-2 train step', '-')]
    assert train['status'] == 'skip' and 'mmengine is not importable' in train['note']
    assert status[('predictor masks IoU', 'fp32')]['status'] == 'pass'
    assert result['meta']['optional']['mmengine'] != 'ok' and result['meta']['optional']['segment_anything'] == 'ok'


# ------------------------------------------------------------------------------------------ pieces
def test_relative_error_and_gradient_error():
    ref = (torch.tensor([1.0, -4.0]), torch.tensor([[0.5]]))
    assert gpu_check.relative_error(ref, ref) == 0
    # per output, relative to that output's largest magnitude; the worst output counts
    assert gpu_check.relative_error((torch.tensor([1.0, -3.0]), torch.tensor([[0.5]])), ref) == pytest.approx(0.25)
    assert gpu_check.relative_error((ref[0], torch.tensor([[0.6]])), ref) == pytest.approx(0.2)
    for bad in ((torch.tensor([float('nan'), -4.0]), ref[1]), (torch.tensor([1.0, float('inf')]), ref[1]),
                (ref[0],), (ref[0], torch.zeros(2, 2))):
        assert gpu_check.relative_error(bad, ref) == float('inf')
    g = torch.tensor([3.0, 4.0])
    assert gpu_check.gradient_error(g + torch.tensor([0.0, 0.5]), g) == pytest.approx(0.1)
    assert gpu_check.gradient_error(torch.tensor([3.0, float('nan')]), g) == float('inf')


def test_report_rows_statuses_and_guard():
    report = gpu_check.Report()
    assert report.add('c', 'x', 'fp32', value=1e-4, tol=1e-3)['status'] == 'pass'
    assert report.add('c', 'x', 'bf16', value=0.2, tol=0.1)['status'] == 'fail'
    assert report.add('c', 'x', 'bf16', value=float('nan'), tol=0.1)['status'] == 'fail'
    assert report.add('c', 'x', 'bf16', value=float('inf'))['status'] == 'fail'
    assert report.add('c', 'iou', 'fp32', value=0.995, tol=0.99, higher_is_better=True)['status'] == 'pass'
    assert report.add('c', 'iou', 'fp32', value=0.5, tol=0.99, higher_is_better=True)['status'] == 'fail'
    with report.guard('c', 'boom', 'fp16'):
        raise RuntimeError('CUDA error: an illegal memory access')
    row = report.checks[-1]
    assert row['status'] == 'error' and 'illegal memory access' in row['note'] and 'RuntimeError' in row['note']
    assert len(report.failed()) == 5
    report.skip('c', 'train', 'mmengine is not importable here')
    assert report.checks[-1]['status'] == 'skip' and len(report.failed()) == 5


def test_deadline_counts_from_its_start():
    now = [100.0]
    deadline = gpu_check.Deadline(60, clock=lambda: now[0])
    now[0] = 130.0
    assert deadline.elapsed() == 30 and deadline.left() == 30
    assert deadline.allows(30) and not deadline.allows(31)


def test_an_exhausted_budget_skips_timings_and_compiles_with_a_note(monkeypatch):
    report = gpu_check.Report()
    spent = gpu_check.Deadline(10, clock=iter([0.0] + [20.0] * 100).__next__)
    timing = gpu_check.run_throughput(_opts(), [gpu_check.CASES['efficientvit_m0']], 'cpu', spent, report, 0.0)
    assert not report.throughput and not timing.by_case
    assert any('throughput of efficientvit_m0 skipped' in n and 'budget' in n for n in report.notes)

    def no_compile(*a, **k):
        raise AssertionError('compiled although the budget is spent')
    monkeypatch.setattr(torch, 'compile', no_compile)
    cand = Candidate(key='efficientvit_m0/evit_mm/deploy', model_name='efficientvit_m0', impl='evit_mm',
                     mode='deploy', role='model', module=torch.nn.Identity(), params=0, macs=0, spec='efficientvit_m0',
                     input_size=(8, 8), cpu_batch=1)
    timing = gpu_check.Timing(by_case={'efficientvit_m0': [cand]})
    gpu_check.run_compile(_opts(compile='on'), 'cpu', timing, spent, report, 0.0)
    assert any('torch.compile of efficientvit_m0/evit_mm/deploy skipped' in n for n in report.notes)
    assert not report.compile and not report.failed()


def test_a_missing_optional_library_is_a_skip_with_its_reason(monkeypatch):
    monkeypatch.setitem(sys.modules, 'mmengine', None)  # `import mmengine` raises ImportError
    report = gpu_check.Report()
    gpu_check.check_train_step(gpu_check.CASES['efficientvit_sam_l0'], 64, 'cpu', 'bf16', report, seed=0)
    (row,) = report.checks
    assert row['status'] == 'skip' and row['note'].startswith('mmengine is not importable here (ModuleNotFoundError')
    assert gpu_check.optional('json') is None


def test_bad_arguments_and_no_gpu(tool, capsys):
    with pytest.raises(SystemExit):
        tool.main(['--models', 'efficientvit_m9'])
    err = capsys.readouterr().err
    assert "unknown case(s): efficientvit_m9" in err and 'efficientvit_sam_l0' in err
    if not torch.cuda.is_available():
        assert tool.main(['--no-throughput']) == 2
        err = capsys.readouterr().err
        assert 'no CUDA GPU is available' in err and '--dry-run' in err


def test_the_carry_list_follows_the_constraints_and_the_docs(tool, capsys):
    pins = gpu_check.carry_pins()
    constraints = open(osp.join(ROOT, 'tools', 'env', 'constraints.txt')).read()
    for name, version in pins.items():
        assert re.search(rf'^{re.escape(name)}=={re.escape(version)}\s*$', constraints, re.M | re.I), name
    assert tool.main(['--carry-command']) == 0
    command = capsys.readouterr().out.strip()
    assert command == gpu_check.carry_command() and command.startswith('python -m pip download --no-deps')
    assert '--python-version 3.12' in command and all(f'{n}=={v}' in command for n, v in pins.items())
    doc = open(osp.join(ROOT, 'docs', 'gpu.md')).read()
    assert command in doc  # the documented command is the one the tool prints
    assert '](gpu.md)' in open(osp.join(ROOT, 'docs', 'benchmarks.md')).read()  # linked from the benchmarks page


def test_ratios_pair_windows_and_quote_the_paper():
    def row(model, impl, mode, ips, role='model'):
        windows = [dict(images_per_s=v, t=float(i)) for i, v in enumerate(ips)]
        return dict(model=model, impl=impl, mode=mode, role=role, windows=windows)
    rows = [row('efficientvit_sam_l2', 'evit_mm', 'eager', [100, 200, 300]),
            row('efficientvit_sam_l2', 'evit_mm', 'deploy', [150, 300, 450]),
            row('sam_vit_h', 'sam_vit_h', 'eager', [10, 10, 20], role='peer'),
            row('efficientvit_m0', 'evit_mm', 'eager', [5, 5, 5]), row('efficientvit_m0', 'timm', 'eager', [4, 4, 4])]
    got = {(r['model'], r['ratio']): r for r in gpu_check.ratios(rows)}
    # window by window: 100/10, 200/10, 300/20 -> median 15 (the ratio of the medians would be 20)
    assert got[('efficientvit_sam_l2', 'eager / SAM ViT-H eager')]['value'] == pytest.approx(15)
    assert got[('efficientvit_sam_l2', 'eager / SAM ViT-H eager')]['paper'] == pytest.approx(48.9)
    assert got[('efficientvit_sam_l2', 'deploy / eager')]['value'] == pytest.approx(1.5)
    assert got[('efficientvit_m0', 'eager / timm eager')]['value'] == pytest.approx(1.25)
    assert ('efficientvit_m0', 'compile / timm compile') not in got  # nothing compiled: no ratio
