# RetinaNet + EfficientViT-M5, COCO, 1x: the M4 recipe with the M5 backbone.
_base_ = ['./retinanet_efficientvit-m4_fpn_1x_coco.py']

pretrained = 'evit://efficientvit_m5'  # Cream's ImageNet-1k checkpoint, by name (docs/model_zoo.md)
model = dict(
    backbone=dict(arch='m5', init_cfg=dict(checkpoint=pretrained)),
    neck=dict(in_channels=[192, 288, 384]))
