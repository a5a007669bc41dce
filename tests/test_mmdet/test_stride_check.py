"""evit_mm.mmdet.stride_check, as a new user meets it: the README's backbone-swap snippet and the docs' snippets
build detectors whose neck strides match the anchors', a stock FPN that misses them warns with both stride lists
(also through the Runner's hook and inside BoxPromptedSAM), and the README's custom-data recipe loads a non-COCO
dataset."""
import os.path as osp
import re
import warnings

import pytest
from conftest import ROOT

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
