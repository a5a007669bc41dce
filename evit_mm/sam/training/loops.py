"""Resuming an iteration-based run without reloading the data it already trained on.

When mmengine's ``IterBasedTrainLoop`` resumes at iteration ``n``, it calls ``next()`` on the dataloader ``n``
times and throws the batches away: every image already trained on is read, decoded and transformed again. On
SA-1B, resuming at iteration 300k means reloading 1.2M images per GPU (hours). The samples' randomness depends
only on the sampler's indices (see :mod:`.datasets`), so moving the sampler forward is enough.
:class:`SamIterBasedTrainLoop` does that, then lets mmengine's loop run unchanged.
"""
from __future__ import annotations

from mmengine.logging import print_log
from mmengine.registry import LOOPS
from mmengine.runner import IterBasedTrainLoop
from mmengine.runner.loops import _InfiniteDataloaderIterator

__all__ = ['SamIterBasedTrainLoop']


class _Advanced:
    """A dataloader iterator whose first ``skipped`` ``next()`` calls return ``None`` without loading anything:
    the batches mmengine's loop discards on resume, already skipped in the sampler."""

    def __init__(self, iterator, skipped: int):
        self.iterator, self.skipped = iterator, int(skipped)

    def __iter__(self):
        return self

    def __next__(self):
        if self.skipped:
            self.skipped -= 1
            return None
        return next(self.iterator)


@LOOPS.register_module()
class SamIterBasedTrainLoop(IterBasedTrainLoop):
    """mmengine's ``IterBasedTrainLoop``; on resume, a sampler with a ``skip`` method (``SamInfiniteSampler``) is
    moved forward by the samples already trained on instead of loading them again. With any other sampler it
    behaves exactly as mmengine's loop."""

    def run(self):
        sampler = getattr(self.dataloader, 'sampler', None)
        if self._iter > 0 and hasattr(sampler, 'skip'):
            samples = self._iter * self.dataloader.batch_size
            sampler.skip(samples)
            self.dataloader_iterator = _Advanced(_InfiniteDataloaderIterator(self.dataloader), self._iter)
            print_log(f'Resuming at iteration {self._iter}: the sampler skipped the {samples} samples of this rank '
                      'that were already trained on (nothing is loaded for them)', logger='current')
        return super().run()
