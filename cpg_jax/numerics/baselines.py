"""Variance reduction: baselines, group standardisation, the non-negative shift.

An estimator's loss reads the rewards `[batch, L]` of a `Rollout`; these
transforms replace them before the loss sees them (docs/method.md §4.6,
"Baselines and group normalisation"). The pool of a rollout is its group
(the `group_size` rollouts of the same context, consecutive rows) when
group_size > 1, else the whole batch. Per output position l:

  batch_mean     r_bl - mean_pool(r_.l)            (includes the own reward)
  leave_one_out  r_bl - mean of the pool's other rows
  standardize    then divide by the pool's standard deviation of r_.l
  shift          then, for the credit-assigned estimators, subtract the
                 pool's minimum, so that every credit is >= 0 (§4.5)

Which combinations keep which estimator unbiased is `bias_reason`; the
config refuses the others unless asked for explicitly.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from cpg_jax.numerics.rollout import Rollout

BASELINES = ("none", "batch_mean", "leave_one_out")
# Estimators whose loss credits each reward to its item (they need r >= 0).
CREDIT_ASSIGNED = ("ca_pg", "ca_pg_swr", "ca_pg_exact", "ca_pg_ss")
# Keeps the standardised rewards finite when a pool's rewards are all equal.
_STD_FLOOR = 1e-6


def is_identity(baseline: str, standardize: bool) -> bool:
  """True when the rewards reach the loss unchanged."""
  return baseline == "none" and not standardize


def bias_reason(estimator: str, baseline: str, standardize: bool) -> str | None:
  """Why this combination biases `estimator`'s expected gradient, or None.

  V-PG: E[grad log pi(C | x)] = 0, so a baseline that does not depend on the
  row's own draw (leave_one_out) keeps it unbiased; batch_mean includes the
  own reward and scales the expected gradient by (1 - 1/P) for a pool of P
  rows (same direction; accepted). Everything else changes the expectation.
  """
  if is_identity(baseline, standardize):
    return None
  if standardize:
    return ("config.standardize_rewards divides each pool by its own standard deviation, "
            "a sample-dependent rescaling: no estimator stays unbiased")
  if estimator == "vpg":
    return None
  if estimator == "vpg_swr":
    return ("V-PG-SwR's score function log pi_SwR(C) does not have mean zero under the "
            "Plackett-Luce policy, so any baseline adds a bias")
  if estimator in CREDIT_ASSIGNED:
    return (f"{estimator} credits each reward to its item: sum_l grad log P(a_l in C) does "
            "not have mean zero (L < K, a non-uniform LSR, or an approximate P), and the "
            "non-negative shift by the pool's minimum is a sample-dependent offset; a "
            "baseline biases it")
  return f"no unbiasedness argument is known for {estimator!r} with a baseline"


def _pools(values: jax.Array, group_size: int) -> jax.Array:
  """`[batch, L]` -> `[pools, P, L]` (one pool of the whole batch at group_size 1)."""
  batch = values.shape[0]
  size = group_size if group_size > 1 else batch
  return values.reshape(batch // size, size, values.shape[1])


def adjust_rewards(rewards: jax.Array, baseline: str, group_size: int, standardize: bool,
                   nonnegative: bool) -> jax.Array:
  """The rewards `[batch, L]` after the baseline, standardisation and shift.

  Args:
    rewards: float `[batch, L]`; rows of a group are consecutive (batch is
      a multiple of group_size).
    baseline: one of BASELINES.
    group_size: rollouts per context (1: the pool is the batch).
    standardize: divide by the pool's standard deviation.
    nonnegative: shift by the pool's minimum when anything changed (the
      credit-assigned estimators).
  Returns:
    float `[batch, L]`, under stop_gradient.
  """
  if baseline not in BASELINES:
    raise ValueError(f"baseline must be one of {BASELINES}, got {baseline!r}")
  if is_identity(baseline, standardize):
    return rewards
  pools = _pools(jax.lax.stop_gradient(rewards), group_size)  # [pools, P, L]
  size = pools.shape[1]
  total = jnp.sum(pools, axis=1, keepdims=True)
  if baseline == "batch_mean":
    pools = pools - total / size
  elif baseline == "leave_one_out":
    if size < 2:
      raise ValueError("a leave-one-out baseline needs pools of at least 2 rollouts")
    pools = pools - (total - pools) / (size - 1)
  if standardize:
    pools = pools / jnp.maximum(jnp.std(pools, axis=1, keepdims=True), _STD_FLOOR)
  if nonnegative:
    pools = pools - jnp.min(pools, axis=1, keepdims=True)
  return jax.lax.stop_gradient(pools.reshape(rewards.shape))


def with_baseline(loss, estimator: str, baseline: str, group_size: int, standardize: bool):
  """`loss(scores, rollout)` reading the adjusted rewards (the same `loss`
  when nothing changes, so default runs are untouched)."""
  if is_identity(baseline, standardize):
    return loss
  nonnegative = estimator in CREDIT_ASSIGNED

  def adjusted(scores, rollout: Rollout):
    rewards = adjust_rewards(rollout.rewards, baseline, group_size, standardize, nonnegative)
    return loss(scores, rollout.replace(rewards=rewards))

  return adjusted
