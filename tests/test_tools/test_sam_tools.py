"""tools/sam_demo.py and tools/sam_export_onnx.py, run in-process on scikit-image photographs."""
from __future__ import annotations


import numpy as np
import pytest

from conftest import load_tool

PIL = pytest.importorskip('PIL.Image')
pytest.importorskip('skimage.data')


def test_demo_writes_overlay_png(tmp_path, capsys):
    demo = load_tool('sam_demo')
    out = tmp_path / 'overlay.png'
    assert demo.main(['skimage:coffee', '--box', '150', '40', '450', '360', '--with-point', '300', '200',
                      '--out', str(out)]) == 0
    img = np.asarray(PIL.open(out))
    assert img.shape == (400, 600, 3)
    import skimage.data
    assert np.abs(img.astype(int) - skimage.data.coffee()).max() > 0  # something was drawn
    assert 'predicted IoU' in capsys.readouterr().out


def test_demo_from_a_16bit_grayscale_file(tmp_path):
    import skimage.data
    src = tmp_path / 'camera16.png'
    PIL.fromarray(skimage.data.camera()[::4, ::4].astype(np.uint16) * 257).save(src)
    out = tmp_path / 'o.png'
    demo = load_tool('sam_demo')
    assert demo.main([str(src), '--point', '60', '40', '--neg-point', '10', '10', '--all-masks',
                      '--out', str(out)]) == 0
    assert np.asarray(PIL.open(out)).shape == (128, 128, 3)


def test_demo_errors(tmp_path):
    demo = load_tool('sam_demo')
    with pytest.raises(SystemExit, match='image not found'):
        demo.main(['nope.png', '--point', '1', '1', '--out', str(tmp_path / 'x.png')])
    with pytest.raises(SystemExit, match='outside the image'):
        demo.main(['skimage:coins', '--box', '900', '900', '950', '950', '--out', str(tmp_path / 'x.png')])
    with pytest.raises(SystemExit, match='unknown EfficientViT-SAM variant'):
        demo.main(['skimage:coins', '--point', '1', '1', '--model', 'b9', '--out', str(tmp_path / 'x.png')])


@pytest.mark.slow
def test_export_tool_checks_in_onnxruntime(tmp_path, capsys):
    pytest.importorskip('onnxruntime')
    tool = load_tool('sam_export_onnx')
    assert tool.main(['--model', 'l0', '--image-size', '256', '--out-dir', str(tmp_path)]) == 0
    assert tool.main(['--model', 'l0', '--image-size', '256', '--out-dir', str(tmp_path / 's'),
                      '--return-single-mask']) == 0
    out = capsys.readouterr().out
    assert out.count('onnxruntime vs PyTorch') == 6
    assert (tmp_path / 'efficientvit_sam_l0_encoder.onnx').is_file()
    assert (tmp_path / 'efficientvit_sam_l0_decoder.onnx').is_file()


def test_benchmark_tool_smoke(tmp_path, capsys):
    """tools/benchmark.py times an EfficientViT-SAM encoder against SAM ViT-B (what tools/sam_benchmark.py did);
    --img-size sets the size of the peer too."""
    import json
    bench = load_tool('benchmark')
    out = tmp_path / 'b'
    assert bench.main(['--models', 'efficientvit_sam_l0', '--peers', 'sam_vit_b', '--img-size', '128', '--no-onnx',
                       '--warmup', '0', '--duration', '0.01', '--repeats', '1', '--threads', '1', '--progress', 'off',
                       '--out-dir', str(out)]) == 0
    table = capsys.readouterr().out
    assert '| efficientvit_sam_l0 | efficientvit_sam | 128x128 |' in table and '| sam_vit_b | efficientvit_sam' in table
    result = json.loads((out / 'benchmark.json').read_text())
    res = result['results']
    assert [(r['model'], r['mode']) for r in res] == [
        ('efficientvit_sam_l0', 'eager'), ('efficientvit_sam_l0', 'deploy'), ('sam_vit_b', 'eager')]
    assert all(r['images_per_s'] > 0 and r['input_size'] == [128, 128] for r in res)
    assert result['ratios'][0]['deploy/sam_vit_b'] > 0
    with pytest.raises(SystemExit):
        bench.main(['--peers', 'vit_x'])
    assert 'unknown peer(s): vit_x' in capsys.readouterr().err
