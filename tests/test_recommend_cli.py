"""`run.py recommend` / `gru4rec recommend` as a user runs it (subprocesses, python backend)."""
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from gru4rec import GRU4Rec
from recommend import recommend_batch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run(*args, cwd=None, exe=None):
    cmd = (exe or [sys.executable, os.path.join(ROOT, 'run.py')]) + ['recommend'] + [str(a) for a in args] + ['--backend', 'python']
    env = dict(os.environ)
    env.pop('PYTENSOR_FLAGS', None)
    env.pop('THEANO_FLAGS', None)
    return subprocess.run(cmd, capture_output=True, text=True, cwd=cwd, env=env, timeout=600)


def sessions(n_sessions, n_items, seed):
    rng = np.random.RandomState(seed)
    rows = [(s, f'i{rng.randint(n_items)}', 1000 * s + t) for s in range(n_sessions) for t in range(rng.randint(1, 6))]
    return pd.DataFrame(rows, columns=['SessionId', 'ItemId', 'Time'])


@pytest.fixture(scope='module')
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp('rec_cli')
    model = GRU4Rec(layers=[8], n_epochs=1, batch_size=8, n_sample=16, loss='cross-entropy', final_act='softmax',
                    backend='python')
    model.fit(sessions(80, 30, 0).query('SessionId % 7 != 0 or Time % 1000 < 2'))
    model.savemodel(d / 'model.gru4rec')
    events = sessions(25, 33, 1)    # i30..i32 unknown
    events.to_csv(d / 'events.tsv', sep='\t', index=False)
    return {'dir': d, 'model': d / 'model.gru4rec', 'events': d / 'events.tsv', 'gru': model,
            'frame': pd.read_csv(d / 'events.tsv', sep='\t', dtype={'ItemId': str})}


@pytest.mark.parametrize('ext', ['csv', 'tsv', 'parquet', 'jsonl'])
def test_formats_and_same_result_as_the_api(files, tmp_path, ext):
    out = tmp_path / f'recs.{ext}'
    every = ext in ('tsv', 'jsonl')
    r = run(files['model'], files['events'], '-k', 4, '-o', out, *(['--every_event'] if every else []))
    assert r.returncode == 0, r.stderr
    assert 'Skipped' in r.stdout and f'to {out}' in r.stdout
    got = {'csv': lambda p: pd.read_csv(p, dtype={'item': str}), 'tsv': lambda p: pd.read_csv(p, sep='\t', dtype={'item': str}),
           'parquet': pd.read_parquet, 'jsonl': lambda p: pd.read_json(p, lines=True, dtype={'item': str})}[ext](out)
    want = recommend_batch(files['gru'], files['frame'], k=4, every_event=every)
    assert list(got.columns) == list(want.columns)
    assert got.session.tolist() == want.session.tolist() and got['rank'].tolist() == want['rank'].tolist()
    assert got.item.astype(str).tolist() == want.item.tolist()
    np.testing.assert_allclose(got.score, want.score, rtol=1e-6)


def test_options_exclude_seen_and_candidates(files, tmp_path):
    cand = tmp_path / 'cand.txt'
    cand.write_text('i1\ni2\ni3\ni4\ni5\nunknown\n')
    out = tmp_path / 'out.csv'
    r = run(files['model'], files['events'], '-k', 3, '-o', out, '--exclude_seen', '--candidates', cand)
    assert r.returncode == 0, r.stderr
    got = pd.read_csv(out, dtype={'item': str})
    want = recommend_batch(files['gru'], files['frame'], k=3, exclude_seen=True, candidates=['i1', 'i2', 'i3', 'i4', 'i5'])
    assert got.item.tolist() == want.item.tolist()
    assert set(got.item) <= {'i1', 'i2', 'i3', 'i4', 'i5'}


def test_installed_command(files, tmp_path):
    exe = shutil.which('gru4rec', path=os.path.dirname(sys.executable))
    if exe is None:
        pytest.skip('the gru4rec command is not installed here')
    out = tmp_path / 'o.csv'
    r = run(files['model'], files['events'], '-o', out, exe=[exe])
    assert r.returncode == 0, r.stderr
    assert len(pd.read_csv(out)) > 0


BAD = [
    ('missing model', lambda f, t: [t / 'nope.gru4rec', f['events'], '-o', t / 'o.csv'], 'model file does not exist'),
    ('not a model', lambda f, t: [f['events'], f['events'], '-o', t / 'o.csv'], 'not a GRU4Rec model file'),
    ('missing events', lambda f, t: [f['model'], t / 'nope.tsv', '-o', t / 'o.csv'], 'events file does not exist'),
    ('bad extension', lambda f, t: [f['model'], f['events'], '-o', t / 'o.xlsx'], 'Unknown output format'),
    ('no output', lambda f, t: [f['model'], f['events']], 'required'),
    ('k zero', lambda f, t: [f['model'], f['events'], '-k', 0, '-o', t / 'o.csv'], '-k must be'),
    ('k text', lambda f, t: [f['model'], f['events'], '-k', 'many', '-o', t / 'o.csv'], 'invalid int value'),
    ('missing column', lambda f, t: [f['model'], f['events'], '-ik', 'Product', '-o', t / 'o.csv'], 'Product'),
    ('file in the way of the output folder', lambda f, t: [f['model'], f['events'], '-o', f['events'] / 'sub' / 'o.csv'],
     'is a file, not a folder'),
    ('unknown flag', lambda f, t: [f['model'], f['events'], '-o', t / 'o.csv', '--frobnicate'], 'Unrecognized'),
    ('alien items', lambda f, t: [f['model'], f['alien'], '-o', t / 'o.csv'], 'shares no item'),
    ('text times', lambda f, t: [f['model'], f['text_times'], '-o', t / 'o.csv'], 'non-numeric'),
    ('missing candidates', lambda f, t: [f['model'], f['events'], '--candidates', t / 'c.txt', '-o', t / 'o.csv'],
     'candidates file does not exist'),
]


@pytest.mark.parametrize('name,args,message', BAD, ids=[b[0] for b in BAD])
def test_bad_input_is_one_error_line(files, tmp_path, name, args, message):
    f = dict(files)
    f['alien'] = files['dir'] / 'alien.tsv'
    files['frame'].assign(ItemId='x' + files['frame'].ItemId).to_csv(f['alien'], sep='\t', index=False)
    f['text_times'] = files['dir'] / 'text_times.tsv'
    files['frame'].assign(Time='noon').to_csv(f['text_times'], sep='\t', index=False)
    work = tmp_path / 'work'
    work.mkdir()
    r = run(*args(f, work), cwd=work)
    assert r.returncode == 2, (r.stdout, r.stderr)
    err = r.stderr.strip().splitlines()
    assert len(err) == 1 and err[0].startswith('ERROR. '), r.stderr
    assert message in err[0]
    assert 'Traceback' not in r.stdout + r.stderr
    assert list(work.iterdir()) == []      # nothing written


def test_missing_output_folders_are_made(files, tmp_path):
    """As with training's -s and --metrics_out: the output's missing folders are made (when it is written)."""
    out = tmp_path / 'new' / 'sub' / 'o.csv'
    r = run(files['model'], files['events'], '-k', 3, '-o', out)
    assert r.returncode == 0, r.stderr
    assert len(pd.read_csv(out)) > 0


def test_training_command_still_works_beside_the_subcommand(files, tmp_path):
    cmd = [sys.executable, os.path.join(ROOT, 'run.py'), str(files['model']), '-l', '-t', str(files['events']), '--backend', 'python']
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    assert 'Recall@20' in r.stdout
