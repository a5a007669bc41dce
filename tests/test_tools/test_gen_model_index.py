"""The OpenMMLab model-zoo metadata (issue 20): ``model-index.yml`` and ``configs/*/metafile.yml``, generated from the
model registry by tools/gen_model_index.py, and what mim does with them (``mim search``, ``mim download``).

No real download can be made here. ``mim download`` fetches the published https URLs with ``requests``, which goes
through ``HTTPS_PROXY`` and trusts ``REQUESTS_CA_BUNDLE``: the tests point both at a proxy on 127.0.0.1 that is
every published host itself (it answers ``CONNECT huggingface.co:443`` with TLS under a certificate made here for
the published host names), serving random-weight files in the exact published layouts (from the key lists in
``shared/reference/keys``). The metadata mim reads is the committed one, URLs unchanged.
"""
import ast
import glob
import http.server
import importlib
import io
import os
import os.path as osp
import shutil
import ssl
import subprocess
import sys
import threading
import zipfile

import pytest
import torch
import yaml

from conftest import ROOT, answer_with_file, load_tool, needs_keys, published_layout, saved


# The configs without a mim entry, each with why (the test below checks the reason against the registry).
NO_PUBLISHED_CHECKPOINT = 'no checkpoint was published for it: it trains one'
NO_ENTRY = {
    **{f'efficientvit_m/retinanet_efficientvit-{m}_fpn_1x_coco.py': NO_PUBLISHED_CHECKPOINT
       for m in ('m0', 'm1', 'm2', 'm3', 'm5')},
    **{osp.relpath(p, osp.join(ROOT, 'configs')): NO_PUBLISHED_CHECKPOINT
       for p in glob.glob(osp.join(ROOT, 'configs', 'efficientvit_sam', '*.py')) if '_phase2-e2e_sa1b.py' not in p},
    **{osp.relpath(p, osp.join(ROOT, 'configs')): 'super-resolution: no weights were published at all'
       for p in glob.glob(osp.join(ROOT, 'configs', 'efficientvit_sr', '*.py'))},
    'quickstart/retinanet_efficientvit-m0_fpn_coins.py': 'the quickstart trains on the generated coins data',
}
# Why "no entry" rather than an entry without Weights: mim 0.3.9 lists such an entry, but `mim download` of it
# fails with an AttributeError (test_mim_download_cannot_take_an_entry_without_weights shows it).

SEG = 'efficientvit-b0_seg_8xb2-160k_cityscapes-1024x2048'
SEG_URL = 'https://huggingface.co/han-cai/efficientvit-seg/resolve/main/efficientvit_seg_b0_cityscapes.pt'


def gen():
    return load_tool('gen_model_index')


def committed_metafiles() -> dict:
    index = yaml.safe_load(open(osp.join(ROOT, 'model-index.yml')))
    return {path: yaml.safe_load(open(osp.join(ROOT, path))) for path in index['Import']}


def committed_models() -> list:
    return [model for data in committed_metafiles().values() for model in data['Models']]


def shipped_configs() -> set:
    root = osp.join(ROOT, 'configs')
    return {osp.relpath(p, root) for p in glob.glob(osp.join(root, '**', '*.py'), recursive=True)
            if '_base_' not in p.split(os.sep)}


# ----------------------------------------------------------------------------------------------------------------
# the metadata: generated, complete, equal to the registry
# ----------------------------------------------------------------------------------------------------------------

def test_committed_metadata_and_doc_tables_are_what_the_generator_writes():
    stale = gen().stale(ROOT)
    assert not stale, f'stale: {stale}; run python tools/gen_model_index.py'


def test_the_generator_check_mode_names_a_stale_file(tmp_path, capsys):
    tool = gen()
    for path in tool.generated_files(ROOT):
        os.makedirs(osp.dirname(tmp_path / path), exist_ok=True)
        shutil.copy(osp.join(ROOT, path), tmp_path / path)
    assert tool.stale(str(tmp_path)) == []
    meta = tmp_path / 'configs' / 'efficientvit_seg' / 'metafile.yml'
    meta.write_text(meta.read_text().replace('mIoU: 80.547', 'mIoU: 81.0'))
    assert tool.stale(str(tmp_path)) == ['configs/efficientvit_seg/metafile.yml']


