"""The browser app end to end in a real browser: Debian's chromium driven by Playwright for Python.

The app runs as its own process (``python -m evit_mm.sam.app``) on a free local port, with random weights (the
tests have no checkpoint). Random weights give masks without meaning, so the test does not ask "is the cup
segmented"; it asserts what the weights do not change:

* the masks the page received for a click are the masks the predictor computes in this process for the same
  click on the same image (same seed, same model), so the server ran the model on the right image and prompt;
* the page draws the chosen mask exactly: the overlay canvas's painted pixels are the mask's pixels; the click
  location is chosen here beforehand (from this process's predictor) where one of the multimask outputs covers
  it with a margin, the test picks that output in the page, and the clicked pixel is then painted;
* "segment everything" runs, the COCO RLE json downloaded through the page decodes with pycocotools into the
  masks it describes; a bad upload shows its message in the page;
* a second page in another browser context, on another image, gets its own image's masks, and the first page's
  download still gives the first page's mask (session isolation).

A screenshot of the page goes to the test's temp dir (and to ``$EVIT_MM_APP_SCREENSHOT`` when that is set; that
is how docs/images/sam_app.png was made).
"""
from __future__ import annotations

import json
import os
import shutil
import time

import numpy as np
import pytest

pytestmark = pytest.mark.slow

CHROMIUM = os.environ.get('EVIT_MM_CHROMIUM') or shutil.which('chromium') or '/usr/bin/chromium'
ENCODER = 64


def _require_browser():
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        pytest.skip('Playwright for Python is not installed (bash tools/setup_env.sh installs it)')
    if not os.path.isfile(CHROMIUM):
        pytest.skip(f'no chromium at {CHROMIUM} (apt-get install chromium; .ci/run installs it)')
    pytest.importorskip('fastapi')
    pytest.importorskip('uvicorn')


@pytest.fixture(scope='module')
def app_url(tmp_path_factory):
    _require_browser()
    from evit_mm.sam.app.launch import AppStartError, launched
    log = tmp_path_factory.mktemp('sam_app') / 'server.log'
    try:
        with launched(['--model', 'efficientvit_sam_l0', '--encoder-size', ENCODER, '--seed', '0', '--threads', '2',
                       '--points-per-side', '2', '--pred-iou-thresh', '0', '--stability-score-thresh', '0',
                       '--log-level', 'warning'], timeout=120, log_path=str(log)) as url:
            yield url
    except AppStartError as err:
        pytest.fail(str(err))


@pytest.fixture(scope='module')
def predictor():
    from evit_mm.sam import EfficientViTSamPredictor
    from evit_mm.sam.app import load_sam_model
    model, _ = load_sam_model('efficientvit_sam_l0', encoder_size=ENCODER, seed=0)
    return EfficientViTSamPredictor(model)


def _sample(name):
    import skimage.data
    from evit_mm.sam.transforms import as_rgb_uint8
    return as_rgb_uint8(getattr(skimage.data, name)())


def _covering_click(predictor, rgb, margin=0.5):
    """A pixel and a multimask output index such that the output, for a click at the pixel's centre, covers the
    pixel with logit > threshold + margin * (the output's logit std) (random weights give logits of about 0.05:
    the margin keeps a sub-pixel difference in the browser's click from flipping the pixel)."""
    h, w = rgb.shape[:2]
    predictor.set_image(rgb)
    for fy in (0.5, 0.35, 0.65, 0.25, 0.75):
        for fx in (0.5, 0.35, 0.65, 0.25, 0.75):
            x, y = int(w * fx), int(h * fy)
            logits, _, _ = predictor.predict(np.array([[x + 0.5, y + 0.5]]), np.array([1]), return_logits=True)
            for i in np.argsort(-logits[:, y, x]):
                if logits[i, y, x] > predictor.model.mask_threshold + margin * logits[i].std():
                    return x, y, int(i)
    pytest.fail('no click in the 5x5 grid is covered by one of its masks with a margin')


def _runs_to_mask(runs, h, w):
    from evit_mm.sam.app import runs_to_mask
    return runs_to_mask(runs, h, w)


