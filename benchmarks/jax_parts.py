"""Per-step cost of the JAX training step's catalogue-sized parts, inside a compiled loop (as in chunked
training; the marginal cost of an iteration, so no per-call dispatch or copy is counted): the repeated-row
bookkeeping of the fused update by each of its two methods (int32 scratch over the catalogue, or a sort of
the indices; _row_update.jax_occurrences), the whole fused Adagrad update of an [N x layers] matrix by each
method, and the negative sampler two ways (a binary search of the popularity CDF in a loop, and
SampleItems' fixed few steps from a guide table). Prints one table row per catalogue size, and which
repeated-row method gpu_ops picks there.

    python benchmarks/jax_parts.py [--items 43000 2000000] [--k 2080] [--layers 100] [--steps 100]

Runs wherever JAX runs (its default device: the GPU if JAX sees one). Both methods give identical results
(tests/test_gpu_ops.py); this only says which is faster on the machine at hand.
"""
import argparse
import functools
import os
import platform
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402

import _row_update  # noqa: E402
import gpu_ops  # noqa: E402


def per_step_us(loop, state, consts, steps, repeats=7):
    """Median microseconds per iteration of loop(steps, state, *consts) -> state (jitted with steps static
    and state donated, so each call continues from the last one's results in place, as chunked training does):
    the time of 2 * steps iterations minus that of steps, over steps, so that a call's fixed costs cancel."""
    import jax

    def median_s(n):
        nonlocal state
        state = jax.block_until_ready(loop(n, state, *consts))      # compile and warm up
        times = []
        for _ in range(repeats):
            t = time.perf_counter()
            state = jax.block_until_ready(loop(n, state, *consts))
            times.append(time.perf_counter() - t)
        return float(np.median(times))
    return 1e6 * (median_s(2 * steps) - median_s(steps)) / steps


def step_indices(i, base, n):
    """A different index vector every step (with repeats, like targets plus samples), from a fixed base."""
    import jax.numpy as jnp
    return ((base + i * jnp.int32(7919)) % n).astype(jnp.int32)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--items', type=int, nargs='+', default=[43000, 2000000])
    p.add_argument('--k', type=int, default=2080, help='indices per step (batch + negative samples)')
    p.add_argument('--layers', type=int, default=100)
    p.add_argument('--steps', type=int, default=100, help='loop iterations per timed call (and twice as many)')
    args = p.parse_args()
    import jax
    import jax.numpy as jnp
    from jax import lax
    print(f'machine: {platform.processor() or platform.machine()}, JAX {jax.__version__} on {jax.devices()[0]}, '
          f'K={args.k}, layers={args.layers}, {args.steps} and {2 * args.steps} steps per call')
    update = _row_update.jax_sparse_row_update(gpu_ops.SparseRowUpdate('adagrad', 1e-6, False, False))
    scalars = [np.float32(x) for x in (0.1, 0.0, 0.0, 0.0, 0.0)]   # lr, mu, lmbd, rho, b1 (runtime inputs)
    rng = np.random.default_rng(0)
    steps, default_limit = args.steps, _row_update.JAX_SCRATCH_ROWS_PER_INDEX
    compiled = functools.partial(jax.jit, static_argnums=0, donate_argnums=1)
    rows = []
    for n in args.items:
        base = jnp.asarray(rng.integers(0, n, args.k).astype(np.int32))
        g = jnp.asarray(rng.normal(size=(args.k, args.layers)).astype(np.float32))
        weights = rng.normal(size=(n, args.layers)).astype(np.float32)
        cdf = jnp.asarray(np.cumsum(1.0 / np.arange(1, n + 1)).astype(np.float32))
        cdf = cdf / cdf[-1]
        row = {}
        for name, limit in (('scratch', 10 ** 12), ('sort', 0)):
            _row_update.JAX_SCRATCH_ROWS_PER_INDEX = limit      # read when the functions below are traced

            @compiled
            def occurrences(steps, acc, base):
                def body(i, acc):
                    first_pos, last = _row_update.jax_occurrences(step_indices(i, base, n), n)
                    return acc + first_pos[0] + last.sum(dtype=jnp.int32)
                return lax.fori_loop(0, steps, body, acc)

            @compiled
            def full_update(steps, weights_and_acc, base, g):
                def body(i, carry):
                    return update(*carry, step_indices(i, base, n), g, *scalars)
                return lax.fori_loop(0, steps, body, weights_and_acc)
            state = (jnp.asarray(weights), jnp.zeros_like(weights))
            row[name] = (per_step_us(occurrences, jnp.int32(0), (base,), steps),
                         per_step_us(full_update, state, (base, g), steps))

        guide, levels = gpu_ops.cdf_guide(np.asarray(cdf))
        guide = jnp.asarray(guide)

        @compiled
        def search(steps, acc, cdf):          # log2(N) steps of a loop (jnp.searchsorted)
            def body(i, acc):
                return acc + gpu_ops.sample_from_cdf(cdf, jnp.uint32(1), i.astype(jnp.uint32), args.k - 32, jnp).sum(dtype=jnp.int32)
            return lax.fori_loop(0, steps, body, acc)

        @compiled
        def guided(steps, acc, cdf, guide):   # what SampleItems runs: a few unrolled steps from the guide
            def body(i, acc):
                return acc + gpu_ops.sample_from_guide(cdf, guide, levels, jnp.uint32(1), i.astype(jnp.uint32),
                                                       args.k - 32, jnp).sum(dtype=jnp.int32)
            return lax.fori_loop(0, steps, body, acc)
        row['search'] = per_step_us(search, jnp.int32(0), (cdf,), steps)
        row['guided'] = per_step_us(guided, jnp.int32(0), (cdf, guide), steps)
        row['levels'] = levels
        _row_update.JAX_SCRATCH_ROWS_PER_INDEX = default_limit
        picked = 'scratch' if gpu_ops.jax_occurrences_by_scratch(n, args.k) else 'sort'
        rows.append((n, row, picked))
    print('\n| items | repeated rows: scratch us | sort us | Adagrad update: scratch us | sort us | gpu_ops picks '
          '| sampler: binary search us | guided us (levels) |')
    print('|---|---|---|---|---|---|---|---|')
    for n, row, picked in rows:
        print(f'| {n:,} | {row["scratch"][0]:.1f} | {row["sort"][0]:.1f} | {row["scratch"][1]:.1f} | '
              f'{row["sort"][1]:.1f} | {picked} | {row["search"]:.1f} | {row["guided"]:.1f} ({row["levels"]}) |')


if __name__ == '__main__':
    main()
