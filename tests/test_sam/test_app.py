"""The browser app's handlers (evit_mm.sam.app) without a browser: uploads and their errors, prompt validation,
session isolation, the embedding cache and its bounds, downloads, and the HTTP layer (uvicorn on a free port)."""
from __future__ import annotations

import io
import json
import socket
import threading
import time
import urllib.error
import urllib.request

import numpy as np
import pytest
import torch

PIL = pytest.importorskip('PIL.Image')
pytest.importorskip('skimage.data')
pytest.importorskip('pycocotools')

from evit_mm.sam import EfficientViTSamPredictor  # noqa: E402
from evit_mm.sam.app import (AppError, EmbeddingCache, Limits, SamAppService, SessionStore, decode_image,  # noqa: E402
                             load_sam_model, mask_to_runs, runs_to_mask)

ENCODER = 64  # the smallest L0 encoder input: a tiny, fast model (the decoder and the prompt frame are as usual)


@pytest.fixture(scope='module')
def model_info():
    return load_sam_model('efficientvit_sam_l0', encoder_size=ENCODER, seed=0)


def _service(model_info, **kwargs):
    model, info = model_info
    return SamAppService(model, info, **kwargs)


@pytest.fixture()
def real_service(model_info):
    """A service with the real (random-weight) model."""
    return _service(model_info)


@pytest.fixture()
def service(model_info, monkeypatch):
    """A service whose image encoder is a cheap stand-in (for tests of validation and bookkeeping, not numbers)."""
    _count_encoder_calls(model_info, monkeypatch)
    return _service(model_info)


def _png(array, mode=None) -> bytes:
    buf = io.BytesIO()
    (PIL.fromarray(array, mode) if mode else PIL.fromarray(array)).save(buf, format='PNG')
    return buf.getvalue()


def _photo(step=8):
    import skimage.data
    return np.ascontiguousarray(skimage.data.astronaut()[::step, ::step])  # 64x64 at step 8


def _image_session(service, rgb=None, name='photo.png'):
    sid = service.new_session()['session']
    service.set_image_bytes(sid, _png(_photo() if rgb is None else rgb), name)
    return sid


# ---------------------------------------------------------------------------------------------- images
def test_decode_image_converts_and_reports():
    rgb = _photo()
    out, notes = decode_image(_png(rgb))
    assert np.array_equal(out, rgb) and notes == []

    rgba = np.dstack([rgb, np.full(rgb.shape[:2], 7, np.uint8)])
    out, notes = decode_image(_png(rgba))
    assert np.array_equal(out, rgb) and notes == ['alpha channel dropped']

    gray16 = (rgb[..., 0].astype(np.uint16) * 257)
    out, notes = decode_image(_png(gray16))
    assert notes == ['16-bit image converted to 8-bit']
    assert np.array_equal(out, np.repeat(rgb[..., :1], 3, axis=2))  # x*257/257 = x, exactly


