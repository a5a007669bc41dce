"""What ``setup.py`` installs: every third-party import of evit_mm declared, each adapter's extra covering its
imports, and the configs and tools in ``.mim`` where mim finds them (sdist, wheel and editable installs)."""
import ast
import os
import os.path as osp
import re
import subprocess
import sys
import tarfile
import zipfile

import pytest
from conftest import ROOT


def setup_kwargs(monkeypatch):
    """The keyword arguments setup.py gives ``setuptools.setup`` (setup.py run with ``setup`` captured)."""
    import runpy

    import setuptools
    captured = {}
    monkeypatch.setattr(setuptools, 'setup', lambda **kwargs: captured.update(kwargs))
    monkeypatch.chdir(ROOT)
    runpy.run_path(osp.join(ROOT, 'setup.py'), run_name='__main__')
    return captured


def _dist_name(name):
    return re.sub(r'[-_.]+', '-', name).lower()


def _declared(requirements):
    from packaging.requirements import Requirement
    return {_dist_name(Requirement(r).name) for r in requirements}


def _module_name(path):
    rel = osp.relpath(path, ROOT)[:-3].replace(os.sep, '.')
    return rel[:-len('.__init__')] if rel.endswith('.__init__') else rel


def _imports(path, module_level_only):
    """``(absolute module names, is_internal)`` imported by the file at ``path``; with ``module_level_only``, only
    the imports that run when the module is imported (not those inside functions or ``if TYPE_CHECKING``)."""
    name = _module_name(path)
    package = name if path.endswith('__init__.py') else name.rpartition('.')[0]
    found = []

    def visit(nodes):
        for node in nodes:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)) and module_level_only:
                continue
            if isinstance(node, ast.If) and module_level_only and 'TYPE_CHECKING' in ast.unparse(node.test):
                visit(node.orelse)
                continue
            if isinstance(node, ast.Import):
                found.extend(a.name for a in node.names)
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split('.')
                    base = '.'.join(base[:len(base) - node.level + 1] + ([node.module] if node.module else []))
                    found.extend([base] + [f'{base}.{a.name}' for a in node.names])
                elif node.module != '__future__':
                    found.append(node.module)
            visit(ast.iter_child_nodes(node))

    visit(ast.parse(open(path).read()).body)
    return found


def _module_path(name):
    base = osp.join(ROOT, *name.split('.'))
    for path in (base + '.py', osp.join(base, '__init__.py')):
        if osp.isfile(path):
            return path
    return None


def _third_party(names):
    return {n.split('.')[0] for n in names if n.split('.')[0] not in sys.stdlib_module_names
            and n.split('.')[0] != 'evit_mm'}


def _providers(modules):
    """``{module: names of the installed distributions that provide it}`` (cv2: opencv-python or -headless)."""
    from importlib.metadata import packages_distributions
    mapping = packages_distributions()
    missing = [m for m in modules if m not in mapping]
    assert not missing, f'no installed distribution provides {missing}'
    return {m: {_dist_name(d) for d in mapping[m]} for m in modules}


def _undeclared(providers, declared):
    return sorted(m for m, dists in providers.items() if not dists & declared)


def import_time_closure(module):
    """Third-party top-level modules that ``import module`` imports through evit_mm's own module-level imports."""
    seen, todo, external = set(), [module], set()
    while todo:
        name = todo.pop()
        parts = name.split('.')
        for i in range(1, len(parts) + 1):  # importing a.b.c runs a/__init__, a/b/__init__ too
            sub = '.'.join(parts[:i])
            path = _module_path(sub)
            if path is None or sub in seen:
                continue
            seen.add(sub)
            names = _imports(path, module_level_only=True)
            external |= _third_party(names)
            todo.extend(n for n in names if n.split('.')[0] == 'evit_mm')
    return external


def test_setup_declares_every_third_party_import_of_evit_mm(monkeypatch):
    """Every distribution evit_mm's code imports (at import time or lazily, anywhere in the package) is in
    install_requires or an extra, and 'all' has every extra's requirements."""
    kwargs = setup_kwargs(monkeypatch)
    extras = kwargs['extras_require']
    declared = _declared(kwargs['install_requires']) | {d for reqs in extras.values() for d in _declared(reqs)}
    modules = set()
    for dirpath, _, files in os.walk(osp.join(ROOT, 'evit_mm')):
        if '.mim' in dirpath.split(os.sep):
            continue
        for f in files:
            if f.endswith('.py'):
                modules |= _third_party(_imports(osp.join(dirpath, f), module_level_only=False))
    providers = _providers(modules)
    assert {'torch', 'numpy', 'segment_anything', 'mmdet', 'PIL', 'scipy'} <= set(providers)  # the scan sees them
    assert not _undeclared(providers, declared), f'imported but not declared: {_undeclared(providers, declared)}'
    assert _declared(extras['all']) == {d for name, reqs in extras.items() if name != 'all' for d in _declared(reqs)}


@pytest.mark.parametrize('adapter', ['mmdet', 'mmseg', 'mmagic'])
def test_each_adapter_extra_covers_what_the_adapter_imports(monkeypatch, adapter):
    """``pip install evit_mm[mmdet]`` gives everything ``import evit_mm.mmdet`` needs (segment-anything included:
    the mmdet and mmseg adapters register EfficientViT-SAM's encoder); likewise for mmseg and mmagic."""
    kwargs = setup_kwargs(monkeypatch)
    providers = _providers(import_time_closure(f'evit_mm.{adapter}'))
    declared = _declared(kwargs['install_requires']) | _declared(kwargs['extras_require'][adapter])
    assert {adapter, 'mmengine', 'torch'} <= set(providers)
    assert not _undeclared(providers, declared), \
        f'evit_mm.{adapter} imports undeclared {_undeclared(providers, declared)}'
    if adapter in ('mmdet', 'mmseg'):
        assert 'segment_anything' in providers


