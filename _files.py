"""Files: atomic writes, the safe model format (a numpy zip of arrays with a JSON header, read without
unpickling anything), the plain-data pickle format, and training checkpoints (a safe-format model plus what
resuming needs).
"""
import json
import os
import pickle
import tempfile
import zlib
from collections import OrderedDict

import numpy as np

if __package__:
    from . import _params
else:
    import _params

MODEL_FORMAT = 'gru4rec-pytensor'
MODEL_VERSION = 1
CHECKPOINT_NAME = 'checkpoint.gru4rec'
GRU4RecError = _params.GRU4RecError


def new_file_mode():
    """The mode open() gives a new file: 0o666 less the umask (read from /proc, else by setting it and back)."""
    try:
        with open('/proc/self/status') as f:
            mask = next(int(line.split()[1], 8) for line in f if line.startswith('Umask:'))
    except (OSError, StopIteration, ValueError, IndexError):
        mask = os.umask(0o22)
        os.umask(mask)
    return 0o666 & ~mask


def atomic_write(fname, write):
    """Write through a temporary file in the target folder, then rename: the target is never half-written.
    The file gets the mode of a newly created file (new_file_mode), not the temporary file's 0o600."""
    folder = os.path.dirname(os.path.abspath(fname))
    fd, tmp = tempfile.mkstemp(prefix='.tmp-', dir=folder)
    try:
        with os.fdopen(fd, 'wb') as f:
            os.fchmod(f.fileno(), new_file_mode())
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, fname)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


# --- models ------------------------------------------------------------------------------------------

def write_model(fname, params, item_ids, item_support, weights):
    """Save a model atomically. `.pickle`/`.pkl`: a pickle of plain data (compatibility); anything else: the
    safe format. params: saved_params(...); weights: a function returning name -> numpy array."""
    if str(fname).endswith(('.pickle', '.pkl')):
        state = {'format': MODEL_FORMAT, 'version': MODEL_VERSION, 'params': params, 'item_ids': np.asarray(item_ids),
                 'item_support': item_support, 'weights': dict(weights())}
        atomic_write(fname, lambda f: pickle.dump(state, f, protocol=pickle.HIGHEST_PROTOCOL))
        return
    write_safe(fname, *model_payload(params, item_ids, item_support, weights))


def saved_params(p):
    """The parameters stored in model files (a dict): all of p but the device, which is the loading machine's
    choice."""
    params = dict(p.as_dict())
    params.pop('device')
    return params


def model_payload(params, item_ids, item_support, weights):
    """(JSON header, arrays) of the safe model format. weights: a function returning name -> numpy array
    (called after the item IDs are checked)."""
    ids = np.asarray(item_ids)
    if ids.dtype.kind not in 'iuf':
        if not all(isinstance(i, str) for i in ids):
            raise GRU4RecError('Item IDs mixing strings and numbers cannot be stored in the safe format; '
                               'save to a .pickle file instead')
        ids = ids.astype(str)
    weights = weights()
    header = {'format': MODEL_FORMAT, 'version': MODEL_VERSION, 'params': params,
              'item_id_kind': 'str' if ids.dtype.kind == 'U' else 'numeric', 'weights': list(weights)}
    arrays = {'item_ids': ids, 'item_support': item_support}
    arrays.update({f'w_{k}': v for k, v in weights.items()})
    return header, arrays


def read_model(fname):
    """The state dict of a model file (format, version, params, item_ids, item_support, weights), recognising
    the format by its content. The safe format is read with numpy's allow_pickle=False; a pickle with a
    loader that accepts plain data only (numpy arrays, builtins), so files of the original Theano GRU4Rec or
    crafted pickles are refused. GRU4RecError for anything that is not a model file of this version."""
    try:
        with open(fname, 'rb') as f:
            magic = f.read(4)
            f.seek(0)
            if magic == b'PK\x03\x04':
                state = read_safe_model(f, fname)
            elif magic[:1] != b'\x80':   # pickles of protocol 2 and up (ours, the original's) start so
                raise GRU4RecError(f'{fname} is not a GRU4Rec model file (neither the safe format nor a pickle)')
            else:
                print('Loading a pickled model: pickles from untrusted sources can run code. This loader '
                      'accepts plain data only; prefer the safe format (e.g. -s model.gru4rec).')
                state = DataUnpickler(f).load()
    except OSError as e:
        raise GRU4RecError(f'Cannot read model file {fname}: {e.strerror}') from None
    except GRU4RecError:
        raise
    except Exception as e:
        raise GRU4RecError(f'{fname} is not a GRU4Rec model file (or it is truncated): {type(e).__name__}: {e}') from None
    if not isinstance(state, dict) or state.get('format') != MODEL_FORMAT:
        raise GRU4RecError(f'{fname} is not a GRU4Rec model file of this implementation')
    if state.get('version') != MODEL_VERSION:
        raise GRU4RecError(f'{fname} has model format version {state.get("version")}; this version reads {MODEL_VERSION}')
    return state


