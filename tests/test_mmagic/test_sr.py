"""EfficientViT-SR: the network (shapes, any input size, width variants, BN-free blocks, bicubic start), the mmagic
adapter, every config building and training 2 iterations + validating on tiny DIV2K / BSD100 / Set5 / Set14 / FFHQ
sets in mmagic's real layouts (built from real photographs), ``mim train mmagic``, and the sample-data layouts.
The short training that must beat bicubic is in tests/test_mmagic/test_sr_beats_bicubic.py."""
import glob
import os
import os.path as osp
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import ROOT, load_tool, run_python, train_two_iterations

CONFIG_DIR = osp.join(ROOT, 'configs', 'efficientvit_sr')
TOOLS = osp.join(ROOT, 'tools')
LIGHT = {f'efficientvit-sr-lightweight-w{w}_x{s}_8xb4-500k_div2k.py': (s, w)
         for s, w in ((2, '1.0'), (2, '0.75'), (3, '1.0'), (4, '1.0'))}
HIGHRES = {f'efficientvit-sr-highres-w{w}_x2_8xb4-100k_ffhq-512.py': (2, w) for w in ('1.0', '0.75')}


# ----------------------------------------------------------------------------------------------------------------
# the network
# ----------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize('scale', [2, 3, 4])
@pytest.mark.parametrize('size', [(24, 36), (13, 21), (5, 7)])  # odd sizes: padded to the working stride inside
def test_output_shape_any_size(scale, size):
    from evit_mm.models import EfficientViTSR
    torch.manual_seed(0)
    model = EfficientViTSR(scale, channels=16, width=32, depth=1, dim=8).eval()
    x = torch.rand(2, 3, *size)
    with torch.no_grad():
        y = model(x)
    assert y.shape == (2, 3, size[0] * scale, size[1] * scale)
    assert torch.isfinite(y).all()


def test_highres_preset_stride4_and_presets():
    from evit_mm.models import SR_PRESETS, efficientvit_sr_highres, efficientvit_sr_lightweight
    light, high = efficientvit_sr_lightweight(2), efficientvit_sr_highres(2)
    assert (light.down, high.down) == (SR_PRESETS['lightweight']['down'], SR_PRESETS['highres']['down']) == (2, 4)
    with torch.no_grad():
        assert high.eval()(torch.rand(1, 3, 30, 22)).shape == (1, 3, 60, 44)  # 30x22 is not a multiple of 4
    # the working resolution is where the blocks run: 1/down of the input
    seen = []
    hook = high.body.register_forward_hook(lambda m, i, o: seen.append(o.shape))
    with torch.no_grad():
        high(torch.rand(1, 3, 32, 48))
    hook.remove()
    assert seen == [torch.Size([1, high.width, 8, 12])]


def test_width_multiplier_scales_channels():
    from evit_mm.models import efficientvit_sr_lightweight
    full, slim = efficientvit_sr_lightweight(2), efficientvit_sr_lightweight(2, width_mult=0.75)
    assert (full.channels, full.width) == (48, 128)
    assert (slim.channels, slim.width) == (40, 96)  # 36 -> nearest multiple of 8, 96 exactly
    n_full = sum(p.numel() for p in full.parameters())
    n_slim = sum(p.numel() for p in slim.parameters())
    assert 0.4 < n_slim / n_full < 0.7  # parameters scale roughly with width^2


def test_blocks_are_efficientvit_modules_without_batchnorm():
    from evit_mm.models import EfficientViTSR
    from evit_mm.models.efficientvit_mit import EfficientViTBlock, LiteMLA, MBConv
    model = EfficientViTSR(2, channels=16, width=32, depth=2, dim=8)
    assert all(isinstance(b, EfficientViTBlock) for b in model.body)
    assert sum(isinstance(m, LiteMLA) for m in model.modules()) == 2
    assert sum(isinstance(m, MBConv) for m in model.modules()) == 2
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
    bn = EfficientViTSR(2, channels=16, width=32, depth=2, dim=8, norm='bn')
    assert sum(isinstance(m, torch.nn.BatchNorm2d) for m in bn.modules()) == 4  # LiteMLA proj + MBConv point conv
    # without BN, the convs that lost it carry a bias instead
    assert model.body[0].context_module.main.proj.conv.bias is not None


