"""A plain-numpy (float64) re-computation of GRU4Rec's step, losses and optimiser rules, written from the
behavioural contract, independent of the PyTensor graph. Tests compare the compiled model against it."""
import numpy as np


def sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def act(name, x):
    parts = name.split('-')
    if name == 'linear':
        return x
    if name == 'relu':
        return np.maximum(x, 0)
    if name == 'tanh':
        return np.tanh(x)
    if name == 'softmax':
        e = np.exp(x - x.max(axis=1, keepdims=True))
        return e / e.sum(axis=1, keepdims=True)
    if name == 'softmax_logit':
        x = x - x.max(axis=1, keepdims=True)
        return np.log(np.exp(x).sum(axis=1, keepdims=True)) - x
    a = [float(v) for v in parts[1:]]
    if parts[0] == 'leaky':
        return np.where(x >= 0, x, a[0] * x)
    if parts[0] == 'elu':
        return np.where(x >= 0, x, a[0] * (np.exp(x) - 1))
    if parts[0] == 'selu':
        return a[0] * np.where(x >= 0, x, a[1] * (np.exp(x) - 1))
    raise ValueError(name)


def softmax_neg(y):
    m, k = y.shape
    off = 1 - np.eye(m, k)
    x = y * off
    e = np.exp(x - x.max(axis=1, keepdims=True)) * off
    return e / e.sum(axis=1, keepdims=True)


def loss_sum(loss, y, smoothing=0.0, bpreg=1.0):
    with np.errstate(invalid='ignore', divide='ignore'):   # log of negative scores: NaN, as in the model
        return _loss_sum(loss, y, smoothing, bpreg)


def _loss_sum(loss, y, smoothing, bpreg):
    m, k = y.shape
    d = y[np.arange(m), np.arange(m)]
    if loss in ('cross-entropy', 'xe_logit'):
        nll = -np.log(y + 1e-24) if loss == 'cross-entropy' else y
        pos = -np.log(d + 1e-24) if loss == 'cross-entropy' else d
        return np.sum((1 - smoothing * k / (k - 1)) * pos + smoothing / (k - 1) * nll.sum(axis=1))
    if loss == 'bpr':
        return np.sum(-np.log(sigmoid(d[:, None] - y)))
    if loss == 'bpr-max':
        s = softmax_neg(y)
        return np.sum(-np.log((sigmoid(d[:, None] - y) * s).sum(axis=1) + 1e-24) + bpreg * (y ** 2 * s).sum(axis=1))
    if loss == 'top1':
        return np.sum(np.mean(sigmoid(y - d[:, None]) + sigmoid(y ** 2), axis=1) - sigmoid(d ** 2) / k)
    if loss == 'top1-max':
        s = softmax_neg(y)
        return np.sum(s * (sigmoid(y - d[:, None]) + sigmoid(y ** 2)))
    raise ValueError(loss)


# --- one training step on "gathered" parameters --------------------------------------------------
# p holds the dense weights (Wx{i}, Wh{i}, Wrz{i}, Bh{i}; no Wx0 in one-hot mode) and the gathered rows:
# 'in' (M x F embedding rows, or M x 3L_0 rows of Wx0 in one-hot mode), 'out' (K x L rows of Wy) and
# 'by' (K x 1 rows of By).

def gather(w, mode, X, Y):
    p = {k: v.astype(np.float64) for k, v in w.items() if k not in ('E', 'Wy', 'By') and not (mode == 'onehot' and k == 'Wx0')}
    src = {'onehot': 'Wx0', 'separate': 'E', 'shared': 'Wy'}[mode]
    p['in'] = w[src][X].astype(np.float64)
    p['out'] = w['Wy'][Y].astype(np.float64)
    p['by'] = w['By'][Y].astype(np.float64)
    return p


