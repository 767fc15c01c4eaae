"""The compiled training step against the numpy re-computation in np_reference.py.

These graphs run on the 'python' backend (PyTensor FAST_COMPILE: numpy implementations, sub-second
compiles), so that many loss / activation / embedding / optimiser variants can be checked in CI.
test_backends.py checks that the Numba backend computes the same as this one."""
import numpy as np
import pytensor
import pytensor.tensor as pt
import pytest

import np_reference as ref
import _params
import _training
from gru4rec import GRU4Rec, loss_sum, parse_activation

LOSSES = ['cross-entropy', 'xe_logit', 'bpr', 'bpr-max', 'top1', 'top1-max']
FINAL_ACTS = ['linear', 'relu', 'tanh', 'leaky-0.1', 'elu-0.5', 'selu-1.05-1.67', 'softmax', 'softmax_logit']


@pytest.mark.parametrize('loss', LOSSES)
@pytest.mark.parametrize('final_act', FINAL_ACTS)
def test_loss_and_final_activation_match_numpy(loss, final_act):
    rng = np.random.RandomState(3)
    scores = (rng.randn(3, 7) * 2).astype('float32')      # M = 3 rows, K = 7 columns
    S = pt.fmatrix()
    f = pytensor.function([S], loss_sum(loss, parse_activation(final_act, final=True)(S), 0.0, 0.7), mode='FAST_COMPILE')
    expected = ref.loss_sum(loss, ref.act(final_act, scores.astype(np.float64)), 0.0, 0.7)
    np.testing.assert_allclose(f(scores), expected, rtol=2e-5, atol=1e-6, equal_nan=True)


@pytest.mark.parametrize('loss,final_act', [('cross-entropy', 'softmax'), ('xe_logit', 'softmax_logit')])
def test_label_smoothing_matches_numpy(loss, final_act):
    scores = np.random.RandomState(4).randn(4, 9).astype('float32')
    S = pt.fmatrix()
    f = pytensor.function([S], loss_sum(loss, parse_activation(final_act, final=True)(S), 0.2), mode='FAST_COMPILE')
    np.testing.assert_allclose(f(scores), ref.loss_sum(loss, ref.act(final_act, scores.astype(np.float64)), 0.2), rtol=2e-5)


def test_softmax_logit_is_negative_log_softmax():
    x = np.random.RandomState(0).randn(2, 5)
    np.testing.assert_allclose(ref.act('softmax_logit', x), -np.log(ref.act('softmax', x)), rtol=1e-12)


# --- the whole compiled step -----------------------------------------------------------------------

N_ITEMS = 7
# Repeated items on purpose: input 3 twice, target 2 twice, a negative equal to a target.
X = np.array([1, 3, 3, 0], dtype=np.int32)
Y = np.array([2, 2, 5, 1, 2, 6], dtype=np.int32)    # 4 targets + 2 shared negatives
R = np.array([0, 1, 0, 0], dtype=np.float32)


def tiny_model(mode='onehot', layers=(4,), **kw):
    params = dict(loss='bpr-max', final_act='elu-0.5', n_sample=2, batch_size=4, backend='python')
    params.update(kw)
    m = GRU4Rec(layers=list(layers), embedding=3 if mode == 'separate' else 0,
                constrained_embedding=mode == 'shared', **params)
    m.item_support_ = np.arange(1, N_ITEMS + 1) * 3
    m.weights_, _ = _training.initial_state(_params.checked(m.get_params()), m.item_support_, np.random.RandomState(0))
    rng = np.random.RandomState(1)   # non-zero biases so that their gradients are exercised
    for k, v in m.weights_.items():
        if k.startswith('Bh') or k == 'By':
            v.set_value((rng.randn(*v.get_value().shape) * 0.1).astype('float32'))
    return m


def compile_step(m):
    """The model's per-step training function (f, _training.StepGraph) on its weights, host negatives."""
    p = _params.checked(m.get_params())
    return _training.compile_per_step(p, m.weights_, _training.logq_vectors(p, m.item_support_), m.compile_mode)


def cfg_of(m, mode):
    return dict(mode=mode, layers=m.layers, dropout_p_embed=m.dropout_p_embed, dropout_p_hidden=m.dropout_p_hidden, hidden_act=m.hidden_act, final_act=m.final_act, loss=m.loss,
                smoothing=m.smoothing, bpreg=m.bpreg, logq=m.logq, sample_alpha=m.sample_alpha,
                batch_size=m.batch_size, adapt=m.adapt, adapt_params=list(m.adapt_params),
                learning_rate=m.learning_rate, momentum=m.momentum, lmbd=m.lmbd, grad_cap=m.grad_cap,
                reset_after=m.reset_after, merge_repeated=m.merge_repeated)


