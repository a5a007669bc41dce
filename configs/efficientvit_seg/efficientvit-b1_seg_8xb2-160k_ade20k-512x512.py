# EfficientViT-B1 seg, ADE20K (150 classes), evaluated at 512 (short side). Reference mIoU 42.840
# (official checkpoint efficientvit_seg_b1_ade20k.pt, applications/efficientvit_seg/README.md).
# Training: 160k iterations x 16 images (8 GPUs x 2) of 512x512 crops; recipe in ./_base_/efficientvit_seg_160k.py
# and docs/efficientvit_seg.md. This file is the ADE20K base of the other ADE20K configs.
_base_ = ['mmseg::_base_/datasets/ade20k.py', './_base_/efficientvit_seg_160k.py']

pretrained = 'evit://efficientvit_b1.r288'  # MIT's ImageNet-1k checkpoint, by name (docs/model_zoo.md)

crop_size = (512, 512)
model = dict(
    data_preprocessor=dict(size=crop_size),
    backbone=dict(type='EfficientViTB', arch='b1', init_cfg=dict(type='Pretrained', checkpoint=pretrained)),
    decode_head=dict(head='b1_ade20k'))  # the reference's head (SEG_HEAD_CONFIGS['b1_ade20k'])

# Training data: mmseg's ADE20K pipeline (reduce_zero_label, RandomResize 0.5-2.0 of 2048x512, RandomCrop 512x512
# with cat_max_ratio 0.75, flip, PhotoMetricDistortion), 2 images per GPU as SegFormer's ADE20K recipe.
train_dataloader = dict(batch_size=2, num_workers=4)

# The reference's ADE20K evaluation: short side -> 512, long side -> the next multiple of 32 of its
# aspect-preserving length (cv2 bicubic), labels at their original resolution, images decoded with PIL.
test_pipeline = [
    dict(type='LoadImageFromFile', imdecode_backend='pillow'),
    dict(type='ShortSideResize', short_side=512, size_divisor=32, interpolation='bicubic'),
    dict(type='LoadAnnotations', reduce_zero_label=True),
    dict(type='PackSegInputs'),
]
val_dataloader = dict(batch_size=1, num_workers=4, dataset=dict(pipeline=test_pipeline))
test_dataloader = val_dataloader