def test_every_config_has_an_entry_or_a_reason_and_every_entry_a_config():
    entries = {m['Config'][len('configs/'):]: m for m in committed_models()}
    configs = shipped_configs()
    assert not set(entries) & set(NO_ENTRY), 'listed as without entry but has one'
    assert set(entries) | set(NO_ENTRY) == configs, (
        f'without entry nor reason: {sorted(configs - set(entries) - set(NO_ENTRY))}; '
        f'entry or reason for a config that does not exist: {sorted((set(entries) | set(NO_ENTRY)) - configs)}')
    for config, model in entries.items():
        assert osp.isfile(osp.join(ROOT, 'configs', config)), config
        assert model['Name'] == osp.splitext(osp.basename(config))[0]  # mim's config id: the config's stem
    assert len({m['Name'] for m in committed_models()}) == len(entries)  # mim keys them by name
    # every metafile in configs/ is imported, and each lists only configs of its own folder
    on_disk = {osp.relpath(p, ROOT) for p in glob.glob(osp.join(ROOT, 'configs', '*', 'metafile.yml'))}
    assert set(committed_metafiles()) == on_disk
    for path, data in committed_metafiles().items():
        assert {m['Config'].rsplit('/', 1)[0] for m in data['Models']} == {osp.dirname(path)}


def test_the_configs_without_entry_have_no_published_checkpoint():
    """The reasons of NO_ENTRY hold: no registry model with a published checkpoint names one of these configs."""
    from evit_mm.models.registry import model_entries
    published = {e.config for e in model_entries().values() if e.config and e.weights}
    assert not published & set(NO_ENTRY)
    sr = [e for e in model_entries().values() if e.family == 'efficientvit_sr']
    assert sr and not any(e.weights for e in sr)


def test_metafile_urls_metrics_and_configs_equal_the_registry():
    from evit_mm.models.registry import get_entry, model_entries
    seen = set()
    for model in committed_models():
        entry = get_entry(model['Metadata']['Registry Name'])
        weights = entry.weight(model['Metadata']['Checkpoint Tag'])
        assert weights is entry.weights[0], f'{entry.name}: the entry is not the default checkpoint'
        assert model['Weights'] == weights.url
        assert model['Config'] == f'configs/{entry.config}'
        metrics = {}
        for result in model['Results']:
            assert not set(result['Metrics']) & set(metrics), f'{model["Name"]}: a metric twice'
            metrics.update(result['Metrics'])
        assert metrics == weights.metrics and metrics, model['Name']
        seen.add(entry.name)
    # and the other way: every registry model with a config and a published checkpoint has its entry
    assert seen == {e.name for e in model_entries().values() if e.config and e.weights}


def test_mim_reads_the_index_and_lists_every_model():
    """mim's own parser (modelindex + mim.commands.search.convert2df, what `mim search` prints)."""
    from mim.commands.search import convert2df, filter_by_configs, filter_by_conditions
    from modelindex.load_model_index import load
    index = load(osp.join(ROOT, 'model-index.yml'))
    index.check(silent=True)
    assert not index.check_errors, list(index.check_errors)
    frame = convert2df(index)
    models = committed_models()
    assert sorted(frame.index) == sorted(m['Name'] for m in models)
    for model in models:
        assert frame.loc[model['Name'], 'weight'] == model['Weights']
        assert frame.loc[model['Name'], 'config'] == model['Config']
    assert filter_by_configs(frame, [SEG]).loc[SEG, 'cityscapes/miou'] == 75.653
    assert sorted(filter_by_conditions(frame, 'miou>82').index) == sorted(
        m['Name'] for m in models if any(r['Metrics'].get('mIoU', 0) > 82 for r in m['Results']))