@pytest.mark.parametrize('case, message, status', [
    ('text', 'is not an image that can be read', 415),
    ('empty', 'is empty', 400),
    ('truncated', 'truncated or corrupt', 400),
    ('one_pixel', 'is 1x1 pixels: too small to segment', 400),
    ('huge', 'is 10000x10000 pixels (100.0 megapixels); the limit is 20.0 megapixels', 413),
    ('oversized', 'uploads are limited to', 413),
])
def test_decode_image_errors(case, message, status):
    if case == 'text':
        data = b'this is not an image\n' * 10
    elif case == 'empty':
        data = b''
    elif case == 'truncated':
        data = _png(_photo(2))
        data = data[:len(data) // 2]
    elif case == 'one_pixel':
        data = _png(np.zeros((1, 1, 3), np.uint8))
    elif case == 'huge':  # 1-bit: a few kB on disk, 100 megapixels once decoded
        buf = io.BytesIO()
        PIL.new('1', (10000, 10000)).save(buf, format='PNG')
        data = buf.getvalue()
        assert len(data) < 200_000
    else:
        data = _png(_photo(2))
    t0 = time.perf_counter()
    with pytest.raises(AppError) as err:
        decode_image(data, Limits(max_bytes=len(data) - 1) if case == 'oversized' else Limits(), name='x.png')
    assert message in err.value.message and err.value.status == status
    assert err.value.message.startswith('x.png ')
    if case == 'huge':  # refused from the header, before 100 MP are decoded
        assert time.perf_counter() - t0 < 5


# ------------------------------------------------------------------------------------------------ model
def test_load_sam_model_names_and_random_weights(model_info):
    model, info = model_info
    assert (info.name, info.variant, info.random_weights, info.encoder_size) == ('efficientvit_sam_l0', 'l0', True,
                                                                                ENCODER)
    again, info2 = load_sam_model('l0', encoder_size=ENCODER, seed=0)  # the short name, the same seed
    assert info2.name == info.name
    for a, b in zip(model.state_dict().values(), again.state_dict().values()):
        assert torch.equal(a, b)
    other, _ = load_sam_model('l0', encoder_size=ENCODER, seed=1)
    assert not torch.equal(next(iter(model.parameters())), next(iter(other.parameters())))
    with pytest.raises(ValueError, match='unknown EfficientViT-SAM variant'):
        load_sam_model('efficientvit_sam_b9')
    desc = SamAppService(model, info).describe()
    assert desc['random_weights'] and 'random weights: masks mean nothing' in desc['banner']


def test_load_sam_model_from_a_checkpoint(model_info, tmp_path):
    model, _ = model_info
    path = tmp_path / 'efficientvit_sam_l0.pt'
    torch.save(model.state_dict(), path)
    loaded, info = load_sam_model('l0', str(path), encoder_size=ENCODER, seed=5)  # the seed plays no part
    assert (info.weights, info.random_weights) == (str(path), False)
    for (k, a), b in zip(model.state_dict().items(), loaded.state_dict().values()):
        assert torch.equal(a, b), k
    assert SamAppService(loaded, info).describe()['banner'] is None


# ---------------------------------------------------------------------------------------------- prompts
def test_click_gives_the_predictors_masks(real_service, model_info):
    service = real_service
    sid = _image_session(service)
    r = service.prompt(sid, {'type': 'point', 'x': 30.5, 'y': 20, 'label': 1})
    assert (r['width'], r['height'], len(r['masks'])) == (64, 64, 3)
    assert r['points'] == [[30.5, 20.0, 1]] and r['box'] is None
    ious = [m['iou'] for m in r['masks']]
    assert r['selected'] == int(np.argmax(ious))
    ref = EfficientViTSamPredictor(model_info[0])
    ref.set_image(_photo())
    masks, iou, _ = ref.predict(np.array([[30.5, 20]]), np.array([1]), multimask_output=True)
    for m, want, want_iou in zip(r['masks'], masks, iou):
        got = runs_to_mask(m['runs'], 64, 64)
        assert np.array_equal(got, want) and m['area'] == int(want.sum())
        assert m['iou'] == pytest.approx(float(want_iou), abs=1e-4)
    # a negative point and a box are added to the same prediction
    service.prompt(sid, {'type': 'point', 'x': 5, 'y': 5, 'label': 0})
    r = service.prompt(sid, {'type': 'box', 'x0': 50, 'y0': 40, 'x1': 10, 'y1': 2})  # any corner order
    assert r['box'] == [10.0, 2.0, 50.0, 40.0] and len(r['points']) == 2
    masks, _, _ = ref.predict(np.array([[30.5, 20], [5, 5]]), np.array([1, 0]), box=np.array([10, 2, 50, 40]),
                              multimask_output=True)
    assert all(np.array_equal(runs_to_mask(m['runs'], 64, 64), w) for m, w in zip(r['masks'], masks))


@pytest.mark.parametrize('body, message', [
    ({'type': 'point', 'x': 10, 'y': 10, 'label': 2}, 'label must be 1 (foreground) or 0 (background)'),
    ({'type': 'point', 'x': 10, 'y': 10, 'label': True}, 'label must be'),
    ({'type': 'point', 'x': float('nan'), 'y': 10}, 'x must be a finite number'),
    ({'type': 'point', 'x': '10', 'y': 10}, "x must be a finite number, got '10'"),
    ({'type': 'point', 'x': 10}, 'y must be a finite number, got None'),
    ({'type': 'point', 'x': 65, 'y': 10}, 'point (65, 10) lies outside the 64x64 image'),
    ({'type': 'point', 'x': 10, 'y': -1}, 'lies outside'),
    ({'type': 'box', 'x0': 10, 'y0': 10, 'x1': 10.5, 'y1': 30}, 'the box is empty inside the image'),
    ({'type': 'box', 'x0': 70, 'y0': 70, 'x1': 90, 'y1': 90}, 'the box is empty inside the image'),
    ({'type': 'lasso'}, "type must be 'point' or 'box', got 'lasso'"),
])
def test_prompt_validation_refuses_and_keeps_state(service, body, message):
    sid = _image_session(service)
    first = service.prompt(sid, {'type': 'point', 'x': 30, 'y': 20, 'label': 1})
    with pytest.raises(AppError, match=message.replace('(', r'\(').replace(')', r'\)')) as err:
        service.prompt(sid, body)
    assert err.value.status == 422
    session = service.sessions.get(sid)
    assert session.points == [(30.0, 20.0, 1)] and session.box is None and len(session.history) == 1
    assert np.array_equal(session.masks()[first['selected']],
                          runs_to_mask(first['masks'][first['selected']]['runs'], 64, 64))


def test_prompt_errors_without_image_or_session(service):
    sid = service.new_session()['session']
    with pytest.raises(AppError, match='no image yet') as err:
        service.prompt(sid, {'type': 'point', 'x': 1, 'y': 1})
    assert err.value.status == 409
    with pytest.raises(AppError, match='expired or is unknown') as err:
        service.prompt('not-a-session', {'type': 'point', 'x': 1, 'y': 1})
    assert err.value.status == 404
    with pytest.raises(AppError, match='no session given'):
        service.prompt(None, {})
    with pytest.raises(AppError, match='unknown sample'):
        service.set_sample(sid, '../../etc/passwd')


def test_too_many_points(service, monkeypatch):
    from evit_mm.sam.app import service as service_module
    monkeypatch.setattr(service_module, 'MAX_POINTS', 2)
    sid = _image_session(service)
    for x in (10, 20):
        service.prompt(sid, {'type': 'point', 'x': x, 'y': 10, 'label': 1})
    with pytest.raises(AppError, match='at most 2 points per image'):
        service.prompt(sid, {'type': 'point', 'x': 30, 'y': 10, 'label': 1})


def test_undo_and_clear(service):
    sid = _image_session(service)
    a = service.prompt(sid, {'type': 'point', 'x': 30, 'y': 20, 'label': 1})
    service.prompt(sid, {'type': 'box', 'x0': 5, 'y0': 5, 'x1': 40, 'y1': 40})
    service.prompt(sid, {'type': 'box', 'x0': 1, 'y0': 1, 'x1': 20, 'y1': 20})  # replaces the box
    r = service.undo(sid)
    assert r['box'] == [5.0, 5.0, 40.0, 40.0] and len(r['points']) == 1
    r = service.undo(sid)
    assert r['box'] is None and r['masks'] == a['masks']  # back to the first click's masks
    r = service.undo(sid)
    assert r['masks'] == [] and r['points'] == []
    with pytest.raises(AppError, match='nothing to undo'):
        service.undo(sid)
    service.prompt(sid, {'type': 'point', 'x': 30, 'y': 20, 'label': 1})
    r = service.clear(sid)
    assert r['masks'] == [] and r['points'] == [] and r['box'] is None
    with pytest.raises(AppError, match='no mask yet'):
        service.mask_png(sid)


# ----------------------------------------------------------------------------------------------- speed
def _count_encoder_calls(model_info, monkeypatch):
    """Replace the image encoder by a cheap stand-in that counts its calls (these tests are about when the
    encoder runs, not about its numbers): a (B, 256, 64, 64) embedding that depends on the input."""
    calls = []

    def forward(self, x):
        calls.append(tuple(x.shape))
        return x.mean().expand(x.shape[0], 256, 64, 64).clone()
    monkeypatch.setattr(type(model_info[0].image_encoder), 'forward', forward)
    return calls


def test_embedding_once_per_image_and_session(model_info, monkeypatch):
    """The encoder runs once per (session, image): clicks and "segment everything" reuse the embedding, going
    back to an image the session had is a cache hit, and another session embeds its own copy."""
    calls = _count_encoder_calls(model_info, monkeypatch)
    service = _service(model_info, points_per_side=2)
    sid = service.new_session()['session']
    r = service.set_image_bytes(sid, _png(_photo()), 'a.png')
    assert r['cached'] is False and r['embed_ms'] > 0 and len(calls) == 1
    for x in (10, 20, 30):
        assert service.prompt(sid, {'type': 'point', 'x': x, 'y': 10, 'label': 1})['embed_ms'] == 0
    service.everything(sid)
    assert len(calls) == 1
    service.set_image_bytes(sid, _png(_photo()[::-1].copy()), 'b.png')
    assert len(calls) == 2
    r = service.set_image_bytes(sid, _png(_photo()), 'a again.png')
    assert r['cached'] is True and r['embed_ms'] == 0 and len(calls) == 2
    other = service.new_session()['session']
    assert service.set_image_bytes(other, _png(_photo()), 'a.png')['cached'] is False and len(calls) == 3


def test_embedding_cache_bounds():
    cache = EmbeddingCache(max_items=3, max_bytes=100)
    for k in 'abc':
        assert cache.put(('s', k), k, 10)
    assert cache.get(('s', 'a')) == 'a'  # a is now the most recent
    cache.put(('s', 'd'), 'd', 10)  # count bound: the least recently used (b) goes
    assert cache.keys() == [('s', 'c'), ('s', 'a'), ('s', 'd')] and cache.evictions == 1
    cache.put(('t', 'e'), 'e', 75)  # byte bound: 30 + 75 > 100 -> c goes, then 95 <= 100
    assert cache.keys() == [('s', 'a'), ('s', 'd'), ('t', 'e')] and cache.nbytes == 95
    assert not cache.put(('t', 'f'), 'f', 101) and ('t', 'f') not in cache.keys()  # too big alone
    cache.put(('s', 'a'), 'A', 5)  # replacing an entry re-weighs it
    assert cache.get(('s', 'a')) == 'A' and cache.nbytes == 90
    cache.drop_session('s')
    assert cache.keys() == [('t', 'e')] and cache.nbytes == 75
    assert cache.get(('s', 'a')) is None
    with pytest.raises(ValueError):
        EmbeddingCache(0, 10)


def test_service_cache_is_bounded_by_count_and_bytes(model_info, monkeypatch):
    calls = _count_encoder_calls(model_info, monkeypatch)
    svc = _service(model_info, cache_items=2)
    sid = svc.new_session()['session']
    images = [_photo(), _photo()[::-1].copy(), _photo()[:, ::-1].copy()]
    for i, rgb in enumerate(images):
        svc.set_image_bytes(sid, _png(rgb), f'{i}.png')
    assert len(svc.cache) == 2
    assert svc.set_image_bytes(sid, _png(images[0]), '0.png')['cached'] is False  # evicted: embedded again
    assert len(calls) == 4
    one = svc.cache.nbytes // len(svc.cache)
    assert one == 256 * 64 * 64 * 4  # (1, 256, 64, 64) float32
    svc = _service(model_info, cache_bytes=one * 3 // 2)  # room for one embedding only
    sid = svc.new_session()['session']
    for i, rgb in enumerate(images):
        svc.set_image_bytes(sid, _png(rgb), f'{i}.png')
    assert len(svc.cache) == 1 and svc.cache.nbytes == one
    # a click after its embedding was evicted embeds again (and says so) instead of failing
    svc2 = _service(model_info, cache_items=1)
    a, b = svc2.new_session()['session'], svc2.new_session()['session']
    svc2.set_image_bytes(a, _png(images[0]), 'a.png')
    svc2.set_image_bytes(b, _png(images[1]), 'b.png')
    assert svc2.prompt(a, {'type': 'point', 'x': 10, 'y': 10, 'label': 1})['embed_ms'] > 0


def test_session_store_bounds_and_expiry():
    dropped = []
    store = SessionStore(max_sessions=2, ttl_s=3600, on_drop=dropped.append)
    a, b = store.create(), store.create()
    store.get(a.id)  # a is now the most recent
    c = store.create()
    assert dropped == [b.id] and len(store) == 2
    with pytest.raises(AppError, match='expired or is unknown'):
        store.get(b.id)
    store.ttl_s = 0.0
    time.sleep(0.01)
    with pytest.raises(AppError, match='expired'):
        store.get(c.id)
    assert set(dropped) == {a.id, b.id, c.id}
    assert len(a.id) >= 20 and a.id != c.id  # random, unguessable


def test_dropped_session_frees_its_embeddings(model_info, monkeypatch):
    _count_encoder_calls(model_info, monkeypatch)
    svc = _service(model_info, max_sessions=1)
    a = _image_session(svc)
    assert [k[0] for k in svc.cache.keys()] == [a]
    b = svc.new_session()['session']  # a is dropped to make room
    assert svc.cache.keys() == [] and b != a
    with pytest.raises(AppError, match='reload the page'):
        svc.prompt(a, {'type': 'point', 'x': 1, 'y': 1})


# ---------------------------------------------------------------------------------------------- sessions
def test_sessions_are_isolated_under_concurrency(real_service, model_info):
    """Two sessions on two images, clicked from two threads at once: each gets the masks of its own image only."""
    imgs = {'a': _photo(), 'b': np.ascontiguousarray(_photo(4)[:48])}  # 64x64 and 48x128
    service = real_service
    sids = {(k, 0): _image_session(service, rgb, f'{k}.png') for k, rgb in imgs.items()}
    ref = EfficientViTSamPredictor(model_info[0])
    expected = {}
    for k, rgb in imgs.items():
        ref.set_image(rgb)
        expected[k] = ref.predict(np.array([[20.0, 20.0]]), np.array([1]), multimask_output=True)[0]
    results, errors = {k: [] for k in imgs}, []

    def work(k, j):
        try:
            for _ in range(2):
                results[k].append(service.prompt(sids[k, j], {'type': 'point', 'x': 20, 'y': 20, 'label': 1}))
                service.undo(sids[k, j])
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=work, args=key) for key in sids]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    for k, rgb in imgs.items():
        h, w = rgb.shape[:2]
        assert len(results[k]) == 2
        for r in results[k]:
            assert (r['height'], r['width']) == (h, w) and r['points'] == [[20.0, 20.0, 1]]
            assert all(np.array_equal(runs_to_mask(m['runs'], h, w), e) for m, e in zip(r['masks'], expected[k]))
    # and one session's downloads are not reachable from another id
    with pytest.raises(AppError, match='expired or is unknown'):
        service.mask_png(sids['a', 0] + 'x')


