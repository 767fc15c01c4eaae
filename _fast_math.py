"""float32 math for the Numba backend: Exp32 and Sigmoid32 (scalar Ops) and RowMax, which it can vectorise, each
with its numpy reference beside its Numba kernel; MatMul32, a matrix product that it compiles once, and ColumnSum,
a column sum that compiles in a fraction of PyTensor's general reduction.

A profile of the Numba training step (XE + logQ, 2080 scores per row) showed the score-matrix element-wise
work costing as much as the three GEMMs: Numba calls libm's scalar expf per element (~2.4 ns; no SVML in
today's llvmlite), and PyTensor's generated max-reduction keeps one dependent compare per element.
custom_opt swaps these in on the Numba backend only (JAX/XLA has its own).
"""
import functools

import numpy as np
import pytensor.scalar as ps
import pytensor.tensor as pt
from pytensor.graph.basic import Apply
from pytensor.graph.op import Op
from pytensor.graph.utils import MethodNotDefined
from pytensor.scalar.math import Sigmoid

if __package__:
    from . import _ops_support
else:
    import _ops_support

FLOAT = _ops_support.FLOAT
__all__ = ['exp32', 'sigmoid32', 'Exp32', 'Sigmoid32', 'exp_f32', 'sigmoid_f32', 'RowMax', 'MatMul32',
           'ColumnSum', 'numba_exp32_inline']

_F = np.float32
_EXP_HI, _EXP_LO = _F(88.72283), _F(-87.33654)     # exp overflows above / is below float32's normals
_LOG2E, _LN2_HI, _LN2_LO = _F(1.44269504), _F(0.693359375), _F(-2.12194440e-4)   # ln 2 = HI + LO
_EXP_BIG = _F(88.0)     # above: 2**n itself would overflow, so scale by 2**(n-1) * 2
_EXP_FLOOR = _F(-87.4)  # inputs are clamped here before the reduction (keeps 2**n a normal number)
# minimax polynomial for (exp(r) - 1 - r) / r**2 on |r| <= ln(2)/2 (the coefficients of Cephes' expf)
_EXP_POLY = tuple(_F(c) for c in (1.9875691500e-4, 1.3981999507e-3, 8.3334519073e-3, 4.1665795894e-2,
                                  1.6666665459e-1, 5.0000001201e-1))


def exp32(x):
    """exp of float32 values by the algorithm of the Numba kernel, with numpy (its reference): Cody-Waite
    reduction x = n ln2 + r, a degree-7 polynomial, the result scaled by 2**n through the exponent bits.
    Within 1.5 ulp of the exact value over float32's normal range; 0 below it (libm returns subnormals down
    to exp(-103.9)), inf above 88.72283, NaN for NaN."""
    x = np.asarray(x, dtype=_F)
    with np.errstate(all='ignore'):
        big = x > _EXP_BIG
        xc = np.where(x < _EXP_FLOOR, _EXP_FLOOR, x)
        n = np.floor(np.where(xc == xc, xc, _F(0)) * _LOG2E + _F(0.5))
        r = xc - n * _LN2_HI - n * _LN2_LO
        p = _EXP_POLY[0]
        for c in _EXP_POLY[1:]:
            p = p * r + c
        y = p * (r * r) + r + _F(1)
        scale = ((n.astype(np.int32) - big + np.int32(127)) << np.int32(23)).astype(np.int32).view(_F)
        y = np.where(big, y * scale * _F(2), y * scale)
        y = np.where(x < _EXP_LO, _F(0), np.where(x > _EXP_HI, _F(np.inf), y))
        return np.where(x != x, x, y).astype(_F)


def sigmoid32(x):
    """1 / (1 + exp32(-x)), the sigmoid formula of PyTensor's own Numba implementation."""
    with np.errstate(over='ignore'):
        return (_F(1) / (_F(1) + exp32(-np.asarray(x, dtype=_F)))).astype(_F)


