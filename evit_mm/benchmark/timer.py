"""Timing: windows of fixed duration, interleaved in rounds so that load changes hit the compared models alike.

A round times one window of every candidate (:func:`window_order`); each window records its images/s and the time
of its middle, so that :func:`evit_mm.benchmark.report.paired_ratio` can pair each window with the other
candidate's nearest one.  The GPU protocol (autocast, largest power-of-two batch, batch-1 latency) is device
independent and also runs on a CPU.
"""
from __future__ import annotations

import contextlib
import os
import statistics
import sys
import time
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch
from torch import nn

from .machine import loadavg
from .ort import OrtModule


AMP_DTYPES = {'fp16': torch.float16, 'bf16': torch.bfloat16}


def _autocast(device: str, dtype):
    return torch.autocast(device, dtype=dtype) if dtype is not None else contextlib.nullcontext()


@dataclass
class Candidate:
    """One measured model: (model name, implementation, mode)."""
    key: str              # unique, e.g. 'efficientvit_m0/evit_mm/deploy'
    model_name: str       # the ModelSpec name (or the peer's model name)
    impl: str             # 'evit_mm' | 'timm' | a peer's name
    mode: str             # 'eager' | 'deploy' | 'fused' | 'onnx'
    role: str             # 'model' | 'peer'
    module: nn.Module
    params: int
    macs: int
    spec: str             # the ModelSpec this candidate belongs to ('' for a shared peer)
    max_abs_diff: float | None = None
    input_size: tuple[int, int] | None = None  # (H, W); None: the run's --img-size
    cpu_batch: int | None = None
    family: str = ''
    peer: str = ''        # PEER_SPECS key of a shared peer
    every_model: bool = True


def is_oom(err: BaseException) -> bool:
    """Whether an exception means "this batch does not fit" (CUDA OOM, or cuDNN/indexing limits of huge batches)."""
    if isinstance(err, getattr(torch.cuda, 'OutOfMemoryError', ())):
        return True
    text = str(err)
    return isinstance(err, RuntimeError) and any(
        s in text for s in ('out of memory', 'CUDNN_STATUS_NOT_SUPPORTED', 'CUDNN_STATUS_ALLOC_FAILED',
                            'canUse32BitIndexMath', 'INT_MAX'))


def largest_pow2_batch(try_batch: Callable[[int], Any], max_batch: int, on_oom: Callable[[], Any] = lambda: None,
                       start: int = 1) -> int:
    """The largest power of two ``b <= max_batch`` for which ``try_batch(b)`` does not run out of memory.

    Doubles from ``start`` until ``try_batch`` raises an out-of-memory error (see :func:`is_oom`) or
    ``max_batch`` is passed, then backs off to the last size that worked.  ``on_oom`` runs after each failure
    (e.g. ``torch.cuda.empty_cache``).  Raises the error if even ``start`` does not fit.
    """
    best, batch = None, start
    while batch <= max_batch:
        try:
            try_batch(batch)
        except Exception as err:  # noqa: BLE001 - only out-of-memory errors are expected
            if not is_oom(err):
                raise
            del err
            on_oom()
            break
        best, batch = batch, batch * 2
    if best is None:
        raise RuntimeError(f'even a batch of {start} does not fit in memory')
    return best


class Timer:
    """Runs a candidate for fixed durations and records (images, seconds) per window."""

    def __init__(self, module: nn.Module, batch: int, img_size, device: str, amp_dtype=None):
        h, w = (img_size, img_size) if isinstance(img_size, int) else img_size
        self.module, self.batch, self.device = module, batch, device
        self.x = torch.randn(batch, 3, h, w, device=device)
        self.amp_dtype = amp_dtype

    def step(self) -> None:
        with _autocast(self.device, self.amp_dtype):
            self.module(self.x)
        if self.device == 'cuda':
            torch.cuda.synchronize()  # as the paper: each iteration is complete when it is timed

    def run_for(self, seconds: float) -> tuple[int, float]:
        """Iterations until ``seconds`` have passed (at least one); returns (iterations, elapsed seconds)."""
        n, start = 0, time.perf_counter()
        while True:
            self.step()
            n += 1
            elapsed = time.perf_counter() - start
            if elapsed >= seconds:
                return n, elapsed


