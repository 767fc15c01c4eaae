"""Train and evaluate the three published RSC15 configurations of GRU4Rec and print a results table.

    python examples/rsc15/run_rsc15.py [--data DIR] [--configs NAME ...] [--seeds 42 ...] [--cut_off 20]

DIR holds either the files written by examples/rsc15/preprocess.py (rsc15_train_full.txt, rsc15_test.txt;
the full data) or the bundled 1/64 split (rec15_64_train_full.txt.gz, rec15_64_test.txt.gz; the default,
data/rsc15_64). The configurations are the parameter files in param_samples/.
"""
import argparse
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)
import _devices  # noqa: E402

_devices.pin_threads(1)   # before numpy is imported

import pandas as pd  # noqa: E402

import evaluation  # noqa: E402
from gru4rec import GRU4Rec  # noqa: E402
from cli import load_parameter_file, parse_parameter_string  # noqa: E402

# Recall@20 / MRR@20 of the original on the full RSC15 data, as its example script reported them
PUBLISHED = {'rsc15_bpr-max': (0.7197, 0.3157), 'rsc15_bpr-max_constrained': (0.7261, 0.3124),
             'rsc15_cross-entropy': (0.7180, 0.3087)}
SPLITS = (('rsc15_train_full.txt', 'rsc15_test.txt'), ('rec15_64_train_full.txt.gz', 'rec15_64_test.txt.gz'))


def find_split(data_dir):
    """(train path, test path) of the first split found in data_dir."""
    for train, test in SPLITS:
        if os.path.isfile(os.path.join(data_dir, train)):
            return os.path.join(data_dir, train), os.path.join(data_dir, test)
    raise SystemExit(f'No RSC15 split in {data_dir}: expected one of {", ".join(t for t, _ in SPLITS)}')


def run_config(name, train, test, seeds, cut_off=20, extra='', backend='numba'):
    """Recall@cut_off and MRR@cut_off of param_samples/<name>.py for each seed (printing a line per run)."""
    params = load_parameter_file(os.path.join(ROOT, 'param_samples', name + '.py'))
    recalls, mrrs = [], []
    for seed in seeds:
        t0 = time.time()
        model = GRU4Rec(backend=backend, seed=seed, **params)
        if extra:
            model.set_params(**parse_parameter_string(extra))
        model.fit(train)
        (r,), (m,) = evaluation.evaluate_gpu(model, test, cut_off=[cut_off], batch_size=512)
        print(f'{name} seed={seed}: Recall@{cut_off} {r:.4f} MRR@{cut_off} {m:.4f} ({time.time() - t0:.0f}s)', flush=True)
        recalls.append(r)
        mrrs.append(m)
    return recalls, mrrs


def read_split(data_dir):
    train_path, test_path = find_split(data_dir)
    read = lambda path: pd.read_csv(path, sep='\t', dtype={'ItemId': str})
    return read(train_path), read(test_path)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--data', default=os.path.join(ROOT, 'data', 'rsc15_64'))
    p.add_argument('--configs', nargs='+', default=list(PUBLISHED), choices=list(PUBLISHED))
    p.add_argument('--seeds', type=int, nargs='+', default=[42])
    p.add_argument('--cut_off', '--cut-off', type=int, default=20)
    p.add_argument('--backend', default='numba')
    args = p.parse_args()
    train, test = read_split(args.data)
    rows = [(name, *run_config(name, train, test, args.seeds, args.cut_off, backend=args.backend)) for name in args.configs]
    c = args.cut_off
    print(f'\n| configuration | Recall@{c} | MRR@{c} | original, full RSC15 (R@20 / MRR@20) |')
    print('|---|---|---|---|')
    for name, recalls, mrrs in rows:
        print(f'| {name} | {", ".join(f"{v:.4f}" for v in recalls)} | {", ".join(f"{v:.4f}" for v in mrrs)} | '
              f'{PUBLISHED[name][0]:.4f} / {PUBLISHED[name][1]:.4f} |')


if __name__ == '__main__':
    main()
