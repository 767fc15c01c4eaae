"""Custom PyTensor Ops of GRU4Rec, in three families, each Op declared once with its numpy, Numba and JAX
implementations beside it in its family's module. This module is their one public face (import the Ops from
here) and puts the JAX implementations in place (register_jax).

_row_update.py -- SparseRowUpdate: the optimiser step of an item-indexed weight (Wy, By, E, Wx0) and its
    optimiser state, fused into one pass over the rows a minibatch touches, with the original's rules for
    items that occur several times in one step. SparseRowUpdateGraph is its plain-PyTensor definition (what
    the model builds; custom_opt swaps in the fused Op and makes it in-place); sparse_row_update builds it;
    merge_repeated(_into) sum the gradients of repeated rows (merge_repeated=True, textbook Adam);
    numpy_row_update is the kernels' reference.
_hash_draws.py -- SampleItems: negative samples drawn inside the compiled step from a counter-based hash of
    (seed, step), searched from a guide table of the popularity CDF (cdf_guide; the host store's
    numba_guided_search uses it too); HashUniforms: the dropout noise the same way, per session slot.
    sample_from_cdf and hash_uniform_rows are the definitions the kernels reproduce.
_fast_math.py -- Exp32, Sigmoid32 (scalar Ops; exp_f32, sigmoid_f32 are their instances) and RowMax:
    float32 exp, sigmoid and row max that the Numba backend can vectorise; exp32 and sigmoid32 are their
    numpy references. MatMul32: a float32 matrix product whose Numba code is compiled once per process;
    ColumnSum: a float32 column sum (float64 accumulator) with a small Numba kernel.
_jax_shapes.py -- ShapeScalar and ShapeArange: integer arithmetic on shapes (a slice bound, an arange's end)
    evaluated with Python ints while JAX traces, so a step graph without its width in the types slices and
    counts by it (static_replacement finds them; custom_opt puts them in place on JAX only).
_ops_support.py -- what the families share: the float dtype, the decorator of their Numba kernels and their
    disk-cache keys (the same for the checkout and the installed package), the base of Ops without a gradient.
"""
import functools

if __package__:
    from . import _fast_math, _hash_draws, _jax_shapes, _ops_support, _row_update
else:
    import _fast_math, _hash_draws, _jax_shapes, _ops_support, _row_update  # noqa: E401

FLOAT = _ops_support.FLOAT
ADAPTS, N_STATES, RowUpdateSpec, n_inputs_states, sparse_row_update = (
    _row_update.ADAPTS, _row_update.N_STATES, _row_update.RowUpdateSpec, _row_update.n_inputs_states,
    _row_update.sparse_row_update)
unique_rows, merge_repeated, merge_repeated_into, plain_row_update = (
    _row_update.unique_rows, _row_update.merge_repeated, _row_update.merge_repeated_into, _row_update.plain_row_update)
SparseRowUpdateGraph, SparseRowUpdate, row_groups, numpy_row_update = (
    _row_update.SparseRowUpdateGraph, _row_update.SparseRowUpdate, _row_update.row_groups, _row_update.numpy_row_update)
PREFETCH_AHEAD, JAX_SCRATCH_ROWS_PER_INDEX, jax_occurrences_by_scratch = (   # (set the limit in _row_update)
    _row_update.PREFETCH_AHEAD, _row_update.JAX_SCRATCH_ROWS_PER_INDEX, _row_update.jax_occurrences_by_scratch)
hash_uniforms, sample_from_cdf, GUIDE_MAX_BITS, cdf_guide, sample_from_guide, guided_search = (
    _hash_draws.hash_uniforms, _hash_draws.sample_from_cdf, _hash_draws.GUIDE_MAX_BITS, _hash_draws.cdf_guide,
    _hash_draws.sample_from_guide, _hash_draws.guided_search)
SampleItems, numba_guided_search, hash_uniform_rows, HashUniforms = (
    _hash_draws.SampleItems, _hash_draws.numba_guided_search, _hash_draws.hash_uniform_rows,
    _hash_draws.HashUniforms)
exp32, sigmoid32, Exp32, Sigmoid32, exp_f32, sigmoid_f32, RowMax, MatMul32, ColumnSum = (
    _fast_math.exp32, _fast_math.sigmoid32, _fast_math.Exp32, _fast_math.Sigmoid32, _fast_math.exp_f32,
    _fast_math.sigmoid_f32, _fast_math.RowMax, _fast_math.MatMul32, _fast_math.ColumnSum)
ShapeScalar, ShapeArange, shape_expression, static_replacement = (
    _jax_shapes.ShapeScalar, _jax_shapes.ShapeArange, _jax_shapes.shape_expression, _jax_shapes.static_replacement)


@functools.cache
def register_jax():
    """Put the JAX implementations of the Ops in place (PyTensor's jax_funcify). Not done at import:
    PyTensor's JAX dispatch imports JAX (~0.5 s, and JAX reads its environment then), which a Numba user
    should not pay. custom_opt.compile_mode('jax') calls it before anything is compiled for JAX."""
    from pytensor.link.jax.dispatch import jax_funcify
    jax_funcify.register(SparseRowUpdate)(_row_update.jax_sparse_row_update)
    jax_funcify.register(SampleItems)(_hash_draws.jax_sample_items)
    jax_funcify.register(HashUniforms)(_hash_draws.jax_hash_uniforms)
    jax_funcify.register(ShapeScalar)(_jax_shapes.jax_shape_scalar)
    jax_funcify.register(ShapeArange)(_jax_shapes.jax_shape_arange)
