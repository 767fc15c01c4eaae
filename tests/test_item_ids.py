"""One rule for item IDs (_item_ids): IDs given after training (test files, predict_next_batch, evaluation
candidates, recommendations, HTTP requests) are converted to the training IDs' type when that loses nothing,
otherwise one error names both types. References: the same IDs given in the training IDs' own type."""
import os
import re
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

import _item_ids
import evaluation
from gru4rec import GRU4Rec, GRU4RecError
from recommend import LiveSessions, recommend, recommend_batch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PARAMS = dict(layers=[8], n_epochs=1, batch_size=8, n_sample=16, loss='cross-entropy', final_act='softmax',
              backend='python')


def int_sessions(n_sessions, seed, n_items=30):
    """Sessions over integer item IDs 100..100+n_items (distinct times: no ties whose order the item ID sorts)."""
    rng = np.random.RandomState(seed)
    rows = [(s, 100 + rng.randint(n_items), 1000 * s + t) for s in range(n_sessions) for t in range(rng.randint(2, 6))]
    return pd.DataFrame(rows, columns=['SessionId', 'ItemId', 'Time'])


@pytest.fixture(scope='module')
def models():
    """The same training data twice: integer item IDs (as Parquet holds them) and their strings (as text
    files hold them)."""
    data = int_sessions(80, 0)
    as_int = GRU4Rec(**PARAMS).fit(data, sample_store=1600)
    as_str = GRU4Rec(**PARAMS).fit(data.assign(ItemId=data.ItemId.astype(str)), sample_store=1600)
    assert as_int.itemidmap_.index.dtype == np.int64 and _item_ids.kind_of(as_str.itemidmap_.index) == 'str'
    return as_int, as_str


@pytest.mark.parametrize('train,query,rows', [
    (np.array([5, 7, 9], dtype=np.int64), ['7', np.int32(9), 5.0, np.float32(7), '11', None, float('nan')],
     [1, 2, 0, 1, -1, -1, -1]),
    (np.array([5, 7, 9], dtype=np.int32), np.array([9, 5], dtype=np.int64), [2, 0]),
    (np.array(['5', '7', 'x'], dtype=object), [7, np.int64(5), 7.0, 'x', 8], [1, 0, 1, 2, -1]),
    (np.array([0.5, 2.0]), ['0.5', 2, '2', np.float32(0.5)], [0, 1, 1, 0]),
    (np.array([5, 7, 9], dtype=np.int64), pd.Series(['9', '5', None] * 200, dtype='str'), [2, 0, -1] * 200),
    (np.array(['5', '7'], dtype=object), np.arange(4, 9).repeat(100), [-1] * 100 + [0] * 100 + [-1] * 100 + [1] * 100 + [-1] * 100),
])
def test_lossless_conversions_match(train, query, rows):
    ids = pd.Index(train)
    assert _item_ids.item_rows(ids, query, 'queries').tolist() == rows


@pytest.mark.parametrize('train,query,types,shown', [
    (np.array([5, 7], dtype=np.int64), ['7', 'abc'], ('(str)', '(int64)'), "'abc'"),
    (np.array([5, 7], dtype=np.int32), [1.5], ('(float)', '(int32)'), '1.5'),
    (np.array([5, 7], dtype=np.int64), ['007', '+7', ' 7'], ('(str)', '(int64)'), "'007', '+7', ' 7'"),
    (np.array([5, 7], dtype=np.int64), [True], ('(bool)', '(int64)'), 'True'),
    (np.array(['5', '7'], dtype=object), np.array([5.0, 2.5] * 200), ('(float64)', '(str)'), '2.5'),
    (np.array(['5', '7'], dtype=object), [2 ** 70 * 1.0], ('(float)', '(str)'), None),
    (np.array([5, 7], dtype=np.int64), [2 ** 70], ('(int)', '(int64)'), str(2 ** 70)),
])
def test_lossy_conversions_are_one_error_naming_both_types(train, query, types, shown):
    with pytest.raises(GRU4RecError) as e:
        _item_ids.item_rows(pd.Index(train), query, 'item IDs of the test data')
    message = str(e.value)
    assert message.startswith('The item IDs of the test data ' + types[0]) and types[1] in message, message
    assert shown is None or message.endswith(shown)
    assert 'np.' not in message


