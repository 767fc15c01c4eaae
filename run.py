"""Command line for GRU4Rec: train (or load) a model, optionally save it, evaluate on test files.

    python run.py TRAIN -t TEST [TEST ...] -m 1 5 10 20 -ps loss=bpr-max,final_act=elu-0.5,layers=100
    python run.py TRAIN -t TEST -pf param_samples/rsc15_bpr-max.py -s model.pickle
    python run.py model.pickle -l -t TEST -e conservative

Configuration (PyTensor flags plus our own `device` and `backend`) comes from, in increasing priority:
the flags file `.theanorc_gru4rec` beside this script, the environment (THEANO_FLAGS, then PYTENSOR_FLAGS),
and the command line (-d/--device, --backend). It is applied before PyTensor is imported.
Bad input ends with one line on stderr starting with 'ERROR.' and exit code 2.
"""
import argparse
import configparser
import importlib
import importlib.util
import io
import os
import re
import shutil
import sys
import time
from collections import OrderedDict

FLAGS_FILE = os.path.join(os.path.dirname(os.path.abspath(__file__)), '.theanorc_gru4rec')
OWN_FLAGS = ('device', 'backend', 'blas_threads')
# cuda[:N] or Theano's gpuN (group 1: N). custom_opt.parse_device reads the same names, but importing it
# imports PyTensor, which must wait until the configuration is applied.
GPU_DEVICE = re.compile(r'(?:cuda|gpu):?(\d*)')
EXIT_BAD_INPUT, EXIT_TRAINING_FAILED = 2, 1


class InputError(Exception):
    """A user error the CLI reports as one 'ERROR.' line."""


# --- configuration -------------------------------------------------------------------------------

def parse_flag_string(text):
    """'a=1,b=2' -> {'a': '1', 'b': '2'} (THEANO_FLAGS / PYTENSOR_FLAGS syntax)."""
    flags = OrderedDict()
    for part in filter(None, (p.strip() for p in (text or '').split(','))):
        if '=' not in part:
            raise InputError(f'Invalid flag "{part}" (expected name=value)')
        k, v = part.split('=', 1)
        flags[k.strip()] = v.strip()
    return flags


def read_flags_file(path):
    """Flags of an INI file with a [global] section (other sections become section__name keys)."""
    flags = OrderedDict()
    if not os.path.isfile(path):
        return flags
    cp = configparser.ConfigParser(interpolation=None)
    cp.optionxform = str
    try:
        cp.read(path)
    except configparser.Error as e:
        raise InputError(f'Cannot parse the flags file {path}: {e}') from None
    for section in cp.sections():
        for k, v in cp.items(section):
            flags[k if section == 'global' else f'{section}__{k}'] = v
    return flags


def resolve_config(cli_device=None, cli_backend=None, environ=os.environ, flags_file=FLAGS_FILE):
    """Merge file < THEANO_FLAGS < PYTENSOR_FLAGS < command line. Returns (own flags, PyTensor flags)."""
    flags = read_flags_file(flags_file)
    flags.update(parse_flag_string(environ.get('THEANO_FLAGS')))
    flags.update(parse_flag_string(environ.get('PYTENSOR_FLAGS')))
    if cli_device is not None:
        flags['device'] = cli_device
        if cli_backend is None:  # the device's own backend, not one configured for another device
            flags.pop('backend', None)
    if cli_backend is not None:
        flags['backend'] = cli_backend
    own = {k: flags.pop(k) for k in OWN_FLAGS if k in flags}
    device = own.get('device', 'cpu').strip().lower()
    if device != 'cpu' and not GPU_DEVICE.fullmatch(device):
        raise InputError(f'Unknown device "{device}" (use cpu or cuda[:N])')
    own['device'] = device
    own.setdefault('backend', 'numba' if device == 'cpu' else 'jax')
    return own, flags


