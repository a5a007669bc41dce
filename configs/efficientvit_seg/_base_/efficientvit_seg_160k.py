# The EfficientViT segmentation model and training recipe shared by every config in configs/efficientvit_seg/.
# Dataset configs add the data (an mmseg:: dataset base), the backbone, the head's name and the evaluation pipeline.
#
# The reference (mit-han-lab/efficientvit) released models and an evaluation script, never its segmentation
# training code or hyper-parameters (its most requested item: issues #8, #10, #21, #35, #38, #42, #49, #99,
# #134, #171, ...). The paper states only "AdamW optimizer" and "cosine learning rate decay" (quoted in #171).
# The recipe below is ours; every choice and its reason is listed in docs/efficientvit_seg.md#training-recipe.
_base_ = ['mmseg::_base_/default_runtime.py', 'mmseg::_base_/schedules/schedule_160k.py']
custom_imports = dict(imports=['evit_mm.mmseg'], allow_failed_imports=False)

# ImageNet mean/std on RGB, as the reference's ToTensor + Normalize (images are read as BGR by mmcv).
data_preprocessor = dict(
    type='SegDataPreProcessor',
    mean=[123.675, 116.28, 103.53],
    std=[58.395, 57.12, 57.375],
    bgr_to_rgb=True,
    pad_val=0,
    seg_pad_val=255)

model = dict(
    type='EfficientViTEncoderDecoder',  # mmseg's EncoderDecoder + resize_mode + official checkpoints
    data_preprocessor=data_preprocessor,
    backbone=dict(
        type='EfficientViTB',
        arch='b1',
        out_indices=(1, 2, 3, 4),  # strides 4, 8, 16, 32 (reference stage numbering; the head reads 2, 3, 4)
        frozen_stages=-1,
        norm_eval=False),  # each dataset config sets init_cfg: the ImageNet checkpoint
    decode_head=dict(
        type='EfficientViTSegDecodeHead',
        # the reference SegHead by name: SEG_HEAD_CONFIGS['<model>_<dataset>'] gives its widths, depth, blocks,
        # classes, activation and BN eps; each model config names its own
        head='b1_cityscapes',
        backbone_out_indices=(1, 2, 3, 4),
        dropout_ratio=0.0,  # reference: no dropout before the classifier
        align_corners=False,
        ignore_index=255,
        # mean over the labelled pixels (torch's cross_entropy with ignore_index; mmseg's default would also
        # count ignored pixels in the denominator)
        loss_decode=dict(type='CrossEntropyLoss', use_sigmoid=False, loss_weight=1.0, avg_non_ignore=True)),
    train_cfg=dict(),
    # The reference's evaluation: whole image, single scale, the stride-8 logits resized once, bicubically,
    # to the label size. resize_mode=None gives mmseg's usual two bilinear resizes instead.
    test_cfg=dict(mode='whole', resize_mode='bicubic'))

# --- optimisation: 8 GPUs x 2 images = 16 images per step ------------------------------------------------------
# AdamW (the paper's optimizer). lr 1e-4 for the ImageNet-pretrained backbone, x10 for the randomly initialised
# head (SegFormer's mmseg recipe: 6e-5 at 8 (Cityscapes) / 16 (ADE20K) images per step, the same x10; a step
# higher here for the convolutional, BatchNorm-based EfficientViT). Weight decay 0.05 on conv
# weights only: the reference's trainers exclude norms and biases (no_wd_keys=['norm', 'bias']);
# EfficientViTOptimWrapperConstructor keeps that rule for the head too (mmengine's default constructor would
# drop it for parameters matched by custom_keys). Gradient clipping at 2.0 as in the reference's trainers.
optim_wrapper = dict(
    _delete_=True,
    type='OptimWrapper',
    optimizer=dict(type='AdamW', lr=1e-4, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.05),
    clip_grad=dict(max_norm=2.0, norm_type=2),
    constructor='EfficientViTOptimWrapperConstructor',
    paramwise_cfg=dict(
        norm_decay_mult=0.0,
        bias_decay_mult=0.0,
        custom_keys={'decode_head': dict(lr_mult=10.0)}))
# 1500 iterations of linear warm-up (SegFormer's), then cosine decay to 0 (the paper's schedule), 160k iterations.
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-6, by_epoch=False, begin=0, end=1500),
    dict(type='CosineAnnealingLR', eta_min=0.0, by_epoch=False, begin=1500, end=160000),
]
train_cfg = dict(type='IterBasedTrainLoop', max_iters=160000, val_interval=16000)
# lr above is for 16 images per step; `tools/train.py --auto-scale-lr` rescales it for other batch sizes.
auto_scale_lr = dict(enable=False, base_batch_size=16)
# BatchNorm statistics over all GPUs (2 crops per GPU are few for BN); only applies to distributed runs.
sync_bn = 'torch'
