"""Backend configuration and the graph rewrites that put gpu_ops' custom Ops in place.

The model code (_graph.py, _optim.py) builds plain PyTensor graphs; this module decides how they are
compiled, and holds each backend's defaults for training and evaluation. Backends (names and the device ->
backend policy: _devices.py):

* ``numba``  -- PyTensor's Numba backend (the CPU default; cold compile 22-26 s on a 2-core VM, then cached on
               disk; _numba_link makes Numba optimise and emit the nested functions once).
* ``jax``    -- PyTensor's JAX backend (the GPU path; also runs on the CPU when JAX is installed).
* ``python`` -- PyTensor's FAST_COMPILE mode (numpy ``perform`` implementations, sub-second compile).
               Slow to run; used by the test-suite to check numerics of many graph variants. It keeps
               the plain graphs (the rewrites below are fast_run rewrites), so it is the reference.

Rewrites (registered in PyTensor's optdb when this module is imported; tag ``gru4rec_fused``):

* ``fuse_sparse_row_update`` -- SparseRowUpdateGraph (the plain optimiser step of an item-indexed
  weight) -> the fused SparseRowUpdate Op, early in the pipeline.
* ``inplace_sparse_row_update`` -- SparseRowUpdate -> its in-place version once the destroy handler is in
  the graph (so it overwrites the shared weight and state buffers instead of copying them); skipped
  where another node still needs the old buffer after the step.
* ``inline_sparse_row_update`` -- the opposite, for ``compile_mode(backend, fused=False)`` and the
  python backend: SparseRowUpdateGraph replaced by its plain inner graph, which PyTensor's own rewrites
  then optimise (also in place) like any other graph.
* ``numba_fast_math`` and ``numba_row_max`` (Numba, fused only) -- float32 exp and sigmoid by gpu_ops'
  vectorisable Exp32/Sigmoid32, a float32 max over matrix rows by RowMax; they run inside PyTensor's
  element-wise fusion pass, after it has inlined softmax and before it builds the fused loops.
* ``jax_static_shapes`` (JAX) -- integer arithmetic on shapes (slice bounds, arange ends, allocation sizes) by
  gpu_ops' ShapeScalar/ShapeArange, which evaluate it with Python ints while JAX traces: one compiled step
  without its width in the types serves every batch_size and n_sample (XLA compiles each new shape).
* ``numba_matmul32`` and ``numba_column_sum`` (one pass, Numba, fused only) -- products of float32 matrices by
  gpu_ops' MatMul32, whose Numba code is compiled once per process instead of once per node and layout (a cold
  compile ~7 s shorter); column sums of float32 matrices (a bias's gradient) by gpu_ops' ColumnSum, whose kernel
  is a loop nest where PyTensor's reduction code is general in axes and layouts (~5 s of the quick start's cold
  compile).
"""
import functools

from pytensor.compile import optdb
from pytensor.compile.sharedvalue import SharedVariable
from pytensor.graph.rewriting.basic import WalkingGraphRewriter, dfs_rewriter, node_rewriter
from pytensor.scalar.basic import Exp
from pytensor.scalar.math import Sigmoid
from pytensor.tensor.elemwise import Elemwise
from pytensor.tensor.basic import Alloc, ARange, ScalarFromTensor
from pytensor.tensor.math import Dot, Max, Sum
from pytensor.tensor.rewriting.elemwise import fuse_seqopt

if __package__:
    from . import _devices, _numba_link, gpu_ops
else:
    import _devices, _numba_link, gpu_ops  # noqa: E401

FUSED_TAG, PLAIN_TAG, JAX_TAG = 'gru4rec_fused', 'gru4rec_plain', 'gru4rec_jax'
NUMBA_FAST_TAG = 'gru4rec_numba_fast'


# Where the fused Ops are used by default: everywhere but the python reference backend. On Numba they are the
# fused sparse update (with row prefetching) and the vectorisable exp/sigmoid/row max; together they took a
# training step (XE + logQ, 300k Diginetica events, 34k items) from ~2.0 to ~1.6 ms and bpr-max from ~3.1 to
# ~2.1 ms (min over interleaved runs); see README "Backends and custom Ops".
FUSE_BY_DEFAULT = {'numba': True, 'jax': True, 'python': False}

# Minibatches per compiled training call (GRU4Rec.fit's chunk). JAX needs static shapes, so it trains in
# fixed-width chunks; a GPU also needs them to amortise its ~0.6 ms per-call overhead. On Numba, with the
# fused Ops, a scan over 100 steps beat one call per step by ~12% (the host's per-step Python work is
# batched); chunk=0 keeps the original's shrinking minibatches, one call each.
CHUNK_BY_DEFAULT = {'numba': 100, 'jax': 100, 'python': 0}

