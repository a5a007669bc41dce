"""evit_mm.deploy (BN folding, constant attention biases, channels_last) and evit_mm.onnx (export + onnxruntime
check). No timing here: speed is measured by tools/benchmark.py."""
import copy

import numpy as np
import pytest
import torch
from conftest import load_tool, randomize_, run_python
from torch import nn

import evit_mm
from evit_mm.mm.compat import apply_all
from evit_mm.models import EfficientViTB, EfficientViTL, EfficientViTM, EfficientViTSeg
from evit_mm.models.efficientvit_msra import CascadedGroupAttention

apply_all()

# randomize_ settings: non-trivial BN statistics and scales and non-zero attention biases, so that folding is
# exercised
FOLDABLE = dict(what='batchnorm', bn_weights=True, attention_biases=True)


def _photo(n, h, w):
    """Real photographs (scikit-image's astronaut and coffee), resized and normalised like ImageNet inputs."""
    from skimage import data
    imgs = [data.astronaut(), data.coffee()]
    x = torch.cat([torch.nn.functional.interpolate(
        torch.from_numpy(imgs[i % 2].copy()).permute(2, 0, 1)[None].float() / 255, size=(h, w), mode='bilinear',
        align_corners=False) for i in range(n)])
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    return (x - mean) / std


def _outputs(out):
    return (out,) if isinstance(out, torch.Tensor) else tuple(out)


def _assert_close_rel(got, want, rtol=1e-4):
    for g, w in zip(_outputs(got), _outputs(want)):
        assert g.shape == w.shape
        scale = w.abs().max().item()
        assert scale > 0
        err = (g - w).abs().max().item()
        assert err <= rtol * scale, f'deploy differs by {err:.3g} (max |output| {scale:.3g})'


@pytest.mark.parametrize('factory, size', [
    (lambda: EfficientViTM('m0'), (96, 128)),        # 6x8 map at stride 16: padded 7x7 windows
    (lambda: EfficientViTM('m4', window_size=(7, 7, 4)), (224, 224)),
    (lambda: EfficientViTB('b0'), (128, 96)),        # both LiteMLA paths (linear at stride 16, quadratic at 32)
    (lambda: EfficientViTL('l0'), (160, 224)),
    (lambda: EfficientViTSeg('b0_cityscapes'), (64, 128)),
])
def test_deploy_keeps_outputs(factory, size):
    model = randomize_(factory(), **FOLDABLE).eval()
    x = _photo(2, *size)
    with torch.no_grad():
        want = model(x)
        deployed = evit_mm.deploy(copy.deepcopy(model))
        got = deployed(x)
    _assert_close_rel(got, want)
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in deployed.modules())
    convs = [m for m in deployed.modules() if isinstance(m, nn.Conv2d)]
    assert convs and all(c.weight.is_contiguous(memory_format=torch.channels_last) for c in convs)
    assert all(o.is_contiguous(memory_format=torch.channels_last) for o in _outputs(got) if o.dim() == 4)
    assert not deployed.training


@pytest.mark.parametrize('arch, act, algorithm', [('l0', nn.GELU, 'tanh'), ('b0', nn.Hardswish, '')])
def test_deployed_mit_convs_run_their_activation_as_a_onednn_post_op(arch, act, algorithm, monkeypatch):
    """After deploy, fp32 CPU inference runs conv+activation as one oneDNN call; calls with autograd on, under
    autocast or with oneDNN disabled take the plain conv -> activation path (ONNX export too:
    test_onnx_export_matches_pytorch_in_onnxruntime). Both paths give the same values."""
    from evit_mm.models.fuse import OneDNNConvAct
    from evit_mm.models.layers import ConvNormAct
    model = randomize_(EfficientViTL(arch) if arch.startswith('l') else EfficientViTB(arch), **FOLDABLE).eval()
    deployed = evit_mm.deploy(copy.deepcopy(model))
    # a module swap: every conv layer became a OneDNNConvAct with the right post-op; the model keeps its keys
    layers = [m for m in deployed.modules() if isinstance(m, OneDNNConvAct)]
    assert layers and not any(isinstance(m, ConvNormAct) for m in deployed.modules())
    assert all(m.post_op[0] == ('gelu' if act is nn.GELU else 'hardswish') and m.post_op[2] == algorithm
               for m in layers if isinstance(m.act, act))
    assert all(m.post_op[0] == 'none' for m in layers if m.act is None)
    fused = copy.deepcopy(model).fuse()
    assert fused.state_dict().keys() == deployed.state_dict().keys()
    # the training modules have no deploy state: fuse() alone keeps ConvNormAct, whose forward never calls oneDNN
    assert not any(isinstance(m, OneDNNConvAct) for m in fused.modules())
    assert not hasattr(ConvNormAct, 'onednn')

    calls = []
    real = torch.ops.mkldnn._convolution_pointwise

    class Spy:
        def __call__(self, *args):
            calls.append(args[7])
            return real(*args)

    monkeypatch.setattr(torch.ops.mkldnn, '_convolution_pointwise', Spy())
    x = _photo(2, 128, 160)
    with torch.inference_mode():
        fused = deployed(x)
    assert len(calls) == len(layers)
    calls.clear()
    with torch.enable_grad():
        plain = deployed(x)  # autograd on: the plain path
    assert not calls
    with torch.inference_mode(), torch.autocast('cpu', dtype=torch.bfloat16):
        deployed(x)  # autocast: the plain path (oneDNN's fused call would bypass autocast's dtype choice)
    assert not calls
    with torch.inference_mode(), torch.backends.mkldnn.flags(enabled=False):
        no_onednn = deployed(x)  # oneDNN switched off: the plain path
    assert not calls
    _assert_close_rel(fused, plain, rtol=1e-5)
    _assert_close_rel(fused, no_onednn, rtol=1e-5)
    with torch.no_grad():
        _assert_close_rel(fused, model(x))


