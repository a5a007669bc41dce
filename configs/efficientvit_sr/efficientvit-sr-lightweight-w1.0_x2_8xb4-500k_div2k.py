# EfficientViT-SR, lightweight setting, x2, width 1.0 (1.07M parameters). The paper's lightweight SR: train on
# DIV2K, test on BSD100 (160x240 -> 320x480). Network: evit_mm/models/sr.py; design, data preparation and
# measured speed: docs/super_resolution.md.
# Training recipe = mmagic's lightweight SwinIR x2 (SwinIR-light, the paper's baseline): DIV2K sub-images,
# 64x64 LR patches, 8 GPUs x 4, Adam 2e-4, 500k iterations, L1 loss; only the generator differs.
_base_ = ['mmagic::swinir/swinir_x2s64w8d4e60_8xb4-lr2e-4-500k_div2k.py']
custom_imports = dict(imports=['evit_mm.mmagic'], allow_failed_imports=False)

experiment_name = 'efficientvit-sr-lightweight-w1.0_x2_8xb4-500k_div2k'
work_dir = f'./work_dirs/{experiment_name}'

scale = 2
model = dict(
    generator=dict(
        _delete_=True, type='EfficientViTSR', scale=scale, width_mult=1.0,
        channels=48, width=128, depth=6, down=2, dim=16, expand_ratio=2, norm='none', residual='bicubic'))

# Validation and test: BSD100, Set5, Set14 (GTmod12 / LRbicx{scale}) through mmagic's BasicImageDataset;
# PSNR / SSIM on Y with crop_border = scale. The best checkpoint is chosen on BSD100.
sr_sets = ['BSD100', 'Set5', 'Set14']
val_dataloader = [
    dict(num_workers=4, persistent_workers=False, drop_last=False, sampler=dict(type='DefaultSampler', shuffle=False),
         dataset=dict(type='BasicImageDataset', metainfo=dict(dataset_type=name.lower(), task_name='sisr'),
                      data_root=f'data/{name}', data_prefix=dict(img=f'LRbicx{scale}', gt='GTmod12'),
                      pipeline=_base_.val_pipeline))
    for name in sr_sets]
val_evaluator = [
    dict(type='Evaluator', metrics=[
        dict(type='PSNR', crop_border=scale, convert_to='Y', prefix=name),
        dict(type='SSIM', crop_border=scale, convert_to='Y', prefix=name)])
    for name in sr_sets]
val_cfg = dict(type='MultiValLoop')  # one loop over the three sets (mmagic's x3/x4 SwinIR bases use ValLoop)
test_dataloader = val_dataloader
test_evaluator = val_evaluator
# out_dir=None: checkpoints go to work_dir (--work-dir), not to mmagic's default './work_dirs/<basename of work_dir>'
default_hooks = dict(checkpoint=dict(save_best='BSD100/PSNR', out_dir=None))
