"""paropt.py: the parameter-space format, the written parameter file, pruning, and a study that survives
SIGKILL and Ctrl-C and continues where it stopped. Trials use the fast-compiling 'python' backend."""
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import warnings
from collections import OrderedDict

import pytest

optuna = pytest.importorskip('optuna')

import paropt  # noqa: E402
import run  # noqa: E402
from test_cli import ROOT, make_sessions  # noqa: E402

SPACE = ('{"name": "learning_rate", "dtype": "float", "values": [0.02, 0.2], "log": true}\n'
         '{"name": "momentum", "dtype": "float", "values": [0.0, 0.5], "step": 0.1}\n'
         '\n'
         '{"name": "final_act", "dtype": "categorical", "values": ["elu-0.5", "linear"]}\n')
FIXED = 'loss=bpr-max,layers=8,n_epochs=2,batch_size=8,n_sample=16'


def write(path, text):
    path.write_text(text)
    return str(path)


def test_space_file_is_read_with_types(tmp_path):
    space = paropt.read_parameter_space(write(tmp_path / 's.json', SPACE + '{"name": "layers", "dtype": "int", "values": [64, 512], "step": 32}\n'))
    assert [e['name'] for e in space] == ['learning_rate', 'momentum', 'final_act', 'layers']
    assert space[0] == {'name': 'learning_rate', 'dtype': 'float', 'values': [0.02, 0.2], 'log': True}
    assert space[1]['step'] == 0.1 and space[3] == {'name': 'layers', 'dtype': 'int', 'values': [64, 512], 'step': 32, 'log': False}
    assert isinstance(space[3]['values'][0], int) and isinstance(space[3]['step'], int)


def test_bundled_spaces_are_valid():
    for name in ('gru4rec_bprmax_standard_parspace.json', 'gru4rec_xe_standard_parspace.json'):
        space = paropt.read_parameter_space(os.path.join(ROOT, 'paramspaces', name))
        assert space[0] == {'name': 'layers', 'dtype': 'int', 'values': [64, 512], 'step': 32, 'log': False}
        assert len(space) == (9 if 'bprmax' in name else 7)


@pytest.mark.parametrize('line, message', [
    ('not json', 'line 1: not a JSON object'),
    ('[1, 2]', 'expected a JSON object'),
    ('{"name": "x", "dtype": "int"}', 'expected the keys name, dtype, values'),
    ('{"name": "x", "dtype": "int", "values": [1, 2], "stepp": 1}', 'expected the keys'),
    ('{"name": "x", "dtype": "double", "values": [1, 2]}', "dtype of x must be one of int, float, categorical, got 'double'"),
    ('{"name": "x", "dtype": "int", "values": [1.5, 2]}', 'values of x must be [low, high] int numbers'),
    ('{"name": "x", "dtype": "float", "values": [1, 2, 3]}', 'values of x must be [low, high] float numbers'),
    ('{"name": "x", "dtype": "float", "values": [2, 1]}', 'low > high for x'),
    ('{"name": "x", "dtype": "float", "values": [0.1, 1], "step": 0.1, "log": true}', 'has both step and log'),
    ('{"name": "x", "dtype": "float", "values": [0, 1], "log": true}', 'needs low > 0'),
    ('{"name": "x", "dtype": "int", "values": [1, 9], "step": 0}', 'step of x must be a positive int'),
    ('{"name": "x", "dtype": "categorical", "values": []}', 'values of x must be a non-empty list'),
    ('{"name": "x", "dtype": "categorical", "values": ["a"], "step": 1}', 'takes no step or log'),
    ('{"name": "x", "dtype": "int", "values": [1, 2]}\n{"name": "x", "dtype": "int", "values": [1, 2]}', 'defines a parameter twice: x'),
    ('\n', 'defines no parameter'),
])
def test_bad_space_files_name_the_problem(tmp_path, line, message):
    with pytest.raises(run.InputError) as e:
        paropt.read_parameter_space(write(tmp_path / 's.json', line + '\n'))
    assert message in str(e.value)


def test_parameter_file_round_trips_through_run_pf(tmp_path):
    params = OrderedDict([('loss', 'bpr-max'), ('layers', [96]), ('learning_rate', 0.07), ('constrained_embedding', True)])
    path = write(tmp_path / 'best.py', paropt.parameter_file_text(params, 'comment "quoted"\n""" two lines'))
    assert run.load_parameter_file(path) == params


