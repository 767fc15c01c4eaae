"""Property-based: random small DataFrames into fit and evaluation give a clean GRU4RecError or finite
results, never another exception."""
import math

import pandas as pd
from hypothesis import HealthCheck, given, settings, strategies as st

import evaluation
from gru4rec import GRU4Rec, GRU4RecError

bad_values = st.sampled_from([math.nan, math.inf, 'x', '', None])
rows = st.lists(st.tuples(st.integers(-3, 12), st.one_of(st.integers(0, 15), st.sampled_from(['a', 'b', '7'])),
                          st.one_of(st.integers(-10, 10**9), st.floats(-1e3, 1e9))), min_size=0, max_size=40)


@st.composite
def frames(draw):
    """Mostly valid click logs (int or float times, int or str items, length-1 sessions, unsorted rows);
    sometimes one bad value in a random column."""
    data = draw(rows)
    if data and draw(st.integers(0, 3)) == 0:
        i, col = draw(st.integers(0, len(data) - 1)), draw(st.integers(0, 2))
        row = list(data[i])
        row[col] = draw(bad_values)
        data[i] = tuple(row)
    return data


REACHED = {'fit': 0, 'evaluate': 0}


def to_frame(rows):
    return pd.DataFrame(rows, columns=['SessionId', 'ItemId', 'Time']) if rows else \
        pd.DataFrame({'SessionId': [], 'ItemId': [], 'Time': []})


@settings(max_examples=25, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(train=frames(), test=st.one_of(frames(), st.none()), batch=st.integers(1, 6), n_sample=st.integers(0, 4),
       loss=st.sampled_from(['cross-entropy', 'bpr-max', 'top1']))
def test_fit_and_evaluate_fail_cleanly_or_give_finite_results(train, test, batch, n_sample, loss):
    """test=None evaluates on the training frame itself, so that many examples reach evaluation."""
    test = train if test is None else test
    model = GRU4Rec(layers=[3], n_epochs=1, batch_size=batch, n_sample=n_sample, loss=loss,
                    final_act='softmax' if loss == 'cross-entropy' else 'elu-1', backend='python')
    try:
        model.fit(to_frame(train))
    except GRU4RecError:
        return
    REACHED['fit'] += 1
    assert all(math.isfinite(e['loss']) for e in model.epoch_stats_) or model.error_during_train
    if model.error_during_train:
        return
    try:
        recall, mrr = evaluation.evaluate_gpu(model, to_frame(test), cut_off=[1, 3], batch_size=batch)
    except GRU4RecError:
        return
    REACHED['evaluate'] += 1
    assert all(0 <= v <= 1 for v in recall + mrr) and mrr[0] <= recall[0] and recall[0] <= recall[1]


def test_the_property_test_exercised_training_and_evaluation():
    """Guards the generator: the property above must not pass only through input errors."""
    test_fit_and_evaluate_fail_cleanly_or_give_finite_results()
    assert REACHED['fit'] >= 5 and REACHED['evaluate'] >= 3, REACHED