def _source_copy(tmp_path):
    """The files an evit_mm sdist is made from, copied (the repository is left untouched)."""
    import shutil
    src = tmp_path / 'src'
    src.mkdir()
    ignore = shutil.ignore_patterns('__pycache__', '*.pyc', '.mim', '*.egg-info')
    for name in ('setup.py', 'pyproject.toml', 'README.md', 'MANIFEST.in', 'LICENSE', 'NOTICE', 'model-index.yml'):
        shutil.copy(osp.join(ROOT, name), src / name)
    for name in ('evit_mm', 'configs', 'tools', 'docs'):
        shutil.copytree(osp.join(ROOT, name), src / name, ignore=ignore)
    return src


def _run(cmd, cwd, env=None):
    proc = subprocess.run(cmd, cwd=str(cwd), capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, ' '.join(map(str, cmd)) + '\n' + proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


@pytest.mark.slow
def test_sdist_and_wheel_install_configs_and_tools_where_mim_finds_them(tmp_path):
    """sdist -> wheel (pip) -> installed package: ``evit_mm/.mim/configs`` and ``.mim/tools`` are copies of the
    repository's; mim's own lookup (get_installed_path + recursively_find, what ``mim train evit_mm <config>``
    does) finds a config by name, and the installed tools/train.py runs from there."""
    src = _source_copy(tmp_path)
    _run([sys.executable, 'setup.py', '-q', 'sdist', '-d', str(tmp_path / 'dist')], src)
    sdist = next((tmp_path / 'dist').iterdir())
    _run([sys.executable, '-m', 'pip', 'wheel', '-q', '--no-deps', '--no-build-isolation', '-w',
          str(tmp_path / 'wheel'), str(sdist)], tmp_path)
    wheel = next((tmp_path / 'wheel').glob('evit_mm-*.whl'))
    names = zipfile.ZipFile(wheel).namelist()
    for top in ('configs', 'tools'):
        expected = sorted(osp.relpath(osp.join(d, f), ROOT).replace(os.sep, '/') for d, _, fs in
                          os.walk(osp.join(ROOT, top)) if '__pycache__' not in d for f in fs if not f.endswith('.pyc'))
        assert sorted(n[len('evit_mm/.mim/'):] for n in names if n.startswith(f'evit_mm/.mim/{top}/')) == expected
    metadata = zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith('METADATA'))).decode()
    assert re.search(r'Requires-Dist: segment-anything>=1\.0; extra == "mmdet"', metadata)
    assert {'License-File: LICENSE', 'License-File: NOTICE'} <= set(metadata.splitlines())
    assert {'LICENSE', 'NOTICE'} <= {n.rsplit('/', 1)[-1] for n in names if '.dist-info/' in n}
    assert {'LICENSE', 'NOTICE', 'pyproject.toml'} <= {n.split('/', 1)[-1] for n in tarfile.open(sdist).getnames()}
    site = tmp_path / 'site'
    zipfile.ZipFile(wheel).extractall(site)  # what pip install --target does with a pure-Python wheel
    code = """
import os.path as osp, subprocess, sys
import evit_mm
from mim.utils import get_installed_path, recursively_find
root = get_installed_path('evit_mm')
assert root == osp.dirname(evit_mm.__file__), (root, evit_mm.__file__)
found = recursively_find(root, 'retinanet_efficientvit-m0_fpn_1x_coco.py', followlinks=True)
assert found == [osp.join(root, '.mim', 'configs', 'efficientvit_m', 'retinanet_efficientvit-m0_fpn_1x_coco.py')], found
train = osp.join(root, '.mim', 'tools', 'train.py')
out = subprocess.run([sys.executable, train, '--help'], capture_output=True, text=True)
assert out.returncode == 0 and '--work-dir' in out.stdout, out.stderr[-2000:]
print('OK', root)
"""
    env = dict(os.environ, PYTHONPATH=str(site))
    out = _run([sys.executable, '-c', code], tmp_path, env=env)
    assert f'OK {site / "evit_mm"}' in out.stdout


def test_editable_install_links_mim_to_the_source_tree(tmp_path):
    """``pip install -e`` (PEP 660) makes ``evit_mm/.mim/configs`` and ``tools`` symlinks into the source tree, so
    edited configs are what mim sees; the repository's .gitignore keeps the generated folder out of git.
    The editable wheel is built with setuptools' PEP 660 hook, as pip does, but not installed: a pip install, even
    with --prefix, would first uninstall the evit_mm of the running environment."""
    src = _source_copy(tmp_path)
    build = "import setuptools.build_meta as b, sys; print(b.build_editable(sys.argv[1]))"
    out = _run([sys.executable, '-c', build, str(tmp_path / 'editable')], src)
    wheel = zipfile.ZipFile(tmp_path / 'editable' / out.stdout.strip().splitlines()[-1])
    finder = next(n for n in wheel.namelist() if n.endswith('_finder.py'))
    assert repr(str(src / 'evit_mm')) in wheel.read(finder).decode()  # the package is the source tree
    for top in ('configs', 'tools'):
        link = src / 'evit_mm' / '.mim' / top
        assert link.is_symlink() and link.resolve() == (src / top).resolve()
    assert (src / 'evit_mm' / '.mim' / 'configs' / 'efficientvit_sr').is_dir()
    ignored = subprocess.run(['git', 'check-ignore', '-q', 'evit_mm/.mim/configs'], cwd=ROOT)
    assert ignored.returncode == 0, 'evit_mm/.mim is not in .gitignore'
