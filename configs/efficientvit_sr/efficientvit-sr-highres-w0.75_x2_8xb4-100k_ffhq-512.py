# EfficientViT-SR, high-resolution setting, x2, width 0.75 (the paper's 0.75-width variant): every channel count
# of ./efficientvit-sr-highres-w1.0_x2_8xb4-100k_ffhq-512.py times 0.75. Same recipe and data.
_base_ = ['./efficientvit-sr-highres-w1.0_x2_8xb4-100k_ffhq-512.py']

experiment_name = 'efficientvit-sr-highres-w0.75_x2_8xb4-100k_ffhq-512'
work_dir = f'./work_dirs/{experiment_name}'
model = dict(generator=dict(width_mult=0.75))