def test_every_command_of_the_zoo_doc_names_a_real_config_model_and_flags():
    """The commands of docs/model_zoo.md (without the datasets and checkpoints they need): tools/test.py gets an
    existing config and the evit:// name of a published checkpoint made for that config; the zero-shot tool's
    arguments parse with its own parser, and its --model and --checkpoint name the same registered model."""
    import re
    import shlex

    from evit_mm.models.registry import resolve_weights
    text = open(osp.join(ROOT, 'docs', 'model_zoo.md')).read()
    commands = re.findall(r"`(python tools/[^`]+)`", text)
    assert len(commands) >= len(committed_models())
    eval_sam = load_tool('eval_sam_zero_shot')
    seen = set()
    for command in commands:
        argv = shlex.split(command)[2:]
        tool = shlex.split(command)[1]
        if tool == 'tools/test.py' and any(a.startswith('evit://') for a in argv):
            config, checkpoint = argv
            entry, weights = resolve_weights(checkpoint[len('evit://'):])
            assert config == f'configs/{entry.config}' and osp.isfile(osp.join(ROOT, config)), command
            seen.add(entry.name)
        elif tool == 'tools/eval_sam_zero_shot.py' and '...' not in argv:
            args = eval_sam.parse_args(argv)
            if getattr(args, 'pretrained', False):  # --model NAME --pretrained: its published weights
                entry, _ = resolve_weights(args.model)
            else:  # --model NAME --checkpoint evit://NAME
                assert args.checkpoint.startswith('evit://'), command
                entry, _ = resolve_weights(args.checkpoint[len('evit://'):])
            assert entry.name == args.model, command
            assert args.mode == ['detector'] and args.det_file, command  # the published protocol: ViTDet boxes
            seen.add(entry.name)
    assert {m['Metadata']['Registry Name'] for m in committed_models()} <= seen


# ----------------------------------------------------------------------------------------------------------------
# mim download against 127.0.0.1
# ----------------------------------------------------------------------------------------------------------------



class PublishedHosts:
    """An HTTPS proxy on 127.0.0.1 that is the published hosts itself: ``CONNECT host:443`` is answered with TLS
    (``cert``), then ``GET /path`` with ``files['https://host/path']`` (404 otherwise). Every request is logged."""

    def __init__(self, cert: str, key: str):
        self.files, self.requests = {}, []
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(cert, key)
        site = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = 'HTTP/1.1'
            host = None

            def log_message(self, *args):
                pass

            def do_CONNECT(self):
                site.requests.append(('CONNECT', self.path))
                self.send_response(200, 'Connection established')
                self.end_headers()
                self.connection = context.wrap_socket(self.connection, server_side=True)
                self.rfile = self.connection.makefile('rb')
                self.wfile = self.connection.makefile('wb')
                self.host = self.path.rsplit(':', 1)[0]
                self.close_connection = False  # http.client tunnels with an HTTP/1.0 CONNECT: keep the tunnel open

            def do_GET(self):
                url = f'https://{self.host}{self.path}' if self.host else self.path
                site.requests.append(('GET', url))
                answer_with_file(self, site.files.get(url.split('?')[0]))

            def finish(self):
                super().finish()
                if isinstance(self.connection, ssl.SSLSocket):
                    self.connection.close()

        self.httpd = http.server.ThreadingHTTPServer(('127.0.0.1', 0), Handler)
        self.proxy = f'http://127.0.0.1:{self.httpd.server_address[1]}'
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def env(self, ca_bundle: str) -> dict:
        """The variables that send ``requests`` (hence mim) here and make it trust ``ca_bundle``."""
        out = {k: v for k, v in os.environ.items() if k.lower() not in ('no_proxy', 'all_proxy', 'curl_ca_bundle')}
        for var in ('HTTPS_PROXY', 'https_proxy', 'HTTP_PROXY', 'http_proxy'):
            out[var] = self.proxy
        out['REQUESTS_CA_BUNDLE'] = ca_bundle
        out['NO_ALBUMENTATIONS_UPDATE'] = '1'  # albumentations (imported by mmdet/mmseg) asks pypi.org otherwise
        return out

    def gets(self) -> list:
        return [url for method, url in self.requests if method == 'GET']

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture(scope='module')
def certificate(tmp_path_factory):
    """A self-signed certificate for the published hosts (trusted only through REQUESTS_CA_BUNDLE)."""
    if shutil.which('openssl') is None:
        pytest.skip('the openssl command is needed to make the test certificate')
    folder = tmp_path_factory.mktemp('tls')
    cert, key = str(folder / 'cert.pem'), str(folder / 'key.pem')
    hosts = ','.join(f'DNS:{h}' for h in ('huggingface.co', 'github.com', 'dl.fbaipublicfiles.com'))
    subprocess.run(['openssl', 'req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1',
                    '-nodes', '-days', '2', '-subj', '/CN=evit_mm test hosts', '-addext', f'subjectAltName={hosts}',
                    '-keyout', key, '-out', cert], check=True, capture_output=True)
    return cert, key


