"""EfficientViT-SAM: the model against the reference code, the official key layout, checkpoints.

Oracle: the ``efficientsam`` package, which carries the reference EfficientViT-SAM code (model, transform,
predictor, automatic mask generator). Both models get the same random weights, with non-trivial BatchNorm
statistics (no downloads: no checkpoint is available offline); ours must load the reference's state dict
*strictly*, so the key names are the official ones. Images are real photographs (scikit-image).
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from conftest import key_dump, needs_keys, randomize_

from evit_mm.models.checkpoint import CheckpointMismatchError
from evit_mm.models.sam import (SAM_VARIANTS, EfficientViTSam, build_efficientvit_sam, detect_sam_checkpoint_format,
                                efficientvit_sam_model_registry, load_sam_prompt_decoder, normalize_variant)
from evit_mm.sam import EfficientViTSamAutomaticMaskGenerator, EfficientViTSamPredictor, preprocess_image

skimage_data = pytest.importorskip('skimage.data')
ref_sam = pytest.importorskip('efficientsam.models.efficientvit.sam')
ref_set_norm_eps = pytest.importorskip('efficientsam.models.nn.norm').set_norm_eps

TOL = 1e-5

# whole-model parameter counts of the reference (mit.md section 3.1; README: 34.8/47.7/61.3/117.0/203.3M)
REF_PARAMS_M = dict(l0=34.793, l1=47.650, l2=61.329, xl0=116.958, xl1=203.346)


# ----------------------------------------------------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------------------------------------------------

def reference_model(variant: str, image_size: int, seed: int = 0):
    """The reference EfficientViT-SAM with random weights, eps set as its model zoo does."""
    with torch.device('meta'):
        model = getattr(ref_sam, f'efficientvit_sam_{variant}')(image_size=image_size)
    model = randomize_(model.to_empty(device='cpu'), seed, what='state_dict')
    ref_set_norm_eps(model, 1e-6)
    return model.eval()


def assert_close(got, want, tol=TOL, what='', min_scale=0.05):
    got, want = torch.as_tensor(np.asarray(got)).float(), torch.as_tensor(np.asarray(want)).float()
    assert got.shape == want.shape, f'{what}: shape {tuple(got.shape)} vs {tuple(want.shape)}'
    assert want.abs().max() > min_scale, f'{what}: reference output is degenerate'
    # tol is absolute for outputs up to 1 and relative to the largest |value| above that: float32 round-off grows
    # with the magnitude, and the order of the sums differs between CPUs (XL1's embedding, |max| 4.3, differs by
    # 1.2e-5 on an AMD EPYC and by less on other machines)
    bound = tol * max(1.0, want.abs().max().item())
    diff = (got - want).abs().max().item()
    assert diff <= bound, f'{what}: max abs diff {diff:.3g} > {bound:.3g}'


def photo(name='astronaut', step=2, crop=None):
    img = getattr(skimage_data, name)()[::step, ::step]
    if crop is not None:
        img = img[:crop[0], :crop[1]]
    return np.ascontiguousarray(img)


def make_prompts(h, w):
    """Point, box and combined prompts inside an ``h x w`` image (original pixels)."""
    points = np.array([[0.35 * w, 0.4 * h], [0.55 * w, 0.2 * h]])
    labels = np.array([1, 0])
    box = np.array([0.15 * w, 0.1 * h, 0.7 * w, 0.85 * h])
    return {
        'points': dict(point_coords=points, point_labels=labels),
        'box': dict(box=box),
        'box+point single-mask': dict(point_coords=points[:1], point_labels=labels[:1], box=box,
                                      multimask_output=False),
    }


def compare_predictors(ref, ours, image, tol=TOL, what=''):
    rp, op = ref_sam.EfficientViTSamPredictor(ref), EfficientViTSamPredictor(ours)
    rp.set_image(image)
    op.set_image(image)
    assert tuple(op.original_size) == tuple(rp.original_size)
    assert tuple(op.input_size) == tuple(rp.input_size)
    assert_close(op.features, rp.features, tol, f'{what} image embedding')
    for name, kw in make_prompts(*image.shape[:2]).items():
        want = rp.predict(return_logits=True, **kw)
        got = op.predict(return_logits=True, **kw)
        assert_close(got[0], want[0], tol, f'{what} {name} mask logits')
        assert_close(got[1], want[1], tol, f'{what} {name} IoU predictions', min_scale=0)
        assert_close(got[2], want[2], tol, f'{what} {name} low-res logits')
        # the binary masks users get: equal, except where the logit is within the tolerance of the threshold
        masks = op.predict(**kw)[0]
        differ = masks != (want[0] > 0)
        assert not differ.any() or np.abs(want[0][differ]).max() <= tol


# ----------------------------------------------------------------------------------------------------------------
# architecture: keys, shapes, parameter counts, norm eps
# ----------------------------------------------------------------------------------------------------------------

@needs_keys
@pytest.mark.parametrize('variant,dump', [('l0', 'sam_l0.txt'), ('xl1', 'sam_xl1.txt')])
def test_keys_and_shapes_equal_official_checkpoint(variant, dump):
    with torch.device('meta'):
        model = build_efficientvit_sam(variant)
    got = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    want = key_dump(dump)
    assert set(got) == set(want), (sorted(set(got) - set(want))[:10], sorted(set(want) - set(got))[:10])
    assert got == want


@pytest.mark.parametrize('variant', sorted(SAM_VARIANTS))
def test_param_counts_and_settings(variant):
    with torch.device('meta'):
        model = build_efficientvit_sam(variant)
    n = sum(p.numel() for p in model.parameters()) / 1e6
    assert n == pytest.approx(REF_PARAMS_M[variant], abs=1e-3)
    assert isinstance(model, EfficientViTSam)
    from segment_anything.modeling import MaskDecoder, PromptEncoder, Sam
    assert isinstance(model, Sam)
    assert type(model.prompt_encoder) is PromptEncoder and type(model.mask_decoder) is MaskDecoder
    enc = 512 if variant.startswith('l') else 1024
    assert model.image_size == (1024, enc) and model.image_encoder.img_size == enc
    assert model.prompt_encoder.input_image_size == (1024, 1024)
    assert model.prompt_encoder.image_embedding_size == (64, 64)
    assert not model.training


def test_norm_eps_as_reference():
    """Every norm layer's eps equals the reference's after its model zoo's set_norm_eps (1e-6 everywhere,
    including the TwoWayTransformer's nn.LayerNorms, whose SAM default is 1e-5)."""
    ref = reference_model('l0', 128)
    with torch.device('meta'):
        ours = build_efficientvit_sam('l0')
    eps = lambda m: {n: float(x.eps) for n, x in m.named_modules() if hasattr(x, 'eps') and  # noqa: E731
                     hasattr(x, 'weight') and not n.endswith('context_module.main')}
    got, want = eps(ours), eps(ref)
    assert got == want
    assert got['mask_decoder.transformer.norm_final_attn'] == 1e-6
    assert got['image_encoder.norm'] == 1e-6 and got['mask_decoder.output_upscaling.1'] == 1e-6


