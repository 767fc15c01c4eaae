"""`gru4rec serve`: the REAL server in a subprocess on a free port of 127.0.0.1 (--port 0; the port is read from
its first line), spoken to over HTTP with the standard library. No mocks, no other address."""
import json
import os
import signal
import subprocess
import sys
import threading
import time
import http.client

import numpy as np
import pandas as pd
import pytest

pytest.importorskip('fastapi')
pytest.importorskip('uvicorn')

from gru4rec import GRU4Rec
from recommend import LiveSessions, recommend

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope='module')
def model_file(tmp_path_factory):
    rng = np.random.RandomState(0)
    rows = [(s, f'i{rng.randint(40)}', 1000 * s + t) for s in range(100) for t in range(rng.randint(2, 7))]
    m = GRU4Rec(layers=[8], n_epochs=1, batch_size=8, n_sample=16, loss='cross-entropy', final_act='softmax', backend='python')
    m.fit(pd.DataFrame(rows, columns=['SessionId', 'ItemId', 'Time']))
    path = tmp_path_factory.mktemp('serve') / 'model.gru4rec'
    m.savemodel(path)
    return path


class Server:
    def __init__(self, model_file, *flags, env=None):
        cmd = [sys.executable, os.path.join(ROOT, 'run.py'), 'serve', str(model_file), '--port', '0', '--backend', 'python',
               *map(str, flags)]
        e = dict(os.environ, **(env or {}))
        e.pop('PYTENSOR_FLAGS', None)
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=e)
        self.first = self.proc.stdout.readline()
        if 'Serving' not in self.first:
            self.proc.kill()
            raise RuntimeError(self.first + self.proc.stderr.read())
        self.port = int(self.first.split('http://127.0.0.1:')[1].split()[0])

    def call(self, method, path, body=None, raw=None, headers=None, timeout=60):
        conn = http.client.HTTPConnection('127.0.0.1', self.port, timeout=timeout)
        data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
        h = {'Content-Type': 'application/json'} if data is not None else {}
        h.update(headers or {})
        conn.request(method, path, body=data, headers=h)
        r = conn.getresponse()
        text = r.read()
        conn.close()
        try:
            return r.status, json.loads(text)
        except ValueError:
            return r.status, text.decode(errors='replace')

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture(scope='module')
def server(model_file):
    s = Server(model_file, '--batch_window_ms', 20, '--capacity', 3, '--max_k', 30, '--max_items', 50, '--max_body', 4000)
    yield s
    s.stop()


@pytest.fixture(scope='module')
def model(model_file):
    return GRU4Rec.loadmodel(model_file, backend='python')


def test_binds_to_loopback_and_serves_every_endpoint(server, model):
    assert 'http://127.0.0.1:' in server.first
    assert server.call('GET', '/health') == (200, {'status': 'ok'})
    code, meta = server.call('GET', '/model')
    assert code == 200 and meta['model']['n_items'] == model.n_items and meta['settings']['capacity'] == 3
    code, spec = server.call('GET', '/openapi.json')
    assert code == 200 and {'/sessions/{session}/clicks', '/sessions/{session}', '/recommend', '/health', '/model'} <= set(spec['paths'])
    # the error answers as the server sends them ({"error": ...}), and k's limit in the schema
    answers = spec['paths']['/sessions/{session}/clicks']['post']['responses']
    assert {'400', '413', '415', '422', '503'} <= set(answers)
    error_schema = answers['422']['content']['application/json']['schema']['$ref'].rsplit('/', 1)[1]
    assert set(spec['components']['schemas'][error_schema]['properties']) == {'error'}
    assert spec['components']['schemas']['Click']['properties']['k']['maximum'] == meta['settings']['max_k']
    code, page = server.call('GET', '/docs')
    assert code == 200 and 'swagger' in page.lower()
    clicks = ['i3', 'i17', 'nope', 'i5']
    for n, item in enumerate(clicks):
        code, res = server.call('POST', '/sessions/web1/clicks', {'item': item, 'k': 5})
        assert code == 200, res
    want = recommend(model, clicks, k=5)
    assert res['items'] == want.items and np.allclose(res['scores'], want.scores, rtol=1e-5)
    assert res['skipped'] == [] and res['clicks'] == 3 and res['session'] == 'web1'
    code, res = server.call('POST', '/sessions/web1/clicks', {'item': 'unknown-item', 'k': 5})
    assert code == 200 and res['skipped'] == ['unknown-item'] and res['items'] == want.items   # policy: skipped
    code, stateless = server.call('POST', '/recommend', {'items': clicks, 'k': 5})
    assert code == 200 and stateless['items'] == want.items and stateless['skipped'] == ['nope']
    code, res = server.call('POST', '/recommend', {'items': ['i1', 'i2'], 'k': 3, 'exclude_seen': True,
                                                   'candidates': ['i1', 'i2', 'i3', 'i4', 'i5']})
    assert code == 200 and len(res['items']) == 3 and set(res['items']) <= {'i3', 'i4', 'i5'}
    assert server.call('DELETE', '/sessions/web1') == (200, {'session': 'web1', 'ended': True})
    code, res = server.call('DELETE', '/sessions/web1')
    assert code == 404 and 'error' in res
    code, res = server.call('POST', '/sessions/web1/clicks', {'item': 'i3', 'k': 5})
    assert res['new_session'] and res['items'] == recommend(model, ['i3'], k=5).items


