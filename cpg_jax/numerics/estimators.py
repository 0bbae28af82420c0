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
  ca_pg_exact  CA-PG with the exact PL inclusion probability, by quadrature
             (`numerics.inclusion`; M = 1).
  ca_pg_ss   CA-PG with the successive-sampling approximation of it
             (`numerics.successive_sampling`; M = 1).
"""

from __future__ import annotations

import functools
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from cpg_jax.numerics import inclusion
from cpg_jax.numerics import plackett_luce
from cpg_jax.numerics import sampling
from cpg_jax.numerics import successive_sampling
from cpg_jax.numerics.rollout import Rollout
from cpg_jax.numerics.scores import BlockedScores, DenseScores, ScoreTable

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


def _single_model_table(scores: ScoreTable, name: str) -> ScoreTable:
  """The table of a one-model, unsharded catalogue (the exact and successive-
  sampling inclusion probabilities are defined for M = 1 only)."""
  if scores.num_models != 1:
    raise ValueError(f"{name} is defined for num_models = 1, got {scores.num_models}")
  plain = isinstance(scores, (DenseScores, BlockedScores))
  if not plain or scores.id_offset is not None or getattr(scores, "num_valid", None) is not None:
    raise ValueError(f"{name} does not support an item-sharded score table")
  return scores


def ca_pg_exact_loss(scores: ScoreTable, rollout: Rollout, num_nodes: int = 32,
                     tail: str = "series") -> jax.Array:
  """-mean_b sum_l w_l r_l log P(a_l in C | x_b), P exact (quadrature; M = 1).

  Dense tables `[1, batch, items]` take one pass over the matrix; item-blocked
  tables score the two-tower factors block by block (no `[batch, items]`
  matrix), forward and backward.
  """
  scores = _single_model_table(scores, "ca_pg_exact")
  options = dict(num_nodes=num_nodes, tail=tail)
  k = rollout.num_candidates
  if isinstance(scores, DenseScores):
    log_inclusion = inclusion.exact_inclusion_log_prob(
        scores.values[0], rollout.outputs, k, **options)
  else:
    log_inclusion = inclusion.exact_inclusion_log_prob_blocked(
        scores.contexts[0], scores.items[0], rollout.outputs, k,
        block_size=scores.block_size, **options)
  return _credit_loss(log_inclusion, rollout)


def ca_pg_ss_loss(scores: ScoreTable, rollout: Rollout) -> jax.Array:
  """-mean_b sum_l w_l r_l log pi_a, pi_a = 1 - exp(-w_a tau) (M = 1)."""
  scores = _single_model_table(scores, "ca_pg_ss")
  k = rollout.num_candidates
  if isinstance(scores, DenseScores):
    log_inclusion = successive_sampling.successive_sampling_log_prob(
        scores.values[0], rollout.outputs, k)
  else:
    log_inclusion = successive_sampling.successive_sampling_log_prob_blocked(
        scores.contexts[0], scores.items[0], rollout.outputs, k,
        block_size=scores.block_size)
  return _credit_loss(log_inclusion, rollout)


ESTIMATORS: dict[str, Loss] = {
    "vpg": vpg_loss,
    "vpg_swr": vpg_swr_loss,
    "ca_pg": ca_pg_loss,
    "ca_pg_swr": ca_pg_swr_loss,
    "ca_pg_exact": ca_pg_exact_loss,
    "ca_pg_ss": ca_pg_ss_loss,
}
# The estimators defined for one model and an unsharded catalogue only.
SINGLE_MODEL_ESTIMATORS = ("ca_pg_exact", "ca_pg_ss")
# The quadrature's node counts must be multiples of twice its panel order.
EXACT_NODE_MULTIPLE = 16
EXACT_TAILS = inclusion.TAILS


def get_estimator(name: str, swr_combine: str = "sum", exact_nodes: int = 32,
                  exact_tail: str = "series") -> Loss:
  """The surrogate loss registered under `name` (with its options: the
  with-replacement combination of ca_pg_swr, the quadrature nodes and the
  count's tail model of ca_pg_exact)."""
  if name not in ESTIMATORS:
    raise ValueError(f"unknown estimator {name!r}; choose one of {', '.join(ESTIMATORS)}")
  if name == "ca_pg_swr":
    if swr_combine not in ("sum", "logsumexp"):
      raise ValueError(f"swr_combine must be 'sum' or 'logsumexp', got {swr_combine!r}")
    return functools.partial(ca_pg_swr_loss, combine=swr_combine)
  if name == "ca_pg_exact":
    if exact_nodes < EXACT_NODE_MULTIPLE or exact_nodes % EXACT_NODE_MULTIPLE:
      raise ValueError(f"exact_nodes must be a positive multiple of {EXACT_NODE_MULTIPLE}, "
                       f"got {exact_nodes}")
    if exact_tail not in EXACT_TAILS:
      raise ValueError(f"exact_tail must be one of {EXACT_TAILS}, got {exact_tail!r}")
    return functools.partial(ca_pg_exact_loss, num_nodes=exact_nodes, tail=exact_tail)
  return ESTIMATORS[name]
