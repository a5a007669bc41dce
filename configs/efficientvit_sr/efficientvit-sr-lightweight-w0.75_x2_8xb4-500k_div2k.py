# EfficientViT-SR, lightweight setting, x2, width 0.75 (the paper's 0.75-width variant): every channel count
# of ./efficientvit-sr-lightweight-w1.0_x2_8xb4-500k_div2k.py times 0.75 (0.61M parameters). Same recipe and data.
_base_ = ['./efficientvit-sr-lightweight-w1.0_x2_8xb4-500k_div2k.py']

experiment_name = 'efficientvit-sr-lightweight-w0.75_x2_8xb4-500k_div2k'
work_dir = f'./work_dirs/{experiment_name}'
model = dict(generator=dict(width_mult=0.75))