def test_global_residual_is_bicubic():
    """With the upsampler's last conv zeroed, the network is exactly bicubic upsampling."""
    import torch.nn.functional as F

    from evit_mm.models import EfficientViTSR
    model = EfficientViTSR(3, channels=16, width=32, depth=1, dim=8).eval()
    torch.nn.init.zeros_(model.upsampler[0].weight)
    torch.nn.init.zeros_(model.upsampler[0].bias)
    x = torch.rand(1, 3, 10, 14)
    with torch.no_grad():
        torch.testing.assert_close(model(x), F.interpolate(x, scale_factor=3, mode='bicubic', align_corners=False))


def test_bad_arguments_have_clear_errors():
    from evit_mm.models import EfficientViTSR
    with pytest.raises(ValueError, match='scale'):
        EfficientViTSR(scale=1.5)
    with pytest.raises(ValueError, match='norm'):
        EfficientViTSR(norm='ln')
    with pytest.raises(ValueError, match='N,3,H,W'):
        EfficientViTSR(channels=16, width=32, depth=1, dim=8)(torch.rand(1, 1, 8, 8))


def test_gradients_reach_every_parameter():
    from evit_mm.models import EfficientViTSR
    torch.manual_seed(0)
    model = EfficientViTSR(2, channels=16, width=32, depth=2, dim=8)
    model(torch.rand(2, 3, 16, 16)).mean().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing


# ----------------------------------------------------------------------------------------------------------------
# the mmagic adapter
# ----------------------------------------------------------------------------------------------------------------

def test_adapter_imports_neither_mmdet_nor_mmseg():
    proc = run_python('import sys, evit_mm.mmagic\n'
                      'from mmagic.registry import MODELS\n'
                      'assert MODELS.get("EfficientViTSR") is evit_mm.mmagic.EfficientViTSR\n'
                      'print(sorted(m for m in ("mmdet", "mmseg") if m in sys.modules))')
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip().splitlines()[-1] == '[]'


def test_base_edit_model_wraps_the_generator():
    """mmagic's BaseEditModel with its DataPreprocessor (0..255 -> 0..1) around EfficientViTSR: the prediction is
    the generator's output on the normalised input, scaled back to 0..255."""
    from mmagic.registry import MODELS
    from mmagic.structures import DataSample
    from mmengine.registry import init_default_scope

    import evit_mm.mmagic  # noqa: F401
    init_default_scope('mmagic')
    model = MODELS.build(dict(
        type='BaseEditModel',
        generator=dict(type='EfficientViTSR', scale=2, channels=16, width=32, depth=1, dim=8),
        pixel_loss=dict(type='L1Loss', loss_weight=1.0, reduction='mean'),
        data_preprocessor=dict(type='DataPreprocessor', mean=[0., 0., 0.], std=[255., 255., 255.]))).eval()
    from skimage.data import astronaut
    img = torch.from_numpy(astronaut()[180:192, 200:216]).permute(2, 0, 1).float()  # an RGB photograph crop
    sample = DataSample(gt_img=torch.zeros(3, 24, 32))
    data = model.data_preprocessor(dict(inputs=[img], data_samples=[sample]), training=False)
    with torch.no_grad():
        out = model(**data, mode='predict')[0]
        direct = (model.generator(img[None] / 255.0)[0] * 255.0).clamp(0, 255)  # destruct clamps to 0..255
    assert out.output.pred_img.shape == (3, 24, 32)
    # DataSample stores BGR-ordered destructed outputs for mmagic's metrics; compare channel-agnostically
    pred = out.output.pred_img.float()
    assert torch.allclose(pred, direct, atol=1e-3) or torch.allclose(pred, direct.flip(0), atol=1e-3)


# ----------------------------------------------------------------------------------------------------------------
# configs: build, train 2 iterations, validate on the tiny sets
# ----------------------------------------------------------------------------------------------------------------

@pytest.fixture(scope='module')
def sr_data(tmp_path_factory):
    from evit_mm.sample_data.sr import make_div2k_sample, make_ffhq_sample, make_sr_testset
    root = str(tmp_path_factory.mktemp('sr_data'))
    make_div2k_sample(osp.join(root, 'DIV2K'), num_train=2, num_test=1)
    for i, name in enumerate(('BSD100', 'Set5', 'Set14')):
        make_sr_testset(osp.join(root, name), num_images=2, gt_size=(48, 72), scales=(2, 3, 4), seed=i)
    make_ffhq_sample(osp.join(root, 'ffhq'), num_train=2, num_val=2, size=64)
    return root