# A process started in the background by a non-interactive shell inherits SIGINT as ignored, and Python then
# raises no KeyboardInterrupt: the child re-enables it first, as running from a terminal would (a preexec_fn
# would do the same but forks a process that has JAX's threads running).
_WITH_CTRL_C = ('import runpy, signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler); '
                'sys.argv = sys.argv[1:]; runpy.run_path(sys.argv[0], run_name="__main__")')


def cli(*args, env_extra=None):
    cmd = [sys.executable, '-u', '-c', _WITH_CTRL_C, os.path.join(ROOT, 'paropt.py')] + [str(a) for a in args] + ['--backend', 'python']
    env = {k: v for k, v in os.environ.items() if k not in ('PYTENSOR_FLAGS', 'THEANO_FLAGS')}
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def run_until(proc, marker, sig):
    """Read proc's output until `marker` has appeared once, then send sig; returns (stdout, stderr, code)."""
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if line.startswith(marker):
            proc.send_signal(sig)
            break
    out, err = proc.communicate(timeout=300)
    return ''.join(lines) + out, err, proc.returncode


def finished_trials(storage, name):
    study = optuna.load_study(study_name=name, storage=f'sqlite:///{storage}')
    return study, [t for t in study.trials if t.state.is_finished() and t.state != optuna.trial.TrialState.FAIL]


def test_study_survives_sigkill_and_ctrl_c_and_resumes(tmp_path):
    train = make_sessions(tmp_path / 'train.tsv', n_sessions=50)
    valid = make_sessions(tmp_path / 'valid.tsv', n_sessions=20, seed=1)
    space = write(tmp_path / 'space.json', SPACE)
    storage, best = tmp_path / 'study.sqlite', tmp_path / 'best.py'
    args = [train, valid, '-opf', space, '-fp', FIXED, '-nt', 3, '-m', 5, '-fm', 5, 10,
            '--storage', storage, '-o', best, '--study_name', 'tiny', '--heartbeat', 1]
    # 1) killed hard during its second trial: the first finished trial is in the file, the best file written
    out, err, code = run_until(cli(*args), 'TRIAL 1:', signal.SIGKILL)
    assert code == -signal.SIGKILL, err
    assert 'PRIMARY METRIC:' in out and 'New best: trial 0' in out
    _, done = finished_trials(storage, 'tiny')
    assert [t.number for t in done] == [0]
    assert run.load_parameter_file(str(best))['learning_rate'] == paropt.clean(done[0].params)['learning_rate']
    # 2) continued, then interrupted with Ctrl-C as its second trial starts: exit 130, two finished trials kept
    out, err, code = run_until(cli(*args), 'TRIAL 3:', signal.SIGINT)
    assert code == 130, err
    assert 'Continuing study "tiny" in' in out and '1 finished trials kept' in out
    assert 'Interrupted (SIGINT) during trial 3; 2 finished trial(s) are stored in' in err and '(trial 3 did not finish' in err
    assert len(err.strip().splitlines()) == 1 and 'Traceback' not in err
    # 3) continued to the end: exactly -nt finished trials, the best file is the best trial, and it trains via -pf
    proc = cli(*args)
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err
    assert '2 finished trials kept' in out and 'Running trials to reach 3 finished trials, 2 finished so far' in out
    study, done = finished_trials(storage, 'tiny')
    assert len(done) == 3
    top = max(done, key=lambda t: t.value)
    assert study.best_trial.number == top.number and f'BEST TRIAL {top.number}: recall@5 = {top.value:.6f}' in out
    params = run.load_parameter_file(str(best))
    assert {k: params[k] for k in top.params} == paropt.clean(top.params) and params['n_epochs'] == 2 and params['layers'] == [8]
    assert f'Loaded parameters from file: {best}' in out
    # the final -pf run reproduces the best trial's validation value (same seed, same data)
    recall5 = float(out.split('Recall@5: ')[1].split()[0])
    assert abs(recall5 - top.value) < 1e-6
    assert 'Recall@10: ' in out
    # the SIGKILLed trial was failed by its stopped heartbeat, the Ctrl-C'd one at once
    assert [t.state.name for t in study.trials].count('FAIL') == 2
    # 4) nothing left to do: a rerun (without a final run: -fm alone) trains nothing
    proc = cli(*args[:-8], '-fm', '--storage', storage, '-o', best, '--study_name', 'tiny')
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    assert 'nothing to run' in out and 'TRIAL' not in out.replace('BEST TRIAL', '')


