"""Shared by serve_load.py and recommend_offline.py: the synthetic 43k-item, 100-unit model (trained one epoch
on generated sessions, cached as a model file) and the machine/date line of the printed tables."""
import datetime
import os
import platform
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
for var in ('OPENBLAS_NUM_THREADS', 'OMP_NUM_THREADS', 'MKL_NUM_THREADS', 'NUMBA_NUM_THREADS'):
    os.environ.setdefault(var, '1')   # one thread: the numbers are per core
sys.path.insert(0, ROOT)
sys.path.insert(0, HERE)


def cpu_model():
    try:
        with open('/proc/cpuinfo') as f:
            for line in f:
                if line.startswith('model name'):
                    return line.split(':', 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_line():
    return (f'machine: {cpu_model()}, {os.cpu_count()} cores, Python {platform.python_version()}, '
            f'{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC, one BLAS/Numba thread per process')


def synthetic_model(path, n_items=43000, units=100, n_events=150000, backend='numba'):
    """The model file at `path`, trained (1 epoch, cross-entropy + softmax, shared embedding) on generated
    sessions covering all n_items items if it does not exist yet. Returns (path, seconds spent)."""
    if os.path.exists(path):
        return path, 0.0
    from bench_synthetic import synthetic_sessions
    from gru4rec import GRU4Rec
    t0 = time.time()
    train = synthetic_sessions(n_items, n_events, seed=0)
    model = GRU4Rec(loss='cross-entropy', final_act='softmax', layers=[units], n_epochs=1, batch_size=64,
                    n_sample=512, constrained_embedding=True, learning_rate=0.1, backend=backend)
    model.fit(train)
    model.savemodel(path)
    return path, time.time() - t0


def test_sessions(n_items, n_events, seed=1):
    """Test sessions drawn like the training ones (same popular items)."""
    from bench_synthetic import synthetic_sessions
    return synthetic_sessions(n_items, n_events, seed=seed, cover_all=False)


def table(header, rows):
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
    line = lambda r: '| ' + ' | '.join(str(x).ljust(w) for x, w in zip(r, widths)) + ' |'
    return '\n'.join([line(header), '|' + '|'.join('-' * (w + 2) for w in widths) + '|'] + [line(r) for r in rows])
