"""tools/test.py --show-dir: drawings for mmagic configs and for mmseg configs whose training data is absent."""
import glob
import os
import os.path as osp
import subprocess
import sys

import pytest
import torch
from conftest import ROOT, SEG_CONFIG

TOOLS = osp.join(ROOT, 'tools')


SR_CONFIG = osp.join(ROOT, 'configs', 'efficientvit_sr', 'efficientvit-sr-lightweight-w1.0_x2_8xb4-500k_div2k.py')


def _run_tool(args, cwd, timeout=600):
    path = os.pathsep.join(p for p in (ROOT, os.environ.get('PYTHONPATH')) if p)
    env = dict(os.environ, PYTHONWARNINGS='ignore', PYTHONPATH=path)  # this checkout's evit_mm
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=timeout, cwd=cwd, env=env)


@pytest.mark.slow
def test_show_dir_seg_with_only_the_test_root_overridden(seg_setup, tmp_path):
    """The released config, its test set pointed at the sample data with --cfg-options (no training data):
    mmseg's visualization hook read runner.iter, which built the training set and crashed."""
    work = str(tmp_path / 'work')
    root = seg_setup['data_root']
    proc = _run_tool([osp.join(TOOLS, 'test.py'), SEG_CONFIG, seg_setup['checkpoint'], '--work-dir', work,
                      '--show-dir', 'vis', '--cfg-options', f'test_dataloader.dataset.data_root={root}',
                      'test_dataloader.num_workers=0', 'test_dataloader.persistent_workers=False',
                      'model.backbone.init_cfg=None'], cwd=str(tmp_path))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    drawn = glob.glob(osp.join(work, 'vis', '**', '*.png'), recursive=True)
    assert len(drawn) == 2, drawn


SR_TINY = """
_base_ = [{base!r}]
test_dataloader = _base_.test_dataloader
for loader in test_dataloader:
    loader.update(num_workers=0, persistent_workers=False)
    loader['dataset']['data_root'] = loader['dataset']['data_root'].replace('data', {root!r}, 1)
"""


@pytest.mark.slow
def test_show_dir_mmagic(tmp_path):
    """mmagic configs draw through a custom BasicVisualizationHook (no default_hooks.visualization): --show-dir
    was refused; now the drawings of every test set go into the folder."""
    from mmagic.registry import MODELS
    from mmengine.config import Config
    from mmengine.registry import init_default_scope

    import evit_mm.mmagic  # noqa: F401
    from evit_mm.sample_data.sr import make_sr_testset
    root = str(tmp_path / 'sr')
    for i, name in enumerate(('BSD100', 'Set5', 'Set14')):
        make_sr_testset(osp.join(root, name), num_images=i + 1, gt_size=(24, 36), scales=(2,), seed=i)
    names = {osp.splitext(osp.basename(p))[0] for p in glob.glob(osp.join(root, '*', 'GTmod12', '*.png'))}
    config = tmp_path / 'tiny_sr.py'
    config.write_text(SR_TINY.format(base=SR_CONFIG, root=root))
    init_default_scope('mmagic')
    model = MODELS.build(Config.fromfile(str(config)).model)
    checkpoint = str(tmp_path / 'sr.pth')
    torch.save({'state_dict': model.state_dict()}, checkpoint)
    work = str(tmp_path / 'work')
    proc = _run_tool([osp.join(TOOLS, 'test.py'), str(config), checkpoint, '--work-dir', work, '--show-dir', 'vis'],
                     cwd=str(tmp_path))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    drawn = glob.glob(osp.join(work, 'vis', '**', '*.png'), recursive=True)
    # mmagic names a drawing after its image (<name>_<step>.png): one per distinct test image
    assert {osp.basename(p).rsplit('_', 1)[0] for p in drawn} == names and len(names) > 1, (drawn, names)
