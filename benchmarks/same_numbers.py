"""Same numbers before and after a change: train three RSC15 configurations on the Numba and the JAX backend
and record every epoch loss and Recall@20/MRR@20, to compare two checkouts float for float.

    python benchmarks/same_numbers.py [--repo DIR] [--train TRAIN] [--test TEST] --out FILE.json
    python benchmarks/same_numbers.py --compare A.json B.json

The configurations are param_samples/rsc15_bpr-max.py, rsc15_bpr-max_constrained.py and
rsc15_cross-entropy_logq.py with n_epochs=2 and seed 42, trained on the bundled 1/64 split
(data/rsc15_64) and evaluated with evaluation.evaluate_gpu(cut_off=[20], batch_size=512). JAX runs on the
CPU when no GPU is visible. The code under test is imported from --repo only (default: the checkout this
script is in): each backend runs in a child process of this script with --repo first on sys.path, one BLAS
and Numba thread, and the output of training kept out of the JSON. The parameter files are read from this
script's checkout, so both runs train the same configurations.

--compare prints one table row per recorded number (and one for the first 100 step costs: identical, or
their largest relative difference) and exits 1 if any differs (exact float equality).
"""
import argparse
import json
import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = ('rsc15_bpr-max', 'rsc15_bpr-max_constrained', 'rsc15_cross-entropy_logq')
BACKENDS = ('numba', 'jax')
DATA = os.path.join(HERE, 'data', 'rsc15_64')
# The children's thread counts, set in their environment: this script imports nothing from the checkouts it
# compares (so not _devices.pin_threads, which older checkouts lack either)
ONE_THREAD = {var: '1' for var in ('OPENBLAS_NUM_THREADS', 'OMP_NUM_THREADS', 'MKL_NUM_THREADS', 'NUMBA_NUM_THREADS')}


def config_params(name):
    """The parameter file's gru4rec_params with n_epochs=2 and seed 42."""
    namespace = {}
    with open(os.path.join(HERE, 'param_samples', name + '.py')) as f:
        exec(f.read(), namespace)
    return dict(namespace['gru4rec_params'], n_epochs=2, seed=42)


def worker(repo, backend, train_path, test_path):
    """Runs in the child: train and evaluate every configuration on one backend; returns the records."""
    sys.path.insert(0, repo)
    import pandas as pd
    import evaluation
    from gru4rec import GRU4Rec
    for module in (evaluation, sys.modules['gru4rec']):   # the code under test, not an installed copy
        if not os.path.abspath(module.__file__).startswith(os.path.abspath(repo) + os.sep):
            raise SystemExit(f'{module.__name__} was imported from {module.__file__}, not from {repo}')
    train = pd.read_csv(train_path, sep='\t', dtype={'ItemId': str})
    test = pd.read_csv(test_path, sep='\t', dtype={'ItemId': str})
    records = {}
    for name in CONFIGS:
        t0 = time.time()
        model = GRU4Rec(backend=backend, **config_params(name)).fit(train, log_steps=True)
        (recall,), (mrr,) = evaluation.evaluate_gpu(model, test, cut_off=[20], batch_size=512)
        records[f'{name} / {backend}'] = {'epoch_losses': [e['loss'] for e in model.epoch_stats_],
                                          'recall@20': recall, 'mrr@20': mrr, 'seconds': time.time() - t0,
                                          'step_costs': [float(c) for c in model.step_costs_[:STEPS]]}
    return records


def run_backend(repo, backend, train_path, test_path):
    """One backend in a child process (its own imports, one thread); the records it prints last."""
    cmd = [sys.executable, os.path.abspath(__file__), '--worker', backend, '--repo', repo, '--train', train_path,
           '--test', test_path]
    env = dict(os.environ, **ONE_THREAD)
    env.pop('PYTENSOR_FLAGS', None)
    r = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if r.returncode != 0:
        sys.stderr.write(r.stdout[-3000:] + r.stderr[-3000:])
        raise SystemExit(f'the {backend} run failed (exit code {r.returncode})')
    return json.loads(r.stdout.strip().splitlines()[-1])


STEPS = 100   # the first step costs recorded and compared (relative difference)


