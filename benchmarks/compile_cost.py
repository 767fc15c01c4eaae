"""What compiling the training step costs: cold and warm, after a new learning rate, over a 10-trial search.

    python benchmarks/compile_cost.py TRAIN [--events N] [--backend numba] [--old-repo DIR] [--out FILE.json]

Every number is the wall time of a fit of the quick-start configuration (param_samples/
rsc15_cross-entropy_logq.py, 1 epoch) on the first N events (default 3000) of TRAIN: at that size the fit is
almost all compiling, so it is the time to the first trained minibatches. Each measurement runs in a child
process with one BLAS/Numba thread and its own PyTensor cache folder (base_compiledir, which also holds
PyTensor's Numba cache):

* cold: an empty cache folder (a first run after installing); "of which compiling" is the part spent in
  PyTensor's rewriting and Numba's and LLVM's phases (compile_profile.PhaseClock), without reading the data
  and training, which issue 19's comparison with cbc96da is about;
* warm: the same configuration again in a new process on the cache the cold run left;
* new learning rate: learning_rate 0.2 -> 0.1 in a new process on that cache (before issue 19 every new value
  was a new graph, compiled from scratch); the same for batch_size 32 -> 48 and dropout_p_hidden 0.4 -> 0.3
  (on JAX XLA compiles each new batch size's shapes, and this row times it);
* 10 trials: ten fits in one process with other learning rates, momenta and logQ strengths (what a paropt
  study whose trials share the structure runs), on that cache; their sum, the first, and the number of
  compiles the process made (_training.compile_count);
* paropt: real paropt.py studies (1 epoch per trial, a space of learning rate, momentum and logQ, the same
  events as training and validation data, no final run), one of 1 trial and one of 10 trials, each on an empty
  cache folder; the compile time is the time spent in PyTensor's rewriting and Numba's/LLVM's phases
  (compile_profile.PhaseClock), which issue 19 wants within 1.2x of one trial's for the whole study;
* cold at --old-repo (e.g. a `git worktree add /tmp/cbc cbc96da` checkout): the same cold fit with that
  checkout's code, measured in the same run for a fair comparison; the ratios of the two are printed below
  the table.

Prints a table (seconds) and the machine; --out also writes the numbers as JSON.
"""
import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import live_common  # noqa: E402  (the CPU's name, as in the other benchmarks' tables)

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ONE_THREAD = {v: '1' for v in ('OPENBLAS_NUM_THREADS', 'OMP_NUM_THREADS', 'MKL_NUM_THREADS', 'NUMBA_NUM_THREADS')}
TRIALS = [dict(learning_rate=lr, momentum=mu, logq=lq) for lr, mu, lq in
          [(0.2, 0.2, 1.0), (0.1, 0.3, 1.0), (0.05, 0.1, 0.5), (0.3, 0.2, 0.8), (0.15, 0.4, 1.0),
           (0.2, 0.05, 0.3), (0.08, 0.2, 0.9), (0.25, 0.5, 0.6), (0.12, 0.3, 0.7), (0.18, 0.1, 0.4)]]


def quick_start_params():
    namespace = {}
    with open(os.path.join(HERE, 'param_samples', 'rsc15_cross-entropy_logq.py')) as f:
        exec(f.read(), namespace)
    return dict(namespace['gru4rec_params'], n_epochs=1)


def child(repo, train, events, backend, fits):
    """In the child process: the seconds of each fit (with repo's code) and of the compiling in it (PyTensor's
    rewriting and Numba's and LLVM's phases, compile_profile.PhaseClock), and the compile count if it has one."""
    sys.path.insert(0, repo)
    import compile_profile
    clock = compile_profile.PhaseClock()
    clock.install()
    import contextlib
    import io
    import pandas as pd
    from gru4rec import GRU4Rec
    data = pd.read_csv(train, sep='\t', dtype={'ItemId': str}, nrows=events)
    seconds, compiling = [], []
    for changes in fits:
        t0, c0 = time.time(), compile_seconds(clock)
        with contextlib.redirect_stdout(io.StringIO()):
            GRU4Rec(**dict(quick_start_params(), backend=backend, **changes)).fit(data)
        seconds.append(time.time() - t0)
        compiling.append(compile_seconds(clock) - c0)
    training = sys.modules.get('_training')
    return {'seconds': seconds, 'compiling': compiling,
            'compiles': training.compile_count() if hasattr(training, 'compile_count') else None}


