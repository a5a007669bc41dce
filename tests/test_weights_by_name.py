"""Official weights by name (issue 20): the registry, the checked and atomic download into the caches users know,
``evit://`` in configs and a stock Runner, and ``tools/test.py CONFIG evit://NAME``.

No real download can be made here: a server on 127.0.0.1 serves random-weight files in the exact published
layouts (built from the key lists in ``shared/reference/keys``) under both URL shapes, the Hugging Face one
(``/<repo>/resolve/main/<file>``, reached through ``HF_ENDPOINT``) and the GitHub release one (reached through
``EVIT_MM_URL_BASE``).
"""
import hashlib
import http.server
import os.path as osp
import re
import threading

import pytest
import torch

from conftest import KEYS_DIR, ROOT, answer_with_file, load_tool, needs_keys, published_layout, saved

WEIGHTS_MD = osp.join(osp.dirname(KEYS_DIR), 'weights.md')

CREAM = '/xinyuliu-jeffrey/EfficientViT_Model_Zoo/releases/download/v1.0/'
HF_SEG = '/han-cai/efficientvit-seg/resolve/main/'
HF_CLS = '/han-cai/efficientvit-cls/resolve/main/'




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


def hf_snapshot_files(tmp_path):
    return [p for p in (tmp_path / 'hf').rglob('*') if p.is_file() and 'snapshots' in p.parts]


# ----------------------------------------------------------------------------------------------------------------
# the registry
# ----------------------------------------------------------------------------------------------------------------

def _expand(token):
    """``a_{0..2}`` / ``r{224,256}`` patterns of weights.md, expanded."""
    m = re.search(r'\{([^}]*)\}', token)
    if not m:
        return [token]
    inner = m.group(1)
    values = ([str(n) for n in range(int(inner.split('..')[0]), int(inner.split('..')[1]) + 1)] if '..' in inner
              else inner.split(','))
    return [u for v in values for u in _expand(token[:m.start()] + v + token[m.end():])]


def _weights_md_urls():
    """Every checkpoint URL of weights.md: full URLs, and file names listed under a ``<base>/<file>`` URL."""
    text = open(WEIGHTS_MD).read()
    found = {u for url in re.findall(r'https://[^\s`<>]+?\.pth?\b', text) for u in _expand(url)}
    base = None
    for line in text.splitlines():
        if line.startswith('## '):
            base = None
        m = re.search(r'`(https://[^`]+/)<file>`', line)
        base = m.group(1) if m else base
        if base:
            found |= {base + u for name in re.findall(r'\b(efficientvit_[\w{},]+?\.pt)\b', line) for u in _expand(name)}
    meta = re.search(r'`(https://dl\.fbaipublicfiles\.com/segment_anything/)`', text).group(1)
    found |= {meta + name for name in re.findall(r'\bsam_vit_\w_[0-9a-f]{6}\.pth\b', text)}
    return found


@pytest.mark.skipif(not osp.isfile(WEIGHTS_MD), reason='shared/reference/weights.md not found')
def test_list_models_pretrained_matches_weights_md():
    from evit_mm.models import list_models
    from evit_mm.models.registry import resolve_weights
    registry = {resolve_weights(name)[1].url: name for name in list_models(pretrained=True)}
    expected = _weights_md_urls()
    assert len(expected) == 47  # 6 + 2 Cream, 20 MIT cls, 11 seg, 5 SAM, 3 Meta SAM
    assert set(registry) == expected, (set(registry) ^ expected)


def test_unknown_name_suggests_the_closest():
    from evit_mm.models import create_model
    with pytest.raises(KeyError, match=r"unknown model 'efficientvit_sam_lO'; did you mean .*efficientvit_sam_l0"):
        create_model('efficientvit_sam_lO')
    with pytest.raises(ValueError, match=r'efficientvit_b1 has no weights tagged .r999.; published: r288, r256, r224'):
        create_model('efficientvit_b1', pretrained='r999')
    with pytest.raises(ValueError, match='efficientvit_l0 has no published weights'):
        create_model('efficientvit_l0', pretrained=True)


@pytest.mark.slow
def test_create_model_builds_every_registered_name():
    """Every name builds (random weights), with the entry's family and input size meaning something."""
    from evit_mm.models import list_models
    from evit_mm.models.registry import create_model, get_entry
    for name in list_models():
        model = create_model(name).eval()
        assert isinstance(model, torch.nn.Module) and sum(p.numel() for p in model.parameters()) > 0, name
        entry = get_entry(name)
        if entry.family in ('efficientvit_m', 'efficientvit_b', 'efficientvit_l', 'efficientvit_xl'):
            with torch.no_grad():
                feats = model(torch.randn(1, 3, 128, 128))
            assert [f.shape[1] for f in feats] == list(model.out_channels), name


