"""Where a cold compile of the quick-start configuration spends its time (Numba; --backend jax: a new batch size).

    python benchmarks/compile_profile.py TRAIN [--events N] [--eval-events N] [--repo DIR] [--backend numba|jax]
                                               [--out FILE.json]

Runs, in a child process with an empty PyTensor/Numba cache folder and one thread, a 1-epoch fit of the
quick-start configuration (param_samples/rsc15_cross-entropy_logq.py) on the first N events of TRAIN (default
3000), then an evaluation of the same events (its own compiled graph). The compiler's phases are timed by
wrapping the functions that run them; a phase's time is exclusive (a function compiled while its caller's
type inference runs is counted in its own phases, not in the caller's), so the rows add up to the wall time:

* PyTensor: graph rewriting (`FunctionMaker.prepare_fgraph`) and turning the graph into Python functions
  for Numba (`NumbaLinker.fgraph_convert`);
* Numba: type inference, lowering to LLVM IR, LLVM function passes, linking the modules of the functions a
  function calls into its own, LLVM module passes, machine-code emission, cache writes and reads, the rest
  of Numba's pipeline; "other" is everything outside these (reading the data, building the graph and its
  gradient, training, evaluating);
* module passes and emission again by nesting depth (depth 1: a function called from Python; depth k: a
  function compiled while k-1 others were being compiled). With Numba's eager path (GRU4REC_NUMBA_EAGER=1)
  every depth re-optimises and re-emits the code linked into it; with _numba_link it happens at depth 1.

--backend jax profiles what a new batch size costs on JAX instead (XLA compiles each new shape): in one
process, fits with batch_size 32, then 48, then 32 again with another learning rate, each split into
PyTensor's graph rewriting and conversion to JAX, JAX's tracing, lowering to MLIR and XLA's compile (JAX's
own compile-time events), and the rest.

--repo measures another checkout's code (e.g. `git worktree add /tmp/cbc cbc96da`). Prints tables (seconds)
and the machine; --out also writes the numbers as JSON.
"""
import argparse
import collections
import json
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import compile_cost  # noqa: E402  (the quick-start parameters, one-thread environment, machine line)

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class PhaseClock:
    """Exclusive time per phase: entering a phase pauses the one it was entered from."""

    def __init__(self):
        self.seconds = collections.Counter()
        self.calls = collections.Counter()
        self.by_depth = collections.Counter()   # (phase, compile depth) -> seconds
        self.stack = [('other', time.perf_counter())]
        self.depth = 0                          # Numba compiles in progress

    def wrap(self, owner, name, phase, counts_depth=False):
        original = getattr(owner, name)
        clock = self

        def timed(*args, **kwargs):
            now = time.perf_counter()
            top, since = clock.stack[-1]
            clock.seconds[top] += now - since
            clock.stack.append((phase, now))
            clock.calls[phase] += 1
            clock.depth += counts_depth
            try:
                return original(*args, **kwargs)
            finally:
                end = time.perf_counter()
                _, since = clock.stack.pop()
                clock.seconds[phase] += end - since
                clock.by_depth[phase, clock.depth] += end - since
                clock.depth -= counts_depth
                clock.stack[-1] = (clock.stack[-1][0], end)

        # a staticmethod stays one (the wrapper must not receive the instance)
        setattr(owner, name, staticmethod(timed) if isinstance(owner.__dict__.get(name), staticmethod) else timed)

    def install(self):
        from numba.core import caching, codegen, dispatcher, typed_passes
        from pytensor.compile import maker
        from pytensor.link.numba import linker
        self.wrap(maker.FunctionMaker, 'prepare_fgraph', 'PyTensor: graph rewriting')
        self.wrap(linker.NumbaLinker, 'fgraph_convert', 'PyTensor: graph to Numba functions')
        self.wrap(dispatcher.Dispatcher, 'compile', 'Numba: rest of the pipeline', counts_depth=True)
        self.wrap(typed_passes.NopythonTypeInference, 'run_pass', 'Numba: type inference')
        self.wrap(typed_passes.NativeLowering, 'run_pass', 'Numba: lowering to LLVM IR')
        self.wrap(codegen.CPUCodeLibrary, '_optimize_functions', 'LLVM: function passes')
        self.wrap(codegen.CPUCodeLibrary, 'finalize', 'LLVM: linking callees in')
        self.wrap(codegen.CPUCodeLibrary, '_optimize_final_module', 'LLVM: module passes')
        self.wrap(codegen.JITCodeLibrary, '_finalize_specific', 'LLVM: machine-code emission')
        self.wrap(caching.Cache, 'save_overload', 'Numba: cache writes')
        self.wrap(caching.Cache, 'load_overload', 'Numba: cache reads')

    def close(self):
        now = time.perf_counter()
        top, since = self.stack[-1]
        self.seconds[top] += now - since
        self.stack[-1] = (top, now)


