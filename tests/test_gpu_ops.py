"""gpu_ops.SparseRowUpdate: the fused optimiser step of item-indexed weights against its plain-PyTensor
definition, on every optimiser, with and without momentum and L2, with repeated items; the Numba kernel
and the JAX implementation against the numpy reference; the custom_opt rewrites."""
import itertools

import numpy as np
import pytensor
import pytensor.tensor as pt
import pytest
from pytensor.compile.mode import get_mode

import _ops_support
import _row_update
import custom_opt
import gpu_ops

ADAPTS = [None, 'adagrad', 'rmsprop', 'adadelta', 'adam', 'adam_legacy']
N, D = 9, 4
IDX = np.array([3, 1, 3, 7, 0, 3, 8, 1], dtype=np.int32)   # rows 3 and 1 repeat; 2, 4, 5, 6 untouched


def spec_for(adapt, mu, lmbd):
    rho = {'rmsprop': 0.9, 'adadelta': 0.95, 'adam': 0.999, 'adam_legacy': 0.999}.get(adapt, 0.0)
    b1 = 0.9 if adapt in ('adam', 'adam_legacy') else 0.0
    lr = 1.0 if adapt == 'adadelta' else 0.1
    return gpu_ops.RowUpdateSpec(adapt, lr, mu, lmbd, 1e-6, rho, b1)


def start_arrays(spec, seed=0):
    rng = np.random.default_rng(seed)
    n = 1 + gpu_ops.n_inputs_states(spec)
    arrays = [rng.normal(size=(N, D)).astype(np.float32)]
    arrays += [rng.uniform(0.1, 1.0, size=(N, D)).astype(np.float32) for _ in range(n - 1)]  # non-zero states
    return arrays


def gradients(steps, seed=1):
    rng = np.random.default_rng(seed)
    return [rng.normal(size=(len(IDX), D)).astype(np.float32) for _ in range(steps)]


def compiled_step(spec, arrays, mode):
    shared = [pytensor.shared(a.copy()) for a in arrays]
    idx, g = pt.ivector('idx'), pt.fmatrix('g')
    new = gpu_ops.sparse_row_update(spec, shared[0], shared[1:], idx, g)
    fn = pytensor.function([idx, g], [], updates=list(zip(shared, new)), mode=mode)
    return fn, shared


CASES = list(itertools.product(ADAPTS, [0.0, 0.5], [0.0, 0.01]))


@pytest.mark.parametrize('adapt, mu, lmbd', CASES)
def test_fused_op_equals_plain_graph(adapt, mu, lmbd):
    """Python backend: the plain graph (the definition) vs the fused Op's numpy perform, 3 steps."""
    spec = spec_for(adapt, mu, lmbd)
    arrays = start_arrays(spec)
    plain, plain_vars = compiled_step(spec, arrays, custom_opt.compile_mode('python'))
    fused, fused_vars = compiled_step(spec, arrays, get_mode('FAST_COMPILE').including(custom_opt.FUSED_TAG))
    assert any(isinstance(n.op, gpu_ops.SparseRowUpdate) for n in fused.maker.fgraph.apply_nodes)
    assert not any(isinstance(n.op, (gpu_ops.SparseRowUpdate, gpu_ops.SparseRowUpdateGraph))
                   for n in plain.maker.fgraph.apply_nodes)
    for g in gradients(3):
        plain(IDX, g)
        fused(IDX, g)
    for a, b, start in zip(plain_vars, fused_vars, arrays):
        np.testing.assert_allclose(b.get_value(), a.get_value(), rtol=2e-5, atol=1e-6)
    untouched = [2, 4, 5, 6]
    for var, start in zip(fused_vars, arrays):
        np.testing.assert_array_equal(var.get_value()[untouched], start[untouched])


