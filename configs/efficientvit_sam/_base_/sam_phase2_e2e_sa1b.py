# Phase 2: EfficientViT-SAM end to end on SA-1B with box and point prompts, from a phase-1 checkpoint: the
# reference trainer's recipe (mit-han-lab/efficientvit applications/efficientvit_sam, configs/default.yaml).
_base_ = ['./sam_training_runtime.py']

image_size = 512  # encoder input (L0-L2); prompts live in the 1024 frame

model = dict(
    type='SamE2EModel',
    sam=dict(variant='l0'),
    init_checkpoint='work_dirs/efficientvit-sam-l0_phase1-distill_sa1b/iter_350000.pth',
    # 20 x BCE + dice on 112x112 uncertain points per mask, best of the multimask outputs
    loss=dict(num_points=112 * 112, oversample_ratio=3.0, importance_ratio=0.75, bce_weight=20.0, dice_weight=1.0),
    iou_loss_weight=0.0)  # the reference leaves the IoU head unsupervised

train_pipeline = [
    dict(type='SamRandomFlip', prob=0.5),
    dict(type='SamResizeLongestSide', size=image_size),
    dict(type='SamPad', size=image_size),
    dict(type='SamSamplePrompts', box_prob=0.5, max_points=10, multimask_prob=0.5),
    dict(type='SamPackInputs'),
]
train_dataloader = dict(
    batch_size=4, num_workers=8, persistent_workers=True,
    sampler=dict(type='SamInfiniteSampler', shuffle=True),
    collate_fn=dict(type='pseudo_collate'),
    dataset=dict(type='SA1BDataset', data_root='data/sa1b', shard_dir='.', num_masks=64, pipeline=train_pipeline))

# the reference: 80 sub-epochs of 1/40 of SA-1B = 2 epochs; 2 x 11.2M images / (8 GPUs x 4) steps
max_iters = 700000
train_cfg = dict(type='SamIterBasedTrainLoop', max_iters=max_iters)  # resumes without reloading data
param_scheduler = [dict(type='CosineAnnealingLR', T_max=max_iters, eta_min=0.0, by_epoch=False, begin=0,
                        end=max_iters)]
optim_wrapper = dict(optimizer=dict(lr=8e-7))  # per 4 images; x GPUs through auto_scale_lr (L: 8e-7, XL: 4e-7)
# box prompts leave the point embeddings unused, single-mask output the multimask tokens
model_wrapper_cfg = dict(type='MMDistributedDataParallel', find_unused_parameters=True)
