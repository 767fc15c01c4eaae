"""Random draws inside the compiled step, from a counter-based hash of (seed, step): identical on numpy,
Numba and JAX, nothing to transfer per step, and reproducible after a resume.

SampleItems: negative samples (the original's GPU sample store, without the store): n item indices from a
popularity CDF. The kernels search from a guide table (cdf_guide) in a fixed few steps instead of a
log2(N)-step loop (a loop nested in the training scan is, on a GPU, kernel launches per iteration); numpy's
searchsorted is the reference. The host store (_sampling.NegativeSampler) uses the same guided search.

HashUniforms: the dropout noise the same way, one row per session slot: (seed, step, stream, slot, column).
"""
import functools

import numpy as np
import pytensor.tensor as pt
from pytensor.graph.basic import Apply

if __package__:
    from . import _ops_support
else:
    import _ops_support

FLOAT = _ops_support.FLOAT
__all__ = ['hash_uniforms', 'sample_from_cdf', 'GUIDE_MAX_BITS', 'cdf_guide', 'sample_from_guide', 'guided_search',
           'SampleItems', 'draw_numbers', 'numba_guided_search', 'hash_uniform_rows', 'HashUniforms']


def _lowbias32(x, xp):
    """C. Wellons' lowbias32 integer hash on a uint32 array (xp: numpy or jax.numpy; wraps mod 2**32)."""
    u = xp.uint32
    x = x ^ (x >> u(16))
    x = x * u(0x7feb352d)
    x = x ^ (x >> u(15))
    x = x * u(0x846ca68b)
    return x ^ (x >> u(16))


def _step_key(seed, step, n, xp):
    """The key of a step: a hash of (step, seed), as n equal uint32 entries (broadcasts in the same dtype)."""
    return _lowbias32(xp.full(n, step, dtype=xp.uint32) * xp.uint32(0x9e3779b9) + xp.uint32(seed), xp)


def _keyed_uniforms(idx, key, xp):
    """float32 uniforms in [0, 1) on a 2**-24 grid: a hash of idx keyed twice by key, so that draws under
    two keys are not shifted copies of each other."""
    h = _lowbias32(_lowbias32(idx ^ key, xp) + key, xp)
    return (h >> xp.uint32(8)).astype(xp.float32) * xp.float32(2.0 ** -24)


def draw_numbers(n, xp=np):
    """The draw numbers of n draws, 0 .. n-1 (uint32); a vector of draw numbers (any integer dtype) as uint32."""
    if isinstance(n, (int, np.integer)):
        return xp.arange(n, dtype=xp.uint32)
    return n.astype(xp.uint32)


def hash_uniforms(seed, step, n, xp=np):
    """Uniforms, a pure function of (seed, step): element j hashes draw number j under the step's key. n: the
    number of draws, or their draw numbers (draw_numbers)."""
    numbers = draw_numbers(n, xp)
    return _keyed_uniforms(numbers, _step_key(seed, step, numbers.shape[0], xp), xp)


def sample_from_cdf(cdf, seed, step, n, xp=np):
    """Item indices i with probability cdf[i] - cdf[i-1]: the first i with cdf[i] >= u (as the original's
    CPU store; cdf is float32 like its GPU store's, last entry 1), one per draw (n: their number, or their
    draw numbers, see hash_uniforms). The definition that SampleItems' kernels reproduce."""
    idx = xp.searchsorted(cdf, hash_uniforms(seed, step, n, xp), side='left')
    return xp.minimum(idx, len(cdf) - 1).astype(xp.int32)


GUIDE_MAX_BITS = 24   # the uniforms are multiples of 2**-24: with at most 2**24 buckets, u * G is exact


def cdf_guide(cdf):
    """(guide, levels) for searching a float32 or float64 CDF (SampleItems; the host store's float64 one).
    guide: G + 1 int32 entries, guide[k] = the first i with cdf[i] >= k / G (at most the last index), for G
    a power of two with at least two buckets per item (at most 2**GUIDE_MAX_BITS). A uniform u in bucket
    k = floor(u * G) (exact: G is a power of two) has its answer in [guide[k], guide[k + 1]]; levels = the
    binary-search steps that the widest such range needs (a few instead of log2(N): 2 instead of 16 on
    Diginetica's support^0.75)."""
    cdf = np.asarray(cdf)
    if cdf.dtype not in (np.float32, np.float64):
        raise TypeError(f'cdf_guide takes a float32 or float64 CDF, not {cdf.dtype}')
    bits = min(max(1, int(np.ceil(np.log2(2 * len(cdf))))), GUIDE_MAX_BITS)
    n_buckets = 2 ** bits
    # exact: the CDF's values and k / 2**bits are exact in float64, as the kernels' comparisons are
    guide = np.searchsorted(cdf.astype(np.float64), np.arange(n_buckets + 1) / n_buckets, side='left')
    guide = np.minimum(guide, len(cdf) - 1).astype(np.int32)
    widest = int(np.diff(guide).max())
    return guide, int(np.ceil(np.log2(widest + 1)))


