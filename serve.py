"""`gru4rec serve MODEL [--host 127.0.0.1] [--port 8000]`: an HTTP service for live sessions (FastAPI + uvicorn;
pip install ".[serve]"). OpenAPI at /openapi.json, interactive docs at /docs.

  POST   /sessions/{session}/clicks   {"item": ID, "k": 20, "exclude_seen": false, "candidates": [...]}
                                      -> the session's top-k after this click (one GRU step)
  DELETE /sessions/{session}          end a session (forget its state)
  POST   /recommend                   {"items": [...], "k": 20, ...} -> top-k after these clicks (stateless)
  GET    /health                      liveness; GET /model: model metadata, settings and store counters

Concurrent clicks are micro-batched: the clicks that arrive within --batch_window_ms of the first one (at
most --max_batch) run as one compiled GRU step, in one model thread; --no_batching runs one step per
click. Unknown item IDs follow recommend.py's policy (skipped, listed under "skipped"). Memory is bounded:
at most --capacity live sessions (least recently used evicted; --idle_timeout), request bodies of at most
--max_body bytes, lists of at most --max_items IDs, k <= --max_k, at most --max_pending queued clicks
(503 beyond). Bad requests get a JSON {"error": ...} with a 4xx code. SIGTERM / Ctrl-C: no new
connections; requests in flight finish (up to --graceful_timeout s), then the process prints one line and
exits with code 0 (a signal during start-up: one line, exit code 130 or 143).
Binds to 127.0.0.1 unless --host says otherwise.
"""
import asyncio
import concurrent.futures
import gc
import importlib
import json
import os
import sys
import time

if __package__:
    from . import _interrupts, cli
else:
    import _interrupts, cli  # noqa: E401

InputError = cli.InputError


class Settings:
    """Service settings (the command-line flags)."""

    def __init__(self, batch_window_ms=2.0, max_batch=64, batching=True, capacity=100000, idle_timeout=3600.0,
                 max_k=1000, max_items=1000, max_body=1 << 16, max_pending=10000, max_session_id=256, always_wait=False):
        self.batch_window_ms, self.max_batch, self.batching = float(batch_window_ms), int(max_batch), bool(batching)
        self.capacity, self.idle_timeout, self.max_k, self.max_items = int(capacity), idle_timeout, int(max_k), int(max_items)
        self.max_body, self.max_pending, self.max_session_id = int(max_body), int(max_pending), int(max_session_id)
        self.always_wait = bool(always_wait)

    def as_dict(self):
        return dict(vars(self))


# ---------------------------------------------------------------------------------------------
# micro-batching
# ---------------------------------------------------------------------------------------------

class MicroBatcher:
    """Collects clicks from concurrent requests and runs them as one LiveSessions.click_many call (one GRU
    step) in the single model thread. A batch takes the clicks already waiting (those that arrived while the
    previous step ran) and, if the previous step had more than one click, those arriving within `window`
    seconds of its first click, up to max_batch."""

    def __init__(self, store, executor, window_s, max_batch, max_pending, always_wait=False):
        self.store, self.executor, self.window, self.max_batch = store, executor, window_s, max(1, max_batch)
        self.always_wait = always_wait
        self.queue = asyncio.Queue(maxsize=max_pending)
        self.task = None
        self.batches = self.clicks = 0
        self._last_size = 1

    def start(self):
        self.task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self):
        if self.task is not None:
            await self.queue.put(None)
            await self.task

    def submit(self, click):
        """click: dict(session, item, k, exclude_seen, candidates). Returns a future of Recommendations;
        raises asyncio.QueueFull when max_pending clicks wait."""
        fut = asyncio.get_running_loop().create_future()
        self.queue.put_nowait((click, fut))
        return fut

    async def _run(self):
        loop = asyncio.get_running_loop()
        stopping = False
        while not stopping:
            first = await self.queue.get()
            if first is None:
                break
            batch = [first]
            # wait for more clicks only under load (the last step had company): a lone client pays no window;
            # one timer per batch, then take what arrived (a wait per click cost the server core per click)
            if (self._last_size > 1 or self.always_wait) and self.queue.qsize() < self.max_batch - 1:
                await asyncio.sleep(self.window)
            while len(batch) < self.max_batch and not self.queue.empty():
                entry = self.queue.get_nowait()
                if entry is None:
                    stopping = True
                    break
                batch.append(entry)
            self._last_size = len(batch)
            await self._step(loop, batch)

    async def _step(self, loop, batch):
        clicks = [c for c, _ in batch]
        try:
            results = await loop.run_in_executor(self.executor, self.store.click_many, clicks)
        except Exception:   # one bad click (e.g. no known candidate) must not fail the others: one by one
            results = []
            for c in clicks:
                try:
                    results.append((await loop.run_in_executor(self.executor, self.store.click_many, [c]))[0])
                except Exception as e:
                    results.append(e)
        self.batches += 1
        self.clicks += len(batch)
        for (_, fut), res in zip(batch, results):
            if fut.done():
                continue
            if isinstance(res, Exception):
                fut.set_exception(res)
            else:
                fut.set_result(res)


