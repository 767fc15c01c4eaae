"""Custom PyTensor Ops of GRU4Rec, each declared once with its implementations beside it.

SparseRowUpdate: the optimiser step of an item-indexed weight (Wy, By, E, Wx0) and its optimiser state
from per-occurrence gradient rows g (one row per occurrence of an item in idx), fused into one pass over
the touched rows. Semantics (the original's, for repeated items in one minibatch; see the README):
  * the weight gets the sum of the per-occurrence steps;
  * the Adagrad accumulator and the legacy Adam step count add up every occurrence (A += sum of g_k**2,
    t += number of occurrences), while each occurrence's own scaling reads the rows from before the step
    (A_old + g_k**2, t_old + 1). The original's source *sets* these rows to "old rows + something"; Theano's
    standard rewrite runs that as an increment, so this is what the original computes;
  * the momentum velocity keeps the value of the last occurrence (a non-additive set);
  * states the original decays and accumulates (RMSProp, Adadelta, legacy Adam moments) are decayed once
    per distinct row and accumulate every occurrence;
  * textbook Adam ('adam') sums the gradients of repeated rows and steps each distinct row once.
Every read of a weight or state sees its value from before the step, and sums run in occurrence order,
so the result is deterministic on every backend.

Implementations:
  * SparseRowUpdateGraph -- the plain-PyTensor definition (a SymbolicOp: an OpFromGraph with props).
    The model code uses it; every backend can run it, and it is the symbolic reference.
  * SparseRowUpdate.perform -- numpy, row group by row group (the reference of the kernels);
  * numba (CPU) and JAX (GPU) implementations registered below.
custom_opt.py replaces SparseRowUpdateGraph by SparseRowUpdate, and makes it in-place where it is safe.

SampleItems: negative samples drawn inside the compiled step (the original's GPU sample store, without
the store): n item indices from a popularity CDF, with uniforms from a counter-based hash of (seed, step),
so a step's draw is a pure function of its number -- identical on numpy, Numba and JAX, nothing to
transfer per step, and reproducible after a resume. The kernels search from a guide table (cdf_guide) in
a fixed few steps instead of a log2(N)-step loop (a loop nested in the training scan is, on a GPU, kernel
launches per iteration); numpy's searchsorted is the reference.

HashUniforms: the dropout noise the same way, one row per session slot: (seed, step, stream, slot, column).
"""
import functools
from collections import namedtuple

import numpy as np
import pytensor.scalar as ps
import pytensor.tensor as pt
from pytensor.compile.builders import SymbolicOp
from pytensor.graph.basic import Apply
from pytensor.graph.op import Op
from pytensor.graph.utils import MethodNotDefined
from pytensor.scalar.math import Sigmoid

FLOAT = 'float32'
ADAPTS = (None, 'adagrad', 'rmsprop', 'adadelta', 'adam', 'adam_legacy')
# number of per-row optimiser states of each method (the momentum velocity comes after them)
N_STATES = {None: 0, 'adagrad': 1, 'rmsprop': 1, 'adadelta': 2, 'adam': 3, 'adam_legacy': 3}
# adapt, lr, mu (momentum), lmbd (L2), eps, rho (rmsprop/adadelta decay; adam: beta2), b1 (adam beta1)
RowUpdateSpec = namedtuple('RowUpdateSpec', 'adapt lr mu lmbd eps rho b1')


def n_inputs_states(spec):
    return N_STATES[spec.adapt] + (1 if spec.mu > 0 else 0)


def sparse_row_update(spec, p, states, idx, g):
    """New values of (p, *states) after the step; states = the adapt states, then the velocity if mu > 0.
    Returns a list of symbolic variables (plain PyTensor until custom_opt fuses them)."""
    if spec.adapt not in ADAPTS:
        raise ValueError(f'unknown adapt {spec.adapt!r}')
    if len(states) != n_inputs_states(spec):
        raise ValueError(f'{spec.adapt} with momentum={spec.mu} takes {n_inputs_states(spec)} state(s), got {len(states)}')
    return SparseRowUpdateGraph(**spec._asdict())(p, *states, idx, g, return_list=True)


# --- the plain-PyTensor definition -----------------------------------------------------------------

def _decay_then_accumulate(acc, idx, rho, inc):
    """Rows idx of acc scaled once by rho, then inc accumulated per occurrence."""
    return pt.inc_subtensor(pt.set_subtensor(acc[idx], rho * acc[idx])[idx], inc)


def _f(x):
    return np.float32(x)


def unique_rows(idx):
    """(sorted distinct values of idx, position of each idx entry among them), as pt.unique(idx,
    return_inverse=True) but from a sort and a cumulative sum, which Numba compiles (its unique with
    return_inverse runs in object mode, several times slower than the whole training step)."""
    order = pt.argsort(idx)
    srt = idx[order]
    new = pt.concatenate([pt.ones((1,), dtype='int64'), pt.neq(srt[1:], srt[:-1]).astype('int64')])
    group = pt.cumsum(new) - 1                       # group of each sorted entry
    inverse = pt.zeros_like(idx).astype('int64')
    inverse = pt.set_subtensor(inverse[order], group)
    return srt[pt.nonzero(new)[0]], inverse


def merge_repeated(idx, g):
    """Distinct rows of idx and the gradient rows g summed per distinct row."""
    uniq, inv = unique_rows(idx)
    return uniq, pt.inc_subtensor(pt.zeros((uniq.shape[0], g.shape[1]), dtype=g.dtype)[inv], g)


