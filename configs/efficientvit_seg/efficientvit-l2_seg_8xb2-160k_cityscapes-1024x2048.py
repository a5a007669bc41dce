# EfficientViT-L2 seg, Cityscapes, evaluated at 1024x2048. Reference mIoU 83.228 (efficientvit_seg_l2_cityscapes.pt).
# Recipe and data: ./efficientvit-b1_seg_8xb2-160k_cityscapes-1024x2048.py. L models use tanh-GELU and BN eps 1e-7.
_base_ = ['./efficientvit-b1_seg_8xb2-160k_cityscapes-1024x2048.py']

pretrained = 'evit://efficientvit_l2.r384'  # MIT's ImageNet-1k checkpoint, by name (docs/model_zoo.md)
model = dict(
    backbone=dict(type='EfficientViTL', arch='l2', norm_eps=1e-7, init_cfg=dict(checkpoint=pretrained)),
    decode_head=dict(head='l2_cityscapes'))  # the reference's head (SEG_HEAD_CONFIGS['l2_cityscapes'])