# ---------------------------------------------------------------------------------------------
# the app
# ---------------------------------------------------------------------------------------------

def create_app(model, settings=None):
    """The FastAPI application serving `model` (a trained or loaded GRU4Rec)."""
    from contextlib import asynccontextmanager
    from typing import List, Optional, Union

    from fastapi import FastAPI, Path, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse
    from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr
    from starlette.exceptions import HTTPException

    rec = cli.sibling('recommend')
    s = settings or Settings()
    store = rec.LiveSessions(model, capacity=s.capacity, idle_timeout=s.idle_timeout)
    adapter = store.adapter
    executor = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix='gru4rec-model')
    # compile now, not at the first click: the one-row step and the batched steps' fast path (Numba kernels)
    executor.submit(lambda: adapter.ranked_step([0, 0], adapter.zero_state(2))[0].top_k([0, 1], 1)).result()
    executor.submit(adapter.step, [0], adapter.zero_state(1)).result()
    started = time.time()
    state = {}

    @asynccontextmanager
    async def lifespan(app):
        batcher = MicroBatcher(store, executor, s.batch_window_ms / 1000 if s.batching else 0.0,
                               s.max_batch if s.batching else 1, s.max_pending, s.always_wait)
        batcher.start()
        state['batcher'] = batcher
        try:
            yield
        finally:   # uvicorn runs this after the requests in flight have finished
            await batcher.stop()
            executor.shutdown(wait=True)

    # strict types: JSON true is not item 1 and "5" is not k=5 (pydantic's lax mode would convert both)
    ItemId = Union[StrictInt, StrictStr]

    class Click(BaseModel):
        model_config = ConfigDict(extra='forbid')
        item: ItemId = Field(description='the clicked item ID')
        k: StrictInt = Field(20, ge=1, le=s.max_k, description='number of recommendations')
        exclude_seen: StrictBool = Field(False, description="leave out the session's own clicked items")
        candidates: Optional[List[ItemId]] = Field(None, description='recommend only from these item IDs')

    class Clicks(BaseModel):
        model_config = ConfigDict(extra='forbid')
        items: List[ItemId] = Field(description='the clicks of a session so far, oldest first')
        k: StrictInt = Field(20, ge=1, le=s.max_k, description='number of recommendations')
        exclude_seen: StrictBool = False
        candidates: Optional[List[ItemId]] = None

    class Recs(BaseModel):
        session: Optional[str] = None
        items: List[ItemId] = Field(description='recommended item IDs, best first')
        scores: List[float] = Field(description="the model's scores of the items (as in the evaluation)")
        skipped: List[ItemId] = Field(description='clicks on unknown items, skipped (the state is unchanged)')
        new_session: bool = Field(False, description='this click started the session from a zero state (new, '
                                  'ended, evicted or expired before)')
        clicks: int = Field(description="the session's known clicks")

    class Error(BaseModel):
        error: str = Field(description='what was wrong with the request')

    def errors(*codes):   # the error answers a route can give, for the OpenAPI document
        why = {400: 'the model cannot answer (e.g. no candidate is a known item); body not UTF-8',
               404: 'no such session', 413: 'request body over --max_body',
               415: 'the body is not declared as JSON (Content-Type: application/json)',
               422: 'invalid request: a missing, extra or wrongly typed field, k or a list over its limit',
               503: 'too many clicks waiting (--max_pending); retry later'}
        return {c: {'model': Error, 'description': why[c]} for c in codes}

    app = FastAPI(title='GRU4Rec live recommendations', version='1',
                  description=__doc__.split('\n\n')[1] if __doc__ else None, lifespan=lifespan)
    # added last = outermost: the body limit applies to the fast clicks path too
    app.add_middleware(FastClicks, submit=lambda click: state['batcher'].submit(click), settings=s,
                       model_error=rec.GRU4RecError)
    app.add_middleware(BodyLimit, limit=s.max_body)
    app.state.sessions = store

    def error(code, message):
        return JSONResponse(status_code=code, content={'error': message})

    @app.exception_handler(RequestValidationError)
    async def invalid(request, exc):
        ctype = request.headers.get('content-type', '')
        if request.method == 'POST' and ctype.split(';')[0].strip().lower() != 'application/json':
            return error(415, f'The body must be JSON with Content-Type: application/json (got '
                              f'{ctype or "no Content-Type"})')
        errs = exc.errors()
        parts = ['/'.join(str(x) for x in e.get('loc', ())) + ': ' + str(e.get('msg', '')) for e in errs[:5]]
        return error(422, 'Invalid request: ' + '; '.join(parts))

    @app.exception_handler(HTTPException)
    async def http_error(request, exc):
        return error(exc.status_code, str(exc.detail))

    @app.exception_handler(rec.GRU4RecError)
    async def model_error(request, exc):
        return error(400, str(exc))

    def check(lists):   # (k's limit is in the models: the OpenAPI document shows it)
        for name, v in lists:
            if v is not None and len(v) > s.max_items:
                raise HTTPException(422, f'{name} may list at most {s.max_items} item IDs')

    # (FastClicks answers the valid requests of this route first; this handler gets the others, and documents it)
    @app.post('/sessions/{session}/clicks', response_model=Recs, summary='Add a click to a session; get its top-k',
              responses=errors(400, 413, 415, 422, 503))
    async def click(body: Click, session: str = Path(min_length=1, max_length=s.max_session_id)):
        check([('candidates', body.candidates)])
        try:
            fut = state['batcher'].submit({'session': session, 'item': body.item, 'k': body.k,
                                           'exclude_seen': body.exclude_seen, 'candidates': body.candidates})
        except asyncio.QueueFull:
            raise HTTPException(503, 'Too many clicks waiting; retry later') from None
        return JSONResponse((await fut).to_dict())   # a Response: FastAPI skips re-validating the output

    @app.delete('/sessions/{session}', summary='End a session (forget its state)', responses=errors(404, 422))
    async def end(session: str = Path(min_length=1, max_length=s.max_session_id)):
        ended = await asyncio.get_running_loop().run_in_executor(executor, store.end, session)
        if not ended:
            raise HTTPException(404, f'No live session {session!r} (never started, ended, evicted or expired)')
        return {'session': session, 'ended': True}

    @app.post('/recommend', response_model=Recs, summary='Top-k after a list of clicks (stateless)',
              responses=errors(400, 413, 415, 422))
    async def recommend(body: Clicks):
        check([('items', body.items), ('candidates', body.candidates)])
        res = await asyncio.get_running_loop().run_in_executor(
            executor, lambda: rec.recommend(model, body.items, k=body.k, exclude_seen=body.exclude_seen,
                                            candidates=body.candidates))
        return JSONResponse(res.to_dict())

    @app.get('/health', summary='Liveness')
    async def health():
        return {'status': 'ok'}

    @app.get('/model', summary='Model metadata, settings and counters')
    async def meta():
        b = state.get('batcher')
        return {'model': adapter.metadata(), 'settings': s.as_dict(), 'store': store.stats(),
                'batches': b.batches if b else 0, 'batched_clicks': b.clicks if b else 0,
                'uptime_s': round(time.time() - started, 3)}

    return app


