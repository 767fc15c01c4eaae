"""GRU4Rec: session-based recommendations with recurrent neural networks, on PyTensor.

An independent re-implementation of the original Theano GRU4Rec (Hidasi et al., ICLR 2016;
Hidasi & Karatzoglou, CIKM 2018) from its behavioural description. Read top to bottom:

  1. errors, parameters and their coercion from strings (``set_params``)
  2. activations and losses (symbolic, PyTensor)
  3. the session-parallel mini-batch iterator
  4. the GRU4Rec class: weight init, model graph, optimisers, ``fit``, checkpoints, prediction, save/load
  5. helpers: negative sampler, progress bars, dropout noise, memory estimate, safe file formats

Shapes: M = active session slots in a minibatch, K = M + n_sample scored items per row,
N = number of items, L_i = units of GRU layer i, L = units of the last layer.
"""
import functools
import json
import math
import os
import pickle
import sys
import tempfile
import time
import warnings
import zlib
from collections import OrderedDict

import numpy as np
import pandas as pd

with warnings.catch_warnings():
    # PyTensor warns at import that its C backend found no BLAS; we never use the C backend.
    warnings.filterwarnings('ignore', message='.*could not link to a BLAS.*')
    import pytensor
    import pytensor.tensor as pt
    from pytensor.graph.replace import clone_replace

try:  # package import (installed) or top-level import (checkout)
    from . import custom_opt, gpu_ops
except ImportError:
    import custom_opt
    import gpu_ops

FLOAT = 'float32'
EPS = np.float32(1e-6)        # optimiser epsilon
LOG_EPS = np.float32(1e-24)   # inside the logs of the cross-entropy and bpr-max losses
MODEL_FORMAT = 'gru4rec-pytensor'
MODEL_VERSION = 1
CHECKPOINT_NAME = 'checkpoint.gru4rec'


class GRU4RecError(ValueError):
    """Invalid input or parameter; the message says what is wrong in one line."""


# ---------------------------------------------------------------------------------------------
# 1. Parameters
# ---------------------------------------------------------------------------------------------

LOSSES = ('cross-entropy', 'xe_logit', 'bpr', 'bpr-max', 'top1', 'top1-max')
OPTIMISERS = ('adagrad', 'rmsprop', 'adadelta', 'adam', 'adam_legacy', 'sgd')
DEFAULT_ADAPT_PARAMS = {'rmsprop': [0.9], 'adadelta': [0.95], 'adam': [0.9, 0.999], 'adam_legacy': [0.9, 0.999]}

DEFAULTS = OrderedDict([
    ('loss', 'bpr-max'), ('final_act', 'linear'), ('hidden_act', 'tanh'), ('layers', [100]),
    ('n_epochs', 10), ('batch_size', 32), ('dropout_p_hidden', 0.0), ('dropout_p_embed', 0.0),
    ('learning_rate', 0.1), ('momentum', 0.0), ('lmbd', 0.0), ('embedding', 0), ('n_sample', 2048),
    ('sample_alpha', 0.75), ('smoothing', 0.0), ('constrained_embedding', False), ('adapt', 'adagrad'),
    ('adapt_params', []), ('grad_cap', 0.0), ('bpreg', 1.0), ('logq', 0.0), ('sigma', 0.0),
    ('init_as_normal', False), ('train_random_order', False), ('time_sort', True),
    ('reset_after', False), ('merge_repeated', False), ('session_key', 'SessionId'), ('item_key', 'ItemId'), ('time_key', 'Time'),
    ('seed', 42), ('rng', 'default'), ('backend', None), ('device', None),
])
RNGS = ('default', 'original')
_BOOL_TEXT = {'true': True, '1': True, 'false': False, '0': False}


def _coerce(name, value, current):
    """Coerce one parameter value like the original's set_params: strings are converted to the type of
    the parameter's current (default) value; lists are '/'-separated. Raises GRU4RecError."""
    kind = type(DEFAULTS[name]) if name in DEFAULTS else type(current)
    try:
        if name == 'adapt_params':
            if isinstance(value, str):
                return [float(v) for v in value.split('/') if v.strip() != '']
            return [float(v) for v in value]
        if name == 'layers':
            if isinstance(value, str):
                return [int(v) for v in value.split('/')]
            if isinstance(value, (int, np.integer)):
                return [int(value)]
            return [int(v) for v in value]
        if name == 'embedding':
            if isinstance(value, str) and value.strip() == 'layersize':
                return 'layersize'
            return _to_int(value)
        if name == 'adapt':
            if value is None or str(value).strip().lower() in ('none', 'sgd', ''):
                return 'sgd'
            return str(value).strip()
        if name in ('backend', 'device'):
            return None if value is None or str(value).strip().lower() in ('none', '') else str(value).strip().lower()
        if kind is bool:
            if isinstance(value, str):
                if value.strip().lower() not in _BOOL_TEXT:
                    raise GRU4RecError(f'Invalid value for boolean parameter {name}: {value} (use True/False/1/0)')
                return _BOOL_TEXT[value.strip().lower()]
            if isinstance(value, (bool, np.bool_)) or value in (0, 1):
                return bool(value)
            raise GRU4RecError(f'Invalid value for boolean parameter {name}: {value!r} (use True/False/1/0)')
        if kind is int:
            return _to_int(value)
        if kind is float:
            if isinstance(value, bool):
                raise ValueError
            return float(value)
        return str(value)
    except GRU4RecError:
        raise
    except (TypeError, ValueError):
        expected = {int: 'an integer', float: 'a number', list: 'numbers separated by /'}.get(kind, 'a string')
        raise GRU4RecError(f'Invalid value for parameter {name}: {value!r} (expected {expected})') from None


def _to_int(value):
    if isinstance(value, bool):
        raise ValueError
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        if float(value).is_integer():
            return int(value)
        raise ValueError
    return int(str(value).strip())


def _validate(p):
    """Check a full parameter dict; raise GRU4RecError naming the first bad parameter."""
    def bad(name, why):
        raise GRU4RecError(f'Invalid value for parameter {name}: {p[name]!r} ({why})')
    if p['loss'] not in LOSSES:
        bad('loss', 'use one of: ' + ', '.join(LOSSES))
    parse_activation(p['final_act'], final=True)
    parse_activation(p['hidden_act'], final=False)
    if not p['layers'] or any(l < 1 for l in p['layers']):
        bad('layers', 'positive layer sizes separated by /, e.g. 100 or 100/100')
    for name in ('n_epochs', 'n_sample'):
        if p[name] < 0:
            bad(name, 'must be >= 0')
    if p['batch_size'] < 1:
        bad('batch_size', 'must be >= 1')
    for name in ('dropout_p_hidden', 'dropout_p_embed', 'smoothing'):
        if not 0.0 <= p[name] < 1.0:
            bad(name, 'must be in [0, 1)')
    if not (math.isfinite(p['learning_rate']) and p['learning_rate'] > 0):
        bad('learning_rate', 'must be a positive number')
    if not 0.0 <= p['momentum'] < 1.0:
        bad('momentum', 'must be in [0, 1)')
    for name in ('lmbd', 'grad_cap', 'bpreg', 'sigma', 'sample_alpha'):
        if not (math.isfinite(p[name]) and p[name] >= 0):
            bad(name, 'must be a non-negative number')
    if not math.isfinite(p['logq']):
        bad('logq', 'must be a finite number')
    if p['embedding'] != 'layersize' and p['embedding'] < 0:
        bad('embedding', "must be >= 0 or 'layersize'")
    if p['adapt'] not in OPTIMISERS:
        bad('adapt', 'use one of: ' + ', '.join(OPTIMISERS))
    need = len(DEFAULT_ADAPT_PARAMS.get(p['adapt'], []))
    if p['adapt_params'] and len(p['adapt_params']) < need:
        bad('adapt_params', f'{p["adapt"]} needs {need} value(s) separated by /')
    if any(not 0.0 <= v < 1.0 for v in p['adapt_params'][:need]):
        bad('adapt_params', 'decay rates must be in [0, 1)')
    for name in ('session_key', 'item_key', 'time_key'):
        if not p[name]:
            bad(name, 'must be a column name')
    if len({p['session_key'], p['item_key'], p['time_key']}) < 3:
        bad('time_key', 'session_key, item_key and time_key must be different columns')
    if p['rng'] not in RNGS:
        bad('rng', 'use one of: ' + ', '.join(RNGS))
    if p['backend'] is not None:
        try:
            custom_opt.check_backend(p['backend'])
        except ValueError as e:
            raise GRU4RecError(f'Invalid value for parameter backend: {e}') from None
    try:
        kind, _ = custom_opt.parse_device(p['device'])
    except ValueError as e:
        raise GRU4RecError(f'Invalid value for parameter device: {e}') from None
    if kind != 'cpu' and p['backend'] not in (None, 'jax'):
        bad('device', f'{p["device"]} needs backend jax (backend {p["backend"]} runs on the CPU)')


# ---------------------------------------------------------------------------------------------
# 2. Activations and losses (symbolic)
# ---------------------------------------------------------------------------------------------

# Formulations below are chosen for speed on the Numba backend (no vectorised exp/expm1 there): PyTensor's
# fused softmax ops, and exp(min(x, 0)) instead of a switch that PyTensor turns into a slow expm1.
# They equal the original's formulas up to float rounding.

def _softmax(x):
    return pt.special.softmax(x, axis=1)


def _neg_log_softmax(x):
    """'softmax_logit': log(sum_j exp(x'_j)) - x', with x' = x - rowmax(x), i.e. -log_softmax(x)."""
    return -pt.special.log_softmax(x, axis=1)


def _elu(x, alpha):
    """x if x >= 0 else alpha * (exp(x) - 1). Positive scores pass unchanged (max(x, 0) + alpha - alpha would
    round away their low bits); the negative side as alpha * exp(x) - alpha, which PyTensor does not turn
    into expm1."""
    return pt.switch(x >= 0, x, alpha * pt.exp(pt.minimum(x, 0)) - alpha)


