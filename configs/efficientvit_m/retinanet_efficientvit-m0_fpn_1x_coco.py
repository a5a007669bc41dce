# RetinaNet + EfficientViT-M0, COCO, 1x: the M4 recipe with the M0 backbone.
_base_ = ['./retinanet_efficientvit-m4_fpn_1x_coco.py']

pretrained = 'checkpoints/efficientvit_m0.pth'
model = dict(
    backbone=dict(arch='m0', init_cfg=dict(checkpoint=pretrained)),
    neck=dict(in_channels=[64, 128, 192]))