def json_body(content):
    """Starlette's JSONResponse encoding (the same bytes as the FastAPI routes send)."""
    return json.dumps(content, ensure_ascii=False, allow_nan=False, indent=None, separators=(',', ':')).encode('utf-8')


async def send_json(send, status, content):
    body = json_body(content)
    await send({'type': 'http.response.start', 'status': status,
                'headers': [(b'content-length', str(len(body)).encode()), (b'content-type', b'application/json')]})
    await send({'type': 'http.response.body', 'body': body})


class FastClicks:
    """ASGI middleware: the hot endpoint POST /sessions/{session}/clicks without FastAPI's per-request work
    (routing, dependency and pydantic validation, response building: ~0.3 ms of the one server core per
    click). It answers only requests that are valid for the FastAPI route by the same strict rules (a JSON
    object with `item` a string or integer, `k` an integer in 1..max_k, `exclude_seen` a boolean, `candidates`
    null or a list of at most max_items string/integer IDs, no other keys; a session ID of 1..max_session_id
    characters; Content-Type application/json), with the same response bytes and errors (400 for a
    GRU4RecError, 503 when the queue is full). Anything else goes on to FastAPI with the body it read, so
    every bad request gets the route's own JSON 4xx."""
    KEYS = frozenset(('item', 'k', 'exclude_seen', 'candidates'))

    def __init__(self, app, submit, settings, model_error):
        self.app, self.submit, self.s, self.model_error = app, submit, settings, model_error

    async def __call__(self, scope, receive, send):
        path = scope.get('path', '')
        if scope['type'] != 'http' or scope['method'] != 'POST' or not path.startswith('/sessions/') \
                or not path.endswith('/clicks'):
            return await self.app(scope, receive, send)
        session = path[len('/sessions/'):-len('/clicks')]
        body, more = b'', True
        while more:
            msg = await receive()
            if msg['type'] != 'http.request':   # the client went away
                return
            body += msg.get('body', b'')
            more = msg.get('more_body', False)
        click = None
        if 0 < len(session) <= self.s.max_session_id and '/' not in session and self._json_type(scope):
            click = self.parse(body)
        if click is None:
            return await self.app(scope, _replay(body, receive), send)
        click['session'] = session
        try:
            fut = self.submit(click)
        except asyncio.QueueFull:
            return await send_json(send, 503, {'error': 'Too many clicks waiting; retry later'})
        try:
            res = await fut
        except self.model_error as e:
            return await send_json(send, 400, {'error': str(e)})
        await send_json(send, 200, res.to_dict())

    @staticmethod
    def _json_type(scope):
        for name, value in scope['headers']:
            if name == b'content-type':
                return value.lower() == b'application/json'
        return False

    def parse(self, body):
        """The click of a valid body (dict: item, k, exclude_seen, candidates), else None."""
        try:
            d = json.loads(body)
        except ValueError:
            return None
        if type(d) is not dict or 'item' not in d or not self.KEYS.issuperset(d):
            return None
        item, k, excl, cand = d['item'], d.get('k', 20), d.get('exclude_seen', False), d.get('candidates')
        ok = (_plain_id(item) and type(k) is int and 1 <= k <= self.s.max_k and type(excl) is bool
              and (cand is None or type(cand) is list and len(cand) <= self.s.max_items and all(map(_plain_id, cand))))
        return {'item': item, 'k': k, 'exclude_seen': excl, 'candidates': cand} if ok else None


