// EfficientViT-SAM browser app: the page's only script (no framework, no build step).
// State lives on window.evitSam so that tests and the benchmark can read it (maskVersion, timings, result).
'use strict';

const S = {
  session: null, info: null, width: 0, height: 0, result: null, selected: 0, mode: 'none',
  everythingImage: null, busy: false, maskVersion: 0, imageVersion: 0, timings: [], lastError: null,
};
window.evitSam = S;
const $ = (id) => document.getElementById(id);
const canvases = { image: $('image'), mask: $('mask'), prompts: $('prompts') };

function setState(state) { document.body.dataset.state = state; }

function showMessage(text, kind = 'error') {
  const m = $('message');
  m.textContent = text || '';
  m.className = kind;
  m.hidden = !text;
  if (kind === 'error') S.lastError = text || null;
}

async function api(path, options = {}) {
  let response;
  try {
    response = await fetch(path, options);
  } catch (e) {
    throw new Error(`the server cannot be reached (${e.message})`);
  }
  const type = response.headers.get('content-type') || '';
  const data = type.includes('application/json') ? await response.json() : null;
  if (!response.ok) throw new Error((data && data.error) || `${response.status} ${response.statusText}`);
  return data;
}

function post(path, body = {}) {
  return api(path, {
    method: 'POST', headers: { 'Content-Type': 'application/json' },
    body: JSON.stringify({ session: S.session, ...body }),
  });
}

async function busy(fn) {
  if (S.busy) return;
  S.busy = true;
  setState('busy');
  try {
    await fn();
  } catch (e) {
    showMessage(e.message, 'error');
  } finally {
    S.busy = false;
    setState(S.width ? 'ready' : 'idle');
  }
}

// ----------------------------------------------------------------------------------------------- images
function loadImageElement(src) {
  return new Promise((resolve, reject) => {
    const img = new Image();
    img.onload = () => resolve(img);
    img.onerror = () => reject(new Error('the browser could not display the image'));
    img.src = src;
  });
}

async function imageReady(info) {
  S.imageInfo = info;
  const img = await loadImageElement(`/api/image.jpg?session=${S.session}&v=${++S.imageVersion}`);
  S.width = info.width;
  S.height = info.height;
  for (const c of Object.values(canvases)) { c.width = S.width; c.height = S.height; }
  canvases.image.getContext('2d').drawImage(img, 0, 0);
  $('stage').hidden = false;
  S.result = null;
  S.mode = 'none';
  S.everythingImage = null;
  render();
  const notes = info.notes && info.notes.length ? ` (${info.notes.join('; ')})` : '';
  $('stat-image').textContent = `${info.name}: ${info.width}x${info.height}${notes}`;
  $('stat-embed').textContent = info.cached ? 'embedding: cached'
    : `embedding: ${info.embed_ms.toFixed(0)} ms`;
  showMessage(info.notes && info.notes.length ? `Converted: ${info.notes.join('; ')}.` : '', 'note');
  for (const id of ['undo', 'clear', 'everything']) $(id).disabled = false;
}

async function openFile(file) {
  await busy(async () => {
    showMessage('');
    const info = await api(`/api/image?session=${S.session}&name=${encodeURIComponent(file.name)}`,
                           { method: 'POST', body: file });
    await imageReady(info);
  });
}

async function openSample(name) {
  await busy(async () => {
    showMessage('');
    await imageReady(await post('/api/sample', { name }));
  });
}

// ---------------------------------------------------------------------------------------------- drawing
function paintMask() {
  const ctx = canvases.mask.getContext('2d');
  ctx.clearRect(0, 0, S.width, S.height);
  if (S.mode === 'everything' && S.everythingImage) {
    ctx.drawImage(S.everythingImage, 0, 0);
  } else if (S.mode === 'click' && S.result && S.result.masks.length) {
    const mask = S.result.masks[S.selected];
    const image = ctx.createImageData(S.width, S.height);
    const d = image.data;
    const [r, g, b] = S.result.color;
    let pos = 0;
    mask.runs.forEach((n, k) => {
      if (k % 2 === 1) {
        for (let i = pos * 4, end = (pos + n) * 4; i < end; i += 4) {
          d[i] = r; d[i + 1] = g; d[i + 2] = b; d[i + 3] = 128;
        }
      }
      pos += n;
    });
    ctx.putImageData(image, 0, 0);
  }
}

function paintPrompts() {
  const ctx = canvases.prompts.getContext('2d');
  ctx.clearRect(0, 0, S.width, S.height);
  if (S.mode !== 'click' || !S.result) return;
  const radius = Math.max(3, Math.round(Math.max(S.width, S.height) / 150));
  ctx.lineWidth = Math.max(2, radius / 2);
  if (S.result.box) {
    const [x0, y0, x1, y1] = S.result.box;
    ctx.strokeStyle = '#32cd32';
    ctx.strokeRect(x0, y0, x1 - x0, y1 - y0);
  }
  for (const [x, y, label] of S.result.points) {
    ctx.beginPath();
    ctx.arc(x, y, radius, 0, 2 * Math.PI);
    ctx.fillStyle = label === 1 ? '#00c000' : '#e00000';
    ctx.fill();
    ctx.strokeStyle = '#fff';
    ctx.lineWidth = Math.max(1, radius / 3);
    ctx.stroke();
  }
}

