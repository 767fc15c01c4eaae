"""Shape arithmetic that JAX sees as constants: ShapeScalar and ShapeArange.

Under JAX tracing every shape is concrete, so a step graph without its minibatch width in the types still
becomes one static XLA program per width. But PyTensor's JAX conversion runs the graph's integer arithmetic on
shapes (x.shape[0], min(len(y), m + 1), ...) as JAX operations, whose results are traced arrays: JAX refuses them
as slice bounds, and PyTensor's arange conversion refuses anything but a bare shape. custom_opt's
`jax_static_shapes` rewrite replaces each such expression by one ShapeScalar (an arange of them by one
ShapeArange) that evaluates it with Python ints while JAX traces.

An expression (`shape_expression`) is a nested tuple: ('shape', k, i) is dimension i of the Op's k-th input,
('const', v) a number, (name, *args) one of OPS applied to its arguments.
"""
import numpy as np
import pytensor.scalar as ps
from pytensor.graph.basic import Apply, Constant
from pytensor.scalar.basic import ScalarOp
from pytensor.tensor.basic import Alloc, ARange, ScalarFromTensor, TensorFromScalar
from pytensor.tensor.elemwise import Elemwise
from pytensor.tensor.shape import Shape, Shape_i
from pytensor.tensor.subtensor import Subtensor
from pytensor.tensor.type import TensorType

if __package__:
    from . import _ops_support
else:
    import _ops_support

__all__ = ['ShapeScalar', 'ShapeArange', 'shape_expression', 'static_replacement']

OPS = {'Add': lambda *a: sum(a), 'Sub': lambda a, b: a - b, 'Mul': lambda a, b: a * b,
       'IntDiv': lambda a, b: a // b, 'Minimum': min, 'Maximum': max, 'Neg': lambda a: -a, 'Identity': lambda a: a,
       'Cast': lambda a: a}
PASS_THROUGH = (ScalarFromTensor, TensorFromScalar)


def shape_expression(var, tensors):
    """var's integer expression of shapes and numbers (appending the tensors whose shapes it reads to
    `tensors`), or None if var is anything else (a value computed from data, a float)."""
    if not (var.dtype.startswith(('int', 'uint')) and getattr(var.type, 'ndim', 0) == 0):
        return None
    if isinstance(var, Constant):
        return ('const', int(np.asarray(var.data)))
    node = var.owner
    if node is None:
        return None
    op = node.op
    dim = (node.inputs[0], op.i) if isinstance(op, Shape_i) else shape_subtensor(node)
    if dim is not None:
        x, i = dim
        k = next((j for j, t in enumerate(tensors) if t is x), None)
        if k is None:
            tensors.append(x)
            k = len(tensors) - 1
        return ('shape', k, i)
    if isinstance(op, PASS_THROUGH):
        return shape_expression(node.inputs[0], tensors)
    scalar_op = op.scalar_op if isinstance(op, Elemwise) else op if isinstance(op, ScalarOp) else None
    name = type(scalar_op).__name__ if scalar_op is not None else None
    if name not in OPS:
        return None
    args = [shape_expression(v, tensors) for v in node.inputs]
    return None if any(a is None for a in args) else (name, *args)


def shape_subtensor(node):
    """(x, i) for x.shape[i] as it is built (Shape, then a constant index), else None."""
    if not (isinstance(node.op, Subtensor) and len(node.inputs) == 2 and isinstance(node.inputs[1], Constant)):
        return None
    shape = node.inputs[0].owner
    return (shape.inputs[0], int(node.inputs[1].data)) if shape is not None and isinstance(shape.op, Shape) else None


def evaluate(expr, shapes):
    """The int value of an expression for the shapes of the Op's inputs."""
    kind = expr[0]
    if kind == 'shape':
        return int(shapes[expr[1]][expr[2]])
    if kind == 'const':
        return expr[1]
    return int(OPS[kind](*(evaluate(a, shapes) for a in expr[1:])))


