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


ADAPTERS = {
    'mmdet': ['EfficientViTM', 'EfficientViTB', 'EfficientViTL', 'EfficientViTFPN', 'EfficientViTSamEncoder',
              'BoxPromptedSAM'],
    'mmseg': ['EfficientViTB', 'EfficientViTL', 'EfficientViTM', 'EfficientViTSamEncoder',
              'EfficientViTSegDecodeHead', 'EfficientViTEncoderDecoder'],
}


@pytest.mark.parametrize('adapter', sorted(ADAPTERS))
def test_adapter_works_without_the_other_libraries(adapter):
    """Each adapter imports and registers its modules with every other mm library made unimportable."""
    others = sorted({'mmdet', 'mmseg', 'mmagic'} - {adapter})
    code = f"""
import sys
for lib in {others!r}:
    sys.modules[lib] = None  # absent: `import lib` raises ImportError
import evit_mm.{adapter}
from {adapter}.registry import MODELS
# module_dict, not MODELS.get(): get() imports the library's whole model zoo
missing = [n for n in {ADAPTERS[adapter]!r} if n not in MODELS.module_dict]
assert not missing, missing
"""
    proc = run_python(code)
    assert proc.returncode == 0, proc.stderr[-3000:]


def test_mmdet_adapter_imports_neither_mmseg_nor_mmagic():
    loaded = imported_after('import evit_mm.mmdet')
    assert {'mmdet', 'mmengine'} <= loaded
    assert not loaded & {'mmseg', 'mmagic'}, loaded & {'mmseg', 'mmagic'}


def test_mmseg_adapter_does_not_import_mmagic():
    # (mmseg's own model package imports mmdet when it is installed, for its Mask2Former head; evit_mm.mmseg
    # itself needs no mmdet, as the test above shows)
    loaded = imported_after('import evit_mm.mmseg')
    assert {'mmseg', 'mmengine'} <= loaded and 'mmagic' not in loaded


def test_numpy_is_1x_for_mmagic():
    # mmagic 1.2.0 dies under numpy 2 (np.bool8); the pinned environment keeps numpy 1.26.
    import numpy as np
    assert np.__version__.startswith('1.')
    proc = run_python('import mmagic.utils')
    assert proc.returncode == 0, proc.stderr[-2000:]
