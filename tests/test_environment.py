"""The environment made by tools/setup_env.sh: mmcv has its compiled ops, imports stay isolated."""
import json

import pytest
import torch

from conftest import run_python

MM_LIBS = ('mmengine', 'mmcv', 'mmdet', 'mmseg', 'mmagic', 'mmpretrain')


def imported_after(statement: str) -> set:
    code = f"""
import json, sys
{statement}
print(json.dumps(sorted({{m.split('.')[0] for m in sys.modules}})))
"""
    proc = run_python(code)
    assert proc.returncode == 0, proc.stderr
    return set(json.loads(proc.stdout.strip().splitlines()[-1]))


def test_mmcv_has_compiled_ops():
    import mmcv
    from mmcv.ops import nms, roi_align
    assert mmcv.__version__ == '2.1.0'
    boxes = torch.tensor([[0., 0., 10., 10.], [1., 1., 10., 10.], [20., 20., 30., 30.]])
    dets, keep = nms(boxes, torch.tensor([0.9, 0.8, 0.7]), iou_threshold=0.5)
    assert keep.tolist() == [0, 2]
    assert torch.allclose(dets[:, 4], torch.tensor([0.9, 0.7]))
    feats = torch.arange(16.).view(1, 1, 4, 4)
    pooled = roi_align(feats, torch.tensor([[0., 0., 0., 4., 4.]]), (1, 1), 1.0, 0, 'avg', True)
    assert pooled.item() == pytest.approx(feats.mean().item())


def test_import_evit_mm_imports_no_mm_library():
    loaded = imported_after('import evit_mm, evit_mm.models')
    assert not loaded & set(MM_LIBS), loaded & set(MM_LIBS)


@pytest.mark.parametrize('adapter,own,others,names', [
    ('mmdet', {'mmdet', 'mmengine'}, {'mmseg', 'mmagic'},
     ['EfficientViTM', 'EfficientViTB', 'EfficientViTL', 'EfficientViTFPN']),
    ('mmseg', {'mmseg', 'mmengine'}, {'mmdet', 'mmagic'}, ['EfficientViTB', 'EfficientViTL', 'EfficientViTM']),
])
def test_adapter_registers_and_imports_only_its_library(adapter, own, others, names):
    registered = f"""
import evit_mm.{adapter}
from {adapter}.registry import MODELS
# module_dict, not MODELS.get(): get() imports the library's whole model zoo, and mmseg's imports mmdet
missing = [n for n in {names!r} if n not in MODELS.module_dict]
assert not missing, missing
"""
    loaded = imported_after(registered)
    assert own <= loaded
    assert not loaded & others, f'evit_mm.{adapter} imported {loaded & others}'


def test_numpy_is_1x_for_mmagic():
    # mmagic 1.2.0 dies under numpy 2 (np.bool8); the pinned environment keeps numpy 1.26.
    import numpy as np
    assert np.__version__.startswith('1.')
    proc = run_python('import mmagic.utils')
    assert proc.returncode == 0, proc.stderr[-2000:]
