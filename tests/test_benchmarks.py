"""The synthetic click-log generator of benchmarks/bench_synthetic.py: the catalogue size it promises,
session lengths, order and popularity skew."""
import os
import sys

import numpy as np
import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'benchmarks'))
from bench_synthetic import synthetic_sessions  # noqa: E402


def test_synthetic_sessions_cover_the_catalogue_with_realistic_shape():
    df = synthetic_sessions(3000, 60000, seed=5)
    assert abs(len(df) - 60000) < 20 and set(df.ItemId) == set(range(3000))
    lengths = df.groupby('SessionId').size()
    assert lengths.min() >= 2 and 4.2 < lengths.mean() < 4.8
    # sessions contiguous and in time order; times increase within a session
    assert (np.diff(df.SessionId.values) >= 0).all()
    same = np.diff(df.SessionId.values) == 0
    assert (np.diff(df.Time.values)[same] > 0).all()
    counts = df.ItemId.value_counts().values
    assert counts[0] > 20 * np.median(counts)                  # Zipf-like: a few items dominate
    again = synthetic_sessions(3000, 60000, seed=5)
    assert again.equals(df)


def test_too_few_events_for_the_catalogue_is_refused():
    with pytest.raises(ValueError, match='cannot cover 5000 items'):
        synthetic_sessions(5000, 1000)
    test = synthetic_sessions(5000, 1000, cover_all=False, first_session=10)
    assert test.SessionId.min() == 10 and test.ItemId.max() < 5000


def test_training_and_test_sets_share_their_popular_items():
    """Drawn with different session seeds, train and test rank the same items highest (one popularity
    permutation); another popularity_seed moves them."""
    def top(df, k=10):
        return set(df.ItemId.value_counts().index[:k])
    train = synthetic_sessions(2000, 40000, seed=1)
    test = synthetic_sessions(2000, 20000, seed=2, cover_all=False, first_session=10 ** 9)
    other = synthetic_sessions(2000, 20000, seed=2, cover_all=False, popularity_seed=1)
    assert len(top(train) & top(test)) >= 8 and len(top(train) & top(other)) <= 2


