import hashlib
import http.server
import importlib.util
import io
import math
import os
import os.path as osp
import subprocess
import sys
import threading

import pytest

# The suite runs many small forwards. When the cores are shared (other jobs, parallel test workers), torch's
# OpenMP threads oversubscribe them and small ops get up to ~100x slower: one thread per test process.
# Set in the environment too, so that subprocesses (mim, tools) inherit it.
os.environ.setdefault('OMP_NUM_THREADS', '1')
import torch  # noqa: E402

torch.set_num_threads(int(os.environ['OMP_NUM_THREADS']))

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOOLS = osp.join(ROOT, 'tools')
CONFIGS = osp.join(ROOT, 'configs')


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason='needs a CUDA GPU')
    for item in items:
        if 'gpu' in item.keywords:
            item.add_marker(skip)


@torch.no_grad()
def randomize_(model, seed: int = 0, what: str = 'modules', bn_weights: bool = False,
               attention_biases: bool = False):
    """Deterministic, non-trivial values (scaled so activations stay O(1)), so that numerical comparisons exercise
    every layer: the one randomizer of the suite (also the ``randomize`` fixture). In place; returns ``model``.

    ``what`` says which tensors get values:

    - ``'modules'``: BatchNorm (affine terms and running statistics), Conv2d/Linear (weights and biases) and
      LayerNorm (affine terms);
    - ``'state_dict'``: every floating-point state-dict entry (embeddings and tables included);
    - ``'batchnorm'``: BatchNorm running statistics only, and its scales with ``bn_weights``.

    ``attention_biases`` also fills the parameters named ``attention_biases`` (MSRA's bias tables) from a
    generator of its own.
    """
    if what not in ('modules', 'state_dict', 'batchnorm'):
        raise ValueError(f"what must be 'modules', 'state_dict' or 'batchnorm', not {what!r}")
    g = torch.Generator().manual_seed(seed)
    if what == 'state_dict':
        _randomize_state_dict_(model, g)
    else:
        for m in model.modules():
            _randomize_module_(m, g, what == 'batchnorm', bn_weights)
    if attention_biases:
        g = torch.Generator().manual_seed(seed)
        for name, p in model.named_parameters():
            if 'attention_biases' in name:
                p.copy_(torch.randn(p.shape, generator=g))
    return model


def _randomize_module_(m, g, batchnorm_only: bool, bn_weights: bool):
    nn = torch.nn
    if isinstance(m, nn.modules.batchnorm._BatchNorm):
        n = m.num_features
        if batchnorm_only:
            m.running_mean.copy_(torch.randn(n, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
            if bn_weights:
                m.weight.copy_(torch.rand(n, generator=g) * 0.5 + 0.75)
            return
        m.weight.copy_(torch.rand(n, generator=g) * 0.5 + 0.25)
        m.bias.copy_(torch.randn(n, generator=g) * 0.1)
        m.running_mean.copy_(torch.randn(n, generator=g) * 0.1)
        m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
        m.num_batches_tracked.zero_()
    elif batchnorm_only:
        return
    elif isinstance(m, (nn.Conv2d, nn.Linear)):
        m.weight.copy_(torch.randn(m.weight.shape, generator=g) / math.sqrt(m.weight[0].numel()))
        if m.bias is not None:
            m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)
    elif isinstance(m, nn.LayerNorm) and m.weight is not None:
        m.weight.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
        m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)


def _randomize_state_dict_(model, g):
    for name, t in model.state_dict(keep_vars=True).items():
        leaf = name.rsplit('.', 1)[-1]
        if leaf == 'num_batches_tracked':
            t.zero_()
        elif not t.is_floating_point():
            continue
        elif leaf == 'running_var':
            t.copy_(torch.rand(t.shape, generator=g) + 0.5)
        elif leaf == 'running_mean':
            t.copy_(torch.randn(t.shape, generator=g) * 0.1)
        elif t.dim() >= 2:
            t.copy_(torch.randn(t.shape, generator=g) / math.sqrt(t[0].numel()))
        elif leaf == 'weight':
            t.copy_(torch.rand(t.shape, generator=g) * 0.5 + 0.75)
        else:
            t.copy_(torch.randn(t.shape, generator=g) * 0.1)


def _drop_default_scopes_made_since(before: set) -> None:
    registry = sys.modules.get('mmengine.registry')
    if registry is not None:
        instances = registry.DefaultScope._instance_dict
        for name in [name for name in instances if name not in before]:
            del instances[name]


def _default_scopes() -> set:
    registry = sys.modules.get('mmengine.registry')
    return set(registry.DefaultScope._instance_dict) if registry is not None else set()


