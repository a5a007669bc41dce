"""Safe checkpoints and reproducible resumes for mmengine runs (mmdet, mmseg, mmagic). Imports mmengine only.

mmengine 0.10.7's ``CheckpointHook`` has three weaknesses that this module fixes:

- it writes ``epoch_N.pth`` in place and deletes the oldest kept checkpoint *before* writing the new one: a run
  killed (or out of disk) during the save leaves a half-written ``.pth`` under the final name and, with
  ``max_keep_ckpts=1``, no good checkpoint at all. :class:`AtomicCheckpointHook` writes ``epoch_N.pth.tmp``,
  renames it with ``os.replace`` once complete, and only then rewrites ``last_checkpoint`` (atomically too) and
  deletes the checkpoints no longer kept;
- ``--resume`` (``resume=True`` without ``load_from``) reads ``last_checkpoint`` blindly: an empty file resumes
  from ``''`` and fails. :func:`find_resume_checkpoint` falls back to the newest loadable ``epoch_*.pth`` /
  ``iter_*.pth`` of the work dir, with a warning;
- the random number generators are not in the checkpoint: after a resume, ``random``, ``numpy`` and ``torch``
  restart from the seed, so data augmentation and random sampling in the model draw what the *first* epoch
  drew, and a resumed run diverges from the uninterrupted one. The hook stores every rank's generator states in
  the checkpoint and restores them where the uninterrupted run would have them: before the next epoch's first
  batch (epoch-based loops) or after the batches that ``IterBasedTrainLoop`` skips on resume. Validation during
  training runs with the generators saved and restored around it, so that the training stream does not depend on
  whether the run was validated (the checkpoint is written before the validation that follows it).

Two more guards, because the checkpoint hook is the one hook every mmengine run has:

- resuming from a checkpoint whose weights hold NaN or inf is refused with the message of ``load_from``
  (:func:`evit_mm.mm.loading.check_finite_checkpoint`); ``allow_nonfinite=True`` (``tools/train.py
  --allow-nonfinite``) resumes anyway;
- a non-finite training loss stops the run (:class:`NonFiniteLossError`, naming the iteration) before the
  diverged weights are saved; ``default_hooks.checkpoint.check_finite_loss=False`` lets it go on.

Importing this module registers the hook in mmengine's ``HOOKS`` under ``AtomicCheckpointHook`` and, with
``force=True``, under ``CheckpointHook``, so every config's ``default_hooks.checkpoint`` gets it, in every scope.
:func:`evit_mm.mm.compat.apply_all` imports it, and every way into evit_mm calls that (the mmdet/mmseg/mmagic
adapters, ``evit_mm.sam.training``, the tools). What stays out of reach: the random state of *persistent*
dataloader workers lives in the worker processes; see docs/efficientvit_m.md ("Checkpoints and resuming").
"""
from __future__ import annotations

import glob
import logging
import math
import os
import os.path as osp
import random
import re
import zipfile

import numpy as np
import torch
from mmengine.dist import all_gather_object, all_reduce, get_comm_device, get_dist_info, is_main_process
from mmengine.fileio.backends import LocalBackend
from mmengine.hooks import CheckpointHook
from mmengine.logging import print_log
from mmengine.registry import HOOKS
from mmengine.runner import EpochBasedTrainLoop, IterBasedTrainLoop

__all__ = ['AtomicCheckpointHook', 'NonFiniteLossError', 'find_resume_checkpoint', 'is_loadable_checkpoint',
           'rng_state', 'set_rng_state', 'atomic_write_text', 'RNG_KEY']

#: Checkpoint key of the generator states: a list with one :func:`rng_state` per rank.
RNG_KEY = 'evit_mm_rng_states'
_STEP_NAME = re.compile(r'^(epoch|iter)_(\d+)\.pth$')


class NonFiniteLossError(FloatingPointError):
    """The training loss became NaN or infinite; the message names the iteration."""