def apply_config(own, pytensor_flags, environ=os.environ):
    """Set the environment of this process before numpy/PyTensor/JAX are imported. Returns the model's device
    parameter: None for cpu (the backend's default device); for cuda:N, CUDA_VISIBLE_DEVICES=N is set (so JAX
    takes no memory on the other GPUs) and the model uses 'cuda', the one GPU left visible; if the environment
    already sets CUDA_VISIBLE_DEVICES, it is kept and N counts among the GPUs it lists."""
    environ['PYTENSOR_FLAGS'] = ','.join(f'{k}={v}' for k, v in pytensor_flags.items())
    threads = own.get('blas_threads')
    if threads:
        for var in ('OPENBLAS_NUM_THREADS', 'OMP_NUM_THREADS', 'MKL_NUM_THREADS', 'NUMBA_NUM_THREADS'):
            environ.setdefault(var, str(threads))
    if own['device'] == 'cpu':
        return None
    index = GPU_DEVICE.fullmatch(own['device'])[1] or '0'   # (checked by resolve_config)
    if 'CUDA_VISIBLE_DEVICES' in environ:
        return f'cuda:{index}'
    environ['CUDA_VISIBLE_DEVICES'] = index
    return 'cuda'


# --- arguments --------------------------------------------------------------------------------------