def _wait_render(page, version, timeout=120_000):
    page.wait_for_function(f'() => window.evitSam.maskVersion > {version} && !window.evitSam.busy',
                           timeout=timeout)


def _open_sample(page, url, name):
    page.goto(url)
    page.wait_for_function('() => document.body.dataset.state === "idle"', timeout=60_000)
    version = page.evaluate('window.evitSam.maskVersion')
    page.select_option('#sample', name)
    _wait_render(page, version)
    assert page.evaluate('window.evitSam.width') > 0


def _click_image(page, x, y, button='left'):
    """Click image pixel (x, y) (its centre) on the page; wait for the mask."""
    box = page.locator('#prompts').bounding_box()
    w, h = page.evaluate('[window.evitSam.width, window.evitSam.height]')
    version = page.evaluate('window.evitSam.maskVersion')
    page.mouse.click(box['x'] + (x + 0.5) * box['width'] / w, box['y'] + (y + 0.5) * box['height'] / h,
                     button=button)
    _wait_render(page, version)
    return page.evaluate('window.evitSam.result')


def _mask_canvas_alpha(page):
    return np.array(page.evaluate('''() => {
        const c = document.getElementById('mask');
        const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
        const a = new Array(c.width * c.height);
        for (let i = 0; i < a.length; i++) a[i] = d[4 * i + 3];
        return a;
    }'''), np.uint8)


def _assert_same_masks(got_runs, expected, h, w):
    for runs, exp in zip(got_runs, expected):
        got = _runs_to_mask(runs, h, w)
        # the server embeds in its own process (2 threads): allow a few boundary pixels to differ
        assert (got != exp).mean() < 1e-3


