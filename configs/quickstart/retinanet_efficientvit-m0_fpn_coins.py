# The quick-start job: RetinaNet + EfficientViT-M0 trained from scratch, on CPU, in a few minutes, on
# coins-coco (real coins on real photographs, built by evit_mm.sample_data; see docs/sample_data.md).
# It is the M0 COCO config with a small dataset, small images, a slimmer neck and head (128 channels, 2 stacked
# convs instead of 256 and 4: at full width the head costs ~8x more than the whole M0 backbone) and a short
# schedule.
#   python tools/quickstart.py                      # builds the data, trains, evaluates, draws
#   python tools/train.py configs/quickstart/retinanet_efficientvit-m0_fpn_coins.py
_base_ = ['../efficientvit_m/retinanet_efficientvit-m0_fpn_1x_coco.py']

data_root = 'data/coins_coco/'
metainfo = dict(classes=('coin', ), palette=[(220, 20, 60)])
image_scale = (256, 256)
max_epochs = 24

model = dict(
    backbone=dict(init_cfg=None),  # no ImageNet weights can be downloaded here: train from scratch
    neck=dict(out_channels=128),
    bbox_head=dict(num_classes=1, in_channels=128, feat_channels=128, stacked_convs=2))

train_pipeline = [
    dict(type='LoadImageFromFile', backend_args=None),
    dict(type='LoadAnnotations', with_bbox=True),
    dict(type='RandomResize', scale=image_scale, ratio_range=(0.75, 1.25), keep_ratio=True),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PackDetInputs'),
]
test_pipeline = [
    dict(type='LoadImageFromFile', backend_args=None),
    dict(type='Resize', scale=image_scale, keep_ratio=True),
    dict(type='LoadAnnotations', with_bbox=True),
    dict(type='PackDetInputs', meta_keys=('img_id', 'img_path', 'ori_shape', 'img_shape', 'scale_factor')),
]
train_dataloader = dict(
    batch_size=4,
    num_workers=1,
    # fresh workers each epoch: a persistent worker's random state (augmentations) is not in the checkpoint,
    # so only without one does a resumed run reproduce the uninterrupted run (docs/efficientvit_m.md)
    persistent_workers=False,
    dataset=dict(
        data_root=data_root,
        metainfo=metainfo,
        ann_file='annotations/instances_train2017.json',
        data_prefix=dict(img='train2017/'),
        pipeline=train_pipeline))
val_dataloader = dict(
    batch_size=4,
    num_workers=1,
    dataset=dict(
        data_root=data_root,
        metainfo=metainfo,
        ann_file='annotations/instances_val2017.json',
        data_prefix=dict(img='val2017/'),
        pipeline=test_pipeline))
test_dataloader = val_dataloader
val_evaluator = dict(ann_file=data_root + 'annotations/instances_val2017.json')
test_evaluator = val_evaluator

# From scratch, a short run needs a larger lr than the paper's fine-tuning recipe (1e-4 for 16 images).
optim_wrapper = dict(optimizer=dict(lr=1e-3), clip_grad=dict(max_norm=10.0))
train_cfg = dict(max_epochs=max_epochs, val_interval=max_epochs)
param_scheduler = [
    dict(type='LinearLR', start_factor=0.01, by_epoch=False, begin=0, end=50),
    dict(type='CosineAnnealingLR', by_epoch=True, begin=0, end=max_epochs, eta_min=1e-5),
]
default_hooks = dict(
    logger=dict(interval=10),
    checkpoint=dict(interval=max_epochs, max_keep_ckpts=1))
env_cfg = dict(cudnn_benchmark=False)
