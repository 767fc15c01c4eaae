"""Session-parallel mini-batches, parameter coercion and validation, data checks of fit."""
import numpy as np
import pandas as pd
import pytest

import _params
from gru4rec import GRU4Rec, GRU4RecError, session_parallel_batches


def random_sessions(n_sessions, seed, max_len=7):
    rng = np.random.RandomState(seed)
    lengths = rng.randint(1, max_len + 1, size=n_sessions)      # includes length-1 sessions
    offsets = np.r_[0, np.cumsum(lengths)]
    items = np.arange(offsets[-1], dtype=np.int32)             # item = event index: pairs are identifiable
    return items, offsets, lengths


@pytest.mark.parametrize('batch_size,min_active,seed', [(1, 1, 0), (3, 1, 1), (8, 1, 2), (8, 2, 3), (50, 1, 4)])
def test_every_pair_visited_once_and_states_reset_at_session_ends(batch_size, min_active, seed):
    items, offsets, lengths = random_sessions(40, seed)
    order = np.random.RandomState(seed).permutation(40)
    session_of = np.repeat(np.arange(40), lengths)
    # Simulate the hidden state as "the session whose events this slot has consumed" (-1 = zero state).
    state = np.full(min(batch_size, 40), -1)
    seen = []
    for inp, out, reset, keep in session_parallel_batches(items, offsets, order, batch_size, min_active):
        if keep is not None:
            state = state[keep]
        assert len(inp) == len(out) == len(reset) == len(state)
        assert np.all(out == inp + 1)                            # the next event of the same session
        s = session_of[inp]
        assert np.all(session_of[out] == s)
        starts = inp == offsets[s]                               # first pair of a session:
        assert np.all(state[starts] == -1)                       # ... the slot's state is zero
        assert np.all(state[~starts] == s[~starts])              # ... otherwise it carries this session
        assert np.array_equal(reset, out == offsets[s + 1] - 1)  # reset exactly at the last event
        state = np.where(reset, -1, s)
        seen.extend(zip(inp.tolist(), out.tolist()))
    expected = [(i, i + 1) for k in range(40) for i in range(offsets[k], offsets[k + 1] - 1)]
    assert len(seen) == len(set(seen))
    if min_active == 1:
        assert sorted(seen) == expected
    else:  # stops when fewer than 2 slots are left: a subset, and all but the tail
        assert set(seen) <= set(expected) and len(seen) > 0.7 * len(expected)


def test_iterator_order_and_shrinking():
    # 3 sessions of lengths 3, 2, 4 with batch 2, processed in order [2, 0, 1]
    items = np.arange(9, dtype=np.int32)
    offsets = np.array([0, 3, 5, 9])
    steps = list(session_parallel_batches(items, offsets, np.array([2, 0, 1]), 2))
    assert [s[0].tolist() for s in steps] == [[5, 0], [6, 1], [7, 3]]
    assert [s[1].tolist() for s in steps] == [[6, 1], [7, 2], [8, 4]]
    assert [s[2].tolist() for s in steps] == [[False, False], [False, True], [True, True]]


def test_fewer_sessions_than_batch_size():
    items, offsets, _ = random_sessions(3, 5)
    steps = list(session_parallel_batches(items, offsets, np.arange(3), 32))
    assert all(len(s[0]) <= 3 for s in steps)


# --- parameters --------------------------------------------------------------------------------------

def test_set_params_coercion_and_printed_lines(capsys):
    m = GRU4Rec()
    m.set_params(layers='100/100', constrained_embedding='True', n_sample='512', learning_rate='0.05',
                 adapt_params='0.9/0.99', loss='cross-entropy')
    assert m.layers == [100, 100] and m.constrained_embedding is True and m.n_sample == 512
    assert m.learning_rate == 0.05 and m.adapt_params == [0.9, 0.99]
    out = capsys.readouterr().out.splitlines()
    # longest key: constrained_embedding (21) -> 21 - 6 + 3 spaces; longest value: cross-entropy (13)
    assert out[0] == "SET   layers" + ' ' * 18 + "TO   [100, 100]" + ' ' * 6 + "(type: <class 'list'>)"
    assert out[-1].startswith('SET   loss') and out[-1].endswith("(type: <class 'str'>)")