def _progress(total: int, enabled: bool, desc: str):
    try:
        from tqdm import tqdm
    except ImportError:  # pragma: no cover - tqdm is a dependency of the environment
        enabled = False
    if not enabled:
        class _Null:
            def update(self, n=1): pass
            def set_postfix_str(self, s): pass
            def set_description_str(self, s): pass
            def close(self): pass
        return _Null()
    print(desc, file=sys.stderr, flush=True)
    return tqdm(total=total, file=sys.stderr, dynamic_ncols=True, leave=False, mininterval=0.5)


def measure_setting(candidates: list[Candidate], setting: dict, args, log, progress: bool,
                    t0: float | None = None, desc: str | None = None) -> list[dict]:
    """Measure every candidate under one setting, in rounds of one window per candidate (:func:`window_order`).

    ``setting``: ``device``, ``protocol`` ('cpu': fp32 at a fixed batch; 'gpu': autocast ``args.amp``, batch
    ``'max'`` (power-of-two search) or fixed, plus batch-1 latency), ``batch_size`` (None: each candidate's
    own CPU batch), ``threads`` (cpu), ``label``, ``latency`` (gpu protocol; default True: also time batch 1).
    ONNX candidates run on the CPU protocol only.
    The protocol is independent of the device, so the GPU protocol's logic also runs (and is tested) on a CPU.
    ``t0``: the clock origin of the windows' times (``time.perf_counter()``; shared by the groups of a run so that
    windows of different groups can be paired); ``desc``: the progress bar's label (default: the setting's).
    Three steps: :func:`prepare_timers`, :func:`run_windows`, :func:`result_rows`.
    """
    device, protocol = setting['device'], setting['protocol']
    amp_dtype = AMP_DTYPES.get(args.amp) if protocol == 'gpu' else None
    candidates = [c for c in candidates
                  if not (isinstance(c.module, OrtModule) and (device == 'cuda' or protocol == 'gpu'))]
    phases: dict[str, dict[str, Timer]] = {}
    load_before = loadavg()
    try:
        prepare_timers(candidates, setting, args, log, amp_dtype, phases)
        order = window_order(candidates, args.peer_windows)
        results = run_windows(phases, order, args, progress, desc or setting['label'], t0)
    finally:  # the modules go back to the CPU and the timers' inputs are freed, also after an error
        for cand in candidates:
            if not isinstance(cand.module, OrtModule):
                cand.module.to('cpu')
        for timers in phases.values():
            timers.clear()
        _empty_cache(device)
    return result_rows(candidates, results, setting, args, amp_dtype, load_before, loadavg())


def _empty_cache(device: str) -> None:
    if device == 'cuda':
        torch.cuda.empty_cache()


def _input_hw(cand: Candidate, args) -> tuple[int, int]:
    size = cand.input_size or args.img_size
    return (size, size) if isinstance(size, int) else tuple(size)


def _largest_batch(cand: Candidate, hw: tuple[int, int], device: str, amp_dtype, args, log) -> int:
    """The largest power-of-two batch (at most ``args.max_batch``) that ``cand`` runs on ``device``."""
    def try_batch(b):
        x = torch.randn(b, 3, *hw, device=device)
        with torch.inference_mode(), _autocast(device, amp_dtype):
            cand.module(x)
        if device == 'cuda':
            torch.cuda.synchronize()
    batch = largest_pow2_batch(try_batch, args.max_batch, on_oom=lambda: _empty_cache(device))
    _empty_cache(device)
    log(f'{cand.key}: largest power-of-two batch = {batch}' +
        (' (the --max-batch cap)' if batch * 2 > args.max_batch else ''))
    return batch