def merge_repeated_into(idx, g, sink):
    """merge_repeated with static shapes (JAX, fixed-width steps): as many rows as idx, in sorted order; the
    first occurrence of each distinct row carries the summed gradient, the other occurrences are sent to
    row `sink` (a padding row that nothing reads) with zero gradient. The sums equal merge_repeated's up to
    the order of addition (PyTensor has no stable argsort that both Numba and JAX honour)."""
    order = pt.argsort(idx)
    srt = idx[order]
    first = pt.concatenate([pt.ones((1,), dtype='bool'), pt.neq(srt[1:], srt[:-1])])
    group = pt.cumsum(first.astype('int64')) - 1     # distinct-row number of each sorted entry
    sums = pt.inc_subtensor(pt.zeros_like(g)[group], g[order])
    return pt.switch(first, srt, np.asarray(sink, dtype=idx.dtype)), pt.switch(first[:, None], sums[group], 0)


def plain_row_update(spec, p, states, idx, g):
    """The step as a PyTensor graph of gathers and (inc_|set_)subtensors; see the module docstring."""
    lr, mu, lmbd, eps, rho, b1 = map(_f, (spec.lr, spec.mu, spec.lmbd, spec.eps, spec.rho, spec.b1))
    adapt, new_states = spec.adapt, []
    if adapt == 'adam':  # one step per distinct row with the summed gradient
        idx, g = merge_repeated(idx, g)
    rows = p[idx]
    if adapt == 'adagrad':   # each occurrence scaled by A_old + g_k**2; A accumulates them all
        g2 = g ** 2
        new_states.append(pt.inc_subtensor(states[0][idx], g2))
        ghat = g / pt.sqrt(states[0][idx] + g2 + eps)
    elif adapt in ('rmsprop', 'adadelta', 'adam_legacy'):
        acc_new = _decay_then_accumulate(states[0], idx, rho, (1 - rho) * g ** 2)
        new_states.append(acc_new)
        if adapt == 'rmsprop':
            ghat = g / pt.sqrt(acc_new[idx] + eps)
        elif adapt == 'adadelta':
            upd = states[1]
            c = (upd[idx] + eps) / (acc_new[idx] + eps)
            new_states.append(_decay_then_accumulate(upd, idx, rho, (1 - rho) * c * g ** 2))
            ghat = g * pt.sqrt(c)
        else:  # the original's Adam: the first moment accumulates g**2, both corrected with beta1
            m, t = states[1], states[2]
            m_new = _decay_then_accumulate(m, idx, b1, (1 - b1) * g ** 2)
            t_rows = t[idx] + 1   # this step's count from the old one; the count adds every occurrence
            new_states += [m_new, pt.inc_subtensor(t[idx], pt.ones_like(g))]
            corr = 1 - b1 ** t_rows
            ghat = (m_new[idx] / corr) / (pt.sqrt(acc_new[idx] / corr) + eps)
    elif adapt == 'adam':
        v, m, t = states[:3]
        t_rows, m_rows = t[idx] + 1, b1 * m[idx] + (1 - b1) * g
        v_rows = rho * v[idx] + (1 - rho) * g ** 2
        new_states += [pt.set_subtensor(v[idx], v_rows), pt.set_subtensor(m[idx], m_rows),
                       pt.set_subtensor(t[idx], t_rows)]
        ghat = (m_rows / (1 - b1 ** t_rows)) / (pt.sqrt(v_rows / (1 - rho ** t_rows)) + eps)
    else:
        ghat = g
    delta = lr * (ghat + lmbd * rows) if lmbd > 0 else lr * ghat
    if mu > 0:
        v = states[-1]
        v_occ = mu * v[idx] - delta
        new_states.append(pt.set_subtensor(v[idx], v_occ))
        return [pt.inc_subtensor(p[idx], v_occ)] + new_states
    return [pt.inc_subtensor(p[idx], -delta)] + new_states


class _SpecProps:
    """The RowUpdateSpec of an Op whose props start with its fields."""

    @property
    def spec(self):
        return RowUpdateSpec(*(getattr(self, k) for k in RowUpdateSpec._fields))


class SparseRowUpdateGraph(_SpecProps, SymbolicOp):
    """(p, *states, idx, g) -> (new p, *new states) as a plain graph; custom_opt swaps in SparseRowUpdate."""
    __props__ = RowUpdateSpec._fields

    def build_inner_graph(self, p, *rest):
        *states, idx, g = rest
        return plain_row_update(self.spec, p, list(states), idx, g)


# --- the fused Op ----------------------------------------------------------------------------------

class SparseRowUpdate(_SpecProps, Op):
    """Fused SparseRowUpdateGraph. inplace=True overwrites p and the states (set by custom_opt)."""
    __props__ = RowUpdateSpec._fields + ('inplace',)

    def __init__(self, adapt, lr, mu, lmbd, eps, rho, b1, inplace=False):
        self.adapt, self.lr, self.mu, self.lmbd, self.eps, self.rho, self.b1 = adapt, lr, mu, lmbd, eps, rho, b1
        self.inplace = inplace
        self.n_out = 1 + n_inputs_states(self.spec)
        if inplace:
            self.destroy_map = {i: [i] for i in range(self.n_out)}

    def make_node(self, p, *rest):
        *states, idx, g = rest
        p, states = pt.as_tensor_variable(p), [pt.as_tensor_variable(s) for s in states]
        idx, g = pt.as_tensor_variable(idx), pt.as_tensor_variable(g)
        if len(states) + 1 != self.n_out or idx.ndim != 1 or not idx.dtype.startswith(('int', 'uint')) or g.ndim != 2:
            raise TypeError('SparseRowUpdate takes (p, *states, idx: int vector, g: matrix)')
        return Apply(self, [p, *states, idx, g], [v.type() for v in [p, *states]])

    def infer_shape(self, node, shapes):
        return shapes[:self.n_out]

    def grad(self, inputs, output_grads):
        raise NotImplementedError('SparseRowUpdate is an optimiser step; it has no gradient')

    def perform(self, node, inputs, outputs):
        arrays, idx, g = inputs[:self.n_out], inputs[-2], inputs[-1]
        if not self.inplace:
            arrays = [a.copy() for a in arrays]
        if len(idx) and (idx.min() < 0 or idx.max() >= arrays[0].shape[0]):
            raise IndexError('SparseRowUpdate: index out of bounds')
        numpy_row_update(self.spec, arrays, idx, g)
        for out, a in zip(outputs, arrays):
            out[0] = a


