"""Repository habits: pyproject.toml holds the ruff and pytest settings, CI lints before testing, LICENSE and
NOTICE ship, the suite has one randomizer and imports no test module, and tools load without shadowing the
standard library."""
import ast
import glob
import importlib.util
import os
import os.path as osp
import re
import sys
import tomllib

import pytest
import torch
from torch import nn

from conftest import ROOT, load_tool, randomize_

TOOLS = osp.join(ROOT, 'tools')
TEST_FILES = sorted(glob.glob(osp.join(ROOT, 'tests', '**', 'test_*.py'), recursive=True))


def _pyproject():
    with open(osp.join(ROOT, 'pyproject.toml'), 'rb') as f:
        return tomllib.load(f)


# ------------------------------------------------------------------------------------------ config and CI
def test_pyproject_configures_the_build_ruff_and_pytest(pytestconfig):
    cfg = _pyproject()
    assert cfg['build-system']['build-backend'] == 'setuptools.build_meta'  # setup.py stays the build script
    assert 'project' not in cfg  # the metadata lives in setup.py only
    assert cfg['tool']['ruff']['line-length'] == 120
    assert {'E', 'F', 'W'} <= set(cfg['tool']['ruff']['lint']['select'])
    # the markers are registered by pyproject.toml, the config pytest actually read
    assert osp.samefile(str(pytestconfig.inipath), osp.join(ROOT, 'pyproject.toml'))
    markers = {line.split(':')[0] for line in pytestconfig.getini('markers')}
    assert {'slow', 'gpu'} <= markers


def test_ci_lints_with_the_pinned_ruff_before_the_tests():
    lines = [line.strip() for line in open(osp.join(ROOT, '.ci', 'run'))]
    lint = lines.index('bash tools/setup_env.sh && .venv/bin/ruff check .')
    assert lint < lines.index('bash tools/setup_env.sh && .venv/bin/python -m pytest tests')
    requirements = open(osp.join(TOOLS, 'env', 'requirements.txt')).read().split()
    pins = re.findall(r'^ruff==([\d.]+)$', open(osp.join(TOOLS, 'env', 'constraints.txt')).read(), re.M)
    assert 'ruff' in requirements and len(pins) == 1


# ------------------------------------------------------------------------------------------ LICENSE and NOTICE
def test_license_and_notice():
    license_text = open(osp.join(ROOT, 'LICENSE')).read()
    assert 'Apache License' in license_text and 'Version 2.0, January 2004' in license_text
    assert 'TERMS AND CONDITIONS FOR USE, REPRODUCTION, AND DISTRIBUTION' in license_text
    assert 'END OF TERMS AND CONDITIONS' in license_text  # the full text, not a pointer to it
    notice = open(osp.join(ROOT, 'NOTICE')).read()
    for credit in ('microsoft/Cream', 'MIT License', 'Microsoft Corporation', 'mit-han-lab/efficientvit',
                   'Apache License, Version 2.0', 'MIT Han Lab'):
        assert credit in notice, credit
    setup_py = open(osp.join(ROOT, 'setup.py')).read()
    assert "license='Apache-2.0'" in setup_py and "license_files=['LICENSE', 'NOTICE']" in setup_py
    manifest = open(osp.join(ROOT, 'MANIFEST.in')).read().split()
    assert {'LICENSE', 'NOTICE', 'pyproject.toml'} <= set(manifest)


# ------------------------------------------------------------------------------------------ test modules
def _imports(path):
    for node in ast.walk(ast.parse(open(path).read(), path)):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            yield node.module


def test_no_test_imports_another_test_module():
    offenders = [(osp.basename(path), name) for path in TEST_FILES for name in _imports(path)
                 if name.split('.')[0] == 'test' or name.split('.')[0].startswith('test_')]
    assert not offenders, f'import shared helpers from conftest instead: {offenders}'


def test_no_test_puts_tools_on_sys_path():
    """``import test`` with tools/ on sys.path gets tools/test.py, or the standard library's ``test`` when that was
    imported first; and tools/ left there shadows ``test`` for the rest of the session. conftest.load_tool."""
    offenders = []
    for path in TEST_FILES:
        for node in ast.walk(ast.parse(open(path).read(), path)):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                    and node.func.attr in ('insert', 'append') and ast.unparse(node.func.value) == 'sys.path'):
                offenders.append(f'{osp.basename(path)}:{node.lineno}')
    assert not offenders


def test_one_randomizer():
    copies = [f'{osp.basename(path)}:{node.name}' for path in TEST_FILES
              for node in ast.walk(ast.parse(open(path).read(), path))
              if isinstance(node, ast.FunctionDef) and re.match(r'_?randomi[sz]e', node.name)]
    assert not copies, f'use conftest.randomize_ (the `randomize` fixture): {copies}'


