"""_item_scores and recommend.Ranking: the fast top-k from raw scores in item blocks gives the reference path's
items and scores (the prediction graph's activated scores + recommend.top_k), falls back to it where a tie
could change the result, and the block statistics equal a numpy re-computation."""
import numpy as np
import pytest

import _item_scores as S
from gru4rec import GRU4Rec
from recommend import LiveSessions, ModelAdapter, recommend_batch, top_k
from test_recommend import sessions   # the same generated click logs


def test_monotone_activation():
    assert S.monotone_activation('softmax_logit') == ('softmax', [])
    assert S.monotone_activation('elu-0.5')[0] == 'elu' and S.monotone_activation('tanh') == ('tanh', [])
    assert S.monotone_activation('leaky-nan') is None and S.monotone_activation('selu-1-nan') is None


@pytest.mark.parametrize('block', [4, 7, 128])
def test_block_scores_and_statistics_equal_numpy(block):
    rng = np.random.default_rng(block)
    W, b, h = (rng.standard_normal(s).astype(np.float32) for s in ((103, 6), 103, (5, 6)))
    raw = S.ItemBlocks(W, b, block).scores(h, softmax=True)
    ref = h @ W.T + b
    np.testing.assert_allclose(raw.rows(np.arange(5)), ref, rtol=1e-5, atol=1e-5)
    assert raw.blocks.shape[0] * block >= 103 and np.isneginf(raw.rows(np.arange(5))).sum() == 0
    padded = np.pad(ref, ((0, 0), (0, raw.blocks.shape[0] * block - 103)), constant_values=-np.inf)
    np.testing.assert_allclose(raw.block_max, padded.reshape(5, -1, block).max(axis=2).T, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(raw.row_max, ref.max(axis=1), rtol=1e-5)
    np.testing.assert_allclose(raw.row_sum, np.exp(ref - ref.max(axis=1, keepdims=True)).sum(axis=1), rtol=1e-5)


@pytest.mark.parametrize('kind', ['softmax', 'linear', 'tanh'])
def test_select_blocked_and_best_k_are_the_full_sort(kind):
    """With exclusions and many ties: rows marked exact equal a full sort of the activated scores by (score
    desc, item); tanh of large scores ties at 1.0, and those rows are marked not exact."""
    rng = np.random.default_rng(1)
    m, n, k, block = 6, 300, 5, 8
    W = rng.standard_normal((n, 4)).astype(np.float32) * (20 if kind == 'tanh' else 1)
    blocks = S.ItemBlocks(W, np.zeros(n, np.float32), block)
    raw = blocks.scores(rng.standard_normal((m, 4)).astype(np.float32), softmax=kind == 'softmax')
    full = raw.rows(np.arange(m))
    act_all = S.activate(kind, [], full, raw.row_max[:, None] if kind == 'softmax' else None,
                         raw.row_sum[:, None] if kind == 'softmax' else None)
    exr = np.repeat(np.arange(m), 3)
    exi = np.argsort(-full, axis=1)[:, [0, 2, 7]].ravel()     # some of each row's best items
    want_items, want_top, want_counts = top_k(act_all, k, None, exr, exi)
    ns = np.arange(m)
    r, items, vals, bound = S.select_blocked(raw, ns, k + 4, exr, exi)
    rm, rs = raw.row_max, raw.row_sum
    act = (lambda v, rows: S.activate(kind, [], v, rm[rows], rs[rows])) if kind == 'softmax' else \
        (lambda v, rows: S.activate(kind, [], v))
    got_items, got_top, got_counts, exact = S.best_k(r, items, vals, bound, m, k, act)
    assert not any(set(exi.reshape(m, 3)[row]) & set(got_items[row]) for row in np.flatnonzero(exact))
    for row in np.flatnonzero(exact):
        assert got_items[row].tolist() == want_items[row].tolist()
        np.testing.assert_allclose(got_top[row], want_top[row], rtol=1e-6)
    if kind == 'tanh':
        assert not exact.all()     # the saturated rows tie at 1.0 beyond the candidates
    else:
        assert exact.all()


@pytest.fixture(scope='module')
def model():
    m = GRU4Rec(layers=[8], n_epochs=1, batch_size=8, n_sample=16, loss='cross-entropy', final_act='softmax',
                backend='python')
    m.fit(sessions(150, 200, 0))
    return m


@pytest.mark.parametrize('k', [1, 3, 10, 150])
def test_ranking_equals_the_reference_path(model, k):
    """Blocks of 4 items (50 blocks): the block shortcut for k <= 8, the full raw sort above, the reference for
    k close to the catalogue; with candidates and exclusions."""
    ad = ModelAdapter(model, item_block=4)
    rng = np.random.default_rng(k)
    idx = rng.integers(0, ad.n_items, 9)
    _, H = ad.step(rng.integers(0, ad.n_items, 9), ad.zero_state(9))
    scores, _ = ad.step(idx, H)
    ranking, _ = ad.ranked_step(idx, H)
    assert ranking.raw is not None                       # the fast path is on (CPU backend, softmax)
    ns = np.array([0, 2, 3, 5, 8])
    exr, exi = np.repeat(np.arange(5), 2), rng.integers(0, ad.n_items, 10)
    cand = np.sort(rng.choice(ad.n_items, 120, replace=False))
    for args in [(None, None, None), (None, exr, exi), (cand, None, None), (cand, exr, exi)]:
        want = top_k(scores[ns], k, *args)
        got = ranking.top_k(ns, k, *args)
        assert got[0].tolist() == want[0].tolist() and got[2].tolist() == want[2].tolist()
        np.testing.assert_allclose(got[1], want[1], rtol=1e-5)


def test_ties_beyond_the_candidates_fall_back_to_the_reference():
    """A linear model whose scores all tie (zero item matrix, zero bias): the k-th ties with every item left
    out, so each row is ranked by the reference path: the first k items by row."""
    m = GRU4Rec(layers=[8], n_epochs=1, batch_size=8, n_sample=16, loss='bpr-max', final_act='linear', backend='python')
    m.fit(sessions(40, 60, 1))
    for name in ('Wy', 'By'):
        m.weights_[name].set_value(np.zeros_like(m.weights_[name].get_value()))
    ad = ModelAdapter(m, item_block=4)
    ranking, _ = ad.ranked_step(np.array([1, 2, 3]), ad.zero_state(3))
    items, top, counts = ranking.top_k(np.arange(3), 3)
    assert items.tolist() == [[0, 1, 2]] * 3 and (top == 0).all()


def test_live_sessions_and_batch_on_the_fast_path_equal_the_reference(model):
    """LiveSessions (micro-batched clicks) and recommend_batch with small item blocks give the items of the
    reference path (an adapter with fast=False)."""
    data = sessions(30, 200, 2)
    data = data[data.ItemId.isin(model.itemidmap.index)]
    fast, ref = ModelAdapter(model, item_block=4), ModelAdapter(model, fast=False)
    a = recommend_batch(fast, data, k=5, every_event=True)
    b = recommend_batch(ref, data, k=5, every_event=True)
    assert a.item.tolist() == b.item.tolist()
    np.testing.assert_allclose(a.score, b.score, rtol=1e-5)
    clicks = list(zip(data.SessionId, data.ItemId))
    la, lb = LiveSessions(fast), LiveSessions(ref)
    for i in range(0, len(clicks), 7):
        for x, y in zip(la.click_many(clicks[i:i + 7], k=4, exclude_seen=True), lb.click_many(clicks[i:i + 7], k=4, exclude_seen=True)):
            assert x.items == y.items and np.allclose(x.scores, y.scores, rtol=1e-5)
