# EfficientViT-SAM-XL0, phase 1: distil SAM ViT-H's image encoder on SA-1B (see docs/sam_training.md).
#   python tools/sam_cache_teacher_embeddings.py THIS_CONFIG  # once; one cache serves all five variants
#   bash tools/dist_train.sh THIS_CONFIG 8 --amp --amp-dtype bfloat16
_base_ = ['./_base_/sam_phase1_distill_sa1b.py']

model = dict(sam=dict(variant='xl0'))
train_dataloader = dict(dataset=dict(pipeline=[  # the XL models encode 1024 x 1024 images
    dict(type='SamRandomFlip', prob=0.0),
    dict(type='SamResizeLongestSide', size=1024, teacher_size=1024),
    dict(type='SamPad', size=1024, teacher_size=1024),
    dict(type='SamPackInputs'),
]))
