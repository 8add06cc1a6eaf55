"""Feature learning at infinite width: the kernel dynamics of mean-field (muP)
networks with richness `gamma0` (Bordelon & Pehlevan 2022).

The network, depth 2 (one hidden layer of width N, inputs `x: [P, D]`):

    h(x) = W x / sqrt(D),    f(x) = a . h(x) / (gamma0 N),    W_ij, a_i ~ N(0, 1)

trained on `L = 1/(2P) sum_mu (f_mu - y_mu)^2` by the flow `dtheta/dt = -gamma0^2
N grad L` (docs/conventions.md: time `t = lr x steps` for the step `gamma0^2 N
lr` on every parameter). `gamma0 -> 0` is the NTK limit; at larger `gamma0` the
hidden features move by O(gamma0). With `Delta = y - f` and `K = x x^T / D`, the
gradients give, for every width,

    df/dt = (1/P) (H + A K) Delta                       the NTK is H + A K
    dH/dt = (gamma0^2/P) [(K Delta) f^T + f (K Delta)^T]   H = h h^T / N  [P, P]
    dA/dt = (2 gamma0^2/P) Delta . f                      A = |a|^2 / N

closed in `(f, H, A)`: the dynamics are deterministic given their values at
init, which at infinite width are `f = 0`, `H = K`, `A = 1` (the law of large
numbers over the N units). A finite network follows the same equations from its
own `(f, H, A)(0)`, which differ from the limit by O(1/sqrt(N)) per seed. The
memory is that of the state, `P^2 + P + 1` numbers, at every saved time.

One point with `|x|^2 / D = 1`, `y = 1`: `H - A` is conserved, and `s = H + A`
obeys `ds/df = 4 gamma0^2 f / s`, so `s = 2 sqrt(1 + gamma0^2 f^2)` and

    df/dt = 2 (1 - f) sqrt(1 + gamma0^2 f^2)

(tests/theory/test_dmft.py checks the solver against it).

Deeper networks (`depth` weight layers, hidden layers `l = 1 ... depth-1`):

    h^1 = W^0 x / sqrt(D),   h^(l+1) = W^l h^l / sqrt(N),   f = w . h^(depth-1) / (gamma0 N),

with `g^l = gamma0 N df/dh^l` (`g^(depth-1) = w`, `g^l = W^l^T g^(l+1) / sqrt(N)`;
one vector per layer, the same for every input since the network is linear).
Their kernel dynamics do not close in equal-time kernels: `W^l(0)` acts in the
forward and the backward pass, and each unit's fields depend on the past. At
infinite width each hidden layer is a single-site process (Bordelon & Pehlevan
2022, written here for gradient descent at step `lr`, time steps `j < k`):

    h^l(k) = u^l(k) + gamma0 sum_j [b^(l-1)(k, j) + lr (Delta(j)/P) . H^(l-1)(j, k)] g^l(j)
    g^l(k) = r^l(k) + gamma0 sum_j [d^(l+1)(k, j) + lr G^(l+1)(j, k) Delta(j)/P] . h^l(j)

with Gaussian sources `u^l ~ GP(0, H^(l-1))`, `r^l ~ GP(0, G^(l+1))` over `[P x
steps]` and `[steps]` (`H^0 = K` and `G^depth = 1` are static), the two-time
kernels `H^l(j, k) = <h^l(j) h^l(k)^T>`, `G^l(j, k) = <g^l(j) g^l(k)>`, and the
responses `gamma0 b^l(k, j) = <dh^l(k)/dr^l(j)>`, `gamma0 d^l(k, j) =
<dg^l(k)/du^l(j)>`, which carry `W^l(0)`'s action in both directions. The
equations are strictly causal, so `deep_linear_gd` marches them step by step:
each field is linear in the sources, its coefficients are the responses, and
the kernels are their quadratic forms. `f(k) = <g^(depth-1)(k) h^(depth-1)(k)> /
gamma0`. This is gradient descent at infinite width, exactly; `deep_linear_flow`
extrapolates it to the flow. At depth 2 the responses vanish and the march
agrees with the equal-time equations to O(lr) (tested).

Two-layer nonlinear networks `f = a . phi(W x / sqrt(D)) / (gamma0 N)`: every unit
is independent given the residual, so the single-site process is one unit's
ODE (`single_site_flow`), solved by sampling many units with the deterministic
residual driven by their average NTK.
"""