TINY_TEMPLATE = """
_base_ = [{base!r}]
sr_root = {root!r}
train_dataloader = _base_.train_dataloader
train_dataloader.update(batch_size=2, num_workers=0, persistent_workers=False)
train_dataloader['dataset']['data_root'] = train_dataloader['dataset']['data_root'].replace('data', sr_root, 1)
train_dataloader['dataset']['pipeline'][3]['gt_patch_size'] = 48
val_dataloader = _base_.val_dataloader
test_dataloader = _base_.test_dataloader
for loader in ([val_dataloader] if isinstance(val_dataloader, dict) else val_dataloader) + test_dataloader:
    loader.update(num_workers=0, persistent_workers=False)
    loader['dataset']['data_root'] = loader['dataset']['data_root'].replace('data', sr_root, 1)
train_cfg = dict(max_iters=2, val_interval=2)
default_hooks = dict(logger=dict(interval=1), checkpoint=dict(interval=2, out_dir=None))
"""


def tiny_config(tmp_path, name, data_root):
    path = tmp_path / ('tiny_' + name)
    path.write_text(TINY_TEMPLATE.format(base=osp.join(CONFIG_DIR, name), root=data_root))
    return str(path)


def test_every_config_builds_with_its_setting():
    from mmagic.registry import MODELS
    from mmengine.config import Config
    from mmengine.registry import init_default_scope

    import evit_mm.mmagic  # noqa: F401
    from evit_mm.models import efficientvit_sr_highres, efficientvit_sr_lightweight
    configs = sorted(osp.basename(c) for c in glob.glob(osp.join(CONFIG_DIR, '*.py')))
    assert configs == sorted({**LIGHT, **HIGHRES})
    init_default_scope('mmagic')
    for name in configs:
        cfg = Config.fromfile(osp.join(CONFIG_DIR, name))
        scale, width = {**LIGHT, **HIGHRES}[name]
        assert cfg.custom_imports == dict(imports=['evit_mm.mmagic'], allow_failed_imports=False)
        assert cfg.default_scope == 'mmagic' and cfg.model.type == 'BaseEditModel'
        assert cfg.model.data_preprocessor.std == [255., 255., 255.]
        gen = cfg.model.generator
        assert (gen.type, gen.scale, gen.width_mult) == ('EfficientViTSR', scale, float(width))
        model = MODELS.build(cfg.model)
        core = (efficientvit_sr_lightweight if name in LIGHT else efficientvit_sr_highres)(scale, float(width))
        assert [(k, v.shape) for k, v in model.generator.state_dict().items()] == \
            [(k, v.shape) for k, v in core.state_dict().items()], name
        # training data and evaluation: the setting's datasets, PSNR/SSIM on Y with crop_border = scale
        train = cfg.train_dataloader.dataset
        crop = [t for t in train.pipeline if t.type == 'PairedRandomCrop'][0]
        vals = cfg.val_dataloader if isinstance(cfg.val_dataloader, list) else [cfg.val_dataloader]
        evaluators = cfg.val_evaluator if isinstance(cfg.val_evaluator[0].get('metrics'), list) \
            else [dict(metrics=cfg.val_evaluator)]
        metrics = [m for e in evaluators for m in e['metrics']]
        assert {m['type'] for m in metrics} == {'PSNR', 'SSIM'}
        assert all(m['convert_to'] == 'Y' and m['crop_border'] == scale for m in metrics)
        if name in LIGHT:
            assert (train.data_root, train.data_prefix.img, train.ann_file) == (
                'data/DIV2K', f'DIV2K_train_LR_bicubic/X{scale}_sub', 'meta_info_DIV2K800sub_GT.txt')
            assert crop.gt_patch_size == 64 * scale
            assert [v.dataset.data_root for v in vals] == ['data/BSD100', 'data/Set5', 'data/Set14']
            assert all(v.dataset.data_prefix == dict(img=f'LRbicx{scale}', gt='GTmod12') for v in vals)
            assert [m['prefix'] for m in metrics] == ['BSD100', 'BSD100', 'Set5', 'Set5', 'Set14', 'Set14']
        else:
            assert (train.data_root, train.data_prefix.img, train.data_prefix.gt, train.ann_file) == (
                'data/ffhq', 'BIx2_down', 'images', 'meta_info_FFHQ_train3000_GT.txt')
            assert crop.gt_patch_size == 512
            assert [v.dataset.ann_file for v in vals] == ['meta_info_FFHQ_val500_GT.txt']
        assert all(v.dataset.type == 'BasicImageDataset' for v in vals)


