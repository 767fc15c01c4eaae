"""Training: fit's checks of its arguments and data, the memory estimate, the compiled training step (one
minibatch per call, or a scan over fixed-width steps), and one fit's run: the item map, the sessions in
order, fresh weights, the sampler, random streams, checkpoints, and the epoch loops.

GRU4Rec.fit drives a TrainingRun epoch by epoch and keeps what it learns (weights, epoch statistics).
"""
import math
import os
import time
import warnings
from collections import OrderedDict, namedtuple

import numpy as np
import pandas as pd
import pytensor
import pytensor.tensor as pt
from pytensor.graph.replace import clone_replace

if __package__:
    from . import _batches, _checkpoint, _devices, _files, _graph, _hyper, _interrupts, _optim, _params, _sampling, custom_opt
else:
    import _batches, _checkpoint, _devices, _files, _graph, _hyper, _interrupts, _optim, _params, _sampling, custom_opt  # noqa: E401

FLOAT = _graph.FLOAT
GRU4RecError = _params.GRU4RecError
FitOptions = namedtuple('FitOptions', 'backend chunk store_type sample_store checkpoint resume saved')


# --- checks before anything changes -------------------------------------------------------------------

def fit_options(p, sample_store, store_type, checkpoint_dir, resume, chunk):
    """fit's arguments checked, with the backend's defaults filled in (see GRU4Rec.fit). Creates the
    checkpoint folder of a new run; reads the checkpoint to resume from and checks it against the settings
    (saved: _checkpoint.Saved, or None)."""
    backend = p.backend_in_use
    chunk = training_chunk(backend, chunk)
    if store_type is None:
        store_type = 'cpu' if p.rng == 'original' else custom_opt.STORE_BY_DEFAULT[backend]
    if store_type not in ('gpu', 'cpu'):
        raise GRU4RecError(f'Invalid store type {store_type} (use gpu or cpu)')
    if store_type == 'gpu' and p.rng == 'original':
        raise GRU4RecError("rng='original' needs store_type='cpu' (--sample_store_on_cpu): the original's "
                           "GPU store draws from Theano's own generator, which cannot be reproduced")
    if p.rng == 'original' and (p.dropout_p_embed > 0 or p.dropout_p_hidden > 0):
        warnings.warn("rng='original' reproduces the original's initial weights, shuffling and negative samples, "
                      "not its dropout masks (drawn from Theano's own generator): with dropout the run matches "
                      "the original's only statistically, not step by step", _params.GRU4RecWarning, stacklevel=3)
    if resume and not checkpoint_dir:
        raise GRU4RecError('resume needs the checkpoint_dir to resume from')
    checkpoint = os.path.join(checkpoint_dir, _files.CHECKPOINT_NAME) if checkpoint_dir else None
    if resume and not os.path.isfile(checkpoint):
        raise GRU4RecError(f'No checkpoint to resume from in {checkpoint_dir}')
    if checkpoint_dir and not resume:
        os.makedirs(checkpoint_dir, exist_ok=True)
    sample_store = _params.to_int_arg(sample_store, 'sample_store')
    saved = _checkpoint.read_for(checkpoint, p, store_type, sample_store) if resume else None
    return FitOptions(backend, chunk, store_type, sample_store, checkpoint, resume, saved)


def training_chunk(backend, chunk):
    """fit's chunk checked for the backend, None replaced by its default (GRU4RecError if it cannot be used)."""
    chunk = custom_opt.CHUNK_BY_DEFAULT[backend] if chunk is None else _params.to_int_arg(chunk, 'chunk')
    if chunk == 0 and backend == 'jax':
        raise GRU4RecError('The JAX backend trains in chunks only (XLA would compile every shrinking minibatch '
                           'width anew): use chunk > 0')
    return chunk


def training_frame(p, data):
    """A checked copy of the three key columns (the caller's frame is never modified)."""
    if not isinstance(data, pd.DataFrame):
        raise GRU4RecError(f'fit expects a pandas DataFrame, got {type(data).__name__}')
    data = _batches.session_columns(data, (p.session_key, p.item_key, p.time_key), 'training')
    if data[p.item_key].isna().any():
        raise GRU4RecError(f'Column {p.item_key} of the training data has missing item IDs')
    if len(data) == 0 or data.groupby(p.session_key).size().max() < 2:
        raise GRU4RecError('The training data has no session with at least 2 events')
    return data