# ----------------------------------------------------------------------------------------------- generator states
def rng_state() -> dict:
    """The states of Python's ``random``, numpy's global and torch's CPU (and CUDA) generators, in types that a
    ``weights_only`` ``torch.load`` accepts (tensors, ints, floats, lists)."""
    version, internal, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = dict(python=[version, list(internal), gauss],
                 numpy=[kind, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached)],
                 torch=torch.get_rng_state())
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state['cuda'] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    """Restore what :func:`rng_state` returned."""
    version, internal, gauss = state['python']
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, cached = state['numpy']
    np.random.set_state((kind, keys.cpu().numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state['torch'].cpu())
    if 'cuda' in state and torch.cuda.is_available() and len(state['cuda']) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all([s.cpu() for s in state['cuda']])


# ------------------------------------------------------------------------------------------------ files on disk
def atomic_write_text(path: str, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file and ``os.replace``: readers see the old or the new
    content, never a partial one."""
    tmp = f'{path}.tmp'
    with open(tmp, 'w') as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _fsync(path: str) -> None:
    with open(path, 'rb') as f:
        os.fsync(f.fileno())


def is_loadable_checkpoint(path: str) -> bool:
    """Cheap check that ``path`` is a complete ``torch.save`` file (torch's zip format, the default since torch
    1.6): a truncated file lacks the zip's central directory, which sits at its end. Reads no tensor data."""
    if not osp.isfile(path):
        return False
    try:
        with zipfile.ZipFile(path) as archive:
            return any(name.endswith('/data.pkl') or name == 'data.pkl' for name in archive.namelist())
    except (zipfile.BadZipFile, OSError):
        return False


def _newest_first(paths) -> list[str]:
    """``epoch_N.pth`` / ``iter_N.pth`` paths, newest first (largest N, then latest mtime)."""
    return sorted(paths, key=lambda p: (int(_STEP_NAME.match(osp.basename(p)).group(2)), osp.getmtime(p)),
                  reverse=True)


def _step_checkpoints(directory: str) -> list[str]:
    """``epoch_N.pth`` and ``iter_N.pth`` files of ``directory``, newest first."""
    return _newest_first(p for p in glob.glob(osp.join(directory, '*.pth')) if _STEP_NAME.match(osp.basename(p)))


def find_resume_checkpoint(work_dir: str) -> str | None:
    """The checkpoint that ``--resume`` (without a path) should resume from: the one named in
    ``work_dir/last_checkpoint`` if it is complete, else the newest complete ``epoch_*.pth`` / ``iter_*.pth``
    next to it or in ``work_dir`` (with a warning saying why). None if there is none."""
    record = osp.join(work_dir, 'last_checkpoint')
    named = None
    if osp.isfile(record):
        with open(record) as f:
            named = f.read().strip()
        if named and is_loadable_checkpoint(named):
            return named
        problem = (f'{record} is empty' if not named else
                   f'{record} names {named}, which does not exist' if not osp.isfile(named) else
                   f'{record} names {named}, which is not a complete checkpoint (truncated or corrupt)')
    else:
        problem = f'{record} does not exist'
    directories = [work_dir] + ([osp.dirname(named)] if named and osp.dirname(named) else [])
    candidates = []
    for directory in dict.fromkeys(osp.abspath(d) for d in directories):
        candidates += _step_checkpoints(directory)
    for path in _newest_first(candidates):  # both directories' files, in one order
        if is_loadable_checkpoint(path):
            print_log(f'{problem}; resuming from the newest complete checkpoint instead: {path}',
                      logger='current', level=logging.WARNING)
            return path
        print_log(f'skipping {path}: not a complete checkpoint (truncated or corrupt)', logger='current',
                  level=logging.WARNING)
    if named is not None or candidates:
        print_log(f'{problem} and {work_dir} holds no complete epoch_*.pth / iter_*.pth: nothing to resume, '
                  'training starts from the beginning', logger='current', level=logging.WARNING)
    return None


# ------------------------------------------------------------------------------------------------------- hook
class _RestoreAfter:
    """Wraps an iteration-based loop's dataloader iterator: restores the generator ``state`` just before the
    batch that follows the ``skipped`` batches that ``IterBasedTrainLoop`` draws and discards on resume."""

    def __init__(self, iterator, skipped: int, state: dict):
        self.iterator, self.skipped, self.state = iterator, int(skipped), state

    def __iter__(self):
        return self

    def __next__(self):
        if self.skipped:
            self.skipped -= 1
        elif self.state is not None:
            set_rng_state(self.state)
            self.state = None
        return next(self.iterator)

    def __getattr__(self, name):
        return getattr(self.iterator, name)


class AtomicCheckpointHook(CheckpointHook):
    """mmengine's ``CheckpointHook`` (same arguments) with atomic local saves, deletions after the new checkpoint
    is complete, an atomic ``last_checkpoint``, a ``--resume`` that survives a bad ``last_checkpoint``, and the
    random generators' states saved in and restored from the checkpoint. Remote ``out_dir`` backends are saved
    as mmengine does.

    Two arguments of its own: ``check_finite_loss=True`` stops the run with a :class:`NonFiniteLossError` when the
    training loss is NaN or inf (before anything is saved); ``allow_nonfinite=False`` refuses to resume from NaN/inf
    weights (:func:`evit_mm.mm.loading.check_finite_checkpoint`).
    :func:`evit_mm.mm.loading.use_checked_loading` sets the latter from ``tools/train.py --allow-nonfinite``."""

    def __init__(self, *args, check_finite_loss: bool = True, allow_nonfinite: bool = False, **kwargs):
        super().__init__(*args, **kwargs)
        self.check_finite_loss, self.allow_nonfinite = bool(check_finite_loss), bool(allow_nonfinite)
        self._gathered_rng = None  # every rank's state, gathered for the checkpoint being written
        self._resumed_rng = None  # (iteration, states) read from the checkpoint resumed from
        self._val_rng = None

    # ---------------------------------------------------------------- resume: which checkpoint, which state
    def before_run(self, runner) -> None:
        """Runs before the Runner loads or resumes: picks the checkpoint that ``resume=True`` without a path
        resumes from (:func:`find_resume_checkpoint`), in place of mmengine's blind read of last_checkpoint."""
        super().before_run(runner)
        resume, load_from = getattr(runner, '_resume', False), getattr(runner, '_load_from', None)
        if resume and load_from is None:  # resume='auto': mmengine would read last_checkpoint as it is
            runner._load_from = find_resume_checkpoint(runner.work_dir)
            runner._resume = runner._load_from is not None
        elif resume and isinstance(load_from, str) and osp.isfile(load_from) \
                and not is_loadable_checkpoint(load_from):
            raise RuntimeError(f'cannot resume from {load_from}: not a complete checkpoint (truncated or corrupt; '
                               'a run killed while saving leaves such files). Resume without a path to use the '
                               'newest complete checkpoint of the work dir.')

    def before_train(self, runner) -> None:
        super().before_train(runner)
        if isinstance(self.file_backend, LocalBackend) and is_main_process():
            for stale in glob.glob(osp.join(glob.escape(self.out_dir), '*.pth.tmp')):  # from a killed save
                runner.logger.warning(f'removing {stale}, a checkpoint whose save did not complete')
                os.remove(stale)

    def after_load_checkpoint(self, runner, checkpoint: dict) -> None:
        # Runner.resume calls this before it loads the weights; load_from (Runner.load_checkpoint) is checked by
        # evit_mm.mm.loading, and mmengine's own load_from stays as mmengine has it
        if getattr(runner, '_resume', False) and not self.allow_nonfinite:
            from .loading import check_finite_checkpoint
            check_finite_checkpoint(checkpoint, str(getattr(runner, '_load_from', None) or 'the checkpoint'))
        states = checkpoint.get(RNG_KEY)
        if states is not None:
            self._resumed_rng = (checkpoint.get('meta', {}).get('iter'), states)

    def before_train_epoch(self, runner) -> None:
        if self._resumed_rng is None:
            return
        iteration, states = self._resumed_rng
        self._resumed_rng = None
        if not iteration or runner.iter != iteration:  # load_from (weights only), not a resume
            return
        rank, world_size = get_dist_info()
        if len(states) != world_size:
            runner.logger.warning(f'the checkpoint holds the random generator states of {len(states)} ranks, this '
                                  f'run has {world_size}: they are not restored, the resumed run will not '
                                  'reproduce the uninterrupted one exactly')
            return
        loop = runner.train_loop
        if isinstance(loop, IterBasedTrainLoop):  # its run() draws and discards `iter` batches first
            loop.dataloader_iterator = _RestoreAfter(loop.dataloader_iterator, runner.iter, states[rank])
        else:
            set_rng_state(states[rank])
        runner.logger.info(f'restored the random generator states saved at iteration {iteration}')
        loader = runner.train_dataloader
        if getattr(loader, 'persistent_workers', False) and getattr(loader, 'num_workers', 0) > 0:
            runner.logger.warning(
                'the train dataloader has persistent workers: their random state (data augmentation) lives in the '
                'worker processes, not in the checkpoint, so the resumed run draws different augmentations than '
                'the uninterrupted run did. For a bit-exact resume use persistent_workers=False or num_workers=0.')

    # ------------------------------------------------------------ validation leaves the training stream alone
    def before_val(self, runner) -> None:
        self._val_rng = rng_state()

    def after_val(self, runner) -> None:
        if self._val_rng is not None:
            set_rng_state(self._val_rng)
            self._val_rng = None

    # ------------------------------------------------------------------------------------ diverged training
    def after_train_iter(self, runner, batch_idx: int, data_batch=None, outputs=None) -> None:
        if self.check_finite_loss:
            self._check_loss(runner, outputs)
        super().after_train_iter(runner, batch_idx, data_batch=data_batch, outputs=outputs)

    def _check_loss(self, runner, outputs) -> None:
        loss = outputs.get('loss') if isinstance(outputs, dict) else None
        if loss is None:
            return
        # (one .item() per iteration, as mmengine's RuntimeInfoHook does with every logged loss anyway)
        value = float(loss.detach().float().sum()) if isinstance(loss, torch.Tensor) else float(loss)
        finite = math.isfinite(value)
        if get_dist_info()[1] > 1:  # every rank stops together, not only those whose own loss diverged
            flag = torch.tensor([0.0 if finite else 1.0], device=get_comm_device())
            all_reduce(flag)
            if finite and flag.item() > 0:
                value, finite = 'NaN/inf on another rank', False
        if finite:
            return
        last = self.last_ckpt or runner.message_hub.get_info('last_ckpt')
        epoch = f' (epoch {runner.epoch + 1})' if isinstance(runner.train_loop, EpochBasedTrainLoop) else ''
        raise NonFiniteLossError(
            f'the training loss is {value} at iteration {runner.iter + 1}{epoch}: the run diverged, and it stops '
            f'here, before its NaN/inf weights are saved (last checkpoint: {last or "none"}). Lower the learning '
            'rate, clip gradients (optim_wrapper.clip_grad), check the data, then resume; '
            'default_hooks.checkpoint.check_finite_loss=False lets such a run go on')

    # ---------------------------------------------------------------------------------------------- saving
    def before_save_checkpoint(self, runner, checkpoint: dict) -> None:
        states, self._gathered_rng = self._gathered_rng, None
        checkpoint[RNG_KEY] = states if states is not None else [rng_state()]

    def _save_checkpoint_with_step(self, runner, step, meta):
        if not isinstance(self.file_backend, LocalBackend):
            return super()._save_checkpoint_with_step(runner, step, meta)
        self._gathered_rng = all_gather_object(rng_state()) if get_dist_info()[1] > 1 else None
        dropped = self._update_kept(runner, step)
        filename = self.filename_tmpl.format(step)
        self.last_ckpt = osp.join(self.out_dir, filename)
        runner.message_hub.update_info('last_ckpt', self.last_ckpt)
        tmp = self.last_ckpt + '.tmp'
        try:
            runner.save_checkpoint(self.out_dir, filename + '.tmp', self.file_client_args,
                                   save_optimizer=self.save_optimizer,
                                   save_param_scheduler=self.save_param_scheduler, meta=meta,
                                   by_epoch=self.by_epoch, backend_args=self.backend_args, **self.args)
        except BaseException:
            if is_main_process() and osp.isfile(tmp):
                os.remove(tmp)
            raise
        finally:
            self._gathered_rng = None
        if not is_main_process():
            return
        _fsync(tmp)
        os.replace(tmp, self.last_ckpt)
        atomic_write_text(osp.join(runner.work_dir, 'last_checkpoint'), self.last_ckpt)
        for old in dropped:
            if osp.isfile(old):
                os.remove(old)

    def _update_kept(self, runner, step) -> list[str]:
        """mmengine's ``max_keep_ckpts`` bookkeeping, returning the paths to delete instead of deleting them
        before the new checkpoint exists."""
        if self.max_keep_ckpts <= 0 or (self.keep_ckpt_ids and self.keep_ckpt_ids[-1] == step):
            return []
        dropped = []
        if len(self.keep_ckpt_ids) == self.max_keep_ckpts:
            dropped.append(osp.join(self.out_dir, self.filename_tmpl.format(self.keep_ckpt_ids.popleft())))
        self.keep_ckpt_ids.append(step)
        runner.message_hub.update_info('keep_ckpt_ids', list(self.keep_ckpt_ids))
        return dropped


HOOKS.register_module(name='AtomicCheckpointHook', module=AtomicCheckpointHook, force=True)
HOOKS.register_module(name='CheckpointHook', module=AtomicCheckpointHook, force=True)