from __future__ import annotations

import functools

import diffrax

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from theory import _checks, _ode, ntk


def _field(t, state, args):
  k, y, g2 = args
  f, h, a = state["f"], state["H"], state["A"]
  p = y.shape[0]
  delta = y - f
  kd = k @ delta
  return {"f": (h @ delta + a * kd) / p,
          "H": g2 / p * (jnp.outer(kd, f) + jnp.outer(f, kd)),
          "A": 2 * g2 / p * jnp.dot(delta, f)}


def deep_linear_flow(depth: int, gamma0: ArrayLike, x: ArrayLike, y: ArrayLike,
                     t: ArrayLike, *, init: dict | None = None, rtol: float = 1e-10,
                     atol: float = 1e-12, steps: int = 100) -> dict:
  """The infinite-width gradient flow of the module docstring's networks at
  richness `gamma0`, at the times `t`.

  Depth 2: the equal-time equations `(f, H, A)` by diffrax's Tsit5 (adaptive).
  Depth >= 3: Richardson's extrapolation of `deep_linear_gd` (the two-time
  DMFT) at the steps `dt = max(t) / steps` and `dt / 2`, linearly interpolated
  to `t`; its error is O(dt^2) (measured in tests/theory/test_dmft.py).

  Args:
    depth: weight layers, >= 2 (2: one hidden layer).
    gamma0: the richness (>= 0; 0 is the NTK limit). Traceable: vmap over it.
    x: `[P, D]` inputs (the first layer divides by sqrt(D)). y: `[P]` targets.
    t: `[L]` non-decreasing times from 0 (`lr x steps`, docs/conventions.md).
    init: the state at t = 0, `{"f": [P], "H": [P, P], "A": []}` (a finite
      network's own); default the infinite-width one, `f = 0, H = K, A = 1`.
      Depth 2 only.
    rtol, atol: the step-size controller's tolerances (depth 2).
    steps: the coarse grid's steps over `[0, max(t)]` (depth >= 3; the cost
      grows as `steps^3`).

  Returns:
    `{"f": [L, P], "H_layers": [L, depth-1, P, P], "G_layers": [L, depth-1],
    "ntk": [L, P, P]}`: the outputs on the training points, each hidden layer's
    features kernel `h h^T / N` and gradient kernel `g . g / N` (the last is the
    readout's `|w|^2 / N`), the NTK. Depth 2 also returns `"H"` and `"A"`, its one
    layer's kernels. NaN where the adaptive solver failed (past 1e6 steps),
    never a stand-in.
  """
  if isinstance(depth, bool) or not isinstance(depth, (int, np.integer)) or depth < 2:
    raise ValueError(f"`depth` must be an int >= 2 (weight layers), got {depth!r}.")
  _checks.check_finite_nonnegative("gamma0", gamma0)
  _check_data(x, y)
  _ode.check_times(t)
  if depth > 2:
    if init is not None:
      raise ValueError("`init` is for depth 2 only: deeper networks' kernel dynamics do "
                       "not close in equal-time kernels (start from infinite width).")
    steps = _checks.check_int("steps", steps)
    return _flow_by_steps(int(depth), gamma0, x, y, t, steps)
  dtype = jnp.result_type(float)
  x, y = jnp.asarray(x, dtype), jnp.asarray(y, dtype)
  k = x @ x.T / x.shape[1]
  p = y.shape[0]
  if init is None:
    init = {"f": jnp.zeros(p, dtype), "H": k, "A": jnp.ones((), dtype)}
  else:
    shapes = {"f": (p,), "H": (p, p), "A": ()}
    if not isinstance(init, dict) or set(init) != set(shapes):
      raise ValueError(f"`init` must be a dict with keys {sorted(shapes)}, got {init!r}.")
    for name, shape in shapes.items():
      if np.shape(init[name]) != shape:
        raise ValueError(f"`init['{name}']` must have shape {shape}, got "
                         f"{np.shape(init[name])}.")
    init = {n: jnp.asarray(v, dtype) for n, v in init.items()}
  t = jnp.asarray(t, dtype)
  g2 = jnp.asarray(gamma0, dtype) ** 2
  out = _ode.solve(_field, init, t, (k, y, g2), rtol=rtol, atol=atol)
  return {**out, "ntk": out["H"] + out["A"][:, None, None] * k,
          "H_layers": out["H"][:, None], "G_layers": out["A"][:, None]}


