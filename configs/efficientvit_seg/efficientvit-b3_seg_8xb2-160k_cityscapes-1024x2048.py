# EfficientViT-B3 seg, Cityscapes, evaluated at 1024x2048. Reference mIoU 83.016 (efficientvit_seg_b3_cityscapes.pt).
# Recipe and data: ./efficientvit-b1_seg_8xb2-160k_cityscapes-1024x2048.py.
_base_ = ['./efficientvit-b1_seg_8xb2-160k_cityscapes-1024x2048.py']

pretrained = 'evit://efficientvit_b3.r288'  # MIT's ImageNet-1k checkpoint, by name (docs/model_zoo.md)
model = dict(
    backbone=dict(type='EfficientViTB', arch='b3', init_cfg=dict(checkpoint=pretrained)),
    decode_head=dict(  # the reference's b3_cityscapes head
        in_channels=(512, 256, 128), head_width=128, head_depth=3, expand_ratio=4, middle_op='mbconv',
        final_expand=4, num_classes=19, act='hswish', norm_eps=1e-5))
