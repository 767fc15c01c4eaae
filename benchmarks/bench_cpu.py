"""Training speed of the real `fit`: minibatches/s and events/s per loss, median over the epochs after the
first (the first includes compilation), and with --test the time of a full-catalogue evaluation pass.
Default protocol (issue: core CPU speed): the first 300k events of Diginetica (SR-GNN preprocessing, 43k
items), batch 32, n_sample 2048, one GRU layer of 100, one thread. On a GPU: --backend jax --events 0 (all).

    python benchmarks/bench_cpu.py PATH/TO/diginetica_train_full.tsv.gz [--events 300000] [--epochs 4]
        [--backend numba|jax] [--chunk K] [--test PATH/TO/diginetica_test.tsv.gz]
"""
import argparse
import os
import platform
import statistics
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import _devices  # noqa: E402

_devices.pin_threads(1)   # one BLAS/Numba thread unless the caller says otherwise: before numpy is imported

import time  # noqa: E402

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from gru4rec import GRU4Rec  # noqa: E402

CONFIGS = {
    'xe_logq': dict(loss='cross-entropy', final_act='softmax', constrained_embedding=True, logq=1.0,
                    sample_alpha=0.5, dropout_p_hidden=0.4, learning_rate=0.2, momentum=0.2),
    'bpr-max': dict(loss='bpr-max', final_act='elu-0.5', bpreg=1.0, sample_alpha=0.0, learning_rate=0.2, momentum=0.3),
}


def use_fused(choice, backend):
    """--fused yes|no overrides whether gpu_ops' fused sparse update is used on `backend`; default keeps it."""
    if choice != 'default':
        import custom_opt
        custom_opt.FUSE_BY_DEFAULT[backend] = choice == 'yes'


def machine_line(**settings):
    return (f'machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, Python '
            f'{platform.python_version()}, threads={os.environ["OPENBLAS_NUM_THREADS"]}, '
            + ', '.join(f'{k}={v}' for k, v in settings.items()))


def calibration(n_items, layers, k):
    """Median microseconds of the two kinds of work a step is made of, measured with plain numpy: a row
    gather from an item matrix (memory-bound) and the score GEMM. On a shared VM these vary over time."""
    rng = np.random.default_rng(0)
    W = rng.random((n_items, layers), dtype=np.float32)
    h = rng.random((32, layers), dtype=np.float32)
    idx = rng.integers(n_items, size=k)
    def med(f):
        times = []
        for _ in range(200):
            t = time.perf_counter()
            f()
            times.append(time.perf_counter() - t)
        return 1e6 * float(np.median(times))
    return med(lambda: W[idx]), med(lambda: h @ W[idx[:k]].T)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('path')
    p.add_argument('--events', type=int, default=300000, help='first N events of the file (0: all)')
    p.add_argument('--epochs', type=int, default=4)
    p.add_argument('--batch_size', type=int, default=32)
    p.add_argument('--n_sample', type=int, default=2048)
    p.add_argument('--layers', type=int, default=100)
    p.add_argument('--losses', nargs='+', default=list(CONFIGS), choices=list(CONFIGS))
    p.add_argument('--backend', default='numba')
    p.add_argument('--fused', choices=['default', 'yes', 'no'], default='default',
                   help="use gpu_ops' fused Ops (yes: sparse update; on Numba also its exp/sigmoid/row max), the plain graph (no), or the backend's default")
    p.add_argument('--chunk', type=int, default=None,
                   help="minibatches per compiled call (fit's chunk; default: the backend's default)")
    p.add_argument('--store_type', choices=['cpu', 'gpu'], default=None,
                   help="negatives from numpy's host store (cpu) or drawn inside the step (gpu); default: the backend's")
    p.add_argument('--test', help='test file: time evaluation over it (full catalogue, warm compiled function)')
    args = p.parse_args()
    use_fused(args.fused, args.backend)
    data = pd.read_csv(args.path, sep='\t', nrows=args.events or None)
    test = pd.read_csv(args.test, sep='\t') if args.test else None
    print(f'data: {args.path}: {len(data)} events, {data.ItemId.nunique()} items, {data.SessionId.nunique()} sessions')
    print(machine_line(backend=args.backend, fused=args.fused), f'chunk={args.chunk}, store_type={args.store_type}')
    gather_us, gemm_us = calibration(data.ItemId.nunique(), args.layers, args.batch_size + args.n_sample)
    print(f'calibration: gather of {args.batch_size + args.n_sample} rows {gather_us:.0f} us, '
          f'score GEMM {gemm_us:.0f} us (numpy)')
    rows = []
    for name in args.losses:
        m = GRU4Rec(layers=[args.layers], batch_size=args.batch_size, n_sample=args.n_sample, n_epochs=args.epochs,
                    backend=args.backend, **CONFIGS[name])
        m.fit(data, chunk=args.chunk, store_type=args.store_type)
        later = m.epoch_stats_[1:] or m.epoch_stats_
        mbs = statistics.median(e['steps'] / e['seconds'] for e in later)
        eps = statistics.median(e['events'] / e['seconds'] for e in later)
        rows.append((name, mbs, eps, m.epoch_stats_[0]['seconds']) + evaluation_time(m, test))
    print(f'\n| loss | mb/s (median, epochs 2..{args.epochs}) | events/s | epoch 1 s (incl. compile) '
          f'| evaluation s (warm) | evaluation events/s |')
    print('|---|---|---|---|---|---|')
    for name, mbs, eps, first, eval_s, eval_n in rows:
        ev = f'{eval_s:.3f} | {eval_n / eval_s:.0f}' if eval_s else '- | -'
        print(f'| {name} | {mbs:.1f} | {eps:.0f} | {first:.1f} | {ev} |')


def evaluation_time(model, test):
    """(seconds, events) of the fastest of three evaluation passes over `test` after a first (compiling)
    one: batch 512, Recall/MRR@20, standard ties. (None, 0) without a test set."""
    if test is None:
        return None, 0
    import evaluation
    test = test[test.ItemId.isin(model.itemidmap.index)]
    events = len(test) - test.SessionId.nunique()
    evaluation.evaluate_gpu(model, test, batch_size=512)
    times = []
    for _ in range(3):
        t = time.perf_counter()
        evaluation.evaluate_gpu(model, test, batch_size=512)
        times.append(time.perf_counter() - t)
    return min(times), events


if __name__ == '__main__':
    main()