def test_bench_synthetic_prints_a_row_whose_recall_beats_chance(tmp_path):
    """bench_synthetic.py end to end at a toy size (python backend): a row with speed figures and a
    Recall@20 well above the 20/200 of a random ranking, since the test set shares the training set's
    popular items (with two popularity permutations it was at chance)."""
    import re
    import subprocess
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    r = subprocess.run([sys.executable, os.path.join(root, 'benchmarks', 'bench_synthetic.py'), '--items', '200',
                        '--events', '3000', '--epochs', '2', '--n_sample', '16', '--layers', '8', '--backend', 'python',
                        '--eval_backends', 'python'], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    rows = re.findall(r'^\| 200 \| [\d,]+ \| [\d.]+ \| ([\d.]+) \| (\d+) \| ([\d,]+) \| ([\d.]+) \|$', r.stdout, re.M)
    assert len(rows) == 1
    mbs, eps, eval_eps, recall = rows[0]
    assert float(mbs) > 0 and int(eps) > 0 and int(eval_eps.replace(',', '')) > 0
    assert float(recall) > 0.3


def test_bench_cpu_prints_training_and_evaluation_figures(tmp_path):
    """bench_cpu.py end to end on a tiny generated log (python backend): one table row per loss with
    mb/s, events/s and the evaluation pass over the test file."""
    import re
    import subprocess
    train, test = tmp_path / 'train.tsv', tmp_path / 'test.tsv'
    synthetic_sessions(30, 900, seed=1).to_csv(train, sep='\t', index=False)
    synthetic_sessions(30, 200, seed=2, cover_all=False, first_session=10 ** 6).to_csv(test, sep='\t', index=False)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    r = subprocess.run([sys.executable, os.path.join(root, 'benchmarks', 'bench_cpu.py'), str(train), '--events', '0',
                        '--epochs', '2', '--n_sample', '8', '--layers', '4', '--backend', 'python', '--test', str(test)],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    rows = re.findall(r'^\| (xe_logq|bpr-max) \| ([\d.]+) \| (\d+) \| ([\d.]+) \| ([\d.]+) \| (\d+) \|$', r.stdout, re.M)
    assert [row[0] for row in rows] == ['xe_logq', 'bpr-max']
    assert all(float(row[1]) > 0 and float(row[4]) > 0 and int(row[5]) > 0 for row in rows)


def test_repeat_check_reports_identical_runs(tmp_path):
    """repeat_check.py trains twice with the same seed: on the CPU the two runs agree bit for bit."""
    import subprocess
    train = tmp_path / 'train.tsv'
    synthetic_sessions(40, 900, seed=3).to_csv(train, sep='\t', index=False)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    r = subprocess.run([sys.executable, os.path.join(root, 'benchmarks', 'repeat_check.py'), str(train), '--events', '0',
                        '--backend', 'python'], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    assert 'backend=python device=default' in r.stdout and 'bit-identical=True, max |weight difference|=0,' in r.stdout


def test_jax_parts_prints_a_row_per_catalogue_and_the_method_gpu_ops_picks():
    """jax_parts.py at toy sizes: one row per catalogue size with six timings, the repeated-row method
    that gpu_ops uses there (scratch up to JAX_SCRATCH_ROWS_PER_INDEX rows per index, else sort) and the
    guided sampler's levels."""
    import re
    import subprocess
    pytest.importorskip('jax')
    import gpu_ops
    k = 64
    small, large = 10 * k, (gpu_ops.JAX_SCRATCH_ROWS_PER_INDEX + 1) * k
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    r = subprocess.run([sys.executable, os.path.join(root, 'benchmarks', 'jax_parts.py'), '--items', str(small), str(large),
                        '--k', str(k), '--layers', '4', '--steps', '5'], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    num = r'(-?[\d.]+)'
    rows = re.findall(rf'^\| ([\d,]+) \| {num} \| {num} \| {num} \| {num} \| (scratch|sort) \| {num} \| {num} \((\d+)\) \|$',
                      r.stdout, re.M)
    assert [(int(row[0].replace(',', '')), row[5]) for row in rows] == [(small, 'scratch'), (large, 'sort')]
    assert all(1 <= int(row[-1]) <= 8 for row in rows)     # the guided sampler's levels


@pytest.mark.slow
def test_compile_cost_prints_its_table_and_one_compile_for_ten_trials(tmp_path):
    """compile_cost.py on the python backend (fast compiles): every row of the table, the 10 trials that
    differ only in continuous values compile one training step, the paropt studies' compile times, and the
    comparison with another checkout (here the same one: both cold compiles compile)."""
    import json
    import re
    import subprocess
    train = tmp_path / 'train.tsv'
    synthetic_sessions(40, 900, seed=3).to_csv(train, sep='\t', index=False)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    r = subprocess.run([sys.executable, os.path.join(root, 'benchmarks', 'compile_cost.py'), str(train), '--events',
                        '400', '--backend', 'python', '--old-repo', root, '--out', str(tmp_path / 'cost.json')],
                       capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr
    for row in ('cold compile (empty cache)', 'warm (same configuration', 'learning_rate 0.2 -> 0.1',
                '10 trials in one process: all fits'):
        assert f'| {row}' in r.stdout
    cost = json.loads((tmp_path / 'cost.json').read_text())
    assert cost['trials']['compiles'] == 1 and len(cost['trials']['seconds']) == 10
    for old in ('', 'old_'):
        assert 0 < cost[f'{old}cold_compiling'] < cost[f'{old}cold']
    assert re.search(r'^Cold compile vs .*: \d\.\d\d of its wall time, \d\.\d\d of its compiling$', r.stdout, re.M)
    # the real paropt studies: compile seconds measured, and the 10-trial one compiles about what one trial does
    for n in (1, 10):
        assert f'| paropt study of {n} trial' in r.stdout
        assert 0 < cost['paropt'][str(n)]['compile'] < cost['paropt'][str(n)]['wall']
    assert cost['paropt']['10']['compile'] < 3 * cost['paropt']['1']['compile']


PHASES = r"""
import json, sys, time
sys.path.insert(0, sys.argv[1])
import compile_profile
clock = compile_profile.PhaseClock()
clock.install()
import numba, numpy as np
import pytensor, pytensor.tensor as pt
sys.path.insert(0, sys.argv[2])
import custom_opt
t0 = time.perf_counter()
@numba.njit(no_cpython_wrapper=True, no_cfunc_wrapper=True)
def inner(x):
    return x * 2.0
@numba.njit
def outer(x):
    return inner(x) + 1.0
outer(np.ones(3))
x = pt.vector('x')
pytensor.function([x], pt.exp(x) * 2, mode=custom_opt.compile_mode('numba'))(np.ones(3))
clock.close()
print(json.dumps(dict(wall=time.perf_counter() - t0, seconds=clock.seconds, calls=clock.calls,
                      depths=sorted({d for _, d in clock.by_depth}))))
"""


def test_compile_profile_phases_add_up_to_the_wall_time(tmp_path):
    """compile_profile's clock: exclusive phase times that add up to the wall time, with each compiler phase
    seen, and nested Numba compiles counted by depth (a Numba function and a small PyTensor graph, in a fresh
    process with an empty cache; the script's full run is a cold training-step compile, too long for here)."""
    import json
    import subprocess
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, PYTENSOR_FLAGS=f'base_compiledir={tmp_path}', NUMBA_CACHE_DIR=str(tmp_path / 'numba'))
    r = subprocess.run([sys.executable, '-c', PHASES, os.path.join(root, 'benchmarks'), root], capture_output=True,
                       text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    seconds = out['seconds']
    for phase in ('PyTensor: graph rewriting', 'Numba: type inference', 'Numba: lowering to LLVM IR',
                  'LLVM: module passes', 'LLVM: machine-code emission', 'Numba: cache writes'):
        assert seconds.get(phase, 0) > 0, phase
    # every second inside the timed block is counted once ('other' also holds the imports before it)
    assert sum(v for k, v in seconds.items() if k != 'other') <= out['wall'] + 0.05
    assert sum(seconds.values()) >= out['wall']
    assert 1 in out['depths'] and max(out['depths']) >= 2


@pytest.mark.parametrize('args, message', [
    (['missing.tsv'], 'the training file does not exist: missing.tsv'),
    (['TRAIN', '--repo', 'nowhere'], '--repo is not a GRU4Rec checkout (no gru4rec.py): nowhere'),
    (['TRAIN', '--events', '5'], '--events and --eval-events must be at least 100')])
def test_compile_profile_bad_input_is_one_error_line(tmp_path, args, message):
    import subprocess
    train = tmp_path / 'train.tsv'
    train.write_text('SessionId\tItemId\tTime\n')
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    r = subprocess.run([sys.executable, os.path.join(root, 'benchmarks', 'compile_profile.py')] +
                       [str(train) if a == 'TRAIN' else a for a in args], capture_output=True, text=True,
                       cwd=tmp_path, timeout=120)
    assert r.returncode == 2 and r.stderr.strip().splitlines() == [f'ERROR. {message}'] and not r.stdout


def test_compile_profile_on_jax_splits_a_new_batch_size_and_compiles_nothing_for_a_new_learning_rate(tmp_path):
    """A new batch size on JAX: only XLA compiles; a new learning rate: nothing."""
    pytest.importorskip('jax')
    import json
    import subprocess
    train = tmp_path / 'train.tsv'
    synthetic_sessions(40, 900, seed=3).to_csv(train, sep='\t', index=False)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    r = subprocess.run([sys.executable, os.path.join(root, 'benchmarks', 'compile_profile.py'), str(train),
                        '--backend', 'jax', '--events', '400', '--out', str(tmp_path / 'jax.json')],
                       capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    assert '| batch_size 48 |' in r.stdout and '| XLA: compile |' in r.stdout
    fits = json.loads((tmp_path / 'jax.json').read_text())['result']
    assert [f['fit'] for f in fits] == ['batch_size 32', 'batch_size 48', 'batch_size 32, learning_rate 0.1']
    first, new_width, new_lr = (f['phases'] for f in fits)
    # a new width: XLA compiles its shapes, PyTensor's graph is reused (issue 19: "only the XLA part")
    assert first['XLA: compile'] > 0 and first['PyTensor: graph rewriting'] > 0 and new_width['XLA: compile'] > 0
    assert new_width.get('PyTensor: graph rewriting', 0) == 0
    assert new_lr.get('XLA: compile', 0) == 0 and new_lr.get('PyTensor: graph rewriting', 0) == 0


def test_same_numbers_compare_reports_the_first_differing_step(tmp_path, capsys):
    """same_numbers.py --compare: equal records pass; a step cost that differs in its last bits fails and names
    the step and the relative difference, though every epoch loss and metric is equal."""
    import json
    import same_numbers
    record = {'epoch_losses': [2.5, 1.5], 'recall@20': 0.5, 'mrr@20': 0.25, 'seconds': 1.0,
              'step_costs': [1.0, 2.0, 4.0]}
    changed = dict(record, step_costs=[1.0, 2.0, 4.0 * (1 + 2 ** -22)])
    files = []
    for name, rec in (('a', record), ('b', dict(record)), ('c', changed)):
        files.append(tmp_path / f'{name}.json')
        files[-1].write_text(json.dumps({'repo': name, 'commit': 'x', 'records': {'cfg / numba': rec}}))
    assert same_numbers.compare(files[0], files[1]) == 0
    assert '| cfg / numba | step costs 1-100 | | identical | yes |' in capsys.readouterr().out
    assert same_numbers.compare(files[0], files[2]) == 1
    assert 'max 2.4e-07 relative, first at step 3 | NO |' in capsys.readouterr().out
