"""The symbolic model (PyTensor): activations, losses, the weights and their initialisation, the GRU layers,
the training step's graph and the prediction step's graph. Optimiser updates: _optim.py.

Functions take the checked parameters p (_params.Params) and the weights w, a dict of shared variables named
as weight_shapes lists them. Shapes: M = active session slots in a minibatch, K = M + n_sample scored items
per row, N = number of items, L_i = units of GRU layer i, L = units of the last layer.
"""
from collections import OrderedDict

import numpy as np
import pytensor
import pytensor.tensor as pt

if __package__:
    from . import _params, gpu_ops
else:
    import _params, gpu_ops  # noqa: E401

FLOAT = 'float32'                 # every weight, state and score
LOG_EPS = np.float32(1e-24)       # inside the logs of the cross-entropy and bpr-max losses


# --- activations and losses ------------------------------------------------------------------------
# Formulations below are chosen for speed on the Numba backend (no vectorised exp/expm1 there): PyTensor's
# fused softmax ops, and exp(min(x, 0)) instead of a switch that PyTensor turns into a slow expm1.
# They equal the original's formulas up to float rounding.

def softmax(x):
    return pt.special.softmax(x, axis=1)


def neg_log_softmax(x):
    """'softmax_logit': log(sum_j exp(x'_j)) - x', with x' = x - rowmax(x), i.e. -log_softmax(x)."""
    return -pt.special.log_softmax(x, axis=1)


def elu(x, alpha):
    """x if x >= 0 else alpha * (exp(x) - 1). Positive scores pass unchanged (max(x, 0) + alpha - alpha would
    round away their low bits); the negative side as alpha * exp(x) - alpha, which PyTensor does not turn
    into expm1."""
    return pt.switch(x >= 0, x, alpha * pt.exp(pt.minimum(x, 0)) - alpha)


def parse_activation(name, final, args=None):
    """Return f(x) for an activation name: linear, relu, tanh, leaky-X, elu-X, selu-X-Y and,
    as final activations only, softmax and softmax_logit. Raises GRU4RecError. args: the X (and Y) to use
    instead of the name's numbers (the training step's runtime scalars, _hyper)."""
    kind, numbers = _params.activation_spec(name, final)
    args = numbers if args is None else args
    if kind == 'leaky':
        return lambda x, a=args[0]: pt.maximum(x, 0) + a * pt.minimum(x, 0)
    if kind == 'elu':
        return lambda x, a=args[0]: elu(x, a)
    if kind == 'selu':
        return lambda x, l=args[0], a=args[1]: l * elu(x, a)
    return {'linear': lambda x: x, 'relu': lambda x: pt.maximum(x, 0), 'tanh': pt.tanh, 'softmax': softmax,
            'softmax_logit': neg_log_softmax}[kind]


def diag(yhat):
    """yhat[i, i] for i < M of an M x K score matrix (K >= M)."""
    m = pt.arange(yhat.shape[0])
    return yhat[m, m]


def softmax_neg(yhat, col_mask=None):
    """Softmax over the negatives of each row (weight 0 on the diagonal and on masked columns). The original
    zeroes the diagonal and lets it take part in the max shift; the shift cancels, so masking it with -inf
    gives the same values."""
    m = pt.arange(yhat.shape[0])
    if col_mask is not None:
        yhat = pt.switch(col_mask[None, :] > 0, yhat, -np.inf)
    return softmax(pt.set_subtensor(yhat[m, m], -np.inf))


