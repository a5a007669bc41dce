"""Runs a benchmark selection (the parsed options of ``tools/benchmark.py``) and returns its result dict."""
from __future__ import annotations

import datetime
import time
from typing import Sequence

import torch

from . import candidates, timer
from .machine import machine_info
from .options import estimate_seconds, settings_of
from .report import compute_ratios
from .specs import PEER_SPECS


def run_by_model(args, settings: Sequence[dict], log, progress: bool) -> tuple[list[dict], dict]:
    """Build, time and free one group (:func:`candidates.plan_groups`: a model's forms and the peers timed beside
    it) at a time, so that a run's memory is that of its largest model rather than the sum of all of them (a run of
    B0..B3 and L0..L3 built at once needs more than 22 GiB).  A light peer (MobileNetV3) stays built for the
    whole family and its windows from every group make one row.  Windows share one clock, so a ratio still pairs
    each window with the other candidate's nearest one.  Returns (rows, models info)."""
    import gc

    groups = candidates.plan_groups(args.specs, args.peers, args.img_size, args.sizes,
                                    peer_own_size=args.peer_own_size, peer_windows=args.peer_windows)
    models, peer_models, merged = {}, {}, {}
    kept: dict[tuple[str, str], list[timer.Candidate]] = {}  # (peer, family) -> the light peer's candidates
    t0 = time.perf_counter()
    for i, group in enumerate(groups):
        cands, models[group.spec.name] = candidates.build_model_candidates(
            group.spec, group.size, args.peers, args.seed, log, args.onnx, args.peer_channels_last)
        for peer, size, family, cpu_batch in group.peers:
            if (peer, family) not in kept:
                built, peer_models[PEER_SPECS[peer].model_name] = candidates.build_peer_candidates(
                    peer, size, family, cpu_batch, args.seed, log, args.onnx, args.peer_channels_last)
                kept[(peer, family)] = built
            cands += kept[(peer, family)]
        for setting in settings:
            desc = f"{setting['label']} | {group.spec.name} ({i + 1}/{len(groups)})"
            for row in timer.measure_setting(cands, setting, args, log, progress, t0=t0, desc=desc):
                key = (row['setting'], row['model'], row['impl'], row['mode'])
                if key in merged:
                    timer.merge_rows(merged[key], row)
                else:
                    merged[key] = row
        del cands
        later = {g.spec.family for g in groups[i + 1:]}
        for key in [k for k in kept if k[1] not in later or not PEER_SPECS[k[0]].every_model]:
            del kept[key]  # the family is done (or a heavy peer: timed in its one group)
        gc.collect()
    labels = [s['label'] for s in settings]
    rows = sorted(merged.values(), key=lambda r: (labels.index(r['setting']), r['role'] == 'peer'))
    return rows, {**models, **peer_models}


def run(args, command: str, log) -> dict | None:
    """Time ``args.specs`` against ``args.peers`` under every setting of ``args`` (:func:`options.settings_of`);
    None when there is nothing to run (no available device, no model).  Restores torch's thread count."""
    settings = settings_of(args)
    if not settings:
        print('Nothing to run (no available device among --device ' + ' '.join(args.device) + ').', flush=True)
        return None
    if not args.specs:
        print('Nothing to run (no model selected).', flush=True)
        return None
    estimate = estimate_seconds(args, len(settings))
    progress = args.progress == 'on' or (args.progress == 'auto' and estimate >= 20)

    saved_threads = torch.get_num_threads()
    try:
        log(f'{len(args.specs)} model(s) x {len(settings)} setting(s): at least {estimate / 60:.1f} min of timing '
            '(more where one call outlasts a window; building, output checks and ONNX export come on top)')
        if args.interleave == 'model':
            rows, models = run_by_model(args, settings, log, progress)
        else:
            cands, models = candidates.build_candidates(
                args.specs, args.peers, args.img_size, args.seed, log, onnx=args.onnx, peer_own_size=args.peer_own_size,
                sizes=args.sizes, peer_channels_last=args.peer_channels_last)
            rows = []
            for setting in settings:
                rows += timer.measure_setting(cands, setting, args, log, progress)
        timer.warn_if_loaded(rows, log)
    finally:
        torch.set_num_threads(saved_threads)
    return dict(meta=run_meta(args, command), models=models, results=rows, ratios=compute_ratios(rows))


def run_meta(args, command: str) -> dict:
    """The settings of a run, its conventions and the machine, for ``benchmark.json``."""
    return dict(command=command, date=datetime.datetime.now().isoformat(timespec='seconds'),
                img_size=args.img_size, quick=args.quick, cpu_batch_size=args.batch_size,
                gpu_batch_size=args.gpu_batch_size, max_batch=args.max_batch, amp=args.amp, warmup_s=args.warmup,
                duration=args.duration, repeats=args.repeats, seed=args.seed, peers=args.peers, onnx=args.onnx,
                peer_channels_last=args.peer_channels_last,
                peer_windows=args.peer_windows, interleave=args.interleave,
                statistic='median over repeats of images/s of a timed window; ms_per_batch = 1000 * batch / that',
                flops_convention='MACs (multiply-accumulates) per image at batch 1, counted by '
                                 'torch.utils.flop_counter.FlopCounterMode (conv + matmul ops) and divided by 2; '
                                 'elementwise ops are not counted',
                weights='timm random init with randomised BatchNorm statistics and attention biases (seed), '
                        'copied into evit_mm: both implementations run identical weights; models without a timm '
                        'peer: random weights with randomised BatchNorm statistics',
                machine=machine_info(args.device))