def test_repeated_rows_follow_the_original_semantics_by_hand():
    """Adagrad + momentum, one row twice: the weight gets both steps, the accumulator both squared gradients
    (what the original runs: its source sets A[idx] = A[idx] + g**2, Theano executes an increment), the
    velocity the last occurrence."""
    spec = gpu_ops.RowUpdateSpec('adagrad', 0.5, 0.5, 0.0, 0.0, 0.0, 0.0)
    p, acc, vel = (np.full((2, 1), v, np.float32) for v in (1.0, 3.0, 0.2))
    idx, g = np.array([0, 0], np.int32), np.array([[1.0], [3.0]], np.float32)
    gpu_ops.numpy_row_update(spec, [p, acc, vel], idx, g)
    # occurrence 1: scaled by 3+1=4, step .5*1/2=.25, v .1-.25=-.15 ; occurrence 2: by 3+9=12, step .5*3/sqrt(12)
    v2 = 0.1 - 0.5 * 3 / np.sqrt(12)
    np.testing.assert_allclose([p[0, 0], acc[0, 0], vel[0, 0]], [1 - 0.15 + v2, 3 + 1 + 9, v2], rtol=1e-6)
    np.testing.assert_array_equal([p[1, 0], acc[1, 0], vel[1, 0]], np.float32([1.0, 3.0, 0.2]))


def test_adagrad_and_legacy_adam_count_every_occurrence_by_hand():
    """Numbers worked by hand (eps = 0): Adagrad, a row three times with g = 3, 4, 12 from A = 0: each step is
    scaled by its own A_old + g**2 (to 1, 1, 1), A ends at 9 + 16 + 144 = 169 (the last occurrence alone
    would leave 144). Legacy Adam: the step count of a row seen three times goes from 2 to 5."""
    spec = gpu_ops.RowUpdateSpec('adagrad', 0.5, 0.0, 0.0, 0.0, 0.0, 0.0)
    p, acc = np.full((1, 1), 2.0, np.float32), np.zeros((1, 1), np.float32)
    gpu_ops.numpy_row_update(spec, [p, acc], np.zeros(3, np.int32), np.float32([[3], [4], [12]]))
    assert (p[0, 0], acc[0, 0]) == (2.0 - 0.5 * 3, 169.0)
    spec = gpu_ops.RowUpdateSpec('adam_legacy', 0.1, 0.0, 0.0, 1e-6, 0.999, 0.9)
    p, v, m, t = (np.full((1, 2), x, np.float32) for x in (1.0, 0.5, 0.5, 2.0))
    gpu_ops.numpy_row_update(spec, [p, v, m, t], np.zeros(3, np.int32), np.ones((3, 2), np.float32))
    np.testing.assert_array_equal(t, 5.0)


def hand_rule(adapt, mu, lmbd, p, states, g, lr, eps=1e-6, rho=None, b1=0.9):
    """The contract's sparse update for ONE row that occurs len(g) times in a step, written occurrence by
    occurrence in float64 scalars: returns (new p, new states). states as gpu_ops orders them (adapt
    states, then the velocity)."""
    n, st = len(g), list(states)
    if adapt == 'adam':                 # this project's textbook Adam: one step with the summed gradient
        g, n = [sum(g)], 1
    if adapt == 'adagrad':
        ghat = [gk / np.sqrt(st[0] + gk ** 2 + eps) for gk in g]
        st[0] = st[0] + sum(gk ** 2 for gk in g)
    elif adapt == 'rmsprop':
        st[0] = rho * st[0] + (1 - rho) * sum(gk ** 2 for gk in g)
        ghat = [gk / np.sqrt(st[0] + eps) for gk in g]
    elif adapt == 'adadelta':
        st[0] = rho * st[0] + (1 - rho) * sum(gk ** 2 for gk in g)
        c = [(st[1] + eps) / (st[0] + eps)] * n
        st[1] = rho * st[1] + (1 - rho) * sum(ck * gk ** 2 for ck, gk in zip(c, g))
        ghat = [gk * np.sqrt(ck) for ck, gk in zip(c, g)]
    elif adapt == 'adam_legacy':
        st[0] = rho * st[0] + (1 - rho) * sum(gk ** 2 for gk in g)
        st[1] = b1 * st[1] + (1 - b1) * sum(gk ** 2 for gk in g)      # the original's squared first moment
        corr = 1 - b1 ** (st[2] + 1)
        st[2] = st[2] + n
        ghat = [(st[1] / corr) / (np.sqrt(st[0] / corr) + eps)] * n
    elif adapt == 'adam':
        t = st[2] + 1
        st[0] = rho * st[0] + (1 - rho) * g[0] ** 2
        st[1] = b1 * st[1] + (1 - b1) * g[0]
        st[2] = t
        ghat = [(st[1] / (1 - b1 ** t)) / (np.sqrt(st[0] / (1 - rho ** t)) + eps)]
    else:
        ghat = list(g)
    delta = [lr * (gh + lmbd * p) for gh in ghat]
    if mu > 0:
        v_occ = [mu * st[-1] - d for d in delta]
        st[-1] = v_occ[-1]
        return p + sum(v_occ), st
    return p - sum(delta), st


