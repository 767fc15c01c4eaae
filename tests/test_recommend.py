"""recommend.py: the one-session, batch and live-session APIs give the evaluation's scores and ranks, agree
with each other, and follow the unknown-item and eviction policies. Tiny models on the python backend."""
import random

import numpy as np
import pandas as pd
import pytest

import evaluation
from gru4rec import GRU4Rec, GRU4RecError
from recommend import LiveSessions, recommend, recommend_batch


def sessions(n_sessions, n_items, seed, lo=2, hi=7):
    rng = np.random.RandomState(seed)
    rows = [(s, f'i{rng.randint(n_items)}', 1000 * s + t) for s in range(n_sessions) for t in range(rng.randint(lo, hi))]
    return pd.DataFrame(rows, columns=['SessionId', 'ItemId', 'Time'])


@pytest.fixture(scope='module')
def model():
    m = GRU4Rec(layers=[8], n_epochs=1, batch_size=8, n_sample=16, loss='cross-entropy', final_act='softmax',
                backend='python')
    m.fit(sessions(120, 40, 0))
    return m


@pytest.fixture(scope='module')
def test_data():
    return sessions(40, 45, 1)   # items i40..i44 are unknown to the model


def metrics_from_rankings(model, test, cut_offs):
    """Recall/MRR computed from recommend_batch's full rankings after every event (standard ranks)."""
    known = test[test.ItemId.isin(model.itemidmap.index)].sort_values(['SessionId', 'Time', 'ItemId'], kind='stable')
    full = recommend_batch(model, known, k=model.n_items, every_event=True)
    rank_of = {(s, p, i): r for s, p, i, r in zip(full.session, full.position, full.item, full['rank'])}
    ranks = []
    for s, g in known.groupby('SessionId', sort=False):
        items = g.ItemId.tolist()
        for p in range(1, len(items)):
            ranks.append(rank_of[(s, p, items[p])])
    ranks = np.asarray(ranks, dtype=float)
    return [float(np.mean(ranks <= c)) for c in cut_offs], [float(np.mean((ranks <= c) / ranks)) for c in cut_offs]


def assert_ranks_give_the_evaluation_metrics(model, test_data, cut_offs):
    """Recall/MRR computed from recommend_batch's ranks equal evaluate_gpu's."""
    recall, mrr = evaluation.evaluate_gpu(model, test_data, cut_off=cut_offs, batch_size=7)
    r2, m2 = metrics_from_rankings(model, test_data, cut_offs)
    np.testing.assert_allclose(r2, recall, atol=1e-12)
    np.testing.assert_allclose(m2, mrr, atol=1e-12)


def test_batch_ranks_give_the_evaluation_metrics(model, test_data):
    assert_ranks_give_the_evaluation_metrics(model, test_data, [1, 3, 5, 10, 20, 40])


def test_scores_are_predict_next_batch_scores(model):
    clicks = ['i3', 'i7', 'i3', 'i11']
    model._pred_state = None
    for c in clicks:
        full = model.predict_next_batch(['s'], [c], batch=1)[0]
    res = recommend(model, clicks, k=10)
    expected = full.sort_values(ascending=False, kind='stable')[:10]
    np.testing.assert_allclose(res.scores, expected.values, rtol=1e-6)
    assert set(res.items) == set(expected.index) or np.isclose(expected.values[-1], full.sort_values().values[-11])


def assert_same_topk(a_items, a_scores, b_items, b_scores, rtol=1e-5):
    np.testing.assert_allclose(a_scores, b_scores, rtol=rtol)
    for r, (x, y) in enumerate(zip(a_items, b_items)):
        if x != y:   # allowed only between items whose scores differ by < rtol
            assert abs(a_scores[r] - b_scores[r]) <= rtol * abs(b_scores[r])
            near = [s for s in b_scores if abs(s - a_scores[r]) <= rtol * abs(a_scores[r])]
            assert len(near) >= 2, (r, x, y)


