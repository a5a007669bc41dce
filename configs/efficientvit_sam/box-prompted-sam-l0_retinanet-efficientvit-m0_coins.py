# Box-prompted instance segmentation: the quick-start RetinaNet-EfficientViT-M0 finds the coins, its boxes prompt
# EfficientViT-SAM-L0, and mmdet's CocoMetric scores boxes and masks. The zero-shot protocol of the paper
# (ViTDet boxes on COCO) is the same with another detector config and COCO data.
#   python tools/demo_box_prompted_sam.py --detector-checkpoint work_dirs/quickstart/epoch_24.pth \
#       [--sam-checkpoint efficientvit_sam_l0.pt]
_base_ = ['../quickstart/retinanet_efficientvit-m0_fpn_coins.py']

model = dict(
    _delete_=True,
    type='BoxPromptedSAM',
    detector={{_base_.model}},
    sam=dict(variant='l0', checkpoint=None),  # set to the official efficientvit_sam_l0.pt
    multimask_output=True,
    data_preprocessor={{_base_.model.data_preprocessor}})

test_pipeline = [
    dict(type='LoadImageFromFile', backend_args=None),
    dict(type='Resize', scale={{_base_.image_scale}}, keep_ratio=True),
    dict(type='PackDetInputs', meta_keys=('img_id', 'img_path', 'ori_shape', 'img_shape', 'scale_factor')),
]
val_dataloader = dict(dataset=dict(pipeline=test_pipeline))
test_dataloader = val_dataloader
val_evaluator = dict(metric=['bbox', 'segm'])
test_evaluator = val_evaluator
