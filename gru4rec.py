"""GRU4Rec: session-based recommendations with recurrent neural networks, on PyTensor.

An independent re-implementation of the original Theano GRU4Rec (Hidasi et al., ICLR 2016;
Hidasi & Karatzoglou, CIKM 2018) from its behavioural description. This module is the public face: the
GRU4Rec class (parameters, fit, prediction, save/load) and the names users import from it. The work is
done in modules named after what they hold:

  _params.py    parameters: defaults, conversion from strings, checks; GRU4RecError
  _graph.py     activations, losses, weights, GRU layers, the training and prediction graphs
  _optim.py     optimiser updates (dense graphs; item rows through gpu_ops' sparse row update)
  _hyper.py     the continuous hyper-parameters as runtime inputs (one compiled step per structure)
  _batches.py   session-parallel minibatches and the fixed-width packer of training and evaluation
  _sampling.py  negative samplers, dropout and tie-break noise, the random streams of a run
  _training.py  fit's checks, memory estimate, compiled training step, the epoch loops
  _files.py     atomic writes, the safe model format, plain-data pickles, checkpoints
  _checkpoint.py  a checkpoint checked whole before resuming; _item_ids.py  the one rule for item IDs
  _devices.py   device names, the device -> backend policy, free memory, thread counts
  evaluation.py recall/MRR: rank graphs, tie modes, candidate sets, evaluation loops
  custom_opt.py compile modes and rewrites; gpu_ops.py the custom Ops

GRU4Rec follows scikit-learn's conventions: the constructor stores its arguments as given, fit and
set_params check them, and what fit learns has a trailing underscore (weights_, itemidmap_, n_items_,
item_support_, epoch_stats_, error_during_train_; the names without underscore are read-only aliases).
"""
if __name__ == '__main__':   # `python -m gru4rec` in a checkout: the command line (before numerics are imported)
    import sys
    import run
    sys.exit(run.main())

from collections import OrderedDict

import numpy as np
import pandas as pd
import pytensor
import pytensor.tensor as pt

if __package__:
    from . import _batches, _devices, _files, _graph, _optim, _params, _sampling, _training, custom_opt, evaluation
    from . import _item_ids
else:
    import _batches, _devices, _files, _graph, _optim, _params, _sampling, _training, custom_opt, evaluation  # noqa: E401
    import _item_ids

# The names that gru4rec.py held when it was one module, re-exported from their homes (users and tests import them).
GRU4RecError, GRU4RecWarning, DEFAULTS, DEFAULT_ADAPT_PARAMS, LOSSES, OPTIMISERS, RNGS = (
    _params.GRU4RecError, _params.GRU4RecWarning, _params.DEFAULTS, _params.DEFAULT_ADAPT_PARAMS, _params.LOSSES, _params.OPTIMISERS, _params.RNGS)
FLOAT, LOG_EPS, loss_sum, parse_activation = _graph.FLOAT, _graph.LOG_EPS, _graph.loss_sum, _graph.parse_activation
EPS = _optim.EPS
session_offsets, session_parallel_batches, progress = (
    _batches.session_offsets, _batches.session_parallel_batches, _batches.progress)
sampling_cdf, GraphSampler, NegativeSampler, RandomChain, NoiseInputs, TrainingStreams = (
    _sampling.sampling_cdf, _sampling.GraphSampler, _sampling.NegativeSampler, _sampling.RandomChain,
    _sampling.NoiseInputs, _sampling.TrainingStreams)
MODEL_FORMAT, MODEL_VERSION, CHECKPOINT_NAME, atomic_write = (
    _files.MODEL_FORMAT, _files.MODEL_VERSION, _files.CHECKPOINT_NAME, _files.atomic_write)
available_memory = _devices.available_memory
evaluate, evaluate_gpu = evaluation.evaluate, evaluation.evaluate_gpu
__all__ = ['GRU4Rec', 'GRU4RecError', 'GRU4RecWarning', 'DEFAULTS', 'DEFAULT_ADAPT_PARAMS', 'LOSSES', 'OPTIMISERS', 'RNGS', 'FLOAT',
           'LOG_EPS', 'EPS', 'loss_sum', 'parse_activation', 'session_offsets', 'session_parallel_batches', 'progress',
           'sampling_cdf', 'GraphSampler', 'NegativeSampler', 'RandomChain', 'NoiseInputs', 'TrainingStreams',
           'MODEL_FORMAT', 'MODEL_VERSION', 'CHECKPOINT_NAME', 'atomic_write', 'available_memory', 'evaluate',
           'evaluate_gpu']


