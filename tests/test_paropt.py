"""paropt.py: the parameter-space format, the written parameter file, pruning, and a study that survives
SIGKILL and Ctrl-C and continues where it stopped. Trials use the fast-compiling 'python' backend."""
import os
import signal
import subprocess
import sys
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
            '--storage', storage, '-o', best, '--study_name', 'tiny']
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
    assert 'Continuing study "tiny" in' in out and '1 finished trials kept, 1 interrupted trial(s) marked failed' in out
    assert 'Interrupted (SIGINT) during trial 3; 2 finished trial(s) are stored in' in err and '(trial 3 did not finish' in err
    # 3) continued to the end: exactly -nt finished trials, the best file is the best trial, and it trains via -pf
    proc = cli(*args)
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err
    assert '2 finished trials kept' in out and 'marked failed' not in out and 'Running 1 trial(s) to reach 3 finished trials' in out
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
    # 4) nothing left to do: a rerun (without a final run: -fm alone) trains nothing
    proc = cli(*args[:-6], '-fm', '--storage', storage, '-o', best, '--study_name', 'tiny')
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
