# EfficientViT-B0 seg, Cityscapes, evaluated at 1024x2048. Reference mIoU 75.653 (efficientvit_seg_b0_cityscapes.pt).
# Recipe and data: ./efficientvit-b1_seg_8xb2-160k_cityscapes-1024x2048.py.
_base_ = ['./efficientvit-b1_seg_8xb2-160k_cityscapes-1024x2048.py']

# No ImageNet-1k B0 checkpoint is published (the reference's model zoo names efficientvit_b0_r224.pt, but no file
# was released: docs/model_zoo.md), so B0 starts from random weights unless you give yours:
#   --cfg-options model.backbone.init_cfg="dict(type='Pretrained', checkpoint='/path/to/b0.pt')"
model = dict(
    backbone=dict(type='EfficientViTB', arch='b0', init_cfg=None),
    decode_head=dict(head='b0_cityscapes'))  # the reference's head (SEG_HEAD_CONFIGS['b0_cityscapes'])
