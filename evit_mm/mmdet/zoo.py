"""Cream's published detectors as models of the registry (``create_model('retinanet_efficientvit_m4_fpn_1x_coco',
pretrained=True)``): the mmdet model of evit_mm's config, which loads Cream's checkpoint converted and strictly."""
from __future__ import annotations

import os.path as osp

__all__ = ['build_detector']


def _config_path(config: str) -> str:
    import evit_mm
    package = osp.dirname(evit_mm.__file__)
    for root in (osp.join(package, '.mim', 'configs'), osp.join(osp.dirname(package), 'configs')):
        if osp.isfile(osp.join(root, config)):
            return osp.join(root, config)
    raise FileNotFoundError(f'evit_mm config {config} not found (looked in evit_mm/.mim/configs and configs/)')


def build_detector(config: str, **cfg_options):
    """The detector of evit_mm's ``config`` (relative to ``configs/``), without its ImageNet init, in eval mode;
    ``cfg_options`` override ``model.*`` keys. Its ``load_published(path)`` loads a Cream checkpoint strictly."""
    from mmdet.registry import MODELS
    from mmdet.utils import register_all_modules
    from mmengine.config import Config

    from . import MODELS as _registered  # noqa: F401  (evit_mm's modules, registered on import)
    from ..models.checkpoint import read_checkpoint
    from ..models.convert_msra import cream_detector_to_evit_mm
    from ..mm.loading import cream_detector_format, load_strict

    register_all_modules(init_default_scope=False)  # imports mmdet's modules; the caller's scope stays
    cfg = Config.fromfile(_config_path(config))
    cfg.model.backbone.pop('init_cfg', None)
    cfg.model.update(cfg_options)
    model = MODELS.build(cfg.model)

    def load_published(path: str) -> None:
        state_dict = read_checkpoint(path)
        if cream_detector_format(state_dict):
            state_dict, _ = cream_detector_to_evit_mm(state_dict, window_size=model.backbone.window_sizes)
        load_strict(model, state_dict, path)

    model.load_published = load_published
    return model.eval()
