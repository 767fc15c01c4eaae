"""Hyper-parameter search for GRU4Rec with Optuna, in one process (no child runs, works on every OS).

    python paropt.py TRAIN VALID -opf paramspaces/gru4rec_xe_standard_parspace.json \\
        -fp loss=cross-entropy,final_act=softmax,n_epochs=5 -nt 50 --storage xe_study.sqlite -o best_xe.py

Every trial trains on TRAIN with the fixed parameters (-fp) plus the ones Optuna suggests from the
parameter space file (-opf) and is scored by recall or MRR at one cut-off (-m, -pm) on VALID after every
epoch; the median pruner stops trials that fall behind the others at the same epoch. The study lives in
an SQLite file (--storage): rerunning the same command continues it, and trials finished before an
interruption are kept (Ctrl-C or SIGTERM: one line, exit code 130 or 143; the interrupted trial is stored
as failed and does not count towards -nt). Whenever the best trial changes, its parameters are written to
the -o file, which `run.py -pf` reads. At the end the best parameters are trained once more and evaluated
at every -fm cut-off, as in the original.

Several workers may share one study and its -nt budget: start paropt several times (on one machine or many)
with the same --storage (an SQLite file, or a database URL such as postgresql://user@host/db), or use
--n_workers K. A study records what defines it (fixed parameters, space, data files, metric) and cannot be
continued with other ones.

Parameter space file: one JSON object per line, e.g.
    {"name": "layers", "dtype": "int", "values": [64, 512], "step": 32}
    {"name": "learning_rate", "dtype": "float", "values": [0.01, 0.25], "log": true}
    {"name": "final_act", "dtype": "categorical", "values": ["elu-0.5", "elu-1", "linear"]}
dtype is int, float or categorical; values is [low, high] (inclusive) or the list of categories; step
and log are optional (not both).
"""
import argparse
import json
import os
import signal
import sys
import time
from collections import OrderedDict

if __package__:
    from . import _interrupts, _outputs, _study, _workers, cli, run
else:
    import _interrupts, _outputs, _study, _workers, cli, run  # noqa: E401

InputError = cli.InputError
DTYPES = ('int', 'float', 'categorical')


# --- parameter space ---------------------------------------------------------------------------------

def read_parameter_space(path):
    """The JSON-lines parameter space as a list of dicts (name, dtype, values, step, log), validated."""
    if not os.path.isfile(path):
        raise InputError(f'Parameter space file not found: {path}')
    space = []
    with open(path) as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            where = f'{path}, line {lineno}'
            try:
                entry = json.loads(line)
            except json.JSONDecodeError as e:
                raise InputError(f'{where}: not a JSON object ({e.msg})') from None
            space.append(_check_entry(entry, where))
    if not space:
        raise InputError(f'The parameter space file {path} defines no parameter')
    names = [e['name'] for e in space]
    if len(set(names)) < len(names):
        raise InputError(f'{path} defines a parameter twice: {", ".join(sorted({n for n in names if names.count(n) > 1}))}')
    return space


def _check_entry(entry, where):
    if not isinstance(entry, dict):
        raise InputError(f'{where}: expected a JSON object with name, dtype and values')
    unknown = set(entry) - {'name', 'dtype', 'values', 'step', 'log'}
    if unknown or not {'name', 'dtype', 'values'} <= set(entry):
        raise InputError(f'{where}: expected the keys name, dtype, values and optionally step, log; got {", ".join(entry)}')
    name, dtype, values = entry['name'], entry['dtype'], entry['values']
    if dtype not in DTYPES:
        raise InputError(f'{where}: dtype of {name} must be one of {", ".join(DTYPES)}, got {dtype!r}')
    if not isinstance(values, list) or not values:
        raise InputError(f'{where}: values of {name} must be a non-empty list')
    out = {'name': str(name), 'dtype': dtype, 'values': values}
    if dtype == 'categorical':
        if 'step' in entry or 'log' in entry:
            raise InputError(f'{where}: a categorical parameter ({name}) takes no step or log')
        return out
    num = int if dtype == 'int' else float
    if len(values) != 2 or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values) \
            or (dtype == 'int' and not all(float(v).is_integer() for v in values)):
        raise InputError(f'{where}: values of {name} must be [low, high] {dtype} numbers, got {values}')
    low, high = num(values[0]), num(values[1])
    if low > high:
        raise InputError(f'{where}: low > high for {name}: {values}')
    out['values'] = [low, high]
    log, step = bool(entry.get('log', False)), entry.get('step')
    if log and step is not None:
        raise InputError(f'{where}: {name} has both step and log (Optuna takes one of them)')
    if log and low <= 0:
        raise InputError(f'{where}: {name} has log=true, which needs low > 0')
    if step is not None:
        if not isinstance(step, (int, float)) or isinstance(step, bool) or step <= 0 \
                or (dtype == 'int' and not float(step).is_integer()):
            raise InputError(f'{where}: step of {name} must be a positive {dtype}, got {step!r}')
        out['step'] = num(step)
    out['log'] = log
    return out


