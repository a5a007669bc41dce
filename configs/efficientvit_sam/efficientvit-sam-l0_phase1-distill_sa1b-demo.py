# Phase 1 on the tiny SA-1B-format demo set (evit_mm.sample_data.make_sa1b_sample: real photographs, real masks),
# small enough for a CPU: EfficientViT-SAM-L0 at 128 px learns the embeddings of a small random ViT teacher
# (segment-anything's ImageEncoderViT, depth 2, 64x64 output grid). It shows the mechanics (online teacher or
# cache, checkpoints, resume), not a useful model.
#   python -c "from evit_mm.sample_data import make_sa1b_sample; make_sa1b_sample('data/sa1b_demo')"
#   python tools/train.py configs/efficientvit_sam/efficientvit-sam-l0_phase1-distill_sa1b-demo.py
# With a cache:  python tools/sam_cache_teacher_embeddings.py THIS_CONFIG --out work_dirs/demo_cache --dtype float32
#   python tools/train.py THIS_CONFIG --cfg-options model.teacher=None \
#       train_dataloader.dataset.embedding_cache=work_dirs/demo_cache
_base_ = ['./_base_/sam_phase1_distill_sa1b.py']

image_size = 128
teacher = dict(_delete_=True, arch=dict(img_size=128, patch_size=2, embed_dim=64, depth=2, num_heads=2, out_chans=256,
                         window_size=8, global_attn_indexes=(1, )),
               checkpoint=None, init_seed=0)
model = dict(sam=dict(variant='l0', image_size=image_size, decoder_checkpoint=None), teacher=teacher)
train_dataloader = dict(
    batch_size=2, num_workers=0, persistent_workers=False,
    dataset=dict(data_root='data/sa1b_demo', shard_dir=None, img_dir='images', embedding_cache=None,
                 pipeline=[
                     dict(type='SamRandomFlip', prob=0.5),
                     dict(type='SamResizeLongestSide', size=image_size, teacher_size=128),
                     dict(type='SamPad', size=image_size, teacher_size=128),
                     dict(type='SamPackInputs'),
                 ]))
max_iters = 40
train_cfg = dict(max_iters=max_iters)
param_scheduler = [dict(type='CosineAnnealingLR', T_max=max_iters, eta_min=0.0, by_epoch=False, begin=0,
                        end=max_iters)]
optim_wrapper = dict(optimizer=dict(lr=1e-3))
auto_scale_lr = dict(base_batch_size=2)
default_hooks = dict(logger=dict(interval=1), checkpoint=dict(interval=10))
log_processor = dict(window_size=1)
randomness = dict(seed=0, deterministic=True)