def row_groups(idx):
    """Occurrences of each distinct index, in order of first occurrence: a list of position arrays."""
    order = np.argsort(idx, kind='stable')
    bounds = np.flatnonzero(np.diff(idx[order])) + 1
    groups = np.split(order, bounds) if len(idx) else []
    return sorted(groups, key=lambda gr: gr[0])


def numpy_row_update(spec, arrays, idx, g):
    """In place on arrays = [p, *states]: the step, one distinct row at a time (the kernels' reference)."""
    f = np.float32
    lr, mu, lmbd, eps, rho, b1 = map(f, (spec.lr, spec.mu, spec.lmbd, spec.eps, spec.rho, spec.b1))
    p, states = arrays[0], arrays[1:]
    vel = states[-1] if mu > 0 else None
    for occ in row_groups(np.asarray(idx)):
        r = idx[occ[0]]
        gs = g[occ].astype(f)                               # occurrences x d
        p_old = p[r].copy()
        if spec.adapt == 'adam':
            gs = gs.sum(axis=0, keepdims=True) if len(gs) > 1 else gs
        if spec.adapt == 'adagrad':
            acc = states[0][r]
            for inc in gs ** 2:
                acc = acc + inc
            ghat = gs / np.sqrt(states[0][r] + gs ** 2 + eps)
            states[0][r] = acc
        elif spec.adapt in ('rmsprop', 'adadelta', 'adam_legacy'):
            acc = rho * states[0][r]
            for inc in (1 - rho) * gs ** 2:
                acc = acc + inc
            if spec.adapt == 'rmsprop':
                ghat = gs / np.sqrt(acc + eps)
            elif spec.adapt == 'adadelta':
                c = (states[1][r] + eps) / (acc + eps)
                upd = rho * states[1][r]
                for inc in (1 - rho) * c * gs ** 2:
                    upd = upd + inc
                states[1][r] = upd
                ghat = gs * np.sqrt(c)
            else:
                m = b1 * states[1][r]
                for inc in (1 - b1) * gs ** 2:
                    m = m + inc
                t = states[2][r] + 1
                states[1][r], states[2][r] = m, states[2][r] + f(len(occ))
                corr = 1 - b1 ** t
                ghat = (m / corr) / (np.sqrt(acc / corr) + eps)
                ghat = np.broadcast_to(ghat, gs.shape)
            states[0][r] = acc
        elif spec.adapt == 'adam':
            t = states[2][r] + 1
            m = b1 * states[1][r] + (1 - b1) * gs[0]
            v = rho * states[0][r] + (1 - rho) * gs[0] ** 2
            states[0][r], states[1][r], states[2][r] = v, m, t
            ghat = ((m / (1 - b1 ** t)) / (np.sqrt(v / (1 - rho ** t)) + eps))[None]
        else:
            ghat = gs
        delta = lr * (ghat + lmbd * p_old) if lmbd > 0 else lr * ghat
        new = p_old
        if mu > 0:
            v_occ = mu * vel[r] - delta
            vel[r] = v_occ[-1]
            for step in v_occ:
                new = new + step
        else:
            for step in delta:
                new = new - step
        p[r] = new


# --- Numba (CPU) ------------------------------------------------------------------------------------
# The kernels in this file use no Numba disk cache (cache=True): Numba's cache entries name the importing
# module, a checkout's gpu_ops can be imported under two names (top level and as a package), and a process
# that imported it the other way then fails to load the entry. PyTensor caches the compiled graphs that
# call them, under keys salted with the module's name for the same reason (_source_salt).

@functools.cache
def _numba_prefetch():
    """prefetch(arr, i, j): a hint (LLVM's prefetch intrinsic: read, keep in all cache levels) to load the
    cache line of arr[i, j] of a 2-d array. The update visits rows of several item matrices in an order no
    hardware prefetcher can guess; each row's DRAM latency (~0.15 us) otherwise dominates the step."""
    from llvmlite import ir
    from numba import types
    from numba.core import cgutils
    from numba.extending import intrinsic

    @intrinsic
    def prefetch(typingctx, arr, i, j):
        if not (isinstance(arr, types.Array) and arr.ndim == 2 and isinstance(i, types.Integer)
                and isinstance(j, types.Integer)):
            return None

        def codegen(context, builder, signature, args):
            aryty, ity, jty = signature.args
            ary = context.make_array(aryty)(context, builder, args[0])
            inds = [context.cast(builder, v, t, types.intp) for v, t in ((args[1], ity), (args[2], jty))]
            ptr = cgutils.get_item_pointer(context, builder, aryty, ary, inds, wraparound=False)
            i32 = ir.IntType(32)
            fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(ir.VoidType(), [ptr.type, i32, i32, i32]),
                                                'llvm.prefetch.p0')
            builder.call(fn, [ptr, i32(0), i32(3), i32(1)])   # read, high locality, data cache
            return context.get_dummy_value()
        return types.void(arr, i, j), codegen
    return prefetch


