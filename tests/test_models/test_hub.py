"""evit_mm.models.hub: the checked and atomic download of official weights into the caches users know.

No real download can be made here: a server on 127.0.0.1 (conftest's ``server``) serves random-weight files in the
exact published layouts (built from the key lists in ``shared/reference/keys``) under both URL shapes, the Hugging
Face one (``/<repo>/resolve/main/<file>``, reached through ``HF_ENDPOINT``) and the GitHub release one (reached
through ``EVIT_MM_URL_BASE``)."""
import hashlib
import re

import pytest
import torch
from conftest import (
    CREAM,
    HF_SEG,
    needs_keys,
    published_layout,
    saved,
)


def hf_snapshot_files(tmp_path):
    return [p for p in (tmp_path / 'hf').rglob('*') if p.is_file() and 'snapshots' in p.parts]


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
