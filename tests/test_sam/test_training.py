"""EfficientViT-SAM training, the parts: RLE checks, SA-1B/COCO datasets (folders, tar shards, bad files),
transforms and prompts, the phase-2 loss, optimizer settings, the teacher-embedding cache. The training runs
themselves (tools/train.py, resume) are in tests/test_sam/test_training_e2e.py."""
import json
import os.path as osp

import numpy as np
import pytest
import torch
from conftest import ROOT, load_tool

from evit_mm.mm.compat import apply_all

apply_all()

CONFIGS = osp.join(ROOT, 'configs', 'efficientvit_sam')
PHASE1_DEMO = osp.join(CONFIGS, 'efficientvit-sam-l0_phase1-distill_sa1b-demo.py')
PHASE2_DEMO = osp.join(CONFIGS, 'efficientvit-sam-l0_phase2-e2e_sa1b-demo.py')
VARIANTS = ('l0', 'l1', 'l2', 'xl0', 'xl1')


@pytest.fixture(scope='module')
def sa1b(tmp_path_factory):
    from evit_mm.sample_data import make_sa1b_sample
    return make_sa1b_sample(str(tmp_path_factory.mktemp('sa1b')), num_images=4, image_size=96, bad_files=True,
                            tar=True)


def _pipeline(size=64, prompts=True, flip=0.5):
    steps = [dict(type='SamRandomFlip', prob=flip), dict(type='SamResizeLongestSide', size=size),
             dict(type='SamPad', size=size)]
    if prompts:
        steps.append(dict(type='SamSamplePrompts'))
    return steps + [dict(type='SamPackInputs')]


def _sa1b_dataset(sa1b, **kwargs):
    from mmengine.registry import DATASETS

    import evit_mm.sam.training  # noqa: F401 (registers)
    cfg = dict(type='SA1BDataset', data_root=sa1b['root'], img_dir='images', num_masks=4, pipeline=_pipeline())
    cfg.update(kwargs)
    return DATASETS.build(cfg)


# -- RLE --------------------------------------------------------------------------------------------------------

def test_rle_parser_agrees_with_pycocotools():
    from pycocotools import mask as mask_utils
    from skimage import data

    from evit_mm.sam.coco_masks import decode_segmentation, rle_counts
    from evit_mm.sample_data import segment_coins
    image = data.coins()
    for mask in (image > 100, segment_coins()[0][1], np.zeros((5, 7), bool), np.ones((3, 4), bool)):
        rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
        counts = rle_counts(rle['counts'].decode())
        assert sum(counts) == mask.size
        assert sum(counts[1::2]) == mask.sum()  # odd runs are foreground
        text = dict(size=rle['size'], counts=rle['counts'].decode())
        assert np.array_equal(decode_segmentation(text, *mask.shape), mask)
        assert np.array_equal(decode_segmentation(dict(size=rle['size'], counts=counts), *mask.shape), mask)


@pytest.mark.parametrize('segmentation, message', [
    (dict(size=[4, 4], counts='1'), 'add up to 1, not'),
    (dict(size=[4, 4], counts='0g'), 'ends in the middle'),
    (dict(size=[4, 4], counts='0\x7f'), 'illegal character'),
    (dict(size=[4, 5], counts=[20]), 'does not match the image size'),
    (dict(size=[4, 4], counts=[10, -2, 8]), 'negative run'),
    (dict(counts='16'), 'needs "counts" and "size"'),
    ([[1, 2, 3]], 'at least 3'),
    ([[0, 0, 1, float('nan'), 2, 2]], 'finite'),
    (42, 'RLE dict or a polygon list'),
])
def test_bad_segmentations_raise_clear_errors(segmentation, message):
    from evit_mm.sam.coco_masks import BadAnnotation, decode_segmentation
    with pytest.raises(BadAnnotation, match=message):
        decode_segmentation(segmentation, 4, 4)


def test_polygons_decode():
    from evit_mm.sam.coco_masks import decode_segmentation
    mask = decode_segmentation([[1, 1, 9, 1, 9, 5, 1, 5]], 8, 12)
    assert mask.shape == (8, 12) and mask[2:4, 2:8].all() and not mask[6:].any()


# -- datasets ---------------------------------------------------------------------------------------------------

