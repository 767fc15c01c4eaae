"""Train GRU4Rec on the full Diginetica data (SR-GNN preprocessing) and print Recall/MRR@1,5,10,20.

    python examples/diginetica/run_diginetica.py DATA_DIR [--params FILE] [--extra PARAM_STRING] [--seed 42]
                                                 [--metrics_out FILE.json] [--backend numba|jax]

DATA_DIR holds diginetica_train_full.tsv.gz and diginetica_test.tsv.gz (SessionId, ItemId, Time; tab
separated). The data is not bundled: pass the folder you have it in. The parameters default to the 2023
best Diginetica setting of the original (paramfiles/diginetica_bprmax_shared_best.py: bpr-max, shared
embedding, 512 units, batch 128). The whole run goes through run.py, so its printed lines are run.py's;
a markdown results table with the training time and the machine follows at the end.
"""
import argparse
import json
import os
import platform
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)

import cli  # noqa: E402
import run  # noqa: E402

FILES = ('diginetica_train_full.tsv.gz', 'diginetica_test.tsv.gz')
CUT_OFFS = (1, 5, 10, 20)


def machine():
    """One line naming the CPU (or the accelerator the run used), the cores and the software."""
    cpu = platform.processor() or platform.machine()
    try:
        with open('/proc/cpuinfo') as f:
            cpu = next(line.split(':', 1)[1].strip() for line in f if line.startswith('model name'))
    except (OSError, StopIteration):
        pass
    import numpy
    import pytensor
    return (f'{cpu}, {os.cpu_count()} cores visible, Python {platform.python_version()}, '
            f'PyTensor {pytensor.__version__}, NumPy {numpy.__version__}')


def results_table(record):
    ev = record['evaluation'][0]
    train = record['training']
    head = '| ' + ' | '.join(f'Recall@{c}' for c in CUT_OFFS) + ' | ' + ' | '.join(f'MRR@{c}' for c in CUT_OFFS)
    row = ('| ' + ' | '.join(f'{ev["recall"][str(c)]:.4f}' for c in CUT_OFFS) + ' | '
           + ' | '.join(f'{ev["mrr"][str(c)]:.4f}' for c in CUT_OFFS))
    epochs = train['epochs']
    mbs = sorted(e['mb_per_s'] for e in epochs)[len(epochs) // 2]
    return '\n'.join([
        head + ' | training | evaluation |',
        '|' + '---|' * (2 * len(CUT_OFFS) + 2),
        row + f' | {train["seconds"]:.0f} s ({len(epochs)} epoch{"s" * (len(epochs) != 1)}, median {mbs:.1f} mb/s) | '
              f'{ev["seconds"]:.1f} s ({ev["events"]} events) |'])


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('data', metavar='DATA_DIR', help='folder with ' + ' and '.join(FILES))
    p.add_argument('--params', default=os.path.join(ROOT, 'paramfiles', 'diginetica_bprmax_shared_best.py'))
    p.add_argument('--extra', default='', help='parameter string overriding the file, e.g. n_epochs=1')
    p.add_argument('--seed', type=int, default=42)
    p.add_argument('--metrics_out', '--metrics-out', default=None, help='also keep run.py\'s metrics JSON here')
    p.add_argument('--backend', default=None, choices=['numba', 'jax', 'python'])
    args = p.parse_args(argv)
    train, test = (os.path.join(args.data, f) for f in FILES)
    for path in (train, test):
        if not os.path.isfile(path):
            p.error(f'{path} not found: DATA_DIR must hold {" and ".join(FILES)}')
    params = cli.load_parameter_file(args.params)
    if args.extra:
        params.update(cli.parse_parameter_string(args.extra))
    param_string = ','.join(f'{k}={"/".join(map(str, v)) if isinstance(v, (list, tuple)) else v}'
                            for k, v in params.items())
    with tempfile.TemporaryDirectory() as tmp:
        out = args.metrics_out or os.path.join(tmp, 'metrics.json')
        argv = [train, '-t', test, '-ps', param_string, '-m', *map(str, CUT_OFFS), '--seed', str(args.seed),
                '--metrics_out', out] + (['--backend', args.backend] if args.backend else [])
        code = run.main(argv)
        if code:
            return code
        with open(out) as f:
            record = json.load(f)
    print(f'\nDiginetica (SR-GNN split), {os.path.basename(args.params)}'
          f'{" + " + args.extra if args.extra else ""}, seed {args.seed}')
    print(results_table(record))
    print(f'Machine: {machine()}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
