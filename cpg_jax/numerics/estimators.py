"""The gradient estimators as surrogate losses (docs/method.md §4).

Each estimator is `loss(scores, rollout) -> scalar`, whose gradient with
respect to the scores (a score table of `numerics.scores`, dense or
item-blocked) is the (negated) policy-gradient estimate, averaged over the
batch. Rewards are constants.

  vpg        V-PG: REINFORCE on the sequential PL probability of the list.
  vpg_swr    V-PG with the with-replacement approximation of that probability.
  ca_pg      CA-PG: each reward credited to its item through the closed-form
             inclusion probability P(a in C).
  ca_pg_swr  CA-PG-SwR / TOP1-PG: the with-replacement inclusion probability.
"""

from __future__ import annotations

import functools
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from cpg_jax.numerics import plackett_luce
from cpg_jax.numerics import sampling
from cpg_jax.numerics.rollout import Rollout
from cpg_jax.numerics.scores import ScoreTable

Loss = Callable[[ScoreTable, Rollout], jax.Array]


def _slot_models(scores: ScoreTable, rollout: Rollout) -> np.ndarray:
  return sampling.slot_models(sampling.slot_counts(rollout.num_candidates, scores.num_models))


def _list_loss(log_prob_fn, scores: ScoreTable, rollout: Rollout) -> jax.Array:
  log_prob = log_prob_fn(scores, rollout.candidates, _slot_models(scores, rollout))
  reward = jax.lax.stop_gradient(rollout.aggregated_reward())
  return -jnp.mean(log_prob * reward)


def _credit_loss(log_inclusion: jax.Array, rollout: Rollout) -> jax.Array:
  credit = jax.lax.stop_gradient(rollout.rewards * rollout.position_weights)
  return -jnp.mean(jnp.sum(log_inclusion * credit, axis=-1))


def vpg_loss(scores: ScoreTable, rollout: Rollout) -> jax.Array:
  """-mean_b log pi(C_b | x_b) R_b."""
  return _list_loss(plackett_luce.sequential_log_prob, scores, rollout)


def vpg_swr_loss(scores: ScoreTable, rollout: Rollout) -> jax.Array:
  """-mean_b log pi_SwR(C_b | x_b) R_b."""
  return _list_loss(plackett_luce.swr_log_prob, scores, rollout)


def ca_pg_loss(scores: ScoreTable, rollout: Rollout) -> jax.Array:
  """-mean_b sum_l w_l r_l log P(a_l in C | x_b), closed-form P."""
  log_inclusion = plackett_luce.ca_inclusion_log_prob(
      scores, rollout.outputs, rollout.num_candidates)
  return _credit_loss(log_inclusion, rollout)


def ca_pg_swr_loss(scores: ScoreTable, rollout: Rollout, combine: str = "sum") -> jax.Array:
  """-mean_b sum_l w_l r_l log P_SwR(a_l in C | x_b)."""
  log_inclusion = plackett_luce.top1_log_prob(
      scores, rollout.outputs, rollout.num_candidates, combine=combine)
  return _credit_loss(log_inclusion, rollout)


ESTIMATORS: dict[str, Loss] = {
    "vpg": vpg_loss,
    "vpg_swr": vpg_swr_loss,
    "ca_pg": ca_pg_loss,
    "ca_pg_swr": ca_pg_swr_loss,
}


def get_estimator(name: str, swr_combine: str = "sum") -> Loss:
  """The surrogate loss registered under `name`."""
  if name not in ESTIMATORS:
    raise ValueError(f"unknown estimator {name!r}; choose one of {', '.join(ESTIMATORS)}")
  if name == "ca_pg_swr":
    if swr_combine not in ("sum", "logsumexp"):
      raise ValueError(f"swr_combine must be 'sum' or 'logsumexp', got {swr_combine!r}")
    return functools.partial(ca_pg_swr_loss, combine=swr_combine)
  return ESTIMATORS[name]
