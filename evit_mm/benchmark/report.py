"""The results of a run: paired ratios, markdown tables, ``benchmark.json``, ``benchmark.md``, the speed plot."""
from __future__ import annotations

import json
import os
import os.path as osp
import statistics
from typing import Sequence

from .specs import FAMILIES, PEER_SPECS


#: (name, numerator (impl, mode), denominator (impl, mode)); '{peer}' stands for each shared peer of the family.
RATIOS = [
    ('eager/timm', ('evit_mm', 'eager'), ('timm', 'eager')),
    ('deploy/timm', ('evit_mm', 'deploy'), ('timm', 'eager')),
    ('deploy/timm_fused', ('evit_mm', 'deploy'), ('timm', 'fused')),
    ('onnx/timm_onnx', ('evit_mm', 'onnx'), ('timm', 'onnx')),
    ('eager/{peer}', ('evit_mm', 'eager'), ('{peer}', 'eager')),
    ('deploy/{peer}', ('evit_mm', 'deploy'), ('{peer}', 'eager')),
    ('onnx/{peer}_onnx', ('evit_mm', 'onnx'), ('{peer}', 'onnx')),
    ('deploy/timm_channels_last', ('evit_mm', 'deploy'), ('timm', 'channels_last')),
    ('deploy/{peer}_channels_last', ('evit_mm', 'deploy'), ('{peer}', 'channels_last')),
    ('deploy/{peer}_fused_channels_last', ('evit_mm', 'deploy'), ('{peer}', 'fused_channels_last')),
    ('onnx/deploy', ('evit_mm', 'onnx'), ('evit_mm', 'deploy')),
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


def ratio_names(family_peers: Sequence[str]) -> list[str]:
    names = []
    for name, _, den in RATIOS:
        if '{peer}' in name:
            names += [name.format(peer=p) for p in family_peers]
        else:
            names.append(name)
    return names


def compute_ratios(rows: list[dict]) -> list[dict]:
    """Throughput ratios per (setting, model): evit_mm against timm's same architecture and against the shared
    peers of its family (``deploy/mobilenetv3``: evit_mm deploy over MobileNetV3-Large eager, ...).

    Each ratio pairs windows that ran side by side (:func:`paired_ratio`); the ratio of the median throughputs
    is kept too, under ``of_medians``.
    """
    out = []
    for setting in dict.fromkeys(r['setting'] for r in rows):
        srows = [r for r in rows if r['setting'] == setting]
        for name in dict.fromkeys(r['spec'] for r in srows if r['role'] == 'model'):
            mine = [r for r in srows if r['spec'] == name and r['role'] == 'model']
            family = mine[0].get('family', '')
            by = {(r['impl'], r['mode']): r for r in mine}
            peers = {}
            for r in srows:
                if r['role'] == 'peer' and r.get('family', '') == family:
                    peers[(r.get('peer') or _peer_of(r['model']), r['mode'])] = r
            entry = dict(setting=setting, model=name)
            of_medians = {}
            for ratio, num, den in RATIOS:
                pairs = []
                if '{peer}' in ratio:
                    for peer in dict.fromkeys(p for p, _ in peers):
                        pairs.append((ratio.format(peer=peer), by.get(num), peers.get((peer, den[1]))))
                else:
                    pairs.append((ratio, by.get(num), by.get(den)))
                for rname, a, b in pairs:
                    if a and b:
                        entry[rname] = paired_ratio(a, b)
                        of_medians[rname] = a['images_per_s'] / b['images_per_s']
            entry['of_medians'] = of_medians
            out.append(entry)
    return out


def _peer_of(model_name: str) -> str:
    for key, p in PEER_SPECS.items():
        if p.model_name == model_name:
            return key
    return model_name


def _fmt_speed(row: dict | None, protocol: str) -> str:
    if row is None:
        return '–'
    if protocol == 'gpu':
        return f"{row['images_per_s']:.0f} @{row['batch_size']} / {row.get('latency_ms', float('nan')):.2f} ms"
    ips = row['images_per_s']
    return f"{ips:.1f} ({row['ms_per_batch']:.0f} ms)" if ips >= 10 else f"{ips:.3g} ({row['ms_per_batch']:.0f} ms)"


def markdown_tables(result: dict) -> str:
    meta, rows, ratios = result['meta'], result['results'], result['ratios']
    lines = ['Models (params of the timed model; MACs per image at its input size, conv + matmul; backbone params: '
             'the EfficientViT-M detection backbone alone):', '',
             '| model | family | input | params (M) | params deploy (M) | backbone params (M) | GMACs evit_mm | '
             'GMACs timm |', '|---|---|---|---|---|---|---|---|']

    def m(v, scale=1e6, digits=3):
        return '–' if v is None else f'{v / scale:.{digits}f}'
    for name, info in result['models'].items():
        size = info.get('input_size')
        size = f'{size[0]}x{size[1]}' if size else '–'
        lines.append(f"| {name} | {info.get('family', '')}{' (peer)' if info.get('peer') else ''} | {size} | "
                     f"{m(info['params'])} | {m(info.get('params_deploy'))} | {m(info.get('params_backbone'))} | "
                     f"{m(info['macs'], 1e9, 3)} | {m(info.get('macs_timm'), 1e9, 3)} |")
    for setting in dict.fromkeys(r['setting'] for r in rows):
        srows = [r for r in rows if r['setting'] == setting]
        protocol = srows[0]['protocol']
        unit = ('images/s @ largest power-of-two batch / batch-1 latency' if protocol == 'gpu'
                else 'images/s (time per batch)')
        load = [v for r in srows for v in (r.get('loadavg_before'), r.get('loadavg_after')) if v is not None]
        load_text = f"; 1-min load average {min(load):.1f} to {max(load):.1f}" if load else ''
        lines += ['', f"### {setting}", '',
                  f"{unit}, median of {meta['repeats']} windows of {meta['duration']:g} s{load_text}. Ratios: median "
                  "over the windows of the ratio to the other model's nearest window.", '']
        for family in dict.fromkeys(r.get('family', '') for r in srows):
            frows = [r for r in srows if r.get('family', '') == family]
            lines += ['| model | implementation | batch | eager | deploy / fused | channels_last | onnxruntime | '
                      'max abs diff |', '|---|---|---|---|---|---|---|---|']
            groups: dict[tuple, dict] = {}
            for r in frows:
                impl = r['impl'] if r['role'] == 'model' else 'peer'
                groups.setdefault((r['model'], impl), {})[r['mode']] = r
            for (model, impl), by in groups.items():
                diffs = [r['max_abs_diff'] for r in by.values() if r.get('max_abs_diff') is not None]
                any_row = next(iter(by.values()))
                label = impl if impl != 'peer' else result['models'].get(model, {}).get('label', model) + ' (peer)'
                fused = by.get('deploy') or by.get('fused') or by.get('fused_channels_last')
                lines.append(f"| {model} | {label} | {any_row['batch_size']} | {_fmt_speed(by.get('eager'), protocol)} "
                             f"| {_fmt_speed(fused, protocol)}{' (NHWC)' if 'fused_channels_last' in by else ''} | "
                             f"{_fmt_speed(by.get('channels_last'), protocol)} | "
                             f"{_fmt_speed(by.get('onnx'), protocol)} | {f'{max(diffs):.1e}' if diffs else '–'} |")
            entries = [e for e in ratios if e['setting'] == setting and
                       result['models'].get(e['model'], {}).get('family') == family]
            names = [n for n in dict.fromkeys(k for e in entries for k in e if k not in ('setting', 'model',
                                                                                         'of_medians'))]
            if entries and names:
                lines += ['', '| model | ' + ' | '.join(names) + ' |', '|---|' + '---|' * len(names)]
                for e in entries:
                    lines.append(f"| {e['model']} | " + ' | '.join(f"{e[n]:.2f}x" if n in e else '–' for n in names)
                                 + ' |')
            lines.append('')
    lines.append(f"Command: `{meta['command']}`  ")
    mi = meta['machine']
    lines.append(f"Machine: {mi['machine']}, {mi['cpu']}, {mi['cpu_count']} CPUs"
                 + (f", {mi['gpu']}" if 'gpu' in mi else '')
                 + f"; torch {mi['torch']}, timm {mi['timm']}, onnxruntime {mi.get('onnxruntime', '–')}, "
                   f"evit_mm {mi['evit_mm']}; {meta['date']}")
    return '\n'.join(lines)


def plot_speed_vs_params(result: dict, path: str) -> None:
    """images/s against parameters, one panel per setting, log-log; a colour per (implementation, form), a
    marker per family, peers as black/grey symbols labelled by name."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    rows = result['results']
    settings = list(dict.fromkeys(r['setting'] for r in rows))
    fig, axes = plt.subplots(1, len(settings), figsize=(7.5 * len(settings), 5.5), squeeze=False)
    colors = {('evit_mm', 'deploy'): 'tab:red', ('evit_mm', 'eager'): 'tab:orange', ('evit_mm', 'onnx'): 'tab:purple',
              ('timm', 'eager'): 'tab:blue', ('timm', 'fused'): 'tab:cyan', ('timm', 'onnx'): 'tab:green',
              ('timm', 'channels_last'): 'tab:olive'}
    markers = dict(zip(FAMILIES, 'osD^vP'))
    for ax, setting in zip(axes[0], settings):
        srows = [r for r in rows if r['setting'] == setting]
        seen = set()
        for (impl, mode), color in colors.items():
            for family in FAMILIES:
                pts = sorted((r['params'] / 1e6, r['images_per_s'], r['spec']) for r in srows if r['role'] == 'model'
                             and (r['impl'], r['mode']) == (impl, mode) and r.get('family') == family)
                if not pts:
                    continue
                label = f'{impl} {mode}' if (impl, mode) not in seen else None
                seen.add((impl, mode))
                ax.plot([p[0] for p in pts], [p[1] for p in pts], color=color, marker=markers[family], ls='-',
                        lw=1, ms=5, label=label)
                if (impl, mode) == ('evit_mm', 'deploy'):
                    for px, py, name in pts:
                        short = result['models'].get(name, {}).get('label', name).replace('EfficientViT-', '')
                        ax.annotate(short, (px, py), textcoords='offset points', xytext=(4, 4), fontsize=7)
        for r in (r for r in srows if r['role'] == 'peer'):
            name = result['models'].get(r['model'], {}).get('label', r['model'])
            ax.plot([r['params'] / 1e6], [r['images_per_s']], color='black' if r['mode'] == 'eager' else 'grey',
                    marker='*', ms=11, ls='none')
            form = '' if r['mode'] == 'eager' else f" {r['mode']}"
            ax.annotate(f'{name}{form}', (r['params'] / 1e6, r['images_per_s']),
                        textcoords='offset points', xytext=(5, -9), fontsize=7)
        for family in dict.fromkeys(r.get('family') for r in srows if r['role'] == 'model'):
            ax.plot([], [], color='grey', marker=markers.get(family, 'o'), ls='none', label=family)
        ax.set_xscale('log')
        ax.set_yscale('log')
        ax.set_xlabel('parameters (M)')
        ax.set_ylabel('images / s')
        ax.set_title(setting, fontsize=9)
        ax.grid(True, which='both', alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle('evit_mm vs timm and the peers (stars): throughput against parameters', fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_outputs(result: dict, out_dir: str) -> tuple[str, dict[str, str]]:
    """Write ``benchmark.json``, ``benchmark.md`` and ``speed_vs_params.png`` to ``out_dir``.

    Returns the markdown tables and the paths written, by kind (json, md, png)."""
    os.makedirs(out_dir, exist_ok=True)
    paths = dict(json=osp.join(out_dir, 'benchmark.json'), md=osp.join(out_dir, 'benchmark.md'),
                 png=osp.join(out_dir, 'speed_vs_params.png'))
    table = markdown_tables(result)
    with open(paths['json'], 'w') as f:
        json.dump(result, f, indent=1)
    with open(paths['md'], 'w') as f:
        f.write(table + '\n')
    plot_speed_vs_params(result, paths['png'])
    return table, paths
