"""Command line for GRU4Rec: train (or load) a model, optionally save it, evaluate on test files.

    python run.py TRAIN -t TEST [TEST ...] -m 1 5 10 20 -ps loss=bpr-max,final_act=elu-0.5,layers=100
    python run.py TRAIN -t TEST -pf param_samples/rsc15_bpr-max.py -s model.pickle
    python run.py model.pickle -l -t TEST -e conservative

Configuration (PyTensor flags plus our own `device` and `backend`) comes from, in increasing priority:
the flags file `.theanorc_gru4rec` beside this script, the environment (THEANO_FLAGS, then PYTENSOR_FLAGS),
and the command line (-d/--device, --backend). It is applied before PyTensor is imported (cli.py).
Bad input ends with one line on stderr starting with 'ERROR.' and exit code 2. Ctrl-C or SIGTERM ends with one
line saying what was kept and how to continue, exit code 130 or 143 (_interrupts.py).
"""
import argparse
import importlib.util
import io
import os
import shutil
import sys
import time
from collections import OrderedDict

if __package__:
    from . import _interrupts, _outputs, cli
else:
    import _interrupts, _outputs, cli  # noqa: E401

# Names that lived here before cli.py held what run.py and paropt.py share (scripts import them from here).
InputError, EXIT_BAD_INPUT, EXIT_TRAINING_FAILED, FLAGS_FILE, OWN_FLAGS = (
    cli.InputError, cli.EXIT_BAD_INPUT, cli.EXIT_TRAINING_FAILED, cli.FLAGS_FILE, cli.OWN_FLAGS)
parse_flag_string, read_flags_file, resolve_config, apply_config = (
    cli.parse_flag_string, cli.read_flags_file, cli.resolve_config, cli.apply_config)
parse_parameter_string, load_parameter_file, COMPRESSIONS, data_format, load_data, load_test_files = (
    cli.parse_parameter_string, cli.load_parameter_file, cli.COMPRESSIONS, cli.data_format, cli.load_data,
    cli.load_test_files)


# --- arguments --------------------------------------------------------------------------------------

