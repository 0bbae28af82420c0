"""The exponential race behind Plackett-Luce top-K sets: shared pieces.

With w_i = exp(s_i) and arrival times T_i ~ Exp(w_i), the Gumbel-top-K set C
is the first K arrivals (docs/method.md, "Exact inclusion probabilities").
Both `numerics.inclusion` (exact, by quadrature) and
`numerics.successive_sampling` (the O(N) approximation) need the same three
things of a context's scores, all written in x = ln t (u_i = w_i t =
exp(s_i + x)) so that scores of any magnitude neither overflow nor underflow:

* elementwise p_i(t) = 1 - exp(-u_i), its log and the arrival density, with
  finite values and gradients for any score;
* the tail's power sums M_m = sum_i exp(m (s_i - c)), m = 1..M, over the
  items outside a small head: the only pass over the catalogue, dense or
  from two-tower factors block by block (`DenseSource`, `FactorSource`), so
  that no `[batch, items]` matrix is formed on the blocked path;
* the roots of the mean count mu(x) = sum_i p_i(e^x) = m (monotone Newton),
  which give the scale tau (m = K) and the quadrature's panel ends.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from cpg_jax.numerics import sharding

# exp(-e^40) is 0 in float32 and float64: beyond it p = 1, q = 0 exactly, and
# clamping there keeps e^y finite (so 0 * inf never appears in a gradient).
Y_MAX = 40.0
# Below this, 1 - exp(-e^y) = e^y (1 - e^y / 2) to working precision.
_Y_SMALL = -20.0
# Cap on the exponent of a power-series term: finite in float32 (e^80 = 5.5e34),
# reached only far outside the series' range (where the head bounds F anyway).
EXP_MAX = 80.0
# Items per block of the pass over a dense score matrix, unless given: keeps
# the pass's temporaries (8 powers per score) small for large catalogues.
_DENSE_BLOCK = 16384


# ----------------------------------------------------------------------------
# Elementwise pieces (finite values and gradients for any y).
# ----------------------------------------------------------------------------


def rates(y):
  """u = e^y, p = 1 - exp(-u), q = exp(-u) for y = s + ln t."""
  u = jnp.exp(jnp.minimum(y, Y_MAX))
  return u, -jnp.expm1(-u), jnp.exp(-u)


def log_p(y):
  """log(1 - exp(-e^y)): the log probability that an item arrived by t = e^(y - s)."""
  small = y < _Y_SMALL
  y_small = jnp.where(small, y, _Y_SMALL)
  y_large = jnp.minimum(jnp.where(small, _Y_SMALL, y), Y_MAX)
  return jnp.where(small, y_small + jnp.log1p(-0.5 * jnp.exp(y_small)),
                   jnp.log(-jnp.expm1(-jnp.exp(y_large))))


def log_density(y):
  """log(u e^-u), u = e^y: the arrival density w e^(-w t) times t (dx = dt / t)."""
  y = jnp.minimum(y, Y_MAX)
  return y - jnp.exp(y)


def safe_log(v):
  """log v for v > 0, -inf (zero gradient) for v <= 0."""
  positive = v > 0
  return jnp.where(positive, jnp.log(jnp.where(positive, v, 1.0)), -jnp.inf)


# ----------------------------------------------------------------------------
# Power series of tail statistics in u (static coefficient tables).
# ----------------------------------------------------------------------------


def exp_series(k: float, num_moments: int) -> np.ndarray:
  """The coefficients of u^m, m = 1..M, in the series of e^(-k u) (the u^0 term is 1)."""
  m = np.arange(1, num_moments + 1)
  return np.array([(-k) ** j / math.factorial(j) for j in m], np.float64)




def _root_coefficients(num_moments: int) -> np.ndarray:
  """`[3, M]`: sum (1 - e^-u), sum u e^-u, sum (e^-u - e^-2u) as series in u."""
  e1, e2 = exp_series(1.0, num_moments), exp_series(2.0, num_moments)
  m = np.arange(1, num_moments + 1)
  return np.stack([-e1, -m * e1, e1 - e2])


def series_sums(coefficients: np.ndarray, log_scale: jax.Array,
                 log_moments: jax.Array) -> jax.Array:
  """sum_m C[s, m] e^(m log_scale) M_m for every statistic s.

  Written as (C[s, m] m! / kappa^m) times
  exp(m log_scale + log M_m + m ln kappa - ln m!), kappa the growth rate of
  |C[s, m]| m! (3 for e^(-3u), r for the r-th odds power: r! S(m, r) <= r^m):
  both factors stay in float32's range, and the sum over m is one matmul.

  Args:
    coefficients: static `[S, M]`.
    log_scale: `[..., J]`, x + c at each node (log of the top tail item's u).
    log_moments: `[..., M]`, log M_m (leading dims broadcast against log_scale's).
  Returns:
    `[..., J, S]`.
  """
  dtype = log_scale.dtype
  num_moments = coefficients.shape[1]
  m = np.arange(1, num_moments + 1)
  log_factorial = np.array([math.lgamma(j + 1.0) for j in m])
  with np.errstate(divide="ignore"):
    # The growth rate of |C[s, m]| m!: 3 for e^(-3u), r for the odds power r.
    kappa = np.max(np.exp((np.log(np.abs(coefficients)) + log_factorial) / m))
  log_norm = m * math.log(max(kappa, 1.0)) - log_factorial
  scaled = coefficients * np.exp(-log_norm)[None, :]  # C m! / kappa^m
  exponent = (jnp.asarray(m, dtype) * log_scale[..., :, None] + log_moments[..., None, :]
              + jnp.asarray(log_norm, dtype))  # [..., J, M]
  terms = jnp.exp(jnp.minimum(exponent, EXP_MAX))
  return jnp.einsum("...m,sm->...s", terms, jnp.asarray(scaled, dtype),
                    precision=jax.lax.Precision.HIGHEST)


def root_stats(scores, log_t):
  """(p, d p / d ln t, p q) of each head item at ln t: `[..., 3]`."""
  u, p, q = rates(scores + log_t)
  return jnp.stack([p, u * q, p * q], axis=-1)


# ----------------------------------------------------------------------------
# The one reduction over the catalogue, and the two ways to feed it.
# ----------------------------------------------------------------------------


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def masked_item_sums(scores: jax.Array, mask: jax.Array, shift: jax.Array,
                      num_moments: int) -> jax.Array:
  """sum_i mask[b, i] exp(m (scores[b, i] - shift[b])) for m = 1..M: `[batch, M]`.

  The only sum over the catalogue in this module (besides the top-k
  selection and the successive-sampling gradient pass): a sum over the items
  of one block (or all of them) of an elementwise function of their scores.
  Every statistic of the tail at every node, and every sum of the root
  finds, is computed from these power sums. The powers are built by
  repeated multiplication (one exp per item); the gradient,
  d/ds_i = sum_m g_m m w_i^m, by Horner's rule (no stored `[batch, n, M]`).

  Args:
    scores: float `[batch, n]`, a block of scores.
    mask: bool `[batch, n]`, the items to count.
    shift: float `[batch]`, >= every counted score (so every power is <= 1).
    num_moments: M.
  """
  return _power_sums_fwd(scores, mask, shift, num_moments)[0]


def _shifted_weights(scores, mask, shift):
  # Masked scores are replaced by the shift before exp, so that they are
  # finite there too, then zeroed.
  safe = jnp.where(mask, scores, shift[:, None])
  return jnp.where(mask, jnp.exp(jnp.minimum(safe - shift[:, None], 0.0)), 0.0)


_POWER_BLOCK = 8


def _low_powers(weights, count: int):
  """[w, w^2, ..., w^count] stacked on a new leading axis."""
  powers = [weights]
  for _ in range(count - 1):  # A static handful of products.
    powers.append(powers[-1] * weights)
  return jnp.stack(powers)


def _power_sums_fwd(scores, mask, shift, num_moments):
  weights = _shifted_weights(scores, mask, shift)
  block = min(_POWER_BLOCK, num_moments)
  low = _low_powers(weights, block)  # [block, batch, n]
  step = low[-1]  # w^block
  sums, current = [], low
  for j in range(-(-num_moments // block)):  # Static: M / 8 blocks of powers.
    if j:
      current = current * step[None]
    sums.append(jnp.sum(current, axis=-1))  # [block, batch]
  sums = jnp.concatenate(sums, axis=0)[:num_moments]
  return sums.T, (scores, mask, shift)


def _power_sums_bwd(num_moments, residuals, grad):
  scores, mask, shift = residuals
  weights = _shifted_weights(scores, mask, shift)
  block = min(_POWER_BLOCK, num_moments)
  num_blocks = -(-num_moments // block)
  # d/ds_i sum_m g_m w_i^m = sum_m m g_m w_i^m = sum_j w^(8j) sum_i c_(8j+i) w^i.
  coefficients = grad * jnp.arange(1, num_moments + 1, dtype=grad.dtype)  # [batch, M]
  coefficients = jnp.pad(coefficients, ((0, 0), (0, num_blocks * block - num_moments)))
  low = _low_powers(weights, block)  # [block, batch, n]
  step = low[-1]
  total = jnp.zeros_like(weights)
  for j in reversed(range(num_blocks)):  # Horner's rule in w^8.
    inner = jnp.einsum("ibn,bi->bn", low, coefficients[:, j * block:(j + 1) * block],
                       precision=jax.lax.Precision.HIGHEST)
    total = inner if j == num_blocks - 1 else total * step + inner
  return total, None, jnp.zeros_like(shift)


masked_item_sums.defvjp(_power_sums_fwd, _power_sums_bwd)


def _membership(ids: jax.Array, first, width: int, batch: int) -> jax.Array:
  """bool `[batch, width]`: which of items first..first+width-1 are in `ids` `[batch, E]`."""
  local = ids - first
  inside = (local >= 0) & (local < width)
  rows = jnp.broadcast_to(jnp.arange(batch)[:, None], ids.shape)
  return jnp.zeros((batch, width), bool).at[rows, jnp.where(inside, local, width)].set(
      True, mode="drop")


@dataclasses.dataclass(frozen=True)
class DenseSource:
  """Dense scores `[batch, items]`, reduced in one block or in blocks of `block_size`."""

  scores: jax.Array
  block_size: int | None = None

  @property
  def batch_size(self) -> int:
    return self.scores.shape[0]

  @property
  def num_items(self) -> int:
    return self.scores.shape[1]

  @property
  def dtype(self):
    return self.scores.dtype

  @property
  def block(self) -> int:
    return min(self.block_size or _DENSE_BLOCK, self.num_items)

  @property
  def single_block(self) -> bool:
    return self.block == self.num_items

  def stop_gradient(self):
    return dataclasses.replace(self, scores=jax.lax.stop_gradient(self.scores))

  def gather(self, ids):
    return jnp.take_along_axis(self.scores, ids, axis=1)

  def scan_inputs(self):
    """(per-block inputs stacked on axis 0, block width) for `lax.scan`."""
    block = self.block
    num_blocks = -(-self.num_items // block)
    pad = num_blocks * block - self.num_items
    padded = jnp.pad(self.scores, ((0, 0), (0, pad)))
    return padded.reshape(self.batch_size, num_blocks, block).transpose(1, 0, 2), block

  def block_scores(self, block_input):
    return block_input


@dataclasses.dataclass(frozen=True)
class FactorSource:
  """Two-tower factors: s[b, i] = <contexts[b], item_vectors[i]>, scored block by block."""

  contexts: jax.Array
  item_vectors: jax.Array
  block_size: int

  single_block = False

  @property
  def batch_size(self) -> int:
    return self.contexts.shape[0]

  @property
  def num_items(self) -> int:
    return self.item_vectors.shape[0]

  @property
  def dtype(self):
    return jnp.result_type(self.contexts, self.item_vectors)

  def stop_gradient(self):
    return dataclasses.replace(self, contexts=jax.lax.stop_gradient(self.contexts),
                               item_vectors=jax.lax.stop_gradient(self.item_vectors))

  def gather(self, ids):
    return jnp.einsum("bd,bnd->bn", self.contexts, self.item_vectors[ids],
                      precision=jax.lax.Precision.HIGHEST)

  def scan_inputs(self):
    block = min(self.block_size, self.num_items)
    num_blocks = -(-self.num_items // block)
    pad = num_blocks * block - self.num_items
    padded = jnp.pad(self.item_vectors, ((0, pad), (0, 0)))
    return padded.reshape(num_blocks, block, -1), block

  def block_scores(self, block_input):
    return jnp.dot(self.contexts, block_input.T, precision=jax.lax.Precision.HIGHEST)


def _reduce(source, shift: jax.Array, num_moments: int,
            excluded: jax.Array | None = None) -> jax.Array:
  """`masked_item_sums` over the catalogue's items minus `excluded` `[batch, E]`.

  One call for an unblocked dense source; otherwise a `lax.scan` over item
  blocks whose body is rematerialised in the backward pass (memory
  O(batch x block)). Returns `[batch, M]`.
  """
  batch, num_items = source.batch_size, source.num_items
  if source.single_block:
    mask = jnp.ones((batch, num_items), bool)
    if excluded is not None:
      mask = ~_membership(excluded, 0, num_items, batch)
    return masked_item_sums(source.scores, mask, shift, num_moments)

  inputs, block = source.scan_inputs()

  @jax.checkpoint
  def body(total, args):
    block_input, first = args
    scores = source.block_scores(block_input)
    mask = jnp.broadcast_to((first + jnp.arange(block) < num_items)[None], (batch, block))
    if excluded is not None:
      mask = mask & ~_membership(excluded, first, block, batch)
    return total + masked_item_sums(scores, mask, shift, num_moments), None

  firsts = jnp.arange(inputs.shape[0]) * block
  init = sharding.varying_like(jnp.zeros((batch, num_moments), source.dtype), shift)
  total, _ = jax.lax.scan(body, init, (inputs, firsts))
  return total


def top_items(source, k: int) -> jax.Array:
  """int32 `[batch, k]`: the k highest-scored items, best first (not differentiated)."""
  source = source.stop_gradient()
  if isinstance(source, DenseSource):
    return jax.lax.top_k(source.scores, k)[1].astype(jnp.int32)
  inputs, block = source.scan_inputs()
  batch, num_items = source.batch_size, source.num_items
  block_k = min(k, block)

  def body(carry, args):
    best_values, best_ids = carry
    block_input, first = args
    ids = (first + jnp.arange(block)).astype(jnp.int32)
    scores = jnp.where(ids[None] < num_items, source.block_scores(block_input), -jnp.inf)
    values, local = jax.lax.top_k(scores, block_k)
    # Earlier blocks hold lower ids and come first: ties keep the lower id.
    values = jnp.concatenate([best_values, values], axis=1)
    merged_ids = jnp.concatenate([best_ids, ids[local]], axis=1)
    top, where = jax.lax.top_k(values, k)
    return (top, jnp.take_along_axis(merged_ids, where, axis=1)), None

  init = (jnp.full((batch, k), -jnp.inf, source.dtype), jnp.zeros((batch, k), jnp.int32))
  # Inside shard_map the carry must vary like the scores it will hold.
  init = sharding.varying_like(init, source.contexts)
  firsts = jnp.arange(inputs.shape[0]) * block
  (_, ids), _ = jax.lax.scan(body, init, (inputs, firsts))
  return ids


def tail_moments(source, head_ids, shift, num_moments: int):
  """log M_m = log sum_{i not in head} exp(m (s_i - shift)), m = 1..M: `[batch, M]`.

  The single pass over the catalogue. -inf for an empty tail.
  """
  batch = source.batch_size
  if head_ids.shape[1] == source.num_items:
    return jnp.full((batch, num_moments), -jnp.inf, source.dtype)
  return safe_log(_reduce(source, shift, num_moments, excluded=head_ids))


# ----------------------------------------------------------------------------
# The scale tau and the panel ends: roots of mu(x) = m.
# ----------------------------------------------------------------------------


def solve_mean_count(head_scores, shift, log_moments, targets: Sequence[float],
                      num_iterations: int, num_items: int):
  """x = ln t with sum_i p_i(t) = m for each target m, per context (not differentiated).

  mu(t) = sum_i (1 - exp(-w_i t)) is increasing and concave in t, so
  Newton's method in t started left of the root never overshoots and
  converges monotonically (quadratically near the root). The update, in x:
  x += log1p((m - mu) / (t mu'(t))), t mu'(t) = sum_i u_i q_i. The head's
  terms are evaluated directly, the tail's through its power sums (an even
  number of terms: a lower bound on the tail's mean for any u, so a root of
  the bound lies right of the true root; at the right end that keeps the
  bound on the count's tail valid even where the series has not converged).

  Start: mu(t) <= k + t S_{>k} for the mass S_{>k} of the items below the
  k-th, so x_start = max_{k < m} ln(m - k) - ln S_{>k} <= root. Every step
  is capped by an upper bound from the head, mu >= k (1 - exp(-w_(k) t)).

  Args:
    head_scores: `[batch, h]`, the top h scores, best first.
    shift: `[batch]`, the lowest head score (the power sums' shift).
    log_moments: `[batch, M]`, the tail's log power sums.
    targets: static, each in (0, N).
    num_iterations: static number of Newton steps.
    num_items: N.
  Returns:
    x `[batch, T]`, and (slope, var) = (t mu'(t), sum p q) at the last iterate.
  """
  dtype = head_scores.dtype
  head = head_scores.shape[1]
  m = jnp.asarray(targets, dtype)[None, :]  # [1, T]
  coefficients = _root_coefficients(log_moments.shape[1])
  # log S_{>k} for k = 0..h: the head scores from rank k on, plus the tail.
  rev = jax.lax.cumlogsumexp(head_scores, axis=1, reverse=True)  # [batch, h]
  rev = jnp.concatenate([rev, jnp.full_like(rev[:, :1], -jnp.inf)], axis=1)
  log_below = jnp.logaddexp(rev, (shift + log_moments[:, 0])[:, None])  # [batch, h + 1]
  k = jnp.arange(head + 1, dtype=dtype)
  gap = jnp.log(jnp.maximum(m.T - k[None, :], 1e-30))  # [T, h+1]
  bound = gap[None] - log_below[:, None, :]  # [batch, T, h+1]
  usable = (k[None, :] < m.T)[None] & jnp.isfinite(log_below)[:, None, :]
  x = jnp.max(jnp.where(usable, bound, -jnp.inf), axis=-1)  # [batch, T]
  rank = jnp.arange(1, head + 1, dtype=dtype)
  ratio = jnp.minimum(m.T / rank[None, :], 1.0 - 1e-7)  # [T, h]
  hi_terms = jnp.log(-jnp.log1p(-ratio)) - head_scores[:, None, :]
  hi = jnp.min(jnp.where((rank[None, :] > m.T)[None], hi_terms, jnp.inf), axis=-1)
  x = jnp.minimum(x, hi)

  def stats(x):
    direct = jnp.sum(root_stats(head_scores[:, None, :], x[:, :, None]), axis=2)
    tail = series_sums(coefficients, x + shift[:, None], log_moments)  # [batch, T, 3]
    return jnp.moveaxis(direct + jnp.maximum(tail, 0.0), -1, 0)

  def step(x, _):
    mu, slope, _ = stats(x)
    ratio = (m - mu) / jnp.maximum(slope, jnp.finfo(dtype).tiny)
    return jnp.minimum(x + jnp.log1p(jnp.clip(ratio, -0.9, 1e12)), hi), None

  x, _ = jax.lax.scan(step, x, None, length=num_iterations)
  _, slope, var = stats(x)
  return x, slope, var