@pytest.mark.slow
@pytest.mark.parametrize('name', sorted({**LIGHT, **HIGHRES}))
def test_config_trains_and_validates(tmp_path, sr_data, name):
    """tools/train.py: 2 iterations, then validation (PSNR/SSIM per set); tools/test.py on the checkpoint."""
    config = tiny_config(tmp_path, name, sr_data)
    work = str(tmp_path / 'work')
    checkpoint, state_dict = train_two_iterations(config, work)
    assert 'generator.body.0.context_module.main.qkv.conv.weight' in state_dict
    prefixes = ['BSD100', 'Set5', 'Set14'] if name in LIGHT else ['FFHQ']
    keys = {f'{p}/{m}' for p in prefixes for m in ('PSNR', 'SSIM')}
    validation = _logged_metrics(glob.glob(osp.join(work, '*', 'vis_data', 'scalars.json')))
    assert keys <= set(validation)  # the validation at iteration 2, every set
    assert osp.isfile(osp.join(work, f'best_{prefixes[0]}_PSNR_iter_2.pth'))
    # mmagic's MultiTestLoop.run returns nothing, so the test metrics are read from the test run's json log
    load_tool('test').main([config, checkpoint, '--work-dir', work])
    metrics = _logged_metrics([p for p in glob.glob(osp.join(work, '*', '*.json'))])
    assert keys <= set(metrics)
    for p in prefixes:  # a 2-iteration network that starts from bicubic: far from noise (~10 dB), far from exact
        assert 15.0 < metrics[f'{p}/PSNR'] < 60.0 and 0.0 < metrics[f'{p}/SSIM'] < 1.0
        assert metrics[f'{p}/PSNR'] == pytest.approx(validation[f'{p}/PSNR'], abs=1e-4)  # same weights, same data


def _logged_metrics(json_logs):
    """The last logged line that has PSNR values, from mmengine's json logs (newest run last)."""
    import json
    found = {}
    for path in sorted(json_logs, key=lambda p: osp.basename(p)):
        for line in open(path).read().splitlines():
            entry = json.loads(line)
            if any(k.endswith('/PSNR') for k in entry):
                found = entry
    return found