def parse_activation(name, final):
    """Return f(x) for an activation name: linear, relu, tanh, leaky-X, elu-X, selu-X-Y and,
    as final activations only, softmax and softmax_logit. Raises GRU4RecError."""
    parts = str(name).split('-')
    which = 'final_act' if final else 'hidden_act'
    try:
        args = [np.float32(float(v)) for v in parts[1:]]
    except ValueError:
        args = None
    simple = {'linear': lambda x: x, 'relu': lambda x: pt.maximum(x, 0), 'tanh': pt.tanh}
    if final:
        simple.update(softmax=_softmax, softmax_logit=_neg_log_softmax)
    if len(parts) == 1 and parts[0] in simple:
        return simple[parts[0]]
    if args is not None and parts[0] == 'leaky' and len(args) == 1:
        return lambda x, a=args[0]: pt.maximum(x, 0) + a * pt.minimum(x, 0)
    if args is not None and parts[0] == 'elu' and len(args) == 1:
        return lambda x, a=args[0]: _elu(x, a)
    if args is not None and parts[0] == 'selu' and len(args) == 2:
        return lambda x, l=args[0], a=args[1]: l * _elu(x, a)
    names = 'linear, relu, tanh, leaky-X, elu-X, selu-X-Y' + (', softmax, softmax_logit' if final else '')
    raise GRU4RecError(f'Invalid value for parameter {which}: {name!r} (use one of: {names})')


def _diag(yhat):
    """yhat[i, i] for i < M of an M x K score matrix (K >= M)."""
    m = pt.arange(yhat.shape[0])
    return yhat[m, m]


def _softmax_neg(yhat, col_mask=None):
    """Softmax over the negatives of each row (weight 0 on the diagonal and on masked columns). The original
    zeroes the diagonal and lets it take part in the max shift; the shift cancels, so masking it with -inf
    gives the same values."""
    m = pt.arange(yhat.shape[0])
    if col_mask is not None:
        yhat = pt.switch(col_mask[None, :] > 0, yhat, -np.inf)
    return _softmax(pt.set_subtensor(yhat[m, m], -np.inf))


def loss_sum(loss, yhat, smoothing=0.0, bpreg=1.0, row_mask=None, col_mask=None):
    """Sum over the M rows of the loss of an activated M x K score matrix (column i is row i's positive).

    row_mask (M,) and col_mask (K,), 0/1 floats, are for fixed-width minibatches with inactive slots: a
    masked row adds no loss and a masked column is no negative, so the sum equals the loss of the active
    rows and columns alone. (Softmax activations must already have excluded masked columns.)"""
    d = _diag(yhat)
    if col_mask is None:
        k = yhat.shape[1].astype(FLOAT)
        cols = lambda x: x                                               # noqa: E731
    else:
        k = col_mask.sum()
        cols = lambda x: pt.switch(col_mask[None, :] > 0, x, np.float32(0))  # noqa: E731
    rows = (lambda x: x) if row_mask is None else (lambda x: x * row_mask)  # noqa: E731
    if loss in ('cross-entropy', 'xe_logit'):
        nll = (-pt.log(yhat + LOG_EPS)) if loss == 'cross-entropy' else yhat
        pos = (-pt.log(d + LOG_EPS)) if loss == 'cross-entropy' else d
        if smoothing:
            s = np.float32(smoothing)
            return pt.sum(rows((1 - s * k / (k - 1)) * pos + (s / (k - 1)) * cols(nll).sum(axis=1)))
        return pt.sum(rows(pos))
    if loss == 'bpr':
        return pt.sum(rows(cols(-pt.log(pt.sigmoid(d[:, None] - yhat))).sum(axis=1)))
    if loss == 'bpr-max':
        s = _softmax_neg(yhat, col_mask)
        return pt.sum(rows(-pt.log((pt.sigmoid(d[:, None] - yhat) * s).sum(axis=1) + LOG_EPS)
                           + np.float32(bpreg) * (yhat ** 2 * s).sum(axis=1)))
    if loss == 'top1':   # mean over the (active) columns
        terms = cols(pt.sigmoid(yhat - d[:, None]) + pt.sigmoid(yhat ** 2)).sum(axis=1) / k
        return pt.sum(rows(terms - pt.sigmoid(d ** 2) / k))
    if loss == 'top1-max':
        s = _softmax_neg(yhat, col_mask)
        return pt.sum(rows((s * (pt.sigmoid(yhat - d[:, None]) + pt.sigmoid(yhat ** 2))).sum(axis=1)))
    raise GRU4RecError(f'Invalid value for parameter loss: {loss!r}')


# ---------------------------------------------------------------------------------------------
# 3. Session-parallel mini-batches
# ---------------------------------------------------------------------------------------------

def session_offsets(session_ids):
    """For session IDs of events grouped by session: [start of each session..., number of events]."""
    starts = np.flatnonzero(np.r_[True, session_ids[1:] != session_ids[:-1]])
    return np.r_[starts, len(session_ids)].astype(np.int64)


def session_parallel_batches(items, offsets, order, batch_size, min_active=1):
    """Yield (inp, out, reset, keep) for each step of one pass over the sessions.

    items: item index per event (events of a session contiguous, in time order); offsets: session k owns
    events offsets[k]..offsets[k+1]-1; order: session processing order. Each slot holds one session; when
    a session runs out, its slot takes the next session in `order`; when none is left the slot is dropped
    and the batch shrinks. inp/out: item indices of the M active slots; reset[s]: out[s] is its session's
    last event (the slot's hidden state must be zeroed after this step); keep: None, or the indices of the
    rows of the previous step's hidden state that are still active (slots were dropped before this step).
    The pass stops when fewer than `min_active` slots are left."""
    n_sessions = len(order)
    n = min(batch_size, n_sessions)
    if n == 0:
        return
    slot_pos = np.arange(n)
    maxpos = n - 1
    start = offsets[order[slot_pos]].astype(np.int64)
    end = offsets[order[slot_pos] + 1].astype(np.int64)
    keep = None
    while True:
        left = end - start - 1          # (input, target) pairs left in each slot's session
        minlen = int(left.min()) + 1
        pos = start.copy()
        out = items[pos]
        for k in range(minlen - 1):
            inp = out
            pos += 1
            out = items[pos]
            yield inp, out, left == k + 1, keep
            keep = None
        start += minlen - 1
        finished = np.flatnonzero(end - start <= 1)
        slot_pos[finished] = maxpos + 1 + np.arange(len(finished))
        maxpos += len(finished)
        valid = slot_pos < n_sessions
        n_valid = int(valid.sum())
        if n_valid == 0 or n_valid < min_active:
            return
        refill = finished[valid[finished]]
        sess = order[slot_pos[refill]]
        start[refill] = offsets[sess]
        end[refill] = offsets[sess + 1]
        if n_valid < len(valid):
            alive = np.flatnonzero(valid)
            keep = alive if keep is None else keep[alive]
            slot_pos, start, end = slot_pos[alive], start[alive], end[alive]


# ---------------------------------------------------------------------------------------------
# 4. The model
# ---------------------------------------------------------------------------------------------