def child(repo, train, events, eval_events):
    sys.path.insert(0, repo)
    os.chdir(repo)
    clock = PhaseClock()
    clock.install()
    import contextlib
    import io
    import pandas as pd
    import evaluation
    from gru4rec import GRU4Rec
    data = pd.read_csv(train, sep='\t', dtype={'ItemId': str}, nrows=events)
    result = {}
    for stage in ('fit', 'evaluation'):
        before = dict(clock.seconds), dict(clock.by_depth), clock.calls['Numba: rest of the pipeline']
        t0 = time.perf_counter()
        with contextlib.redirect_stdout(io.StringIO()):
            if stage == 'fit':
                model = GRU4Rec(**compile_cost.quick_start_params()).fit(data)
            else:
                evaluation.evaluate_gpu(model, data.iloc[:eval_events], cut_off=[20])
        clock.close()
        wall = time.perf_counter() - t0
        result[stage] = {
            'wall': wall,
            'phases': {k: v - before[0].get(k, 0.0) for k, v in clock.seconds.items()},
            'by_depth': [[k[0], k[1], v - before[1].get(k, 0.0)] for k, v in clock.by_depth.items()],
            'functions': clock.calls['Numba: rest of the pipeline'] - before[2],
        }
    return result


JAX_EVENTS = {'/jax/core/compile/jaxpr_trace_duration': 'JAX: tracing',
              '/jax/core/compile/jaxpr_to_mlir_module_duration': 'JAX: lowering to MLIR',
              '/jax/core/compile/backend_compile_duration': 'XLA: compile'}
JAX_FITS = [('batch_size 32', dict(batch_size=32)), ('batch_size 48', dict(batch_size=48)),
            ('batch_size 32, learning_rate 0.1', dict(batch_size=32, learning_rate=0.1))]


def jax_child(repo, train, events):
    """Per fit: seconds of PyTensor's phases (exclusive), of JAX's compile events, and the wall time."""
    sys.path.insert(0, repo)
    os.chdir(repo)
    clock = PhaseClock()
    from pytensor.compile import maker
    from pytensor.link.jax import linker
    clock.wrap(maker.FunctionMaker, 'prepare_fgraph', 'PyTensor: graph rewriting')
    clock.wrap(linker.JAXLinker, 'fgraph_convert', 'PyTensor: graph to JAX functions')
    import jax
    jax_seconds = collections.Counter()
    jax.monitoring.register_event_duration_secs_listener(
        lambda event, secs, **kw: jax_seconds.update({JAX_EVENTS[event]: secs}) if event in JAX_EVENTS else None)
    import contextlib
    import io
    import pandas as pd
    from gru4rec import GRU4Rec
    data = pd.read_csv(train, sep='\t', dtype={'ItemId': str}, nrows=events)
    result = []
    for label, changes in JAX_FITS:
        before, jax_before = dict(clock.seconds), dict(jax_seconds)
        t0 = time.perf_counter()
        with contextlib.redirect_stdout(io.StringIO()):
            GRU4Rec(**dict(compile_cost.quick_start_params(), backend='jax', **changes)).fit(data)
        clock.close()
        phases = {k: v - before.get(k, 0.0) for k, v in clock.seconds.items() if k != 'other'}
        phases.update({k: v - jax_before.get(k, 0.0) for k, v in jax_seconds.items()})
        result.append({'fit': label, 'wall': time.perf_counter() - t0, 'phases': phases})
    return result


