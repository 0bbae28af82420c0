"""Numerically safe log-space primitives shared by the Plackett-Luce code.

Every function here has finite values *and* finite gradients on its whole
documented domain, including the edges that training reaches with extreme
scores (probabilities that round to 0 or 1, empty sets). That needs the
"double where" pattern: the branch that is not taken must also be finite,
otherwise its NaN gradient leaks through `jnp.where`.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

_LOG_HALF = -math.log(2.0)


def masked_logsumexp(x: jax.Array, mask: jax.Array, axis: int = -1) -> jax.Array:
  """log(sum(exp(x[mask]))) along `axis`; -inf (with zero gradient) if empty.

  Args:
    x: float `[..., n]`.
    mask: bool, broadcastable to `x`; True marks the entries to include.
    axis: the reduced axis.
  """
  return jax.nn.logsumexp(x, axis=axis, where=jnp.broadcast_to(mask, x.shape))


def log1mexp(x: jax.Array) -> jax.Array:
  """log(1 - exp(x)) for x <= 0, accurate near 0 and for very negative x.

  Callers must keep x strictly below 0 (see `clamp_log_prob`): at x = 0 the
  value is -inf and the gradient infinite.
  """
  # Both branches are evaluated; feed each a value inside its safe range.
  near_zero = x > _LOG_HALF
  x_near = jnp.where(near_zero, x, _LOG_HALF)
  x_far = jnp.where(near_zero, _LOG_HALF, x)
  return jnp.where(near_zero, jnp.log(-jnp.expm1(x_near)), jnp.log1p(-jnp.exp(x_far)))


def clamp_log_prob(log_p: jax.Array) -> jax.Array:
  """Clamps a log-probability to <= -eps so that log(1 - p) stays finite.

  A probability that rounds to 1 (an item holding all the mass) would make
  log(1 - p) = -inf; the clamp costs a relative error of one float epsilon.
  """
  eps = jnp.finfo(log_p.dtype).eps
  return jnp.minimum(log_p, -eps)


def log_neg_log1mexp(log_p: jax.Array) -> jax.Array:
  """log(-log(1 - p)) from log p, for log p in (-inf, -eps].

  For small p, -log(1 - p) ~= p, so the result ~= log p; computing it this way
  keeps it exact when p underflows (where 1 - p == 1 in floating point).
  """
  log_p = clamp_log_prob(log_p)
  small = log_p < -20.0
  # For p < e^-20, -log(1-p) = p (1 + p/2 + ...): log(-log(1-p)) = log p + log1p(p/2 + ...).
  log_p_small = jnp.where(small, log_p, -20.0)
  log_p_large = jnp.where(small, -20.0, log_p)
  return jnp.where(
      small,
      log_p_small + jnp.log1p(0.5 * jnp.exp(log_p_small)),
      jnp.log(-log1mexp(log_p_large)),
  )


def log_one_minus_prod_one_minus(log_p: jax.Array, axis: int = -1) -> jax.Array:
  """log(1 - prod_k (1 - p_k)) from the log p_k, computed in log space.

  This is the probability that at least one of independent-looking events with
  probabilities p_k happens, the form of the CA-PG inclusion probability.

  With u = -sum_k log(1 - p_k) >= 0, the result is log(1 - exp(-u)). u is
  formed in log space (log u = logsumexp_k log(-log(1 - p_k))), so tiny
  probabilities neither vanish nor cancel.

  Args:
    log_p: float `[..., K]`, values <= 0 (clamped to <= -eps).
    axis: the product axis.
  Returns:
    float `[...]`, values in (-inf, 0].
  """
  log_u = jax.nn.logsumexp(log_neg_log1mexp(log_p), axis=axis)
  u = jnp.exp(log_u)
  # log(1 - e^-u) = log u + log((1 - e^-u)/u); for small u the ratio is
  # 1 - u/2 + u^2/6 (series), otherwise evaluate directly.
  small = u < 1e-3
  u_small = jnp.where(small, u, 1e-3)
  u_large = jnp.where(small, 1.0, u)
  return jnp.where(
      small,
      log_u + jnp.log1p(-0.5 * u_small + u_small * u_small / 6.0),
      jnp.log(-jnp.expm1(-u_large)),
  )
