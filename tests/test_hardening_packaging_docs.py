"""Hardening of the docs and the packaging, as a new user meets them: the README's backbone-swap snippet and the
stride check that catches a neck whose strides miss the anchors', the custom-data recipe, the SR configs on the
sample data (and their work dir), and what ``setup.py`` installs (dependencies, configs and tools in ``.mim``)."""
import ast
import os
import os.path as osp
import re
import subprocess
import sys
import tarfile
import warnings
import zipfile

import pytest

from conftest import ROOT, load_tool

README = osp.join(ROOT, 'README.md')


def python_block_after(path, heading):
    """The first ```python block after ``heading`` in the markdown file ``path``."""
    text = open(path).read()
    start = text.index(heading)
    return re.search(r'```python\n(.*?)```', text[start:], re.S).group(1)


def _build_detector(cfg_text, tmp_path, name='snippet.py'):
    from mmdet.registry import MODELS
    from mmengine.config import Config
    from mmengine.registry import init_default_scope
    path = tmp_path / name
    path.write_text(cfg_text)
    cfg = Config.fromfile(str(path))
    init_default_scope('mmdet')
    return cfg, MODELS.build(cfg.model)


def _stride_warnings(model):
    from evit_mm.mmdet import PyramidStrideWarning, check_pyramid_strides
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always')
        problems = check_pyramid_strides(model)
    return problems, [str(w.message) for w in caught if issubclass(w.category, PyramidStrideWarning)]


# ----------------------------------------------------------------------------------------------------------------
# item 9: the README's backbone swap, and the stride check
# ----------------------------------------------------------------------------------------------------------------

def readme_swap_snippet():
    return python_block_after(README, '## Using an EfficientViT backbone in your own mm config')


def with_stock_neck(snippet):
    """The snippet with the base config's FPN kept, only its input channels changed (the README's old advice)."""
    stock = re.sub(r"neck=dict\(.*?\)\)\n", "neck=dict(in_channels=[128, 256, 384]))\n", snippet, flags=re.S)
    assert stock != snippet and 'EfficientViTFPN' not in stock
    return stock


def test_readme_swap_snippet_builds_a_retinanet_whose_strides_match(tmp_path):
    """The snippet as printed in the README: a RetinaNet with EfficientViT-M4 whose pyramid (8..128) is where the
    anchors are, so the check is silent; the detector really has the EfficientViT backbone and neck."""
    import torch
    snippet = readme_swap_snippet()
    assert "_base_ = 'mmdet::retinanet/" in snippet and 'PyramidStrideCheckHook' in snippet
    cfg, model = _build_detector(snippet, tmp_path)
    assert type(model).__name__ == 'RetinaNet'
    assert type(model.backbone).__name__ == 'EfficientViTM' and type(model.neck).__name__ == 'EfficientViTFPN'
    from evit_mm.mmdet.stride_check import head_strides, neck_strides
    assert head_strides(model) == {'bbox_head.prior_generator': ([8, 16, 32, 64, 128], True)}
    assert neck_strides(model) == [8, 16, 32, 64, 128]
    assert _stride_warnings(model) == ([], [])
    # the check leaves the model as it was: every module's mode (one BN frozen by hand) and the BN statistics
    model.train()
    bn = next(m for m in model.backbone.modules() if isinstance(m, torch.nn.BatchNorm2d))
    bn.eval()
    modes, before = [m.training for m in model.modules()], bn.running_mean.clone()
    assert _stride_warnings(model) == ([], [])
    assert [m.training for m in model.modules()] == modes and not bn.training and model.backbone.training
    assert torch.equal(bn.running_mean, before)


def test_stock_fpn_start_level_warns_with_both_stride_lists(tmp_path):
    """The README's old snippet kept the base FPN (start_level=1, 2 backbone levels + 3 extra convs): strides 32 to
    512 against anchors at 8 to 128. The check names both lists."""
    _, model = _build_detector(with_stock_neck(readme_swap_snippet()), tmp_path, 'stock.py')
    problems, messages = _stride_warnings(model)
    assert problems and len(messages) == 1
    assert '[8, 16, 32, 64, 128]' in messages[0] and '[32, 64, 128, 256, 512]' in messages[0]
    assert 'backbone strides [16, 32, 64]' in messages[0]


