# Mask R-CNN + EfficientViT-M4, COCO, 1x: the recipe of Cream's EfficientViT/downstream (31.0 mask AP).
# Upstream base: mmdet 3.3.0's Mask R-CNN-R50-FPN 1x. This file states only what differs.
_base_ = ['mmdet::mask_rcnn/mask-rcnn_r50_fpn_1x_coco.py']
custom_imports = dict(imports=['evit_mm.mmdet'], allow_failed_imports=False)
custom_hooks = [dict(type='PyramidStrideCheckHook')]  # warns if the neck's strides and the anchors' disagree

pretrained = 'evit://efficientvit_m4'  # Cream's ImageNet-1k checkpoint, by name (docs/model_zoo.md)
model = dict(
    backbone=dict(
        _delete_=True,
        type='EfficientViTM',
        arch='m4',
        out_indices=(1, 2, 3),
        frozen_stages=-1,
        norm_eval=True,
        init_cfg=dict(type='Pretrained', checkpoint=pretrained)),
    neck=dict(
        _delete_=True,
        type='EfficientViTFPN',
        in_channels=[128, 256, 384],
        out_channels=256,
        start_level=0,
        num_outs=5,
        num_extra_trans_convs=2))  # two transposed convs: strides 4..64, as the RPN/RoI heads expect

optim_wrapper = dict(
    optimizer=dict(_delete_=True, type='AdamW', lr=1e-4, betas=(0.9, 0.999), weight_decay=0.05),
    paramwise_cfg=dict(custom_keys={'attention_biases': dict(decay_mult=0.)}))
auto_scale_lr = dict(base_batch_size=16)
