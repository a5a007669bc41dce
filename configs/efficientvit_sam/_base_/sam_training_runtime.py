# What both EfficientViT-SAM training phases share: mmengine's Runner with evit_mm's SAM training modules
# (evit_mm.sam.training registers them in mmengine's root registries), iteration-based, AdamW as the reference
# trainer (weight decay 0.1, none on norms and biases, grad-norm clip 2.0, lr scaled by the number of GPUs).
default_scope = 'mmengine'
custom_imports = dict(imports=['evit_mm.sam.training'], allow_failed_imports=False)

optim_wrapper = dict(
    type='OptimWrapper',
    constructor='SamOptimWrapperConstructor',  # mmengine's default, minus frozen parts (phase 1's decoder)
    optimizer=dict(type='AdamW', lr=1e-4, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.1),
    # the reference's rule: no weight decay for parameters whose name contains "norm" or "bias"
    paramwise_cfg=dict(custom_keys={'norm': dict(decay_mult=0.0), 'bias': dict(decay_mult=0.0)}),
    clip_grad=dict(max_norm=2.0))
# lr x (GPUs x batch per GPU) / 4: with 4 images per GPU (the reference's batch), lr x number of GPUs
auto_scale_lr = dict(enable=True, base_batch_size=4)

default_hooks = dict(
    timer=dict(type='IterTimerHook'),
    logger=dict(type='LoggerHook', interval=50),
    param_scheduler=dict(type='ParamSchedulerHook'),
    checkpoint=dict(type='CheckpointHook', by_epoch=False, interval=5000, max_keep_ckpts=5),
    sampler_seed=dict(type='DistSamplerSeedHook'))
log_processor = dict(by_epoch=False, window_size=50)
env_cfg = dict(cudnn_benchmark=False, mp_cfg=dict(mp_start_method='fork', opencv_num_threads=0),
               dist_cfg=dict(backend='nccl'))
vis_backends = [dict(type='LocalVisBackend')]
visualizer = dict(type='Visualizer', vis_backends=vis_backends)
log_level = 'INFO'
load_from = None
resume = False
randomness = dict(seed=0)
