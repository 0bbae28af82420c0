"""Exact Plackett-Luce top-K inclusion probabilities by quadrature.

Single model (M = 1). For one context with scores s_i, w_i = exp(s_i), and the
candidate set C drawn by Gumbel-top-K (equivalently K draws without
replacement), docs/method.md, "Exact inclusion probabilities":

  P(a in C) = int_0^inf w_a exp(-w_a t) F_a(t) dt,
  F_a(t)    = P(#{i != a : T_i < t} <= K - 1),   T_i ~ Exp(w_i) independent,

the count Poisson-binomial with p_i(t) = 1 - exp(-w_i t). Everything is
written in x = ln t, so that u_i = w_i t = exp(s_i + x) and scores of any
magnitude neither overflow nor underflow.

`exact_inclusion_log_prob` evaluates the integral by Gauss-Legendre panels.

* Head and tail. The top `head_size` items by score (the head, chosen under
  stop_gradient) are counted exactly, at every node, with distributions
  truncated at K-1. The other items (the tail) enter only through their
  power sums M_m = sum_tail exp(m (s_i - c)), m = 1..`num_moments`, c the
  lowest head score: ONE pass over the catalogue per context, whatever the
  number of nodes. At a node, every statistic of the tail that is a sum of
  an analytic function of u_i is a power series in u = e^(s + x), so
  sum_tail g(u_i) = sum_m g_m e^(m (x + c)) M_m. The tail's items are the
  ones with small u wherever the count matters (u_(h+1) <= -ln(1 - K / (h+1))
  at tau), which is where these series converge fast.
* Tail count. Default `tail="series"`: with the odds rho_i = e^(u_i) - 1
  and Pi_r = sum_tail rho_i^r (r = 1..`series_terms`), the tail's pgf is
  exp(-sum u_i) exp(sum_r (-1)^(r+1) Pi_r z^r / r); keeping Pi_1..Pi_R gives
  P(tail count = m) exactly for m <= R and to high accuracy beyond (measured
  in benchmarks/inclusion_accuracy.py). "normal", "edgeworth" (skewness
  corrected) and "poisson" approximate the tail count from its first
  cumulants instead (less accurate; kept for the comparison); "exact" puts
  every item in the head.
* Leave-one-out without deconvolution. For a requested item a, the count of
  the other items is the head without a (a's p set to 0) plus the tail
  without a (a's power-sum terms subtracted: sums of positive terms, not a
  deconvolution). The head is added to the tail's CDF by the stable
  recursion C <- q C + p shift(C) (a convex combination); F_a is the last
  entry. `exact_inclusion_log_prob_all` serves every item at once from
  prefix distributions and suffix CDFs of the head:
  F_a = sum_i P_{<j}[i] C_{>j}[K-1-i] for the head item at position j.
* Panels. Three roots of mu(x) = m, mu the mean count (a monotone Newton
  iteration in t, fixed count, on head terms plus tail series), give x_tau
  (m = K; tau of the successive-sampling approximation) and the ends x_0,
  x_1 beyond which the count's tails are provably below `tolerance`: at x_0,
  P(count >= K) <= mu^K / K!; at x_1, P(count <= K) <= e^(K-mu) (mu/K)^K
  (Chernoff), or, when few items remain, the union bound on the items not
  yet arrived. The panels are uniform in z, x = x_tau + c sinh(z),
  c = sd(count) / (d mu / dx) at tau: dense where F_a drops, wide in the
  exponential tails. Node positions are under stop_gradient (the integral
  does not depend on them).
* Integrand. Items with w_a tau <= 1 integrate f_a F_a in log space (the
  part before x_0 is p_a(t_0), F_a = 1 there up to `tolerance`); items with
  w_a tau > 1 (P near 1) integrate the complement
  1 - P = e^(-w_a t_1) + int f_a (1 - F_a), whose integrand is small where
  their own arrival density f_a peaks, so no panel has to resolve that peak.

The O(N) successive-sampling approximation is `numerics.successive_sampling`;
the pieces both share (elementwise race terms, the power sums over the
catalogue, the mean-count root find) are `numerics.race`.

Every reduction over the catalogue goes through one helper,
`race.masked_item_sums` (a sum over items of an elementwise function of a block
of scores `[batch, n]` under a mask). The dense entry points call it once (or
per `item_block` items); the `_blocked` entry points take two-tower factors
and run it as a `lax.scan` over item blocks, rematerialised in the backward
pass, so that no `[batch, items]` matrix is formed.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy import special

from cpg_jax.numerics import race
from cpg_jax.numerics import sharding

# The smallest sinh scale of the panels (in ln t).
_SCALE_MIN = 1.0
# F below this contributes nothing to any integral (F enters linearly).
_F_TINY = 1e-30

TAILS = ("series", "normal", "edgeworth", "poisson", "exact")

def _odds_power_series(num_terms: int, num_moments: int) -> np.ndarray:
  """`[R, M]`: (e^u - 1)^r = sum_m r! S(m, r) / m! u^m, S the Stirling numbers of
  the second kind (all coefficients positive: no cancellation)."""
  stirling = np.zeros((num_moments + 1, num_terms + 1), dtype=object)
  stirling[0, 0] = 1
  for m in range(1, num_moments + 1):
    for r in range(1, num_terms + 1):
      stirling[m, r] = r * stirling[m - 1, r] + stirling[m - 1, r - 1]
  out = np.zeros((num_terms, num_moments))
  for r in range(1, num_terms + 1):
    for m in range(1, num_moments + 1):
      out[r - 1, m - 1] = float(math.factorial(r) * stirling[m, r]) / math.factorial(m)
  return out


def _tail_coefficients(tail: str, num_terms: int, num_moments: int) -> np.ndarray:
  """`[S, M]`: each tail statistic sum_tail g(u_i) as sum_m C[s, m] u^m."""
  one = np.zeros(num_moments)
  one[0] = 1.0
  e1, e2, e3 = (race.exp_series(k, num_moments) for k in (1.0, 2.0, 3.0))
  mean = -e1  # 1 - e^-u
  var = e1 - e2  # p q = e^-u - e^-2u
  third = -e1 + 3 * e2 - 2 * e3  # p q (q - p)
  if tail == "series":
    return np.concatenate([one[None], _odds_power_series(num_terms, num_moments)])
  if tail == "normal":
    return np.stack([mean, var])
  if tail == "edgeworth":
    return np.stack([mean, var, third])
  if tail == "poisson":
    return mean[None]
  raise ValueError(tail)



def _chernoff_mean(k: int, log_inv_delta: float) -> float:
  """The m > k with m - k - k ln(m / k) = ln(1/delta) (bisection, Python floats)."""
  lo, hi = float(k), float(k) + 2.0 * log_inv_delta + 2.0 * math.sqrt(k * log_inv_delta) + 2.0
  for _ in range(200):
    mid = 0.5 * (lo + hi)
    if mid - k - k * math.log(mid / k) < log_inv_delta:
      lo = mid
    else:
      hi = mid
  return hi


def _panel_targets(num_items: int, k: int, tolerance: float, eps: float) -> tuple[float, ...]:
  """Mean counts (m_0, K, m_1) at the left end, the centre and the right end."""
  log_delta = math.log(tolerance)
  # P(count >= K) <= e_K(p) <= mu^K / K!.
  m0 = min(math.exp((log_delta + math.lgamma(k + 1)) / k), 0.5 * k)
  # P(count <= K) <= e^(K - mu) (mu / K)^K (Chernoff), or, with r = N - K
  # items still to arrive, P(#not arrived >= r) <= (N - mu)^r / r!.
  m1 = _chernoff_mean(k, -log_delta)
  r = num_items - k
  remaining = math.exp((log_delta + math.lgamma(r + 1)) / r)
  remaining = max(remaining, 64 * eps * num_items)  # Representable below N.
  return (m0, float(k), min(m1, num_items - remaining))


def _nodes(x_left, x_mid, x_right, scale, num_nodes: int, order: int):
  """Log-time nodes and weights `[batch, J]` from the panel ends and the scale.

  x = x_mid + scale * sinh(z); each side of x_mid gets num_nodes / (2 order)
  panels of equal width in z with `order` Gauss-Legendre nodes each.
  """
  per_side = num_nodes // (2 * order)
  xi, omega = np.polynomial.legendre.leggauss(order)
  # asinh(v) = log(v + sqrt(v^2 + 1)) for v >= 0; the left end is -asinh(|v|).
  asinh = lambda v: jnp.log(v + jnp.sqrt(v * v + 1.0))
  z0 = -asinh((x_mid - x_left) / scale)  # <= 0
  z1 = asinh((x_right - x_mid) / scale)  # >= 0
  edges = np.linspace(0.0, 1.0, per_side + 1)
  z_list, w_list = [], []
  for end in (z0, z1):
    for p in range(per_side):  # A static loop over a handful of panels.
      lo, hi = edges[p] * end, edges[p + 1] * end
      half = 0.5 * (hi - lo)
      z_list.append(0.5 * (lo + hi)[:, None] + half[:, None] * xi[None, :])
      w_list.append(jnp.abs(half)[:, None] * omega[None, :])
  z = jnp.concatenate(z_list, axis=1).astype(x_mid.dtype)
  w = jnp.concatenate(w_list, axis=1).astype(x_mid.dtype)
  grow, shrink = jnp.exp(z), jnp.exp(-z)
  x = x_mid[:, None] + scale[:, None] * 0.5 * (grow - shrink)
  return x, w * scale[:, None] * 0.5 * (grow + shrink)


# ----------------------------------------------------------------------------
# The count distribution.
# ----------------------------------------------------------------------------


def _series_cdf(stats: jax.Array, k: int) -> jax.Array:
  """Tail CDF from its odds power sums: exact pgf coefficients up to z^R.

  With rho_i = p_i / q_i, the tail's pgf is prod_i q_i * prod_i (1 + rho_i z)
  = exp(-sum u_i) * exp(sum_r (-1)^(r+1) Pi_r z^r / r), Pi_r = sum_i rho_i^r.
  Keeping Pi_1..Pi_R gives P(T = m) exactly for m <= R. The coefficients are
  written as a Poisson(Pi_1) term times a_m,
  P(T = m) = exp(-sum u + m ln Pi_1 - ln m!) a_m, with (Newton's identities)
  a_m = sum_{r=1..R} (-1)^(r+1) beta_r (m-1)!/(m-r)! a_{m-r},
  beta_r = Pi_r / Pi_1^r in [0, 1], so that no power of Pi_1 under/overflows.

  Args:
    stats: `[..., 1 + R]`, (sum u, Pi_1, ..., Pi_R).
  Returns:
    `[..., K]`.
  """
  dtype = stats.dtype
  lead = stats.shape[:-1]
  stats = stats.reshape(-1, stats.shape[-1]).T  # [1 + R, X]
  num_terms = stats.shape[0] - 1
  total_u = jnp.maximum(stats[0], 0.0)
  log_pi = race.safe_log(stats[1:])  # [R, X]
  log_pi1 = jnp.maximum(log_pi[0], -1e4)
  r = jnp.arange(1, num_terms + 1, dtype=dtype)[:, None]
  beta = jnp.clip(jnp.exp(log_pi - r * log_pi1), 0.0, 1.0)  # beta_1 = 1
  # coef[m-1, r-1] = (-1)^(r+1) (m-1)! / (m-r)! for r <= m, else 0.
  coef = np.zeros((max(k - 1, 0), num_terms))
  for m in range(1, k):
    for j in range(1, min(m, num_terms) + 1):
      coef[m - 1, j - 1] = (-1.0) ** (j + 1) * math.exp(math.lgamma(m) - math.lgamma(m - j + 1))

  def step(window, c):  # window [R, X]: a_{m-1}, ..., a_{m-R}
    a = jnp.sum(c[:, None] * beta * window, axis=0)
    # Only far outside the series' range can a grow without bound.
    a = jnp.clip(jnp.nan_to_num(a), -1e30, 1e30)
    return jnp.concatenate([a[None], window[:-1]], axis=0), a

  start = sharding.varying_like(jnp.zeros(beta.shape, dtype).at[0].set(1.0), beta)
  _, a = jax.lax.scan(step, start, jnp.asarray(coef, dtype))  # [K-1, X]
  a = jnp.concatenate([jnp.ones((1, a.shape[1]), dtype), a], axis=0)  # [K, X]
  m = jnp.arange(k, dtype=dtype)[:, None]
  log_base = -total_u + m * log_pi1 - special.gammaln(m + 1.0)
  pmf = jnp.maximum(jnp.exp(jnp.minimum(log_base, race.EXP_MAX)) * a, 0.0)
  cdf = jnp.minimum(jnp.cumsum(pmf, axis=0), 1.0)
  return cdf.T.reshape(lead + (k,))


def _tail_cdf(stats: jax.Array, k: int, tail: str) -> jax.Array:
  """P(tail count <= m) for m = 0..K-1 from its statistics `[..., S]`: `[..., K]`."""
  dtype = stats.dtype
  if tail == "exact":
    return jnp.ones(stats.shape[:-1] + (k,), dtype)
  if tail == "series":
    return _series_cdf(stats, k)
  m = jnp.arange(k, dtype=dtype)
  mean = jnp.maximum(stats[..., 0:1], 0.0)
  if tail == "poisson":
    safe = jnp.maximum(mean, 1e-30)
    log_pmf = m * jnp.log(safe) - mean - special.gammaln(m + 1.0)
    return jnp.minimum(jnp.cumsum(jnp.exp(log_pmf), axis=-1), 1.0)
  # A variance floor keeps z finite for a (nearly) empty tail, whose count
  # is then 0 with certainty: z = (m + 1/2 - mean) / sd is large and positive.
  var = jnp.maximum(stats[..., 1:2], 1e-6)
  sd = jnp.sqrt(var)
  z = (m + 0.5 - mean) / sd  # Continuity-corrected.
  cdf = special.ndtr(z)
  if tail == "edgeworth":
    skew = stats[..., 2:3] / (var * sd)
    density = jnp.exp(-0.5 * z * z) / math.sqrt(2.0 * math.pi)
    cdf = jnp.clip(cdf - density * skew / 6.0 * (z * z - 1.0), 0.0, 1.0)
  return cdf


def _tail_model(log_scale, log_moments, *, tail: str, k: int, series_terms: int):
  """The tail count's CDF `[..., J, K]` at each node from its power sums."""
  coefficients = _tail_coefficients(tail, series_terms, log_moments.shape[-1])
  return _tail_cdf(race.series_sums(coefficients, log_scale, log_moments), k, tail)


def _add_item(dist, p, q):
  """Adds one Bernoulli(p) to a truncated distribution (or CDF) `[K, X]`."""
  shifted = jnp.concatenate([jnp.zeros_like(dist[:1]), dist[:-1]], axis=0)
  return q * dist + p * shifted


# The head's walk narrows its state this many times at most: each width is
# its own compiled loop, so more stages save a little work (11 stages: 0.60
# of the full walk at K = 100, 4 stages: 0.67) for a longer compile.
_WALK_STAGES = 4


def _walk_plan(head: int, k: int, chunk: int) -> tuple[int, list[tuple[int, int, int]]]:
  """(chunk size, [(first chunk, end chunk, entries kept)] per stage) of the walk.

  After j of the h items, the last entry at the end can depend only on the
  entries m >= K-1-(h-j) (each item moves mass up by at most one), so a
  stage starting at item j carries the top min(K, h - j + 1) entries.
  Chunks are balanced (the padding is a few items of p = 0) and grouped
  into at most `_WALK_STAGES` stages.
  """
  num_chunks = -(-head // chunk)
  chunk = -(-head // num_chunks)
  bounds = np.linspace(0, num_chunks, min(_WALK_STAGES, num_chunks) + 1).round().astype(int)
  return chunk, [(int(a), int(b), min(k, head - int(a) * chunk + 1))
                 for a, b in zip(bounds[:-1], bounds[1:])]


def _split_chunks(p, q, chunk: int):
  """`[h, X]` -> `[num_chunks, chunk, X]`, padded with items of p = 0 (no effect)."""
  num_chunks = -(-p.shape[0] // chunk)
  pad = num_chunks * chunk - p.shape[0]
  p = jnp.pad(p, ((0, pad), (0, 0))).reshape(num_chunks, chunk, -1)
  q = jnp.pad(q, ((0, pad), (0, 0)), constant_values=1.0).reshape(num_chunks, chunk, -1)
  return p, q


def _add_items_last(p, q, start, chunk: int):
  """Adds h Bernoullis (p, q `[h, X]`) to `start` `[K, X]` in turn; returns the
  last entry of the result `[X]` (F = P(count <= K-1) for a CDF start).

  Exact: the entries dropped along the way cannot reach the last one (see
  `_walk_plan`). The backward pass keeps only the states at chunk
  boundaries and recomputes the states inside a chunk (memory
  O((h / chunk + chunk) K X) instead of O(h K X)), then runs the adjoint
  recursion lam <- q lam + p lam[+1].
  """
  return _add_items_last_vjp(p, q, start, chunk, start.shape[0])


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def _add_items_last_vjp(p, q, start, chunk: int, k: int):
  return _add_items_last_fwd(p, q, start, chunk, k)[0]


def _add_items_last_fwd(p, q, start, chunk, k):
  chunk, stages = _walk_plan(p.shape[0], k, chunk)
  p_chunks, q_chunks = _split_chunks(p, q, chunk)
  state = sharding.varying_like(start, p)  # a constant start (tail="exact") in shard_map

  def run_chunk(state, pq):
    end = jax.lax.scan(lambda c, x: (_add_item(c, *x), None), state, pq)[0]
    return end, state

  boundaries = []
  for first, end, width in stages:  # At most _WALK_STAGES.
    state, starts = jax.lax.scan(run_chunk, state[-width:],
                                 (p_chunks[first:end], q_chunks[first:end]))
    boundaries.append(starts)  # [chunks of the stage, width, X]
  return state[-1], (p_chunks, q_chunks, boundaries, p.shape[0])


def _add_items_last_bwd(chunk, k, residuals, grad):
  p_chunks, q_chunks, boundaries, head = residuals
  _, stages = _walk_plan(head, k, chunk)

  def back_chunk(lam, args):
    p, q, first = args
    _, states = jax.lax.scan(lambda c, x: (_add_item(c, *x), c), first, (p, q))

    def adjoint(lam, args):
      p, q, state = args
      shifted = jnp.concatenate([jnp.zeros_like(state[:1]), state[:-1]], axis=0)
      grad_p, grad_q = jnp.sum(lam * shifted, axis=0), jnp.sum(lam * state, axis=0)
      lam = q * lam + p * jnp.concatenate([lam[1:], jnp.zeros_like(lam[:1])], axis=0)
      return lam, (grad_p, grad_q)

    return jax.lax.scan(adjoint, lam, (p, q, states), reverse=True)

  lam = grad[None]  # the cotangent of the final state's kept (last) entry
  grads_p, grads_q = [], []
  for (first, end, width), starts in reversed(list(zip(stages, boundaries))):
    lam = jnp.pad(lam, ((width - lam.shape[0], 0), (0, 0)))  # dropped entries: zero
    lam, (grad_p, grad_q) = jax.lax.scan(
        back_chunk, lam, (p_chunks[first:end], q_chunks[first:end], starts), reverse=True)
    grads_p.append(grad_p)
    grads_q.append(grad_q)
  width = grad.shape[0]
  flat = lambda parts: jnp.concatenate(parts[::-1]).reshape(-1, width)[:head]
  return flat(grads_p), flat(grads_q), jnp.pad(lam, ((k - lam.shape[0], 0), (0, 0)))


_add_items_last_vjp.defvjp(_add_items_last_fwd, _add_items_last_bwd)


def _head_tables(head_p, head_q, tail_cdf):
  """Prefix distributions and suffix CDFs of the head count, truncated at K-1.

  Args:
    head_p, head_q: `[batch, J, h]`, the head items' p and q at each node.
    tail_cdf: `[batch, J, K]`, the tail count's CDF.
  Returns:
    prefix `[batch, h+1, J, K]`: entry j is the distribution of the count of
      head items 0..j-1; suffix `[batch, h+1, J, K]`: entry j is the CDF of
      the count of head items j..h-1 plus the tail (entry h is the tail's).
  """
  batch, nodes, k = tail_cdf.shape
  p = head_p.reshape(batch * nodes, -1).T  # [h, X]
  q = head_q.reshape(batch * nodes, -1).T
  tail = tail_cdf.reshape(batch * nodes, k).T  # [K, X]
  start, tail = sharding.varying_like((jnp.zeros_like(tail).at[0].set(1.0), tail), p)

  # One scan builds both tables: step j adds head item j to the prefix and
  # head item h-1-j to the suffix. The CDF obeys the same recursion as the
  # distribution (cumsum is linear and commutes with the shift), so the
  # suffix starts from the tail's CDF.
  def step(carry, pq):
    prefix, suffix = carry
    p, q, p_back, q_back = pq
    carry = (_add_item(prefix, p, q), _add_item(suffix, p_back, q_back))
    return carry, carry

  _, (prefix, suffix) = jax.lax.scan(step, (start, tail), (p, q, p[::-1], q[::-1]))
  prefix = jnp.concatenate([start[None], prefix], axis=0)  # [h+1, K, X]
  suffix = jnp.concatenate([suffix[::-1], tail[None]], axis=0)
  unflat = lambda t: t.reshape(t.shape[0], k, batch, nodes).transpose(2, 0, 3, 1)
  return unflat(prefix), unflat(suffix)


def default_head_size(num_items: int, num_candidates: int) -> int:
  """The default exact head: K + 16 items, or 2K + 16 when K > N / 10 (at most N).

  The tail's items must have small odds where the count matters; at tau the
  (h+1)-th item has p <= K / (h + 1), and a catalogue with K > N / 10 can
  have a tail of many items with large p (measured in
  benchmarks/inclusion_accuracy.py).
  """
  extra = num_candidates if 10 * num_candidates > num_items else 0
  return min(num_items, num_candidates + extra + 16)


def _check_options(k: int, num_items: int, num_nodes: int, order: int, tail: str,
                   num_moments: int) -> None:
  if tail not in TAILS:
    raise ValueError(f"tail must be one of {TAILS}, got {tail!r}")
  if num_nodes % (2 * order):
    raise ValueError(f"num_nodes ({num_nodes}) must be a multiple of 2 * order ({2 * order})")
  if num_moments % 2:
    raise ValueError(f"num_moments must be even, got {num_moments}")
  if not 1 <= k <= num_items:
    raise ValueError(f"need 1 <= K <= items, got K={k}, items={num_items}")


def _place_nodes(head_scores, shift, log_moments, num_items: int, k: int, *, tolerance: float,
                 num_iterations: int, num_nodes: int, order: int):
  """The quadrature's log-time nodes and weights `[batch, J]`, and the panel
  ends and centre x_left, x_mid, x_right `[batch]` (none differentiated)."""
  head_scores = jax.lax.stop_gradient(head_scores)
  log_moments = jax.lax.stop_gradient(log_moments)
  dtype = head_scores.dtype
  eps = float(jnp.finfo(dtype).eps)
  targets = _panel_targets(num_items, k, tolerance, eps)
  x, slope, var = race.solve_mean_count(head_scores, shift, log_moments, targets,
                                        num_iterations, num_items)
  x_left, x_mid, x_right = x[:, 0], x[:, 1], x[:, 2]
  x_left = jnp.minimum(x_left, x_mid - 1e-3)
  x_right = jnp.maximum(x_right, x_mid + 1e-3)
  width = jnp.maximum(x_mid - x_left, x_right - x_mid)
  scale = jnp.sqrt(var[:, 1]) / jnp.maximum(slope[:, 1], jnp.finfo(dtype).tiny)
  scale = jnp.clip(jnp.where(jnp.isfinite(scale), scale, width), _SCALE_MIN, width)
  log_t, weights = _nodes(x_left, x_mid, x_right, scale, num_nodes, order)  # [batch, J]
  return (jax.lax.stop_gradient(log_t), jax.lax.stop_gradient(weights),
          (x_left, x_mid, x_right))


def _tail_cdfs(log_t, shift, log_moments, own, in_head, k: int, *, tail: str,
               series_terms: int, all_items: bool):
  """The tail count's CDF at each node: of the whole tail `[batch, J, K]`
  (only when `all_items`, else None) and of the tail without each requested
  item `[batch, L, J, K]` (the whole tail's for a head item)."""
  dtype = log_t.dtype
  if tail == "exact":
    tail_cdf = jnp.ones(log_t.shape + (k,), dtype) if all_items else None
    return tail_cdf, jnp.ones(own.shape + log_t.shape[1:] + (k,), dtype)
  model = functools.partial(_tail_model, tail=tail, k=k, series_terms=series_terms)
  log_scale = log_t + shift[:, None]
  tail_cdf = model(log_scale, log_moments) if all_items else None
  # Leave-one-out for tail items: their own power-sum terms subtracted.
  num_moments = log_moments.shape[-1]
  m = jnp.arange(1, num_moments + 1, dtype=dtype)
  own_powers = jnp.exp(jnp.minimum((own - shift[:, None])[..., None] * m, race.EXP_MAX))
  rest = jnp.exp(log_moments)[:, None, :] - jnp.where(in_head[..., None], 0.0, own_powers)
  log_rest = race.safe_log(rest)  # [batch, L, M]
  return tail_cdf, model(log_scale[:, None, :], log_rest)  # [batch, L, J, K]


def _leave_one_out_cdf(head_p, head_q, match, tail_cdf, item_tail_cdf, all_items: bool,
                       chunk: int | None):
  """F_a = P(count of the items other than a <= K-1) at each node `[batch, L, J]`.

  Args:
    head_p, head_q: `[batch, J, h]`; match: bool `[batch, L, h]` (a's head slot).
    tail_cdf, item_tail_cdf: as returned by `_tail_cdfs`.
  """
  head = head_p.shape[-1]
  in_head = match.any(-1)
  if all_items:
    prefix, suffix = _head_tables(head_p, head_q, tail_cdf)  # [batch, h+1, J, K]
    pos = jnp.where(in_head, jnp.argmax(match, axis=-1), head)  # [batch, L]
    take = lambda table, index: jnp.take_along_axis(table, index[:, :, None, None], axis=1)
    left = take(prefix, pos)  # head items before a (all of them for a tail item)
    right = jnp.where(in_head[:, :, None, None], take(suffix, jnp.minimum(pos + 1, head)),
                      item_tail_cdf)
    cdf = jnp.sum(left * right[..., ::-1], axis=-1)  # [batch, L, J]
  else:
    # Head without a (p_a = 0) added to the tail without a.
    start = item_tail_cdf
    p = jnp.where(match[:, :, None, :], 0.0, head_p[:, None])  # [batch, L, J, h]
    q = jnp.where(match[:, :, None, :], 1.0, head_q[:, None])
    flat = lambda t: t.reshape(-1, t.shape[-1]).T  # [last, X]
    chunk = chunk or max(4, math.ceil(math.sqrt(head)))
    last = _add_items_last(flat(p), flat(q), flat(start), chunk)  # [X]
    cdf = last.reshape(start.shape[:-1])  # F_a at each node, [batch, L, J]
  return jnp.clip(cdf, 0.0, 1.0)


def _integrate(own, log_t, weights, cdf, ends):
  """log P(a in C) `[batch, L]` from F_a at the nodes `[batch, L, J]`.

  Items with w_a tau <= 1 integrate f_a F_a in log space; the others the
  complement 1 - P (see the module docstring).
  """
  x_left, x_mid, x_right = ends
  y = own[:, :, None] + log_t[:, None, :]  # [batch, L, J]
  log_f = race.log_density(y) + jnp.log(weights)[:, None, :]
  # Direct form: P = p_a(t_0) + int f_a F_a.
  positive = cdf > _F_TINY
  log_cdf = jnp.where(positive, jnp.log(jnp.where(positive, cdf, 1.0)), -jnp.inf)
  log_left = race.log_p(own + x_left[:, None])[:, :, None]
  direct = jax.nn.logsumexp(jnp.concatenate([log_left, log_f + log_cdf], axis=-1), axis=-1)
  # Complement form: 1 - P = exp(-w_a t_1) + int f_a (1 - F_a).
  log_right = -jnp.exp(jnp.minimum(own + x_right[:, None], race.Y_MAX))
  miss = jnp.exp(log_right) + jnp.sum(jnp.exp(log_f) * (1.0 - cdf), axis=-1)
  complement = jnp.log1p(-jnp.clip(miss, 0.0, 1.0 - 1e-6))
  top = jax.lax.stop_gradient(own + x_mid[:, None]) > 0.0  # w_a tau > 1
  return jnp.where(top, complement, jnp.minimum(direct, 0.0))


def _exact_core(source, items, k: int, *, num_nodes: int, order: int, head_size: int | None,
                tail: str, tolerance: float, num_iterations: int, series_terms: int,
                num_moments: int, all_items: bool = False, chunk: int | None = None) -> jax.Array:
  """log P(a in C) `[batch, L]` for any score source (see the public functions)."""
  num_items = source.num_items
  _check_options(k, num_items, num_nodes, order, tail, num_moments)
  if k == num_items:  # Every item is always drawn.
    return jnp.zeros(items.shape, source.dtype) * source.gather(items)
  head = num_items if tail == "exact" else min(
      num_items, head_size or default_head_size(num_items, k))
  if head == num_items:
    tail = "exact"
  head_ids = race.top_items(source, head)  # [batch, h]
  head_scores = source.gather(head_ids)  # differentiable
  own = source.gather(items)  # [batch, L]
  # The tail's power sums: the one pass over the catalogue (differentiable).
  shift = jax.lax.stop_gradient(head_scores[:, -1])
  log_moments = race.tail_moments(source, head_ids, shift, num_moments)  # [batch, M]
  log_t, weights, ends = _place_nodes(
      head_scores, shift, log_moments, num_items, k, tolerance=tolerance,
      num_iterations=num_iterations, num_nodes=num_nodes, order=order)
  # The count at every node.
  _, head_p, head_q = race.rates(head_scores[:, None, :] + log_t[:, :, None])  # [batch, J, h]
  match = items[:, :, None] == head_ids[:, None, :]  # [batch, L, h]
  tail_cdf, item_tail_cdf = _tail_cdfs(log_t, shift, log_moments, own, match.any(-1), k,
                                       tail=tail, series_terms=series_terms,
                                       all_items=all_items)
  cdf = _leave_one_out_cdf(head_p, head_q, match, tail_cdf, item_tail_cdf, all_items, chunk)
  return _integrate(own, log_t, weights, cdf, ends)


def exact_inclusion_log_prob(
    scores: jax.Array, items: jax.Array, num_candidates: int, *,
    num_nodes: int = 32, order: int = 8, head_size: int | None = None,
    tail: str = "series", series_terms: int = 12, num_moments: int = 32,
    tolerance: float = 1e-10, num_iterations: int = 8, item_block: int | None = None,
) -> jax.Array:
  """log P(a in C) of the Gumbel-top-K set C for the given items (M = 1).

  Differentiated with respect to `scores` by differentiating the quadrature
  at fixed nodes (the nodes' placement is not differentiated; the integral
  does not depend on it). Which items form the head is not differentiated;
  their scores are.

  Defaults, from benchmarks/inclusion_accuracy.py (float64, N = 1,000,
  K = 10 and 100, N(0, 1) and N(0, 3^2) scores, against 128 nodes with every
  item counted exactly): largest relative error 6e-8 (3e-9..6e-8 over the
  four cases; float32: 2e-6..8e-6), sums to K within 3e-8. 32 nodes (two
  panels of 8 per side) are kept although 24 (order 12; <= 1.4e-7 there) and
  16 (1.3e-5 there) would do at N = 1,000: on small or very peaked
  catalogues (N <= 50, N(0, 3^2)) those reach 4e-5 and 5e-4, 32 nodes 6e-7.
  The head K + 16 (one head of K items gives 1.4e-7; K / 2 fails, 18% at
  K = 100 peaked), R = 12 odds power sums (R = 8: 2.7e-6), M = 32 power sums
  (48 changes nothing measurable). The normal / Edgeworth / Poisson tails
  reach 4e-4..1e-3, 7e-5..5e-4, 1e-3 at K = 10 (1e-5 at best at K = 100).

  Cost per context: one pass over the items (M multiply-adds per item), then
  O(num_nodes x head x K) for the head (the dominant term for large K).

  Args:
    scores: float `[batch, items]` (finite), differentiated.
    items: int32 `[batch, L]`, the items (e.g. the rewarded ones).
    num_candidates: K, 1 <= K <= items.
    num_nodes: quadrature nodes per context (a multiple of 2 * order).
    order: Gauss-Legendre nodes per panel.
    head_size: items counted exactly (default `default_head_size`: K + 16,
      2K + 16 when K > N / 10); the rest through the `tail` model.
    tail: "series" (odds power sums), "normal", "edgeworth", "poisson", or
      "exact" (every item in the head: exact up to quadrature).
    series_terms: R, the odds power sums kept by tail="series".
    num_moments: M (even), the tail's power sums of exp(s).
    tolerance: the count's tail probability beyond the panel ends.
    num_iterations: Newton steps of the panel placement (converged in <= 4
      for N(0, 1..3^2) scores, 8 for N = 8 with N(0, 10^2)).
    item_block: items per block of the pass over items (default: one block
      up to 16,384 items, blocks of 16,384 beyond).
  Returns:
    float `[batch, L]`, <= 0.
  """
  source = race.DenseSource(jnp.asarray(scores), item_block)
  return _exact_core(source, jnp.asarray(items, jnp.int32), num_candidates,
                     num_nodes=num_nodes, order=order, head_size=head_size, tail=tail,
                     tolerance=tolerance, num_iterations=num_iterations,
                     series_terms=series_terms, num_moments=num_moments)


def exact_inclusion_log_prob_blocked(
    contexts: jax.Array, item_vectors: jax.Array, items: jax.Array, num_candidates: int, *,
    block_size: int = 65536, num_nodes: int = 32, order: int = 8,
    head_size: int | None = None, tail: str = "series", series_terms: int = 12,
    num_moments: int = 32, tolerance: float = 1e-10, num_iterations: int = 8,
) -> jax.Array:
  """`exact_inclusion_log_prob` with s = contexts @ item_vectors.T scored by item blocks.

  Args:
    contexts: float `[batch, d]`, differentiated.
    item_vectors: float `[items, d]`, differentiated.
    items: int32 `[batch, L]`.
    num_candidates: K.
    block_size: items per block; memory O(batch x block x num_moments).
    Others: as `exact_inclusion_log_prob`.
  Returns:
    float `[batch, L]`.
  """
  source = race.FactorSource(jnp.asarray(contexts), jnp.asarray(item_vectors), block_size)
  return _exact_core(source, jnp.asarray(items, jnp.int32), num_candidates,
                     num_nodes=num_nodes, order=order, head_size=head_size, tail=tail,
                     tolerance=tolerance, num_iterations=num_iterations,
                     series_terms=series_terms, num_moments=num_moments)


def exact_inclusion_log_prob_all(scores: jax.Array, num_candidates: int, **kwargs) -> jax.Array:
  """log P(a in C) for every item: `[batch, items]`.

  For tests and benchmarks: the head's prefix/suffix tables serve every item
  (memory O(batch x head x nodes x K)). Keyword arguments as
  `exact_inclusion_log_prob`.
  """
  scores = jnp.asarray(scores)
  items = jnp.broadcast_to(jnp.arange(scores.shape[1], dtype=jnp.int32), scores.shape)
  options = dict(num_nodes=32, order=8, head_size=None, tail="series", series_terms=12,
                 num_moments=32, tolerance=1e-10, num_iterations=8)
  options.update(kwargs)
  source = race.DenseSource(scores, options.pop("item_block", None))
  return _exact_core(source, items, num_candidates, all_items=True, **options)


def exact_inclusion_probs_all(scores: jax.Array, num_candidates: int, **kwargs) -> jax.Array:
  """P(a in C) for every item `[batch, items]`; each row sums to K."""
  return jnp.exp(exact_inclusion_log_prob_all(scores, num_candidates, **kwargs))

