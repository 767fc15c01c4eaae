"""Full-catalogue next-item evaluation of a trained GRU4Rec: recall@N and MRR@N for several N at once.

Every test session starts from a zero hidden state; each event predicts the immediately next item.
The target's rank counts the candidates (all training items, or a given candidate set) that score
above it; ties are resolved by `mode`:
  standard      #(score > target) + 1                            (optimistic)
  conservative  #(score >= target)                               (pessimistic; the target counts itself)
  median        #(score > target) + (#(score == target) - 1) / 2 + 1
  tiebreaking   standard, after adding uniform(0, 1e-10) noise to every score
"""

import numpy as np
import pandas as pd

try:  # package import (installed) or top-level import (checkout)
    from . import custom_opt
    from .gru4rec import GRU4RecError, session_offsets, session_parallel_batches, progress, _numeric_column, _to_int_arg
except ImportError:
    import custom_opt
    from gru4rec import GRU4RecError, session_offsets, session_parallel_batches, progress, _numeric_column, _to_int_arg

MODES = ('standard', 'conservative', 'median', 'tiebreaking')


def ranks_from_counts(n_greater, n_equal, mode):
    """Rank of each target from the number of candidates scoring above / equal to it. n_equal must count
    the target itself once (a candidate set that lacks the target gets +1 before calling this)."""
    n_greater = np.asarray(n_greater, dtype=np.float64)
    n_equal = np.asarray(n_equal, dtype=np.float64)
    if mode in ('standard', 'tiebreaking'):
        return n_greater + 1
    if mode == 'conservative':
        return n_greater + n_equal
    if mode == 'median':
        return n_greater + 0.5 * (n_equal - 1) + 1
    raise GRU4RecError(f'Unknown evaluation mode {mode!r} (use one of: {", ".join(MODES)})')


def prepare_test_data(gru, test_data, session_key, item_key, time_key):
    """Keep the test events whose item the model knows; sort by session, time, item. Returns
    (item indices, session offsets, number of dropped events)."""
    if not isinstance(test_data, pd.DataFrame):
        raise GRU4RecError(f'test_data must be a pandas DataFrame, got {type(test_data).__name__}')
    missing = [k for k in (session_key, item_key, time_key) if k not in test_data.columns]
    if missing:
        raise GRU4RecError(f'Missing column(s) {", ".join(missing)} in the test data '
                           f'(columns found: {", ".join(map(str, test_data.columns))})')
    data = test_data[[session_key, item_key, time_key]].copy()
    for k in (session_key, time_key):
        data[k] = _numeric_column(data[k], k, 'test')
    idx = gru.itemidmap.index.get_indexer(data[item_key])
    known = idx >= 0
    n_dropped = int((~known).sum())
    if not known.any():
        raise GRU4RecError('The test data shares no items with the training data')
    data = data.assign(_idx=idx)[known].sort_values([session_key, time_key, item_key], kind='stable')
    return data['_idx'].values.astype(np.int32), session_offsets(data[session_key].values), n_dropped


def counts_per_step(gru, batches, width, cand, tiebreak):
    """Yield (targets, n_greater, n_equal) of each minibatch, one compiled call per minibatch (the batch
    shrinks as sessions run out, as in the original)."""
    n_cand = None if cand is None else len(cand)
    H = [np.zeros((width, u), dtype=np.float32) for u in gru.layers]
    for inp, out, reset, keep in batches:
        if keep is not None:
            H = [h[keep] for h in H]
        fn = gru.rank_function(with_candidates=cand is not None, tiebreak=tiebreak, width=len(inp), n_cand=n_cand)
        n_greater, n_equal, *H = fn(inp, out, reset.astype(np.float32), *([cand] if cand is not None else []), *H)
        yield out, n_greater, n_equal


