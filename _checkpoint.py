"""Resuming a training run from its checkpoint (written by _files.write_checkpoint): the file is read whole and
checked against the new run before anything is drawn or compiled, so that a damaged file or one made by another
run is one GRU4RecError naming what differs, never a traceback or a run that silently continues differently.

read_for(fname, p, store_type, sample_store)   the file, its format and version, and what the run's settings
                                               decide: parameters, store type, sample-store size
check_data(saved, p, item_ids, fingerprint)    what the data decide: the data's fingerprint, the item IDs, the
                                               shapes of weights, optimiser states and random streams
restore(saved, weights, opt_states, streams)   the checked arrays into the run's variables (after compiling)
"""
import zipfile
from collections import namedtuple

import numpy as np

if __package__:
    from . import _files, _graph, _optim, _params
else:
    import _files, _graph, _optim, _params  # noqa: E401

GRU4RecError = _params.GRU4RecError
Saved = namedtuple('Saved', 'fname header arrays')   # a checkpoint read whole: its JSON header, its arrays
# Large arrays (item matrices, their optimiser states, the sample store) are read and checked, then dropped for
# a Checked (their shape, dtype and value range), so that resuming does not hold the whole file in memory while
# training allocates its own arrays; restore() reads them again, one at a time.
Checked = namedtuple('Checked', 'shape dtype lo hi')
KEEP_BYTES = 1 << 20


def read_for(fname, p, store_type, sample_store):
    """The checkpoint at fname, read whole and checked against the settings of a new run (p: its checked
    parameters; store_type, sample_store: fit's). Returns a Saved for check_data and restore."""
    saved = read(fname)
    header, ckpt = saved.header, saved.header['checkpoint']
    mine = dict(p.as_dict())
    theirs = {**_params.DEFAULTS, **dict_part(header.get('params'), 'parameters', fname)}   # keys added later: defaults
    for runtime in ('backend', 'device'):
        mine.pop(runtime), theirs.pop(runtime, None)
    diff = [f'{k}={theirs.get(k)!r} (this run: {mine.get(k)!r})' for k in list(mine) + [k for k in theirs if k not in mine]
            if mine.get(k) != theirs.get(k)]
    if diff:
        raise GRU4RecError(f'The checkpoint in {fname} was made with other parameters: {", ".join(diff)}')
    sampler = dict_part(ckpt.get('streams'), 'random streams', fname).get('sampler')
    made_with = 'gpu' if isinstance(sampler, dict) and sampler.get('kind') == 'gpu' else 'cpu'   # (older files: cpu)
    if made_with != store_type:
        raise GRU4RecError(f'The checkpoint in {fname} was made with store_type={made_with!r}; resume with the same '
                           f'store type (this run has {store_type!r}{", --sample_store_on_cpu" * (made_with == "cpu")})')
    if store_type == 'cpu' and p.n_sample > 0:
        sampler = dict_part(sampler, 'negative sampler', fname)
        rows = sample_store // p.n_sample
        rows = rows if rows > 1 else 0   # (as _sampling.NegativeSampler)
        if sampler.get('rows') != rows:
            raise GRU4RecError(f'The checkpoint in {fname} was made with {store_made_with(sampler, p.n_sample)}; this '
                               f'run asks for -ss {sample_store} ({store_words(rows, p.n_sample)}): resume with the '
                               f'same sample store size (-ss, sample_store=)')
    return saved


def read(fname):
    """Saved: the header and every array of a checkpoint file; GRU4RecError if it is not a checkpoint of this
    version or cannot be read whole (truncated, damaged)."""
    try:
        with open(fname, 'rb') as f:
            if f.read(4) != b'PK\x03\x04':
                raise GRU4RecError(f'{fname} is not a GRU4Rec checkpoint (not a zip of arrays)')
            f.seek(0)
            with np.load(f, allow_pickle=False) as z:
                arrays = {k: kept(k, z[k]) for k in z.files}   # every member read: a damaged one fails here
        header = _files.safe_header(arrays)
    except OSError as e:
        raise GRU4RecError(f'Cannot read the checkpoint {fname}: {e.strerror}') from None
    except GRU4RecError:
        raise
    except Exception as e:   # zipfile, zlib, numpy and JSON errors alike: the file is damaged
        raise GRU4RecError(f'The checkpoint {fname} is corrupt or truncated ({type(e).__name__}: {e}); it cannot be '
                           f'resumed (start again without resuming)') from None
    if not isinstance(header, dict) or header.get('format') != _files.MODEL_FORMAT:
        raise GRU4RecError(f'{fname} is not a GRU4Rec checkpoint')
    if header.get('version') != _files.MODEL_VERSION:
        raise GRU4RecError(f'{fname} has checkpoint format version {header.get("version")}; this version reads '
                           f'{_files.MODEL_VERSION}')
    if not isinstance(header.get('checkpoint'), dict):
        raise GRU4RecError(f'{fname} is a model file, not a checkpoint (it has no training state to resume)')
    return Saved(fname, header, arrays)


