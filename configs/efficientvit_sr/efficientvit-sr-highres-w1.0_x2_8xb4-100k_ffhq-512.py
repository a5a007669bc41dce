# EfficientViT-SR, high-resolution setting, x2, width 1.0 (3.2M parameters): FFHQ 512x512 -> 1024x1024. As in the
# paper: trained on the first 3000 FFHQ training images (00000-02999), tested on the first 500 validation images
# (60000-60499, FFHQ's conventional validation range). The blocks run at stride 4 (128x128 tokens for a 512x512
# input). Network: evit_mm/models/sr.py; data preparation (BIx2_down, annotation files) and measured speed:
# docs/super_resolution.md.
# Recipe: mmagic's lightweight SwinIR x2 runtime and optimizer (Adam 2e-4, L1, Y-channel PSNR/SSIM); 256x256 LR
# patches and 100k iterations for the 3000 training images (the paper does not publish its SR recipe).
_base_ = ['mmagic::swinir/swinir_x2s64w8d4e60_8xb4-lr2e-4-500k_div2k.py']
custom_imports = dict(imports=['evit_mm.mmagic'], allow_failed_imports=False)

experiment_name = 'efficientvit-sr-highres-w1.0_x2_8xb4-100k_ffhq-512'
work_dir = f'./work_dirs/{experiment_name}'

scale = 2
model = dict(
    generator=dict(
        _delete_=True, type='EfficientViTSR', scale=scale, width_mult=1.0,
        channels=48, width=192, depth=8, down=4, dim=16, expand_ratio=2, norm='none', residual='bicubic'))

train_pipeline = _base_.train_pipeline
train_pipeline[3]['gt_patch_size'] = 512  # PairedRandomCrop: 256x256 LR patches of the 512x512 inputs
data_root = 'data/ffhq'
train_dataloader = dict(
    dataset=dict(
        metainfo=dict(dataset_type='ffhq', task_name='sisr'), data_root=data_root,
        ann_file='meta_info_FFHQ_train3000_GT.txt', data_prefix=dict(img='BIx2_down', gt='images'),
        pipeline=train_pipeline))
val_dataloader = dict(
    num_workers=4, persistent_workers=False, drop_last=False, sampler=dict(type='DefaultSampler', shuffle=False),
    dataset=dict(
        type='BasicImageDataset', metainfo=dict(dataset_type='ffhq', task_name='sisr'), data_root=data_root,
        ann_file='meta_info_FFHQ_val500_GT.txt', data_prefix=dict(img='BIx2_down', gt='images'),
        pipeline=_base_.val_pipeline))
val_evaluator = [
    dict(type='PSNR', crop_border=scale, convert_to='Y', prefix='FFHQ'),
    dict(type='SSIM', crop_border=scale, convert_to='Y', prefix='FFHQ')]
test_dataloader = [val_dataloader]
test_evaluator = [dict(type='Evaluator', metrics=val_evaluator)]

train_cfg = dict(max_iters=100_000, val_interval=5000)
param_scheduler = dict(milestones=[50_000, 80_000, 90_000, 95_000])
# out_dir=None: checkpoints go to work_dir (--work-dir), not to mmagic's default './work_dirs/<basename of work_dir>'
default_hooks = dict(checkpoint=dict(save_best='FFHQ/PSNR', out_dir=None))