def memory_estimate(p, n_items, sample_store):
    """Bytes that training allocates for the item-indexed weights, their optimiser states and the
    negative-sample store, by part. The dense GRU weights and per-step buffers are comparatively tiny."""
    shapes = _graph.weight_shapes(p, n_items)
    item_weights = sum(4 * int(np.prod(v)) for k, v in shapes.items() if v[0] == n_items)
    rows = sample_store // p.n_sample if p.n_sample else 0
    store = 4 * p.n_sample * (rows if rows > 1 else 1)
    return {'item weights': item_weights, 'optimiser state': _optim.n_states(p.adapt, p.momentum) * item_weights,
            'sample store': store}


def check_memory(p, n_items, sample_store, backend):
    """GRU4RecError naming the parts if training would need more memory than the device has free."""
    parts = memory_estimate(p, n_items, sample_store)
    need, free = sum(parts.values()), _devices.available_memory(backend == 'jax', p.device)
    if free is not None and need > free:
        gib = lambda b: f'{b / 2 ** 30:.2f} GiB'   # noqa: E731
        detail = ', '.join(f'{k} {gib(v)}' for k, v in parts.items())
        raise GRU4RecError(f'Training needs about {gib(need)} ({detail}) but only {gib(free)} of memory is '
                           f'available: lower layers/embedding (item matrices), use momentum=0 or adagrad '
                           f'(optimiser state), or lower the sample store size (-ss)')


def sort_and_index(p, data, item_index):
    """Sort by (session, time) if needed (printing like the original); return item indices, session
    offsets and times."""
    sk, tk = p.session_key, p.time_key
    s = data[sk].values
    t = data[tk].values
    s_ok = len(s) < 2 or bool(np.all(s[1:] >= s[:-1]))
    t_ok = s_ok and (len(s) < 2 or bool(np.all((t[1:] >= t[:-1]) | (s[1:] != s[:-1]))))
    if s_ok and t_ok:
        print(f'The dataframe is already sorted by {sk}, {tk}')
    else:
        print(f'The dataframe is not sorted by {sk if not s_ok else tk}, sorting now')
        t0 = time.time()
        data = data.sort_values([sk, tk], kind='stable')
        print(f'Data is sorted in {time.time() - t0:.2f}')
    items = item_index.get_indexer(data[p.item_key]).astype(np.int32)
    return items, _batches.session_offsets(data[sk].values), data[tk].values


# --- the compiled step ---------------------------------------------------------------------------------

def initial_state(p, item_support, rng):
    """Fresh weights drawn from rng (shared variables, see _graph.init_weights) and logq_vectors."""
    return _graph.shared_weights(_graph.init_weights(p, len(item_support), rng)), logq_vectors(p, item_support)


def logq_vectors(p, item_support):
    """The logQ correction's log q (shared N-vectors), as the original computes them in float32: log(P0) for
    in-batch targets, log(P0 ** sample_alpha) for sampled negatives (not alpha * log(P0): the last bits
    differ, and with learning_rate 0.2 a step-by-step comparison with the original magnifies them)."""
    target, sample = logq_arrays(p, item_support)
    return pytensor.shared(target, name='logq_target'), pytensor.shared(sample, name='logq_sample')


def logq_arrays(p, item_support):
    """The arrays of logq_vectors."""
    p0 = np.maximum(np.asarray(item_support, dtype=np.int64), 1).astype(FLOAT)
    return np.log(p0), np.log(p0 ** np.float32(p.sample_alpha))


StepGraph = namedtuple('StepGraph', 'inputs cost new_H updates noise opt_states item_vars hyper')