def check_data(saved, p, item_ids, fingerprint):
    """GRU4RecError unless the checkpoint was made on these training data (fingerprint: _files.data_fingerprint;
    item_ids: the run's item IDs in index order) and holds every weight, optimiser state and random stream the
    run needs, at the shapes it needs."""
    fname, header, arrays, ckpt = saved.fname, saved.header, saved.arrays, saved.header['checkpoint']
    made = ckpt.get('fingerprint')
    if made != fingerprint:
        def words(f):
            return f'{f["events"]} events in {f["sessions"]} sessions' if isinstance(f, dict) and 'events' in f else '?'
        same = ' (the same counts: other items or another order)' if words(made) == words(fingerprint) else ''
        raise GRU4RecError(f'The checkpoint in {fname} was made with other training data ({words(made)}; these data: '
                           f'{words(fingerprint)}{same})')
    theirs = array_part(arrays, 'item_ids', 'item IDs', fname)
    theirs = theirs.astype(object) if header.get('item_id_kind') == 'str' else theirs
    mine = np.asarray(item_ids, dtype=object)
    if len(theirs) != len(mine) or not (theirs == mine).all():
        first = int(np.flatnonzero(theirs != mine)[0]) if len(theirs) == len(mine) else 0
        raise GRU4RecError(f'The checkpoint in {fname} was made with other item IDs (item {first}: '
                           f'{plain(theirs[first])} in the checkpoint, {plain(mine[first])} in these data)')
    shapes = _graph.weight_shapes(p, len(mine))
    if header.get('weights') != list(shapes):
        raise GRU4RecError(f'The checkpoint in {fname} holds the weights {header.get("weights")}; this run has '
                           f'{list(shapes)}')
    for name, shape in shapes.items():
        check_array(arrays, f'w_{name}', f'weight {name}', shape, np.float32, fname)
    n_states = _optim.n_states(p.adapt, p.momentum) * len(shapes)   # one state per weight and optimiser slot
    if ckpt.get('n_states') != n_states:
        raise GRU4RecError(f'The checkpoint in {fname} holds {ckpt.get("n_states")} optimiser states; this run has '
                           f'{n_states}')
    states = [array_part(arrays, f'state_{i}', f'optimiser state {i}', fname) for i in range(n_states)]
    k = n_states // max(len(shapes), 1)
    if (sorted(s.shape for s in states) != sorted(tuple(v) for v in shapes.values() for _ in range(k))
            or any(s.dtype != np.float32 for s in states)):
        raise GRU4RecError(f'The checkpoint in {fname} is damaged: its optimiser states do not fit its weights')
    check_streams(saved, p, len(mine))
    done, stats = ckpt.get('epochs_done'), ckpt.get('epoch_stats')
    if not (isinstance(done, int) and 0 <= done <= p.n_epochs and isinstance(stats, list) and len(stats) == done):
        raise GRU4RecError(f'The checkpoint in {fname} is damaged: its count of finished epochs ({done!r}) is invalid')


def check_streams(saved, p, n_items):
    """The random streams (_sampling.TrainingStreams.get_state) are all there and valid: each is set on a
    throwaway generator of its kind, so a bad one fails here."""
    fname, arrays = saved.fname, saved.arrays
    streams = dict_part(saved.header['checkpoint'].get('streams'), 'random streams', fname)
    keys = check_array(arrays, 'rng_keys', 'random stream of the weights (rng_keys)', (624,), np.uint32, fname)
    try:
        kind, pos, has_gauss, gauss = streams['rng']
        np.random.RandomState().set_state((kind, keys, pos, has_gauss, gauss))
        np.random.default_rng().bit_generator.state = streams['noise']
        sampler = streams.get('sampler')
        if sampler is not None and sampler.get('kind', 'cpu') == 'cpu':
            if sampler['generator'] is not None:
                np.random.default_rng().bit_generator.state = sampler['generator']
            if not (isinstance(sampler['pos'], int) and 0 <= sampler['pos'] <= max(sampler['rows'], 0)):
                raise ValueError(f'position {sampler["pos"]!r} outside the store of {sampler["rows"]} rows')
        elif sampler is not None and not (isinstance(sampler.get('step'), int) and sampler['step'] >= 0):
            raise ValueError(f'step {sampler.get("step")!r}')
    except GRU4RecError:
        raise
    except Exception as e:
        raise GRU4RecError(f'The checkpoint in {fname} is damaged: its random streams are missing or invalid '
                           f'({type(e).__name__}: {e})') from None
    if sampler is not None and sampler.get('kind', 'cpu') == 'cpu' and sampler['rows']:
        store = check_array(arrays, 'sampler_store', 'sample store', (sampler['rows'], p.n_sample), np.int32, fname)
        if lowest(store) is not None and (lowest(store) < 0 or highest(store) >= n_items):
            raise GRU4RecError(f'The checkpoint in {fname} is damaged: its sample store holds item indices outside '
                               f'0..{n_items - 1}')