def _plain_id(v):
    # a string or a 64-bit integer (not a bool: JSON true is not item 1); bigger integers are left to pydantic
    return type(v) is str or type(v) is int and -(1 << 63) <= v < (1 << 63)


def _replay(body, receive):
    """A receive() that gives the body read already, then passes on to the connection's."""
    sent = False

    async def replay():
        nonlocal sent
        if sent:
            return await receive()
        sent = True
        return {'type': 'http.request', 'body': body, 'more_body': False}
    return replay


class _TooLarge(Exception):
    pass


class BodyLimit:
    """ASGI middleware: 413 for a request body over `limit` bytes (by Content-Length, or counted as it arrives)."""

    def __init__(self, app, limit):
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send):
        if scope['type'] != 'http':
            return await self.app(scope, receive, send)
        length = dict(scope.get('headers') or []).get(b'content-length')
        if length is not None and (not length.isdigit() or int(length) > self.limit):
            return await self._reject(send)
        total, started = 0, False

        async def counted():
            nonlocal total
            msg = await receive()
            if msg['type'] == 'http.request':
                total += len(msg.get('body', b''))
                if total > self.limit:
                    raise _TooLarge()
            return msg

        async def tracked(msg):
            nonlocal started
            if msg['type'] == 'http.response.start':
                started = True
            await send(msg)
        try:
            await self.app(scope, counted, tracked)
        except _TooLarge:
            if not started:
                await self._reject(send)

    async def _reject(self, send):
        body = json.dumps({'error': f'Request body too large (limit {self.limit} bytes)'}).encode()
        await send({'type': 'http.response.start', 'status': 413,
                    'headers': [(b'content-type', b'application/json'), (b'content-length', str(len(body)).encode()),
                                (b'connection', b'close')]})
        await send({'type': 'http.response.body', 'body': body})


