#!/usr/bin/env python
"""Throughput benchmark of evit_mm's models against what a user would run instead, in one run.

For every requested model it measures, side by side and under the same conditions:

  evit_mm eager    evit_mm's model in eval mode, as trained
  evit_mm deploy   the same weights after ``.fuse()`` (every BatchNorm folded: the paper's protocol)
  timm eager       timm's implementation of the same architecture, with the same weights (peer "timm")
  timm fused       timm's own BN folding (``timm.utils.reparameterize_model``, which calls timm's ``fuse()``)
  MobileNetV3      timm ``mobilenetv3_large_100``, the paper's CPU/mobile baseline (peer "mobilenetv3")

and prints the throughput ratios evit_mm / timm and evit_mm / MobileNetV3-Large.  The evit_mm and timm models
get identical weights (timm's, with randomised BatchNorm statistics and attention biases), and their outputs
are compared before any timing (``max_abs_diff``), so the two implementations are known to compute the same
function.

Protocols (those of Cream's ``classification/speed_test.py``, see docs/efficientvit_m.md):

  CPU  ``--device cpu``: fp32, ``--batch-size`` images (16) of ``--img-size`` (224), ``--threads`` threads
       (1; ``all`` = torch's default, one per core; several values run one after the other).
  GPU  ``--device cuda``: AMP (``--amp fp16``, the paper's ``autocast()``; or bf16), the largest power-of-two
       batch that fits (doubling from 1 until out-of-memory or ``--max-batch``, then backing off to the last
       size that worked; ``--gpu-batch-size N`` fixes it instead), plus batch-1 latency.  Without a GPU it
       prints why and skips.

Timing: ``--warmup`` seconds of untimed iterations per model, then ``--repeats`` windows of ``--duration``
seconds each; throughput is (images run) / (time) of a window and the reported figure is the median over the
windows.  The windows are interleaved in rounds (round robin: one window of every model, then the next round),
the four forms of a model back to back and the shared peer (MobileNetV3) after every model
(``--peer-windows per-model``), so that a change in machine load hits the compared models alike.  Each ratio is
the median, over the windows, of the ratio to the other model's window nearest in time.  Compare ratios within
one run, not absolute numbers across runs; on a busy machine prefer more, shorter windows (e.g.
``--duration 2 --repeats 9``).
Everything runs under ``torch.inference_mode()``.  Params are counted on the classification model (and on the
detection backbone alone); FLOPs are counted with ``torch.utils.flop_counter.FlopCounterMode`` at batch 1 and
reported as **MACs** (one multiply-add = 1, i.e. FlopCounterMode's count / 2, the convention of the paper and
of timm): convolutions and matrix products only; BatchNorm, activations, softmax, pooling and residual
additions are not counted.

Outputs: a markdown table on stdout, and in ``--out-dir``: ``benchmark.json`` (every measurement and the
machine), ``benchmark.md`` (the tables) and ``speed_vs_params.png``.

Examples:
  python tools/benchmark.py                                    # all EfficientViT-M, the paper's CPU protocol
  python tools/benchmark.py --models efficientvit_m0 efficientvit_m4 --threads 1 all --duration 5
  python tools/benchmark.py --models efficientvit_m --device cuda --amp fp16

Models are declared in ``MODEL_SPECS`` (one ``ModelSpec`` each) and peers in ``PEER_SPECS``; a new family
needs a builder, a deploy function and, if timm has it, the timm name and a weight copier.
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import datetime
import json
import math
import os
import os.path as osp
import platform
import shlex
import statistics
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import torch
from torch import nn

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))


def _import_evit_mm():
    try:
        import evit_mm  # noqa: F401
    except ImportError:  # running from a checkout without `pip install -e .`
        sys.path.insert(0, ROOT)
    from evit_mm.models import efficientvit_msra, fuse
    return efficientvit_msra, fuse


# =============================================================================================== models
class EfficientViTMClassifier(nn.Module):
    """The ImageNet model of the paper: EfficientViT-M backbone, global average pool, BatchNorm1d, Linear.

    The attention windows are those of the ImageNet models at ``img_size`` (Cream's classification code and
    timm: ``min(7, feature size)`` per stage, computed from ``img_size // 16``, i.e. (7, 7, 4) at 224), so the
    model is exactly timm's ``efficientvit_m*`` (same parameters, same MACs, same outputs for the same weights).
    ``fuse()`` is deploy mode: the backbone's ``fuse()`` plus the head's BatchNorm folded into the Linear.
    """

    def __init__(self, arch: str, img_size: int = 224, num_classes: int = 1000):
        super().__init__()
        msra, _ = _import_evit_mm()
        self.backbone = msra.EfficientViTM(arch, out_indices=(2,), window_size=imagenet_windows(img_size))
        channels = self.backbone.embed_dims[-1]
        self.head_bn = nn.BatchNorm1d(channels)
        self.head = nn.Linear(channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.backbone(x)[-1].mean((2, 3))
        return self.head(self.head_bn(x))

    @torch.no_grad()
    def fuse(self) -> 'EfficientViTMClassifier':
        _, fuse = _import_evit_mm()
        self.backbone.fuse()
        if isinstance(self.head_bn, nn.BatchNorm1d):
            self.head = fuse.fuse_bn_linear(self.head_bn, self.head)
            self.head_bn = nn.Identity()
        return self


def imagenet_windows(img_size: int) -> tuple[int, int, int]:
    """Per-stage attention windows of the ImageNet EfficientViT-M models at ``img_size`` (timm's rule)."""
    res, windows = img_size // 16, []
    for stage in range(3):
        if stage:
            res = (res - 1) // 2 + 1
        windows.append(max(1, min(7, res)))
    return tuple(windows)


def _efficientvit_m_weights_from_timm(model: EfficientViTMClassifier, timm_model: nn.Module) -> None:
    """Copy a timm ``efficientvit_m*`` state dict into ``model`` (strictly; with evit_mm's converter)."""
    msra, _ = _import_evit_mm()
    sd = timm_model.state_dict()
    backbone = msra.convert_msra_state_dict(sd, fmt='timm', window_size=model.backbone.window_sizes)
    model.backbone.load_state_dict(backbone, strict=True)
    model.head_bn.load_state_dict({k[len('head.bn.'):]: v for k, v in sd.items() if k.startswith('head.bn.')})
    model.head.load_state_dict({k[len('head.linear.'):]: v for k, v in sd.items() if k.startswith('head.linear.')})


def _efficientvit_m_backbone(arch: str) -> Callable[[], nn.Module]:
    def build():
        msra, _ = _import_evit_mm()
        return msra.EfficientViTM(arch)  # as the detection configs build it: out_indices (0, 1, 2), window 7
    return build


@dataclass(frozen=True)
class ModelSpec:
    """One benchmarkable evit_mm model.

    build(img_size) -> the evit_mm model in eval mode (a whole model that a user would run: classifier, ...);
    deploy(model) -> its deploy form (may work in place; it gets a deep copy);
    timm_name: timm's implementation of the same architecture (None: no timm peer);
    timm_kwargs(img_size) -> extra ``timm.create_model`` arguments;
    weights_from_timm(model, timm_model): copy timm's weights into the evit_mm model (None: weights differ);
    backbone: builds the backbone alone, as the mm configs use it (for its parameter count);
    paper: published numbers, stored in the JSON for comparison.
    """
    name: str
    family: str
    label: str
    build: Callable[[int], nn.Module]
    deploy: Callable[[nn.Module], nn.Module]
    timm_name: str | None = None
    timm_kwargs: Callable[[int], dict] = lambda img_size: {}
    weights_from_timm: Callable[[nn.Module, nn.Module], None] | None = None
    backbone: Callable[[], nn.Module] | None = None
    paper: dict = field(default_factory=dict)


@dataclass(frozen=True)
class PeerSpec:
    """A comparison point. ``per_model``: the peer is derived from each ModelSpec (timm's same architecture);
    otherwise it is one fixed model (``timm_name``) measured once per setting."""
    name: str
    label: str
    per_model: bool
    timm_name: str | None = None
    description: str = ''


# Paper numbers (Cream's EfficientViT README; ../shared/reference/msra.md §4): ImageNet-1k top-1 (%), MACs
# (M) at 224, V100 throughput (images/s, batch 2048, AMP).  CPU: only M0 is published (228.4 images/s on an
# Intel Xeon E5-2690 v4, 1 thread, batch 16).
_PAPER_M = {
    'm0': dict(top1=63.2, mmacs=79, gpu_images_per_s=27644, cpu_images_per_s=228.4),
    'm1': dict(top1=68.4, mmacs=167, gpu_images_per_s=20093),
    'm2': dict(top1=70.8, mmacs=201, gpu_images_per_s=18218),
    'm3': dict(top1=73.4, mmacs=263, gpu_images_per_s=16644),
    'm4': dict(top1=74.3, mmacs=299, gpu_images_per_s=15914),
    'm5': dict(top1=77.1, mmacs=522, gpu_images_per_s=10621),
}


def _m_spec(arch: str) -> ModelSpec:
    return ModelSpec(
        name=f'efficientvit_{arch}', family='efficientvit_m', label=f'EfficientViT-{arch.upper()}',
        build=lambda img_size: EfficientViTMClassifier(arch, img_size).eval(),
        deploy=lambda model: model.fuse(),
        timm_name=f'efficientvit_{arch}', timm_kwargs=lambda img_size: dict(img_size=img_size),
        weights_from_timm=_efficientvit_m_weights_from_timm,
        backbone=_efficientvit_m_backbone(arch),
        paper=_PAPER_M[arch])


#: The models this tool knows, by CLI name.  Families are selected by their name too (``efficientvit_m``).
MODEL_SPECS: dict[str, ModelSpec] = {spec.name: spec for spec in (_m_spec(f'm{i}') for i in range(6))}

#: Comparison points (``--peers``).
PEER_SPECS: dict[str, PeerSpec] = {
    'timm': PeerSpec('timm', 'timm', per_model=True,
                     description="timm's implementation of the same architecture, eager and with timm's BN fusion"),
    'mobilenetv3': PeerSpec('mobilenetv3', 'MobileNetV3-Large', per_model=False, timm_name='mobilenetv3_large_100',
                            description='timm mobilenetv3_large_100 (eager)'),
}


def families() -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for spec in MODEL_SPECS.values():
        out.setdefault(spec.family, []).append(spec.name)
    return out


# =============================================================================================== helpers
def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def count_macs(model: nn.Module, img_size: int, device='cpu') -> int:
    """Multiply-accumulates of one image (FlopCounterMode counts 2 FLOPs per MAC: conv and matmul ops only)."""
    from torch.utils.flop_counter import FlopCounterMode
    counter = FlopCounterMode(display=False)
    with counter, torch.inference_mode():
        model(torch.zeros(1, 3, img_size, img_size, device=device))
    return counter.get_total_flops() // 2


@torch.no_grad()
def randomize_(model: nn.Module, seed: int = 0) -> nn.Module:
    """Give every BatchNorm non-trivial statistics and affine terms and every attention-bias table non-zero
    values (deterministically), so that no residual branch is the identity and output checks mean something."""
    gen = torch.Generator().manual_seed(seed)

    def uniform(t, lo, hi):
        t.copy_(torch.rand(t.shape, generator=gen) * (hi - lo) + lo)

    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            if module.running_mean is not None:
                module.running_mean.copy_(torch.randn(module.running_mean.shape, generator=gen) * 0.1)
                uniform(module.running_var, 0.5, 1.5)
            if module.weight is not None:
                uniform(module.weight, 0.5, 1.0)
                module.bias.copy_(torch.randn(module.bias.shape, generator=gen) * 0.05)
    for name, param in model.named_parameters():
        if 'attention_biases' in name:
            param.copy_(torch.randn(param.shape, generator=gen) * 0.5)
    return model


def cpu_model_name() -> str:
    try:
        with open('/proc/cpuinfo') as f:
            for line in f:
                if line.startswith('model name'):
                    return line.split(':', 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or 'unknown'


def machine_info(devices: Sequence[str]) -> dict:
    import timm
    msra, _ = _import_evit_mm()
    import evit_mm
    info = dict(machine=platform.machine(), cpu=cpu_model_name(), cpu_count=os.cpu_count(),
                torch_default_threads=torch.get_num_threads(), platform=platform.platform(),
                python=platform.python_version(), torch=torch.__version__, timm=timm.__version__,
                evit_mm=evit_mm.__version__)
    if 'cuda' in devices and torch.cuda.is_available():
        info['gpu'] = torch.cuda.get_device_name(0)
        info['cuda'] = torch.version.cuda
    return info


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


# =============================================================================================== candidates
@dataclass
class Candidate:
    """One measured model: (model name, implementation, mode)."""
    key: str              # unique, e.g. 'efficientvit_m0/evit_mm/deploy'
    model_name: str       # the ModelSpec name (or the peer's model name)
    impl: str             # 'evit_mm' | 'timm'
    mode: str             # 'eager' | 'deploy' | 'fused'
    role: str             # 'model' | 'peer'
    module: nn.Module
    params: int
    macs: int
    spec: str             # the ModelSpec this candidate belongs to ('' for a shared peer)
    max_abs_diff: float | None = None


def build_candidates(specs: Sequence[ModelSpec], peers: Sequence[str], img_size: int, seed: int,
                     log: Callable[[str], None]) -> tuple[list[Candidate], dict]:
    """Build every model to measure (CPU, eval mode, identical weights where possible) and check outputs."""
    import timm
    from timm.utils import reparameterize_model

    candidates: list[Candidate] = []
    model_info: dict[str, dict] = {}
    x = torch.randn(2, 3, img_size, img_size, generator=torch.Generator().manual_seed(seed))
    for spec in specs:
        log(f'building {spec.name} ...')
        model = spec.build(img_size).eval()
        reference = None
        if spec.timm_name:
            timm_model = timm.create_model(spec.timm_name, pretrained=False, **spec.timm_kwargs(img_size)).eval()
            randomize_(timm_model, seed)
            if spec.weights_from_timm is not None:
                spec.weights_from_timm(model, timm_model)
        else:
            timm_model = None
            randomize_(model, seed)
        deployed = spec.deploy(copy.deepcopy(model)).eval()
        items = [('evit_mm', 'eager', model), ('evit_mm', 'deploy', deployed)]
        if 'timm' in peers and timm_model is not None:
            items += [('timm', 'eager', timm_model), ('timm', 'fused', reparameterize_model(timm_model).eval())]
        with torch.inference_mode():
            outputs = {(impl, mode): m(x) for impl, mode, m in items}
            if timm_model is not None and spec.weights_from_timm is not None:
                ref_out = outputs.get(('timm', 'eager'))
                if ref_out is None:
                    ref_out = timm_model(x)
                reference = 'timm eager'
            else:
                ref_out, reference = outputs[('evit_mm', 'eager')], 'evit_mm eager'
        # MACs of the eager models (BN folding does not change the conv/matmul MACs); FlopCounterMode is slow
        macs = {'evit_mm': count_macs(model, img_size)}
        info = dict(label=spec.label, family=spec.family, params=count_params(model),
                    params_deploy=count_params(deployed), macs=macs['evit_mm'],
                    params_backbone=count_params(spec.backbone()) if spec.backbone else None,
                    timm_name=spec.timm_name, paper=spec.paper, reference_output=reference)
        if timm_model is not None:
            info['params_timm'] = count_params(timm_model)
            info['macs_timm'] = macs['timm'] = count_macs(timm_model, img_size)
        model_info[spec.name] = info
        for impl, mode, m in items:
            diff = (outputs[(impl, mode)] - ref_out).abs().max().item()
            candidates.append(Candidate(key=f'{spec.name}/{impl}/{mode}', model_name=spec.name, impl=impl, mode=mode,
                                        role='model', module=m, params=count_params(m),
                                        macs=macs[impl], spec=spec.name, max_abs_diff=diff))
            if diff > 1e-3:
                log(f'WARNING: {spec.name} {impl} {mode} differs from {reference} by {diff:.3g}')
    for peer in peers:
        p = PEER_SPECS[peer]
        if p.per_model:
            continue
        log(f'building {p.timm_name} ...')
        m = timm.create_model(p.timm_name, pretrained=False).eval()
        randomize_(m, seed)
        macs = count_macs(m, img_size)
        candidates.append(Candidate(key=f'{p.timm_name}/timm/eager', model_name=p.timm_name, impl='timm',
                                    mode='eager', role='peer', module=m, params=count_params(m),
                                    macs=macs, spec=''))
        model_info[p.timm_name] = dict(label=p.label, family='peer', params=count_params(m), macs=macs,
                                       timm_name=p.timm_name)
    return candidates, model_info


# =============================================================================================== timing
class Timer:
    """Runs a candidate for fixed durations and records (images, seconds) per window."""

    def __init__(self, module: nn.Module, batch: int, img_size: int, device: str, amp_dtype=None):
        self.module, self.batch, self.device = module, batch, device
        self.x = torch.randn(batch, 3, img_size, img_size, device=device)
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


def measure_setting(candidates: list[Candidate], setting: dict, args, log, progress: bool) -> list[dict]:
    """Measure every candidate under one setting, in rounds of one window per candidate (:func:`window_order`).

    ``setting``: ``device``, ``protocol`` ('cpu': fp32 at a fixed batch; 'gpu': autocast ``args.amp``, batch
    ``'max'`` (power-of-two search) or fixed, plus batch-1 latency), ``batch_size``, ``threads`` (cpu), ``label``.
    The protocol is independent of the device, so the GPU protocol's logic also runs (and is tested) on a CPU.
    """
    device, protocol = setting['device'], setting['protocol']
    amp_dtype = AMP_DTYPES.get(args.amp) if protocol == 'gpu' else None
    cuda = device == 'cuda'
    empty_cache = torch.cuda.empty_cache if cuda else (lambda: None)
    rows, timers, latency_timers = [], {}, {}
    if setting.get('threads'):
        torch.set_num_threads(setting['threads'])
    if cuda:
        torch.backends.cudnn.benchmark = True
    load_before = _loadavg()
    for cand in candidates:
        cand.module.to(device)
    try:
        for cand in candidates:
            batch = setting['batch_size']
            if batch == 'max':
                def try_batch(b, cand=cand):
                    x = torch.randn(b, 3, args.img_size, args.img_size, device=device)
                    with torch.inference_mode(), _autocast(device, amp_dtype):
                        cand.module(x)
                    if cuda:
                        torch.cuda.synchronize()
                batch = largest_pow2_batch(try_batch, args.max_batch, on_oom=empty_cache)
                empty_cache()
                log(f'{cand.key}: largest power-of-two batch = {batch}' +
                    (f' (the --max-batch cap)' if batch * 2 > args.max_batch else ''))
            timers[cand.key] = Timer(cand.module, batch, args.img_size, device, amp_dtype)
            if protocol == 'gpu':
                latency_timers[cand.key] = Timer(cand.module, 1, args.img_size, device, amp_dtype)

        phases = [('throughput', timers)] + ([('latency', latency_timers)] if latency_timers else [])
        order = window_order(candidates, args.peer_windows)
        total = sum(len(t) * (1 if args.warmup > 0 else 0) + len(order) * args.repeats for _, t in phases)
        bar = _progress(total, progress, setting['label'])
        results: dict[tuple[str, str], dict] = {}
        t0 = time.perf_counter()
        with torch.inference_mode():
            for phase, phase_timers in phases:
                if args.warmup > 0:
                    for key, timer in phase_timers.items():
                        bar.set_description_str(f'{phase} warm-up {key}')
                        timer.run_for(args.warmup)
                        bar.update()
                windows = {key: [] for key in phase_timers}
                for rep in range(args.repeats):
                    for key in order:
                        timer = phase_timers[key]
                        bar.set_description_str(f'{phase} {rep + 1}/{args.repeats} {key}')
                        if args.warmup > 0:
                            timer.step()  # re-warm the caches after the other models ran
                        start = time.perf_counter() - t0
                        n, elapsed = timer.run_for(args.duration)
                        windows[key].append(dict(iterations=n, seconds=round(elapsed, 6),
                                                 images_per_s=timer.batch * n / elapsed,
                                                 t=round(start + elapsed / 2, 3)))
                        bar.set_postfix_str(f'{timer.batch * n / elapsed:.1f} img/s')
                        bar.update()
                for key, wins in windows.items():
                    results[(phase, key)] = dict(batch_size=phase_timers[key].batch, windows=wins)
        bar.close()
    finally:
        for cand in candidates:
            cand.module.to('cpu')
        timers.clear()
        latency_timers.clear()
        empty_cache()
    load_after = _loadavg()
    if load_before is not None and load_before > (os.cpu_count() or 1):
        log(f'WARNING: the 1-minute load average was {load_before:.2f} on {os.cpu_count()} CPUs when '
            f'"{setting["label"]}" started: other processes compete for the cores; compare ratios, and distrust '
            'multi-thread figures')

    for cand in candidates:
        res = results[('throughput', cand.key)]
        ips = statistics.median(w['images_per_s'] for w in res['windows'])
        row = dict(setting=setting['label'], device=device, protocol=protocol, threads=setting.get('threads'),
                   precision=args.amp if amp_dtype is not None else 'fp32', model=cand.model_name, impl=cand.impl,
                   mode=cand.mode, role=cand.role, spec=cand.spec, params=cand.params, macs=cand.macs,
                   batch_size=res['batch_size'], images_per_s=ips, ms_per_batch=1000.0 * res['batch_size'] / ips,
                   images_per_s_best=max(w['images_per_s'] for w in res['windows']),
                   windows=res['windows'], max_abs_diff=cand.max_abs_diff, loadavg_before=load_before,
                   loadavg_after=load_after)
        if ('latency', cand.key) in results:
            lat = results[('latency', cand.key)]
            row['latency_ms'] = statistics.median(1000.0 / w['images_per_s'] for w in lat['windows'])
            row['latency_windows'] = lat['windows']
        rows.append(row)
    return rows


def window_order(candidates: Sequence[Candidate], peer_windows: str = 'per-model') -> list[str]:
    """The keys timed in one round: each model's candidates back to back; a shared peer (MobileNetV3) after
    every model's group (``'per-model'``: each ratio against it then pairs windows that ran side by side) or
    once at the end of the round (``'once'``)."""
    groups: dict[str, list[str]] = {}
    for cand in candidates:
        if cand.role == 'model':
            groups.setdefault(cand.spec, []).append(cand.key)
    peers = [cand.key for cand in candidates if cand.role == 'peer']
    if peer_windows == 'once' or not groups:
        return [key for keys in groups.values() for key in keys] + peers
    return [key for keys in groups.values() for key in keys + peers]


def _loadavg() -> float | None:
    try:
        return os.getloadavg()[0]
    except (OSError, AttributeError):
        return None


AMP_DTYPES = {'fp16': torch.float16, 'bf16': torch.bfloat16}


def _autocast(device: str, dtype):
    return torch.autocast(device, dtype=dtype) if dtype is not None else contextlib.nullcontext()


# =============================================================================================== reporting
COLUMNS = [('evit_mm', 'eager'), ('evit_mm', 'deploy'), ('timm', 'eager'), ('timm', 'fused')]
RATIOS = [  # (name, numerator (impl, mode), denominator (impl, mode) or 'mobilenetv3')
    ('eager/timm', ('evit_mm', 'eager'), ('timm', 'eager')),
    ('deploy/timm', ('evit_mm', 'deploy'), ('timm', 'eager')),
    ('deploy/timm_fused', ('evit_mm', 'deploy'), ('timm', 'fused')),
    ('eager/mobilenetv3', ('evit_mm', 'eager'), 'mobilenetv3'),
    ('deploy/mobilenetv3', ('evit_mm', 'deploy'), 'mobilenetv3'),
]


def paired_ratio(a: dict, b: dict) -> float:
    """Median, over a's timed windows, of a's images/s over that of b's window nearest in time (the two ran side
    by side, so a change of machine load between rounds cancels out)."""
    wb = b['windows']
    ratios = []
    for x in a['windows']:
        y = min(wb, key=lambda w: abs(w['t'] - x['t']))
        ratios.append(x['images_per_s'] / y['images_per_s'])
    return statistics.median(ratios)


def compute_ratios(rows: list[dict]) -> list[dict]:
    """Throughput ratios per (setting, model): evit_mm / timm and evit_mm / MobileNetV3-Large.

    Each ratio pairs windows that ran side by side (:func:`paired_ratio`); the ratio of the median throughputs
    is kept too, under ``of_medians``.
    """
    out = []
    settings = list(dict.fromkeys(r['setting'] for r in rows))
    mnv3 = PEER_SPECS['mobilenetv3'].timm_name
    for setting in settings:
        srows = [r for r in rows if r['setting'] == setting]
        peer = next((r for r in srows if r['model'] == mnv3 and r['role'] == 'peer'), None)
        for name in dict.fromkeys(r['spec'] for r in srows if r['role'] == 'model'):
            by = {(r['impl'], r['mode']): r for r in srows if r['spec'] == name and r['role'] == 'model'}
            entry = dict(setting=setting, model=name)
            of_medians = {}
            for ratio, num, den in RATIOS:
                a = by.get(num)
                b = peer if den == 'mobilenetv3' else by.get(den)
                if a and b:
                    entry[ratio] = paired_ratio(a, b)
                    of_medians[ratio] = a['images_per_s'] / b['images_per_s']
            entry['of_medians'] = of_medians
            out.append(entry)
    return out


def _fmt_speed(row: dict | None, protocol: str) -> str:
    if row is None:
        return '–'
    if protocol == 'gpu':
        return f"{row['images_per_s']:.0f} @{row['batch_size']} / {row.get('latency_ms', float('nan')):.2f} ms"
    return f"{row['images_per_s']:.1f} ({row['ms_per_batch']:.1f})"


def markdown_tables(result: dict) -> str:
    meta, rows, ratios = result['meta'], result['results'], result['ratios']
    lines = []
    lines.append(f"Models (params of the classification model at {meta['img_size']}x{meta['img_size']} and of the "
                 "detection backbone; MACs per image, conv + matmul):")
    lines.append('')
    lines.append('| model | params (M) | params deploy (M) | backbone params (M) | MMACs evit_mm | MMACs timm |')
    lines.append('|---|---|---|---|---|---|')
    for name, info in result['models'].items():
        def m(v, scale=1e6, digits=3):
            return '–' if v is None else f'{v / scale:.{digits}f}'
        lines.append(f"| {name} | {m(info['params'])} | {m(info.get('params_deploy'))} | "
                     f"{m(info.get('params_backbone'))} | {m(info['macs'], 1e6, 1)} | "
                     f"{m(info.get('macs_timm'), 1e6, 1)} |")
    for setting in dict.fromkeys(r['setting'] for r in rows):
        srows = [r for r in rows if r['setting'] == setting]
        protocol = srows[0]['protocol']
        lines.append('')
        if protocol == 'gpu':
            unit = 'images/s @ largest power-of-two batch / batch-1 latency'
        else:
            unit = 'images/s (ms per batch)'
        load = [srows[0].get('loadavg_before'), srows[0].get('loadavg_after')]
        load_text = (f"; 1-min load average {load[0]:.1f} before, {load[1]:.1f} after"
                     if None not in load else '')
        lines.append(f"**{setting}**: {unit}, median of {meta['repeats']} x {meta['duration']:g} s{load_text}. "
                     "Ratios: median over the windows of the ratio to the nearest window of the other model.")
        lines.append('')
        ratio_names = [name for name, *_ in RATIOS]
        header = ['model'] + [f'{impl} {mode}' for impl, mode in COLUMNS] + ratio_names + ['max abs diff']
        lines.append('| ' + ' | '.join(header) + ' |')
        lines.append('|' + '---|' * len(header))
        for entry in (e for e in ratios if e['setting'] == setting):
            by = {(r['impl'], r['mode']): r for r in srows if r['spec'] == entry['model'] and r['role'] == 'model'}
            diffs = [r['max_abs_diff'] for r in by.values() if r.get('max_abs_diff') is not None]
            cells = [entry['model']] + [_fmt_speed(by.get(c), protocol) for c in COLUMNS]
            cells += [f"{entry[n]:.2f}x" if n in entry else '–' for n in ratio_names]
            cells.append(f'{max(diffs):.1e}' if diffs else '–')
            lines.append('| ' + ' | '.join(cells) + ' |')
        for r in (r for r in srows if r['role'] == 'peer'):
            cells = [f"{r['model']} (peer)"] + [_fmt_speed(r, protocol) if (r['impl'], r['mode']) == c else '–'
                                                for c in COLUMNS]
            cells += ['–'] * (len(ratio_names) + 1)
            lines.append('| ' + ' | '.join(cells) + ' |')
    lines.append('')
    lines.append(f"Command: `{meta['command']}`  ")
    mi = meta['machine']
    lines.append(f"Machine: {mi['machine']}, {mi['cpu']}, {mi['cpu_count']} CPUs"
                 + (f", {mi['gpu']}" if 'gpu' in mi else '')
                 + f"; torch {mi['torch']}, timm {mi['timm']}, evit_mm {mi['evit_mm']}; {meta['date']}")
    return '\n'.join(lines)


def plot_speed_vs_params(result: dict, path: str) -> None:
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    rows = result['results']
    settings = list(dict.fromkeys(r['setting'] for r in rows))
    fig, axes = plt.subplots(1, len(settings), figsize=(6.5 * len(settings), 4.8), squeeze=False)
    styles = {('evit_mm', 'deploy'): ('tab:red', 'o', '-'), ('evit_mm', 'eager'): ('tab:orange', 'o', '--'),
              ('timm', 'eager'): ('tab:blue', 's', '-'), ('timm', 'fused'): ('tab:cyan', 's', '--')}
    for ax, setting in zip(axes[0], settings):
        srows = [r for r in rows if r['setting'] == setting]
        for (impl, mode), (color, marker, ls) in styles.items():
            pts = sorted((result['models'][r['spec']]['params'] / 1e6, r['images_per_s'], r['spec']) for r in srows
                         if r['role'] == 'model' and (r['impl'], r['mode']) == (impl, mode))
            if not pts:
                continue
            ax.plot([p[0] for p in pts], [p[1] for p in pts], color=color, marker=marker, ls=ls,
                    label=f'{impl} {mode}')
            if (impl, mode) == ('evit_mm', 'deploy'):
                for px, py, name in pts:
                    label = MODEL_SPECS[name].label.split('-')[-1] if name in MODEL_SPECS else name
                    ax.annotate(label, (px, py), textcoords='offset points', xytext=(4, 4), fontsize=8)
        for r in (r for r in srows if r['role'] == 'peer'):
            ax.plot([r['params'] / 1e6], [r['images_per_s']], color='black', marker='*', ms=12, ls='none',
                    label=result['models'].get(r['model'], {}).get('label', r['model']))
        ax.set_xlabel('parameters (M)')
        ax.set_ylabel('images / s')
        ax.set_yscale('log')
        ax.yaxis.set_major_locator(matplotlib.ticker.LogLocator(subs=(1.0, 2.0, 5.0)))
        ax.yaxis.set_major_formatter(matplotlib.ticker.FormatStrFormatter('%g'))
        ax.yaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.set_title(setting, fontsize=9)
        ax.grid(True, which='both', alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(f"evit_mm vs timm vs MobileNetV3-Large ({result['meta']['img_size']}x{result['meta']['img_size']})",
                 fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# =============================================================================================== CLI
def _threads(text: str):
    if text == 'all':
        return 'all'
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive int or 'all', got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be positive (or 'all'), got {value}")
    return value


def _positive(kind):
    def parse(text):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f'expected a positive {kind.__name__}, got {text!r}') from None
        if not (value > 0 and math.isfinite(value)):
            raise argparse.ArgumentTypeError(f'must be positive, got {text}')
        return value
    parse.__name__ = f'positive {kind.__name__}'
    return parse


def _non_negative(text):
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f'expected a number of seconds, got {text!r}') from None
    if not (value >= 0 and math.isfinite(value)):
        raise argparse.ArgumentTypeError(f'must be >= 0, got {text}')
    return value


def _gpu_batch(text):
    return 'max' if text == 'max' else _positive(int)(text)


def build_parser() -> argparse.ArgumentParser:
    doc_head, doc_rest = __doc__.split('\n\n', 1)
    parser = argparse.ArgumentParser(description=doc_head, epilog=doc_rest,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    known = ', '.join(list(MODEL_SPECS) + list(families()))
    parser.add_argument('--models', nargs='+', default=['efficientvit_m'], metavar='NAME',
                        help=f'models or families to benchmark (default: efficientvit_m = M0..M5); known: {known}')
    parser.add_argument('--peers', nargs='*', default=['timm', 'mobilenetv3'], metavar='PEER',
                        help=f"comparison points: {', '.join(PEER_SPECS)} (default: both; none: --peers)")
    parser.add_argument('--device', nargs='+', default=['cpu'], choices=['cpu', 'cuda'],
                        help='cpu: the CPU protocol; cuda: the GPU protocol (skipped with a message without a GPU)')
    parser.add_argument('--threads', nargs='+', type=_threads, default=[1], metavar='N',
                        help="CPU threads, positive ints or 'all' (torch's default); several run in turn (default 1)")
    parser.add_argument('--batch-size', type=_positive(int), default=16, help='CPU batch size (default 16)')
    parser.add_argument('--gpu-batch-size', type=_gpu_batch, default='max',
                        help="GPU batch: 'max' (largest power of two that fits, default) or a positive int")
    parser.add_argument('--max-batch', type=_positive(int), default=4096,
                        help='upper bound of the GPU batch search (default 4096; the paper uses 2048)')
    parser.add_argument('--amp', choices=['fp16', 'bf16', 'off'], default='fp16',
                        help='GPU autocast dtype (default fp16, as the paper); the CPU protocol is always fp32')
    parser.add_argument('--img-size', type=_positive(int), default=224, help='input resolution (default 224)')
    parser.add_argument('--warmup', type=_non_negative, default=2.0,
                        help='seconds of untimed iterations per model before timing (default 2; 0: none)')
    parser.add_argument('--duration', type=_positive(float), default=10.0,
                        help='seconds per timed window (default 10)')
    parser.add_argument('--repeats', type=_positive(int), default=3,
                        help='timed windows per model; the median is reported (default 3)')
    parser.add_argument('--peer-windows', choices=['per-model', 'once'], default='per-model',
                        help='time the shared peer (MobileNetV3) after every model (default), so that each ratio '
                             'against it pairs adjacent windows, or once per round')
    parser.add_argument('--seed', type=int, default=0, help='seed of the inputs and weights')
    parser.add_argument('--out-dir', default=osp.join('work_dirs', 'benchmark'),
                        help='where benchmark.json, benchmark.md and speed_vs_params.png go '
                             '(default work_dirs/benchmark)')
    parser.add_argument('--progress', choices=['auto', 'on', 'off'], default='auto',
                        help='tqdm progress bar on stderr (auto: for runs estimated at 20 s or more)')
    return parser


def resolve_models(parser: argparse.ArgumentParser, names: Sequence[str]) -> list[ModelSpec]:
    fams = families()
    selected, unknown = [], []
    for name in names:
        key = name.lower().replace('-', '_')
        if key in MODEL_SPECS:
            selected.append(key)
        elif key in fams:
            selected.extend(fams[key])
        else:
            unknown.append(name)
    if unknown:
        parser.error(f"unknown model(s): {', '.join(unknown)}. Known models: {', '.join(MODEL_SPECS)}; "
                     f"families: {', '.join(f'{k} ({len(v)} models)' for k, v in fams.items())}")
    return [MODEL_SPECS[name] for name in dict.fromkeys(selected)]


def parse_args(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    args.specs = resolve_models(parser, args.models)
    peers = [p.lower() for p in args.peers if p.lower() != 'none']
    bad = [p for p in peers if p not in PEER_SPECS]
    if bad:
        parser.error(f"unknown peer(s): {', '.join(bad)}. Known peers: {', '.join(PEER_SPECS)} (or none)")
    args.peers = list(dict.fromkeys(peers))
    if args.img_size < 16:
        parser.error(f'--img-size must be at least 16 (the models have stride 16), got {args.img_size}')
    args.device = list(dict.fromkeys(args.device))
    args.threads = list(dict.fromkeys(args.threads))
    return args


def _command(argv) -> str:
    if argv is None:
        argv = sys.argv[1:]
    return 'python tools/benchmark.py ' + shlex.join(argv) if argv else 'python tools/benchmark.py'


def main(argv=None) -> int:
    args = parse_args(argv)
    log = lambda msg: print(msg, file=sys.stderr, flush=True)  # noqa: E731

    settings = []
    for device in args.device:
        if device == 'cuda':
            if not torch.cuda.is_available():
                built = torch.version.cuda or 'no CUDA (CPU-only build)'
                print(f'--device cuda: no CUDA GPU is available (torch.cuda.is_available() is False; torch '
                      f'{torch.__version__}, built with {built}). Skipping the GPU protocol.', flush=True)
                continue
            label = (f"CUDA {torch.cuda.get_device_name(0)}, AMP {args.amp}, "
                     f"batch {args.gpu_batch_size if args.gpu_batch_size != 'max' else 'max pow2'}, "
                     f"{args.img_size}x{args.img_size}")
            settings.append(dict(device='cuda', protocol='gpu', batch_size=args.gpu_batch_size, label=label))
        else:
            for threads in args.threads:
                n = torch.get_num_threads() if threads == 'all' else threads
                name = f'all threads ({n})' if threads == 'all' else f"{n} thread{'s' if n > 1 else ''}"
                settings.append(dict(device='cpu', protocol='cpu', threads=n, batch_size=args.batch_size,
                                     label=f'CPU, {name}, batch {args.batch_size}, {args.img_size}x{args.img_size}, '
                                           'fp32'))
    if not settings:
        print('Nothing to run (no available device among --device ' + ' '.join(args.device) + ').', flush=True)
        return 0

    n_model = sum(2 + 2 * ('timm' in args.peers and s.timm_name is not None) for s in args.specs)
    n_shared = sum(1 for p in args.peers if not PEER_SPECS[p].per_model)
    n_windows = n_model + n_shared * (len(args.specs) if args.peer_windows == 'per-model' else 1)
    estimate = len(settings) * ((n_model + n_shared) * args.warmup + n_windows * args.repeats * args.duration)
    progress = args.progress == 'on' or (args.progress == 'auto' and estimate >= 20)

    saved_threads = torch.get_num_threads()
    try:
        candidates, models = build_candidates(args.specs, args.peers, args.img_size, args.seed, log)
        log(f'{len(candidates)} models x {len(settings)} setting(s), about {estimate / 60:.1f} min of timing')
        rows = []
        for setting in settings:
            rows += measure_setting(candidates, setting, args, log, progress)
    finally:
        torch.set_num_threads(saved_threads)

    meta = dict(command=_command(argv), date=datetime.datetime.now().isoformat(timespec='seconds'),
                img_size=args.img_size, cpu_batch_size=args.batch_size, gpu_batch_size=args.gpu_batch_size,
                max_batch=args.max_batch, amp=args.amp, warmup_s=args.warmup, duration=args.duration,
                repeats=args.repeats, seed=args.seed, peers=args.peers, peer_windows=args.peer_windows,
                statistic='median over repeats of images/s of a timed window; ms_per_batch = 1000 * batch / that',
                flops_convention='MACs (multiply-accumulates) per image at batch 1, counted by '
                                 'torch.utils.flop_counter.FlopCounterMode (conv + matmul ops) and divided by 2; '
                                 'elementwise ops are not counted',
                weights='timm random init with randomised BatchNorm statistics and attention biases (seed), '
                        'copied into evit_mm: both implementations run identical weights',
                machine=machine_info(args.device))
    result = dict(meta=meta, models=models, results=rows, ratios=compute_ratios(rows))

    os.makedirs(args.out_dir, exist_ok=True)
    json_path = osp.join(args.out_dir, 'benchmark.json')
    md_path = osp.join(args.out_dir, 'benchmark.md')
    png_path = osp.join(args.out_dir, 'speed_vs_params.png')
    table = markdown_tables(result)
    with open(json_path, 'w') as f:
        json.dump(result, f, indent=1)
    with open(md_path, 'w') as f:
        f.write(table + '\n')
    plot_speed_vs_params(result, png_path)
    print(table)
    print()
    print(f'wrote {osp.abspath(json_path)}')
    print(f'wrote {osp.abspath(md_path)}')
    print(f'wrote {osp.abspath(png_path)}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