# Minibatches per compiled evaluation call (evaluation.evaluate_gpu's chunk). JAX-on-CPU, Diginetica's test set
# against 9k items at batch 512: 1.1-1.2 s one call per minibatch, 0.63-0.70 s in chunks (per-call overhead
# and a faster loop body); a GPU's per-call overhead is larger still. Numba on the same: 0.54-0.58 s per
# minibatch, 0.80-0.83 s in chunks (a chunk's fixed width also computes finished slots' rows), so it steps.
EVAL_CHUNK_BY_DEFAULT = {'numba': 0, 'jax': 100, 'python': 0}

# Where GRU4Rec.fit's negative samples come from (its store_type). 'gpu': drawn inside the compiled step
# (gpu_ops.SampleItems), nothing generated or sent by the host per step: what a GPU needs. 'cpu': numpy's
# store on the host, as the original on a CPU. On Numba the two ran within noise once the kernel searched
# from a guide table (Diginetica 150k events, XE + logQ: 715 vs 728 mb/s; with a plain binary search the
# in-graph draw was the slower, 661), so the CPU keeps the original's default.
STORE_BY_DEFAULT = {'numba': 'cpu', 'jax': 'gpu', 'python': 'cpu'}


def compile_mode(backend, fused=None, device=None):
    """The PyTensor Mode for a backend name (see _devices.check_backend). fused: True puts gpu_ops' fused Ops
    in place, False keeps the plain graphs, None (default) follows FUSE_BY_DEFAULT. device (JAX only; see
    _devices.parse_device): where the compiled functions run; None = JAX's default device."""
    from pytensor.compile.mode import Mode, get_mode
    backend = _devices.check_backend(backend)
    mode = get_mode({'numba': 'NUMBA', 'jax': 'JAX', 'python': 'FAST_COMPILE'}[backend])
    if fused is None:
        fused = FUSE_BY_DEFAULT[backend]
    if not fused or backend == 'python':
        mode = mode.excluding(FUSED_TAG).including(PLAIN_TAG)
    elif backend == 'numba':
        mode = mode.including(NUMBA_FAST_TAG)
    if backend == 'numba':
        _numba_link.install()   # each Numba library optimised and emitted once, by the function Python calls
    if backend == 'jax':
        gpu_ops.register_jax()
        # JAX's conversion drops Asserts anyway; those of shape inference would hide shapes from jax_static_shapes
        mode = mode.including(JAX_TAG, 'local_remove_all_assert')
        mode = Mode(linker=_device_jax_linker(None if device is None else _devices.jax_device(device))(),
                    optimizer=mode.provided_optimizer)
    elif _devices.parse_device(device)[0] != 'cpu':
        raise ValueError(f'device "{device}" needs the jax backend (the {backend} backend runs on the CPU)')
    return mode


@functools.cache
def _device_jax_linker(device=None):
    """PyTensor's JAXLinker plus two of the three fixes the substrate notes measured on a GPU (the third,
    in-place scatter, is gpu_ops' fused update):

    * the buffers of updated shared variables (weights, optimiser states) are donated to the compiled call,
      so XLA writes the new values into them instead of allocating and copying every [n_items x d] matrix
      on every call (and peak memory does not double);
    * read-only shared variables (log-popularity, the sampling CDF) are put on the device once per value
      instead of being sent with every call. A new value (set_value) is uploaded on the next call.

    device: a JAX device, or None for JAX's default; each call runs with it as the default device, so host
    inputs go there and the computation follows them. One class per device (PyTensor re-creates linkers
    from their class). Built on first use so that importing this module does not import JAX."""
    from pytensor.link.jax.linker import JAXLinker

    class DeviceJAXLinker(JAXLinker):
        def jit_compile(self, fn):
            import jax
            inputs = self.fgraph.inputs
            static = tuple(self.scalar_shape_inputs)
            updated = set((self.fgraph.update_mapping or {}).values()) - set(static)
            constant = [i for i, v in enumerate(inputs)
                        if isinstance(v, SharedVariable) and i not in updated and i not in static]
            jit_fn = jax.jit(fn, static_argnums=static, donate_argnums=tuple(sorted(updated)))
            on_device = {}   # input index -> (the host value it was made from, its device copy)

            def call(*args):
                if device is not None:
                    with jax.default_device(device):
                        return run(args)
                return run(args)

            def run(args):
                args = list(args)
                for i in static:
                    args[i] = int(args[i])
                for i in constant:
                    host, dev = on_device.get(i, (None, None))
                    if host is not args[i]:
                        host, dev = on_device[i] = (args[i], jax.device_put(args[i], device))
                    args[i] = dev
                return jit_fn(*args)
            return call

    return DeviceJAXLinker