def hand_step(spec, arrays, idx, g):
    """hand_rule applied to every (row, column) of arrays = [p, *states]; returns new float64 arrays."""
    out = [a.astype(np.float64) for a in arrays]
    for r in np.unique(idx):
        occ = np.flatnonzero(idx == r)
        for k in range(arrays[0].shape[1]):
            p, st = hand_rule(spec.adapt, spec.mu, spec.lmbd, float(arrays[0][r, k]),
                              [float(a[r, k]) for a in arrays[1:]], [float(x) for x in g[occ, k]],
                              spec.lr, spec.eps, spec.rho, spec.b1)
            for a, v in zip(out, [p] + st):
                a[r, k] = v
    return out


HEAVY_IDX = np.array([2, 2, 5, 2, 0, 5, 2, 2], dtype=np.int32)   # row 2 five times, row 5 twice


@pytest.mark.parametrize('adapt, mu, lmbd', list(itertools.product(ADAPTS, [0.0, 0.5], [0.0, 0.01])))
def test_heavily_repeated_rows_follow_the_hand_rule(adapt, mu, lmbd):
    """Every optimiser, with and without momentum and L2: the numpy perform and the plain graph against the
    contract's rule written out occurrence by occurrence, one step from non-zero states."""
    spec = spec_for(adapt, mu, lmbd)
    arrays = start_arrays(spec)
    if adapt in ('adam', 'adam_legacy'):
        arrays[3] = np.float32(np.arange(N * D).reshape(N, D) % 4)   # step counts 0..3
    g = np.random.default_rng(5).normal(size=(len(HEAVY_IDX), D)).astype(np.float32)
    want = hand_step(spec, arrays, HEAVY_IDX, g)
    got = [a.copy() for a in arrays]
    gpu_ops.numpy_row_update(spec, got, HEAVY_IDX, g)
    plain, plain_vars = compiled_step(spec, arrays, custom_opt.compile_mode('python'))
    plain(HEAVY_IDX, g)
    for w, a, b in zip(want, got, plain_vars):
        np.testing.assert_allclose(a, w, rtol=2e-5, atol=1e-6)
        np.testing.assert_allclose(b.get_value(), w, rtol=2e-5, atol=1e-6)


NUMBA_CASES = [(a, 0.5, 0.01) for a in ADAPTS] + [(None, 0.0, 0.0), ('adagrad', 0.0, 0.0), ('rmsprop', 0.0, 0.0)]


@pytest.mark.parametrize('adapt, mu, lmbd', NUMBA_CASES)
def test_numba_kernel_equals_numpy_reference(adapt, mu, lmbd):
    """The fused, in-place Op compiled by PyTensor's Numba backend vs numpy_row_update, 3 steps."""
    pytest.importorskip('numba')
    spec = spec_for(adapt, mu, lmbd)
    ref = start_arrays(spec)
    fn, shared = compiled_step(spec, ref, custom_opt.compile_mode('numba', fused=True))
    assert [n.op.inplace for n in fn.maker.fgraph.apply_nodes if isinstance(n.op, gpu_ops.SparseRowUpdate)] == [True]
    for g, idx in zip(gradients(4), [IDX, HEAVY_IDX, IDX, HEAVY_IDX]):
        gpu_ops.numpy_row_update(spec, ref, idx, g)
        fn(idx, g)
    for a, b in zip(ref, shared):
        np.testing.assert_allclose(b.get_value(), a, rtol=2e-5, atol=1e-6)


def test_numba_kernel_rejects_out_of_range_rows():
    pytest.importorskip('numba')
    spec = spec_for('adagrad', 0.0, 0.0)
    fn, _ = compiled_step(spec, start_arrays(spec), custom_opt.compile_mode('numba', fused=True))
    with pytest.raises(IndexError):
        fn(np.array([0, N], np.int32), np.ones((2, D), np.float32))