# ----------------------------------------------------------------------------------------------------------------
# download, cache, refusals
# ----------------------------------------------------------------------------------------------------------------

@needs_keys
def test_github_release_download_then_cache_hit(server, tmp_path):
    from evit_mm.models import EfficientViTM, create_model
    published = {'model': published_layout('cream_m4_keys.txt')}
    server.files[CREAM + 'efficientvit_m4.pth'] = saved(published)
    model = create_model('efficientvit_m4', pretrained=True)
    cached = tmp_path / 'torch' / 'hub' / 'checkpoints' / 'efficientvit_m4.pth'
    assert cached.is_file() and server.gets(CREAM + 'efficientvit_m4.pth') == 1
    reference = EfficientViTM('m4')
    reference.load_pretrained(published)
    for key, value in reference.state_dict().items():
        assert torch.equal(model.state_dict()[key], value), key
    create_model('efficientvit_m4', pretrained=True)  # second time: the cache, no request at all
    assert len(server.requests) == 1
    assert not [p for p in cached.parent.iterdir() if p.name != 'efficientvit_m4.pth']  # no temporary left


@needs_keys
def test_hugging_face_download_then_cache_hit(server, tmp_path):
    from evit_mm.models import create_model
    from evit_mm.models.seg_head import EfficientViTSeg
    published = {'state_dict': published_layout('seg_b0_cityscapes.txt', seed=1)}
    server.files[HF_SEG + 'efficientvit_seg_b0_cityscapes.pt'] = saved(published)
    model = create_model('efficientvit_seg_b0_cityscapes', pretrained=True)
    assert server.gets(HF_SEG + 'efficientvit_seg_b0_cityscapes.pt') == 1
    assert [p.name for p in hf_snapshot_files(tmp_path)] == ['efficientvit_seg_b0_cityscapes.pt']
    assert 'models--han-cai--efficientvit-seg' in str(hf_snapshot_files(tmp_path)[0])  # HF_HOME's layout
    reference = EfficientViTSeg('b0_cityscapes')
    reference.load_pretrained(published)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(model(x), reference(x))
    count = len(server.requests)
    create_model('efficientvit_seg_b0_cityscapes', pretrained='cityscapes')
    assert len(server.requests) == count  # cached: not even a HEAD


def test_dropped_connection_leaves_no_cache_entry(server, tmp_path):
    from evit_mm.models import create_model
    from evit_mm.models.hub import WeightsUnavailableError
    big = saved({'model': {'w': torch.randn(256, 1024)}})
    server.files[CREAM + 'efficientvit_m0.pth'] = big
    server.files[HF_SEG + 'efficientvit_seg_b0_cityscapes.pt'] = big
    server.drop |= {CREAM + 'efficientvit_m0.pth', HF_SEG + 'efficientvit_seg_b0_cityscapes.pt'}
    for name, path in (('efficientvit_m0', CREAM + 'efficientvit_m0.pth'),
                       ('efficientvit_seg_b0_cityscapes', HF_SEG + 'efficientvit_seg_b0_cityscapes.pt')):
        with pytest.raises(WeightsUnavailableError) as err:
            create_model(name, pretrained=True)
        message = str(err.value)
        assert server.url + path in message and 'EVIT_MM_WEIGHTS_DIR' in message, message
        assert re.search(r'(truncated|damaged|[Cc]onsistency|size|Incomplete)', message), message
    checkpoints = tmp_path / 'torch' / 'hub' / 'checkpoints'
    assert not checkpoints.exists() or not list(checkpoints.iterdir())
    assert not hf_snapshot_files(tmp_path)