@pytest.fixture
def hosts(certificate, monkeypatch):
    site = PublishedHosts(*certificate)
    for var, value in site.env(certificate[0]).items():
        if os.environ.get(var) != value:
            monkeypatch.setenv(var, value)
    for var in [v for v in os.environ if v.lower() in ('no_proxy', 'all_proxy', 'curl_ca_bundle')]:
        monkeypatch.delenv(var)
    yield site
    site.close()


@pytest.fixture
def installed(tmp_path, monkeypatch):
    """mim's view of an installed evit_mm (``<package>/.mim/model-index.yml`` next to ``.mim/configs``), made of
    the committed files; mim's own lookup, which an editable install defeats, is covered by the wheel test."""
    package = tmp_path / 'site' / 'evit_mm'
    (package / '.mim').mkdir(parents=True)
    shutil.copy(osp.join(ROOT, 'model-index.yml'), package / '.mim' / 'model-index.yml')
    os.symlink(osp.join(ROOT, 'configs'), package / '.mim' / 'configs')
    for module in ('mim.commands.search', 'mim.commands.download'):  # (mim.commands.download is also a function)
        monkeypatch.setattr(importlib.import_module(module), 'get_installed_path', lambda name: str(package))
    return package


@needs_keys
@pytest.mark.slow  # mim loads the config (Config.fromfile imports evit_mm.mmseg, hence mmseg): ~20 s here
def test_mim_download_fetches_the_published_file_which_evit_mm_loads(hosts, installed, tmp_path, monkeypatch):
    download = importlib.import_module('mim.commands.download').download

    from evit_mm.models import create_model
    from evit_mm.models.seg_head import EfficientViTSeg
    published = {'state_dict': published_layout('seg_b0_cityscapes.txt', seed=1)}
    hosts.files[SEG_URL] = saved(published)
    dest = tmp_path / 'checkpoints'
    assert download('evit_mm', [SEG], dest_root=str(dest)) == ['efficientvit_seg_b0_cityscapes.pt']
    assert hosts.gets() == [SEG_URL] and ('CONNECT', 'huggingface.co:443') in hosts.requests  # the URL, over TLS
    file = dest / 'efficientvit_seg_b0_cityscapes.pt'
    assert file.read_bytes() == hosts.files[SEG_URL]
    assert (dest / f'{SEG}.py').is_file()  # the config, as mim dumps it
    # the file as published needs no conversion step: evit_mm converts it on load
    reference = EfficientViTSeg('b0_cityscapes').eval()
    reference.load_pretrained(published)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        expected = reference(x)
        assert torch.equal(create_model('efficientvit_seg_b0_cityscapes', pretrained=str(file)).eval()(x), expected)
        # and the download folder is a weights folder for evit:// names and pretrained=True, without a request
        monkeypatch.setenv('EVIT_MM_WEIGHTS_DIR', str(dest))
        monkeypatch.setenv('HF_HUB_OFFLINE', '1')
        assert torch.equal(create_model('efficientvit_seg_b0_cityscapes', pretrained=True).eval()(x), expected)
    assert hosts.gets() == [SEG_URL]


def test_mim_download_refuses_a_config_without_entry_naming_the_valid_ones(installed, tmp_path):
    download = importlib.import_module('mim.commands.download').download
    with pytest.raises(ValueError, match=r'Expected configs: .*efficientvit-b1_seg_8xb2-160k_cityscapes-1024x2048'
                                         r'.*but got .*retinanet_efficientvit-m0_fpn_1x_coco'):
        download('evit_mm', ['retinanet_efficientvit-m0_fpn_1x_coco'], dest_root=str(tmp_path))