def test_predict_next_batch_takes_ids_of_the_other_type(models):
    """A model trained on string IDs scores int queries as their strings, and the other way round."""
    as_int, as_str = models
    for model, same, other in ((as_str, ['105', '110'], [105, np.int64(110)]), (as_int, [105, 110], ['105', 110.0])):
        ref = model.predict_next_batch([10, 11], same, batch=2)    # (new session IDs: zero states)
        got = model.predict_next_batch([12, 13], other, batch=2)
        np.testing.assert_array_equal(got.values, ref.values)
        sub = model.predict_next_batch([14, 15], same, predict_for_item_ids=other, batch=2)
        assert sub.index.tolist() == same        # labelled with the training IDs
        ref_sub = model.predict_next_batch([16, 17], same, predict_for_item_ids=same, batch=2)
        np.testing.assert_array_equal(sub.values, ref_sub.values)


def test_predict_errors_print_plain_values(models):
    as_int, as_str = models
    with pytest.raises(GRU4RecError, match=r"^Unknown item ID\(s\) in input_item_ids: 'nope'$"):
        as_str.predict_next_batch([1], np.array(['nope']), batch=1)        # not np.str_('nope')
    with pytest.raises(GRU4RecError, match=r"^Unknown item ID\(s\) in predict_for_item_ids: 999$"):
        as_int.predict_next_batch([1], [105], predict_for_item_ids=np.array([105, 999]), batch=1)
    with pytest.raises(GRU4RecError, match=r"input_item_ids \(str\) cannot be converted .* \(int64\) without loss: 'i5'"):
        as_int.predict_next_batch([1], ['i5'], batch=1)
    with pytest.raises(GRU4RecError, match=r"input_item_ids \(float\) .* \(str\) without loss: 105.5"):
        as_str.predict_next_batch([1], [105.5], batch=1)


def test_evaluation_converts_test_ids_and_candidates(models):
    as_int, as_str = models
    test = int_sessions(30, 1, n_items=35)   # items 130..134 are unknown
    for model in models:
        ref = evaluation.evaluate(model, test.assign(ItemId=test.ItemId.astype(model.itemidmap_.index.dtype)),
                                  cut_off=[1, 5], return_details=True)
        for ids in (test.ItemId, test.ItemId.astype(str), test.ItemId.astype(np.int32), test.ItemId.astype(float)):
            assert evaluation.evaluate(model, test.assign(ItemId=ids), cut_off=[1, 5], return_details=True) == ref
        cand = [str(i) for i in range(100, 130, 2)]
        assert (evaluation.evaluate(model, test, items=cand, cut_off=5)
                == evaluation.evaluate(model, test, items=[int(c) for c in cand], cut_off=5))
    with pytest.raises(GRU4RecError, match=r'item IDs of the test data \(str\) .* \(int64\)'):
        evaluation.evaluate(as_int, test.assign(ItemId='x' + test.ItemId.astype(str)))


def test_recommendations_take_ids_of_the_other_type(models):
    as_int, as_str = models
    for model, same, other in ((as_str, ['105', '110', '101'], [105, 110, 101]), (as_int, [105, 110, 101], ['105', '110', '101'])):
        ref = recommend(model, same, k=5, exclude_seen=True)
        got = recommend(model, other, k=5, exclude_seen=True)
        assert got.items == ref.items and got.scores == ref.scores and got.skipped == []
        assert type(got.items[0]) is type(same[0])   # recommended items are the model's IDs
        batch = recommend_batch(model, {'s': other}, k=5)
        assert batch['item'].tolist() == recommend(model, same, k=5).items
        live = LiveSessions(model)
        for item in other[:-1]:
            live.click('u', item)
        res = live.click('u', other[-1], k=5, candidates=other)
        assert res.items == recommend(model, same, k=5, candidates=same).items and res.clicks == 3
        with pytest.raises(GRU4RecError, match=r'clicked item IDs \((str|float)\) cannot be converted'):
            live.click('u', 'x1' if model is as_int else 1.5)
        assert live.click('u', other[0]).clicks == 4    # the refused click changed nothing