def step_graph(p, weights, logq, draws=None, masked=False, sink=None):
    """The symbolic training step (_graph.training_step) with its updates (_optim.updates), the noise inputs
    it reads, its optimiser states (Adagrad accumulators, velocities, ...), its item-indexed variables and its
    runtime hyper-parameters (_hyper.Hyper). masked: fixed-width steps (chunked training)."""
    noise, hyper = _sampling.NoiseInputs(), _hyper.Hyper(p)
    inputs, cost, new_H, dense, sparse = _graph.training_step(p, weights, noise, draws, logq, masked, hyper)
    updates, item_vars = _optim.updates(p, cost, dense, sparse, sink=sink, h=hyper)
    trained = set(weights.values())
    return StepGraph(inputs, cost, new_H, updates, noise, [v for v in updates if v not in trained], item_vars,
                     hyper)


def compile_per_step(p, weights, logq, mode, draws=None):
    """(f, StepGraph): f(X, Y, [S,] R, *noise, *H) -> (cost, *new H) trains one minibatch of M slots."""
    g = step_graph(p, weights, logq, draws)
    fn = pytensor.function(g.inputs, [g.cost] + g.new_H, updates=list(g.updates.items()), mode=mode())
    fn.trust_input = True
    return fn, g


def compile_chunked(p, weights, logq, mode, draws, sink):
    """Training K minibatches per call: a scan over fixed-width masked steps (_graph.training_step, masked).
    Returns (f, StepGraph); f has as inputs the per-step sequences of the step inputs (X, Y, [S,] R, A:
    K x B, or K x (B + n_sample) for Y with host negatives; host noise K x B x width) and the initial states
    H (B x L_i), and as outputs the K costs and the final states. One function for any K, B and n_sample (JAX
    traces and XLA compiles each new combination of shapes once: the full chunk and an epoch's shorter last
    one). mode: a function returning the compile mode."""
    g = step_graph(p, weights, logq, draws, True, sink)
    n_seq = len(g.inputs) - len(p.layers)
    targets = list(g.updates)

    def step(*args):   # one slice of each sequence, the previous hidden states, the previous weights/states
        prev = dict(zip(g.inputs + targets, args))
        return clone_replace([g.cost] + g.new_H + [g.updates[t] for t in targets], replace=prev)

    seqs = [pt.tensor(name=f'{v.name}_seq', dtype=v.dtype, shape=(None,) + v.type.shape) for v in g.inputs[:n_seq]]
    H0 = [pt.tensor(f'H{i}_init', dtype=FLOAT, shape=h.type.shape) for i, h in enumerate(g.inputs[n_seq:])]
    # weights and optimiser states are carried through the scan and written back once per call
    # (the length named: with dynamic K, PyTensor would take the minimum over the sequences, not static on JAX)
    results = pytensor.scan(step, sequences=seqs, outputs_info=[None] + H0 + targets, n_steps=seqs[0].shape[0],
                            return_list=True, return_updates=False)
    last = [r[-1] for r in results[1:]]
    fn = pytensor.function(seqs + H0, [results[0]] + last[:len(H0)], updates=list(zip(targets, last[len(H0):])),
                           mode=mode())
    fn.trust_input = True
    return fn, g


# --- compiled steps shared by the fits of a process ------------------------------------------------------

class CompiledStep:
    """A compiled training step (compile_chunked's or compile_per_step's) with the shared variables it is bound
    to: weights, logQ vectors, the in-graph sampler's seed and CDF, optimiser states and the runtime
    hyper-parameters (_hyper.Hyper). One fit uses it at a time (acquire/release); the next fit of the same
    structure reloads these variables with its own values instead of compiling again."""

    def __init__(self, key, fn, graph, weights, logq, draws):
        self.key, self.fn, self.graph, self.weights, self.logq = key, fn, graph, weights, logq
        self.draw_vars = draws.variables if draws is not None else None
        self.shapes = set()   # (width, n_sample) trained so far (JAX: XLA compiles each on first use)

    def note_shapes(self, backend, width, n_sample):
        """On JAX, say that XLA compiles for minibatch shapes that this step has not trained yet (a pause
        that would otherwise go unexplained; PyTensor's graph is reused)."""
        if backend == 'jax' and self.shapes and (width, n_sample) not in self.shapes:
            print(f'Compiling the training step for a new width ({width} sessions, {n_sample} negatives) with XLA',
                  flush=True)
        self.shapes.add((width, n_sample))

    def load(self, p, arrays, logq_arrays, draws):
        """Start a new fit: fresh weights, zero optimiser states, p's hyper-parameters, the sampler's values."""
        for var, value in zip(list(self.weights.values()) + list(self.logq), list(arrays.values()) + list(logq_arrays)):
            var.set_value(value)
        for var, w in zip(self.graph.opt_states, self.state_weights()):
            var.set_value(np.zeros_like(arrays[w.name]))
        self.graph.hyper.set(p)
        if draws is not None:   # the sampler draws through the variables the step was compiled with
            draws.adopt(self.draw_vars)

    def state_weights(self):
        """The weight each optimiser state belongs to (its name is the weight's + '_state')."""
        return [self.weights[v.name[:-len('_state')]] for v in self.graph.opt_states]