class GRU4Rec:
    """GRU4Rec: a recurrent next-item recommender trained with session-parallel mini-batches.

    Parameters (defaults are the original's code defaults)
    ----------
    loss : 'bpr-max' | 'cross-entropy' | 'xe_logit' | 'bpr' | 'top1' | 'top1-max'. Default 'bpr-max'.
    final_act : activation of the scores: 'linear' (default), 'relu', 'tanh', 'leaky-X', 'elu-X', 'selu-X-Y',
        'softmax' (use with cross-entropy), 'softmax_logit' (use with xe_logit).
    hidden_act : activation of the GRU candidate state: 'tanh' (default), 'relu', 'linear', 'leaky-X', 'elu-X', 'selu-X-Y'.
    layers : units per GRU layer, e.g. [100] (default) or [100, 100]; the string '100/100' is accepted.
    n_epochs : training epochs (10). batch_size : parallel session slots, also the cost divisor (32).
    dropout_p_hidden : dropout on each GRU layer's output, which is also the carried state (0.0).
    dropout_p_embed : dropout on the input embedding, separate/shared embedding modes only (0.0).
    learning_rate : 0.1 (forced to 1.0 with adadelta). momentum : classical (heavy-ball) momentum (0.0).
    lmbd : L2 weight decay, applied outside the adaptive scaling (0.0).
    embedding : 0 = one-hot input (default); N > 0 = separate input embedding of size N; 'layersize' = layers[0].
    n_sample : shared negative samples per minibatch besides the in-batch targets (2048).
    sample_alpha : negatives are drawn with probability ~ support ** sample_alpha (0.75).
    smoothing : label smoothing for cross-entropy/xe_logit (0.0).
    constrained_embedding : the output item matrix is also the input embedding (False).
    adapt : 'adagrad' (default), 'rmsprop', 'adadelta', 'adam' (textbook Adam), 'adam_legacy'
        (the original's variant, see README), 'sgd' (also None).
    adapt_params : decay rates; [] uses rmsprop [0.9], adadelta [0.95], adam [0.9, 0.999].
    grad_cap : if > 0, rescale all gradients when their global norm reaches it (0.0).
    bpreg : score regularisation of bpr-max (1.0). logq : logQ correction strength, any loss (0.0).
    sigma : init width; 0 = sqrt(6 / (fan_in + fan_out)) per block (0.0). init_as_normal : N(0, sigma) init (False).
    train_random_order : shuffle sessions every epoch (False). time_sort : sessions by start time (True).
    reset_after : apply the reset gate after the recurrent product, r * (h Wh), as cuDNN/PyTorch GRUs do,
        instead of the original's (r * h) Wh (False).
    merge_repeated : an item that occurs several times in one minibatch gets one optimiser step with its
        summed gradient, as PyTorch's sparse-gradient optimisers do, instead of the original's step per
        occurrence (False). See README "Fidelity" for both.
    session_key, item_key, time_key : column names ('SessionId', 'ItemId', 'Time').
    seed : seeds weight init, negative sampling, dropout and shuffling at every fit (42).
    rng : 'default' draws the negative samples and dropout noise from this project's own seeded generators;
        'original' draws the negatives (store_type='cpu' only) from the same RandomState(seed) as the initial
        weights and the session shuffling, in the original's order, so that a run without dropout can be
        compared step by step with the original's (benchmarks/compare_original_trace.py).
    backend : 'numba' (CPU default), 'jax' or 'python' (slow reference, fast to compile); None = 'jax' when
        device is a GPU, else 'numba'.
    device : where training and prediction run: None (the backend's default device), 'cpu', 'cuda' or
        'cuda:N' (JAX backend; 'gpu', 'cudaN' also accepted). Not saved with the model: a runtime choice.

    Parameters are stored as given; fit, set_params, savemodel and prediction convert and check them.
    Attributes learned by fit (and loadmodel): itemidmap_ (pandas Series: item ID -> item index), n_items_,
    item_support_ (training events per item), weights_ (name -> shared variable; get_weights() for arrays),
    epoch_stats_ (per epoch: loss, seconds, steps, events), error_during_train_, error_epoch_, error_step_
    (a NaN loss stopped training), step_costs_ and step_sizes_ (fit(log_steps=True)).
    """

    def __init__(self, loss='bpr-max', final_act='linear', hidden_act='tanh', layers=(100,), n_epochs=10,
                 batch_size=32, dropout_p_hidden=0.0, dropout_p_embed=0.0, learning_rate=0.1, momentum=0.0,
                 lmbd=0.0, embedding=0, n_sample=2048, sample_alpha=0.75, smoothing=0.0,
                 constrained_embedding=False, adapt='adagrad', adapt_params=(), grad_cap=0.0, bpreg=1.0,
                 logq=0.0, sigma=0.0, init_as_normal=False, train_random_order=False, time_sort=True,
                 reset_after=False, merge_repeated=False, session_key='SessionId', item_key='ItemId', time_key='Time',
                 seed=42, rng='default', backend=None, device=None):
        values = locals()   # stored as given (scikit-learn's clone relies on it); checked by fit and set_params
        for name in _params.DEFAULTS:
            setattr(self, name, values[name])

    # --- parameters ------------------------------------------------------------------------
    def get_params(self, deep=True):
        """The constructor parameters as a dict (scikit-learn style; there are no nested estimators, so deep
        changes nothing). The values are the stored objects themselves, as scikit-learn's clone expects."""
        return OrderedDict((name, getattr(self, name)) for name in _params.DEFAULTS)

    def set_params(self, **kvargs):
        """Set parameters; string values are coerced to the parameter's type (lists with '/', booleans
        True/False/1/0, embedding='layersize'). Prints one 'SET ...' line per parameter like the original.
        Nothing changes if any value is invalid (all parameters are checked together). Returns self."""
        if not kvargs:
            return self
        for k in kvargs:
            if k not in _params.DEFAULTS:
                raise GRU4RecError(f'Unknown parameter: {k} (valid parameters: {", ".join(_params.DEFAULTS)})')
        new = {k: _params.coerce(k, v) for k, v in kvargs.items()}
        p = _params.checked({**self.get_params(), **new})
        if new.get('embedding') == 'layersize':
            new['embedding'] = p.embedding
        maxk = max(len(k) for k in kvargs)
        maxv = max(len(str(v)) for v in kvargs.values())
        for k in kvargs:
            setattr(self, k, new[k])
            self._print_set(k, new[k], maxk, maxv)
        if kvargs.get('embedding') == 'layersize' or str(kvargs.get('embedding')).strip() == 'layersize':
            self._print_set('embedding', self.embedding, maxk, maxv)
        self._compiled = {}
        return self

    @staticmethod
    def _print_set(k, v, maxk, maxv):
        print('SET   ' + k + ' ' * (maxk - len(k) + 3) + 'TO   ' + str(v) + ' ' * (maxv - len(str(v)) + 3)
              + '(type: ' + str(type(v)) + ')')

    def _checked_params(self):
        """The parameters converted and checked (_params.Params); GRU4RecError names the first bad one."""
        return _params.checked(self.get_params())

    @property
    def effective_adapt_params(self):
        """adapt_params with the per-optimiser defaults filled in."""
        return self._checked_params().effective_adapt_params

    @property
    def embedding_mode(self):
        """'shared' (constrained_embedding), 'separate' (embedding > 0) or 'onehot'."""
        return self._checked_params().embedding_mode

    @property
    def effective_backend(self):
        """The backend in use: the backend parameter, or its default for the device."""
        return self._checked_params().backend_in_use

    def compile_mode(self):
        """The PyTensor compile mode of this model's backend and device; GRU4RecError if the device is not
        there (e.g. a GPU that JAX does not see)."""
        try:
            return custom_opt.compile_mode(self.effective_backend, device=self._checked_params().device)
        except ValueError as e:
            raise GRU4RecError(str(e)) from None

    def cached_function(self, key, build):
        """build(), compiled once per key until fit, set_params or loadmodel changes what it was built from
        (prediction and evaluation.py's rank functions)."""
        cache = self.__dict__.setdefault('_compiled', {})
        if key not in cache:
            cache[key] = build()
        return cache[key]

    # --- training --------------------------------------------------------------------------
    def fit(self, data, sample_store=10000000, store_type=None, checkpoint_dir=None, resume=False,
            epoch_callback=None, chunk=None, log_steps=False):
        """Train on a DataFrame with session, item and time columns (the frame is not modified).

        checkpoint_dir: if given, the full training state (weights, optimiser states, random streams, sample
        store) is saved there after every epoch, atomically. resume=True continues from that checkpoint
        (same parameters, data and sample-store rows required; checked whole before anything compiles, see
        _checkpoint) and ends with the same model as an uninterrupted run.

        store_type: where the negative samples come from. 'cpu': a store of `sample_store` item indices
        drawn with numpy on the host, one row of n_sample per step, regenerated when used up (0 = draw every
        step). 'gpu': drawn inside the compiled step by gpu_ops.SampleItems from a hash of (seed, step), as
        are the dropout masks (gpu_ops.HashUniforms), so nothing is generated or sent by the host per step
        (sample_store is then unused). Same distribution, different random numbers. None: the backend's
        default, custom_opt.STORE_BY_DEFAULT ('cpu' on Numba: its host store is faster than the in-graph
        draw; 'gpu' on JAX).

        Returns self. A NaN or infinite loss stops training with a printed message naming the epoch and
        step; error_during_train_ is then True and the model refuses to predict or save.

        epoch_callback: called as epoch_callback(model, stats) after every finished epoch (after its
        checkpoint), with stats the epoch's entry of epoch_stats_; the model can predict and be evaluated
        there. If it returns True, training ends after that epoch (early stopping, pruning).

        chunk: minibatches per compiled call. 0 runs one call per minibatch, with the batch shrinking as
        sessions run out (as the original). K > 0 prepares K minibatches on the host and runs them in one
        scan, at a fixed width with masked inactive slots (same losses up to float rounding). None: the
        backend's default, custom_opt.CHUNK_BY_DEFAULT (100 on Numba, where it is faster, and on JAX, which
        needs the fixed shapes; 0 on the python reference backend).

        log_steps: if True, the cost of every training step (the minibatch loss / batch_size, as the original's
        training function returns it) and its number of active sessions are kept in step_costs_ and
        step_sizes_ (arrays over all epochs of this fit), to compare runs step by step."""
        p = self._checked_params()
        self.compile_mode()   # checks the device (JAX must see it) before anything changes
        options = _training.fit_options(p, sample_store, store_type, checkpoint_dir, resume, chunk)
        data = _training.training_frame(p, data)
        # nothing of the model changes before this point: a rejected input leaves it as it was
        self._compiled, self._pred_state = {}, None
        self.error_during_train_, self.error_epoch_, self.error_step_ = False, None, None
        self.epoch_stats_ = []
        for stale in ('step_costs_', 'step_sizes_'):   # an earlier fit's step log
            self.__dict__.pop(stale, None)
        run = _training.TrainingRun(p, options, data, self.compile_mode, log_steps)
        self.itemidmap_, self.n_items_, self.item_support_ = run.itemidmap, run.n_items, run.item_support
        self.weights_ = run.weights   # trained in place by the compiled step
        first_epoch = 0
        if options.resume:
            first_epoch, self.epoch_stats_ = run.restore_checkpoint()
            if first_epoch >= p.n_epochs:
                print(f'The checkpoint holds all {p.n_epochs} epochs: nothing left to train')
        try:
            for epoch in range(first_epoch, p.n_epochs):
                stats, bad_step = run.epoch(epoch, unpad_after=bool(options.checkpoint) or epoch_callback is not None)
                if bad_step:
                    return self._diverged(epoch, bad_step)
                self.epoch_stats_.append(stats)
                if options.checkpoint:   # before the epoch's line: a Ctrl-C after the line keeps the epoch
                    try:
                        run.save_checkpoint(epoch + 1, self.epoch_stats_)
                    except Exception:   # (not a Ctrl-C) the epoch is trained and in the model all the same
                        print(_training.epoch_line(stats))
                        raise
                print(_training.epoch_line(stats))
                if epoch_callback is not None and epoch_callback(self, stats):
                    break
        finally:
            run.pad_items(False)   # no-op after per-step training
            if log_steps:
                self.step_costs_, self.step_sizes_ = run.step_log_arrays()
            # the compiled step goes back to the process's pool (the next fit of this structure reuses it); the
            # model keeps the trained arrays, and drops functions compiled on the step's variables
            self.weights_, self._compiled = run.release(), {}
        return self

    def _diverged(self, epoch, step):
        print(f'Epoch {epoch + 1}: NaN error! (step {step}); training stopped')
        if hint := self.nan_hint():
            print(f'Hint: {hint}')
        self.error_during_train_ = True
        self.error_epoch_, self.error_step_ = epoch + 1, step
        return self

    def nan_hint(self):
        """A likely cause of a NaN loss that the parameters show, or ''."""
        p = self._checked_params()
        if p.loss == 'cross-entropy' and p.final_act != 'softmax':
            return (f"loss='cross-entropy' takes the log of the final activation, which final_act="
                    f"'{p.final_act}' can make negative: use final_act='softmax' (or loss='xe_logit' with "
                    f"final_act='softmax_logit')")
        return ''

    def memory_estimate(self, n_items, sample_store=10000000):
        """Bytes that training allocates for the item-indexed weights, their optimiser states and the
        negative-sample store, by part. The dense GRU weights and per-step buffers are comparatively tiny."""
        return _training.memory_estimate(self._checked_params(), n_items, sample_store)

    # --- learned state -----------------------------------------------------------------------
    def check_trained(self):
        """GRU4RecError unless the model was trained (or loaded) and training did not stop with a NaN loss."""
        if not hasattr(self, 'weights_'):
            raise GRU4RecError('The model is not trained: call fit() or loadmodel() first')
        if self.error_during_train:
            raise GRU4RecError(f'Training stopped with a NaN loss in epoch {self.error_epoch_}; the model cannot predict')

    def get_weights(self):
        """The model weights as a dict of numpy arrays (copies)."""
        return _graph.weight_arrays(self.weights_)

    # Read-only aliases: the names of the learned state before it followed scikit-learn's trailing underscore
    itemidmap = property(lambda self: self.itemidmap_, doc='alias of itemidmap_')
    n_items = property(lambda self: self.n_items_, doc='alias of n_items_')
    item_support = property(lambda self: self.item_support_, doc='alias of item_support_')
    weights = property(lambda self: self.weights_, doc='alias of weights_')
    error_epoch = property(lambda self: self.error_epoch_, doc='alias of error_epoch_')
    error_step = property(lambda self: self.error_step_, doc='alias of error_step_')
    error_during_train = property(lambda self: getattr(self, 'error_during_train_', False),
                                  doc='alias of error_during_train_ (False before fit)')
    adapt_params_ = property(lambda self: self.effective_adapt_params, doc='alias of effective_adapt_params')
    itemidmap_index = property(lambda self: self.itemidmap_.index, doc='the training item IDs in index order')

    # --- prediction --------------------------------------------------------------------------
    def predict_next_batch(self, session_ids, input_item_ids, predict_for_item_ids=None, batch=100):
        """Score the next item for `batch` parallel session slots, keeping each slot's hidden state.

        session_ids / input_item_ids: one entry per slot (length `batch`). A slot whose session ID differs
        from the previous call starts from a zero state. Returns a DataFrame of activated scores (softmax
        for softmax_logit): rows = all training items (or predict_for_item_ids), columns = slots 0..batch-1."""
        self.check_trained()
        p = self._checked_params()
        session_ids = np.asarray(session_ids)
        items = np.asarray(input_item_ids)
        if session_ids.ndim != 1 or items.ndim != 1:
            raise GRU4RecError('session_ids and input_item_ids must be lists with one entry per slot (e.g. [sid], '
                               '[item], batch=1); for the top items of one session use model.recommend(clicks)')
        if len(session_ids) != batch or len(items) != batch:
            raise GRU4RecError(f'session_ids and input_item_ids must have length batch={batch}, got '
                               f'{len(session_ids)} and {len(items)}: pass batch={len(session_ids)} (one slot per '
                               'session), or use model.recommend / model.live_sessions() for live sessions')
        ids = self.itemidmap_.index   # IDs given as another type are converted to the training IDs' (_item_ids)
        idx = _item_ids.item_rows(ids, list(input_item_ids), 'input_item_ids')
        if (idx < 0).any():
            raise GRU4RecError(f'Unknown item ID(s) in input_item_ids: {_item_ids.shown(items[idx < 0])}')
        cand = None
        if predict_for_item_ids is not None:
            wanted = list(np.asarray(predict_for_item_ids, dtype=object).ravel())
            cand = _item_ids.item_rows(ids, wanted, 'predict_for_item_ids')
            if (cand < 0).any():
                unknown = [v for v, c in zip(wanted, cand) if c < 0]
                raise GRU4RecError(f'Unknown item ID(s) in predict_for_item_ids: {_item_ids.shown(unknown)}')
        state = getattr(self, '_pred_state', None)
        if state is None or state['batch'] != batch:
            state = self._pred_state = {'batch': batch, 'session': np.full(batch, -1, dtype=object),
                                        'H': [np.zeros((batch, u), dtype=FLOAT) for u in p.layers]}
        changed = session_ids != state['session']
        for h in state['H']:
            h[changed] = 0
        state['session'] = session_ids.copy()

        def build(with_c):
            X = pt.ivector('X')
            H = [pt.fmatrix(f'H{i}') for i in range(len(p.layers))]
            C = pt.ivector('C') if with_c else None
            scores, new_H = self.prediction_graph(X, H, C)
            inputs = [X] + ([C] if with_c else []) + H
            return pytensor.function(inputs, [scores] + new_H, mode=self.compile_mode())
        fn = self.cached_function(('predict', cand is not None), lambda: build(cand is not None))
        args = [idx.astype(np.int32)] + ([cand.astype(np.int32)] if cand is not None else []) + state['H']
        scores, *H = fn(*args)
        state['H'] = [np.array(h) for h in H]   # host copies: the next call resets slots in place
        index = ids if cand is None else ids[cand]   # (the training IDs' type)
        return pd.DataFrame(data=np.asarray(scores).T, index=index)

    def prediction_graph(self, X, H, C=None):
        """Symbolic prediction step (no dropout, no reset, no logQ) for item indices X (M) and states H (list of
        M x L_i): (activated scores, M x n_items or M x len(C) for item indices C; the new states)."""
        return _graph.prediction_step(self._checked_params(), self.weights_, X, H, C)

    # --- recommendations for live sessions (recommend.py) -------------------------------------
    def recommend(self, clicks, k=20, exclude_seen=False, candidates=None):
        """Top-k next items of one session after its clicks (item IDs, oldest first): recommend.recommend."""
        return _recommend_module().recommend(self, clicks, k=k, exclude_seen=exclude_seen, candidates=candidates)

    def recommend_batch(self, events, k=20, **kwargs):
        """Top-k next items of many sessions at once, a tidy DataFrame: recommend.recommend_batch."""
        return _recommend_module().recommend_batch(self, events, k=k, **kwargs)

    def live_sessions(self, **kwargs):
        """A bounded store of live sessions (one click in, top-k out): recommend.LiveSessions."""
        return _recommend_module().LiveSessions(self, **kwargs)

    # --- persistence -----------------------------------------------------------------------
    def savemodel(self, fname):
        """Save the trained model atomically (temp file + rename: an interrupted save never leaves a broken
        file at `fname`). The format follows the extension: `.pickle`/`.pkl` write a pickle of plain data
        (compatibility); anything else (e.g. `model.gru4rec`) writes the safe format: a zip of arrays with a
        JSON header, which loads without unpickling anything. The device is not saved: it is the loading
        machine's choice. A missing folder is not created: that, like any failed write, is a GRU4RecError
        (caused by the OSError)."""
        self.check_trained()
        try:
            _files.write_model(fname, _files.saved_params(self._checked_params()), self.itemidmap_.index,
                               self.item_support_, self.get_weights)
        except OSError as e:
            raise GRU4RecError(f'Cannot write the model file {fname}: {e.strerror or e}') from e

    @classmethod
    def loadmodel(cls, fname, backend=None, device=None):
        """Load a model saved by savemodel, recognising the format by its content (see _files.read_model);
        backend (None: the saved one) and device (None: the backend's default) say where it runs."""
        state = _files.read_model(fname)
        params = dict(state['params'])
        if backend is not None:
            params['backend'] = backend
        params['device'] = device
        try:
            model = cls(**params)
            p = model._checked_params()
            ids = state['item_ids']
            expected = _graph.weight_shapes(p, len(ids))
            weights = state['weights']
            if list(weights) != list(expected) or any(np.shape(weights[k]) != v for k, v in expected.items()):
                raise GRU4RecError(f'{fname}: the stored weights do not fit the stored parameters')
        except (GRU4RecError, TypeError, KeyError, ValueError) as e:
            raise GRU4RecError(f'{fname} is not a consistent GRU4Rec model file: {e}') from None
        model.itemidmap_ = pd.Series(np.arange(len(ids), dtype=np.int32), index=ids, name='ItemIdx')
        model.n_items_ = len(ids)
        model.item_support_ = np.asarray(state['item_support'])
        model.weights_ = _graph.shared_weights(weights)
        return model


def _recommend_module():
    """recommend.py (the live-session API) imports this module, so it is imported on first use."""
    import importlib
    return importlib.import_module(('.' if __package__ else '') + 'recommend', __package__ or None)
