# EfficientViT-SAM-L1, phase 1: distil SAM ViT-H's image encoder on SA-1B (see docs/sam_training.md).
#   python tools/sam_cache_teacher_embeddings.py THIS_CONFIG  # once; one cache serves all five variants
#   bash tools/dist_train.sh THIS_CONFIG 8 --amp --amp-dtype bfloat16
_base_ = ['./_base_/sam_phase1_distill_sa1b.py']

model = dict(sam=dict(variant='l1'))
