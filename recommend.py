"""Recommendations for sessions that are happening now: top-k next items from a trained GRU4Rec.

Three ways in, all on the same scores as the evaluation (the model's activated scores over the whole
catalogue, from one GRU step per click, every session starting from a zero hidden state):

* ``recommend(model, clicks, k=20)``: the top-k for one session after its clicks so far.
* ``recommend_batch(model, events, k=20)``: the top-k for many sessions at once (a DataFrame of
  session/item/time columns, or a mapping session -> list of items), session-parallel minibatches as in
  the evaluation; a tidy DataFrame (session, rank, item, score) comes back.
* ``LiveSessions(model)``: a bounded store of live sessions for serving: one click in, top-k out, one GRU
  step per click (``click_many``: one step for many sessions), least recently used / idle sessions evicted,
  ``end(session)`` forgets a session.

Options everywhere: ``exclude_seen`` (drop the items the session already clicked), ``candidates`` (recommend
only from these item IDs). Scores are always the model's scores over the full catalogue (softmax over all
items for a softmax model); ``candidates`` and ``exclude_seen`` only filter, so a score means the same
whatever the filter.

UNKNOWN ITEMS (one policy, applied by every entry point, the command line and the HTTP service): a click
on an item ID the model was not trained on is *skipped*: it does not change the session's state and the
session goes on from its previous known clicks. Results list skipped clicks (``skipped``); the
recommendations are those after the session's known clicks so far, and a session with no known click has
none (an empty list; no rows in ``recommend_batch``). Unknown candidate IDs are ignored; a candidate set
with no known item is an error. IDs of another type than the model's (a JSON string "123" for integer IDs, a
number for the string IDs of a text file) are converted when nothing is lost; others are an error naming both
types (_item_ids, the rule of the evaluation and predict_next_batch too).

EVICTED / ENDED SESSIONS: a click for a session ID that the store does not hold (new, ended, evicted as
least recently used, or idle longer than ``idle_timeout``) starts a new session from a zero state, exactly
like a brand-new session; the result says so (``new_session=True``), so a client that sees it for a
session it considered ongoing knows its earlier clicks were forgotten (and may replay them with
``recommend``).

All access to the model's internals goes through ``ModelAdapter`` below (one place).
"""
import math
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

if __package__:
    from . import _interrupts, _item_ids, _item_scores
    from ._params import GRU4RecError
else:
    import _interrupts, _item_ids, _item_scores  # noqa: E401
    from _params import GRU4RecError

__all__ = ['ModelAdapter', 'Ranking', 'Recommendations', 'top_k', 'recommend', 'recommend_batch', 'LiveSessions', 'GRU4RecError']


# ---------------------------------------------------------------------------------------------
# THE ADAPTER: the only code that touches GRU4Rec's internals. Uses:
#   model.check_trained()                    trained/loaded check
#   model.prediction_graph(X, H)             the prediction-mode step graph (activated scores, new states)
#   model.cached_function(key, build)        the model's cache of compiled functions (reset by fit/set_params)
#   model.compile_mode(), model.effective_backend   PyTensor compile mode / backend name
#   model.layers, model.itemidmap_, model.n_items_, model.get_params(), model.get_weights() (Wy, By)
# ---------------------------------------------------------------------------------------------

