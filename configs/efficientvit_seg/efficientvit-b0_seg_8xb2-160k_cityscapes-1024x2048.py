# EfficientViT-B0 seg, Cityscapes, evaluated at 1024x2048. Reference mIoU 75.653 (efficientvit_seg_b0_cityscapes.pt).
# Recipe and data: ./efficientvit-b1_seg_8xb2-160k_cityscapes-1024x2048.py.
_base_ = ['./efficientvit-b1_seg_8xb2-160k_cityscapes-1024x2048.py']

# No ImageNet-1k B0 checkpoint is published (the reference's model zoo names efficientvit_b0_r224.pt, but no file
# was released: docs/model_zoo.md), so B0 starts from random weights unless you give yours:
#   --cfg-options model.backbone.init_cfg="dict(type='Pretrained', checkpoint='/path/to/b0.pt')"
model = dict(
    backbone=dict(type='EfficientViTB', arch='b0', init_cfg=None),
    decode_head=dict(  # the reference's b0_cityscapes head
        in_channels=(128, 64, 32), head_width=32, head_depth=1, expand_ratio=4, middle_op='mbconv',
        final_expand=4, num_classes=19, act='hswish', norm_eps=1e-5))