def _flow_by_steps(depth, gamma0, x, y, t, steps):
  """The flow as Richardson's extrapolation `2 F(dt/2) - F(dt)` of infinite-width
  gradient descent (`deep_linear_gd`, first order in its step) on `steps` steps of
  `dt = max(t) / steps`, interpolated linearly to `t`: error O(dt^2)."""
  dtype = jnp.result_type(float)
  x, y = jnp.asarray(x, dtype), jnp.asarray(y, dtype)
  t = jnp.asarray(t, dtype)
  t_max = jnp.maximum(t[-1], jnp.finfo(dtype).tiny)
  g = jnp.asarray(gamma0, dtype)
  coarse = _march(depth, g, x, y, t_max / steps, steps)
  fine = _march(depth, g, x, y, t_max / (2 * steps), 2 * steps)
  grid = jnp.linspace(0.0, t_max, steps + 1)
  interp = jax.vmap(lambda column: jnp.interp(t, grid, column), in_axes=1, out_axes=1)
  out = {}
  for name in coarse:
    v = 2 * fine[name][::2] - coarse[name]
    out[name] = interp(v.reshape(steps + 1, -1)).reshape((t.shape[0],) + v.shape[1:])
  return out


def _check_data(x, y):
  _checks.check_finite("x", x)
  _checks.check_ndim("x", x, (2,))
  _checks.check_finite("y", y)
  _checks.check_ndim("y", y, (1,))
  if np.shape(y)[0] != np.shape(x)[0]:
    raise ValueError(f"`y` must have one target per row of `x` ({np.shape(x)[0]}), "
                     f"got {np.shape(y)[0]}.")


def deep_linear_gd(depth: int, gamma0: ArrayLike, x: ArrayLike, y: ArrayLike,
                   lr: ArrayLike, steps: int) -> dict:
  """Infinite-width gradient descent of the deep linear mean-field network at
  step `lr`, exactly: the discrete-time DMFT (the module docstring's second
  part) marched step by step, every layer's two-time kernels and responses.

  The network has `depth` weight layers (`depth - 1` hidden layers of width N):

      h^1 = W^0 x / sqrt(D),  h^(l+1) = W^l h^l / sqrt(N),  f = w . h^(depth-1) / (gamma0 N),

  all weights N(0, 1), trained by the step `gamma0^2 N lr` on `L = 1/(2P) sum (f -
  y)^2` (docs/conventions.md, t = lr x steps). A network of width N trained so
  differs from this by O(1/sqrt(N)) per seed and O(1/N) for the mean over seeds,
  with no O(lr) term: both take the same discrete steps.

  Args:
    depth: weight layers, >= 2.
    gamma0: richness, >= 0 (0: the NTK limit, static kernels). Traceable.
    x: `[P, D]` inputs. y: `[P]` targets.
    lr: the step, > 0. Traceable.
    steps: the number of steps, >= 1 (a static int: the memory is
      `O(depth (P (steps + 1))^2)` and the time `O(depth P^3 steps^3)`).

  Returns:
    `{"f": [steps+1, P], "H_layers": [steps+1, depth-1, P, P],
    "G_layers": [steps+1, depth-1], "ntk": [steps+1, P, P]}`: the outputs, each
    hidden layer's features kernel `h^l h^l^T / N` and gradient kernel
    `g^l . g^l / N` (`g^l = gamma0 N df/dh^l`; the last is `|w|^2 / N`), and the
    NTK `sum_l G^l H^(l-1) + H^(depth-1)` with `H^0 = K = x x^T / D`, at every step.
  """
  if isinstance(depth, bool) or not isinstance(depth, (int, np.integer)) or depth < 2:
    raise ValueError(f"`depth` must be an int >= 2 (weight layers), got {depth!r}.")
  if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or steps < 1:
    raise ValueError(f"`steps` must be an int >= 1, got {steps!r}.")
  _checks.check_finite_nonnegative("gamma0", gamma0)
  _checks.check_positive("lr", lr)
  _check_data(x, y)
  dtype = jnp.result_type(float)
  x, y = jnp.asarray(x, dtype), jnp.asarray(y, dtype)
  return _march(int(depth), jnp.asarray(gamma0, dtype), x, y, jnp.asarray(lr, dtype),
                int(steps))