@pytest.mark.parametrize('occurrences', ['scratch', 'sort'])
@pytest.mark.parametrize('adapt, mu, lmbd', [c for c in CASES if c[2] == 0.0] + [('adagrad', 0.5, 0.01)])
def test_jax_implementation_equals_numpy_reference(adapt, mu, lmbd, occurrences, monkeypatch):
    """Both ways of finding repeated rows (a scratch vector over the rows, or a sort of the indices)."""
    jax = pytest.importorskip('jax')
    jax.config.update('jax_enable_x64', False)
    monkeypatch.setattr(_row_update, 'JAX_SCRATCH_ROWS_PER_INDEX', 10 ** 6 if occurrences == 'scratch' else 0)
    spec = spec_for(adapt, mu, lmbd)
    ref, got = start_arrays(spec), [jax.numpy.asarray(a) for a in start_arrays(spec)]
    op = gpu_ops.SparseRowUpdate(adapt, spec.eps, mu > 0, lmbd > 0)
    fn = jax.jit(_row_update.jax_sparse_row_update(op))
    scalars = [np.float32(getattr(spec, k)) for k in _row_update.SCALARS]   # runtime inputs of the Op
    for g, idx in zip(gradients(4), [IDX, HEAVY_IDX, IDX, HEAVY_IDX]):
        gpu_ops.numpy_row_update(spec, ref, idx, g)
        out = fn(*got, idx, g, *scalars)
        got = list(out) if isinstance(out, tuple) else [out]
    for a, b in zip(ref, got):
        np.testing.assert_allclose(np.asarray(b), a, rtol=2e-5, atol=1e-6)


def test_numba_mode_fuses_in_place_and_plain_mode_does_not():
    pytest.importorskip('numba')
    spec = spec_for('adagrad', 0.5, 0.0)
    arrays = start_arrays(spec)
    fused, fused_vars = compiled_step(spec, arrays, custom_opt.compile_mode('numba', fused=True))
    plain, plain_vars = compiled_step(spec, arrays, custom_opt.compile_mode('numba', fused=False))
    ops = [n.op for n in fused.maker.fgraph.apply_nodes]
    assert len(ops) == 1 and isinstance(ops[0], gpu_ops.SparseRowUpdate) and ops[0].inplace
    assert not any(isinstance(n.op, (gpu_ops.SparseRowUpdate, gpu_ops.SparseRowUpdateGraph))
                   for n in plain.maker.fgraph.apply_nodes)
    for g in gradients(4):
        fused(IDX, g)
        plain(IDX, g)
    for a, b in zip(plain_vars, fused_vars):
        np.testing.assert_allclose(b.get_value(), a.get_value(), rtol=2e-5, atol=1e-6)


def test_wrong_number_of_states_is_refused():
    spec = spec_for('adadelta', 0.5, 0.0)   # needs 2 adadelta states + velocity
    p = pytensor.shared(np.zeros((3, 2), np.float32))
    with pytest.raises(ValueError, match='takes 3 state'):
        gpu_ops.sparse_row_update(spec, p, [p, p], pt.ivector(), pt.fmatrix())


@pytest.mark.slow
def test_training_with_fused_updates_equals_plain(monkeypatch):
    """A real fit on Numba (Adagrad + momentum, shared embedding, repeated items in every minibatch): the
    same epoch losses and weights with the fused Ops (update, and on Numba the fast exp and row max) as with
    the plain graph."""
    from gru4rec import GRU4Rec
    from test_model import generated_sessions
    data = generated_sessions(n_sessions=150, n_items=12)   # 12 items: repeats in every step
    runs = {}
    for fused in (False, True):
        monkeypatch.setitem(custom_opt.FUSE_BY_DEFAULT, 'numba', fused)
        m = GRU4Rec(loss='cross-entropy', final_act='softmax', layers=[6], batch_size=8, n_sample=6, n_epochs=3,
                    momentum=0.3, constrained_embedding=True, logq=1.0, backend='numba')
        m.fit(data)
        runs[fused] = ([e['loss'] for e in m.epoch_stats_], m.weights_['Wy'].get_value())
    np.testing.assert_allclose(runs[True][0], runs[False][0], rtol=1e-5)
    np.testing.assert_allclose(runs[True][1], runs[False][1], rtol=1e-4, atol=1e-6)