def test_live_equals_batch_equals_one_session(model, test_data):
    k = 10
    batch = recommend_batch(model, test_data, k=k, every_event=True)
    by_event = {key: g for key, g in batch.groupby(['session', 'position'])}
    # clicks of all sessions interleaved at random (each session's own order kept), sent in bursts
    data = test_data.sort_values(['SessionId', 'Time', 'ItemId'], kind='stable')
    queues = {s: list(g.ItemId) for s, g in data.groupby('SessionId')}
    stream, rnd = [], random.Random(0)
    pos = {s: 0 for s in queues}
    while queues:
        s = rnd.choice(sorted(queues))
        pos[s] += 1
        stream.append((s, queues[s].pop(0), pos[s]))
        if not queues[s]:
            del queues[s]
    live = LiveSessions(model, capacity=1000)
    i = 0
    checked = 0
    while i < len(stream):
        burst = stream[i:i + rnd.randint(1, 9)]
        i += len(burst)
        results = live.click_many([(s, it) for s, it, _ in burst], k=k)
        for (s, it, p), res in zip(burst, results):
            if (s, p) in by_event:
                g = by_event[(s, p)]
                assert res.skipped == []
                assert_same_topk(res.items, res.scores, list(g.item), list(g.score))
                checked += 1
            else:   # an unknown item: skipped, the previous recommendations are repeated
                assert res.skipped == [it]
    assert checked > 100
    # the one-session API on the full session = the batch's last row
    for s, g in data.groupby('SessionId'):
        res = recommend(model, list(g.ItemId), k=k)
        last = batch[batch.session == s]
        if len(last):
            last = last[last.position == last.position.max()]
            assert_same_topk(res.items, res.scores, list(last.item), list(last.score))


def test_unknown_items_are_skipped_everywhere(model):
    base = recommend(model, ['i1', 'i2'], k=5)
    res = recommend(model, ['nope', 'i1', 'zz', 'i2', 'x'], k=5)
    assert res.items == base.items and res.scores == base.scores
    assert res.skipped == ['nope', 'zz', 'x'] and res.clicks == 2
    empty = recommend(model, ['nope'], k=5)
    assert empty.items == [] and empty.skipped == ['nope']
    df = recommend_batch(model, {'a': ['nope'], 'b': ['i1', 'q', 'i2']}, k=5)
    assert list(df.session.unique()) == ['b'] and list(df.item) == base.items
    assert df.attrs == {'skipped_clicks': 2, 'sessions_without_known_clicks': 1}
    live = LiveSessions(model)
    first = live.click('s', 'nope', k=5)
    assert first.items == [] and first.skipped == ['nope'] and 's' not in live and not first.new_session
    assert live.click('s', 'i1', k=5).new_session          # the first known click starts the session
    after = live.click('s', 'i2', k=5)
    again = live.click('s', 'still-unknown', k=5)
    assert again.items == after.items and again.scores == after.scores and again.skipped == ['still-unknown']
    assert again.clicks == 2 and not again.new_session
    # unknown candidates are ignored; none known is an error
    res = recommend(model, ['i1'], k=5, candidates=['i3', 'unknown', 'i4'])
    assert set(res.items) == {'i3', 'i4'}
    with pytest.raises(GRU4RecError, match='candidate'):
        recommend(model, ['i1'], candidates=['unknown'])
    with pytest.raises(GRU4RecError, match='candidate'):
        live.click('s', 'i1', candidates=['unknown'])
    for bad in (['s'], None, True):
        with pytest.raises(GRU4RecError, match='session ID'):
            live.click(bad, 'i1')
    assert live.stats()['sessions'] == 1 and live._sessions['s'].clicks == 2   # the failed click changed nothing


def test_exclude_seen_and_candidates(model):
    clicks = ['i1', 'i2', 'i5']
    full = recommend(model, clicks, k=model.n_items)
    res = recommend(model, clicks, k=model.n_items, exclude_seen=True)
    assert res.items == [i for i in full.items if i not in clicks]
    cand = ['i1', 'i3', 'i9', 'i20']
    res = recommend(model, clicks, k=3, exclude_seen=True, candidates=cand)
    assert res.items == [i for i in full.items if i in cand and i not in clicks][:3]
    assert res.scores == [s for i, s in zip(full.items, full.scores) if i in res.items]
    live = LiveSessions(model)
    for c in clicks:
        out = live.click('x', c, k=3, exclude_seen=True, candidates=cand)
    assert out.items == res.items


def test_evicted_expired_and_ended_sessions_restart_from_zero(model):
    now = [0.0]
    live = LiveSessions(model, capacity=2, idle_timeout=10, clock=lambda: now[0])
    fresh = recommend(model, ['i4'], k=5)
    live.click('a', 'i1')
    live.click('a', 'i2')
    live.click('b', 'i1')
    live.click('c', 'i1')                  # evicts a (least recently used)
    assert 'a' not in live and live.evicted == 1
    res = live.click('a', 'i4', k=5)        # restarted: as a brand-new session with this one click
    assert res.new_session and res.clicks == 1 and res.items == fresh.items
    assert 'b' not in live                  # b was the least recently used now
    now[0] = 11
    assert 'c' not in live and 'a' not in live and live.expired == 2
    live.click('d', 'i1')
    assert live.end('d') is True and live.end('d') is False
    res = live.click('d', 'i4', k=5)
    assert res.new_session and res.items == fresh.items


