# RetinaNet + EfficientViT-M5, COCO, 1x: the M4 recipe with the M5 backbone.
_base_ = ['./retinanet_efficientvit-m4_fpn_1x_coco.py']

pretrained = 'checkpoints/efficientvit_m5.pth'
model = dict(
    backbone=dict(arch='m5', init_cfg=dict(checkpoint=pretrained)),
    neck=dict(in_channels=[192, 288, 384]))