def write_safe(fname, header, arrays):
    """Arrays plus a JSON header in a numpy zip, written atomically."""
    arrays = dict(arrays, header=np.frombuffer(json.dumps(header).encode('utf-8'), dtype=np.uint8))
    atomic_write(fname, lambda f: np.savez(f, **arrays))


def safe_header(z):
    """The JSON header of an open safe-format file (the counterpart of write_safe)."""
    return json.loads(bytes(z['header']).decode('utf-8'))


def read_safe_model(f, fname):
    """The state dict of a safe-format model file (numpy zip, no pickles allowed)."""
    with np.load(f, allow_pickle=False) as z:
        header = safe_header(z)
        if not isinstance(header, dict):
            raise GRU4RecError(f'{fname} is not a GRU4Rec model file of this implementation')
        if header.get('format') == MODEL_FORMAT and header.get('version') == MODEL_VERSION:
            header['item_ids'] = z['item_ids'].astype(object) if header.get('item_id_kind') == 'str' else z['item_ids']
            header['item_support'] = z['item_support']
            header['weights'] = OrderedDict((k, z[f'w_{k}']) for k in header['weights'])
        return header


class DataUnpickler(pickle.Unpickler):
    """Unpickles numpy arrays, pandas-free plain data and builtins only; refuses any other class."""
    ALLOWED = {('numpy', 'ndarray'), ('numpy', 'dtype'), ('numpy.core.multiarray', '_reconstruct'),
               ('numpy._core.multiarray', '_reconstruct'), ('numpy.core.multiarray', 'scalar'),
               ('numpy._core.multiarray', 'scalar'), ('numpy.core.numeric', '_frombuffer'),
               ('numpy._core.numeric', '_frombuffer'), ('collections', 'OrderedDict'),
               ('builtins', 'slice'), ('builtins', 'complex')}

    def find_class(self, module, name):
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        if module.split('.')[0] in ('theano', 'gru4rec', 'custom_theano_ops', 'pygpu', 'lasagne'):
            raise GRU4RecError('This looks like a model pickled by the original Theano GRU4Rec; it cannot be '
                               'loaded here (retrain with this implementation)')
        raise GRU4RecError(f'Refusing to load {module}.{name} from a model file: it is not plain data')


# --- checkpoints -------------------------------------------------------------------------------------

def data_fingerprint(items, offsets):
    """What a checkpoint records of its training data, to refuse resuming on other data."""
    return {'events': int(len(items)), 'sessions': int(len(offsets) - 1),
            'crc32': zlib.crc32(items.tobytes()) ^ zlib.crc32(np.ascontiguousarray(offsets).tobytes())}


def write_checkpoint(fname, payload, epochs_done, fingerprint, epoch_stats, streams, opt_states):
    """A model file (payload: model_payload's header and arrays; loadable with loadmodel) plus what resuming
    needs: optimiser states, random streams (_sampling.TrainingStreams), sample store, finished epochs and
    their statistics, and a fingerprint of the data. Read back and checked by _checkpoint."""
    header, arrays = payload
    stream_header, stream_arrays = streams.get_state()
    header['checkpoint'] = {'epochs_done': epochs_done, 'fingerprint': fingerprint, 'epoch_stats': epoch_stats,
                            'streams': stream_header, 'n_states': len(opt_states)}
    arrays.update({f'state_{i}': v.get_value() for i, v in enumerate(opt_states)})
    arrays.update(stream_arrays)
    write_safe(fname, header, arrays)