def test_numba_kernel_cache_key_follows_the_imported_code(tmp_path, monkeypatch):
    """PyTensor caches compiled Numba code by Op class and props: the kernel adds a salt from the code it runs,
    so an edited kernel is never served from an old cache entry, and a process that still runs the old code
    after the file was edited does not store it under the new code's key (that poisoned the cache once: a
    test run started before an edit compiled the old kernel under the edited file's salt)."""
    import importlib
    pytest.importorskip('numba')
    fn, salt = _row_update.numba_sparse_row_update(gpu_ops.SparseRowUpdate('adagrad', 1e-6, True, False))
    assert salt == _ops_support.source_salt(_row_update.__name__)
    src = tmp_path / 'salted_kernel.py'
    src.write_text('import functools\nSTEP = 2\n\n@functools.cache\ndef kernel():\n'
                   '    def inner(x):\n        return x * STEP\n    return inner\n')
    monkeypatch.syspath_prepend(str(tmp_path))
    module = importlib.import_module('salted_kernel')
    first = _ops_support.source_salt('salted_kernel')
    src.write_text(src.read_text().replace('x * STEP', 'x + STEP'))    # edited on disk, not re-imported
    assert _ops_support.source_salt('salted_kernel') == first
    importlib.reload(module)                                            # the new code runs: a new key
    second = _ops_support.source_salt('salted_kernel')
    assert second != first
    src.write_text(src.read_text().replace('STEP = 2', 'STEP = 3'))     # a module constant the kernel reads
    importlib.reload(module)
    assert _ops_support.source_salt('salted_kernel') not in (first, second)