# --------------------------------------------------------------------------------------------- downloads
def test_downloads_mask_png_and_coco_rle(model_info):
    from pycocotools import mask as mask_utils
    svc = _service(model_info, points_per_side=2, pred_iou_thresh=0.0, stability_score_thresh=0.0)
    sid = _image_session(svc)
    with pytest.raises(AppError, match='no masks yet'):
        svc.masks_json(sid)
    r = svc.prompt(sid, {'type': 'point', 'x': 30, 'y': 20, 'label': 1})
    for index in (None, 0, 2):
        i = r['selected'] if index is None else index
        want = runs_to_mask(r['masks'][i]['runs'], 64, 64)
        png = np.asarray(PIL.open(io.BytesIO(svc.mask_png(sid, index))))
        assert png.dtype == np.uint8 and np.array_equal(png == 255, want) and set(np.unique(png)) <= {0, 255}
        doc = svc.masks_json(sid, index)
        ann = doc['annotations'][0]
        assert ann['source'] == 'click' and ann['area'] == int(want.sum())
        assert np.array_equal(mask_utils.decode(ann['segmentation']).astype(bool), want)
    with pytest.raises(AppError, match='mask index 3 out of range'):
        svc.mask_png(sid, 3)
    e = svc.everything(sid)
    assert e['count'] >= 1 and e['overlay'].startswith('data:image/jpeg;base64,') and e['embed_ms'] == 0
    doc = json.loads(json.dumps(svc.masks_json(sid)))  # JSON-serialisable
    assert doc['image'] == {'file_name': 'photo.png', 'height': 64, 'width': 64}
    rest = [a for a in doc['annotations'] if a['source'] == 'everything']
    assert len(rest) == e['count'] and [a['id'] for a in doc['annotations']] == list(range(1, e['count'] + 2))
    for a in rest:
        assert mask_utils.decode(a['segmentation']).sum() == a['area']


