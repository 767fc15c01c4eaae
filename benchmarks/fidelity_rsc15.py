"""Fidelity check on the RSC15 1/64 split: train the parameter files on train_full, evaluate Recall@20 and
MRR@20 (standard ties) on test, for several seeds, and compare with reference numbers.

    python benchmarks/fidelity_rsc15.py [--data data/rsc15_64] [--seeds 42 7] [--configs NAME ...]
                                        [--against original|port] [--extra grad_cap=1.0,...]

References (same files): 'original' -- the original Theano GRU4Rec, default seed and its default (GPU-type)
sample store, with the spread of Recall@20 and MRR@20 that other seeds and its CPU store gave (four runs per
BPR-max configuration; cross-entropy was stable across seeds); 'port' -- the author's official PyTorch port
(two runs each), which the switches reset_after=True,merge_repeated=True reproduce.
"""
import argparse
import os
import statistics
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, 'examples', 'rsc15'))

from run_rsc15 import read_split, run_config  # noqa: E402  (sets one BLAS/Numba thread)

REFERENCE = {
    'port': {  # parameter file: (Recall@20 runs, MRR@20 runs) of the official PyTorch port
        'rsc15_bpr-max_constrained': ((0.5063, 0.5020), (0.2353, 0.2314)),
        'rsc15_cross-entropy_logq': ((0.6194, 0.6204), (0.2873, 0.2894)),
        'rsc15_bpr-max': ((0.5631, 0.5654), (0.2563, 0.2566)),
    },
    'original': {  # the original, default seed and store: (Recall@20,), (MRR@20,)
        'rsc15_bpr-max_constrained': ((0.4434,), (0.2046,)),
        'rsc15_cross-entropy_logq': ((0.6199,), (0.2893,)),
        'rsc15_bpr-max': ((0.4492,), (0.2113,)),
    },
}
# the original's spread over seeds and store types: (Recall@20 min, max), (MRR@20 min, max)
ORIGINAL_SPREAD = {'rsc15_bpr-max_constrained': ((0.4044, 0.4434), (0.1877, 0.2046)),
                   'rsc15_bpr-max': ((0.4492, 0.5624), (0.2113, 0.2558))}


def outside(value, lo, hi):
    """Relative distance of value outside [lo, hi] (0 inside)."""
    return (value - hi) / hi if value > hi else (value - lo) / lo if value < lo else 0.0


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--data', default=os.path.join(ROOT, 'data', 'rsc15_64'))
    p.add_argument('--seeds', type=int, nargs='+', default=[42, 7])
    p.add_argument('--configs', nargs='+', default=list(REFERENCE['port']), choices=list(REFERENCE['port']))
    p.add_argument('--against', choices=list(REFERENCE), default='port')
    p.add_argument('--backend', default='numba')
    p.add_argument('--extra', default='', help='parameter string applied on top of the parameter files (diagnostics)')
    args = p.parse_args()
    train, test = read_split(args.data)
    rows = [(name, *run_config(name, train, test, args.seeds, 20, args.extra, args.backend)) for name in args.configs]
    ref = REFERENCE[args.against]
    spread = args.against == 'original'
    print(f'\nReference: {args.against}; parameters{" + " + args.extra if args.extra else ""}; backend {args.backend}')
    print('\n| parameters | seeds | Recall@20 | MRR@20 | mean | mean vs reference (R / M) |'
          + (' mean outside the original\'s spread (R / M) |' if spread else ''))
    print('|---|---|---|---|---|---|' + ('---|' if spread else ''))
    for name, recalls, mrrs in rows:
        mr, mm = statistics.mean(recalls), statistics.mean(mrrs)
        ref_r, ref_m = (statistics.mean(v) for v in ref[name])
        line = (f'| {name} | {" ".join(map(str, args.seeds))} | {", ".join(f"{v:.4f}" for v in recalls)} | '
                f'{", ".join(f"{v:.4f}" for v in mrrs)} | {mr:.4f} / {mm:.4f} | {mr / ref_r - 1:+.1%} / {mm / ref_m - 1:+.1%} |')
        if spread:
            (rlo, rhi), (mlo, mhi) = ORIGINAL_SPREAD.get(name, ((ref_r, ref_r), (ref_m, ref_m)))
            line += f' {outside(mr, rlo, rhi):+.1%} / {outside(mm, mlo, mhi):+.1%} |'
        print(line)


if __name__ == '__main__':
    main()
