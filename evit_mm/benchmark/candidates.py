"""The candidates of a run: each evit_mm model in its forms (eager, deploy, ONNX), timm's same architecture with
the same weights, and the shared peers, built on the CPU with their outputs checked before any timing."""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Callable, Sequence

import torch
from torch import nn

from evit_mm.models.fuse import fuse_conv_bn

from .macs import count_macs, count_params, macs_and_output_shape
from .ort import export_to_ort, first
from .specs import PEER_SPECS, ModelSpec
from .timer import Candidate


def _channels_last(model: nn.Module) -> nn.Module:
    return copy.deepcopy(model).to(memory_format=torch.channels_last).eval()


@torch.no_grad()
def fold_batchnorm(model: nn.Module, example: torch.Tensor) -> nn.Module:
    """A copy of ``model`` with every BatchNorm folded into the conv that runs just before it (timm's
    ``BatchNormAct2d`` becomes its activation), found by running ``example`` with hooks: what Cream's speed test
    does to every model it times (it removes the BNs), for models that have no folding of their own
    (MobileNetV3).  ``model`` is left untouched; the caller checks the outputs."""
    model = copy.deepcopy(model).eval()
    order, hooks = [], []
    for module in model.modules():
        if isinstance(module, (nn.Conv2d, nn.BatchNorm2d)):
            hooks.append(module.register_forward_hook(lambda m, i, o: order.append(m)))
    model(example)
    for h in hooks:
        h.remove()
    where = {id(m): (parent, name) for parent in model.modules() for name, m in parent.named_children()}
    for prev, module in zip(order, order[1:]):
        if isinstance(module, nn.BatchNorm2d) and type(prev) is nn.Conv2d and prev.out_channels == module.num_features:
            parent, name = where[id(prev)]
            setattr(parent, name, fuse_conv_bn(prev, module))
            parent, name = where[id(module)]
            act, drop = getattr(module, 'act', nn.Identity()), getattr(module, 'drop', nn.Identity())
            setattr(parent, name, nn.Sequential(drop, act) if not isinstance(drop, nn.Identity) else act)
    return model


def _max_abs_diff(out: torch.Tensor, ref: torch.Tensor, what: str, log: Callable[[str], None]) -> float:
    """max |out - ref|, with a warning when it exceeds 1e-3 of the reference's scale (not the same function)."""
    diff = (out - ref).abs().max().item()
    if diff > 1e-3 * max(1.0, ref.abs().max().item()):
        log(f'WARNING: {what} by {diff:.3g}')
    return diff


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


def _size_of(spec: ModelSpec, img_size: int | tuple | None, sizes: dict | None) -> tuple[int, int]:
    if sizes and spec.name in sizes:
        return tuple(sizes[spec.name])
    if img_size is None:
        return tuple(spec.input_size)
    return (img_size, img_size) if isinstance(img_size, int) else tuple(img_size)


