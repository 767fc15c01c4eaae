"""Resuming (_checkpoint): a checkpoint is read whole and checked before anything is drawn or compiled; runs that
resume where they are allowed to end with the uninterrupted run's weights. The command line's refusals are in
test_cli.py's catalogue (BAD, 'resume, ...')."""
import json

import numpy as np
import pandas as pd
import pytest

from gru4rec import GRU4Rec, GRU4RecError

PARAMS = dict(layers=[6], batch_size=4, n_sample=5, n_epochs=2, loss='bpr-max', final_act='elu-0.5', momentum=0.2,
              dropout_p_hidden=0.2, backend='python')


def sessions(n_sessions=60, n_items=25, seed=0):
    rng = np.random.RandomState(seed)
    rows = [(s, int(rng.zipf(1.6) % n_items), 10 * s + t) for s in range(n_sessions) for t in range(rng.randint(2, 7))]
    return pd.DataFrame(rows, columns=['SessionId', 'ItemId', 'Time'])


def first_epoch(tmp_path, data, **fit):
    """A checkpoint after epoch 1 (training stops there), like a run killed after its first epoch."""
    GRU4Rec(**PARAMS).fit(data, checkpoint_dir=str(tmp_path), epoch_callback=lambda m, s: True, **fit)
    return tmp_path / 'checkpoint.gru4rec'


def rewrite(path, change):
    """Rewrite a checkpoint with change(header, arrays) applied (as an older or damaged file would be)."""
    with np.load(path) as z:
        arrays = dict(z)
    header = json.loads(bytes(arrays['header']).decode())
    change(header, arrays)
    arrays['header'] = np.frombuffer(json.dumps(header).encode(), dtype=np.uint8)
    with open(path, 'wb') as f:
        np.savez(f, **arrays)


def resumes_exactly(tmp_path, data, made_with, resumed_with):
    """Checkpoint epoch 1 with sample_store=made_with, resume with resumed_with: the weights must equal an
    uninterrupted run's. Returns that run's model."""
    full = GRU4Rec(**PARAMS).fit(data, sample_store=made_with)
    first_epoch(tmp_path, data, sample_store=made_with)
    resumed = GRU4Rec(**PARAMS).fit(data, sample_store=resumed_with, checkpoint_dir=str(tmp_path), resume=True)
    for k, v in full.get_weights().items():
        np.testing.assert_array_equal(resumed.get_weights()[k], v, err_msg=k)
    return full


def test_a_sample_store_of_the_same_rows_resumes_to_the_uninterrupted_model(tmp_path):
    """-ss 35 and -ss 39 both make 7 rows of 5 samples: the same draws, so resuming is allowed and exact;
    -ss 40 (8 rows) would draw other negatives and is refused, naming both sizes."""
    data = sessions()
    resumes_exactly(tmp_path, data, 35, 39)
    path = first_epoch(tmp_path, data, sample_store=35)
    with pytest.raises(GRU4RecError, match=r'was made with -ss 35 \(a sample store of 7 rows of 5 samples\); this '
                                           r'run asks for -ss 40 \(a sample store of 8 rows of 5 samples\)'):
        GRU4Rec(**PARAMS).fit(data, sample_store=40, checkpoint_dir=str(tmp_path), resume=True)
    with pytest.raises(GRU4RecError, match=r'-ss 35 .* asks for -ss 5 \(no sample store\)'):
        GRU4Rec(**PARAMS).fit(data, sample_store=5, checkpoint_dir=str(tmp_path), resume=True)
    rewrite(path, lambda h, a: h['checkpoint']['streams']['sampler'].pop('store_size'))   # saved before the size was
    with pytest.raises(GRU4RecError, match=r'was made with -ss 35 to 39 \(a sample store of 7 rows'):
        GRU4Rec(**PARAMS).fit(data, sample_store=40, checkpoint_dir=str(tmp_path), resume=True)