_free_steps = {}      # step key -> [CompiledStep not in use]
_compiles = [0]       # training steps compiled in this process


def compile_count():
    """The number of training steps compiled in this process (a new one is compiled only for a new structure)."""
    return _compiles[0]


def mode_key(mode):
    """What identifies a compile mode: its linker's class and its rewrite query."""
    q = mode.provided_optimizer
    return (type(mode.linker), frozenset(q.include), frozenset(q.exclude), frozenset(q.require))


def acquire_step(p, options, mode, arrays, logq_arrays, draws, n_items):
    """A CompiledStep for p, loaded with these initial values: a free one of the same structure, or a new one.
    The minibatch width and n_sample are not part of it (dynamic shapes); the in-graph sampler's search steps
    (draws.levels, which depend on the data's CDF) are."""
    chunked = options.chunk > 0
    key = (_hyper.structure(p), mode_key(mode()), options.store_type, chunked,
           draws.levels if draws is not None else None, n_items if chunked and p.merge_repeated else None)
    free = _free_steps.get(key)
    if free:
        step = free.pop()
        step.load(p, arrays, logq_arrays, draws)
        return step
    weights = _graph.shared_weights(arrays)
    logq = tuple(pytensor.shared(v, name=n) for v, n in zip(logq_arrays, ('logq_target', 'logq_sample')))
    # the pause of the first epoch (Numba: 22-26 s cold on a 2-core VM; seconds when PyTensor's cache has it;
    # JAX keeps nothing on disk: a few seconds, PyTensor's rewriting and then XLA's compile)
    print('Compiling the training step' + (' (PyTensor, then XLA)' if options.backend == 'jax' else
                                           ' (or loading it from the compile cache)'), flush=True)
    if chunked:
        fn, g = compile_chunked(p, weights, logq, mode, draws, n_items)
    else:
        fn, g = compile_per_step(p, weights, logq, mode, draws)
    _compiles[0] += 1
    return CompiledStep(key, fn, g, weights, logq, draws)


def release_step(step):
    """Return a CompiledStep for the next fit; its variables keep only placeholders (the finished fit's arrays
    belong to its model now)."""
    for var in list(step.weights.values()) + list(step.logq) + step.graph.opt_states:
        v = var.get_value(borrow=True)
        var.set_value(np.zeros((0,) + tuple(v.shape[1:]), dtype=v.dtype))
    _free_steps.setdefault(step.key, []).append(step)


# --- one fit -------------------------------------------------------------------------------------------