class StubTrial:
    """Stands in for an Optuna trial: fixed suggestions, records reports, prunes from epoch prune_at."""
    number = 0

    def __init__(self, prune_at):
        self.prune_at, self.reports, self.attrs = prune_at, [], {}

    def suggest_float(self, name, low, high, step=None, log=False):
        return low

    def suggest_categorical(self, name, choices):
        return choices[0]

    def report(self, value, step):
        self.reports.append((step, value))

    def should_prune(self):
        return self.reports[-1][0] >= self.prune_at

    def set_user_attr(self, k, v):
        self.attrs[k] = v


def search_for(tmp_path, fixed, pruning=True):
    import evaluation
    import gru4rec
    train = run.load_data(make_sessions(tmp_path / 'train.tsv', n_sessions=50), ('SessionId', 'ItemId', 'Time'), 'training', quiet=True)[0]
    valid = run.load_data(make_sessions(tmp_path / 'valid.tsv', n_sessions=20, seed=1), ('SessionId', 'ItemId', 'Time'), 'test', quiet=True)[0]
    args = paropt.build_parser().parse_args([str(tmp_path / 'train.tsv'), str(tmp_path / 'valid.tsv'),
                                             '-opf', write(tmp_path / 's.json', SPACE), '-fp', fixed, '-m', '5'])
    args.own, args.pruning = {'backend': 'python', 'device': 'cpu', 'model_device': None}, pruning
    return paropt.Search(args, gru4rec, evaluation, train, valid)


def test_pruning_stops_training_after_the_reported_epoch(tmp_path, capsys):
    search = search_for(tmp_path, 'loss=bpr-max,layers=8,n_epochs=4,batch_size=8,n_sample=16')
    trial = StubTrial(prune_at=2)
    with pytest.raises(optuna.TrialPruned):
        search.objective(trial)
    assert [s for s, _ in trial.reports] == [1, 2]
    assert 'PRUNED after epoch 2' in capsys.readouterr().out
    # the reported values are the validation metric of the model after that epoch
    trial = StubTrial(prune_at=99)
    value = search.objective(trial)
    assert [s for s, _ in trial.reports] == [1, 2, 3, 4] and value == trial.reports[-1][1]


def test_fixed_parameters_are_checked_before_any_trial(tmp_path):
    with pytest.raises(run.InputError, match='layerz'):
        search_for(tmp_path, 'loss=bpr-max,layerz=8')
    with pytest.raises(run.InputError, match='Set both as fixed'):
        search_for(tmp_path, 'loss=bpr-max,momentum=0.1')


# --- several workers on one study ---------------------------------------------------------------------

@pytest.fixture(scope='session')
def postgres_url():
    """GRU4REC_TEST_POSTGRES (CI sets it: a server that is down is a failure), else a throwaway cluster of the
    installed PostgreSQL; skipped only when neither exists."""
    import sqlalchemy
    import pg_server
    url = os.environ.get('GRU4REC_TEST_POSTGRES')
    if url:
        try:
            with sqlalchemy.create_engine(url).connect():
                pass
        except Exception as e:
            pytest.fail(f'GRU4REC_TEST_POSTGRES={url} is set but the server cannot be reached: {e}')
        yield url
        return
    if pg_server.bindir() is None:
        pytest.skip('no PostgreSQL: GRU4REC_TEST_POSTGRES is unset and initdb/pg_ctl are not installed')
    folder = tempfile.mkdtemp(prefix='gru4rec-pg-')   # not under pytest's root-only folders: the server's user reads it
    try:
        yield pg_server.start(folder)
    finally:
        pg_server.stop(folder)
        shutil.rmtree(folder, ignore_errors=True)


def storage_for(kind, tmp_path, request):
    """A storage and a study name no other test uses (the PostgreSQL database is shared by the session)."""
    name = f'{request.node.name}-{os.getpid()}'.replace('[', '-').replace(']', '')
    if kind == 'sqlite':
        return str(tmp_path / 'study.sqlite'), name
    return request.getfixturevalue('postgres_url'), name


def all_trials(storage, name):
    url = storage if '://' in storage else f'sqlite:///{storage}'
    return optuna.load_study(study_name=name, storage=url).trials