def measure(repo, train, events, eval_events, backend='numba'):
    with tempfile.TemporaryDirectory(prefix='compile_profile_') as cache:
        return compile_cost.run_child(__file__, [train, '--child', repo, '--events', str(events), '--eval-events',
                                                 str(eval_events), '--backend', backend], cache, repo,
                                      'ERROR. the profiled run', NUMBA_CACHE_DIR=os.path.join(cache, 'numba'))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('train', help='training data (e.g. data/rsc15_64/rec15_64_train_full.txt.gz)')
    ap.add_argument('--events', type=int, default=3000, help='events of TRAIN to fit on (default 3000)')
    ap.add_argument('--eval-events', type=int, default=1000, help='events to evaluate on (default 1000)')
    ap.add_argument('--repo', default=HERE, help='the checkout whose code to profile (default: this one)')
    ap.add_argument('--backend', default='numba', choices=('numba', 'jax'),
                    help='numba (default): a cold compile; jax: what a new batch size compiles')
    ap.add_argument('--out', metavar='FILE.json', help='also write the numbers as JSON')
    ap.add_argument('--child', metavar='REPO', help=argparse.SUPPRESS)
    args = ap.parse_args()
    train = os.path.abspath(args.train)
    if args.child:
        out = (jax_child(args.child, train, args.events) if args.backend == 'jax' else
               child(args.child, train, args.events, args.eval_events))
        print('\n' + json.dumps(out))
        return 0
    problem = (f'the training file does not exist: {args.train}' if not os.path.isfile(train) else
               f'--repo is not a GRU4Rec checkout (no gru4rec.py): {args.repo}'
               if not os.path.isfile(os.path.join(args.repo, 'gru4rec.py')) else
               '--events and --eval-events must be at least 100' if min(args.events, args.eval_events) < 100 else None)
    if problem:
        print(f'ERROR. {problem}', file=sys.stderr)
        return 2
    result = measure(os.path.abspath(args.repo), train, args.events, args.eval_events, args.backend)
    if args.backend == 'jax':
        print_jax(args, result)
    else:
        print_numba(args, result)
    if args.out:
        with open(args.out, 'w') as f:
            json.dump(dict(result=result, machine=compile_cost.machine(), repo=args.repo, backend=args.backend),
                      f, indent=1)
    return 0


def print_jax(args, result):
    import jax
    print(f'Machine: {compile_cost.machine()}; JAX {jax.__version__} on the {jax.devices()[0].platform.upper()}; '
          f'code of {args.repo}; quick-start configuration, 1 epoch on {args.events} events; fits in one process\n')
    names = ['PyTensor: graph rewriting', 'PyTensor: graph to JAX functions'] + list(JAX_EVENTS.values())
    print('| fit | ' + ' | '.join(names) + ' | rest | wall |\n|---' * 1 + '|---' * (len(names) + 2) + '|')
    for r in result:
        parts = [r['phases'].get(n, 0.0) for n in names]
        print(f'| {r["fit"]} | ' + ' | '.join(f'{v:.2f}' for v in parts) +
              f' | {r["wall"] - sum(parts):.2f} | {r["wall"]:.2f} |')


def print_numba(args, result):
    print(f'Machine: {compile_cost.machine()}; Numba backend, one thread, empty cache; code of {args.repo}; '
          f'quick-start configuration, 1 epoch on {args.events} events, then evaluation on {args.eval_events}\n')
    stages = ('fit', 'evaluation')
    phases = sorted({p for s in stages for p in result[s]['phases']},
                    key=lambda p: -result['fit']['phases'].get(p, 0.0))
    print('| phase (exclusive seconds) | fit | evaluation |\n|---|---|---|')
    for p in phases:
        print(f'| {p} | ' + ' | '.join(f'{result[s]["phases"].get(p, 0.0):.1f}' for s in stages) + ' |')
    print('| **wall** | ' + ' | '.join(f'**{result[s]["wall"]:.1f}**' for s in stages) + ' |')
    print('\nNumba compile requests (Dispatcher.compile calls, including ones answered by a compiled signature): '
          + ', '.join(f'{s} {result[s]["functions"]}' for s in stages))
    print('\nLLVM module passes and emission by compile depth (fit, seconds):\n')
    print('| depth | module passes | emission |\n|---|---|---|')
    depth = collections.defaultdict(dict)
    for phase, d, secs in result['fit']['by_depth']:
        depth[d][phase] = secs
    for d in sorted(depth):
        row = depth[d]
        if row.get('LLVM: module passes', 0.0) + row.get('LLVM: machine-code emission', 0.0) >= 0.05:
            print(f'| {d} | {row.get("LLVM: module passes", 0.0):.1f} | '
                  f'{row.get("LLVM: machine-code emission", 0.0):.1f} |')


if __name__ == '__main__':
    sys.exit(main())