PREFETCH_AHEAD = 4   # rows: measured best among 2-16 for 2,112 rows of 100 floats over 34k items


def _numba_kernel(spec):
    """An njit function (p, s0, s1, s2, vel, idx, g) -> None updating in place; unused states are 1 x d
    placeholders."""
    from pytensor.link.numba.dispatch.basic import numba_njit
    f = np.float32
    lr, mu, lmbd, eps, rho, b1 = map(f, (spec.lr, spec.mu, spec.lmbd, spec.eps, spec.rho, spec.b1))
    one = f(1)
    ADAGRAD, RMSPROP, ADADELTA, ADAM, LEGACY = (spec.adapt == a for a in ADAPTS[1:])
    DECAY = RMSPROP or ADADELTA or LEGACY
    MOMENTUM, L2 = spec.mu > 0, spec.lmbd > 0
    S0, S1, S2 = (N_STATES[spec.adapt] > i for i in range(3))

    prefetch, ahead = _numba_prefetch(), PREFETCH_AHEAD
    line = 64 // np.dtype(FLOAT).itemsize

    @numba_njit(boundscheck=False, error_model='numpy')
    def kernel(p, s0, s1, s2, vel, idx, g):
        K, N, d = idx.shape[0], p.shape[0], p.shape[1]
        # chain the occurrences of each row: nxt[j] = next occurrence of idx[j] (-1: none), head[j] = first
        size = 16
        while size < 2 * K:
            size *= 2
        keys = np.full(size, -1, np.int64)
        tail = np.empty(size, np.int64)
        nxt = np.full(K, -1, np.int64)
        head = np.zeros(K, np.bool_)
        for j in range(K):
            r = np.int64(idx[j])
            if r < 0 or r >= N:
                raise IndexError('SparseRowUpdate: index out of bounds')
            h = (r * 2654435761) & (size - 1)
            while keys[h] != -1 and keys[h] != r:
                h = (h + 1) & (size - 1)
            if keys[h] == -1:
                keys[h], tail[h], head[j] = r, j, True
            else:
                nxt[tail[h]] = j
                tail[h] = j
        p_old = np.empty(d, np.float32)
        p_new = np.empty(d, np.float32)
        a_new = np.empty(d, np.float32)   # state row after the step (accumulators, last occurrence)
        b_new = np.empty(d, np.float32)
        v_last = np.empty(d, np.float32)
        gsum = np.empty(d, np.float32)
        for j0 in range(K):
            if j0 + ahead < K:   # the rows `ahead` occurrences on: their loads overlap this row's work
                rn = idx[j0 + ahead]
                for k in range(0, d, line):
                    prefetch(p, rn, k)
                    if S0:
                        prefetch(s0, rn, k)
                    if S1:
                        prefetch(s1, rn, k)
                    if S2:
                        prefetch(s2, rn, k)
                    if MOMENTUM:
                        prefetch(vel, rn, k)
            if not head[j0]:
                continue
            r = idx[j0]
            if nxt[j0] == -1:   # the common case, a row that occurs once: one in-place pass
                pr, gr = p[r], g[j0]
                s0r, s1r, s2r = s0[r if S0 else 0], s1[r if S1 else 0], s2[r if S2 else 0]
                vr = vel[r if MOMENTUM else 0]
                for k in range(d):
                    gk = gr[k]
                    if ADAGRAD:
                        a = s0r[k] + gk * gk
                        s0r[k] = a
                        ghat = gk / np.sqrt(a + eps)
                    elif RMSPROP:
                        a = rho * s0r[k] + (one - rho) * (gk * gk)
                        s0r[k] = a
                        ghat = gk / np.sqrt(a + eps)
                    elif ADADELTA:
                        a = rho * s0r[k] + (one - rho) * (gk * gk)
                        c = (s1r[k] + eps) / (a + eps)
                        s0r[k] = a
                        s1r[k] = rho * s1r[k] + (one - rho) * c * (gk * gk)
                        ghat = gk * np.sqrt(c)
                    elif LEGACY:
                        a = rho * s0r[k] + (one - rho) * (gk * gk)
                        m = b1 * s1r[k] + (one - b1) * (gk * gk)
                        t = s2r[k] + one
                        s0r[k], s1r[k], s2r[k] = a, m, t
                        corr = one - b1 ** t
                        ghat = (m / corr) / (np.sqrt(a / corr) + eps)
                    elif ADAM:
                        t = s2r[k] + one
                        m = b1 * s1r[k] + (one - b1) * gk
                        v = rho * s0r[k] + (one - rho) * (gk * gk)
                        s0r[k], s1r[k], s2r[k] = v, m, t
                        ghat = (m / (one - b1 ** t)) / (np.sqrt(v / (one - rho ** t)) + eps)
                    else:
                        ghat = gk
                    delta = lr * (ghat + lmbd * pr[k]) if L2 else lr * ghat
                    if MOMENTUM:
                        v_occ = mu * vr[k] - delta
                        vr[k] = v_occ
                        pr[k] += v_occ
                    else:
                        pr[k] -= delta
                continue
            # a repeated row: every occurrence reads the old rows, the row is written once at the end
            for k in range(d):
                p_old[k] = p[r, k]
                p_new[k] = p[r, k]
            if DECAY:   # decayed once, then accumulated per occurrence
                for k in range(d):
                    a_new[k] = rho * s0[r, k]
                    if LEGACY:
                        b_new[k] = b1 * s1[r, k]
                j = j0
                while j != -1:
                    for k in range(d):
                        g2 = g[j, k] * g[j, k]
                        a_new[k] += (one - rho) * g2
                        if LEGACY:
                            b_new[k] += (one - b1) * g2
                    j = nxt[j]
                if ADADELTA:
                    for k in range(d):
                        b_new[k] = rho * s1[r, k]
            if ADAGRAD:   # accumulated per occurrence (each occurrence's scaling reads the old row)
                for k in range(d):
                    a_new[k] = s0[r, k]
            if ADAM:    # one step per distinct row with the summed gradient
                for k in range(d):
                    gsum[k] = g[j0, k]
                j = nxt[j0]
                while j != -1:
                    for k in range(d):
                        gsum[k] += g[j, k]
                    j = nxt[j]
            j, count = j0, f(0)
            while j != -1:
                for k in range(d):
                    gj = gsum[k] if ADAM else g[j, k]
                    if ADAGRAD:
                        g2 = gj * gj
                        a_new[k] += g2
                        ghat = gj / np.sqrt(s0[r, k] + g2 + eps)
                    elif RMSPROP:
                        ghat = gj / np.sqrt(a_new[k] + eps)
                    elif ADADELTA:
                        c = (s1[r, k] + eps) / (a_new[k] + eps)
                        b_new[k] += (one - rho) * c * (gj * gj)
                        ghat = gj * np.sqrt(c)
                    elif LEGACY:
                        corr = one - b1 ** (s2[r, k] + one)
                        ghat = (b_new[k] / corr) / (np.sqrt(a_new[k] / corr) + eps)
                    elif ADAM:
                        t = s2[r, k] + one
                        m = b1 * s1[r, k] + (one - b1) * gj
                        v = rho * s0[r, k] + (one - rho) * (gj * gj)
                        a_new[k], b_new[k] = v, m
                        ghat = (m / (one - b1 ** t)) / (np.sqrt(v / (one - rho ** t)) + eps)
                    else:
                        ghat = gj
                    delta = lr * (ghat + lmbd * p_old[k]) if L2 else lr * ghat
                    if MOMENTUM:
                        v_occ = mu * vel[r, k] - delta
                        v_last[k] = v_occ
                        p_new[k] += v_occ
                    else:
                        p_new[k] -= delta
                count += one
                j = -1 if ADAM else nxt[j]
            for k in range(d):
                p[r, k] = p_new[k]
                if ADAGRAD or DECAY:
                    s0[r, k] = a_new[k]
                if LEGACY or ADADELTA:
                    s1[r, k] = b_new[k]
                if LEGACY:   # the count adds every occurrence
                    s2[r, k] += count
                if ADAM:
                    s0[r, k], s1[r, k] = a_new[k], b_new[k]
                    s2[r, k] += one
                if MOMENTUM:
                    vel[r, k] = v_last[k]

    return kernel