function renderChoices() {
  const box = $('choices');
  box.textContent = '';
  const masks = S.mode === 'click' && S.result ? S.result.masks : [];
  masks.forEach((m, i) => {
    const b = document.createElement('button');
    b.textContent = `mask ${i + 1} · IoU ${m.iou.toFixed(3)}`;
    b.dataset.index = i;
    b.className = i === S.selected ? 'selected' : '';
    b.addEventListener('click', () => { S.selected = i; render(); });
    box.appendChild(b);
  });
}

function renderLinks() {
  const hasMask = S.mode === 'click' && S.result && S.result.masks.length;
  const hasEverything = !!S.everythingImage;
  const q = `session=${S.session}&index=${S.selected}`;
  const mask = $('dl-mask');
  const json = $('dl-json');
  mask.classList.toggle('disabled', !hasMask);
  json.classList.toggle('disabled', !(hasMask || hasEverything));
  if (hasMask) mask.href = `/api/mask.png?${q}`; else mask.removeAttribute('href');
  if (hasMask || hasEverything) json.href = `/api/masks.json?${hasMask ? q : `session=${S.session}`}`;
  else json.removeAttribute('href');
}

function render() {
  paintMask();
  paintPrompts();
  renderChoices();
  renderLinks();
  S.maskVersion += 1;
}

// ---------------------------------------------------------------------------------------------- prompts
function afterPaint() {
  return new Promise((resolve) => requestAnimationFrame(() => setTimeout(resolve, 0)));
}

async function sendPrompt(body, t0) {
  await busy(async () => {
    const result = await post('/api/prompt', body);
    showResult(result);
    await afterPaint();
    const ms = performance.now() - t0;
    S.timings.push({ browser_ms: ms, server_ms: result.server_ms, predict_ms: result.predict_ms,
                     encode_ms: result.encode_ms, embed_ms: result.embed_ms });
    $('stat-click').textContent = `click-to-mask: ${ms.toFixed(0)} ms in the browser ` +
      `(server ${result.server_ms.toFixed(0)} ms, decoder ${result.predict_ms.toFixed(0)} ms)`;
    if (result.embed_ms) $('stat-embed').textContent = `embedding: ${result.embed_ms.toFixed(0)} ms`;
  });
}

function showResult(result) {
  S.result = result;
  S.selected = result.masks.length ? result.selected : 0;
  S.mode = 'click';
  showMessage('');
  render();
}

function imagePoint(ev) {
  const r = canvases.prompts.getBoundingClientRect();
  const x = Math.min(Math.max((ev.clientX - r.left) * S.width / r.width, 0), S.width);
  const y = Math.min(Math.max((ev.clientY - r.top) * S.height / r.height, 0), S.height);
  return [x, y, r];
}

let dragStart = null;
canvases.prompts.addEventListener('contextmenu', (ev) => ev.preventDefault());
canvases.prompts.addEventListener('pointerdown', (ev) => {
  if (!S.width) return;
  dragStart = { ev, point: imagePoint(ev) };
  canvases.prompts.setPointerCapture(ev.pointerId);
});
canvases.prompts.addEventListener('pointerup', (ev) => {
  if (!dragStart) return;
  const t0 = performance.now();
  const [x0, y0] = dragStart.point;
  const [x1, y1] = imagePoint(ev);
  const moved = Math.hypot(ev.clientX - dragStart.ev.clientX, ev.clientY - dragStart.ev.clientY);
  const button = dragStart.ev.button;
  dragStart = null;
  if (moved < 5) {
    const label = button === 2 || $('negative').checked ? 0 : 1;
    sendPrompt({ type: 'point', x: x0, y: y0, label }, t0);
  } else {
    sendPrompt({ type: 'box', x0: Math.min(x0, x1), y0: Math.min(y0, y1), x1: Math.max(x0, x1),
                 y1: Math.max(y0, y1) }, t0);
  }
});

// ---------------------------------------------------------------------------------------------- buttons
$('undo').addEventListener('click', () => busy(async () => showResult(await post('/api/undo'))));
$('clear').addEventListener('click', () => busy(async () => {
  S.everythingImage = null;
  showResult(await post('/api/clear'));
}));
$('everything').addEventListener('click', () => busy(async () => {
  showMessage('Segmenting everything…', 'note');
  const r = await post('/api/everything');
  S.everythingImage = await loadImageElement(r.overlay);
  S.everythingCount = r.count;
  S.mode = 'everything';
  S.result = null;
  render();
  showMessage(`Segment everything: ${r.count} mask${r.count === 1 ? '' : 's'} in ${(r.amg_ms / 1000).toFixed(1)} s.`,
              'note');
}));
$('file').addEventListener('change', (ev) => {
  const file = ev.target.files[0];
  ev.target.value = '';
  if (file) openFile(file);
});
$('sample').addEventListener('change', (ev) => {
  const name = ev.target.value;
  ev.target.value = '';
  if (name) openSample(name);
});

// ------------------------------------------------------------------------------------------------ start
(async () => {
  try {
    S.info = await api('/api/info');
    const weights = S.info.random_weights ? 'random weights' : S.info.weights;
    $('model').textContent = `${S.info.model} · ${weights} · encoder ${S.info.encoder_size} px · ` +
      `${S.info.threads} thread(s)`;
    if (S.info.banner) { $('banner').textContent = S.info.banner; $('banner').hidden = false; }
    for (const name of S.info.samples) {
      const o = document.createElement('option');
      o.value = name;
      o.textContent = name;
      $('sample').appendChild(o);
    }
    S.session = (await post('/api/session')).session;
    setState('idle');
  } catch (e) {
    showMessage(e.message, 'error');
    setState('error');
  }
})();
