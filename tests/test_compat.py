"""evit_mm's compatibility fixes for the OpenMMLab stack on torch 2.14 (see evit_mm/compat)."""
import pickle

import pytest
import torch
from torch import nn

from conftest import run_python


class CustomMeta:
    """Stands for any pickled class a weights-only load must refuse."""

    def __init__(self, value):
        self.value = value


def _toy_runner(work_dir, max_epochs, **kwargs):
    from mmengine.model import BaseModel
    from mmengine.runner import Runner
    from torch.utils.data import Dataset

    class Model(BaseModel):
        def __init__(self):
            super().__init__()
            self.linear = nn.Linear(2, 1)

        def forward(self, x, y, mode='tensor'):
            out = self.linear(torch.stack(x))
            if mode == 'loss':
                return {'loss': ((out - torch.stack(y)) ** 2).mean()}
            return out

    class Data(Dataset):
        def __len__(self):
            return 8

        def __getitem__(self, i):
            return {'x': torch.tensor([i, 1.0]), 'y': torch.tensor([2.0 * i])}

    return Runner(
        model=Model(), work_dir=str(work_dir),
        train_dataloader=dict(dataset=Data(), sampler=dict(type='DefaultSampler', shuffle=True), batch_size=2,
                              num_workers=0),
        optim_wrapper=dict(optimizer=dict(type='AdamW', lr=0.01)),
        param_scheduler=dict(type='MultiStepLR', milestones=[1], by_epoch=True),
        train_cfg=dict(by_epoch=True, max_epochs=max_epochs),
        default_hooks=dict(checkpoint=dict(type='CheckpointHook', interval=1)),
        randomness=dict(seed=0), **kwargs)


def test_stock_mmengine_cannot_load_its_checkpoints_on_this_torch(tmp_path):
    """The failure evit_mm fixes: without the fix, torch >= 2.6 refuses mmengine's own checkpoint."""
    runner = _toy_runner(tmp_path / 'a', max_epochs=1)
    runner.train()
    code = f"""
from mmengine.runner.checkpoint import load_from_local
try:
    load_from_local({str(tmp_path / 'a' / 'epoch_1.pth')!r}, 'cpu')
except Exception as err:
    print(type(err).__name__, err)
"""
    proc = run_python(code)
    assert 'UnpicklingError' in proc.stdout and 'HistoryBuffer' in proc.stdout, proc.stdout + proc.stderr


def test_runner_checkpoint_resumes(tmp_path):
    from evit_mm.compat import apply_all
    apply_all()
    first = _toy_runner(tmp_path, max_epochs=1)
    first.train()
    ckpt = tmp_path / 'epoch_1.pth'
    assert ckpt.is_file()
    weights_after_1 = {k: v.clone() for k, v in first.model.state_dict().items()}

    resumed = _toy_runner(tmp_path, max_epochs=2, resume=True, load_from=str(ckpt))
    resumed.train()
    assert resumed.epoch == 2 and resumed.iter == 8  # continued from epoch 1 / iter 4, not from scratch
    assert (tmp_path / 'epoch_2.pth').is_file()
    # the message hub (HistoryBuffer objects) and the optimizer state came back
    saved = torch.load(ckpt, weights_only=False)
    assert resumed.optim_wrapper.optimizer.state_dict()['state'].keys() == \
        saved['optimizer']['state'].keys()
    assert 'train/loss' in resumed.message_hub.log_scalars
    # and training went on from the saved weights: they changed, but only through epoch 2's steps
    assert any(not torch.equal(weights_after_1[k], v) for k, v in resumed.model.state_dict().items())


def test_load_from_and_auto_resume(tmp_path):
    from evit_mm.compat import apply_all
    apply_all()
    _toy_runner(tmp_path, max_epochs=1).train()
    auto = _toy_runner(tmp_path, max_epochs=2, resume=True)  # finds work_dir/last_checkpoint
    auto.train()
    assert auto.epoch == 2
    fresh = _toy_runner(tmp_path / 'b', max_epochs=1, load_from=str(tmp_path / 'epoch_2.pth'))
    fresh.load_or_resume()
    assert all(torch.equal(a, b) for a, b in zip(fresh.model.state_dict().values(),
                                                   auto.model.state_dict().values()))


def test_untrusted_globals_are_still_refused(tmp_path, monkeypatch):
    from evit_mm.compat import TRUST_ENV, load_local_checkpoint
    path = tmp_path / 'custom.pth'
    torch.save({'state_dict': {'w': torch.ones(1)}, 'meta': CustomMeta(1)}, path)
    monkeypatch.delenv(TRUST_ENV, raising=False)
    with pytest.raises(pickle.UnpicklingError, match=TRUST_ENV) as info:
        load_local_checkpoint(str(path), 'cpu')
    assert 'CustomMeta' in str(info.value)
    monkeypatch.setenv(TRUST_ENV, str(path))  # trust is given to the listed files (not '1' for all)
    assert load_local_checkpoint(str(path), 'cpu')['meta'].value == 1


def test_restricted_getattr_only_resolves_history_buffer_statistics(tmp_path):
    from evit_mm.compat.mmengine_checkpoint import _restricted_getattr
    from mmengine.logging.history_buffer import HistoryBuffer
    assert _restricted_getattr(HistoryBuffer, 'mean') is HistoryBuffer.mean
    for obj, name in [(HistoryBuffer, '__init__'), (torch, 'load'), (HistoryBuffer, '__class__')]:
        with pytest.raises(pickle.UnpicklingError):
            _restricted_getattr(obj, name)