def test_set_line_format_matches_original():
    # README example of the original: keys padded to the longest key + 3, values to the longest value + 3
    import io, contextlib
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        GRU4Rec().set_params(loss='bpr-max', constrained_embedding='False', layers='100')
    lines = buf.getvalue().splitlines()
    assert lines[0] == "SET   loss" + ' ' * 20 + "TO   bpr-max   (type: <class 'str'>)"
    assert lines[2] == "SET   layers" + ' ' * 18 + "TO   [100]     (type: <class 'list'>)"


@pytest.mark.parametrize('text,expected', [('True', True), ('1', True), ('False', False), ('0', False)])
def test_boolean_strings(text, expected):
    assert GRU4Rec().set_params(time_sort=text).time_sort is expected


def test_embedding_layersize(capsys):
    m = GRU4Rec().set_params(layers='64', embedding='layersize')
    assert m.embedding == 64
    assert 'SET   embedding' in capsys.readouterr().out
    constructed = GRU4Rec(layers=[32], embedding='layersize')
    assert constructed.embedding == 'layersize'                     # stored as given; fit resolves it
    assert _params.checked(constructed.get_params()).embedding == 32 and constructed.embedding_mode == 'separate'


@pytest.mark.parametrize('kw,message', [
    (dict(foo='1'), 'Unknown parameter: foo'),
    (dict(n_sample='2048.5'), 'n_sample'),
    (dict(time_sort='maybe'), 'Invalid value for boolean parameter time_sort'),
    (dict(loss='hinge'), 'loss'),
    (dict(final_act='elu'), 'final_act'),
    (dict(hidden_act='softmax'), 'hidden_act'),
    (dict(batch_size='0'), 'batch_size'),
    (dict(dropout_p_hidden='-0.1'), 'dropout_p_hidden'),
    (dict(learning_rate='0'), 'learning_rate'),
    (dict(learning_rate='abc'), 'learning_rate'),
    (dict(adapt='nesterov'), 'adapt'),
    (dict(layers='100/x'), 'layers'),
    (dict(adapt='adam', adapt_params='0.9'), 'adapt_params'),
])
def test_invalid_parameters_rejected_without_change(kw, message):
    m = GRU4Rec()
    before = m.get_params()
    with pytest.raises(GRU4RecError, match=message):
        m.set_params(**kw)
    assert m.get_params() == before


def test_get_params_round_trip():
    m = GRU4Rec(loss='cross-entropy', final_act='softmax', layers=[20, 10], adapt='rmsprop')
    clone = GRU4Rec(**m.get_params())
    assert clone.get_params() == m.get_params()
    assert clone.adapt_params_ == [0.9]   # per-optimiser default fills an empty adapt_params
    assert GRU4Rec().set_params(adapt=None).adapt == 'sgd'
    assert _params.checked(GRU4Rec(adapt=None).get_params()).adapt == 'sgd'


def test_fit_does_not_modify_callers_frame_and_checks_columns():
    df = pd.DataFrame({'SessionId': [2, 2, 1, 1], 'ItemId': [5, 6, 5, 7], 'Time': [3, 4, 1, 2]})
    copy = df.copy()
    m = GRU4Rec(layers=[4], n_sample=0, n_epochs=1, backend='python', batch_size=2)
    m.fit(df)
    pd.testing.assert_frame_equal(df, copy)
    assert list(m.itemidmap.index) == [5, 6, 7]      # first-appearance order, before sorting
    with pytest.raises(GRU4RecError, match=r'Missing column\(s\) Time .*columns found: SessionId, ItemId'):
        m.fit(df.drop(columns='Time'))
    with pytest.raises(GRU4RecError, match='must be numeric'):
        m.fit(df.assign(SessionId=['a', 'a', 'b', 'b']))
    weights = m.get_weights()
    with pytest.raises(GRU4RecError, match='at least 2 events'):
        m.fit(pd.DataFrame({'SessionId': [1, 2], 'ItemId': [1, 2], 'Time': [0, 0]}))
    assert list(m.itemidmap.index) == [5, 6, 7]     # a rejected input leaves the trained model as it was
    for k, v in m.get_weights().items():
        np.testing.assert_array_equal(v, weights[k])


