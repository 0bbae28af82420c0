"""The late-stage rankers (docs/method.md §3).

A late-stage ranker (LSR) reads the K candidates of each context together with
their true expected scores q and returns L of them, in order. It is fixed (no
parameters) and never differentiated.

Rankers and their evaluation-time behaviour (`deterministic=True`):
  optimal         top-L by q                                  deterministic
  noisy           PL draw of L with logits q / temperature    -> optimal at eval
  uniform         L uniform draws from C, with replacement    stochastic at eval too
  anti            bottom-L by q                               deterministic
  epsilon_greedy  per context: with prob. epsilon the uniform list, else the
                  optimal list                                stochastic at eval too
  interpolate     per output position l: with prob. alpha the l-th best
                  candidate, else a uniform candidate
                  (alpha = 1 optimal, alpha = 0 uniform)      stochastic at eval too

The two mixtures stay stochastic at evaluation because their randomness is part
of the ranker being modelled (like `uniform`), while `noisy` models a noisy
estimate of q that an evaluation of the ideal ranker would not have.
"""

from __future__ import annotations

import dataclasses

import chex
import jax
import jax.numpy as jnp

LSR_NAMES = ("optimal", "noisy", "uniform", "anti", "epsilon_greedy", "interpolate")


@dataclasses.dataclass(frozen=True)
class LateStageRanker:
  """A late-stage ranker's static description.

  Attributes:
    name: one of `LSR_NAMES`.
    num_outputs: L.
    temperature: for `noisy` (> 0).
    epsilon: for `epsilon_greedy`, in [0, 1].
    alpha: for `interpolate`, in [0, 1].
  """

  name: str
  num_outputs: int
  temperature: float = 1.0
  epsilon: float = 0.1
  alpha: float = 0.5

  def __post_init__(self):
    if self.name not in LSR_NAMES:
      raise ValueError(
          f"unknown late-stage ranker {self.name!r}; choose one of {', '.join(LSR_NAMES)}")
    if self.num_outputs < 1:
      raise ValueError(f"num_outputs (L) must be >= 1, got {self.num_outputs}")
    if not self.temperature > 0:
      raise ValueError(f"lsr temperature must be > 0, got {self.temperature}")
    if not 0.0 <= self.epsilon <= 1.0:
      raise ValueError(f"lsr epsilon must be in [0, 1], got {self.epsilon}")
    if not 0.0 <= self.alpha <= 1.0:
      raise ValueError(f"lsr alpha must be in [0, 1], got {self.alpha}")

  def select(
      self, key: jax.Array, candidate_scores: jax.Array, deterministic: bool = False
  ) -> jax.Array:
    """Chooses L of the K candidates.

    Args:
      key: PRNG key (unused by deterministic rankers).
      candidate_scores: float `[batch, K]`, the true q of each candidate.
      deterministic: evaluation mode (see the module docstring).
    Returns:
      int32 `[batch, L]`: positions into the candidate list (0..K-1).
    """
    chex.assert_rank(candidate_scores, 2)
    batch, num_candidates = candidate_scores.shape
    num_outputs = self.num_outputs
    if num_outputs > num_candidates:
      raise ValueError(f"L={num_outputs} outputs from K={num_candidates} candidates")

    def best(values):
      return jax.lax.top_k(values, num_outputs)[1].astype(jnp.int32)

    def uniform(k):
      return jax.random.randint(k, (batch, num_outputs), 0, num_candidates, jnp.int32)

    name = self.name
    if name == "optimal" or (name == "noisy" and deterministic):
      return best(candidate_scores)
    if name == "anti":
      return best(-candidate_scores)
    if name == "noisy":
      gumbel = jax.random.gumbel(key, candidate_scores.shape, candidate_scores.dtype)
      return best(candidate_scores / self.temperature + gumbel)
    if name == "uniform":
      return uniform(key)
    key_choice, key_uniform = jax.random.split(key)
    if name == "epsilon_greedy":
      explore = jax.random.bernoulli(key_choice, self.epsilon, (batch, 1))
      return jnp.where(explore, uniform(key_uniform), best(candidate_scores))
    if name == "interpolate":
      follow = jax.random.bernoulli(key_choice, self.alpha, (batch, num_outputs))
      return jnp.where(follow, best(candidate_scores), uniform(key_uniform))
    raise AssertionError(name)  # Unreachable: __post_init__ checked the name.