@functools.partial(jax.jit, static_argnames=("depth", "steps"))
def _march(depth, gamma0, x, y, lr, steps):
  p, n_t = y.shape[0], steps + 1
  tp, dtype, g2 = n_t * p, x.dtype, gamma0**2
  k_in = x @ x.T / x.shape[1]
  h_in = jnp.tile(k_in, (n_t, n_t))           # u^1 is static: H^0(s, t) = K
  g_out = jnp.ones((n_t, n_t), dtype)         # w(0) is static: G^depth(s, t) = 1
  layers = depth - 1
  zeros = lambda *shape: jnp.zeros(shape, dtype)
  state = {"A": zeros(layers, tp, tp), "b": zeros(layers, tp, n_t), "C": zeros(layers, n_t, n_t),
           "d": zeros(layers, n_t, tp), "H": zeros(layers, tp, tp), "G": zeros(layers, n_t, n_t),
           "f": zeros(n_t, p)}
  eye_p = jnp.eye(p, dtype=dtype)

  def step(k, s):
    s = dict(s)
    A, b, C, d, H, G = (list(s[n]) for n in "AbCdHG")
    before = (jnp.arange(n_t) < k).astype(dtype)                  # j < k
    delta = (y - s["f"]) * before[:, None] / p                    # Delta_nu(j) / P, j < k
    e_u = jax.lax.dynamic_update_slice(zeros(p, tp), eye_p, (0, k * p))
    e_r = jax.nn.one_hot(k, n_t, dtype=dtype)
    below_h = lambda i: H[i - 1] if i else h_in
    above_g = lambda i: G[i + 1] if i < layers - 1 else g_out
    rows_a = [None] * layers
    # bottom-up: h^l(k) = u(k) + gamma0 sum_{j<k} m_a(k, j) g^l(j)
    for i in range(layers):
      hb = below_h(i)
      col = jax.lax.dynamic_slice(hb, (0, k * p), (tp, p)).reshape(n_t, p, p)
      m_a = lr * jnp.einsum("jn,jnm->mj", delta, col)             # [P, T]
      if i:
        m_a = m_a + jax.lax.dynamic_slice(b[i - 1], (k * p, 0), (p, n_t)) * before
      a_row = e_u + g2 * m_a @ d[i]
      b_row = m_a @ C[i]
      A[i] = jax.lax.dynamic_update_slice(A[i], a_row, (k * p, 0))
      b[i] = jax.lax.dynamic_update_slice(b[i], b_row, (k * p, 0))
      h_col = A[i] @ (hb @ a_row.T) + g2 * b[i] @ (above_g(i) @ b_row.T)
      H[i] = jax.lax.dynamic_update_slice(H[i], h_col, (0, k * p))
      H[i] = jax.lax.dynamic_update_slice(H[i], h_col.T, (k * p, 0))
      rows_a[i] = (a_row, b_row)
    # top-down: g^l(k) = r(k) + gamma0 sum_{j<k} m_b(k, j) . h^l(j)
    for i in reversed(range(layers)):
      ga, hb = above_g(i), below_h(i)
      m_b = (lr * ga[:, k, None] * delta).reshape(tp)
      if i < layers - 1:
        m_b = m_b + jax.lax.dynamic_slice(d[i + 1], (k, 0), (1, tp))[0] * jnp.repeat(before, p)
      c_row = e_r + g2 * m_b @ b[i]
      d_row = m_b @ A[i]
      C[i] = jax.lax.dynamic_update_slice(C[i], c_row[None], (k, 0))
      d[i] = jax.lax.dynamic_update_slice(d[i], d_row[None], (k, 0))
      ga_c, hb_d = ga @ c_row, hb @ d_row
      g_col = C[i] @ ga_c + g2 * d[i] @ hb_d
      G[i] = G[i].at[:, k].set(g_col).at[k, :].set(g_col)
      if i == layers - 1:    # f(k) = <g h(k)> / gamma0 at the last hidden layer
        a_row, b_row = rows_a[i]
        s["f"] = s["f"].at[k].set(b_row @ ga_c + a_row @ hb_d)
    for n, v in zip("AbCdHG", (A, b, C, d, H, G)):
      s[n] = jnp.stack(v)
    return s

  state = jax.lax.fori_loop(0, n_t, step, state)
  idx = jnp.arange(n_t)
  h_eq = state["H"].reshape(layers, n_t, p, n_t, p)[:, idx, :, idx, :]     # [T, layers, P, P]
  g_eq = state["G"][:, idx, idx].T                                          # [T, layers]
  below = jnp.concatenate([jnp.broadcast_to(k_in, (n_t, 1, p, p)), h_eq[:, :-1]], 1)
  ntk = jnp.einsum("tl,tlpq->tpq", g_eq, below) + h_eq[:, -1]
  return {"f": state["f"], "H_layers": h_eq, "G_layers": g_eq, "ntk": ntk}