def test_browser_click_everything_download_and_isolation(app_url, predictor, tmp_path):
    from playwright.sync_api import sync_playwright
    from pycocotools import mask as mask_utils

    coffee, chelsea = _sample('coffee'), _sample('chelsea')
    x, y, index = _covering_click(predictor, coffee)
    t_start = time.perf_counter()
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=['--no-sandbox'])
        try:
            ctx1 = browser.new_context(viewport={'width': 1100, 'height': 900}, accept_downloads=True)
            page = ctx1.new_page()
            _open_sample(page, app_url, 'coffee')
            assert page.locator('#banner').is_visible()
            assert 'random weights: masks mean nothing' in page.locator('#banner').inner_text()
            assert 'EfficientViT-SAM-L0' in page.locator('#model').inner_text()
            assert 'embedding:' in page.locator('#stat-embed').inner_text()

            # a click: the page gets the predictor's masks for the coordinates it sent
            r = _click_image(page, x, y)
            h, w = coffee.shape[:2]
            assert (r['width'], r['height']) == (w, h) and len(r['masks']) == 3
            (px, py, label), = r['points']
            assert label == 1 and abs(px - (x + 0.5)) < 1 and abs(py - (y + 0.5)) < 1
            predictor.set_image(coffee)
            expected, _, _ = predictor.predict(np.array([[px, py]]), np.array([1]))
            _assert_same_masks([m['runs'] for m in r['masks']], expected, h, w)
            assert 'click-to-mask:' in page.locator('#stat-click').inner_text()

            # choose the output that covers the clicked pixel; the page paints exactly that mask
            version = page.evaluate('window.evitSam.maskVersion')
            page.locator(f'#choices button[data-index="{index}"]').click()
            _wait_render(page, version)
            assert page.evaluate('window.evitSam.selected') == index
            alpha = _mask_canvas_alpha(page).reshape(h, w)
            shown = _runs_to_mask(r['masks'][index]['runs'], h, w)
            assert shown[y, x] and alpha[y, x] == 128  # the clicked pixel is covered, and drawn
            assert np.array_equal(alpha > 0, shown)  # painted pixels = mask pixels, nothing else
            page.screenshot(path=str(tmp_path / 'sam_app.png'))
            if os.environ.get('EVIT_MM_APP_SCREENSHOT'):
                shutil.copyfile(tmp_path / 'sam_app.png', os.environ['EVIT_MM_APP_SCREENSHOT'])

            # the mask PNG downloaded through the page is the chosen mask
            with page.expect_download() as dl:
                page.locator('#dl-mask').click()
            from PIL import Image
            first_png = np.asarray(Image.open(dl.value.path())) > 0
            assert np.array_equal(first_png, shown)

            # right click: a negative point; drag: a box
            r = _click_image(page, 10, 10, button='right')
            assert [p_[2] for p_ in r['points']] == [1, 0]
            box = page.locator('#prompts').bounding_box()
            version = page.evaluate('window.evitSam.maskVersion')
            page.mouse.move(box['x'] + 0.2 * box['width'], box['y'] + 0.2 * box['height'])
            page.mouse.down()
            page.mouse.move(box['x'] + 0.7 * box['width'], box['y'] + 0.8 * box['height'], steps=5)
            page.mouse.up()
            _wait_render(page, version)
            r = page.evaluate('window.evitSam.result')
            x0, y0, x1, y1 = r['box']
            assert x0 == pytest.approx(0.2 * w, abs=2) and y1 == pytest.approx(0.8 * h, abs=2)
            version = page.evaluate('window.evitSam.maskVersion')
            page.locator('#undo').click()
            _wait_render(page, version)
            assert page.evaluate('window.evitSam.result.box') is None

            # segment everything, then the COCO RLE json of all masks
            version = page.evaluate('window.evitSam.maskVersion')
            page.locator('#everything').click()
            _wait_render(page, version)
            count = page.evaluate('window.evitSam.everythingCount')
            assert count >= 1 and page.evaluate('window.evitSam.mode') == 'everything'
            assert f'Segment everything: {count} mask' in page.locator('#message').inner_text()
            page.screenshot(path=str(tmp_path / 'sam_app_everything.png'))
            with page.expect_download() as dl:
                page.locator('#dl-json').click()
            doc = json.loads(open(dl.value.path()).read())
            assert doc['image'] == {'file_name': 'coffee', 'height': h, 'width': w}
            anns = doc['annotations']
            assert [a['source'] for a in anns] == ['click'] + ['everything'] * count
            for a in anns:
                m = mask_utils.decode(a['segmentation'])
                assert m.shape == (h, w) and int(m.sum()) == a['area']

            # a second page, another browser context, another image: its own masks only
            ctx2 = browser.new_context(viewport={'width': 1100, 'height': 900}, accept_downloads=True)
            page2 = ctx2.new_page()
            _open_sample(page2, app_url, 'chelsea')
            r2 = _click_image(page2, 200, 150)
            h2, w2 = chelsea.shape[:2]
            assert (r2['width'], r2['height']) == (w2, h2)
            (qx, qy, _), = r2['points']
            predictor.set_image(chelsea)
            expected2, _, _ = predictor.predict(np.array([[qx, qy]]), np.array([1]))
            _assert_same_masks([m['runs'] for m in r2['masks']], expected2, h2, w2)
            # page 1 is still on its image, with its masks
            assert page.evaluate('[window.evitSam.width, window.evitSam.height]') == [w, h]
            r1 = _click_image(page, x, y)
            assert (r1['width'], r1['height']) == (w, h)
            version = page.evaluate('window.evitSam.maskVersion')
            page.locator('#undo').click()
            _wait_render(page, version)

            # a file that is not an image: a message in the page, no stack trace
            page2.set_input_files('#file', files=[{'name': 'notes.txt', 'mimeType': 'text/plain',
                                                   'buffer': b'not an image\n'}])
            page2.wait_for_function('() => window.evitSam.lastError !== null && !window.evitSam.busy')
            msg = page2.locator('#message').inner_text()
            assert msg.startswith('notes.txt is not an image') and 'Traceback' not in msg
            assert page2.evaluate('[window.evitSam.width, window.evitSam.height]') == [w2, h2]  # image kept
        finally:
            browser.close()
    print(f'browser session: {time.perf_counter() - t_start:.1f} s')
