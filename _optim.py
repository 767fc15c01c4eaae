"""Optimiser updates of a training step: the dense weights' steps as PyTensor graphs, the item-indexed
weights' steps through gpu_ops' sparse row update (the README's "optimisers and repeated items"), and the
count of optimiser states that both, and the memory estimate, use.
"""
from collections import OrderedDict

import numpy as np
import pytensor
import pytensor.tensor as pt

if __package__:
    from . import _hyper, gpu_ops
else:
    import _hyper, gpu_ops  # noqa: E401

EPS = np.float32(1e-6)        # optimiser epsilon


def n_states(adapt, momentum):
    """Optimiser states per weight: the method's own (gpu_ops.N_STATES) plus the momentum velocity."""
    return gpu_ops.N_STATES[None if adapt == 'sgd' else adapt] + (momentum > 0)


def state_like(w):
    """A zero optimiser-state tensor with the shape of weight w."""
    return pytensor.shared(np.zeros_like(w.get_value()), name=f'{w.name}_state', shape=w.type.shape)


def updates(p, cost, dense, sparse, sink=None, h=None):
    """Parameter and optimiser-state updates of one step: (OrderedDict variable -> new value, the item-indexed
    variables: the sparse weights and their states, which chunked training pads with a row). sink: the padding
    item row of fixed-width steps; merge_repeated then keeps static shapes by sending the merged-away
    occurrences there with zero gradient. h: the runtime hyper-parameters (_hyper.Hyper); None: p's numbers as
    constants."""
    if h is None:
        h = constants(p)
    lr, mu, lmbd = h['lr'], h['mu'], h['lmbd']
    grads = pytensor.grad(cost, dense + [rows for _, _, rows in sparse])
    if p.grad_cap > 0:
        norm = pt.sqrt(sum(pt.sum(g ** 2) for g in grads))
        cap = h['grad_cap']
        grads = [pt.switch(norm >= cap, g * cap / norm, g) for g in grads]
    new = OrderedDict()
    for w, g in zip(dense, grads[:len(dense)]):
        ghat = adapted_gradient(p, w, g, new, h)
        if p.momentum > 0:
            v = state_like(w)
            v_new = mu * v - lr * (ghat + lmbd * w)
            new[v] = v_new
            new[w] = w + v_new
        elif p.lmbd > 0:   # (decay = 1 - lr * lmbd, as numpy folded it)
            new[w] = w * h['decay'] - lr * ghat
        else:
            new[w] = w - lr * ghat
    # Item-indexed weights: the same item can occur several times in one step. Weight increments add
    # up per occurrence; optimiser states that are *set* keep one occurrence (the last). The step is
    # one SparseRowUpdateGraph per weight (gpu_ops), which custom_opt fuses into one kernel.
    spec = gpu_ops.RowUpdateSpec(None if p.adapt == 'sgd' else p.adapt, lr, mu, lmbd, EPS, h['rho'], h['b1'])
    item_vars = [w for w, _, _ in sparse]
    for (w, idx, rows), g in zip(sparse, grads[len(dense):]):
        if p.merge_repeated and p.adapt != 'adam':   # (adam's row update merges them itself)
            idx, g = gpu_ops.merge_repeated(idx, g) if sink is None else gpu_ops.merge_repeated_into(idx, g, sink)
        states = [state_like(w) for _ in range(gpu_ops.n_inputs_states(spec))]
        item_vars += states
        for var, value in zip([w] + states, gpu_ops.sparse_row_update(spec, w, states, idx, g)):
            new[var] = value
    return new, item_vars


def constants(p):
    """p's hyper-parameters as float32 constants, in place of a _hyper.Hyper."""
    return _hyper.values(p)


def adapted_gradient(p, w, g, new, h):
    """The step direction of dense weight w with gradient g under p.adapt; adds the state updates to `new`.
    h: the hyper-parameters (a _hyper.Hyper, or constants(p))."""
    if p.adapt == 'adagrad':
        acc = state_like(w)
        new[acc] = acc + g ** 2
        return g / pt.sqrt(new[acc] + EPS)
    if p.adapt == 'rmsprop':
        rho = h['rho']
        acc = state_like(w)
        new[acc] = rho * acc + (1 - rho) * g ** 2
        return g / pt.sqrt(new[acc] + EPS)
    if p.adapt == 'adadelta':
        rho = h['rho']
        acc, upd = state_like(w), state_like(w)
        new[acc] = rho * acc + (1 - rho) * g ** 2
        c = (upd + EPS) / (new[acc] + EPS)
        new[upd] = rho * upd + (1 - rho) * c * g ** 2
        return g * pt.sqrt(c)
    if p.adapt in ('adam', 'adam_legacy'):
        b1, b2 = h['b1'], h['rho']
        v, m, t = state_like(w), state_like(w), state_like(w)
        new[v] = b2 * v + (1 - b2) * g ** 2
        new[m] = b1 * m + (1 - b1) * g
        new[t] = t + 1
        if p.adapt == 'adam_legacy':  # the original: second moment corrected with beta1
            return (new[m] / (1 - b1 ** new[t])) / (pt.sqrt(new[v] / (1 - b1 ** new[t])) + EPS)
        return (new[m] / (1 - b1 ** new[t])) / (pt.sqrt(new[v] / (1 - b2 ** new[t])) + EPS)
    return g
