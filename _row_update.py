"""SparseRowUpdate: the optimiser step of an item-indexed weight (Wy, By, E, Wx0) and its optimiser state from
per-occurrence gradient rows g (one row per occurrence of an item in idx), fused into one pass over the
touched rows; declared once with its implementations: the plain-PyTensor definition, numpy, Numba, JAX.

Semantics (the original's, for repeated items in one minibatch; see the README):
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
  * numba_sparse_row_update (CPU) and jax_sparse_row_update (GPU) below.
custom_opt.py replaces SparseRowUpdateGraph by SparseRowUpdate, and makes it in-place where it is safe.
One Op with four implementations of the same semantics: kept in one file (longer than the others) so that
they can be read side by side.
"""
import functools
from collections import namedtuple

import numpy as np
import pytensor.tensor as pt
from pytensor.compile.builders import SymbolicOp
from pytensor.graph.basic import Apply
from pytensor.graph.op import Op

if __package__:
    from . import _ops_support
else:
    import _ops_support

FLOAT = _ops_support.FLOAT
ADAPTS = (None, 'adagrad', 'rmsprop', 'adadelta', 'adam', 'adam_legacy')
# number of per-row optimiser states of each method (the momentum velocity comes after them)
N_STATES = {None: 0, 'adagrad': 1, 'rmsprop': 1, 'adadelta': 2, 'adam': 3, 'adam_legacy': 3}
# adapt, lr, mu (momentum), lmbd (L2), eps, rho (rmsprop/adadelta decay; adam: beta2), b1 (adam beta1). lr, mu,
# lmbd, rho and b1 are numbers or float32 scalar variables (the training step's runtime hyper-parameters): the Ops
# take them as inputs, so that a new value is not a new Op (and not a new compile); only the method, eps and
# whether mu and lmbd are zero (a velocity state, an L2 term) are the Ops' props.
RowUpdateSpec = namedtuple('RowUpdateSpec', 'adapt lr mu lmbd eps rho b1')
SCALARS = ('lr', 'mu', 'lmbd', 'rho', 'b1')   # the spec's fields that are the Ops' scalar inputs, in order
__all__ = ['ADAPTS', 'N_STATES', 'RowUpdateSpec', 'n_inputs_states', 'sparse_row_update', 'unique_rows',
           'merge_repeated', 'merge_repeated_into', 'plain_row_update', 'SparseRowUpdateGraph', 'SparseRowUpdate',
           'row_groups', 'numpy_row_update', 'PREFETCH_AHEAD', 'JAX_SCRATCH_ROWS_PER_INDEX',
           'jax_occurrences_by_scratch']


def nonzero(x):
    """Whether a spec field is not the number 0 (a variable counts as non-zero: _hyper keeps zeros numbers)."""
    return not isinstance(x, (int, float, np.floating)) or x != 0


def n_inputs_states(spec):
    return N_STATES[spec.adapt] + (1 if nonzero(spec.mu) else 0)


def scalar_inputs(spec):
    """The spec's SCALARS as float32 scalar variables (numbers as constants)."""
    return [pt.as_tensor_variable(np.float32(x)) if isinstance(x, (int, float, np.floating)) else x
            for x in (getattr(spec, k) for k in SCALARS)]


def sparse_row_update(spec, p, states, idx, g):
    """New values of (p, *states) after the step; states = the adapt states, then the velocity if mu > 0.
    Returns a list of symbolic variables (plain PyTensor until custom_opt fuses them)."""
    if spec.adapt not in ADAPTS:
        raise ValueError(f'unknown adapt {spec.adapt!r}')
    if len(states) != n_inputs_states(spec):
        raise ValueError(f'{spec.adapt} with momentum={spec.mu} takes {n_inputs_states(spec)} state(s), got {len(states)}')
    op = SparseRowUpdateGraph(adapt=spec.adapt, eps=float(spec.eps), momentum=nonzero(spec.mu), l2=nonzero(spec.lmbd))
    return op(p, *states, idx, g, *scalar_inputs(spec), return_list=True)


# --- the plain-PyTensor definition -----------------------------------------------------------------

def _decay_then_accumulate(acc, idx, rho, inc):
    """Rows idx of acc scaled once by rho, then inc accumulated per occurrence."""
    return pt.inc_subtensor(pt.set_subtensor(acc[idx], rho * acc[idx])[idx], inc)


def _f(x):
    return np.float32(x) if isinstance(x, (int, float, np.floating)) else x


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
    adapt, new_states, momentum, l2 = spec.adapt, [], nonzero(spec.mu), nonzero(spec.lmbd)
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
    delta = lr * (ghat + lmbd * rows) if l2 else lr * ghat
    if momentum:
        v = states[-1]
        v_occ = mu * v[idx] - delta
        new_states.append(pt.set_subtensor(v[idx], v_occ))
        return [pt.inc_subtensor(p[idx], v_occ)] + new_states
    return [pt.inc_subtensor(p[idx], -delta)] + new_states


