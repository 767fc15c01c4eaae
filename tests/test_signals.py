"""Ctrl-C (SIGINT) and SIGTERM end every command line with one line saying what was kept, exit code 130 or 143,
and no traceback (issue 18): real subprocesses, each signal sent when a marker line appears on stdout (no
sleeps), in training, compilation, evaluation, paropt (in a trial, between trials, in the final run),
`gru4rec recommend` and `gru4rec serve`. The python backend, except for the Numba tests marked slow."""
import os
import re
import signal
import subprocess
import sys

import pytest

from test_cli import DATA, ROOT, make_sessions, run

PARAMS = 'layers=8,n_epochs=3,batch_size=8,n_sample=16,loss=bpr-max,final_act=elu-0.5,momentum=0.3'
# A child of a shell's background job starts with SIGINT ignored, and then Python and our handlers leave it
# ignored (as they should); the tests want the terminal's Ctrl-C, so the child restores it first.
_WITH_CTRL_C = ('import runpy, signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler); '
                'sys.argv = sys.argv[1:]; runpy.run_path(sys.argv[0], run_name="__main__")')


def start(script, *args, backend='python', env_extra=None):
    cmd = [sys.executable, '-u', '-c', _WITH_CTRL_C, os.path.join(ROOT, script)] + [str(a) for a in args]
    cmd += ['--backend', backend] if backend else []
    env = {k: v for k, v in os.environ.items() if k not in ('PYTENSOR_FLAGS', 'THEANO_FLAGS')}
    env.update(env_extra or {})
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT)


def signal_at(proc, markers, sig, times=1, timeout=600):
    """Read proc's stdout until each of `markers` has appeared in order (a line starting with it), send sig
    `times` times, wait for the end. Returns (stdout, stderr lines, exit code)."""
    lines, todo = [], list(markers)
    for line in proc.stdout:
        lines.append(line)
        if line.startswith(todo[0]):
            todo.pop(0)
            if not todo:
                for _ in range(times):
                    proc.send_signal(sig)
                break
    assert not todo, f'the markers {todo} never appeared:\n' + ''.join(lines) + proc.stderr.read()
    out, err = proc.communicate(timeout=timeout)
    out = ''.join(lines) + out
    assert 'Traceback' not in out + err and 'Exception ignored' not in err, out + err
    return out, err.splitlines(), proc.returncode


@pytest.fixture(scope='module')
def data(tmp_path_factory):
    d = tmp_path_factory.mktemp('signals')
    return {'train': make_sessions(d / 'train.tsv', n_sessions=1500, n_items=60, seed=4),
            'test': make_sessions(d / 'test.tsv', n_sessions=200, n_items=60, seed=5)}


@pytest.fixture(scope='module')
def uninterrupted(data):
    r = run(data['train'], '-t', data['test'], '-ps', PARAMS, '-m', 5, 20)
    assert r.returncode == 0, r.stderr
    return re.findall(r'^Recall@.*$', r.stdout, re.M)


