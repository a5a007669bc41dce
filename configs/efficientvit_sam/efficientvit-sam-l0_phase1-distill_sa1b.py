# EfficientViT-SAM-L0, phase 1: distil SAM ViT-H's image encoder on SA-1B (see docs/sam_training.md).
#   python tools/sam_cache_teacher_embeddings.py configs/efficientvit_sam/efficientvit-sam-l0_phase1-distill_sa1b.py
#   bash tools/dist_train.sh configs/efficientvit_sam/efficientvit-sam-l0_phase1-distill_sa1b.py 8 --amp --amp-dtype bfloat16
_base_ = ['./_base_/sam_phase1_distill_sa1b.py']

model = dict(sam=dict(variant='l0'))