# ---------------------------------------------------------------------------------------------
# command line
# ---------------------------------------------------------------------------------------------

def build_parser():
    p = cli.Parser(prog='gru4rec serve', description='Serve live-session recommendations over HTTP.')
    p.add_argument('model', metavar='MODEL', help='a model saved with -s / savemodel')
    p.add_argument('--host', default='127.0.0.1', help='address to bind (default: 127.0.0.1, this machine only)')
    p.add_argument('--port', type=int, default=8000, help='port (default: 8000; 0: any free port)')
    p.add_argument('--batch_window_ms', type=float, default=2.0, help='micro-batching window in ms (default: 2)')
    p.add_argument('--max_batch', type=int, default=64, help='most clicks per GRU step (default: 64)')
    p.add_argument('--always_wait', action='store_true',
                   help='wait the batching window for a lone click too (default: only when the last step had company)')
    p.add_argument('--no_batching', action='store_true', help='one GRU step per click (no micro-batching)')
    p.add_argument('--capacity', type=int, default=100000, help='most live sessions held (default: 100000)')
    p.add_argument('--idle_timeout', type=float, default=3600.0, help='seconds before an idle session is dropped (default: 3600)')
    p.add_argument('--max_k', type=int, default=1000, help='largest k accepted (default: 1000)')
    p.add_argument('--max_items', type=int, default=1000, help='longest item list accepted (default: 1000)')
    p.add_argument('--max_body', type=int, default=1 << 16, help='largest request body in bytes (default: 65536)')
    p.add_argument('--max_pending', type=int, default=10000, help='most clicks waiting for a step (default: 10000; 503 beyond)')
    p.add_argument('--graceful_timeout', type=float, default=30.0, help='seconds to let requests finish on SIGTERM (default: 30)')
    p.add_argument('--http', default='auto', choices=['auto', 'httptools', 'h11'],
                   help="HTTP parser (default: auto = httptools if installed, as with the [serve] extra, else h11)")
    p.add_argument('--log_level', default='warning', choices=['critical', 'error', 'warning', 'info', 'debug'])
    p.add_argument('-d', '--device', default=None, help='cpu or cuda[:N] (default: from the flags file, else cpu)')
    p.add_argument('--backend', choices=['numba', 'jax', 'python'], default=None, help='numba (CPU), jax (GPU or CPU), python')
    return p


def main(argv):
    return _interrupts.run_main(lambda: _main(argv), InputError, cli.report_error,
                                lambda stop: f'Interrupted ({stop.name}) while starting; nothing was served.')


