"""tools/quickstart.py: idle OpenMP threads sleep (OMP_WAIT_POLICY=PASSIVE) before torch loads."""
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