def prepare_timers(candidates: list[Candidate], setting: dict, args, log, amp_dtype,
                   phases: dict[str, dict[str, Timer]]) -> None:
    """Set the setting's threads (and cuDNN autotuning on CUDA), move the candidates to its device and fill
    ``phases`` with their timers: ``'throughput'`` at the setting's batch (``'max'``: the largest power of two
    that fits) and, on the GPU protocol with ``latency``, ``'latency'`` at batch 1.  ``phases`` is filled in place
    so that the caller frees what was built even when this fails (an out-of-memory error in the batch search)."""
    device = setting['device']
    if setting.get('threads'):
        torch.set_num_threads(setting['threads'])
    if device == 'cuda':
        torch.backends.cudnn.benchmark = True
    for cand in candidates:
        if isinstance(cand.module, OrtModule):
            cand.module.set_threads(setting.get('threads'))
        else:
            cand.module.to(device)
    throughput = phases.setdefault('throughput', {})
    with_latency = setting['protocol'] == 'gpu' and setting.get('latency', True)
    latency = phases.setdefault('latency', {}) if with_latency else None
    for cand in candidates:
        hw = _input_hw(cand, args)
        batch = setting['batch_size'] or cand.cpu_batch or 1
        if batch == 'max':
            batch = _largest_batch(cand, hw, device, amp_dtype, args, log)
        throughput[cand.key] = Timer(cand.module, batch, hw, device, amp_dtype)
        if latency is not None:
            latency[cand.key] = Timer(cand.module, 1, hw, device, amp_dtype)


def run_windows(phases: dict[str, dict[str, Timer]], order: Sequence[str], args, progress: bool, desc: str,
                t0: float | None = None) -> dict[tuple[str, str], dict]:
    """Time each phase's timers: one untimed call each (lazy initialisation: oneDNN primitives, ORT) and
    ``args.warmup`` seconds of warm-up, then ``args.repeats`` rounds of one ``args.duration`` window per key of
    ``order``.  Returns ``{(phase, key): dict(batch_size, windows)}``; a window's ``t`` is its middle, in seconds
    after ``t0`` (default: now)."""
    total = sum(len(t) * (1 if args.warmup > 0 else 0) + len(order) * args.repeats for t in phases.values())
    bar = _progress(total, progress, desc)
    results: dict[tuple[str, str], dict] = {}
    t0 = time.perf_counter() if t0 is None else t0
    with torch.inference_mode():
        for phase, timers in phases.items():
            for key, timer in timers.items():
                timer.step()  # always one untimed call: lazy initialisation (oneDNN primitives, ORT) is not timed
                if args.warmup > 0:
                    bar.set_description_str(f'{phase} warm-up {key}')
                    timer.run_for(args.warmup)
                    bar.update()
            windows = {key: [] for key in timers}
            for rep in range(args.repeats):
                for key in order:
                    bar.set_description_str(f'{phase} {rep + 1}/{args.repeats} {key}')
                    windows[key].append(_window(timers[key], args, t0))
                    bar.set_postfix_str(f'{windows[key][-1]["images_per_s"]:.1f} img/s')
                    bar.update()
            results.update({(phase, key): dict(batch_size=timers[key].batch, windows=wins)
                            for key, wins in windows.items()})
    bar.close()
    return results


def _window(timer: Timer, args, t0: float) -> dict:
    """One timed window of ``args.duration`` seconds (after one untimed call when warming up: the other models
    ran since, the caches are cold)."""
    if args.warmup > 0:
        timer.step()
    start = time.perf_counter() - t0
    n, elapsed = timer.run_for(args.duration)
    return dict(iterations=n, seconds=round(elapsed, 6), images_per_s=timer.batch * n / elapsed,
                t=round(start + elapsed / 2, 3))