BAD = [
    ('POST', '/sessions/a/clicks', {'k': 5}, None, 422),                        # no item
    ('POST', '/sessions/a/clicks', {'item': 'i1', 'k': 0}, None, 422),
    ('POST', '/sessions/a/clicks', {'item': 'i1', 'k': 31}, None, 422),         # over --max_k
    ('POST', '/sessions/a/clicks', {'item': 'i1', 'k': 'ten'}, None, 422),
    ('POST', '/sessions/a/clicks', {'item': ['i1']}, None, 422),
    ('POST', '/sessions/a/clicks', {'item': True}, None, 422),                  # not item 1
    ('POST', '/sessions/a/clicks', {'item': 'i1', 'k': '5'}, None, 422),        # a string is not k=5
    ('POST', '/sessions/a/clicks', {'item': 'i1', 'k': 5.0}, None, 422),
    ('POST', '/sessions/a/clicks', {'item': 'i1', 'exclude_seen': 'yes'}, None, 422),
    ('POST', '/recommend', {'items': ['i1', False]}, None, 422),
    ('POST', '/sessions/a/clicks', {'item': 'i1', 'colour': 'red'}, None, 422),  # unknown field
    ('POST', '/sessions/a/clicks', {'item': 'i1', 'candidates': ['nope']}, None, 400),
    ('POST', '/sessions/a/clicks', None, b'{"item": ', 422),                     # broken JSON
    ('POST', '/sessions/a/clicks', None, b'[1, 2]', 422),
    ('POST', '/sessions/a/clicks', None, b'{"item": NaN}', 422),               # (json.loads reads NaN)
    ('POST', '/sessions/' + 'x' * 300 + '/clicks', {'item': 'i1'}, None, 422),  # session ID too long
    ('POST', '/sessions/a/clicks', None, json.dumps({'item': 'i1', 'candidates': ['i1'] * 2000}).encode(), 413),
    ('POST', '/recommend', {'items': ['i1'] * 51}, None, 422),                 # over --max_items
    ('POST', '/recommend', {'items': 'i1'}, None, 422),
    ('POST', '/recommend', None, b'{"items": ["i1"]}', 415, {'Content-Type': 'text/plain'}),   # not declared JSON
    ('POST', '/sessions/a/clicks', None, b'item=i1', 415, {'Content-Type': 'application/x-www-form-urlencoded'}),
    ('POST', '/recommend', {'items': ['i1'], 'candidates': []}, None, 400),
    ('GET', '/sessions/a/clicks', None, None, 405),
    ('GET', '/nowhere', None, None, 404),
    ('DELETE', '/sessions/never-seen', None, None, 404),
]