def cli(*args):
    env = {k: v for k, v in os.environ.items() if k not in ('PYTENSOR_FLAGS', 'THEANO_FLAGS')}
    return subprocess.run([sys.executable, os.path.join(ROOT, 'run.py'), *map(str, args), '--backend', 'python'],
                          capture_output=True, text=True, env=env, timeout=900)


def test_parquet_int_training_with_text_test_file(tmp_path):
    """Parquet keeps integer item IDs, text files give strings: the run gives the metrics of text training
    and text test files (it used to stop with 'shares no items with the training data'), also with -l."""
    train, test = int_sessions(80, 0), int_sessions(30, 1, n_items=35)
    train.to_parquet(tmp_path / 'train.parquet')
    train.to_csv(tmp_path / 'train.tsv', sep='\t', index=False)
    test.to_csv(tmp_path / 'test.tsv', sep='\t', index=False)
    ps = 'layers=8,n_epochs=1,batch_size=8,n_sample=16,loss=cross-entropy,final_act=softmax'
    ref = cli(tmp_path / 'train.tsv', '-t', tmp_path / 'test.tsv', '-ps', ps, '-m', 1, 5)
    got = cli(tmp_path / 'train.parquet', '-t', tmp_path / 'test.tsv', '-ps', ps, '-m', 1, 5, '-s', tmp_path / 'm.gru4rec')
    assert ref.returncode == 0 and got.returncode == 0, got.stderr
    metrics = re.findall(r'^Recall@.*$', ref.stdout, re.M)
    assert len(metrics) == 2 and re.findall(r'^Recall@.*$', got.stdout, re.M) == metrics
    loaded = cli(tmp_path / 'm.gru4rec', '-l', '-t', tmp_path / 'test.tsv', '-m', 1, 5)
    assert loaded.returncode == 0 and re.findall(r'^Recall@.*$', loaded.stdout, re.M) == metrics
    # gru4rec recommend: the text events file's IDs reach the model's integer items too
    rec = cli('recommend', tmp_path / 'm.gru4rec', tmp_path / 'test.tsv', '-k', 3, '-o', tmp_path / 'out.csv')
    assert rec.returncode == 0, rec.stderr
    want = recommend_batch(GRU4Rec.loadmodel(tmp_path / 'm.gru4rec', backend='python'), test, k=3)
    assert pd.read_csv(tmp_path / 'out.csv')['item'].tolist() == want['item'].tolist() and len(want) > 0
    test.assign(ItemId='x' + test.ItemId.astype(str)).to_csv(tmp_path / 'bad.tsv', sep='\t', index=False)
    bad = cli(tmp_path / 'm.gru4rec', '-l', '-t', tmp_path / 'bad.tsv')
    assert bad.returncode == 2 and bad.stderr.count('\n') == 1 and 'Traceback' not in bad.stderr
    assert bad.stderr.startswith(f"ERROR. The item IDs of the test file {tmp_path / 'bad.tsv'} (str) cannot be "
                                 "converted to the type of the training item IDs (int64) without loss: 'x")


def test_http_service_takes_json_numbers_and_strings(tmp_path):
    """JSON gives ints or strings: both reach an integer-ID model's items; a non-numeric string is a 400 that
    names the types."""
    pytest.importorskip('fastapi')
    pytest.importorskip('uvicorn')
    from test_serve import Server
    model = GRU4Rec(**PARAMS).fit(int_sessions(80, 0), sample_store=1600)
    model.savemodel(tmp_path / 'm.gru4rec')
    server = Server(tmp_path / 'm.gru4rec')
    try:
        want = recommend(model, [105, 110], k=5)
        for body in ({'items': [105, 110], 'k': 5}, {'items': ['105', '110'], 'k': 5}):
            code, res = server.call('POST', '/recommend', body)
            assert code == 200 and res['items'] == want.items, res
        code, res = server.call('POST', '/sessions/a/clicks', {'item': '105', 'k': 5})
        assert code == 200 and res['items'] == recommend(model, [105], k=5).items
        code, res = server.call('POST', '/sessions/a/clicks', {'item': 'i105', 'k': 5})
        assert code == 400 and 'cannot be converted to the type of the training item IDs (int64)' in res['error']
    finally:
        server.stop()
