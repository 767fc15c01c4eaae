"""Random numbers of training and evaluation: the negative-sampling distribution, the two negative samplers
(store_type 'cpu': numpy's store on the host; 'gpu': drawn inside the compiled step), the dropout noise,
the tie-break noise of evaluation, and the set of streams that a checkpoint saves.
"""
import numpy as np
import pytensor
import pytensor.tensor as pt

if __package__:
    from . import _graph, _params, gpu_ops
else:
    import _graph, _params, gpu_ops  # noqa: E401


def sampling_cdf(support, alpha):
    """CDF of the negative-sampling distribution, probability ~ support ** alpha (float64, last entry 1)."""
    weights = support.astype(np.float64) ** alpha
    cdf = np.cumsum(weights) / weights.sum()
    cdf[-1] = 1.0
    return cdf


class GraphSampler:
    """store_type='gpu': the negatives (gpu_ops.SampleItems) and the dropout noise (gpu_ops.HashUniforms)
    are drawn inside the compiled step from (seed, step number); the host only numbers the steps (one
    counter over all epochs, as the original's store pointer, so a resumed run continues the same draws).

    The graph reads shared variables (`variables`, so a compiled step can take another run's values): the seed;
    with negatives the CDF, its guide (gpu_ops.cdf_guide; `levels`, its search steps, is part of the graph)
    and the draw numbers 0 .. n_sample-1 (their number is the number of negatives)."""
    kind = 'gpu'
    NAMES = ('seed_var', 'cdf_var', 'guide_var', 'numbers_var')

    def __init__(self, rng, support, alpha, n_sample):
        self.seed, self.step = rng.integers(2 ** 32, dtype=np.uint32), 0
        self.seed_var = pytensor.shared(self.seed, name='sample_seed')
        self.cdf_var = self.guide_var = self.numbers_var = self.levels = None
        if n_sample > 0:
            print('Negative samples are drawn inside the training step (type=GPU)')
            cdf = sampling_cdf(support, alpha).astype(_graph.FLOAT)
            guide, self.levels = gpu_ops.cdf_guide(cdf)
            self.cdf_var = pytensor.shared(cdf, name='cdf', shape=(None,))
            self.guide_var = pytensor.shared(guide, name='cdf_guide', shape=(None,))
            self.numbers_var = pytensor.shared(np.arange(n_sample, dtype=np.int32), name='draw_numbers', shape=(None,))

    def negatives(self, step):
        """The symbolic negatives of step number `step` (a uint32 scalar)."""
        return gpu_ops.SampleItems(self.levels)(self.cdf_var, self.guide_var, self.seed_var, step, self.numbers_var)

    @property
    def variables(self):
        """The shared variables the graph reads (None where there are no negatives), in NAMES' order."""
        return [getattr(self, name) for name in self.NAMES]

    def adopt(self, variables):
        """Draw through another sampler's shared variables (a compiled step's): they take this one's values."""
        for name, var in zip(self.NAMES, variables):
            if var is not None:
                var.set_value(getattr(self, name).get_value(borrow=True))
            setattr(self, name, var)

    def inputs(self, targets):
        """The step's target and sample inputs: targets and the step number."""
        self.step += 1
        return targets, np.uint32((self.step - 1) % 2 ** 32)

    def get_state(self):
        return {'kind': self.kind, 'step': self.step}, {}

    def set_state(self, header, z):
        self.step = header['step']


class NegativeSampler:
    """store_type='cpu': shared negative samples, item indices drawn with numpy with probability
    ~ support ** alpha, served one row of n_sample per step from a store of `store_size // n_sample` rows
    that is regenerated when used up (or drawn every step without a store).

    rng: a numpy Generator (this project's stream), or the legacy RandomState that drew the initial weights
    (rng='original'): then the draws are the original's, choice(n_items, size) for alpha = 0, else
    searchsorted(cdf, random_sample(size)), and that RandomState's state is saved by TrainingStreams."""
    kind = 'cpu'

    def __init__(self, support, alpha, n_sample, store_size, rng):
        self.n_sample, self.rng, self.n_items, self.store_size = n_sample, rng, len(support), store_size
        self.cdf = sampling_cdf(support, alpha)
        self.uniform = alpha == 0
        self.guide, _ = gpu_ops.cdf_guide(self.cdf)   # the search for u starts at its bucket's entry
        self.rows = store_size // n_sample
        if self.rows <= 1:
            print('No example store was used')
            self.rows = 0
        else:
            self.store = self._draw(self.rows)
            print(f'Created sample store with {self.rows} batches of samples (type=CPU)')
        self.pos = 0

    def _draw(self, n_rows):
        size = n_rows * self.n_sample
        legacy = isinstance(self.rng, np.random.RandomState)
        if self.uniform:
            draw = (self.rng.choice(self.n_items, size) if legacy
                    else self.rng.integers(self.n_items, size=size, dtype=np.int32))
        else:
            draw = self.search(self.rng.random_sample(size) if legacy else self.rng.random(size))
        return draw.astype(np.int32, copy=False).reshape(n_rows, self.n_sample)

    def search(self, u):
        """np.searchsorted(cdf, u): the smallest i with cdf[i] >= u, for every u in [0, 1)."""
        return gpu_ops.numba_guided_search()(self.cdf, self.guide, u)

    def inputs(self, targets):
        """The step's target and sample inputs: the targets followed by the next n_sample negatives."""
        return (np.concatenate([targets, self.next()]),)

    def get_state(self):
        shared = isinstance(self.rng, np.random.RandomState)   # saved with the weights' RandomState
        state = {'kind': self.kind, 'generator': None if shared else self.rng.bit_generator.state,
                 'pos': self.pos, 'rows': self.rows, 'store_size': self.store_size}   # (the size: for messages)
        return state, ({'sampler_store': self.store} if self.rows else {})

    def set_state(self, header, z):
        if header['generator'] is not None:
            self.rng.bit_generator.state = header['generator']
        self.pos = header['pos']
        if self.rows:
            self.store = z['sampler_store']

    def next(self):
        if self.rows == 0:
            return self._draw(1)[0]
        if self.pos == self.rows:
            self.store = self._draw(self.rows)
            self.pos = 0
        self.pos += 1
        return self.store[self.pos - 1]


