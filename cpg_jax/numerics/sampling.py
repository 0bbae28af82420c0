"""Candidate sampling for the early-stage ranker (docs/method.md, "The early-stage ranker").

A candidate set is a Plackett-Luce draw of K items without replacement,
obtained with the Gumbel-top-k trick: the top-K of `scores + Gumbel noise`,
in order, is exactly a PL ordered draw. With M models the K slots are split
as evenly as possible (the first K mod M models get one extra slot), model 1
fills its slots first, its items are removed for every later model, and so on.
The model that filled slot k, m(k), is static: it depends on K and M only.

Everything is vectorised over the batch; the only Python loop is the static
loop over the M models. The noise comes from `numerics.noise` (a counter-based
hash by default) through the score table, dense or item-blocked.
"""

from __future__ import annotations

from typing import Sequence

import chex
import jax
import jax.numpy as jnp
import numpy as np

from cpg_jax.numerics.scores import ScoreTable


def slot_counts(num_candidates: int, num_models: int) -> tuple[int, ...]:
  """K_m for each model: floor(K/M), plus one for the first K mod M models."""
  if num_models < 1 or num_candidates < num_models:
    raise ValueError(
        f"need 1 <= num_models <= num_candidates, got num_models={num_models}, "
        f"num_candidates={num_candidates}")
  base, extra = divmod(num_candidates, num_models)
  return tuple(base + (1 if m < extra else 0) for m in range(num_models))


def slot_models(counts: Sequence[int]) -> np.ndarray:
  """m(k) for every slot k: int32 `[K]` (static, a NumPy array)."""
  return np.repeat(np.arange(len(counts), dtype=np.int32), counts)


def fill_slots(
    scores: ScoreTable, counts: Sequence[int], excluded: jax.Array | None = None,
    key: jax.Array | None = None,
) -> jax.Array:
  """The sequential per-model slot procedure.

  Model m takes the top-`counts[m]` of its scores (plus Gumbel noise when
  `key` is given) among the items no earlier model took and none of
  `excluded`.

  Args:
    scores: the score table (`numerics.scores`); not differentiated.
    counts: static slot counts per model, `len(counts) == M`.
    excluded: optional int32 `[batch, E]`, item ids that may not be taken.
    key: PRNG key for the Gumbel noise; None for the deterministic list.
  Returns:
    int32 `[batch, sum(counts)]`: the items in slot order.
  """
  scores = scores.stop_gradient()
  chex.assert_equal(len(counts), scores.num_models)
  picks = []
  for m, count in enumerate(counts):  # Static loop over the M models.
    if count == 0:
      continue
    taken = [excluded] if excluded is not None else []
    taken += picks
    taken = jnp.concatenate(taken, axis=1) if taken else None
    picks.append(scores.top_k(m, count, taken, key))
  return jnp.concatenate(picks, axis=1)


def sample_candidates(key: jax.Array, scores: ScoreTable, num_candidates: int) -> jax.Array:
  """Draws one Plackett-Luce candidate list per context (Gumbel-top-k).

  Args:
    key: PRNG key.
    scores: the score table (not differentiated).
    num_candidates: K.
  Returns:
    int32 `[batch, K]`, the candidates in draw order; slot k was filled by
    model `slot_models(slot_counts(K, M))[k]`.
  """
  return fill_slots(scores, slot_counts(num_candidates, scores.num_models), key=key)


def top_candidates(scores: ScoreTable, num_candidates: int) -> jax.Array:
  """The deterministic candidate list used for evaluation: `[batch, K]` int32.

  The same slot procedure as `sample_candidates`, without noise.
  """
  return fill_slots(scores, slot_counts(num_candidates, scores.num_models))
