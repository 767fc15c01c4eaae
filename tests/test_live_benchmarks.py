"""benchmarks/serve_load.py and recommend_offline.py run to the end and print their tables (tiny model, python
backend, fractions of a second per scenario; loopback only)."""
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, 'benchmarks'))


@pytest.fixture(scope='module')
def tiny_model(tmp_path_factory):
    from bench_synthetic import synthetic_sessions
    from gru4rec import GRU4Rec
    path = tmp_path_factory.mktemp('bench') / 'tiny.gru4rec'
    m = GRU4Rec(layers=[8], n_epochs=1, batch_size=16, n_sample=16, loss='cross-entropy', final_act='softmax', backend='python')
    m.fit(synthetic_sessions(60, 1500, seed=0))
    m.savemodel(path)
    return path


def bench(name, *args):
    return subprocess.run([sys.executable, os.path.join(ROOT, 'benchmarks', name), *map(str, args)],
                          capture_output=True, text=True, timeout=600)


def test_recommend_offline_prints_its_table(tiny_model):
    r = bench('recommend_offline.py', '--model', tiny_model, '--backend', 'python', '--events', 300, '--repeat', 1)
    assert r.returncode == 0, r.stderr
    assert 'machine: ' in r.stdout and '| evaluation (evaluate_gpu)' in r.stdout and 'after every event' in r.stdout


def test_serve_load_prints_its_table(tiny_model):
    r = bench('serve_load.py', '--model', tiny_model, '--backend', 'python', '--duration', 0.5, '--clients', 1, 4,
              '--rate', 40, '--k', 5)
    assert r.returncode == 0, r.stderr
    out = r.stdout
    assert 'machine: ' in out and '| on       | closed, 4 clients' in out and '| off      | open, 40/s' in out
    assert 'throughput at 4 clients, batching on / off' in out