class ModelAdapter:
    """A trained GRU4Rec seen as: an item index (ID -> row), a zero state, and one compiled prediction
    step f(item indices, states) -> (activated scores M x n_items, new states). On the CPU backends with a
    monotone final activation, ranked_step ranks by the fast path of _item_scores (item_block: items per
    block of its copy of the item matrix; fast=False: always by the prediction graph's scores)."""

    def __init__(self, model, item_block=_item_scores.BLOCK, fast=True):
        if not hasattr(model, 'prediction_graph'):
            raise GRU4RecError(f'Expected a GRU4Rec model, got {type(model).__name__}')
        model.check_trained()
        self.model = model
        self.layers = [int(u) for u in model.layers]
        self.item_ids = model.itemidmap_.index
        self.n_items = int(model.n_items_)
        self.backend = model.effective_backend
        self._id_kind = _item_ids.kind_of(self.item_ids)
        self._lookup = None   # item ID -> row, built at the first small lookup
        self._id_list = None  # row -> item ID as a plain Python value, built at the first item_id
        self._pad = self.backend == 'jax'   # static shapes: pad M to a power of two (few recompiles)
        self._item_block = int(item_block)
        self._fast = None if fast else False   # (ItemBlocks, activation kind, args); False: not used

    # -- items ----------------------------------------------------------------------------------
    def index_of(self, ids, what='item IDs'):
        """Row of each item ID, -1 for unknown (or missing) IDs. IDs of another type than the model's are
        converted to it when that loses nothing (a JSON string "123" for a numeric ID 123, a number for the
        string ID of a CSV); others raise GRU4RecError naming both types (the one rule of _item_ids)."""
        if len(ids) > _item_ids.FEW:
            return _item_ids.item_rows(self.item_ids, ids, what, self._id_kind)
        values = ids.tolist() if isinstance(ids, (np.ndarray, pd.Index, pd.Series)) else list(ids)
        # a few IDs (a click, a request): converted one by one, then a dict lookup (no array conversions)
        converted, _ = _item_ids.to_model_ids(values, self.item_ids, what, self._id_kind)
        if self._lookup is None:
            self._lookup = {v: i for i, v in enumerate(self.item_ids.tolist())}
        lk = self._lookup
        return np.fromiter((lk.get(v, -1) if _hashable(v) else -1 for v in converted), dtype=np.int64,
                           count=len(values))

    def item_id(self, rows):
        """Item IDs of rows (plain Python values, for JSON)."""
        if self._id_list is None:    # (a list lookup per ID: indexing the pandas Index costs ~10 us per call)
            self._id_list = self.item_ids.tolist()
        ids = self._id_list
        return [ids[r] for r in np.asarray(rows, dtype=np.int64).tolist()]

    # -- the step -------------------------------------------------------------------------------
    def zero_state(self, n):
        return [np.zeros((n, u), dtype=np.float32) for u in self.layers]

    def step(self, idx, H):
        """One GRU step for M rows: idx (M item rows), H (list of M x L_i float32). Returns (scores M x
        n_items as numpy float32, list of new M x L_i states as numpy)."""
        scores, *new_H = self._run(self._step_fn(), idx, H)
        return scores, new_H

    def advance(self, idx, H):
        """The new states only (the same step graph with its scores pruned: no item-matrix product), for
        clicks whose recommendations nobody asks for (recommend_batch's earlier clicks)."""
        return self._run(self._step_fn(with_scores=False), idx, H)

    def ranked_step(self, idx, H):
        """One GRU step for M rows whose top-k is wanted: (Ranking of the M rows, new states)."""
        fast = self._fast_path()
        if not fast or len(idx) < 2:   # (one row: the graph's matrix-vector product is faster than the blocks)
            scores, new_H = self.step(idx, H)
            return Ranking(self, scores=scores), new_H
        new_H = self.advance(idx, H)
        blocks, kind, args = fast
        return Ranking(self, raw=blocks.scores(new_H[-1], kind == 'softmax'), act=(kind, args), idx=idx, H=H), new_H

    def _fast_path(self):
        if self._fast is None:
            act = _item_scores.monotone_activation(self.model.get_params()['final_act'])
            if self.backend == 'jax' or act is None:   # (JAX: the product stays on its device)
                self._fast = False
            else:
                w = self.model.get_weights()
                self._fast = (_item_scores.ItemBlocks(w['Wy'], w['By'], self._item_block),) + act
        return self._fast

    def _run(self, fn, idx, H):
        m = len(idx)
        x = np.ascontiguousarray(idx, dtype=np.int32)
        H = [np.ascontiguousarray(h, dtype=np.float32) for h in H]
        if self._pad and m:
            width = 1 << (m - 1).bit_length()
            if width != m:
                x = np.concatenate([x, np.zeros(width - m, np.int32)])
                H = [np.concatenate([h, np.zeros((width - m, h.shape[1]), np.float32)]) for h in H]
        out = fn(x, *H)
        # the scores are read before the next call; the (small) states are copied, as sessions keep them
        return [np.asarray(o)[:m] if i == 0 and len(out) > len(H) else np.array(o)[:m] for i, o in enumerate(out)]

    def _step_fn(self, with_scores=True):
        model = self.model

        def build():
            import pytensor
            import pytensor.tensor as pt
            X = pt.ivector('X')
            H = [pt.fmatrix(f'H{i}') for i in range(len(self.layers))]
            scores, new_H = model.prediction_graph(X, H)
            fn = pytensor.function([X] + H, ([scores] if with_scores else []) + new_H, mode=model.compile_mode())
            fn.trust_input = True
            return fn
        return model.cached_function(('recommend_step', with_scores), build)

    def metadata(self):
        p = self.model.get_params()
        return {'n_items': self.n_items, 'layers': self.layers, 'loss': p['loss'], 'final_act': p['final_act'],
                'embedding': p['embedding'], 'constrained_embedding': p['constrained_embedding'],
                'backend': self.backend,
                'item_id_type': {'int': 'number', 'float': 'number', 'str': 'string'}.get(self._id_kind, 'mixed'),
                'keys': {'session': p['session_key'], 'item': p['item_key'], 'time': p['time_key']}}