def states(m, seed=2):
    rng = np.random.RandomState(seed)
    return [(rng.randn(len(X), u) * 0.5).astype('float32') for u in m.layers]


def sparse_grads(mode, grads):
    src = {'onehot': 'Wx0', 'separate': 'E', 'shared': 'Wy'}[mode]
    if mode == 'shared':
        out = [('Wy', np.r_[X, Y], np.vstack([grads['in'], grads['out']]))]
    else:
        out = [(src, X, grads['in']), ('Wy', Y, grads['out'])]
    return out + [('By', Y, grads['by'])]


def reference_step(m, mode, opt, H, noise):
    """One step of the numpy reference on opt's current weights; returns (cost, reset states)."""
    cfg = cfg_of(m, mode)
    p = ref.gather(opt.w, mode, X, Y)
    H64 = [h.astype(np.float64) for h in H]
    cost, new_H, _ = ref.step_forward(p, cfg, X, Y, H64, m.item_support_, noise)
    grads = ref.numeric_grads(p, cfg, X, Y, H64, m.item_support_, noise)
    opt.step({k: g for k, g in grads.items() if k not in ('in', 'out', 'by')}, sparse_grads(mode, grads))
    return cost, [h * (1 - R)[:, None] for h in new_H]


def check_steps(m, mode, n_steps=1, rtol=2e-4, atol=2e-6):
    fn, step = compile_step(m)
    opt = ref.Optimiser(m.get_weights(), cfg_of(m, mode))
    H = states(m)
    rng = np.random.RandomState(5)
    for _ in range(n_steps):
        noise = [rng.rand(len(X), w).astype("float32") for w in step.noise.widths]
        cost, *H_new = fn(X, Y, R, *noise, *H)
        exp_cost, exp_H = reference_step(m, mode, opt, H, noise)
        np.testing.assert_allclose(cost, exp_cost, rtol=rtol, atol=atol)
        for a, b in zip(H_new, exp_H):
            np.testing.assert_allclose(a, b, rtol=rtol, atol=atol)
        for k, v in m.get_weights().items():
            np.testing.assert_allclose(v, opt.w[k], rtol=rtol, atol=atol, err_msg=k)
    return m


@pytest.mark.parametrize('mode', ['onehot', 'separate', 'shared'])
@pytest.mark.parametrize('loss,final_act', [('bpr-max', 'elu-0.5'), ('cross-entropy', 'softmax'),
                                            ('xe_logit', 'softmax_logit'), ('bpr', 'linear'),
                                            ('top1', 'tanh'), ('top1-max', 'leaky-0.2')])
def test_step_cost_states_and_sgd_gradients(mode, loss, final_act):
    """Cost and new hidden states equal the numpy forward pass; with plain SGD the weight change equals
    -lr times the finite-difference gradient, summed over repeated items."""
    check_steps(tiny_model(mode, loss=loss, final_act=final_act, adapt='sgd', learning_rate=0.5), mode)


def test_two_layers_logq_and_smoothing():
    m = tiny_model('shared', layers=(3, 4), loss='cross-entropy', final_act='softmax', logq=1.0, sample_alpha=0.5,
                   smoothing=0.1, adapt='sgd', learning_rate=0.5, hidden_act='relu')
    check_steps(m, 'shared')


@pytest.mark.parametrize('adapt', ['adagrad', 'rmsprop', 'adadelta', 'adam', 'adam_legacy', 'sgd'])
@pytest.mark.parametrize('momentum,lmbd', [(0.0, 0.0), (0.5, 0.01)])
def test_optimisers_with_repeated_items(adapt, momentum, lmbd):
    """Two steps, so that accumulators and velocities written in step 1 are read in step 2."""
    m = tiny_model('onehot', adapt=adapt, momentum=momentum, lmbd=lmbd, learning_rate=0.3)
    # Adam-type steps are ~g / |g| even for near-zero gradients, so float32 cancellation in a tiny gradient
    # can move a weight by up to ~1e-3 * lr against the float64 reference: allow that much absolutely.
    atol = 3e-4 if adapt.startswith('adam') else 2e-6
    check_steps(m, 'onehot', n_steps=2, atol=atol)