def reads_a_shape(expr):
    return expr[0] == 'shape' or (expr[0] != 'const' and any(reads_a_shape(a) for a in expr[1:]))


class ShapeScalar(_ops_support.NoGradient):
    """(tensors...) -> int64: the value of `expr` (shape_expression) for their shapes, as a scalar (a slice
    bound) or as_tensor a 0-d tensor (a dimension of Alloc)."""
    __props__ = ('expr', 'as_tensor')

    def __init__(self, expr, as_tensor=False):
        self.expr, self.as_tensor = expr, bool(as_tensor)

    def make_node(self, *tensors):
        return Apply(self, list(tensors), [TensorType('int64', shape=())() if self.as_tensor else ps.int64()])

    def perform(self, node, inputs, outputs):
        value = np.int64(evaluate(self.expr, [np.shape(x) for x in inputs]))
        outputs[0][0] = np.asarray(value) if self.as_tensor else value


class ShapeArange(_ops_support.NoGradient):
    """(tensors...) -> arange(start, stop, step) of `dtype`, the three bounds expressions of their shapes."""
    __props__ = ('expr', 'dtype')

    def __init__(self, expr, dtype):
        self.expr, self.dtype = expr, dtype

    def make_node(self, *tensors):
        return Apply(self, list(tensors), [TensorType(self.dtype, shape=(None,))()])

    def perform(self, node, inputs, outputs):
        start, stop, step = (evaluate(e, [np.shape(x) for x in inputs]) for e in self.expr)
        outputs[0][0] = np.arange(start, stop, step, dtype=self.dtype)


def static_scalar(var, as_tensor=False):
    """ShapeScalar's output for var if var is an expression of shapes (not of numbers alone, which PyTensor's
    constant folding handles), else None."""
    tensors = []
    expr = shape_expression(var, tensors)
    return ShapeScalar(expr, as_tensor)(*tensors) if expr is not None and reads_a_shape(expr) else None


def static_replacement(node):
    """The output that replaces node's output, or None: ShapeArange for an ARange whose bounds are shape
    expressions; ShapeScalar for a ScalarFromTensor of one (how a shape becomes a slice bound or a scan's
    length); an Alloc with ShapeScalar dimensions where they are."""
    if isinstance(node.op, Alloc):
        dims = [static_scalar(v, as_tensor=True) for v in node.inputs[1:]]
        if all(d is None for d in dims):
            return None
        return node.op(node.inputs[0], *(v if d is None else d for v, d in zip(node.inputs[1:], dims)))
    if isinstance(node.op, ARange):   # one ShapeArange: the three bounds index one list of tensors
        tensors = []
        exprs = tuple(shape_expression(v, tensors) for v in node.inputs)
        if any(e is None for e in exprs) or not any(reads_a_shape(e) for e in exprs):
            return None
        return ShapeArange(exprs, node.outputs[0].dtype)(*tensors)
    if isinstance(node.op, ScalarFromTensor):
        out = static_scalar(node.inputs[0])
        if out is None or out.type == node.outputs[0].type:
            return out
        return ps.cast(out, node.outputs[0].dtype)
    return None


def jax_shape_scalar(op, node=None, **kwargs):
    expr = op.expr

    def shape_scalar(*tensors):
        return evaluate(expr, [x.shape for x in tensors])   # Python ints while JAX traces
    return shape_scalar


def jax_shape_arange(op, node=None, **kwargs):
    import jax
    import jax.numpy as jnp
    exprs = op.expr

    def shape_arange(*tensors):
        # int64 is int32 while JAX runs without 64-bit types (asked for, JAX would warn on every trace)
        dtype = jax.dtypes.canonicalize_dtype(op.dtype)
        return jnp.arange(*(evaluate(e, [x.shape for x in tensors]) for e in exprs), dtype=dtype)
    return shape_arange