def test_mim_download_cannot_take_an_entry_without_weights(installed, tmp_path):
    """Why the configs of NO_ENTRY are left out rather than listed without Weights: mim 0.3.9 fails on them."""
    download = importlib.import_module('mim.commands.download').download
    index = installed / '.mim' / 'model-index.yml'
    meta = installed / '.mim' / 'extra.yml'
    name = 'retinanet_efficientvit-m0_fpn_1x_coco'
    meta.write_text(yaml.safe_dump({'Models': [{'Name': name, 'Config': f'configs/efficientvit_m/{name}.py'}]}))
    data = yaml.safe_load(index.read_text())
    index.write_text(yaml.safe_dump({'Import': data['Import'] + ['extra.yml']}))
    from mim.commands.search import get_model_info
    assert name in get_model_info('evit_mm').index  # listed ...
    with pytest.raises(AttributeError):  # ... but not downloadable: mim splits its missing (NaN) weight URL
        download('evit_mm', [name], dest_root=str(tmp_path / 'out'))


# ----------------------------------------------------------------------------------------------------------------
# the real thing: a wheel installed, the mim command line, every family
# ----------------------------------------------------------------------------------------------------------------

def _run(cmd, cwd, env, timeout=600):
    proc = subprocess.run(cmd, cwd=str(cwd), capture_output=True, text=True, timeout=timeout, env=env)
    assert proc.returncode == 0, ' '.join(map(str, cmd)) + '\n' + proc.stdout[-4000:] + proc.stderr[-4000:]
    return proc


@pytest.fixture(scope='module')
def wheel_site(tmp_path_factory):
    """evit_mm built as a wheel (setup.py's build_py: configs, tools and model-index.yml into ``.mim``) and
    unpacked into a folder, as ``pip install --target`` does with a pure-Python wheel."""
    tmp = tmp_path_factory.mktemp('wheel')
    src = tmp / 'src'
    ignore = shutil.ignore_patterns('__pycache__', '*.pyc', '.mim', '*.egg-info')
    src.mkdir()
    for name in ('setup.py', 'pyproject.toml', 'README.md', 'MANIFEST.in', 'LICENSE', 'NOTICE', 'model-index.yml'):
        shutil.copy(osp.join(ROOT, name), src / name)
    for name in ('evit_mm', 'configs', 'tools'):
        shutil.copytree(osp.join(ROOT, name), src / name, ignore=ignore)
    _run([sys.executable, '-m', 'pip', 'wheel', '-q', '--no-deps', '--no-build-isolation', '-w', str(tmp / 'wheel'),
          str(src)], tmp, dict(os.environ))
    wheel = next((tmp / 'wheel').glob('evit_mm-*.whl'))
    assert 'evit_mm/.mim/model-index.yml' in zipfile.ZipFile(wheel).namelist()
    site = tmp / 'site'
    zipfile.ZipFile(wheel).extractall(site)
    return site