def step_forward(p, cfg, X, Y, H, support=None, noise=()):
    """Returns (cost, new states before reset, activated scores). noise: the uniform matrices of the
    dropout masks in graph order (embedding, then each layer); a unit is kept where noise < 1 - p."""
    layers, mode = cfg['layers'], cfg['mode']
    noise = list(noise)

    def dropout(x, rate):
        return x * (noise.pop(0) < 1 - rate) / (1 - rate) if rate > 0 else x
    x, new = p['in'], []
    if mode != 'onehot':
        x = dropout(x, cfg.get('dropout_p_embed', 0.0))
    for i, units in enumerate(layers):
        a = (x if (i == 0 and mode == 'onehot') else x @ p[f'Wx{i}']) + p[f'Bh{i}']
        h = H[i]
        rz = sigmoid(a[:, units:] + h @ p[f'Wrz{i}'])
        r, z = rz[:, :units], rz[:, units:]
        rec = r * (h @ p[f'Wh{i}']) if cfg.get('reset_after') else (r * h) @ p[f'Wh{i}']
        hc = act(cfg['hidden_act'], rec + a[:, :units])
        h = dropout((1 - z) * h + z * hc, cfg.get('dropout_p_hidden', 0.0))
        new.append(h)
        x = h
    scores = x @ p['out'].T + p['by'].T
    if cfg.get('logq'):
        m = len(X)
        q = np.r_[support[Y[:m]], support[Y[m:]] ** cfg['sample_alpha']].astype(np.float64)
        scores = scores - cfg['logq'] * np.log(q)
    y = act(cfg['final_act'], scores)
    cost = loss_sum(cfg['loss'], y, cfg.get('smoothing', 0.0), cfg.get('bpreg', 1.0)) / cfg['batch_size']
    return cost, new, y


def numeric_grads(p, cfg, X, Y, H, support=None, noise=(), eps=1e-6):
    """Central finite differences of the cost w.r.t. every entry of every array in p."""
    grads = {}
    for k, v in p.items():
        g = np.zeros_like(v)
        for i in np.ndindex(v.shape):
            old = v[i]
            v[i] = old + eps
            plus = step_forward(p, cfg, X, Y, H, support, noise)[0]
            v[i] = old - eps
            minus = step_forward(p, cfg, X, Y, H, support, noise)[0]
            v[i] = old
            g[i] = (plus - minus) / (2 * eps)
        grads[k] = g
    return grads