def build_parser():
    width = shutil.get_terminal_size().columns
    p = cli.Parser(prog='gru4rec', description='Train or load a GRU4Rec model and evaluate it.',
                   epilog='Other commands: gru4rec recommend MODEL EVENTS -k 20 -o OUT (top-k for sessions), '
                          'gru4rec serve MODEL (HTTP service); each with --help.',
                   formatter_class=lambda prog: argparse.HelpFormatter(prog, width=width, max_help_position=width // 3))
    p.add_argument('path', metavar='PATH', help='training data (.tsv/.txt: tab, .csv: comma, optionally .gz/.bz2/.xz/.zst/.zip; '
                   '.pickle or .parquet: a DataFrame); with -l the saved model')
    p.add_argument('-ps', '--parameter_string', metavar='PARAM_STRING', help='parameters, e.g. loss=bpr-max,layers=100/100,n_epochs=10')
    p.add_argument('-pf', '--parameter_file', metavar='PARAM_PATH', help='Python file defining the OrderedDict gru4rec_params')
    p.add_argument('-l', '--load_model', action='store_true', help='load a saved model from PATH instead of training')
    p.add_argument('-s', '--save_model', metavar='MODEL_PATH',
                   help='save the trained model here: safe format (e.g. model.gru4rec), or a pickle if it ends in .pickle')
    p.add_argument('-t', '--test', metavar='TEST_PATH', nargs='+', help='test file(s) to evaluate on')
    p.add_argument('-m', '--measure', metavar='AT', type=int, nargs='+', default=[20], help='cut-offs of recall and MRR (default: 20)')
    p.add_argument('-e', '--eval_type', metavar='EVAL_TYPE', choices=['standard', 'conservative', 'median', 'tiebreaking'],
                   default='standard', help='tie handling in ranking: standard, conservative, median, tiebreaking (default: standard)')
    p.add_argument('-ss', '--sample_store_size', metavar='SS', type=int, default=10000000,
                   help='number of negative samples precomputed at once (default: 10000000)')
    p.add_argument('--sample_store_on_cpu', action='store_true', help='generate the sample store on the CPU (store_type=cpu)')
    p.add_argument('--original_rng', action='store_true',
                   help="draw the negative samples from the original's random stream (rng=original; implies "
                        "--sample_store_on_cpu), to compare a run step by step with the original's")
    p.add_argument('-g', '--gru4rec_model', metavar='GRFILE', default='gru4rec', help='module providing the GRU4Rec class (default: gru4rec)')
    p.add_argument('-ik', '--item_key', metavar='IK', default=None, help='item ID column (default: ItemId)')
    p.add_argument('-sk', '--session_key', metavar='SK', default=None, help='session ID column (default: SessionId)')
    p.add_argument('-tk', '--time_key', metavar='TK', default=None, help='time column (default: Time)')
    p.add_argument('-pm', '--primary_metric', metavar='METRIC', choices=['recall', 'mrr'], default='recall',
                   help='metric printed by -lpm: recall or mrr (default: recall)')
    p.add_argument('-lpm', '--log_primary_metric', action='store_true', help='print "PRIMARY METRIC: <value>" at the first cut-off')
    p.add_argument('--test_against_items', metavar='N_TEST_ITEMS', type=int, default=None,
                   help='rank against the N most popular training items instead of all (N >= 50000 unless the catalogue is smaller)')
    p.add_argument('--checkpoint_dir', metavar='DIR', default=None,
                   help='save the full training state here after every epoch (atomically)')
    p.add_argument('--resume', action='store_true', help='continue training from the checkpoint in --checkpoint_dir')
    p.add_argument('--metrics_out', metavar='FILE.json', default=None,
                   help='write parameters, per-epoch loss and speed, and all metrics to this JSON file')
    p.add_argument('--plot', metavar='FILE.png', default=None,
                   help='draw the loss per epoch and recall/MRR per cut-off (needs matplotlib)')
    p.add_argument('--seed', type=int, default=None, help='random seed of weight init, sampling, dropout and shuffling (default: 42)')
    p.add_argument('-d', '--device', default=None, help='cpu or cuda[:N] (default: from the flags file, else cpu)')
    p.add_argument('--backend', choices=['numba', 'jax', 'python'], default=None, help='numba (CPU), jax (GPU or CPU), python (slow reference)')
    p.add_argument('--chunk', metavar='K', type=int, default=None,
                   help='minibatches per compiled call in training and evaluation: 0 = one call each with the '
                        'batch shrinking as sessions end (as the original), K > 0 = K per scan call at a fixed '
                        'batch width (default: training 100 on Numba and JAX, evaluation 100 on JAX, otherwise 0; '
                        'JAX trains with K > 0 only)')
    return p


def parse_args(argv):
    args = build_parser().parse_args(argv)
    if sum(map(bool, (args.parameter_string, args.parameter_file, args.load_model))) != 1:
        raise cli.InputError('Exactly one of the following parameters must be provided: '
                         '--parameter_string, --parameter_file, --load_model')
    if args.plot and importlib.util.find_spec('matplotlib') is None:
        raise cli.InputError('--plot needs matplotlib: pip install matplotlib')
    if args.resume and not args.checkpoint_dir:
        raise cli.InputError('--resume needs --checkpoint_dir (the folder of the checkpoint to resume from)')
    if args.load_model and (args.checkpoint_dir or args.resume):
        raise cli.InputError('--checkpoint_dir and --resume are for training, not with --load_model')
    if args.load_model and (args.original_rng or args.seed is not None):
        raise cli.InputError('--original_rng and --seed are for training, not with --load_model (the loaded model '
                             'keeps the seed it was trained with)')
    if args.load_model and args.save_model:
        raise cli.InputError('--save_model cannot be used with --load_model (the model is not retrained)')
    if any(m < 1 for m in args.measure):
        raise cli.InputError(f'Cut-offs (-m) must be positive integers, got {args.measure}')
    if args.sample_store_size < 0:
        raise cli.InputError('The sample store size (-ss) must be >= 0')
    args.command = ['gru4rec'] + list(argv)   # the metrics record's command: the argv given, not sys.argv
    # every output path is checked now, before any data are read; its missing folders are made later
    # (make_output_folders), once the parameters are checked too
    args.new_folders = []   # (flag, missing folders)
    for flag, path in (('-s/--save_model', args.save_model), ('--metrics_out', args.metrics_out), ('--plot', args.plot)):
        if path is not None:
            args.new_folders.append((flag, _outputs.check_output_path(path, flag)))
    if args.checkpoint_dir is not None:
        missing = _outputs.check_output_path(args.checkpoint_dir, '--checkpoint_dir', folder=True)
        args.new_folders.append(('--checkpoint_dir', [] if args.resume else missing))   # resuming: fit checks it exists
    return args


def check_test_against_items(n, n_items):
    """Ranking against few items inflates the metrics: at least 50000 candidates, or the whole catalogue."""
    if n < 50000 and n < n_items:
        raise cli.InputError("You mustn't evaluate positive items against less than 50000 items "
                         f'(--test_against_items {n}; the catalogue has {n_items} items)')


# --- main -------------------------------------------------------------------------------------------

SUBCOMMANDS = {'recommend': 'recommend_cli', 'serve': 'serve'}   # first word -> module with main(argv)


def main(argv=None, interrupted_line=None):
    """Run the command line; returns the exit code. interrupted_line: a function of the Interrupted returning the
    line to print instead of our own (paropt's final run says what its study kept)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] in SUBCOMMANDS:   # `gru4rec recommend ...`, `gru4rec serve ...` (issue 20)
        module = importlib.import_module(('.' if __package__ else '') + SUBCOMMANDS[argv[0]], __package__ or None)
        return module.main(argv[1:])
    progress = Progress()
    return _interrupts.run_main(lambda: _main(argv, progress), cli.InputError, cli.report_error,
                                interrupted_line or progress.interrupted_line)


class Progress:
    """How far a run got, for the one line that reports a Ctrl-C or SIGTERM. stage: start (before training or
    while loading the model), training, saving, evaluating (test: the file), writing (metrics, plot)."""

    def __init__(self):
        self.args = self.model = self.saved = self.test = None
        self.stage = 'start'

    def interrupted_line(self, stop):
        """'Interrupted (SIGNAL) <where>; <what was kept>[: <how to continue>].'"""
        args, head = self.args, f'Interrupted ({stop.name})'
        if args is None or (args.load_model and self.stage == 'start'):
            return f'{head} before anything was written.'
        if args.load_model:
            return (f'{head} during the evaluation of {self.test}; nothing was written.' if self.stage == 'evaluating'
                    else f'{head} while writing the results (each file is written whole or not at all).')
        done = len(getattr(self.model, 'epoch_stats_', None) or [])
        ckpt = checkpoint_epochs(args.checkpoint_dir) if args.checkpoint_dir and (args.resume or done) else 0
        n_epochs = getattr(self.model, 'n_epochs', None)
        where = {'start': 'before training', 'saving': 'while saving the model',
                 'evaluating': f'during the evaluation of {self.test}', 'writing': 'while writing the results'}.get(
            self.stage, f'during epoch {max(done, ckpt) + 1}' if n_epochs is None or max(done, ckpt) < n_epochs
            else 'after the last epoch')
        kept = ([f'the model is saved in {self.saved}'] if self.saved else []) \
            + ([f'the checkpoint of epoch {ckpt} is in {args.checkpoint_dir}'] if ckpt else [])
        if self.stage == 'writing':
            how = ' (each result file is written whole or not at all)'
        elif self.stage == 'evaluating':
            how = ' (evaluate it with -l)' if self.saved else '' if kept else ' (use -s to keep the model)'
        elif ckpt:
            how = ': rerun the same command to continue' if args.resume else ': rerun with --resume to continue'
        else:
            how = ' yet (a checkpoint is written after every epoch)' if args.checkpoint_dir \
                else ' (use --checkpoint_dir to keep progress)'
        results = [flag for flag, path in (('--metrics_out', args.metrics_out), ('--plot', args.plot)) if path]
        unwritten = f'; {" and ".join(results)} not written' if results and self.stage != 'writing' else ''
        return f'{head} {where}; {" and ".join(kept) or "nothing was saved"}{how}{unwritten}.'


def checkpoint_epochs(folder):
    """Finished epochs of the checkpoint in folder, from its header; 0 if there is none or it is unreadable."""
    files = cli.sibling('_files')
    try:
        import numpy as np
        with np.load(os.path.join(folder, files.CHECKPOINT_NAME), allow_pickle=False) as z:
            return int(files.safe_header(z)['checkpoint']['epochs_done'])
    except Exception:
        return 0


def _main(argv, progress):
    args = parse_args(argv)
    progress.args = args
    args.progress = progress   # the stages below update it
    own, pytensor_flags = cli.resolve_config(args.device, args.backend)
    own['model_device'] = cli.apply_config(own, pytensor_flags)
    mod = cli.import_model_module(args.gru4rec_model)   # numpy, PyTensor (and JAX) are imported from here on
    cli.print_model_warnings(getattr(mod, 'GRU4RecWarning', None))
    try:
        return _run(args, own, mod, cli.sibling('evaluation'))
    except mod.GRU4RecError as e:
        raise cli.InputError(str(e)) from None


def _run(args, own, mod, evaluation):
    keys_cli = OrderedDict((k, v) for k, v in (('session_key', args.session_key), ('item_key', args.item_key),
                                                ('time_key', args.time_key)) if v is not None)
    record = {'schema': 'gru4rec-metrics/1', 'command': args.command, 'model_file': None,
              'training': None, 'evaluation': []}
    created, failed = [], []   # folders made for the outputs; ERROR lines of outputs written to a fallback
    try:
        if args.load_model:
            gru, tests = load_model(args, own, mod, keys_cli, record, created), None
        else:
            gru, tests = train_model(args, own, mod, keys_cli, record, created, failed)
            if gru.error_during_train_:
                _outputs.remove_folders(created)
                return cli.EXIT_TRAINING_FAILED
        items = candidate_items(args, gru)
        keys = (gru.session_key, gru.item_key, gru.time_key)
        if tests is None:
            tests = cli.load_test_files(args.test, keys, gru.itemidmap_.index)
        evaluate_tests(args, gru, tests, items, keys, evaluation, record)
        args.progress.stage = 'writing'
    except TrainingStopped as e:
        line, gru = e.args
        cli.report_error(line)
        write_results(args, gru, record, failed)   # the finished epochs' losses (no evaluation was run)
        return cli.EXIT_TRAINING_FAILED
    except BaseException:
        _outputs.remove_folders(created)   # those still empty: a run stopped by bad input leaves nothing behind
        raise
    write_results(args, gru, record, failed)
    return cli.EXIT_TRAINING_FAILED if failed else 0


def write_results(args, gru, record, failed):
    """--metrics_out and --plot, each to its fallback file if it cannot be written."""
    record['parameters'] = dict(gru.get_params())
    for path, what, write in ((args.metrics_out, 'the metrics', write_metrics), (args.plot, 'the plot', plot_record)):
        if path:
            write_output(path, what, lambda p, write=write: write(p, record), failed)


def write_output(path, what, write, failed):
    """write(path), or, if that fails, write to a fallback file in the temp folder (_outputs.write_or_fallback):
    its ERROR line is printed at once and appended to `failed` (the run then exits with 1)."""
    line = _outputs.write_or_fallback(path, what, write)
    if line:
        cli.report_error(line)
        failed.append(line)


def make_output_folders(args, created):
    """Create the output paths' missing folders (found by parse_args), now that the arguments and parameters
    are checked and before any data are read; `created` collects them for removal on a later bad-input stop."""
    for flag, folders in args.new_folders:
        created += _outputs.create_folders(folders, flag)


def load_model(args, own, mod, keys_cli, record, created):
    """-l: the saved model at args.path, on the configured backend and device."""
    make_output_folders(args, created)
    record['model_file'] = args.path
    print(f'Loading trained model from file: {args.path}')
    gru = mod.GRU4Rec.loadmodel(args.path, backend=own['backend'], device=own['model_device'])
    cli.check_device(gru, own, mod.GRU4RecError)
    if args.test_against_items is not None:
        check_test_against_items(args.test_against_items, gru.n_items_)
    if keys_cli:
        gru.set_params(**keys_cli)
    return gru


def train_model(args, own, mod, keys_cli, record, created, failed):
    """Create the model from -ps/-pf, read the training data and every test file (a bad one fails before
    anything is written), train, save (-s; to a fallback file, noted in `failed`, if that fails). Returns
    (model, tests); a NaN stop is printed and leaves error_during_train_ set, with nothing saved."""
    if args.parameter_file:
        params = cli.load_parameter_file(args.parameter_file)
        print(f'Loaded parameters from file: {os.path.abspath(args.parameter_file)}')
    else:
        params = cli.parse_parameter_string(args.parameter_string)
    for k, v in keys_cli.items():  # -sk/-ik/-tk name the model's columns too, unless set explicitly
        params.setdefault(k, v)
    if args.seed is not None:
        params['seed'] = args.seed
    if args.original_rng:
        params['rng'] = 'original'
    print('Creating GRU4Rec model')
    gru = mod.GRU4Rec(backend=own['backend'], device=own['model_device'])
    gru.set_params(**params)
    args.progress.model = gru
    cli.check_device(gru, own, mod.GRU4RecError)
    cli.sibling('_training').training_chunk(gru.effective_backend, args.chunk)   # before the data are read
    keys = (gru.session_key, gru.item_key, gru.time_key)
    make_output_folders(args, created)
    print('Loading training data...')
    data, _ = cli.load_data(args.path, keys, 'training')
    tests = cli.load_test_files(args.test, keys, data[keys[1]])
    if args.test_against_items is not None:
        check_test_against_items(args.test_against_items, data[keys[1]].nunique())
    store_type = None   # the backend's default: custom_opt.STORE_BY_DEFAULT
    if args.sample_store_on_cpu:
        store_type = 'cpu'
        print('WARNING! The sample store is set to be on the CPU. This will make training significantly slower on the GPU.')
    print('Started training')
    args.progress.stage = 'training'
    t0 = time.time()
    try:
        gru.fit(data, sample_store=args.sample_store_size, store_type=store_type,
                checkpoint_dir=args.checkpoint_dir, resume=args.resume, chunk=args.chunk)
    except Exception as e:   # a checkpoint that cannot be written (folder removed, disk full) stops training
        reason = _outputs.write_failure(e)
        if reason is None or not getattr(gru, 'epoch_stats_', None):
            raise
        record['training'] = training_record(gru, time.time() - t0)
        raise TrainingStopped(keep_trained(args, gru, reason), gru) from None
    if gru.error_during_train_:
        kept = ' (the checkpoint of the last finished epoch is kept)' if args.checkpoint_dir else ''
        print(f'ERROR. Training stopped: the loss became NaN in epoch {gru.error_epoch_}, step {gru.error_step_}. '
              f'No model was saved and no evaluation was run{kept}. '
              f'{gru.nan_hint() or "Try a lower learning_rate or a grad_cap"}.', file=sys.stderr)
        return gru, tests
    seconds = time.time() - t0
    record['training'] = training_record(gru, seconds)
    print(f'Total training time: {seconds:.2f}s')
    del data
    if args.save_model is not None:
        print(f'Saving trained model to: {args.save_model}')
        args.progress.stage = 'saving'
        with _interrupts.deferred():   # a Ctrl-C now takes effect once the model is written
            n_failed = len(failed)
            write_output(args.save_model, 'the model', gru.savemodel, failed)
            if len(failed) == n_failed:   # (else the ERROR line names the fallback file)
                args.progress.saved = args.save_model
    return gru, tests


def training_record(gru, seconds):
    """The metrics record's training part: the finished epochs' statistics and speeds."""
    return {'seconds': seconds, 'epochs': [
        dict(e, mb_per_s=e['steps'] / e['seconds'], events_per_s=e['events'] / e['seconds']) for e in gru.epoch_stats_]}


class TrainingStopped(Exception):
    """Training stopped after some epochs, what they trained is kept: args (the ERROR line, the model); exit
    code 1."""


def keep_trained(args, gru, reason):
    """The ERROR line when a checkpoint write stopped training: the model of the epochs trained so far goes to
    -s, or, if that fails or -s is not given, to a fallback file in the temp folder."""
    head = (f'Cannot write the checkpoint in {args.checkpoint_dir} ({reason}): training stopped after epoch '
            f'{len(gru.epoch_stats_)}; ')
    if args.save_model is not None:
        line = _outputs.write_or_fallback(args.save_model, 'its model', gru.savemodel)
        return head + (line[0].lower() + line[1:] if line else f'its model was saved to {args.save_model}')
    fallback, failure = _outputs.write_fallback('model.gru4rec', gru.savemodel)
    return head + (failure or f'its model was saved to {fallback}')


def candidate_items(args, gru):
    """--test_against_items N: the N most popular training items (checked against the catalogue size before
    training or after loading); None: all items."""
    if args.test_against_items is None:
        return None
    import numpy as np
    top = np.argsort(-gru.item_support_, kind='stable')[:args.test_against_items]
    items = gru.itemidmap_.index[top]
    print(f'WARNING! Evaluating against the {len(items)} most popular training items instead of the full catalogue.')
    return items


def evaluate_tests(args, gru, tests, items, keys, evaluation, record):
    """Evaluate on every test file, printing the original's lines; the results go to record['evaluation']."""
    for test_file, (test, message) in zip(args.test or [], tests):
        args.progress.stage, args.progress.test = 'evaluating', test_file
        print('Loading test data...')
        print(message)
        print(f'Starting evaluation (cut-off={args.measure}, using {args.eval_type} mode for tiebreaking)')
        t0 = time.time()
        recall, mrr, details = evaluation.evaluate_gpu(gru, test, items=items, session_key=keys[0], item_key=keys[1],
                                                       time_key=keys[2], cut_off=args.measure, batch_size=512,
                                                       mode=args.eval_type, return_details=True, chunk=args.chunk)
        seconds = time.time() - t0
        print(f'Evaluation took {seconds:.2f}s')
        record['evaluation'].append(dict(details, test_file=test_file, mode=args.eval_type, seconds=seconds,
                                         cut_offs=list(args.measure), recall=dict(zip(map(str, args.measure), recall)),
                                         mrr=dict(zip(map(str, args.measure), mrr))))
        for c, r, m in zip(args.measure, recall, mrr):
            print(f'Recall@{c}: {r:.6f} MRR@{c}: {m:.6f}')
        if args.log_primary_metric:
            print(f'PRIMARY METRIC: {recall[0] if args.primary_metric == "recall" else mrr[0]}')


def plot_record(path, record):
    """Loss per epoch (if trained) and recall/MRR per cut-off of each test file, in one PNG."""
    import matplotlib
    import matplotlib.ticker
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    panels = (['loss'] if record['training'] else []) + ['metrics'] * bool(record['evaluation'])
    fig, axes = plt.subplots(1, max(len(panels), 1), figsize=(5.5 * max(len(panels), 1), 4), squeeze=False)
    for ax, panel in zip(axes[0], panels):
        if panel == 'loss':
            epochs = record['training']['epochs']
            ax.plot([e['epoch'] for e in epochs], [e['loss'] for e in epochs], marker='o')
            ax.set(xlabel='epoch', ylabel='training loss', title='Loss per epoch')
            ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
        else:
            for ev in record['evaluation']:
                name = os.path.basename(ev['test_file'])
                ax.plot(ev['cut_offs'], [ev['recall'][str(c)] for c in ev['cut_offs']], marker='o', label=f'Recall ({name})')
                ax.plot(ev['cut_offs'], [ev['mrr'][str(c)] for c in ev['cut_offs']], marker='s', label=f'MRR ({name})')
            ax.set(xlabel='cut-off N', ylabel='metric@N', title=f'Evaluation ({record["evaluation"][0]["mode"]} ties)')
            ax.legend(fontsize='small')
    fig.tight_layout()
    data = io.BytesIO()
    fig.savefig(data, format='png', dpi=100)
    plt.close(fig)
    cli.sibling('_files').atomic_write(path, lambda f: f.write(data.getvalue()))


def write_metrics(path, record):
    """The run's record as JSON, written atomically (schema: README, --metrics_out)."""
    import json
    text = json.dumps(record, indent=1, default=float).encode('utf-8')
    cli.sibling('_files').atomic_write(path, lambda f: f.write(text))


if __name__ == '__main__':
    sys.exit(main())
