"""Output paths (issue 18): checked before the data are read, missing folders made and not left behind by a
bad run, a fallback file in the temp folder when a write fails after training, the mode of written files.
Real subprocesses on tiny generated data with the python backend."""
import json
import os
import re
import shutil
import stat
import subprocess
import sys
import zipfile

import numpy as np
import pytest

from test_cli import ROOT, TINY, make_sessions, run

PREPROCESS = os.path.join(ROOT, 'examples', 'rsc15', 'preprocess.py')


@pytest.fixture(scope='module')
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp('outputs')
    out = {'dir': d, 'train': make_sessions(d / 'train.tsv'), 'test': make_sessions(d / 'test.tsv', seed=1)}
    out['a_file'] = d / 'a_file.txt'
    out['a_file'].write_text('a file where a folder is expected\n')
    out['a_folder'] = d / 'a_folder'
    out['a_folder'].mkdir()
    out['text_model'] = d / 'notes.gru4rec'
    out['text_model'].write_text('SessionId\tItemId\tTime\n1\ta\t1\n')
    return out


def tree(path):
    return sorted((str(p.relative_to(path)), p.stat().st_mtime_ns if p.is_file() else None) for p in path.rglob('*'))


# (name, command after the interpreter, message, text that must not be on stdout)
BAD_OUTPUTS = [
    ('model into a file as folder', lambda f: [f['train'], '-ps', TINY, '-s', f['a_file'] / 'm.gru4rec'],
     'is a file, not a folder', None),
    ('model path is a folder', lambda f: [f['train'], '-ps', TINY, '-s', f['a_folder']], 'this is a folder', None),
    ('model folder cannot be made', lambda f: [f['train'], '-ps', TINY, '-s', '/sys/gru4rec-x/m.gru4rec'],
     'cannot create the folder /sys/gru4rec-x', None),
    ('model without permission', lambda f: [f['train'], '-ps', TINY, '-s', '/sys/m.gru4rec'],
     'cannot write in the folder /sys', None),
    ('text file named as a model', lambda f: [f['text_model'], '-l', '-t', f['test']],
     'is not a GRU4Rec model file', 'pickle'),
    ('preprocess: missing input', lambda f: [PREPROCESS, f['dir'] / 'yoochoose-clicks.dat', 'prepared'],
     'The clicks file does not exist', None),
]


@pytest.mark.parametrize('name,args,message,not_on_stdout', BAD_OUTPUTS, ids=[b[0] for b in BAD_OUTPUTS])
def test_bad_output_is_one_error_line(files, tmp_path, name, args, message, not_on_stdout):
    """Exit code 2, one 'ERROR.' line, no traceback, nothing created or changed (in the working folder and
    beside the inputs)."""
    argv = args(files)
    before = tree(files['dir'])
    if argv[0] == PREPROCESS:
        r = subprocess.run([sys.executable] + [str(a) for a in argv], capture_output=True, text=True, cwd=tmp_path)
    else:
        r = run(*argv, cwd=tmp_path)
    assert r.returncode == 2, (r.stdout, r.stderr)
    err = r.stderr.strip().splitlines()
    assert len(err) == 1 and err[0].startswith('ERROR. ') and message in err[0], r.stderr
    assert 'Traceback' not in r.stdout + r.stderr
    assert not_on_stdout is None or not_on_stdout not in r.stdout
    assert list(tmp_path.iterdir()) == [] and tree(files['dir']) == before


