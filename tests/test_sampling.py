"""Tests for `cpg_jax.sampling`: the Gumbel-top-k draw is an exact PL draw.

The reference is the sequential multi-model Plackett-Luce definition of
docs/method.md §2, enumerated in NumPy float64: slot k's item is drawn with
probability exp(s^{m(k)}_c) / sum over not-yet-drawn items of exp(s^{m(k)}).
"""

from __future__ import annotations

import functools
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from cpg_jax.numerics import sampling
from tests.helpers import table

NUM_DRAWS = 200_000
MIN_P_VALUE = 1e-3


# ----------------------------------------------------------------------------
# NumPy references.
# ----------------------------------------------------------------------------


def reference_slot_models(num_candidates: int, num_models: int) -> list[int]:
  """m(k) for each slot, written out from the §2 rule (floor + remainder first)."""
  models = []
  for m in range(num_models):
    count = num_candidates // num_models + (1 if m < num_candidates % num_models else 0)
    models.extend([m] * count)
  return models


def pl_list_probability(scores: np.ndarray, items, models) -> float:
  """Exact probability of the ordered list `items` (float64, by the definition).

  Args:
    scores: float64 `[M, N]`.
    items: the ordered candidate list.
    models: m(k) per slot.
  """
  num_items = scores.shape[1]
  drawn = set()
  prob = 1.0
  for item, m in zip(items, models):
    weights = np.exp(scores[m] - scores[m].max())
    remaining = sum(weights[j] for j in range(num_items) if j not in drawn)
    prob *= weights[item] / remaining
    drawn.add(item)
  return prob


def enumerate_pl(scores: np.ndarray, num_candidates: int):
  """All ordered candidate lists and their exact probabilities."""
  num_models, num_items = scores.shape
  models = reference_slot_models(num_candidates, num_models)
  lists = list(itertools.permutations(range(num_items), num_candidates))
  probs = np.array([pl_list_probability(scores, c, models) for c in lists])
  return lists, probs


def pooled_chisquare(observed: np.ndarray, expected: np.ndarray):
  """Chi-square test with the bins of expected count < 5 pooled into one."""
  small = expected < 5.0
  obs = list(observed[~small])
  exp = list(expected[~small])
  if small.any():
    obs.append(observed[small].sum())
    exp.append(expected[small].sum())
  obs, exp = np.asarray(obs, float), np.asarray(exp, float)
  exp *= obs.sum() / exp.sum()  # Remove float round-off in the totals.
  return stats.chisquare(obs, exp)


def list_frequencies(samples: np.ndarray, lists, num_items: int) -> np.ndarray:
  """Counts of each enumerated ordered list among `samples` `[draws, K]`.

  Fails if any sample is not one of the enumerated lists (e.g. a repeat).
  """
  num_candidates = samples.shape[1]
  base = num_items ** np.arange(num_candidates - 1, -1, -1)
  codes = samples.astype(np.int64) @ base
  index = {int(np.dot(c, base)): i for i, c in enumerate(lists)}
  uniq, counts = np.unique(codes, return_counts=True)
  unknown = [u for u in uniq if int(u) not in index]
  assert not unknown, f"sampled lists outside the support (repeats?): {unknown[:5]}"
  out = np.zeros(len(lists))
  for u, n in zip(uniq, counts):
    out[index[int(u)]] = n
  return out


@functools.partial(jax.jit, static_argnames="num_candidates")
def _draw(key, scores, num_candidates):
  return sampling.sample_candidates(key, table(scores), num_candidates)


def draw_many(seed: int, scores: np.ndarray, num_candidates: int,
              num_draws: int = NUM_DRAWS) -> np.ndarray:
  """`num_draws` candidate lists for identical contexts, one batched call."""
  batched = jnp.broadcast_to(jnp.asarray(scores, jnp.float32)[:, None, :],
                             (scores.shape[0], num_draws, scores.shape[1]))
  return np.asarray(_draw(jax.random.key(seed), batched, num_candidates))


# ----------------------------------------------------------------------------
# Exactness of the sampler.
# ----------------------------------------------------------------------------

