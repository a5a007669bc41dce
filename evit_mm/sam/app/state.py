"""Per-session state and the bounded embedding cache of the app (no web framework here: unit-testable).

* :class:`EmbeddingCache`: LRU, bounded by count **and** bytes, keyed by ``(session id, image key)``: a session
  that goes back to an image it had gets its embedding without running the encoder; no session ever reads
  another's entry (the session id is part of the key).
* :class:`Session`: one browser page's image, prompts, masks and "segment everything" result. Every request of a
  session holds its lock, so a session's requests run one at a time while other sessions run in parallel.
* :class:`SessionStore`: random unguessable ids; bounded (the least recently used session is dropped) and
  sessions idle longer than ``ttl_s`` expire.
"""
from __future__ import annotations

import secrets
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Dict, Hashable, List, Optional, Tuple

import numpy as np

from .images import AppError

__all__ = ['EmbeddingCache', 'Session', 'SessionStore']


class EmbeddingCache:
    """A thread-safe LRU cache bounded by ``max_items`` entries and ``max_bytes`` bytes (what :meth:`put` is told
    each value weighs). A value heavier than ``max_bytes`` on its own is not stored."""

    def __init__(self, max_items: int = 16, max_bytes: int = 512 * 2 ** 20):
        if max_items < 1 or max_bytes < 1:
            raise ValueError(f'the cache needs max_items >= 1 and max_bytes >= 1, got {max_items}, {max_bytes}')
        self.max_items = int(max_items)
        self.max_bytes = int(max_bytes)
        self._items: 'OrderedDict[Hashable, Tuple[Any, int]]' = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self.hits = self.misses = self.evictions = 0

    def get(self, key: Hashable) -> Optional[Any]:
        with self._lock:
            item = self._items.get(key)
            if item is None:
                self.misses += 1
                return None
            self._items.move_to_end(key)
            self.hits += 1
            return item[0]

    def put(self, key: Hashable, value: Any, nbytes: int) -> bool:
        """Store ``value`` (evicting the least recently used entries as needed); ``False`` if it is too big."""
        nbytes = int(nbytes)
        with self._lock:
            self._pop(key)
            if nbytes > self.max_bytes:
                return False
            self._items[key] = (value, nbytes)
            self._bytes += nbytes
            while len(self._items) > self.max_items or self._bytes > self.max_bytes:
                old = next(iter(self._items))
                self._pop(old)
                self.evictions += 1
            return True

    def _pop(self, key: Hashable) -> None:
        item = self._items.pop(key, None)
        if item is not None:
            self._bytes -= item[1]

    def drop_session(self, session_id: str) -> None:
        """Forget every entry of a session (keys ``(session_id, ...)``)."""
        with self._lock:
            for key in [k for k in self._items if isinstance(k, tuple) and k and k[0] == session_id]:
                self._pop(key)

    def __len__(self) -> int:
        return len(self._items)

    @property
    def nbytes(self) -> int:
        return self._bytes

    def keys(self) -> List[Hashable]:
        with self._lock:
            return list(self._items)


@dataclass
class Session:
    """One page's state. Mutate it only while holding ``lock``."""
    id: str
    last_used: float = field(default_factory=time.monotonic)
    lock: threading.Lock = field(default_factory=threading.Lock)
    rgb: Optional[np.ndarray] = None  #: the current image (H, W, 3) uint8
    image_key: Optional[str] = None  #: sha1 of its pixels and shape
    image_name: str = ''
    #: prompts: points (x, y, label) in image pixels and one optional XYXY box; ``history`` holds undo records
    points: List[Tuple[float, float, int]] = field(default_factory=list)
    box: Optional[Tuple[float, float, float, float]] = None
    history: List[Tuple[str, Any]] = field(default_factory=list)
    #: the last prediction: the multimask outputs (bit-packed), their predicted IoUs and the shown one
    masks_packed: Optional[np.ndarray] = None
    ious: Optional[np.ndarray] = None
    selected: int = 0
    #: "segment everything": COCO RLE records of the automatic mask generator, or None
    everything: Optional[List[Dict[str, Any]]] = None

    def masks(self) -> Optional[np.ndarray]:
        """The last prediction's masks, ``(C, H, W)`` bool."""
        if self.masks_packed is None:
            return None
        h, w = self.rgb.shape[:2]
        n = self.masks_packed.shape[0]
        return np.unpackbits(self.masks_packed, axis=1, count=h * w).reshape(n, h, w).astype(bool)

    def clear_prompts(self) -> None:
        self.points, self.box, self.history = [], None, []
        self.masks_packed = self.ious = None
        self.selected = 0


class SessionStore:
    """Sessions by id: at most ``max_sessions`` (the least recently used is dropped to make room), each expiring
    after ``ttl_s`` seconds without a request. ``on_drop(session_id)`` is called for each dropped session."""

    def __init__(self, max_sessions: int = 32, ttl_s: float = 3600.0, on_drop=None):
        if max_sessions < 1:
            raise ValueError(f'max_sessions must be >= 1, got {max_sessions}')
        self.max_sessions = int(max_sessions)
        self.ttl_s = float(ttl_s)
        self._on_drop = on_drop
        self._sessions: 'OrderedDict[str, Session]' = OrderedDict()
        self._lock = threading.Lock()

    def _drop(self, sid: str) -> None:
        self._sessions.pop(sid, None)
        if self._on_drop is not None:
            self._on_drop(sid)

    def _expire(self, now: float) -> None:
        for sid in [s for s, sess in self._sessions.items() if now - sess.last_used > self.ttl_s]:
            self._drop(sid)

    def create(self) -> Session:
        with self._lock:
            now = time.monotonic()
            self._expire(now)
            while len(self._sessions) >= self.max_sessions:
                self._drop(next(iter(self._sessions)))
            session = Session(id=secrets.token_urlsafe(16), last_used=now)
            self._sessions[session.id] = session
            return session

    def get(self, sid) -> Session:
        if not isinstance(sid, str) or not sid:
            raise AppError('no session given: reload the page')
        with self._lock:
            now = time.monotonic()
            self._expire(now)
            session = self._sessions.get(sid)
            if session is None:
                raise AppError('this session expired or is unknown (the server restarted or too many users): reload '
                               'the page', 404)
            session.last_used = now
            self._sessions.move_to_end(sid)
            return session

    def __len__(self) -> int:
        return len(self._sessions)