def test_hook_in_the_readme_config_warns_through_the_runner(tmp_path):
    """``custom_hooks`` of the snippet registers PyramidStrideCheckHook in a real Runner; its before_run warns for
    the stock neck, stays silent for the README's, and raises with strict=True."""
    from mmengine.config import Config
    from mmengine.runner import Runner

    from evit_mm.mmdet import PyramidStrideCheckHook, PyramidStrideWarning
    snippet = readme_swap_snippet()
    for name, text, bad in (('good.py', snippet, False), ('stock.py', with_stock_neck(snippet), True)):
        path = tmp_path / name
        path.write_text(text)
        cfg = Config.fromfile(str(path))
        cfg.work_dir = str(tmp_path / ('work_' + name))
        runner = Runner.from_cfg(cfg)
        assert any(type(h).__name__ == 'PyramidStrideCheckHook' for h in runner.hooks)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter('always')
            runner.call_hook('before_run')
        found = [w for w in caught if issubclass(w.category, PyramidStrideWarning)]
        assert bool(found) == bad, name
    hook = PyramidStrideCheckHook(strict=True)
    with pytest.raises(ValueError, match=r'\[32, 64, 128, 256, 512\]'):
        hook.before_run(runner)


def test_docs_swap_snippets_and_shipped_configs_have_matching_strides(tmp_path):
    """docs/efficientvit_m.md's three snippets (EfficientViTFPN for RetinaNet and Mask R-CNN, the standard FPN with
    moved anchor strides), docs/efficientvit_seg.md's RetinaNet + B1 and the shipped detection configs pass the
    check; a two-stage detector with a RetinaNet-style neck (8..128) is caught through the RPN's and the RoI
    extractors' strides."""
    doc = open(osp.join(ROOT, 'docs', 'efficientvit_m.md')).read()
    section = doc[doc.index('## Swapping the backbone into any mmdet config'):doc.index('## Training and testing')]
    blocks = re.findall(r'```python\n(.*?)```', section, re.S)
    assert len(blocks) == 3
    header = "_base_ = 'mmdet::retinanet/retinanet_r50_fpn_1x_coco.py'\n" \
             "custom_imports = dict(imports=['evit_mm.mmdet'], allow_failed_imports=False)\n"
    for i, block in enumerate(blocks):
        _, model = _build_detector(block if '_base_' in block else header + block, tmp_path, f'doc{i}.py')
        assert _stride_warnings(model) == ([], []), i
    for config in ('retinanet_efficientvit-m4_fpn_1x_coco.py', 'mask-rcnn_efficientvit-m4_fpn_1x_coco.py'):
        cfg, model = _build_detector(open(osp.join(ROOT, 'configs', 'efficientvit_m', config)).read(), tmp_path, config)
        assert cfg.custom_hooks == [dict(type='PyramidStrideCheckHook')]
        assert _stride_warnings(model) == ([], []), config
    seg = python_block_after(osp.join(ROOT, 'docs', 'efficientvit_seg.md'), 'RetinaNet (mmdet) with EfficientViT-B1')
    _, model = _build_detector(seg, tmp_path, 'seg_doc.py')
    assert type(model.backbone).__name__ == 'EfficientViTB' and _stride_warnings(model) == ([], [])
    wrong = blocks[1].replace('num_extra_trans_convs=2', 'num_extra_trans_convs=1')
    _, model = _build_detector(wrong, tmp_path, 'wrong_two_stage.py')
    problems, messages = _stride_warnings(model)
    assert {p.split(' ')[0] for p in problems} == {'rpn_head.prior_generator', 'roi_head.bbox_roi_extractor',
                                                   'roi_head.mask_roi_extractor'}
    assert '[4, 8, 16, 32, 64]' in messages[0] and '[8, 16, 32, 64, 128]' in messages[0]