def _main(argv):
    args = build_parser().parse_args(argv)
    missing = []
    for name in ('fastapi', 'uvicorn'):
        try:
            importlib.import_module(name)
        except ImportError:
            missing.append(name)
    if missing:
        raise InputError(f'gru4rec serve needs {" and ".join(missing)}: pip install "gru4rec-pytensor[serve]" '
                         '(from a checkout: pip install ".[serve]")')
    for name in ('max_batch', 'capacity', 'max_k', 'max_items', 'max_body', 'max_pending'):
        if getattr(args, name) < 1:
            raise InputError(f'--{name} must be a positive integer')
    if not 0 <= args.port <= 65535:
        raise InputError(f'--port must be in 0..65535, got {args.port}')
    if args.batch_window_ms < 0 or args.idle_timeout <= 0 or args.graceful_timeout < 0:
        raise InputError('--batch_window_ms and --graceful_timeout must be >= 0, --idle_timeout > 0')
    if not os.path.isfile(args.model):
        raise InputError(f'The model file does not exist: {args.model}')
    own, flags = cli.resolve_config(args.device, args.backend)
    own['model_device'] = cli.apply_config(own, flags)
    mod = cli.sibling('gru4rec')
    try:
        model = mod.GRU4Rec.loadmodel(args.model, backend=own['backend'], device=own['model_device'])
        cli.check_device(model, own, mod.GRU4RecError)
        settings = Settings(batch_window_ms=args.batch_window_ms, max_batch=args.max_batch, batching=not args.no_batching,
                            capacity=args.capacity, idle_timeout=args.idle_timeout, max_k=args.max_k,
                            max_items=args.max_items, max_body=args.max_body, max_pending=args.max_pending,
                            always_wait=args.always_wait)
        app = create_app(model, settings)
    except mod.GRU4RecError as e:
        raise InputError(str(e)) from None
    import socket
    import uvicorn
    try:   # bind here, so that a busy port is one ERROR line and --port 0 can report the port it got
        family = socket.AF_INET6 if ':' in args.host else socket.AF_INET
        # proto=IPPROTO_TCP: asyncio sets TCP_NODELAY only on sockets that say so (else Nagle + delayed ACK
        # add 40 ms to every keep-alive response written in two parts)
        sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((args.host, args.port))
        sock.listen(2048)   # connections wait in the backlog until uvicorn serves them
    except OSError as e:
        raise InputError(f'Cannot listen on {args.host}:{args.port}: {e.strerror or e}') from None
    host, port = sock.getsockname()[:2]
    serving = (f'Serving {args.model} ({model.n_items} items) on http://{host}:{port} (micro-batching '
               f'{"off" if args.no_batching else f"{args.batch_window_ms:g} ms / {args.max_batch}"}); '
               f'docs at /docs, OpenAPI at /openapi.json')

    class Server(uvicorn.Server):
        """Announces itself once uvicorn's signal handlers are in place; a signal that came before them (only
        recorded, see below) stops it at once."""

        async def startup(self, sockets=None):
            await super().startup(sockets=sockets)
            if _interrupts.state.signum is not None:
                self.should_exit = True
            else:
                print(serving, flush=True)

    config = uvicorn.Config(app, http=args.http, log_level=args.log_level, timeout_graceful_shutdown=args.graceful_timeout,
                            access_log=False, lifespan='on')
    server = Server(config)
    # uvicorn handles SIGINT and SIGTERM while it serves (graceful shutdown; a second Ctrl-C forces it), then
    # passes them on to our handler, which only records them here: a stop by signal is the normal end of a
    # service (exit code 0, as service managers expect)
    # The model, PyTensor's graphs and the imported libraries are ~230k objects that live as long as the server:
    # a full garbage collection walked them in ~250 ms (43k-item model), a pause that every request then waits
    # out. Frozen, collections see only what serving creates.
    gc.collect()
    gc.freeze()
    with _interrupts.recorded() as got:
        server.run(sockets=[sock])
    import signal
    reason = signal.Signals(got[0]).name if got else 'shut down'
    n = len(app.state.sessions)
    print(f'Stopped ({reason}); {n} session{" was" if n == 1 else "s were"} live.', flush=True)
    return 0
