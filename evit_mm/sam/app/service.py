"""The app's request handlers, without HTTP: :class:`SamAppService` (``server.py`` maps routes onto it).

Speed: an image's embedding is computed once per (session, image) and kept in the :class:`~.state.EmbeddingCache`;
a click runs only the prompt encoder and the mask decoder on it (and the upsampling of the three low-res masks to
the image size), and "segment everything" reuses the same embedding (no second encoder pass).

Masks go to the page as run lengths of the row-major mask (``[zeros, ones, zeros, ...]``, see
:func:`mask_to_runs`): a few kB, encoded in a millisecond, painted by the page without decoding an image format.
"""
from __future__ import annotations

import base64
import hashlib
import io
import logging
import math
import time
from contextlib import contextmanager
from typing import Any, Dict, List, Optional, Sequence

import numpy as np
import torch

from ..automatic_mask_generator import EfficientViTSamAutomaticMaskGenerator
from ..predictor import EfficientViTSamPredictor
from ..visualize import PALETTE, load_image, overlay
from .images import AppError, Limits, check_pixels, decode_image
from .model import ModelInfo
from .state import EmbeddingCache, Session, SessionStore

__all__ = ['SamAppService', 'SAMPLES', 'mask_to_runs', 'runs_to_mask', 'MAX_POINTS']

log = logging.getLogger('evit_mm.sam.app')

#: scikit-image's sample photographs offered by the page (shipped with scikit-image: no download).
SAMPLES = ('astronaut', 'coffee', 'chelsea', 'rocket', 'coins')
#: prompts per image (points); more is refused with a message
MAX_POINTS = 64
#: the colour of the click mask in the page (the palette's first)
MASK_COLOR = [int(c) for c in PALETTE[0]]


def mask_to_runs(mask: np.ndarray) -> List[int]:
    """Run lengths of a boolean mask in row-major order, starting with a (possibly empty) run of zeros."""
    flat = np.asarray(mask, bool).ravel()
    if flat.size == 0:
        return []
    change = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    runs = np.diff(np.concatenate([[0], change, [flat.size]]))
    if flat[0]:
        runs = np.concatenate([[0], runs])
    return runs.tolist()


def runs_to_mask(runs: Sequence[int], height: int, width: int) -> np.ndarray:
    """Inverse of :func:`mask_to_runs`."""
    values = np.arange(len(runs)) % 2 == 1
    flat = np.repeat(values, np.asarray(runs, dtype=np.int64))
    if flat.size != height * width:
        raise ValueError(f'runs cover {flat.size} pixels, the image has {height * width}')
    return flat.reshape(height, width)


def _rle(mask: np.ndarray) -> Dict[str, Any]:
    from pycocotools import mask as mask_utils
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {'size': [int(s) for s in rle['size']], 'counts': rle['counts'].decode('ascii')}


def _number(body: Dict[str, Any], key: str) -> float:
    v = body.get(key)
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        raise AppError(f'{key} must be a finite number, got {v!r}', 422)
    return float(v)


def _ms(t0: float) -> float:
    return round((time.perf_counter() - t0) * 1000, 2)


class _AppPredictor(EfficientViTSamPredictor):
    """The predictor of the app's automatic mask generator: inside :meth:`using` (per thread), ``set_image`` of an
    image of the given size takes the cached embedding instead of running the encoder again."""

    @contextmanager
    def using(self, state):
        self._local.preset = state
        try:
            yield
        finally:
            self._local.preset = None
            self.reset_image()

    def set_image(self, image, image_format: str = 'RGB') -> None:
        preset = getattr(self._local, 'preset', None)
        if preset is not None and tuple(np.shape(image)[:2]) == tuple(preset.original_sizes[0]):
            self._set_state(preset)
            return
        super().set_image(image, image_format)


