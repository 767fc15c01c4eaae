"""Replay a training trace of the original GRU4Rec in the original-RNG mode and compare it step by step.

    python benchmarks/compare_original_trace.py TRACE.json.gz --train TRAIN --test TEST
                                                [--backend numba] [--chunk K] [--strict]

A trace (a JSON file, optionally gzipped) records one run of the original program: its command line, the
checksums of its initial weights, the cost of every training step with the number of active sessions, the
epoch losses and Recall@20/MRR@20. This script trains the same configuration with rng='original' and the
CPU sample store on the given files (the ones the trace was made on) and prints, side by side:
  * the initial weights' checksums (first five values, sum, sum of squares) and the first item IDs;
  * the largest relative difference of the first 1, 20 and 200 step costs, and the first step whose cost
    differs by more than 1e-2 relative; whether the active-session counts of all steps agree;
  * every epoch loss, and the metrics.
It exits 1 when the acceptance fails: first five initial values equal, sum of squares within 1e-6 relative,
sum within 1e-4 absolute (a float32 sum near zero), step 1 within 1e-5 relative, steps 1-20 within 1e-3;
and, for traces of a non-chaotic configuration (anything but BPR-max, which with learning_rate 0.2 magnifies
float rounding until runs part ways) or with --strict, every epoch loss within 0.5% and the metrics within 1%.
Dropout is not reproducible (the original draws it from Theano's own generator): a trace with dropout is
refused.
"""
import argparse
import gzip
import json
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
import _devices  # noqa: E402

_devices.pin_threads(1)   # before numpy is imported

import numpy as np  # noqa: E402

import evaluation  # noqa: E402
from gru4rec import GRU4Rec  # noqa: E402
from cli import InputError, load_data, load_parameter_file, parse_parameter_string  # noqa: E402

KEYS = ('SessionId', 'ItemId', 'Time')


REQUIRED = ('name', 'description', 'run_py_args', 'initial_weights', 'item_ids_first10', 'step_cost', 'step_batch',
            'epoch_loss', 'recall20_mrr20')


def read_trace(path):
    """The trace as a dict; SystemExit with one line if it is missing, unreadable or lacks a field."""
    opener = gzip.open if path.endswith('.gz') else open
    try:
        with opener(path, 'rt') as f:
            trace = json.load(f)
    except (OSError, ValueError) as e:   # missing, not gzip, not JSON, not UTF-8
        raise SystemExit(f'ERROR. Cannot read the trace {path}: {e}') from None
    missing = [k for k in REQUIRED if not isinstance(trace, dict) or k not in trace]
    if missing:
        raise SystemExit(f'ERROR. {path} is not a trace of the original: no {", ".join(missing)}')
    return trace


def trace_config(trace, param_dir):
    """(parameters, sample store size, cut-off) of the trace's command line."""
    args, params, store, cut = trace['run_py_args'], {}, 10000000, 20
    if '--sample_store_on_cpu' not in args:
        raise SystemExit('This trace was not made with --sample_store_on_cpu: its negatives came from Theano\'s '
                         'generator and cannot be replayed')
    for flag, value in zip(args, args[1:]):
        if flag in ('-pf', '--parameter_file'):
            params = dict(load_parameter_file(os.path.join(param_dir, os.path.basename(value))))
        elif flag in ('-ps', '--parameter_string'):
            params = dict(parse_parameter_string(value))
        elif flag in ('-ss', '--sample_store_size'):
            store = int(value)
        elif flag in ('-m', '--measure'):
            cut = int(value)
    return params, store, cut


