# EfficientViT-L2 seg, ADE20K, evaluated at 512 (short side). Reference mIoU 50.702 (efficientvit_seg_l2_ade20k.pt).
# Recipe and data: ./efficientvit-b1_seg_8xb2-160k_ade20k-512x512.py.
_base_ = ['./efficientvit-b1_seg_8xb2-160k_ade20k-512x512.py']

pretrained = 'evit://efficientvit_l2.r384'  # MIT's ImageNet-1k checkpoint, by name (docs/model_zoo.md)
model = dict(
    backbone=dict(type='EfficientViTL', arch='l2', norm_eps=1e-7, init_cfg=dict(checkpoint=pretrained)),
    decode_head=dict(head='l2_ade20k'))  # the reference's head (SEG_HEAD_CONFIGS['l2_ade20k'])