def test_stride_check_finds_the_detector_inside_box_prompted_sam(tmp_path):
    """BoxPromptedSAM (whose config inherits the hook from the quick-start detector) is checked through its
    ``detector``; a model without a neck is left alone."""
    from mmdet.registry import MODELS
    from mmengine.config import Config
    from mmengine.registry import init_default_scope

    from evit_mm.mmdet.stride_check import head_strides
    cfg = Config.fromfile(osp.join(ROOT, 'configs', 'efficientvit_sam',
                                   'box-prompted-sam-l0_retinanet-efficientvit-m0_coins.py'))
    assert cfg.custom_hooks == [dict(type='PyramidStrideCheckHook')]
    init_default_scope('mmdet')
    model = MODELS.build(cfg.model)
    assert head_strides(model.detector) == {'bbox_head.prior_generator': ([8, 16, 32, 64, 128], True)}
    assert _stride_warnings(model) == ([], [])
    cfg.model.detector.neck.num_extra_trans_convs = 0  # no stride-8 level: 16..256
    problems, messages = _stride_warnings(MODELS.build(cfg.model))
    assert problems and '[16, 32, 64, 128, 256]' in messages[0]
    assert _stride_warnings(model.detector.backbone) == ([], [])


# ----------------------------------------------------------------------------------------------------------------
# item 9: custom data (metainfo / num_classes)
# ----------------------------------------------------------------------------------------------------------------

def _custom_data_config(tmp_path, coins, snippet):
    base = osp.join(ROOT, 'configs', 'efficientvit_m', 'retinanet_efficientvit-m0_fpn_1x_coco.py')
    text = f'_base_ = [{base!r}]\n' + snippet
    text = re.sub(r"data_root = '[^']*'", f"data_root = {osp.join(coins['root'], '')!r}", text)
    path = tmp_path / 'custom.py'
    path.write_text(text)
    from mmengine.config import Config
    return Config.fromfile(str(path))


def test_readme_custom_data_recipe_loads_a_non_coco_dataset(tmp_path, coins_coco):
    """The README's recipe, with the coins dataset's class name: the training set keeps its annotations and the
    head has one class. Without the metainfo override the same files give an empty training set, whose build
    fails with the error the README quotes."""
    from mmdet.registry import DATASETS, MODELS
    from mmengine.registry import init_default_scope
    snippet = python_block_after(README, '## Your own COCO-format dataset')
    assert "metainfo = dict(classes=('cat', 'dog'))" in snippet
    init_default_scope('mmdet')
    cfg = _custom_data_config(tmp_path, coins_coco, snippet.replace("('cat', 'dog')", "('coin', )"))
    dataset = DATASETS.build(cfg.train_dataloader.dataset)
    assert dataset.metainfo['classes'] == ('coin', ) and len(dataset) == 4
    assert sum(len(dataset.get_data_info(i)['instances']) for i in range(len(dataset))) > 0
    assert cfg.val_evaluator.ann_file == coins_coco['val_ann']
    assert DATASETS.build(cfg.val_dataloader.dataset).metainfo['classes'] == ('coin', )
    assert MODELS.build(cfg.model).bbox_head.num_classes == 1
    no_metainfo = _custom_data_config(tmp_path, coins_coco, snippet.replace(
        'dict(data_root=data_root, metainfo=metainfo)', 'dict(data_root=data_root)'))
    quoted = re.search(r'`ValueError: ([^`]*)`', open(README).read().replace('\n', ' ')).group(1)
    with pytest.raises(ValueError, match=quoted):
        DATASETS.build(no_metainfo.train_dataloader.dataset)


# ----------------------------------------------------------------------------------------------------------------
# item 9: the SR configs on the sample data, and their work dir
# ----------------------------------------------------------------------------------------------------------------

SR_DIR = osp.join(ROOT, 'configs', 'efficientvit_sr')