@functools.cache
def numba_exp32_inline():
    """exp32 as a scalar Numba function, inlined into its callers' Numba IR (sigmoid32 calls it; an LLVM-level
    call per element would not vectorise). Callers must be fastmath=False like the scalar functions below:
    reassociation would undo the two-part ln 2 of the reduction, and no-NaN flags the NaN tests."""
    c0, c1, c2, c3, c4, c5 = _EXP_POLY
    f0, f1, f2, inf = _F(0), _F(1), _F(2), _F(np.inf)

    @_ops_support.njit(inline='always', fastmath=False)
    def exp32_inline(x):
        big = x > _EXP_BIG
        xc = _EXP_FLOOR if x < _EXP_FLOOR else x
        n = np.floor((xc if xc == xc else f0) * _LOG2E + _F(0.5))
        r = xc - n * _LN2_HI - n * _LN2_LO
        p = ((((c0 * r + c1) * r + c2) * r + c3) * r + c4) * r + c5
        y = p * (r * r) + r + f1
        m = np.int32(n) - (np.int32(1) if big else np.int32(0))
        y = y * np.int32((m + np.int32(127)) << np.int32(23)).view(np.float32)
        y = y * f2 if big else y
        y = f0 if x < _EXP_LO else y
        y = inf if x > _EXP_HI else y
        return x if x != x else y
    return exp32_inline


@functools.cache
def _numba_exp32():
    """The scalar function of Exp32 (PyTensor's fused loops call it and LLVM vectorises them; its own
    fastmath=False flags stay with its instructions when LLVM inlines it)."""
    exp32_inline = numba_exp32_inline()

    @_ops_support.njit(nogil=True, fastmath=False)
    def exp32_scalar(x):
        return exp32_inline(x)
    return exp32_scalar


@functools.cache
def _numba_sigmoid32():
    exp32_inline = numba_exp32_inline()

    @_ops_support.njit(nogil=True, fastmath=False, error_model='numpy')   # (no per-element zero check)
    def sigmoid32_scalar(x):
        return _F(1) / (_F(1) + exp32_inline(-x))
    return sigmoid32_scalar


class Exp32(ps.Exp):
    """Scalar exp of float32 by exp32 (Numba: _numba_exp32). Same gradient as exp; put in place of float32
    exp by custom_opt on the Numba backend."""
    nfunc_spec = None

    def impl(self, x):
        return exp32(x)

    def c_code(self, *args, **kwargs):
        raise MethodNotDefined('Exp32 has no C implementation')


class Sigmoid32(Sigmoid):
    """Scalar sigmoid of float32 by sigmoid32 (Numba: _numba_sigmoid32)."""
    nfunc_spec = None

    def impl(self, x):
        return sigmoid32(x)

    def c_code(self, *args, **kwargs):
        raise MethodNotDefined('Sigmoid32 has no C implementation')


exp_f32 = Exp32(ps.upgrade_to_float, name='exp32')
sigmoid_f32 = Sigmoid32(ps.upgrade_to_float, name='sigmoid32')


class _MatrixReduction(Op):
    """A float32 matrix reduced over one axis (`axis`) to a float32 vector, standing in for the PyTensor
    reduction `reference()`, whose gradient it has."""
    __props__ = ()
    axis = None

    def make_node(self, x):
        x = pt.as_tensor_variable(x)
        if x.ndim != 2 or x.dtype != FLOAT:
            raise TypeError(f'{type(self).__name__} takes a float32 matrix')
        return Apply(self, [x], [pt.tensor(dtype=FLOAT, shape=(x.type.shape[1 - self.axis],))])

    def infer_shape(self, node, shapes):
        return [(shapes[0][1 - self.axis],)]

    def pullback(self, inputs, outputs, output_grads):
        return self.reference().pullback(inputs, outputs, output_grads)


class RowMax(_MatrixReduction):
    """Max over the last axis of a float32 matrix (PyTensor's Max(axis=1)); a row with a NaN gives NaN, an
    empty row an error, as numpy. The Numba kernel keeps eight independent running maxima (one dependent
    compare per element is latency-bound)."""
    axis = 1

    @staticmethod
    def reference():
        from pytensor.tensor.math import Max
        return Max(axis=(1,))

    def perform(self, node, inputs, outputs):
        outputs[0][0] = np.max(inputs[0], axis=1)