def test_optimiser_shared_embedding_momentum():
    check_steps(tiny_model('shared', adapt='adagrad', momentum=0.3, learning_rate=0.2), 'shared', n_steps=2)


@pytest.mark.parametrize('mode', ['separate', 'shared', 'onehot'])
def test_dropout_masks_from_noise_inputs(mode):
    """Dropout on the embedding (not in one-hot mode) and on every layer's output, which is also the carried
    state; the masks come from the noise inputs, and the gradient flows through the kept units only."""
    m = tiny_model(mode, layers=(3, 4), dropout_p_embed=0.3, dropout_p_hidden=0.25, adapt='sgd', learning_rate=0.5)
    assert compile_step(m)[1].noise.widths == ([3] if mode == 'separate' else [4] if mode == 'shared' else []) + [3, 4]
    check_steps(m, mode)


def test_grad_cap_rescales_every_gradient():
    m = tiny_model('separate', adapt='sgd', grad_cap=0.05, learning_rate=1.0)
    check_steps(m, 'separate')


def test_repeated_item_semantics_by_hand():
    """Adagrad + momentum on one row that occurs twice: increments and the accumulator add up, the velocity
    keeps one occurrence. Worked by hand with g1 = 1, g2 = 3, lr = 1, mu = 0.5 and zero states:
      each occurrence scaled from the old acc: 1 and 9 -> acc = 0 + 1 + 9 = 10 (as the original runs)
      ghat = 1/sqrt(1+eps), 3/sqrt(9+eps) ~ 1, 1;  v_occ = -1, -1 -> v = -1 (last);  W += -1 + -1 = -2."""
    opt = ref.Optimiser({'W': np.zeros((2, 1))}, dict(adapt='adagrad', learning_rate=1.0, momentum=0.5))
    opt.step({}, [('W', np.array([1, 1]), np.array([[1.0], [3.0]]))])
    np.testing.assert_allclose(opt.w['W'][1], [-2.0], rtol=1e-5)
    np.testing.assert_allclose(opt.state[('W', 'acc')][1], [10.0])
    np.testing.assert_allclose(opt.state[('W', 'vel')][1], [-1.0], rtol=1e-5)


@pytest.mark.parametrize('mode,adapt', [('shared', 'adagrad'), ('onehot', 'rmsprop'), ('separate', 'adam_legacy')])
def test_reset_after_and_merged_repeated_items(mode, adapt):
    """The two non-original switches against the numpy reference: r * (h Wh) in the GRU, and one optimiser
    step per distinct item with its summed gradient (X and Y above repeat items)."""
    m = tiny_model(mode, layers=(3, 4), reset_after=True, merge_repeated=True, adapt=adapt, momentum=0.3,
                   learning_rate=0.2)
    check_steps(m, mode, n_steps=2, atol=3e-4 if adapt.startswith('adam') else 2e-6)


def test_merged_repeated_item_by_hand():
    """As test_repeated_item_semantics_by_hand, merged: g = 1 + 3 = 4, acc = 16, ghat = 4 / sqrt(16 + eps) ~ 1,
    v = -1, W = -1 (one step, not two)."""
    opt = ref.Optimiser({'W': np.zeros((2, 1))}, dict(adapt='adagrad', learning_rate=1.0, momentum=0.5,
                                                       merge_repeated=True))
    opt.step({}, [('W', np.array([1, 1]), np.array([[1.0], [3.0]]))])
    np.testing.assert_allclose(opt.w['W'][1], [-1.0], rtol=1e-5)
    np.testing.assert_allclose(opt.state[('W', 'acc')][1], [16.0])


@pytest.mark.parametrize('name', ['elu-0.5', 'selu-1.0-0.5'])
def test_elu_passes_small_positive_scores_unchanged(name):
    """x if x >= 0: a positive score keeps all its bits (as written max(x, 0) + alpha - alpha, 1e-4 came back
    as 1.0000e-4 +- 3e-8, i.e. off by 3e-4 relative); the negative side equals alpha * (exp(x) - 1)."""
    x = pt.vector('x', dtype='float32')
    f = pytensor.function([x], parse_activation(name, final=True)(x), mode='FAST_COMPILE')
    v = np.float32([1e-4, 3e-7, 0.0, 2.5, -1e-3, -4.0])
    out = f(v)
    np.testing.assert_array_equal(out[:4], v[:4])
    np.testing.assert_allclose(out[4:], 0.5 * np.expm1(v[4:].astype(np.float64)), rtol=1e-4)