def test_variant_names_and_registry():
    assert normalize_variant('EfficientViT-SAM-XL1') == 'xl1'
    assert normalize_variant('efficientvit_sam_l2') == 'l2'
    assert set(efficientvit_sam_model_registry) == set(SAM_VARIANTS)
    with pytest.raises(ValueError, match='unknown EfficientViT-SAM variant'):
        build_efficientvit_sam('b1')
    with pytest.raises(ValueError, match='multiple of 64'):
        build_efficientvit_sam('xl0', image_size=96)


# ----------------------------------------------------------------------------------------------------------------
# parity with the reference: preprocessing, embeddings, masks, IoU predictions
# ----------------------------------------------------------------------------------------------------------------

@pytest.fixture(scope='module')
def l0_pair():
    ref = reference_model('l0', 512, seed=3)
    return ref, build_efficientvit_sam('l0', checkpoint=ref.state_dict())


@pytest.mark.parametrize('size', [512, 1024])
def test_preprocessing_matches_reference(size):
    ref = ref_sam.EfficientViTSam.__new__(ref_sam.EfficientViTSam)  # only its transform is needed
    nn.Module.__init__(ref)
    ref_sam.EfficientViTSam.__init__(ref, nn.Identity(), nn.Identity(), nn.Identity(), image_size=(1024, size))
    for img in (photo('astronaut', 1, (300, 451)), photo('coins', 1), photo('chelsea', 1)[:size, :size]):
        want = ref.transform(img if img.ndim == 3 else np.repeat(img[..., None], 3, 2))[None]
        got = preprocess_image(img, size)
        assert got.shape == want.shape == (1, 3, size, size)
        assert (got - want).abs().max() <= 1e-5
        h, w = ref_sam.SamResize.get_preprocess_shape(*img.shape[:2], size)
        assert (got[..., h:, :] == 0).all() and (got[..., :, w:] == 0).all()  # zero padding, bottom/right


def test_parity_l0_full_resolution(l0_pair):
    """L0 at its native 512 input on a real 256x400 photograph: embeddings, masks and IoU for points, a box,
    both, multimask and single-mask."""
    ref, ours = l0_pair
    compare_predictors(ref, ours, photo('chelsea', 1), what='l0')