def test_bad_files_are_reported_skipped_and_counted(sa1b):
    ds = _sa1b_dataset(sa1b)
    assert ds.bad_counts == {'missing json': 1}  # sa_901, found when listing
    assert len(ds) == 4 + 4  # 4 good images + sa_902..sa_905
    ids = [ds[i]['data_samples'].img_id for i in range(len(ds))]
    # sa_902 (invalid RLE), sa_903 (only empty masks) and sa_904 (broken json) are replaced by the next usable
    # image (sa_905, whose two valid masks are used); no sample comes from them
    assert ids[:4] == sa1b['stems'] and ids[4:] == ['sa_905'] * 4
    assert ds.bad_counts == {'missing json': 1, 'bad sample': 3, 'invalid annotation': 2, 'empty mask': 3}
    assert set(ds.bad_files) == {osp.join(sa1b['images'], f'{s}.json') for s in sa1b['bad']}
    assert any('RLE run lengths add up to' in r for r in ds.bad_files[osp.join(sa1b['images'], 'sa_902.json')])
    assert any('JSONDecodeError' in r for r in ds.bad_files[osp.join(sa1b['images'], 'sa_904.json')])
    assert 'bad sample: 3' in ds.summary()


def test_tar_shards_read_like_folders(sa1b):
    from_folder = _sa1b_dataset(sa1b)
    from_tar = _sa1b_dataset(sa1b, img_dir='no_such_folder', shard_dir='shards')
    index = sa1b['tar'] + '.index.json'
    assert osp.isfile(index)  # the shard's member index, kept for the next run
    listed = [(d['img_id'], d['img_source']) for d in from_tar.load_data_list()]  # now from the index
    with open(index) as f:
        assert len(json.load(f)['members']) == 2 * 4 + 1 + 2 * 4  # good pairs, sa_901.jpg, bad pairs
    assert [i for i, _ in listed] == [d['img_id'] for d in from_folder.load_data_list()]
    first_scan = [from_tar.get_data_info(i) for i in range(len(from_tar))]
    assert listed == [(d['img_id'], d['img_source']) for d in first_scan]
    assert from_tar.bad_counts == from_folder.bad_counts == {'missing json': 1}
    for i in (0, 3, 5):
        a, b = from_folder[i], from_tar[i]
        assert torch.equal(a['inputs'], b['inputs'])
        for key in ('gt_masks', 'boxes', 'point_coords'):
            if key in a['data_samples']:
                assert torch.equal(a['data_samples'].get(key), b['data_samples'].get(key))


def test_sampling_is_reproducible_and_new_in_every_pass(sa1b):
    ds = _sa1b_dataset(sa1b, num_masks=8)
    n = len(ds)
    first, again, next_pass = ds[1], ds[1], ds[1 + n]
    assert torch.equal(first['inputs'], again['inputs'])
    assert torch.equal(first['data_samples'].gt_masks, again['data_samples'].gt_masks)
    assert first['data_samples'].sample_seed == again['data_samples'].sample_seed
    assert first['data_samples'].sample_seed != next_pass['data_samples'].sample_seed
    assert not torch.equal(first['data_samples'].gt_masks, next_pass['data_samples'].gt_masks)


def test_sampler_passes_and_skip():
    import itertools

    from evit_mm.sam.training import SamInfiniteSampler
    sampler = SamInfiniteSampler(list(range(5)), shuffle=True, seed=3)
    stream = list(itertools.islice(iter(sampler), 20))
    for p in range(4):  # pass p: a permutation of 0..4, shifted by 5 p
        assert sorted(stream[5 * p:5 * p + 5]) == [5 * p + i for i in range(5)]
    assert stream[:5] != [i for i in range(5)] and [i % 5 for i in stream[:5]] != [i % 5 for i in stream[5:10]]
    resumed = SamInfiniteSampler(list(range(5)), shuffle=True, seed=3)
    resumed.skip(7)
    assert list(itertools.islice(iter(resumed), 13)) == stream[7:]