def step_difference(ra, rb):
    """'identical', or the largest relative difference of the first STEPS step costs and the first step (1-based)
    that differs; None if a record has no step costs."""
    a, b = ra.get('step_costs'), rb.get('step_costs')
    if a is None or b is None or len(a) != len(b):
        return None
    rel = [abs(x - y) / abs(x) if x else abs(y) for x, y in zip(a, b)]
    if not any(rel):
        return 'identical'
    return f'max {max(rel):.1e} relative, first at step {next(i for i, r in enumerate(rel) if r) + 1}'


def numbers(record):
    """(label, value) of every compared number of one configuration's record (seconds are not compared)."""
    out = [(f'loss epoch {i + 1}', v) for i, v in enumerate(record['epoch_losses'])]
    return out + [('Recall@20', record['recall@20']), ('MRR@20', record['mrr@20'])]


def compare(path_a, path_b):
    """Print the table of both files' numbers; return 0 if all are equal, else 1."""
    with open(path_a) as f:
        a = json.load(f)
    with open(path_b) as f:
        b = json.load(f)
    print(f'A: {path_a} ({a["repo"]}, {a["commit"]})\nB: {path_b} ({b["repo"]}, {b["commit"]})\n')
    print('| configuration / backend | number | A | B | same |\n|---|---|---|---|---|')
    differ = 0
    for key in sorted(set(a['records']) | set(b['records'])):
        ra, rb = a['records'].get(key), b['records'].get(key)
        if ra is None or rb is None:
            print(f'| {key} | (missing in {"A" if ra is None else "B"}) | | | no |')
            differ += 1
            continue
        na, nb = numbers(ra), numbers(rb)
        if [n for n, _ in na] != [n for n, _ in nb]:
            print(f'| {key} | (different numbers of epochs) | | | no |')
            differ += 1
            continue
        for (label, va), (_, vb) in zip(na, nb):
            same = va == vb
            differ += not same
            print(f'| {key} | {label} | {va!r} | {vb!r} | {"yes" if same else "NO"} |')
        steps = step_difference(ra, rb)
        if steps is not None:
            differ += steps != 'identical'
            print(f'| {key} | step costs 1-{STEPS} | | {steps} | {"yes" if steps == "identical" else "NO"} |')
    print(f'\n{"All numbers are identical." if not differ else f"{differ} number(s) differ."}')
    return 1 if differ else 0


def commit_of(repo):
    r = subprocess.run(['git', '-C', repo, 'rev-parse', '--short', 'HEAD'], capture_output=True, text=True)
    dirty = subprocess.run(['git', '-C', repo, 'status', '--porcelain', '--untracked-files=no'], capture_output=True,
                           text=True).stdout.strip()
    return (r.stdout.strip() or 'unknown') + (' (uncommitted changes)' if dirty else '')


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--repo', default=HERE, help='checkout to import the code from (default: this one)')
    p.add_argument('--train', default=os.path.join(DATA, 'rec15_64_train_full.txt.gz'))
    p.add_argument('--test', default=os.path.join(DATA, 'rec15_64_test.txt.gz'))
    p.add_argument('--out', metavar='FILE.json', help='where to write the recorded numbers')
    p.add_argument('--compare', nargs=2, metavar=('A.json', 'B.json'), help='compare two recorded files')
    p.add_argument('--worker', choices=BACKENDS, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.compare:
        return compare(*args.compare)
    repo, train, test = (os.path.abspath(v) for v in (args.repo, args.train, args.test))
    if args.worker:
        records = worker(repo, args.worker, train, test)
        sys.stdout.flush()
        print('\n' + json.dumps(records))
        return 0
    if not args.out:
        p.error('--out is required (or --compare A.json B.json)')
    records = {}
    for backend in BACKENDS:
        print(f'Training {len(CONFIGS)} configurations on {backend} from {repo}', flush=True)
        records.update(run_backend(repo, backend, train, test))
    result = {'repo': repo, 'commit': commit_of(repo), 'train': train, 'test': test, 'records': records}
    with open(args.out, 'w') as f:
        json.dump(result, f, indent=1)
    for key, record in records.items():
        print(f'{key}: ' + ', '.join(f'{label} {value!r}' for label, value in numbers(record))
              + f' ({record["seconds"]:.0f} s)')
    return 0


if __name__ == '__main__':
    sys.exit(main())
