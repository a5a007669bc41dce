# EfficientViT-SAM-XL0, phase 2: end to end on SA-1B with box/point prompts, from the phase-1 checkpoint.
#   bash tools/dist_train.sh THIS_CONFIG 8 --amp --amp-dtype bfloat16
_base_ = ['./_base_/sam_phase2_e2e_sa1b.py']

model = dict(sam=dict(variant='xl0'),
             init_checkpoint='work_dirs/efficientvit-sam-xl0_phase1-distill_sa1b/iter_350000.pth')
train_dataloader = dict(dataset=dict(pipeline=[  # the XL models encode 1024 x 1024 images
    dict(type='SamRandomFlip', prob=0.5),
    dict(type='SamResizeLongestSide', size=1024),
    dict(type='SamPad', size=1024),
    dict(type='SamSamplePrompts', box_prob=0.5, max_points=10, multimask_prob=0.5),
    dict(type='SamPackInputs'),
]))
optim_wrapper = dict(optimizer=dict(lr=4e-7))  # the reference's XL lr (per 4 images, x GPUs)