def suggest(trial, space):
    """One trial's values for every parameter of the space."""
    params = OrderedDict()
    for e in space:
        name, values = e['name'], e['values']
        if e['dtype'] == 'categorical':
            params[name] = trial.suggest_categorical(name, e['values'])
        elif e['dtype'] == 'int':
            params[name] = trial.suggest_int(name, values[0], values[1], step=e.get('step', 1), log=e['log'])
        else:
            params[name] = trial.suggest_float(name, values[0], values[1], step=e.get('step'), log=e['log'])
    return clean(params)


def clean(params):
    """Floats on a step grid come back as e.g. 0.18000000000000002: keep 12 significant digits."""
    return OrderedDict((k, float(f'{v:.12g}') if isinstance(v, float) else v) for k, v in params.items())


def print_space(space):
    print('-' * 80)
    print('PARAMETER SPACE')
    for e in space:
        extra = ''.join(f' {k}={e[k]}' for k in ('step', 'log') if e.get(k))
        print(f'\t{e["name"]}\t{e["dtype"]}\t{e["values"]}{extra}')
    print('-' * 80)


# --- parameter file ----------------------------------------------------------------------------------

def parameter_file_text(params, comment):
    """A Python parameter file (OrderedDict gru4rec_params), as run.py -pf and the paramfiles/ read."""
    lines = ['# ' + line for line in comment.splitlines()]
    lines += ['from collections import OrderedDict', '', 'gru4rec_params = OrderedDict([']
    lines += [f'    ({k!r}, {v!r}),' for k, v in params.items()]
    return '\n'.join(lines + ['])', ''])


# --- the search --------------------------------------------------------------------------------------