def rel(a, b):
    return abs(a - b) / max(abs(b), 1e-30)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('trace')
    p.add_argument('--train', required=True, help="the trace's training file (e.g. rec15_64_train_full.txt.gz)")
    p.add_argument('--test', required=True, help="the trace's test file (e.g. rec15_64_test.txt.gz)")
    p.add_argument('--param_dir', default=os.path.join(ROOT, 'param_samples'), help='where -pf files are looked up')
    p.add_argument('--backend', default='numba', choices=['numba', 'jax', 'python'])
    p.add_argument('--chunk', type=int, default=None, help='minibatches per compiled call (default: the backend\'s)')
    p.add_argument('--strict', action='store_true', help='check epoch losses and metrics for BPR-max traces too')
    args = p.parse_args(argv)

    trace = read_trace(args.trace)
    try:
        params, store, cut = trace_config(trace, args.param_dir)
    except InputError as e:
        raise SystemExit(f'ERROR. {e}') from None
    model = GRU4Rec(backend=args.backend, rng='original')
    model.set_params(**params)   # coerces parameter-string values ('0.0' -> 0.0), as the command line does
    if model.dropout_p_hidden > 0 or model.dropout_p_embed > 0:
        raise SystemExit("This trace uses dropout, whose masks came from Theano's generator: not replayable")
    try:
        train, _ = load_data(args.train, KEYS, 'training', quiet=True)
        test, _ = load_data(args.test, KEYS, 'test', quiet=True)
    except InputError as e:
        raise SystemExit(f'ERROR. {e}') from None
    failures = []

    def check(ok, what):
        if not ok:
            failures.append(what)
        return 'ok' if ok else 'FAIL'

    print(f'# {trace["name"]}: {trace["description"]}\n')
    # initial weights: a fit of no epochs leaves them as drawn (and compiles the graph the real fit reuses)
    init = GRU4Rec(**{**model.get_params(), 'n_epochs': 0})
    init.fit(train, sample_store=store, store_type='cpu', chunk=args.chunk)
    ids = [str(i) for i in init.itemidmap.index[:10]]
    print(f'\nfirst 10 item IDs equal: {check(ids == trace["item_ids_first10"], "item ID order")}')
    weights = init.get_weights()
    print('\n| weight | shape | first5 equal | sum (ours / original / abs diff) | sum_sq rel diff |')
    print('|---|---|---|---|---|')
    for name, ref in trace['initial_weights'].items():
        w = weights[name].astype(np.float64)
        if list(w.shape) != ref['shape']:
            print(f'| {name} | {list(w.shape)} vs {ref["shape"]} | {check(False, name + " shape")} | | |')
            continue
        first5 = np.array_equal(w.ravel()[:5].astype(np.float32), np.float32(ref['first5']))
        s = float(weights[name].sum(dtype=np.float32))
        ss = float((w ** 2).sum())
        print(f'| {name} | {ref["shape"]} | {check(first5, name + " first5")} | {s:.6g} / {ref["sum"]:.6g} / '
              f'{abs(s - ref["sum"]):.1e} {check(abs(s - ref["sum"]) <= 1e-4, name + " sum")} | '
              f'{rel(ss, ref["sum_sq"]):.1e} {check(rel(ss, ref["sum_sq"]) <= 1e-6, name + " sum_sq")} |')

    t0 = time.time()
    model.fit(train, sample_store=store, store_type='cpu', chunk=args.chunk, log_steps=True)
    train_s = time.time() - t0
    ours, theirs = model.step_costs_, np.asarray(trace['step_cost'], dtype=np.float64)
    n = min(len(ours), len(theirs))
    diff = np.abs(ours[:n] - theirs[:n]) / np.maximum(np.abs(theirs[:n]), 1e-30)
    print(f'\nsteps: {len(ours)} (original {len(theirs)}); training took {train_s:.0f} s')
    sizes = np.asarray(trace['step_batch'])
    same_sizes = len(model.step_sizes_) == len(sizes) and np.array_equal(model.step_sizes_, sizes)
    if not same_sizes:
        m = min(len(sizes), len(model.step_sizes_))
        first = np.flatnonzero(model.step_sizes_[:m] != sizes[:m])
        where = f'first at step {first[0] + 1}' if len(first) else f'lengths {len(model.step_sizes_)} vs {len(sizes)}'
        print(f'active sessions per step differ ({where}): the session order is not the original\'s')
    print(f'active sessions per step equal: {check(same_sizes, "active sessions per step")}')
    print('\n| steps | largest relative difference of the step cost | limit |')
    print('|---|---|---|')
    for k, limit in ((1, 1e-5), (20, 1e-3), (200, None)):
        d = float(diff[:k].max()) if n >= k else float('nan')
        verdict = f'{limit:g} {check(d <= limit, f"steps 1-{k}")}' if limit else 'reported'
        print(f'| 1-{k} | {d:.2e} | {verdict} |')
    away = np.flatnonzero(diff > 1e-2)
    print(f'first step differing by more than 1e-2 relative: {away[0] + 1 if len(away) else "none"} of {n}')

    strict = args.strict or model.loss != 'bpr-max'
    limit = 'checked' if strict else 'reported (chaotic configuration)'
    print(f'\n| epoch | loss (ours) | loss (original) | relative difference ({limit}, 0.5%) |')
    print('|---|---|---|---|')
    for e, ref in enumerate(trace['epoch_loss']):
        mine = model.epoch_stats_[e]['loss'] if e < len(model.epoch_stats_) else float('nan')
        verdict = f' {check(rel(mine, ref) <= 5e-3, f"epoch {e + 1} loss")}' if strict else ''
        print(f'| {e + 1} | {mine:.6f} | {ref:.6f} | {(mine - ref) / ref:+.2%}{verdict} |')
    (r,), (m,) = evaluation.evaluate_gpu(model, test, cut_off=[cut], batch_size=100)
    ref_r, ref_m = trace['recall20_mrr20']
    print(f'\n| metric | ours | original | relative difference ({limit}, 1%) |')
    print('|---|---|---|---|')
    for name, mine, ref in ((f'Recall@{cut}', r, ref_r), (f'MRR@{cut}', m, ref_m)):
        verdict = f' {check(rel(mine, ref) <= 1e-2, name)}' if strict else ''
        print(f'| {name} | {mine:.6f} | {ref:.6f} | {(mine - ref) / ref:+.2%}{verdict} |')
    print('\nRESULT: ' + ('PASS' if not failures else 'FAIL (' + '; '.join(failures) + ')'))
    return 1 if failures else 0


if __name__ == '__main__':
    sys.exit(main())
