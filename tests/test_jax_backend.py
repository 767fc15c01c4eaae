"""The JAX backend on the CPU: a trained model evaluates and predicts as on Numba (training on JAX: see
test_chunked.py)."""
import numpy as np
import pytest

import evaluation
from gru4rec import GRU4Rec, GRU4RecError
from test_model import generated_sessions, assert_chunked_evaluation_equals_per_step

jax = pytest.importorskip('jax')


@pytest.fixture(scope='module')
def model_file(tmp_path_factory):
    path = tmp_path_factory.mktemp('jax') / 'model.gru4rec'
    m = GRU4Rec(loss='bpr-max', final_act='elu-0.5', layers=[12], batch_size=8, n_sample=10, n_epochs=2,
                momentum=0.2, constrained_embedding=True, backend='python')
    m.fit(generated_sessions(n_sessions=120))
    m.savemodel(str(path))
    return str(path)


@pytest.mark.parametrize('mode', ['standard', 'conservative', 'median'])
def test_jax_evaluation_equals_numba(model_file, mode):
    test = generated_sessions(n_sessions=40, seed=3)
    results = {}
    for backend in ('numba', 'jax'):
        m = GRU4Rec.loadmodel(model_file, backend=backend)
        results[backend] = evaluation.evaluate_gpu(m, test, cut_off=[1, 5, 10], mode=mode)
    np.testing.assert_allclose(np.array(results['jax']), np.array(results['numba']), rtol=0, atol=1e-4)
    assert 0 < results['jax'][0][2] < 1


def test_jax_evaluation_against_candidates_equals_numba(model_file):
    """items=... (run.py --test_against_items): JAX slices the candidate columns with static shapes (it used
    to fail to trace the dynamic slice)."""
    test = generated_sessions(n_sessions=40, seed=3)
    results = {}
    for backend in ('numba', 'jax'):
        m = GRU4Rec.loadmodel(model_file, backend=backend)
        # each backend's default: per minibatch on Numba, chunked on JAX (test_chunked_evaluation_equals_per_step
        # compares the two loops on each backend)
        results[backend] = evaluation.evaluate_gpu(m, test, items=[0, 2, 3, 5, 8, 13], cut_off=[1, 3])
    np.testing.assert_allclose(np.array(results['jax']), np.array(results['numba']), rtol=0, atol=1e-4)


@pytest.mark.parametrize('backend', ['numba', 'jax'])
def test_chunked_evaluation_equals_per_step(model_file, backend):
    assert_chunked_evaluation_equals_per_step(GRU4Rec.loadmodel(model_file, backend=backend))


def test_jax_prediction_equals_numba(model_file):
    scores = {}
    for backend in ('numba', 'jax'):
        m = GRU4Rec.loadmodel(model_file, backend=backend)
        scores[backend] = [m.predict_next_batch(np.array([1, 2]), np.array([i, j]), batch=2).values
                           for i, j in ((0, 1), (2, 3))]
    for a, b in zip(scores['numba'], scores['jax']):
        np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-6)


def test_jax_mode_donates_updated_buffers_and_keeps_constants_on_device():
    """custom_opt's JAX linker: the old buffer of an updated shared variable is handed to the call (deleted
    afterwards), results equal PyTensor's own JAX mode call after call, and a new value of a read-only
    shared variable is used on the next call (not a stale device copy)."""
    import pytensor
    import pytensor.tensor as pt
    import custom_opt

    def build(mode):
        W = pytensor.shared(np.arange(12, dtype=np.float32).reshape(4, 3), name='W')
        C = pytensor.shared(np.linspace(0, 1, 4, dtype=np.float32), name='C')
        x = pt.fvector('x')
        f = pytensor.function([x], (W.sum(1) * C + x).sum(), updates=[(W, W * 0.5 + x[:, None])], mode=mode)
        return f, W, C

    ours, W, C = build(custom_opt.compile_mode('jax'))
    plain, W0, C0 = build('JAX')
    x = np.array([1, -2, 3, 0.5], dtype=np.float32)
    for call in range(4):
        if call == 2:
            C.set_value(np.full(4, 2, np.float32)), C0.set_value(np.full(4, 2, np.float32))
        before = W.get_value(borrow=True)
        np.testing.assert_allclose(ours(x), plain(x), rtol=1e-6)
        np.testing.assert_allclose(W.get_value(), W0.get_value(), rtol=1e-6)
        if call > 0:   # from the second call on the stored value is a device array: donated
            assert before.is_deleted()


def test_device_parameter():
    """device= picks the backend (a GPU means JAX), is checked by set_params and at the start of fit (the
    constructor stores it as given), is not saved with the model, and a GPU that JAX does not see is one
    clear error at fit that leaves the model untouched."""
    for bad, message in (({'device': 'tpu'}, 'Invalid value for parameter device: unknown device "tpu"'),
                         ({'device': 'cuda:0', 'backend': 'numba'}, 'needs backend jax')):
        with pytest.raises(GRU4RecError, match=message):
            GRU4Rec().set_params(**bad)
        with pytest.raises(GRU4RecError, match=message):
            GRU4Rec(**bad).fit(generated_sessions())
    assert GRU4Rec().set_params(device='CUDA1').get_params()['device'] == 'cuda1'
    m = GRU4Rec(device='CUDA1')
    assert m.get_params()['device'] == 'CUDA1' and m.effective_backend == 'jax'
    assert GRU4Rec(device='cpu').effective_backend == 'numba'
    if any(d.platform == 'gpu' for d in jax.devices()):
        pytest.skip('this machine has a GPU')
    with pytest.raises(GRU4RecError, match=r'JAX sees no GPU .*pip install "jax\[cuda12\]"'):
        m.fit(generated_sessions())
    assert not hasattr(m, 'weights')


