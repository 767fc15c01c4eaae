"""Run-to-run determinism: train the same model twice on the same data and report whether the weights and
epoch losses agree bit for bit. On a GPU, XLA's scatter-adds (repeated items in a minibatch) may add in any
order; XLA_FLAGS=--xla_gpu_deterministic_ops=true asks for a fixed order. Prints one line per run pair.

    python benchmarks/repeat_check.py PATH/TO/train.tsv.gz [--events 20000] [--backend jax] [--device cuda]
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from gru4rec import GRU4Rec  # noqa: E402


def train(data, backend, device, epochs):
    m = GRU4Rec(loss='cross-entropy', final_act='softmax', constrained_embedding=True, logq=1.0, sample_alpha=0.5,
                dropout_p_hidden=0.4, learning_rate=0.2, momentum=0.2, layers=[100], batch_size=32,
                n_sample=2048, n_epochs=epochs, backend=backend, device=device)
    m.fit(data)
    return [e['loss'] for e in m.epoch_stats_], m.get_weights()


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('path')
    p.add_argument('--events', type=int, default=20000)
    p.add_argument('--epochs', type=int, default=1)
    p.add_argument('--backend', default=None)
    p.add_argument('--device', default=None)
    args = p.parse_args()
    data = pd.read_csv(args.path, sep='\t', nrows=args.events or None)
    (loss_a, w_a), (loss_b, w_b) = (train(data, args.backend, args.device, args.epochs) for _ in range(2))
    diff = max(float(np.max(np.abs(w_a[k] - w_b[k]))) for k in w_a)
    same = loss_a == loss_b and all(np.array_equal(w_a[k], w_b[k]) for k in w_a)
    print(f'backend={args.backend or "default"} device={args.device or "default"} '
          f'XLA_FLAGS={os.environ.get("XLA_FLAGS", "")!r}: bit-identical={same}, max |weight difference|={diff:.3g}, '
          f'losses {loss_a} vs {loss_b}')


if __name__ == '__main__':
    main()