def loss_sum(loss, yhat, smoothing=0.0, bpreg=1.0, row_mask=None, col_mask=None):
    """Sum over the M rows of the loss of an activated M x K score matrix (column i is row i's positive).
    smoothing, bpreg: numbers or float32 scalars (a smoothing of 0 must be a number).

    row_mask (M,) and col_mask (K,), 0/1 floats, are for fixed-width minibatches with inactive slots: a
    masked row adds no loss and a masked column is no negative, so the sum equals the loss of the active
    rows and columns alone. (Softmax activations must already have excluded masked columns.)"""
    d = diag(yhat)
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
        if not (isinstance(smoothing, (int, float, np.floating)) and smoothing == 0):
            s = np.float32(smoothing) if isinstance(smoothing, (int, float, np.floating)) else smoothing
            return pt.sum(rows((1 - s * k / (k - 1)) * pos + (s / (k - 1)) * cols(nll).sum(axis=1)))
        return pt.sum(rows(pos))
    if loss == 'bpr':
        return pt.sum(rows(cols(-pt.log(pt.sigmoid(d[:, None] - yhat))).sum(axis=1)))
    if loss == 'bpr-max':
        s = softmax_neg(yhat, col_mask)
        return pt.sum(rows(-pt.log((pt.sigmoid(d[:, None] - yhat) * s).sum(axis=1) + LOG_EPS)
                           + as_float32(bpreg) * (yhat ** 2 * s).sum(axis=1)))
    if loss == 'top1':   # mean over the (active) columns
        terms = cols(pt.sigmoid(yhat - d[:, None]) + pt.sigmoid(yhat ** 2)).sum(axis=1) / k
        return pt.sum(rows(terms - pt.sigmoid(d ** 2) / k))
    if loss == 'top1-max':
        s = softmax_neg(yhat, col_mask)
        return pt.sum(rows((s * (pt.sigmoid(yhat - d[:, None]) + pt.sigmoid(yhat ** 2))).sum(axis=1)))
    raise _params.GRU4RecError(f'Invalid value for parameter loss: {loss!r}')


def as_float32(x):
    """A number as a float32 constant; a symbolic scalar as it is."""
    return np.float32(x) if isinstance(x, (int, float, np.floating)) else x


def dropout(x, keep, u):
    """Inverted dropout with uniform noise u (same shape as x): keep = (1 - p, 1 / (1 - p)), float32 numbers or
    scalars. (Multiplied by the reciprocal, as PyTensor rewrote the division by a constant.)"""
    return x * (u < keep[0]).astype(FLOAT) * keep[1]


def keeps(p, h=None):
    """The (embedding, hidden) dropout keeps (see dropout): h's runtime scalars, or p's as float32 numbers;
    (1, 1) where there is no dropout."""
    if h is None:
        k = np.float32(1 - p.dropout_p_embed), np.float32(1 - p.dropout_p_hidden)
        return (k[0], np.float32(1) / k[0]), (k[1], np.float32(1) / k[1])
    return (h['keep_embed'], h['inv_keep_embed']), (h['keep_hidden'], h['inv_keep_hidden'])


def has_dropout(keep):
    """False for the constant keep probability 1 (no dropout in the graph)."""
    return not (isinstance(keep[0], (float, np.floating)) and keep[0] == 1)


# --- weights ---------------------------------------------------------------------------------------

def weight_shapes(p, n_items):
    """Name -> shape of every weight, in the order init_weights creates them."""
    n, shapes = n_items, OrderedDict()
    if p.embedding_mode == 'separate':
        shapes['E'] = (n, p.embedding)
    for i, units in enumerate(p.layers):
        fan_in = p.layers[i - 1] if i > 0 else {'onehot': n, 'separate': p.embedding,
                                                'shared': p.layers[-1]}[p.embedding_mode]
        shapes.update({f'Wx{i}': (fan_in, 3 * units), f'Wh{i}': (units, units), f'Wrz{i}': (units, 2 * units),
                       f'Bh{i}': (3 * units,)})
    shapes.update(Wy=(n, p.layers[-1]), By=(n, 1))
    return shapes


def init_matrix(p, rng, rows, cols):
    sigma = p.sigma if p.sigma != 0 else np.sqrt(6.0 / (rows + cols))
    if p.init_as_normal:
        return (rng.randn(rows, cols) * sigma).astype(FLOAT)
    return (rng.rand(rows, cols) * sigma * 2 - sigma).astype(FLOAT)


