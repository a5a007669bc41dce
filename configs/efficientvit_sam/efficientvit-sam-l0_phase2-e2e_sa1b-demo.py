# Phase 2 on the tiny SA-1B-format demo set (see the phase-1 demo config): EfficientViT-SAM-L0 at 128 px, 8 masks
# per image, box/point prompts, 20 BCE + dice on 1024 uncertain points per mask. Start it from the phase-1 demo
# checkpoint with --cfg-options model.init_checkpoint=work_dirs/<phase-1 demo>/iter_40.pth (default: random).
#   python tools/train.py configs/efficientvit_sam/efficientvit-sam-l0_phase2-e2e_sa1b-demo.py
_base_ = ['./_base_/sam_phase2_e2e_sa1b.py']

image_size = 128
model = dict(sam=dict(variant='l0', image_size=image_size), init_checkpoint=None,
             loss=dict(num_points=1024))
train_dataloader = dict(
    batch_size=2, num_workers=0, persistent_workers=False,
    dataset=dict(data_root='data/sa1b_demo', shard_dir=None, img_dir='images', num_masks=8,
                 pipeline=[
                     dict(type='SamRandomFlip', prob=0.5),
                     dict(type='SamResizeLongestSide', size=image_size),
                     dict(type='SamPad', size=image_size),
                     dict(type='SamSamplePrompts', box_prob=0.5, max_points=10, multimask_prob=0.5),
                     dict(type='SamPackInputs'),
                 ]))
max_iters = 40
train_cfg = dict(max_iters=max_iters)
param_scheduler = [dict(type='CosineAnnealingLR', T_max=max_iters, eta_min=0.0, by_epoch=False, begin=0,
                        end=max_iters)]
optim_wrapper = dict(optimizer=dict(lr=1e-4))
auto_scale_lr = dict(base_batch_size=2)
default_hooks = dict(logger=dict(interval=1), checkpoint=dict(interval=10))
log_processor = dict(window_size=1)
randomness = dict(seed=0, deterministic=True)
