"""examples/diginetica/run_diginetica.py end to end on generated files with Diginetica's names (tests never
read the real data): run.py's lines, then a results table with every cut-off and the machine."""
import os
import re
import subprocess
import sys

from test_cli import ROOT, make_sessions


def test_diginetica_example_prints_a_results_table(tmp_path):
    make_sessions(tmp_path / 'diginetica_train_full.tsv.gz', n_sessions=80)
    make_sessions(tmp_path / 'diginetica_test.tsv.gz', n_sessions=20, seed=1)
    out_json = tmp_path / 'metrics.json'
    cmd = [sys.executable, os.path.join(ROOT, 'examples', 'diginetica', 'run_diginetica.py'), str(tmp_path),
           '--extra', 'layers=8,batch_size=8,n_sample=16,n_epochs=2', '--backend', 'python', '--metrics_out', str(out_json)]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    assert 'SET   layers                  TO   [8]' in r.stdout     # the file's value was overridden
    header, rule, row = r.stdout.splitlines()[-4:-1]
    assert header.startswith('| Recall@1 | Recall@5 | Recall@10 | Recall@20 | MRR@1 |')
    cells = [c.strip() for c in row.strip('|').split('|')]
    recalls, mrrs = map(float, cells[:4]), map(float, cells[4:8])
    printed = dict(re.findall(r'^Recall@(\d+): (\d\.\d+)', r.stdout, re.M))
    assert [round(float(printed[c]), 4) for c in ('1', '5', '10', '20')] == list(recalls)
    assert list(mrrs) == sorted(float(c) for c in cells[4:8])
    assert '(2 epochs, median' in cells[8]
    assert r.stdout.splitlines()[-1].startswith('Machine: ') and out_json.exists()


def test_diginetica_example_names_missing_files(tmp_path):
    r = subprocess.run([sys.executable, os.path.join(ROOT, 'examples', 'diginetica', 'run_diginetica.py'), str(tmp_path)],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and 'diginetica_train_full.tsv.gz not found' in r.stderr