@pytest.mark.parametrize('case', BAD, ids=[f'{i}-{b[4]}' for i, b in enumerate(BAD)])
def test_bad_requests_are_json_4xx(server, case):
    method, path, body, raw, code, *headers = case     # (headers: instead of Content-Type: application/json)
    got, res = server.call(method, path, body, raw, headers=headers[0] if headers else None)
    assert got == code, res
    assert isinstance(res, dict) and isinstance(res.get('error'), str) and res['error']
    assert server.call('GET', '/health')[0] == 200        # and the server is still up


def test_concurrent_clicks_are_micro_batched_and_correct(server, model):
    code, before = server.call('GET', '/model')
    sessions = {f'c{n}': [f'i{(7 * n + j) % 40}' for j in range(3)] for n in range(16)}
    results = {}

    def client(s, items):
        results[s] = [server.call('POST', f'/sessions/{s}/clicks', {'item': it, 'k': 4}) for it in items]

    threads = [threading.Thread(target=client, args=kv) for kv in sessions.items()]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    code, after = server.call('GET', '/model')
    clicks = after['batched_clicks'] - before['batched_clicks']
    batches = after['batches'] - before['batches']
    assert clicks == 48 and batches < clicks / 2, (batches, clicks)     # many clicks per GRU step
    assert after['store']['sessions'] <= 3 and after['store']['evicted'] >= 13
    # --capacity 3: a session may have been evicted between its clicks; it then restarted from that click
    # (new_session), and its results are those of the clicks since then
    for s, items in sessions.items():
        start = 0
        for n, (code, res) in enumerate(results[s]):
            assert code == 200
            if res['new_session']:
                start = n
            want = recommend(model, items[start:n + 1], k=4)
            assert res['items'] == want.items and np.allclose(res['scores'], want.scores, rtol=1e-5)
            assert res['clicks'] == n + 1 - start


def test_sigterm_lets_requests_in_flight_finish(model_file, model):
    s = Server(model_file, '--batch_window_ms', 1500, '--always_wait')     # a click waits 1.5 s in the batcher
    out = {}

    def slow_click():
        out['res'] = s.call('POST', '/sessions/z/clicks', {'item': 'i2', 'k': 3})

    t = threading.Thread(target=slow_click)
    t.start()
    time.sleep(0.5)
    assert 'res' not in out          # still waiting in the batcher
    s.proc.send_signal(signal.SIGTERM)
    t.join(30)
    code, res = out['res']
    assert code == 200 and res['items'] == recommend(model, ['i2'], k=3).items
    assert s.proc.wait(30) == 0
    assert s.proc.stdout.read().splitlines()[-1] == 'Stopped (SIGTERM); 1 session was live.'
    with pytest.raises(OSError):
        s.call('GET', '/health', timeout=5)


def test_command_line_errors(model_file, tmp_path):
    def serve(*args, env=None):
        e = dict(os.environ, **(env or {}))
        return subprocess.run([sys.executable, os.path.join(ROOT, 'run.py'), 'serve', *map(str, args), '--backend', 'python'],
                              capture_output=True, text=True, timeout=300, env=e)
    for args, message in [((tmp_path / 'none.gru4rec',), 'does not exist'),
                          ((model_file, '--port', 70000), '--port must be'),
                          ((model_file, '--max_batch', 0), '--max_batch must be'),
                          ((tmp_path,), 'does not exist')]:
        r = serve(*args)
        assert r.returncode == 2 and r.stderr.count('\n') == 1 and r.stderr.startswith('ERROR. ') and message in r.stderr, r.stderr
    fake = tmp_path / 'fake'
    fake.mkdir()
    (fake / 'fastapi.py').write_text('raise ImportError("no fastapi here")\n')
    r = serve(model_file, env={'PYTHONPATH': str(fake)})
    assert r.returncode == 2 and r.stderr.startswith('ERROR. gru4rec serve needs fastapi: pip install'), r.stderr
    s = Server(model_file)
    try:    # a busy port
        r = serve(model_file, '--port', s.port)
        assert r.returncode == 2 and 'Cannot listen on 127.0.0.1' in r.stderr, r.stderr
    finally:
        s.stop()