def build_model_candidates(spec: ModelSpec, size: tuple[int, int], peers: Sequence[str], seed: int,
                           log: Callable[[str], None], onnx: bool = False, peer_channels_last: bool = False
                           ) -> tuple[list[Candidate], dict]:
    """Build one evit_mm model's forms (and timm's same architecture, with the same weights) and check outputs.

    Returns the candidates and the model's info (params, MACs, ...) for the JSON."""
    log(f'building {spec.name} at {size[0]}x{size[1]} ...')
    x = torch.randn(2, 3, *size, generator=torch.Generator().manual_seed(seed))
    model = spec.build(size).eval()
    timm_model = None
    if spec.timm_build is not None and 'timm' in peers:
        timm_model = spec.timm_build(size).eval()
        randomize_(timm_model, seed)
        spec.weights_from_timm(model, timm_model)
    else:
        randomize_(model, seed)
    with torch.inference_mode():
        eager_out = first(model(x))
    deployed = spec.deploy(copy.deepcopy(model)).eval()
    items = [('evit_mm', 'eager', model), ('evit_mm', 'deploy', deployed)]
    if timm_model is not None:
        from timm.utils import reparameterize_model
        items += [('timm', 'eager', timm_model), ('timm', 'fused', reparameterize_model(timm_model).eval())]
        if peer_channels_last:
            items.append(('timm', 'channels_last', _channels_last(timm_model)))
    ref_out, reference = eager_out, 'evit_mm eager'
    if timm_model is not None:
        with torch.inference_mode():
            ref_out, reference = first(timm_model(x)), 'timm eager'
    outputs = {}
    with torch.inference_mode():
        for impl, mode, m in items:
            outputs[(impl, mode)] = first(m(x))
    if onnx:
        for impl, source in [('evit_mm', copy.deepcopy(deployed).to(memory_format=torch.contiguous_format)),
                             ('timm', timm_model)]:
            if source is None:
                continue
            try:
                ort_module, diff = export_to_ort(source, size, seed)
            except Exception as err:  # noqa: BLE001 - report and go on without this form
                log(f'WARNING: ONNX export of {spec.name} ({impl}) failed, skipped: {type(err).__name__}: {err}')
                continue
            if diff > 1e-4:
                log(f'WARNING: {spec.name} {impl} ONNX differs from PyTorch by {diff:.3g}')
            items.append((impl, 'onnx', ort_module))
            with torch.inference_mode():
                outputs[(impl, 'onnx')] = ort_module(x)
    macs = {'evit_mm': count_macs(model, size)}
    info = dict(label=spec.label, family=spec.family, params=count_params(model),
                params_deploy=count_params(deployed), macs=macs['evit_mm'], input_size=list(size),
                params_backbone=count_params(spec.backbone()) if spec.backbone else None,
                timm_name=spec.timm_name, paper=spec.paper, reference_output=reference,
                output_shape=list(eager_out.shape[1:]))
    if timm_model is not None:
        info['params_timm'] = count_params(timm_model)
        info['macs_timm'] = macs['timm'] = count_macs(timm_model, size)
    candidates = []
    for impl, mode, m in items:
        diff = _max_abs_diff(outputs[(impl, mode)], ref_out, f'{spec.name} {impl} {mode} differs from {reference}', log)
        candidates.append(Candidate(key=f'{spec.name}/{impl}/{mode}', model_name=spec.name, impl=impl, mode=mode,
                                    role='model', module=m,
                                    params=info['params'] if impl == 'evit_mm' else info['params_timm'],
                                    macs=macs[impl], spec=spec.name, max_abs_diff=diff, input_size=size,
                                    cpu_batch=spec.cpu_batch, family=spec.family))
    return candidates, info


def build_peer_candidates(peer: str, size: tuple[int, int], family: str, cpu_batch: int, seed: int,
                          log: Callable[[str], None], onnx: bool = False, peer_channels_last: bool = False
                          ) -> tuple[list[Candidate], dict]:
    """Build one shared peer (MobileNetV3, SegFormer, SAM ViT, SwinIR) in its forms, for the models of ``family``."""
    p = PEER_SPECS[peer]
    log(f'building peer {p.label} at {size[0]}x{size[1]} ...')
    m = p.build(size).eval()
    randomize_(m, seed)
    macs, output_shape = macs_and_output_shape(m, size)
    params = count_params(m)
    forms = [('eager', m)]
    diffs = {}  # each other form's max abs diff to the eager form
    if peer_channels_last and p.every_model:
        forms.append(('channels_last', _channels_last(m)))
        # the strongest eager form: BNs folded (as Cream's speed test does) and NHWC weights
        forms.append(('fused_channels_last', _channels_last(fold_batchnorm(m, torch.randn(1, 3, *size)))))
        x = torch.randn(2, 3, *size, generator=torch.Generator().manual_seed(seed))
        with torch.inference_mode():
            ref = first(m(x))
            for mode, module in forms[1:]:
                what = f'{p.label} {mode} differs from its eager form'
                diffs[mode] = _max_abs_diff(first(module(x)), ref, what, log)
    if onnx and p.onnx:
        try:
            ort_module, diffs['onnx'] = export_to_ort(m, size, seed)
            forms.append(('onnx', ort_module))
            if diffs['onnx'] > 1e-4:
                log(f'WARNING: {p.label} ONNX differs from PyTorch by {diffs["onnx"]:.3g}')
        except Exception as err:  # noqa: BLE001
            log(f'WARNING: ONNX export of {p.label} failed, skipped: {type(err).__name__}: {err}')
    candidates = [Candidate(key=f'{p.model_name}/{peer}/{mode}', model_name=p.model_name, impl=peer, mode=mode,
                            role='peer', module=module, params=params, macs=macs, spec='', input_size=size,
                            cpu_batch=cpu_batch, family=family, peer=peer, every_model=p.every_model,
                            max_abs_diff=diffs.get(mode))
                  for mode, module in forms]
    info = dict(label=p.label, family=family, params=params, macs=macs, peer=peer, input_size=list(size),
                description=p.description, output_shape=output_shape)
    return candidates, info