@functools.cache
def _numba_row_max_kernel():
    ninf = _F(-np.inf)

    @_ops_support.njit(inline='always')
    def mx(a, v):   # NaN compares false: it never wins here (looked for separately below)
        return v if v > a else a

    @_ops_support.njit(nogil=True, fastmath=False)
    def row_max(x):
        rows, n = x.shape
        if n == 0 and rows > 0:
            raise ValueError('zero-size array to reduction operation maximum which has no identity')
        out = np.empty(rows, dtype=np.float32)
        for i in range(rows):
            row = x[i]
            a0 = a1 = a2 = a3 = a4 = a5 = a6 = a7 = ninf
            j = 0
            while j + 8 <= n:   # eight independent running maxima
                a0, a1, a2, a3 = mx(a0, row[j]), mx(a1, row[j + 1]), mx(a2, row[j + 2]), mx(a3, row[j + 3])
                a4, a5, a6, a7 = mx(a4, row[j + 4]), mx(a5, row[j + 5]), mx(a6, row[j + 6]), mx(a7, row[j + 7])
                j += 8
            m = mx(mx(mx(a0, a1), mx(a2, a3)), mx(mx(a4, a5), mx(a6, a7)))
            for k in range(j, n):
                m = mx(m, row[k])
            nan = False
            for k in range(n):   # an integer OR over the row: vectorised
                nan |= row[k] != row[k]
            out[i] = np.float32(np.nan) if nan else m
        return out
    return row_max


def _numba_funcify_row_max(op, node=None, **kwargs):
    return _numba_row_max_kernel(), _ops_support.source_salt(__name__)


class MatMul32(Op):
    """The product of two float32 matrices: PyTensor's Dot, with Numba code compiled once per process and shared by
    every such product. PyTensor compiles its Dot's code for each node and for each combination of the arrays'
    layouts (C, F or any strides): 15 variants of its general BLAS wrapper in the training step, ~7 s of a cold
    compile (and ~3 s for the one variant of it that this Op ran before). The kernel makes the BLAS call that
    PyTensor's code makes for arrays of any strides, through Numba's BLAS entry points (the same scipy BLAS):
    each operand read column-major if BLAS can walk it so, else row-major, else through a row-major copy; GEMV
    when the result is a single column or row, else GEMM computing the C-contiguous result's transpose. Two
    cases go through copies where PyTensor passes strides, so their last bits may differ from its Dot: an
    operand with a reversed axis (PyTensor flips axes in pairs) and GEMV's vector with a stride (Numba's GEMV
    entry takes contiguous vectors). The model's graphs make neither."""
    __props__ = ()

    def make_node(self, x, y):
        x, y = pt.as_tensor_variable(x), pt.as_tensor_variable(y)
        if x.ndim != 2 or y.ndim != 2 or x.dtype != FLOAT or y.dtype != FLOAT:
            raise TypeError('MatMul32 takes two float32 matrices')
        return Apply(self, [x, y], [pt.tensor(dtype=FLOAT, shape=(x.type.shape[0], y.type.shape[1]))])

    def infer_shape(self, node, shapes):
        return [(shapes[0][0], shapes[1][1])]

    def perform(self, node, inputs, outputs):
        outputs[0][0] = np.asarray(np.dot(*inputs), dtype=np.float32)


def _leading_dim(unit_stride, other_stride, unit_extent, other_extent):
    """The leading dimension with which BLAS walks a float32 matrix along the axis of unit_stride, or 0 where it
    cannot (PyTensor's rule: an axis of extent 1 has any stride; the leading dimension is at least the extent)."""
    if unit_extent != 1 and unit_stride != 4:
        return 0
    if other_extent == 1:
        return max(1, unit_extent)
    if other_stride <= 0 or other_stride % 4 != 0:
        return 0
    ld = other_stride // 4
    return ld if ld >= unit_extent else 0