def test_not_a_checkpoint_and_a_wrong_sha256_are_refused_and_not_cached(server, tmp_path):
    from evit_mm.models import create_model
    from evit_mm.models.hub import WeightsUnavailableError
    page = b'<!DOCTYPE html><html><body>Sign in to continue</body></html>'
    server.files[CREAM + 'efficientvit_m1.pth'] = page
    server.files[HF_SEG + 'efficientvit_seg_b1_cityscapes.pt'] = page
    for name in ('efficientvit_m1', 'efficientvit_seg_b1_cityscapes'):
        with pytest.raises(WeightsUnavailableError, match='refused, not cached: it is an HTML/text page'):
            create_model(name, pretrained=True)
    # segment_anything's file names carry the start of their sha256: a file with another hash is refused
    server.files['/segment_anything/sam_vit_b_01ec64.pth'] = saved({'image_encoder.w': torch.ones(3)})
    with pytest.raises(WeightsUnavailableError, match=r"sha256 is [0-9a-f]{64}, the published file's starts with "
                                                      r'01ec64'):
        create_model('sam_vit_b', pretrained=True)
    checkpoints = tmp_path / 'torch' / 'hub' / 'checkpoints'
    assert not checkpoints.exists() or not list(checkpoints.iterdir())
    assert not hf_snapshot_files(tmp_path)


def test_a_known_sha256_is_checked_and_accepted(server, tmp_path):
    from evit_mm.models.hub import Weights, fetch
    data = saved({'w': torch.arange(4.)})
    server.files['/segment_anything/tiny.pth'] = data
    digest = hashlib.sha256(data).hexdigest()
    path = fetch(Weights('t', 'https://dl.fbaipublicfiles.com/segment_anything/tiny.pth', 'x', sha256=digest[:6]))
    assert open(path, 'rb').read() == data


def test_offline_names_the_url_the_cache_path_and_the_weights_folder(server, tmp_path, monkeypatch):
    from evit_mm.models import create_model
    from evit_mm.models.hub import WeightsUnavailableError
    monkeypatch.setenv('HF_HUB_OFFLINE', '1')
    for name, file, url in (
            ('efficientvit_sam_l0', 'efficientvit_sam_l0.pt',
             f'{server.url}/mit-han-lab/efficientvit-sam/resolve/main/efficientvit_sam_l0.pt'),
            ('efficientvit_m2', 'efficientvit_m2.pth', server.url + CREAM + 'efficientvit_m2.pth')):
        with pytest.raises(WeightsUnavailableError) as err:
            create_model(name, pretrained=True)
        message = str(err.value)
        assert 'HF_HUB_OFFLINE is set' in message and url in message, message
        assert str(tmp_path / 'torch' / 'hub' / 'checkpoints' / file) in message, message
        assert f'EVIT_MM_WEIGHTS_DIR=/data/weights with /data/weights/{file}' in message, message
    assert server.requests == []


@needs_keys
def test_a_local_weights_folder_is_used_without_any_request(server, tmp_path, monkeypatch):
    from evit_mm.models import create_model
    folder = tmp_path / 'mine'
    folder.mkdir()
    published = published_layout('seg_b0_cityscapes.txt', seed=2)
    torch.save({'state_dict': published}, folder / 'efficientvit_seg_b0_cityscapes.pt')
    monkeypatch.setenv('EVIT_MM_WEIGHTS_DIR', str(folder))
    monkeypatch.setenv('HF_HUB_OFFLINE', '1')
    model = create_model('efficientvit_seg_b0_cityscapes', pretrained=True)
    assert server.requests == []
    assert all(torch.equal(model.state_dict()[k], v) for k, v in published.items() if k.startswith('head.'))


# ----------------------------------------------------------------------------------------------------------------
# evit:// in configs: init_cfg, load_from, tools/test.py
# ----------------------------------------------------------------------------------------------------------------

@needs_keys
def test_init_cfg_with_an_evit_name_in_a_stock_registry_build(server):
    import evit_mm.mmdet  # noqa: F401  (registers the backbones and the evit:// scheme)
    from mmdet.registry import MODELS

    from evit_mm.models import EfficientViTM
    published = {'model': published_layout('cream_m4_keys.txt', seed=3)}
    server.files[CREAM + 'efficientvit_m4.pth'] = saved(published)
    from mmengine.registry import DefaultScope
    # Earlier tests may leave another library's default scope current (the SR tests leave mmagic's); a user's
    # mmdet Runner would have made mmdet's current, so the build does here.
    with DefaultScope.overwrite_default_scope('mmdet'):
        backbone = MODELS.build(dict(type='EfficientViTM', arch='m4',
                                     init_cfg=dict(type='Pretrained', checkpoint='evit://efficientvit_m4')))
    backbone.init_weights()
    reference = EfficientViTM('m4')
    reference.load_pretrained(published)
    assert all(torch.equal(backbone.state_dict()[k], v) for k, v in reference.state_dict().items())