def _source_salt():
    """An integer that changes whenever this file changes. PyTensor caches compiled Numba code on disk under a
    key made of the Op class and its props only; the salt keeps a cached kernel from outliving its source.
    It also differs by the name this module was imported under: the cached code refers to the module by
    name, and a process that imported it the other way (top level vs package) could not load it."""
    import hashlib
    with open(__file__, 'rb') as f:
        return int(hashlib.sha256(f.read() + __name__.encode()).hexdigest()[:12], 16)


def _numba_funcify_sparse_row_update(op, node=None, **kwargs):
    """(numba function, cache-key salt) for a SparseRowUpdate node."""
    from pytensor.link.numba.dispatch.basic import numba_njit
    from pytensor.link.utils import compile_function_src
    kernel = _numba_kernel(op.spec)
    n_states, momentum = N_STATES[op.adapt], op.mu > 0
    names = ['p'] + [f's{i}' for i in range(n_states)] + (['vel'] if momentum else [])
    args = ['p'] + [f's{i}' if i < n_states else 'empty' for i in range(3)] + ['vel' if momentum else 'empty']
    lines = [f'def sparse_row_update({", ".join(names)}, idx, g):']
    if not op.inplace:
        lines += [f'    {n} = {n}.copy()' for n in names]
    # PyTensor types arrays with 'any' layout; as C-contiguous the row loops vectorise. ascontiguousarray is
    # a no-copy retyping for arrays that are contiguous (the shared weights always are); the Op returns
    # these arrays, so a copy made for a strided input would still be the correct output.
    lines += [f'    {n} = np.ascontiguousarray({n})' for n in names + ['idx', 'g']]
    lines += ['    empty = np.empty((1, p.shape[1]), dtype=p.dtype)',
              f'    kernel({", ".join(args)}, idx, g)',
              f'    return {", ".join(names)}{"," if len(names) == 1 else ""}']
    fn = compile_function_src('\n'.join(lines), 'sparse_row_update', {'np': np, 'kernel': kernel})
    if len(names) == 1:  # a one-output Op returns the array itself
        single = numba_njit(fn)

        @numba_njit
        def one_output(p, idx, g):
            return single(p, idx, g)[0]
        return one_output, _source_salt()
    return numba_njit(fn), _source_salt()


def _register_numba():
    try:
        from pytensor.link.numba.dispatch.basic import register_funcify_default_op_cache_key
    except ImportError:  # numba not installed: the plain graph runs instead
        return
    register_funcify_default_op_cache_key(SparseRowUpdate)(_numba_funcify_sparse_row_update)


# --- JAX (GPU; also runs on the CPU) ----------------------------------------------------------------

