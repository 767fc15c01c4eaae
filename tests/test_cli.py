"""run.py as a user runs it: a subprocess per call. Most calls use the fast-compiling 'python' backend;
test_end_to_end_numba runs the real CPU backend on the bundled RSC15 sample."""
import json
import os
import re
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA = os.path.join(ROOT, 'data', 'rsc15_64')
TINY = 'layers=8,n_epochs=1,batch_size=8,n_sample=16,loss=cross-entropy,final_act=softmax'


def run(*args, cwd=None, backend='python'):
    cmd = [sys.executable, os.path.join(ROOT, 'run.py')] + [str(a) for a in args]
    if backend:
        cmd += ['--backend', backend]
    env = dict(os.environ)
    env.pop('PYTENSOR_FLAGS', None)
    env.pop('THEANO_FLAGS', None)
    return subprocess.run(cmd, capture_output=True, text=True, cwd=cwd, env=env, timeout=900)


def make_sessions(path, n_sessions=60, n_items=30, seed=0, sep='\t'):
    rng = np.random.RandomState(seed)
    rows = [(s, f'i{rng.randint(n_items)}', 1000 * s + t) for s in range(n_sessions) for t in range(rng.randint(2, 6))]
    pd.DataFrame(rows, columns=['SessionId', 'ItemId', 'Time']).to_csv(path, sep=sep, index=False)
    return path


@pytest.fixture(scope='module')
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp('cli')
    return {'train': make_sessions(d / 'train.tsv'), 'test': make_sessions(d / 'test.tsv', seed=1), 'dir': d}


def test_train_save_load_evaluate(files):
    model = files['dir'] / 'model.pickle'
    r = run(files['train'], '-t', files['test'], '-m', 1, 5, 10, '-ps', TINY, '-s', model, '-lpm')
    assert r.returncode == 0, r.stderr
    out = r.stdout
    for line in ['Creating GRU4Rec model', 'Loading training data...', f'Loading data from TAB separated file: {files["train"]}',
                 'Started training', 'The dataframe is already sorted by SessionId, Time', f'Saving trained model to: {model}',
                 'Starting evaluation (cut-off=[1, 5, 10], using standard mode for tiebreaking)',
                 'Measuring Recall@1,5,10 and MRR@1,5,10']:
        assert line in out.splitlines(), line
    assert re.search(r"^SET   layers +TO   \[8\] +\(type: <class 'list'>\)$", out, re.M)
    assert re.search(r'^Epoch1 --> loss: \d+\.\d{6} \t\(\d+\.\d\ds\) \t\[\d+\.\d\d mb/s \| \d+ e/s\]$', out, re.M)
    assert re.search(r'^Total training time: \d+\.\d\ds$', out, re.M)
    metrics = re.findall(r'^Recall@(\d+): (\d\.\d{6}) MRR@\d+: (\d\.\d{6})$', out, re.M)
    assert [m[0] for m in metrics] == ['1', '5', '10']
    primary = re.search(r'^PRIMARY METRIC: (\S+)$', out, re.M).group(1)
    assert abs(float(primary) - float(metrics[0][1])) < 1e-6
    # the saved model gives the same metrics, also in another tie mode
    r2 = run(model, '-l', '-t', files['test'], '-m', 1, 5, 10)
    assert r2.returncode == 0, r2.stderr
    assert f'Loading trained model from file: {model}' in r2.stdout
    assert re.findall(r'^Recall@.*$', r2.stdout, re.M) == re.findall(r'^Recall@.*$', out, re.M)


def test_parameter_file_and_keys(files, tmp_path):
    renamed = tmp_path / 'renamed.tsv'
    pd.read_csv(files['train'], sep='\t').rename(columns={'SessionId': 'sid', 'ItemId': 'iid', 'Time': 'ts'}).to_csv(renamed, sep='\t', index=False)
    pf = tmp_path / 'params.py'
    pf.write_text("from collections import OrderedDict\ngru4rec_params = OrderedDict([('layers', [8]), ('n_epochs', 1), "
                  "('batch_size', 8), ('n_sample', 0), ('loss', 'bpr-max'), ('final_act', 'elu-1')])\n")
    # -sk/-ik/-tk name the training columns too (the original used them only for loading)
    r = run(renamed, '-t', renamed, '-pf', pf, '-sk', 'sid', '-ik', 'iid', '-tk', 'ts', '-e', 'conservative')
    assert r.returncode == 0, r.stderr
    assert f'Loaded parameters from file: {pf}' in r.stdout
    assert 'using conservative mode' in r.stdout


