"""Start the app on a free local port, wait until it serves, stop it: the one start-up of the browser test, the
HTTP tests and ``tools/sam_app_bench.py``.

- :func:`launched`: the app as its own process (``python -m evit_mm.sam.app``, any of its command-line options),
  for a browser to talk to as a user's would, with its own torch threads;
- :func:`serving`: a FastAPI app of this process (e.g. ``create_app(service)``) served by uvicorn in a thread.

Both are context managers yielding the base URL (``http://127.0.0.1:PORT``) once ``GET /api/info`` answers, and
raise :class:`AppStartError` (with the reason and, for a process, the end of its log) when the app stops or does
not answer within ``timeout`` seconds. On leaving, the app is stopped (a process is terminated, then killed if it
does not exit).
"""
from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from typing import Callable, Iterator, Optional, Sequence

__all__ = ['AppStartError', 'free_port', 'launched', 'serving']

#: the folder holding the ``evit_mm`` package: ``python -m evit_mm.sam.app`` runs from there, so it imports this copy
_PACKAGE_PARENT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))


class AppStartError(RuntimeError):
    """The app stopped, or did not answer, before it served."""


def free_port(host: str = '127.0.0.1') -> int:
    """A TCP port nobody listens on now (the OS's pick)."""
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _wait_until_serving(url: str, timeout: float, stopped: Callable[[], Optional[str]]) -> None:
    """Poll ``url/api/info`` until it answers; ``stopped()`` says why the app can no longer start (or None)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url + '/api/info', timeout=5):
                return
        except OSError:
            reason = stopped()
            if reason is None and time.monotonic() > deadline:
                reason = f'no answer from {url}/api/info within {timeout:g} s'
            if reason is not None:
                raise AppStartError(f'the app did not start: {reason}') from None
            time.sleep(0.2)


def _tail(path: str, chars: int = 3000) -> str:
    with open(path, errors='replace') as f:
        return f.read()[-chars:]


@contextlib.contextmanager
def launched(args: Sequence[str] = (), *, host: str = '127.0.0.1', timeout: float = 120.0,
             log_path: Optional[str] = None, env: Optional[dict] = None) -> Iterator[str]:
    """Run ``python -m evit_mm.sam.app --host HOST --port <free port> *args`` and yield its URL once it serves.

    Args:
        args: the app's other options (``['--model', 'efficientvit_sam_l0', '--threads', '2']``).
        timeout: seconds to wait for the first answer (loading the model counts).
        log_path: where the app's stdout and stderr go (kept); default a temporary file, removed afterwards.
        env: the process's environment (default this one's).
    """
    port = free_port(host)
    cmd = [sys.executable, '-m', 'evit_mm.sam.app', '--host', host, '--port', str(port), *map(str, args)]
    own_log = log_path is None
    if own_log:
        fd, log_path = tempfile.mkstemp(prefix='evit_sam_app_', suffix='.log')
        os.close(fd)
    url = f'http://{host}:{port}'
    with open(log_path, 'w') as log:
        proc = subprocess.Popen(cmd, cwd=_PACKAGE_PARENT, env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            def stopped():
                code = proc.poll()
                return None if code is None else f'it exited with code {code}'
            try:
                _wait_until_serving(url, timeout, stopped)
            except AppStartError as err:
                proc.kill()
                proc.wait()
                log.flush()
                raise AppStartError(f'{err} ({" ".join(cmd)}); its log ends:\n{_tail(log_path)}') from None
            yield url
        finally:
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(20)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
            if own_log:
                os.remove(log_path)


@contextlib.contextmanager
def serving(app, *, host: str = '127.0.0.1', timeout: float = 30.0, log_level: str = 'warning') -> Iterator[str]:
    """Serve the ASGI ``app`` (e.g. :func:`~.server.create_app` of a service) with uvicorn in a daemon thread of
    this process and yield its URL once it answers; the server is shut down on leaving."""
    import uvicorn
    port = free_port(host)
    server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level=log_level))
    ended = []

    def run():
        try:
            server.run()
        except SystemExit as exit_:  # uvicorn's way out when it cannot start (e.g. the port is taken)
            ended.append(f'uvicorn exited with code {exit_.code} (its log says why)')
        else:
            ended.append('uvicorn returned')

    thread = threading.Thread(target=run, name=f'evit-sam-app:{port}', daemon=True)
    thread.start()
    url = f'http://{host}:{port}'
    try:
        _wait_until_serving(url, timeout, lambda: None if thread.is_alive() else ended[0])
        yield url
    finally:
        server.should_exit = True
        thread.join(timeout)