def test_mask_runs_roundtrip():
    rng = np.random.default_rng(0)
    for mask in (np.zeros((3, 4), bool), np.ones((3, 4), bool), rng.random((17, 5)) > 0.5):
        runs = mask_to_runs(mask)
        assert sum(runs) == mask.size and np.array_equal(runs_to_mask(runs, *mask.shape), mask)
    assert mask_to_runs(np.array([[1, 1, 0]], bool)) == [0, 2, 1]
    with pytest.raises(ValueError, match='runs cover 3 pixels'):
        runs_to_mask([1, 2], 2, 2)


def test_samples_load(service):
    sid = service.new_session()['session']
    r = service.set_sample(sid, 'coins')  # a grayscale photograph, shown as RGB
    assert (r['width'], r['height'], r['notes']) == (384, 303, [])
    jpeg = PIL.open(io.BytesIO(service.image_jpeg(sid)))
    assert jpeg.size == (384, 303) and jpeg.mode == 'RGB'


# -------------------------------------------------------------------------------------------------- HTTP
@pytest.fixture()
def http(model_info):
    pytest.importorskip('uvicorn')
    pytest.importorskip('fastapi')
    from evit_mm.sam.app.launch import serving
    from evit_mm.sam.app.server import create_app
    svc = _service(model_info, limits=Limits(max_bytes=200_000))
    with serving(create_app(svc)) as url:
        yield svc, url