@node_rewriter([gpu_ops.SparseRowUpdateGraph])
def fuse_sparse_row_update(fgraph, node):
    return gpu_ops.SparseRowUpdate(*node.op.flags)(*node.inputs, return_list=True)


@node_rewriter([gpu_ops.SparseRowUpdateGraph])
def inline_sparse_row_update(fgraph, node):
    from pytensor.compile.rewriting import inline_ofg_node
    return inline_ofg_node(node)


@node_rewriter([gpu_ops.SparseRowUpdate])
def inplace_sparse_row_update(fgraph, node):
    op = node.op
    if op.inplace:
        return False
    if any(fgraph.has_destroyers([x]) for x in node.inputs[:op.n_out]):
        return False
    return gpu_ops.SparseRowUpdate(*op.flags, inplace=True)(*node.inputs, return_list=True)


@node_rewriter([Sum])
def float32_sum(fgraph, node):
    # PyTensor's JAX backend returns a float32 Sum that accumulates in float64 as float64, which then leaks
    # into the shared variables (and breaks a scan's carried types); XLA reduces float32 in float32 anyway.
    op, out = node.op, node.outputs[0]
    if out.dtype == 'float32' and op.acc_dtype != 'float32':
        return [Sum(axis=op.axis, dtype='float32', acc_dtype='float32')(node.inputs[0])]
    return False


_FAST_SCALAR = {Exp: gpu_ops.exp_f32, Sigmoid: gpu_ops.sigmoid_f32}


@node_rewriter([ScalarFromTensor, ARange, Alloc])
def jax_static_shapes(fgraph, node):
    # integer arithmetic on shapes evaluated with Python ints while JAX traces (see _jax_shapes)
    new = gpu_ops.static_replacement(node)
    return False if new is None else [new]


@node_rewriter([Elemwise])
def numba_fast_math(fgraph, node):
    new = _FAST_SCALAR.get(type(node.op.scalar_op))   # (exact types: Exp32 is an Exp too)
    if new is None or any(v.dtype != 'float32' for v in node.inputs + node.outputs):
        return False
    return [Elemwise(new)(*node.inputs)]


@node_rewriter([Max])
def numba_row_max(fgraph, node):
    x, op = node.inputs[0], node.op
    if x.ndim == 2 and x.dtype == 'float32' and tuple(op.axis) == (1,) and not op.initial:
        return [gpu_ops.RowMax()(x)]
    return False


@node_rewriter([Dot])
def numba_matmul32(fgraph, node):
    if all(v.ndim == 2 and v.dtype == 'float32' for v in node.inputs + node.outputs):
        return [gpu_ops.MatMul32()(*node.inputs)]
    return False


@node_rewriter([Sum])
def numba_column_sum(fgraph, node):
    x, op = node.inputs[0], node.op
    if (x.ndim == 2 and x.dtype == 'float32' and node.outputs[0].dtype == 'float32' and op.acc_dtype == 'float64'
            and op.axis is not None and tuple(op.axis) == (0,)):
        return [gpu_ops.ColumnSum()(x)]
    return False


# Names carry the module's import name: a checkout can end up with this module imported twice (as
# custom_opt and as <package>.custom_opt, e.g. under pytest), each copy with its own Op classes.
_prefix = __name__.replace('.', '_') + '_'
optdb.register(_prefix + 'fuse_sparse_row_update', dfs_rewriter(fuse_sparse_row_update), 'fast_run', FUSED_TAG,
               position=0.1)
optdb.register(_prefix + 'inline_sparse_row_update', dfs_rewriter(inline_sparse_row_update), PLAIN_TAG, position=0.1)
optdb.register(_prefix + 'inplace_sparse_row_update',
               WalkingGraphRewriter(inplace_sparse_row_update, failure_callback=WalkingGraphRewriter.warn_inplace),
               'fast_run', 'inplace', FUSED_TAG, position=70.7)
optdb.register(_prefix + 'float32_sum', dfs_rewriter(float32_sum), JAX_TAG, position=49.5)
# last: the shape rewrites before it may still create shape arithmetic
optdb.register(_prefix + 'jax_static_shapes', dfs_rewriter(jax_static_shapes), JAX_TAG, position=99)
# inside the fusion pass: after it inlines softmax & co (0, 0.5), before it fuses element-wise loops (1)
fuse_seqopt.register(_prefix + 'numba_fast_math', dfs_rewriter(numba_fast_math, numba_row_max), NUMBA_FAST_TAG,
                     position=0.7)
# after the graph rewrites that look for Dot (canonicalize, specialize), before the element-wise fusion
optdb.register(_prefix + 'numba_products_and_sums', dfs_rewriter(numba_matmul32, numba_column_sum), NUMBA_FAST_TAG,
               position=48.9)