def _numba_blas_calls():
    """Intrinsics calling Numba's BLAS entry points numba_xxgemm(kind, transa, transb, m, n, k, alpha, a, lda, b,
    ldb, beta, c, ldc) and numba_xxgemv(kind, trans, m, n, alpha, a, lda, x, beta, y) for float32 with alpha 1
    and beta 0 (the arrays by their data pointers; the flags as character codes). They return BLAS's status
    (-1: no BLAS)."""
    from llvmlite import ir
    from numba.core import cgutils, types
    from numba.extending import intrinsic

    char, ptr = ir.IntType(8), ir.IntType(8).as_pointer()

    def scalar_slot(context, builder, value):
        return builder.bitcast(cgutils.alloca_once_value(builder, context.get_constant(types.float32, value)), ptr)

    def call(context, builder, sig, args, name, layout):
        """layout: per argument, 'c' (a character code), 'i' (a size: Py_ssize_t), 'a' (an array: its data
        pointer), '1'/'0' (alpha/beta slots, no argument)."""
        values, it = [char(ord('s'))], iter(zip(sig.args, args))
        for kind in layout:
            if kind in '10':
                values.append(scalar_slot(context, builder, float(kind)))
                continue
            ty, v = next(it)
            if kind == 'c':
                values.append(builder.trunc(context.cast(builder, v, ty, types.int64), char))
            elif kind == 'i':
                values.append(context.cast(builder, v, ty, types.intp))
            else:
                values.append(builder.bitcast(context.make_array(ty)(context, builder, v).data, ptr))
        fnty = ir.FunctionType(ir.IntType(32), [v.type for v in values])
        return builder.call(cgutils.get_or_insert_function(builder.module, fnty, name), values)

    @intrinsic
    def gemm(typingctx, transa, transb, m, n, k, a, lda, b, ldb, c, ldc):
        def codegen(context, builder, sig, args):
            return call(context, builder, sig, args, 'numba_xxgemm', 'cciii1aiai0ai')
        return types.int32(transa, transb, m, n, k, a, lda, b, ldb, c, ldc), codegen

    @intrinsic
    def gemv(typingctx, trans, m, n, a, lda, x, y):
        def codegen(context, builder, sig, args):
            return call(context, builder, sig, args, 'numba_xxgemv', 'cii1aia0a')
        return types.int32(trans, m, n, a, lda, x, y), codegen
    return gemm, gemv