def sample_from_guide(cdf, guide, levels, seed, step, n, xp=np):
    """sample_from_cdf by the guide (cdf_guide)."""
    return guided_search(cdf, guide, levels, hash_uniforms(seed, step, n, xp), xp)


def guided_search(cdf, guide, levels, u, xp=np):
    """searchsorted(cdf, u) (at most the last index) for float32 u in [0, 1), by the guide: from u's bucket
    start, `levels` steps of halving size with no loop (a static graph XLA can compile into one GPU kernel).
    One carried index: with two (lo and hi), XLA's CPU compile time grew ~5x per level (47 s at 8 levels)."""
    n = cdf.shape[0]
    lo = guide[(u * xp.float32(len(guide) - 1)).astype(xp.int32)]
    for i in reversed(range(levels)):   # the answer is in [lo, lo + 2**(i + 1) - 1]: probe its half's end
        step = 1 << i
        lo = xp.where(cdf[xp.minimum(lo + (step - 1), n - 1)] < u, lo + step, lo)
    return xp.minimum(lo, n - 1).astype(xp.int32)     # above only when u exceeds the last CDF value


class SampleItems(_ops_support.NoGradient):
    """(cdf: float32 vector, guide: int32 vector, seed: uint32 scalar, step: uint32 scalar, numbers: int32
    vector) -> int32 item indices, one per draw number: sample_from_cdf's draw. The number of draws is the
    length of `numbers` (0 .. n-1 for n draws; a shared variable, so a new n_sample is the same graph). guide
    and levels come from cdf_guide(cdf): the kernels search from the guide (perform, the reference, does not
    need it). No gradient (the indices are integers; the scores of the sampled items get theirs through the
    gathers)."""
    __props__ = ('levels',)

    def __init__(self, levels):
        self.levels = int(levels)

    def make_node(self, cdf, guide, seed, step, numbers):
        cdf, guide, seed, step, numbers = (pt.as_tensor_variable(v) for v in (cdf, guide, seed, step, numbers))
        if (cdf.ndim != 1 or cdf.dtype != FLOAT or guide.ndim != 1 or guide.dtype != 'int32' or seed.ndim or step.ndim
                or seed.dtype != 'uint32' or step.dtype != 'uint32' or numbers.ndim != 1 or numbers.dtype != 'int32'):
            raise TypeError('SampleItems takes (cdf: float32 vector, guide: int32 vector, seed: uint32 scalar, '
                            'step: uint32 scalar, numbers: int32 vector)')
        return Apply(self, [cdf, guide, seed, step, numbers], [pt.tensor(dtype='int32', shape=numbers.type.shape)])

    def infer_shape(self, node, shapes):
        return [shapes[4]]

    def perform(self, node, inputs, outputs):
        cdf, _, seed, step, numbers = inputs
        outputs[0][0] = sample_from_cdf(cdf, np.uint32(seed), np.uint32(step), numbers)


@functools.cache
def _numba_lowbias32():
    """_lowbias32 on one uint64 holding a 32-bit value (Numba)."""
    M = np.uint64(0xFFFFFFFF)

    @_ops_support.njit(nogil=True)
    def lowbias32(x):
        x ^= x >> np.uint64(16)
        x = (x * np.uint64(0x7feb352d)) & M
        x ^= x >> np.uint64(15)
        x = (x * np.uint64(0x846ca68b)) & M
        return x ^ (x >> np.uint64(16))
    return lowbias32


@functools.cache
def _numba_bucket_search():
    """search(cdf, guide, u) -> guided_search for one u (Numba): a binary search within the range of u's
    bucket, compared in the dtypes of cdf and u. Shared by SampleItems' kernel and the host store."""

    @_ops_support.njit(nogil=True)
    def search(cdf, guide, u):
        k = int(np.float64(u) * np.float64(len(guide) - 1))     # exact (cdf_guide)
        lo, hi = guide[k], guide[k + 1]
        while lo < hi:
            mid = (lo + hi) // 2
            if cdf[mid] < u:
                lo = mid + 1
            else:
                hi = mid
        return lo
    return search


@functools.cache
def numba_guided_search():
    """search(cdf, guide, u) -> int32 searchsorted(cdf, u) (at most the last index) for every u of a vector
    in [0, 1), by the guide of cdf_guide (Numba, compiled on first use)."""
    search_one = _numba_bucket_search()

    @_ops_support.njit(nogil=True)
    def search(cdf, guide, u):
        out = np.empty(len(u), dtype=np.int32)
        for j in range(len(u)):
            out[j] = search_one(cdf, guide, u[j])
        return out
    return search


