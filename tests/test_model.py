"""Evaluation ranks, prediction, persistence and reproducibility of the GRU4Rec model."""
import io
import pickle
import re

import numpy as np
import pandas as pd
import pytest

import np_reference as ref
import _graph
import _params
import _training
import evaluation
import gru4rec
from gru4rec import GRU4Rec, GRU4RecError


def generated_sessions(n_sessions=80, n_items=25, seed=0):
    rng = np.random.RandomState(seed)
    rows = [(s, int(rng.zipf(1.6) % n_items), 10 * s + t) for s in range(n_sessions) for t in range(rng.randint(1, 7))]
    return pd.DataFrame(rows, columns=['SessionId', 'ItemId', 'Time'])


def model_with_scores(item_scores, **kw):
    """A model whose (linear) score for item i is item_scores[i] whatever the input: Wy = 0, By = scores."""
    m = GRU4Rec(layers=[3], final_act='linear', backend='python', **kw)
    n = len(item_scores)
    m.itemidmap_ = pd.Series(np.arange(n, dtype=np.int32), index=np.arange(n), name='ItemIdx')
    m.n_items_, m.item_support_ = n, np.ones(n, dtype=np.int64)
    m.weights_, _ = _training.initial_state(_params.checked(m.get_params()), m.item_support_, np.random.RandomState(0))
    m.weights_['Wy'].set_value(np.zeros((n, 3), dtype='float32'))
    m.weights_['By'].set_value(np.asarray(item_scores, dtype='float32')[:, None])
    return m


def sessions(*seqs):
    return pd.DataFrame([(s, item, t) for s, seq in enumerate(seqs) for t, item in enumerate(seq)],
                        columns=['SessionId', 'ItemId', 'Time'])


# item:    0  1  2  3  4  5
SCORES = [3, 1, 3, 2, 3, 0]
# Targets below: 3 (score 2: 3 items above), 0 (score 3: tied with 2 and 4), 1 (4 above), 5 (5 above)
TEST = sessions([0, 3, 0], [2, 1, 5])
# Ranks by hand, in evaluation order (session 0: targets 3, 0; session 1: targets 1, 5):
HAND_RANKS = {'standard': [4, 1, 5, 6], 'conservative': [4, 3, 5, 6], 'median': [4, 2, 5, 6]}


@pytest.mark.parametrize('chunk', [0, 1, 3])
@pytest.mark.parametrize('mode', ['standard', 'conservative', 'median'])
def test_tie_modes_give_hand_worked_ranks(mode, chunk):
    ranks = np.array(HAND_RANKS[mode], dtype=float)
    cut_offs = [1, 2, 4, 5, 10]
    recall, mrr = evaluation.evaluate_gpu(model_with_scores(SCORES), TEST, cut_off=cut_offs, batch_size=2, mode=mode,
                                          chunk=chunk)
    for c, r, m in zip(cut_offs, recall, mrr):
        assert r == pytest.approx(np.mean(ranks <= c))
        assert m == pytest.approx(np.mean((ranks <= c) / ranks))


def test_tiebreaking_separates_exact_ties_only():
    # all scores equal: standard says rank 1, conservative says 6; tie-breaking noise gives ranks in between
    flat = model_with_scores([0.0] * 6)
    (r1,), _ = evaluation.evaluate_gpu(flat, sessions(*[[0, 1]] * 200), cut_off=1, batch_size=50, mode='tiebreaking')
    assert 0.05 < r1 < 0.4           # ~1/6 of the targets land on top
    # scores of order 1 are far apart relative to the 1e-10 noise: same as standard
    std = evaluation.evaluate_gpu(model_with_scores([5, 1, 3, 2, 4, 0]), TEST, cut_off=[1, 3], mode='standard')
    tb = evaluation.evaluate_gpu(model_with_scores([5, 1, 3, 2, 4, 0]), TEST, cut_off=[1, 3], mode='tiebreaking')
    assert std == tb


