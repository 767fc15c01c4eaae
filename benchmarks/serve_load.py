"""Load test of `gru4rec serve` on loopback: latency p50/p95/p99 and requests/s, micro-batching on vs off.

    python benchmarks/serve_load.py [--model PATH] [--clients 1 16 64] [--rate 1000] [--duration 4]
                                    [--server_core 0] [--client_core 1] [--window_ms 2] [--max_batch 64]

For each mode (micro-batching on: --batch_window_ms/--max_batch; off: --no_batching, one GRU step per click)
a fresh server is started on 127.0.0.1 (a free port) pinned to --server_core, with one BLAS/Numba thread;
this load generator pins itself to --client_core. Scenarios, each bounded by --duration seconds and
--max_requests requests:
  closed loop, N clients: each client sends its next click when the previous answer arrived (keep-alive)
  open loop, --rate clicks/s: clicks are sent on schedule whatever the answers (latency counted from the
  scheduled send time, so queueing shows; at most --max_inflight connections)
Clicks: random sessions out of --sessions, items drawn Zipf-like from the catalogue, k=--k. Only 127.0.0.1 is
ever contacted; the servers are stopped with SIGTERM at the end (killed if they do not stop).
Model: the synthetic 43k-item, 100-unit model of live_common.synthetic_model.
"""
import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import live_common  # noqa: E402

import numpy as np  # noqa: E402

HOST = '127.0.0.1'   # loopback only


class Conn:
    """A minimal keep-alive HTTP/1.1 client connection (the load generator must cost little)."""

    @classmethod
    async def open(cls, port):
        self = cls()
        self.reader, self.writer = await asyncio.open_connection(HOST, port)
        return self

    async def request(self, method, path, body=b''):
        self.writer.write(f'{method} {path} HTTP/1.1\r\nHost: {HOST}\r\nContent-Type: application/json\r\n'
                          f'Content-Length: {len(body)}\r\n\r\n'.encode() + body)
        head = await self.reader.readuntil(b'\r\n\r\n')
        status = int(head[9:12])
        length = 0
        for line in head.split(b'\r\n'):
            if line[:15].lower() == b'content-length:':
                length = int(line[15:])
        data = await self.reader.readexactly(length)
        return status, data

    def close(self):
        self.writer.close()


class Clicks:
    def __init__(self, item_ids, n_sessions, k, seed=0):
        self.rng = np.random.default_rng(seed)
        ranks = np.arange(1, len(item_ids) + 1)
        self.p = (1 / ranks) / (1 / ranks).sum()
        self.items, self.n_sessions, self.k = item_ids, n_sessions, k
        self._buf = []

    def next(self):
        if not self._buf:
            items = self.rng.choice(self.items, size=4096, p=self.p)
            sess = self.rng.integers(self.n_sessions, size=4096)
            self._buf = [(f'/sessions/s{s}/clicks', json.dumps({'item': i.item(), 'k': self.k}).encode())
                         for s, i in zip(sess, items)]
        return self._buf.pop()


async def closed_loop(port, clicks, n_clients, duration, max_requests):
    lat, errors = [], 0
    conns = [await Conn.open(port) for _ in range(n_clients)]
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    deadline = t0 + duration

    async def client(n):
        nonlocal errors
        while loop.time() < deadline and len(lat) < max_requests:
            path, body = clicks.next()
            s = loop.time()
            try:
                status, _ = await conns[n].request('POST', path, body)
            except (ConnectionError, asyncio.IncompleteReadError):   # the server dropped the connection (load)
                errors += 1
                conns[n].close()
                conns[n] = await Conn.open(port)
                continue
            lat.append(loop.time() - s)
            errors += status != 200
    await asyncio.gather(*(client(n) for n in range(len(conns))))
    elapsed = loop.time() - t0
    for c in conns:
        c.close()
    return np.asarray(lat), elapsed, errors


async def open_loop(port, clicks, rate, duration, max_requests, max_inflight):
    loop = asyncio.get_running_loop()
    idle, lat, errors, dropped = [], [], 0, 0
    n_open = 0
    n = min(int(rate * duration), max_requests)
    tasks = []

    async def one(t_sched, path, body):
        nonlocal errors, n_open
        if idle:
            conn = idle.pop()
        else:
            n_open += 1
            conn = await Conn.open(port)
        status, _ = await conn.request('POST', path, body)
        lat.append(loop.time() - t_sched)
        errors += status != 200
        idle.append(conn)

    t0 = loop.time() + 0.05
    i = 0
    while i < n:
        now = loop.time()
        while i < n and t0 + i / rate <= now:
            if len(tasks) - len(lat) >= max_inflight:
                dropped += 1     # too many in flight: counted, not sent
            else:
                tasks.append(loop.create_task(one(t0 + i / rate, *clicks.next())))
            i += 1
        await asyncio.sleep(0.0005)
    await asyncio.gather(*tasks)
    elapsed = loop.time() - t0
    for c in idle:
        c.close()
    return np.asarray(lat), elapsed, errors, dropped