def test_missing_folders_are_made_but_not_left_by_a_bad_run(files, tmp_path):
    good = tmp_path / 'good.gru4rec'
    assert run(files['train'], '-ps', TINY, '-s', good).returncode == 0
    r = run(files['train'], '-ps', TINY, '-s', 'a/b/m.gru4rec', '--checkpoint_dir', 'c/d', '-t', files['test'],
            '--metrics_out', 'e/f/m.json', cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    for path in ('a/b/m.gru4rec', 'c/d/checkpoint.gru4rec', 'e/f/m.json'):
        assert (tmp_path / path).is_file(), path
    # a bad test file (found when the model is loaded, after the folders were made) leaves none of them
    bad_test = tmp_path / 'bad_test.tsv'
    bad_test.write_text('SessionId\tItemId\tTime\ns1\ti1\t1\n')
    r = run(good, '-l', '-t', bad_test, '--metrics_out', 'new/sub/m.json', '--plot', 'new/p.png', cwd=tmp_path)
    assert r.returncode == 2 and r.stderr.startswith('ERROR. '), r.stderr
    assert not (tmp_path / 'new').exists()


def test_failed_writes_after_training_go_to_the_temp_folder(files, tmp_path):
    """The model's and the metrics' folders disappear while training runs (removed; replaced by a file, which
    stops root too): both are written to the temp folder, each named by an ERROR line, exit code 1; the
    fallback model is the trained one (its metrics equal the run's)."""
    temp = tmp_path / 'temp'
    temp.mkdir()
    env = dict(os.environ, TMPDIR=str(temp), PYTHONUNBUFFERED='1')
    env.pop('PYTENSOR_FLAGS', None)
    env.pop('THEANO_FLAGS', None)
    argv = ['gru4rec', files['train'], '-ps', TINY, '-t', files['test'], '-s', 'models/m.gru4rec',
            '--metrics_out', 'metrics/m.json', '--backend', 'python']
    proc = subprocess.Popen([sys.executable, os.path.join(ROOT, 'run.py')] + [str(a) for a in argv[1:]], cwd=tmp_path,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out = []
    for line in proc.stdout:
        out.append(line)
        if line.startswith('Started training'):   # the folders exist (made before the data were read)
            shutil.rmtree(tmp_path / 'models')
            shutil.rmtree(tmp_path / 'metrics')
            (tmp_path / 'metrics').write_text('now a file')
    err = proc.stderr.read()
    assert proc.wait() == 1, err
    out = ''.join(out)
    assert 'Traceback' not in out + err
    lines = err.strip().splitlines()
    assert len(lines) == 2 and all(line.startswith('ERROR. Cannot write ') for line in lines), err
    model = re.search(r'the model to models/m\.gru4rec \(No such file or directory\); it was saved to (\S+) instead', lines[0])
    metrics = re.search(r'the metrics to metrics/m\.json \(Not a directory\); it was saved to (\S+) instead', lines[1])
    assert model and metrics, err
    model, metrics = model.group(1), metrics.group(1)
    assert os.path.dirname(model) == os.path.dirname(metrics) == str(temp)
    assert model.endswith('.gru4rec') and metrics.endswith('.json')
    assert sorted(os.listdir(temp)) == sorted([os.path.basename(model), os.path.basename(metrics)])
    record = json.loads(open(metrics).read())
    assert record['command'] == [str(a) for a in argv]
    recalls = re.findall(r'^Recall@.*$', out, re.M)
    assert recalls and re.findall(r'^Recall@.*$', run(model, '-l', '-t', files['test']).stdout, re.M) == recalls


def test_a_failed_checkpoint_stops_training_and_keeps_the_model(files, tmp_path):
    """The checkpoint folder is replaced by a file after epoch 1: the checkpoint of epoch 2 fails, training
    stops with one ERROR line (exit 1, no evaluation) and -s holds the model of epoch 2, the same as a run of
    2 epochs (the python backend is deterministic for a seed); epoch 2's line is printed and the metrics file
    holds both epochs."""
    from gru4rec import GRU4Rec
    train = make_sessions(tmp_path / 'train.tsv', n_sessions=1000, n_items=50)   # epochs of ~1 s: time to act
    params = TINY.replace('n_epochs=1', 'n_epochs=3')
    env = {k: v for k, v in os.environ.items() if k not in ('PYTENSOR_FLAGS', 'THEANO_FLAGS')}
    proc = subprocess.Popen([sys.executable, '-u', os.path.join(ROOT, 'run.py'), train, '-ps', params, '-ss', '1000',
                             '--checkpoint_dir', 'ck', '-s', 'm.gru4rec', '-t', files['test'], '--backend', 'python',
                             '--metrics_out', 'm.json'],
                            cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out = []
    for line in proc.stdout:
        out.append(line)
        if line.startswith('Epoch1 -->'):   # written after epoch 1's checkpoint
            shutil.rmtree(tmp_path / 'ck')
            (tmp_path / 'ck').write_text('now a file')
    err = proc.stderr.read()
    assert proc.wait() == 1, err
    out = ''.join(out)
    assert 'Traceback' not in out + err and 'Epoch2 -->' in out and 'Epoch3' not in out and 'Recall@' not in out
    record = json.loads((tmp_path / 'm.json').read_text())
    assert len(record['training']['epochs']) == 2 and record['evaluation'] == []
    assert err.strip() == ('ERROR. Cannot write the checkpoint in ck (Not a directory): training stopped after '
                           'epoch 2; its model was saved to m.gru4rec')
    r = run(train, '-ps', params.replace('n_epochs=3', 'n_epochs=2'), '-ss', 1000, '-s', 'two.gru4rec', cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    kept, two = GRU4Rec.loadmodel(tmp_path / 'm.gru4rec'), GRU4Rec.loadmodel(tmp_path / 'two.gru4rec')
    for name, w in two.get_weights().items():
        assert np.array_equal(kept.get_weights()[name], w), name


def test_metrics_command_is_the_argv_given_to_main(files, tmp_path):
    argv = [str(files['train']), '-ps', TINY, '--backend', 'python', '--metrics_out', str(tmp_path / 'm.json')]
    code = f'import sys; sys.argv = ["run.py", "--not-this"]; import run; sys.exit(run.main({argv!r}))'
    r = subprocess.run([sys.executable, '-c', code], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert json.loads((tmp_path / 'm.json').read_text())['command'] == ['gru4rec'] + argv


def test_written_files_follow_the_umask(files, tmp_path):
    """Model, checkpoint, metrics and plot (all written by _files.atomic_write, as are paropt's and
    `gru4rec recommend`'s files) get 0o666 less the umask, as open() gives a new file; not mkstemp's 0o600."""
    pytest.importorskip('matplotlib')
    env = {k: v for k, v in os.environ.items() if k not in ('PYTENSOR_FLAGS', 'THEANO_FLAGS')}
    outputs = {'-s': 'm.gru4rec', '--metrics_out': 'm.json', '--plot': 'p.png'}
    argv = [os.path.join(ROOT, 'run.py'), files['train'], '-ps', TINY, '-t', files['test'], '--backend', 'python',
            '--checkpoint_dir', 'ck'] + [x for flag, name in outputs.items() for x in (flag, name)]
    r = subprocess.run([sys.executable] + [str(a) for a in argv], cwd=tmp_path, env=env, capture_output=True,
                       text=True, umask=0o027)
    assert r.returncode == 0, r.stderr
    for name in list(outputs.values()) + ['ck/checkpoint.gru4rec']:
        assert stat.S_IMODE(os.stat(tmp_path / name).st_mode) == 0o640, name
    code = 'import sys, _files; _files.atomic_write(sys.argv[1], lambda f: f.write(b"x"))'
    subprocess.run([sys.executable, '-c', code, tmp_path / 'plain.txt'], cwd=ROOT, check=True, umask=0o002)
    assert stat.S_IMODE(os.stat(tmp_path / 'plain.txt').st_mode) == 0o664


def test_savemodel_into_a_missing_folder_is_a_clear_error(files, tmp_path):
    import pandas as pd
    from gru4rec import GRU4Rec, GRU4RecError
    gru = GRU4Rec(layers=[4], n_epochs=1, batch_size=4, n_sample=4, backend='python')
    gru.fit(pd.read_csv(files['train'], sep='\t', dtype={'ItemId': str}))
    with pytest.raises(GRU4RecError, match=r'Cannot write the model file .*missing/m\.gru4rec: No such file or directory'):
        gru.savemodel(tmp_path / 'missing' / 'm.gru4rec')
    assert list(tmp_path.iterdir()) == []


def test_loadmodel_keeps_the_message(files, tmp_path):
    from gru4rec import GRU4Rec, GRU4RecError
    cut = tmp_path / 'cut.gru4rec'
    cut.write_bytes(b'PK\x03\x04' + b'\x00' * 60)
    with pytest.raises(zipfile.BadZipFile) as reference:
        zipfile.ZipFile(cut)
    with pytest.raises(GRU4RecError) as e:
        GRU4Rec.loadmodel(cut)
    assert str(e.value).endswith(f'BadZipFile: {reference.value}') and str(reference.value)


def test_memory_check_does_not_hide_a_device_error():
    """Asked for the free memory of a GPU that JAX does not see, the check says so instead of answering with
    the host's memory."""
    jax = pytest.importorskip('jax')
    import _devices
    if any(d.platform == 'gpu' for d in jax.devices()):
        pytest.skip('a GPU is present')
    with pytest.raises(ValueError, match='JAX sees no GPU'):
        _devices.available_memory(True, 'cuda:0')
