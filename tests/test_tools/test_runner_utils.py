"""tools/_runner_utils.py: a mistyped config path or registry type name gets the closest matches."""
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
