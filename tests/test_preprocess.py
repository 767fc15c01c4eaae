"""examples/rsc15/preprocess.py on a generated file in the raw yoochoose-clicks format, with counts worked
out by hand."""
import os
import subprocess
import sys

import pandas as pd

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
A, B, C, D = 1001, 1002, 1003, 1004
# session: (day, hour, items); C has 2 clicks (< 5: dropped), D has 5
SESSIONS = {1: ('01', 0, [A, B, A]), 2: ('01', 0, [B, A]), 3: ('01', 0, [A]), 4: ('02', 9, [C, A]),
            5: ('02', 10, [A, B, B]), 9: ('02', 11, [D, D, D, D, D, A]),
            6: ('05', 10, [A, B]), 7: ('05', 11, [A, C]), 8: ('05', 12, [B, A, B])}
# Hand-worked: s3 has one click; dropping C leaves s4 and s7 with one click. Last click: s8 at 05T12:02, so
# s6 and s8 end in the last 24 h (test), s1 s2 s5 s9 are training. In training the last click is s9's
# (02T11:05): s5 and s9 are the validation days, but s9 keeps one click once D (absent from s1, s2) goes.
EXPECTED = """Full train set
\tEvents: 14
\tSessions: 4
\tItems: 3
Test set
\tEvents: 5
\tSessions: 2
\tItems: 2
Train set
\tEvents: 5
\tSessions: 2
\tItems: 2
Validation set
\tEvents: 3
\tSessions: 1
\tItems: 2
"""


def write_raw(path):
    with open(path, 'w') as f:
        for sid, (day, hour, items) in SESSIONS.items():
            for k, item in enumerate(items):
                minute = k + (10 if sid == 2 else 0)
                f.write(f'{sid},2014-04-{day}T{hour:02d}:{minute:02d}:00.000Z,{item},0\n')


def run_preprocess(raw, out, tz):
    env = dict(os.environ, TZ=tz)
    return subprocess.run([sys.executable, os.path.join(ROOT, 'examples', 'rsc15', 'preprocess.py'), str(raw), str(out)],
                          capture_output=True, text=True, env=env, check=True).stdout


def test_counts_files_and_time_zone_independence(tmp_path):
    raw = tmp_path / 'yoochoose-clicks.dat'
    write_raw(raw)
    assert run_preprocess(raw, tmp_path / 'utc', 'UTC') == EXPECTED
    assert run_preprocess(raw, tmp_path / 'kiribati', 'Pacific/Kiritimati') == EXPECTED
    for name, sessions in (('rsc15_train_full.txt', {1, 2, 5, 9}), ('rsc15_test.txt', {6, 8}),
                           ('rsc15_train_tr.txt', {1, 2}), ('rsc15_train_valid.txt', {5})):
        a = pd.read_csv(tmp_path / 'utc' / name, sep='\t')
        b = pd.read_csv(tmp_path / 'kiribati' / name, sep='\t')
        pd.testing.assert_frame_equal(a, b)
        assert list(a.columns) == ['SessionId', 'ItemId', 'Time'] and set(a.SessionId) == sessions
    full = pd.read_csv(tmp_path / 'utc' / 'rsc15_train_full.txt', sep='\t')
    assert full.Time.min() == 1396310400.0                     # 2014-04-01T00:00:00Z
    assert sorted(full[full.SessionId == 9].ItemId) == [A, D, D, D, D, D]


def test_run_script_finds_the_preprocessed_split(tmp_path):
    raw = tmp_path / 'yoochoose-clicks.dat'
    write_raw(raw)
    run_preprocess(raw, tmp_path / 'out', 'UTC')
    sys.path.insert(0, os.path.join(ROOT, 'examples', 'rsc15'))
    from run_rsc15 import find_split
    assert find_split(str(tmp_path / 'out')) == (str(tmp_path / 'out' / 'rsc15_train_full.txt'),
                                                 str(tmp_path / 'out' / 'rsc15_test.txt'))
    assert find_split(os.path.join(ROOT, 'data', 'rsc15_64'))[0].endswith('rec15_64_train_full.txt.gz')