@functools.cache
def _numba_sample_kernel():
    """sample_from_guide as a Numba loop: the same hash in uint64 arithmetic masked to 32 bits, then the
    search within the uniform's bucket."""
    M = np.uint64(0xFFFFFFFF)
    lowbias32, search_one = _numba_lowbias32(), _numba_bucket_search()

    @_ops_support.njit(nogil=True)
    def kernel(cdf, guide, seed, step, numbers):
        key = lowbias32((np.uint64(step) * np.uint64(0x9e3779b9) + np.uint64(seed)) & M)
        out = np.empty(len(numbers), dtype=np.int32)
        for j in range(len(numbers)):
            h = lowbias32((lowbias32((np.uint64(numbers[j]) & M) ^ key) + key) & M)
            out[j] = search_one(cdf, guide, np.float32(h >> np.uint64(8)) * np.float32(2.0 ** -24))
        return out
    return kernel


def numba_sample_items(op, node=None, **kwargs):
    kernel = _numba_sample_kernel()

    @_ops_support.njit(pytensor=True)
    def sample_items_(cdf, guide, seed, step, numbers):
        return kernel(cdf, guide, seed.item(), step.item(), numbers)   # PyTensor passes scalars as 0-d arrays
    return sample_items_, _ops_support.source_salt(__name__)


def jax_sample_items(op, node=None, **kwargs):
    import jax.numpy as jnp
    levels = op.levels

    def sample_items_(cdf, guide, seed, step, numbers):
        return sample_from_guide(cdf, guide, levels, seed, step, numbers, jnp)
    return sample_items_


def hash_uniform_rows(seed, step, stream, slots, width, xp=np):
    """(len(slots), width) float32 uniforms in [0, 1): element (i, c) a pure function of (seed, step,
    stream, slots[i], c), so a slot's noise does not depend on which other slots are active."""
    u = xp.uint32
    key = _lowbias32(_step_key(seed, step, slots.shape[0], xp) ^ (u(stream) * u(0x85ebca6b)), xp)
    row_key = _lowbias32(key + slots.astype(xp.uint32) * u(0xc2b2ae35), xp)[:, None]        # (n, 1)
    return _keyed_uniforms(xp.arange(width, dtype=xp.uint32)[None, :], row_key, xp)


class HashUniforms(_ops_support.NoGradient):
    """(seed: uint32 scalar, step: uint32 scalar, slots: int32 vector) -> float32 (len(slots), width)
    uniforms of hash_uniform_rows for noise stream `stream`. No gradient."""
    __props__ = ('width', 'stream')

    def __init__(self, width, stream):
        self.width, self.stream = int(width), int(stream)

    def make_node(self, seed, step, slots):
        seed, step, slots = (pt.as_tensor_variable(v) for v in (seed, step, slots))
        if seed.ndim or step.ndim or seed.dtype != 'uint32' or step.dtype != 'uint32' or slots.ndim != 1 \
                or slots.dtype != 'int32':
            raise TypeError('HashUniforms takes (seed: uint32 scalar, step: uint32 scalar, slots: int32 vector)')
        return Apply(self, [seed, step, slots], [pt.tensor(dtype=FLOAT, shape=(slots.type.shape[0], self.width))])

    def infer_shape(self, node, shapes):
        return [(shapes[2][0], self.width)]

    def perform(self, node, inputs, outputs):
        seed, step, slots = inputs
        outputs[0][0] = hash_uniform_rows(np.uint32(seed), np.uint32(step), self.stream, slots, self.width)


@functools.cache
def _numba_uniform_kernel():
    """hash_uniform_rows as a Numba loop (uint64 arithmetic masked to 32 bits, as _numba_sample_kernel)."""
    M = np.uint64(0xFFFFFFFF)
    lowbias32 = _numba_lowbias32()

    @_ops_support.njit(nogil=True)
    def kernel(seed, step, stream, slots, width):
        key = lowbias32((np.uint64(step) * np.uint64(0x9e3779b9) + np.uint64(seed)) & M)
        key = lowbias32(key ^ ((np.uint64(stream) * np.uint64(0x85ebca6b)) & M))
        out = np.empty((len(slots), width), dtype=np.float32)
        for i in range(len(slots)):
            rk = lowbias32((key + np.uint64(slots[i]) * np.uint64(0xc2b2ae35)) & M)
            for c in range(width):
                h = lowbias32((lowbias32(np.uint64(c) ^ rk) + rk) & M)
                out[i, c] = np.float32(h >> np.uint64(8)) * np.float32(2.0 ** -24)
        return out
    return kernel


def numba_hash_uniforms(op, node=None, **kwargs):
    kernel, width, stream = _numba_uniform_kernel(), op.width, op.stream

    @_ops_support.njit(pytensor=True)
    def hash_uniforms_(seed, step, slots):
        return kernel(seed.item(), step.item(), stream, slots, width)
    return hash_uniforms_, _ops_support.source_salt(__name__)


def jax_hash_uniforms(op, node=None, **kwargs):
    import jax.numpy as jnp
    width, stream = op.width, op.stream

    def hash_uniforms_(seed, step, slots):
        return hash_uniform_rows(seed, step, stream, slots, width, jnp)
    return hash_uniforms_


_ops_support.register_numba(SampleItems, numba_sample_items)
_ops_support.register_numba(HashUniforms, numba_hash_uniforms)