PROPS = ('adapt', 'eps', 'momentum', 'l2')   # the Ops' props (momentum, l2: whether mu, lmbd are non-zero)


class _SpecProps:
    """The props of the row-update Ops and the RowUpdateSpec they make with given scalar inputs."""

    @property
    def flags(self):
        return tuple(getattr(self, k) for k in PROPS)

    def spec_with(self, lr, mu, lmbd, rho, b1):
        """The RowUpdateSpec of this Op with the values (or variables) of its scalar inputs; a zero momentum or L2
        is the number 0."""
        return RowUpdateSpec(self.adapt, lr, mu if self.momentum else 0.0, lmbd if self.l2 else 0.0, self.eps, rho, b1)


class SparseRowUpdateGraph(_SpecProps, SymbolicOp):
    """(p, *states, idx, g, lr, mu, lmbd, rho, b1) -> (new p, *new states) as a plain graph; custom_opt swaps in
    SparseRowUpdate."""
    __props__ = PROPS

    def build_inner_graph(self, p, *rest):
        *states, idx, g = rest[:-len(SCALARS)]
        return plain_row_update(self.spec_with(*rest[-len(SCALARS):]), p, list(states), idx, g)


# --- the fused Op ----------------------------------------------------------------------------------

class SparseRowUpdate(_SpecProps, Op):
    """Fused SparseRowUpdateGraph. inplace=True overwrites p and the states (set by custom_opt)."""
    __props__ = PROPS + ('inplace',)

    def __init__(self, adapt, eps, momentum, l2, inplace=False):
        self.adapt, self.eps, self.momentum, self.l2 = adapt, eps, bool(momentum), bool(l2)
        self.inplace = inplace
        self.n_out = 1 + N_STATES[adapt] + self.momentum
        if inplace:
            self.destroy_map = {i: [i] for i in range(self.n_out)}

    def make_node(self, p, *rest):
        *states, idx, g = rest[:-len(SCALARS)]
        p, states = pt.as_tensor_variable(p), [pt.as_tensor_variable(s) for s in states]
        idx, g = pt.as_tensor_variable(idx), pt.as_tensor_variable(g)
        scalars = [pt.as_tensor_variable(x) for x in rest[-len(SCALARS):]]
        if (len(states) + 1 != self.n_out or idx.ndim != 1 or not idx.dtype.startswith(('int', 'uint')) or g.ndim != 2
                or any(x.ndim != 0 or x.dtype != FLOAT for x in scalars)):
            raise TypeError('SparseRowUpdate takes (p, *states, idx: int vector, g: matrix, lr, mu, lmbd, rho, b1: '
                            'float32 scalars)')
        return Apply(self, [p, *states, idx, g, *scalars], [v.type() for v in [p, *states]])

    def infer_shape(self, node, shapes):
        return shapes[:self.n_out]

    def grad(self, inputs, output_grads):
        raise NotImplementedError('SparseRowUpdate is an optimiser step; it has no gradient')

    def perform(self, node, inputs, outputs):
        arrays, (idx, g), scalars = inputs[:self.n_out], inputs[self.n_out:self.n_out + 2], inputs[self.n_out + 2:]
        if not self.inplace:
            arrays = [a.copy() for a in arrays]
        if len(idx) and (idx.min() < 0 or idx.max() >= arrays[0].shape[0]):
            raise IndexError('SparseRowUpdate: index out of bounds')
        numpy_row_update(self.spec_with(*(np.float32(x) for x in scalars)), arrays, idx, g)
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
    vel = states[-1] if nonzero(spec.mu) else None
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
        delta = lr * (ghat + lmbd * p_old) if nonzero(spec.lmbd) else lr * ghat
        new = p_old
        if vel is not None:
            v_occ = mu * vel[r] - delta
            vel[r] = v_occ[-1]
            for step in v_occ:
                new = new + step
        else:
            for step in delta:
                new = new - step
        p[r] = new


# --- Numba (CPU; caching: _ops_support) -------------------------------------------------------------

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


def _numba_kernel(adapt, eps, momentum, l2):
    """An njit function (p, s0, s1, s2, vel, idx, g, lr, mu, lmbd, rho, b1) -> None updating in place; unused
    states are 1 x d placeholders, the hyper-parameters float32 scalars. One long function on purpose: the
    method's branches are compile-time constants of one loop over the rows, which Numba compiles (and LLVM
    vectorises) as a whole."""
    f = np.float32
    eps, one = f(eps), f(1)
    ADAGRAD, RMSPROP, ADADELTA, ADAM, LEGACY = (adapt == a for a in ADAPTS[1:])
    DECAY = RMSPROP or ADADELTA or LEGACY
    MOMENTUM, L2 = momentum, l2
    S0, S1, S2 = (N_STATES[adapt] > i for i in range(3))

    prefetch, ahead = _numba_prefetch(), PREFETCH_AHEAD
    line = 64 // np.dtype(FLOAT).itemsize

    @_ops_support.njit(pytensor=True, boundscheck=False, error_model='numpy')
    def kernel(p, s0, s1, s2, vel, idx, g, lr, mu, lmbd, rho, b1):
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


