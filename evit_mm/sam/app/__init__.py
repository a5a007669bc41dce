"""EfficientViT-SAM in the browser: ``python tools/sam_app.py`` / ``evit-sam-app`` (``pip install "evit_mm[app]"``).

- :mod:`.model`: :func:`load_sam_model`, the one place the app builds its model;
- :mod:`.images`: uploads -> RGB, with the limits and the messages the page shows;
- :mod:`.state`: sessions and the bounded embedding cache;
- :mod:`.service`: the request handlers (no HTTP);
- :mod:`.server`: the FastAPI routes, the static page (``static/``) and the command line.
- :mod:`.launch`: the app on a free local port, in its own process or a thread, once it serves (the browser
  test and ``tools/sam_app_bench.py``).

FastAPI and uvicorn are imported only by :mod:`.server`, so the rest works with the ``sam`` extra alone.
"""
from .images import AppError, Limits, decode_image
from .model import ModelInfo, load_sam_model
from .service import SAMPLES, SamAppService, mask_to_runs, runs_to_mask
from .state import EmbeddingCache, Session, SessionStore

__all__ = ['AppError', 'Limits', 'decode_image', 'ModelInfo', 'load_sam_model', 'SAMPLES', 'SamAppService',
           'mask_to_runs', 'runs_to_mask', 'EmbeddingCache', 'Session', 'SessionStore', 'main']


def main(argv=None) -> int:
    """The command line (``evit-sam-app``); see :func:`.server.main`."""
    try:
        from .server import main as _main
    except ImportError as e:
        import sys
        print(f'error: the app needs FastAPI and uvicorn ({e}): pip install "evit_mm[app]"', file=sys.stderr)
        return 2
    return _main(argv)
