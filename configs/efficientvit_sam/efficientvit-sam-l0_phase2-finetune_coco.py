# Fine-tune EfficientViT-SAM-L0 on your own instance masks in COCO format (polygons or RLE; categories are
# ignored, SAM is class-agnostic), with phase 2's prompts and loss, from the official checkpoint.
#   python tools/train.py configs/efficientvit_sam/efficientvit-sam-l0_phase2-finetune_coco.py \
#       --cfg-options train_dataloader.dataset.data_root=data/my_coco/ model.init_checkpoint=my_phase2/iter_700000.pth
_base_ = ['./efficientvit-sam-l0_phase2-e2e_sa1b.py']

model = dict(init_checkpoint='evit://efficientvit_sam_l0')  # the official checkpoint, or a phase-2 one of yours
train_dataloader = dict(
    batch_size=4, num_workers=4, persistent_workers=True,
    sampler=dict(_delete_=True, type='SamDefaultSampler', shuffle=True),
    dataset=dict(_delete_=True, type='SamCocoDataset', data_root='data/coco/',
                 ann_file='annotations/instances_train2017.json', data_prefix=dict(img='train2017/'),
                 num_masks=16, pipeline={{_base_.train_pipeline}}))

max_epochs = 10
train_cfg = dict(_delete_=True, by_epoch=True, max_epochs=max_epochs, val_interval=max_epochs + 1)
param_scheduler = [dict(type='CosineAnnealingLR', T_max=max_epochs, eta_min=0.0, by_epoch=True, begin=0,
                        end=max_epochs, convert_to_iter_based=True)]
optim_wrapper = dict(optimizer=dict(lr=1e-5))  # per 4 images, x GPUs
default_hooks = dict(logger=dict(interval=10), checkpoint=dict(by_epoch=True, interval=1, max_keep_ckpts=3))
log_processor = dict(by_epoch=True, window_size=10)