def compile_seconds(clock):
    """Seconds the clock has counted in compiler phases so far."""
    clock.close()
    return sum(v for k, v in clock.seconds.items() if k != 'other')


SPACE = [dict(name='learning_rate', dtype='float', values=[0.05, 0.3]),
         dict(name='momentum', dtype='float', values=[0.0, 0.5]),
         dict(name='logq', dtype='float', values=[0.3, 1.0])]


def paropt_child(repo, data, trials, backend, tmp):
    """In the child process: a paropt study of `trials` trials; its wall time and the seconds spent compiling."""
    sys.path.insert(0, repo)
    import compile_profile
    clock = compile_profile.PhaseClock()
    clock.install()
    import contextlib
    import io
    import paropt
    space = os.path.join(tmp, 'space.json')
    with open(space, 'w') as f:
        f.write('\n'.join(json.dumps(d) for d in SPACE) + '\n')
    fixed = ','.join(f'{k}={"/".join(map(str, v)) if isinstance(v, list) else v}'   # (n_epochs=1)
                     for k, v in quick_start_params().items() if k not in ('learning_rate', 'momentum', 'logq'))
    t0 = time.time()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        rc = paropt.main([data, data, '-opf', space, '-fp', fixed, '-nt', str(trials), '-fm',
                          '--storage', os.path.join(tmp, 'study.sqlite'), '-o', os.path.join(tmp, 'best.py'),
                          '--backend', backend])
    wall = time.time() - t0
    if rc != 0:
        raise SystemExit(f'paropt exited with {rc}')
    return {'wall': wall, 'compile': compile_seconds(clock)}


def measure_paropt(repo, cachedir, train, events, backend, trials):
    import pandas as pd
    os.makedirs(cachedir, exist_ok=True)
    data = os.path.join(cachedir, 'events.tsv')
    pd.read_csv(train, sep='\t', dtype={'ItemId': str}, nrows=events).to_csv(data, sep='\t', index=False)
    return run_child(__file__, [train, '--child', repo, '--backend', backend, '--paropt',
                                json.dumps([data, trials, cachedir])], cachedir, repo, 'the paropt measurement')


def run_child(script, args, cachedir, repo, what, **env):
    """Run `script args` in a child process with one thread and its own PyTensor cache folder (and `env`);
    return the JSON of its last output line. A failure shows the child's output and ends the run."""
    env = dict(os.environ, **ONE_THREAD, PYTENSOR_FLAGS=f'base_compiledir={cachedir}', **env)
    r = subprocess.run([sys.executable, os.path.abspath(script)] + args, capture_output=True, text=True, env=env,
                       cwd=repo)
    if r.returncode != 0:
        sys.stderr.write(r.stdout[-3000:] + r.stderr[-3000:])
        raise SystemExit(f'{what} failed (exit code {r.returncode})')
    return json.loads(r.stdout.strip().splitlines()[-1])


def measure(repo, cachedir, train, events, backend, fits):
    return run_child(__file__, [train, '--child', repo, '--events', str(events), '--backend', backend, '--fits',
                                json.dumps(fits)], cachedir, repo, f'the measurement with {repo}')


