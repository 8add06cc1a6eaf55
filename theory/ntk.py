r"""Infinite-width kernels of fully connected networks, empirical NTKs, and
the linearised network's predictions under gradient flow and gradient descent.

`mlp_kernel(depth, activation, ...)`: the NNGP and NTK of a network of any
depth in the infinite-width limit (its docstring has the recursion).
`relu_nngp` / `relu_ntk` are its depth-2 ReLU case, the network of
`dynamics/models/relu_net.py` (NTK parameterisation, as neural-tangents'
`stax.Dense(..., parameterization='ntk')`):

    h(x) = (w_std / sqrt(d)) W x + b_std b,       W: [m, d], b: [m]
    f(x) = (w_std / sqrt(m)) v . relu(h(x)) + b_std b_out,   v: [m], b_out: []

with every parameter standard normal at init, whose kernels are, with
`K1(x, x') = w_std^2 x.x'/d + b_std^2` and `cos(theta) = K1(x,x') /
sqrt(K1(x,x) K1(x',x'))` (Cho & Saul 2009; Jacot et al. 2018),

    E[relu(u) relu(u')]   = sqrt(K1(x,x) K1(x',x')) (sin theta + (pi - theta) cos theta) / (2 pi)
    E[relu'(u) relu'(u')] = (pi - theta) / (2 pi)
    NNGP = w_std^2 E[relu relu] + b_std^2
    NTK  = NNGP + w_std^2 E[relu' relu'] K1.

`empirical_ntk`: the finite network's `J(x1) J(x2)^T` for any `apply_fn`.
`mse_predictor`: the linearised network on a kernel, one eigendecomposition.

Training follows `docs/conventions.md`: loss `(1/2n) sum ||f - y||^2`, so the
linearised network moves in function space as `df/dt = -(1/n) K (f - y)`.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike
import numpy as np

from theory import _checks


def _pair(x1, x2):
  for name, x in (("x1", x1), ("x2", x2)):
    _checks.check_finite(name, x)
    _checks.check_ndim(name, x, (2,))
  if np.shape(x1)[1] != np.shape(x2)[1]:
    raise ValueError(f"`x1` and `x2` must have the same feature dimension, got "
                     f"{np.shape(x1)[1]} and {np.shape(x2)[1]}.")
  dtype = jnp.result_type(float)
  return jnp.asarray(x1, dtype), jnp.asarray(x2, dtype)


def _relu_dual(q1, k, q2):
  """`E[relu(u) relu(u')]` and `E[relu'(u) relu'(u')]` for `(u, u')` centred
  Gaussian with variances `q1`, `q2` and covariance `k` (Cho & Saul 2009):
  with `cos(theta) = k / sqrt(q1 q2)`,
  `sqrt(q1 q2) (sin theta + (pi - theta) cos theta) / (2 pi)` and
  `(pi - theta) / (2 pi)`. A zero-variance unit is 0 and `relu'(0) = 0`."""
  norm = jnp.sqrt(q1 * q2)
  zero = norm == 0
  cos = jnp.clip(k / jnp.where(zero, 1.0, norm), -1.0, 1.0)
  # phi = pi - theta by atan2 (arccos loses it near cos = -1), and
  # sin theta + (pi - theta) cos theta = sin phi - phi cos phi, which cancels
  # as phi -> 0: its series phi^3/3 - phi^5/30 + ... below phi = 0.1 (5 terms,
  # truncation ~phi^13 / 5e8, below float64 rounding), so antipodal inputs
  # give exactly 0 and nearby ones a positive value.
  phi = jnp.arctan2(jnp.sqrt(jnp.maximum((1 - cos) * (1 + cos), 0.0)), -cos)
  p2 = phi * phi
  series = phi * p2 * (1 / 3 - p2 * (1 / 30 - p2 * (1 / 840 - p2 * (1 / 45360
                                                                      - p2 / 3991680))))
  j = jnp.where(phi < 0.1, series, jnp.sin(phi) - phi * jnp.cos(phi))
  ee = norm / (2 * jnp.pi) * j
  return jnp.where(zero, 0.0, ee), jnp.where(zero, 0.0, phi / (2 * jnp.pi))


def _erf_dual(q1, k, q2):
  """The same for `erf` (Williams 1997): `(2/pi) arcsin(2k / sqrt((1+2q1)(1+2q2)))`
  and `(4/pi) / sqrt((1+2q1)(1+2q2) - 4k^2)`."""
  a, b = 1 + 2 * q1, 1 + 2 * q2
  ee = 2 / jnp.pi * jnp.arcsin(jnp.clip(2 * k / jnp.sqrt(a * b), -1.0, 1.0))
  det = 1 + 2 * (q1 + q2) + 4 * jnp.maximum(q1 * q2 - k**2, 0.0)
  return ee, 4 / jnp.pi / jnp.sqrt(det)


def _linear_dual(q1, k, q2):
  return k + 0 * (q1 + q2), jnp.ones_like(k + q1 + q2)


_SQRT2PI = np.sqrt(2 * np.pi)
# Each activation with its derivative (relu'(0) = 0, as jax.nn.relu's gradient).
_PHI = {
    "relu": (jax.nn.relu, lambda z: (z > 0).astype(z.dtype)),
    "erf": (jax.scipy.special.erf, lambda z: 2 / np.sqrt(np.pi) * jnp.exp(-z**2)),
    "linear": (lambda z: z, jnp.ones_like),
    "tanh": (jnp.tanh, lambda z: 1 - jnp.tanh(z)**2),
    "gelu": (lambda z: jax.nn.gelu(z, approximate=False),
             lambda z: jax.scipy.stats.norm.cdf(z) + z * jnp.exp(-z**2 / 2) / _SQRT2PI),
}
_CLOSED_FORM = {"relu": _relu_dual, "erf": _erf_dual, "linear": _linear_dual}
ACTIVATIONS = tuple(_PHI)
# tanh and gelu: the trapezoidal rule on [-QUADRATURE_RANGE, QUADRATURE_RANGE]^2
# in standard-normal coordinates, QUADRATURE_ORDER nodes per dimension.
QUADRATURE_ORDER = 96
QUADRATURE_RANGE = 8.0  # the Gaussian tail beyond it: exp(-32) ~ 1e-14


def _quadrature_dual(activation: str, order: int, rule: str = "trapezoid"):
  """`E[phi(u) phi(u')]`, `E[phi'(u) phi'(u')]` with `u = sqrt(q1) z1`,
  `u' = sqrt(q2) (c z1 + s z2)`, `c = k / sqrt(q1 q2)`, `s = sqrt(1 - c^2)`,
  `z1, z2` independent standard normals (exact at `c = +-1` and `q = 0`), by
  the tensor-product trapezoidal rule on an `order x order` grid: for a
  Gaussian-weighted analytic integrand its error falls geometrically with
  `order` (Trefethen & Weideman 2014), much faster than Gauss-Hermite's when
  the activation is sharp on the Gaussian's scale (the depth-3 erf NTK at
  `w_std = 3`: 1e-8 relative with 96 nodes, Gauss-Hermite 1.6e-3 with 128). `order^2` evaluations per pair, in row blocks of at
  most 2^22 evaluations."""
  phi, dphi = _PHI[activation]
  if rule == "gauss_hermite":  # for comparison (scripts/kernel_quadrature.py)
    z, w = np.polynomial.hermite_e.hermegauss(order)
    w = w / _SQRT2PI
  else:
    z = np.linspace(-QUADRATURE_RANGE, QUADRATURE_RANGE, order)
    w = (z[1] - z[0]) * np.exp(-z**2 / 2) / _SQRT2PI

  def pairs(q1, k, q2):  # [r, n2] each
    s1, s2 = jnp.sqrt(q1), jnp.sqrt(q2)
    prod = s1 * s2
    c = jnp.clip(k / jnp.where(prod > 0, prod, 1.0), -1.0, 1.0)
    c = jnp.where(prod > 0, c, 0.0)
    s = jnp.sqrt(1 - c**2)
    zz = jnp.asarray(z, k.dtype)
    ww = jnp.asarray(w[:, None] * w[None, :], k.dtype)
    u = (s1[..., None] * zz)[..., :, None]                                 # [r, n2, m, 1]
    v = s2[..., None, None] * (c[..., None, None] * zz[:, None] + s[..., None, None] * zz)
    return (jnp.einsum("...ij,ij->...", phi(u) * phi(v), ww),
            jnp.einsum("...ij,ij->...", dphi(u) * dphi(v), ww))

  def dual(q1, k, q2):
    q1, k, q2 = jnp.broadcast_arrays(q1, k, q2)
    shape = k.shape
    q1, k, q2 = (a.reshape(-1, shape[-1] if shape else 1) for a in (q1, k, q2))
    rows = max(1, 2**22 // (q1.shape[1] * order**2))
    ee, dd = jax.lax.map(lambda a: pairs(*a), (q1, k, q2), batch_size=rows)
    return ee.reshape(shape), dd.reshape(shape)

  return dual


QUADRATURE_TOL = 1e-6       # relative error allowed of an adaptive quadrature layer
QUADRATURE_MAX_ORDER = 768  # refined up to this many nodes per dimension, then refused


def _adaptive_dual(activation: str):
  """The quadrature dual with an error estimate. The trapezoidal rule's error
  falls geometrically with the order `m` (`~rho^m`), so the error of `m`
  nodes is about the square of the relative difference `E` between `m/2` and
  `m` nodes (the error of `m/2`). With concrete arguments: `m =
  QUADRATURE_ORDER`, doubled while `E^2 > QUADRATURE_TOL` up to
  `QUADRATURE_MAX_ORDER`, and a `ValueError` past it. Under `jit` or `vmap`
  (traced arguments) no estimate can run: `QUADRATURE_ORDER` nodes."""
  rules = {}

  def rule(m):
    if m not in rules:
      rules[m] = _quadrature_dual(activation, m)
    return rules[m]

  def rel_diff(a, b):
    scale = max(float(np.max(np.abs(b[0]))), float(np.max(np.abs(b[1]))), 1e-300)
    return max(float(np.max(np.abs(a[0] - b[0]))), float(np.max(np.abs(a[1] - b[1])))) / scale

  def dual(q1, k, q2):
    m = QUADRATURE_ORDER
    out = rule(m)(q1, k, q2)
    if any(_checks.concrete(a) is None for a in (q1, k, q2)):
      return out
    err = rel_diff(rule(m // 2)(q1, k, q2), out) ** 2
    while err > QUADRATURE_TOL and m < QUADRATURE_MAX_ORDER:
      m *= 2
      finer = rule(m)(q1, k, q2)
      err, out = rel_diff(out, finer) ** 2, finer
    if err > QUADRATURE_TOL:
      raise ValueError(
          f"the {activation} kernel's quadrature does not converge: estimated relative error "
          f"{err:.2g} with {m} nodes per dimension, above {QUADRATURE_TOL:g} (the "
          "pre-activations are too large for the rule: reduce `w_std`, or pass `quadrature` "
          "to accept a fixed rule without an estimate).")
    return out

  return dual


def mlp_kernel(depth: int, activation: str = "relu", w_std: float = 1.0,
               b_std: float = 0.0, parameterization: str = "ntk", *,
               width: int | None = None, quadrature: int | None = None) -> Callable:
  r"""Infinite-width NNGP and NTK of a fully connected network.

  The network is `dynamics.models.mlp` with `depth` weight layers (depth 2 is
  one hidden layer, `dynamics.models.relu_net`'s network), biases, the
  activation `phi` after every layer but the last, and every hidden width to
  infinity. With `K^1(x, x') = w_std^2 x.x'/d + b_std^2` and, for `l >= 1`,
  `(u, u') ~ N(0, [[K^l(x,x), K^l(x,x')], [K^l(x,x'), K^l(x',x')]])`
  (Neal 1996; Lee et al. 2018; Jacot et al. 2018; Arora et al. 2019):

      K^{l+1}     = w_std^2 E[phi(u) phi(u')] + b_std^2          (NNGP)
      Theta^1     = K^1
      Theta^{l+1} = K^{l+1} + w_std^2 E[phi'(u) phi'(u')] Theta^l  (NTK, 'ntk')

  and the kernels are `K^depth`, `Theta^depth`. The expectations are closed
  forms for `relu` (arc-cosine kernels, Cho & Saul 2009), `erf` (Williams
  1997) and `linear`; `tanh` and `gelu` (exact, erf-based) use a
  two-dimensional quadrature of `QUADRATURE_ORDER^2` nodes whose error falls
  geometrically with the order and grows with the pre-activation variance:
  at depth 3, `b_std = 0.3`, inputs with `|x|^2 = d`, below 1e-12 relative
  at `w_std = 1`, 1e-8 at `w_std = 2` and 1e-3 at `w_std = 3` (float64;
  `scripts/kernel_quadrature.py` measures it, tests/theory/test_mlp_kernel.py
  checks it against the closed forms and a twice finer rule). Called with
  concrete arguments, each layer's quadrature estimates its error (the
  squared relative change from half the nodes) and doubles the nodes while
  it exceeds `QUADRATURE_TOL`, up to `QUADRATURE_MAX_ORDER`, else refuses
  (the squared difference assumes the geometric convergence of an analytic
  activation at moderate `w_std`: at `w_std = 1e4` tanh is a step, converges
  algebraically, and its 4e-4 error is not flagged); under `jit` it uses
  `QUADRATURE_ORDER` nodes with no estimate, and `quadrature=N` forces `N`
  nodes with no estimate. Near-identical inputs: the angle between them is known to
  O(sqrt(eps)) (`arccos` near 1); the diagonal of `kernel_fn(x)` is exact.

  `parameterization='standard'` (`W ~ N(0, w_std^2 / n_l)`, `b ~ N(0,
  b_std^2)`, `h = W a + b`) has the same NNGP. Its NTK is neural-tangents'
  `Dense(parameterization='standard')`: the gradients are not rescaled, so

      Theta^{l+1} = n_l E[phi(u) phi(u')] + 1 + w_std^2 E[phi' phi'] Theta^l,
      Theta^1     = x.x' + 1,

  which grows with the hidden `width` (`n_l = width`, `n_0 = d`): it is the
  NTK of a network of that width, to O(1/sqrt(width)) fluctuations. Time and
  loss in `docs/conventions.md`'s conventions.

  Args:
    depth: number of weight layers, >= 1.
    activation: one of `ACTIVATIONS`.
    w_std, b_std: weight and bias standard deviations (>= 0).
    parameterization: `'ntk'` or `'standard'`.
    width: the hidden width, required for the `'standard'` NTK of depth >= 2.
    quadrature: `None` for the closed form where there is one (else
      `QUADRATURE_ORDER` nodes per dimension), or the number of nodes to force
      the quadrature path.

  Returns:
    `kernel_fn(x1: [n1, d], x2: [n2, d] | None = None) -> {"nngp": [n1, n2],
    "ntk": [n1, n2]}`; `x2=None` means `x2 = x1` (exactly symmetric).
  """
  depth = _checks.check_depth(depth)
  if activation not in _PHI:
    raise ValueError(f"`activation` must be one of {ACTIVATIONS}, got {activation!r}.")
  _checks.check_finite_nonnegative("w_std", w_std)
  _checks.check_finite_nonnegative("b_std", b_std)
  if parameterization not in ("ntk", "standard"):
    raise ValueError(f"`parameterization` must be 'ntk' or 'standard', got "
                     f"{parameterization!r}.")
  if parameterization == "standard" and depth >= 2:
    if width is None:
      raise ValueError("`width` is required with parameterization='standard': its NTK "
                       "grows with the hidden width.")
    width = _checks.check_int("width", width)
  if quadrature is not None:
    quadrature = _checks.check_int("quadrature", quadrature, minimum=2)
  if quadrature is None and activation in _CLOSED_FORM:
    dual = _CLOSED_FORM[activation]
  else:
    dual = (_adaptive_dual(activation) if quadrature is None
            else _quadrature_dual(activation, quadrature))
  w2, b2 = jnp.square(w_std), jnp.square(b_std)  # traceable: vmap over w_std works
  standard = parameterization == "standard"

  def kernel_fn(x1: ArrayLike, x2: ArrayLike | None = None) -> dict:
    same = x2 is None
    x1, x2 = _pair(x1, x1 if same else x2)
    d = x1.shape[1]
    # unscaled second moments of the layer's inputs: x.x'/d, then E[phi phi]
    e1, e2 = jnp.sum(x1 * x1, 1) / d, jnp.sum(x2 * x2, 1) / d
    e12 = x1 @ x2.T / d
    if same:  # the diagonal exactly the variances: cos(theta) = 1
      e12 = e12.at[jnp.diag_indices(x1.shape[0])].set(e1)
    dd, theta = None, None
    for layer in range(depth):
      q1, q2, k = w2 * e1 + b2, w2 * e2 + b2, w2 * e12 + b2
      if layer == 0:
        theta = x1 @ x2.T + 1 if standard else k
      else:
        fan_in = width if standard else None
        grads = fan_in * e12 + 1 if standard else k
        theta = grads + w2 * dd * theta
      if layer < depth - 1:
        (e1, _), (e2, _) = dual(q1, q1, q1), dual(q2, q2, q2)
        e12, dd = dual(q1[:, None], k, q2[None, :])
        if same:  # exactly symmetric, whatever the rounding of the quadrature
          e12, dd = (e12 + e12.T) / 2, (dd + dd.T) / 2
    out = {"nngp": k, "ntk": theta}
    _checks.check_result("`w_std`, `b_std` and the inputs' norms at this depth", out["ntk"])
    return out

  return kernel_fn


def relu_nngp(x1: ArrayLike, x2: ArrayLike, w_std: float = 1.0,
              b_std: float = 0.0) -> jax.Array:
  """Infinite-width NNGP kernel `E[f(x1) f(x2)]` of the two-layer ReLU net
  (`mlp_kernel(2, 'relu', w_std, b_std)`).

  Args:
    x1: `[n1, d]`; x2: `[n2, d]`.
    w_std, b_std: weight and bias standard deviations (>= 0).

  Returns:
    `[n1, n2]`.
  """
  return mlp_kernel(2, "relu", w_std, b_std)(x1, x2)["nngp"]


def relu_ntk(x1: ArrayLike, x2: ArrayLike, w_std: float = 1.0,
             b_std: float = 0.0) -> jax.Array:
  """Infinite-width NTK `sum_p df(x1)/dp df(x2)/dp` of the two-layer ReLU net
  (`mlp_kernel(2, 'relu', w_std, b_std)`).

  Returns:
    `[n1, n2]`.
  """
  return mlp_kernel(2, "relu", w_std, b_std)(x1, x2)["ntk"]


def empirical_ntk(apply_fn: Callable, params, x1: ArrayLike,
                  x2: ArrayLike | None = None, *, batch_size: int | None = None) -> jax.Array:
  """Finite-width NTK `J(x1) J(x2)^T`, summed over every parameter leaf and
  traced over the outputs: `Theta[i, j] = sum_k sum_p df_k(x1_i)/dp
  df_k(x2_j)/dp`.

  Args:
    apply_fn: a pure `apply_fn(params, x: [n, d]) -> [n]` or `[n, ...]`
      (e.g. `dynamics.models.mlp.apply`, or a Flax `Module.apply` with
      `params` its whole variables dict).
    params: any pytree of arrays.
    x1: `[n1, d]`; x2: `[n2, d]`, or `None` for `x1`.
    batch_size: `None` forms every per-example Jacobian at once (memory
      `(n1 + n2) x outputs x parameters`); an integer works through blocks of
      `batch_size` examples (memory `2 batch_size x outputs x parameters`),
      recomputing the Jacobians of `x2`'s blocks for each block of `x1`.

  Returns:
    `[n1, n2]`.
  """
  x1, x2 = _pair(x1, x1 if x2 is None else x2)
  if not callable(apply_fn):
    raise ValueError(f"`apply_fn` must be callable, got {type(apply_fn).__name__}.")
  if not jax.tree_util.tree_leaves(params):
    raise ValueError("`params` has no array leaves: the NTK would be 0.")
  if batch_size is not None:
    batch_size = _checks.check_int("batch_size", batch_size)

  # per-example Jacobians (vmap of jacrev): O(n k P) memory. A jacrev of the
  # batched function pulls back n cotangents through every [n, m]
  # activation, O(n^2 m): 34 GB at n = 1024, m = 4096.
  one = lambda p, xi: apply_fn(p, xi[None]).reshape(-1)

  def jac(x):
    j = jax.vmap(jax.jacrev(one), in_axes=(None, 0))(params, x)
    return [leaf.reshape(leaf.shape[:2] + (-1,)) for leaf in jax.tree_util.tree_leaves(j)]

  def block(a, b):
    return sum(jnp.einsum("ikp,jkp->ij", u, v) for u, v in zip(jac(a), jac(b)))

  if batch_size is None or batch_size >= max(x1.shape[0], x2.shape[0]):
    return block(x1, x2)

  def blocks(x):  # [num, batch_size, d], the last block padded by its last row
    num = -(-x.shape[0] // batch_size)
    pad = jnp.concatenate([x, jnp.repeat(x[-1:], num * batch_size - x.shape[0], 0)])
    return pad.reshape(num, batch_size, x.shape[1])

  b2 = blocks(x2)
  rows = jax.lax.map(lambda a: jax.lax.map(lambda b: block(a, b), b2),
                     blocks(x1))                                  # [nb1, nb2, B, B]
  full = rows.transpose(0, 2, 1, 3).reshape(rows.shape[0] * batch_size, -1)
  return full[:x1.shape[0], :x2.shape[0]]


def relu_empirical_ntk(params: dict, x1: ArrayLike, x2: ArrayLike,
                       w_std: float = 1.0, b_std: float = 0.0) -> jax.Array:
  """`empirical_ntk` of the two-layer ReLU net without forming the Jacobian.

  With `A = relu(H)`, `D = relu'(H)` (`H = h(x)`, `[n, m]`):
  `Theta = (w^2/m) A1 A2^T + b^2 + (w^2/m) (D1 diag(v^2) D2^T) * K1`, the
  `v`, `b_out`, and (`W`, `b`) terms; `O(n1 n2 m)` work, `O((n1+n2) m)`
  memory. Equal to `empirical_ntk(relu_net.apply, ...)` to float precision.
  When `x1 is x2` only the blocks on and above the diagonal of a 4 x 4 block
  grid are computed (10/16 of the products) and the result is exactly symmetric.
  """
  same = x1 is x2
  x1, x2 = _pair(x1, x2)
  _checks.check_finite_nonnegative("w_std", w_std)
  _checks.check_finite_nonnegative("b_std", b_std)
  if not isinstance(params, dict) or "W" not in params or "v" not in params:
    raise ValueError("`params` must be a dict with `W` ([m, d]) and `v` ([m]) (and "
                     "optionally `b`, `b_out`), as dynamics.models.relu_net.init makes.")
  if np.ndim(params["W"]) != 2 or np.shape(params["W"])[1] != x1.shape[1] \
      or np.size(params["v"]) != np.shape(params["W"])[0]:
    raise ValueError(f"`params` shapes W {np.shape(params['W'])}, v "
                     f"{np.shape(params['v'])} do not fit inputs of dimension {x1.shape[1]} "
                     "(W: [m, d], v: [m]).")
  m, d = params["W"].shape
  v2 = params["v"].reshape(m) ** 2
  b = params.get("b", jnp.zeros(m, x1.dtype))

  def features(x):
    h = w_std * x @ params["W"].T / jnp.sqrt(d) + b_std * b
    return jax.nn.relu(h), (h > 0).astype(h.dtype)

  def block(f1, f2):
    (a1, d1, y1), (a2, d2, y2) = f1, f2
    k1 = w_std**2 * y1 @ y2.T / d + b_std**2
    return w_std**2 / m * (a1 @ a2.T + ((d1 * v2) @ d2.T) * k1) + b_std**2

  f1 = (*features(x1), x1)
  if not same:
    return block(f1, (*features(x2), x2))
  return _symmetric_blocks(block, f1, BLOCKS)


BLOCKS = 4  # relu_empirical_ntk(p, x, x): a BLOCKS x BLOCKS grid, upper half


def _symmetric_blocks(block, feats, num: int) -> jax.Array:
  """`block(feats, feats)` for a symmetric `block`, from the blocks `i <= j`
  of a `num x num` grid over the rows of every array in `feats`."""
  n = feats[0].shape[0]
  edges = np.linspace(0, n, min(num, n) + 1).astype(int)
  parts = [tuple(f[a:b] for f in feats) for a, b in zip(edges[:-1], edges[1:])]
  upper = {(i, j): block(parts[i], parts[j])
           for i in range(len(parts)) for j in range(i, len(parts))}
  return jnp.concatenate([
      jnp.concatenate([upper[i, j] if i <= j else upper[j, i].T
                       for j in range(len(parts))], axis=1)
      for i in range(len(parts))], axis=0)


PSD_TOL = 100  # eigenvalues below -PSD_TOL n eps max|lam| mean "not PSD"


def _eigh_train(k_train_train, rcond=None):
  _checks.check_ndim("k_train_train", k_train_train, (2,))
  k = _checks.real("k_train_train", k_train_train)
  n1, n2 = np.shape(k_train_train)
  if n1 != n2:
    raise ValueError(f"`k_train_train` must be square, got {(n1, n2)}.")
  if k is not None:
    if not np.all(np.isfinite(k)):
      raise ValueError("`k_train_train` must be finite.")
    if not np.allclose(k, k.T, rtol=1e-5, atol=1e-8 * np.max(np.abs(k))):
      raise ValueError("`k_train_train` must be symmetric.")
  evals, evecs = jnp.linalg.eigh(jnp.asarray(k_train_train, jnp.result_type(float)))
  # eigh is backward stable: it decomposes K + E with ||E|| ~ n eps ||K||, so
  # an eigenvalue below -PSD_TOL n eps ||K|| is not rounding of a PSD kernel.
  tol = PSD_TOL * jnp.finfo(evals.dtype).eps * n1 * jnp.max(jnp.abs(evals))
  if k is not None and float(evals[0]) < -float(tol):
    raise ValueError(
        f"`k_train_train` must be positive semi-definite: its smallest "
        f"eigenvalue is {float(evals[0]):.3g}, below -{float(tol):.3g} "
        f"({PSD_TOL} n eps max|eigenvalue|).")
  # Eigenvalues at or below `rcond max(lam)` are its null space, as in
  # `lstsq`: eigh determines them only to ~n eps max(lam), so they neither
  # decay nor move the test points (pseudo-inverse).
  if rcond is None:
    rcond = n1 * jnp.finfo(evals.dtype).eps
  return jnp.where(evals <= rcond * jnp.max(evals), 0.0, evals), evecs


def _check_outputs(y_train, f0_train, k_test_train, f0_test, n):
  _checks.check_finite("y_train", y_train)
  _checks.check_ndim("y_train", y_train, (1, 2))
  if np.shape(y_train)[0] != n:
    raise ValueError(f"`y_train` must have {n} rows (one per training "
                     f"point of `k_train_train`), got shape {np.shape(y_train)}.")
  if f0_train is not None:
    _checks.check_finite("f0_train", f0_train)
    if np.size(f0_train) != np.size(y_train):
      raise ValueError(f"`f0_train` must be shaped like `y_train` "
                       f"{np.shape(y_train)}, got {np.shape(f0_train)}.")
  if k_test_train is not None:
    _checks.check_finite("k_test_train", k_test_train)
    if np.ndim(k_test_train) != 2 or np.shape(k_test_train)[1] != n:
      raise ValueError(f"`k_test_train` must be [n_test, {n}], got "
                       f"{np.shape(k_test_train)}.")
  if f0_test is not None:
    _checks.check_finite("f0_test", f0_test)
    if k_test_train is None:
      raise ValueError("`f0_test` needs `k_test_train`.")
    want = (np.shape(k_test_train)[0],) + tuple(np.shape(y_train)[1:])
    if np.size(f0_test) != int(np.prod(want)):
      raise ValueError(f"`f0_test` must be shaped {want}, got {np.shape(f0_test)}.")


def _predict(evecs, y_train, moved, gain, f0_train, k_test_train, f0_test):
  """`f = f0 + V moved V^T (y - f0)`, `moved = 1 - decay`, so that a small
  move from `f0` keeps its relative precision; test points
  `f0* + K*V gain V^T (y - f0)`. Returns `(f_train, f_test or None)`."""
  y = jnp.asarray(y_train, evecs.dtype)
  vec = y.ndim == 1
  y = y.reshape(y.shape[0], -1)
  f0 = jnp.zeros_like(y) if f0_train is None else jnp.asarray(
      f0_train, y.dtype).reshape(y.shape)
  r = evecs.T @ (f0 - y)                                  # [n, k]
  shape = lambda f: f[..., 0] if vec else f.reshape(f.shape[:2] + np.shape(y_train)[1:])
  f_train = shape(f0 - jnp.einsum("ij,tj,jk->tik", evecs, moved, r))
  if k_test_train is None:
    return f_train, None
  kt = jnp.asarray(k_test_train, y.dtype)
  f0t = jnp.zeros((kt.shape[0], y.shape[1]), y.dtype) if f0_test is None else (
      jnp.asarray(f0_test, y.dtype).reshape(kt.shape[0], y.shape[1]))
  return f_train, shape(f0t - jnp.einsum("ij,tj,jk->tik", kt @ evecs, gain, r))


def _flow_factors(evals, t, n):
  """Gradient flow: `moved = 1 - e^{-a}`, `gain = moved / lam`, `a = t lam / n`."""
  t = t[:, None]
  null = evals == 0
  a = jnp.where(null, 0.0, t * evals / n)
  moved = -jnp.expm1(-a)
  small = a < 1e-6  # the series keeps t / n exact where lam underflows
  gain = jnp.where(small, (t / n) * (1 - a / 2), moved / jnp.where(small, 1.0, evals))
  return moved, jnp.where(null, 0.0, gain)


def _descent_factors(evals, lr, k, n):
  """`k` gradient-descent steps: `moved = 1 - (1 - a)^k`, `a = lr lam / n`."""
  k = k[:, None]
  a = lr * evals / n
  # (1 - a)^k via logs for accuracy at small a; a > 1 (steps past the edge
  # of stability) oscillates with sign (-1)^k and grows.
  log_abs = k * jnp.log(jnp.abs(jnp.where(a == 1, 0.5, 1 - a)))
  sign = jnp.where(a > 1, 1 - 2 * jnp.mod(k, 2), 1.0)
  decay = jnp.where(a == 1, (k == 0).astype(a.dtype), sign * jnp.exp(log_abs))
  moved = jnp.where(a < 0.5, -jnp.expm1(k * jnp.log1p(-jnp.minimum(a, 0.5))), 1 - decay)
  small = k * a < 1e-6
  gain = jnp.where(small, k * lr / n * (1 - (k - 1) * a / 2),
                   moved / jnp.where(small, 1.0, evals))
  null = evals == 0  # the null space: f keeps f0, pseudo-inverse for the test points
  return jnp.where(null, 0.0, moved), jnp.where(null, 0.0, gain)


def mse_predictor(k_train_train: ArrayLike, y_train: ArrayLike, *,
                  lr: float | None = None, rcond: float | None = None) -> Callable:
  """The linearised network trained on `(1/2n) sum ||f - y||^2` with kernel `K`.

  Gradient flow (`lr=None`), `df/dt = -(1/n) K (f - y)`:

      f_t  = y + exp(-t K/n) (f0 - y)
      f*_t = f0* + K* K^+ (I - exp(-t K/n)) (y - f0)

  or gradient descent with step `lr` after `t / lr` steps (`t = lr x steps`,
  `docs/conventions.md`; rounded to a whole number of steps), `exp(-t K/n)` becoming `(I - lr K/n)^{t/lr}`
  (past `lr > max_learning_rate(K)` it grows). Both through one
  eigendecomposition `K = V diag(lam) V^T`, done here once for every call of
  `predict_fn`. `(1 - e^{-a}) / lam` is formed as `-expm1(-a) / lam`,
  bounded by `1/lam` at every `t`, so `t` up to 1e15 and `t = inf` (kernel
  regression) are finite. Eigenvalues at or below `rcond max(lam)` (default
  `rcond = n eps`, `numpy.linalg.lstsq`'s rule; eigh determines an
  eigenvalue only to about that) are the null space: `f` keeps its initial
  value there and test points do not move, so `t = inf` is the minimum-norm
  (pseudo-inverse) kernel regression. A
  kernel that is not symmetric (`rtol 1e-5`) or has an eigenvalue below
  `-PSD_TOL n eps max|lam|` is refused.

  Args:
    k_train_train: `[n, n]` symmetric PSD kernel.
    y_train: `[n]` or `[n, ...]` targets.
    lr: `None` for gradient flow, or the gradient-descent learning rate.
    rcond: eigenvalues `<= rcond max(lam)` are null (default `n eps` of the
      working precision).

  Returns:
    `predict_fn(t, f0_train=None, k_test_train=None, f0_test=None) ->
    (f_train [T, n, ...], f_test [T, m, ...] or None)` at times `t: [T]`
    (`>= 0`; `inf` allowed), with outputs at init `f0_*` (default 0) and the
    test-train kernel `k_test_train: [m, n]`.
  """
  if lr is not None:
    _checks.check_positive("lr", lr)
  if rcond is not None:
    _checks.check_finite_nonnegative("rcond", rcond)
  evals, evecs = _eigh_train(k_train_train, rcond)
  n = evals.shape[0]
  _check_outputs(y_train, None, None, None, n)

  def predict_fn(t: ArrayLike, f0_train: ArrayLike | None = None,
                 k_test_train: ArrayLike | None = None, f0_test: ArrayLike | None = None):
    _checks.check_finite_nonnegative("t", t, allow_inf=True)
    _checks.check_ndim("t", t, (0, 1))
    _check_outputs(y_train, f0_train, k_test_train, f0_test, n)
    t = jnp.atleast_1d(jnp.asarray(t, evals.dtype))
    factors = (_flow_factors(evals, t, n) if lr is None
               else _descent_factors(evals, lr, jnp.round(t / lr), n))
    return _predict(evecs, y_train, *factors, f0_train, k_test_train, f0_test)

  return predict_fn


def linearized(apply_fn: Callable, params0, x_train: ArrayLike, y_train: ArrayLike,
               x_test: ArrayLike | None = None, y_test: ArrayLike | None = None, *,
               lr: float | None = None) -> Callable:
  """A finite network linearised around its own init: the kernel predictor of
  its empirical NTK `K = J(params0) J(params0)^T` (Lee et al. 2019).

  Trained on the loss of docs/conventions.md, `(1/2n) sum ||f - y||^2`, the
  linear model `f_lin(x) = f(params0, x) + J(params0, x) (params - params0)`
  moves in function space as `mse_predictor(K, y_train, lr=lr)`: gradient flow
  for `lr=None`, gradient descent with step `lr` at `t / lr` steps
  (`t = lr x steps`), exactly. Outputs start at `f(params0, x)`.

  Args:
    apply_fn: `apply_fn(params, x: [n, d]) -> [n]` or `[n, k]`.
    params0: the parameters at init (any pytree; jit- and vmap-able, e.g.
      over seeds).
    x_train: `[n, d]`; y_train: `[n]` or `[n, k]`.
    x_test: `[m, d]` or None; y_test: `[m]` / `[m, k]` or None.
    lr: None (gradient flow) or the gradient-descent step.

  Returns:
    `predict_fn(t) -> dict` at times `t: [T]`: `f_train [T, n(, k)]`, `loss
    [T]` (train), and with `x_test` `f_test [T, m(, k)]`, with `y_test`
    `test_loss [T]`.
  """
  k = empirical_ntk(apply_fn, params0, x_train)
  predict = mse_predictor(k, y_train, lr=lr)
  f0 = apply_fn(params0, x_train)
  k_test = f0_test = None
  if x_test is not None:
    k_test = empirical_ntk(apply_fn, params0, x_test, x_train)
    f0_test = apply_fn(params0, x_test)

  def half_mse(f, y):
    d = f - jnp.asarray(y, f.dtype)
    return 0.5 * jnp.mean(jnp.sum(d.reshape(d.shape[:2] + (-1,)) ** 2, -1), -1)

  def predict_fn(t: ArrayLike) -> dict:
    f, ft = predict(t, f0, k_test, f0_test)
    out = {"f_train": f, "loss": half_mse(f, y_train)}
    if ft is not None:
      out["f_test"] = ft
      if y_test is not None:
        out["test_loss"] = half_mse(ft, y_test)
    return out

  return predict_fn


def max_learning_rate(k_train_train: ArrayLike) -> jax.Array:
  """The largest learning rate at which gradient descent on the linearised
  network converges: `2 n / lam_max(K)` for the loss `(1/2n) sum ||f - y||^2`
  (`docs/conventions.md`). Each step multiplies the residual along the top
  eigenvector by `1 - lr lam_max / n`: below this rate it shrinks, above it
  grows, and at it oscillates without converging. `inf` for `K = 0`. A
  0-d array (traceable: vmap it over kernels)."""
  evals, _ = _eigh_train(k_train_train)
  top = evals[-1]
  return jnp.where(top > 0, 2 * evals.shape[0] / jnp.where(top > 0, top, 1), jnp.inf)


def gradient_flow_mse(k_train_train: ArrayLike, y_train: ArrayLike,
                      t: ArrayLike, f0_train: ArrayLike | None = None,
                      k_test_train: ArrayLike | None = None,
                      f0_test: ArrayLike | None = None):
  """Linearised network under gradient flow: `mse_predictor(K, y)(t, ...)`.

  Args:
    k_train_train: `[n, n]` symmetric PSD kernel.
    y_train: `[n]` or `[n, k]`.
    t: `[T]` times >= 0 (`inf` allowed: kernel regression).
    f0_train, f0_test: outputs at init (default 0).
    k_test_train: `[n_test, n]`.

  Returns:
    `f_train: [T, n(, k)]`, or `(f_train, f_test)` when `k_test_train` is given.
  """
  _checks.check_finite_nonnegative("t", t, allow_inf=True)
  _checks.check_ndim("t", t, (0, 1))
  f, ft = mse_predictor(k_train_train, y_train)(t, f0_train, k_test_train, f0_test)
  return f if k_test_train is None else (f, ft)


def gradient_descent_mse(k_train_train: ArrayLike, y_train: ArrayLike,
                         lr: float, steps: ArrayLike,
                         f0_train: ArrayLike | None = None,
                         k_test_train: ArrayLike | None = None,
                         f0_test: ArrayLike | None = None):
  """Linearised network after `steps` gradient-descent steps of size `lr`:
  `mse_predictor(K, y, lr=lr)(lr * steps, ...)`. `f_k = y + (I - lr K/n)^k
  (f0 - y)`; equals `gradient_flow_mse` at `t = lr k` as `lr -> 0`.

  Args:
    lr: learning rate > 0.
    steps: `[T]` step counts >= 0.
    Other arguments and the return value as in `gradient_flow_mse`.
  """
  _checks.check_positive("lr", lr)
  _checks.check_finite_nonnegative("steps", steps)
  _checks.check_ndim("steps", steps, (0, 1))
  v = _checks.concrete(steps)
  if v is not None and np.any(v != np.round(v)):
    raise ValueError(f"`steps` must be whole numbers of steps, got {v!r}.")
  predict = mse_predictor(k_train_train, y_train, lr=lr)
  f, ft = predict(jnp.asarray(steps, jnp.result_type(float)) * lr, f0_train,
                  k_test_train, f0_test)
  return f if k_test_train is None else (f, ft)