@functools.cache
def _numba_matmul32_kernel():
    """Nothing is compiled here: the kernel is compiled for each combination of its callers' layouts (a few
    instructions each), its body once, for arrays typed as any strides, when the first graph that uses it is
    compiled (not when a cached graph is loaded)."""
    from numba.core.imputils import impl_ret_borrowed
    from numba.extending import intrinsic
    gemm, gemv = _numba_blas_calls()
    leading_dim = _ops_support.njit(pytensor=True, inline='always')(_leading_dim)
    N, T = ord('N'), ord('T')

    @intrinsic
    def any_strides(typingctx, a):   # the same array, typed as layout 'A' (any strides)
        def codegen(context, builder, sig, args):
            return impl_ret_borrowed(context, builder, sig.return_type, args[0])
        return a.copy(layout='A')(a), codegen

    @_ops_support.njit(pytensor=True, inline='always')
    def operand(a):
        """(buffer, transposed, leading dimension) with which BLAS reads a: column-major, row-major or a copy."""
        ld = leading_dim(a.strides[0], a.strides[1], a.shape[0], a.shape[1])
        if ld:
            return a, False, ld
        ld = leading_dim(a.strides[1], a.strides[0], a.shape[1], a.shape[0])
        if ld:
            return a, True, ld
        return any_strides(np.ascontiguousarray(a)), True, max(1, a.shape[1])

    @_ops_support.njit(pytensor=True)
    def product(x, y):
        m, k = x.shape
        n = y.shape[1]
        if y.shape[0] != k:
            raise ValueError('MatMul32: the matrices do not match (x.shape[1] != y.shape[0])')
        if m == 0 or n == 0 or k == 0:
            return np.zeros((m, n), dtype=np.float32)
        if n == 1 or m == 1:   # GEMV; its output zeroed first (some BLAS builds read it even with beta = 0)
            out = np.zeros((m, n), dtype=np.float32)
            if n == 1:
                a, trans, ld = operand(x)
                rows, cols = (k, m) if trans else (m, k)
                v = np.ascontiguousarray(y[:, 0])
            else:
                a, trans, ld = operand(y)
                rows, cols = (n, k) if trans else (k, n)
                trans = not trans
                v = np.ascontiguousarray(x[0])
            status = gemv(T if trans else N, rows, cols, a, ld, v, out)
        else:
            # C-contiguous out is out.T to BLAS, and out.T = y.T x.T: the operands swap and their flags flip
            out = np.empty((m, n), dtype=np.float32)
            a, a_trans, lda = operand(y)
            b, b_trans, ldb = operand(x)
            status = gemm(N if a_trans else T, N if b_trans else T, n, m, k, a, lda, b, ldb, out, n)
        if status != 0:
            raise RuntimeError('MatMul32: no BLAS (Numba found no scipy.linalg.cython_blas)')
        return out

    @_ops_support.njit(pytensor=True)
    def matmul32(x, y):
        return product(any_strides(x), any_strides(y))
    return matmul32


def _numba_funcify_matmul32(op, node=None, **kwargs):
    return _numba_matmul32_kernel(), _ops_support.source_salt(__name__)


class ColumnSum(_MatrixReduction):
    """The sum over the rows of a float32 matrix, accumulated in float64 (PyTensor's Sum(axis=0) of float32, the
    gradient of a bias). PyTensor's Numba code for a reduction handles any axes and layouts (it sorts the strides
    at run time): ~5 s of the quick-start's cold compile went to it and the Numba functions it pulled in. The
    kernel adds the rows in order into float64 columns, as that code does for a row-major matrix (every column's
    sum is the same sequence of float64 additions in either loop order), then rounds to float32."""
    axis = 0

    @staticmethod
    def reference():
        from pytensor.tensor.math import Sum
        return Sum(axis=(0,), acc_dtype='float64')

    def perform(self, node, inputs, outputs):
        x = inputs[0]
        total = np.zeros(x.shape[1], dtype=np.float64)
        for row in x:   # in order, as the kernel (numpy's sum could add in pairs)
            total += row
        outputs[0][0] = total.astype(np.float32)


@functools.cache
def _numba_column_sum_kernel():
    @_ops_support.njit(pytensor=True, fastmath=False)
    def column_sum(x):
        rows, cols = x.shape
        total = np.zeros(cols, dtype=np.float64)
        for i in range(rows):
            for j in range(cols):
                total[j] += x[i, j]
        return total.astype(np.float32)
    return column_sum


def _numba_funcify_column_sum(op, node=None, **kwargs):
    return _numba_column_sum_kernel(), _ops_support.source_salt(__name__)


def _numba_funcify_scalar(kernel):
    def funcify(op, node=None, **kwargs):   # the cache key names the Op: PyTensor caches compiled code by key
        return kernel(), f'{type(op).__name__}:{_ops_support.source_salt(__name__)}'
    return funcify


def _register_scalars():
    try:
        from pytensor.link.numba.dispatch.scalar import register_scalar_funcify
    except ImportError:
        return
    register_scalar_funcify(Exp32)(_numba_funcify_scalar(_numba_exp32))
    register_scalar_funcify(Sigmoid32)(_numba_funcify_scalar(_numba_sigmoid32))


_register_scalars()
_ops_support.register_numba(RowMax, _numba_funcify_row_max)
_ops_support.register_numba(MatMul32, _numba_funcify_matmul32)
_ops_support.register_numba(ColumnSum, _numba_funcify_column_sum)