@pytest.fixture(autouse=True)
def _default_scope_stays_in_its_test():
    """mmengine's current default scope is the latest ``DefaultScope`` made anywhere in the process; a test that
    calls ``init_default_scope('mmagic')`` (or runs a Runner) would otherwise decide which registry a later test's
    ``MODELS.build`` searches. The scopes a test made are dropped after it."""
    before = _default_scopes()
    yield
    _drop_default_scopes_made_since(before)


@pytest.fixture(autouse=True, scope='module')
def _default_scope_stays_in_its_module():
    """The same for the scopes a test module's module-scoped fixtures made (a Runner built once for the module)."""
    before = _default_scopes()
    yield
    _drop_default_scopes_made_since(before)


@pytest.fixture
def randomize():
    """:func:`randomize_`, for tests that take their helpers as fixtures."""
    return randomize_


def load_tool(name: str):
    """``tools/<name>.py`` as a fresh module named ``evit_mm_tools_<name>`` (``_runner_utils``, which the tools
    import by that name, keeps it and is loaded once). tools/ is not left on ``sys.path`` (a tool that puts it
    there is undone): on it, ``tools/test.py`` would shadow the standard library's ``test`` package."""
    module_name = name if name.startswith('_') else f'evit_mm_tools_{name}'
    if name.startswith('_') and module_name in sys.modules:
        return sys.modules[module_name]
    spec = importlib.util.spec_from_file_location(module_name, os.path.join(ROOT, 'tools', f'{name}.py'))
    module = importlib.util.module_from_spec(spec)
    saved_path = list(sys.path)
    sys.modules[module_name] = module  # dataclasses (and pickle) look their module up
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[module_name]
        raise
    finally:
        sys.path[:] = saved_path
    return module


def train_two_iterations(config: str, work: str) -> tuple[str, dict]:
    """``tools/train.py CONFIG --work-dir WORK`` for a config of 2 iterations: the path of the checkpoint it wrote
    (checked to be iteration 2's) and that checkpoint's state dict."""
    load_tool('train').main([config, '--work-dir', work])
    checkpoint = os.path.join(work, 'iter_2.pth')
    assert os.path.isfile(checkpoint), os.listdir(work)
    saved = torch.load(checkpoint, map_location='cpu', weights_only=False)
    assert saved['meta']['iter'] == 2, saved['meta']
    return checkpoint, saved['state_dict']


def run_python(code: str, timeout: float = 300, cwd: str = ROOT, env=None) -> subprocess.CompletedProcess:
    """Run ``code`` in a fresh interpreter (so imports are observed from a clean sys.modules)."""
    return subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, timeout=timeout, cwd=cwd,
                          env=env)


@pytest.fixture(scope='session')
def coins_coco(tmp_path_factory):
    """A small coins-coco dataset (real photographs, COCO format), shared by the tests of a session."""
    from evit_mm.sample_data import make_coins_coco
    return make_coins_coco(str(tmp_path_factory.mktemp('coins_coco')), num_train=4, num_val=2, image_size=128)


# ----------------------------------------------------------------------------------------------------------------
# published checkpoint layouts (the key dumps of shared/reference/keys)
# ----------------------------------------------------------------------------------------------------------------

KEYS_DIR = os.environ.get('EVIT_MM_REFERENCE_KEYS', os.path.join(os.path.dirname(ROOT), 'shared', 'reference', 'keys'))
needs_keys = pytest.mark.skipif(not os.path.isdir(KEYS_DIR), reason=f'reference key dumps not found at {KEYS_DIR}')


def key_dump(dump: str, under: str = '') -> dict[str, tuple[int, ...]]:
    """``{key: shape}`` of a published checkpoint (``KEYS_DIR/dump``, lines ``key<TAB>(shape)``); with ``under``
    only the keys under that prefix, stripped of it (at least one must be there)."""
    out = {}
    with open(os.path.join(KEYS_DIR, dump)) as f:
        for line in f:
            key, shape = line.rstrip('\n').split('\t')
            if key.startswith(under):
                out[key[len(under):]] = tuple(int(s) for s in shape.strip('()').split(',') if s.strip())
    assert out, f'{dump} has no key under {under!r}'
    return out


def published_layout(dump: str, seed: int = 0, prefix: str = '') -> dict:
    """Random tensors with exactly the keys and shapes of a published checkpoint (``KEYS_DIR/dump``), each key
    preceded by ``prefix``, BN variances positive."""
    g = torch.Generator().manual_seed(seed)
    sd = {}
    for key, shape in key_dump(dump).items():
        if key.endswith('num_batches_tracked'):
            sd[prefix + key] = torch.tensor(3)
        elif key.endswith('attention_bias_idxs'):
            sd[prefix + key] = torch.zeros(shape, dtype=torch.long)
        elif key.endswith('running_var'):
            sd[prefix + key] = torch.rand(shape, generator=g) + 0.5
        else:
            sd[prefix + key] = torch.randn(shape, generator=g) * 0.1
    return sd