def new_sampler(p, store_type, sample_store, support, rng):
    """The sampler of a training run: a GraphSampler for store_type 'gpu' (also without negatives: it numbers
    the steps for the dropout noise), a NegativeSampler for 'cpu', None for 'cpu' without negatives.
    rng='original': the host negatives continue `rng`, the RandomState of the initial weights (as in the
    original); otherwise they come from this project's own generator."""
    if store_type == 'gpu':
        return GraphSampler(np.random.default_rng([p.seed, 1]), support, p.sample_alpha, p.n_sample)
    if p.n_sample > 0:
        return NegativeSampler(support, p.sample_alpha, p.n_sample, sample_store,
                               rng if p.rng == 'original' else np.random.default_rng([p.seed, 1]))
    return None


class RandomChain:
    """A seeded shared random generator whose draws are chained within one graph; `updates` advances it."""

    def __init__(self, seed):
        self.shared = pt.random.shared_rng(seed=seed, name='rng')
        self.current = self.shared

    def uniform(self, shape):
        self.current, u = self.current.uniform(size=shape, dtype=_graph.FLOAT)
        return u

    @property
    def updates(self):
        return [(self.shared, self.current)] if self.current is not self.shared else []


class NoiseInputs:
    """Uniform noise for the dropout masks (M x width each). By default graph inputs that the training loop
    fills from a seeded numpy Generator (on Numba much cheaper than PyTensor's in-graph generator); after
    hash_with(seed, step), drawn inside the graph by gpu_ops.HashUniforms per session slot (store_type='gpu':
    nothing to generate or send per step). step_values() gives the loop's values for `inputs`."""

    def __init__(self):
        self.inputs, self.widths = [], []
        self.hashed = None

    def hash_with(self, seed, step, rows=None):
        """Draw in the graph from (seed, step). rows: the number of rows of fixed-width steps (symbolic), whose
        slot is the row; per-step graphs (rows None) take the active slots' ids as an input, so both give a
        slot the same noise."""
        slots = pt.tensor('slots', dtype='int32', shape=(None,)) if rows is None else pt.arange(rows, dtype='int32')
        self.hashed = (seed, step, slots, rows is None)

    def uniform(self, width):
        """Uniform noise (M x width) for one dropout mask."""
        self.widths.append(width)
        if self.hashed is not None:
            seed, step, slots, slots_input = self.hashed
            if slots_input and not self.inputs:
                self.inputs.append(slots)
            return gpu_ops.HashUniforms(width, len(self.widths))(seed, step, slots)
        self.inputs.append(pt.tensor(f'U{len(self.inputs)}', dtype=_graph.FLOAT, shape=(None, None)))
        return self.inputs[-1]

    def step_values(self, rng, active, width=None):
        """Values of `inputs` for one step whose active slots are `active` (ascending slot ids); width: the
        number of rows of a fixed-width step (the compiled step may serve other widths: dynamic shapes)."""
        if self.hashed is not None:
            return [active.astype(np.int32)] if self.inputs else []
        if width is None or len(active) == width:   # the active rows as they come
            return [rng.random((len(active), w), dtype=np.float32) for w in self.widths]
        values = []
        for w in self.widths:   # fixed width: the same draws, in the active slots' rows
            u = np.zeros((width, w), dtype=_graph.FLOAT)
            u[active] = rng.random((len(active), w), dtype=np.float32)
            values.append(u)
        return values


class TrainingStreams:
    """The random streams of a training run, saved and restored by checkpoints: the RandomState of the
    initial weights and the session shuffling, the negative sampler (generator, store, position) and the
    generator of the dropout noise."""

    def __init__(self, rng, sampler, noise_rng):
        self.rng, self.sampler, self.noise_rng = rng, sampler, noise_rng

    def get_state(self):
        kind, keys, pos, has_gauss, gauss = self.rng.get_state()
        header = {'rng': [kind, int(pos), int(has_gauss), float(gauss)],
                  'noise': self.noise_rng.bit_generator.state}
        arrays = {'rng_keys': keys}
        if self.sampler is not None:
            header['sampler'], arrays_ = self.sampler.get_state()
            arrays.update(arrays_)
        return header, arrays

    def set_state(self, header, z):
        kind, pos, has_gauss, gauss = header['rng']
        self.rng.set_state((kind, z['rng_keys'], pos, has_gauss, gauss))
        self.noise_rng.bit_generator.state = header['noise']
        if self.sampler is not None:
            made_with = header['sampler'].get('kind', 'cpu')   # checkpoints from before store types: cpu
            if made_with != self.sampler.kind:
                raise _params.GRU4RecError(f'The checkpoint was made with store_type={made_with!r}; resume with '
                                           f'the same store type (this run has {self.sampler.kind!r})')
            self.sampler.set_state(header['sampler'], z)