class Search:
    """Trains one model per trial on the training data and scores it on the validation data per epoch."""

    def __init__(self, args, mod, evaluation, train, valid):
        self.args, self.mod, self.evaluation = args, mod, evaluation
        self.train, self.valid = train, valid
        self.fixed = cli.parse_parameter_string(args.fixed_parameters) if args.fixed_parameters else OrderedDict()
        self.space = read_parameter_space(args.optuna_parameter_file)
        both = set(self.fixed) & {e['name'] for e in self.space}
        if both:
            raise InputError(f'Set both as fixed (-fp) and searched (-opf): {", ".join(sorted(both))}')
        self.model(OrderedDict())   # unknown names and bad fixed values fail here, before any trial
        for e in self.space:        # ... and so do bad names and categories in the space
            for v in (e['values'] if e['dtype'] == 'categorical' else e['values'][:1]):
                self.model(OrderedDict([(e['name'], v)]))

    def model(self, params):
        """A GRU4Rec with the fixed parameters, then params (quietly: the SET lines are printed per trial)."""
        gru = self.mod.GRU4Rec(backend=self.args.own['backend'], device=self.args.own['model_device'], seed=self.args.seed)
        for k, v in list(self.fixed.items()) + list(params.items()):
            try:
                _quiet(gru.set_params, **{k: v})
            except self.mod.GRU4RecError as e:
                raise InputError(str(e)) from None
        return gru

    def canonical_fixed(self):
        """The fixed parameters as the model stores them, without those equal to the model's defaults."""
        given = self.model(OrderedDict()).get_params()
        default = self.mod.GRU4Rec(backend=self.args.own['backend'], device=self.args.own['model_device'],
                                   seed=self.args.seed).get_params()
        return OrderedDict((k, given[k]) for k in self.fixed if given[k] != default.get(k))

    def score(self, gru):
        keys = (gru.session_key, gru.item_key, gru.time_key)
        recall, mrr = self.evaluation.evaluate_gpu(gru, self.valid, session_key=keys[0], item_key=keys[1],
                                                   time_key=keys[2], cut_off=[self.args.measure],
                                                   batch_size=512, mode=self.args.eval_type)
        return recall[0] if self.args.primary_metric == 'recall' else mrr[0]

    def objective(self, trial):
        import optuna
        params = suggest(trial, self.space)
        print(f'\nTRIAL {trial.number}: ' + ','.join(f'{k}={v}' for k, v in params.items()), flush=True)
        gru = self.model(params)
        values = []

        def after_epoch(model, stats):
            value = _quiet(self.score, model)
            values.append(value)
            print(f'Epoch{stats["epoch"]} {self.args.primary_metric}@{self.args.measure}: {value:.6f}', flush=True)
            trial.report(value, stats['epoch'])
            return self.args.pruning and trial.should_prune()

        t0 = time.time()
        try:
            gru.fit(self.train, sample_store=self.args.sample_store_size, epoch_callback=after_epoch)
        except self.mod.GRU4RecError as e:  # e.g. a sampled batch size larger than the data allows
            raise TrialError(f'trial {trial.number}: {e}') from None
        trial.set_user_attr('seconds', time.time() - t0)
        if gru.error_during_train_:
            raise TrialError(f'trial {trial.number}: the loss became NaN in epoch {gru.error_epoch_}')
        if len(values) < gru.n_epochs:
            print(f'TRIAL {trial.number} PRUNED after epoch {len(values)} ({values[-1]:.6f})')
            raise optuna.TrialPruned()
        print(f'PRIMARY METRIC: {values[-1]}')
        return values[-1]


class TrialError(Exception):
    """A trial that could not finish (NaN loss, parameters that do not fit the data)."""


def _quiet(fn, *args, **kw):
    """fn's result with its printed lines suppressed (set_params and evaluation print per call)."""
    import contextlib
    import io
    with contextlib.redirect_stdout(io.StringIO()):
        return fn(*args, **kw)


def write_best(study, search, path):
    """Write the fixed + the study's best trial's parameters as a run.py -pf file (atomically), unless the file
    holds them already. The best is read inside a lock, so that of two workers of this machine the later one
    writes the better trial. Returns the best trial's number, or None while no trial has completed."""
    with _study.folder_lock(path):
        try:
            best = study.best_trial
        except ValueError:  # no completed trial yet
            return None
        comment = (f'Best GRU4Rec parameters of paropt study "{study.study_name}" (trial {best.number}, '
                   f'{search.args.primary_metric}@{search.args.measure} = {best.value:.6f} on the validation data).')
        try:
            with open(path) as f:
                if f.readline().rstrip('\n') == '# ' + comment:
                    return best.number
        except OSError:
            pass
        best_params = clean(best.params)
        canonical = search.model(best_params).get_params()
        params = OrderedDict((k, canonical[k]) for k in list(search.fixed) + list(best_params))
        text = parameter_file_text(params, comment).encode('utf-8')
        cli.sibling('_files').atomic_write(path, lambda f: f.write(text))
    print(f'New best: trial {best.number} ({search.args.primary_metric}@{search.args.measure} = {best.value:.6f}); '
          f'parameters written to {path}', flush=True)
    return best.number


# --- command line ------------------------------------------------------------------------------------

