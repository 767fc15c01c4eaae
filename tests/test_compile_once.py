"""Compile once per model structure (issue 19): continuous hyper-parameters are runtime inputs of the training
step, so fits that differ only in them reuse the compiled step of the process, and give the numbers a fresh
process gives."""
import contextlib
import io
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


def fit(chunk=None, store_type=None, data=None, **kw):
    return GRU4Rec(**dict(BASE, **kw)).fit(clicks(**(data or {})), log_steps=True, chunk=chunk, store_type=store_type)


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


@pytest.mark.parametrize('backend', ['python', 'jax'])
def test_in_graph_draws_reuse_the_step_for_a_new_width_and_n_sample(backend):
    # store_type='gpu': negatives and dropout noise drawn in the graph (as many as its shapes ask for); on JAX
    # PyTensor compiles once, and XLA each new shape (the function is the same)
    if backend == 'jax':
        pytest.importorskip('jax')
    kw = dict(backend=backend, chunk=4, store_type='gpu')
    fit(learning_rate=0.05, **kw)
    n = _training.compile_count()
    other = dict(batch_size=5, n_sample=9, dropout_p_hidden=0.4, **kw)
    with contextlib.redirect_stdout(io.StringIO()) as out:
        second = fit(**other)
    assert _training.compile_count() == n
    # on JAX the pause of XLA's compile is announced (PyTensor's graph is reused)
    assert ('new width (5 sessions, 9 negatives) with XLA' in out.getvalue()) == (backend == 'jax')
    assert 'Compiling the training step (' not in out.getvalue()
    np.testing.assert_array_equal(second.step_costs_, fresh_process_costs(**other))


def test_in_graph_draws_of_another_data_set_search_its_own_cdf():
    # the compiled step's sampler searches from a guide table of the CDF (gpu_ops.cdf_guide): a fit on other
    # data must bring its own (it once kept the first fit's, and drew from the wrong buckets)
    pytest.importorskip('jax')
    kw = dict(backend='jax', chunk=4, store_type='gpu', n_epochs=1)
    fit(**kw)
    other = dict(data=dict(n_sessions=80, n_items=300, seed=1), **kw)
    second = fit(**other)
    np.testing.assert_array_equal(second.step_costs_, fresh_process_costs(**other))


# A process that imports the checkout top level (as `python run.py` or a script in the checkout folder does), or
# the package gru4rec (an installed copy; here a folder on sys.path with a link named gru4rec to the checkout).
CHILD = r'''
import json, sys
mode, where, data_file = sys.argv[1:]
sys.path.insert(0, where)
import pandas as pd
from gru4rec import GRU4Rec
assert GRU4Rec.__module__ == {'top': 'gru4rec', 'package': 'gru4rec.gru4rec'}[mode], GRU4Rec.__module__
assert ('_row_update' in sys.modules) == (mode == 'top')
m = GRU4Rec(layers=[8], n_epochs=1, batch_size=8, n_sample=8, loss='cross-entropy', final_act='softmax',
            dropout_p_hidden=0.2, logq=1.0, backend='numba', seed=3)
m.fit(pd.read_csv(data_file), store_type='gpu', log_steps=True)   # in-graph draws and dropout: every custom Op
print(json.dumps({'costs': m.step_costs_.tolist(), 'weights': {k: v.tolist() for k, v in m.get_weights().items()}}))
'''


def package_view(tmp_path):
    """A folder holding a link named gru4rec to the checkout: on sys.path, the checkout is the package gru4rec."""
    view = tmp_path / 'view'
    view.mkdir()
    os.symlink(REPO, view / 'gru4rec')
    return view


KEYS = r'''
import json, sys
mode, where = sys.argv[1:]
sys.path.insert(0, where)
if mode == 'top':
    import gpu_ops
else:
    from gru4rec import gpu_ops
import pytensor.scalar as ps
from pytensor.link.numba.dispatch.basic import numba_funcify_and_cache_key
ops = [(gpu_ops.SparseRowUpdate('adagrad', 1e-6, True, False), None), (gpu_ops.SampleItems(3), None),
       (gpu_ops.HashUniforms(4, 1), None), (gpu_ops.RowMax(), None), (gpu_ops.MatMul32(), None),
       (gpu_ops.ColumnSum(), None)]
ops += [(op, op.make_node(ps.float32())) for op in (gpu_ops.exp_f32, gpu_ops.sigmoid_f32)]
print(json.dumps([numba_funcify_and_cache_key(op, node=node)[1] for op, node in ops]))
'''


def test_the_checkout_and_the_package_give_the_same_numba_cache_keys(tmp_path):
    """PyTensor's disk-cache keys of the custom Ops' Numba code (with their code's salt) do not depend on the import
    name."""
    pytest.importorskip('numba')
    view = package_view(tmp_path)
    env = {k: v for k, v in os.environ.items() if k != 'PYTHONPATH'}
    keys = [subprocess.run([sys.executable, '-c', KEYS, mode, str(where)], capture_output=True, text=True,
                           env=env, cwd=tmp_path, check=True).stdout.strip().splitlines()[-1]
            for mode, where in (('top', REPO), ('package', view))]
    assert keys[0] == keys[1]


def numba_cache_files(cache):
    folder = os.path.join(cache, 'numba')
    return {f: (os.stat(os.path.join(folder, f)).st_size, os.stat(os.path.join(folder, f)).st_mtime_ns)
            for f in os.listdir(folder)}


@pytest.mark.slow
def test_the_checkout_and_the_package_share_the_numba_cache(tmp_path):
    """The same code gives the same disk-cache entries whether its modules were imported top level (_row_update)
    or as the package (gru4rec._row_update): a process of one kind loads what the other compiled, and trains
    the same numbers. Before, the custom Ops' keys named the import name, and so did the entries (Numba
    pickles the kernels' Environments by module name), so a checkout and an installed copy each compiled
    everything (~60 s cold)."""
    pytest.importorskip('numba')
    view = package_view(tmp_path)
    data_file = tmp_path / 'clicks.csv'
    clicks(n_sessions=40).to_csv(data_file, index=False)
    cache = tmp_path / 'cache'
    env = {k: v for k, v in os.environ.items() if k not in ('PYTHONPATH', 'PYTENSOR_FLAGS')}
    env.update(PYTENSOR_FLAGS=f'base_compiledir={cache}', NUMBA_NUM_THREADS='1', OMP_NUM_THREADS='1',
               OPENBLAS_NUM_THREADS='1')

    def run(mode, where):
        r = subprocess.run([sys.executable, '-c', CHILD, mode, str(where), str(data_file)], capture_output=True,
                           text=True, env=env, cwd=tmp_path)
        assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
        return json.loads(r.stdout.strip().splitlines()[-1])

    top = run('top', REPO)
    compiled = numba_cache_files(cache)
    assert compiled                                   # the first process stored its Numba code
    package = run('package', view)
    assert numba_cache_files(cache) == compiled       # the second compiled (and stored) nothing
    assert package == top