def counts_chunked(gru, batches, width, cand, chunk):
    """The same counts as counts_per_step, `chunk` minibatches per compiled call (GRU4Rec.rank_chunk_function),
    yielded per call. Slot s stays row s of a fixed-width batch; a finished slot's row scores item 0 with a
    reset and its counts are dropped (rows do not interact in evaluation, so nothing else needs masking).
    On JAX (static shapes) the minibatches are split into calls of equal length (at most `chunk`; the last is
    padded with such rows, by fewer steps than there are calls), so that the compiled function of a test set
    is reused and little is computed in vain; a call's results are read after the next call has been
    dispatched, so the host's preparation overlaps the device's work."""
    n_cand = None if cand is None else len(cand)
    pad = gru._backend() == 'jax'
    if pad:
        batches = list(batches)
        n_calls = max(1, -(-len(batches) // chunk))
        chunk = max(1, -(-len(batches) // n_calls))
    H = [np.zeros((width, u), dtype=np.float32) for u in gru.layers]
    active = np.arange(width)                       # row of each active slot, in slot order
    steps = []

    def dispatch():
        nonlocal H
        k = chunk if pad else len(steps)
        X = np.zeros((k, width), dtype=np.int32)    # K x B
        Y, R, A = X.copy(), np.ones((k, width), dtype=np.float32), np.zeros((k, width), dtype=bool)
        for i, (rows, inp, out, reset) in enumerate(steps):
            X[i, rows], Y[i, rows], R[i, rows], A[i, rows] = inp, out, reset, True
        steps.clear()
        fn = gru.rank_chunk_function(k, width, with_candidates=cand is not None, n_cand=n_cand)
        n_greater, n_equal, *H = fn(X, Y, R, *([cand] if cand is not None else []), *H)
        return Y[A], n_greater, n_equal, A

    def calls():
        nonlocal active
        for inp, out, reset, keep in batches:
            if keep is not None:
                active = active[keep]
            steps.append((active, inp, out, reset))
            if len(steps) == chunk:
                yield dispatch()
        if steps:
            yield dispatch()

    pending = None
    for result in calls():   # the next call is dispatched before the pending one's counts are read
        if pending is not None:
            yield _active_counts(*pending)
        pending = result
    if pending is not None:
        yield _active_counts(*pending)


def _active_counts(out, n_greater, n_equal, active):
    """(targets, n_greater, n_equal) of the active entries of a chunk (waits for the call to finish)."""
    return out, np.asarray(n_greater)[active], np.asarray(n_equal)[active]


def evaluate_gpu(gru, test_data, items=None, session_key='SessionId', item_key='ItemId', time_key='Time',
                 cut_off=(20,), batch_size=100, mode='standard', return_details=False, chunk=None):
    """Recall@N and MRR@N of `gru` on `test_data` for every N in cut_off (an int is accepted too).

    items: optional candidate item IDs to rank against (default: all training items).
    chunk: minibatches per compiled call; None: the backend's default (custom_opt.EVAL_CHUNK_BY_DEFAULT: 100
    on JAX, 0 on Numba and the python backend); 0: one call per minibatch. Tiebreaking mode always runs one
    call per minibatch (its noise is drawn per call). The ranks do not depend on it.
    Returns (recall_list, mrr_list) in the order of cut_off, plus a dict with the number of evaluated
    events and of dropped test events if return_details is set. Test events whose item was not seen in
    training are dropped (a line says how many). The name is the original's; `evaluate` is the same
    function and runs on whatever backend the model uses."""
    gru._require_trained()
    cut_off = [int(cut_off)] if np.isscalar(cut_off) else [int(c) for c in cut_off]
    if not cut_off or min(cut_off) < 1:
        raise GRU4RecError(f'cut_off must be positive integers, got {cut_off}')
    if mode not in MODES:
        raise GRU4RecError(f'Unknown evaluation mode {mode!r} (use one of: {", ".join(MODES)})')
    if int(batch_size) < 1:
        raise GRU4RecError('batch_size must be >= 1')
    chunk = custom_opt.EVAL_CHUNK_BY_DEFAULT[gru._backend()] if chunk is None else _to_int_arg(chunk, 'chunk')
    print('Measuring Recall@{} and MRR@{}'.format(','.join(map(str, cut_off)), ','.join(map(str, cut_off))))
    test_items, offsets, n_dropped = prepare_test_data(gru, test_data, session_key, item_key, time_key)
    if n_dropped:
        print(f'Dropped {n_dropped} test events with items unseen in training '
              f'({n_dropped / (n_dropped + len(test_items)):.2%} of the test events)')
    cand = None
    if items is not None:
        cand = gru.itemidmap.index.get_indexer(pd.Index(pd.unique(np.asarray(items))))
        cand = cand[cand >= 0].astype(np.int32)
        if len(cand) == 0:
            raise GRU4RecError('None of the candidate items (items=...) was seen in training')
        in_cand = np.zeros(gru.n_items, dtype=bool)
        in_cand[cand] = True
    cut = np.asarray(cut_off, dtype=np.float64)[:, None]
    hits, rr = np.zeros(len(cut_off)), np.zeros(len(cut_off))
    n = 0
    width = min(int(batch_size), len(offsets) - 1)
    order = np.arange(len(offsets) - 1)
    batches = session_parallel_batches(test_items, offsets, order, width)
    if chunk and mode != 'tiebreaking':
        counts = counts_chunked(gru, batches, width, cand, chunk)
    else:
        counts = counts_per_step(gru, batches, width, cand, mode == 'tiebreaking')
    # the bar counts scored events (a chunked run lists its minibatches first, so batches would run ahead)
    for out, n_greater, n_equal in progress(counts, len(test_items) - len(order), 'Evaluation'):
        if cand is not None:  # a target outside the candidate set is ranked as if it were added to it
            n_equal = n_equal + ~in_cand[out]
        rank = ranks_from_counts(n_greater, n_equal, mode)
        hit = rank[None, :] <= cut
        hits += hit.sum(axis=1)
        rr += (hit / rank[None, :]).sum(axis=1)
        n += len(out)
    if n == 0:
        raise GRU4RecError('The test data has no session with at least 2 known events: nothing to evaluate')
    if return_details:
        return list(hits / n), list(rr / n), {'events': int(n), 'dropped_events': n_dropped}
    return list(hits / n), list(rr / n)


evaluate = evaluate_gpu
