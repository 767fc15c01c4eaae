"""Shape arithmetic evaluated while JAX traces (_jax_shapes, custom_opt's jax_static_shapes): one PyTensor
function with dynamic shapes serves every shape on JAX, equal to numpy; PyTensor's own JAX conversion could not
compile it (so the test would fail without the rewrite)."""
import warnings

import numpy as np
import pytensor
import pytensor.tensor as pt
import pytest

import custom_opt
import gpu_ops

jax = pytest.importorskip('jax')


def graph():
    """Slices, an arange and an allocation sized by shape arithmetic (min(len(y), len(x) + 1), len(y) - len(x)),
    as the training step's shape inference produces them; and what numpy gives for the same."""
    x, y = pt.ivector('x'), pt.fvector('y')
    m = pt.minimum(y.shape[0], x.shape[0] + 1)
    head, tail = y[:m], y[x.shape[0]:]
    rows = pt.arange(m, dtype='int32')
    zeros = pt.zeros((y.shape[0] - x.shape[0], 3), dtype='float32')
    outs = [head * 2, tail.sum(), rows * 2, zeros.sum(axis=1) + tail]

    def reference(xv, yv):
        mv = min(len(yv), len(xv) + 1)
        t = yv[len(xv):]
        return [yv[:mv] * 2, t.sum(), np.arange(mv, dtype=np.int32) * 2, np.zeros(len(t), np.float32) + t]
    return [x, y], outs, reference


def test_one_function_serves_every_shape_on_jax():
    inputs, outs, reference = graph()
    f = pytensor.function(inputs, outs, mode=custom_opt.compile_mode('jax'))
    kinds = {type(n.op) for n in f.maker.fgraph.apply_nodes}
    assert gpu_ops.ShapeScalar in kinds and gpu_ops.ShapeArange in kinds
    rng = np.random.default_rng(0)
    for n_x, n_y in [(2, 5), (4, 5), (3, 9), (0, 4), (7, 7)]:
        xv, yv = rng.integers(0, 9, n_x).astype(np.int32), rng.random(n_y).astype(np.float32)
        for got, want in zip(f(xv, yv), reference(xv, yv)):
            np.testing.assert_allclose(np.asarray(got), want, rtol=1e-6)


def test_pytensor_alone_cannot_compile_it_for_jax():
    inputs, outs, _ = graph()
    with pytest.raises(Exception):
        f = pytensor.function(inputs, outs, mode=custom_opt.compile_mode('jax').excluding(custom_opt.JAX_TAG))
        f(np.zeros(2, np.int32), np.zeros(5, np.float32))


def test_perform_is_the_numpy_reference():
    # the Ops' python implementations (PyTensor's other linkers) evaluate the same expressions
    inputs, outs, reference = graph()
    x, y = inputs
    expr = gpu_ops.shape_expression(pt.minimum(y.shape[0], x.shape[0] + 1), tensors := [])
    assert expr == ('Minimum', ('shape', 0, 0), ('Add', ('shape', 1, 0), ('const', 1)))
    assert tensors == [y, x]
    f = pytensor.function(inputs, [gpu_ops.ShapeScalar(expr)(*tensors), gpu_ops.ShapeArange(
        (('const', 1), expr, ('const', 2)), 'int32')(*tensors)], mode='FAST_COMPILE')
    got = f(np.zeros(3, np.int32), np.zeros(9, np.float32))
    assert int(got[0]) == 4 and got[1].tolist() == [1, 3]
    assert gpu_ops.shape_expression(pt.ivector('v').sum(), []) is None   # a value, not a shape


def test_no_int64_warning_without_64_bit_jax():
    # PyTensor's aranges count in int64; JAX without 64-bit types would warn on every trace of an int64 arange
    x, y = pt.ivector('x'), pt.fvector('y')
    f = pytensor.function([x, y], pt.arange(pt.minimum(y.shape[0], x.shape[0] + 1)), mode=custom_opt.compile_mode('jax'))
    assert any(isinstance(n.op, gpu_ops.ShapeArange) for n in f.maker.fgraph.apply_nodes)
    with jax.enable_x64(False), warnings.catch_warnings():
        warnings.simplefilter('error')
        assert np.asarray(f(np.zeros(3, np.int32), np.zeros(6, np.float32))).tolist() == [0, 1, 2, 3]