def build_parser():
    p = cli.Parser(prog='paropt', description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('path', metavar='PATH', help='training data')
    p.add_argument('test_path', metavar='TEST_PATH', help='validation data the trials are scored on')
    p.add_argument('-opf', '--optuna_parameter_file', metavar='PATH', required=True, help='JSON-lines parameter space')
    p.add_argument('-fp', '--fixed_parameters', metavar='PARAM_STRING', default=None,
                   help='parameters every trial uses, e.g. loss=bpr-max,n_epochs=5')
    p.add_argument('-nt', '--ntrials', metavar='N', type=int, default=50, help='finished trials to reach (default: 50)')
    p.add_argument('-m', '--measure', metavar='AT', type=int, default=20, help='cut-off of the optimised metric (default: 20)')
    p.add_argument('-fm', '--final_measure', metavar='AT', type=int, nargs='*', default=[20],
                   help='cut-offs of the final run with the best parameters (default: 20; none: skip it)')
    p.add_argument('-pm', '--primary_metric', choices=['recall', 'mrr'], default='recall')
    p.add_argument('-e', '--eval_type', choices=['standard', 'conservative', 'median', 'tiebreaking'], default='standard')
    p.add_argument('-ss', '--sample_store_size', type=int, default=10000000)
    p.add_argument('-ik', '--item_key', default=None)
    p.add_argument('-sk', '--session_key', default=None)
    p.add_argument('-tk', '--time_key', default=None)
    p.add_argument('--storage', metavar='FILE_OR_URL', default='paropt.sqlite',
                   help='SQLite file of the study, or an Optuna storage URL (sqlite:///F, postgresql://..., '
                        'mysql://...); rerun to continue it (default: paropt.sqlite)')
    p.add_argument('--study_name', default=None, help='study name in the storage (default: the parameter space file name)')
    p.add_argument('-o', '--output', metavar='PARAM_PATH', default='paropt_best.py',
                   help='parameter file of the best trial, for run.py -pf (default: paropt_best.py)')
    p.add_argument('--seed', type=int, default=42, help='seed of the models and of the sampler (default: 42)')
    p.add_argument('--no_pruning', dest='pruning', action='store_false', help='train every trial for all epochs')
    p.add_argument('-tf', '--theano_flags', metavar='FLAGS', default=None, help='PyTensor/Theano flags, e.g. device=cpu')
    p.add_argument('-d', '--device', default=None, help='cpu or cuda[:N]')
    p.add_argument('--backend', choices=['numba', 'jax', 'python'], default=None)
    p.add_argument('-g', '--gru4rec_model', default='gru4rec', help='module providing the GRU4Rec class')
    p.add_argument('--n_workers', metavar='K', type=int, default=1,
                   help='worker processes on this machine, each on its share of the cores (default: 1)')
    p.add_argument('--heartbeat', metavar='SECONDS', type=int, default=10,
                   help='a running trial beats this often; one silent for 3 beats is failed as its worker died (default: 10)')
    p.add_argument('--worker', type=int, default=None, help=argparse.SUPPRESS)   # set by --n_workers in its workers
    return p


def main(argv=None):
    progress = Progress()
    return _interrupts.run_main(lambda: _main(sys.argv[1:] if argv is None else argv, progress), InputError,
                                cli.report_error, progress.interrupted_line, progress.fail_interrupted_trial)


class Progress:
    """How far the search got, for the one line that reports a Ctrl-C or SIGTERM: the study once it is open,
    the number of the last trial started, the best-parameters file once the final run starts."""

    def __init__(self):
        self.storage = self.study = self.store = self.trial = self.output = None

    def objective(self, objective):
        """`objective` that records the trial it runs (until it returns or raises anything but an interrupt)."""
        def run(trial):
            self.trial = trial.number
            with _interrupts.translated():   # Optuna would store and log a wrapped signal as the trial's error
                _interrupts.check()
                try:
                    value = objective(trial)
                except Exception:
                    self.trial = None
                    raise
            self.trial = None
            return value
        return run

    def interrupted_line(self, stop):
        head = f'Interrupted ({stop.name})'
        if self.output is not None:
            return (f'{head} during the final run; the study in {self.storage} is complete and its best parameters '
                    f'are in {self.output}.')
        if self.study is None:
            return f'{head} before the search started; nothing was stored.'
        where = f'during trial {self.trial}' if self.trial is not None else 'between trials'
        failed = f' (trial {self.trial} did not finish and is stored as failed)' if self.trial is not None else ''
        done = _study.counts(self.study, self.store)[0]
        return (f'{head} {where}; {done} finished trial(s) are stored in {self.storage}{failed}: '
                'rerun the same command to continue.')

    def fail_interrupted_trial(self):
        """Store the interrupted trial as failed (not as complete with a partial score; it does not count
        towards -nt), if _study.run_trials has not done so yet. A run killed before this leaves it running:
        its heartbeat stops, and another worker or the next run fails it."""
        from optuna.trial import TrialState
        if self.study is not None and self.trial is not None:
            self.study.tell(self.trial, state=TrialState.FAIL, skip_if_finished=True)


def _main(argv, progress):
    args = build_parser().parse_args(argv)   # usage errors raise InputError (cli.Parser)
    if args.ntrials < 1:
        raise InputError('-nt/--ntrials must be at least 1')
    if args.measure < 1 or any(c < 1 for c in args.final_measure):
        raise InputError('Cut-offs (-m, -fm) must be positive')
    if args.n_workers < 1 or args.heartbeat < 1:
        raise InputError('--n_workers and --heartbeat must be at least 1')
    if args.worker is not None:   # a worker of --n_workers: its cores, and Ctrl-C from the parent
        if not 0 <= args.worker < args.n_workers:
            raise InputError('--worker must be below --n_workers')
        cores = _workers.pin(args.worker, args.n_workers)
        if cores:
            print(f'Worker {args.worker} of {args.n_workers}: cores {",".join(map(str, cores))}, '
                  f'{len(cores)} BLAS/OpenMP/Numba thread(s)', flush=True)
        # the parent forwards Ctrl-C/SIGTERM as SIGINT: handled like the command lines' own, even where this
        # process was started with SIGINT ignored (a background job of a script)
        signal.signal(signal.SIGINT, _interrupts.handle)
    args.study_name = args.study_name or os.path.splitext(os.path.basename(args.optuna_parameter_file))[0]
    environ = dict(os.environ)
    if args.theano_flags:
        environ['THEANO_FLAGS'] = args.theano_flags
    args.own, flags = cli.resolve_config(args.device, args.backend, environ=environ)
    args.own['model_device'] = cli.apply_config(args.own, flags)
    try:
        import optuna  # noqa: F401
    except ImportError:
        raise InputError('paropt needs Optuna: pip install optuna (or the extra: pip install -e ".[tune]")') from None
    # the outputs, before any data are read: a bad path or an unreachable database fails now
    _outputs.check_output_path(args.output, '-o')
    args.storage_url, args.storage_shown = _study.check_storage(args.storage)
    mod = cli.import_model_module(args.gru4rec_model)   # numpy, PyTensor (and JAX) are imported from here on
    try:
        return _search(args, mod, cli.sibling('evaluation'), argv, progress)
    except mod.GRU4RecError as e:
        raise InputError(str(e)) from None


def _search(args, mod, evaluation, argv, progress):
    import optuna
    probe = mod.GRU4Rec()
    keys = (args.session_key or probe.session_key, args.item_key or probe.item_key, args.time_key or probe.time_key)
    train, _ = cli.load_data(args.path, keys, 'training')
    (valid, _), = cli.load_test_files([args.test_path], keys, train[keys[1]])
    if args.fixed_parameters is not None or any((args.item_key, args.session_key, args.time_key)):
        extra = ','.join(f'{k}={v}' for k, v in zip(('session_key', 'item_key', 'time_key'),
                                                    (args.session_key, args.item_key, args.time_key)) if v)
        args.fixed_parameters = ','.join(filter(None, [args.fixed_parameters, extra]))
    search = Search(args, mod, evaluation, train, valid)
    print_space(search.space)
    define = _study.definition(search.canonical_fixed(), search.space, args.path, args.test_path,
                               f'{args.primary_metric}@{args.measure}', args.eval_type, args.sample_store_size)
    _study.make_folder(args.output, '-o')   # missing folders are made once the data have been read
    sqlite_file = _study.parse_storage(args.storage)[1]
    if sqlite_file:
        _study.make_folder(sqlite_file, '--storage')
    storage = _study.open_storage(args.storage_url, args.storage_shown, args.heartbeat)
    pruner = optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=2) if args.pruning else optuna.pruners.NopPruner()
    study, created = _study.open_study(storage, args.study_name, args.storage_shown, define, pruner)
    progress.storage, progress.study, progress.store = args.storage_shown, study, storage
    _study.fail_stale(study)
    done, running = _study.counts(study, storage)
    if not created:
        print(f'Continuing study "{args.study_name}" in {args.storage_shown}: {done} finished trials kept'
              + (f', {running} running (other workers, or stopped ones not yet recognised by their heartbeat)'
                 if running else ''))
    if args.n_workers > 1 and args.worker is None:
        del train, valid, search.train, search.valid
        return _parent(args, study, storage, search, argv, progress)
    already_done = done >= args.ntrials
    best = write_best(study, search, args.output)
    if not already_done:
        print(f'Running trials to reach {args.ntrials} finished trials, {done} finished so far (storage: {args.storage_shown})', flush=True)
        mine = _study.run_trials(study, storage, progress.objective(search.objective), args.ntrials,
                                 lambda n: optuna.samplers.TPESampler(seed=args.seed + n),
                                 lambda study: write_best(study, search, args.output), catch=(TrialError,))
        best = write_best(study, search, args.output)
    else:
        print(f'The study already has {done} finished trials (-nt {args.ntrials}): nothing to run')
    if best is None:
        raise InputError(f'No trial completed in {args.storage_shown}: no best parameters to write')
    last = _study.last_finished(study, storage)
    if args.worker is not None:
        return 0   # the parent reports and makes the final run
    if not already_done and last not in mine:
        print(f'The study has its {args.ntrials} finished trials; the worker of its last one (trial {last}) '
              'reports and makes the final run with the best parameters')
        return 0
    return _report(args, study, progress)