def _hashable(v):
    try:
        hash(v)
        return True
    except TypeError:
        return False


def _adapter(model):
    """One adapter per model object (kept on it, so its compiled step is built once)."""
    if isinstance(model, ModelAdapter):
        return model
    return model.cached_function('recommend_adapter', lambda: ModelAdapter(model))


# ---------------------------------------------------------------------------------------------
# top-k
# ---------------------------------------------------------------------------------------------

def _check_k(k):
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise GRU4RecError(f'k must be a positive integer, got {k!r}')
    return int(k)


def _candidate_rows(ad, candidates):
    """Sorted unique rows of the known candidate IDs (None: all items)."""
    if candidates is None:
        return None
    if isinstance(candidates, (str, bytes)) or not hasattr(candidates, '__iter__'):
        raise GRU4RecError('candidates must be a list of item IDs')
    rows = ad.index_of(list(candidates), 'candidate items')
    rows = np.unique(rows[rows >= 0])
    if len(rows) == 0:
        raise GRU4RecError('None of the candidate items is known to the model')
    return rows


def top_k(scores, k, cand=None, excluded_rows=None, excluded_items=None):
    """Exact top-k columns of each row of `scores` (M x n_items), ordered by score (desc), ties by item row: (item rows M x k', scores M x k', counts M) with
    k' <= k; entries past a row's count are padding. cand: allowed item rows (None: all); excluded_rows/
    excluded_items: flat (row, item) pairs that are not allowed."""
    m = scores.shape[0]
    if cand is not None:
        s = scores[:, cand]
        if excluded_rows is not None and len(excluded_rows):
            pos = np.searchsorted(cand, excluded_items)
            pos = np.minimum(pos, len(cand) - 1)
            hit = cand[pos] == excluded_items
            s[excluded_rows[hit], pos[hit]] = -np.inf
    else:
        s = scores
        if excluded_rows is not None and len(excluded_rows):
            s = scores.copy()
            s[excluded_rows, excluded_items] = -np.inf
    n = s.shape[1]
    kk = min(k, n)
    if m and n >= 8 * kk * 16 and kk <= 256:
        part, top = _top_k_by_blocks(s, kk)
    else:
        if kk < n:
            part = np.argpartition(-s, kk - 1, axis=1)[:, :kk]
        else:
            part = np.broadcast_to(np.arange(n), (m, n)).copy()
        top = np.take_along_axis(s, part, axis=1)
        order = np.lexsort((part, -top), axis=1)   # by score (desc), ties by item row
        part = np.take_along_axis(part, order, axis=1)
        top = np.take_along_axis(top, order, axis=1)
    counts = (top > -np.inf).sum(axis=1)   # excluded items (-inf) sort last and are cut
    items = part if cand is None else cand[part]
    return items, top, counts