def test_fast_clicks_answers_valid_clicks_and_passes_on_everything_else():
    """serve.FastClicks in-process: a valid click goes to the batcher and is answered with JSONResponse's bytes;
    every body or path it does not accept reaches the FastAPI app (here a recorder) with the same body."""
    import asyncio
    from fastapi.responses import JSONResponse
    import serve
    from recommend import GRU4RecError, Recommendations

    submitted, passed = [], []

    async def inner(scope, receive, send):
        passed.append((scope['path'], (await receive())['body']))
        await serve.send_json(send, 422, {'error': 'from FastAPI'})

    def submit(click):
        submitted.append(click)
        fut = asyncio.get_running_loop().create_future()
        if click['item'] == 'bad':
            fut.set_exception(GRU4RecError('None of the candidate items is known to the model'))
        else:
            fut.set_result(Recommendations(session=click['session'], items=['é', 2], scores=[0.5, 0.25], clicks=1))
        return fut

    app = serve.FastClicks(inner, submit, serve.Settings(max_k=30, max_items=3, max_session_id=5), GRU4RecError)

    def call(path, body, ctype=b'application/json'):
        sent, chunks = [], [{'type': 'http.request', 'body': body[:3], 'more_body': True},
                            {'type': 'http.request', 'body': body[3:], 'more_body': False}]

        async def receive():
            return chunks.pop(0) if chunks else {'type': 'http.disconnect'}

        async def send(msg):
            sent.append(msg)
        scope = {'type': 'http', 'method': 'POST', 'path': path, 'headers': [(b'content-type', ctype)] if ctype else []}
        asyncio.run(app(scope, receive, send))
        return sent[0]['status'], sent[1]['body']

    status, body = call('/sessions/ab/clicks', b'{"item": 7, "k": 3, "exclude_seen": true, "candidates": ["x", 1]}')
    want = Recommendations(session='ab', items=['é', 2], scores=[0.5, 0.25], clicks=1).to_dict()
    assert (status, body) == (200, JSONResponse(want).body) and not passed
    assert submitted[-1] == {'item': 7, 'k': 3, 'exclude_seen': True, 'candidates': ['x', 1], 'session': 'ab'}
    assert call('/sessions/ab/clicks', b'{"item": "bad"}') == (400, b'{"error":"None of the candidate items is known to the model"}')
    n = len(submitted)
    bad = [('/sessions/ab/clicks', b'{"item": true}'), ('/sessions/ab/clicks', b'{"item": 1, "k": 31}'),
           ('/sessions/ab/clicks', b'{"item": 1, "k": 0}'), ('/sessions/ab/clicks', b'{"item": 1, "k": 2.0}'),
           ('/sessions/ab/clicks', b'{"item": 1, "exclude_seen": 1}'), ('/sessions/ab/clicks', b'{"item": 1, "x": 1}'),
           ('/sessions/ab/clicks', b'{"item": 1, "candidates": [1, 2, 3, 4]}'), ('/sessions/ab/clicks', b'{"item": [1]}'),
           ('/sessions/ab/clicks', b'{"item": 1, "candidates": [false]}'), ('/sessions/ab/clicks', b'{"item": 1e400}'),
           ('/sessions/ab/clicks', b'{"item": NaN}'), ('/sessions/ab/clicks', b'{"item": 99999999999999999999}'),
           ('/sessions/ab/clicks', b'{"k": 1}'), ('/sessions/ab/clicks', b'[1]'), ('/sessions/ab/clicks', b'{"item": '),
           ('/sessions/abcdef/clicks', b'{"item": 1}'), ('/sessions//clicks', b'{"item": 1}'),
           ('/sessions/a/b/clicks', b'{"item": 1}')]
    for path, body in bad:
        assert call(path, body) == (422, b'{"error":"from FastAPI"}') and passed[-1] == (path, body), body
    assert call('/sessions/ab/clicks', b'{"item": 1}', ctype=b'text/plain')[0] == 422
    assert call('/sessions/ab/clicks', b'{"item": 1}', ctype=None)[0] == 422
    assert len(submitted) == n and len(passed) == len(bad) + 2
