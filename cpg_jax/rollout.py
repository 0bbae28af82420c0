"""One pass through the two-stage system: candidates, LSR outputs, rewards.

The rollout is what an estimator needs besides the scores. It is produced from
scores under `stop_gradient`; the estimator then differentiates the same
scores (computed once, inside `value_and_grad`).
"""

from __future__ import annotations

import flax.struct
import jax
import jax.numpy as jnp

from cpg_jax import sampling
from cpg_jax import scores as scores_lib
from cpg_jax.environments.base import Environment
from cpg_jax.late_stage import LateStageRanker


@flax.struct.dataclass
class Rollout:
  """The sampled interaction of one batch of contexts.

  Attributes:
    candidates: int32 `[batch, K]`, the ESR's candidate list in slot order.
    outputs: int32 `[batch, L]`, the item ids the LSR returned.
    rewards: float `[batch, L]`, the observed rewards (never differentiated).
    position_weights: float `[L]`, w_l of the aggregated reward.
  """

  candidates: jax.Array
  outputs: jax.Array
  rewards: jax.Array
  position_weights: jax.Array

  @property
  def num_candidates(self) -> int:
    return self.candidates.shape[-1]

  def aggregated_reward(self) -> jax.Array:
    """R = sum_l w_l r_l: `[batch]`."""
    return jnp.sum(self.rewards * self.position_weights, axis=-1)


def position_weights(num_outputs: int, scheme: str = "mean") -> jax.Array:
  """w_l for l = 1..L: "mean" (1/L each, the paper's), "sum" (1 each) or
  "dcg" (1/log2(l+1), normalised to sum to 1). float32 `[L]`."""
  if scheme == "mean":
    return jnp.full((num_outputs,), 1.0 / num_outputs, jnp.float32)
  if scheme == "sum":
    return jnp.ones((num_outputs,), jnp.float32)
  if scheme == "dcg":
    w = 1.0 / jnp.log2(jnp.arange(num_outputs, dtype=jnp.float32) + 2.0)
    return w / jnp.sum(w)
  raise ValueError(f"position_weights must be 'mean', 'sum' or 'dcg', got {scheme!r}")


def collect_rollout(
    key: jax.Array,
    env: Environment,
    context_ids: jax.Array,
    scores: scores_lib.ScoreTable,
    num_candidates: int,
    lsr: LateStageRanker,
    weights: jax.Array,
    deterministic: bool = False,
) -> Rollout:
  """Runs ESR sampling (or top-K if deterministic), the LSR and the rewards.

  Args:
    key: PRNG key; split here into the sampling, LSR and reward keys.
    env: the environment.
    context_ids: int32 `[batch]`.
    scores: the ESR's score table (dense or item-blocked); gradients are
      stopped here.
    num_candidates: K.
    lsr: the late-stage ranker.
    weights: float `[L]` position weights.
    deterministic: evaluation mode: the ESR's deterministic top-K and the
      LSR's evaluation behaviour.
  Returns:
    A `Rollout`.
  """
  scores = scores_lib.as_scores(scores).stop_gradient()
  key_sample, key_lsr, key_reward = jax.random.split(key, 3)
  if deterministic:
    candidates = sampling.top_candidates(scores, num_candidates)
  else:
    candidates = sampling.sample_candidates(key_sample, scores, num_candidates)
  q = env.expected_score(context_ids, candidates)  # [batch, K]
  positions = lsr.select(key_lsr, q, deterministic=deterministic)
  outputs = jnp.take_along_axis(candidates, positions, axis=1)
  rewards = env.sample_reward(key_reward, context_ids, outputs)
  return Rollout(candidates=candidates, outputs=outputs,
                 rewards=jax.lax.stop_gradient(rewards), position_weights=weights)