def test_candidate_items_and_targets_outside_them():
    m = model_with_scores(SCORES)
    # candidates {0, 1, 5}: target 3 (score 2) is not a candidate: ranked as if added -> 1 above (item 0)
    recall, mrr = evaluation.evaluate_gpu(m, sessions([0, 3]), items=[0, 1, 5], cut_off=[1, 2], mode='conservative')
    assert recall == [0.0, 1.0] and mrr == [0.0, 0.5]


def event_counts(model, test, width, cand, chunk):
    """(target, n_greater, n_equal) of every evaluated event, per step (chunk 0) or in chunks."""
    items, offsets, _ = evaluation.prepare_test_data(model, test, 'SessionId', 'ItemId', 'Time')
    batches = gru4rec.session_parallel_batches(items, offsets, np.arange(len(offsets) - 1), width)
    counts = (evaluation.counts_chunked(model, batches, width, cand, chunk) if chunk else
              evaluation.counts_per_step(model, batches, width, cand, False))
    return [np.concatenate(c) for c in zip(*counts)]


def assert_chunked_evaluation_equals_per_step(model):
    """Chunked evaluation (fixed-width rows, finished slots scoring a dummy item) gives every event the
    counts of the per-step loop (shrinking batches), with and without candidates, for full and ragged last
    chunks; and the same metrics."""
    test = generated_sessions(n_sessions=60, seed=3)
    for cand in (None, np.array([0, 3, 5, 7, 9], dtype=np.int32)):
        per_step = event_counts(model, test, 16, cand, 0)
        assert len(per_step[0]) > 100 and per_step[1].max() > 0
        for chunk in (1, 7, 100):
            for a, b in zip(event_counts(model, test, 16, cand, chunk), per_step):
                np.testing.assert_array_equal(a, b)
    for items in (None, [0, 3, 5, 7, 9]):
        for mode in ('standard', 'median'):
            per_step = evaluation.evaluate_gpu(model, test, items=items, cut_off=[1, 5], batch_size=16, mode=mode, chunk=0)
            chunked = evaluation.evaluate_gpu(model, test, items=items, cut_off=[1, 5], batch_size=16, mode=mode, chunk=4)
            np.testing.assert_allclose(chunked, per_step, rtol=1e-12)


def test_chunked_evaluation_equals_per_step():
    m = GRU4Rec(loss='bpr-max', final_act='elu-0.5', layers=[12], batch_size=8, n_sample=10, n_epochs=2,
                backend='python')
    m.fit(generated_sessions(n_sessions=120))
    assert_chunked_evaluation_equals_per_step(m)


def test_evaluation_chunk_argument():
    m = model_with_scores(SCORES)
    for bad in (-1, 'x', 2.5):
        with pytest.raises(GRU4RecError, match='chunk'):
            evaluation.evaluate_gpu(m, TEST, chunk=bad)


def test_unseen_test_items_are_dropped_and_reported(capsys):
    m = model_with_scores(SCORES)
    test = sessions([0, 99, 3], [98, 97])      # 99, 98, 97 unknown: session 0 becomes [0, 3], session 1 empty
    recall, _ = evaluation.evaluate_gpu(m, test, cut_off=[4])
    assert recall == [1.0]
    assert 'Dropped 3 test events with items unseen in training' in capsys.readouterr().out
    with pytest.raises(GRU4RecError, match='shares no items'):
        evaluation.evaluate_gpu(m, sessions([98, 97]))


def test_evaluation_accepts_int_cut_off_and_small_test_sets():
    m = model_with_scores(SCORES)
    assert evaluation.evaluate(m, TEST, cut_off=5, batch_size=512) == evaluation.evaluate_gpu(m, TEST, cut_off=[5])


# --- training-based ---------------------------------------------------------------------------------

TINY = dict(layers=[6], n_epochs=2, batch_size=4, n_sample=5, backend='python')


def trained(**kw):
    params = dict(TINY, loss='cross-entropy', final_act='softmax', dropout_p_hidden=0.3, train_random_order=True,
                  momentum=0.2)
    params.update(kw)
    return GRU4Rec(**params).fit(generated_sessions())