def restore(saved, weights, opt_states, streams):
    """Put a checked checkpoint into a run: weights (name -> shared variable), optimiser states (in the order
    of the compiled step) and streams (_sampling.TrainingStreams). Returns (finished epochs, their stats)."""
    fname, arrays, ckpt = saved.fname, saved.arrays, saved.header['checkpoint']
    for i, var in enumerate(opt_states):   # (check_data compared the shapes as a set; here, one by one)
        if arrays[f'state_{i}'].shape != var.get_value(borrow=True).shape:
            raise GRU4RecError(f'The checkpoint in {fname} does not fit this version of the model (optimiser '
                               f'state {i} has shape {arrays[f"state_{i}"].shape})')
    try:
        with open(fname, 'rb') as f, np.load(f, allow_pickle=False) as z:
            def get(key):   # (the arrays read again, one at a time; checked ones must be what was checked)
                a = arrays[key] if isinstance(arrays[key], np.ndarray) else z[key]
                if a.shape != arrays[key].shape or a.dtype != arrays[key].dtype:
                    raise ValueError(f'{key} changed')
                return a
            for name, var in weights.items():
                var.set_value(get(f'w_{name}'))
            for i, var in enumerate(opt_states):
                var.set_value(get(f'state_{i}'))
            streams.set_state(ckpt['streams'], {k: get(k) for k in ('rng_keys', 'sampler_store') if k in arrays})
    except (OSError, ValueError, KeyError, zipfile.BadZipFile) as e:
        raise GRU4RecError(f'The checkpoint {fname} changed while resuming from it ({type(e).__name__}: {e})') from None
    print(f'Resuming from {fname} after epoch {ckpt["epochs_done"]}')
    return ckpt['epochs_done'], ckpt['epoch_stats']


# --- helpers ----------------------------------------------------------------------------------------------

def kept(key, a):
    """a itself if small (or the item IDs and header, which are used), else a Checked of it."""
    if a.nbytes <= KEEP_BYTES or key in ('item_ids', 'header'):
        return a
    return Checked(a.shape, a.dtype, *((a.min(), a.max()) if a.size and a.dtype.kind in 'iu' else (None, None)))


def lowest(a):
    return a.lo if isinstance(a, Checked) else (a.min() if a.size else None)


def highest(a):
    return a.hi if isinstance(a, Checked) else (a.max() if a.size else None)


def dict_part(value, what, fname):
    if not isinstance(value, dict):
        raise GRU4RecError(f'The checkpoint in {fname} is damaged: its {what} are missing')
    return value


def array_part(arrays, key, what, fname):
    if key not in arrays:
        raise GRU4RecError(f'The checkpoint in {fname} is damaged: its {what} is missing')
    return arrays[key]


def check_array(arrays, key, what, shape, dtype, fname):
    a = array_part(arrays, key, what, fname)
    if a.shape != tuple(shape) or a.dtype != dtype:
        raise GRU4RecError(f'The checkpoint in {fname} does not fit this run: its {what} is {a.dtype} of shape '
                           f'{a.shape}, this run needs {np.dtype(dtype)} of shape {tuple(shape)}')
    return a


def store_words(rows, n_sample):
    return f'a sample store of {rows} rows of {n_sample} samples' if rows else 'no sample store'


def store_made_with(sampler, n_sample):
    """The -ss of a checkpoint's run (older checkpoints saved the rows only: the range of -ss giving them)."""
    rows, size = sampler.get('rows'), sampler.get('store_size')
    if size is None:
        lo, hi = (rows * n_sample, (rows + 1) * n_sample - 1) if rows else (0, 2 * n_sample - 1)
        size = f'{lo} to {hi}'
    return f'-ss {size} ({store_words(rows, n_sample)})'


def plain(value):
    return repr(value.item() if isinstance(value, np.generic) else value)