def start_server(model, flags, core, backend):
    env = dict(os.environ, OPENBLAS_NUM_THREADS='1', OMP_NUM_THREADS='1', MKL_NUM_THREADS='1', NUMBA_NUM_THREADS='1')
    env.pop('PYTENSOR_FLAGS', None)
    pin = (lambda: os.sched_setaffinity(0, {core})) if core is not None and hasattr(os, 'sched_setaffinity') else None
    proc = subprocess.Popen([sys.executable, os.path.join(live_common.ROOT, 'run.py'), 'serve', model, '--host', HOST,
                             '--port', '0', '--backend', backend, '--capacity', '100000', '--max_pending', '100000', *flags],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, preexec_fn=pin)
    first = proc.stdout.readline()
    if 'Serving' not in first:
        proc.kill()
        raise RuntimeError('server did not start: ' + first + proc.stderr.read())
    return proc, int(first.split(f'http://{HOST}:')[1].split()[0])


def stop_server(proc):
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


async def stats(port):
    c = await Conn.open(port)
    _, data = await c.request('GET', '/model')
    c.close()
    return json.loads(data)


def pct(lat, q):
    return f'{np.percentile(lat, q) * 1000:.1f}' if len(lat) else '-'


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--model', default=os.path.join(live_common.ROOT, 'benchmarks', '.cache', 'synthetic43k.gru4rec'))
    p.add_argument('--clients', type=int, nargs='+', default=[1, 16, 64])
    p.add_argument('--rate', type=float, default=1000.0)
    p.add_argument('--duration', type=float, default=4.0)
    p.add_argument('--max_requests', type=int, default=50000)
    p.add_argument('--max_inflight', type=int, default=256)
    p.add_argument('--sessions', type=int, default=20000)
    p.add_argument('--k', type=int, default=20)
    p.add_argument('--window_ms', type=float, default=2.0)
    p.add_argument('--max_batch', type=int, default=64)
    p.add_argument('--server_core', type=int, default=0)
    p.add_argument('--client_core', type=int, default=1)
    p.add_argument('--http', default='auto', choices=['auto', 'httptools', 'h11'], help="the server's HTTP parser")
    p.add_argument('--backend', default='numba', choices=['numba', 'jax', 'python'])
    args = p.parse_args(argv)
    if args.duration <= 0 or args.duration > 60:
        p.error('--duration must be in (0, 60] seconds')
    os.makedirs(os.path.dirname(os.path.abspath(args.model)), exist_ok=True)
    model_path, built = live_common.synthetic_model(args.model, backend=args.backend)
    pinned = hasattr(os, 'sched_setaffinity') and os.cpu_count() >= 2
    if pinned:
        os.sched_setaffinity(0, {args.client_core})
    from gru4rec import GRU4Rec
    ids = np.asarray(GRU4Rec.loadmodel(model_path, backend='python').itemidmap.index)
    clicks = Clicks(ids, args.sessions, args.k)
    modes = [('on', ['--batch_window_ms', str(args.window_ms), '--max_batch', str(args.max_batch)]), ('off', ['--no_batching'])]
    modes = [(name, flags + ['--http', args.http]) for name, flags in modes]
    rows = []
    for mode, flags in modes:
        proc, port = start_server(model_path, flags, args.server_core if pinned else None, args.backend)
        try:
            asyncio.run(closed_loop(port, clicks, 4, 1.0, 2000))    # warm-up
            for n in args.clients:
                s0 = asyncio.run(stats(port))
                lat, el, err = asyncio.run(closed_loop(port, clicks, n, args.duration, args.max_requests))
                s1 = asyncio.run(stats(port))
                per_step = (s1['batched_clicks'] - s0['batched_clicks']) / max(1, s1['batches'] - s0['batches'])
                rows.append((mode, f'closed, {n} clients', len(lat), f'{len(lat) / el:,.0f}', pct(lat, 50), pct(lat, 95),
                             pct(lat, 99), f'{per_step:.1f}', err))
            s0 = asyncio.run(stats(port))
            lat, el, err, dropped = asyncio.run(open_loop(port, clicks, args.rate, args.duration, args.max_requests,
                                                          args.max_inflight))
            s1 = asyncio.run(stats(port))
            per_step = (s1['batched_clicks'] - s0['batched_clicks']) / max(1, s1['batches'] - s0['batches'])
            rows.append((mode, f'open, {args.rate:g}/s', len(lat), f'{len(lat) / el:,.0f}', pct(lat, 50), pct(lat, 95),
                         pct(lat, 99), f'{per_step:.1f}', err + dropped))
        finally:
            stop_server(proc)
    print(live_common.machine_line())
    print(f'model: {len(ids)} items, 100 units, cross-entropy/softmax, backend={args.backend}; k={args.k}; '
          f'server pinned to core {args.server_core}, load generator to core {args.client_core}' if pinned else
          'not pinned (needs 2 cores and sched_setaffinity)')
    print(f'HTTP parser: {args.http}; micro-batching on: window {args.window_ms:g} ms, max batch {args.max_batch}; off: one GRU step per click; '
          f'{args.duration:g} s per scenario' + (f'; model built in {built:.0f} s' if built else ''))
    print(live_common.table(['batching', 'load', 'requests', 'req/s', 'p50 ms', 'p95 ms', 'p99 ms', 'clicks/step',
                             'errors'], rows))
    by = {(r[0], r[1]): float(r[3].replace(',', '')) for r in rows}
    top = f'closed, {max(args.clients)} clients'
    if ('on', top) in by and ('off', top) in by:
        print(f'throughput at {max(args.clients)} clients, batching on / off: {by[("on", top)] / by[("off", top)]:.2f}x')
    return 0


if __name__ == '__main__':
    sys.exit(main())