# Repeated rows on JAX: up to this many catalogue rows per index, each occurrence finds its row's first and last
# occurrence through an int32 scratch vector over the catalogue (a fill and a scatter of N entries per step);
# above it, through a sort of the K indices, whose cost does not grow with N. On this CPU (K = 2,080), alone:
# scratch 44 us vs sort 85 us at 43k rows, 190 us vs 78 us at 2M rows; in a whole JAX fit at 500k items the two
# were within this machine's noise (336 vs 316 mb/s). The crossover has not been measured on a GPU.
JAX_SCRATCH_ROWS_PER_INDEX = 200


def jax_occurrences_by_scratch(n_rows, k):
    """Whether _jax_occurrences uses the scratch vector (else the sort) for k indices into n_rows rows."""
    return n_rows <= JAX_SCRATCH_ROWS_PER_INDEX * k


def _jax_occurrences(idx, n_rows):
    """(position of the first occurrence of each occurrence's row, whether it is the row's last occurrence)
    for an index vector idx of static length K into n_rows rows; both int32/bool vectors of length K."""
    import jax.numpy as jnp
    from jax import lax
    K = idx.shape[0]
    pos = jnp.arange(K, dtype=jnp.int32)
    if jax_occurrences_by_scratch(n_rows, K):
        first_pos = jnp.full((n_rows,), K, jnp.int32).at[idx].min(pos)[idx]
        last = jnp.full((n_rows,), -1, jnp.int32).at[idx].max(pos)[idx] == pos
        return first_pos, last
    order = jnp.argsort(idx, stable=True).astype(jnp.int32)   # equal rows keep their positions' order
    s = idx[order]
    change = s[1:] != s[:-1]
    starts = jnp.concatenate([jnp.ones(1, bool), change])
    ends = jnp.concatenate([change, jnp.ones(1, bool)])
    group_start = lax.cummax(jnp.where(starts, pos, 0))    # sorted position where each one's row begins
    first_pos = jnp.zeros(K, jnp.int32).at[order].set(order[group_start], unique_indices=True)
    last = jnp.zeros(K, bool).at[order].set(ends, unique_indices=True)
    return first_pos, last


def _jax_funcify_sparse_row_update(op, node=None, **kwargs):
    """Vectorised over occurrences. Repeated rows: the velocity keeps the last occurrence (found
    deterministically by _jax_occurrences); sums go through scatter-add, which is deterministic on the CPU
    but may add repeated rows in any order on a GPU unless XLA is told to use deterministic ops (not set
    by this project yet, and not checked on a GPU: no device was available when this was written)."""
    import jax.numpy as jnp
    spec = op.spec
    f = np.float32
    lr, mu, lmbd, eps, rho, b1 = map(f, (spec.lr, spec.mu, spec.lmbd, spec.eps, spec.rho, spec.b1))
    n_states = N_STATES[spec.adapt]

    def update(p, *rest):
        *states, idx, g = rest
        states = list(states)
        N = p.shape[0]
        first_pos, last = _jax_occurrences(idx, N)
        first = first_pos == jnp.arange(idx.shape[0], dtype=jnp.int32)
        only_last = jnp.where(last, idx, N)     # scatter target: dropped unless the last occurrence
        adapt = spec.adapt
        if adapt == 'adam':   # summed gradient on the first occurrence, the others step by nothing
            gsum = jnp.zeros_like(g).at[first_pos].add(g)
            g = jnp.where(first[:, None], gsum, 0)
            only_last = jnp.where(first, idx, N)
        rows = p[idx]
        new_states = []
        if adapt == 'adagrad':   # accumulated per occurrence, each scaled by its own A_old + g**2
            g2 = g * g
            new_states.append(states[0].at[idx].add(g2))
            ghat = g / jnp.sqrt(states[0][idx] + g2 + eps)
        elif adapt in ('rmsprop', 'adadelta', 'adam_legacy'):
            def decay_acc(s, decay, inc):
                return s.at[idx].set(decay * s[idx]).at[idx].add(inc)
            acc_new = decay_acc(states[0], rho, (1 - rho) * g * g)
            new_states.append(acc_new)
            if adapt == 'rmsprop':
                ghat = g / jnp.sqrt(acc_new[idx] + eps)
            elif adapt == 'adadelta':
                c = (states[1][idx] + eps) / (acc_new[idx] + eps)
                new_states.append(decay_acc(states[1], rho, (1 - rho) * c * g * g))
                ghat = g * jnp.sqrt(c)
            else:
                m_new = decay_acc(states[1], b1, (1 - b1) * g * g)
                t_rows = states[2][idx] + 1
                new_states += [m_new, states[2].at[idx].add(1)]
                corr = 1 - b1 ** t_rows
                ghat = (m_new[idx] / corr) / (jnp.sqrt(acc_new[idx] / corr) + eps)
        elif adapt == 'adam':
            v, m, t = states[:3]
            t_rows, m_rows = t[idx] + 1, b1 * m[idx] + (1 - b1) * g
            v_rows = rho * v[idx] + (1 - rho) * g * g
            new_states += [s.at[only_last].set(x, mode='drop') for s, x in ((v, v_rows), (m, m_rows), (t, t_rows))]
            ghat = (m_rows / (1 - b1 ** t_rows)) / (jnp.sqrt(v_rows / (1 - rho ** t_rows)) + eps)
            ghat = jnp.where(first[:, None], ghat, 0)
        else:
            ghat = g
        delta = lr * (ghat + lmbd * rows) if spec.lmbd > 0 else lr * ghat
        if adapt == 'adam' and spec.lmbd > 0:
            delta = jnp.where(first[:, None], delta, 0)
        if spec.mu > 0:
            vel = states[n_states]
            v_occ = mu * vel[idx] - delta
            if adapt == 'adam':
                v_occ = jnp.where(first[:, None], v_occ, 0)
            new_states.append(vel.at[only_last].set(v_occ, mode='drop'))
            new_p = p.at[idx].add(v_occ)
        else:
            new_p = p.at[idx].add(-delta)
        out = [new_p] + new_states
        return out[0] if len(out) == 1 else tuple(out)

    return update