@dataclass
class Group:
    """What is built, timed and freed together: one evit_mm model (all its forms, timm's too) and the shared peers
    timed beside it.  ``peers``: (peer, input size, family, CPU batch) of each shared peer in this group."""
    spec: ModelSpec
    size: tuple[int, int]
    peers: list[tuple[str, tuple[int, int], str, int]]


def plan_groups(specs: Sequence[ModelSpec], peers: Sequence[str], img_size: int | tuple | None,
                sizes: dict | None = None, peer_own_size: bool = True, peer_windows: str = 'per-model'
                ) -> list[Group]:
    """One group per model, in order.  A light shared peer of the model's family (MobileNetV3; ``every_model``)
    joins every group of the family (``peer_windows='per-model'``) or only the family's last one (``'once'``);
    heavy peers (SAM ViT, SegFormer, SwinIR) join the family's last group.  A peer runs at its own size
    (``peer_own_size``) or at that of its family's first model, with that model's CPU batch."""
    groups = []
    for i, spec in enumerate(specs):
        family = spec.family
        first = next(s for s in specs if s.family == family)
        last_of_family = all(s.family != family for s in specs[i + 1:])
        group_peers = []
        for peer in peers:
            p = PEER_SPECS[peer]
            if p.per_model or family not in p.families:
                continue
            if (p.every_model and peer_windows == 'per-model') or last_of_family:
                size = p.own_size if (p.own_size and peer_own_size) else _size_of(first, img_size, sizes)
                group_peers.append((peer, size, family, first.cpu_batch))
        groups.append(Group(spec, _size_of(spec, img_size, sizes), group_peers))
    return groups


def build_candidates(specs: Sequence[ModelSpec], peers: Sequence[str], img_size: int | tuple | None, seed: int,
                     log: Callable[[str], None], onnx: bool = False, peer_own_size: bool = True,
                     sizes: dict[str, tuple[int, int]] | None = None, peer_channels_last: bool = False
                     ) -> tuple[list[Candidate], dict]:
    """Build every model to measure at once (``--interleave all``): CPU, eval mode, identical weights where
    possible, outputs checked.

    ``img_size``: an int or (H, W) for every model, or None for each spec's own size.  ``onnx``: add the ONNX
    forms (exported and checked here).  ``peer_own_size``: shared peers with a size of their own (SAM ViT: 1024)
    use it; otherwise they run at the size of their family's first model.  ``sizes``: per-model (H, W) overrides
    (``--quick``).  ``peer_channels_last``: also time timm's model and the light peers (MobileNetV3) with
    channels_last weights, the layout evit_mm's deploy form uses (one line for a user:
    ``model.to(memory_format=torch.channels_last)``), so that the layout's share of the gain is visible."""
    candidates: list[Candidate] = []
    model_info: dict[str, dict] = {}
    peers_built = set()
    groups = plan_groups(specs, peers, img_size, sizes, peer_own_size)
    for group in groups:
        cands, model_info[group.spec.name] = build_model_candidates(group.spec, group.size, peers, seed, log, onnx,
                                                                     peer_channels_last)
        candidates += cands
    for group in groups:
        for peer, size, family, cpu_batch in group.peers:
            if peer in peers_built:
                continue
            peers_built.add(peer)
            cands, info = build_peer_candidates(peer, size, family, cpu_batch, seed, log, onnx, peer_channels_last)
            candidates += cands
            model_info[PEER_SPECS[peer].model_name] = info
    return candidates, model_info