def numba_sparse_row_update(op, node=None, **kwargs):
    """(numba function, cache-key salt) for a SparseRowUpdate node."""
    from pytensor.link.numba.dispatch.basic import numba_njit
    from pytensor.link.utils import compile_function_src
    kernel = _numba_kernel(*op.flags)
    n_states, momentum = N_STATES[op.adapt], op.momentum
    names = ['p'] + [f's{i}' for i in range(n_states)] + (['vel'] if momentum else [])
    args = ['p'] + [f's{i}' if i < n_states else 'empty' for i in range(3)] + ['vel' if momentum else 'empty']
    scalars = ', '.join(SCALARS)
    lines = [f'def sparse_row_update({", ".join(names)}, idx, g, {scalars}):']
    if not op.inplace:
        lines += [f'    {n} = {n}.copy()' for n in names]
    # PyTensor types arrays with 'any' layout; as C-contiguous the row loops vectorise. ascontiguousarray is
    # a no-copy retyping for arrays that are contiguous (the shared weights always are); the Op returns
    # these arrays, so a copy made for a strided input would still be the correct output.
    lines += [f'    {n} = np.ascontiguousarray({n})' for n in names + ['idx', 'g']]
    lines += ['    empty = np.empty((1, p.shape[1]), dtype=p.dtype)',
              f'    kernel({", ".join(args)}, idx, g, {", ".join(x + ".item()" for x in SCALARS)})',
              f'    return {", ".join(names)}{"," if len(names) == 1 else ""}']
    fn = compile_function_src('\n'.join(lines), 'sparse_row_update', {'np': np, 'kernel': kernel})
    if len(names) == 1:  # a one-output Op returns the array itself
        single = numba_njit(fn)

        @_ops_support.njit(pytensor=True)
        def one_output(p, idx, g, lr, mu, lmbd, rho, b1):
            return single(p, idx, g, lr, mu, lmbd, rho, b1)[0]
        return one_output, _ops_support.source_salt(__name__)
    return numba_njit(fn), _ops_support.source_salt(__name__)


_ops_support.register_numba(SparseRowUpdate, numba_sparse_row_update)


# --- JAX (GPU; also runs on the CPU) ----------------------------------------------------------------

# Repeated rows on JAX: up to this many catalogue rows per index, each occurrence finds its row's first and last
# occurrence through an int32 scratch vector over the catalogue (a fill and a scatter of N entries per step);
# above it, through a sort of the K indices, whose cost does not grow with N. On this CPU (K = 2,080), alone:
# scratch 44 us vs sort 85 us at 43k rows, 190 us vs 78 us at 2M rows; in a whole JAX fit at 500k items the two
# were within this machine's noise (336 vs 316 mb/s). The crossover has not been measured on a GPU.
JAX_SCRATCH_ROWS_PER_INDEX = 200


def jax_occurrences_by_scratch(n_rows, k):
    """Whether jax_occurrences uses the scratch vector (else the sort) for k indices into n_rows rows."""
    return n_rows <= JAX_SCRATCH_ROWS_PER_INDEX * k


def jax_occurrences(idx, n_rows):
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


def jax_sparse_row_update(op, node=None, **kwargs):
    """The JAX implementation of a SparseRowUpdate node (jax_funcify; branch for branch plain_row_update's
    steps, vectorised over occurrences, so it is kept in one piece beside it). Repeated rows: the velocity keeps the last occurrence (found
    deterministically by jax_occurrences); sums go through scatter-add, which is deterministic on the CPU
    but may add repeated rows in any order on a GPU unless XLA is told to use deterministic ops (not set
    by this project yet, and not checked on a GPU: no device was available when this was written)."""
    import jax.numpy as jnp
    eps, n_states, adapt = np.float32(op.eps), N_STATES[op.adapt], op.adapt

    def update(p, *rest):
        *states, idx, g = rest[:-len(SCALARS)]
        lr, mu, lmbd, rho, b1 = rest[-len(SCALARS):]
        states = list(states)
        N = p.shape[0]
        first_pos, last = jax_occurrences(idx, N)
        first = first_pos == jnp.arange(idx.shape[0], dtype=jnp.int32)
        only_last = jnp.where(last, idx, N)     # scatter target: dropped unless the last occurrence
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
        delta = lr * (ghat + lmbd * rows) if op.l2 else lr * ghat
        if adapt == 'adam' and op.l2:
            delta = jnp.where(first[:, None], delta, 0)
        if op.momentum:
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
