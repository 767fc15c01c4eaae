"""What the command lines (run.py, paropt.py) share: their configuration (PyTensor flags, our own flags, the
device and backend), applied before numpy, PyTensor or JAX are imported; the 'ERROR.' convention for bad
input; the argument parser; parameter strings and files; reading click-log files; and importing the model
module once the configuration is applied.

Configuration comes from, in increasing priority: the flags file `.theanorc_gru4rec` beside this module, the
environment (THEANO_FLAGS, then PYTENSOR_FLAGS), and the command line (-d/--device, --backend). This module
imports no numerics at module level (load_data imports pandas when it runs).
"""
import argparse
import configparser
import importlib
import importlib.util
import os
import sys
from collections import OrderedDict

if __package__:
    from . import _devices
else:
    import _devices

FLAGS_FILE = os.path.join(os.path.dirname(os.path.abspath(__file__)), '.theanorc_gru4rec')
OWN_FLAGS = ('device', 'backend', 'blas_threads')
EXIT_BAD_INPUT, EXIT_TRAINING_FAILED = 2, 1


class InputError(Exception):
    """A user error the command line reports as one 'ERROR.' line."""


def report_error(message):
    """Print one 'ERROR.' line on stderr (after what stdout holds so far); returns the exit code of bad input."""
    sys.stdout.flush()
    print('ERROR. ' + ' '.join(str(message).split()), file=sys.stderr)   # always one line
    return EXIT_BAD_INPUT


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
    """Merge file < THEANO_FLAGS < PYTENSOR_FLAGS < command line. Returns (own flags, PyTensor flags); the
    device is checked by _devices.parse_device and picks the backend when none is given for it."""
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
    try:
        _devices.parse_device(device)
    except ValueError:
        raise InputError(f'Unknown device "{device}" (use cpu or cuda[:N])') from None
    own['device'] = device
    own['backend'] = own.get('backend', _devices.default_backend(device)).strip().lower()
    return own, flags


def apply_config(own, pytensor_flags, environ=os.environ):
    """Set the environment of this process before numpy/PyTensor/JAX are imported. Returns the model's device
    parameter: None for cpu (the backend's default device), cpu:N as it is; for cuda:N, CUDA_VISIBLE_DEVICES=N
    is set (so JAX takes no memory on the other GPUs) and the model uses 'cuda', the one GPU left visible; if
    the environment already sets CUDA_VISIBLE_DEVICES, it is kept and N counts among the GPUs it lists."""
    environ['PYTENSOR_FLAGS'] = ','.join(f'{k}={v}' for k, v in pytensor_flags.items())
    threads = own.get('blas_threads')
    if threads:
        _devices.pin_threads(threads, environ)
    kind, index = _devices.parse_device(own['device'])   # (checked by resolve_config)
    if kind == 'cpu':
        return None if index is None else f'cpu:{index}'
    if 'CUDA_VISIBLE_DEVICES' in environ:
        return f'cuda:{index or 0}'
    environ['CUDA_VISIBLE_DEVICES'] = str(index or 0)
    return 'cuda'


def sibling(name):
    """This package's module `name`, imported now (a module of the checkout when this one was imported from it):
    the command lines import the modules that load numpy, PyTensor and JAX only after apply_config."""
    return importlib.import_module(f'{__package__}.{name}' if __package__ else name)


def print_model_warnings(category):
    """Show the model's own warnings (`category`) as one 'WARNING!' line on stdout, as the command line's other
    warnings, instead of Python's two-line file:line form; other warnings keep the default form."""
    if category is None:
        return
    import warnings
    default = warnings.showwarning

    def show(message, cat, filename, lineno, file=None, line=None):
        if issubclass(cat, category):
            print('WARNING! ' + ' '.join(str(message).split()), flush=True)
        else:
            default(message, cat, filename, lineno, file, line)
    warnings.showwarning = show


def import_model_module(name):
    """The module providing GRU4Rec (-g): ours for the default name; otherwise a module found from the working
    directory. Imports numpy and PyTensor: call it after apply_config."""
    if name == 'gru4rec':
        return sibling('gru4rec')
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(name)
    except ImportError as e:
        raise InputError(f'Cannot import the model module "{name}" (-g): {e}') from None
    if not hasattr(module, 'GRU4Rec'):
        raise InputError(f'The module "{name}" (-g) has no GRU4Rec class')
    return module


# --- arguments --------------------------------------------------------------------------------------

class Parser(argparse.ArgumentParser):
    """Accepts --some-flag for every --some_flag (the original's underscore style stays primary); usage
    errors follow the 'ERROR.' convention too (an InputError instead of argparse's own exit)."""

    def add_argument(self, *names, **kw):
        aliases = [n.replace('_', '-') for n in names if n.startswith('--') and '_' in n]
        return super().add_argument(*names, *[a for a in aliases if a not in names], **kw)

    def error(self, message):
        raise InputError(message[0].upper() + message[1:])


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


# --- data ---------------------------------------------------------------------------------------------

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


def load_test_files(paths, keys, train_items):
    """Load and check every test file before training, so that a bad one fails before anything is written.
    train_items: the training item IDs; test item IDs of another type are converted to theirs (_item_ids)."""
    tests = []
    if paths:
        import pandas as pd
        item_ids = sibling('_item_ids')
        train_items = pd.Index(pd.unique(pd.Series(list(train_items) if isinstance(train_items, (set, frozenset))
                                                   else train_items)))
    for path in paths or []:
        test, message = load_data(path, keys, 'test', quiet=True)
        try:
            known = item_ids.item_rows(train_items, test[keys[1]], f'item IDs of the test file {path}') >= 0
        except item_ids.GRU4RecError as e:
            raise InputError(str(e)) from None
        if not known.any():
            raise InputError(f'The test file {path} shares no items with the training data')
        tests.append((test, message))
    return tests


def check_device(gru, own, error):
    """A device that JAX does not see (or a missing JAX) fails here, before the data are read, naming the -d
    that asked for it (the model sees 'cuda' once apply_config has hidden the other GPUs)."""
    try:
        gru.compile_mode()
    except error as e:
        if own['device'] == 'cpu':
            raise
        mask = os.environ.get('CUDA_VISIBLE_DEVICES')
        raise InputError(f'-d {own["device"]}' + (f' (CUDA_VISIBLE_DEVICES={mask})' if mask is not None else '')
                     + f': {e}') from None
