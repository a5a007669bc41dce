# EfficientViT-B2 seg, ADE20K, evaluated at 512 (short side). Reference mIoU 45.941 (efficientvit_seg_b2_ade20k.pt).
# Recipe and data: ./efficientvit-b1_seg_8xb2-160k_ade20k-512x512.py.
_base_ = ['./efficientvit-b1_seg_8xb2-160k_ade20k-512x512.py']

pretrained = 'evit://efficientvit_b2.r288'  # MIT's ImageNet-1k checkpoint, by name (docs/model_zoo.md)
model = dict(
    backbone=dict(type='EfficientViTB', arch='b2', init_cfg=dict(checkpoint=pretrained)),
    decode_head=dict(  # the reference's b2_ade20k head
        in_channels=(384, 192, 96), head_width=96, head_depth=3, expand_ratio=4, middle_op='mbconv',
        final_expand=None, num_classes=150, act='hswish', norm_eps=1e-5))
