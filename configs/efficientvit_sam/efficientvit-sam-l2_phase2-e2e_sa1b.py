# EfficientViT-SAM-L2, phase 2: end to end on SA-1B with box/point prompts, from the phase-1 checkpoint.
#   bash tools/dist_train.sh THIS_CONFIG 8 --amp --amp-dtype bfloat16
_base_ = ['./_base_/sam_phase2_e2e_sa1b.py']

model = dict(sam=dict(variant='l2'),
             init_checkpoint='work_dirs/efficientvit-sam-l2_phase1-distill_sa1b/iter_350000.pth')
