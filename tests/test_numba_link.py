"""_numba_link: Numba libraries that are only linked into other compiled code are never optimised or emitted by
themselves, and what runs is the same as on Numba's eager path (checked bit for bit against it in fresh
processes, cold and from the disk cache either path wrote)."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

numba = pytest.importorskip('numba')

import _numba_link  # noqa: E402
import custom_opt  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LINK_ONLY = dict(no_cpython_wrapper=True, no_cfunc_wrapper=True)   # what PyTensor gives its inner functions


def setup_module():
    custom_opt.compile_mode('numba')   # installs it, as every Numba fit does


def test_installed_on_this_numba():
    assert os.environ.get('GRU4REC_NUMBA_EAGER') or _numba_link.install()


def test_nested_link_only_functions_are_emitted_only_inside_their_caller():
    @numba.njit(**LINK_ONLY)
    def inner(x, k):
        return np.sin(x) * k

    @numba.njit(**LINK_ONLY)
    def middle(x):
        s = 0.0
        for k in range(x.shape[0]):
            s += inner(x[k], k)
        return s

    @numba.njit
    def outer(x):
        return middle(x) + 1.0

    x = np.linspace(0, 1, 7)
    assert outer(x) == pytest.approx(1.0 + sum(np.sin(v) * k for k, v in enumerate(x)), rel=1e-12)
    if os.environ.get('GRU4REC_NUMBA_EAGER'):
        return
    assert _numba_link.is_emitted(outer.overloads[outer.signatures[0]].library)
    for f in (inner, middle):
        assert not _numba_link.is_emitted(f.overloads[f.signatures[0]].library)


def test_errors_raised_in_link_only_functions_reach_python():
    # a constant message and one built from runtime values (the latter goes through the function's Environment)
    @numba.njit(**LINK_ONLY)
    def check(i, n):
        if i < 0:
            raise IndexError('negative index')
        if i >= n:
            raise ValueError('index out of range:', i, n)
        return i

    @numba.njit
    def call(i, n):
        return check(i, n) * 2

    assert call(3, 5) == 6
    with pytest.raises(IndexError, match='negative index'):
        call(-1, 5)
    with pytest.raises(ValueError, match=r"index out of range:.*7.*5"):
        call(7, 5)


# a PyTensor graph with a scan (the nesting of the training step), element-wise fusion, a matrix product,
# a reduction and an Assert inside the scan
GRAPH = r'''
import json, sys
import numpy as np
import pytensor, pytensor.tensor as pt
from pytensor.raise_op import Assert
sys.path.insert(0, {repo!r})
import custom_opt, _numba_link
W = pt.matrix('W', dtype='float32'); X = pt.tensor3('X', dtype='float32'); h0 = pt.matrix('h0', dtype='float32')
def step(x, h):
    x = Assert('x must be finite')(x, pt.all(pt.isfinite(x)))
    h = pt.tanh(pt.dot(x, W) + 0.5 * h) * pt.sigmoid(x.sum(axis=1, keepdims=True))
    return h, pt.exp(h).sum()
(hs, s), _ = pytensor.scan(step, sequences=[X], outputs_info=[h0, None])
f = pytensor.function([W, X, h0], [hs[-1], s], mode=custom_opt.compile_mode('numba'))
rng = np.random.default_rng(0)
args = [rng.normal(size=s).astype('float32') for s in ((6, 6), (20, 5, 6), (5, 6))]
h, s = f(*args)
args[1][3, 2, 1] = np.nan
try:
    f(*args)
    error = None
except AssertionError as e:
    error = str(e)
print(json.dumps(dict(h=h.tolist(), s=s.tolist(), error=error,
                      lazy=bool(_numba_link.install()), code=sys.argv[1])))
'''


def run_graph(cache, eager):
    env = dict(os.environ, PYTENSOR_FLAGS=f'base_compiledir={cache}', GRU4REC_NUMBA_EAGER='1' if eager else '0')
    r = subprocess.run([sys.executable, '-c', GRAPH.format(repo=REPO), 'x'], capture_output=True, text=True,
                       env=env, cwd=REPO)
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out['lazy'] is not eager
    return out


@pytest.mark.slow
def test_same_results_as_numbas_eager_path_cold_and_from_either_cache(tmp_path):
    lazy = run_graph(tmp_path / 'lazy', eager=False)
    eager = run_graph(tmp_path / 'eager', eager=True)
    assert lazy['h'] == eager['h'] and lazy['s'] == eager['s']          # bit for bit (floats via JSON repr)
    assert lazy['error'] is not None and 'x must be finite' in lazy['error']
    assert lazy['error'] == eager['error']
    # the cache the lazy path wrote (link-only libraries as bitcode) loads in both kinds of process, and the
    # eager path's cache in a lazy process
    for cache, eager_flag in ((tmp_path / 'lazy', False), (tmp_path / 'lazy', True), (tmp_path / 'eager', False)):
        again = run_graph(cache, eager=eager_flag)
        assert again['h'] == eager['h'] and again['s'] == eager['s'] and again['error'] == eager['error']


def test_other_numba_features_still_work_in_the_process():
    # the change is process-wide once a Numba model is compiled: a user's own Numba code after it
    from numba import cfunc, objmode, prange, types, vectorize

    @numba.njit(parallel=True)
    def doubled_sum(a):
        s = 0.0
        for i in prange(a.shape[0]):
            s += a[i] * 2
        return s

    @vectorize(['float64(float64, float64)'])
    def axpy(x, y):
        return x + 2 * y

    @cfunc(types.float64(types.float64))
    def triple(x):
        return x * 3

    @numba.njit
    def via_python(x):
        with objmode(y='float64'):
            y = float(np.sum(x))
        return y

    @numba.njit
    def fib(n):
        return n if n < 2 else fib(n - 1) + fib(n - 2)

    assert doubled_sum(np.arange(1000.0)) == 999000.0
    assert axpy(np.ones(3), np.ones(3)).tolist() == [3.0, 3.0, 3.0]
    assert triple.ctypes(2.0) == 6.0
    assert via_python(np.ones(5)) == 5.0
    assert fib(15) == 610
