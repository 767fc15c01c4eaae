"""GRU4Rec on PyTensor. Installed, the checkout's modules form this package; in a checkout they are used
directly (gru4rec is then the module gru4rec.py). Either way: from gru4rec import GRU4Rec, GRU4RecError, evaluate.

The names below are imported on first use (PEP 562), not with the package: the command line
(gru4rec.run, gru4rec.paropt) must apply its configuration (PyTensor flags, BLAS threads, device) before
numpy, PyTensor or JAX are imported, and importing the package for it would import them first."""
import importlib

_EXPORTS = {'GRU4Rec': 'gru4rec', 'GRU4RecError': 'gru4rec', 'GRU4RecWarning': 'gru4rec', 'evaluate': 'evaluation', 'evaluate_gpu': 'evaluation'}
__all__ = list(_EXPORTS)


def __getattr__(name):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f'.{_EXPORTS[name]}', __name__), name)
    raise AttributeError(f'module {__name__!r} has no attribute {name!r}')


def __dir__():
    return sorted(list(globals()) + __all__)