def test_samples_are_consistent(sa1b):
    """Masks line up with the image, fewer masks than num_masks are repeated, prompts lie on their masks."""
    from PIL import Image
    ds = _sa1b_dataset(sa1b, num_masks=40, pipeline=_pipeline(size=64, flip=0.0))
    with open(osp.join(sa1b['images'], 'sa_1.json')) as f:
        assert len(json.load(f)['annotations']) == 24  # the coins photograph: 24 coins
    h = int(303 * 64 / 384 + 0.5)  # SAM's rounding of the resized height: 51
    seen_box = seen_points = False
    for epoch in range(6):
        s = ds[epoch * len(ds)]['data_samples']  # sa_1: the coins photograph, 303 x 384
        assert s.ori_shape == (303, 384) and s.img_shape == (h, 64)
        masks = s.gt_masks
        assert masks.shape == (40, 64, 64) and masks.dtype == torch.uint8
        assert len({m.numpy().tobytes() for m in masks}) == 24  # 24 distinct coins, 16 repeats
        assert not masks[:, h:].any()  # padding
        scale = 1024 / 64
        if 'boxes' in s:
            seen_box = True
            for m, box in zip(masks, s.boxes / scale):
                ys, xs = np.nonzero(m.numpy() >= 128)
                assert box[0] == xs.min() and box[1] == ys.min() and box[2] == xs.max() + 1 and box[3] == ys.max() + 1
        else:
            seen_points = True
            n = s.point_coords.shape[1]
            assert 1 <= n <= 10 and s.point_labels.shape == (40, n) and (s.point_labels == 1).all()
            px = ((s.point_coords + 0.5) / scale - 0.5).round().long()
            assert (masks[torch.arange(40)[:, None], px[..., 1], px[..., 0]] >= 128).all()
    assert seen_box and seen_points
    # the image: the coins photograph resized, padded with the mean (0 after normalisation)
    coins = np.asarray(Image.open(osp.join(sa1b['images'], 'sa_1.jpg')).convert('RGB').resize((64, h),
                                                                                              Image.BILINEAR))
    img = ds[0]['inputs']
    assert np.abs(img[:, :h].permute(1, 2, 0).numpy() - coins).max() <= 1
    assert torch.allclose(img[:, h:], torch.tensor([123.675, 116.28, 103.53]).view(3, 1, 1))


def test_coco_dataset(tmp_path, coins_coco):
    from mmengine.registry import DATASETS

    import evit_mm.sam.training  # noqa: F401
    with open(coins_coco['train_ann']) as f:
        record = json.load(f)
    anns = record['annotations']
    broken = dict(anns[0], id=10 ** 6, segmentation=[[1, 2, 3]])
    record['annotations'] = anns + [broken]
    ann_file = tmp_path / 'instances.json'
    ann_file.write_text(json.dumps(record))
    ds = DATASETS.build(dict(type='SamCocoDataset', ann_file=str(ann_file),
                             data_prefix=dict(img=coins_coco['train_img']), num_masks=6, pipeline=_pipeline()))
    assert len(ds) == len({a['image_id'] for a in anns})
    samples = [ds[i]['data_samples'] for i in range(len(ds))]
    assert all(s.gt_masks.shape == (6, 64, 64) for s in samples)
    image_id = anns[0]['image_id']
    assert ds.bad_counts == {'invalid annotation': 1}, ds.bad_files
    assert any('at least 3' in r for r in ds.bad_files[f'{ann_file} (image {image_id})'])


# -- loss -------------------------------------------------------------------------------------------------------

def test_mask_loss_prefers_the_right_output_and_samples_boundaries():
    from evit_mm.sam.training.losses import sam_mask_loss, uncertain_points
    target = torch.zeros(2, 64, 64)
    target[0, 10:40, 20:50] = 1
    target[1, 30:60, 5:25] = 1
    good = (target * 2 - 1) * 20  # confident and right
    low = torch.nn.functional.interpolate(good[:, None], (32, 32), mode='area')[:, 0]
    logits = torch.stack([-low, low, torch.zeros_like(low)], dim=1)  # outputs: wrong, right, unsure
    def run(outputs):
        return sam_mask_loss(outputs, target, num_points=256, generator=torch.Generator().manual_seed(0))

    loss, bce, dice = run(logits)
    assert loss.shape == bce.shape == dice.shape == (2, )
    assert torch.allclose(loss, 20 * bce + dice)  # the terms of the output that was kept
    right, wrong, unsure = run(logits[:, 1:2])[0], run(logits[:, :1])[0], run(logits[:, 2:])
    assert (wrong > 10 * right).all() and (unsure[0] > 2 * right).all()
    assert (loss < 2 * right).all() and (loss < unsure[0]).all()  # the minimum over outputs: the right one
    assert torch.allclose(unsure[1], torch.full((2, ), float(np.log(2))), atol=1e-5)  # BCE of logit 0
    # the important points are the uncertain ones: a logit ramp 0 at x = 16 (of 32) keeps the 100 of 300 uniform
    # candidates closest to x = 16, i.e. within about 32 * (100 / 300) / 2 = 5.3 px of it
    ramp = (torch.arange(32.0) + 0.5 - 16).expand(1, 1, 32, 32)
    coords = uncertain_points(ramp, 100, 3.0, 1.0, torch.Generator().manual_seed(0))
    assert coords.shape == (1, 100, 2) and ((coords[0, :, 0] * 32 - 16).abs() < 7).all()
    assert ((coords[0, :, 1] * 32 - 16).abs() > 8).any()  # y is free


