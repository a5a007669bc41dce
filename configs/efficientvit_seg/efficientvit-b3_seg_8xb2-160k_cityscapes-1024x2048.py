# EfficientViT-B3 seg, Cityscapes, evaluated at 1024x2048. Reference mIoU 83.016 (efficientvit_seg_b3_cityscapes.pt).
# Recipe and data: ./efficientvit-b1_seg_8xb2-160k_cityscapes-1024x2048.py.
_base_ = ['./efficientvit-b1_seg_8xb2-160k_cityscapes-1024x2048.py']

pretrained = 'evit://efficientvit_b3.r288'  # MIT's ImageNet-1k checkpoint, by name (docs/model_zoo.md)
model = dict(
    backbone=dict(type='EfficientViTB', arch='b3', init_cfg=dict(checkpoint=pretrained)),
    decode_head=dict(head='b3_cityscapes'))  # the reference's head (SEG_HEAD_CONFIGS['b3_cityscapes'])
