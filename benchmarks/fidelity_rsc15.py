"""Fidelity check on the RSC15 1/64 split: train the parameter files on train_full, evaluate Recall@20 and
MRR@20 (standard ties) on test, for several seeds, and compare with reference numbers.

    python benchmarks/fidelity_rsc15.py [--data data/rsc15_64] [--seeds 42 7] [--configs NAME ...]
                                        [--extra grad_cap=1.0,...]

Reference: the author's official PyTorch port run on the same files (two runs each).
"""
import argparse
import os
import statistics
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, 'examples', 'rsc15'))

from run_rsc15 import read_split, run_config  # noqa: E402  (sets one BLAS/Numba thread)

REFERENCE = {  # parameter file: (Recall@20 runs, MRR@20 runs) of the official PyTorch port
    'rsc15_bpr-max_constrained': ((0.5063, 0.5020), (0.2353, 0.2314)),
    'rsc15_cross-entropy_logq': ((0.6194, 0.6204), (0.2873, 0.2894)),
    'rsc15_bpr-max': ((0.5631, 0.5654), (0.2563, 0.2566)),
}


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--data', default=os.path.join(ROOT, 'data', 'rsc15_64'))
    p.add_argument('--seeds', type=int, nargs='+', default=[42, 7])
    p.add_argument('--configs', nargs='+', default=list(REFERENCE), choices=list(REFERENCE))
    p.add_argument('--backend', default='numba')
    p.add_argument('--extra', default='', help='parameter string applied on top of the parameter files (diagnostics)')
    args = p.parse_args()
    train, test = read_split(args.data)
    rows = [(name, *run_config(name, train, test, args.seeds, 20, args.extra, args.backend)) for name in args.configs]
    print('\n| parameters | seeds | Recall@20 | MRR@20 | mean vs reference mean (R / M) |')
    print('|---|---|---|---|---|')
    for name, recalls, mrrs in rows:
        ref_r, ref_m = (statistics.mean(v) for v in REFERENCE[name])
        dr = statistics.mean(recalls) / ref_r - 1
        dm = statistics.mean(mrrs) / ref_m - 1
        print(f'| {name} | {" ".join(map(str, args.seeds))} | {", ".join(f"{v:.4f}" for v in recalls)} | '
              f'{", ".join(f"{v:.4f}" for v in mrrs)} | {dr:+.1%} / {dm:+.1%} |')


if __name__ == '__main__':
    main()