def test_mask_loss_is_reproducible_from_the_seed():
    from evit_mm.sam.training.losses import sam_mask_loss
    logits = torch.randn(3, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    target = (torch.rand(3, 32, 32, generator=torch.Generator().manual_seed(2)) > 0.5).float()
    a = sam_mask_loss(logits, target, num_points=64, generator=torch.Generator().manual_seed(5))[0]
    b = sam_mask_loss(logits, target, num_points=64, generator=torch.Generator().manual_seed(5))[0]
    c = sam_mask_loss(logits, target, num_points=64, generator=torch.Generator().manual_seed(6))[0]
    assert torch.equal(a, b) and not torch.equal(a, c)


# -- configs and optimizer --------------------------------------------------------------------------------------

@pytest.mark.parametrize('variant', VARIANTS)
def test_configs_describe_the_recipe(variant):
    from mmengine.config import Config
    size = 1024 if variant.startswith('xl') else 512
    p1 = Config.fromfile(osp.join(CONFIGS, f'efficientvit-sam-{variant}_phase1-distill_sa1b.py'))
    p2 = Config.fromfile(osp.join(CONFIGS, f'efficientvit-sam-{variant}_phase2-e2e_sa1b.py'))
    for cfg in (p1, p2):
        assert cfg.default_scope == 'mmengine' and cfg.custom_imports.imports == ['evit_mm.sam.training']
        assert cfg.model.sam.variant == variant
        pipeline = {t['type']: t for t in cfg.train_dataloader.dataset.pipeline}
        assert pipeline['SamResizeLongestSide']['size'] == pipeline['SamPad']['size'] == size
        opt = cfg.optim_wrapper
        assert opt.optimizer.type == 'AdamW' and opt.optimizer.weight_decay == 0.1 and opt.clip_grad.max_norm == 2.0
        assert cfg.auto_scale_lr == dict(enable=True, base_batch_size=cfg.train_dataloader.batch_size)
    assert p1.model.type == 'SamDistillModel' and p1.teacher.arch == 'vit_h'
    assert p1.train_dataloader.dataset.embedding_cache and not p1.train_dataloader.dataset.with_masks
    assert p2.model.type == 'SamE2EModel' and p2.model.init_checkpoint.startswith(
        f'work_dirs/efficientvit-sam-{variant}_phase1-distill_sa1b/')
    assert p2.train_dataloader.dataset.num_masks == 64 and p2.model.loss.bce_weight == 20.0
    assert p2.optim_wrapper.optimizer.lr == (4e-7 if variant.startswith('xl') else 8e-7)
    prompts = {t['type']: t for t in p2.train_dataloader.dataset.pipeline}['SamSamplePrompts']
    assert prompts == dict(type='SamSamplePrompts', box_prob=0.5, max_points=10, multimask_prob=0.5)


def test_finetune_config_reads_coco(coins_coco):
    from mmengine.config import Config
    from mmengine.registry import DATASETS

    import evit_mm.sam.training  # noqa: F401
    cfg = Config.fromfile(osp.join(CONFIGS, 'efficientvit-sam-l0_phase2-finetune_coco.py'))
    ds_cfg = cfg.train_dataloader.dataset
    ds_cfg.update(data_root=coins_coco['root'] + '/', pipeline=_pipeline())
    ds = DATASETS.build(ds_cfg)
    assert len(ds) > 0 and ds[0]['data_samples'].gt_masks.shape == (16, 64, 64)
    assert cfg.train_cfg.by_epoch and cfg.train_dataloader.sampler.type == 'SamDefaultSampler'


def test_optimizer_groups_follow_the_reference():
    """No weight decay on norms and biases, AdamW's 0.1 elsewhere; phase 1 leaves the frozen decoder out."""
    from mmengine.config import Config
    from mmengine.optim import build_optim_wrapper
    from mmengine.registry import MODELS

    import evit_mm.sam.training  # noqa: F401
    cfg = Config.fromfile(PHASE1_DEMO)
    model = MODELS.build(cfg.model)
    wrapper = build_optim_wrapper(model, cfg.optim_wrapper)
    names = {id(p): n for n, p in model.named_parameters()}
    groups = [(names[id(p)], g['weight_decay']) for g in wrapper.optimizer.param_groups for p in g['params']]
    assert {n for n, _ in groups} == {n for n, p in model.named_parameters() if n.startswith('sam.image_encoder.')}
    for name, wd in groups:
        assert wd == (0.0 if ('norm' in name or 'bias' in name) else 0.1), name
    assert any(wd == 0.1 for _, wd in groups) and any(wd == 0.0 for _, wd in groups)
    assert not any('teacher' in k for k in model.state_dict())  # the teacher stays out of checkpoints

    cfg2 = Config.fromfile(PHASE2_DEMO)
    model2 = MODELS.build(cfg2.model)
    wrapper2 = build_optim_wrapper(model2, cfg2.optim_wrapper)
    assert sum(len(g['params']) for g in wrapper2.optimizer.param_groups) == len(list(model2.parameters()))


def test_student_backbone_starts_from_a_classification_checkpoint(tmp_path):
    from evit_mm.models.efficientvit_mit import EfficientViTL
    from evit_mm.sam.training import build_training_sam
    torch.manual_seed(1)
    backbone = EfficientViTL('l0')
    path = str(tmp_path / 'l0_backbone.pth')
    torch.save(backbone.state_dict(), path)
    model = build_training_sam('l0', image_size=64, backbone_checkpoint=path)
    loaded = model.image_encoder.backbone.state_dict()
    assert model.training and all(torch.equal(v, loaded[k]) for k, v in backbone.state_dict().items())


# -- teacher-embedding cache ------------------------------------------------------------------------------------

@pytest.mark.slow
def test_cache_tool_is_resumable_and_matches_the_online_teacher(tmp_path, sa1b):
    """The tool writes shards, skips finished ones, and the cached embeddings give the online teacher's
    first-step loss."""
    from mmengine.config import Config
    from mmengine.dataset import pseudo_collate
    from mmengine.registry import DATASETS, MODELS

    import evit_mm.sam.training  # noqa: F401
    tool = load_tool('sam_cache_teacher_embeddings')
    out = str(tmp_path / 'cache')
    opts = ['--cfg-options', f'train_dataloader.dataset.data_root={sa1b["root"]}',
            'train_dataloader.dataset.indices=3']
    tool.main([PHASE1_DEMO, '--out', out, '--dtype', 'float32', '--shard-size', '2', '--hflip'] + opts)
    first = osp.getmtime(osp.join(out, 'shard_000000.npy'))
    import os
    os.remove(osp.join(out, 'shard_000001.json'))  # as if killed while writing shard 1
    tool.main([PHASE1_DEMO, '--out', out, '--dtype', 'float32', '--shard-size', '2', '--hflip'] + opts)
    assert osp.getmtime(osp.join(out, 'shard_000000.npy')) == first
    assert osp.isfile(osp.join(out, 'shard_000001.json'))
    with pytest.raises(ValueError, match='other settings'):
        tool.main([PHASE1_DEMO, '--out', out, '--dtype', 'float16', '--shard-size', '2'] + opts)

    cfg = Config.fromfile(PHASE1_DEMO)
    ds_cfg = cfg.train_dataloader.dataset
    ds_cfg.update(data_root=sa1b['root'], indices=3)
    online_ds = DATASETS.build(ds_cfg)
    cached_ds = DATASETS.build(dict(ds_cfg, embedding_cache=out))
    online = MODELS.build(cfg.model)
    cached = MODELS.build(dict(cfg.model, teacher=None))
    cached.load_state_dict(online.state_dict())
    for indices in ([0, 1], [2, 3 + 2]):  # pass 1 of index 2 flips (the cache's flipped embedding is used)
        a, b = pseudo_collate([online_ds[i] for i in indices]), pseudo_collate([cached_ds[i] for i in indices])
        assert 'teacher_img' in a['data_samples'][0] and 'teacher_img' not in b['data_samples'][0]
        flips = [s.flip for s in b['data_samples']]
        with torch.no_grad():
            la = online(**online.data_preprocessor(a, True), mode='loss')['loss_distill']
            lb = cached(**cached.data_preprocessor(b, True), mode='loss')['loss_distill']
        assert torch.allclose(la, lb, rtol=1e-6, atol=0), (la, lb, flips)
    assert any(flips)


@pytest.mark.slow
def test_both_phases_run_under_bf16_autocast(sa1b):
    """What --amp --amp-dtype bfloat16 does to the forward pass (mmengine's AmpOptimWrapper needs a GPU; the
    autocast region is the same): finite losses close to fp32 ones, gradients that reach the encoder."""
    from mmengine.dataset import pseudo_collate
    from mmengine.registry import MODELS
    tiny = dict(img_size=64, patch_size=1, embed_dim=32, depth=1, num_heads=1, out_chans=256, window_size=8,
                global_attn_indexes=())
    pipeline = _pipeline(size=64, flip=0.0)
    pipeline[1]['teacher_size'] = pipeline[2]['teacher_size'] = 64
    batch = pseudo_collate([_sa1b_dataset(sa1b, pipeline=pipeline, num_masks=2)[2]])
    for cfg in (dict(type='SamDistillModel', teacher=dict(arch=tiny)),
                dict(type='SamE2EModel', loss=dict(num_points=256))):
        model = MODELS.build(dict(cfg, sam=dict(variant='l0', image_size=64)))
        data = model.data_preprocessor(batch, True)
        fp32 = sum(v for k, v in model(**data, mode='loss').items() if k.startswith('loss'))
        with torch.autocast('cpu', dtype=torch.bfloat16):
            bf16 = sum(v for k, v in model(**data, mode='loss').items() if k.startswith('loss'))
        bf16.backward()
        ratio = float(bf16.detach() / fp32.detach())
        assert torch.isfinite(bf16) and abs(ratio - 1) < 0.05, (cfg["type"], fp32, bf16)
        grads = [p.grad for p in model.sam.image_encoder.parameters()]
        assert all(g is not None and torch.isfinite(g).all() for g in grads)


# ======================================================================== 4. the teacher-embedding cache's files
def _cache(root, shape=(256, 8, 8), dtype='float16', hflip=False):
    """A 2-shard cache (5 images, shards of 3) written with the cache's own writers."""
    from evit_mm.sam.training.cache import write_meta, write_shard
    meta = dict(version=1, teacher='tiny', teacher_cfg='{}', teacher_size=32, shape=list(shape), dtype=dtype,
                shard_size=3, hflip=hflip, num_images=5)
    write_meta(str(root), meta)
    rng = np.random.default_rng(0)
    for k, ids in enumerate((['a', 'b', 'c'], ['d', 'e'])):
        arrays = [rng.standard_normal((len(ids), *shape)).astype(dtype) for _ in range(2 if hflip else 1)]
        write_shard(str(root), k, ids, arrays[0], arrays[1] if hflip else None)
    return str(root)


def test_cache_refuses_a_truncated_shard_naming_it_and_the_rebuild(tmp_path):
    from evit_mm.sam.training.cache import EmbeddingCache
    root = _cache(tmp_path / 'cache', hflip=True)
    assert EmbeddingCache(root).get('e')['teacher_embedding'].shape == (256, 8, 8)
    shard = tmp_path / 'cache' / 'shard_000001_hflip.npy'
    shard.write_bytes(shard.read_bytes()[:5000])  # a copy that stopped half way
    with pytest.raises(ValueError, match='shard_000001_hflip.npy is truncated') as err:
        EmbeddingCache(root)
    message = str(err.value)
    assert f'python tools/sam_cache_teacher_embeddings.py CONFIG --out {root}' in message
    assert '--shard-size 3 --dtype float16 --hflip --part 1 --num-parts 2' in message
    assert 'rm -f ' + str(tmp_path / 'cache' / 'shard_000001') in message


@pytest.mark.parametrize('bad', ['shape', 'dtype'])
def test_cache_refuses_a_shard_of_another_shape_or_dtype(tmp_path, bad):
    """A shard of a 4x4 grid (or of float32) in a cache whose meta.json says 8x8 float16: refused on open, not
    handed to training."""
    from evit_mm.sam.training.cache import EmbeddingCache, write_shard
    root = _cache(tmp_path / 'cache')
    wrong = np.zeros((2, 256, 4, 4) if bad == 'shape' else (2, 256, 8, 8),
                     np.float16 if bad == 'shape' else np.float32)
    write_shard(root, 1, ['d', 'e'], wrong)
    expected = r'\(2, 256, 4, 4\), but meta.json says \(2, 256, 8, 8\)' if bad == 'shape' else \
        'float32, but meta.json says float16'
    with pytest.raises(ValueError, match=r'shard_000001.npy holds .*' + expected):
        EmbeddingCache(root)
