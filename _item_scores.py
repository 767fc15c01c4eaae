"""The top-k of a live session's scores over the whole catalogue without activating or searching all of them
(recommend.py's fast path on the CPU backends; the prediction graph's step stays the reference).

A profile of `gru4rec serve` (43k items, 100 units, 64 clicks per step, one core) put most of a step in the
prediction graph's output layer: one 64 x 100 x 43k GEMM for which OpenBLAS repacks the whole 17 MB item
matrix on every call (~10 ms), and a softmax that calls scalar expf 2.75M times (~7 ms). Here instead:

* ItemBlocks keeps the item matrix once as blocks of BLOCK items (n_blocks x (units + 1) x BLOCK; the output
  bias is an extra input row, padding items score -inf). A batched product over the blocks runs OpenBLAS's
  small-matrix kernels, which do not repack (~6 ms). The raw scores stay in that layout (n_blocks x M x BLOCK).
* One Numba pass over them gives every block's maximum and, for softmax, each row's maximum and sum of
  exp(score - maximum) (vectorised exp32 of _fast_math; the normaliser of the returned scores).
* The final activation is monotone (softmax, linear, tanh, relu, elu/leaky/selu with non-negative
  parameters), so the top-k items are among the top raw scores: the k-th largest block maximum bounds the
  k-th largest score from below, and only the blocks reaching it are searched (select_blocked). The few
  candidates are activated and ranked by (activated score desc, item row), as recommend.top_k ranks.
* Exactness: distinct raw scores can round to one activated value (softmax underflow, tanh saturation), and
  then an item outside the candidates could tie with the k-th. best_k says, per row, whether the largest
  raw score left out activates strictly below the k-th activated score; where not, the caller ranks that
  row by the reference path instead.
"""
import functools

import numpy as np

if __package__:
    from . import _fast_math, _params
else:
    import _fast_math, _params  # noqa: E401

__all__ = ['BLOCK', 'ItemBlocks', 'RawScores', 'monotone_activation', 'activate', 'select_blocked', 'best_k']

BLOCK = 128     # items per block: the fastest of 64-192 for 8-64 rows x 100 units here (small-matrix sgemm)
_F = np.float32


def monotone_activation(final_act):
    """(kind, float32 args) of a prediction-mode final activation that never reverses the order of two scores,
    else None. softmax_logit predicts with softmax (_graph.prediction_step)."""
    kind, args = _params.activation_spec(final_act, final=True)
    kind = 'softmax' if kind == 'softmax_logit' else kind
    if not all(a >= 0 for a in args):    # (names give no negative numbers, but 'elu-nan' parses)
        return None
    return kind, args


def activate(kind, args, raw, row_max=None, row_sum=None):
    """The final activation of raw scores (float32 array), as _graph computes it up to float rounding; softmax
    needs each entry's row maximum and sum of exp(score - maximum)."""
    raw = np.asarray(raw, _F)
    if kind == 'softmax':
        with np.errstate(under='ignore'):
            return (np.exp(raw.astype(np.float64) - row_max) / row_sum).astype(_F)
    if kind == 'linear':
        return raw
    if kind == 'relu':
        return np.maximum(raw, _F(0))
    if kind == 'tanh':
        return np.tanh(raw)
    if kind == 'leaky':
        return np.maximum(raw, _F(0)) + args[0] * np.minimum(raw, _F(0))
    with np.errstate(over='ignore'):
        elu = np.where(raw >= 0, raw, args[-1] * np.exp(np.minimum(raw, _F(0))) - args[-1]).astype(_F)
    return elu if kind == 'elu' else (args[0] * elu).astype(_F)     # selu-L-A: L * elu-A


class RawScores:
    """Raw scores of M states in blocks (`blocks`: n_blocks x M x BLOCK), each block's maximum (`block_max`:
    n_blocks x M) and, for softmax, each row's maximum and sum of exp(score - maximum) (float64)."""

    def __init__(self, blocks, block_max, row_max, row_sum, n_items):
        self.blocks, self.block_max, self.row_max, self.row_sum, self.n_items = blocks, block_max, row_max, row_sum, n_items

    def rows(self, ns):
        """Raw scores of rows ns as a len(ns) x n_items matrix (a copy)."""
        nb, _, b = self.blocks.shape
        return self.blocks[:, ns].transpose(1, 0, 2).reshape(len(ns), nb * b)[:, :self.n_items]


