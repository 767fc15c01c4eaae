"""Full-catalogue next-item evaluation of a trained GRU4Rec: recall@N and MRR@N for several N at once.

Every test session starts from a zero hidden state; each event predicts the immediately next item.
The target's rank counts the candidates (all training items, or a given candidate set) that score
above it; ties are resolved by `mode`:
  standard      #(score > target) + 1                            (optimistic)
  conservative  #(score >= target)                               (pessimistic; the target counts itself)
  median        #(score > target) + (#(score == target) - 1) / 2 + 1
  tiebreaking   standard, after adding uniform(0, 1e-10) noise to every score

Read top to bottom: the compiled rank counts (graphs on the model's prediction step, _graph.prediction_step),
the two evaluation loops (one call per minibatch, or chunks of fixed-width steps), and evaluate_gpu.
Shapes: B = minibatch width (session slots), K = steps per call, C = candidate items.
"""

import numpy as np
import pandas as pd
import pytensor
import pytensor.tensor as pt

if __package__:
    from . import _batches, _graph, _item_ids, _params, _sampling, custom_opt
else:
    import _batches, _graph, _item_ids, _params, _sampling, custom_opt  # noqa: E401

MODES = ('standard', 'conservative', 'median', 'tiebreaking')
GRU4RecError = _params.GRU4RecError


# --- rank counts ----------------------------------------------------------------------------------------

def rank_step(gru, p, X, Y, R, H, C=None, srng=None):
    """One evaluation step: (n_greater, n_equal, *new_H). n_greater/n_equal count the candidates (all
    items, or the indices C) scoring above/equal to the target Y of each row; rows with R = 1 get a zero
    state afterwards. srng: add uniform(0, 1e-10) tie-break noise to every score."""
    if C is None:
        scores, new_H = _graph.prediction_step(p, gru.weights_, X, H)
    else:
        scores, new_H = _graph.prediction_step(p, gru.weights_, X, H, pt.concatenate([Y, C]))
    if srng is not None:
        scores = scores + srng.uniform(scores.shape) * np.float32(1e-10)
    if C is None:
        target, cand = scores[pt.arange(Y.shape[0]), Y][:, None], scores
    else:
        target, cand = _graph.diag(scores)[:, None], scores[:, Y.shape[0]:]
    counts = [pt.sum(pt.gt(cand, target), axis=1, dtype='int64'), pt.sum(pt.eq(cand, target), axis=1, dtype='int64')]
    return counts + [h * (1 - R)[:, None] for h in new_H]


def static_eval_shape(gru, width, n_cand):
    """(width, n_cand) as the static shapes of an evaluation graph with candidates on JAX, which needs
    them (the target diagonal and the candidate columns are sliced by them); (None, None) elsewhere."""
    return (width, n_cand) if n_cand is not None and gru.effective_backend == 'jax' else (None, None)


def rank_function(gru, with_candidates=False, tiebreak=False, width=None, n_cand=None):
    """Compiled step for evaluation: f(X, Y, R, [C], *H) -> (n_greater, n_equal, *new_H) (see rank_step),
    for minibatches of `width` rows and `n_cand` candidates (JAX compiles one per size, see
    static_eval_shape; any size elsewhere). Cached on the model."""
    width, n_cand = static_eval_shape(gru, width, n_cand if with_candidates else None)

    def build():
        p = _params.checked(gru.get_params())
        X, Y = (pt.tensor(n, dtype='int32', shape=(width,)) for n in 'XY')
        R = pt.tensor('R', dtype=_graph.FLOAT, shape=(width,))
        H = [pt.tensor(f'H{i}', dtype=_graph.FLOAT, shape=(width, u)) for i, u in enumerate(p.layers)]
        C = pt.tensor('C', dtype='int32', shape=(n_cand,)) if with_candidates else None
        srng = _sampling.RandomChain(p.seed) if tiebreak else None
        outs = rank_step(gru, p, X, Y, R, H, C, srng)
        inputs = [X, Y, R] + ([C] if with_candidates else []) + H
        fn = pytensor.function(inputs, outs, updates=srng.updates if srng else None, mode=gru.compile_mode())
        fn.trust_input = True
        return fn
    return gru.cached_function(('rank', with_candidates, tiebreak, width, n_cand), build)


