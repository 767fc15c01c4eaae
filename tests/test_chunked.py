"""Chunked training (K minibatches per compiled call, fixed width, masked inactive slots) against the
per-step loop with shrinking minibatches, on Numba and on JAX (CPU); the masked loss against the loss of
the active rows and columns alone."""
import numpy as np
import pytensor
import pytensor.tensor as pt
import pytest

from gru4rec import GRU4Rec, GRU4RecError, loss_sum, parse_activation
from test_model import generated_sessions

LOSSES = [('cross-entropy', 'softmax', 0.0), ('cross-entropy', 'softmax', 0.1), ('xe_logit', 'softmax_logit', 0.1),
          ('bpr', 'linear', 0.0), ('bpr-max', 'elu-0.5', 0.0), ('top1', 'tanh', 0.0), ('top1-max', 'relu', 0.0)]


@pytest.mark.parametrize('loss,final_act,smoothing', LOSSES)
def test_masked_loss_equals_loss_of_active_rows_and_columns(loss, final_act, smoothing):
    rng = np.random.default_rng(1)
    width, n_sample = 6, 4
    scores = rng.normal(size=(width, width + n_sample)).astype('float32')
    active = np.array([1, 0, 1, 1, 0, 1], dtype='float32')
    S, A = pt.fmatrix('S'), pt.fvector('A')
    col_mask = pt.concatenate([A, np.ones(n_sample, dtype='float32')])
    act = parse_activation(final_act, final=True)
    masked_scores = pt.switch(col_mask[None, :] > 0, S, np.float32(-1e30)) if final_act.startswith('softmax') else S
    masked = pytensor.function([S, A], loss_sum(loss, act(masked_scores), smoothing, 0.7, A, col_mask),
                               mode='FAST_COMPILE')
    plain = pytensor.function([S], loss_sum(loss, act(S), smoothing, 0.7), mode='FAST_COMPILE')
    rows = np.flatnonzero(active)
    cols = np.r_[rows, np.arange(width, width + n_sample)]
    np.testing.assert_allclose(masked(scores, active), plain(scores[np.ix_(rows, cols)]), rtol=2e-6)


def repeated_item_sessions():
    """~210 steps per epoch with batch 8 over 12 items: items repeat within most minibatches."""
    return generated_sessions(n_sessions=700, n_items=12, seed=5)


def fit(backend, chunk, n_epochs=1, store_type='cpu', **params):
    base = dict(layers=[10], batch_size=8, n_sample=6, n_epochs=n_epochs, learning_rate=0.1, momentum=0.4,
                loss='bpr-max', final_act='elu-0.5', backend=backend)
    base.update(params)
    m = GRU4Rec(**base)
    m.fit(repeated_item_sessions(), sample_store=600, store_type=store_type, chunk=chunk)
    return m


def assert_same_training(a, b, loss_rtol, weight_atol):
    la, lb = [e['loss'] for e in a.epoch_stats_], [e['loss'] for e in b.epoch_stats_]
    assert [e['steps'] for e in a.epoch_stats_] == [e['steps'] for e in b.epoch_stats_]
    assert [e['events'] for e in a.epoch_stats_] == [e['events'] for e in b.epoch_stats_]
    np.testing.assert_allclose(lb, la, rtol=loss_rtol)
    wa, wb = a.get_weights(), b.get_weights()
    assert {k: v.shape for k, v in wa.items()} == {k: v.shape for k, v in wb.items()}   # padding row removed
    for k in wa:
        np.testing.assert_allclose(wb[k], wa[k], rtol=0, atol=weight_atol, err_msg=k)


@pytest.mark.slow
@pytest.mark.parametrize('params', [dict(), dict(loss='cross-entropy', final_act='softmax', logq=1.0,
                                                  constrained_embedding=True, dropout_p_embed=0.2, dropout_p_hidden=0.3),
                                    dict(merge_repeated=True, reset_after=True),
                                    dict(n_sample=0, dropout_p_hidden=0.3)])
@pytest.mark.parametrize('store_type', ['cpu', 'gpu'])
def test_chunked_equals_per_step_on_numba(params, store_type):
    per_step, chunked = fit('numba', 0, store_type=store_type, **params), fit('numba', 64, store_type=store_type, **params)
    assert per_step.epoch_stats_[0]['steps'] >= 200
    assert_same_training(per_step, chunked, 1e-5, 1e-5)


@pytest.mark.parametrize('store_type,params', [('cpu', {}), ('gpu', {}),
                                               ('gpu', dict(merge_repeated=True, dropout_p_hidden=0.3))])
def test_jax_training_matches_numba(store_type, params):   # host store; negatives drawn inside the step
    pytest.importorskip('jax')
    numba, jax = fit('numba', 0, store_type=store_type, **params), fit('jax', 25, store_type=store_type, **params)
    assert numba.epoch_stats_[0]['steps'] >= 50
    assert_same_training(numba, jax, 1e-4, 1e-4)


def test_chunk_argument_errors():
    with pytest.raises(GRU4RecError, match='chunk must be >= 0'):
        GRU4Rec(backend='python').fit(repeated_item_sessions(), chunk=-1)
    pytest.importorskip('jax')
    with pytest.raises(GRU4RecError, match='JAX backend trains in chunks only'):
        GRU4Rec(backend='jax').fit(repeated_item_sessions(), chunk=0)


def test_padding_row_is_removed_whenever_the_model_is_seen():
    """Chunked training keeps its padding item row between epochs only while nothing else sees the model:
    an epoch callback gets the real catalogue (and can predict), and so does the caller after fit."""
    seen = []

    def callback(model, stats):
        seen.append((model.get_weights()['Wy'].shape[0], model.n_items))
        model.predict_next_batch(np.array([1]), np.array([model.itemidmap.index[0]]), batch=1)
    data = repeated_item_sessions().iloc[:500]    # the python backend's scan is slow: ~120 steps an epoch
    m = GRU4Rec(layers=[6], batch_size=4, n_sample=5, n_epochs=3, backend='python')
    m.fit(data, chunk=10, epoch_callback=callback)
    assert seen == [(12, 12)] * 3 and m.get_weights()['Wy'].shape[0] == 12
    quiet = GRU4Rec(layers=[6], batch_size=4, n_sample=5, n_epochs=3, backend='python').fit(data, chunk=10)
    for k, v in quiet.get_weights().items():   # the same training with the row kept between epochs
        np.testing.assert_array_equal(v, m.get_weights()[k], err_msg=k)


def test_in_graph_dropout_noise_is_used():
    """store_type='gpu' draws the dropout masks in the graph: the same run twice gives the same model, and
    the masks change training (against no dropout)."""
    base = dict(layers=[8], batch_size=4, n_sample=5, n_epochs=1, backend='python')
    data = repeated_item_sessions().iloc[:400]
    runs = {}
    for name, p in [('none', 0.0), ('graph', 0.5), ('graph2', 0.5)]:
        runs[name] = GRU4Rec(dropout_p_hidden=p, **base).fit(data, store_type='gpu').get_weights()['Wh0']
    assert np.array_equal(runs['graph'], runs['graph2'])          # reproducible
    assert not np.allclose(runs['graph'], runs['none'], atol=1e-4)  # the masks act