class GRU4Rec:
    """GRU4Rec: a recurrent next-item recommender trained with session-parallel mini-batches.

    Parameters (defaults are the original's code defaults)
    ----------
    loss : 'bpr-max' | 'cross-entropy' | 'xe_logit' | 'bpr' | 'top1' | 'top1-max'. Default 'bpr-max'.
    final_act : activation of the scores: 'linear' (default), 'relu', 'tanh', 'leaky-X', 'elu-X', 'selu-X-Y',
        'softmax' (use with cross-entropy), 'softmax_logit' (use with xe_logit).
    hidden_act : activation of the GRU candidate state: 'tanh' (default), 'relu', 'linear', 'leaky-X', 'elu-X', 'selu-X-Y'.
    layers : units per GRU layer, e.g. [100] (default) or [100, 100]; the string '100/100' is accepted.
    n_epochs : training epochs (10). batch_size : parallel session slots, also the cost divisor (32).
    dropout_p_hidden : dropout on each GRU layer's output, which is also the carried state (0.0).
    dropout_p_embed : dropout on the input embedding, separate/shared embedding modes only (0.0).
    learning_rate : 0.1 (forced to 1.0 with adadelta). momentum : classical (heavy-ball) momentum (0.0).
    lmbd : L2 weight decay, applied outside the adaptive scaling (0.0).
    embedding : 0 = one-hot input (default); N > 0 = separate input embedding of size N; 'layersize' = layers[0].
    n_sample : shared negative samples per minibatch besides the in-batch targets (2048).
    sample_alpha : negatives are drawn with probability ~ support ** sample_alpha (0.75).
    smoothing : label smoothing for cross-entropy/xe_logit (0.0).
    constrained_embedding : the output item matrix is also the input embedding (False).
    adapt : 'adagrad' (default), 'rmsprop', 'adadelta', 'adam' (textbook Adam), 'adam_legacy'
        (the original's variant, see README), 'sgd' (also None).
    adapt_params : decay rates; [] uses rmsprop [0.9], adadelta [0.95], adam [0.9, 0.999].
    grad_cap : if > 0, rescale all gradients when their global norm reaches it (0.0).
    bpreg : score regularisation of bpr-max (1.0). logq : logQ correction strength, any loss (0.0).
    sigma : init width; 0 = sqrt(6 / (fan_in + fan_out)) per block (0.0). init_as_normal : N(0, sigma) init (False).
    train_random_order : shuffle sessions every epoch (False). time_sort : sessions by start time (True).
    reset_after : apply the reset gate after the recurrent product, r * (h Wh), as cuDNN/PyTorch GRUs do,
        instead of the original's (r * h) Wh (False).
    merge_repeated : an item that occurs several times in one minibatch gets one optimiser step with its
        summed gradient, as PyTorch's sparse-gradient optimisers do, instead of the original's step per
        occurrence (False). See README "Fidelity" for both.
    session_key, item_key, time_key : column names ('SessionId', 'ItemId', 'Time').
    seed : seeds weight init, negative sampling, dropout and shuffling at every fit (42).
    rng : 'default' draws the negative samples and dropout noise from this project's own seeded generators;
        'original' draws the negatives (store_type='cpu' only) from the same RandomState(seed) as the initial
        weights and the session shuffling, in the original's order, so that a run without dropout can be
        compared step by step with the original's (benchmarks/compare_original_trace.py).
    backend : 'numba' (CPU default), 'jax' or 'python' (slow reference, fast to compile); None = 'jax' when
        device is a GPU, else 'numba'.
    device : where training and prediction run: None (the backend's default device), 'cpu', 'cuda' or
        'cuda:N' (JAX backend; 'gpu', 'cudaN' also accepted). Not saved with the model: a runtime choice.
    """

    _random_in_graph = False   # set by fit: negatives and dropout noise drawn inside the step (store_type='gpu')

    def __init__(self, loss='bpr-max', final_act='linear', hidden_act='tanh', layers=(100,), n_epochs=10,
                 batch_size=32, dropout_p_hidden=0.0, dropout_p_embed=0.0, learning_rate=0.1, momentum=0.0,
                 lmbd=0.0, embedding=0, n_sample=2048, sample_alpha=0.75, smoothing=0.0,
                 constrained_embedding=False, adapt='adagrad', adapt_params=(), grad_cap=0.0, bpreg=1.0,
                 logq=0.0, sigma=0.0, init_as_normal=False, train_random_order=False, time_sort=True,
                 reset_after=False, merge_repeated=False, session_key='SessionId', item_key='ItemId', time_key='Time', seed=42, rng='default',
                 backend=None, device=None):
        values = dict(locals())
        for name in DEFAULTS:
            setattr(self, name, _coerce(name, values[name], DEFAULTS[name]))
        self._check()
        self.error_during_train = False
        self._predict_fns = {}
        self._pred_state = None

    # --- parameters ------------------------------------------------------------------------
    def _backend(self):
        """The backend in use: the backend parameter, or its default for the device."""
        gpu = custom_opt.parse_device(self.device)[0] != 'cpu'
        return custom_opt.check_backend(self.backend or ('jax' if gpu else None))

    def _mode(self):
        """The PyTensor compile mode of this model's backend and device."""
        try:
            return custom_opt.compile_mode(self._backend(), device=self.device)
        except ValueError as e:
            raise GRU4RecError(str(e)) from None

    def get_params(self, deep=True):
        """The constructor parameters as a dict (scikit-learn style)."""
        return OrderedDict((name, list(v) if isinstance(v := getattr(self, name), list) else v) for name in DEFAULTS)

    def set_params(self, **kvargs):
        """Set parameters; string values are coerced to the parameter's type (lists with '/', booleans
        True/False/1/0, embedding='layersize'). Prints one 'SET ...' line per parameter like the original.
        Nothing changes if any value is invalid. Returns self."""
        if not kvargs:
            return self
        for k in kvargs:
            if k not in DEFAULTS:
                raise GRU4RecError(f'Unknown parameter: {k} (valid parameters: {", ".join(DEFAULTS)})')
        new = self.get_params()
        for k, v in kvargs.items():
            new[k] = _coerce(k, v, new[k])
        if new['embedding'] == 'layersize':
            new['embedding'] = new['layers'][0]
        _validate(new)
        maxk = max(len(k) for k in kvargs)
        maxv = max(len(str(v)) for v in kvargs.values())
        for k in kvargs:
            setattr(self, k, new[k])
            self._print_set(k, new[k], maxk, maxv)
        if kvargs.get('embedding') == 'layersize' or str(kvargs.get('embedding')).strip() == 'layersize':
            self._print_set('embedding', self.embedding, maxk, maxv)
        self._predict_fns = {}
        return self

    @staticmethod
    def _print_set(k, v, maxk, maxv):
        print('SET   ' + k + ' ' * (maxk - len(k) + 3) + 'TO   ' + str(v) + ' ' * (maxv - len(str(v)) + 3)
              + '(type: ' + str(type(v)) + ')')

    def _check(self):
        if self.embedding == 'layersize':
            self.embedding = self.layers[0]
        _validate(self.get_params())

    @property
    def adapt_params_(self):
        """adapt_params with the per-optimiser defaults filled in."""
        return list(self.adapt_params) or list(DEFAULT_ADAPT_PARAMS.get(self.adapt, []))

    @property
    def _embedding_width(self):
        return self.layers[-1] if self.embedding_mode == 'shared' else self.embedding

    @property
    def embedding_mode(self):
        return 'shared' if self.constrained_embedding else ('separate' if self.embedding else 'onehot')

    # --- data preparation ----------------------------------------------------------------
    def _training_frame(self, data):
        """A checked copy of the three key columns (the caller's frame is never modified)."""
        if not isinstance(data, pd.DataFrame):
            raise GRU4RecError(f'fit expects a pandas DataFrame, got {type(data).__name__}')
        keys = [self.session_key, self.item_key, self.time_key]
        missing = [k for k in keys if k not in data.columns]
        if missing:
            raise GRU4RecError(f'Missing column(s) {", ".join(missing)} in the training data '
                               f'(columns found: {", ".join(map(str, data.columns))})')
        data = data[keys].copy()
        for k in (self.session_key, self.time_key):
            data[k] = _numeric_column(data[k], k, 'training')
        if data[self.item_key].isna().any():
            raise GRU4RecError(f'Column {self.item_key} of the training data has missing item IDs')
        return data

    def _sort_and_index(self, data):
        """Sort by (session, time) if needed (printing like the original); return items, offsets, times."""
        sk, tk = self.session_key, self.time_key
        s = data[sk].values
        t = data[tk].values
        s_ok = len(s) < 2 or bool(np.all(s[1:] >= s[:-1]))
        t_ok = s_ok and (len(s) < 2 or bool(np.all((t[1:] >= t[:-1]) | (s[1:] != s[:-1]))))
        if s_ok and t_ok:
            print(f'The dataframe is already sorted by {sk}, {tk}')
        else:
            print(f'The dataframe is not sorted by {sk if not s_ok else tk}, sorting now')
            t0 = time.time()
            data = data.sort_values([sk, tk], kind='stable')
            print(f'Data is sorted in {time.time() - t0:.2f}')
        items = self.itemidmap_index.get_indexer(data[self.item_key]).astype(np.int32)
        return items, session_offsets(data[sk].values), data[tk].values

    # --- weights ---------------------------------------------------------------------------
    def _init_matrix(self, rng, rows, cols):
        sigma = self.sigma if self.sigma != 0 else np.sqrt(6.0 / (rows + cols))
        if self.init_as_normal:
            return (rng.randn(rows, cols) * sigma).astype(FLOAT)
        return (rng.rand(rows, cols) * sigma * 2 - sigma).astype(FLOAT)

    def _weight_shapes(self, n_items=None):
        """Name -> shape of every weight, in the order _init_weights creates them."""
        n, shapes = self.n_items if n_items is None else n_items, OrderedDict()
        if self.embedding_mode == 'separate':
            shapes['E'] = (n, self.embedding)
        for i, units in enumerate(self.layers):
            fan_in = self.layers[i - 1] if i > 0 else {'onehot': n, 'separate': self.embedding,
                                                       'shared': self.layers[-1]}[self.embedding_mode]
            shapes.update({f'Wx{i}': (fan_in, 3 * units), f'Wh{i}': (units, units), f'Wrz{i}': (units, 2 * units),
                           f'Bh{i}': (3 * units,)})
        shapes.update(Wy=(n, self.layers[-1]), By=(n, 1))
        return shapes

    def _init_weights(self, rng):
        """Initial weights as numpy arrays, in the original's draw order (so seed 42 gives its numbers): each
        gate block of Wx (3) and Wrz (2) is drawn separately with its own width; biases are zeros."""
        w = OrderedDict()
        for name, shape in self._weight_shapes().items():
            if name.startswith(('Bh', 'By')):
                w[name] = np.zeros(shape, dtype=FLOAT)
                continue
            blocks = 3 if name.startswith('Wx') else 2 if name.startswith('Wrz') else 1
            w[name] = np.hstack([self._init_matrix(rng, shape[0], shape[1] // blocks) for _ in range(blocks)])
        return w

    def _set_weights(self, arrays):
        # Static shapes except the first axis (item-indexed weights get a padding row in chunked training):
        # By[Y].T broadcasts over the score rows, and JAX sees fixed shapes inside a scan.
        self.weights = OrderedDict((k, pytensor.shared(np.asarray(v, dtype=FLOAT), name=k, shape=(None,) + np.shape(v)[1:]))
                                   for k, v in arrays.items())

    def get_weights(self):
        """The model weights as a dict of numpy arrays (copies)."""
        return OrderedDict((k, np.array(v.get_value(borrow=True))) for k, v in self.weights.items())   # JAX: to host

    # --- model graph -----------------------------------------------------------------------
    def _layers_forward(self, first_input, H, noise, drop_p_hidden, drop_p_embed, onehot_rows=None):
        """GRU stack for one step. first_input: embedding rows (M x F) or, in one-hot mode, None with
        onehot_rows = Wx0[X] (M x 3L_0). H: list of M x L_i states. Returns the list of new states."""
        w, out = self.weights, []
        x = first_input
        if x is not None and drop_p_embed > 0:
            x = _dropout(x, drop_p_embed, noise.uniform(self._embedding_width))
        for i, units in enumerate(self.layers):
            h = H[i]
            a = (onehot_rows if i == 0 and onehot_rows is not None else pt.dot(x, w[f'Wx{i}'])) + w[f'Bh{i}']
            rz = pt.sigmoid(a[:, units:] + pt.dot(h, w[f'Wrz{i}']))
            r, z = rz[:, :units], rz[:, units:]
            rec = r * h.dot(w[f'Wh{i}']) if self.reset_after else (r * h).dot(w[f'Wh{i}'])
            h_cand = self._hidden_act(rec + a[:, :units])
            h = (1 - z) * h + z * h_cand
            if drop_p_hidden > 0:
                h = _dropout(h, drop_p_hidden, noise.uniform(units))
            out.append(h)
            x = h
        return out

    @property
    def _hidden_act(self):
        return parse_activation(self.hidden_act, final=False)

    @property
    def _final_act(self):
        return parse_activation(self.final_act, final=True)

    def _train_graph(self, noise, width=None):
        """Symbolic training step. Returns (inputs, cost, new_states, dense_params, sparse) where sparse is a
        list of (shared weight, index vector, gathered rows) whose gradient is taken w.r.t. the rows.

        width: None for a step of M active slots, or the static width B of a fixed-width step (see
        _epoch_chunked) with one more input A, 1.0 for active slots; inactive slots point at the padding
        item row and neither add loss nor act as negatives. (Static shapes: JAX needs them.)"""
        w = self.weights
        masked = width is not None

        def vector(name, dtype, extra=0):   # length M (any) or width + extra (static)
            return pt.tensor(name, dtype=dtype, shape=(width + extra if masked else None,))
        X = vector('X', 'int32')                          # M input items
        if self._random_in_graph:   # M targets; negatives and dropout noise of step S are drawn in the graph
            T, S = vector('Y', 'int32'), pt.scalar('S', dtype='uint32')
            Y = T
            if self.n_sample > 0:
                Y = pt.concatenate([T, gpu_ops.sample_items(self.n_sample, self._sample_cdf, self._sample_seed, S)])
            noise.hash_with(self._sample_seed, S)
            sample_inputs = [T, S]
        else:                       # M targets + n_sample negatives
            Y = vector('Y', 'int32', self.n_sample)
            sample_inputs = [Y]
        R = vector('R', FLOAT)                            # 1.0 where the target ends its session
        A = vector('A', FLOAT) if masked else None        # 1.0 for active slots (fixed-width steps only)
        H = [pt.tensor(f'H{i}', dtype=FLOAT, shape=(width, u)) for i, u in enumerate(self.layers)]
        M = X.shape[0] if width is None else width
        dense = [w[f'{n}{i}'] for i in range(len(self.layers)) for n in ('Wx', 'Wh', 'Wrz', 'Bh')]
        sparse, onehot_rows, emb = [], None, None
        if self.embedding_mode == 'shared':
            idx = pt.concatenate([X, Y])
            rows = w['Wy'][idx]                            # (M + K) x L
            sparse.append((w['Wy'], idx, rows))
            emb, Wy_rows = rows[:M], rows[M:]
        else:
            if self.embedding_mode == 'onehot':
                dense.remove(w['Wx0'])
                onehot_rows = w['Wx0'][X]                  # M x 3L_0
                sparse.append((w['Wx0'], X, onehot_rows))
            else:
                emb = w['E'][X]                            # M x embedding
                sparse.append((w['E'], X, emb))
            Wy_rows = w['Wy'][Y]                           # K x L
            sparse.append((w['Wy'], Y, Wy_rows))
        By_rows = w['By'][Y]                               # K x 1
        sparse.append((w['By'], Y, By_rows))
        new_H = self._layers_forward(emb, H, noise, self.dropout_p_hidden, self.dropout_p_embed, onehot_rows)
        scores = pt.dot(new_H[-1], Wy_rows.T) + By_rows.T  # M x K
        if self.logq:
            # log q: raw support of the in-batch targets, support ** sample_alpha of the sampled negatives
            logq = pt.concatenate([self._logq_target[Y[:M]], self._logq_sample[Y[M:]]])
            scores = scores - np.float32(self.logq) * logq
        col_mask = None
        if masked:
            col_mask = pt.concatenate([A, np.ones(self.n_sample, dtype=FLOAT)])
            if self.final_act in ('softmax', 'softmax_logit'):   # masked columns out of the normaliser
                scores = pt.switch(col_mask[None, :] > 0, scores, np.float32(-1e30))
        yhat = self._final_act(scores)
        cost = loss_sum(self.loss, yhat, self.smoothing, self.bpreg, A, col_mask) / np.float32(self.batch_size)
        reset_H = [h * (1 - R)[:, None] for h in new_H]
        return [X] + sample_inputs + [R] + ([A] if masked else []) + noise.inputs + H, cost, reset_H, dense, sparse

    # --- optimisers ------------------------------------------------------------------------
    def _updates(self, cost, dense, sparse, sink=None):
        """Parameter and optimiser-state updates (see README: optimisers and repeated items). sink: the
        padding item row of fixed-width steps; merge_repeated then keeps static shapes by sending the
        merged-away occurrences there with zero gradient."""
        lr = np.float32(1.0 if self.adapt == 'adadelta' else self.learning_rate)
        mu, lmbd = np.float32(self.momentum), np.float32(self.lmbd)
        grads = pytensor.grad(cost, dense + [rows for _, _, rows in sparse])
        if self.grad_cap > 0:
            norm = pt.sqrt(sum(pt.sum(g ** 2) for g in grads))
            cap = np.float32(self.grad_cap)
            grads = [pt.switch(norm >= cap, g * cap / norm, g) for g in grads]
        updates = OrderedDict()
        for p, g in zip(dense, grads[:len(dense)]):
            ghat = self._adapt_dense(p, g, updates)
            if mu > 0:
                v = _state_like(p)
                v_new = mu * v - lr * (ghat + lmbd * p)
                updates[v] = v_new
                updates[p] = p + v_new
            else:
                updates[p] = p * (1 - lr * lmbd) - lr * ghat
        # Item-indexed weights: the same item can occur several times in one step. Weight increments add
        # up per occurrence; optimiser states that are *set* keep one occurrence (the last). The step is
        # one SparseRowUpdateGraph per weight (gpu_ops), which custom_opt fuses into one kernel.
        a = self.adapt_params_
        rho = a[1] if self.adapt in ('adam', 'adam_legacy') else (a[0] if self.adapt in ('rmsprop', 'adadelta') else 0.0)
        b1 = a[0] if self.adapt in ('adam', 'adam_legacy') else 0.0
        spec = gpu_ops.RowUpdateSpec(None if self.adapt == 'sgd' else self.adapt, float(lr), float(mu), float(lmbd),
                                     float(EPS), float(rho), float(b1))
        self._item_vars = [p for p, _, _ in sparse]     # item-indexed: padded in chunked training
        for (p, idx, rows), g in zip(sparse, grads[len(dense):]):
            if self.merge_repeated and self.adapt != 'adam':   # (adam's row update merges them itself)
                idx, g = gpu_ops.merge_repeated(idx, g) if sink is None else gpu_ops.merge_repeated_into(idx, g, sink)
            states = [_state_like(p) for _ in range(gpu_ops.n_inputs_states(spec))]
            self._item_vars += states
            for var, new in zip([p] + states, gpu_ops.sparse_row_update(spec, p, states, idx, g)):
                updates[var] = new
        return updates

    def _adapt_dense(self, p, g, updates):
        a = self.adapt_params_
        if self.adapt == 'adagrad':
            acc = _state_like(p)
            updates[acc] = acc + g ** 2
            return g / pt.sqrt(updates[acc] + EPS)
        if self.adapt == 'rmsprop':
            rho = np.float32(a[0])
            acc = _state_like(p)
            updates[acc] = rho * acc + (1 - rho) * g ** 2
            return g / pt.sqrt(updates[acc] + EPS)
        if self.adapt == 'adadelta':
            rho = np.float32(a[0])
            acc, upd = _state_like(p), _state_like(p)
            updates[acc] = rho * acc + (1 - rho) * g ** 2
            c = (upd + EPS) / (updates[acc] + EPS)
            updates[upd] = rho * upd + (1 - rho) * c * g ** 2
            return g * pt.sqrt(c)
        if self.adapt in ('adam', 'adam_legacy'):
            b1, b2 = np.float32(a[0]), np.float32(a[1])
            v, m, t = _state_like(p), _state_like(p), _state_like(p)
            updates[v] = b2 * v + (1 - b2) * g ** 2
            updates[m] = b1 * m + (1 - b1) * g
            updates[t] = t + 1
            if self.adapt == 'adam_legacy':  # the original: second moment corrected with beta1
                return (updates[m] / (1 - b1 ** updates[t])) / (pt.sqrt(updates[v] / (1 - b1 ** updates[t])) + EPS)
            return (updates[m] / (1 - b1 ** updates[t])) / (pt.sqrt(updates[v] / (1 - b2 ** updates[t])) + EPS)
        return g

    # --- training ----------------------------------------------------------------------------
    def fit(self, data, sample_store=10000000, store_type=None, checkpoint_dir=None, resume=False,
            epoch_callback=None, chunk=None, log_steps=False):
        """Train on a DataFrame with session, item and time columns (the frame is not modified).

        checkpoint_dir: if given, the full training state (weights, optimiser states, random streams, sample
        store) is saved there after every epoch, atomically. resume=True continues from that checkpoint
        (same parameters and data required) and ends with the same model as an uninterrupted run.

        store_type: where the negative samples come from. 'cpu': a store of `sample_store` item indices
        drawn with numpy on the host, one row of n_sample per step, regenerated when used up (0 = draw every
        step). 'gpu': drawn inside the compiled step by gpu_ops.SampleItems from a hash of (seed, step), as
        are the dropout masks (gpu_ops.HashUniforms), so nothing is generated or sent by the host per step
        (sample_store is then unused). Same distribution, different random numbers. None: the backend's
        default, custom_opt.STORE_BY_DEFAULT ('cpu' on Numba: its host store is faster than the in-graph
        draw; 'gpu' on JAX).

        Returns self. A NaN or infinite loss stops training with a printed message naming the epoch and
        step; error_during_train is then True and the model refuses to predict or save.

        epoch_callback: called as epoch_callback(model, stats) after every finished epoch (after its
        checkpoint), with stats the epoch's entry of epoch_stats_; the model can predict and be evaluated
        there. If it returns True, training ends after that epoch (early stopping, pruning).

        chunk: minibatches per compiled call. 0 runs one call per minibatch, with the batch shrinking as
        sessions run out (as the original). K > 0 prepares K minibatches on the host and runs them in one
        scan, at a fixed width with masked inactive slots (same losses up to float rounding). None: the
        backend's default, custom_opt.CHUNK_BY_DEFAULT (100 on Numba, where it is faster, and on JAX, which
        needs the fixed shapes; 0 on the python reference backend).

        log_steps: if True, the cost of every training step (the minibatch loss / batch_size, as the original's
        training function returns it) and its number of active sessions are kept in step_costs_ and
        step_sizes_ (arrays over all epochs of this fit), to compare runs step by step."""
        backend = self._backend()
        self._mode()   # checks the device (JAX must see it) before anything changes
        chunk = custom_opt.CHUNK_BY_DEFAULT[backend] if chunk is None else _to_int_arg(chunk, 'chunk')
        if chunk == 0 and backend == 'jax':
            raise GRU4RecError('The JAX backend trains in chunks only (static shapes): use chunk > 0')
        if store_type is None:
            store_type = 'cpu' if self.rng == 'original' else custom_opt.STORE_BY_DEFAULT[backend]
        if store_type not in ('gpu', 'cpu'):
            raise GRU4RecError(f'Invalid store type {store_type} (use gpu or cpu)')
        if store_type == 'gpu' and self.rng == 'original':
            raise GRU4RecError("rng='original' needs store_type='cpu' (--sample_store_on_cpu): the original's "
                               "GPU store draws from Theano's own generator, which cannot be reproduced")
        if resume and not checkpoint_dir:
            raise GRU4RecError('resume needs the checkpoint_dir to resume from')
        checkpoint = os.path.join(checkpoint_dir, CHECKPOINT_NAME) if checkpoint_dir else None
        if resume and not os.path.isfile(checkpoint):
            raise GRU4RecError(f'No checkpoint to resume from in {checkpoint_dir}')
        if checkpoint_dir and not resume:
            os.makedirs(checkpoint_dir, exist_ok=True)
        sample_store = _to_int_arg(sample_store, 'sample_store')
        data = self._training_frame(data)
        self._check()
        if len(data) == 0 or data.groupby(self.session_key).size().max() < 2:
            raise GRU4RecError('The training data has no session with at least 2 events')
        # nothing of the model changes before this point: a rejected input leaves it as it was
        self._predict_fns, self._pred_state = {}, None
        self.error_during_train = False
        self.error_epoch = self.error_step = None
        self.epoch_stats_ = []   # per epoch: loss, seconds, steps (minibatches), events
        step_log = [] if log_steps else None   # (cost, active sessions) of every step
        itemids = data[self.item_key].unique()
        self.itemidmap = pd.Series(np.arange(len(itemids), dtype=np.int32), index=itemids, name='ItemIdx')
        self.n_items = len(itemids)
        items, offsets, times = self._sort_and_index(data)
        self._random_in_graph = store_type == 'gpu'
        self._check_memory(sample_store if store_type == 'cpu' else 0)
        rng = np.random.RandomState(self.seed)   # the original's init draws for seed 42
        self._setup(np.bincount(items, minlength=self.n_items), rng)
        sampler = None
        if self._random_in_graph:
            sampler = GraphSampler(np.random.default_rng([self.seed, 1]), self.n_sample > 0)
            self._sample_seed = pytensor.shared(sampler.seed, name='sample_seed')
            if self.n_sample > 0:
                self._sample_cdf = pytensor.shared(sampling_cdf(self.item_support, self.sample_alpha).astype(FLOAT), name='cdf')
        elif self.n_sample > 0:
            # rng='original': the negatives continue the RandomState of the initial weights, as in the original
            sampler = NegativeSampler(self.item_support, self.sample_alpha, self.n_sample, sample_store,
                                      rng if self.rng == 'original' else np.random.default_rng([self.seed, 1]))
        width = min(self.batch_size, len(offsets) - 1)
        train_fn, noise = self._compile_train_chunked(width) if chunk else self._compile_train()
        noise_rng = np.random.default_rng([self.seed, 2])
        base_order = np.argsort(times[offsets[:-1]]) if self.time_sort else np.arange(len(offsets) - 1)
        streams = TrainingStreams(rng, sampler, noise_rng)
        fingerprint = _data_fingerprint(items, offsets)
        first_epoch = self._restore_checkpoint(checkpoint, fingerprint, streams) if resume else 0
        try:
            for epoch in range(first_epoch, self.n_epochs):
                t0 = time.time()
                order = rng.permutation(len(offsets) - 1) if self.train_random_order else base_order
                batches = progress(session_parallel_batches(items, offsets, order, self.batch_size,
                                                            min_active=2 if self.n_sample == 0 else 1),
                                   len(items) - len(order), f'Epoch{epoch + 1}')
                if chunk:
                    self._pad_items(True)   # (a no-op while the padding row is still there from the last epoch)
                    sum_cost, n_events, n_steps, bad = self._epoch_chunked(train_fn, batches, chunk, width, sampler,
                                                                           noise_rng, noise, step_log)
                    # the padding row stays between epochs unless something outside training sees the weights:
                    # removing and re-adding it moves every item matrix through the host (on a GPU: twice per epoch)
                    if checkpoint or epoch_callback is not None:
                        self._pad_items(False)
                else:
                    sum_cost, n_events, n_steps, bad = self._epoch_steps(train_fn, batches, width, sampler,
                                                                         noise_rng, noise, step_log)
                if bad:
                    return self._diverged(epoch, bad)
                secs = time.time() - t0
                avg = sum_cost / max(n_events, 1)
                if math.isnan(avg):
                    return self._diverged(epoch, n_steps)
                self.epoch_stats_.append({'epoch': epoch + 1, 'loss': avg, 'seconds': secs, 'steps': n_steps, 'events': n_events})
                print(f'Epoch{epoch + 1} --> loss: {avg:.6f} \t({secs:.2f}s) \t'
                      f'[{n_steps / secs:.2f} mb/s | {n_events / secs:.0f} e/s]')
                if checkpoint:
                    self._save_checkpoint(checkpoint, epoch + 1, fingerprint, streams)
                if epoch_callback is not None and epoch_callback(self, self.epoch_stats_[-1]):
                    break
        finally:
            self._pad_items(False)   # no-op after per-step training
            if step_log is not None:
                self.step_costs_ = np.array([c for c, _ in step_log], dtype=np.float64)
                self.step_sizes_ = np.array([m for _, m in step_log], dtype=np.int64)
        return self

    def _epoch_steps(self, fn, batches, width, sampler, noise_rng, noise, step_log=None):
        """One epoch, one compiled call per minibatch. Returns (sum of cost * M, events, steps, step of
        the first non-finite cost or None); appends (cost, M) of every step to step_log if it is a list."""
        H = [np.zeros((width, u), dtype=FLOAT) for u in self.layers]
        active = np.arange(width)                      # slot id of each row
        sum_cost, n_events, n_steps = 0.0, 0, 0
        for inp, out, reset, keep in batches:
            if keep is not None:
                H = [h[keep] for h in H]
                active = active[keep]
            y = (out,) if sampler is None else sampler.inputs(out)
            cost, *H = fn(inp, *y, reset.astype(FLOAT), *noise.step_values(noise_rng, active), *H)
            sum_cost += float(cost) * len(inp)
            n_events += len(inp)
            if step_log is not None:
                step_log.append((float(cost), len(inp)))
            n_steps += 1
            if not math.isfinite(float(cost)):
                return sum_cost, n_events, n_steps, n_steps
        return sum_cost, n_events, n_steps, None

    def _epoch_chunked(self, fn, batches, chunk, width, sampler, noise_rng, noise, step_log=None):
        """One epoch, `chunk` minibatches per compiled call (see _compile_train_chunked). The shrinking
        minibatches become fixed-width ones: slot s stays row s, and the rows of finished slots point at
        the padding item (index n_items) with A = 0. Returns what _epoch_steps returns."""
        H = [np.zeros((width, u), dtype=FLOAT) for u in self.layers]
        active = np.arange(width)                      # row of each active slot, in slot order
        all_on = np.ones(width, dtype=FLOAT)
        sum_cost, n_events, n_steps = 0.0, 0, 0
        steps, sizes = [], []
        pending = None   # (costs, sizes) of the call whose costs have not been read yet

        def settle():
            """Read the costs of the pending call (waits for it); returns the step of a non-finite cost."""
            nonlocal sum_cost, n_events, n_steps, pending
            if pending is None:
                return None
            costs, sizes_ = np.asarray(pending[0], dtype=np.float64), np.asarray(pending[1], dtype=np.float64)
            pending = None
            bad = np.flatnonzero(~np.isfinite(costs))
            sum_cost += float(costs @ sizes_)
            n_events += int(sizes_.sum())
            if step_log is not None:
                step_log.extend(zip(costs.tolist(), sizes_.astype(int).tolist()))
            first_bad = n_steps + int(bad[0]) + 1 if len(bad) else None
            n_steps += len(costs)
            return first_bad

        def run():
            # JAX dispatches asynchronously: the costs of this call are read after the next chunk has been
            # prepared, so the host's preparation overlaps the device's work (the new states stay on the device)
            nonlocal H, pending
            costs, *H = fn(len(steps))(*(np.stack(col) for col in zip(*steps)), *H)
            first_bad = settle()
            pending = (costs, list(sizes))
            steps.clear(), sizes.clear()
            return first_bad

        for inp, out, reset, keep in batches:
            if keep is not None:
                active = active[keep]
            if len(active) == width:   # all slots active (most steps): the arrays as they come, no scatter
                x, t, r, a = inp.astype(np.int32, copy=False), out.astype(np.int32, copy=False), reset.astype(FLOAT), all_on
            else:
                x = np.full(width, self.n_items, dtype=np.int32)
                t, r, a = x.copy(), np.ones(width, dtype=FLOAT), np.zeros(width, dtype=FLOAT)
                x[active], t[active], r[active], a[active] = inp, out, reset, 1
            y = (t,) if sampler is None else sampler.inputs(t)
            steps.append((x, *y, r, a, *noise.step_values(noise_rng, active)))
            sizes.append(len(inp))
            if len(steps) == chunk and (bad := run()):
                return sum_cost, n_events, n_steps, bad
        if steps and (bad := run()):
            return sum_cost, n_events, n_steps, bad
        bad = settle()
        return sum_cost, n_events, n_steps, bad

    # --- checkpoints ---------------------------------------------------------------------------
    def _save_checkpoint(self, fname, epochs_done, fingerprint, streams):
        """A model file (loadable with loadmodel) plus what resuming needs: optimiser states, random
        streams, sample store, finished epochs and their statistics, and a fingerprint of the data."""
        header, arrays = self._model_payload()
        stream_header, stream_arrays = streams.get_state()
        header['checkpoint'] = {'epochs_done': epochs_done, 'fingerprint': fingerprint,
                                'epoch_stats': self.epoch_stats_, 'streams': stream_header,
                                'n_states': len(self._opt_states)}
        arrays.update({f'state_{i}': v.get_value() for i, v in enumerate(self._opt_states)})
        arrays.update(stream_arrays)
        _write_safe(fname, header, arrays)

    def _restore_checkpoint(self, fname, fingerprint, streams):
        """Load a checkpoint into the freshly set-up training run; returns the number of finished epochs."""
        with open(fname, 'rb') as f, np.load(f, allow_pickle=False) as z:
            header = _safe_header(z)
            ckpt = header.get('checkpoint')
            if header.get('format') != MODEL_FORMAT or not ckpt:
                raise GRU4RecError(f'{fname} is not a GRU4Rec checkpoint')
            mine, theirs = dict(self.get_params()), {**DEFAULTS, **header['params']}   # keys added later: defaults
            for runtime in ('backend', 'device'):
                mine.pop(runtime), theirs.pop(runtime, None)
            if mine != theirs:
                diff = ', '.join(k for k in mine if mine[k] != theirs.get(k))
                raise GRU4RecError(f'The checkpoint in {fname} was made with other parameters ({diff})')
            if ckpt['fingerprint'] != fingerprint:
                raise GRU4RecError(f'The checkpoint in {fname} was made with other training data')
            if ckpt['n_states'] != len(self._opt_states):
                raise GRU4RecError(f'{fname} does not match this version of the model')
            for name, var in self.weights.items():
                var.set_value(z[f'w_{name}'])
            for i, var in enumerate(self._opt_states):
                var.set_value(z[f'state_{i}'])
            streams.set_state(ckpt['streams'], z)
        self.epoch_stats_ = ckpt['epoch_stats']
        print(f'Resuming from {fname} after epoch {ckpt["epochs_done"]}')
        return ckpt['epochs_done']

    def memory_estimate(self, n_items, sample_store=10000000):
        """Bytes that training allocates for the item-indexed weights, their optimiser states and the
        negative-sample store, by part. The dense GRU weights and per-step buffers are comparatively tiny."""
        shapes = self._weight_shapes(n_items)
        item_weights = sum(4 * int(np.prod(v)) for k, v in shapes.items() if v[0] == n_items)
        states = {'adagrad': 1, 'rmsprop': 1, 'adadelta': 2, 'adam': 3, 'adam_legacy': 3}.get(self.adapt, 0)
        states += self.momentum > 0
        rows = sample_store // self.n_sample if self.n_sample else 0
        store = 4 * self.n_sample * (rows if rows > 1 else 1)
        return {'item weights': item_weights, 'optimiser state': states * item_weights, 'sample store': store}

    def _check_memory(self, sample_store):
        parts = self.memory_estimate(self.n_items, sample_store)
        need, free = sum(parts.values()), available_memory(self._backend() == 'jax', self.device)
        if free is not None and need > free:
            gib = lambda b: f'{b / 2 ** 30:.2f} GiB'
            detail = ', '.join(f'{k} {gib(v)}' for k, v in parts.items())
            raise GRU4RecError(f'Training needs about {gib(need)} ({detail}) but only {gib(free)} of memory is '
                               f'available: lower layers/embedding (item matrices), use momentum=0 or adagrad '
                               f'(optimiser state), or lower the sample store size (-ss)')

    def _setup(self, item_support, rng):
        """Fresh weights (drawn from rng) and the item support used by logQ and sampling."""
        self.n_items = len(item_support)
        self.item_support = np.asarray(item_support, dtype=np.int64)
        self._set_weights(self._init_weights(rng))
        # log q of the logQ correction, as the original computes it in float32: log(P0) for in-batch targets,
        # log(P0 ** sample_alpha) for sampled negatives (not alpha * log(P0): the last bits differ, and with
        # learning_rate 0.2 a step-by-step comparison with the original magnifies them)
        p0 = np.maximum(self.item_support, 1).astype(FLOAT)
        self._logq_target = pytensor.shared(np.log(p0), name='logq_target')
        self._logq_sample = pytensor.shared(np.log(p0 ** np.float32(self.sample_alpha)), name='logq_sample')

    def nan_hint(self):
        """A likely cause of a NaN loss that the parameters show, or ''."""
        if self.loss == 'cross-entropy' and self.final_act != 'softmax':
            return (f"loss='cross-entropy' takes the log of the final activation, which final_act="
                    f"'{self.final_act}' can make negative: use final_act='softmax' (or loss='xe_logit' with "
                    f"final_act='softmax_logit')")
        return ''

    def _diverged(self, epoch, step):
        print(f'Epoch {epoch + 1}: NaN error! (step {step}); training stopped')
        if hint := self.nan_hint():
            print(f'Hint: {hint}')
        self.error_during_train = True
        self.error_epoch, self.error_step = epoch + 1, step
        return self

    def _train_step(self, width=None):
        """The symbolic training step with its updates (see _train_graph for width); records the optimiser
        states. Returns (inputs, cost, new states, updates, noise)."""
        noise = NoiseInputs(width)
        inputs, cost, new_H, dense, sparse = self._train_graph(noise, width)
        updates = self._updates(cost, dense, sparse, sink=None if width is None else self.n_items)
        weights = set(self.weights.values())
        self._opt_states = [v for v in updates if v not in weights]   # Adagrad accumulators, velocities, ...
        return inputs, cost, new_H, updates, noise

    def _compile_train(self):
        inputs, cost, new_H, updates, noise = self._train_step()
        fn = pytensor.function(inputs, [cost] + new_H, updates=list(updates.items()),
                               mode=self._mode())
        fn.trust_input = True
        return fn, noise

    def _compile_train_chunked(self, width):
        """Training K minibatches per call: a scan over fixed-width masked steps (_train_graph with a width).
        Returns (compiled, NoiseInputs); compiled(K) is the function for K steps, with inputs the per-step
        sequences of _train_graph's step inputs (X, Y, [S,] R, A: K x B, or K x (B + n_sample) for Y with
        host negatives; host noise K x B x width) and the initial states H (B x L_i), and outputs the K
        costs and the final states. Numba compiles one function for any K; JAX (static shapes) one per K:
        the full chunk and the shorter last chunk of an epoch."""
        inputs, cost, new_H, updates, noise = self._train_step(width)
        n_seq = len(inputs) - len(self.layers)
        targets = list(updates)

        def step(*args):   # one slice of each sequence, the previous hidden states, the previous weights/states
            prev = dict(zip(inputs + targets, args))
            return clone_replace([cost] + new_H + [updates[t] for t in targets], replace=prev)

        @functools.cache
        def compiled(steps):
            seqs = [pt.tensor(name=f'{v.name}_seq', dtype=v.dtype, shape=(steps,) + v.type.shape) for v in inputs[:n_seq]]
            H0 = [pt.tensor(f'H{i}_init', dtype=FLOAT, shape=h.type.shape) for i, h in enumerate(inputs[n_seq:])]
            # weights and optimiser states are carried through the scan and written back once per call
            results = pytensor.scan(step, sequences=seqs, outputs_info=[None] + H0 + targets, return_list=True,
                                    return_updates=False)
            last = [r[-1] for r in results[1:]]
            fn = pytensor.function(seqs + H0, [results[0]] + last[:len(H0)], updates=list(zip(targets, last[len(H0):])),
                                   mode=self._mode())
            fn.trust_input = True
            return fn

        static_k = self._backend() == 'jax'
        return (lambda k: compiled(k if static_k else None)), noise

    def _pad_items(self, pad):
        """Add (pad=True) or remove the padding row that inactive slots of chunked training point at."""
        for var in self._item_vars + [self._logq_target, self._logq_sample]:
            v = var.get_value(borrow=True)
            if pad and len(v) == self.n_items:
                var.set_value(np.concatenate([v, np.zeros((1,) + v.shape[1:], v.dtype)]))
            elif not pad and len(v) == self.n_items + 1:
                var.set_value(v[:self.n_items].copy())

    # --- prediction --------------------------------------------------------------------------
    def _require_trained(self):
        if not hasattr(self, 'weights'):
            raise GRU4RecError('The model is not trained: call fit() or loadmodel() first')
        if self.error_during_train:
            raise GRU4RecError(f'Training stopped with a NaN loss in epoch {self.error_epoch}; the model cannot predict')

    def _predict_scores_graph(self, X, H, C=None):
        """Prediction-mode step (no dropout, no reset, no logQ). Returns (activated scores, new states).
        Scores are M x N over all items, or M x len(C) over the item indices C."""
        w = self.weights
        if self.embedding_mode == 'shared':
            new_H = self._layers_forward(w['Wy'][X], H, None, 0, 0)
        elif self.embedding_mode == 'separate':
            new_H = self._layers_forward(w['E'][X], H, None, 0, 0)
        else:
            new_H = self._layers_forward(None, H, None, 0, 0, onehot_rows=w['Wx0'][X])
        Wy, By = (w['Wy'], w['By']) if C is None else (w['Wy'][C], w['By'][C])
        scores = pt.dot(new_H[-1], Wy.T) + By.T
        act = _softmax if self.final_act == 'softmax_logit' else self._final_act
        return act(scores), new_H

    def _compiled(self, key, build):
        if key not in self._predict_fns:
            self._predict_fns[key] = build()
        return self._predict_fns[key]

    def _rank_graph(self, X, Y, R, H, C=None, srng=None):
        """One evaluation step: (n_greater, n_equal, *new_H). n_greater/n_equal count the candidates (all
        items, or the indices C) scoring above/equal to the target Y of each row; rows with R = 1 get a zero
        state afterwards. srng: add uniform(0, 1e-10) tie-break noise to every score."""
        if C is None:
            scores, new_H = self._predict_scores_graph(X, H)
        else:
            scores, new_H = self._predict_scores_graph(X, H, pt.concatenate([Y, C]))
        if srng is not None:
            scores = scores + srng.uniform(scores.shape) * np.float32(1e-10)
        if C is None:
            target, cand = scores[pt.arange(Y.shape[0]), Y][:, None], scores
        else:
            target, cand = _diag(scores)[:, None], scores[:, Y.shape[0]:]
        counts = [pt.sum(pt.gt(cand, target), axis=1, dtype='int64'), pt.sum(pt.eq(cand, target), axis=1, dtype='int64')]
        return counts + [h * (1 - R)[:, None] for h in new_H]

    def _static_eval_shape(self, width, n_cand):
        """(width, n_cand) as the static shapes of an evaluation graph with candidates on JAX, which needs
        them (the target diagonal and the candidate columns are sliced by them); (None, None) elsewhere."""
        return (width, n_cand) if self._backend() == 'jax' and n_cand is not None else (None, None)

    def rank_function(self, with_candidates=False, tiebreak=False, width=None, n_cand=None):
        """Compiled step for evaluation: f(X, Y, R, [C], *H) -> (n_greater, n_equal, *new_H) (see _rank_graph),
        for minibatches of `width` rows and `n_cand` candidates (JAX compiles one per size, see
        _static_eval_shape; any size elsewhere)."""
        width, n_cand = self._static_eval_shape(width, n_cand if with_candidates else None)

        def build():
            X, Y = (pt.tensor(n, dtype='int32', shape=(width,)) for n in 'XY')
            R = pt.tensor('R', dtype=FLOAT, shape=(width,))
            H = [pt.tensor(f'H{i}', dtype=FLOAT, shape=(width, u)) for i, u in enumerate(self.layers)]
            C = pt.tensor('C', dtype='int32', shape=(n_cand,)) if with_candidates else None
            srng = RandomChain(self.seed) if tiebreak else None
            outs = self._rank_graph(X, Y, R, H, C, srng)
            inputs = [X, Y, R] + ([C] if with_candidates else []) + H
            fn = pytensor.function(inputs, outs, updates=srng.updates if srng else None, mode=self._mode())
            fn.trust_input = True
            return fn
        return self._compiled(('rank', with_candidates, tiebreak, width, n_cand), build)

    def rank_chunk_function(self, steps, width, with_candidates=False, n_cand=None):
        """Evaluation of `steps` minibatches of `width` rows in one call (no tie-break noise): the compiled
        scan over _rank_graph, f(X, Y, R: steps x width, [C], *H: width x L_i) -> (n_greater, n_equal:
        steps x width, *final_H). On Numba and the python backend one compiled function serves any size."""
        if self._backend() != 'jax':
            steps = None
        width, n_cand = self._static_eval_shape(width, n_cand if with_candidates else None)

        def build():
            X, Y = (pt.tensor(f'{n}_seq', dtype='int32', shape=(steps, width)) for n in 'XY')
            R = pt.tensor('R_seq', dtype=FLOAT, shape=(steps, width))
            C = pt.tensor('C', dtype='int32', shape=(n_cand,)) if with_candidates else None
            H0 = [pt.tensor(f'H{i}_init', dtype=FLOAT, shape=(width, u)) for i, u in enumerate(self.layers)]
            res = pytensor.scan(lambda x, y, r, *h: self._rank_graph(x, y, r, list(h), C), sequences=[X, Y, R],
                                outputs_info=[None, None] + H0, return_list=True, return_updates=False)
            inputs = [X, Y, R] + ([C] if with_candidates else []) + H0
            fn = pytensor.function(inputs, res[:2] + [h[-1] for h in res[2:]], mode=self._mode())
            fn.trust_input = True
            return fn
        return self._compiled(('rank_chunk', with_candidates, steps, width, n_cand), build)

    def predict_next_batch(self, session_ids, input_item_ids, predict_for_item_ids=None, batch=100):
        """Score the next item for `batch` parallel session slots, keeping each slot's hidden state.

        session_ids / input_item_ids: one entry per slot (length `batch`). A slot whose session ID differs
        from the previous call starts from a zero state. Returns a DataFrame of activated scores (softmax
        for softmax_logit): rows = all training items (or predict_for_item_ids), columns = slots 0..batch-1."""
        self._require_trained()
        session_ids = np.asarray(session_ids)
        items = np.asarray(input_item_ids)
        if session_ids.ndim != 1 or items.ndim != 1:
            raise GRU4RecError('session_ids and input_item_ids must be lists with one entry per slot (e.g. [sid], '
                               '[item], batch=1); for the top items of one session use model.recommend(clicks)')
        if len(session_ids) != batch or len(items) != batch:
            raise GRU4RecError(f'session_ids and input_item_ids must have length batch={batch}, got '
                               f'{len(session_ids)} and {len(items)}: pass batch={len(session_ids)} (one slot per '
                               'session), or use model.recommend / model.live_sessions() for live sessions')
        idx = self.itemidmap_index.get_indexer(items)
        if (idx < 0).any():
            raise GRU4RecError(f'Unknown item ID(s) in input_item_ids: {list(items[idx < 0][:5])}')
        cand = None
        if predict_for_item_ids is not None:
            cand = self.itemidmap_index.get_indexer(np.asarray(predict_for_item_ids))
            if (cand < 0).any():
                raise GRU4RecError('Unknown item ID(s) in predict_for_item_ids')
        state = self._pred_state
        if state is None or state['batch'] != batch:
            state = self._pred_state = {'batch': batch, 'session': np.full(batch, -1, dtype=object),
                                        'H': [np.zeros((batch, u), dtype=FLOAT) for u in self.layers]}
        changed = session_ids != state['session']
        for h in state['H']:
            h[changed] = 0
        state['session'] = session_ids.copy()

        def build(with_c):
            X = pt.ivector('X')
            H = [pt.fmatrix(f'H{i}') for i in range(len(self.layers))]
            C = pt.ivector('C') if with_c else None
            scores, new_H = self._predict_scores_graph(X, H, C)
            inputs = [X] + ([C] if with_c else []) + H
            return pytensor.function(inputs, [scores] + new_H, mode=self._mode())
        fn = self._compiled(('predict', cand is not None), lambda: build(cand is not None))
        args = [idx.astype(np.int32)] + ([cand.astype(np.int32)] if cand is not None else []) + state['H']
        scores, *H = fn(*args)
        state['H'] = [np.array(h) for h in H]   # host copies: the next call resets slots in place
        index = self.itemidmap.index if cand is None else pd.Index(np.asarray(predict_for_item_ids))
        return pd.DataFrame(data=np.asarray(scores).T, index=index)

    @property
    def itemidmap_index(self):
        return self.itemidmap.index

    # --- recommendations for live sessions (thin wrappers of recommend.py, issue 20) -------------------
    def recommend(self, clicks, k=20, exclude_seen=False, candidates=None):
        """Top-k next items of one session after its clicks (item IDs, oldest first): recommend.recommend."""
        return _recommend_module().recommend(self, clicks, k=k, exclude_seen=exclude_seen, candidates=candidates)

    def recommend_batch(self, events, k=20, **kwargs):
        """Top-k next items of many sessions at once, a tidy DataFrame: recommend.recommend_batch."""
        return _recommend_module().recommend_batch(self, events, k=k, **kwargs)

    def live_sessions(self, **kwargs):
        """A bounded store of live sessions (one click in, top-k out): recommend.LiveSessions."""
        return _recommend_module().LiveSessions(self, **kwargs)

    # --- persistence -----------------------------------------------------------------------
    def savemodel(self, fname):
        """Save the trained model atomically (temp file + rename: an interrupted save never leaves a broken
        file at `fname`). The format follows the extension: `.pickle`/`.pkl` write a pickle of plain data
        (compatibility); anything else (e.g. `model.gru4rec`) writes the safe format: a zip of arrays with a
        JSON header, which loads without unpickling anything."""
        self._require_trained()
        if str(fname).endswith(('.pickle', '.pkl')):
            state = {'format': MODEL_FORMAT, 'version': MODEL_VERSION, 'params': self._saved_params(),
                     'item_ids': np.asarray(self.itemidmap.index), 'item_support': self.item_support,
                     'weights': dict(self.get_weights())}
            atomic_write(fname, lambda f: pickle.dump(state, f, protocol=pickle.HIGHEST_PROTOCOL))
            return
        header, arrays = self._model_payload()
        _write_safe(fname, header, arrays)

    def _saved_params(self):
        """Parameters stored in model files: all but the device, which is the loading machine's choice."""
        params = dict(self.get_params())
        params.pop('device')
        return params

    def _model_payload(self):
        """(JSON header, arrays) of the safe model format."""
        ids = np.asarray(self.itemidmap.index)
        if ids.dtype.kind not in 'iuf':
            if not all(isinstance(i, str) for i in ids):
                raise GRU4RecError('Item IDs mixing strings and numbers cannot be stored in the safe format; '
                                   'save to a .pickle file instead')
            ids = ids.astype(str)
        weights = self.get_weights()
        header = {'format': MODEL_FORMAT, 'version': MODEL_VERSION, 'params': self._saved_params(),
                  'item_id_kind': 'str' if ids.dtype.kind == 'U' else 'numeric', 'weights': list(weights)}
        arrays = {'item_ids': ids, 'item_support': self.item_support}
        arrays.update({f'w_{k}': v for k, v in weights.items()})
        return header, arrays

    @classmethod
    def loadmodel(cls, fname, backend=None, device=None):
        """Load a model saved by savemodel, recognising the format by its content; backend (None: the saved one)
        and device (None: the backend's default) say where it runs. The safe format is read
        with numpy's allow_pickle=False; a .pickle is read with a loader that accepts plain data only (numpy
        arrays, builtins), so files of the original Theano GRU4Rec or crafted pickles are refused."""
        try:
            with open(fname, 'rb') as f:
                magic = f.read(4)
                f.seek(0)
                if magic == b'PK\x03\x04':
                    state = _read_safe_model(f, fname)
                else:
                    print('Loading a pickled model: pickles from untrusted sources can run code. This loader '
                          'accepts plain data only; prefer the safe format (e.g. -s model.gru4rec).')
                    state = _DataUnpickler(f).load()
        except OSError as e:
            raise GRU4RecError(f'Cannot read model file {fname}: {e.strerror}') from None
        except GRU4RecError:
            raise
        except Exception as e:
            raise GRU4RecError(f'{fname} is not a GRU4Rec model file (or it is truncated): {type(e).__name__}') from None
        if not isinstance(state, dict) or state.get('format') != MODEL_FORMAT:
            raise GRU4RecError(f'{fname} is not a GRU4Rec model file of this implementation')
        if state.get('version') != MODEL_VERSION:
            raise GRU4RecError(f'{fname} has model format version {state.get("version")}; this version reads {MODEL_VERSION}')
        params = dict(state['params'])
        if backend is not None:
            params['backend'] = backend
        params['device'] = device
        try:
            model = cls(**params)
            ids = state['item_ids']
            model.itemidmap = pd.Series(np.arange(len(ids), dtype=np.int32), index=ids, name='ItemIdx')
            model.n_items = len(ids)
            model.item_support = np.asarray(state['item_support'])
            expected = model._weight_shapes()
            weights = state['weights']
            if list(weights) != list(expected) or any(np.shape(weights[k]) != v for k, v in expected.items()):
                raise GRU4RecError(f'{fname}: the stored weights do not fit the stored parameters')
        except (GRU4RecError, TypeError, KeyError, ValueError) as e:
            raise GRU4RecError(f'{fname} is not a consistent GRU4Rec model file: {e}') from None
        model._set_weights(weights)
        return model


def _recommend_module():
    try:
        from . import recommend
    except ImportError:
        import recommend
    return recommend


def _write_safe(fname, header, arrays):
    """Arrays plus a JSON header in a numpy zip, written atomically."""
    arrays = dict(arrays, header=np.frombuffer(json.dumps(header).encode('utf-8'), dtype=np.uint8))
    atomic_write(fname, lambda f: np.savez(f, **arrays))


def _data_fingerprint(items, offsets):
    return {'events': int(len(items)), 'sessions': int(len(offsets) - 1),
            'crc32': zlib.crc32(items.tobytes()) ^ zlib.crc32(np.ascontiguousarray(offsets).tobytes())}


class TrainingStreams:
    """The random streams of a training run, saved and restored by checkpoints: the RandomState of the
    initial weights and the session shuffling, the negative sampler (generator, store, position) and the
    generator of the dropout noise."""

    def __init__(self, rng, sampler, noise_rng):
        self.rng, self.sampler, self.noise_rng = rng, sampler, noise_rng

    def get_state(self):
        kind, keys, pos, has_gauss, gauss = self.rng.get_state()
        header = {'rng': [kind, int(pos), int(has_gauss), float(gauss)],
                  'noise': self.noise_rng.bit_generator.state}
        arrays = {'rng_keys': keys}
        if self.sampler is not None:
            header['sampler'], arrays_ = self.sampler.get_state()
            arrays.update(arrays_)
        return header, arrays

    def set_state(self, header, z):
        kind, pos, has_gauss, gauss = header['rng']
        self.rng.set_state((kind, z['rng_keys'], pos, has_gauss, gauss))
        self.noise_rng.bit_generator.state = header['noise']
        if self.sampler is not None:
            made_with = header['sampler'].get('kind', 'cpu')   # checkpoints from before store types: cpu
            if made_with != self.sampler.kind:
                raise GRU4RecError(f'The checkpoint was made with store_type={made_with!r}; resume with the same '
                                   f'store type (this run has {self.sampler.kind!r})')
            self.sampler.set_state(header['sampler'], z)


def _safe_header(z):
    """The JSON header of an open safe-format file (the counterpart of _write_safe)."""
    return json.loads(bytes(z['header']).decode('utf-8'))


def _read_safe_model(f, fname):
    """The state dict of a safe-format model file (numpy zip, no pickles allowed)."""
    with np.load(f, allow_pickle=False) as z:
        header = _safe_header(z)
        if not isinstance(header, dict):
            raise GRU4RecError(f'{fname} is not a GRU4Rec model file of this implementation')
        if header.get('format') == MODEL_FORMAT and header.get('version') == MODEL_VERSION:
            header['item_ids'] = z['item_ids'].astype(object) if header.get('item_id_kind') == 'str' else z['item_ids']
            header['item_support'] = z['item_support']
            header['weights'] = OrderedDict((k, z[f'w_{k}']) for k in header['weights'])
        return header


# ---------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------

def progress(batches, total, desc):
    """Tuples whose first entry holds one entry per event (minibatches, or evaluation's per-call counts) behind
    a tqdm progress bar (events done of `total`) when stdout is a terminal and tqdm is installed; otherwise
    the tuples unchanged."""
    if not sys.stdout.isatty():
        return batches
    try:
        from tqdm import tqdm
    except ImportError:
        return batches

    def with_bar():
        with tqdm(total=total, desc=desc, unit='ev', leave=False, mininterval=0.5) as bar:
            for batch in batches:
                yield batch
                bar.update(len(batch[0]))
    return with_bar()


def sampling_cdf(support, alpha):
    """CDF of the negative-sampling distribution, probability ~ support ** alpha (float64, last entry 1)."""
    weights = support.astype(np.float64) ** alpha
    cdf = np.cumsum(weights) / weights.sum()
    cdf[-1] = 1.0
    return cdf


class GraphSampler:
    """store_type='gpu': the negatives (gpu_ops.SampleItems) and the dropout noise (gpu_ops.HashUniforms)
    are drawn inside the compiled step from (seed, step number); the host only numbers the steps (one
    counter over all epochs, as the original's store pointer, so a resumed run continues the same draws)."""
    kind = 'gpu'

    def __init__(self, rng, negatives=True):
        self.seed, self.step = rng.integers(2 ** 32, dtype=np.uint32), 0
        if negatives:
            print('Negative samples are drawn inside the training step (type=GPU)')

    def inputs(self, targets):
        """The step's target and sample inputs: targets and the step number."""
        self.step += 1
        return targets, np.uint32((self.step - 1) % 2 ** 32)

    def get_state(self):
        return {'kind': self.kind, 'step': self.step}, {}

    def set_state(self, header, z):
        self.step = header['step']


class NegativeSampler:
    """store_type='cpu': shared negative samples, item indices drawn with numpy with probability
    ~ support ** alpha, served one row of n_sample per step from a store of `store_size // n_sample` rows
    that is regenerated when used up (or drawn every step without a store).

    rng: a numpy Generator (this project's stream), or the legacy RandomState that drew the initial weights
    (rng='original'): then the draws are the original's, choice(n_items, size) for alpha = 0, else
    searchsorted(cdf, random_sample(size)), and that RandomState's state is saved by TrainingStreams."""
    kind = 'cpu'

    def __init__(self, support, alpha, n_sample, store_size, rng):
        self.n_sample, self.rng, self.n_items = n_sample, rng, len(support)
        self.cdf = sampling_cdf(support, alpha)
        self.uniform = alpha == 0
        self.guide, _ = gpu_ops.cdf_guide(self.cdf)   # the search for u starts at its bucket's entry
        self.rows = store_size // n_sample
        if self.rows <= 1:
            print('No example store was used')
            self.rows = 0
        else:
            self.store = self._draw(self.rows)
            print(f'Created sample store with {self.rows} batches of samples (type=CPU)')
        self.pos = 0

    def _draw(self, n_rows):
        size = n_rows * self.n_sample
        legacy = isinstance(self.rng, np.random.RandomState)
        if self.uniform:
            draw = (self.rng.choice(self.n_items, size) if legacy
                    else self.rng.integers(self.n_items, size=size, dtype=np.int32))
        else:
            draw = self.search(self.rng.random_sample(size) if legacy else self.rng.random(size))
        return draw.astype(np.int32, copy=False).reshape(n_rows, self.n_sample)

    def search(self, u):
        """np.searchsorted(cdf, u): the smallest i with cdf[i] >= u, for every u in [0, 1)."""
        return gpu_ops.numba_guided_search()(self.cdf, self.guide, u)

    def inputs(self, targets):
        """The step's target and sample inputs: the targets followed by the next n_sample negatives."""
        return (np.concatenate([targets, self.next()]),)

    def get_state(self):
        shared = isinstance(self.rng, np.random.RandomState)   # saved with the weights' RandomState
        state = {'kind': self.kind, 'generator': None if shared else self.rng.bit_generator.state,
                 'pos': self.pos, 'rows': self.rows}
        return state, ({'sampler_store': self.store} if self.rows else {})

    def set_state(self, header, z):
        if header['generator'] is not None:
            self.rng.bit_generator.state = header['generator']
        self.pos = header['pos']
        if self.rows:
            self.store = z['sampler_store']

    def next(self):
        if self.rows == 0:
            return self._draw(1)[0]
        if self.pos == self.rows:
            self.store = self._draw(self.rows)
            self.pos = 0
        self.pos += 1
        return self.store[self.pos - 1]


class RandomChain:
    """A seeded shared random generator whose draws are chained within one graph; `updates` advances it."""

    def __init__(self, seed):
        self.shared = pt.random.shared_rng(seed=seed, name='rng')
        self.current = self.shared

    def uniform(self, shape):
        self.current, u = self.current.uniform(size=shape, dtype=FLOAT)
        return u

    @property
    def updates(self):
        return [(self.shared, self.current)] if self.current is not self.shared else []


class NoiseInputs:
    """Uniform noise for the dropout masks (M x width each). By default graph inputs that the training loop
    fills from a seeded numpy Generator (on Numba much cheaper than PyTensor's in-graph generator); after
    hash_with(seed, step), drawn inside the graph by gpu_ops.HashUniforms per session slot (store_type='gpu':
    nothing to generate or send per step). step_values() gives the loop's values for `inputs`."""

    def __init__(self, rows=None):
        self.inputs, self.widths, self.rows = [], [], rows   # rows: static M (fixed-width steps) or None
        self.hashed = None

    def hash_with(self, seed, step):
        """Draw in the graph from (seed, step): fixed-width steps hash slot = row; per-step graphs take the
        active slots' ids as an input, so both give a slot the same noise."""
        slots = (pt.tensor('slots', dtype='int32', shape=(None,)) if self.rows is None
                 else pt.as_tensor_variable(np.arange(self.rows, dtype=np.int32)))
        self.hashed = (seed, step, slots)

    def uniform(self, width):
        self.widths.append(width)
        if self.hashed is not None:
            seed, step, slots = self.hashed
            if self.rows is None and not self.inputs:
                self.inputs.append(slots)
            return gpu_ops.HashUniforms(width, len(self.widths))(seed, step, slots)
        self.inputs.append(pt.tensor(f'U{len(self.inputs)}', dtype=FLOAT, shape=(self.rows, None)))
        return self.inputs[-1]

    def step_values(self, rng, active):
        """Values of `inputs` for one step whose active slots are `active` (ascending slot ids)."""
        if self.hashed is not None:
            return [active.astype(np.int32)] if self.inputs else []
        if self.rows is None or len(active) == self.rows:   # the active rows as they come
            return [rng.random((len(active), w), dtype=np.float32) for w in self.widths]
        values = []
        for w in self.widths:   # fixed width: the same draws, in the active slots' rows
            u = np.zeros((self.rows, w), dtype=FLOAT)
            u[active] = rng.random((len(active), w), dtype=np.float32)
            values.append(u)
        return values


def available_memory(accelerator=False, device=None):
    """Bytes available to a new allocation: free memory of the JAX GPU that the JAX backend will use (device
    as in custom_opt.parse_device; None = JAX's default device) if accelerator is set and that is a GPU, else
    this machine's available RAM (Linux MemAvailable); None if unknown."""
    if accelerator:
        try:
            import jax
            dev = jax.devices()[0] if device is None else custom_opt.jax_device(device)
            if dev.platform == 'gpu':
                stats = dev.memory_stats()
                return int(stats['bytes_limit'] - stats['bytes_in_use'])
        except Exception:   # no JAX, no GPU or no statistics: fall back to the host memory
            pass
    try:
        with open('/proc/meminfo') as f:
            for line in f:
                if line.startswith('MemAvailable:'):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf('SC_AVPHYS_PAGES') * os.sysconf('SC_PAGE_SIZE')
    except (ValueError, OSError, AttributeError):
        return None


def _dropout(x, p, u):
    """Inverted dropout with uniform noise u (same shape as x)."""
    keep = np.float32(1 - p)
    return x * (u < keep).astype(FLOAT) / keep


def _state_like(p):
    """A zero optimiser-state tensor with the shape of weight p."""
    return pytensor.shared(np.zeros_like(p.get_value()), name=f'{p.name}_state', shape=p.type.shape)


def _numeric_column(col, name, what):
    if not pd.api.types.is_numeric_dtype(col) or pd.api.types.is_bool_dtype(col):
        conv = pd.to_numeric(col, errors='coerce')
        if conv.isna().any():
            bad = col[conv.isna()].iloc[0]
            raise GRU4RecError(f'Column {name} of the {what} data must be numeric (found {bad!r})')
        col = conv
    if col.isna().any():
        raise GRU4RecError(f'Column {name} of the {what} data has missing values')
    if col.dtype.kind == 'f' and not np.isfinite(col.values).all():
        raise GRU4RecError(f'Column {name} of the {what} data has infinite values')
    return col


def _to_int_arg(value, name):
    try:
        v = _to_int(value)
    except (TypeError, ValueError):
        raise GRU4RecError(f'{name} must be an integer, got {value!r}') from None
    if v < 0:
        raise GRU4RecError(f'{name} must be >= 0, got {v}')
    return v


def atomic_write(fname, write):
    """Write through a temporary file in the target folder, then rename: the target is never half-written."""
    folder = os.path.dirname(os.path.abspath(fname))
    fd, tmp = tempfile.mkstemp(prefix='.tmp-', dir=folder)
    try:
        with os.fdopen(fd, 'wb') as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, fname)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


class _DataUnpickler(pickle.Unpickler):
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