def test_serving_stops_the_server_and_says_when_it_cannot_start(model_info, monkeypatch):
    pytest.importorskip('uvicorn')
    from evit_mm.sam.app import launch
    from evit_mm.sam.app.server import create_app
    app = create_app(_service(model_info))
    with launch.serving(app) as url:
        assert _call(url + '/api/info')[0] == 200
    with pytest.raises(OSError):  # nothing listens there any more
        urllib.request.urlopen(url + '/api/info', timeout=5)
    with socket.socket() as taken:  # a port another socket holds: uvicorn cannot bind it
        taken.bind(('127.0.0.1', 0))
        monkeypatch.setattr(launch, 'free_port', lambda host: taken.getsockname()[1])
        with pytest.raises(launch.AppStartError, match='uvicorn exited with code'):
            with launch.serving(app, timeout=30):
                pytest.fail('served on a port that was taken')


@pytest.mark.slow
def test_launched_app_that_cannot_start_says_why(tmp_path):
    """The app's own process (as the browser test and tools/sam_app_bench.py start it): an error before it serves
    ends the wait at once, with the exit code, the command and the end of the app's log."""
    from evit_mm.sam.app.launch import AppStartError, launched
    log = tmp_path / 'app.log'
    t0 = time.monotonic()
    with pytest.raises(AppStartError) as err:
        with launched(['--model', 'efficientvit_sam_nope'], timeout=120, log_path=str(log)):
            pytest.fail('the app served')
    assert time.monotonic() - t0 < 100  # not the timeout
    message = str(err.value)
    assert 'exited with code 2' in message and '-m evit_mm.sam.app' in message
    assert "unknown EfficientViT-SAM variant 'efficientvit_sam_nope'" in message
    assert "unknown EfficientViT-SAM variant" in log.read_text()  # the log is kept where asked