# (N, K, M, seed). Every case runs by default: one batched draw each is cheap.
EXACT_CASES = [
    (4, 1, 1, 0),
    (4, 2, 1, 1),
    (5, 2, 1, 2),
    (5, 2, 2, 3),
    (6, 3, 1, 4),
    (6, 3, 2, 5),
    (6, 3, 3, 6),
    (5, 3, 2, 7),
]


@pytest.mark.parametrize("num_items,num_candidates,num_models,seed", EXACT_CASES)
def test_sampling_matches_exact_pl(num_items, num_candidates, num_models, seed):
  """Empirical list frequencies match the enumerated PL probabilities."""
  rng = np.random.default_rng(100 + seed)
  # Rounded to float32 so that the sampler and the reference see the same scores.
  scores = rng.normal(size=(num_models, num_items)).astype(np.float32).astype(np.float64)
  lists, probs = enumerate_pl(scores, num_candidates)
  assert abs(probs.sum() - 1.0) < 1e-12

  samples = draw_many(seed, scores, num_candidates)
  assert samples.shape == (NUM_DRAWS, num_candidates)
  counts = list_frequencies(samples, lists, num_items)
  freq = counts / NUM_DRAWS
  max_err = np.max(np.abs(freq - probs))
  result = pooled_chisquare(counts, probs * NUM_DRAWS)
  msg = (f"N={num_items} K={num_candidates} M={num_models}: {len(lists)} lists, "
         f"max |freq - prob| = {max_err:.2e}, chi2 p = {result.pvalue:.3g}")
  print(msg)
  assert result.pvalue > MIN_P_VALUE, msg


@pytest.mark.slow
@pytest.mark.parametrize("num_items,num_candidates,num_models,seed", [
    (7, 3, 3, 30), (7, 4, 2, 31), (6, 6, 3, 32)])
def test_sampling_matches_exact_pl_many_draws(num_items, num_candidates, num_models, seed):
  """Heavier version: more lists (up to 840) and 2,000,000 draws."""
  num_draws = 2_000_000
  rng = np.random.default_rng(100 + seed)
  scores = rng.normal(size=(num_models, num_items)).astype(np.float32).astype(np.float64)
  lists, probs = enumerate_pl(scores, num_candidates)
  counts = list_frequencies(draw_many(seed, scores, num_candidates, num_draws), lists,
                            num_items)
  max_err = np.max(np.abs(counts / num_draws - probs))
  result = pooled_chisquare(counts, probs * num_draws)
  msg = (f"N={num_items} K={num_candidates} M={num_models}: {len(lists)} lists, "
         f"{num_draws} draws, max |freq - prob| = {max_err:.2e}, chi2 p = {result.pvalue:.3g}")
  print(msg)
  assert result.pvalue > MIN_P_VALUE, msg


def test_chi_square_detects_wrong_slot_models():
  """The exactness test has power: the wrong slot-to-model order is rejected."""
  rng = np.random.default_rng(11)
  scores = (2.0 * rng.normal(size=(2, 5))).astype(np.float32).astype(np.float64)
  lists, _ = enumerate_pl(scores, 3)
  # Models in the reverse order: slots (1, 1, 0) instead of (0, 0, 1).
  wrong = np.array([pl_list_probability(scores, c, [1, 1, 0]) for c in lists])
  counts = list_frequencies(draw_many(21, scores, 3), lists, 5)
  result = pooled_chisquare(counts, wrong * NUM_DRAWS)
  assert result.pvalue < 1e-12, result


# ----------------------------------------------------------------------------
# Slot bookkeeping and the deterministic top-K.
# ----------------------------------------------------------------------------


