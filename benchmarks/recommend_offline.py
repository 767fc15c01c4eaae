"""Offline batch recommendations vs the evaluation, on the same model and test sessions.

    python benchmarks/recommend_offline.py [--model PATH] [--events 20000] [--batch_size 512] [--k 20] [--repeat 3]

Model: the synthetic 43k-item, 100-unit model (live_common.synthetic_model; built once, ~1 min, cached at
--model). Reports, warm (compiled functions built by a first untimed pass), the best of --repeat runs:
  evaluation           evaluate_gpu(model, test, batch_size): events/s (scored events) and us per event
  recommend_batch      top-k after each session's last event: sessions/s, events/s (GRU steps), us per event
  recommend_batch --every_event: top-k after every event
and the per-event cost of the batch API relative to the evaluation's (target: <= 1.5x). One thread.
"""
import argparse
import contextlib
import io
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import live_common  # noqa: E402  (one BLAS/Numba thread, the repo path)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--model', default=os.path.join(live_common.ROOT, 'benchmarks', '.cache', 'synthetic43k.gru4rec'))
    p.add_argument('--events', type=int, default=20000)
    p.add_argument('--batch_size', type=int, default=512)
    p.add_argument('--k', type=int, default=20)
    p.add_argument('--repeat', type=int, default=3)
    p.add_argument('--backend', default='numba', choices=['numba', 'jax', 'python'])
    args = p.parse_args(argv)
    os.makedirs(os.path.dirname(os.path.abspath(args.model)), exist_ok=True)
    path, built = live_common.synthetic_model(args.model, backend=args.backend)
    import evaluation
    from gru4rec import GRU4Rec
    from recommend import recommend_batch
    model = GRU4Rec.loadmodel(path, backend=args.backend)
    test = live_common.test_sessions(model.n_items, args.events)
    test = test[test.ItemId.isin(model.itemidmap.index)]
    n_events, n_sessions = len(test), test.SessionId.nunique()
    n_scored = n_events - n_sessions

    def best(f):
        f()   # warm-up: compiles
        times = []
        for _ in range(args.repeat):
            t0 = time.perf_counter()
            f()
            times.append(time.perf_counter() - t0)
        return min(times)

    t_eval = best(lambda: _silent(evaluation.evaluate_gpu, model, test, cut_off=[args.k], batch_size=args.batch_size))
    t_last = best(lambda: recommend_batch(model, test, k=args.k, batch_size=args.batch_size))
    t_every = best(lambda: recommend_batch(model, test, k=args.k, batch_size=args.batch_size, every_event=True))
    us_eval = t_eval / n_scored * 1e6
    rows = [('evaluation (evaluate_gpu)', f'{t_eval:.3f}', '-', f'{n_scored / t_eval:,.0f}', f'{us_eval:.1f}', '1.00'),
            (f'recommend_batch, top-{args.k} after last event', f'{t_last:.3f}', f'{n_sessions / t_last:,.0f}',
             f'{n_events / t_last:,.0f}', f'{t_last / n_events * 1e6:.1f}', f'{t_last / n_events * 1e6 / us_eval:.2f}'),
            (f'recommend_batch, top-{args.k} after every event', f'{t_every:.3f}', f'{n_sessions / t_every:,.0f}',
             f'{n_events / t_every:,.0f}', f'{t_every / n_events * 1e6:.1f}', f'{t_every / n_events * 1e6 / us_eval:.2f}')]
    print(live_common.machine_line())
    print(f'model: {model.n_items} items, layers={model.layers}, loss={model.loss}, final_act={model.final_act}, '
          f'backend={args.backend}; test: {n_sessions} sessions, {n_events} events ({n_scored} scored by the '
          f'evaluation); batch_size={args.batch_size}; best of {args.repeat}' + (f'; model built in {built:.0f} s' if built else ''))
    print(live_common.table(['run', 'seconds', 'sessions/s', 'events/s', 'us/event', 'vs evaluation'], rows))
    return 0


def _silent(f, *a, **kw):
    with contextlib.redirect_stdout(io.StringIO()):
        return f(*a, **kw)


if __name__ == '__main__':
    sys.exit(main())
