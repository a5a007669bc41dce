"""EfficientViT-SAM ONNX export: encoder and decoder graphs run in onnxruntime and match PyTorch (<= 1e-4)."""
from __future__ import annotations

import collections

import numpy as np
import pytest
import torch

from evit_mm.models.sam import build_efficientvit_sam
from evit_mm.sam import EfficientViTSamPredictor, preprocess_image
from evit_mm.sam.onnx import check_onnx, decoder_inputs, export_decoder, export_encoder

from conftest import randomize_

onnx = pytest.importorskip('onnx')
pytest.importorskip('onnxruntime')
skimage_data = pytest.importorskip('skimage.data')


@pytest.fixture(scope='module')
def exported(tmp_path_factory):
    torch.manual_seed(0)
    model = randomize_(build_efficientvit_sam('l0', image_size=256), what='batchnorm')
    d = tmp_path_factory.mktemp('onnx')
    enc = export_encoder(model, str(d / 'encoder.onnx'))
    dec = export_decoder(model, str(d / 'decoder.onnx'))
    return model, enc, dec


def op_types(path):
    return collections.Counter(n.op_type for n in onnx.load(path).graph.node)


def test_encoder_matches_pytorch(exported):
    model, enc, _ = exported
    x = torch.cat([preprocess_image(skimage_data.chelsea(), 256), preprocess_image(skimage_data.camera(), 256)])
    with torch.no_grad():
        want = model.image_encoder(x)
    (out,), diff = check_onnx(enc, {'input_image': x.numpy()}, [want], atol=1e-4)  # batch 2: dynamic batch
    assert out.shape == (2, 256, 64, 64) and diff <= 1e-4
    sess_inputs = onnx.load(enc).graph.input
    assert [i.name for i in sess_inputs] == ['input_image']


@pytest.mark.parametrize('prompt', ['points', 'box', 'box+point', 'mask'])
def test_decoder_matches_predictor(exported, prompt):
    model, _, dec = exported
    img = skimage_data.chelsea()
    pred = EfficientViTSamPredictor(model)
    pred.set_image(img)
    pts, labels, box = np.array([[150.0, 120.0], [300.0, 60.0], [40.0, 200.0]]), np.array([1, 0, 1]), \
        np.array([60.0, 30.0, 320.0, 280.0])
    kw = {'points': dict(point_coords=pts, point_labels=labels), 'box': dict(box=box),
          'box+point': dict(point_coords=pts[:1], point_labels=labels[:1], box=box)}.get(prompt)
    if prompt == 'mask':
        low = pred.predict(pts, labels, multimask_output=False, return_logits=True)[2]
        kw = dict(point_coords=pts[:2], point_labels=labels[:2], mask_input=low)
    feeds = decoder_inputs(img.shape[:2], pred.features, **kw)
    masks, iou, low_res = check_onnx(dec, feeds)[0]
    assert masks.shape == (1, 4, 300, 451) and iou.shape == (1, 4) and low_res.shape == (1, 4, 256, 256)
    multi = pred.predict(return_logits=True, **kw)
    single = pred.predict(multimask_output=False, return_logits=True, **kw)
    for got, want in ((masks[0, 1:], multi[0]), (iou[0, 1:], multi[1]), (low_res[0, 1:], multi[2]),
                      (masks[0, :1], single[0]), (iou[0, :1], single[1])):
        assert np.abs(got - want).max() <= 1e-4


def test_decoder_graph_avoids_exporter_unfriendly_ops(exported):
    ops = op_types(exported[2])
    assert not {'Tile', 'Loop', 'If', 'NonZero'} & set(ops), ops
    names = [i.name for i in onnx.load(exported[2]).graph.input]
    assert names == ['image_embeddings', 'point_coords', 'point_labels', 'mask_input', 'has_mask_input',
                     'orig_im_size']


@pytest.mark.slow
def test_xl0_encoder_export_full_resolution(tmp_path):
    torch.manual_seed(0)
    model = randomize_(build_efficientvit_sam('xl0'), what='batchnorm')
    path = export_encoder(model, str(tmp_path / 'xl0.onnx'), dynamic_batch=False)
    x = preprocess_image(skimage_data.coffee(), 1024)
    with torch.no_grad():
        want = model.image_encoder(x)
    check_onnx(path, {'input_image': x.numpy()}, [want], atol=1e-4)