def saved(obj) -> bytes:
    """``torch.save(obj)`` as bytes (what a server sends)."""
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


def answer_with_file(handler, data, headers=(), body: bool = True, truncate: bool = False) -> None:
    """Answer an ``http.server`` request with ``data`` (404 when None): 200, ``Content-Length``, the extra
    ``headers``; with ``truncate`` only the first half of the body is sent and the connection closed, as a
    dropped download leaves it."""
    if data is None:
        handler.send_error(404)
        return
    handler.send_response(200)
    for key, value in (('Content-Type', 'application/octet-stream'), ('Content-Length', str(len(data))),
                       *headers):
        handler.send_header(key, value)
    handler.end_headers()
    if body:
        handler.wfile.write(data[:len(data) // 2] if truncate else data)
        handler.wfile.flush()
        handler.close_connection = handler.close_connection or truncate


# ------------------------------------------------------------- a local server in the published weights' URL layout
CREAM = '/xinyuliu-jeffrey/EfficientViT_Model_Zoo/releases/download/v1.0/'
HF_SEG = '/han-cai/efficientvit-seg/resolve/main/'


class WeightsServer:
    """Files by URL path; HEAD/GET with the headers huggingface_hub reads; ``drop`` paths end mid-file."""

    def __init__(self):
        self.files, self.drop, self.requests = {}, set(), []
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _answer(self, body: bool):
                path = self.path.split('?')[0]
                server.requests.append((self.command, path))
                data = server.files.get(path)
                hf_headers = () if data is None else (('ETag', '"%s"' % hashlib.sha256(data).hexdigest()),
                                                      ('X-Repo-Commit', 'a' * 40))
                answer_with_file(self, data, hf_headers, body=body, truncate=path in server.drop)

            def do_HEAD(self):
                self._answer(False)

            def do_GET(self):
                self._answer(True)

        self.httpd = http.server.ThreadingHTTPServer(('127.0.0.1', 0), Handler)
        self.url = f'http://127.0.0.1:{self.httpd.server_address[1]}'
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def gets(self, path):
        return sum(1 for method, p in self.requests if method == 'GET' and p == path)


@pytest.fixture
def server(tmp_path, monkeypatch):
    srv = WeightsServer()
    srv.thread.start()
    monkeypatch.setenv('TORCH_HOME', str(tmp_path / 'torch'))
    monkeypatch.setenv('HF_HOME', str(tmp_path / 'hf'))
    monkeypatch.setenv('HF_ENDPOINT', srv.url)
    monkeypatch.setenv('EVIT_MM_URL_BASE', srv.url)
    for var in ('HF_HUB_CACHE', 'HF_HUB_OFFLINE', 'EVIT_MM_WEIGHTS_DIR', 'XDG_CACHE_HOME'):
        monkeypatch.delenv(var, raising=False)
    yield srv
    srv.httpd.shutdown()
    srv.httpd.server_close()


# ------------------------------------------------------- a tiny Cityscapes test set and a checkpoint for its model
SEG_CONFIG = osp.join(ROOT, 'configs', 'efficientvit_seg', 'efficientvit-b0_seg_8xb2-160k_cityscapes-1024x2048.py')
SEG_TINY = """
_base_ = [{base!r}]
test_pipeline = [
    dict(type='LoadImageFromFile', imdecode_backend='pillow'),
    dict(type='Resize', scale=(128, 64), keep_ratio=False, interpolation='bicubic'),
    dict(type='LoadAnnotations'),
    dict(type='PackSegInputs'),
]
test_dataloader = dict(num_workers=0, persistent_workers=False,
                       dataset=dict(data_root={root!r}, pipeline=test_pipeline))
model = dict(backbone=dict(init_cfg=None))
"""


@pytest.fixture(scope='module')
def seg_setup(tmp_path_factory):
    """Tiny Cityscapes test data (no training data), a config that only points the *test* set at it, and a
    checkpoint of that config's model."""
    from mmengine.config import Config
    from mmengine.registry import init_default_scope
    from mmseg.registry import MODELS

    import evit_mm.mmseg  # noqa: F401
    from evit_mm.sample_data import make_cityscapes_sample
    root = tmp_path_factory.mktemp('seg')
    data = make_cityscapes_sample(str(root / 'city'), num_train=1, num_val=2, image_size=(64, 128))
    config = root / 'tiny_seg.py'
    config.write_text(SEG_TINY.format(base=SEG_CONFIG, root=data['root']))
    cfg = Config.fromfile(str(config))
    init_default_scope('mmseg')
    torch.manual_seed(0)
    model = MODELS.build(cfg.model)
    checkpoint = str(root / 'seg_b0.pth')
    torch.save({'state_dict': model.state_dict(), 'meta': {'iter': 1}}, checkpoint)
    return dict(root=root, data_root=data['root'], config=str(config), checkpoint=checkpoint, model=model)
