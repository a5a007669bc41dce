"""The HTTP side: a FastAPI app (:func:`create_app`) over :class:`~.service.SamAppService`, served by uvicorn
(:func:`main`, also ``python tools/sam_app.py`` and the ``evit-sam-app`` command).

Routes: ``GET /`` the page (``static/``), ``GET /api/info``, ``POST /api/session``, ``POST /api/image?session=..
&name=..`` (the file as the raw request body, read in chunks and refused past the size limit),
``POST /api/sample``, ``/api/prompt``, ``/api/undo``, ``/api/clear``, ``/api/everything`` (JSON bodies with
``session``), ``GET /api/image.jpg``, ``/api/mask.png``, ``/api/masks.json`` (``?session=..&index=..``).
Every error is JSON ``{"error": message}`` with a 4xx status; an unexpected exception is logged with its
traceback on the server and the page gets a one-line 500 message, never the trace.
"""
import argparse
import logging
import os
import sys
from typing import Any, Dict, Optional

from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles

from .images import AppError, Limits
from .service import SamAppService

__all__ = ['create_app', 'build_service', 'main', 'STATIC_DIR']

STATIC_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'static')
log = logging.getLogger('evit_mm.sam.app')


def create_app(service: SamAppService):
    """The FastAPI application serving the page and the API of ``service``. The handlers return
    ``JSONResponse`` (``json.dumps``) rather than dicts: FastAPI's ``jsonable_encoder`` walks every number of the
    masks' run lengths in Python, which costs more than the mask decoder on fragmented masks."""
    app = FastAPI(title='EfficientViT-SAM', docs_url=None, redoc_url=None, openapi_url=None)
    app.state.service = service
    app.mount('/static', StaticFiles(directory=STATIC_DIR), name='static')

    @app.exception_handler(AppError)
    async def _app_error(request, exc: AppError):
        return JSONResponse({'error': exc.message}, status_code=exc.status)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request, exc: RequestValidationError):
        parts = []
        for e in exc.errors():
            where = '.'.join(str(p) for p in e.get('loc', ()) if p not in ('body', 'query'))
            parts.append(f'{where}: {e.get("msg")}' if where else str(e.get('msg')))
        return JSONResponse({'error': 'bad request: ' + '; '.join(parts)}, status_code=422)

    @app.exception_handler(Exception)
    async def _unexpected(request, exc: Exception):
        log.exception('unexpected error in %s %s', request.method, request.url.path)
        return JSONResponse({'error': f'internal error ({type(exc).__name__}); the server log has the details'},
                            status_code=500)

    def body_session(body: Dict[str, Any]) -> str:
        if not isinstance(body, dict):
            raise AppError('the request body must be a JSON object', 422)
        return body.get('session')

    @app.get('/')
    def index():
        return FileResponse(os.path.join(STATIC_DIR, 'index.html'), headers={'Cache-Control': 'no-cache'})

    @app.get('/api/info')
    def info():
        return JSONResponse(service.describe())

    @app.post('/api/session')
    def new_session():
        return JSONResponse(service.new_session())

    @app.post('/api/image')
    async def upload(request: Request, session: str = '', name: str = 'the upload'):
        limit = service.limits.max_bytes
        declared = request.headers.get('content-length')
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise AppError(f'{name} is {int(declared) / 2 ** 20:.1f} MB; uploads are limited to '
                           f'{limit / 2 ** 20:.1f} MB', 413)
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise AppError(f'{name} is larger than {limit / 2 ** 20:.1f} MB, the upload limit', 413)
            chunks.append(chunk)
        return JSONResponse(await run_in_threadpool(service.set_image_bytes, session, b''.join(chunks), name[:200]))

    @app.post('/api/sample')
    def sample(body: Dict[str, Any]):
        return JSONResponse(service.set_sample(body_session(body), body.get('name')))

    @app.post('/api/prompt')
    def prompt(body: Dict[str, Any]):
        return JSONResponse(service.prompt(body_session(body), body))

    @app.post('/api/undo')
    def undo(body: Dict[str, Any]):
        return JSONResponse(service.undo(body_session(body)))

    @app.post('/api/clear')
    def clear(body: Dict[str, Any]):
        return JSONResponse(service.clear(body_session(body)))

    @app.post('/api/everything')
    def everything(body: Dict[str, Any]):
        return JSONResponse(service.everything(body_session(body)))

    @app.get('/api/image.jpg')
    def image(session: str = ''):
        return Response(service.image_jpeg(session), media_type='image/jpeg', headers={'Cache-Control': 'no-store'})

    @app.get('/api/mask.png')
    def mask_png(session: str = '', index: Optional[int] = None):
        return Response(service.mask_png(session, index), media_type='image/png',
                        headers={'Content-Disposition': 'attachment; filename="mask.png"'})

    @app.get('/api/masks.json')
    def masks_json(session: str = '', index: Optional[int] = None):
        return JSONResponse(service.masks_json(session, index),
                            headers={'Content-Disposition': 'attachment; filename="masks.json"'})

    return app


