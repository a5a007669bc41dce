"""Small datasets in the real on-disk formats, built from real photographs that ship with scikit-image.

Nothing is downloaded: the photographs come from ``skimage.data``, and the annotations are derived from them
programmatically (see each builder's docstring and docs/sample_data.md).
"""
from .coins import COIN_CATEGORY, coco_cfg_options, coins_coco_paths, make_coins_coco, segment_coins
from .segmentation import make_ade20k_sample, make_cityscapes_sample

__all__ = ['make_coins_coco', 'coins_coco_paths', 'coco_cfg_options', 'segment_coins', 'COIN_CATEGORY',
           'make_cityscapes_sample', 'make_ade20k_sample']

from .zero_shot import make_zero_shot_sets  # noqa: E402

__all__ += ['make_zero_shot_sets']
from .sa1b import make_sa1b_sample  # noqa: E402

__all__ += ['make_sa1b_sample']
from .sr import make_div2k_sample, make_ffhq_sample, make_sr_testset  # noqa: E402

__all__ += ['make_div2k_sample', 'make_sr_testset', 'make_ffhq_sample']
