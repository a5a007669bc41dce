#!/usr/bin/env python
"""Latency of the browser app as a user sees it: the app in its own process, driven by Debian's chromium through
Playwright, for each model and torch thread count.

    python tools/sam_app_bench.py [--models l0 xl1] [--threads 1 2] [--clicks 30] \\
        [--images astronaut coffee chelsea] [--checkpoint-dir DIR] [--out-dir work_dirs/sam_app_bench]

For each (model, threads) it starts ``python -m evit_mm.sam.app --threads T`` on a free port, opens the page,
loads each sample photo (the server's image embedding time per image), then clicks ``--clicks`` times on the first
photo at fixed, spread-out points (Clear after every third click, untimed) and records per click:

* ``browser``: from the pointer-up event to the frame that paints the mask (``performance.now()`` in the page:
  request, JSON, run-length decode, canvas paint);
* ``server``: the handler's own time; ``decoder``: prompt encoder + mask decoder + upsampling to the image;
  ``encode``: the masks to run lengths.

The first click of each run is a warm-up and is not counted. Prints a markdown table (median / p90) and writes
``sam_app_bench.json`` and ``sam_app_bench.md`` into ``--out-dir``. Without ``--checkpoint-dir`` (holding
``efficientvit_sam_{l0,xl1}.pt``) the models have random weights: the network costs the same, but random masks
are fragmented, so the run-length and paint times are an upper bound of what real masks cost.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from evit_mm.sam.app.launch import AppStartError, launched  # noqa: E402


def _server_args(model: str, threads: int, checkpoint, encoder_size) -> list:
    args = ['--model', model, '--threads', threads, '--log-level', 'warning']
    if checkpoint:
        args += ['--checkpoint', checkpoint]
    if encoder_size:
        args += ['--encoder-size', encoder_size]
    return args


def _wait_render(page, version, timeout=600_000):
    """Until the page has painted a result newer than ``version``; an error shown in the page ends the run."""
    page.evaluate('window.evitSam.lastError = null')
    try:
        page.wait_for_function(f'() => (window.evitSam.maskVersion > {version} && !window.evitSam.busy) '
                               '|| window.evitSam.lastError', timeout=timeout)
    except Exception:  # noqa: BLE001 - say what the page was doing
        state = page.evaluate('({busy: evitSam.busy, maskVersion: evitSam.maskVersion, mode: evitSam.mode, '
                              'state: document.body.dataset.state, message: document.getElementById("message")'
                              '.textContent})')
        raise SystemExit(f'error: no new result in {timeout / 1000:.0f} s after version {version}: page {state}')
    error = page.evaluate('window.evitSam.lastError')
    if error:
        raise SystemExit(f'error: the page shows an error: {error}')


def _click_points(n: int):
    """``n`` spread-out points in relative image coordinates (a fixed low-discrepancy sequence)."""
    golden = (np.sqrt(5) - 1) / 2
    return [(0.15 + 0.7 * ((0.5 + i * golden) % 1), 0.15 + 0.7 * ((0.5 + i * golden ** 2 * 1.7) % 1))
            for i in range(n)]


def _stats(values):
    v = np.asarray(values, np.float64)
    return {'median': float(np.median(v)), 'p90': float(np.percentile(v, 90)), 'min': float(v.min()),
            'n': int(v.size)}


def _drive_page(browser, url, model, threads, args):
    """Samples, then timed clicks, in a new page of ``browser`` on the app at ``url``: (the app's info, the
    embeddings, whether revisiting the first photo hit the cache, the clicks' timings)."""
    ctx = browser.new_context(viewport={'width': 1200, 'height': 1600})  # the whole 960-px stage in view
    page = ctx.new_page()
    page.goto(url)
    page.wait_for_function('() => document.body.dataset.state === "idle"', timeout=120_000)
    info = page.evaluate('window.evitSam.info')
    embeds = []
    for name in args.images:
        version = page.evaluate('window.evitSam.maskVersion')
        t0 = time.perf_counter()
        page.select_option('#sample', name)
        _wait_render(page, version)
        image = page.evaluate('window.evitSam.imageInfo')
        embeds.append({'image': name, 'size': [image['width'], image['height']], 'server_ms': image['embed_ms'],
                       'page_ms': (time.perf_counter() - t0) * 1000, 'cached': image['cached']})
        print(f'  {model} t{threads} {name}: embedding {image["embed_ms"]:.0f} ms', flush=True)
    version = page.evaluate('window.evitSam.maskVersion')
    page.select_option('#sample', args.images[0])  # back to the first: a cache hit
    _wait_render(page, version)
    cached_again = page.evaluate('window.evitSam.imageInfo.cached')
    for i, (fx, fy) in enumerate(_click_points(args.clicks + 1)):
        if i and i % 3 == 0:
            version = page.evaluate('window.evitSam.maskVersion')
            page.locator('#clear').click()
            _wait_render(page, version)
        box = page.locator('#prompts').bounding_box()  # measured per click: a message above it moves it
        version = page.evaluate('window.evitSam.maskVersion')
        page.mouse.click(box['x'] + fx * box['width'], box['y'] + fy * box['height'])
        _wait_render(page, version, timeout=120_000)
    timings = page.evaluate('window.evitSam.timings')[1:]  # the first click is a warm-up
    ctx.close()
    return info, embeds, cached_again, timings


def run_one(browser, model, threads, args, out_dir):
    checkpoint = None
    if args.checkpoint_dir:
        checkpoint = os.path.join(args.checkpoint_dir, f'efficientvit_sam_{model}.pt')
        if not os.path.isfile(checkpoint):
            raise SystemExit(f'error: {checkpoint} not found (--checkpoint-dir holds efficientvit_sam_<model>.pt)')
    try:
        with launched(_server_args(model, threads, checkpoint, args.encoder_size), timeout=300,
                      log_path=os.path.join(out_dir, f'server_{model}_t{threads}.log')) as url:
            info, embeds, cached_again, timings = _drive_page(browser, url, model, threads, args)
    except AppStartError as err:
        raise SystemExit(f'error: {err}')
    row = {'model': f'efficientvit_sam_{model}', 'threads': threads, 'weights': info['weights'],
           'encoder_size': info['encoder_size'], 'embedding': embeds,
           'embedding_server_ms': _stats([e['server_ms'] for e in embeds]), 'revisit_cached': cached_again,
           'clicks': len(timings)}
    for key in ('browser_ms', 'server_ms', 'predict_ms', 'encode_ms'):
        row[key] = _stats([t[key] for t in timings])
    return row


def markdown(rows) -> str:
    lines = ['| model | threads | weights | embedding per image (server, median) | click-to-mask in the browser '
             '(median / p90) | server (median / p90) | decoder (median) | run-length encode (median) | clicks |',
             '|---|---|---|---|---|---|---|---|---|']
    for r in rows:
        lines.append(
            f"| {r['model']} | {r['threads']} | {r['weights']} | {r['embedding_server_ms']['median']:.0f} ms | "
            f"{r['browser_ms']['median']:.0f} / {r['browser_ms']['p90']:.0f} ms | "
            f"{r['server_ms']['median']:.0f} / {r['server_ms']['p90']:.0f} ms | {r['predict_ms']['median']:.0f} ms | "
            f"{r['encode_ms']['median']:.1f} ms | {r['clicks']} |")
    return '\n'.join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--models', nargs='+', default=['l0', 'xl1'])
    ap.add_argument('--threads', nargs='+', type=int, default=[1, 2])
    ap.add_argument('--clicks', type=int, default=30, help='timed clicks per run (after one warm-up click)')
    ap.add_argument('--images', nargs='+', default=['astronaut', 'coffee', 'chelsea'],
                    help='sample photos (the clicks go to the first)')
    ap.add_argument('--checkpoint-dir', help='folder with efficientvit_sam_<model>.pt (default: random weights)')
    ap.add_argument('--encoder-size', type=int, help='override the encoder input size (smoke runs only)')
    ap.add_argument('--chromium', default=shutil.which('chromium') or '/usr/bin/chromium')
    ap.add_argument('--out-dir', default='work_dirs/sam_app_bench')
    args = ap.parse_args(argv)
    if args.clicks < 1:
        raise SystemExit('error: --clicks must be >= 1')
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        raise SystemExit('error: Playwright for Python is missing (bash tools/setup_env.sh installs it)')
    if not os.path.isfile(args.chromium):
        raise SystemExit(f'error: no chromium at {args.chromium} (apt-get install chromium)')
    os.makedirs(args.out_dir, exist_ok=True)
    rows = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=args.chromium, args=['--no-sandbox'])
        try:
            for model in args.models:
                for threads in args.threads:
                    rows.append(run_one(browser, model, threads, args, args.out_dir))
        finally:
            browser.close()
    table = markdown(rows)
    print(table)
    meta = {'machine': platform.processor() or platform.machine(), 'cpus': os.cpu_count(),
            'python': platform.python_version(), 'date': time.strftime('%Y-%m-%d %H:%M:%S %Z')}
    with open(os.path.join(args.out_dir, 'sam_app_bench.json'), 'w') as f:
        json.dump({'meta': meta, 'args': vars(args), 'results': rows}, f, indent=1)
    with open(os.path.join(args.out_dir, 'sam_app_bench.md'), 'w') as f:
        f.write(table + '\n')
    print(f'wrote {args.out_dir}/sam_app_bench.json and .md')
    return 0


if __name__ == '__main__':
    sys.exit(main())
