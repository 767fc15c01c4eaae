"""The continuous hyper-parameters of the training step as runtime inputs of the compiled function.

A new learning rate (momentum, L2, dropout, ...) must not compile the training step again: each such value is a
float32 shared scalar that the graph reads, not a constant in it, so one compiled function serves every value
(in the process: _training's cache; in a new process: PyTensor's disk cache, which needs an identical graph).

Whether a value is zero stays part of the structure (a zero momentum has no velocity, a zero L2 no decay term):
a zero is the constant 0 in the graph, as before, and `structure` keeps graphs apart that differ in it. So is an
activation parameter of 1: PyTensor turns exp(x) - 1 of elu-1 into expm1, which a runtime 1 would not. (Other
values of 1 only multiply, which is exact either way.) The numbers are today's: each scalar holds the float32 value the graph used as a constant, and
where numpy folded constants together (the dense decay 1 - lr * lmbd) the folded value is computed here in the
same float32 arithmetic.

The dropout keep probabilities (1 - p; a keep of 1, no dropout, is structure) and the batch size are runtime
scalars too. Dropout multiplies by the keep's float32 reciprocal (computed here), as PyTensor had rewritten the
division by a constant; the cost is divided by the batch size, which keeps the forms PyTensor gives the
loss's gradient as they were with the constant (a power-of-two batch size gives the same bits; multiplying by
a reciprocal did not). The width of the minibatch and the number of negatives are free in the graph (dynamic
shapes, _graph.training_step), so a new batch_size or n_sample is not a new graph either (on JAX, XLA compiles
each new shape; PyTensor's graph is the same).

selu's two parameters stay constants (structure): the canonicalizer folds them into the gradient (l * a, and
the switch it pushes the product into), and as runtime scalars the step costs drifted from the old ones by
2.6e-5 relative within 64 steps, beyond the 1e-5 that issue 19 allows.
"""
from collections import OrderedDict

import numpy as np
import pytensor

if __package__:
    from . import _params
else:
    import _params

F = np.float32


def values(p):
    """name -> float32 value of every runtime hyper-parameter of the checked parameters p."""
    a = p.effective_adapt_params
    lr, lmbd = F(1.0 if p.adapt == 'adadelta' else p.learning_rate), F(p.lmbd)   # adadelta runs at lr 1
    adam = p.adapt in ('adam', 'adam_legacy')
    v = OrderedDict(lr=lr, mu=F(p.momentum), lmbd=lmbd, decay=F(1) - lr * lmbd,
                    rho=F(a[1] if adam else (a[0] if p.adapt in ('rmsprop', 'adadelta') else 0.0)),
                    b1=F(a[0] if adam else 0.0), bpreg=F(p.bpreg), logq=F(p.logq), smoothing=F(p.smoothing),
                    grad_cap=F(p.grad_cap), keep_embed=F(1 - p.dropout_p_embed), keep_hidden=F(1 - p.dropout_p_hidden),
                    batch=F(p.batch_size))
    v['inv_keep_embed'], v['inv_keep_hidden'] = F(1) / v['keep_embed'], F(1) / v['keep_hidden']
    for name, act, final in (('hidden_act', p.hidden_act, False), ('final_act', p.final_act, True)):
        kind, args = _params.activation_spec(act, final)
        if kind in RUNTIME_ACTIVATIONS:
            v[f'{name}_a'] = args[0]
    return v


RUNTIME_ACTIVATIONS = ('elu', 'leaky')   # whose parameter is a runtime scalar (selu's two are constants)


def structure(p):
    """The parameters with every runtime hyper-parameter replaced by whether it is zero (a keep probability: one),
    and n_sample by whether it is positive: equal for two parameter sets exactly when their training graphs with
    dynamic shapes are the same."""
    d = p.as_dict()
    for k in ('learning_rate', 'momentum', 'lmbd', 'adapt_params', 'bpreg', 'logq', 'smoothing', 'grad_cap',
              'n_epochs', 'seed', 'sample_alpha', 'sigma', 'init_as_normal', 'train_random_order', 'time_sort',
              'rng', 'session_key', 'item_key', 'time_key', 'dropout_p_embed', 'dropout_p_hidden', 'batch_size'):
        d.pop(k)
    d['n_sample'] = d['n_sample'] > 0   # the number itself is a dynamic shape
    for k, final in (('hidden_act', False), ('final_act', True)):
        if (kind := _params.activation_spec(d[k], final)[0]) in RUNTIME_ACTIVATIONS:
            d[k] = kind
    special = tuple((k, constant_value(k, x)) for k, x in values(p).items())
    return tuple((k, tuple(x) if isinstance(x, list) else x) for k, x in d.items()) + special


def constant_value(name, x):
    """The value the graph keeps as a constant (0; 1 for an activation's a and a keep probability), else None (a
    runtime scalar)."""
    return float(x) if x == 0 or (x == 1 and name.endswith(('_act_a', 'keep_embed', 'keep_hidden'))) else None


class Hyper:
    """The runtime hyper-parameters of one training graph: h['lr'] is a shared float32 scalar, or a constant
    where constant_value says so (see the module docstring). set(p) gives them p's values; p must have
    the same structure."""

    def __init__(self, p):
        self.const = {k: constant_value(k, x) for k, x in values(p).items()}
        self.vars = OrderedDict((k, pytensor.shared(x, name=k)) for k, x in values(p).items()
                                if self.const[k] is None)

    def __getitem__(self, name):
        return F(self.const[name]) if self.const[name] is not None else self.vars[name]

    def activation_args(self, name):
        """The runtime parameter of activation `name` ('hidden_act', 'final_act'), or None (its own numbers)."""
        return [self[f'{name}_a']] if f'{name}_a' in self.const else None

    def set(self, p):
        new = values(p)
        if {k: constant_value(k, x) for k, x in new.items()} != self.const:
            raise ValueError('the hyper-parameters differ in structure (which of them are constants)')
        for k, var in self.vars.items():
            var.set_value(new[k])
