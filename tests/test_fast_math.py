"""gpu_ops' float32 exp, sigmoid, row max, matrix product and column sum for the Numba backend: accuracy against
float64 numpy, special values, the Numba kernels bit for bit against their numpy references (the product and the
column sum against PyTensor's Dot and Sum), and custom_opt putting them in place (Numba with fused Ops only)
without changing what a graph computes."""
import numpy as np
import pytensor
import pytensor.tensor as pt
import pytest

import custom_opt
import gpu_ops

ULP = 2.0 ** -23   # float32's relative spacing at 1


def normal_range():
    """Every 97th float32 of exp's normal-result range (by bit pattern, so all binades) plus its edges."""
    lo, hi = np.float32(-87.33654), np.float32(88.72283)
    bits = lambda v: int(np.float32(v).view(np.int32))   # noqa: E731
    neg = np.arange(bits(-1e-30), bits(lo), 97, dtype=np.int64).astype(np.int32).view(np.float32)
    pos = np.arange(bits(1e-30), bits(hi), 97, dtype=np.int64).astype(np.int32).view(np.float32)
    return np.concatenate([neg, pos, np.float32([0, lo, hi, 1, -1, 88.0, 88.3, -87.0])])


SPECIALS = np.float32([np.nan, np.inf, -np.inf, 88.7229, 100, 1e30, -87.3366, -90, -1e30, 0, -0.0])


def numba_fn(expr, x=None):
    x = pt.vector('x', dtype='float32') if x is None else x
    return pytensor.function([x], expr(x), mode=custom_opt.compile_mode('numba', fused=True))


def test_exp32_within_1_5_ulp_over_the_normal_range():
    x = normal_range()
    exact = np.exp(x.astype(np.float64))
    err = np.abs(gpu_ops.exp32(x).astype(np.float64) - exact) / exact
    assert err.max() <= 1.5 * ULP / 2   # relative to the result: half an ulp is 2**-24 at worst
    assert gpu_ops.exp32(np.float32(0)) == 1


def test_exp32_special_values():
    got = gpu_ops.exp32(SPECIALS)
    assert np.isnan(got[0])
    np.testing.assert_array_equal(got[1:], np.float32([np.inf, 0, np.inf, np.inf, np.inf, 0, 0, 0, 1, 1]))
    assert got.dtype == np.float32


def test_sigmoid32_against_float64():
    x = np.concatenate([np.linspace(-110, 110, 400001, dtype=np.float32), SPECIALS])
    with np.errstate(over='ignore'):
        exact = 1 / (1 + np.exp(-x.astype(np.float64)))
    got = gpu_ops.sigmoid32(x)
    ok = ~np.isnan(x)
    assert np.isnan(got[~ok]).all()
    np.testing.assert_allclose(got[ok], exact[ok], rtol=3 * ULP, atol=1e-37)


@pytest.mark.parametrize('expr, op, reference', [(pt.exp, gpu_ops.Exp32, gpu_ops.exp32),
                                                 (pt.sigmoid, gpu_ops.Sigmoid32, gpu_ops.sigmoid32)])
def test_numba_kernels_equal_their_numpy_reference_bit_for_bit(expr, op, reference):
    pytest.importorskip('numba')
    fn = numba_fn(expr)
    scalar_ops = [getattr(n.op, 'scalar_op', None) for n in fn.maker.fgraph.apply_nodes]
    assert any(type(s).__name__ == op.__name__ for s in scalar_ops)   # (by name: see uses_fast below)
    x = np.concatenate([normal_range()[::7], np.float32(np.random.default_rng(0).normal(0, 30, 10000)), SPECIALS])
    np.testing.assert_array_equal(fn(x), reference(x))