@pytest.mark.parametrize('variant,size', [
    ('xl0', 128),
    pytest.param('l1', 128, marks=pytest.mark.slow),
    pytest.param('l2', 128, marks=pytest.mark.slow),
    pytest.param('xl1', 128, marks=pytest.mark.slow)])
def test_parity_small_input(variant, size):
    """The other variants, with a small encoder input (the neck resizes to 64x64 whatever the input, so the
    whole pipeline, decoder included, runs; the reference accepts the same image_size argument). The neck runs
    at 64x64 whatever the input, so XL1 stays slow (~130 GMACs); L1/L2 differ from L0 in depth only."""
    ref = reference_model(variant, size, seed=11)
    ours = build_efficientvit_sam(variant, checkpoint=ref.state_dict(), image_size=size)
    compare_predictors(ref, ours, photo('chelsea', 3), what=variant)


@pytest.mark.slow
@pytest.mark.parametrize('variant', ['l1', 'l2', 'xl0', 'xl1'])
def test_parity_full_resolution(variant):
    size = SAM_VARIANTS[variant]['image_size']
    ref = reference_model(variant, size, seed=5)
    ours = build_efficientvit_sam(variant, checkpoint=ref.state_dict())
    compare_predictors(ref, ours, photo('chelsea', 1), what=variant)


def test_amg_matches_reference(l0_pair):
    """SAM's automatic mask generator on both models gives the same records."""
    ref, ours = l0_pair
    img = photo('coins', 2)
    kw = dict(points_per_side=2, pred_iou_thresh=0.0, stability_score_thresh=0.0)
    want = ref_sam.EfficientViTSamAutomaticMaskGenerator(ref, **kw).generate(np.repeat(img[..., None], 3, 2))
    got = EfficientViTSamAutomaticMaskGenerator(ours, **kw).generate(img)  # grayscale: converted
    assert len(got) == len(want) > 0
    for g, w in zip(got, want):
        assert set(g) == set(w)
        assert g['bbox'] == w['bbox'] and g['crop_box'] == w['crop_box']
        assert abs(g['area'] - w['area']) <= 0.001 * w['area'] + 2
        assert g['predicted_iou'] == pytest.approx(w['predicted_iou'], abs=1e-5)
        assert g['stability_score'] == pytest.approx(w['stability_score'], abs=1e-3)
        assert np.allclose(g['point_coords'], w['point_coords'])


def test_sam_forward_matches_predictor(l0_pair):
    """``Sam.forward``'s interface (list of records) gives the predictor's results, for two images at once."""
    ours = build_efficientvit_sam('l0', checkpoint=l0_pair[1].state_dict(), image_size=256)  # faster
    pred = EfficientViTSamPredictor(ours)
    imgs = [photo('chelsea', 1), photo('coffee', 2)]
    batched, expected = [], []
    for img in imgs:
        pred.set_image(img)
        prompts = make_prompts(*img.shape[:2])
        coords = pred.transform.apply_coords(prompts['points']['point_coords'], img.shape[:2])
        labels = prompts['points']['point_labels']
        boxes = pred.transform.apply_boxes(prompts['box']['box'][None], img.shape[:2])
        expected.append(pred.predict_torch(torch.as_tensor(coords[None], dtype=torch.float),
                                           torch.as_tensor(labels[None]), torch.as_tensor(boxes, dtype=torch.float),
                                           return_logits=True))
        resized = pred.image_transform.apply_image(img)
        batched.append({'image': torch.as_tensor(resized).permute(2, 0, 1).float(), 'original_size': img.shape[:2],
                        'point_coords': torch.as_tensor(coords[None], dtype=torch.float),
                        'point_labels': torch.as_tensor(labels[None]),
                        'boxes': torch.as_tensor(boxes, dtype=torch.float)})
    outputs = ours(batched, multimask_output=True)
    for out, (masks, iou, low) in zip(outputs, expected):
        assert_close(out['low_res_logits'], low, 1e-4, 'low-res')
        assert_close(out['iou_predictions'], iou, 1e-4, 'iou')
        assert out['masks'].shape == masks.shape and out['masks'].dtype == torch.bool
        assert (out['masks'] != (masks > 0)).float().mean() < 1e-3


# ----------------------------------------------------------------------------------------------------------------
# checkpoints
# ----------------------------------------------------------------------------------------------------------------