_register_numba()


# --- random draws on the device: negatives (SampleItems) and dropout noise (HashUniforms) -------------

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


def hash_uniforms(seed, step, n, xp=np):
    """n uniforms, a pure function of (seed, step): element j hashes j under the step's key."""
    return _keyed_uniforms(xp.arange(n, dtype=xp.uint32), _step_key(seed, step, n, xp), xp)


def sample_from_cdf(cdf, seed, step, n, xp=np):
    """n item indices i with probability cdf[i] - cdf[i-1]: the first i with cdf[i] >= u (as the original's
    CPU store; cdf is float32 like its GPU store's, last entry 1). The definition that SampleItems'
    kernels reproduce."""
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


class _HashDraw(Op):
    """An Op whose output is a draw from a hash of its inputs: no gradient flows to any input."""

    def grad(self, inputs, output_grads):
        from pytensor.gradient import disconnected_type
        return [disconnected_type() for _ in inputs]

    def connection_pattern(self, node):
        return [[False] for _ in node.inputs]


class SampleItems(_HashDraw):
    """(cdf: float32 vector, guide: int32 vector, seed: uint32 scalar, step: uint32 scalar) -> n int32 item
    indices, sample_from_cdf's draw. guide and levels come from cdf_guide(cdf): the kernels search from
    the guide (perform, the reference, does not need it). No gradient (the indices are integers; the scores
    of the sampled items get theirs through the gathers)."""
    __props__ = ('n', 'levels')

    def __init__(self, n, levels):
        self.n, self.levels = int(n), int(levels)

    def make_node(self, cdf, guide, seed, step):
        cdf, guide, seed, step = (pt.as_tensor_variable(v) for v in (cdf, guide, seed, step))
        if (cdf.ndim != 1 or cdf.dtype != FLOAT or guide.ndim != 1 or guide.dtype != 'int32' or seed.ndim or step.ndim
                or seed.dtype != 'uint32' or step.dtype != 'uint32'):
            raise TypeError('SampleItems takes (cdf: float32 vector, guide: int32 vector, seed: uint32 scalar, '
                            'step: uint32 scalar)')
        return Apply(self, [cdf, guide, seed, step], [pt.tensor(dtype='int32', shape=(self.n,))])

    def infer_shape(self, node, shapes):
        return [(self.n,)]

    def perform(self, node, inputs, outputs):
        cdf, _, seed, step = inputs
        outputs[0][0] = sample_from_cdf(cdf, np.uint32(seed), np.uint32(step), self.n)


def sample_items(n, cdf, seed, step):
    """SampleItems(n) of a float32 CDF held in a shared variable: its guide becomes a shared variable beside
    it (on the device with it). Returns the n indices' variable."""
    import pytensor
    guide, levels = cdf_guide(cdf.get_value(borrow=True))
    return SampleItems(n, levels)(cdf, pytensor.shared(guide, name=f'{cdf.name or "cdf"}_guide'), seed, step)


@functools.cache
def _numba_lowbias32():
    """_lowbias32 on one uint64 holding a 32-bit value (Numba)."""
    import numba
    M = np.uint64(0xFFFFFFFF)

    @numba.njit(nogil=True)
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
    import numba

    @numba.njit(nogil=True)
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
    import numba
    search_one = _numba_bucket_search()

    @numba.njit(nogil=True)
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
    import numba
    M = np.uint64(0xFFFFFFFF)
    lowbias32, search_one = _numba_lowbias32(), _numba_bucket_search()

    @numba.njit(nogil=True)
    def kernel(cdf, guide, seed, step, n):
        key = lowbias32((np.uint64(step) * np.uint64(0x9e3779b9) + np.uint64(seed)) & M)
        out = np.empty(n, dtype=np.int32)
        for j in range(n):
            h = lowbias32((lowbias32(np.uint64(j) ^ key) + key) & M)
            out[j] = search_one(cdf, guide, np.float32(h >> np.uint64(8)) * np.float32(2.0 ** -24))
        return out
    return kernel


def _numba_funcify_sample_items(op, node=None, **kwargs):
    from pytensor.link.numba.dispatch.basic import numba_njit
    kernel, n = _numba_sample_kernel(), op.n

    @numba_njit
    def sample_items_(cdf, guide, seed, step):
        return kernel(cdf, guide, seed.item(), step.item(), n)   # PyTensor passes scalars as 0-d arrays
    return sample_items_, _source_salt()


def _jax_funcify_sample_items(op, node=None, **kwargs):
    import jax.numpy as jnp
    n, levels = op.n, op.levels

    def sample_items_(cdf, guide, seed, step):
        return sample_from_guide(cdf, guide, levels, seed, step, n, jnp)
    return sample_items_


def hash_uniform_rows(seed, step, stream, slots, width, xp=np):
    """(len(slots), width) float32 uniforms in [0, 1): element (i, c) a pure function of (seed, step,
    stream, slots[i], c), so a slot's noise does not depend on which other slots are active."""
    u = xp.uint32
    key = _lowbias32(_step_key(seed, step, slots.shape[0], xp) ^ (u(stream) * u(0x85ebca6b)), xp)
    row_key = _lowbias32(key + slots.astype(xp.uint32) * u(0xc2b2ae35), xp)[:, None]        # (n, 1)
    return _keyed_uniforms(xp.arange(width, dtype=xp.uint32)[None, :], row_key, xp)