def _call(url, data=None, headers=None, method=None):
    req = urllib.request.Request(url, data=data, headers=headers or {}, method=method)
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, r.headers.get('content-type'), r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.headers.get('content-type'), e.read()


def _post_json(base, path, body):
    return _call(base + path, json.dumps(body).encode(), {'Content-Type': 'application/json'})


def test_http_routes_and_error_messages(http, monkeypatch):
    svc, base = http
    status, ctype, body = _call(base + '/')
    assert status == 200 and b'EfficientViT-SAM' in body and b'/static/app.js' in body
    assert _call(base + '/static/app.js')[0] == 200
    info = json.loads(_call(base + '/api/info')[2])
    assert info['name'] == 'efficientvit_sam_l0' and info['banner'] and 'astronaut' in info['samples']
    sid = json.loads(_post_json(base, '/api/session', {})[2])['session']

    def upload(data, name='x.png'):
        status, ctype, body = _call(f'{base}/api/image?session={sid}&name={name}', data,
                                    {'Content-Type': 'application/octet-stream'})
        assert ctype == 'application/json' and b'Traceback' not in body
        return status, json.loads(body)

    truncated = _png(_photo(2))
    status, r = upload(truncated[:len(truncated) // 2], 'cut.png')
    assert status == 400 and r['error'].startswith('cut.png could not be decoded: the file is truncated or corrupt')
    status, r = upload(b'plain text', 'notes.txt')
    assert status == 415 and r['error'].startswith('notes.txt is not an image')
    status, r = upload(b'\0' * 300_000)  # over the 200 kB limit: refused from Content-Length
    assert status == 413 and 'uploads are limited to 0.2 MB' in r['error']
    buf = io.BytesIO()
    PIL.new('1', (10000, 10000)).save(buf, format='PNG')
    status, r = upload(buf.getvalue(), 'big.png')
    assert status == 413 and 'big.png is 10000x10000 pixels' in r['error']
    status, r = upload(_png(_photo()))
    assert status == 200 and (r['width'], r['height'], r['cached']) == (64, 64, False)

    status, _, body = _post_json(base, '/api/prompt', {'session': sid, 'type': 'point', 'x': 1e9, 'y': 1})
    assert status == 422 and 'lies outside the 64x64 image' in json.loads(body)['error']
    status, _, body = _call(base + '/api/prompt', b'{not json', {'Content-Type': 'application/json'})
    assert status == 422 and json.loads(body)['error'].startswith('bad request')
    status, _, body = _post_json(base, '/api/prompt', {'session': sid, 'type': 'point', 'x': 30, 'y': 20, 'label': 1})
    assert status == 200 and len(json.loads(body)['masks']) == 3
    status, ctype, png = _call(f'{base}/api/mask.png?session={sid}&index=1')
    assert status == 200 and ctype == 'image/png' and PIL.open(io.BytesIO(png)).size == (64, 64)
    status, ctype, _ = _call(f'{base}/api/masks.json?session={sid}')
    assert status == 200 and ctype == 'application/json'
    status, _, body = _call(f'{base}/api/mask.png?session=nope')
    assert status == 404 and 'reload the page' in json.loads(body)['error']

    def broken():
        raise RuntimeError('secret internals')
    monkeypatch.setattr(svc, 'describe', broken)
    status, _, body = _call(base + '/api/info')
    assert status == 500 and json.loads(body) == {
        'error': 'internal error (RuntimeError); the server log has the details'}


def test_command_line_errors(capsys):
    from evit_mm.sam.app import main
    assert main(['--model', 'efficientvit_sam_b9']) == 2
    assert 'unknown EfficientViT-SAM variant' in capsys.readouterr().err
    assert main(['--model', 'l0', '--checkpoint', '/nonexistent/efficientvit_sam_l0.pt']) == 2
    assert '/nonexistent/efficientvit_sam_l0.pt' in capsys.readouterr().err