def single_point_time(f: ArrayLike, gamma0: ArrayLike) -> jax.Array:
  """The time at which the one-point network (`|x|^2/D = 1`, `y = 1`, module
  docstring) reaches output `f` in `[0, 1)`: the closed form of

      t(f) = int_0^f du / (2 (1 - u) sqrt(1 + gamma0^2 u^2)),

  by the antiderivative in `primitive` below (`c = sqrt(1 + gamma0^2)`); at
  `gamma0 = 0` it is `-log(1 - f) / 2`. jit- and vmap-able."""
  f = jnp.asarray(f, jnp.result_type(float))
  g = jnp.asarray(gamma0, f.dtype)
  c = jnp.sqrt(1 + g**2)
  # int du / ((1 - u) sqrt(1 + g^2 u^2)): with v = 1 - u, the standard form
  # int dv / (v sqrt(a v^2 + b v + c^2)) = -(1/c) log[(2c^2 + b v + 2c sqrt(.)) / v],
  # a = g^2, b = -2 g^2, sqrt(.) = sqrt(1 + g^2 (1 - v)^2)
  def primitive(v):
    root = jnp.sqrt(1 + g**2 * (1 - v) ** 2)
    return -jnp.log((2 * c**2 - 2 * g**2 * v + 2 * c * root) / v) / c
  return (primitive(jnp.ones_like(f)) - primitive(1 - f)) / 2


# each activation with its derivative: theory.ntk's, for the activations the
# single-site sampler offers
_ACTIVATIONS = {name: ntk._PHI[name] for name in ("relu", "tanh", "erf", "linear")}


def _two_layer_field(t, state, args):
  """The single-site drift: each sampled unit's fields `h: [P]` and readout `a`,
  and the output `f` driven by the sample NTK."""
  k, y, gamma0, act = args
  phi, dphi = _ACTIVATIONS[act]
  h, a, f = state["h"], state["a"], state["f"]
  p, m = y.shape[0], a.shape[0]
  delta = (y - f) / p
  v, dv = phi(h), dphi(h)                                        # [M, P]
  ntk = (v.T @ v + (dv * (a * a)[:, None]).T @ dv * k) / m
  return {"f": ntk @ delta,
          "a": gamma0 * v @ delta,
          "h": gamma0 * a[:, None] * (dv * delta) @ k}


