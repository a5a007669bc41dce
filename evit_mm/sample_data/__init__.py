"""Small datasets in the real on-disk formats, built from real photographs that ship with scikit-image.

Nothing is downloaded: the photographs come from ``skimage.data``, and the annotations are derived from them
programmatically (see each builder's docstring and docs/sample_data.md).
"""
from .coins import COIN_CATEGORY, make_coins_coco, segment_coins

__all__ = ['make_coins_coco', 'segment_coins', 'COIN_CATEGORY']