def test_row_max_kernel_equals_numpy():
    pytest.importorskip('numba')
    rng = np.random.default_rng(1)
    fn = numba_fn(lambda x: pt.max(x, axis=1), pt.matrix('x', dtype='float32'))
    assert any(type(n.op).__name__ == 'RowMax' for n in fn.maker.fgraph.apply_nodes)
    for cols in (1, 7, 8, 9, 2080):   # below, at and around the kernel's 8 lanes
        x = rng.normal(size=(5, cols)).astype(np.float32)
        x[1] = -np.inf
        x[2, -1] = np.nan   # NaN in the tail
        x[3, 0] = np.nan    # and in the lanes
        x[4, cols // 2] = 1e30
        np.testing.assert_array_equal(fn(x), np.max(x, axis=1))
    assert fn(np.zeros((0, 4), np.float32)).shape == (0,)
    with pytest.raises(ValueError, match='zero-size'):
        fn(np.zeros((2, 0), np.float32))


def test_row_max_gradient_is_max_gradient():
    x = pt.matrix('x', dtype='float32')
    v = np.float32([[1, 3, 2], [5, 4, 5]])
    got = pytensor.function([x], pytensor.grad(gpu_ops.RowMax()(x).sum(), x), mode='FAST_COMPILE')(v)
    want = pytensor.function([x], pytensor.grad(pt.max(x, axis=1).sum(), x), mode='FAST_COMPILE')(v)
    np.testing.assert_array_equal(got, want)


def loss_and_grad(x):
    """Softmax cross-entropy on the diagonal and its gradient (the shape of the XE training step)."""
    m = pt.arange(x.shape[0])
    cost = -pt.log(pt.special.softmax(x, axis=1)[m, m] + np.float32(1e-24)).sum()
    return [cost, pytensor.grad(cost, x)]


def test_numba_fused_mode_uses_the_fast_ops_and_computes_the_same():
    pytest.importorskip('numba')
    x = pt.matrix('x', dtype='float32')
    v = np.float32(np.random.default_rng(2).normal(0, 4, (32, 300)))
    fast = pytensor.function([x], loss_and_grad(x), mode=custom_opt.compile_mode('numba', fused=True))
    plain = pytensor.function([x], loss_and_grad(x), mode=custom_opt.compile_mode('numba', fused=False))
    ref = pytensor.function([x], loss_and_grad(x), mode=custom_opt.compile_mode('python'))

    def uses_fast(fn):   # by name: under pytest a checkout's modules load twice (top level and as a package),
        # and the rewrite registered first may put in place the other copy's Op classes
        text = pytensor.printing.debugprint(fn, file='str')
        return 'exp32' in text and 'RowMax' in text
    assert uses_fast(fast) and not uses_fast(plain) and not uses_fast(ref)
    for got in (fast(v), plain(v)):
        np.testing.assert_allclose(got[0], ref(v)[0], rtol=1e-6)
        np.testing.assert_allclose(got[1], ref(v)[1], rtol=1e-5, atol=1e-7)


def test_float64_exp_is_left_alone():
    pytest.importorskip('numba')
    fn = numba_fn(pt.exp, pt.vector('x', dtype='float64'))
    assert not any(type(getattr(n.op, 'scalar_op', None)).__name__ == 'Exp32' for n in fn.maker.fgraph.apply_nodes)
    np.testing.assert_array_equal(fn(np.array([0.5, 700.0])), np.exp([0.5, 700.0]))


LAYOUTS = ('C', 'F', 'column slice', 'every other row', 'reversed rows', 'reversed columns')


def layouts(rng, r, c):
    """An r x c float32 matrix in each of LAYOUTS (the views a graph hands an Op, and reversed ones)."""
    base = np.float32(rng.normal(size=(2 * r + 1, 2 * c + 1)))
    return [np.ascontiguousarray(base[:r, :c]), np.asfortranarray(base[:r, :c]), base[:r, 1:c + 1],
            base[:2 * r:2, :c], base[r - 1::-1, :c] if r else base[:0, :c], base[:r, c - 1::-1] if c else base[:r, :0]]


def operand_layouts(rng, m, k, n):
    """Triples (x, y, whether either has a reversed axis) of float32 matrices (m x k, k x n) in every pair of
    LAYOUTS."""
    return [(x, y, 'reversed' in LAYOUTS[i] + LAYOUTS[j]) for i, x in enumerate(layouts(rng, m, k))
            for j, y in enumerate(layouts(rng, k, n))]


@pytest.mark.parametrize('m,k,n', [(7, 5, 3), (1, 4, 6), (5, 4, 1), (1, 3, 1), (3, 0, 2), (4, 1, 4), (32, 100, 300)])
def test_matmul32_equals_pytensors_dot_on_numba_bit_for_bit(m, k, n):
    # the rewrite's Op against PyTensor's own Dot code (fused=False keeps Dot), in every layout and at the
    # shapes where BLAS takes another path (a vector operand, an empty contraction). Operands with a reversed
    # axis are copied where PyTensor flips them in pairs: the same product to rounding, not bit for bit.
    pytest.importorskip('numba')
    x, y = pt.matrix('x', dtype='float32'), pt.matrix('y', dtype='float32')
    fast = pytensor.function([x, y], pt.dot(x, y), mode=custom_opt.compile_mode('numba', fused=True))
    plain = pytensor.function([x, y], pt.dot(x, y), mode=custom_opt.compile_mode('numba', fused=False))
    ops = [type(node.op).__name__ for node in fast.maker.fgraph.apply_nodes]
    assert 'MatMul32' in ops and 'Dot' not in ops
    for a, b, reversed_axis in operand_layouts(np.random.default_rng(m * 100 + k * 10 + n), m, k, n):
        got, want = fast(a, b), plain(a, b)
        assert got.dtype == np.float32 and got.flags.c_contiguous
        if not reversed_axis:
            np.testing.assert_array_equal(got, want)
        np.testing.assert_allclose(got, np.dot(a.astype(np.float64), b.astype(np.float64)), rtol=1e-5, atol=1e-5)


def test_matmul32_rejects_mismatched_matrices():
    pytest.importorskip('numba')
    x, y = pt.matrix('x', dtype='float32'), pt.matrix('y', dtype='float32')
    fn = pytensor.function([x, y], gpu_ops.MatMul32()(x, y), mode=custom_opt.compile_mode('numba'))
    with pytest.raises(ValueError, match='do not match'):
        fn(np.zeros((2, 3), np.float32), np.zeros((4, 2), np.float32))


def test_matmul32_leaves_other_dtypes_alone():
    # (PyTensor writes a matrix-vector product as a matrix product with a column; that one is replaced too)
    pytest.importorskip('numba')
    x, v = pt.matrix('x', dtype='float32'), pt.vector('v', dtype='float32')
    d = pt.matrix('d', dtype='float64')
    fn = pytensor.function([x, v, d], [pt.dot(x, v), pt.dot(d, d)], mode=custom_opt.compile_mode('numba'))
    products = [node for node in fn.maker.fgraph.apply_nodes if type(node.op).__name__ in ('Dot', 'MatMul32')]
    assert sorted((type(n.op).__name__, n.outputs[0].dtype) for n in products) == [('Dot', 'float64'),
                                                                                   ('MatMul32', 'float32')]
    a, b, c = np.float32([[1, 2], [3, 4]]), np.float32([1, -1]), np.array([[0.5, 1.0], [2.0, 0.0]])
    got = fn(a, b, c)
    np.testing.assert_array_equal(got[0], np.float32([-1, -1]))
    np.testing.assert_array_equal(got[1], c @ c)


def test_matmul32_perform_and_errors():
    x, y = pt.matrix('x', dtype='float32'), pt.matrix('y', dtype='float32')
    fn = pytensor.function([x, y], gpu_ops.MatMul32()(x, y), mode=custom_opt.compile_mode('python'))
    a, b = np.float32([[1, 2, 3]]), np.float32([[1], [0], [2]])
    np.testing.assert_array_equal(fn(a, b), np.float32([[7]]))
    with pytest.raises(TypeError, match='two float32 matrices'):
        gpu_ops.MatMul32()(pt.vector('v', dtype='float32'), y)
    with pytest.raises(TypeError, match='two float32 matrices'):
        gpu_ops.MatMul32()(x, pt.matrix('d', dtype='float64'))


@pytest.mark.parametrize('rows,cols', [(37, 300), (1, 5), (6, 1), (0, 3), (3, 0)])
def test_column_sum_equals_pytensors_sum_on_numba_bit_for_bit(rows, cols):
    pytest.importorskip('numba')
    x = pt.matrix('x', dtype='float32')
    fast = pytensor.function([x], x.sum(axis=0), mode=custom_opt.compile_mode('numba', fused=True))
    plain = pytensor.function([x], x.sum(axis=0), mode=custom_opt.compile_mode('numba', fused=False))
    assert [type(n.op).__name__ for n in fast.maker.fgraph.apply_nodes] == ['ColumnSum']
    for a in layouts(np.random.default_rng(rows * 10 + cols), rows, cols):
        a = a * np.float32(1e3)   # large and small terms: a float32 accumulator would lose bits
        got = fast(a)
        assert got.dtype == np.float32 and got.shape == (cols,)
        np.testing.assert_array_equal(got, plain(a))
        np.testing.assert_allclose(got, a.astype(np.float64).sum(axis=0), rtol=1e-6)


def test_column_sum_replaces_only_float32_column_sums():
    pytest.importorskip('numba')
    x, d = pt.matrix('x', dtype='float32'), pt.matrix('d', dtype='float64')
    fn = pytensor.function([x, d], [x.sum(axis=1), d.sum(axis=0), x.sum(), x.sum(axis=0, acc_dtype='float32')],
                           mode=custom_opt.compile_mode('numba'))
    assert not any(type(n.op).__name__ == 'ColumnSum' for n in fn.maker.fgraph.apply_nodes)
    a = np.float32([[1, 2], [3, 4]])
    got = fn(a, a.astype(np.float64))
    for g, want in zip(got, [[3, 7], [4, 6], 10, [4, 6]]):
        np.testing.assert_array_equal(g, want)


def test_column_sum_perform_gradient_and_errors():
    x = pt.matrix('x', dtype='float32')
    v = np.float32([[1, 2], [3, 4], [5, 6]])
    fn = pytensor.function([x], gpu_ops.ColumnSum()(x), mode=custom_opt.compile_mode('python'))
    np.testing.assert_array_equal(fn(v), np.float32([9, 12]))
    w = np.float32([2, -1])
    got = pytensor.function([x], pytensor.grad((gpu_ops.ColumnSum()(x) * w).sum(), x), mode='FAST_COMPILE')(v)
    np.testing.assert_array_equal(got, np.tile(w, (3, 1)))
    with pytest.raises(TypeError, match='float32 matrix'):
        gpu_ops.ColumnSum()(pt.vector('v', dtype='float32'))