class ItemBlocks:
    """The output layer (item matrix Wy: n_items x units, bias By) laid out for ItemBlocks.scores (a copy,
    ~(units + 1) x n_items float32, kept for the adapter's lifetime)."""

    def __init__(self, Wy, By, block=BLOCK):
        n, u = Wy.shape
        nb = -(-n // block)
        w = np.zeros((nb * block, u + 1), _F)
        w[:n, :u] = Wy
        w[:n, u] = np.asarray(By, _F).ravel()
        w[n:, u] = -np.inf     # padding items: 0 * h + (-inf) * 1
        self.w = np.ascontiguousarray(w.reshape(nb, block, u + 1).transpose(0, 2, 1))
        self.n_items, self.units, self.block = n, u, block

    def scores(self, h, softmax):
        """RawScores of the states h (M x units)."""
        m = h.shape[0]
        hb = np.empty((m, self.units + 1), _F)
        hb[:, :self.units] = h
        hb[:, self.units] = 1
        blocks = np.matmul(hb, self.w)     # one small sgemm per block
        block_max = np.empty(blocks.shape[:2], _F)
        row_max = np.full(m, -np.inf)
        row_sum = np.zeros(m)
        _block_stats()(blocks, block_max, row_max, row_sum, softmax)
        return RawScores(blocks, block_max, row_max if softmax else None, row_sum if softmax else None, self.n_items)


@functools.cache
def _block_stats():
    """Numba kernel: block maxima; with softmax, each row's running maximum and sum of exp(score - maximum),
    rescaled when the maximum grows (one pass). The exp stays vectorised only outside a reduction, so it
    fills a buffer that a fastmath function sums (fastmath would also break exp32's reduction steps)."""
    import math

    import numba
    exp32 = _fast_math.numba_exp32_inline()

    @numba.njit(nogil=True, fastmath=True)
    def fast_max(x):
        mx = x[0]
        for j in range(1, x.size):
            mx = max(mx, x[j])
        return mx

    @numba.njit(nogil=True, fastmath=True)
    def fast_sum(x):
        s = _F(0)
        for j in range(x.size):
            s += x[j]
        return s

    @numba.njit(nogil=True, fastmath=False)
    def block_stats(blocks, block_max, row_max, row_sum, softmax):
        nb, m, b = blocks.shape
        buf = np.empty(b, _F)
        for i in range(nb):
            for r in range(m):
                x = blocks[i, r]
                bmx = fast_max(x)
                block_max[i, r] = bmx
                if not softmax:
                    continue
                if bmx > row_max[r]:
                    row_sum[r] *= math.exp(row_max[r] - bmx)
                    row_max[r] = bmx
                if row_max[r] == -np.inf:
                    continue
                mx = _F(row_max[r])
                for j in range(b):
                    buf[j] = exp32(x[j] - mx)
                row_sum[r] += fast_sum(buf)
    return block_stats


def select_blocked(raw, ns, kk, excluded_rows=None, excluded_items=None):
    """Candidates for the top-kk of rows ns: every score >= the kk-th largest block maximum of its row (the top
    kk block maxima are kk scores, so the kk-th largest score is not below it). Excluded (row, item) pairs (rows
    counted within ns) are left out (set to -inf in raw while it searches). Returns (row within ns, item row,
    raw score) of the finite candidates and each row's bound (every score left out is below it; -inf: none)."""
    blocks, bm = raw.blocks, raw.block_max
    b = blocks.shape[2]
    excluded = excluded_rows is not None and len(excluded_rows)
    if excluded:
        eb, ej, em = excluded_items // b, excluded_items % b, ns[excluded_rows]
        kept = blocks[eb, em, ej], bm[eb, em]
        blocks[eb, em, ej] = -np.inf
        bm[eb, em] = blocks[eb, em].max(axis=1)
    sub = bm[:, ns]
    nb = sub.shape[0]
    bound = np.partition(sub, nb - kk, axis=0)[nb - kk]
    cb, cr = np.nonzero(sub >= bound)
    vals = blocks[cb, ns[cr]]                      # the blocks that can hold candidates: len(cb) x BLOCK
    i, j = np.nonzero((vals >= bound[cr, None]) & (vals > -np.inf))
    if excluded:    # (raw stays valid for other calls; in reverse order, as pairs may repeat)
        blocks[eb[::-1], em[::-1], ej[::-1]] = kept[0][::-1]
        bm[eb[::-1], em[::-1]] = kept[1][::-1]
    return cr[i], cb[i] * b + j, vals[i, j], bound


def best_k(r, items, vals, bound, m, k, act):
    """Top-k of m rows from candidates (row, item, raw score) by (activated score desc, item row): (items m x k,
    activated scores m x k, counts, exact). act(vals, rows): the activation. exact[row]: no score left out
    (all below bound[row]; bound -inf: none) can reach the row's k-th activated score."""
    a = act(vals, r)
    order = np.lexsort((items, -a, r))
    r, items, a = r[order], items[order], a[order]
    rank = np.arange(len(r)) - np.searchsorted(r, np.arange(m))[r]
    keep = rank < k
    top_items = np.zeros((m, k), np.int64)
    top = np.full((m, k), -np.inf, _F)
    top_items[r[keep], rank[keep]] = items[keep]
    top[r[keep], rank[keep]] = a[keep]
    counts = np.bincount(r[keep], minlength=m)
    exact = np.ones(m, bool)
    check = np.flatnonzero(bound > -np.inf)
    if len(check):
        exact[check] = (counts[check] == k) & (act(bound[check], check) < top[check, k - 1])
    return top_items, top, counts, exact