TINY_SEG = """
_base_ = [{base!r}]
data_root = {root!r}
test_pipeline = [
    dict(type='LoadImageFromFile', imdecode_backend='pillow'),
    dict(type='Resize', scale=(128, 64), keep_ratio=False, interpolation='bicubic'),
    dict(type='LoadAnnotations'),
    dict(type='PackSegInputs'),
]
val_dataloader = dict(batch_size=1, num_workers=0, persistent_workers=False,
                      dataset=dict(data_root=data_root, pipeline=test_pipeline))
test_dataloader = val_dataloader
"""


@needs_keys
@pytest.mark.slow
def test_tools_test_evaluates_a_published_model_by_name(server, tmp_path):
    """``tools/test.py CONFIG evit://efficientvit_seg_b0_cityscapes``: downloaded, converted (official seg keys ->
    mmseg's) and loaded strictly into the Runner's model, which evaluates the sample data."""
    from evit_mm.sample_data import make_cityscapes_sample
    data = make_cityscapes_sample(str(tmp_path / 'city'), num_train=1, num_val=2, image_size=(64, 128))
    server.files[HF_SEG + 'efficientvit_seg_b0_cityscapes.pt'] = saved(
        {'state_dict': published_layout('seg_b0_cityscapes.txt', seed=4)})
    config = tmp_path / 'tiny_b0.py'
    config.write_text(TINY_SEG.format(
        base=osp.join(ROOT, 'configs', 'efficientvit_seg', 'efficientvit-b0_seg_8xb2-160k_cityscapes-1024x2048.py'),
        root=osp.join(data['root'], '')))
    metrics = load_tool('test').main([str(config), 'evit://efficientvit_seg_b0_cityscapes',
                                      '--work-dir', str(tmp_path / 'work')])
    assert set(metrics) == {'aAcc', 'mIoU', 'mAcc'} and 0.0 <= metrics['mIoU'] <= 100.0
    assert server.gets(HF_SEG + 'efficientvit_seg_b0_cityscapes.pt') == 1
    # the same name through mmengine's loader gives the file as published; the segmentor renamed its keys
    from mmengine.runner.checkpoint import CheckpointLoader
    loaded = CheckpointLoader.load_checkpoint('evit://efficientvit_seg_b0_cityscapes', map_location='cpu')
    assert any(k.startswith('head.') for k in loaded['state_dict'])


@needs_keys
@pytest.mark.slow
def test_a_cream_detector_by_name_is_converted_for_a_stock_runner(server):
    """``evit://retinanet_efficientvit_m4_fpn_1x_coco``: mmengine's loader hands a stock Runner the detector with
    its backbone already in evit_mm's layout, which loads strictly; ``create_model`` gives the same model."""
    from mmengine.runner.checkpoint import CheckpointLoader

    from evit_mm.models import create_model
    from evit_mm.mm.loading import load_strict
    detector = create_model('retinanet_efficientvit_m4_fpn_1x_coco')
    others = {k: torch.randn_like(v) if v.is_floating_point() else v
              for k, v in detector.state_dict().items() if not k.startswith('backbone.')}
    published = {'state_dict': {**published_layout('cream_downstream_m4_keys.txt', seed=5, prefix='backbone.'),
                                **others}, 'meta': {}}
    server.files[CREAM + 'retinanet_efficientvit_m4_fpn_1x_coco.pth'] = saved(published)
    checkpoint = CheckpointLoader.load_checkpoint('evit://retinanet_efficientvit_m4_fpn_1x_coco', map_location='cpu')
    assert checkpoint['meta']['converted_by'] == 'evit_mm'
    load_strict(detector, checkpoint['state_dict'], 'evit://retinanet_efficientvit_m4_fpn_1x_coco')
    trained = create_model('retinanet_efficientvit_m4_fpn_1x_coco', pretrained=True)
    assert server.gets(CREAM + 'retinanet_efficientvit_m4_fpn_1x_coco.pth') == 1
    for key, value in detector.state_dict().items():
        assert torch.equal(trained.state_dict()[key], value), key
    assert torch.equal(trained.state_dict()['bbox_head.retina_cls.weight'], others['bbox_head.retina_cls.weight'])


def test_no_shipped_config_points_at_a_checkpoints_folder():
    import glob
    offenders = [p for p in glob.glob(osp.join(ROOT, 'configs', '**', '*.py'), recursive=True)
                 if re.search(r"""['"]checkpoints/""", open(p).read())]
    assert not offenders