def _top_k_by_blocks(s, k):
    """Exact top-k of each row of a wide matrix, faster than argpartition over whole rows: the k-th largest of
    the rows' block maxima is a lower bound of the k-th largest entry (the top k block maxima are k entries), so
    only the few entries at or above it are sorted. Same result as a full sort by (score desc, column)."""
    m, n = s.shape
    n_blocks = min(n, max(8 * k, 256))
    bounds = np.arange(0, n, -(-n // n_blocks))
    block_max = np.maximum.reduceat(s, bounds, axis=1)
    nb = block_max.shape[1]
    thr = np.partition(block_max, nb - k, axis=1)[:, nb - k]
    r, c = np.divmod(np.flatnonzero(s >= thr[:, None]), n)   # (2-D np.nonzero is ~10x slower on wide rows)
    vals = s[r, c]
    order = np.lexsort((c, -vals, r))
    r, c, vals = r[order], c[order], vals[order]
    first = np.searchsorted(r, np.arange(m))
    rank = np.arange(len(r)) - first[r]
    keep = rank < k
    part = np.zeros((m, k), dtype=np.int64)
    top = np.full((m, k), -np.inf, dtype=s.dtype)
    part[r[keep], rank[keep]] = c[keep]
    top[r[keep], rank[keep]] = vals[keep]
    return part, top


class Ranking:
    """The scores of one step's M rows, ready for top_k. Either the activated scores of the prediction graph
    (the reference), or raw scores in blocks (ModelAdapter.ranked_step's fast path): then the top-k comes from
    a few candidates (_item_scores), and a row where that cannot be decided exactly, or a k too large for a
    shortcut, is ranked by the reference step again."""
    EXTRA = 4        # candidates beyond k: the exactness check compares the k-th with the (k + EXTRA)-th

    def __init__(self, adapter, scores=None, raw=None, act=None, idx=None, H=None):
        self.adapter, self.scores, self.raw, self.act, self.idx, self.H = adapter, scores, raw, act, idx, H

    def top_k(self, ns, k, cand=None, excluded_rows=None, excluded_items=None):
        """top_k of rows ns (excluded_rows counted within ns)."""
        ns = np.asarray(ns, np.int64)
        if self.raw is None:
            return top_k(self.scores[ns], k, cand, excluded_rows, excluded_items)
        raw, kk, m = self.raw, k + self.EXTRA, len(ns)
        if kk >= (self.adapter.n_items if cand is None else len(cand)):
            return self._reference(ns, k, cand, excluded_rows, excluded_items)
        if cand is None and 4 * kk <= raw.block_max.shape[0]:
            r, items, vals, bound = _item_scores.select_blocked(raw, ns, kk, excluded_rows, excluded_items)
        else:
            part, top, counts = top_k(raw.rows(ns), kk, cand, excluded_rows, excluded_items)
            r, c = np.nonzero(np.arange(kk)[None, :] < counts[:, None])
            items, vals = part[r, c], top[r, c]
            bound = np.where(counts == kk, top[:, kk - 1], -np.inf)
        kind, args = self.act
        rmax, rsum = (raw.row_max[ns], raw.row_sum[ns]) if kind == 'softmax' else (None, None)
        act = (lambda v, rows: _item_scores.activate(kind, args, v, rmax[rows], rsum[rows])) if rmax is not None else \
            (lambda v, rows: _item_scores.activate(kind, args, v))
        items, top, counts, exact = _item_scores.best_k(r, items, vals, bound, m, k, act)
        if not exact.all():
            redo = np.flatnonzero(~exact)
            exr = exi = None
            if excluded_rows is not None and len(excluded_rows):
                hit = np.isin(excluded_rows, redo)
                exr, exi = np.searchsorted(redo, excluded_rows[hit]), excluded_items[hit]
            items[redo], top[redo], counts[redo] = self._reference(ns[redo], k, cand, exr, exi)
        return items, top, counts

    def _reference(self, ns, k, cand, excluded_rows, excluded_items):
        scores, _ = self.adapter.step(self.idx[ns], [h[ns] for h in self.H])
        return top_k(scores, k, cand, excluded_rows, excluded_items)


@dataclass
class Recommendations:
    """Top-k of one session: `items` (IDs, best first) and their `scores`; `skipped`: the clicks on unknown
    item IDs that were skipped; `new_session` (LiveSessions only): this click started the session from a
    zero state; `clicks`: the session's known clicks so far."""
    session: object = None
    items: list = field(default_factory=list)
    scores: list = field(default_factory=list)
    skipped: list = field(default_factory=list)
    new_session: bool = False
    clicks: int = 0

    def to_dict(self):
        return {'session': self.session, 'items': self.items, 'scores': self.scores, 'skipped': self.skipped,
                'new_session': self.new_session, 'clicks': self.clicks}


# ---------------------------------------------------------------------------------------------
# (a) one session, (b) many sessions
# ---------------------------------------------------------------------------------------------

def recommend(model, clicks, k=20, exclude_seen=False, candidates=None):
    """Top-k next items of one session after its `clicks` (item IDs, oldest first; one ID is accepted
    too). Returns Recommendations (items, scores, skipped); no items if no click is known."""
    if isinstance(clicks, (str, bytes)) or not hasattr(clicks, '__iter__'):
        clicks = [clicks]
    clicks = list(clicks)
    res = recommend_batch(model, {0: clicks}, k=k, exclude_seen=exclude_seen, candidates=candidates)
    ad = _adapter(model)
    known = ad.index_of(clicks, 'clicked item IDs') >= 0 if clicks else np.zeros(0, bool)
    return Recommendations(session=None, items=res['item'].tolist(), scores=res['score'].astype(float).tolist(),
                           skipped=[c for c, ok in zip(clicks, known) if not ok], clicks=int(known.sum()))


def _events_from(model, events, session_key, item_key, time_key):
    """(session labels in order, session code per event, item per event) from a DataFrame or a mapping."""
    if isinstance(events, pd.DataFrame):
        p = model.get_params() if hasattr(model, 'get_params') else {}
        sk, ik, tk = (session_key or p.get('session_key', 'SessionId'), item_key or p.get('item_key', 'ItemId'),
                      time_key or p.get('time_key', 'Time'))
        missing = [c for c in (sk, ik) if c not in events.columns]
        if missing:
            raise GRU4RecError(f'Missing column(s) {", ".join(missing)} in the events (columns found: '
                               f'{", ".join(map(str, events.columns))})')
        cols = [sk, ik] + ([tk] if tk in events.columns else [])
        data = events[cols]
        if tk in events.columns:   # the evaluation's order: session, time, item
            if not pd.api.types.is_numeric_dtype(data[tk]) and not pd.api.types.is_datetime64_any_dtype(data[tk]):
                try:
                    data = data.assign(**{tk: pd.to_numeric(data[tk])})
                except (ValueError, TypeError):
                    raise GRU4RecError(f'The time column {tk} has non-numeric values') from None
            try:
                data = data.sort_values([sk, tk, ik], kind='stable')
            except TypeError:
                data = data.sort_values([sk, tk], kind='stable')
        else:
            data = data.sort_values(sk, kind='stable')
        if data[sk].isna().any() or data[ik].isna().any():
            raise GRU4RecError('The events have missing session or item IDs')
        codes, labels = pd.factorize(data[sk], sort=False)
        return list(labels), codes.astype(np.int64), data[ik].to_numpy(dtype=object), data[tk].to_numpy() if tk in data else None
    if isinstance(events, dict) or hasattr(events, 'items'):
        labels, codes, items = [], [], []
        for s, clicks in events.items():
            if isinstance(clicks, (str, bytes)) or not hasattr(clicks, '__iter__'):
                clicks = [clicks]
            clicks = list(clicks)
            codes.extend([len(labels)] * len(clicks))
            labels.append(s)
            items.extend(clicks)
        return labels, np.asarray(codes, dtype=np.int64), np.asarray(items + [None], dtype=object)[:-1], None
    raise GRU4RecError(f'events must be a DataFrame or a mapping session -> items, got {type(events).__name__}')


def recommend_batch(model, events, k=20, exclude_seen=False, candidates=None, every_event=False, batch_size=512,
                    session_key=None, item_key=None, time_key=None, progress=None):
    """Top-k next items of many sessions at once.

    events: a DataFrame (session, item, time columns; default names: the model's keys; sorted by session,
    time, item as the evaluation does), or a mapping session -> item IDs in click order.
    every_event: rows after every known click (column `position`: 1-based position of the click in its
    session, counting skipped clicks), else only after each session's last known click.
    Returns a DataFrame with columns session, rank (1..k), item, score (and position with every_event).
    Clicks on unknown items are skipped (see the module docstring); `df.attrs` holds `skipped_clicks`
    and `sessions_without_known_clicks`. Sessions run as session-parallel minibatches of up to
    `batch_size` rows, the longest first (one compiled step per minibatch)."""
    k = _check_k(k)
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise GRU4RecError(f'batch_size must be a positive integer, got {batch_size!r}')
    ad = _adapter(model)
    cand = _candidate_rows(ad, candidates)
    labels, codes, item_ids, _ = _events_from(ad.model, events, session_key, item_key, time_key)
    n_sessions = len(labels)
    pos_all = np.zeros(len(codes), np.int64)
    if len(codes):
        starts_all = np.r_[0, np.flatnonzero(np.diff(codes)) + 1]
        pos_all = np.arange(len(codes)) - np.repeat(starts_all, np.diff(np.r_[starts_all, len(codes)])) + 1
    rows = ad.index_of(item_ids, 'item IDs of the events') if len(item_ids) else np.zeros(0, np.int64)
    known = rows >= 0
    n_skipped = int((~known).sum())
    codes, rows, pos = codes[known], rows[known], pos_all[known]
    lengths = np.bincount(codes, minlength=n_sessions)
    offsets = np.r_[0, np.cumsum(lengths)]
    order = np.argsort(-lengths, kind='stable')
    order = order[lengths[order] > 0]
    out_sess, out_pos, out_items, out_scores, out_counts = [], [], [], [], []
    bar = _bar(progress, len(rows))
    for b0 in range(0, len(order), batch_size):
        _interrupts.check()   # a Ctrl-C that C code swallowed (a no-op outside the command lines)
        block = order[b0:b0 + batch_size]          # lengths non-increasing
        lens, start = lengths[block], offsets[block]
        H = ad.zero_state(len(block))
        for t in range(int(lens[0])):
            n_act = int(np.searchsorted(-lens, -t, side='left'))   # sessions with lens > t (a prefix)
            H = [h[:n_act] for h in H]
            x = rows[start[:n_act] + t]
            emit = np.arange(n_act) if every_event else np.flatnonzero(lens[:n_act] == t + 1)
            if len(emit) == n_act:
                ranking, H = ad.ranked_step(x, H)
            else:   # states for all, scores (the costly part) only for the sessions that end here
                H_before = H
                H = ad.advance(x, H) if n_act > len(emit) else H
                if len(emit):
                    ranking, _ = ad.ranked_step(x[emit], [h[emit] for h in H_before])
            if bar is not None:
                bar.update(n_act)
            if len(emit) == 0:
                continue
            exr = exi = None
            if exclude_seen:   # the session's known clicks up to this one
                exr = np.repeat(np.arange(len(emit)), t + 1)
                exi = rows[np.repeat(start[emit], t + 1) + np.tile(np.arange(t + 1), len(emit))]
            top_items, top_scores, counts = ranking.top_k(np.arange(len(emit)), k, cand, exr, exi)
            out_sess.append(block[emit])
            out_pos.append(pos[start[emit] + t])
            out_items.append(top_items)
            out_scores.append(top_scores)
            out_counts.append(counts)
    if bar is not None:
        bar.close()
    result = _tidy(ad, labels, out_sess, out_pos, out_items, out_scores, out_counts, every_event)
    result.attrs['skipped_clicks'] = n_skipped
    result.attrs['sessions_without_known_clicks'] = int((lengths == 0).sum())
    return result


def _tidy(ad, labels, out_sess, out_pos, out_items, out_scores, out_counts, every_event):
    cols = ['session'] + (['position'] if every_event else []) + ['rank', 'item', 'score']
    if not out_sess:
        return pd.DataFrame({c: pd.Series(dtype=object if c in ('session', 'item') else
                                          (np.float32 if c == 'score' else np.int64)) for c in cols})
    sess = np.concatenate(out_sess)
    posn = np.concatenate(out_pos)
    counts = np.concatenate(out_counts)
    width = max(x.shape[1] for x in out_items)
    items = np.concatenate([np.pad(x, ((0, 0), (0, width - x.shape[1]))) for x in out_items])
    scores = np.concatenate([np.pad(x, ((0, 0), (0, width - x.shape[1]))) for x in out_scores])
    mask = np.arange(width)[None, :] < counts[:, None]
    r, c = np.nonzero(mask)
    order = np.lexsort((c, posn[r], sess[r]))    # sessions in input order, then position, then rank
    r, c = r[order], c[order]
    lab = np.asarray(labels + [None], dtype=object)[:-1]
    data = {'session': lab[sess[r]]}
    if every_event:
        data['position'] = posn[r]
    data['rank'] = c.astype(np.int64) + 1
    data['item'] = ad.item_ids[items[r, c]]
    data['score'] = scores[r, c].astype(np.float32)
    df = pd.DataFrame(data)
    df.index = pd.RangeIndex(len(df))
    return df


def _bar(progress, total):
    if not progress:
        return None
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    return tqdm(total=total, desc='Recommend', unit='ev', leave=False, mininterval=0.5)


# ---------------------------------------------------------------------------------------------
# (c) live sessions
# ---------------------------------------------------------------------------------------------

class _Session:
    __slots__ = ('H', 'H_prev', 'last', 'seen', 'clicks', 'touched')

    def __init__(self, H, now):
        self.H, self.H_prev, self.last, self.seen, self.clicks, self.touched = H, None, -1, [], 0, now


class LiveSessions:
    """Live sessions for serving: one click in -> top-k out, one GRU step per click.

    capacity: most sessions held (the least recently used one is evicted to make room); idle_timeout:
    seconds after which an untouched session is dropped (None: never); max_seen: the most recent known
    clicks kept per session for exclude_seen. Evicted, expired and ended sessions are forgotten: their next
    click starts a new session (result.new_session). Thread-safe (one lock; steps run one at a time)."""

    def __init__(self, model, capacity=100000, idle_timeout=3600.0, max_seen=1000, clock=time.monotonic):
        if isinstance(capacity, bool) or not isinstance(capacity, (int, np.integer)) or capacity < 1:
            raise GRU4RecError(f'capacity must be a positive integer, got {capacity!r}')
        if idle_timeout is not None and not (isinstance(idle_timeout, (int, float)) and idle_timeout > 0):
            raise GRU4RecError(f'idle_timeout must be a positive number of seconds or None, got {idle_timeout!r}')
        self.adapter = _adapter(model)
        self.capacity, self.idle_timeout, self.max_seen, self.clock = int(capacity), idle_timeout, int(max_seen), clock
        self._sessions = OrderedDict()    # least recently used first
        self._lock = threading.RLock()
        self.evicted = 0
        self.expired = 0
        self.steps = 0

    def __len__(self):
        return len(self._sessions)

    def __contains__(self, session):
        with self._lock:
            self._expire()
            return session in self._sessions

    def stats(self):
        with self._lock:
            return {'sessions': len(self._sessions), 'capacity': self.capacity, 'idle_timeout': self.idle_timeout,
                    'evicted': self.evicted, 'expired': self.expired, 'steps': self.steps}

    def end(self, session):
        """Forget a session. Returns True if it was held."""
        with self._lock:
            return self._sessions.pop(session, None) is not None

    def click(self, session, item, k=20, exclude_seen=False, candidates=None):
        """Add one click to `session` and return its top-k (Recommendations)."""
        return self.click_many([(session, item)], k=k, exclude_seen=exclude_seen, candidates=candidates)[0]

    def click_many(self, clicks, k=20, exclude_seen=False, candidates=None):
        """Add many clicks, (session, item) pairs or dicts with keys session, item and optionally k,
        exclude_seen, candidates (per-click options), in order; one GRU step for all clicks of distinct
        sessions (a session clicked twice takes a second step after the first). Returns one Recommendations
        per click, in order."""
        reqs = []
        for c in clicks:
            if isinstance(c, dict):
                reqs.append((c['session'], c['item'], _check_k(c.get('k', k)), bool(c.get('exclude_seen', exclude_seen)),
                             c.get('candidates', candidates)))
            else:
                s, i = c
                reqs.append((s, i, _check_k(k), bool(exclude_seen), candidates))
        for r in reqs:
            if isinstance(r[0], bool) or not isinstance(r[0], (str, int, np.integer)):
                raise GRU4RecError(f'A session ID must be a string or an integer, got {r[0]!r}')
        ad = self.adapter
        cands = [_candidate_rows(ad, r[4]) for r in reqs]   # checked before any state changes
        rows = ad.index_of([r[1] for r in reqs], 'clicked item IDs') if reqs else np.zeros(0, np.int64)
        results = [None] * len(reqs)
        with self._lock:
            self._expire()
            pending = list(range(len(reqs)))
            while pending:       # rounds: the first click of each session, then the second, ...
                seen_now, this, later = set(), [], []
                for j in pending:
                    key = reqs[j][0]
                    (later if key in seen_now else this).append(j)
                    seen_now.add(key)
                self._round(this, reqs, rows, cands, results)
                pending = later
        return results

    def _round(self, js, reqs, rows, cands, results):
        ad, now = self.adapter, self.clock()
        step_j, step_x, step_H, after, sess_of = [], [], [], [], {}
        for j in js:
            key, item = reqs[j][0], reqs[j][1]
            sess = self._sessions.get(key)
            new = sess is None
            if new:
                sess = _Session(ad.zero_state(1), now)
            else:
                self._sessions.move_to_end(key)
            sess.touched = now
            res = Recommendations(session=key, new_session=bool(new and rows[j] >= 0))   # (unknown: none started)
            results[j] = res
            sess_of[j] = sess
            if rows[j] >= 0:
                step_j.append(j)
                step_x.append(rows[j])
                step_H.append(sess.H)
                after.append((key, sess, True))
            else:
                res.skipped = [item]
                if sess.last >= 0:   # unchanged state: recompute its scores from the step that made it
                    step_j.append(j)
                    step_x.append(sess.last)
                    step_H.append(sess.H_prev)
                    after.append((key, sess, False))
                # an unknown first click creates no session
            if new and rows[j] >= 0:
                self._insert(key, sess)
        if step_j:
            self._step_and_rank(step_j, step_x, step_H, after, reqs, cands, results)
        for j in js:   # (from the session object: a small store may already have evicted it again)
            results[j].clicks = sess_of[j].clicks

    def _step_and_rank(self, step_j, step_x, step_H, after, reqs, cands, results):
        ad = self.adapter
        H = [np.concatenate([h[i] for h in step_H]) for i in range(len(ad.layers))]
        ranking, new_H = ad.ranked_step(np.asarray(step_x, np.int64), H)
        self.steps += 1
        for n, (j, (key, sess, advance)) in enumerate(zip(step_j, after)):
            if advance:
                sess.H_prev, sess.H = sess.H, [h[n:n + 1].copy() for h in new_H]
                sess.last = int(step_x[n])
                sess.clicks += 1
                sess.seen.append(sess.last)
                if len(sess.seen) > self.max_seen:
                    del sess.seen[:len(sess.seen) - self.max_seen]
        # top-k, grouped by identical options (usually one group)
        groups = {}
        for n, j in enumerate(step_j):
            _, _, k, excl, _ = reqs[j]
            groups.setdefault((k, excl, id(cands[j]) if cands[j] is not None else None), []).append(n)
        for (k, excl, _), ns in groups.items():
            ns = np.asarray(ns)
            cand = cands[step_j[ns[0]]]
            exr = exi = None
            if excl:
                seen = [after[n][1].seen for n in ns]
                exr = np.repeat(np.arange(len(ns)), [len(s) for s in seen])
                exi = np.asarray([i for s in seen for i in s], dtype=np.int64)
            items, top, counts = ranking.top_k(ns, k, cand, exr, exi)
            for r, n in enumerate(ns):
                res = results[step_j[n]]
                res.items = ad.item_id(items[r, :counts[r]])
                res.scores = top[r, :counts[r]].astype(float).tolist()

    def _insert(self, key, sess):
        while len(self._sessions) >= self.capacity:
            self._sessions.popitem(last=False)
            self.evicted += 1
        self._sessions[key] = sess

    def _expire(self):
        if self.idle_timeout is None:
            return
        limit = self.clock() - self.idle_timeout
        while self._sessions:
            key, sess = next(iter(self._sessions.items()))
            if sess.touched > limit:
                break
            self._sessions.popitem(last=False)
            self.expired += 1