def rank_chunk_function(gru, steps, width, with_candidates=False, n_cand=None):
    """Evaluation of `steps` minibatches of `width` rows in one call (no tie-break noise): the compiled
    scan over rank_step, f(X, Y, R: steps x width, [C], *H: width x L_i) -> (n_greater, n_equal:
    steps x width, *final_H). On Numba and the python backend one compiled function serves any size.
    Cached on the model."""
    if gru.effective_backend != 'jax':
        steps = None
    width, n_cand = static_eval_shape(gru, width, n_cand if with_candidates else None)

    def build():
        p = _params.checked(gru.get_params())
        X, Y = (pt.tensor(f'{n}_seq', dtype='int32', shape=(steps, width)) for n in 'XY')
        R = pt.tensor('R_seq', dtype=_graph.FLOAT, shape=(steps, width))
        C = pt.tensor('C', dtype='int32', shape=(n_cand,)) if with_candidates else None
        H0 = [pt.tensor(f'H{i}_init', dtype=_graph.FLOAT, shape=(width, u)) for i, u in enumerate(p.layers)]
        res = pytensor.scan(lambda x, y, r, *h: rank_step(gru, p, x, y, r, list(h), C), sequences=[X, Y, R],
                            outputs_info=[None, None] + H0, return_list=True, return_updates=False)
        inputs = [X, Y, R] + ([C] if with_candidates else []) + H0
        fn = pytensor.function(inputs, res[:2] + [h[-1] for h in res[2:]], mode=gru.compile_mode())
        fn.trust_input = True
        return fn
    return gru.cached_function(('rank_chunk', with_candidates, steps, width, n_cand), build)


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


# --- evaluation loops -----------------------------------------------------------------------------------

def prepare_test_data(gru, test_data, session_key, item_key, time_key):
    """Keep the test events whose item the model knows; sort by session, time, item (the item IDs in the
    training IDs' type, _item_ids: the order does not depend on the test file's format). Returns (item
    indices, session offsets, number of dropped events)."""
    if not isinstance(test_data, pd.DataFrame):
        raise GRU4RecError(f'test_data must be a pandas DataFrame, got {type(test_data).__name__}')
    data = _batches.session_columns(test_data, (session_key, item_key, time_key), 'test')
    ids = gru.itemidmap_.index
    idx = _item_ids.item_rows(ids, data[item_key], 'item IDs of the test data')
    known = idx >= 0
    n_dropped = int((~known).sum())
    if not known.any():
        raise GRU4RecError('The test data shares no items with the training data')
    data = data[known].assign(**{item_key: ids[idx[known]].to_numpy(), '_idx': idx[known]})
    data = data.sort_values([session_key, time_key, item_key], kind='stable')
    return data['_idx'].values.astype(np.int32), _batches.session_offsets(data[session_key].values), n_dropped


def counts_per_step(gru, batches, width, cand, tiebreak):
    """Yield (targets, n_greater, n_equal) of each minibatch, one compiled call per minibatch (the batch
    shrinks as sessions run out, as in the original)."""
    n_cand = None if cand is None else len(cand)
    layers = _params.checked(gru.get_params()).layers
    H = [np.zeros((width, u), dtype=np.float32) for u in layers]
    for inp, out, reset, keep in batches:
        if keep is not None:
            H = [h[keep] for h in H]
        fn = rank_function(gru, with_candidates=cand is not None, tiebreak=tiebreak, width=len(inp), n_cand=n_cand)
        n_greater, n_equal, *H = fn(inp, out, reset.astype(np.float32), *([cand] if cand is not None else []), *H)
        yield out, n_greater, n_equal


