"""`gru4rec recommend MODEL EVENTS -k 20 -o OUT`: the top-k next items after each session's last event (or
after every event) of an events file, written as CSV / TSV / Parquet / JSON lines by OUT's extension.

Same conventions as run.py: configuration (-d/--backend, flags file, PYTENSOR_FLAGS) applied before numpy or
PyTensor is imported; bad input is one 'ERROR.' line on stderr, exit code 2, and nothing written; Ctrl-C or
SIGTERM is one line, exit code 130 or 143, and nothing written (the output is written at the end, atomically).
Clicks on items the model does not know are skipped (see recommend.py); a line on stdout counts them.
"""
import os
import sys

if __package__:
    from . import _interrupts, _outputs, cli
else:
    import _interrupts, _outputs, cli  # noqa: E401

InputError = cli.InputError
OUTPUT_FORMATS = {'.csv': 'csv', '.tsv': 'tsv', '.txt': 'tsv', '.parquet': 'parquet', '.jsonl': 'jsonl', '.json': 'jsonl',
                  '.ndjson': 'jsonl'}


def build_parser():
    p = cli.Parser(prog='gru4rec recommend', description='Top-k next items for the sessions of an events file.')
    p.add_argument('model', metavar='MODEL', help='a model saved with -s / savemodel')
    p.add_argument('events', metavar='EVENTS', help='events (session, item, time columns; formats as for training data)')
    p.add_argument('-k', '--k', type=int, default=20, help='items per recommendation (default: 20)')
    p.add_argument('-o', '--output', metavar='OUT', required=True,
                   help='output file: .csv, .tsv/.txt, .parquet or .jsonl/.json (JSON lines), one row per item')
    p.add_argument('--every_event', action='store_true', help='recommend after every event, not only after the last')
    p.add_argument('--exclude_seen', action='store_true', help="never recommend an item of the session's own clicks")
    p.add_argument('--candidates', metavar='FILE', default=None,
                   help='recommend only these item IDs (a text file, one ID per line)')
    p.add_argument('-b', '--batch_size', type=int, default=512, help='sessions per parallel minibatch (default: 512)')
    p.add_argument('-ik', '--item_key', default=None, help="item ID column (default: the model's, ItemId)")
    p.add_argument('-sk', '--session_key', default=None, help="session ID column (default: the model's, SessionId)")
    p.add_argument('-tk', '--time_key', default=None, help="time column (default: the model's, Time)")
    p.add_argument('-d', '--device', default=None, help='cpu or cuda[:N] (default: from the flags file, else cpu)')
    p.add_argument('--backend', choices=['numba', 'jax', 'python'], default=None, help='numba (CPU), jax (GPU or CPU), python')
    return p


def output_format(path):
    ext = os.path.splitext(str(path).lower())[1]
    if ext not in OUTPUT_FORMATS:
        raise InputError(f'Unknown output format "{ext or path}" (-o): use .csv, .tsv, .txt, .parquet, .jsonl or .json')
    return OUTPUT_FORMATS[ext]


def main(argv):
    """Entry point (run.py dispatches `recommend ...` here). Returns the exit code."""
    written = []   # the output file, once it is written
    return _interrupts.run_main(lambda: _main(argv, written), InputError, cli.report_error, lambda stop: (
        f'Interrupted ({stop.name}); ' + (f'the recommendations were written to {written[0]}.' if written
                                          else 'nothing was written.')))


def _main(argv, written):
    args = build_parser().parse_args(argv)
    if args.k < 1:
        raise InputError(f'-k must be a positive integer, got {args.k}')
    if args.batch_size < 1:
        raise InputError(f'--batch_size must be a positive integer, got {args.batch_size}')
    fmt = output_format(args.output)
    args.new_folders = _outputs.check_output_path(args.output, '-o')   # made only when the output is written
    if fmt == 'parquet' and importlib_find('pyarrow') is None:
        raise InputError('Writing .parquet needs pyarrow: pip install pyarrow')
    candidates = None
    if args.candidates is not None:
        if not os.path.isfile(args.candidates):
            raise InputError(f'The candidates file does not exist: {args.candidates}')
        with open(args.candidates, encoding='utf-8', errors='replace') as f:
            candidates = [line.strip() for line in f if line.strip()]
        if not candidates:
            raise InputError(f'The candidates file lists no item: {args.candidates}')
    own, flags = cli.resolve_config(args.device, args.backend)
    own['model_device'] = cli.apply_config(own, flags)
    model_module = cli.sibling('gru4rec')
    try:
        return _recommend(args, own, fmt, candidates, model_module, written)
    except model_module.GRU4RecError as e:
        raise InputError(str(e)) from None


def importlib_find(name):
    import importlib.util
    return importlib.util.find_spec(name)


def _recommend(args, own, fmt, candidates, mod, written):
    rec = cli.sibling('recommend')
    if not os.path.isfile(args.model):
        raise InputError(f'The model file does not exist: {args.model}')
    print(f'Loading trained model from file: {args.model}')
    gru = mod.GRU4Rec.loadmodel(args.model, backend=own['backend'], device=own['model_device'])
    cli.check_device(gru, own, mod.GRU4RecError)
    keys = (args.session_key or gru.session_key, args.item_key or gru.item_key, args.time_key or gru.time_key)
    events, message = cli.load_data(args.events, keys, 'events')
    if not (rec.ModelAdapter(gru).index_of(events[keys[1]].unique(), f'item IDs of {args.events}') >= 0).any():
        raise InputError(f'The events file {args.events} shares no item with the model')
    result = rec.recommend_batch(gru, events, k=args.k, exclude_seen=args.exclude_seen, candidates=candidates,
                                 every_event=args.every_event, batch_size=args.batch_size, session_key=keys[0],
                                 item_key=keys[1], time_key=keys[2], progress=sys.stderr.isatty())
    skipped, empty = result.attrs['skipped_clicks'], result.attrs['sessions_without_known_clicks']
    if skipped:
        print(f'Skipped {skipped} events with items unknown to the model'
              + (f' ({empty} sessions had no known item and get no recommendation)' if empty else ''))
    _outputs.create_folders(args.new_folders, '-o')
    write_output(result, args.output, fmt, mod.atomic_write)
    written.append(args.output)
    n_sessions = result['session'].nunique()
    print(f'Wrote {len(result)} recommendations for {n_sessions} sessions to {args.output}')
    return 0


def write_output(df, path, fmt, atomic_write):
    """Write the tidy result atomically (temp file + rename) in the format of the extension."""
    import io
    if fmt in ('csv', 'tsv'):
        data = df.to_csv(sep=',' if fmt == 'csv' else '\t', index=False).encode('utf-8')
    elif fmt == 'jsonl':
        data = df.to_json(orient='records', lines=True).encode('utf-8') if len(df) else b''
    else:
        buf = io.BytesIO()
        df.to_parquet(buf, index=False)
        data = buf.getvalue()
    atomic_write(path, lambda f: f.write(data))