@pytest.mark.parametrize('mode', ['FAST_COMPILE', 'NUMBA'])
def test_merge_repeated_sums_rows_like_numpy(mode):
    """gpu_ops.merge_repeated (used by adam and merge_repeated=True) against np.unique, with more distinct
    rows than a small integer type can count."""
    rng = np.random.default_rng(3)
    idx = rng.integers(0, 700, size=2100).astype(np.int32)
    g = rng.normal(size=(2100, 3)).astype(np.float32)
    I, G = pt.ivector('I'), pt.fmatrix('G')
    uniq, summed = pytensor.function([I, G], gpu_ops.merge_repeated(I, G), mode=mode)(idx, g)
    want, inv = np.unique(idx, return_inverse=True)
    assert len(want) > 300
    np.testing.assert_array_equal(uniq, want)
    np.testing.assert_allclose(summed, np.stack([g[inv == k].sum(axis=0) for k in range(len(want))]), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize('mode', ['FAST_COMPILE', 'NUMBA', 'JAX'])
def test_merge_repeated_into_a_sink_row_keeps_the_shape(mode):
    """The static-shape merge (fixed-width steps): every distinct row once with its summed gradient (exactly
    merge_repeated's sums), every other occurrence at the sink row with a zero gradient."""
    if mode == 'JAX':
        pytest.importorskip('jax')
    rng = np.random.default_rng(4)
    idx = rng.integers(0, 400, size=1500).astype(np.int32)
    g = rng.normal(size=(1500, 3)).astype(np.float32)
    I, G = pt.ivector('I'), pt.fmatrix('G')
    mode_ = custom_opt.compile_mode('jax') if mode == 'JAX' else mode
    out_idx, out_g = (np.asarray(a) for a in pytensor.function([I, G], gpu_ops.merge_repeated_into(I, G, 400), mode=mode_)(idx, g))
    uniq, summed = pytensor.function([I, G], gpu_ops.merge_repeated(I, G), mode='FAST_COMPILE')(idx, g)
    assert out_idx.shape == idx.shape and out_g.shape == g.shape
    real = out_idx != 400
    np.testing.assert_array_equal(out_idx[real], uniq)                  # distinct rows once, sorted
    np.testing.assert_allclose(out_g[real], summed, rtol=1e-5, atol=1e-5)   # same sums (order of addition aside)
    assert np.all(out_g[~real] == 0) and (~real).sum() == len(idx) - len(uniq)


def sampler(cdf, n, mode='FAST_COMPILE'):
    """f(seed, step) -> SampleItems' n draws from cdf, compiled in mode (its guide built by cdf_guide)."""
    guide, levels = gpu_ops.cdf_guide(cdf)
    seed, step = pt.scalar('seed', dtype='uint32'), pt.scalar('step', dtype='uint32')
    numbers = np.arange(n, dtype=np.int32)
    f = pytensor.function([seed, step], gpu_ops.SampleItems(levels)(cdf, guide, seed, step, numbers), mode=mode)
    return lambda seed, step: np.asarray(f(np.uint32(seed), np.uint32(step)))


def popularity_cdf(n_items, alpha=0.75):
    weights = np.arange(1, n_items + 1, dtype=np.float64)[::-1] ** alpha
    cdf = (np.cumsum(weights) / weights.sum()).astype(np.float32)
    cdf[-1] = 1
    return weights / weights.sum(), cdf


def hard_cdfs():
    """CDFs that stress the guide: popularity^0.75, one item, three equal items, zero-probability runs at
    the start, middle and end, values exactly on bucket boundaries, and one item holding almost all mass."""
    _, pop = popularity_cdf(5000)
    gaps = pop.copy()
    gaps[:50], gaps[100:300] = 0, gaps[99]
    gaps[-40:-1] = gaps[-41]
    steps = (np.arange(1, 65) / 64).astype(np.float32)          # every value a bucket boundary
    skew = np.r_[np.float32(1e-7) * np.arange(1, 1000), 1].astype(np.float32)
    return [pop, np.ones(1, np.float32), np.float32([1 / 3, 2 / 3, 1]), gaps, steps, skew]


@pytest.mark.parametrize('impl, dtype', [('numpy', np.float32), ('jax', np.float32), ('numba', np.float32),
                                         ('numpy', np.float64), ('numba', np.float64)])   # (JAX: float32 only)
def test_guided_search_equals_searchsorted_at_every_boundary(impl, dtype):
    """cdf_guide + guided_search (numpy, JAX) and numba_guided_search (Numba: SampleItems' kernel and the
    host store) against np.searchsorted (side='left', at most the last index), in float32 (the device's CDF)
    and float64 (the host store's), with u on every bucket boundary and CDF value, one step either side of
    them, 0, the largest u below 1, and random u; levels is the fewest steps that are enough (one fewer fails
    on the popularity CDF)."""
    xp = pytest.importorskip('jax.numpy') if impl == 'jax' else np
    rng = np.random.default_rng(0)
    cdfs = hard_cdfs()
    if dtype == np.float64:   # the same CDFs in float64, then with values between float32 ones (and boundaries)
        cdfs = [c.astype(np.float64) for c in cdfs] + [
            np.r_[np.cumsum(np.diff(np.r_[0, c.astype(np.float64)]) * (1 + 1e-9))[:-1], 1] for c in cdfs]
    for j, cdf in enumerate(cdfs):
        guide, levels = gpu_ops.cdf_guide(cdf)
        n_buckets = len(guide) - 1
        assert n_buckets >= 2 * len(cdf) and n_buckets & (n_buckets - 1) == 0 and guide.dtype == np.int32
        points = np.r_[np.arange(n_buckets) / n_buckets, cdf, 0, 1].astype(dtype)
        u = np.r_[points, np.nextafter(points, dtype(0)), np.nextafter(points, dtype(1)), rng.random(20000)].astype(dtype)
        tiny = 2.0 ** -24 if dtype == np.float32 else 2.0 ** -53  # (no float32 subnormals: XLA flushes them to 0)
        u = np.unique(u[((u == 0) | (u >= tiny)) & (u < 1)])
        expected = np.minimum(np.searchsorted(cdf, u, side='left'), len(cdf) - 1)
        if impl == 'numba':
            got = gpu_ops.numba_guided_search()(cdf, guide, u)
            assert got.dtype == np.int32
        else:
            got = np.asarray(gpu_ops.guided_search(xp.asarray(cdf), xp.asarray(guide), levels, xp.asarray(u), xp))
        np.testing.assert_array_equal(got, expected)
        if j == 0 and impl != 'numba':   # popularity^0.75 over 5000 items: a few steps, not log2(5000) ~ 12.3
            assert 1 <= levels <= 6
            short = np.asarray(gpu_ops.guided_search(xp.asarray(cdf), xp.asarray(guide), levels - 1, xp.asarray(u), xp))
            assert not np.array_equal(short, expected)


def test_cdf_guide_rejects_other_dtypes():
    with pytest.raises(TypeError, match='float32 or float64'):
        gpu_ops.cdf_guide(np.array([1, 2, 3]))


def test_sample_items_follows_the_cdf():
    """200k draws over 20 items: each item's frequency within 5 standard errors of its probability; a
    step's draw depends on the step and the seed (and nothing else: the same call gives the same draw)."""
    probs, cdf = popularity_cdf(20)
    f = sampler(cdf, 2000)
    draws = np.concatenate([f(7, t) for t in range(100)])
    freq = np.bincount(draws, minlength=20) / len(draws)
    assert np.all(np.abs(freq - probs) < 5 * np.sqrt(probs * (1 - probs) / len(draws)))
    assert np.array_equal(f(7, 3), f(7, 3))
    assert not np.array_equal(f(7, 3), f(7, 4))
    assert not np.array_equal(f(7, 3), f(8, 3))
    # consecutive steps are not shifted copies of each other
    a, b = f(7, 0), f(7, 1)
    assert max(np.mean(a[k:] == b[:len(b) - k]) for k in range(50)) < 0.5


@pytest.mark.parametrize('backend', ['numba', 'jax'])
def test_sample_items_is_identical_on_every_backend(backend):
    """The kernels (searching from the guide) draw what the numpy reference (searchsorted) draws."""
    if backend == 'jax':
        pytest.importorskip('jax')
    _, cdf = popularity_cdf(5000)
    cdf[100:200] = cdf[99]                       # zero-probability items are never drawn
    ref_fn, fn = sampler(cdf, 4096), sampler(cdf, 4096, custom_opt.compile_mode(backend))
    for seed, step in [(0, 0), (42, 1), (42, 2 ** 32 - 1), (2 ** 32 - 1, 12345)]:
        expected, got = ref_fn(seed, step), fn(seed, step)
        assert got.dtype == np.int32 and np.array_equal(got, expected)
        assert not np.any((expected >= 100) & (expected < 200)) and expected.max() < 5000
    for cdf in hard_cdfs():
        ref_fn, fn = sampler(cdf, 20000), sampler(cdf, 20000, custom_opt.compile_mode(backend))
        np.testing.assert_array_equal(fn(3, 9), ref_fn(3, 9))


@pytest.mark.parametrize('backend', ['numba', 'jax'])
def test_hash_uniforms_are_identical_on_every_backend_and_per_slot(backend):
    """Dropout noise drawn in the graph: equal to the numpy reference bit for bit; a slot's row depends on
    its slot id (not its position among the active slots), the step and the stream; values look uniform."""
    if backend == 'jax':
        pytest.importorskip('jax')
    seed, step, slots = pt.scalar('seed', dtype='uint32'), pt.scalar('step', dtype='uint32'), pt.ivector('slots')
    out = gpu_ops.HashUniforms(300, 2)(seed, step, slots)
    ref_fn = pytensor.function([seed, step, slots], out, mode='FAST_COMPILE')
    fn = pytensor.function([seed, step, slots], out, mode=custom_opt.compile_mode(backend))
    all_slots = np.arange(32, dtype=np.int32)
    for s, t in [(0, 0), (42, 7), (2 ** 32 - 1, 2 ** 32 - 1)]:
        full = ref_fn(np.uint32(s), np.uint32(t), all_slots)
        assert np.array_equal(np.asarray(fn(np.uint32(s), np.uint32(t), all_slots)), full)
        some = np.array([3, 17, 30], dtype=np.int32)
        assert np.array_equal(ref_fn(np.uint32(s), np.uint32(t), some), full[some])
    u = ref_fn(np.uint32(1), np.uint32(5), all_slots)
    assert u.dtype == np.float32 and 0 <= u.min() and u.max() < 1 and abs(u.mean() - 0.5) < 0.01
    assert not np.array_equal(u, ref_fn(np.uint32(1), np.uint32(6), all_slots))
    other = pytensor.function([seed, step, slots], gpu_ops.HashUniforms(300, 3)(seed, step, slots), mode='FAST_COMPILE')
    assert abs(np.corrcoef(u.ravel(), other(np.uint32(1), np.uint32(5), all_slots).ravel())[0, 1]) < 0.02