@pytest.mark.slow
def test_mim_train_mmagic(tmp_path, sr_data):
    """``mim train mmagic`` runs mmagic's own tools/train.py; the config's custom_imports bring evit_mm in."""
    name = 'efficientvit-sr-lightweight-w1.0_x2_8xb4-500k_div2k.py'
    config = tiny_config(tmp_path, name, sr_data)
    work = str(tmp_path / 'mim_work')
    mim = osp.join(osp.dirname(sys.executable), 'mim')
    env = dict(os.environ, PYTHONWARNINGS='ignore')
    proc = subprocess.run([mim, 'train', 'mmagic', config, '--work-dir', work], capture_output=True, text=True,
                          timeout=900, cwd=str(tmp_path), env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert osp.isfile(osp.join(work, 'iter_2.pth'))
    assert 'BSD100/PSNR' in proc.stdout + proc.stderr


# ----------------------------------------------------------------------------------------------------------------
# sample data
# ----------------------------------------------------------------------------------------------------------------

def test_div2k_sample_layout(sr_data):
    import cv2
    root = osp.join(sr_data, 'DIV2K')
    hr = sorted(os.listdir(osp.join(root, 'DIV2K_train_HR')))
    assert hr == ['0001.png', '0002.png', '0801.png']
    assert sorted(os.listdir(osp.join(root, 'DIV2K_train_LR_bicubic', 'X3'))) == ['0001x3.png', '0002x3.png',
                                                                                 '0801x3.png']
    subs = sorted(os.listdir(osp.join(root, 'DIV2K_train_HR_sub')))
    assert subs[:2] == ['0001_s001.png', '0001_s002.png'] and len(subs) == 3 * 2 * 3  # 144x192, 96 crops, step 48
    for s in (2, 3, 4):
        assert sorted(os.listdir(osp.join(root, 'DIV2K_train_LR_bicubic', f'X{s}_sub'))) == subs
        lr = cv2.imread(osp.join(root, 'DIV2K_train_LR_bicubic', f'X{s}_sub', subs[0]))
        assert lr.shape == (96 // s, 96 // s, 3)
    train = open(osp.join(root, 'meta_info_DIV2K800sub_GT.txt')).read().splitlines()
    test = open(osp.join(root, 'meta_info_DIV2K100sub_GT.txt')).read().splitlines()
    assert train[0] == '0001_s001.png (96, 96, 3)' and len(train) == 12
    assert all(line.startswith('0801_s') for line in test) and len(test) == 6


def test_lr_images_are_matlab_bicubic_of_hr(sr_data):
    """LRbicx{s} = MATLAB-like bicubic of GTmod12 (mmagic's MATLABLikeResize), not any other resize."""
    import cv2

    from evit_mm.sample_data.sr import matlab_resize
    root = osp.join(sr_data, 'Set5')
    name = sorted(os.listdir(osp.join(root, 'GTmod12')))[0]
    gt = cv2.imread(osp.join(root, 'GTmod12', name))[:, :, ::-1]
    assert gt.shape == (48, 72, 3) and gt.std() > 10  # a photograph, not a flat image
    for s in (2, 3, 4):
        lr = cv2.imread(osp.join(root, f'LRbicx{s}', name))[:, :, ::-1]
        np.testing.assert_array_equal(lr, matlab_resize(gt, scale=1.0 / s))
        area = cv2.resize(gt, (72 // s, 48 // s), interpolation=cv2.INTER_AREA)
        assert not np.array_equal(lr, area)


def test_ffhq_sample_layout(sr_data):
    root = osp.join(sr_data, 'ffhq')
    assert sorted(os.listdir(osp.join(root, 'images'))) == ['00000.png', '00001.png', '60000.png', '60001.png']
    assert sorted(os.listdir(osp.join(root, 'BIx2_down'))) == sorted(os.listdir(osp.join(root, 'images')))
    assert open(osp.join(root, 'meta_info_FFHQ_train3000_GT.txt')).read().split('\n')[0] == '00000.png (64, 64, 3)'
    assert open(osp.join(root, 'meta_info_FFHQ_val500_GT.txt')).read().startswith('60000.png')


def test_validation_photographs_are_not_training_photographs():
    from evit_mm.sample_data.sr import HELD_OUT_PHOTOS, TRAIN_PHOTOS, load_photo
    assert not set(TRAIN_PHOTOS) & set(HELD_OUT_PHOTOS)
    for name in TRAIN_PHOTOS + HELD_OUT_PHOTOS:
        img = load_photo(name)
        assert img.dtype == np.uint8 and img.ndim == 3 and img.shape[2] == 3 and min(img.shape[:2]) >= 144
    with pytest.raises(ValueError, match='no photograph'):
        load_photo('not_a_photo')


def test_div2k_sub_images_match_mmagics_converter(sr_data, tmp_path, monkeypatch):
    """mmagic's own DIV2K converter (tools/dataset_converters/div2k/preprocess_div2k_dataset.py, shipped in the
    mmagic package) run on the raw tiny DIV2K writes exactly the sub-images and annotation files of the sample.
    The converter imports lmdb at module level (only for its --make-lmdb option); a stub stands in for it."""
    import importlib.util
    import types
    from argparse import Namespace

    import cv2
    import mmagic
    monkeypatch.setitem(sys.modules, 'lmdb', types.ModuleType('lmdb'))
    script = osp.join(osp.dirname(mmagic.__file__), '.mim', 'tools', 'dataset_converters', 'div2k',
                      'preprocess_div2k_dataset.py')
    spec = importlib.util.spec_from_file_location('mmagic_div2k_converter', script)
    converter = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(converter)

    ours = osp.join(sr_data, 'DIV2K')
    theirs = str(tmp_path / 'DIV2K')
    for folder in ('DIV2K_train_HR', 'DIV2K_train_LR_bicubic/X2', 'DIV2K_train_LR_bicubic/X4'):
        os.makedirs(osp.join(theirs, folder))
        for f in os.listdir(osp.join(ours, folder)):
            os.link(osp.join(ours, folder, f), osp.join(theirs, folder, f))
    jobs = [('DIV2K_train_HR', 96, 48)] + [(f'DIV2K_train_LR_bicubic/X{s}', 96 // s, 48 // s) for s in (2, 4)]
    for folder, crop, step in jobs:  # what its main_extract_subimages does, without the process pool
        opt = dict(crop_size=crop, step=step, thresh_size=0, compression_level=3,
                   save_folder=osp.join(theirs, folder.replace('_HR', '_HR_sub') if folder.endswith('_HR')
                                        else folder + '_sub'))
        os.makedirs(opt['save_folder'])
        for f in sorted(os.listdir(osp.join(theirs, folder))):
            converter.worker(osp.join(theirs, folder, f), opt)
    converter.generate_anno_file(Namespace(data_root=theirs, anno_train_path='meta_info_DIV2K800sub_GT.txt',
                                           anno_test_path='meta_info_DIV2K100sub_GT.txt', crop_size=96))
    for folder in ('DIV2K_train_HR_sub', 'DIV2K_train_LR_bicubic/X2_sub', 'DIV2K_train_LR_bicubic/X4_sub'):
        names = sorted(os.listdir(osp.join(theirs, folder)))
        assert names == sorted(os.listdir(osp.join(ours, folder))), folder
        for n in names:
            np.testing.assert_array_equal(cv2.imread(osp.join(theirs, folder, n)),
                                          cv2.imread(osp.join(ours, folder, n)))
    for ann in ('meta_info_DIV2K800sub_GT.txt', 'meta_info_DIV2K100sub_GT.txt'):
        assert open(osp.join(theirs, ann)).read() == open(osp.join(ours, ann)).read()


@pytest.mark.slow
def test_benchmark_tool_smoke(tmp_path):
    """tools/benchmark.py on the SR family at a tiny size (what tools/benchmark_sr.py did): every EfficientViT-SR
    and every peer runs, the peers come from mmagic, speed-ups are computed against each of them."""
    import json
    import runpy
    out = tmp_path / 'bench'
    tool = runpy.run_path(osp.join(TOOLS, 'benchmark.py'))
    assert tool['main'](['--models', 'efficientvit_sr', '--img-size', '24x32', '--threads', '1', '--warmup', '0',
                         '--duration', '0.01', '--repeats', '1', '--no-onnx', '--progress', 'off',
                         '--out-dir', str(out)]) == 0
    report = json.loads((out / 'benchmark.json').read_text())
    ours = ['efficientvit_sr_x2', 'efficientvit_sr_x2_w0.75', 'efficientvit_sr_highres_x2',
            'efficientvit_sr_highres_x2_w0.75']
    peers = {'swinir_light_x2': 'swinir', 'edsr_x2': 'edsr', 'restormer': 'restormer'}
    assert set(report['models']) == set(ours) | set(peers)
    assert {r['model'] for r in report['results']} == set(ours) | set(peers)
    assert all(r['images_per_s'] > 0 and r['input_size'] == [24, 32] for r in report['results'])
    shapes = {name: info['output_shape'] for name, info in report['models'].items()}
    assert all(shapes[name] == [3, 48, 64] for name in ours + ['swinir_light_x2', 'edsr_x2'])
    assert shapes['restormer'] == [3, 24, 32]  # no upsampler: timed at the LR size
    for entry in report['ratios']:  # every EfficientViT-SR against every peer, eager and deploy
        assert entry['model'] in ours
        assert all(entry[f'{form}/{peer}'] > 0 for form in ('eager', 'deploy') for peer in peers.values())
    # the mmagic peers are mmagic's published hyper-parameters
    assert report['models']['swinir_light_x2']['params'] / 1e6 == pytest.approx(0.91, abs=0.01)
    assert report['models']['restormer']['params'] / 1e6 == pytest.approx(26.1, abs=0.1)
    assert report['models']['edsr_x2']['params'] / 1e6 == pytest.approx(1.37, abs=0.01)


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