@pytest.mark.parametrize('kind', ['sqlite', 'postgresql'])
def test_two_workers_reach_exactly_the_budget(tmp_path, request, kind):
    """Two worker processes on one study: exactly -nt finished trials, no parameter set twice, the best file
    is the best finished trial, and the final run is made once. On SQLite the two are --n_workers 2 of one
    command (the parent makes the final run); on PostgreSQL two separate commands, as on two machines (the
    worker that finished the study's last trial makes it)."""
    train = make_sessions(tmp_path / 'train.tsv', n_sessions=50)
    valid = make_sessions(tmp_path / 'valid.tsv', n_sessions=20, seed=1)
    storage, name = storage_for(kind, tmp_path, request)
    best = tmp_path / 'best.py'
    args = [train, valid, '-opf', write(tmp_path / 'space.json', SPACE), '-fp', FIXED.replace('n_epochs=2', 'n_epochs=1'),
            '-nt', 5, '-m', 5, '-fm', 5, '--storage', storage, '-o', best, '--study_name', name, '--heartbeat', 1]
    procs = [cli(*args, '--n_workers', 2)] if kind == 'sqlite' else [cli(*args), cli(*args)]
    outs = []
    for proc in procs:
        out, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, err
        outs.append(out)
    trials = all_trials(storage, name)
    done = [t for t in trials if t.state.name in ('COMPLETE', 'PRUNED')]
    assert len(done) == 5
    assert all(t.state.name in ('COMPLETE', 'PRUNED', 'FAIL') for t in trials)
    assert all(t.user_attrs.get('not_run') for t in trials if t.state.name == 'FAIL')   # only given-back trials failed
    params = [tuple(sorted(t.params.items())) for t in done]
    assert len(set(params)) == 5
    top = max((t for t in done if t.state.name == 'COMPLETE'), key=lambda t: (t.value, -t.number))
    written = run.load_parameter_file(str(best))
    assert {k: written[k] for k in top.params} == paropt.clean(top.params)
    assert f'(trial {top.number}, recall@5 = {top.value:.6f}' in best.read_text()
    text = ''.join(outs)
    assert text.count('Training the best parameters once more') == 1 and f'BEST TRIAL {top.number}:' in text
    if kind == 'sqlite':   # each worker ran trials, its output marked
        assert '[w0] TRIAL ' in text and '[w1] TRIAL ' in text
        cores = [set(re.search(rf'^\[w{i}\] Worker {i} of 2: cores ([\d,]+), (\d+) BLAS', text, re.M).group(1).split(','))
                 for i in range(2)]
        assert cores[0] and cores[1] and (len(os.sched_getaffinity(0)) < 2 or not cores[0] & cores[1])
        assert text.index('Training the best parameters once more') > max(text.rindex('[w0] '), text.rindex('[w1] '))


# Bad input of paropt: exit 2, one ERROR line, no traceback, no file made or changed. A study made by
# `made_study` (FIXED, SPACE, train/valid, recall@5) is continued with something changed, or an output is bad.
BAD_PAROPT = [
    ('changed fixed parameter', lambda f: ['-fp', FIXED.replace('n_epochs=2', 'n_epochs=3')], '-fp n_epochs: 2 -> 3'),
    ('changed space', lambda f: ['-opf', f['space2']], '-opf momentum: float [0.0, 0.5] step=0.1 -> float [0.0, 0.9] step=0.1'),
    ('changed training data', lambda f: ['--train', f['train2']], 'training data (PATH): other content'),
    ('changed metric', lambda f: ['-pm', 'mrr'], 'metric (-pm/-m): recall@5 -> mrr@5'),
    ('unknown database kind', lambda f: ['--storage', 'nosuchdb://u@localhost/x'], 'unknown database kind "nosuchdb"'),
    ('unreachable database server', lambda f: ['--storage', 'postgresql://u:secret@127.0.0.1:1/x'],
     '--storage postgresql://u:***@127.0.0.1:1/x: cannot connect'),
    ('in-memory SQLite URL', lambda f: ['--storage', 'sqlite://'], 'an SQLite URL names a file'),
    ('storage under a file', lambda f: ['--storage', f['file'] / 'x.sqlite'], 'is a file'),
    ('storage not SQLite', lambda f: ['--storage', f['file']], 'is not an SQLite file'),
    ('best file under a file', lambda f: ['-o', f['file'] / 'best.py'], 'is a file, not a folder'),
    ('best file is a folder', lambda f: ['-o', f['folder']], 'is a folder; give a file name'),
]