def test_same_seed_same_losses_other_seed_differs():
    a, b, c = trained(seed=3), trained(seed=3), trained(seed=4)
    assert [e['loss'] for e in a.epoch_stats_] == [e['loss'] for e in b.epoch_stats_]
    for k, v in a.get_weights().items():
        assert np.array_equal(v, b.get_weights()[k])
    assert [e['loss'] for e in a.epoch_stats_] != [e['loss'] for e in c.epoch_stats_]


def test_initial_weights_follow_the_original_draw_order():
    m = GRU4Rec(layers=[4], embedding=3, backend='python')
    w = _graph.init_weights(_params.checked(m.get_params()), 10, np.random.RandomState(42))
    rng = np.random.RandomState(42)
    def block(r, c):
        s = np.sqrt(6.0 / (r + c))
        return (rng.rand(r, c) * 2 * s - s).astype('float32')
    E = block(10, 3)
    Wx = np.hstack([block(3, 4) for _ in range(3)])
    Wh = block(4, 4)
    Wrz = np.hstack([block(4, 4) for _ in range(2)])
    Wy = block(10, 4)
    for name, expected in (('E', E), ('Wx0', Wx), ('Wh0', Wh), ('Wrz0', Wrz), ('Wy', Wy)):
        np.testing.assert_array_equal(w[name], expected)
    assert not w['Bh0'].any() and not w['By'].any()
    normal = GRU4Rec(layers=[50], sigma=0.3, init_as_normal=True, backend='python')
    wy = _graph.init_weights(_params.checked(normal.get_params()), 2000, np.random.RandomState(1))['Wy']
    assert abs(wy.std() - 0.3) < 0.01 and abs(wy.mean()) < 0.01 and np.abs(wy).max() > 0.9   # N(0, sigma), unbounded


@pytest.mark.parametrize('suffix', ['.gru4rec', '.pickle'])
def test_save_load_same_metrics_and_predictions(tmp_path, suffix, capsys):
    m = trained(loss='bpr-max', final_act='elu-0.5', embedding=4)
    test = generated_sessions(30, seed=9)
    before = evaluation.evaluate_gpu(m, test, cut_off=[1, 5, 10])
    path = tmp_path / ('model' + suffix)
    m.savemodel(path)
    assert [p.name for p in tmp_path.iterdir()] == [path.name]     # no temp file left behind
    loaded = GRU4Rec.loadmodel(path)
    assert ('pickles from untrusted sources can run code' in capsys.readouterr().out) == (suffix == '.pickle')
    checked = lambda model: _params.checked(model.get_params()).as_dict()   # noqa: E731  (defaults are tuples)
    assert checked(loaded) == checked(m)
    assert list(loaded.itemidmap.index) == list(m.itemidmap.index)
    assert evaluation.evaluate_gpu(loaded, test, cut_off=[1, 5, 10]) == before
    for k, v in m.get_weights().items():
        np.testing.assert_array_equal(loaded.get_weights()[k], v)


def test_safe_format_keeps_string_item_ids_and_never_unpickles(tmp_path):
    data = generated_sessions().assign(ItemId=lambda d: 'item-' + d.ItemId.astype(str))
    m = GRU4Rec(**TINY).fit(data)
    m.savemodel(tmp_path / 'm.gru4rec')
    loaded = GRU4Rec.loadmodel(tmp_path / 'm.gru4rec')
    assert list(loaded.itemidmap.index) == list(m.itemidmap.index) and isinstance(loaded.itemidmap.index[0], str)
    # a crafted zip whose arrays need unpickling: refused, nothing runs
    class Boom:
        def __reduce__(self):
            return (open, (str(tmp_path / 'pwned'), 'w'))
    evil = tmp_path / 'evil.gru4rec'
    with open(evil, 'wb') as f:
        np.savez(f, header=np.array([Boom()], dtype=object), item_ids=np.array([Boom()], dtype=object))
    with pytest.raises(GRU4RecError, match='not a GRU4Rec model file'):
        GRU4Rec.loadmodel(evil)
    assert not (tmp_path / 'pwned').exists()
    # weights that do not fit the parameters (e.g. a file edited or from another version)
    bad = tmp_path / 'bad.gru4rec'
    with np.load(tmp_path / 'm.gru4rec') as z:
        arrays = dict(z)
    arrays['w_Wy'] = arrays['w_Wy'][:, :2]
    with open(bad, 'wb') as f:
        np.savez(f, **arrays)
    with pytest.raises(GRU4RecError, match='do not fit'):
        GRU4Rec.loadmodel(bad)
    truncated = tmp_path / 'truncated.gru4rec'
    truncated.write_bytes((tmp_path / 'm.gru4rec').read_bytes()[:300])
    with pytest.raises(GRU4RecError, match='truncated'):
        GRU4Rec.loadmodel(truncated)


