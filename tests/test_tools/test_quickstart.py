"""Hardening, third round (issue 21): a kill during a checkpoint save, a NaN resume or loss, bf16 on a CPU without
native bf16, a damaged teacher-embedding cache, incomplete LVIS files, training a deployed model, empty crops in
the automatic mask generator, and the newcomer findings (quick start, drawings, logged backend, warnings, typos).

The kill tests are real SIGKILLs of a training process, sent by the process itself from inside mmengine's file
write (``LocalBackend.put``) after it wrote half of the checkpoint's bytes: that is where a kill hurts, and it makes
the moment deterministic. What is simulated is only the timing of the kill, not its effect."""
import os
import os.path as osp

from conftest import TOOLS, run_python

from evit_mm.mm.compat import apply_all

apply_all()


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