# ------------------------------------------------------------------------------------------ load_tool
def test_load_tool_leaves_sys_path_and_the_stdlib_test_package_alone():
    before = list(sys.path)
    # tools/test.py itself, and a tool that puts tools/ on sys.path when it is imported
    test_tool = load_tool('test')
    cache_tool = load_tool('sam_cache_teacher_embeddings')
    assert sys.path == before and TOOLS not in [osp.abspath(p) for p in sys.path if p]
    assert test_tool.__name__ == 'evit_mm_tools_test' and callable(test_tool.main)
    assert osp.samefile(test_tool.__file__, osp.join(TOOLS, 'test.py')) and callable(cache_tool.main)
    assert 'test' not in sys.modules or not sys.modules['test'].__file__.startswith(TOOLS)
    spec = importlib.util.find_spec('test')  # the standard library's package
    assert spec is not None and not spec.origin.startswith(TOOLS) and spec.submodule_search_locations
    # the helper the tools import by name is one module, shared with the tools
    assert load_tool('_runner_utils') is sys.modules['_runner_utils'] is sys.modules[test_tool.build_runner.__module__]


def test_load_tool_names_a_missing_tool():
    with pytest.raises(FileNotFoundError, match='no_such_tool.py'):
        load_tool('no_such_tool')
    assert 'evit_mm_tools_no_such_tool' not in sys.modules


# ------------------------------------------------------------------------------------------ randomize_
class _Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.bn = nn.BatchNorm2d(4)
        self.ln = nn.LayerNorm(4)
        self.fc = nn.Linear(4, 2)
        self.attention_biases = nn.Parameter(torch.zeros(2, 5))
        self.register_buffer('table', torch.zeros(3, 3))
        self.register_buffer('index', torch.arange(4))


def _changed(before, model):
    after = model.state_dict()
    return {k for k in before if not torch.equal(before[k], after[k])}


@pytest.mark.parametrize('what, attention_biases, expected', [
    ('batchnorm', False, {'bn.running_mean', 'bn.running_var'}),
    ('modules', False, {'conv.weight', 'conv.bias', 'bn.weight', 'bn.bias', 'bn.running_mean', 'bn.running_var',
                        'ln.weight', 'ln.bias', 'fc.weight', 'fc.bias'}),
    ('modules', True, {'conv.weight', 'conv.bias', 'bn.weight', 'bn.bias', 'bn.running_mean', 'bn.running_var',
                       'ln.weight', 'ln.bias', 'fc.weight', 'fc.bias', 'attention_biases'}),
    ('state_dict', False, {'conv.weight', 'conv.bias', 'bn.weight', 'bn.bias', 'bn.running_mean', 'bn.running_var',
                           'ln.weight', 'ln.bias', 'fc.weight', 'fc.bias', 'attention_biases', 'table'}),
])
def test_randomize_fills_what_it_says(what, attention_biases, expected):
    model = _Tiny()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    assert randomize_(model, 3, what, attention_biases=attention_biases) is model
    assert _changed(before, model) == expected  # integer buffers (indices) are never touched
    twin = randomize_(_Tiny(), 3, what, attention_biases=attention_biases)
    assert all(torch.equal(model.state_dict()[k], twin.state_dict()[k]) for k in expected)  # deterministic
    other = randomize_(_Tiny(), 4, what, attention_biases=attention_biases)
    assert all(not torch.equal(model.state_dict()[k], other.state_dict()[k]) for k in expected)  # the seed matters


def test_randomize_bn_weights_and_bad_mode(randomize):
    model = _Tiny()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    randomize(model, what='batchnorm', bn_weights=True)
    assert _changed(before, model) == {'bn.weight', 'bn.running_mean', 'bn.running_var'}
    assert (model.bn.running_var >= 0.5).all() and (model.bn.weight >= 0.75).all()
    with pytest.raises(ValueError, match="'weights'"):
        randomize(model, what='weights')


def test_the_tests_mirror_the_package():
    """tests/test_<name>/ holds the tests of evit_mm/<name>/ (tests/test_tools/: tools/); a test file at the top
    of tests/ is about the project as a whole (docs, packaging, the environment, these habits)."""
    folders = sorted({osp.relpath(osp.dirname(path), osp.join(ROOT, 'tests')) for path in TEST_FILES} - {'.'})
    assert folders, 'no test folders found'
    homeless = []
    for folder in folders:
        parts = [part[len('test_'):] for part in folder.split(os.sep)]
        home = osp.join(ROOT, *parts) if parts[0] == 'tools' else osp.join(ROOT, 'evit_mm', *parts)
        if not all(p for p in parts) or not osp.isdir(home):
            homeless.append(folder)
    assert not homeless, f'test folders without a package folder of that name: {homeless}'