def test_deploy_nchw_and_idempotent():
    model = randomize_(EfficientViTM('m0'), **FOLDABLE).eval()
    x = _photo(1, 112, 112)
    with torch.no_grad():
        want = model(x)
        deployed = evit_mm.deploy(copy.deepcopy(model), channels_last=False)
        once = deployed(x)
        assert evit_mm.deploy(deployed, channels_last=False) is deployed  # a second call changes nothing
        twice = deployed(x)
    _assert_close_rel(once, want)
    for a, b in zip(once, twice):
        assert torch.equal(a, b) and a.is_contiguous()
    from evit_mm.models.deploy import is_deployed
    assert is_deployed(deployed) and not is_deployed(model)


def test_cga_deploy_folds_the_bias_and_the_query_scale():
    """deploy() swaps each attention for DeployedCascadedGroupAttention; the training class has no deploy state."""
    from evit_mm.models.efficientvit_msra import DeployedCascadedGroupAttention
    model = randomize_(EfficientViTM('m0'), **FOLDABLE).eval()
    deployed = evit_mm.deploy(copy.deepcopy(model), channels_last=False)
    attn = [m for m in deployed.modules() if isinstance(m, CascadedGroupAttention)]
    assert attn and all(type(a) is DeployedCascadedGroupAttention and a.query_scale == 1.0 for a in attn)
    trained = [m for m in model.modules() if isinstance(m, CascadedGroupAttention)]
    assert all(type(m) is CascadedGroupAttention and m.query_scale == m.scale for m in trained)
    assert not any(hasattr(m, name) for m in trained for name in ('deployed', 'deploy_bias', 'bias'))
    fused = copy.deepcopy(model).fuse()
    assert fused.state_dict().keys() == deployed.state_dict().keys()  # 'bias' is not persistent
    for a, ref, f in zip(attn, trained, (m for m in fused.modules() if isinstance(m, CascadedGroupAttention))):
        assert torch.equal(a.bias, ref.attention_biases[:, ref.attention_bias_idxs])
        for dw, dw_fused in zip(a.dws, f.dws):  # the query scale went into the q convs
            torch.testing.assert_close(dw.weight, dw_fused.weight * ref.scale, rtol=0, atol=0)
        # the constant bias is what the forward uses, even if the table changes afterwards
        with torch.no_grad():
            a.attention_biases.add_(1.0)
        assert a.attention_bias() is a.bias
    with pytest.raises(ValueError, match='fuse'):
        DeployedCascadedGroupAttention(trained[0])  # unfused q convs: no inference form


def test_deploy_finds_the_backbone_inside_another_model():
    class Detector(nn.Module):  # stands for an mmdet/mmseg model holding an evit_mm backbone
        def __init__(self):
            super().__init__()
            self.backbone = EfficientViTM('m0')
            self.neck = nn.Sequential(nn.Conv2d(192, 8, 1), nn.BatchNorm2d(8))

        def forward(self, x):
            return self.neck(self.backbone(x)[-1])

    model = randomize_(Detector(), **FOLDABLE).eval()
    x = _photo(1, 128, 128)
    with torch.no_grad():
        want = model(x)
        got = evit_mm.deploy(copy.deepcopy(model))(x)
    _assert_close_rel(got, want)


def test_deploy_rejects_models_without_evit_mm_parts():
    with pytest.raises(ValueError, match='no evit_mm model'):
        evit_mm.deploy(nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)))
    with pytest.raises(TypeError, match='nn.Module'):
        evit_mm.deploy('efficientvit_m0')


