"""From a click log to the minibatches that training and evaluation feed to compiled functions: the checked
key columns of a DataFrame, session offsets, the session-parallel iterator (the original's minibatches,
which shrink as sessions run out), the one packer of those minibatches into fixed-width steps and calls
(chunked training and evaluation), and the progress bar over them.
"""
import sys

import numpy as np
import pandas as pd

if __package__:
    from . import _interrupts, _params
else:
    import _interrupts, _params  # noqa: E401


# --- the data ----------------------------------------------------------------------------------------

def session_columns(data, keys, what):
    """A copy of the (session, item, time) columns `keys` of a DataFrame, with numeric session IDs and times;
    GRU4RecError naming the `what` data ('training', 'test') if a column is missing or not numeric."""
    missing = [k for k in keys if k not in data.columns]
    if missing:
        raise _params.GRU4RecError(f'Missing column(s) {", ".join(missing)} in the {what} data '
                                   f'(columns found: {", ".join(map(str, data.columns))})')
    data = data[list(keys)].copy()
    for k in (keys[0], keys[2]):
        data[k] = numeric_column(data[k], k, what)
    return data


def numeric_column(col, name, what):
    """col as numbers (converting text); GRU4RecError if a value is not a number, missing or infinite."""
    if not pd.api.types.is_numeric_dtype(col) or pd.api.types.is_bool_dtype(col):
        conv = pd.to_numeric(col, errors='coerce')
        if conv.isna().any():
            bad = col[conv.isna()].iloc[0]
            raise _params.GRU4RecError(f'Column {name} of the {what} data must be numeric (found {bad!r})')
        col = conv
    if col.isna().any():
        raise _params.GRU4RecError(f'Column {name} of the {what} data has missing values')
    if col.dtype.kind == 'f' and not np.isfinite(col.values).all():
        raise _params.GRU4RecError(f'Column {name} of the {what} data has infinite values')
    return col


def session_offsets(session_ids):
    """For session IDs of events grouped by session: [start of each session..., number of events]."""
    starts = np.flatnonzero(np.r_[True, session_ids[1:] != session_ids[:-1]])
    return np.r_[starts, len(session_ids)].astype(np.int64)


# --- session-parallel minibatches --------------------------------------------------------------------

def session_parallel_batches(items, offsets, order, batch_size, min_active=1):
    """Yield (inp, out, reset, keep) for each step of one pass over the sessions.

    items: item index per event (events of a session contiguous, in time order); offsets: session k owns
    events offsets[k]..offsets[k+1]-1; order: session processing order. Each slot holds one session; when
    a session runs out, its slot takes the next session in `order`; when none is left the slot is dropped
    and the batch shrinks. inp/out: item indices of the M active slots; reset[s]: out[s] is its session's
    last event (the slot's hidden state must be zeroed after this step); keep: None, or the indices of the
    rows of the previous step's hidden state that are still active (slots were dropped before this step).
    The pass stops when fewer than `min_active` slots are left. Every step first raises a Ctrl-C or SIGTERM
    that arrived and was swallowed on the way (_interrupts.check: a no-op outside the command lines)."""
    n_sessions = len(order)
    n = min(batch_size, n_sessions)
    if n == 0:
        return
    slot_pos = np.arange(n)
    maxpos = n - 1
    start = offsets[order[slot_pos]].astype(np.int64)
    end = offsets[order[slot_pos] + 1].astype(np.int64)
    keep = None
    while True:
        left = end - start - 1          # (input, target) pairs left in each slot's session
        minlen = int(left.min()) + 1
        pos = start.copy()
        out = items[pos]
        for k in range(minlen - 1):
            inp = out
            pos += 1
            out = items[pos]
            _interrupts.check()
            yield inp, out, left == k + 1, keep
            keep = None
        start += minlen - 1
        finished = np.flatnonzero(end - start <= 1)
        slot_pos[finished] = maxpos + 1 + np.arange(len(finished))
        maxpos += len(finished)
        valid = slot_pos < n_sessions
        n_valid = int(valid.sum())
        if n_valid == 0 or n_valid < min_active:
            return
        refill = finished[valid[finished]]
        sess = order[slot_pos[refill]]
        start[refill] = offsets[sess]
        end[refill] = offsets[sess + 1]
        if n_valid < len(valid):
            alive = np.flatnonzero(valid)
            keep = alive if keep is None else keep[alive]
            slot_pos, start, end = slot_pos[alive], start[alive], end[alive]


# --- fixed-width steps and calls ---------------------------------------------------------------------

def fixed_width_steps(batches, width, fill_item):
    """The minibatches of session_parallel_batches as steps of a fixed width B (what a scan over steps, and
    JAX's static shapes, need): slot s stays row s. Yields (active, X, Y, R, A) per minibatch: active = the
    rows of the M active slots (ascending); X, Y = input and target items (int32, B), R = 1.0 where the target
    ends its session (float32, B), A = 1.0 for active rows (float32, B). A finished slot's row has item
    `fill_item` as input and target, R = 1 (its state stays zero) and A = 0."""
    active = np.arange(width)                      # row of each active slot, in slot order
    all_on = np.ones(width, dtype=np.float32)
    for inp, out, reset, keep in batches:
        if keep is not None:
            active = active[keep]
        if len(active) == width:   # all slots active (most steps): the arrays as they come, no scatter
            yield (active, inp.astype(np.int32, copy=False), out.astype(np.int32, copy=False),
                   reset.astype(np.float32), all_on)
            continue
        x = np.full(width, fill_item, dtype=np.int32)
        y, r, a = x.copy(), np.ones(width, dtype=np.float32), np.zeros(width, dtype=np.float32)
        x[active], y[active], r[active], a[active] = inp, out, reset, 1
        yield active, x, y, r, a


def idle_step(width, fill_item):
    """A fixed-width step with no active row, to pad a call to a fixed number of steps."""
    x = np.full(width, fill_item, dtype=np.int32)
    return np.arange(0), x, x.copy(), np.ones(width, dtype=np.float32), np.zeros(width, dtype=np.float32)


def calls_of(steps, size):
    """Lists of `size` consecutive entries of steps (the last list may be shorter): one per compiled call."""
    call = []
    for step in steps:
        call.append(step)
        if len(call) == size:
            yield call
            call = []
    if call:
        yield call


def stacked(call):
    """The steps of a call (tuples of equal-length arrays) as one array per column, steps first (K x ...)."""
    return [np.stack(column) for column in zip(*call)]


def read_one_call_late(results):
    """The items of `results`, each handed out only after the next one has been produced. results yields the
    outputs of compiled calls as they are dispatched: JAX runs them asynchronously, so reading a call's
    outputs (which waits for it) after the next call was prepared and dispatched overlaps the host's
    preparation with the device's work."""
    pending = None
    for result in results:
        if pending is not None:
            yield pending
        pending = result
    if pending is not None:
        yield pending


def progress(batches, total, desc):
    """Tuples whose first entry holds one entry per event (minibatches, or evaluation's per-call counts) behind
    a tqdm progress bar (events done of `total`) when stdout is a terminal and tqdm is installed; otherwise
    the tuples unchanged."""
    if not sys.stdout.isatty():
        return batches
    try:
        from tqdm import tqdm
    except ImportError:
        return batches

    def with_bar():
        with tqdm(total=total, desc=desc, unit='ev', leave=False, mininterval=0.5) as bar:
            for batch in batches:
                yield batch
                bar.update(len(batch[0]))
    return with_bar()