# --- optimiser rules (contract §7) --------------------------------------------------------------
class Optimiser:
    """Applies the original's update rules, as its compiled graph runs them, to float64 copies of the
    weights, with explicit loops over repeated occurrences: the momentum velocity keeps the last occurrence;
    the Adagrad accumulator, the legacy Adam count and every other increment accumulate."""
    EPS = 1e-6

    def __init__(self, w, cfg):
        self.w = {k: v.astype(np.float64) for k, v in w.items()}
        self.cfg = cfg
        self.state = {}
        self.adapt = cfg.get('adapt', 'adagrad')
        self.ap = cfg.get('adapt_params') or {'rmsprop': [0.9], 'adadelta': [0.95], 'adam': [0.9, 0.999],
                                              'adam_legacy': [0.9, 0.999]}.get(self.adapt, [])
        self.lr = 1.0 if self.adapt == 'adadelta' else cfg.get('learning_rate', 0.1)
        self.mu, self.lmbd = cfg.get('momentum', 0.0), cfg.get('lmbd', 0.0)

    def s(self, key, shape):
        return self.state.setdefault(key, np.zeros(shape))

    def step(self, dense_grads, sparse_grads):
        """dense_grads: {name: grad}; sparse_grads: list of (name, idx, per-occurrence row grads)."""
        cap = self.cfg.get('grad_cap', 0.0)
        if cap > 0:
            norm = np.sqrt(sum((g ** 2).sum() for g in dense_grads.values()) + sum((g ** 2).sum() for _, _, g in sparse_grads))
            if norm >= cap:
                dense_grads = {k: g * cap / norm for k, g in dense_grads.items()}
                sparse_grads = [(n, i, g * cap / norm) for n, i, g in sparse_grads]
        for name, g in dense_grads.items():
            self._dense(name, g)
        for name, idx, g in sparse_grads:
            if self.adapt == 'adam' or self.cfg.get('merge_repeated'):   # one step per distinct row
                uniq = np.unique(idx)
                g = np.stack([g[idx == u].sum(axis=0) for u in uniq])
                idx = uniq
            self._sparse(name, np.asarray(idx), g)

    def _dense(self, name, g):
        p, a, e = self.w[name], self.adapt, self.EPS
        if a == 'adagrad':
            acc = self.s((name, 'acc'), p.shape)
            acc += g ** 2
            gh = g / np.sqrt(acc + e)
        elif a == 'rmsprop':
            acc = self.s((name, 'acc'), p.shape)
            acc[...] = self.ap[0] * acc + (1 - self.ap[0]) * g ** 2
            gh = g / np.sqrt(acc + e)
        elif a == 'adadelta':
            rho = self.ap[0]
            acc, upd = self.s((name, 'acc'), p.shape), self.s((name, 'upd'), p.shape)
            acc[...] = rho * acc + (1 - rho) * g ** 2
            c = (upd + e) / (acc + e)
            upd[...] = rho * upd + (1 - rho) * c * g ** 2
            gh = g * np.sqrt(c)
        elif a in ('adam', 'adam_legacy'):
            b1, b2 = self.ap
            v, m, t = (self.s((name, k), p.shape) for k in 'vmt')
            v[...] = b2 * v + (1 - b2) * g ** 2
            m[...] = b1 * m + (1 - b1) * g
            t += 1
            b_v = b1 if a == 'adam_legacy' else b2
            gh = (m / (1 - b1 ** t)) / (np.sqrt(v / (1 - b_v ** t)) + e)
        else:
            gh = g
        if self.mu > 0:
            vel = self.s((name, 'vel'), p.shape)
            vel[...] = self.mu * vel - self.lr * (gh + self.lmbd * p)
            p += vel
        else:
            p[...] = p * (1 - self.lr * self.lmbd) - self.lr * gh

    def _sparse(self, name, idx, g):
        p, a, e, shape = self.w[name], self.adapt, self.EPS, self.w[name].shape
        old_rows = p[idx].copy()
        if a == 'adagrad':
            acc = self.s((name, 'acc'), shape)
            gh = g / np.sqrt(acc[idx] + g ** 2 + e)   # per occurrence, from the old accumulator
            for j, i in enumerate(idx):
                acc[i] += g[j] ** 2                   # every occurrence adds up (as the original runs)
        elif a in ('rmsprop', 'adadelta', 'adam_legacy'):
            rho = self.ap[1] if a == 'adam_legacy' else self.ap[0]
            acc = self.s((name, 'acc'), shape)
            old_acc = acc.copy()
            for i in set(idx.tolist()):
                acc[i] = rho * old_acc[i]             # each touched row decayed once
            for j, i in enumerate(idx):
                acc[i] += (1 - rho) * g[j] ** 2       # then accumulated per occurrence
            if a == 'rmsprop':
                gh = g / np.sqrt(acc[idx] + e)
            elif a == 'adadelta':
                upd = self.s((name, 'upd'), shape)
                c = (upd[idx] + e) / (acc[idx] + e)
                old_upd = upd.copy()
                for i in set(idx.tolist()):
                    upd[i] = rho * old_upd[i]
                for j, i in enumerate(idx):
                    upd[i] += (1 - rho) * c[j] * g[j] ** 2
                gh = g * np.sqrt(c)
            else:
                b1 = self.ap[0]
                m, t = self.s((name, 'm'), shape), self.s((name, 't'), shape)
                old_m = m.copy()
                for i in set(idx.tolist()):
                    m[i] = b1 * old_m[i]
                for j, i in enumerate(idx):
                    m[i] += (1 - b1) * g[j] ** 2      # the original's bug: squared gradient
                t_rows = t[idx] + 1
                for i in idx:
                    t[i] += 1                         # one count per occurrence
                corr = 1 - b1 ** t_rows
                gh = (m[idx] / corr) / (np.sqrt(acc[idx] / corr) + e)
        elif a == 'adam':                             # idx is duplicate-free here
            b1, b2 = self.ap
            v, m, t = (self.s((name, k), shape) for k in 'vmt')
            t[idx] += 1
            m[idx] = b1 * m[idx] + (1 - b1) * g
            v[idx] = b2 * v[idx] + (1 - b2) * g ** 2
            gh = (m[idx] / (1 - b1 ** t[idx])) / (np.sqrt(v[idx] / (1 - b2 ** t[idx])) + e)
        else:
            gh = g
        delta = self.lr * (gh + self.lmbd * old_rows) if self.lmbd > 0 else self.lr * gh
        if self.mu > 0:
            vel = self.s((name, 'vel'), shape)
            v_occ = self.mu * vel[idx] - delta        # from the old velocity, per occurrence
            for j, i in enumerate(idx):
                vel[i] = v_occ[j]
                p[i] += v_occ[j]
        else:
            for j, i in enumerate(idx):
                p[i] -= delta[j]