def counts_chunked(gru, batches, width, cand, chunk):
    """The same counts as counts_per_step, `chunk` minibatches per compiled call (rank_chunk_function),
    yielded per call. The minibatches are packed into fixed-width steps (_batches.fixed_width_steps): a
    finished slot's row scores item 0 with a reset and its counts are dropped (rows do not interact in
    evaluation, so nothing else needs masking). On JAX (static shapes) the minibatches are split into calls
    of equal length (at most `chunk`; the last is padded with idle steps, by fewer steps than there are
    calls), so that the compiled function of a test set is reused and little is computed in vain; a call's
    results are read after the next call has been dispatched, so the host's preparation overlaps the
    device's work."""
    n_cand = None if cand is None else len(cand)
    pad = gru.effective_backend == 'jax'
    if pad:
        batches = list(batches)
        n_calls = max(1, -(-len(batches) // chunk))
        chunk = max(1, -(-len(batches) // n_calls))
    layers = _params.checked(gru.get_params()).layers
    H = [np.zeros((width, u), dtype=np.float32) for u in layers]

    def calls():
        nonlocal H
        for call in _batches.calls_of(_batches.fixed_width_steps(batches, width, fill_item=0), chunk):
            k = chunk if pad else len(call)
            call += [_batches.idle_step(width, fill_item=0)] * (k - len(call))
            X, Y, R, A = _batches.stacked([step[1:] for step in call])     # K x B each
            fn = rank_chunk_function(gru, k, width, with_candidates=cand is not None, n_cand=n_cand)
            n_greater, n_equal, *H = fn(X, Y, R, *([cand] if cand is not None else []), *H)
            yield Y, n_greater, n_equal, A > 0

    for out, n_greater, n_equal, active in _batches.read_one_call_late(calls()):
        # (targets, n_greater, n_equal) of the active entries (waits for the call to finish)
        yield out[active], np.asarray(n_greater)[active], np.asarray(n_equal)[active]


# --- evaluation -----------------------------------------------------------------------------------------

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
    gru.check_trained()
    cut_off = [int(cut_off)] if np.isscalar(cut_off) else [int(c) for c in cut_off]
    if not cut_off or min(cut_off) < 1:
        raise GRU4RecError(f'cut_off must be positive integers, got {cut_off}')
    if mode not in MODES:
        raise GRU4RecError(f'Unknown evaluation mode {mode!r} (use one of: {", ".join(MODES)})')
    if int(batch_size) < 1:
        raise GRU4RecError('batch_size must be >= 1')
    chunk = (custom_opt.EVAL_CHUNK_BY_DEFAULT[gru.effective_backend] if chunk is None
             else _params.to_int_arg(chunk, 'chunk'))
    print('Measuring Recall@{} and MRR@{}'.format(','.join(map(str, cut_off)), ','.join(map(str, cut_off))))
    test_items, offsets, n_dropped = prepare_test_data(gru, test_data, session_key, item_key, time_key)
    if n_dropped:
        print(f'Dropped {n_dropped} test events with items unseen in training '
              f'({n_dropped / (n_dropped + len(test_items)):.2%} of the test events)')
    cand, in_cand = candidates(gru, items)
    width = min(int(batch_size), len(offsets) - 1)
    order = np.arange(len(offsets) - 1)
    batches = _batches.session_parallel_batches(test_items, offsets, order, width)
    if chunk and mode != 'tiebreaking':
        counts = counts_chunked(gru, batches, width, cand, chunk)
    else:
        counts = counts_per_step(gru, batches, width, cand, mode == 'tiebreaking')
    # the bar counts scored events (a chunked run lists its minibatches first, so batches would run ahead)
    hits, rr, n = recall_and_rr(_batches.progress(counts, len(test_items) - len(order), 'Evaluation'), cut_off,
                                mode, in_cand)
    if n == 0:
        raise GRU4RecError('The test data has no session with at least 2 known events: nothing to evaluate')
    if return_details:
        return list(hits / n), list(rr / n), {'events': int(n), 'dropped_events': n_dropped}
    return list(hits / n), list(rr / n)


def candidates(gru, items):
    """(candidate item indices, a mask over all items of them) of candidate item IDs; (None, None) for all."""
    if items is None:
        return None, None
    items = items if isinstance(items, (pd.Index, pd.Series, np.ndarray)) else list(items)
    cand = pd.unique(_item_ids.item_rows(gru.itemidmap_.index, items, 'candidate items (items=...)'))
    cand = cand[cand >= 0].astype(np.int32)
    if len(cand) == 0:
        raise GRU4RecError('None of the candidate items (items=...) was seen in training')
    in_cand = np.zeros(gru.n_items_, dtype=bool)
    in_cand[cand] = True
    return cand, in_cand


def recall_and_rr(counts, cut_off, mode, in_cand=None):
    """(hits per cut-off, sum of reciprocal ranks of hits per cut-off, events) over the (targets, n_greater,
    n_equal) of `counts`. in_cand: the candidate mask; a target outside it is ranked as if it were added."""
    cut = np.asarray(cut_off, dtype=np.float64)[:, None]
    hits, rr = np.zeros(len(cut_off)), np.zeros(len(cut_off))
    n = 0
    for out, n_greater, n_equal in counts:
        if in_cand is not None:
            n_equal = n_equal + ~in_cand[out]
        rank = ranks_from_counts(n_greater, n_equal, mode)
        hit = rank[None, :] <= cut
        hits += hit.sum(axis=1)
        rr += (hit / rank[None, :]).sum(axis=1)
        n += len(out)
    return hits, rr, n


evaluate = evaluate_gpu
