"""Compile once per model structure (issue 19): continuous hyper-parameters are runtime inputs of the training
step, so fits that differ only in them reuse the compiled step of the process, and give the numbers a fresh
process gives."""
import json
import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

import _hyper
import _params
import _training
from gru4rec import GRU4Rec

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BASE = dict(layers=[8], n_epochs=2, batch_size=8, n_sample=16, loss='bpr-max', final_act='elu-0.5', momentum=0.2,
            lmbd=0.001, bpreg=1.5, dropout_p_hidden=0.2, backend='python', seed=3)


def clicks(n_sessions=60, n_items=30, seed=0):
    rng = np.random.RandomState(seed)
    rows = [(s, int(rng.zipf(1.5) % n_items), 10 * s + t) for s in range(n_sessions) for t in range(rng.randint(2, 7))]
    return pd.DataFrame(rows, columns=['SessionId', 'ItemId', 'Time'])


def fit(chunk=None, **kw):
    return GRU4Rec(**dict(BASE, **kw)).fit(clicks(), log_steps=True, chunk=chunk)


def fresh_process_costs(**kw):
    """The step costs of the same fit in a new Python process (nothing compiled or pooled before it)."""
    code = (f'import sys, json; sys.path.insert(0, {REPO!r}); sys.path.insert(0, {os.path.join(REPO, "tests")!r});'
            f'import test_compile_once as t; m = t.fit(**json.loads(sys.argv[1]));'
            f'print(json.dumps(m.step_costs_.tolist()))')
    out = subprocess.run([sys.executable, '-c', code, json.dumps(kw)], capture_output=True, text=True, check=True)
    return np.array(json.loads(out.stdout.strip().splitlines()[-1]))


def test_new_continuous_values_reuse_the_compiled_step_and_give_a_fresh_process_numbers():
    first = fit(learning_rate=0.05)
    w_first = first.get_weights()
    n = _training.compile_count()
    other = dict(learning_rate=0.2, momentum=0.4, lmbd=0.01, bpreg=0.7, final_act='elu-0.3', adapt_params=[])
    second = fit(**other)
    assert _training.compile_count() == n            # no new compile
    np.testing.assert_array_equal(second.step_costs_, fresh_process_costs(**other))
    for k, v in first.get_weights().items():         # the first model's weights are its own
        np.testing.assert_array_equal(v, w_first[k])
    assert not np.array_equal(second.step_costs_, first.step_costs_)


@pytest.mark.parametrize('chunk', [0, 4])
def test_batch_size_n_sample_and_dropout_reuse_the_compiled_step(chunk):
    # dynamic shapes (host-drawn negatives): a new minibatch width or number of negatives is the same graph;
    # chunk 4: the fixed-width scan of chunked training
    fit(learning_rate=0.05, dropout_p_embed=0.3, chunk=chunk)
    n = _training.compile_count()
    other = dict(batch_size=5, n_sample=9, dropout_p_hidden=0.4, dropout_p_embed=0.1, chunk=chunk)
    second = fit(**other)
    assert _training.compile_count() == n
    np.testing.assert_array_equal(second.step_costs_, fresh_process_costs(**other))


def test_a_new_structure_compiles_again():
    fit(learning_rate=0.05)
    n = _training.compile_count()
    fit(learning_rate=0.05, momentum=0.0)              # no velocity state: another graph
    assert _training.compile_count() == n + 1
    fit(learning_rate=0.07, momentum=0.0)
    assert _training.compile_count() == n + 1


@pytest.mark.parametrize('name, a, b, zero', [
    ('learning_rate', 0.1, 0.2, None), ('momentum', 0.1, 0.5, 0.0), ('lmbd', 0.01, 0.02, 0.0), ('bpreg', 0.5, 2.0, 0.0),
    ('logq', 0.5, 1.5, 0.0), ('smoothing', 0.1, 0.2, 0.0), ('grad_cap', 1.5, 2.0, 0.0),
    ('adapt_params', [0.9], [0.5], None), ('final_act', 'elu-0.5', 'elu-2', 'elu-0'),
    ('hidden_act', 'leaky-0.1', 'leaky-0.3', 'leaky-0'), ('dropout_p_hidden', 0.1, 0.3, 0.0),
    ('dropout_p_embed', 0.2, 0.5, 0.0), ('batch_size', 8, 50, None), ('n_sample', 16, 100, 0)])
def test_continuous_values_share_the_structure_and_zero_does_not(name, a, b, zero):
    def structure(value):
        kw = dict(BASE, adapt='rmsprop' if name == 'adapt_params' else 'adagrad', **{name: value})
        return _hyper.structure(_params.checked(GRU4Rec(**kw).get_params()))
    assert structure(a) == structure(b)
    if zero is not None:
        assert structure(zero) != structure(a)


def test_selu_parameters_stay_structure():
    # as runtime scalars they moved the step costs beyond 1e-5 (see _hyper's docstring)
    def structure(act):
        return _hyper.structure(_params.checked(GRU4Rec(**dict(BASE, hidden_act=act)).get_params()))
    assert structure('selu-1.05-1.7') != structure('selu-1.1-1.7')


def test_static_shapes_keep_width_and_n_sample_in_the_key():
    # JAX compiles static shapes, and in-graph sampling has a fixed number of draws
    assert _training.static_shapes(_training.FitOptions('jax', 100, 'gpu', 0, None, False, None))
    assert _training.static_shapes(_training.FitOptions('numba', 100, 'gpu', 0, None, False, None))
    assert not _training.static_shapes(_training.FitOptions('numba', 100, 'cpu', 0, None, False, None))
