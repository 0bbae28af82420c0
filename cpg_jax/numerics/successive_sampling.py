"""The successive-sampling (order-sampling) approximation of PL top-K inclusion.

P(a in C) ~= pi_a = 1 - exp(-w_a tau), w_a = exp(s_a), with tau the root of
sum_i (1 - exp(-w_i tau)) = K: each item "arrives" by the time tau at which
K arrivals are expected in the exponential race (`numerics.race`). O(N) per
context: one pass for the tail's power sums plus a fixed number of Newton
steps on the head; the gradient differentiates tau implicitly (a custom VJP,
O(items) memory, blocked over items for two-tower factors). The values sum
to K exactly (up to the root find's float tolerance). M = 1.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from cpg_jax.numerics import race
from cpg_jax.numerics import sharding

_SS_MOMENTS = 32


def _ss_log_tau(source, k: int, num_iterations: int):
  """ln tau `[batch]`, sum_i (1 - exp(-w_i tau)) = K, and sum_i u_i q_i at tau.

  Newton steps on the head (top K + 16 items, evaluated directly) plus the
  tail's power series: at tau every tail item has p <= K / (K + 17), so
  u < ln(K + 17) (< 5 for K <= 130), where 32 terms of the series of
  1 - e^-u are exact to working precision. Not differentiated.
  """
  source = source.stop_gradient()
  head = min(source.num_items, k + 16)
  head_ids = race.top_items(source, head)
  head_scores = source.gather(head_ids)
  shift = head_scores[:, -1]
  log_moments = race.tail_moments(source, head_ids, shift, _SS_MOMENTS)
  x, slope, _ = race.solve_mean_count(head_scores, shift, log_moments, (float(k),),
                                  num_iterations, source.num_items)
  return x[:, 0], slope[:, 0]


def _ss_check(k: int, num_items: int):
  if not 1 <= k <= num_items:
    raise ValueError(f"need 1 <= K <= items, got K={k}, items={num_items}")


def _credit(y):
  """c = d log p / d y = u e^-u / (1 - e^-u) at y = s_a + ln tau."""
  return jnp.exp(race.log_density(y) - race.log_p(y))


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _ss_dense(scores, items, k, num_iterations):
  return _ss_dense_fwd(scores, items, k, num_iterations)[0]


def _ss_dense_fwd(scores, items, k, num_iterations):
  if k == scores.shape[1]:
    log_tau = jnp.zeros(scores.shape[:1], scores.dtype)
    return jnp.zeros(items.shape, scores.dtype), (scores, items, log_tau)
  log_tau, _ = _ss_log_tau(race.DenseSource(scores), k, num_iterations)
  y = jnp.take_along_axis(scores, items, axis=1) + log_tau[:, None]
  return race.log_p(y), (scores, items, log_tau)


def _ss_dense_bwd(k, num_iterations, residuals, grad):
  scores, items, log_tau = residuals
  if k == scores.shape[1]:
    return jnp.zeros_like(scores), None
  y = jnp.take_along_axis(scores, items, axis=1) + log_tau[:, None]
  weighted = grad * _credit(y)  # [batch, L]
  # d ln tau / d s_j = -q_j, q = softmax(y_j - e^(y_j)) over all items.
  q = jax.nn.softmax(race.log_density(scores + log_tau[:, None]), axis=-1)
  rows = jnp.broadcast_to(jnp.arange(scores.shape[0])[:, None], items.shape)
  direct = jnp.zeros_like(scores).at[rows, items].add(weighted)
  return direct - jnp.sum(weighted, axis=1, keepdims=True) * q, None


_ss_dense.defvjp(_ss_dense_fwd, _ss_dense_bwd)


def successive_sampling_log_prob(scores: jax.Array, items: jax.Array, num_candidates: int, *,
                                 num_iterations: int = 8) -> jax.Array:
  """log pi_a, pi_a = 1 - exp(-w_a tau) with sum_i pi_i = K (M = 1).

  The successive-sampling (order-sampling) approximation of the inclusion
  probability. The gradient differentiates the root tau implicitly (custom
  VJP, O(items) memory):

    d log pi_a / d s_j = c_a (delta_aj - q_j),
    c_a = w_a tau exp(-w_a tau) / (1 - exp(-w_a tau)),
    q_j = w_j exp(-w_j tau) / sum_i w_i exp(-w_i tau)

  (so d pi_a / d s_j = w_a tau exp(-w_a tau) (delta_aj - q_j)).

  Args:
    scores: float `[batch, items]`, differentiated.
    items: int32 `[batch, L]`.
    num_candidates: K.
    num_iterations: Newton steps for ln tau (fixed; monotone from below).
  Returns:
    float `[batch, L]`.
  """
  scores = jnp.asarray(scores)
  _ss_check(num_candidates, scores.shape[1])
  return _ss_dense(scores, jnp.asarray(items, jnp.int32), num_candidates, num_iterations)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4, 5))
def _ss_blocked(contexts, item_vectors, items, k, num_iterations, block_size):
  return _ss_blocked_fwd(contexts, item_vectors, items, k, num_iterations, block_size)[0]


def _ss_blocked_fwd(contexts, item_vectors, items, k, num_iterations, block_size):
  source = race.FactorSource(contexts, item_vectors, block_size)
  dtype = source.dtype
  batch = contexts.shape[0]
  if k == source.num_items:
    return jnp.zeros(items.shape, dtype), (contexts, item_vectors, items,
                                           jnp.zeros((batch,), dtype), jnp.ones((batch,), dtype))
  log_tau, slope = _ss_log_tau(source, k, num_iterations)  # slope: q's normaliser
  y = source.gather(items) + log_tau[:, None]
  return race.log_p(y), (contexts, item_vectors, items, log_tau, slope)


def _ss_blocked_bwd(k, num_iterations, block_size, residuals, grad):
  contexts, item_vectors, items, log_tau, slope = residuals
  if k == item_vectors.shape[0]:
    return jnp.zeros_like(contexts), jnp.zeros_like(item_vectors), None
  source = race.FactorSource(contexts, item_vectors, block_size)
  y = source.gather(items) + log_tau[:, None]
  weighted = grad * _credit(y)  # [batch, L]
  total = jnp.sum(weighted, axis=1)  # [batch]
  log_norm = jnp.log(jnp.maximum(slope, jnp.finfo(slope.dtype).tiny))
  inputs, block = source.scan_inputs()
  num_items = source.num_items

  def body(grad_contexts, args):
    vectors, first = args
    scores = jnp.dot(contexts, vectors.T, precision=jax.lax.Precision.HIGHEST)
    valid = (first + jnp.arange(block) < num_items)[None]
    q = jnp.where(valid, jnp.exp(race.log_density(scores + log_tau[:, None]) - log_norm[:, None]),
                  0.0)
    grad_scores = -total[:, None] * q  # [batch, block]
    grad_contexts = grad_contexts + jnp.dot(grad_scores, vectors,
                                            precision=jax.lax.Precision.HIGHEST)
    return grad_contexts, jnp.dot(grad_scores.T, contexts, precision=jax.lax.Precision.HIGHEST)

  firsts = jnp.arange(inputs.shape[0]) * block
  init = sharding.varying_like(jnp.zeros_like(contexts), total)
  grad_contexts, grad_blocks = jax.lax.scan(body, init, (inputs, firsts))
  grad_vectors = grad_blocks.reshape(-1, item_vectors.shape[1])[:num_items]
  # The delta_aj part: the requested items' own scores.
  picked = item_vectors[items]  # [batch, L, d]
  grad_contexts = grad_contexts + jnp.einsum("bl,bld->bd", weighted, picked,
                                             precision=jax.lax.Precision.HIGHEST)
  grad_vectors = grad_vectors.at[items.reshape(-1)].add(
      (weighted[:, :, None] * contexts[:, None, :]).reshape(-1, contexts.shape[1]))
  return grad_contexts, grad_vectors, None


_ss_blocked.defvjp(_ss_blocked_fwd, _ss_blocked_bwd)


def successive_sampling_log_prob_blocked(
    contexts: jax.Array, item_vectors: jax.Array, items: jax.Array, num_candidates: int, *,
    block_size: int = 65536, num_iterations: int = 8,
) -> jax.Array:
  """`successive_sampling_log_prob` with s = contexts @ item_vectors.T by item blocks.

  Args:
    contexts: float `[batch, d]`; item_vectors: float `[items, d]` (both
      differentiated, by the same implicit formula, block by block).
    items: int32 `[batch, L]`; num_candidates: K.
  Returns:
    float `[batch, L]`.
  """
  contexts, item_vectors = jnp.asarray(contexts), jnp.asarray(item_vectors)
  _ss_check(num_candidates, item_vectors.shape[0])
  return _ss_blocked(contexts, item_vectors, jnp.asarray(items, jnp.int32), num_candidates,
                     num_iterations, block_size)