class SamAppService:
    """Everything the page can ask for. Each method takes the session id and returns JSON-able dicts (or bytes for
    downloads); user errors raise :class:`~.images.AppError` with the message for the page.

    Args:
        model, info: from :func:`~.model.load_sam_model`.
        limits: upload limits.
        cache_items, cache_bytes: bounds of the embedding cache.
        max_sessions, session_ttl_s: bounds of the session store.
        points_per_side, pred_iou_thresh, stability_score_thresh: the automatic mask generator's settings
            ("segment everything"; 8 points per side = 64 decoder prompts keeps it to seconds on a CPU; SAM's
            default is 32 = 1024 prompts).
    """

    def __init__(self, model, info: ModelInfo, limits: Limits = Limits(), cache_items: int = 16,
                 cache_bytes: int = 512 * 2 ** 20, max_sessions: int = 32, session_ttl_s: float = 3600.0,
                 points_per_side: int = 8, pred_iou_thresh: float = 0.8, stability_score_thresh: float = 0.85):
        self.model = model
        self.info = info
        self.limits = limits
        self.cache = EmbeddingCache(cache_items, cache_bytes)
        self.sessions = SessionStore(max_sessions, session_ttl_s, on_drop=self.cache.drop_session)
        self.predictor = _AppPredictor(model)
        self.amg = EfficientViTSamAutomaticMaskGenerator(
            model, points_per_side=points_per_side, pred_iou_thresh=pred_iou_thresh,
            stability_score_thresh=stability_score_thresh, output_mode='coco_rle')
        self.amg.predictor = self.predictor  # the cached embedding serves "segment everything" too

    # ------------------------------------------------------------------------------------------------ info
    def describe(self) -> Dict[str, Any]:
        info = self.info
        return {
            'model': info.title, 'name': info.name, 'weights': info.weights, 'random_weights': info.random_weights,
            'banner': ('random weights: masks mean nothing (start with --pretrained or --checkpoint FILE)'
                       if info.random_weights else None),
            'encoder_size': info.encoder_size, 'threads': torch.get_num_threads(), 'samples': list(SAMPLES),
            'limits': {'max_bytes': self.limits.max_bytes, 'max_pixels': self.limits.max_pixels,
                       'min_side': self.limits.min_side},
        }

    def new_session(self) -> Dict[str, Any]:
        return {'session': self.sessions.create().id}

    # ---------------------------------------------------------------------------------------------- images
    def set_image_bytes(self, sid: str, data: bytes, name: str = 'the upload') -> Dict[str, Any]:
        session = self.sessions.get(sid)
        rgb, notes = decode_image(data, self.limits, name)
        return self._set_image(session, rgb, name, notes)

    def set_sample(self, sid: str, name: str) -> Dict[str, Any]:
        session = self.sessions.get(sid)
        if name not in SAMPLES:
            raise AppError(f'unknown sample {name!r}; the samples are {", ".join(SAMPLES)}', 404)
        rgb = load_image(f'skimage:{name}')
        from ..transforms import as_rgb_uint8
        return self._set_image(session, np.ascontiguousarray(as_rgb_uint8(rgb)), name, [])

    def _set_image(self, session: Session, rgb: np.ndarray, name: str, notes: List[str]) -> Dict[str, Any]:
        check_pixels(rgb.shape[1], rgb.shape[0], self.limits, name)
        key = hashlib.sha1(rgb.tobytes() + repr(rgb.shape).encode()).hexdigest()
        with session.lock:
            _, embed_ms, cached = self._embedding(session.id, key, rgb, name)  # before anything changes
            session.rgb, session.image_key, session.image_name = rgb, key, name
            session.clear_prompts()
            session.everything = None
        return {'name': name, 'width': int(rgb.shape[1]), 'height': int(rgb.shape[0]), 'notes': notes,
                'embed_ms': embed_ms, 'cached': cached}

    def _session_embedding(self, session: Session):
        return self._embedding(session.id, session.image_key, session.rgb, session.image_name)

    def _embedding(self, sid: str, image_key: str, rgb: np.ndarray, name: str):
        """``(state, embed_ms, cached)`` for an image of a session: from the cache, or one encoder pass."""
        key = (sid, image_key)
        state = self.cache.get(key)
        if state is not None:
            return state, 0.0, True
        t0 = time.perf_counter()
        try:
            with torch.inference_mode():
                self.predictor.set_image(rgb)
        except ValueError as e:  # e.g. too elongated to resize
            raise AppError(f'{name} cannot be segmented: {e}') from None
        state = self.predictor._state  # this thread's snapshot (immutable)
        self.predictor.reset_image()
        embed_ms = _ms(t0)
        self.cache.put(key, state, state.features.element_size() * state.features.nelement())
        log.info('embedded %s (%dx%d) in %.0f ms', name, rgb.shape[1], rgb.shape[0], embed_ms)
        return state, embed_ms, False

    def image_jpeg(self, sid: str) -> bytes:
        from PIL import Image
        session = self.sessions.get(sid)
        rgb = self._require_image(session)
        buf = io.BytesIO()
        Image.fromarray(rgb).save(buf, format='JPEG', quality=92)
        return buf.getvalue()

    @staticmethod
    def _require_image(session: Session) -> np.ndarray:
        if session.rgb is None:
            raise AppError('no image yet: open an image or pick a sample photo first', 409)
        return session.rgb

    # --------------------------------------------------------------------------------------------- prompts
    def prompt(self, sid: str, body: Dict[str, Any]) -> Dict[str, Any]:
        """Add a prompt: ``{'type': 'point', 'x', 'y', 'label': 1|0}`` or ``{'type': 'box', 'x0', 'y0', 'x1',
        'y1'}`` (image pixels; a new box replaces the previous one), then predict."""
        t0 = time.perf_counter()
        session = self.sessions.get(sid)
        with session.lock:
            rgb = self._require_image(session)
            h, w = rgb.shape[:2]
            kind = body.get('type')
            if kind == 'point':
                x, y = _number(body, 'x'), _number(body, 'y')
                label = body.get('label', 1)
                if isinstance(label, bool) or label not in (0, 1):
                    raise AppError(f'label must be 1 (foreground) or 0 (background), got {label!r}', 422)
                if not (0 <= x <= w and 0 <= y <= h):
                    raise AppError(f'point ({x:g}, {y:g}) lies outside the {w}x{h} image', 422)
                if len(session.points) >= MAX_POINTS:
                    raise AppError(f'at most {MAX_POINTS} points per image: undo or clear', 422)
                session.points.append((x, y, int(label)))
                session.history.append(('point', None))
            elif kind == 'box':
                x0, y0, x1, y1 = (_number(body, k) for k in ('x0', 'y0', 'x1', 'y1'))
                x0, x1 = sorted((max(0.0, min(x0, w)), max(0.0, min(x1, w))))
                y0, y1 = sorted((max(0.0, min(y0, h)), max(0.0, min(y1, h))))
                if x1 - x0 < 1 or y1 - y0 < 1:
                    raise AppError('the box is empty inside the image: drag a larger box over the image', 422)
                session.history.append(('box', session.box))
                session.box = (x0, y0, x1, y1)
            else:
                raise AppError(f"type must be 'point' or 'box', got {kind!r}", 422)
            try:
                result = self._predict(session)
            except Exception:
                self._undo_one(session)
                raise
        result['server_ms'] = _ms(t0)
        return result

    def undo(self, sid: str) -> Dict[str, Any]:
        t0 = time.perf_counter()
        session = self.sessions.get(sid)
        with session.lock:
            self._require_image(session)
            if not session.history:
                raise AppError('nothing to undo', 409)
            self._undo_one(session)
            result = self._predict(session)
        result['server_ms'] = _ms(t0)
        return result

    def clear(self, sid: str) -> Dict[str, Any]:
        session = self.sessions.get(sid)
        with session.lock:
            self._require_image(session)
            session.clear_prompts()
            session.everything = None
            return self._result(session, None, {})

    @staticmethod
    def _undo_one(session: Session) -> None:
        kind, previous = session.history.pop()
        if kind == 'point':
            session.points.pop()
        else:
            session.box = previous

    def _predict(self, session: Session) -> Dict[str, Any]:
        if not session.points and session.box is None:
            session.masks_packed = session.ious = None
            return self._result(session, None, {})
        state, embed_ms, _ = self._session_embedding(session)
        t0 = time.perf_counter()
        coords = np.array([[p[0], p[1]] for p in session.points], np.float64) if session.points else None
        labels = np.array([p[2] for p in session.points], np.int64) if session.points else None
        box = np.array(session.box, np.float64) if session.box is not None else None
        try:
            with torch.inference_mode():
                # on the cached embedding (a snapshot: safe while other sessions' requests run)
                masks, ious, _ = self.predictor._predict(state, None, coords, labels, box, None, True, False)
        except ValueError as e:
            raise AppError(f'the prompt was refused: {e}', 422) from None
        predict_ms = _ms(t0)
        n, h, w = masks.shape
        session.masks_packed = np.packbits(masks.reshape(n, h * w), axis=1)
        session.ious = ious.astype(np.float64)
        session.selected = int(np.argmax(ious))
        t1 = time.perf_counter()
        runs = [mask_to_runs(m) for m in masks]
        timing = {'embed_ms': embed_ms, 'predict_ms': predict_ms, 'encode_ms': _ms(t1)}
        return self._result(session, [{'runs': r, 'iou': round(float(i), 4), 'area': int(m.sum())}
                                      for r, i, m in zip(runs, ious, masks)], timing)

    @staticmethod
    def _result(session: Session, masks, timing: Dict[str, float]) -> Dict[str, Any]:
        h, w = session.rgb.shape[:2]
        return {'width': int(w), 'height': int(h), 'masks': masks or [], 'selected': session.selected,
                'color': MASK_COLOR, 'points': [list(p) for p in session.points],
                'box': list(session.box) if session.box is not None else None, **timing}

    # ---------------------------------------------------------------------------------- segment everything
    def everything(self, sid: str) -> Dict[str, Any]:
        """The automatic mask generator on the session's image (its cached embedding), as a coloured overlay."""
        from pycocotools import mask as mask_utils
        from PIL import Image
        t0 = time.perf_counter()
        session = self.sessions.get(sid)
        with session.lock:
            rgb = self._require_image(session)
            state, embed_ms, _ = self._session_embedding(session)
            t1 = time.perf_counter()
            with torch.inference_mode(), self.predictor.using(state):
                records = self.amg.generate(rgb)
            amg_ms = _ms(t1)
            records.sort(key=lambda r: r['area'], reverse=True)
            session.everything = records
            masks = [mask_utils.decode(r['segmentation']).astype(bool) for r in records]
            buf = io.BytesIO()
            Image.fromarray(overlay(rgb, masks)).save(buf, format='JPEG', quality=90)
        return {'count': len(records), 'embed_ms': embed_ms, 'amg_ms': amg_ms, 'server_ms': _ms(t0),
                'overlay': 'data:image/jpeg;base64,' + base64.b64encode(buf.getvalue()).decode('ascii')}

    # ------------------------------------------------------------------------------------------- downloads
    def _mask_index(self, session: Session, index: Optional[int]) -> int:
        if session.masks_packed is None:
            raise AppError('no mask yet: click on the image first', 409)
        n = session.masks_packed.shape[0]
        i = session.selected if index is None else index
        if not 0 <= i < n:
            raise AppError(f'mask index {i} out of range: 0..{n - 1}', 422)
        return i

    def mask_png(self, sid: str, index: Optional[int] = None) -> bytes:
        """The click mask ``index`` (default: the one with the highest predicted IoU) as a 0/255 grayscale PNG."""
        from PIL import Image
        session = self.sessions.get(sid)
        with session.lock:
            self._require_image(session)
            mask = session.masks()[self._mask_index(session, index)]
        buf = io.BytesIO()
        Image.fromarray(mask.astype(np.uint8) * 255).save(buf, format='PNG')
        return buf.getvalue()

    def masks_json(self, sid: str, index: Optional[int] = None) -> Dict[str, Any]:
        """All masks as COCO RLE: the click mask ``index`` (if any) and the "segment everything" masks (if run)."""
        session = self.sessions.get(sid)
        with session.lock:
            rgb = self._require_image(session)
            annotations = []
            if session.masks_packed is not None:
                i = self._mask_index(session, index)
                m = session.masks()[i]
                annotations.append({'source': 'click', 'segmentation': _rle(m), 'area': int(m.sum()),
                                    'predicted_iou': float(session.ious[i]),
                                    'points': [list(p) for p in session.points],
                                    'box': list(session.box) if session.box is not None else None})
            for r in session.everything or []:
                annotations.append({'source': 'everything', 'segmentation': r['segmentation'],
                                    'area': int(r['area']), 'bbox': [float(v) for v in r['bbox']],
                                    'predicted_iou': float(r['predicted_iou']),
                                    'stability_score': float(r['stability_score'])})
            if not annotations:
                raise AppError('no masks yet: click on the image or run "segment everything" first', 409)
            for k, a in enumerate(annotations, 1):
                a['id'] = k
            return {'image': {'file_name': session.image_name, 'height': int(rgb.shape[0]),
                              'width': int(rgb.shape[1])},
                    'model': self.info.name, 'weights': self.info.weights, 'annotations': annotations}