@pytest.mark.parametrize('sig, code', [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_training_keeps_the_last_checkpoint_and_resume_ends_with_the_uninterrupted_model(data, uninterrupted, tmp_path,
                                                                                        sig, code):
    ckpt = tmp_path / 'ckpt'
    proc = start('run.py', data['train'], '-ps', PARAMS, '--checkpoint_dir', ckpt)
    out, err, rc = signal_at(proc, ['Epoch1 -->'], sig)
    assert rc == code
    name = signal.Signals(sig).name
    assert len(err) == 1 and re.fullmatch(rf'Interrupted \({name}\) during epoch (\d); the checkpoint of epoch (\d) is in '
                                          rf'{re.escape(str(ckpt))}: rerun with --resume to continue\.', err[0]), err
    during, kept = map(int, re.fullmatch(r'.* during epoch (\d); the checkpoint of epoch (\d) .*', err[0]).groups())
    assert during == kept + 1 and kept >= 1
    assert not [f for f in os.listdir(ckpt) if f != 'checkpoint.gru4rec']   # no temp file left
    resumed = run(data['train'], '-t', data['test'], '-ps', PARAMS, '-m', 5, 20, '--checkpoint_dir', ckpt, '--resume')
    assert resumed.returncode == 0, resumed.stderr
    assert f'after epoch {kept}' in resumed.stdout
    assert re.findall(r'^Recall@.*$', resumed.stdout, re.M) == uninterrupted


@pytest.mark.parametrize('checkpoint, line', [
    (False, 'Interrupted (SIGINT) during epoch 1; nothing was saved (use --checkpoint_dir to keep progress).'),
    (True, 'Interrupted (SIGINT) during epoch 1; nothing was saved yet (a checkpoint is written after every epoch).')])
def test_while_compiling_the_training_step(data, tmp_path, checkpoint, line):
    flags = ['--checkpoint_dir', tmp_path / 'ckpt'] if checkpoint else []
    out, err, rc = signal_at(start('run.py', data['train'], '-ps', PARAMS, *flags), ['Compiling the training step'],
                             signal.SIGINT)
    assert rc == 130 and err == [line]
    assert 'Epoch1 -->' not in out


def test_a_second_ctrl_c_ends_promptly_and_the_checkpoint_stays_usable(data, tmp_path):
    ckpt = tmp_path / 'ckpt'
    out, err, rc = signal_at(start('run.py', data['train'], '-ps', PARAMS, '--checkpoint_dir', ckpt),
                             ['Epoch1 -->'], signal.SIGINT, times=2)
    assert rc == 130
    assert len(err) <= 1 and all(e.startswith('Interrupted (SIGINT) during epoch ') for e in err), err
    r = run(ckpt / 'checkpoint.gru4rec', '-l', '-t', data['test'])   # a checkpoint is a model file too
    assert r.returncode == 0 and 'Recall@20:' in r.stdout, r.stderr


def test_sigterm_during_evaluation_keeps_the_saved_model(data, tmp_path):
    model = tmp_path / 'model.gru4rec'
    tests = [data['test']] * 20   # evaluated one after the other: the signal lands in one of them
    out, err, rc = signal_at(start('run.py', data['train'], '-ps', PARAMS.replace('n_epochs=3', 'n_epochs=1'),
                                   '-s', model, '--metrics_out', tmp_path / 'm.json', '-t', *tests), ['Starting evaluation'],
                             signal.SIGTERM)
    assert rc == 143
    assert err == [f'Interrupted (SIGTERM) during the evaluation of {data["test"]}; the model is saved in {model} '
                   '(evaluate it with -l); --metrics_out not written.']
    assert not (tmp_path / 'm.json').exists()
    r = run(model, '-l', '-t', data['test'])
    assert r.returncode == 0, r.stderr


# --- paropt ----------------------------------------------------------------------------------------

SPACE = '{"name": "learning_rate", "dtype": "float", "values": [0.02, 0.2], "log": true}\n'
FIXED = 'loss=bpr-max,layers=8,n_epochs=2,batch_size=8,n_sample=16'


def paropt(data, tmp_path, *extra):
    space = tmp_path / 'space.json'
    space.write_text(SPACE)
    return start('paropt.py', data['train'], data['test'], '-opf', space, '-fp', FIXED, '-m', 5, '-fm', 5,
                 '--storage', tmp_path / 'study.sqlite', '-o', tmp_path / 'best.py', '--study_name', 's', *extra)


def trial_states(tmp_path):
    optuna = pytest.importorskip('optuna')
    study = optuna.load_study(study_name='s', storage=f'sqlite:///{tmp_path / "study.sqlite"}')
    return [t.state.name for t in study.trials]


# Trials of one structure share the first trial's compiled step (issue 19): only trial 0 compiles.

def test_paropt_sigterm_while_a_trial_compiles(data, tmp_path):
    pytest.importorskip('optuna')
    out, err, rc = signal_at(paropt(data, tmp_path, '-nt', 3), ['TRIAL 0:', 'Compiling the training step'],
                             signal.SIGTERM)
    assert rc == 143
    assert err == [f'Interrupted (SIGTERM) during trial 0; 0 finished trial(s) are stored in {tmp_path / "study.sqlite"} '
                   '(trial 0 did not finish and is stored as failed): rerun the same command to continue.']
    assert trial_states(tmp_path) == ['FAIL']   # not COMPLETE with a partial score


def test_paropt_second_ctrl_c_prints_no_optuna_traceback(data, tmp_path):
    pytest.importorskip('optuna')
    out, err, rc = signal_at(paropt(data, tmp_path, '-nt', 3), ['TRIAL 0:', 'Compiling the training step'],
                             signal.SIGINT, times=2)
    assert rc == 130 and len(err) <= 1 and all(e.startswith('Interrupted (SIGINT) during trial 0; ') for e in err), err
    # a second signal during the clean-up may leave trial 0 running: the next run stores it as failed
    assert trial_states(tmp_path) in (['FAIL'], ['RUNNING'])


def test_paropt_ctrl_c_between_trials(data, tmp_path):
    pytest.importorskip('optuna')
    out, err, rc = signal_at(paropt(data, tmp_path, '-nt', 3), ['New best: trial 0'], signal.SIGINT)
    assert rc == 130 and len(err) == 1, err
    # the signal lands before the next trial is asked for, while Optuna creates it (it stays running until the
    # next run stores it as failed, as after a kill), or early in the trial
    between = re.fullmatch(r'Interrupted \(SIGINT\) between trials; 1 finished trial\(s\) are stored in .*: rerun the '
                           r'same command to continue\.', err[0])
    assert between or err[0].startswith('Interrupted (SIGINT) during trial 1; 1 finished trial(s)'), err
    assert trial_states(tmp_path) in ([['COMPLETE'], ['COMPLETE', 'RUNNING']] if between else [['COMPLETE', 'FAIL']])


def test_paropt_ctrl_c_during_the_final_run(data, tmp_path):
    pytest.importorskip('optuna')
    out, err, rc = signal_at(paropt(data, tmp_path, '-nt', 1), ['Training the best parameters once more'], signal.SIGINT)
    assert rc == 130
    assert err == [f'Interrupted (SIGINT) during the final run; the study in {tmp_path / "study.sqlite"} is complete '
                   f'and its best parameters are in {tmp_path / "best.py"}.']
    assert trial_states(tmp_path) == ['COMPLETE'] and (tmp_path / 'best.py').is_file()


# --- recommend, serve ------------------------------------------------------------------------------

@pytest.fixture(scope='module')
def model_file(data, tmp_path_factory):
    path = tmp_path_factory.mktemp('model') / 'model.gru4rec'
    r = run(data['train'], '-ps', PARAMS.replace('n_epochs=3', 'n_epochs=1'), '-s', path)
    assert r.returncode == 0, r.stderr
    return path


def test_recommend_ctrl_c(data, model_file, tmp_path):
    out_file = tmp_path / 'recs.csv'
    out, err, rc = signal_at(start('run.py', 'recommend', model_file, data['train'], '-o', out_file),
                             ['Loading trained model from file'], signal.SIGINT)
    assert rc == 130
    # (on a very slow machine the signal could land after the write: then the line says so)
    assert err == ([f'Interrupted (SIGINT); the recommendations were written to {out_file}.'] if out_file.exists()
                   else ['Interrupted (SIGINT); nothing was written.'])
    assert os.listdir(tmp_path) == (['recs.csv'] if out_file.exists() else [])


@pytest.mark.parametrize('sig', [signal.SIGINT, signal.SIGTERM])
def test_serve_stops_with_one_line_and_exit_code_0(model_file, sig):
    pytest.importorskip('fastapi')
    pytest.importorskip('uvicorn')
    out, err, rc = signal_at(start('run.py', 'serve', model_file, '--port', 0), ['Serving'], sig, timeout=120)
    assert rc == 0 and out.splitlines()[-1] == f'Stopped ({signal.Signals(sig).name}); 0 sessions were live.'


# --- Numba (the reported traceback: a Ctrl-C inside a compiled call came back as a SystemError) -------

NUMBA_PARAMS = 'layers=100,n_epochs=2,batch_size=32,n_sample=2048,loss=cross-entropy,final_act=softmax'


@pytest.mark.slow
def test_numba_ctrl_c_during_training():
    train = os.path.join(DATA, 'rec15_64_train_full.txt.gz')
    out, err, rc = signal_at(start('run.py', train, '-ps', NUMBA_PARAMS, backend='numba'), ['Epoch1 -->'], signal.SIGINT)
    assert rc == 130
    assert err == ['Interrupted (SIGINT) during epoch 2; nothing was saved (use --checkpoint_dir to keep progress).']


@pytest.mark.slow
def test_numba_ctrl_c_while_compiling(tmp_path):
    """With empty compile caches, so that the signal lands in PyTensor's and LLVM's compilation (where a ctypes
    callback used to swallow it and training went on)."""
    train = os.path.join(DATA, 'rec15_64_train_full.txt.gz')
    caches = {'PYTENSOR_FLAGS': f'compiledir={tmp_path / "pytensor"}', 'NUMBA_CACHE_DIR': str(tmp_path / 'numba')}
    out, err, rc = signal_at(start('run.py', train, '-ps', NUMBA_PARAMS, backend='numba', env_extra=caches),
                             ['Compiling the training step'], signal.SIGINT)
    assert rc == 130 and 'Epoch1 -->' not in out
    assert err == ['Interrupted (SIGINT) during epoch 1; nothing was saved (use --checkpoint_dir to keep progress).']


def test_an_object_cut_short_by_the_signal_adds_no_finaliser_report():
    # Ctrl-C inside a constructor (e.g. zipfile.ZipFile's while a model loads) leaves an object whose
    # finaliser fails later; the interrupted command still ends with its one line (found as a flaky CI run)
    code = ('import os, signal, sys; sys.path.insert(0, sys.argv[1]); import _interrupts\n'
            'signal.signal(signal.SIGINT, signal.default_int_handler)\n'   # (a background CI job ignores it)
            'class Half:\n'
            '    def __init__(self): os.kill(os.getpid(), signal.SIGINT)\n'
            '    def __del__(self): self.missing\n'
            'def body(): Half()\n'
            'sys.exit(_interrupts.run_main(body, (ValueError,), lambda e: 2, lambda stop: f"Interrupted ({stop.name})."))\n')
    r = subprocess.run([sys.executable, '-c', code, ROOT], capture_output=True, text=True, timeout=60)
    assert r.returncode == 130 and r.stderr.splitlines() == ['Interrupted (SIGINT).'], r.stderr