def test_checkpoint_file_formats(tmp_path, l0_pair):
    ref, ours = l0_pair
    sd = ref.state_dict()
    x = torch.randn(1, 3, 128, 128, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want = ours.image_encoder(x)
    for i, obj in enumerate([sd, {'state_dict': sd}, {f'module.{k}': v for k, v in sd.items()}]):
        path = tmp_path / f'ckpt{i}.pt'
        torch.save(obj, path)
        model = efficientvit_sam_model_registry['l0'](str(path))
        with torch.no_grad():
            assert torch.equal(model.image_encoder(x), want)
    assert detect_sam_checkpoint_format(sd) == 'efficientvit_sam'


def test_checkpoint_mismatch_lists_keys(l0_pair):
    ref, _ = l0_pair
    with torch.device('meta'):
        l1_sd = build_efficientvit_sam('l1').state_dict()
    with pytest.raises(CheckpointMismatchError) as err:
        build_efficientvit_sam('l0', checkpoint=l1_sd)
    assert 'image_encoder.backbone.stages.3.op_list.5.main.inverted_conv.conv.weight' in err.value.unexpected
    assert 'image_encoder.neck.middle.op_list.4.main.spatial_conv.conv.weight' in err.value.unexpected
    assert not err.value.missing and 'unexpected in the checkpoint (106)' in str(err.value)
    assert 'image_encoder.backbone.stages.3.op_list.5.main.inverted_conv.conv.bias' in str(err.value)
    sd = dict(ref.state_dict())
    del sd['image_encoder.norm.bias']
    sd['image_encoder.neck.output_ops.0.op_list.0.conv.bias'] = torch.zeros(3)
    with pytest.raises(CheckpointMismatchError) as err:
        build_efficientvit_sam('l0', checkpoint=sd)
    assert err.value.missing == ['image_encoder.norm.bias']
    assert err.value.shape_mismatch[0][0] == 'image_encoder.neck.output_ops.0.op_list.0.conv.bias'
    with pytest.raises(ValueError, match='not a SAM'):
        build_efficientvit_sam('l0', checkpoint={'backbone.stages.0.op_list.0.conv.weight': torch.zeros(1)})


def _sam_vit_b_state_dict(seed=7):
    from segment_anything import sam_model_registry
    with torch.device('meta'):
        sam = sam_model_registry['vit_b']()
    return sam, randomize_(sam.to_empty(device='cpu'), seed, what='state_dict').eval()


def test_sam_vit_checkpoint_populates_prompt_encoder_and_decoder(l0_pair):
    """segment_anything's ViT-B SAM (random weights): its prompt encoder and mask decoder load into
    EfficientViT-SAM (the ViT image encoder is ignored) and give SAM's decoder outputs."""
    _, sam = _sam_vit_b_state_dict()
    sd = sam.state_dict()
    assert detect_sam_checkpoint_format(sd) == 'sam_vit'
    with pytest.raises(ValueError, match='load_sam_prompt_decoder'):
        build_efficientvit_sam('l0', checkpoint=sd)
    _, ours = l0_pair
    ours = build_efficientvit_sam('l0', checkpoint=ours.state_dict(), decoder_checkpoint=sd)
    for part in ('prompt_encoder', 'mask_decoder'):
        for k, v in getattr(ours, part).state_dict().items():
            assert torch.equal(v, sd[f'{part}.{k}']), k
    # SAM's transformer LayerNorms use eps 1e-5, EfficientViT-SAM's 1e-6 (not in the checkpoint): align to compare
    for m in sam.mask_decoder.modules():
        if isinstance(m, nn.LayerNorm):
            m.eps = 1e-6
    g = torch.Generator().manual_seed(1)
    emb = torch.randn(1, 256, 64, 64, generator=g)
    coords = torch.rand(2, 3, 2, generator=g) * 900
    labels = torch.tensor([[1, 0, 1], [1, 1, 0]])
    boxes = torch.tensor([[100.0, 200.0, 600.0, 700.0], [10.0, 20.0, 300.0, 400.0]])
    with torch.no_grad():
        outs = []
        for model in (sam, ours):
            sparse, dense = model.prompt_encoder(points=(coords, labels), boxes=boxes, masks=None)
            outs.append(model.mask_decoder(emb, model.prompt_encoder.get_dense_pe(), sparse, dense, True))
    for got, want in zip(outs[1], outs[0]):
        assert_close(got, want, TOL, 'decoder')
    with pytest.raises(CheckpointMismatchError, match=r'mask_decoder'):
        bad = {k: v for k, v in sd.items() if 'iou_prediction_head' not in k}
        load_sam_prompt_decoder(ours, bad)


def test_fuse_keeps_embeddings(l0_pair):
    _, ours = l0_pair
    model = build_efficientvit_sam('l0', checkpoint=ours.state_dict(), image_size=128)
    x = torch.randn(1, 3, 128, 128, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want = model.image_encoder(x)
        got = model.image_encoder.fuse()(x)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    assert_close(got, want, 2e-5, 'fused encoder')
