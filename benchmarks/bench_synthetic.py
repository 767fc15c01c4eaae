"""Training and evaluation speed on synthetic click logs of a chosen catalogue size, to show how speed
scales with the number of items (e.g. 40k to 2M) without needing such a data set.

    python benchmarks/bench_synthetic.py [--items 40000 2000000] [--events 0] [--epochs 2] [--loss xe_logq]
                                         [--eval_backends numba jax] [--fused default|yes|no]
                                         [--backend numba|jax|python] [--chunk K]

Data: sessions of geometric length (at least 2, mean ~4.5), items drawn with Zipf-like popularity
(p(rank r) ~ 1/r^zipf); every item of the catalogue occurs at least once, so the model really has
--items items. --events 0 (default) means 3 x items, at least 300k. A test set of 20k events is drawn
the same way, with the same items popular. Prints one table row per size: training mb/s and events/s
(median of the epochs after the first; the first includes compilation), evaluation events/s (full
catalogue, warm compiled function, data loaded) per backend, the seconds it took to generate the data,
and Recall@20 on the test set (a sanity check only: the sessions carry no sequence to learn, so it
reflects learned popularity; with --events near --items the forced once-each occurrences leave the
training set nearly uniform, and it is ~0). Training runs on --backend (Numba by default; JAX trains in
chunks of --chunk minibatches); evaluation on every backend listed whose package is installed.
"""
import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_cpu import CONFIGS, machine_line, use_fused  # noqa: E402  (sets one BLAS/Numba thread, the repo path)

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402


def synthetic_sessions(n_items, n_events, zipf=1.0, mean_length=4.5, seed=0, cover_all=True, first_session=0,
                       popularity_seed=0):
    """A DataFrame (SessionId, ItemId, Time) with about n_events events; vectorised, seconds for millions.

    seed draws the sessions; popularity_seed decides which item ID has which popularity rank, so a training
    and a test set drawn with different seeds but the same popularity_seed share their popular items."""
    rng = np.random.default_rng(seed)
    p = 1.0 / (mean_length - 1)                           # length = 1 + geometric(p): mean 1 + 1/p
    lengths = 1 + rng.geometric(p, size=int(n_events / mean_length * 1.2) + 10)
    lengths = lengths[:np.searchsorted(np.cumsum(lengths), n_events) + 1]
    total = int(lengths.sum())
    weights = 1.0 / np.arange(1, n_items + 1) ** zipf
    cdf = np.cumsum(weights) / weights.sum()
    items = np.minimum(np.searchsorted(cdf, rng.random(total)), n_items - 1)
    if cover_all:                                         # every item at least once, at random positions
        if total < n_items:
            raise ValueError(f'{total} events cannot cover {n_items} items: ask for more events')
        items[rng.choice(total, n_items, replace=False)] = np.arange(n_items)
    items = np.random.default_rng(popularity_seed).permutation(n_items)[items]   # popularity not tied to the ID
    sessions = np.repeat(np.arange(first_session, first_session + len(lengths)), lengths)
    starts = np.repeat(np.cumsum(lengths) - lengths, lengths)
    time_in_session = np.arange(total) - starts
    return pd.DataFrame({'SessionId': sessions, 'ItemId': items, 'Time': sessions * 1000 + time_in_session})


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--items', type=int, nargs='+', default=[40000])
    p.add_argument('--events', type=int, default=0)
    p.add_argument('--epochs', type=int, default=2)
    p.add_argument('--loss', choices=list(CONFIGS), default='xe_logq')
    p.add_argument('--batch_size', type=int, default=32)
    p.add_argument('--n_sample', type=int, default=2048)
    p.add_argument('--layers', type=int, default=100)
    p.add_argument('--eval_backends', nargs='+', default=['numba', 'jax'], choices=['numba', 'jax', 'python'])
    p.add_argument('--fused', choices=['default', 'yes', 'no'], default='default')
    p.add_argument('--backend', choices=['numba', 'jax', 'python'], default='numba', help='training backend')
    p.add_argument('--chunk', type=int, default=None, help="minibatches per compiled training call (default: the backend's)")
    args = p.parse_args()
    import _devices
    from gru4rec import GRU4Rec
    import evaluation
    _devices.check_backend(args.backend)
    use_fused(args.fused, args.backend)
    backends = []
    for b in args.eval_backends:
        try:
            _devices.check_backend(b)
            backends.append(b)
        except ValueError as e:
            print(f'skipping evaluation on {b}: {e}')
    print(machine_line(loss=args.loss, batch=args.batch_size, n_sample=args.n_sample, layers=args.layers,
                       fused=args.fused, train_backend=args.backend, chunk=args.chunk))
    rows = []
    for n_items in args.items:
        t0 = time.time()
        n_events = args.events or max(3 * n_items, 300000)
        train = synthetic_sessions(n_items, n_events, seed=1)
        test = synthetic_sessions(n_items, 20000, seed=2, cover_all=False, first_session=10 ** 9)
        gen_s = time.time() - t0
        m = GRU4Rec(layers=[args.layers], batch_size=args.batch_size, n_sample=args.n_sample, n_epochs=args.epochs,
                    backend=args.backend, **CONFIGS[args.loss])
        m.fit(train, chunk=args.chunk)
        later = m.epoch_stats_[1:] or m.epoch_stats_
        mbs = statistics.median(e['steps'] / e['seconds'] for e in later)
        eps = statistics.median(e['events'] / e['seconds'] for e in later)
        path = os.path.join(os.environ.get('TMPDIR', '/tmp'), f'bench_synthetic_{os.getpid()}.gru4rec')
        m.savemodel(path)
        evals, recall = {}, float('nan')   # Recall@20: the backends agree within 1e-4 (tested)
        for b in backends:
            mb = GRU4Rec.loadmodel(path, backend=b)
            evaluation.evaluate_gpu(mb, test, cut_off=[20], batch_size=512)      # compile / warm up
            t = time.time()
            (recall,), _, details = evaluation.evaluate_gpu(mb, test, cut_off=[20], batch_size=512, return_details=True)
            evals[b] = details['events'] / (time.time() - t)
        os.remove(path)
        rows.append((n_items, len(train), gen_s, mbs, eps, evals, recall))
    # Recall@20 only shows that training learned something (at least the shared popularity): the sessions
    # have no sequential structure to learn.
    print(f'\n| items | train events | data s | mb/s | events/s | ' + ' | '.join(f'eval ev/s ({b})' for b in backends)
          + ' | Recall@20 |')
    print('|---|---|---|---|---|' + '---|' * len(backends) + '---|')
    for n_items, n_ev, gen_s, mbs, eps, evals, recall in rows:
        print(f'| {n_items:,} | {n_ev:,} | {gen_s:.1f} | {mbs:.1f} | {eps:.0f} | '
              + ' | '.join(f'{evals[b]:,.0f}' for b in backends) + f' | {recall:.4f} |')


if __name__ == '__main__':
    main()