def _parent(args, study, storage, search, argv, progress):
    """--n_workers K: run K workers of this command line and wait; then report and make the final run."""
    command = [sys.executable, '-m', f'{__package__}.paropt'] if __package__ else [sys.executable, os.path.abspath(__file__)]
    print(f'Starting {args.n_workers} workers (storage: {args.storage_shown})', flush=True)
    codes, sig, errors = _workers.run_workers(command + list(argv), args.n_workers)
    done = _study.counts(study, storage)[0]
    if sig is not None:
        print(f'Interrupted ({signal.Signals(sig).name}); the workers stopped; {done} finished trial(s) are stored '
              f'in {args.storage_shown}: rerun the same command to continue.', file=sys.stderr)
        return 130 if sig == signal.SIGINT else 143
    failed = [(i, code, errors[i]) for i, code in enumerate(codes) if code]
    if failed:
        i, code, error = failed[0]
        if error:
            cli.report_error(f'worker {i}: {error[len("ERROR. "):]}')
        else:
            print(f'Worker {i} ended with exit code {code}', file=sys.stderr)
        return code if code > 0 else cli.EXIT_TRAINING_FAILED
    write_best(study, search, args.output)
    return _report(args, study, progress)


def _report(args, study, progress):
    """The best trial, and the final run of its parameters at every -fm cut-off."""
    best = study.best_trial
    print('-' * 80)
    print(f'BEST TRIAL {best.number}: {args.primary_metric}@{args.measure} = {best.value:.6f}')
    print('\t' + ','.join(f'{k}={v}' for k, v in clean(best.params).items()))
    print(f'Best parameters: {args.output} (python run.py TRAIN -t TEST -pf {args.output})')
    print('-' * 80)
    if args.final_measure:
        progress.output = args.output   # (the final run reports an interruption with this)
        print('Training the best parameters once more for the final evaluation')
        # -d: the device as this process now sees it (apply_config may have left only that GPU visible)
        code = run.main([args.path, '-t', args.test_path, '-pf', args.output, '-m', *map(str, args.final_measure),
                         '-e', args.eval_type, '--seed', str(args.seed), '-ss', str(args.sample_store_size),
                         '-d', args.own['model_device'] or 'cpu', '--backend', args.own['backend']]
                        + (['-g', args.gru4rec_model] if args.gru4rec_model != 'gru4rec' else []),
                        interrupted_line=progress.interrupted_line)
        if code:
            return code
    return 0


if __name__ == '__main__':
    sys.exit(main())