def test_shared_embedding_with_nonzero_embedding_saves(tmp_path):
    # the original crashed in save/load for constrained_embedding with embedding > 0
    m = trained(constrained_embedding=True, embedding=5)
    m.savemodel(tmp_path / 'm.pickle')
    assert GRU4Rec.loadmodel(tmp_path / 'm.pickle').constrained_embedding


def test_loader_refuses_code_and_theano_pickles(tmp_path):
    class Boom:
        def __reduce__(self):
            return (open, (str(tmp_path / 'pwned'), 'w'))
    evil = tmp_path / 'evil.pickle'
    evil.write_bytes(pickle.dumps({'format': 'gru4rec-pytensor', 'x': Boom()}))
    with pytest.raises(GRU4RecError, match='Refusing to load'):
        GRU4Rec.loadmodel(evil)
    assert not (tmp_path / 'pwned').exists()
    theano = tmp_path / 'theano.pickle'   # what the original's savemodel wrote: a pickled gru4rec.GRU4Rec
    theano.write_bytes(b'\x80\x02cgru4rec\nGRU4Rec\nq\x00)\x81q\x01}q\x02b.')
    with pytest.raises(GRU4RecError, match='original Theano GRU4Rec'):
        GRU4Rec.loadmodel(theano)
    truncated = tmp_path / 'truncated.pickle'
    good = io.BytesIO()
    pickle.dump({'format': 'gru4rec-pytensor', 'weights': np.zeros(1000)}, good)
    truncated.write_bytes(good.getvalue()[:100])
    with pytest.raises(GRU4RecError, match='truncated'):
        GRU4Rec.loadmodel(truncated)


def test_predict_next_batch_matches_numpy_and_keeps_state():
    m = trained(final_act='softmax', dropout_p_hidden=0.0)
    w = {k: v.astype(np.float64) for k, v in m.get_weights().items()}
    ids = m.itemidmap.index

    def np_step(h, item):
        a = w['Wx0'][m.itemidmap[item]] + w['Bh0']
        rz = ref.sigmoid(a[6:] + h @ w['Wrz0'])
        hc = np.tanh((rz[:6] * h) @ w['Wh0'] + a[:6])
        h = (1 - rz[6:]) * h + rz[6:] * hc
        return h, ref.act('softmax', (h @ w['Wy'].T + w['By'][:, 0])[None])[0]
    h0 = h1 = np.zeros(6)
    for sess, items in (([7, 8], [ids[0], ids[1]]), ([7, 9], [ids[2], ids[3]])):  # slot 1 changes session
        out = m.predict_next_batch(sess, items, batch=2)
        h0, s0 = np_step(h0, items[0])
        h1, s1 = np_step(h1 if sess[1] == 8 else np.zeros(6), items[1])
        np.testing.assert_allclose(out[0].values, s0, rtol=1e-4, atol=1e-7)
        np.testing.assert_allclose(out[1].values, s1, rtol=1e-4, atol=1e-7)
    subset = m.predict_next_batch([7, 9], [ids[0], ids[0]], predict_for_item_ids=ids[:3], batch=2)
    assert list(subset.index) == list(ids[:3]) and subset.shape == (3, 2)