def single_site_flow(activation: str, gamma0: ArrayLike, x: ArrayLike, y: ArrayLike,
                   t: ArrayLike, *, key: jax.Array | None = None, samples: int = 16384,
                   steps: int = 400, init: dict | None = None) -> dict:
  """The infinite-width gradient flow of the two-layer mean-field network

      h = W x / sqrt(D),    f = a . phi(h) / (gamma0 N),    W_ij, a_i ~ N(0, 1),

  trained by `dtheta/dt = -gamma0^2 N grad L` (docs/conventions.md), by sampling
  its single-site process: at infinite width every unit's fields `h_i: [P]` and
  readout `a_i` follow, independently given the residual `Delta = y - f`,

      dh/dt = gamma0 a (phi'(h) * Delta / P) K,    da/dt = gamma0 phi(h) . Delta / P,

  from `h(0) ~ N(0, K)`, `a(0) ~ N(0, 1)` (`K = x x^T / D`), and the output from
  `f(0) = 0` by `df/dt = NTK Delta / P` with `NTK = <phi(h) phi(h)^T> + <a^2
  phi'(h) phi'(h)^T> * K`. The averages are over `samples` units drawn from `key`,
  the residual deterministic: the error is Monte Carlo's, O(1/sqrt(samples)) (at
  `gamma0 = 0` the NTK is static and equals `theory.ntk.mlp_kernel(2, activation)`'s
  up to that error). A fixed-step Tsit5 on `steps` steps over `[0, max(t)]`, since
  relu's drift is discontinuous in each unit's field.

  Args:
    activation: `'relu'`, `'tanh'`, `'erf'` or `'linear'`.
    gamma0: richness, >= 0. Traceable. x: `[P, D]`. y: `[P]`.
    t: `[L]` non-decreasing times from 0 (`lr x steps`).
    key: draws the units (required unless `init`). samples: their number.
    steps: the solver's steps.
    init: a finite network's own units, `{"h": [N, P], "a": [N], "f": [P]}`
      (`h = W x / sqrt(D)`): the same equations are then that network's flow
      exactly, at its width.

  Returns:
    `{"f": [L, P], "ntk": [L, P, P], "Phi": [L, P, P], "G": [L, P, P]}`: the
    outputs, the NTK, the features' kernel `<phi(h) phi(h)^T>` and the gradients'
    `<a^2 phi'(h) phi'(h)^T>`.
  """
  if activation not in _ACTIVATIONS:
    raise ValueError(f"`activation` must be one of {sorted(_ACTIVATIONS)}, got {activation!r}.")
  _checks.check_finite_nonnegative("gamma0", gamma0)
  _check_data(x, y)
  _ode.check_times(t)
  steps = _checks.check_int("steps", steps)
  dtype = jnp.result_type(float)
  x, y = jnp.asarray(x, dtype), jnp.asarray(y, dtype)
  p = y.shape[0]
  k = x @ x.T / x.shape[1]
  if init is None:
    samples = _checks.check_int("samples", samples)
    if key is None:
      raise ValueError("`key` is required to draw the units (or pass `init`).")
    lam, q = jnp.linalg.eigh(k)
    root = q * jnp.sqrt(jnp.maximum(lam, 0.0))                   # K = root root^T
    k_h, k_a = jax.random.split(key)
    init = {"h": jax.random.normal(k_h, (samples, p), dtype) @ root.T,
            "a": jax.random.normal(k_a, (samples,), dtype), "f": jnp.zeros(p, dtype)}
  else:
    if not isinstance(init, dict) or set(init) != {"h", "a", "f"}:
      raise ValueError(f"`init` must be a dict with keys ['a', 'f', 'h'], got {init!r}.")
    n = np.shape(init["a"])[0] if np.ndim(init["a"]) == 1 else -1
    for name, shape in (("h", (n, p)), ("a", (n,)), ("f", (p,))):
      if np.shape(init[name]) != shape:
        raise ValueError(f"`init['{name}']` must have shape {shape}, got {np.shape(init[name])}.")
    init = {n_: jnp.asarray(v, dtype) for n_, v in init.items()}
  t = jnp.asarray(t, dtype)
  g = jnp.asarray(gamma0, dtype)
  sol = diffrax.diffeqsolve(
      diffrax.ODETerm(_two_layer_field), diffrax.Tsit5(), t0=jnp.zeros((), dtype), t1=t[-1],
      dt0=jnp.maximum(t[-1], jnp.finfo(dtype).tiny) / steps, y0=init,
      args=(k, y, g, activation), saveat=diffrax.SaveAt(ts=t),
      stepsize_controller=diffrax.ConstantStepSize(), max_steps=steps + 1)
  phi, dphi = _ACTIVATIONS[activation]
  v, dv = phi(sol.ys["h"]), dphi(sol.ys["h"])                    # [L, M, P]
  m = sol.ys["a"].shape[1]
  feats = jnp.einsum("lmp,lmq->lpq", v, v) / m
  grads = jnp.einsum("lmp,lm,lmq->lpq", dv, sol.ys["a"] ** 2, dv) / m
  return {"f": sol.ys["f"], "ntk": feats + grads * k, "Phi": feats, "G": grads}