class TrainingRun:
    """The state of one fit: the item map and sessions of the data, the weights (shared variables, which the
    model holds too), sampler, compiled step and random streams. epoch() trains one epoch.

    p: checked parameters; options: fit_options(); data: training_frame(); mode: a function returning the
    compile mode; log_steps: keep (cost, active sessions) of every step in step_log."""

    def __init__(self, p, options, data, mode, log_steps=False):
        self.p, self.options = p, options
        self.step_log = [] if log_steps else None
        itemids = data[p.item_key].unique()
        self.itemidmap = pd.Series(np.arange(len(itemids), dtype=np.int32), index=itemids, name='ItemIdx')
        self.n_items = len(itemids)
        self.items, self.offsets, times = sort_and_index(p, data, self.itemidmap.index)
        self.fingerprint = _files.data_fingerprint(self.items, self.offsets)
        if options.saved:   # the whole checkpoint is checked before anything is drawn or compiled
            _checkpoint.check_data(options.saved, p, self.itemidmap.index, self.fingerprint)
        check_memory(p, self.n_items, options.sample_store if options.store_type == 'cpu' else 0, options.backend)
        self.rng = np.random.RandomState(p.seed)   # the original's init draws for seed 42
        self.item_support = np.asarray(np.bincount(self.items, minlength=self.n_items), dtype=np.int64)
        arrays = _graph.init_weights(p, self.n_items, self.rng)
        self.sampler = _sampling.new_sampler(p, options.store_type, options.sample_store, self.item_support, self.rng)
        self.width = min(p.batch_size, len(self.offsets) - 1)
        draws = self.sampler if options.store_type == 'gpu' else None
        self.step = acquire_step(p, options, mode, arrays, logq_arrays(p, self.item_support), draws, self.n_items)
        self.step.note_shapes(options.backend, self.width, p.n_sample)
        self.weights, self.logq, self.train_fn, g = self.step.weights, self.step.logq, self.step.fn, self.step.graph
        self.noise, self.opt_states, self.item_vars = g.noise, g.opt_states, g.item_vars
        self.noise_rng = np.random.default_rng([p.seed, 2])
        self.base_order = np.argsort(times[self.offsets[:-1]]) if p.time_sort else np.arange(len(self.offsets) - 1)
        self.streams = _sampling.TrainingStreams(self.rng, self.sampler, self.noise_rng)

    def epoch(self, epoch, unpad_after):
        """Train one epoch (0-based); prints its line. Returns (its statistics, None), or (None, the step of the
        first non-finite loss). unpad_after: remove the padding row of chunked training afterwards (something
        outside training will see the weights)."""
        t0 = time.time()
        p = self.p
        order = self.rng.permutation(len(self.offsets) - 1) if p.train_random_order else self.base_order
        batches = _batches.progress(_batches.session_parallel_batches(self.items, self.offsets, order, p.batch_size,
                                                                      min_active=2 if p.n_sample == 0 else 1),
                                    len(self.items) - len(order), f'Epoch{epoch + 1}')
        if self.options.chunk:
            self.pad_items(True)   # (a no-op while the padding row is still there from the last epoch)
            sum_cost, n_events, n_steps, bad = self.chunked_epoch(batches)
            # the padding row stays between epochs unless something outside training sees the weights:
            # removing and re-adding it moves every item matrix through the host (on a GPU: twice per epoch)
            if unpad_after:
                self.pad_items(False)
        else:
            sum_cost, n_events, n_steps, bad = self.per_step_epoch(batches)
        if bad:
            return None, bad
        secs = time.time() - t0
        avg = sum_cost / max(n_events, 1)
        if math.isnan(avg):
            return None, n_steps
        return {'epoch': epoch + 1, 'loss': avg, 'seconds': secs, 'steps': n_steps, 'events': n_events}, None

    def per_step_epoch(self, batches):
        """One epoch, one compiled call per minibatch. Returns (sum of cost * M, events, steps, step of the
        first non-finite cost or None)."""
        H = [np.zeros((self.width, u), dtype=FLOAT) for u in self.p.layers]
        active = np.arange(self.width)                      # slot id of each row
        sum_cost, n_events, n_steps = 0.0, 0, 0
        for inp, out, reset, keep in batches:
            if keep is not None:
                H = [h[keep] for h in H]
                active = active[keep]
            y = (out,) if self.sampler is None else self.sampler.inputs(out)
            cost, *H = self.train_fn(inp, *y, reset.astype(FLOAT), *self.noise.step_values(self.noise_rng, active), *H)
            sum_cost += float(cost) * len(inp)
            n_events += len(inp)
            if self.step_log is not None:
                self.step_log.append((float(cost), len(inp)))
            n_steps += 1
            if not math.isfinite(float(cost)):
                return sum_cost, n_events, n_steps, n_steps
        return sum_cost, n_events, n_steps, None

    def chunked_epoch(self, batches):
        """One epoch, options.chunk minibatches per compiled call (compile_chunked), the minibatches packed into
        fixed-width steps whose finished slots point at the padding item (index n_items) with A = 0. The costs
        of a call are read one call late (see _batches.read_one_call_late). Returns what per_step_epoch returns."""
        H = [np.zeros((self.width, u), dtype=FLOAT) for u in self.p.layers]

        def step_inputs():   # (the step's inputs, its number of active slots)
            for active, x, t, r, a in _batches.fixed_width_steps(batches, self.width, self.n_items):
                y = (t,) if self.sampler is None else self.sampler.inputs(t)
                yield (x, *y, r, a, *self.noise.step_values(self.noise_rng, active, self.width)), len(active)

        def calls():
            nonlocal H
            for call in _batches.calls_of(step_inputs(), self.options.chunk):
                inputs, sizes = zip(*call)
                costs, *H = self.train_fn(*_batches.stacked(inputs), *H)
                yield costs, sizes

        sum_cost, n_events, n_steps = 0.0, 0, 0
        for costs, sizes in _batches.read_one_call_late(calls()):
            costs, sizes = np.asarray(costs, dtype=np.float64), np.asarray(sizes, dtype=np.float64)
            bad = np.flatnonzero(~np.isfinite(costs))
            sum_cost += float(costs @ sizes)
            n_events += int(sizes.sum())
            if self.step_log is not None:
                self.step_log.extend(zip(costs.tolist(), sizes.astype(int).tolist()))
            first_bad = n_steps + int(bad[0]) + 1 if len(bad) else None
            n_steps += len(costs)
            if first_bad:
                return sum_cost, n_events, n_steps, first_bad
        return sum_cost, n_events, n_steps, None

    def pad_items(self, pad):
        """Add (pad=True) or remove the padding row that inactive slots of chunked training point at."""
        for var in self.item_vars + list(self.logq):
            v = var.get_value(borrow=True)
            if pad and len(v) == self.n_items:
                var.set_value(np.concatenate([v, np.zeros((1,) + v.shape[1:], v.dtype)]))
            elif not pad and len(v) == self.n_items + 1:
                var.set_value(v[:self.n_items].copy())

    def release(self):
        """The trained weights as the model's own shared variables; the compiled step goes back to the process's
        pool for the next fit of the same structure (after this, the run cannot train or checkpoint)."""
        own = OrderedDict((k, pytensor.shared(np.asarray(v.get_value(borrow=True)), name=k, shape=v.type.shape,
                                              borrow=True)) for k, v in self.weights.items())
        release_step(self.step)
        self.weights = own
        return own

    def step_log_arrays(self):
        """(costs, active sessions) of every logged step, as float64 and int64 arrays."""
        return (np.array([c for c, _ in self.step_log], dtype=np.float64),
                np.array([m for _, m in self.step_log], dtype=np.int64))

    def save_checkpoint(self, epochs_done, epoch_stats):
        """Write the checkpoint of `epochs_done` finished epochs; a Ctrl-C or SIGTERM meanwhile takes effect
        once it is written (a second one at once; the write is atomic)."""
        with _interrupts.deferred():
            payload = _files.model_payload(_files.saved_params(self.p), self.itemidmap.index, self.item_support,
                                           lambda: _graph.weight_arrays(self.weights))
            _files.write_checkpoint(self.options.checkpoint, payload, epochs_done, self.fingerprint, epoch_stats,
                                    self.streams, self.opt_states)

    def restore_checkpoint(self):
        """Continue from the checkpoint that fit_options read and __init__ checked; returns (finished epochs,
        their statistics)."""
        return _checkpoint.restore(self.options.saved, self.weights, self.opt_states, self.streams)


def epoch_line(stats):
    """The original's line for a finished epoch (printed once its checkpoint, if any, is written)."""
    secs = stats['seconds']
    return (f'Epoch{stats["epoch"]} --> loss: {stats["loss"]:.6f} \t({secs:.2f}s) \t'
            f'[{stats["steps"] / secs:.2f} mb/s | {stats["events"] / secs:.0f} e/s]')