@pytest.mark.parametrize('made,resumed,message', [
    (dict(sample_store=35), dict(sample_store=50), 'a sample store of 10 rows'),
    (dict(store_type='gpu'), dict(store_type='cpu'), "made with store_type='gpu'"),
    (dict(sample_store=35), dict(sample_store=35, damage='truncate'), 'is corrupt or truncated'),
    (dict(sample_store=35), dict(sample_store=35, damage='store'), 'its sample store is int32 of shape (7, 4)'),
    (dict(sample_store=35), dict(sample_store=35, damage='noise'), 'random streams are missing or invalid'),
])
def test_refusals_come_before_anything_is_drawn_or_compiled(tmp_path, capsys, made, resumed, message):
    """The refusal comes before the sampler's store is drawn (the line 'Created sample store ...' is printed
    before compiling), the model is left untouched and the checkpoint is not changed."""
    data = sessions()
    path = first_epoch(tmp_path, data, **made)
    damage = resumed.pop('damage', None)
    if damage == 'truncate':
        path.write_bytes(path.read_bytes()[:-100])
    elif damage == 'store':
        rewrite(path, lambda h, a: a.update(sampler_store=a['sampler_store'][:, :4]))
    elif damage == 'noise':
        rewrite(path, lambda h, a: h['checkpoint']['streams']['noise'].update(state={'state': -1}))
    before = path.read_bytes()
    capsys.readouterr()
    model = GRU4Rec(**PARAMS)
    with pytest.raises(GRU4RecError) as e:
        model.fit(data, checkpoint_dir=str(tmp_path), resume=True, **resumed)
    assert message in str(e.value) and '\n' not in str(e.value)
    out = capsys.readouterr().out
    assert 'sample store' not in out and 'Negative samples are drawn' not in out and 'Epoch' not in out, out
    assert not hasattr(model, 'weights_') and path.read_bytes() == before


def test_a_checkpoint_of_other_item_ids_is_refused(tmp_path):
    """The same sessions with renamed items have the same fingerprint (it counts item indices): the item IDs
    themselves are compared too, or the weights of one item would silently serve another."""
    data = sessions()
    first_epoch(tmp_path, data, sample_store=35)
    renamed = data.assign(ItemId=data.ItemId + 1000)
    with pytest.raises(GRU4RecError, match=r'other item IDs \(item 0: \d+ in the checkpoint, 10\d+ in these data\)'):
        GRU4Rec(**PARAMS).fit(renamed, sample_store=35, checkpoint_dir=str(tmp_path), resume=True)


def test_large_arrays_are_checked_then_read_again(tmp_path):
    """Arrays over _checkpoint.KEEP_BYTES (here the sample store: 80,000 rows of 5 = 1.6 MB) are not kept in
    memory between the check and the restore: the resumed run still ends with the uninterrupted run's weights,
    and a store holding an index outside the catalogue is refused before anything is compiled."""
    data = sessions()
    n_items = resumes_exactly(tmp_path, data, 400000, 400000).n_items_
    path = first_epoch(tmp_path, data, sample_store=400000)
    rewrite(path, lambda h, a: a['sampler_store'].__setitem__((-1, 0), n_items))
    with pytest.raises(GRU4RecError, match=rf'sample store holds item indices outside 0\.\.{n_items - 1}'):
        GRU4Rec(**PARAMS).fit(data, sample_store=400000, checkpoint_dir=str(tmp_path), resume=True)


def test_resuming_a_finished_run_says_there_is_nothing_left(tmp_path, capsys):
    """A checkpoint of the last epoch: resume trains nothing and says so, and the model is the checkpoint's."""
    data = sessions()
    done = GRU4Rec(**PARAMS).fit(data, checkpoint_dir=str(tmp_path))
    capsys.readouterr()
    again = GRU4Rec(**PARAMS).fit(data, checkpoint_dir=str(tmp_path), resume=True)
    out = capsys.readouterr().out
    assert 'The checkpoint holds all 2 epochs: nothing left to train' in out and 'Epoch' not in out
    for name, w in done.get_weights().items():
        assert np.array_equal(again.get_weights()[name], w), name
