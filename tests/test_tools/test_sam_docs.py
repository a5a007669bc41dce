"""docs/efficientvit_sam.md stays true: its Python snippets run, in order, in one namespace; the paths it names
exist."""
import os.path as osp
import re

import pytest

from conftest import ROOT

DOC = osp.join(ROOT, 'docs', 'efficientvit_sam.md')


def snippets():
    return re.findall(r'```python\n(.*?)```', open(DOC).read(), re.S)


def test_paths_named_exist():
    pattern = re.compile(r'\b((?:tools|configs|docs|evit_mm|tests)/[\w./-]+\.(?:py|sh|md|txt))\b')
    for path in pattern.findall(open(DOC).read()):
        assert osp.exists(osp.join(ROOT, path)), f'docs/efficientvit_sam.md names {path}, which does not exist'


@pytest.mark.slow
def test_python_snippets_run(tmp_path, monkeypatch):
    pytest.importorskip('skimage.data')
    blocks = snippets()
    assert len(blocks) >= 5
    ns = {}
    for i, code in enumerate(blocks):
        exec(compile(code, f'{DOC}[python block {i}]', 'exec'), ns)  # noqa: S102