def build_service(args) -> SamAppService:
    """The service for parsed command-line ``args`` (see :func:`parse_args`)."""
    import torch
    from .model import load_sam_model
    if args.threads:
        torch.set_num_threads(args.threads)
    model, info = load_sam_model(args.model, args.checkpoint, pretrained=args.pretrained,
                                 encoder_size=args.encoder_size, seed=args.seed, device=args.device)
    limits = Limits(max_bytes=int(args.max_upload_mb * 2 ** 20), max_pixels=int(args.max_megapixels * 1e6))
    return SamAppService(model, info, limits, cache_items=args.cache_items,
                         cache_bytes=int(args.cache_mb * 2 ** 20), max_sessions=args.max_sessions,
                         points_per_side=args.points_per_side, pred_iou_thresh=args.pred_iou_thresh,
                         stability_score_thresh=args.stability_score_thresh)


def parse_args(argv=None):
    ap = argparse.ArgumentParser(
        prog='evit-sam-app', description='EfficientViT-SAM in the browser: click to segment, "segment everything", '
        'download masks. Serves on http://127.0.0.1:8000 by default.')
    ap.add_argument('--model', default='efficientvit_sam_l0',
                    help='efficientvit_sam_{l0,l1,l2,xl0,xl1} (or l0 ... xl1); default efficientvit_sam_l0')
    ap.add_argument('--checkpoint', help='official EfficientViT-SAM checkpoint (a path such as efficientvit_sam_l0.pt, '
                    'a URL or an evit:// name); without it or --pretrained the model has random weights, and the '
                    'page says so')
    ap.add_argument('--pretrained', action='store_true',
                    help='the published weights of --model (downloaded once into the cache; docs/model_zoo.md)')
    ap.add_argument('--host', default='127.0.0.1', help='address to listen on (0.0.0.0 exposes the app to the '
                    'network; default 127.0.0.1, this machine only)')
    ap.add_argument('--port', type=int, default=8000)
    ap.add_argument('--threads', type=int, default=0, help='torch CPU threads (default: torch\'s choice)')
    ap.add_argument('--device', default='cpu')
    ap.add_argument('--seed', type=int, default=0, help='seed of the random weights (without --checkpoint)')
    ap.add_argument('--encoder-size', type=int, default=None,
                    help='image encoder input size (default the model\'s: 512 for L, 1024 for XL; smaller is '
                    'faster and less accurate)')
    ap.add_argument('--max-upload-mb', type=float, default=25.0)
    ap.add_argument('--max-megapixels', type=float, default=20.0)
    ap.add_argument('--cache-items', type=int, default=16, help='embeddings kept (LRU)')
    ap.add_argument('--cache-mb', type=float, default=512.0, help='memory the kept embeddings may take (LRU)')
    ap.add_argument('--max-sessions', type=int, default=32, help='pages served at once (LRU beyond)')
    ap.add_argument('--points-per-side', type=int, default=8,
                    help='"segment everything" grid: points per side (default 8: 64 prompts; SAM uses 32)')
    ap.add_argument('--pred-iou-thresh', type=float, default=0.8)
    ap.add_argument('--stability-score-thresh', type=float, default=0.85)
    ap.add_argument('--log-level', default='info')
    return ap.parse_args(argv)


def main(argv=None) -> int:
    import uvicorn
    args = parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format='%(asctime)s %(name)s %(levelname)s: %(message)s')
    try:
        service = build_service(args)
    except (ValueError, OSError, RuntimeError) as e:
        print(f'error: {e}', file=sys.stderr)
        return 2
    info = service.info
    print(f'{info.title} ({info.weights}), encoder {info.encoder_size} px: http://{args.host}:{args.port}/',
          flush=True)
    uvicorn.run(create_app(service), host=args.host, port=args.port, log_level=args.log_level)
    return 0
