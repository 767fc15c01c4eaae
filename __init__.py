"""GRU4Rec on PyTensor. In a checkout the modules are used directly (import gru4rec); installed, they form
this package: from gru4rec import GRU4Rec, evaluate."""
from .gru4rec import GRU4Rec, GRU4RecError
from .evaluation import evaluate, evaluate_gpu

__all__ = ['GRU4Rec', 'GRU4RecError', 'evaluate', 'evaluate_gpu']