@needs_keys
@pytest.mark.slow
def test_mim_search_and_download_of_an_installed_wheel(wheel_site, hosts, certificate, tmp_path):
    """``mim search evit_mm`` lists every model; ``mim download evit_mm --config <det> <seg> <sam>`` fetches the
    published URLs (through the proxy, over TLS) into files that evit_mm loads as they are: the checked loading of
    ``tools/test.py`` / ``load_from`` (a raw Cream detector converted in memory, the segmentor renaming MIT's keys)
    and the zero-shot tool's SAM builder."""
    env = dict(hosts.env(certificate[0]), PYTHONPATH=str(wheel_site))
    mim = [sys.executable, '-m', 'mim']
    out = _run(mim + ['search', 'evit_mm', '--valid-config'], tmp_path, env)
    names = sorted(m['Name'] for m in committed_models())
    assert sorted(ast.literal_eval(out.stdout.strip().splitlines()[-1])) == names  # the list mim prints
    out = _run(mim + ['search', 'evit_mm', '--config', SEG, '--field', 'miou', 'weight', '--display-width', '300'],
               tmp_path, env)
    assert '75.653' in out.stdout and SEG_URL in out.stdout, out.stdout

    from evit_mm.models import create_model
    det_name, sam_name = 'retinanet_efficientvit-m4_fpn_1x_coco', 'efficientvit-sam-l0_phase2-e2e_sa1b'
    det_url = ('https://github.com/xinyuliu-jeffrey/EfficientViT_Model_Zoo/releases/download/v1.0/'
               'retinanet_efficientvit_m4_fpn_1x_coco.pth')
    sam_url = 'https://huggingface.co/mit-han-lab/efficientvit-sam/resolve/main/efficientvit_sam_l0.pt'
    detector = create_model('retinanet_efficientvit_m4_fpn_1x_coco')
    head = {k: torch.randn_like(v) if v.is_floating_point() else v
            for k, v in detector.state_dict().items() if not k.startswith('backbone.')}
    det_published = {'state_dict': {**published_layout('cream_downstream_m4_keys.txt', seed=2, prefix='backbone.'),
                                    **head}, 'meta': {}}
    seg_published = {'state_dict': published_layout('seg_b0_cityscapes.txt', seed=3)}
    sam_published = {'state_dict': published_layout('sam_l0.txt', seed=4)}
    for url, obj in ((det_url, det_published), (SEG_URL, seg_published), (sam_url, sam_published)):
        hosts.files[url] = saved(obj)
    del sam_published
    dest = tmp_path / 'checkpoints'
    _run(mim + ['download', 'evit_mm', '--config', det_name, SEG, sam_name, '--dest', str(dest)], tmp_path, env)
    assert sorted(hosts.gets()) == sorted([det_url, SEG_URL, sam_url])
    for url in (det_url, SEG_URL, sam_url):
        assert (dest / url.rsplit('/', 1)[1]).read_bytes() == hosts.files[url], url
    assert {f'{n}.py' for n in (det_name, SEG, sam_name)} <= {p.name for p in dest.iterdir()}

    # tools/test.py and load_from: the checked loading into the config's model, the files as downloaded
    from types import SimpleNamespace

    from mmengine.logging import MMLogger

    from evit_mm.mm.loading import load_checkpoint_checked
    def runner(model):  # what load_checkpoint_checked uses of a Runner
        return SimpleNamespace(model=model, call_hook=lambda *a, **k: None, logger=MMLogger.get_current_instance())

    det_file = str(dest / 'retinanet_efficientvit_m4_fpn_1x_coco.pth')
    load_checkpoint_checked(runner(detector), det_file)  # strict: every key of the model, none left over
    assert torch.equal(detector.state_dict()['bbox_head.retina_cls.weight'], head['bbox_head.retina_cls.weight'])
    trained = create_model('retinanet_efficientvit_m4_fpn_1x_coco', pretrained=det_file)
    for key, value in trained.state_dict().items():
        assert torch.equal(detector.state_dict()[key], value), key

    import evit_mm.mmseg  # noqa: F401  (registers the segmentor)
    from mmengine.config import Config
    from mmengine.registry import DefaultScope
    from mmseg.registry import MODELS
    cfg = Config.fromfile(osp.join(ROOT, 'configs', 'efficientvit_seg', f'{SEG}.py'))
    with DefaultScope.overwrite_default_scope('mmseg'):
        segmentor = MODELS.build(cfg.model).eval()
    load_checkpoint_checked(runner(segmentor), str(dest / 'efficientvit_seg_b0_cityscapes.pt'))
    assert has_tensor(segmentor, seg_published['state_dict']['backbone.input_stem.op_list.0.conv.weight'])

    # the zero-shot tool's builder (tools/eval_sam_zero_shot.py --model efficientvit_sam_l0 --checkpoint FILE)
    from evit_mm.sam.zero_shot import build_zero_shot_sam
    sam = build_zero_shot_sam('efficientvit_sam_l0', str(dest / 'efficientvit_sam_l0.pt'))
    served = torch.load(io.BytesIO(hosts.files[sam_url]), weights_only=True)['state_dict']
    assert has_tensor(sam, served['image_encoder.backbone.stages.0.op_list.0.conv.weight'])


def has_tensor(model, tensor) -> bool:
    return any(v.shape == tensor.shape and torch.equal(v, tensor) for v in model.state_dict().values())