@pytest.mark.parametrize('chunk', [0, 3])
def test_nan_loss_stops_training_and_blocks_prediction(capsys, chunk):
    diverging = dict(TINY, loss='bpr-max', final_act='linear', adapt='sgd', learning_rate=1e6)  # scores overflow
    m = GRU4Rec(**diverging)
    m.fit(generated_sessions(), chunk=chunk)
    assert m.error_during_train and m.error_epoch == 1 and m.error_step > 3
    assert f'Epoch 1: NaN error! (step {m.error_step})' in capsys.readouterr().out
    if chunk:   # the chunked loop (costs read one call late) names the step the per-step loop names
        assert GRU4Rec(**diverging).fit(generated_sessions()).error_step == m.error_step
    with pytest.raises(GRU4RecError, match='NaN'):
        evaluation.evaluate_gpu(m, generated_sessions(10, seed=1))


def test_nan_from_cross_entropy_on_a_signed_activation_names_the_cause(capsys):
    """cross-entropy is -log(activated score): with final_act='linear' negative scores give NaN at once (as in
    the original); the stop says which parameter to change. Other NaN stops give no such hint."""
    m = GRU4Rec(**dict(TINY, loss='cross-entropy', final_act='linear')).fit(generated_sessions())
    out = capsys.readouterr().out
    assert m.error_during_train and "Hint: loss='cross-entropy' takes the log" in out and "final_act='softmax'" in out
    ok = GRU4Rec(**dict(TINY, loss='cross-entropy', final_act='softmax')).fit(generated_sessions())
    assert not ok.error_during_train and ok.nan_hint() == ''
    assert GRU4Rec(**dict(TINY, loss='bpr-max', final_act='linear')).nan_hint() == ''


@pytest.mark.slow
def test_numba_backend_matches_reference_backend():
    """The real CPU backend computes what the numpy-based reference backend computes."""
    data = generated_sessions(120, 40, seed=2)
    runs = []
    for backend in ('python', 'numba'):
        m = GRU4Rec(layers=[8], n_epochs=2, batch_size=6, n_sample=10, loss='bpr-max', final_act='elu-0.5',
                    momentum=0.3, learning_rate=0.1, backend=backend).fit(data)
        runs.append((m, evaluation.evaluate_gpu(m, generated_sessions(40, 40, seed=3), cut_off=[5, 10])))
    (a, ma), (b, mb) = runs
    np.testing.assert_allclose([e['loss'] for e in a.epoch_stats_], [e['loss'] for e in b.epoch_stats_], rtol=1e-5)
    np.testing.assert_allclose(ma, mb, atol=1e-4)