@pytest.fixture(scope='module')
def made_study(tmp_path_factory):
    d = tmp_path_factory.mktemp('made')
    f = {'train': make_sessions(d / 'train.tsv', n_sessions=50), 'valid': make_sessions(d / 'valid.tsv', n_sessions=20, seed=1),
         'space': write(d / 'space.json', SPACE), 'space2': write(d / 'space2.json', SPACE.replace('0.5]', '0.9]')),
         'train2': make_sessions(d / 'train2.tsv', n_sessions=51), 'storage': d / 'study.sqlite'}
    proc = cli(f['train'], f['valid'], '-opf', f['space'], '-fp', FIXED, '-nt', 1, '-m', 5, '-fm', '--storage', f['storage'],
               '-o', d / 'best.py', '--study_name', 'made')
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    return f


@pytest.mark.parametrize('name,args,message', BAD_PAROPT, ids=[b[0] for b in BAD_PAROPT])
def test_bad_paropt_input_is_one_error_line(made_study, tmp_path, name, args, message):
    f = dict(made_study, file=tmp_path / 'a_file', folder=tmp_path / 'a_folder')
    f['file'].write_text('not a database\n')
    f['folder'].mkdir()
    storage, best = tmp_path / 'study.sqlite', tmp_path / 'best.py'
    shutil.copy(f['storage'], storage)
    best.write_text('previous best file\n')
    extra = args(f)
    train = extra[extra.index('--train') + 1] if '--train' in extra else f['train']
    extra = [a for i, a in enumerate(extra) if '--train' not in (a, extra[i - 1] if i else None)]
    given = dict(zip(extra[::2], extra[1::2]))
    argv = [train, f['valid'], '-opf', given.get('-opf', f['space']), '-fp', given.get('-fp', FIXED), '-nt', 2, '-m', 5, '-fm',
            '--storage', given.get('--storage', storage), '-o', given.get('-o', best), '--study_name', 'made',
            '-pm', given.get('-pm', 'recall')]
    before = {p: p.read_bytes() for p in tmp_path.rglob('*') if p.is_file()}
    proc = cli(*argv)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 2, (out, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith('ERROR. '), err
    assert message in lines[0] and 'Traceback' not in out + err
    assert {p: p.read_bytes() for p in tmp_path.rglob('*') if p.is_file()} == before   # nothing made or changed
    assert 'TRIAL' not in out
    if name.startswith('changed'):
        assert 'start a new study (--study_name NAME or another --storage)' in lines[0]
    if 'database' in name or 'storage' in name or 'best file' in name:   # checked before any data are read
        assert 'Loading data' not in out


def test_dead_workers_trial_fails_by_heartbeat_and_a_live_one_is_untouched(tmp_path):
    """A worker SIGKILLed during its trial leaves it RUNNING; a worker started later fails it once its heartbeat
    is 3 beats late, and leaves alone the running trial of another live worker (here the test itself, beating
    for its trial through the same storage): it waits for that trial, which then completes normally."""
    import _study
    train = make_sessions(tmp_path / 'train.tsv', n_sessions=50)
    valid = make_sessions(tmp_path / 'valid.tsv', n_sessions=20, seed=1)
    storage = tmp_path / 'study.sqlite'
    args = [train, valid, '-opf', write(tmp_path / 'space.json', SPACE), '-fp', FIXED, '-nt', 2, '-m', 5, '-fm',
            '--storage', storage, '-o', tmp_path / 'best.py', '--study_name', 'hb', '--heartbeat', 1]
    out, err, code = run_until(cli(*args), 'TRIAL 0:', signal.SIGKILL)
    assert code == -signal.SIGKILL, err
    store = _study.open_storage(f'sqlite:///{storage}', str(storage), 1)
    study = optuna.load_study(study_name='hb', storage=store)
    with warnings.catch_warnings():   # Optuna's: its heartbeat is meant for optimize (the Heartbeat beats here)
        warnings.simplefilter('ignore')
        live = study.ask()
    with _study.Heartbeat(store, study, live):
        proc = cli(*args)
        lines = []
        for line in proc.stdout:
            lines.append(line)
            if line.startswith('Waiting for 1 running trial(s)'):
                break
        states = {t.number: t.state.name for t in study.get_trials()}
        assert states[0] == 'FAIL' and states[live.number] == 'RUNNING'
        study.tell(live, -1.0)     # would raise if the other worker had failed it
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    out = ''.join(lines) + out
    states = [t.state.name for t in study.get_trials()]
    assert states == ['FAIL', 'COMPLETE', 'COMPLETE'] and 'PRIMARY METRIC' in out
    assert 'BEST TRIAL 2:' in out     # its trial has the study's highest number: this worker reports


@pytest.mark.parametrize('sig, code', [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_n_workers_parent_forwards_ctrl_c_and_sigterm(tmp_path, sig, code):
    """A signal to the --n_workers parent stops every worker like Ctrl-C: their running trials are failed at
    once (not left RUNNING), the finished ones kept; the parent ends with one line and 130 / 143."""
    train = make_sessions(tmp_path / 'train.tsv', n_sessions=50)
    valid = make_sessions(tmp_path / 'valid.tsv', n_sessions=20, seed=1)
    storage = tmp_path / 'study.sqlite'
    proc = cli(train, valid, '-opf', write(tmp_path / 'space.json', SPACE), '-fp', FIXED, '-nt', 20, '-m', 5,
               '--storage', storage, '-o', tmp_path / 'best.py', '--study_name', 'sig', '--n_workers', 2)
    lines, started = [], set()
    for line in proc.stdout:   # both workers are in a trial (not still importing modules)
        lines.append(line)
        started |= {line[:4]} if re.match(r'\[w\d\] TRIAL \d+:', line) else set()
        if len(started) == 2:
            proc.send_signal(sig)
            break
    out, err = proc.communicate(timeout=300)
    out, rc = ''.join(lines) + out, proc.returncode
    assert rc == code, err
    assert 'Traceback' not in out + err
    last = err.strip().splitlines()[-1]
    assert last.startswith(f'Interrupted ({signal.Signals(sig).name}); the workers stopped;'), err
    for i in (0, 1):   # each worker reported the forwarded Ctrl-C (none swallowed it and trained on)
        assert any(line.startswith(f'[w{i}] Interrupted (SIGINT)') for line in err.splitlines()), err
    states = [t.state.name for t in all_trials(str(storage), 'sig')]
    assert 'RUNNING' not in states and states.count('COMPLETE') + states.count('PRUNED') < 20


def test_continue_accepts_defaults_spelled_out_and_adopts_an_old_study(made_study, tmp_path):
    """A fixed value equal to the model's default is the same study. A study made before definitions were
    stored adopts this command's definition, and its RUNNING trials (from a time without heartbeats, when one
    process per storage was the rule) are failed as before."""
    storage = tmp_path / 'study.sqlite'
    shutil.copy(made_study['storage'], storage)
    base = [made_study['train'], made_study['valid'], '-opf', made_study['space'], '-nt', 1, '-m', 5, '-fm',
            '--storage', storage, '-o', tmp_path / 'best.py']
    proc = cli(*base, '-fp', FIXED + ',dropout_p_hidden=0.0', '--study_name', 'made')
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    assert 'nothing to run' in out
    old = optuna.create_study(study_name='old', storage=f'sqlite:///{storage}', direction='maximize')
    trial = old.ask()
    paropt.suggest(trial, paropt.read_parameter_space(made_study['space']))
    old.tell(trial, 0.1)
    old.ask()   # left running by a killed process of an older paropt
    proc = cli(*base, '-fp', FIXED, '--study_name', 'old')
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    assert 'had no recorded definition' in out and 'its 1 interrupted trial(s) marked failed' in out
    old = optuna.load_study(study_name='old', storage=f'sqlite:///{storage}')
    assert [t.state.name for t in old.trials] == ['COMPLETE', 'FAIL'] and 'paropt_definition' in old.user_attrs
    proc = cli(*base, '-fp', FIXED.replace('n_epochs=2', 'n_epochs=3'), '--study_name', 'old')
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 2 and '-fp n_epochs: 2 -> 3' in err   # from now on it is checked


def test_storage_values_and_core_shares():
    import _study
    import _workers
    assert _study.parse_storage('a/b.sqlite') == (f'sqlite:///{os.path.abspath("a/b.sqlite")}', os.path.abspath('a/b.sqlite'))
    assert _study.parse_storage('sqlite:///a.db') == (f'sqlite:///{os.path.abspath("a.db")}', os.path.abspath('a.db'))
    assert _study.parse_storage('sqlite:////abs/a.db') == ('sqlite:////abs/a.db', '/abs/a.db')
    assert _study.parse_storage('postgresql://u@h/db') == ('postgresql://u@h/db', None)
    assert [_workers.share(i, 3, list(range(8))) for i in range(3)] == [[0, 1], [2, 3, 4], [5, 6, 7]]
    assert [_workers.share(i, 3, [0, 1]) for i in range(3)] == [[0], [1], [0]]
