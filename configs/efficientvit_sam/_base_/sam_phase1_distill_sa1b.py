# Phase 1: distil SAM ViT-H's image encoder into EfficientViT-SAM's (MSE on the 256x64x64 embeddings), on SA-1B
# images, reading the teacher's embeddings from a cache built once by tools/sam_cache_teacher_embeddings.py.
# The reference never published this phase; the schedule is evit_mm's choice (docs/sam_training.md).
_base_ = ['./sam_training_runtime.py']

# the teacher: read by tools/sam_cache_teacher_embeddings.py (and by the model when run online, see the docs)
teacher = dict(arch='vit_h', checkpoint='evit://sam_vit_h')  # sam_vit_h_4b8939.pth, fetched and sha256-checked
embedding_cache = 'data/sa1b_teacher_vit_h'
image_size = 512  # student input (L0-L2); the teacher's is 1024

model = dict(
    type='SamDistillModel',
    # the student: a whole EfficientViT-SAM, with SAM ViT-H's prompt encoder and mask decoder (frozen here)
    # backbone_checkpoint: optional EfficientViT-L/XL ImageNet weights (official or timm) to start from
    sam=dict(variant='l0', decoder_checkpoint=teacher['checkpoint'], backbone_checkpoint=None),
    teacher=None)  # embeddings come from the cache

train_pipeline = [
    dict(type='SamRandomFlip', prob=0.0),  # > 0 needs a cache built with --hflip
    dict(type='SamResizeLongestSide', size=image_size, teacher_size=1024),  # teacher_size: online teacher only
    dict(type='SamPad', size=image_size, teacher_size=1024),
    dict(type='SamPackInputs'),
]
train_dataloader = dict(
    batch_size=4, num_workers=8, persistent_workers=True,
    sampler=dict(type='SamInfiniteSampler', shuffle=True),
    collate_fn=dict(type='pseudo_collate'),
    dataset=dict(type='SA1BDataset', data_root='data/sa1b', shard_dir='.', with_masks=False,
                 embedding_cache=embedding_cache, pipeline=train_pipeline))

# one pass over SA-1B's 11.2M images at 32 images per step (8 GPUs x 4)
max_iters = 350000
train_cfg = dict(type='SamIterBasedTrainLoop', max_iters=max_iters)  # resumes without reloading data
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-3, by_epoch=False, begin=0, end=1000),
    dict(type='CosineAnnealingLR', T_max=max_iters - 1000, eta_min=0.0, by_epoch=False, begin=1000, end=max_iters),
]
optim_wrapper = dict(optimizer=dict(lr=1e-4))