def test_pickle_input_store_options_and_model_module(files, tmp_path):
    pickled = tmp_path / 'train.pickle'
    pd.read_csv(files['train'], sep='\t', dtype={'ItemId': str}).to_pickle(pickled)
    r = run(pickled, '-t', files['test'], '-ps', TINY, '-ss', 0, '--sample_store_on_cpu')
    assert r.returncode == 0, r.stderr
    assert f'Loading data from pickle file: {pickled}' in r.stdout
    assert 'WARNING! The sample store is set to be on the CPU.' in r.stdout
    assert 'No example store was used' in r.stdout          # -ss 0: negatives drawn every step, no crash
    (tmp_path / 'my_variant.py').write_text('from gru4rec import *  # noqa\nfrom gru4rec import GRU4Rec, GRU4RecError\n'
                                            'print("variant module loaded")\n')
    r = run(files['train'], '-t', files['test'], '-ps', TINY, '-g', 'my_variant', cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert 'variant module loaded' in r.stdout
    r = run(files['train'], '-ps', TINY, '-g', 'no_such_module', cwd=tmp_path)
    assert r.returncode == 2 and 'Cannot import the model module' in r.stderr


def test_original_rng_flag(files, tmp_path):
    """--original_rng: the original's random stream, so the host store (the original's CPU store) without
    asking for it, the same metrics twice, and -ps rng=original means the same."""
    outs = []
    for extra in (['--original_rng'], ['--original_rng'], ['-ps', TINY + ',rng=original']):
        args = [files['train'], '-t', files['test'], '-ps', TINY] + extra if extra[0] != '-ps' else \
            [files['train'], '-t', files['test']] + extra
        r = run(*args)
        assert r.returncode == 0, r.stderr
        assert 'Created sample store with' in r.stdout and '(type=CPU)' in r.stdout
        outs.append(re.findall(r'Recall@20: ([0-9.]+) MRR@20: ([0-9.]+)', r.stdout))
        assert 'WARNING' not in r.stdout + r.stderr   # no dropout in TINY: nothing to warn about
    assert outs[0] and outs[0] == outs[1] == outs[2]


def test_original_rng_with_dropout_warns_in_one_line(files):
    """The original's dropout masks come from Theano's generator: --original_rng cannot reproduce them."""
    r = run(files['train'], '-ps', TINY + ',dropout_p_hidden=0.2', '--original_rng')
    assert r.returncode == 0, r.stderr
    lines = [ln for ln in (r.stdout + r.stderr).splitlines() if 'dropout' in ln and 'WARNING' in ln]
    assert len(lines) == 1 and lines[0].startswith("WARNING! rng='original'"), r.stdout + r.stderr
    assert 'UserWarning' not in r.stdout + r.stderr


def test_test_against_items(files):
    # fewer than 50000 candidates are allowed only when they cover a smaller catalogue (30 items here)
    r = run(files['train'], '-t', files['test'], '-ps', TINY, '--test_against_items', 40)
    assert r.returncode == 0, r.stderr
    assert 'Evaluating against the 30 most popular training items' in r.stdout
    full = run(files['train'], '-t', files['test'], '-ps', TINY)
    assert re.findall(r'^Recall@.*$', r.stdout, re.M) == re.findall(r'^Recall@.*$', full.stdout, re.M)


BAD = [
    ('missing training file', lambda f: ['nope.tsv', '-ps', TINY], 'does not exist'),
    ('no parameters', lambda f: [f['train']], 'Exactly one of the following parameters must be provided'),
    ('two parameter sources', lambda f: [f['train'], '-ps', TINY, '-l'], 'Exactly one of'),
    ('unknown parameter', lambda f: [f['train'], '-ps', 'foo=1'], 'Unknown parameter: foo'),
    ('unparsable value', lambda f: [f['train'], '-ps', 'n_sample=many'], 'n_sample'),
    ('malformed parameter string', lambda f: [f['train'], '-ps', 'layers100'], 'expected name=value'),
    ('bad loss', lambda f: [f['train'], '-ps', 'loss=hinge'], 'loss'),
    ('missing column', lambda f: [f['no_time'], '-ps', TINY], 'The column specified for time "Time" is not in the training file'),
    ('empty file', lambda f: [f['empty'], '-ps', TINY], 'is empty'),
    ('header only', lambda f: [f['header_only'], '-ps', TINY], 'has no events'),
    ('non-numeric session ids', lambda f: [f['str_sessions'], '-ps', TINY], 'must be numeric'),
    ('non-numeric times', lambda f: [f['str_times'], '-ps', TINY], 'must be numeric'),
    ('comma separated', lambda f: [f['csv'], '-ps', TINY], 'is the file tab-separated?'),
    ('no known test items', lambda f: [f['train'], '-ps', TINY, '-t', f['alien_test']], 'shares no items'),
    ('missing test file', lambda f: [f['train'], '-ps', TINY, '-t', 'nope.tsv'], 'does not exist'),
    ('not a model', lambda f: [f['train'], '-l', '-t', f['test']], 'not a GRU4Rec model file'),
    ('too few test items', lambda f: [f['big_train'], '-ps', TINY, '-t', f['test'], '--test_against_items', 5], "mustn't evaluate"),
    ('bad cut-off', lambda f: [f['train'], '-ps', TINY, '-m', 0], 'Cut-offs'),
    ('bad device', lambda f: [f['train'], '-ps', TINY, '-d', 'tpu'], 'Unknown device'),
    ('directory as data', lambda f: [f['dir'], '-ps', TINY], 'is not a file'),
    ('binary garbage', lambda f: [f['garbage'], '-ps', TINY], 'does not look like tab-separated text'),
    ('corrupt gzip', lambda f: [f['bad_gz'], '-ps', TINY], 'Cannot read the training file'),
    ('NaN session id', lambda f: [f['nan_sessions'], '-ps', TINY], 'SessionId of the training data has missing values'),
    ('duplicate header line', lambda f: [f['dup_header'], '-ps', TINY], 'repeats its header line'),
    ('no session of 2 events', lambda f: [f['singletons'], '-ps', TINY], 'no session with at least 2 events'),
    ('negative dropout', lambda f: [f['train'], '-ps', TINY + ',dropout_p_hidden=-0.1'], 'dropout_p_hidden'),
    ('zero batch size', lambda f: [f['train'], '-ps', TINY + ',batch_size=0'], 'batch_size'),
    ('unknown activation', lambda f: [f['train'], '-ps', TINY + ',final_act=swish'], 'final_act'),
    ('learning rate not positive', lambda f: [f['train'], '-ps', TINY + ',learning_rate=-1'], 'learning_rate'),
    ('learning rate not a number', lambda f: [f['train'], '-ps', TINY + ',learning_rate=fast'], 'learning_rate'),
    ('missing parameter file', lambda f: [f['train'], '-pf', 'nope.py'], 'Parameter file not found'),
    ('parameter file without params', lambda f: [f['train'], '-pf', f['empty_pf']], 'does not define the dict gru4rec_params'),
    ('load with save', lambda f: [f['train'], '-l', '-s', 'out.gru4rec'], 'cannot be used with --load_model'),
    ('load with original rng', lambda f: [f['good_model'], '-l', '-t', f['test'], '--original_rng'],
     '--original_rng and --seed are for training'),
    ('load with seed', lambda f: [f['good_model'], '-l', '-t', f['test'], '--seed', 3], 'are for training'),
    ('resume without folder', lambda f: [f['train'], '-ps', TINY, '--resume'], '--resume needs --checkpoint_dir'),
    ('truncated model', lambda f: [f['truncated_model'], '-l', '-t', f['test']], 'truncated'),
    ('incompatible model version', lambda f: [f['future_model'], '-l', '-t', f['test']], 'model format version 99'),
    ('original Theano pickle', lambda f: [f['theano_model'], '-l', '-t', f['test']], 'original Theano GRU4Rec'),
    ('too few test items, loaded model', lambda f: [f['good_model'], '-l', '-t', f['test'], '--test_against_items', 2],
     "mustn't evaluate"),
    # output paths are checked before the data are read (issue 18); -s cases are in test_outputs.py (this
    # harness adds its own -s)
    ('metrics into a file as folder', lambda f: [f['train'], '-ps', TINY, '--metrics_out', f['a_file'] / 'x' / 'm.json'],
     'is a file, not a folder'),
    ('plot without permission', lambda f: [f['train'], '-ps', TINY, '--plot', '/sys/gru4rec-plot.png'],
     'cannot write in the folder /sys'),
    ('metrics folder cannot be made', lambda f: [f['train'], '-ps', TINY, '--metrics_out', '/sys/gru4rec-x/m.json'],
     'cannot create the folder /sys/gru4rec-x'),
    ('checkpoint folder is a file', lambda f: [f['train'], '-ps', TINY, '--checkpoint_dir', f['a_file']],
     'is a file, not a folder'),
    ('checkpoint folder left by bad data', lambda f: [f['singletons'], '-ps', TINY, '--checkpoint_dir', 'ck/sub'],
     'no session with at least 2 events'),
    # --resume: the checkpoint is read whole and checked before anything compiles (see checkpoint_files)
    ('resume, other sample store size', lambda f: resume(f, 'ckpt_ok', ss=3200),
     'was made with -ss 1600 (a sample store of 100 rows of 16 samples); this run asks for -ss 3200 (a sample store of 200 rows'),
    ('resume, truncated checkpoint', lambda f: resume(f, 'ckpt_truncated'), 'is corrupt or truncated (BadZipFile'),
    ('resume, garbage checkpoint', lambda f: resume(f, 'ckpt_garbage'), 'is not a GRU4Rec checkpoint'),
    ('resume, model file as checkpoint', lambda f: resume(f, 'ckpt_model'), 'is a model file, not a checkpoint'),
    ('resume, future checkpoint version', lambda f: resume(f, 'ckpt_future'), 'checkpoint format version 99'),
    ('resume, random stream missing', lambda f: resume(f, 'ckpt_no_rng_keys'), 'random stream of the weights (rng_keys) is missing'),
    ('resume, random stream invalid', lambda f: resume(f, 'ckpt_bad_noise'), 'random streams are missing or invalid'),
    ('resume, sample store cut short', lambda f: resume(f, 'ckpt_short_store'),
     'its sample store is int32 of shape (50, 16), this run needs int32 of shape (100, 16)'),
    ('resume, weight of another shape', lambda f: resume(f, 'ckpt_bad_weight'), 'its weight Wh0 is float32 of shape (8, 9)'),
    ('resume, optimiser state missing', lambda f: resume(f, 'ckpt_no_state'), 'optimiser state 3 is missing'),
    ('resume, other item IDs', lambda f: resume(f, 'ckpt_ok', data='alien_test'), "other item IDs (item 0: 'i15' in the checkpoint, 'xi15' in these data)"),
    ('resume, other training data', lambda f: resume(f, 'ckpt_ok', data='big_train'), 'other training data (2'),
    ('resume, other parameters', lambda f: resume(f, 'ckpt_ok', ps=TINY + ',n_sample=8'), 'n_sample=16 (this run: 8)'),
]


def resume(f, folder, data='train', ps=TINY, ss=1600):
    """--resume from one of checkpoint_files' folders; by default with the data and parameters that made it."""
    return [f[data], '-ps', ps, '-ss', ss, '--checkpoint_dir', f[folder], '--resume']


def checkpoint_files(d, df):
    """Folders holding a checkpoint of TINY with -ss 1600 on df (the training file), and damaged copies of it."""
    from gru4rec import GRU4Rec
    out = {}
    model = GRU4Rec(backend='python')
    model.set_params(**dict(kv.split('=') for kv in TINY.split(',')))
    model.fit(df, sample_store=1600, checkpoint_dir=str(d / 'ckpt_ok'))
    good = d / 'ckpt_ok' / 'checkpoint.gru4rec'
    with np.load(good) as z:
        arrays = dict(z)
    header = json.loads(bytes(arrays['header']).decode())

    def variant(name, data=None, header_change=None, **changes):
        (d / name).mkdir()
        path = d / name / 'checkpoint.gru4rec'
        if data is not None:
            path.write_bytes(data)
        else:
            h = json.loads(json.dumps(header))
            if header_change:
                header_change(h)
            a = {k: v for k, v in arrays.items() if changes.get(k, 0) is not None}
            a.update({k: v for k, v in changes.items() if v is not None})
            a['header'] = np.frombuffer(json.dumps(h).encode(), dtype=np.uint8)
            with open(path, 'wb') as fh:
                np.savez(fh, **a)
        out[name] = d / name
    out['ckpt_ok'] = d / 'ckpt_ok'
    variant('ckpt_truncated', data=good.read_bytes()[:len(good.read_bytes()) // 2])
    variant('ckpt_garbage', data=bytes(range(256)) * 8)
    variant('ckpt_model', data=(d / 'good.gru4rec').read_bytes())
    variant('ckpt_future', header_change=lambda h: h.update(version=99))
    variant('ckpt_no_rng_keys', rng_keys=None)
    variant('ckpt_bad_noise', header_change=lambda h: h['checkpoint']['streams'].update(noise={'bit_generator': 'PCG64'}))
    variant('ckpt_short_store', sampler_store=arrays['sampler_store'][:50])
    variant('ckpt_bad_weight', w_Wh0=np.zeros((8, 9), np.float32))
    variant('ckpt_no_state', state_3=None)
    return out


@pytest.fixture(scope='module')
def bad_files(files):
    d = files['dir']
    df = pd.read_csv(files['train'], sep='\t')
    out = dict(files)
    out['no_time'] = d / 'no_time.tsv'
    df.drop(columns='Time').to_csv(out['no_time'], sep='\t', index=False)
    out['empty'] = d / 'empty.tsv'
    out['empty'].write_text('')
    out['header_only'] = d / 'header_only.tsv'
    out['header_only'].write_text('SessionId\tItemId\tTime\n')
    out['str_sessions'] = d / 'str_sessions.tsv'
    df.assign(SessionId='s' + df.SessionId.astype(str)).to_csv(out['str_sessions'], sep='\t', index=False)
    out['str_times'] = d / 'str_times.tsv'
    df.assign(Time='noon').to_csv(out['str_times'], sep='\t', index=False)
    out['csv'] = d / 'comma.csv.txt'
    df.to_csv(out['csv'], sep=',', index=False)
    out['alien_test'] = d / 'alien.tsv'
    df.assign(ItemId='x' + df.ItemId.astype(str)).to_csv(out['alien_test'], sep='\t', index=False)
    out['big_train'] = make_sessions(d / 'big_train.tsv', n_sessions=400, n_items=200, seed=3)
    out['garbage'] = d / 'garbage.tsv'
    out['garbage'].write_bytes(bytes(range(256)) * 20)
    out['bad_gz'] = d / 'bad.tsv.gz'
    out['bad_gz'].write_bytes(b'\x1f\x8b\x08\x00' + b'\x00' * 40)
    out['nan_sessions'] = d / 'nan_sessions.tsv'
    df.astype({'SessionId': float}).assign(SessionId=lambda x: x.SessionId.where(x.index != 3)).to_csv(out['nan_sessions'], sep='\t', index=False)
    out['dup_header'] = d / 'dup_header.tsv'
    text = files['train'].read_text().splitlines()
    out['dup_header'].write_text('\n'.join(text[:5] + text[:1] + text[5:]) + '\n')
    out['singletons'] = d / 'singletons.tsv'
    pd.DataFrame({'SessionId': [1, 2, 3], 'ItemId': ['a', 'b', 'c'], 'Time': [1, 2, 3]}).to_csv(out['singletons'], sep='\t', index=False)
    out['empty_pf'] = d / 'empty_params.py'
    out['empty_pf'].write_text('x = 1\n')
    out['a_file'] = d / 'a_file.txt'
    out['a_file'].write_text('a file where a folder is expected\n')
    # model files: a real one, cut short; one claiming a future format version; an original Theano pickle
    from gru4rec import GRU4Rec
    good = d / 'good.gru4rec'
    GRU4Rec(layers=[4], n_epochs=1, batch_size=4, n_sample=4, backend='python').fit(df).savemodel(good)
    out['good_model'] = good
    out['truncated_model'] = d / 'truncated.gru4rec'
    out['truncated_model'].write_bytes(good.read_bytes()[:200])
    with np.load(good) as z:
        arrays = dict(z)
    header = json.loads(bytes(arrays['header']).decode())
    header['version'] = 99
    arrays['header'] = np.frombuffer(json.dumps(header).encode(), dtype=np.uint8)
    out['future_model'] = d / 'future.gru4rec'
    with open(out['future_model'], 'wb') as fh:
        np.savez(fh, **arrays)
    out['theano_model'] = d / 'theano.pickle'
    out['theano_model'].write_bytes(b'\x80\x02cgru4rec\nGRU4Rec\nq\x00)\x81q\x01}q\x02b.')
    out.update(checkpoint_files(d, df))
    return out


@pytest.mark.parametrize('name,args,message', BAD, ids=[b[0] for b in BAD])
def test_bad_input_is_one_error_line(bad_files, tmp_path, name, args, message):
    """Exit code 2, one 'ERROR.' line, no traceback; no new file and an existing model file unchanged."""
    new_model, old_model = tmp_path / 'new.gru4rec', tmp_path / 'old.gru4rec'
    old_model.write_bytes(b'previous model bytes')
    argv = args(bad_files)
    runs = [argv + ['-s', new_model], argv + ['-s', old_model]] if '-l' not in argv else [argv]
    for argv in runs:
        r = run(*argv, cwd=tmp_path)
        assert r.returncode == 2, (r.stdout, r.stderr)
        err = r.stderr.strip().splitlines()
        assert len(err) == 1 and err[0].startswith('ERROR. '), r.stderr
        assert message in err[0]
        assert 'Traceback' not in r.stdout + r.stderr
        assert not new_model.exists() and old_model.read_bytes() == b'previous model bytes'
        assert sorted(p.name for p in tmp_path.iterdir()) == ['old.gru4rec']   # no temp or partial files


def test_bad_input_table_is_large_enough():
    """Issue 18's catalogue: at least 50 cases of bad input to run.py (test_outputs.BAD_OUTPUTS adds the -s cases)."""
    import test_outputs
    assert len(BAD) + len(test_outputs.BAD_OUTPUTS) >= 50


@pytest.mark.slow
def test_end_to_end_numba_on_bundled_rsc15(tmp_path):
    """The real CPU backend on a bundled real sample: train on the RSC15 1/64 validation day, test on the test day."""
    model = tmp_path / 'm.gru4rec'
    r = run(os.path.join(DATA, 'rec15_64_train_valid.txt.gz'), '-t', os.path.join(DATA, 'rec15_64_test.txt.gz'),
            '-ps', 'loss=cross-entropy,final_act=softmax,layers=32,n_epochs=2,n_sample=256,constrained_embedding=True,logq=1,sample_alpha=0.5',
            '-m', 5, 20, '-s', model, backend='numba')
    assert r.returncode == 0, r.stderr
    assert re.search(r'^Dropped \d+ test events with items unseen in training', r.stdout, re.M)
    recall20 = float(re.search(r'^Recall@20: (\S+)', r.stdout, re.M).group(1))
    assert 0.05 < recall20 <= 1.0      # far above chance (20 / 2,561 items ~ 0.008)
    r2 = run(model, '-l', '-t', os.path.join(DATA, 'rec15_64_test.txt.gz'), '-m', 5, 20, backend='numba')
    assert r2.returncode == 0, r2.stderr
    assert re.findall(r'^Recall@.*$', r2.stdout, re.M) == re.findall(r'^Recall@.*$', r.stdout, re.M)


def test_configuration_precedence(tmp_path):
    import run as cli
    rc = tmp_path / 'flags'
    rc.write_text('[global]\nfloatX = float64\ndevice = cpu\nbackend = python\nblas_threads = 1\n')
    own, flags = cli.resolve_config(environ={}, flags_file=str(rc))
    assert own == {'device': 'cpu', 'backend': 'python', 'blas_threads': '1'} and flags == {'floatX': 'float64'}
    env = {'THEANO_FLAGS': 'floatX=float32,backend=numba', 'PYTENSOR_FLAGS': 'floatX=float16'}
    own, flags = cli.resolve_config(environ=env, flags_file=str(rc))
    assert own['backend'] == 'numba' and flags['floatX'] == 'float16'      # PYTENSOR_FLAGS > THEANO_FLAGS > file
    own, _ = cli.resolve_config(cli_backend='python', environ=env, flags_file=str(rc))
    assert own['backend'] == 'python'                                      # command line > environment
    own, _ = cli.resolve_config(cli_device='cuda:1', environ={}, flags_file=str(rc))
    assert own == {'device': 'cuda:1', 'backend': 'jax', 'blas_threads': '1'}   # the device picks its backend
    own, _ = cli.resolve_config(environ={'THEANO_FLAGS': 'device=cuda0'}, flags_file=str(tmp_path / 'none'))
    assert own['device'] == 'cuda0' and own['backend'] == 'jax'             # old Theano-style device flag
    with pytest.raises(cli.InputError, match='Unknown device'):
        cli.resolve_config(cli_device='tpu', environ={}, flags_file=str(rc))
    with pytest.raises(cli.InputError, match='Unknown device'):
        cli.resolve_config(cli_device='cudax', environ={}, flags_file=str(rc))
    env = {}
    assert cli.apply_config({'device': 'cpu', 'backend': 'numba', 'blas_threads': '1'}, {'floatX': 'float32'},
                            environ=env) is None                            # cpu: the backend's default device
    assert env['PYTENSOR_FLAGS'] == 'floatX=float32' and env['OPENBLAS_NUM_THREADS'] == '1'
    env = {}
    assert cli.apply_config({'device': 'cuda:1', 'backend': 'jax'}, {}, environ=env) == 'cuda'
    assert env['CUDA_VISIBLE_DEVICES'] == '1' and 'JAX_PLATFORMS' not in env   # only GPU 1 visible: the first
    env = {'CUDA_VISIBLE_DEVICES': '2,3'}
    assert cli.apply_config({'device': 'gpu1', 'backend': 'jax'}, {}, environ=env) == 'cuda:1'
    assert env['CUDA_VISIBLE_DEVICES'] == '2,3'                             # the user's mask is kept
    own, _ = cli.resolve_config(cli_device='cpu:1', environ={}, flags_file=str(rc))
    assert own['device'] == 'cpu:1' and own['backend'] == 'numba'          # cpu:N, as the model takes it
    assert cli.apply_config(own, {}, environ={}) == 'cpu:1'


def test_command_line_and_model_share_the_device_policy():
    """-d accepts the device names that GRU4Rec(device=...) accepts, and picks the backend the model picks
    for them (one policy, _devices.py); names that one refuses, the other refuses too."""
    pytest.importorskip('jax')
    import cli
    from gru4rec import GRU4Rec, GRU4RecError
    for name in ('cpu', 'cpu:1', 'CPU0', 'cuda', 'cuda:1', 'cuda0', 'gpu', 'gpu1', 'GPU:2'):
        own, _ = cli.resolve_config(cli_device=name, environ={}, flags_file='no such file')
        assert own['backend'] == GRU4Rec(device=name).effective_backend, name
    for name in ('tpu', 'cudax', 'cpu:x', 'cuda:-1'):
        with pytest.raises(cli.InputError, match='Unknown device'):
            cli.resolve_config(cli_device=name, environ={}, flags_file='no such file')
        with pytest.raises(GRU4RecError, match='parameter device'):
            GRU4Rec().set_params(device=name)


def test_command_line_modules_import_no_numerics_before_configuring(tmp_path):
    """The installed command (gru4rec.run:main) and gru4rec-paropt import the package first: it must not import
    numpy, PyTensor or JAX, or the flags file, BLAS threads and device would be applied too late. Importing the
    model does not import JAX either (its Ops' JAX implementations are registered when a JAX mode is made)."""
    code = ('import json, sys; import gru4rec, gru4rec.run, gru4rec.paropt; '
            'before = [m for m in ("numpy", "pytensor", "jax", "numba") if m in sys.modules]; '
            'from gru4rec import GRU4Rec, evaluate_gpu; '
            'print(json.dumps([hasattr(gru4rec, "__path__"), before, "jax" in sys.modules, GRU4Rec.__name__]))')
    # run outside the checkout, where `gru4rec` is the installed package
    out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert out.returncode == 0, out.stderr
    package, before, jax_after, name = json.loads(out.stdout.strip().splitlines()[-1])
    if not package:
        pytest.skip('gru4rec is not installed as a package here (pip install -e .)')
    assert before == [] and not jax_after and name == 'GRU4Rec'


@pytest.mark.parametrize('where', ['checkout', 'installed'])
def test_python_dash_m_gru4rec_is_the_command_line(files, tmp_path, where):
    """`python -m gru4rec` trains and evaluates like run.py, in the checkout (the module gru4rec.py) and with the
    installed package (its __main__), and reaches the subcommands."""
    if where == 'installed':
        probe = subprocess.run([sys.executable, '-c', 'import gru4rec; print(hasattr(gru4rec, "__path__"))'],
                               capture_output=True, text=True, cwd=tmp_path, timeout=300)
        if probe.stdout.strip() != 'True':
            pytest.skip('gru4rec is not installed as a package here (pip install -e .)')
    cwd = ROOT if where == 'checkout' else tmp_path
    r = subprocess.run([sys.executable, '-m', 'gru4rec', str(files['train']), '-ps', TINY, '-t', str(files['test']),
                        '--backend', 'python'], capture_output=True, text=True, cwd=cwd, timeout=900)
    assert r.returncode == 0, r.stdout + r.stderr
    assert re.search(r'Recall@20: [0-9.]+ MRR@20: [0-9.]+', r.stdout)
    r = subprocess.run([sys.executable, '-m', 'gru4rec', 'recommend', '--help'], capture_output=True, text=True,
                       cwd=cwd, timeout=300)
    assert r.returncode == 0 and r.stdout.startswith('usage: gru4rec recommend'), r.stdout + r.stderr


def test_gpu_device_without_a_gpu_is_one_error_line(tmp_path):
    """-d cuda where JAX sees no GPU: one ERROR line saying so and how to install the GPU extra, exit code 2,
    before the training data are read (it used to train on the CPU without a word)."""
    jax = pytest.importorskip('jax')
    if any(d.platform == 'gpu' for d in jax.devices()):
        pytest.skip('this machine has a GPU')
    train = make_sessions(tmp_path / 'train.tsv')
    r = run(train, '-ps', TINY, '-d', 'cuda:1', backend=None)
    assert r.returncode == 2, r.stdout + r.stderr
    assert re.fullmatch(r'ERROR\. -d cuda:1 \(CUDA_VISIBLE_DEVICES=1\): device "cuda": JAX sees no GPU .*'
                        r'pip install "jax\[cuda12\]"\)?\n', r.stderr)
    assert 'Loading training data' not in r.stdout and 'Epoch' not in r.stdout


def test_sigkill_then_resume_gives_the_uninterrupted_model(tmp_path):
    """Training killed with SIGKILL after a checkpoint, then --resume: same metrics as one uninterrupted run."""
    import signal
    import time
    train = make_sessions(tmp_path / 'train.tsv', n_sessions=2500, n_items=60, seed=4)
    test = make_sessions(tmp_path / 'test.tsv', n_sessions=200, n_items=60, seed=5)
    params = ('layers=8,n_epochs=3,batch_size=8,n_sample=16,loss=bpr-max,final_act=elu-0.5,momentum=0.3,'
              'dropout_p_hidden=0.2,train_random_order=True')
    full = run(train, '-t', test, '-ps', params, '-m', 5, 20)
    assert full.returncode == 0, full.stderr
    ckpt_dir = tmp_path / 'ckpt'
    cmd = [sys.executable, os.path.join(ROOT, 'run.py'), str(train), '-ps', params, '--checkpoint_dir', str(ckpt_dir),
           '--backend', 'python']
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while not (ckpt_dir / 'checkpoint.gru4rec').exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)                     # in epoch 2 (or later): after at least one checkpoint
    proc.wait()
    assert (ckpt_dir / 'checkpoint.gru4rec').exists()
    resumed = run(train, '-t', test, '-ps', params, '-m', 5, 20, '--checkpoint_dir', ckpt_dir, '--resume')
    assert resumed.returncode == 0, resumed.stderr
    assert re.search(r'^Resuming from .* after epoch [12]$', resumed.stdout, re.M)   # killed before the end
    assert re.findall(r'^Recall@.*$', resumed.stdout, re.M) == re.findall(r'^Recall@.*$', full.stdout, re.M)
    other = run(train, '-ps', params.replace('momentum=0.3', 'momentum=0.2'), '--checkpoint_dir', ckpt_dir, '--resume')
    assert other.returncode == 2 and 'other parameters: momentum=0.3 (this run: 0.2)' in other.stderr


@pytest.mark.parametrize('name', ['train.csv', 'train.csv.gz', 'train.txt.bz2', 'train.pickle', 'train.parquet'])
def test_data_formats_by_extension(files, tmp_path, name):
    df = pd.read_csv(files['train'], sep='\t', dtype={'ItemId': str})
    path = tmp_path / name
    if name.endswith('.pickle'):
        df.to_pickle(path)
    elif name.endswith('.parquet'):
        df.to_parquet(path)
    else:
        df.to_csv(path, sep=',' if '.csv' in name else '\t', index=False)
    r = run(path, '-t', files['test'], '-ps', TINY + ',seed=3')
    reference = run(files['train'], '-t', files['test'], '-ps', TINY + ',seed=3')
    assert r.returncode == 0, r.stderr
    kind = {'.csv': 'COMMA separated', '.txt': 'TAB separated', '.pickle': 'pickle', '.parquet': 'parquet'}
    assert any(f'Loading data from {v} file: {path}' in r.stdout for k, v in kind.items() if k in name)
    assert re.findall(r'^Recall@.*$', r.stdout, re.M) == re.findall(r'^Recall@.*$', reference.stdout, re.M)


def test_metrics_json(files, tmp_path):
    out = tmp_path / 'metrics.json'
    r = run(files['train'], '-t', files['test'], files['test'], '-ps', TINY + ',n_epochs=2', '-m', 1, 10,
            '--metrics-out', out)                        # hyphenated alias of --metrics_out
    assert r.returncode == 0, r.stderr
    rec = json.loads(out.read_text())
    assert rec['schema'] == 'gru4rec-metrics/1' and rec['model_file'] is None
    assert rec['parameters']['layers'] == [8] and rec['parameters']['n_epochs'] == 2
    epochs = rec['training']['epochs']
    assert [e['epoch'] for e in epochs] == [1, 2]
    for e in epochs:
        assert set(e) == {'epoch', 'loss', 'seconds', 'steps', 'events', 'mb_per_s', 'events_per_s'}
        assert e['loss'] > 0 and e['steps'] > 0 and e['mb_per_s'] == pytest.approx(e['steps'] / e['seconds'])
    printed = re.findall(r'^Epoch(\d) --> loss: (\S+) ', r.stdout, re.M)
    assert [f'{e["loss"]:.6f}' for e in epochs] == [p[1] for p in printed]
    assert len(rec['evaluation']) == 2
    ev = rec['evaluation'][0]
    assert ev['test_file'] == str(files['test']) and ev['mode'] == 'standard' and ev['cut_offs'] == [1, 10]
    assert ev['events'] > 0 and ev['dropped_events'] >= 0
    for c in ('1', '10'):
        line = re.search(rf'^Recall@{c}: (\S+) MRR@{c}: (\S+)$', r.stdout, re.M)
        assert f'{ev["recall"][c]:.6f}' == line.group(1) and f'{ev["mrr"][c]:.6f}' == line.group(2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ['metrics.json']    # written atomically


def test_plot(files, tmp_path):
    png = tmp_path / 'run.png'
    r = run(files['train'], '-t', files['test'], '-ps', TINY + ',n_epochs=2', '-m', 1, 5, 10, '--plot', png)
    assert r.returncode == 0, r.stderr
    data = png.read_bytes()
    assert data[:8] == b'\x89PNG\r\n\x1a\n' and len(data) > 10000


def test_train_on_jax_in_chunks_gives_the_numba_metrics(files):
    pytest.importorskip('jax')
    out = {}
    for backend, chunk in (('numba', 0), ('jax', 5)):
        # the same (host) negatives on both: JAX would otherwise draw them inside the step
        r = run(files['train'], '-t', files['test'], '-m', 5, 10, '-ps', TINY, '--chunk', chunk, '--sample_store_on_cpu',
                backend=backend)
        assert r.returncode == 0, r.stderr
        out[backend] = np.array(re.findall(r'^Recall@\d+: (\S+) MRR@\d+: (\S+)$', r.stdout, re.M), dtype=float)
    np.testing.assert_allclose(out['jax'], out['numba'], rtol=0, atol=1e-4)


def test_bad_chunk_is_a_usage_error(files):
    r = run(files['train'], '-t', files['test'], '-ps', TINY, '--chunk', -1)
    assert r.returncode == 2 and r.stderr.startswith('ERROR.') and 'chunk must be >= 0' in r.stderr
    assert 'Traceback' not in r.stderr


def test_nan_stop_exits_1_without_evaluating_and_names_the_cause(files, tmp_path):
    model = tmp_path / 'model.gru4rec'
    r = run(files['train'], '-t', files['test'], '-ps', TINY.replace('final_act=softmax', 'final_act=linear'), '-s', model)
    assert r.returncode == 1 and 'Traceback' not in r.stderr
    assert r.stderr.startswith('ERROR. Training stopped: the loss became NaN in epoch 1')
    assert "use final_act='softmax'" in r.stderr
    assert 'Recall@' not in r.stdout and not model.exists()


def test_jax_without_chunks_is_refused_before_the_data_are_read(files):
    # the chunk check runs before loading (a wrong -chunk would otherwise surface after a long data load)
    pytest.importorskip('jax')
    r = run(files['train'], '-ps', TINY, '--chunk', '0', backend='jax')
    assert r.returncode == 2 and 'trains in chunks only' in r.stderr
    assert 'Loading training data' not in r.stdout