# --- scikit-learn conventions ------------------------------------------------------------------------

def test_scikit_learn_clone_before_and_after_fit():
    """The constructor stores its arguments as given, so sklearn.base.clone works before and after fit: the
    clone has the same parameters and none of the learned state, and trains to the same losses."""
    sklearn_base = pytest.importorskip('sklearn.base')
    from test_model import generated_sessions
    data = generated_sessions(n_sessions=50)
    m = GRU4Rec(layers=(6,), embedding='layersize', adapt_params='0.9', n_epochs=1, batch_size=4, n_sample=5,
                backend='python', adapt='rmsprop')
    before = sklearn_base.clone(m)
    assert before is not m and before.get_params() == m.get_params() and before.embedding == 'layersize'
    m.fit(data)
    assert m.get_params() == before.get_params()          # fit changes no parameter
    after = sklearn_base.clone(m)
    assert after.get_params() == m.get_params()
    for learned in ('weights_', 'itemidmap_', 'n_items_', 'item_support_', 'epoch_stats_', 'error_during_train_'):
        assert hasattr(m, learned) and not hasattr(after, learned), learned
    assert [e['loss'] for e in after.fit(data).epoch_stats_] == [e['loss'] for e in m.epoch_stats_]
    assert after.get_weights()['E'].shape == (m.n_items_, 6)  # embedding='layersize' resolved by fit


def test_get_params_deep_and_set_params_round_trip(capsys):
    """get_params(deep=True) equals deep=False (no nested estimators) and names exactly the constructor's
    arguments; set_params(**get_params()) of one model gives another the same parameters, and clone keeps
    what set_params set."""
    import inspect
    sklearn_base = pytest.importorskip('sklearn.base')
    m = GRU4Rec(loss='cross-entropy', final_act='softmax', layers=[20, 10], adapt='rmsprop', momentum=0.1)
    assert m.get_params(deep=True) == m.get_params(deep=False)
    assert list(m.get_params()) == list(inspect.signature(GRU4Rec).parameters)
    other = GRU4Rec().set_params(**m.get_params())   # set_params converts: the default adapt_params () -> []
    assert _params.checked(other.get_params()).as_dict() == _params.checked(m.get_params()).as_dict()
    assert GRU4Rec().set_params(**other.get_params()).get_params() == other.get_params()
    assert sklearn_base.clone(other.set_params(layers='8/8')).layers == [8, 8]
    assert 'SET   layers' in capsys.readouterr().out


def test_bad_constructor_value_fails_at_fit_with_the_set_params_message():
    """The constructor does not check (scikit-learn stores first); fit checks before anything else, with the
    message set_params gives, and the model stays unfitted."""
    for bad, message in ((dict(layers='100/x'), 'layers'), (dict(loss='hinge'), 'loss'), (dict(batch_size=0), 'batch_size'),
                         (dict(rng='theano'), 'Invalid value for parameter rng')):
        model = GRU4Rec(backend='python', **bad)
        with pytest.raises(GRU4RecError, match=message):
            GRU4Rec().set_params(**bad)
        with pytest.raises(GRU4RecError, match=message):
            model.fit(pd.DataFrame({'SessionId': [1, 1], 'ItemId': [1, 2], 'Time': [0, 1]}))
        assert not hasattr(model, 'weights_')