def result_rows(candidates: Sequence[Candidate], results: dict[tuple[str, str], dict], setting: dict, args,
                amp_dtype, load_before, load_after) -> list[dict]:
    """One row per candidate: its median images/s over the throughput windows (and median batch-1 latency where
    measured), with what was measured and how."""
    rows = []
    for cand in candidates:
        res = results[('throughput', cand.key)]
        ips = statistics.median(w['images_per_s'] for w in res['windows'])
        row = dict(setting=setting['label'], device=setting['device'], protocol=setting['protocol'],
                   threads=setting.get('threads'), precision=args.amp if amp_dtype is not None else 'fp32',
                   model=cand.model_name, impl=cand.impl, mode=cand.mode, role=cand.role, spec=cand.spec,
                   family=cand.family, peer=cand.peer, params=cand.params, macs=cand.macs,
                   input_size=list(_input_hw(cand, args)), batch_size=res['batch_size'], images_per_s=ips,
                   ms_per_batch=1000.0 * res['batch_size'] / ips,
                   images_per_s_best=max(w['images_per_s'] for w in res['windows']),
                   windows=res['windows'], max_abs_diff=cand.max_abs_diff, loadavg_before=load_before,
                   loadavg_after=load_after)
        if ('latency', cand.key) in results:
            lat = results[('latency', cand.key)]
            row['latency_ms'] = statistics.median(1000.0 / w['images_per_s'] for w in lat['windows'])
            row['latency_windows'] = lat['windows']
        rows.append(row)
    return rows


def warn_if_loaded(rows: Sequence[dict], log) -> None:
    """Once per setting: warn when the 1-minute load average exceeded the CPU count as one of its timings
    started (other processes competed for the cores)."""
    for setting in dict.fromkeys(r['setting'] for r in rows):
        loads = [r['loadavg_before'] for r in rows if r['setting'] == setting and r.get('loadavg_before') is not None]
        if loads and max(loads) > (os.cpu_count() or 1):
            log(f'WARNING: the 1-minute load average reached {max(loads):.2f} on {os.cpu_count()} CPUs while '
                f'"{setting}" was timed: other processes compete for the cores; compare ratios, and distrust '
                'multi-thread figures')


def merge_rows(into: dict, row: dict) -> None:
    """Add ``row``'s windows (the same candidate and setting, timed in another group) to ``into`` and recompute
    the medians: a shared peer timed beside every model gets one row with all its windows."""
    into['windows'] = into['windows'] + row['windows']
    into['images_per_s'] = statistics.median(w['images_per_s'] for w in into['windows'])
    into['images_per_s_best'] = max(w['images_per_s'] for w in into['windows'])
    into['ms_per_batch'] = 1000.0 * into['batch_size'] / into['images_per_s']
    if 'latency_windows' in row:
        into['latency_windows'] = into.get('latency_windows', []) + row['latency_windows']
        into['latency_ms'] = statistics.median(1000.0 / w['images_per_s'] for w in into['latency_windows'])
    into['loadavg_after'] = row['loadavg_after']


def window_order(candidates: Sequence[Candidate], peer_windows: str = 'per-model') -> list[str]:
    """The keys timed in one round: each model's candidates back to back; a light shared peer of the model's
    family (MobileNetV3; ``every_model``) after every model of the family (``'per-model'``: each ratio against it
    then pairs windows that ran side by side) or once after the family (``'once'``); heavy peers (SAM ViT,
    SegFormer, SwinIR) always once per round, after their family's last model."""
    groups: dict[str, list[Candidate]] = {}
    for cand in candidates:
        if cand.role == 'model':
            groups.setdefault(cand.spec, []).append(cand)
    peers = [cand for cand in candidates if cand.role == 'peer']
    order: list[str] = []
    specs = list(groups)
    for i, spec in enumerate(specs):
        family = groups[spec][0].family
        order += [c.key for c in groups[spec]]
        last_of_family = all(groups[s][0].family != family for s in specs[i + 1:])
        for p in peers:
            if p.family != family:
                continue
            if (p.every_model and peer_windows == 'per-model') or last_of_family:
                order.append(p.key)
    order += [p.key for p in peers if p.key not in order]  # peers of a family with no model selected
    return order