@pytest.fixture(scope='module')
def sr_config_data(tmp_path_factory):
    """``make_sr_config_data`` under ``<tmp>/data``, the layout the SR configs read relative to the cwd."""
    from evit_mm.sample_data.sr import make_sr_config_data
    cwd = tmp_path_factory.mktemp('sr_cwd')
    make_sr_config_data(str(cwd / 'data'))
    return cwd


@pytest.mark.slow
def test_every_sr_config_reads_its_training_patches_from_the_sample_data(sr_config_data, monkeypatch):
    """Each shipped SR config, unchanged, loads a training sample through its own pipeline (PairedRandomCrop at the
    recipe's patch size: the failure was 'LQ (48, 48) is smaller than patch size (64, 64)') and a validation
    image of every set."""
    from mmagic.registry import DATASETS
    from mmengine.config import Config
    from mmengine.registry import init_default_scope
    import evit_mm.mmagic  # noqa: F401
    monkeypatch.chdir(sr_config_data)
    init_default_scope('mmagic')
    for name in sorted(os.listdir(SR_DIR)):
        cfg = Config.fromfile(osp.join(SR_DIR, name))
        scale = cfg.model.generator.scale
        patch = [t for t in cfg.train_dataloader.dataset.pipeline if t.type == 'PairedRandomCrop'][0].gt_patch_size
        sample = DATASETS.build(cfg.train_dataloader.dataset)[0]
        assert tuple(sample['inputs'].shape[-2:]) == (patch // scale, patch // scale), name
        assert tuple(sample['data_samples'].gt_img.shape[-2:]) == (patch, patch), name
        for loader in cfg.val_dataloader if isinstance(cfg.val_dataloader, list) else [cfg.val_dataloader]:
            dataset = DATASETS.build(loader.dataset)
            assert len(dataset) == 2 and dataset[0]['inputs'].shape[-1] * scale == \
                dataset[0]['data_samples'].gt_img.shape[-1], (name, loader.dataset.data_root)


@pytest.mark.slow
def test_sr_config_trains_on_the_sample_data_into_the_given_work_dir(sr_config_data, tmp_path, monkeypatch):
    """``tools/train.py CONFIG --work-dir W`` from the directory holding the sample ``data/``: it trains and
    validates, and every file goes under W (mmagic's base sends checkpoints to ./work_dirs/<basename of W>)."""
    train_tool = load_tool('train')
    monkeypatch.chdir(sr_config_data)
    name = 'efficientvit-sr-lightweight-w1.0_x2_8xb4-500k_div2k.py'
    work = tmp_path / 'run'
    loaders = [f'val_dataloader.{i}.num_workers=0' for i in range(3)]
    train_tool.main([osp.join(SR_DIR, name), '--work-dir', str(work), '--cfg-options', 'train_cfg.max_iters=1',
                     'train_cfg.val_interval=1', 'default_hooks.checkpoint.interval=1', 'train_dataloader.batch_size=2',
                     'train_dataloader.num_workers=0', 'train_dataloader.persistent_workers=False', *loaders])
    assert (work / 'iter_1.pth').is_file() and (work / 'best_BSD100_PSNR_iter_1.pth').is_file()
    assert not (sr_config_data / 'work_dirs').exists(), os.listdir(sr_config_data / 'work_dirs')


def test_sr_configs_send_checkpoints_to_the_work_dir():
    """mmagic's default runtime sets ``CheckpointHook.out_dir='./work_dirs'``; every SR config resets it, so that
    checkpoints follow ``work_dir`` (``--work-dir``)."""
    from mmengine.config import Config
    for name in sorted(os.listdir(SR_DIR)):
        cfg = Config.fromfile(osp.join(SR_DIR, name))
        assert cfg.default_hooks.checkpoint.get('out_dir') is None, name
        assert 'work_dirs' not in repr(cfg.get('visualizer')) + repr(cfg.get('custom_hooks')), name


# ----------------------------------------------------------------------------------------------------------------
# item 10: packaging: dependencies, configs and tools in evit_mm/.mim
# ----------------------------------------------------------------------------------------------------------------

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