def test_bad_arguments(model):
    with pytest.raises(GRU4RecError, match='k must be'):
        recommend(model, ['i1'], k=0)
    with pytest.raises(GRU4RecError, match='events must be'):
        recommend_batch(model, 'i1')
    with pytest.raises(GRU4RecError, match='Missing column'):
        recommend_batch(model, pd.DataFrame({'a': [1]}))
    with pytest.raises(GRU4RecError, match='capacity'):
        LiveSessions(model, capacity=0)
    with pytest.raises(GRU4RecError, match='not trained'):
        recommend(GRU4Rec(backend='python'), ['i1'])
    assert recommend(model, 'i1', k=2).clicks == 1     # one ID is one click


@pytest.mark.parametrize('k', [1, 20, 100])
def test_top_k_of_wide_rows_is_the_full_sort(k):
    """The block-maximum shortcut for wide rows gives exactly a full sort by (score desc, item), with ties,
    excluded items (-inf) and candidate subsets."""
    from recommend import top_k
    rng = np.random.default_rng(k)
    s = rng.standard_normal((7, 43000)).astype(np.float32)
    s[1] = np.round(s[1], 1)                       # many ties
    s[2, :42990] = -np.inf                         # only 10 allowed items
    ex_r = np.repeat(np.arange(7), 50)
    ex_i = rng.integers(43000, size=350)
    for cand in (None, np.sort(rng.choice(43000, 30000, replace=False))):
        items, top, counts = top_k(s.copy(), k, cand, ex_r, ex_i)
        for r in range(7):
            cols = np.arange(43000) if cand is None else cand
            v = s[r, cols].copy()
            v[np.isin(cols, ex_i[ex_r == r])] = -np.inf
            order = np.lexsort((cols, -v))
            order = order[np.isfinite(v[order])][:k]
            assert counts[r] == len(order)
            assert items[r, :counts[r]].tolist() == cols[order].tolist()
            assert top[r, :counts[r]].tolist() == v[order].tolist()


@pytest.mark.slow
def test_numba_backend_live_batch_and_evaluation_agree(test_data):
    """The same checks on the real CPU backend (Numba): ranks give evaluate_gpu's metrics; live == batch."""
    m = GRU4Rec(layers=[8], n_epochs=1, batch_size=8, n_sample=16, loss='bpr-max', final_act='elu-1', backend='numba')
    m.fit(sessions(120, 40, 0))
    assert_ranks_give_the_evaluation_metrics(m, test_data, [1, 5, 20])
    batch = recommend_batch(m, test_data, k=5, every_event=True)
    live = LiveSessions(m)
    data = test_data.sort_values(['SessionId', 'Time', 'ItemId'], kind='stable')
    for s, g in data.groupby('SessionId'):
        for p, it in enumerate(g.ItemId, 1):
            res = live.click(s, it, k=5)
            rows = batch[(batch.session == s) & (batch.position == p)]
            if len(rows):
                assert_same_topk(res.items, res.scores, list(rows.item), list(rows.score))


def test_jax_backend_pads_steps_and_gives_the_same_results(model, test_data, tmp_path):
    """On JAX (here on the CPU) steps are padded to powers of two; ranks still give evaluate_gpu's metrics and
    the scores are the python backend's."""
    pytest.importorskip('jax')
    path = tmp_path / 'm.gru4rec'
    model.savemodel(path)
    j = GRU4Rec.loadmodel(path, backend='jax')
    assert_ranks_give_the_evaluation_metrics(j, test_data, [1, 5, 20])
    a = recommend_batch(model, test_data, k=5, every_event=True)
    b = recommend_batch(j, test_data, k=5, every_event=True)
    np.testing.assert_allclose(a.score.values, b.score.values, rtol=1e-5)
    res = LiveSessions(j).click_many([('a', 'i1'), ('b', 'i2'), ('c', 'i3')], k=5)    # 3 rows padded to 4
    assert [r.items for r in res] == [recommend(model, [i], k=5).items for i in ('i1', 'i2', 'i3')]


def test_model_methods_delegate_and_predict_next_batch_traps_are_clear(model):
    assert model.recommend(['i1', 'i2'], k=3) == recommend(model, ['i1', 'i2'], k=3)
    pd.testing.assert_frame_equal(model.recommend_batch({'a': ['i1']}, k=3), recommend_batch(model, {'a': ['i1']}, k=3))
    assert model.live_sessions(capacity=5).click('s', 'i1', k=3).items == recommend(model, ['i1'], k=3).items
    with pytest.raises(GRU4RecError, match='one entry per slot'):
        model.predict_next_batch(1, 'i1')
    with pytest.raises(GRU4RecError, match='pass batch=1'):
        model.predict_next_batch([1], ['i1'])