def machine():
    return f'{live_common.cpu_model()}, {os.cpu_count()} cores, Python {platform.python_version()}, {platform.system()}'


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('train', help='training data (e.g. data/rsc15_64/rec15_64_train_full.txt.gz)')
    ap.add_argument('--events', type=int, default=3000, help='events of TRAIN to fit on (default 3000)')
    ap.add_argument('--backend', default='numba', choices=('numba', 'jax', 'python'))
    ap.add_argument('--old-repo', metavar='DIR', help='another checkout whose cold compile to measure too')
    ap.add_argument('--out', metavar='FILE.json')
    ap.add_argument('--child', metavar='REPO', help=argparse.SUPPRESS)
    ap.add_argument('--fits', help=argparse.SUPPRESS)
    ap.add_argument('--paropt', help=argparse.SUPPRESS)
    args = ap.parse_args()
    train = os.path.abspath(args.train)
    if args.child:
        sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))   # compile_profile
    if args.child and args.paropt:
        data, trials, tmp = json.loads(args.paropt)
        print('\n' + json.dumps(paropt_child(args.child, data, trials, args.backend, tmp)))
        return 0
    if args.child:
        print('\n' + json.dumps(child(args.child, train, args.events, args.backend, json.loads(args.fits))))
        return 0
    rows, numbers = [], {}
    with tempfile.TemporaryDirectory(prefix='compile_cost_') as tmp:
        cache = os.path.join(tmp, 'cache')
        base = [dict(learning_rate=0.2)]
        cold = measure(HERE, cache, train, args.events, args.backend, base)
        numbers['cold'], numbers['cold_compiling'] = cold['seconds'][0], cold['compiling'][0]
        rows.append(('cold compile (empty cache), first fit', numbers['cold']))
        rows.append(('cold compile: of which compiling', numbers['cold_compiling']))
        numbers['warm'] = measure(HERE, cache, train, args.events, args.backend, base)['seconds'][0]
        rows.append(('warm (same configuration, new process)', numbers['warm']))
        numbers['new_lr'] = measure(HERE, cache, train, args.events, args.backend, [dict(learning_rate=0.1)])['seconds'][0]
        rows.append(('learning_rate 0.2 -> 0.1 (new process, warm cache)', numbers['new_lr']))
        for name, value in (('batch_size', 48), ('dropout_p_hidden', 0.3)):
            key = f'new_{name}'
            numbers[key] = measure(HERE, cache, train, args.events, args.backend,
                                   [dict(learning_rate=0.2, **{name: value})])['seconds'][0]
            rows.append((f'{name} -> {value} (new process, warm cache)', numbers[key]))
        trials = measure(HERE, cache, train, args.events, args.backend, TRIALS)
        numbers['trials'] = trials
        rows.append(('10 trials in one process: all fits', sum(trials['seconds'])))
        rows.append(('10 trials: first fit', trials['seconds'][0]))
        rows.append(('10 trials: each later fit (mean)', sum(trials['seconds'][1:]) / 9))
        studies = {n: measure_paropt(HERE, os.path.join(tmp, f'paropt{n}'), train, args.events, args.backend, n)
                   for n in (1, 10)}
        numbers['paropt'] = studies
        for n in (1, 10):
            rows.append((f'paropt study of {n} trial{"s" if n > 1 else ""} (empty cache): compile time',
                         studies[n]['compile']))
            rows.append((f'paropt study of {n} trial{"s" if n > 1 else ""}: wall time', studies[n]['wall']))
        if args.old_repo:
            old = measure(os.path.abspath(args.old_repo), os.path.join(tmp, 'old_cache'), train, args.events,
                          args.backend, base)
            numbers['old_cold'], numbers['old_cold_compiling'] = old['seconds'][0], old['compiling'][0]
            rows.append((f'cold compile at {args.old_repo}', numbers['old_cold']))
            rows.append((f'cold compile at {args.old_repo}: of which compiling', numbers['old_cold_compiling']))
    print(f'Machine: {machine()}; backend {args.backend}; {args.events} events of {args.train}; quick-start '
          f'configuration, 1 epoch; 10-trial process compiled {trials["compiles"]} training step(s)\n')
    print('| measurement | seconds |\n|---|---|')
    for label, secs in rows:
        print(f'| {label} | {secs:.1f} |')
    if args.old_repo:
        print(f'\nCold compile vs {args.old_repo}: {numbers["cold"] / numbers["old_cold"]:.2f} of its wall time, '
              f'{numbers["cold_compiling"] / numbers["old_cold_compiling"]:.2f} of its compiling')
    if args.out:
        with open(args.out, 'w') as f:
            json.dump(dict(numbers, machine=machine(), backend=args.backend, events=args.events), f, indent=1)
    return 0


if __name__ == '__main__':
    sys.exit(main())
