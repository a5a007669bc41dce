"""evit_mm.models.registry: every name builds, ``list_models(pretrained=True)`` matches shared/reference/weights.md,
and an unknown name suggests the closest."""
import os.path as osp
import re

import pytest
import torch
from conftest import KEYS_DIR

WEIGHTS_MD = osp.join(osp.dirname(KEYS_DIR), 'weights.md')


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