def test_model_files_do_not_carry_the_device(model_file, tmp_path):
    m = GRU4Rec.loadmodel(model_file, backend='jax', device='cpu')
    assert m.device == 'cpu'
    m.savemodel(str(tmp_path / 'again.gru4rec'))
    assert GRU4Rec.loadmodel(str(tmp_path / 'again.gru4rec')).device is None


def test_training_runs_on_the_chosen_device(tmp_path):
    """With two (virtual) CPU devices, device='cpu:1' trains there (the trained item matrices live on
    device 1 before fit hands them back) and gives the weights of training on device 0."""
    import os
    import subprocess
    import sys
    tests = os.path.dirname(os.path.abspath(__file__))
    script = f'''
import sys
sys.path[:0] = [{tests!r}, {os.path.dirname(tests)!r}]
import numpy as np
from test_model import generated_sessions
from gru4rec import GRU4Rec
import _training
seen = []
unpad = _training.TrainingRun.pad_items
def spy(self, pad):
    value = self.item_vars[0].get_value(borrow=True)
    if not pad and hasattr(value, 'devices'):
        seen.append(next(iter(value.devices())).id)
    return unpad(self, pad)
_training.TrainingRun.pad_items = spy
params = dict(layers=[6], batch_size=4, n_sample=5, n_epochs=2, backend='jax')
one = GRU4Rec(device='cpu:1', **params).fit(generated_sessions())
zero = GRU4Rec(**params).fit(generated_sessions())
assert seen == [1, 0], seen
for k, v in one.get_weights().items():
    np.testing.assert_array_equal(v, zero.get_weights()[k], err_msg=k)
one.predict_next_batch([1], [one.itemidmap.index[0]], batch=1)
print('OK')
'''
    env = dict(os.environ, XLA_FLAGS='--xla_force_host_platform_device_count=2', JAX_PLATFORMS='cpu')
    r = subprocess.run([sys.executable, '-c', script], capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0 and r.stdout.strip().endswith('OK'), r.stderr[-3000:]


def test_jax_checkpoint_resume_gives_the_uninterrupted_model(tmp_path, capsys):
    """Chunked JAX training (donated buffers, padding row, in-graph negatives and dropout) stopped after its
    first epoch's checkpoint and resumed ends with the uninterrupted run's weights, bit for bit on the CPU."""
    params = dict(layers=[6], batch_size=4, n_sample=5, n_epochs=2, loss='bpr-max', final_act='elu-0.5',
                  momentum=0.2, dropout_p_hidden=0.2, backend='jax')
    data = generated_sessions(n_sessions=60)
    full = GRU4Rec(**params).fit(data, chunk=7)
    GRU4Rec(**params).fit(data, chunk=7, checkpoint_dir=str(tmp_path), epoch_callback=lambda m, s: True)
    capsys.readouterr()
    resumed = GRU4Rec(**params).fit(data, chunk=7, checkpoint_dir=str(tmp_path), resume=True)
    out = capsys.readouterr().out
    assert 'after epoch 1' in out and 'Epoch1 -->' not in out and 'Epoch2 -->' in out   # only epoch 2 trained
    assert [e['loss'] for e in resumed.epoch_stats_] == [e['loss'] for e in full.epoch_stats_]
    for k, v in full.get_weights().items():
        np.testing.assert_array_equal(resumed.get_weights()[k], v, err_msg=k)


def test_chunked_training_and_evaluation_compile_to_one_loop_each(tmp_path):
    """On a GPU each iteration of an XLA loop is its own kernel launches, so a compiled call must be the one
    loop over its steps with nothing nested in it (the in-graph negative sampler searches from a guide table
    in a few unrolled steps, not a log2(N)-step loop). Counts the while loops in XLA's optimised HLO of a
    small chunked fit with in-graph sampling and dropout, and of a chunked evaluation (in a subprocess: XLA
    reads XLA_FLAGS when JAX starts)."""
    import os
    import re
    import subprocess
    import sys
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    code = (
        'import sys; sys.path[:0] = [sys.argv[1], sys.argv[1] + "/tests"]\n'
        'import evaluation\n'
        'from gru4rec import GRU4Rec\n'
        'from test_model import generated_sessions\n'
        'm = GRU4Rec(layers=[8], batch_size=8, n_sample=300, n_epochs=1, momentum=0.2, logq=1.0, dropout_p_hidden=0.2,\n'
        '            backend="jax").fit(generated_sessions(n_sessions=150), chunk=20, store_type="gpu")\n'
        'evaluation.evaluate_gpu(m, generated_sessions(n_sessions=30, seed=3), chunk=10)\n')
    env = dict(os.environ, XLA_FLAGS=f'--xla_dump_to={tmp_path} --xla_dump_hlo_as_text')
    r = subprocess.run([sys.executable, '-c', code, root], env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    loops = [len(re.findall(r'\swhile\(%', f.read_text()))   # instructions `[ROOT] %name = (...) while(%operand)`
             for f in tmp_path.glob('*after_optimizations.txt')]
    assert max(loops) == 1 and loops.count(1) >= 2     # training and evaluation, each a single loop