def test_import_stays_light_and_deploy_is_lazy():
    """``evit_mm.deploy`` is the function (loaded on first use), the same object as the implementation's in
    evit_mm.models.deploy; there is no module of that name to shadow it."""
    code = ('import sys, evit_mm; assert "torch" not in sys.modules, "import evit_mm imported torch"; '
            'from evit_mm import deploy; import evit_mm.models.deploy as mod; '
            'assert deploy is evit_mm.deploy is mod.deploy and type(deploy).__name__ == "function"; print("ok")')
    res = run_python(code)
    assert res.returncode == 0 and 'ok' in res.stdout, res.stderr


# ------------------------------------------------------------------------------------------------------ ONNX
@pytest.mark.parametrize('name, factory, size', [
    ('m0', lambda: EfficientViTM('m0'), (64, 96)),
    ('b0', lambda: EfficientViTB('b0'), (128, 96)),
    ('seg_b0', lambda: EfficientViTSeg('b0_cityscapes'), (64, 128)),
])
def test_onnx_export_matches_pytorch_in_onnxruntime(tmp_path, name, factory, size):
    pytest.importorskip('onnxruntime')
    from evit_mm.onnx import export_onnx, ort_session
    model = randomize_(factory(), **FOLDABLE).eval()
    result = export_onnx(model, tmp_path / f'{name}.onnx', img_size=size, atol=1e-4)
    assert result.max_abs_diff is not None and result.max_abs_diff <= 1e-4
    assert result.max_abs_diff_deploy <= 1e-4
    # dynamic batch: another batch size, real photographs, against the original model
    x = _photo(3, *size)
    with torch.no_grad():
        want = _outputs(model(x))
    outs = ort_session(result.path, threads=1).run(None, {'input': x.numpy()})
    assert len(outs) == len(want) == len(result.output_names)
    for o, w in zip(outs, want):
        assert o.shape == tuple(w.shape)
        assert np.abs(o - w.numpy()).max() <= 1e-4 * max(1.0, w.abs().max().item())


def test_onnx_graph_is_simple(tmp_path):
    """No BatchNorm and no gather from the bias tables (the deploy form's bias is a constant)."""
    onnx = pytest.importorskip('onnx')
    from evit_mm.onnx import export_onnx
    model = randomize_(EfficientViTM('m0', out_indices=(2,)), **FOLDABLE).eval()
    result = export_onnx(model, tmp_path / 'm0.onnx', img_size=224, check=False)
    graph = onnx.load(result.path).graph
    ops = {n.op_type for n in graph.node}
    assert 'Conv' in ops and 'Softmax' in ops
    assert 'BatchNormalization' not in ops
    assert not [i.name for i in graph.initializer if 'attention_biases' in i.name]


def test_onnx_check_fails_on_a_wrong_reference(tmp_path):
    pytest.importorskip('onnxruntime')
    from evit_mm.onnx import check_onnx, export_onnx
    model = randomize_(EfficientViTM('m0', out_indices=(2,)), **FOLDABLE).eval()
    result = export_onnx(model, tmp_path / 'm0.onnx', img_size=64, check=False)
    x = _photo(1, 64, 64)
    with torch.no_grad():
        want = model(x)
    check_onnx(result.path, {'input': x.numpy()}, want)  # passes
    with pytest.raises(AssertionError, match='differs'):
        check_onnx(result.path, {'input': x.numpy()}, [want[0] + 1e-2])


def test_export_tool_writes_a_checked_graph_and_rejects_unknown_models(tmp_path, capsys):
    pytest.importorskip('onnxruntime')
    tool = load_tool('export_onnx')
    out = tmp_path / 'b0.onnx'
    assert tool.main(['efficientvit_b0', str(out), '--img-size', '64']) == 0
    text = capsys.readouterr().out
    assert out.exists() and 'onnxruntime vs eval-mode PyTorch: max abs diff' in text
    assert 'out3 (1, 128, 2, 2)' in text  # the four stages of B0 at 64x64 (stride 32)
    with pytest.raises(SystemExit, match='unknown model'):
        tool.main(['efficientvit_b9', str(tmp_path / 'x.onnx')])


# ============================================================================================ 6. a deployed model
def test_training_a_deployed_model_is_refused_naming_the_swapped_modules():
    import evit_mm
    from evit_mm.models import EfficientViTM
    from evit_mm.models.deploy import DeployedModelTrainingError
    model = EfficientViTM('m0')
    evit_mm.deploy(model)
    x = torch.randn(1, 3, 64, 64)
    model(x)  # eval mode: inference as before
    model.train()
    with pytest.raises(DeployedModelTrainingError, match=r'stages\.\d+\..*\(DeployedCascadedGroupAttention\) is '
                                                         r'an inference-only module swapped in by evit_mm.deploy'):
        model(x)
    with torch.no_grad():
        model.eval()(x)  # back in eval mode, it runs again
