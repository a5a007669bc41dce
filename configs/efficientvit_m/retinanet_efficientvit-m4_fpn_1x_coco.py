# RetinaNet + EfficientViT-M4, COCO, 1x: the recipe of Cream's EfficientViT/downstream (32.7 box AP in the paper).
# Upstream base: mmdet 3.3.0's RetinaNet-R50-FPN 1x (model, COCO data at 1333x800, 12-epoch schedule with
# 500-iter linear warm-up and steps at 8 and 11). This file states only what differs.
_base_ = ['mmdet::retinanet/retinanet_r50_fpn_1x_coco.py']
custom_imports = dict(imports=['evit_mm.mmdet'], allow_failed_imports=False)
custom_hooks = [dict(type='PyramidStrideCheckHook')]  # warns if the neck's strides and the anchors' disagree

# ImageNet-1k weights: Cream's efficientvit_m4.pth, fetched by name and cached (docs/model_zoo.md). Any other
# file (a local copy, a timm state dict, a file converted by tools/convert_efficientvit_msra.py) works too:
#   --cfg-options model.backbone.init_cfg.checkpoint=/path/to/efficientvit_m4.pth
# The trained detector: python tools/test.py THIS_CONFIG evit://retinanet_efficientvit_m4_fpn_1x_coco
pretrained = 'evit://efficientvit_m4'

model = dict(
    backbone=dict(
        _delete_=True,
        type='EfficientViTM',
        arch='m4',
        out_indices=(1, 2, 3),  # stages 1-3: strides 16, 32, 64 (0 is the stem)
        frozen_stages=-1,  # as Cream's configs: nothing frozen
        norm_eval=True,  # as Cream's backbone, whose train() keeps every BN in eval mode
        init_cfg=dict(type='Pretrained', checkpoint=pretrained)),
    neck=dict(
        _delete_=True,
        type='EfficientViTFPN',
        in_channels=[128, 256, 384],
        out_channels=256,
        start_level=0,
        add_extra_convs='on_input',
        num_outs=5,
        num_extra_trans_convs=1))  # P3 (stride 8) from a transposed conv: strides 8..128 for the anchors

# AdamW lr 1e-4, wd 0.05, no weight decay on the attention biases, for 16 images per step (8 GPUs x 2).
optim_wrapper = dict(
    optimizer=dict(_delete_=True, type='AdamW', lr=1e-4, betas=(0.9, 0.999), weight_decay=0.05),
    paramwise_cfg=dict(custom_keys={'attention_biases': dict(decay_mult=0.)}))
auto_scale_lr = dict(base_batch_size=16)
