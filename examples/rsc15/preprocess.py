"""Preprocess the RecSys Challenge 2015 clicks (yoochoose-clicks.dat) the way the original GRU4Rec did:

1. keep sessions with more than one click, then items with at least 5 clicks, then sessions with at
   least 2 clicks again;
2. test set: the sessions that end in the last 24 hours of the data, restricted to items of the training
   set and to sessions that keep at least 2 clicks; the rest is the full training set;
3. the same split of the full training set gives train_tr / train_valid for hyper-parameter tuning.

Times are parsed as UTC (the original used the local time zone), so the split does not depend on where it
runs. No deduplication of repeated clicks ("RSC15" style).

    python examples/rsc15/preprocess.py PATH/yoochoose-clicks.dat OUT_DIR

writes OUT_DIR/rsc15_train_full.txt, rsc15_test.txt, rsc15_train_tr.txt, rsc15_train_valid.txt
(tab-separated, header SessionId ItemId Time), which examples/rsc15/run_rsc15.py reads.
"""
import argparse
import os
import sys

import numpy as np
import pandas as pd

DAY = 86400


def load_clicks(path):
    """SessionId, ItemId, Time (unix seconds, float, UTC) from the raw comma-separated clicks file."""
    data = pd.read_csv(path, sep=',', header=None, usecols=[0, 1, 2], dtype={0: np.int32, 1: str, 2: np.int64})
    data.columns = ['SessionId', 'TimeStr', 'ItemId']
    stamps = pd.to_datetime(data['TimeStr'], format='%Y-%m-%dT%H:%M:%S.%fZ', utc=True)
    data['Time'] = (stamps - pd.Timestamp(0, tz='UTC')) / pd.Timedelta(seconds=1)
    return data[['SessionId', 'ItemId', 'Time']]


def sessions_of_length(data, min_length=2):
    """The events of the sessions with at least min_length events."""
    lengths = data.groupby('SessionId').size()
    return data[data.SessionId.isin(lengths[lengths >= min_length].index)]


def filter_supports(data, min_item_support=5):
    data = sessions_of_length(data)
    supports = data.groupby('ItemId').size()
    return sessions_of_length(data[data.ItemId.isin(supports[supports >= min_item_support].index)])


def split_last_day(data):
    """(train, test): test = sessions ending in the last 24 hours, on training items, >= 2 clicks left."""
    session_end = data.groupby('SessionId').Time.max()
    cut = data.Time.max() - DAY
    train = data[data.SessionId.isin(session_end[session_end < cut].index)]
    test = data[data.SessionId.isin(session_end[session_end >= cut].index)]
    return train, sessions_of_length(test[test.ItemId.isin(train.ItemId.unique())])


def report(name, data):
    print(f'{name}\n\tEvents: {len(data)}\n\tSessions: {data.SessionId.nunique()}\n\tItems: {data.ItemId.nunique()}')


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('clicks', help='yoochoose-clicks.dat')
    p.add_argument('out_dir')
    args = p.parse_args(argv)
    # bad input is one ERROR line and exit 2, with nothing created: the output folder is made after reading
    if not os.path.isfile(args.clicks):
        return error(f'The clicks file does not exist or is not a file: {args.clicks}')
    if os.path.exists(args.out_dir) and not os.path.isdir(args.out_dir):
        return error(f'The output folder is a file: {args.out_dir}')
    try:
        clicks = load_clicks(args.clicks)
    except Exception as e:   # any reader or time-format error means: not a yoochoose-clicks file
        return error(f'Cannot read the clicks file {args.clicks}: {type(e).__name__}: {e}')
    try:
        os.makedirs(args.out_dir, exist_ok=True)
    except OSError as e:
        return error(f'Cannot create the output folder {args.out_dir}: {e.strerror or e}')
    data = filter_supports(clicks)
    train, test = split_last_day(data)
    train_tr, valid = split_last_day(train)
    for name, frame, fname in (('Full train set', train, 'rsc15_train_full.txt'), ('Test set', test, 'rsc15_test.txt'),
                               ('Train set', train_tr, 'rsc15_train_tr.txt'),
                               ('Validation set', valid, 'rsc15_train_valid.txt')):
        report(name, frame)
        frame.to_csv(os.path.join(args.out_dir, fname), sep='\t', index=False)
    return 0


def error(message):
    """The command lines' convention for bad input: one 'ERROR.' line on stderr, exit code 2."""
    print('ERROR. ' + ' '.join(str(message).split()), file=sys.stderr)
    return 2


if __name__ == '__main__':
    sys.exit(main())