def init_weights(p, n_items, rng):
    """Initial weights as numpy arrays, in the original's draw order (so seed 42 gives its numbers): each
    gate block of Wx (3) and Wrz (2) is drawn separately with its own width; biases are zeros."""
    w = OrderedDict()
    for name, shape in weight_shapes(p, n_items).items():
        if name.startswith(('Bh', 'By')):
            w[name] = np.zeros(shape, dtype=FLOAT)
            continue
        blocks = 3 if name.startswith('Wx') else 2 if name.startswith('Wrz') else 1
        w[name] = np.hstack([init_matrix(p, rng, shape[0], shape[1] // blocks) for _ in range(blocks)])
    return w


def shared_weights(arrays):
    """The weights as shared variables. Static shapes except the first axis (item-indexed weights get a
    padding row in chunked training): By[Y].T broadcasts over the score rows, and JAX sees fixed shapes
    inside a scan."""
    return OrderedDict((k, pytensor.shared(np.asarray(v, dtype=FLOAT), name=k, shape=(None,) + np.shape(v)[1:]))
                       for k, v in arrays.items())


def weight_arrays(weights):
    """The values of shared weights as numpy arrays (copies; on JAX brought to the host)."""
    return OrderedDict((k, np.array(v.get_value(borrow=True))) for k, v in weights.items())


# --- the model -------------------------------------------------------------------------------------

def layers_forward(p, w, first_input, H, noise=None, keep=((1.0, 1.0), (1.0, 1.0)), onehot_rows=None, h=None):
    """GRU stack for one step. first_input: embedding rows (M x F) or, in one-hot mode, None with
    onehot_rows = Wx0[X] (M x 3L_0). H: list of M x L_i states. keep: the (embedding, hidden) keep
    probabilities of dropout (keeps(); 1.0: none). h: the training step's runtime hyper-parameters
    (_hyper.Hyper; None: the numbers of p). Returns the list of new states."""
    out, x = [], first_input
    keep_embed, keep_hidden = keep
    hidden_act = parse_activation(p.hidden_act, final=False, args=None if h is None else h.activation_args('hidden_act'))
    if x is not None and has_dropout(keep_embed):
        x = dropout(x, keep_embed, noise.uniform(p.embedding_width))
    for i, units in enumerate(p.layers):
        s = H[i]
        a = (onehot_rows if i == 0 and onehot_rows is not None else pt.dot(x, w[f'Wx{i}'])) + w[f'Bh{i}']
        rz = pt.sigmoid(a[:, units:] + pt.dot(s, w[f'Wrz{i}']))
        r, z = rz[:, :units], rz[:, units:]
        rec = r * s.dot(w[f'Wh{i}']) if p.reset_after else (r * s).dot(w[f'Wh{i}'])
        s_cand = hidden_act(rec + a[:, :units])
        s = (1 - z) * s + z * s_cand
        if has_dropout(keep_hidden):
            s = dropout(s, keep_hidden, noise.uniform(units))
        out.append(s)
        x = s
    return out


def training_step(p, w, noise, draws=None, logq=None, masked=False, h=None):
    """Symbolic training step. Returns (inputs, cost, new_states, dense_params, sparse) where sparse is a
    list of (shared weight, index vector, gathered rows) whose gradient is taken w.r.t. the rows.

    draws: None (the n_sample negatives are an input, after the M targets), or the _sampling.GraphSampler
    whose seed and CDF draw them, and the dropout noise, inside the graph from the step number S. logq: the
    (targets', samples') log q vectors of the logQ correction (used if p.logq). masked: a fixed-width step
    (see _training) with one more input A, 1.0 for active slots; inactive slots point at the padding item
    row and neither add loss nor act as negatives. Neither the width M nor the number of negatives is in the
    types: one compiled step serves every batch_size and n_sample (on JAX, XLA compiles each new shape once).
    h: the runtime hyper-parameters (_hyper.Hyper); None: p's numbers as constants."""
    def vector(name, dtype):
        return pt.tensor(name, dtype=dtype, shape=(None,))
    X = vector('X', 'int32')                          # M input items
    M = X.shape[0]
    if draws is not None:   # M targets; negatives and dropout noise of step S are drawn in the graph
        T, S = vector('Y', 'int32'), pt.scalar('S', dtype='uint32')
        Y = T
        if p.n_sample > 0:
            Y = pt.concatenate([T, draws.negatives(S)])
        noise.hash_with(draws.seed_var, S, M if masked else None)
        sample_inputs = [T, S]
    else:                   # M targets + n_sample negatives
        Y = vector('Y', 'int32')
        sample_inputs = [Y]
    R = vector('R', FLOAT)                            # 1.0 where the target ends its session
    A = vector('A', FLOAT) if masked else None        # 1.0 for active slots (fixed-width steps only)
    H = [pt.tensor(f'H{i}', dtype=FLOAT, shape=(None, u)) for i, u in enumerate(p.layers)]
    dense, sparse, emb, onehot_rows, Wy_rows = item_rows(p, w, X, Y, M)
    By_rows = w['By'][Y]                               # K x 1
    sparse.append((w['By'], Y, By_rows))
    new_H = layers_forward(p, w, emb, H, noise, keeps(p, h), onehot_rows, h)
    scores = pt.dot(new_H[-1], Wy_rows.T) + By_rows.T  # M x K
    if p.logq:
        # log q: raw support of the in-batch targets, support ** sample_alpha of the sampled negatives
        scores = scores - (np.float32(p.logq) if h is None else h['logq']) * pt.concatenate([logq[0][Y[:M]],
                                                                                           logq[1][Y[M:]]])
    col_mask = None
    if masked:
        col_mask = pt.concatenate([A, pt.ones((Y.shape[0] - M,), dtype=FLOAT)])
        if p.final_act in ('softmax', 'softmax_logit'):   # masked columns out of the normaliser
            scores = pt.switch(col_mask[None, :] > 0, scores, np.float32(-1e30))
    if h is None:
        yhat = parse_activation(p.final_act, final=True)(scores)
        cost = loss_sum(p.loss, yhat, p.smoothing, p.bpreg, A, col_mask) / np.float32(p.batch_size)
    else:
        yhat = parse_activation(p.final_act, final=True, args=h.activation_args('final_act'))(scores)
        smoothing = h['smoothing'] if p.smoothing else 0.0
        cost = loss_sum(p.loss, yhat, smoothing, h['bpreg'], A, col_mask) / h['batch']
    reset_H = [h * (1 - R)[:, None] for h in new_H]
    return [X] + sample_inputs + [R] + ([A] if masked else []) + noise.inputs + H, cost, reset_H, dense, sparse


def item_rows(p, w, X, Y, M):
    """The weights of a training step: (dense weights, sparse [(weight, index, rows)], input embedding rows
    (M x F, or None in one-hot mode), one-hot rows Wx0[X] (M x 3L_0, or None), output rows Wy[Y] (K x L))."""
    dense = [w[f'{n}{i}'] for i in range(len(p.layers)) for n in ('Wx', 'Wh', 'Wrz', 'Bh')]
    sparse, onehot_rows, emb = [], None, None
    if p.embedding_mode == 'shared':
        idx = pt.concatenate([X, Y])
        rows = w['Wy'][idx]                            # (M + K) x L
        sparse.append((w['Wy'], idx, rows))
        emb, Wy_rows = rows[:M], rows[M:]
    else:
        if p.embedding_mode == 'onehot':
            dense.remove(w['Wx0'])
            onehot_rows = w['Wx0'][X]                  # M x 3L_0
            sparse.append((w['Wx0'], X, onehot_rows))
        else:
            emb = w['E'][X]                            # M x embedding
            sparse.append((w['E'], X, emb))
        Wy_rows = w['Wy'][Y]                           # K x L
        sparse.append((w['Wy'], Y, Wy_rows))
    return dense, sparse, emb, onehot_rows, Wy_rows


def prediction_step(p, w, X, H, C=None):
    """Prediction-mode step (no dropout, no reset, no logQ). Returns (activated scores, new states).
    Scores are M x N over all items, or M x len(C) over the item indices C; softmax_logit gives softmax."""
    if p.embedding_mode == 'shared':
        new_H = layers_forward(p, w, w['Wy'][X], H)
    elif p.embedding_mode == 'separate':
        new_H = layers_forward(p, w, w['E'][X], H)
    else:
        new_H = layers_forward(p, w, None, H, onehot_rows=w['Wx0'][X])
    Wy, By = (w['Wy'], w['By']) if C is None else (w['Wy'][C], w['By'][C])
    scores = pt.dot(new_H[-1], Wy.T) + By.T
    act = softmax if p.final_act == 'softmax_logit' else parse_activation(p.final_act, final=True)
    return act(scores), new_H
