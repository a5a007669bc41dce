"""Hardening, third round (issue 21): a kill during a checkpoint save, a NaN resume or loss, bf16 on a CPU without
native bf16, a damaged teacher-embedding cache, incomplete LVIS files, training a deployed model, empty crops in
the automatic mask generator, and the newcomer findings (quick start, drawings, logged backend, warnings, typos).

The kill tests are real SIGKILLs of a training process, sent by the process itself from inside mmengine's file
write (``LocalBackend.put``) after it wrote half of the checkpoint's bytes: that is where a kill hurts, and it makes
the moment deterministic. What is simulated is only the timing of the kill, not its effect."""
import os.path as osp

import pytest
from conftest import CONFIGS

from evit_mm.mm.compat import apply_all

apply_all()


def test_typos_in_a_config_path_or_a_type_name_get_the_closest_matches(tmp_path):
    from conftest import load_tool
    train = load_tool('train')
    typo = osp.join(CONFIGS, 'quickstart', 'retinanet_efficientvit-m0_fpn_coin.py')
    with pytest.raises(SystemExit, match=r"config not found: .*coin\.py; did you mean '.*fpn_coins\.py'"):
        train.main([typo])
    config = tmp_path / 'typo.py'
    config.write_text(f"_base_ = [{osp.join(CONFIGS, 'quickstart', 'retinanet_efficientvit-m0_fpn_coins.py')!r}]\n"
                      "model = dict(backbone=dict(type='EfficientViTMM'))\n")
    with pytest.raises(SystemExit, match=r"EfficientViTMM is not a registered model type \(scope mmdet\); did you "
                                         r"mean 'EfficientViTM'"):
        train.main([str(config), '--work-dir', str(tmp_path / 'work')])
