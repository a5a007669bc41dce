"""A short CPU training of a small EfficientViT-SR on real photographs beats bicubic upsampling on held-out real
photographs (x2, PSNR on Y, mmagic's ``psnr``).

Protocol (fixed seed 0, deterministic on one thread):

- training: 4 HR crops of 96x96 from each of the 7 :data:`TRAIN_PHOTOS` (each crop a 192x192 region shrunk by 2,
  see evit_mm/sample_data/sr.py), LR = MATLAB-like bicubic / 2; 500 Adam steps (lr 2e-3, cosine), L1 loss,
  batches of 16 random 24x24 LR patches, horizontal flips;
- evaluation: one 120x180 HR crop of each of the 4 :data:`HELD_OUT_PHOTOS` (never seen in training), PSNR on Y
  with crop_border 2 after rounding to 8 bits, against the better of two bicubic upsamplers (PyTorch's, a = -0.75,
  which is also the network's residual, and MATLAB-like, a = -0.5).

Margin: runs of exactly this protocol on this machine gave +0.80 dB (seed 0, this test: 35.36 vs 34.56 dB),
+0.84 dB (seed 1) and +0.67 dB (seed 2) over bicubic; seed 0 stopped after 300 steps still gave +0.58 dB. The test
asks for +0.3 dB, less than half the smallest gain seen. The measured gain is printed (``pytest -s``) and quoted
in docs/super_resolution.md.
"""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

# a small network: 35k parameters, ~25 s of training on one CPU thread
TINY = dict(channels=16, width=32, depth=2, dim=8, expand_ratio=2)
STEPS, LR, BATCH, PATCH, SEED = 500, 2e-3, 16, 24, 0
MARGIN_DB = 0.3


def _to_tensor(images):
    return torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float() / 255.0


def _to_uint8(t):
    return (t.clamp(0, 1) * 255.0).round().byte().permute(1, 2, 0).numpy()


def _psnr_y(pred, gt):
    from mmagic.evaluation.metrics.psnr import psnr
    return psnr(pred, gt, crop_border=2, convert_to='Y', channel_order='rgb')


@pytest.mark.slow
def test_short_training_beats_bicubic_on_held_out_photographs():
    from evit_mm.models import EfficientViTSR
    from evit_mm.sample_data.sr import HELD_OUT_PHOTOS, TRAIN_PHOTOS, hr_crops, matlab_resize

    torch.manual_seed(SEED)
    rng = np.random.default_rng(SEED)
    train_hr = [c for p in TRAIN_PHOTOS for c in hr_crops(p, (96, 96), 4, rng)]
    test_hr = [c for p in HELD_OUT_PHOTOS for c in hr_crops(p, (120, 180), 1, rng)]
    train_lr = [matlab_resize(h, scale=0.5) for h in train_hr]
    test_lr = [matlab_resize(h, scale=0.5) for h in test_hr]

    bicubic_torch = np.mean([
        _psnr_y(_to_uint8(F.interpolate(_to_tensor([lr]), scale_factor=2, mode='bicubic', align_corners=False)[0]),
                hr) for hr, lr in zip(test_hr, test_lr)])
    bicubic_matlab = np.mean([_psnr_y(matlab_resize(lr, scale=2), hr) for hr, lr in zip(test_hr, test_lr)])
    bicubic = max(bicubic_torch, bicubic_matlab)

    model = EfficientViTSR(2, **TINY)
    hr_t, lr_t = _to_tensor(train_hr), _to_tensor(train_lr)
    opt = torch.optim.Adam(model.parameters(), lr=LR)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, STEPS)
    g = torch.Generator().manual_seed(SEED)
    lr_size = lr_t.shape[-1]
    for _ in range(STEPS):
        idx = torch.randint(0, len(hr_t), (BATCH,), generator=g)
        ys = torch.randint(0, lr_size - PATCH + 1, (BATCH,), generator=g)
        xs = torch.randint(0, lr_size - PATCH + 1, (BATCH,), generator=g)
        lr_b = torch.stack([lr_t[i, :, y:y + PATCH, x:x + PATCH] for i, y, x in zip(idx, ys, xs)])
        hr_b = torch.stack([hr_t[i, :, 2 * y:2 * y + 2 * PATCH, 2 * x:2 * x + 2 * PATCH]
                            for i, y, x in zip(idx, ys, xs)])
        if torch.rand(1, generator=g) < 0.5:
            lr_b, hr_b = lr_b.flip(-1), hr_b.flip(-1)
        loss = F.l1_loss(model(lr_b), hr_b)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()

    model.eval()
    with torch.no_grad():
        ours = np.mean([_psnr_y(_to_uint8(model(_to_tensor([lr]))[0]), hr) for hr, lr in zip(test_hr, test_lr)])
    print(f'\nheld-out PSNR-Y: EfficientViT-SR (tiny, {STEPS} steps) {ours:.3f} dB, bicubic {bicubic:.3f} dB '
          f'(torch {bicubic_torch:.3f}, MATLAB-like {bicubic_matlab:.3f}), gain {ours - bicubic:+.3f} dB')
    assert ours > bicubic + MARGIN_DB
