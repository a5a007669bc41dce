import os
import subprocess
import sys

import pytest

# The suite runs many small forwards. When the cores are shared (other jobs, parallel test workers), torch's
# OpenMP threads oversubscribe them and small ops get up to ~100x slower: one thread per test process.
# Set in the environment too, so that subprocesses (mim, tools) inherit it.
os.environ.setdefault('OMP_NUM_THREADS', '1')
import torch  # noqa: E402

torch.set_num_threads(int(os.environ['OMP_NUM_THREADS']))

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def pytest_configure(config):
    config.addinivalue_line('markers', 'slow: takes more than ~10 s on a 2-core CPU (deselect with -m "not slow")')
    config.addinivalue_line('markers', 'gpu: needs a CUDA GPU (skipped without one)')


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason='needs a CUDA GPU')
    for item in items:
        if 'gpu' in item.keywords:
            item.add_marker(skip)


@torch.no_grad()
def randomize_batchnorm_(model, seed: int = 0, weights: bool = False):
    """Non-trivial eval-mode BatchNorm statistics (and, with ``weights``, scales), so that numerical comparisons
    exercise the norms. In place; returns ``model``."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            if weights:
                m.weight.copy_(torch.rand(m.num_features, generator=g) * 0.5 + 0.75)
    return model


def run_python(code: str, timeout: float = 300, cwd: str = ROOT, env=None) -> subprocess.CompletedProcess:
    """Run ``code`` in a fresh interpreter (so imports are observed from a clean sys.modules)."""
    return subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, timeout=timeout, cwd=cwd,
                          env=env)


@pytest.fixture(scope='session')
def coins_coco(tmp_path_factory):
    """A small coins-coco dataset (real photographs, COCO format), shared by the tests of a session."""
    from evit_mm.sample_data import make_coins_coco
    return make_coins_coco(str(tmp_path_factory.mktemp('coins_coco')), num_train=4, num_val=2, image_size=128)