class HashUniforms(_HashDraw):
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
    import numba
    M = np.uint64(0xFFFFFFFF)
    lowbias32 = _numba_lowbias32()

    @numba.njit(nogil=True)
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


def _numba_funcify_hash_uniforms(op, node=None, **kwargs):
    from pytensor.link.numba.dispatch.basic import numba_njit
    kernel, width, stream = _numba_uniform_kernel(), op.width, op.stream

    @numba_njit
    def hash_uniforms_(seed, step, slots):
        return kernel(seed.item(), step.item(), stream, slots, width)
    return hash_uniforms_, _source_salt()


def _jax_funcify_hash_uniforms(op, node=None, **kwargs):
    import jax.numpy as jnp
    width, stream = op.width, op.stream

    def hash_uniforms_(seed, step, slots):
        return hash_uniform_rows(seed, step, stream, slots, width, jnp)
    return hash_uniforms_


def _register_hash_draws():
    try:
        from pytensor.link.numba.dispatch.basic import register_funcify_default_op_cache_key
        register_funcify_default_op_cache_key(SampleItems)(_numba_funcify_sample_items)
        register_funcify_default_op_cache_key(HashUniforms)(_numba_funcify_hash_uniforms)
    except ImportError:
        pass


_register_hash_draws()


# --- float32 math the Numba backend can vectorise: exp, sigmoid, row max -------------------------------
# A profile of the Numba training step (XE + logQ, 2080 scores per row) showed the score-matrix element-wise
# work costing as much as the three GEMMs: Numba calls libm's scalar expf per element (~2.4 ns; no SVML in
# today's llvmlite), and PyTensor's generated max-reduction keeps one dependent compare per element.
# custom_opt swaps these for the versions below on the Numba backend only (JAX/XLA has its own).

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
def _numba_exp32_inline():
    """exp32 as a scalar Numba function, inlined into its callers' Numba IR (sigmoid32 calls it; an LLVM-level
    call per element would not vectorise). Callers must be fastmath=False like the scalar functions below:
    reassociation would undo the two-part ln 2 of the reduction, and no-NaN flags the NaN tests."""
    import numba
    c0, c1, c2, c3, c4, c5 = _EXP_POLY
    f0, f1, f2, inf = _F(0), _F(1), _F(2), _F(np.inf)

    @numba.njit(inline='always', fastmath=False)
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
    import numba
    exp32_inline = _numba_exp32_inline()

    @numba.njit(nogil=True, fastmath=False)
    def exp32_scalar(x):
        return exp32_inline(x)
    return exp32_scalar


@functools.cache
def _numba_sigmoid32():
    import numba
    exp32_inline = _numba_exp32_inline()

    @numba.njit(nogil=True, fastmath=False, error_model='numpy')   # (no per-element zero check)
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


class RowMax(Op):
    """Max over the last axis of a float32 matrix (PyTensor's Max(axis=1)); a row with a NaN gives NaN, an
    empty row an error, as numpy. The Numba kernel keeps eight independent running maxima (one dependent
    compare per element is latency-bound)."""
    __props__ = ()

    def make_node(self, x):
        x = pt.as_tensor_variable(x)
        if x.ndim != 2 or x.dtype != FLOAT:
            raise TypeError('RowMax takes a float32 matrix')
        return Apply(self, [x], [pt.tensor(dtype=FLOAT, shape=(x.type.shape[0],))])

    def infer_shape(self, node, shapes):
        return [(shapes[0][0],)]

    def perform(self, node, inputs, outputs):
        outputs[0][0] = np.max(inputs[0], axis=1)

    def pullback(self, inputs, outputs, output_grads):
        from pytensor.tensor.math import Max
        return Max(axis=(1,)).pullback(inputs, outputs, output_grads)


@functools.cache
def _numba_row_max_kernel():
    import numba
    ninf = _F(-np.inf)

    @numba.njit(inline='always')
    def mx(a, v):   # NaN compares false: it never wins here (looked for separately below)
        return v if v > a else a

    @numba.njit(nogil=True, fastmath=False)
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
    return _numba_row_max_kernel(), _source_salt()


def _numba_funcify_scalar(kernel):
    def funcify(op, node=None, **kwargs):   # the cache key names the Op: PyTensor caches compiled code by key
        return kernel(), f'{type(op).__name__}:{_source_salt()}'
    return funcify


def _register_fast_math():
    try:
        from pytensor.link.numba.dispatch.basic import register_funcify_default_op_cache_key
        from pytensor.link.numba.dispatch.scalar import register_scalar_funcify
    except ImportError:
        return
    register_scalar_funcify(Exp32)(_numba_funcify_scalar(_numba_exp32))
    register_scalar_funcify(Sigmoid32)(_numba_funcify_scalar(_numba_sigmoid32))
    register_funcify_default_op_cache_key(RowMax)(_numba_funcify_row_max)


_register_fast_math()


@functools.cache
def register_jax():
    """Put the JAX implementations of this file's Ops in place (PyTensor's jax_funcify). Not done at import:
    PyTensor's JAX dispatch imports JAX (~0.5 s, and JAX reads its environment then), which a Numba user
    should not pay. custom_opt.compile_mode('jax') calls it before anything is compiled for JAX."""
    from pytensor.link.jax.dispatch import jax_funcify
    jax_funcify.register(SparseRowUpdate)(_jax_funcify_sparse_row_update)
    jax_funcify.register(SampleItems)(_jax_funcify_sample_items)
    jax_funcify.register(HashUniforms)(_jax_funcify_hash_uniforms)
