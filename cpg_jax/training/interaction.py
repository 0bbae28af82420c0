"""One pass through the two-stage system: candidates, LSR outputs, rewards.

This is where the environment meets the policy: the ESR's score table gives
the candidates, the environment scores them for the late-stage ranker and
rewards its outputs. Neither side sees the other (the environment never sees
the model, the estimators never see the environment); this module wires them.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from cpg_jax.environments.base import Environment
from cpg_jax.numerics import sampling
from cpg_jax.numerics.late_stage import LateStageRanker
from cpg_jax.numerics.rollout import Rollout
from cpg_jax.numerics.scores import ScoreTable


def collect_rollout(
    key: jax.Array,
    env: Environment,
    context_ids: jax.Array,
    scores: ScoreTable,
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
  scores = scores.stop_gradient()
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