@pytest.mark.parametrize("num_candidates,num_models,expected", [
    (10, 3, (4, 3, 3)),
    (10, 1, (10,)),
    (10, 10, (1,) * 10),
    (5, 2, (3, 2)),
    (7, 4, (2, 2, 2, 1)),
    (1, 1, (1,)),
])
def test_slot_counts(num_candidates, num_models, expected):
  """K_m = floor(K/M), one more for the first K mod M models."""
  counts = sampling.slot_counts(num_candidates, num_models)
  assert tuple(counts) == expected
  models = sampling.slot_models(counts)
  assert isinstance(models, np.ndarray)
  np.testing.assert_array_equal(models, reference_slot_models(num_candidates, num_models))


def test_slot_models_k10_m3():
  """The worked example: K=10, M=3 -> slots (0,0,0,0,1,1,1,2,2,2)."""
  np.testing.assert_array_equal(
      sampling.slot_models(sampling.slot_counts(10, 3)), [0, 0, 0, 0, 1, 1, 1, 2, 2, 2])


@pytest.mark.parametrize("num_candidates,num_models", [(2, 3), (1, 2), (3, 0), (3, -1)])
def test_slot_counts_rejects_bad_model_counts(num_candidates, num_models):
  """M > K (or M < 1) is refused."""
  with pytest.raises(ValueError, match="num_models"):
    sampling.slot_counts(num_candidates, num_models)


def test_sample_and_top_reject_more_models_than_candidates():
  """The samplers refuse M > K as well."""
  scores = jnp.zeros((3, 2, 6))
  with pytest.raises(ValueError):
    sampling.sample_candidates(jax.random.key(0), table(scores), 2)
  with pytest.raises(ValueError):
    sampling.top_candidates(table(scores), 2)


def numpy_slot_procedure(scores: np.ndarray, num_candidates: int) -> np.ndarray:
  """Deterministic per-model slot procedure in NumPy, one context `[M, N]`."""
  models = reference_slot_models(num_candidates, scores.shape[0])
  taken = []
  for m in models:
    order = np.argsort(-scores[m], kind="stable")
    taken.append(next(int(i) for i in order if i not in taken))
  return np.asarray(taken)


def test_top_candidates_single_model_is_argsort():
  """M = 1: the deterministic list is the descending argsort."""
  rng = np.random.default_rng(3)
  scores = rng.normal(size=(1, 7, 20)).astype(np.float32)
  top = np.asarray(sampling.top_candidates(table(jnp.asarray(scores)), 6))
  assert top.dtype == np.int32 and top.shape == (7, 6)
  np.testing.assert_array_equal(top, np.argsort(-scores[0], axis=-1)[:, :6])


@pytest.mark.parametrize("num_models,num_candidates", [(2, 5), (2, 6), (3, 7)])
def test_top_candidates_multi_model_follows_slot_procedure(num_models, num_candidates):
  """M > 1: model 1 takes its top-K_1, model 2 the best of what is left, ..."""
  rng = np.random.default_rng(4)
  scores = rng.normal(size=(num_models, 9, 12)).astype(np.float32)
  # Make the models agree on some items so that removal matters.
  scores[1:, :, :4] = scores[0, :, :4]
  top = np.asarray(sampling.top_candidates(table(jnp.asarray(scores)), num_candidates))
  for b in range(scores.shape[1]):
    np.testing.assert_array_equal(
        top[b], numpy_slot_procedure(scores[:, b], num_candidates), err_msg=f"row {b}")


@pytest.mark.parametrize("num_models,num_candidates,scale", [
    (1, 8, 1.0), (2, 8, 1.0), (3, 8, 1.0), (2, 12, 1e3), (3, 12, 0.0), (4, 12, 1e3)])
def test_candidates_are_distinct(num_models, num_candidates, scale):
  """No item appears twice in a sampled list, also with ties and huge scores."""
  rng = np.random.default_rng(5)
  scores = jnp.asarray(scale * rng.normal(size=(num_models, 4000, 12)), jnp.float32)
  cands = np.asarray(sampling.sample_candidates(jax.random.key(1), table(scores), num_candidates))
  assert cands.shape == (4000, num_candidates) and cands.dtype == np.int32
  assert cands.min() >= 0 and cands.max() < 12
  sorted_c = np.sort(cands, axis=1)
  assert np.all(np.diff(sorted_c, axis=1) > 0)
