# EfficientViT-B1 seg, Cityscapes, evaluated at 1024x2048 (whole image). Reference mIoU 80.547
# (official checkpoint efficientvit_seg_b1_cityscapes.pt, applications/efficientvit_seg/README.md).
# Training: 160k iterations x 16 images (8 GPUs x 2) of 1024x1024 crops; recipe in ./_base_/efficientvit_seg_160k.py
# and docs/efficientvit_seg.md. This file is the Cityscapes base of the other Cityscapes configs.
_base_ = ['mmseg::_base_/datasets/cityscapes_1024x1024.py', './_base_/efficientvit_seg_160k.py']

# ImageNet-1k weights for the backbone: MIT's efficientvit_b1_r288.pt (huggingface.co/han-cai/efficientvit-cls),
# fetched by name and cached (docs/model_zoo.md). Any other file (a local copy, a timm efficientvit_b1 state dict,
# a file converted by tools/convert_efficientvit_mit.py) works too:
#   --cfg-options model.backbone.init_cfg.checkpoint=/path/to/efficientvit_b1_r288.pt
# The trained model: python tools/test.py THIS_CONFIG evit://efficientvit_seg_b1_cityscapes
pretrained = 'evit://efficientvit_b1.r288'

crop_size = (1024, 1024)
model = dict(
    data_preprocessor=dict(size=crop_size),  # training crops are padded to 1024x1024; test inputs are not padded
    backbone=dict(type='EfficientViTB', arch='b1', init_cfg=dict(type='Pretrained', checkpoint=pretrained)),
    decode_head=dict(head='b1_cityscapes'))  # the reference's head (SEG_HEAD_CONFIGS['b1_cityscapes'])

# Training data: mmseg's Cityscapes pipeline (RandomResize 0.5-2.0 of 2048x1024, RandomCrop 1024x1024 with
# cat_max_ratio 0.75, horizontal flip, PhotoMetricDistortion), 2 images per GPU.
train_dataloader = dict(batch_size=2, num_workers=4)

# The reference's evaluation: the image at 1024x2048 (bicubic resize if it is not; Cityscapes already is),
# labels at their original resolution, decoded with PIL as the reference does.
test_pipeline = [
    dict(type='LoadImageFromFile', imdecode_backend='pillow'),
    dict(type='Resize', scale=(2048, 1024), keep_ratio=False, interpolation='bicubic'),
    dict(type='LoadAnnotations'),
    dict(type='PackSegInputs'),
]
val_dataloader = dict(batch_size=1, num_workers=4, dataset=dict(pipeline=test_pipeline))
test_dataloader = val_dataloader