def test_memory_estimate_and_refusal(monkeypatch):
    import _devices
    m = GRU4Rec(layers=[100], n_sample=2048, momentum=0.5, adapt='adagrad', backend='python')
    parts = m.memory_estimate(2_000_000, sample_store=10_000_000)
    assert not hasattr(m, 'n_items')                           # estimating changes nothing
    item_weights = 4 * 2_000_000 * (300 + 100 + 1)                # one-hot Wx0, Wy, By
    assert parts == {'item weights': item_weights, 'optimiser state': 2 * item_weights,
                     'sample store': 4 * 2048 * (10_000_000 // 2048)}
    monkeypatch.setattr(_devices, 'available_memory', lambda accelerator=False, device=None: 10 * 2 ** 20)   # pretend 10 MiB are free
    data = generated_sessions()
    with pytest.raises(GRU4RecError, match=r'needs about .* GiB .*sample store .* lower the sample store size'):
        GRU4Rec(**TINY).fit(data)                              # the 10M-id store alone is ~40 MB
    GRU4Rec(**TINY).fit(data, sample_store=1000)               # a small store fits


def test_available_memory_asks_the_selected_gpu(monkeypatch):
    """On the JAX backend the memory check reads the statistics of the GPU the model will use (cuda:1 here),
    and host RAM when JAX does not run on a GPU."""
    import types
    import _devices
    import gru4rec as module
    pytest.importorskip('jax')
    asked = []

    def fake_device(name):
        asked.append(name)
        return types.SimpleNamespace(platform='gpu', memory_stats=lambda: {'bytes_limit': 5000, 'bytes_in_use': 1200})
    monkeypatch.setattr(_devices, 'jax_device', fake_device)
    assert module.available_memory(True, 'cuda:1') == 3800 and asked == ['cuda:1']
    host = module.available_memory(False)
    monkeypatch.setattr(_devices, 'jax_device', lambda name: types.SimpleNamespace(platform='cpu'))
    assert abs(module.available_memory(True, 'cpu') - host) < 2 ** 30     # host RAM, not a GPU's


def test_interrupted_save_leaves_the_previous_file(tmp_path, monkeypatch):
    m = trained()
    path = tmp_path / 'model.gru4rec'
    m.savemodel(path)
    before = path.read_bytes()

    def crash_midway(f, **arrays):      # write part of the file, then fail like a full disk or a kill
        f.write(b'PK\x03\x04 partial')
        raise OSError('No space left on device')
    monkeypatch.setattr(np, 'savez', crash_midway)
    with pytest.raises(GRU4RecError, match='Cannot write the model file .*No space left on device') as e:
        m.savemodel(path)
    assert isinstance(e.value.__cause__, OSError)   # what run.py's fallback looks for
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ['model.gru4rec']     # the temporary file is gone


def test_progress_bars_only_on_a_terminal(capsys, monkeypatch):
    import sys
    data, test = generated_sessions(), generated_sessions(30, seed=9)
    m = GRU4Rec(**TINY).fit(data)
    evaluation.evaluate_gpu(m, test)
    assert 'ev/s' not in capsys.readouterr().err                  # not a terminal: no bar
    monkeypatch.setattr(sys.stdout, 'isatty', lambda: True)
    GRU4Rec(**TINY).fit(data)
    evaluation.evaluate_gpu(m, test)
    captured = capsys.readouterr()
    assert 'Epoch1:' in captured.err and 'Evaluation:' in captured.err   # tqdm writes to stderr
    assert re.search(r'^Epoch1 --> loss: ', captured.out, re.M)            # the original's lines unchanged


def test_evaluation_bar_counts_scored_events(monkeypatch):
    """The evaluation bar advances by the events of each result that comes back (per minibatch, or per
    chunked call), and ends at the number of evaluated events."""
    import sys
    import types
    updates = []

    class FakeBar:
        def __init__(self, total, **kwargs):
            self.total = total
        def __enter__(self):
            return self
        def __exit__(self, *exc):
            return False
        def update(self, n):
            updates.append((self.total, n))
    monkeypatch.setitem(sys.modules, 'tqdm', types.SimpleNamespace(tqdm=FakeBar))
    monkeypatch.setattr(sys.stdout, 'isatty', lambda: True)
    m = GRU4Rec(**TINY).fit(generated_sessions())
    updates.clear()
    test = generated_sessions(30, seed=9)
    per_step = evaluation.evaluate_gpu(m, test, batch_size=8, chunk=0, return_details=True)[2]['events']
    steps = len(updates)
    assert sum(n for _, n in updates) == per_step and {t for t, _ in updates} == {per_step}
    updates.clear()
    evaluation.evaluate_gpu(m, test, batch_size=8, chunk=4)
    assert sum(n for _, n in updates) == per_step and len(updates) == -(-steps // 4)


def test_resume_continues_the_in_graph_negative_draws(tmp_path):
    """store_type='gpu' numbers the steps over all epochs; a resumed run continues from the checkpoint's step
    and ends with the weights of the uninterrupted run (restarting the draws at step 0 would not)."""
    params = dict(layers=[6], batch_size=4, n_sample=5, n_epochs=2, loss='bpr-max', final_act='elu-0.5',
                  momentum=0.2, backend='python')
    data = generated_sessions(n_sessions=60)
    full = GRU4Rec(**params).fit(data, store_type='gpu')
    GRU4Rec(**params).fit(data, store_type='gpu', checkpoint_dir=str(tmp_path), epoch_callback=lambda m, s: True)
    resumed = GRU4Rec(**params).fit(data, store_type='gpu', checkpoint_dir=str(tmp_path), resume=True)
    for k, v in full.get_weights().items():
        np.testing.assert_array_equal(resumed.get_weights()[k], v, err_msg=k)
    host = GRU4Rec(**params).fit(data, store_type='cpu')
    assert not np.array_equal(host.get_weights()['Wy'], full.get_weights()['Wy'])   # other draws
    with pytest.raises(GRU4RecError, match="made with store_type='gpu'"):
        GRU4Rec(**params).fit(data, store_type='cpu', checkpoint_dir=str(tmp_path), resume=True)


@pytest.mark.slow
def test_python_api_with_the_default_backend(tmp_path):
    """The README's Python flow with no backend given (None = the default, Numba): fit, evaluate, save,
    load, predict. (fit once failed here looking up per-backend defaults under None.)"""
    m = GRU4Rec(layers=[8], batch_size=8, n_sample=8, n_epochs=1)
    assert m.backend is None
    m.fit(generated_sessions())
    recall, mrr = evaluation.evaluate_gpu(m, generated_sessions(20, seed=1), cut_off=[5], batch_size=16)
    assert 0 < recall[0] <= 1 and 0 < mrr[0] <= recall[0]
    m.savemodel(str(tmp_path / 'm.gru4rec'))
    loaded = GRU4Rec.loadmodel(str(tmp_path / 'm.gru4rec'))
    ids = list(loaded.itemidmap.index[:2])
    np.testing.assert_allclose(loaded.predict_next_batch([1, 2], ids, batch=2).values,
                               m.predict_next_batch([1, 2], ids, batch=2).values, rtol=1e-6)


def test_host_store_draws_what_searchsorted_draws():
    """store_type='cpu': the store holds the original's draw, np.searchsorted(cdf, uniforms) on the float64
    CDF of support ** alpha with the uniforms of the same generator, in the same order (the guided search is
    only faster); a store of one row draws every step; alpha = 0 draws uniform integers."""
    rng = np.random.default_rng(5)
    support = rng.integers(1, 500, size=3000) ** 2           # skewed, with repeated counts
    cdf = gru4rec.sampling_cdf(support, 0.75)
    sampler = gru4rec.NegativeSampler(support, 0.75, 64, 64 * 40, np.random.default_rng(11))
    expected = np.searchsorted(cdf, np.random.default_rng(11).random(64 * 80)).reshape(80, 64)
    assert sampler.store.dtype == np.int32 and np.array_equal(sampler.store, expected[:40])
    drawn = np.array([sampler.next() for _ in range(80)])    # the store is refilled from the same generator
    assert np.array_equal(drawn, expected)
    every_step = gru4rec.NegativeSampler(support, 0.75, 64, 64, np.random.default_rng(11))
    assert np.array_equal(np.array([every_step.next() for _ in range(3)]), expected[:3])
    flat = gru4rec.NegativeSampler(support, 0.0, 64, 64 * 40, np.random.default_rng(11))
    assert np.array_equal(flat.store.ravel(), np.random.default_rng(11).integers(3000, size=64 * 40, dtype=np.int32))


def test_original_rng_store_continues_the_weights_randomstate():
    """rng='original' (a RandomState): the store holds what the original's CPU store draws from its global
    RandomState, choice(n_items, size) for alpha = 0 and searchsorted(cdf, random_sample(size)) otherwise,
    refilled from the same state when used up."""
    support = np.random.default_rng(5).integers(1, 500, size=3000) ** 2
    cdf = gru4rec.sampling_cdf(support, 0.5)
    state = np.random.RandomState(42)
    state.rand(7)                                              # as if the weights had been drawn first
    sampler = gru4rec.NegativeSampler(support, 0.5, 64, 64 * 40, state)
    want = np.random.RandomState(42)
    want.rand(7)
    expected = np.searchsorted(cdf, want.random_sample(64 * 80)).reshape(80, 64)
    assert np.array_equal(np.array([sampler.next() for _ in range(80)]), expected)
    flat = gru4rec.NegativeSampler(support, 0.0, 64, 64 * 40, np.random.RandomState(3))
    assert np.array_equal(flat.store.ravel(), np.random.RandomState(3).choice(3000, 64 * 40))


def test_original_rng_runs_are_reproducible_resumable_and_cpu_store_only(tmp_path):
    """rng='original' is deterministic, differs from the default streams, resumes to the uninterrupted run's
    weights (the sampler's state is the weights' RandomState, saved once) and refuses the in-graph store."""
    params = dict(layers=[6], batch_size=4, n_sample=5, n_epochs=2, loss='cross-entropy', final_act='softmax',
                  momentum=0.2, logq=1.0, sample_alpha=0.5, backend='python', rng='original')
    data = generated_sessions(n_sessions=60)
    full = GRU4Rec(**params).fit(data, sample_store=5 * 7, log_steps=True)   # 7 rows: refilled within an epoch
    again = GRU4Rec(**params).fit(data, sample_store=5 * 7, log_steps=True)
    np.testing.assert_array_equal(again.step_costs_, full.step_costs_)
    assert len(full.step_costs_) == len(full.step_sizes_) == sum(e['steps'] for e in full.epoch_stats_)
    other = GRU4Rec(**{**params, 'rng': 'default'}).fit(data, sample_store=5 * 7, log_steps=True)
    assert not np.array_equal(other.step_costs_, full.step_costs_)
    GRU4Rec(**params).fit(data, sample_store=5 * 7, checkpoint_dir=str(tmp_path), epoch_callback=lambda m, s: True)
    resumed = GRU4Rec(**params).fit(data, sample_store=5 * 7, checkpoint_dir=str(tmp_path), resume=True)
    for k, v in full.get_weights().items():
        np.testing.assert_array_equal(resumed.get_weights()[k], v, err_msg=k)
    with pytest.raises(GRU4RecError, match="rng='original' needs store_type='cpu'"):
        GRU4Rec(**params).fit(data, store_type='gpu')
    with pytest.raises(GRU4RecError, match='Invalid value for parameter rng'):
        GRU4Rec(**{**params, 'rng': 'theano'}).fit(data)


def test_epoch_line_comes_after_its_checkpoint_and_step_logs_are_per_fit(tmp_path, monkeypatch, capsys):
    """A Ctrl-C after an 'EpochN' line must not lose epoch N: the checkpoint is written before the line. A fit
    without log_steps drops an earlier fit's step log instead of leaving stale arrays."""
    import _files
    events = []
    real = _files.write_checkpoint
    monkeypatch.setattr(_files, 'write_checkpoint', lambda *a, **kw: (events.append(('checkpoint', capsys.readouterr().out.count('Epoch'))), real(*a, **kw))[1])
    params = dict(layers=[6], batch_size=4, n_sample=5, n_epochs=2, backend='python')
    m = GRU4Rec(**params).fit(generated_sessions(n_sessions=40), checkpoint_dir=str(tmp_path), log_steps=True)
    assert [n for _, n in events] == [0, 1]   # epoch 1's checkpoint before any line, epoch 2's after line 1 only
    assert len(m.step_costs_) == sum(e['steps'] for e in m.epoch_stats_)
    m.fit(generated_sessions(n_sessions=40))
    assert not hasattr(m, 'step_costs_') and not hasattr(m, 'step_sizes_')


def test_original_rng_with_dropout_warns():
    """rng='original' cannot reproduce Theano's dropout masks: fit says so (GRU4RecWarning), and only then."""
    import warnings
    from gru4rec import GRU4RecWarning
    df = pd.DataFrame({'SessionId': np.repeat(np.arange(12), 3), 'ItemId': np.arange(36) % 7, 'Time': np.arange(36)})
    kw = dict(layers=[4], n_epochs=1, batch_size=4, n_sample=4, backend='python', rng='original')
    with pytest.warns(GRU4RecWarning, match='dropout masks'):
        GRU4Rec(dropout_p_embed=0.1, **kw).fit(df, store_type='cpu')
    with warnings.catch_warnings():
        warnings.simplefilter('error', GRU4RecWarning)
        GRU4Rec(**kw).fit(df, store_type='cpu')