def build_parser():
    width = shutil.get_terminal_size().columns
    p = _Parser(prog='gru4rec', description='Train or load a GRU4Rec model and evaluate it.',
                                formatter_class=lambda prog: argparse.HelpFormatter(prog, width=width, max_help_position=width // 3))
    p.add_argument('path', metavar='PATH', help='training data (.tsv/.txt: tab, .csv: comma, optionally .gz/.bz2/.xz/.zip; '
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


class _Parser(argparse.ArgumentParser):
    """Accepts --some-flag for every --some_flag (the original's underscore style stays primary); usage
    errors follow the 'ERROR.' convention too (an InputError instead of argparse's own exit)."""

    def add_argument(self, *names, **kw):
        aliases = [n.replace('_', '-') for n in names if n.startswith('--') and '_' in n]
        return super().add_argument(*names, *[a for a in aliases if a not in names], **kw)

    def error(self, message):
        raise InputError(message[0].upper() + message[1:])


def parse_args(argv):
    args = build_parser().parse_args(argv)
    if sum(map(bool, (args.parameter_string, args.parameter_file, args.load_model))) != 1:
        raise InputError('Exactly one of the following parameters must be provided: '
                         '--parameter_string, --parameter_file, --load_model')
    if args.plot and importlib.util.find_spec('matplotlib') is None:
        raise InputError('--plot needs matplotlib: pip install matplotlib')
    if args.resume and not args.checkpoint_dir:
        raise InputError('--resume needs --checkpoint_dir (the folder of the checkpoint to resume from)')
    if args.load_model and (args.checkpoint_dir or args.resume):
        raise InputError('--checkpoint_dir and --resume are for training, not with --load_model')
    if args.load_model and args.save_model:
        raise InputError('--save_model cannot be used with --load_model (the model is not retrained)')
    if any(m < 1 for m in args.measure):
        raise InputError(f'Cut-offs (-m) must be positive integers, got {args.measure}')
    if args.sample_store_size < 0:
        raise InputError('The sample store size (-ss) must be >= 0')
    return args


def parse_parameter_string(text):
    params = OrderedDict()
    for part in text.split(','):
        if not part.strip():
            continue
        if part.count('=') != 1:
            raise InputError(f'Invalid item "{part}" in the parameter string (expected name=value; values cannot contain , or =)')
        k, v = part.split('=')
        params[k.strip()] = v.strip()
    if not params:
        raise InputError('The parameter string is empty')
    return params


def load_parameter_file(path):
    if not os.path.isfile(path):
        raise InputError(f'Parameter file not found: {path}')
    spec = importlib.util.spec_from_file_location('gru4rec_parameter_file', path)
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except Exception as e:
        raise InputError(f'Cannot execute the parameter file {path}: {type(e).__name__}: {e}') from None
    params = getattr(module, 'gru4rec_params', None)
    if not isinstance(params, dict):
        raise InputError(f'The parameter file {path} does not define the dict gru4rec_params')
    return OrderedDict(params)


# --- data -------------------------------------------------------------------------------------------

COMPRESSIONS = ('.gz', '.bz2', '.xz', '.zst', '.zip')


def data_format(path):
    """'pickle', 'parquet', or the separator of a text file: ',' for .csv, tab for anything else (.tsv,
    .txt, ...); a compression suffix (.gz, .bz2, .xz, .zst, .zip) is looked through."""
    name = str(path).lower()
    for suffix in COMPRESSIONS:
        if name.endswith(suffix):
            name = name[:-len(suffix)]
            break
    if name.endswith(('.pickle', '.pkl')):
        return 'pickle'
    if name.endswith('.parquet'):
        return 'parquet'
    return ',' if name.endswith('.csv') else '\t'


def load_data(path, keys, what, quiet=False):
    """Read the session, item and time columns of a data file, its format chosen by the extension (see
    data_format). Item IDs are read as strings from text files, as in the original. Returns (data, the
    line announcing it)."""
    import pandas as pd
    session_key, item_key, time_key = keys
    if not os.path.exists(path):
        raise InputError(f'The {what} file does not exist: {path}')
    if not os.path.isfile(path):
        raise InputError(f'The {what} path is not a file: {path}')
    fmt = data_format(path)
    text = fmt in (',', '\t')
    try:
        if fmt == 'pickle':
            message = f'Loading data from pickle file: {path}'
            data = pd.read_pickle(path)
        elif fmt == 'parquet':
            message = f'Loading data from parquet file: {path}'
            data = pd.read_parquet(path)
        else:
            message = f'Loading data from {"TAB" if fmt == chr(9) else "COMMA"} separated file: {path}'
            data = pd.read_csv(path, sep=fmt, nrows=0)
    except pd.errors.EmptyDataError:
        raise InputError(f'The {what} file is empty: {path}') from None
    except ImportError as e:
        raise InputError(f'Reading {path} needs an optional package: {e} (pip install pyarrow)') from None
    except Exception as e:  # any decoder error (gzip, zlib, unicode, parser, pickle) means: cannot read it
        raise InputError(f'Cannot read the {what} file {path}: {type(e).__name__}: {e}') from None
    if not isinstance(data, pd.DataFrame):
        raise InputError(f'The {what} file {path} does not hold a pandas DataFrame')
    columns = list(data.columns)
    if any(not str(c).isprintable() for c in columns):
        raise InputError(f'Cannot read the {what} file {path}: it does not look like {"comma" if fmt == "," else "tab"}-separated text')
    labels = (('session IDs', session_key, 'SessionId', 'session_key'), ('item IDs', item_key, 'ItemId', 'item_key'),
              ('time', time_key, 'Time', 'time_key'))
    for label, key, default, param in labels:
        if key not in columns:
            other = ';' if fmt == ',' else ',;'
            hint = (f' (is the file {"comma" if fmt == "," else "tab"}-separated?)'
                    if text and len(columns) == 1 and any(c in str(columns[0]) for c in other) else '')
            raise InputError(f'The column specified for {label} "{key}" is not in the {what} file ({path}){hint}; '
                             f'columns found: {", ".join(map(str, columns))}. The default column name is "{default}", '
                             f'set another with -{param[0]}k or the {param} parameter.')
    if text:
        try:
            data = pd.read_csv(path, sep=fmt, usecols=[session_key, item_key, time_key], dtype={item_key: str})
        except Exception as e:  # as above: truncated archives fail only here, past the header
            raise InputError(f'Cannot read the {what} file {path}: {type(e).__name__}: {e}') from None
    else:
        data = data[[session_key, item_key, time_key]]
    if len(data) == 0:
        raise InputError(f'The {what} file has no events: {path}')
    if (data[session_key].astype(str) == session_key).any():
        raise InputError(f'The {what} file {path} repeats its header line inside the data')
    if not quiet:
        print(message)
    return data, message


def check_test_against_items(n, n_items):
    """Ranking against few items inflates the metrics: at least 50000 candidates, or the whole catalogue."""
    if n < 50000 and n < n_items:
        raise InputError("You mustn't evaluate positive items against less than 50000 items "
                         f'(--test_against_items {n}; the catalogue has {n_items} items)')


def load_test_files(paths, keys, known_items):
    """Load and check every test file before training, so that a bad one fails before anything is written."""
    tests = []
    for path in paths or []:
        test, message = load_data(path, keys, 'test', quiet=True)
        if not test[keys[1]].isin(known_items).any():
            raise InputError(f'The test file {path} shares no items with the training data')
        tests.append((test, message))
    return tests


# --- main -------------------------------------------------------------------------------------------

SUBCOMMANDS = {'recommend': 'recommend_cli', 'serve': 'serve'}   # first word -> module with main(argv)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] in SUBCOMMANDS:   # `gru4rec recommend ...`, `gru4rec serve ...` (issue 20)
        module = importlib.import_module(('.' if __package__ else '') + SUBCOMMANDS[argv[0]], __package__ or None)
        return module.main(argv[1:])
    try:
        return _main(argv)
    except InputError as e:
        return _error(str(e))
    except KeyboardInterrupt:
        print('Interrupted.', file=sys.stderr)
        return 130


def _error(message):
    sys.stdout.flush()
    print('ERROR. ' + ' '.join(str(message).split()), file=sys.stderr)   # always one line
    return EXIT_BAD_INPUT


def _main(argv):
    args = parse_args(argv)
    own, pytensor_flags = resolve_config(args.device, args.backend)
    own['model_device'] = apply_config(own, pytensor_flags)
    gru4rec_module = _import_model_module(args.gru4rec_model)
    try:
        from . import evaluation
    except ImportError:
        import evaluation
    try:
        return _run(args, own, gru4rec_module, evaluation)
    except gru4rec_module.GRU4RecError as e:
        return _error(str(e))


def _import_model_module(name):
    """Our gru4rec module for the default name; otherwise a module found from the working directory."""
    if name == 'gru4rec':
        try:
            from . import gru4rec as module
        except ImportError:
            import gru4rec as module
        return module
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(name)
    except ImportError as e:
        raise InputError(f'Cannot import the model module "{name}" (-g): {e}') from None
    if not hasattr(module, 'GRU4Rec'):
        raise InputError(f'The module "{name}" (-g) has no GRU4Rec class')
    return module


def check_device(gru, own, error):
    """A device that JAX does not see (or a missing JAX) fails here, before the data are read, naming the -d
    that asked for it (the model sees 'cuda' once apply_config has hidden the other GPUs)."""
    try:
        gru._mode()
    except error as e:
        if own['device'] == 'cpu':
            raise
        mask = os.environ.get('CUDA_VISIBLE_DEVICES')
        raise InputError(f'-d {own["device"]}' + (f' (CUDA_VISIBLE_DEVICES={mask})' if mask is not None else '')
                         + f': {e}') from None


def _run(args, own, mod, evaluation):
    GRU4Rec = mod.GRU4Rec
    keys_cli = OrderedDict((k, v) for k, v in (('session_key', args.session_key), ('item_key', args.item_key),
                                                ('time_key', args.time_key)) if v is not None)
    tests = None
    record = {'schema': 'gru4rec-metrics/1', 'command': ['gru4rec'] + list(sys.argv[1:]), 'model_file': None,
              'training': None, 'evaluation': []}
    if args.load_model:
        record['model_file'] = args.path
        print(f'Loading trained model from file: {args.path}')
        gru = GRU4Rec.loadmodel(args.path, backend=own['backend'], device=own['model_device'])
        check_device(gru, own, mod.GRU4RecError)
        if args.test_against_items is not None:
            check_test_against_items(args.test_against_items, gru.n_items)
        if keys_cli:
            gru.set_params(**keys_cli)
    else:
        if args.parameter_file:
            params = load_parameter_file(args.parameter_file)
            print(f'Loaded parameters from file: {os.path.abspath(args.parameter_file)}')
        else:
            params = parse_parameter_string(args.parameter_string)
        for k, v in keys_cli.items():  # -sk/-ik/-tk name the model's columns too, unless set explicitly
            params.setdefault(k, v)
        if args.seed is not None:
            params['seed'] = args.seed
        if args.original_rng:
            params['rng'] = 'original'
        print('Creating GRU4Rec model')
        gru = GRU4Rec(backend=own['backend'], device=own['model_device'])
        gru.set_params(**params)
        check_device(gru, own, mod.GRU4RecError)
        keys = (gru.session_key, gru.item_key, gru.time_key)
        print('Loading training data...')
        data, _ = load_data(args.path, keys, 'training')
        tests = load_test_files(args.test, keys, set(data[keys[1]].unique()))
        if args.test_against_items is not None:
            check_test_against_items(args.test_against_items, data[keys[1]].nunique())
        store_type = None   # the backend's default: custom_opt.STORE_BY_DEFAULT
        if args.sample_store_on_cpu:
            store_type = 'cpu'
            print('WARNING! The sample store is set to be on the CPU. This will make training significantly slower on the GPU.')
        print('Started training')
        t0 = time.time()
        gru.fit(data, sample_store=args.sample_store_size, store_type=store_type,
                checkpoint_dir=args.checkpoint_dir, resume=args.resume, chunk=args.chunk)
        if gru.error_during_train:
            kept = ' (the checkpoint of the last finished epoch is kept)' if args.checkpoint_dir else ''
            print(f'ERROR. Training stopped: the loss became NaN in epoch {gru.error_epoch}, step {gru.error_step}. '
                  f'No model was saved and no evaluation was run{kept}. '
                  f'{gru.nan_hint() or "Try a lower learning_rate or a grad_cap"}.', file=sys.stderr)
            return EXIT_TRAINING_FAILED
        seconds = time.time() - t0
        record['training'] = {'seconds': seconds, 'epochs': [
            dict(e, mb_per_s=e['steps'] / e['seconds'], events_per_s=e['events'] / e['seconds']) for e in gru.epoch_stats_]}
        print(f'Total training time: {seconds:.2f}s')
        del data
        if args.save_model is not None:
            print(f'Saving trained model to: {args.save_model}')
            gru.savemodel(args.save_model)
    items = None
    if args.test_against_items is not None:
        n = args.test_against_items   # checked against the catalogue size before training or after loading
        import numpy as np
        top = np.argsort(-gru.item_support, kind='stable')[:n]
        items = gru.itemidmap.index[top]
        print(f'WARNING! Evaluating against the {len(items)} most popular training items instead of the full catalogue.')
    keys = (gru.session_key, gru.item_key, gru.time_key)
    if tests is None:
        tests = load_test_files(args.test, keys, set(gru.itemidmap.index))
    for test_file, (test, message) in zip(args.test or [], tests):
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
    record['parameters'] = dict(gru.get_params())
    if args.metrics_out:
        write_metrics(args.metrics_out, record)
    if args.plot:
        plot_record(args.plot, record)
    return 0


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
    _import_model_module('gru4rec').atomic_write(path, lambda f: f.write(data.getvalue()))


def write_metrics(path, record):
    """The run's record as JSON, written atomically (schema: README, --metrics_out)."""
    import json
    text = json.dumps(record, indent=1, default=float).encode('utf-8')
    _import_model_module('gru4rec').atomic_write(path, lambda f: f.write(text))

if __name__ == '__main__':
    sys.exit(main())
