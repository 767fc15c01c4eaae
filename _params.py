"""The parameters of GRU4Rec: names and defaults, conversion of the values a parameter string or file gives
(text, as the original's set_params takes them), and the checks that name the first bad value.

GRU4Rec stores its parameters as given (scikit-learn's convention); fit, set_params, savemodel and
prediction read them through checked(), which converts and checks all of them together and returns a
read-only Params. GRU4RecError is the package's one error type for bad input.
"""
import math
from collections import OrderedDict

import numpy as np

if __package__:
    from . import _devices
else:
    import _devices


class GRU4RecError(ValueError):
    """Invalid input or parameter; the message says what is wrong in one line."""


class GRU4RecWarning(UserWarning):
    """A valid but doubtful setting; the command line prints it as one 'WARNING!' line."""


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
# Activations by name: those without arguments, and the number of '-'-separated arguments of the others
SIMPLE_ACTIVATIONS = ('linear', 'relu', 'tanh')
FINAL_ONLY_ACTIVATIONS = ('softmax', 'softmax_logit')
ACTIVATION_ARITY = {'leaky': 1, 'elu': 1, 'selu': 2}


class Params:
    """A checked set of parameter values (attributes named as in DEFAULTS, read-only) and what they imply."""

    def __init__(self, values):
        self.__dict__.update(values)

    def __setattr__(self, name, value):
        raise AttributeError('checked parameters are read-only; change the model with set_params')

    def as_dict(self):
        """The values in DEFAULTS' order (lists copied), as get_params gives them after set_params."""
        return OrderedDict((k, list(v) if isinstance(v := self.__dict__[k], list) else v) for k in DEFAULTS)

    @property
    def embedding_mode(self):
        """'shared' (the output item matrix is the input embedding), 'separate' (an own embedding) or 'onehot'."""
        return 'shared' if self.constrained_embedding else ('separate' if self.embedding else 'onehot')

    @property
    def embedding_width(self):
        """Width of the input embedding rows (not used in one-hot mode)."""
        return self.layers[-1] if self.embedding_mode == 'shared' else self.embedding

    @property
    def effective_adapt_params(self):
        """adapt_params with the per-optimiser defaults filled in."""
        return list(self.adapt_params) or list(DEFAULT_ADAPT_PARAMS.get(self.adapt, []))

    @property
    def backend_in_use(self):
        """The backend parameter, or the device's default backend (ValueError if it cannot run here)."""
        return _devices.backend_in_use(self.backend, self.device)


def checked(values):
    """Params of a dict of parameter values as given to GRU4Rec: each converted (coerce), embedding='layersize'
    resolved to layers[0], then all checked together (validate). Raises GRU4RecError naming the first bad one."""
    p = OrderedDict((name, coerce(name, values[name])) for name in DEFAULTS)
    if p['embedding'] == 'layersize':
        p['embedding'] = p['layers'][0]
    validate(p)
    return Params(p)


def coerce(name, value):
    """One parameter value converted like the original's set_params: strings to the type of the parameter's
    default value; lists '/'-separated. Raises GRU4RecError."""
    kind = type(DEFAULTS[name])
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
            return to_int(value)
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
            return to_int(value)
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


def to_int(value):
    """An integer from an int, an integral float or its text; ValueError otherwise (bools are not integers here)."""
    if isinstance(value, bool):
        raise ValueError
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        if float(value).is_integer():
            return int(value)
        raise ValueError
    return int(str(value).strip())


def to_int_arg(value, name):
    """A non-negative integer argument of fit or evaluation (chunk, sample_store); GRU4RecError otherwise."""
    try:
        v = to_int(value)
    except (TypeError, ValueError):
        raise GRU4RecError(f'{name} must be an integer, got {value!r}') from None
    if v < 0:
        raise GRU4RecError(f'{name} must be >= 0, got {v}')
    return v


def activation_spec(name, final):
    """(kind, float32 arguments) of an activation name: linear, relu, tanh, leaky-X, elu-X, selu-X-Y and, as
    final activations only, softmax and softmax_logit. Raises GRU4RecError. (_graph builds the function.)"""
    parts = str(name).split('-')
    try:
        args = [np.float32(float(v)) for v in parts[1:]]
    except ValueError:
        args = None
    simple = SIMPLE_ACTIVATIONS + (FINAL_ONLY_ACTIVATIONS if final else ())
    if len(parts) == 1 and parts[0] in simple:
        return parts[0], []
    if args is not None and ACTIVATION_ARITY.get(parts[0]) == len(args):
        return parts[0], args
    names = 'linear, relu, tanh, leaky-X, elu-X, selu-X-Y' + (', softmax, softmax_logit' if final else '')
    raise GRU4RecError(f'Invalid value for parameter {"final_act" if final else "hidden_act"}: {name!r} '
                       f'(use one of: {names})')


def validate(p):
    """Check a full dict of converted parameter values; raise GRU4RecError naming the first bad parameter."""
    def bad(name, why):
        raise GRU4RecError(f'Invalid value for parameter {name}: {p[name]!r} ({why})')
    if p['loss'] not in LOSSES:
        bad('loss', 'use one of: ' + ', '.join(LOSSES))
    activation_spec(p['final_act'], final=True)
    activation_spec(p['hidden_act'], final=False)
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
    validate_placement(p)


def validate_placement(p):
    """Check the runtime choices, backend and device (GRU4RecError)."""
    if p['backend'] is not None:
        try:
            _devices.check_backend(p['backend'])
        except ValueError as e:
            raise GRU4RecError(f'Invalid value for parameter backend: {e}') from None
    try:
        kind, _ = _devices.parse_device(p['device'])
    except ValueError as e:
        raise GRU4RecError(f'Invalid value for parameter device: {e}') from None
    if kind != 'cpu' and p['backend'] not in (None, 'jax'):
        raise GRU4RecError(f'Invalid value for parameter device: {p["device"]!r} '
                           f'({p["device"]} needs backend jax (backend {p["backend"]} runs on the CPU))')
