"""Score tables: the item-blocked path equals the dense one; samplers agree.

BlockedScores never builds `[batch, items]`; it must give the same
log-sum-exps, gradients, top-k lists and sampled candidates as DenseScores,
and every sampler's inclusion frequencies must match the Threefry Gumbel-top-k
reference within Monte-Carlo error.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import kernels
from cpg_jax.numerics import estimators
from cpg_jax.numerics import noise
from cpg_jax.numerics import rollout as rollout_lib
from cpg_jax.numerics import sampling
from cpg_jax.numerics.scores import BlockedScores, DenseScores


def _factors(num_models, batch, num_items, dim=4, scale=2.0, seed=0):
  k1, k2 = jax.random.split(jax.random.key(seed))
  contexts = jax.random.normal(k1, (num_models, batch, dim))
  items = jax.random.normal(k2, (num_models, num_items, dim)) * scale
  return contexts, items


@pytest.mark.parametrize("block_size", [5, 7, 23, 64])
def test_blocked_logsumexp_and_gradient_equal_dense(block_size):
  contexts, items = _factors(2, 5, 23)
  excluded = jax.random.randint(jax.random.key(3), (5, 4), 0, 23)
  weights = jnp.arange(1.0, 6.0)

  def total(c, v, blocked, exclude):
    table = BlockedScores(c, v, block_size)
    table = table if blocked else table.dense()
    return jnp.sum(table.logsumexp(excluded if exclude else None) * weights)

  for exclude in (False, True):
    value_b, grad_b = jax.value_and_grad(total, argnums=(0, 1))(contexts, items, True, exclude)
    value_d, grad_d = jax.value_and_grad(total, argnums=(0, 1))(contexts, items, False, exclude)
    np.testing.assert_allclose(value_b, value_d, rtol=1e-6)
    for gb, gd in zip(grad_b, grad_d):
      np.testing.assert_allclose(gb, gd, rtol=1e-5, atol=1e-6)


def test_blocked_logsumexp_all_excluded_is_neg_inf_with_zero_gradient():
  contexts, items = _factors(1, 3, 9)
  everything = jnp.tile(jnp.arange(9)[None], (3, 1))
  table = BlockedScores(contexts, items, 4)
  assert np.all(np.isneginf(np.asarray(table.logsumexp(everything))))
  grad = jax.grad(lambda c: jnp.sum(table.replace(contexts=c).logsumexp(everything)))(contexts)
  np.testing.assert_array_equal(np.asarray(grad), 0.0)


def test_blocked_logsumexp_extreme_scores_finite():
  contexts, items = _factors(1, 4, 50, scale=300.0)  # Scores of order 1e3.
  table = BlockedScores(contexts, items, 16)
  value, grad = jax.value_and_grad(lambda v: jnp.sum(table.replace(items=v).logsumexp()))(items)
  assert np.all(np.isfinite(np.asarray(value))) and np.all(np.isfinite(np.asarray(grad)))
  np.testing.assert_allclose(table.logsumexp(), table.dense().logsumexp(), rtol=1e-6)


# Default: every shape with many small blocks (3), one with few (8); -m slow
# adds the other block sizes, 40 a single block larger than the catalogue.
@pytest.mark.parametrize("block_size, num_models, num_candidates", [
    pytest.param(b, m, k, marks=() if b == 3 or (b, m) == (8, 2) else pytest.mark.slow)
    for b in (3, 8, 40) for m, k in ((1, 1), (1, 6), (2, 5), (3, 7))])
def test_blocked_sampling_equals_dense(block_size, num_models, num_candidates):
  """Same key, same candidates: the hashed noise does not depend on blocks."""
  contexts, items = _factors(num_models, 16, 37)
  blocked = BlockedScores(contexts, items, block_size)
  dense = blocked.dense()
  key = jax.random.key(11)
  np.testing.assert_array_equal(
      sampling.sample_candidates(key, blocked, num_candidates),
      sampling.sample_candidates(key, dense, num_candidates))
  np.testing.assert_array_equal(sampling.top_candidates(blocked, num_candidates),
                                sampling.top_candidates(dense, num_candidates))


def _blocked_estimator_cases():
  """Every estimator at (M, L) in (1, 1), (1, 3), (2, 2); ca_pg_exact and
  ca_pg_ss refuse M > 1 by design (tests/test_inclusion_estimators.py). The
  default suite runs each estimator at its largest shape, -m slow the rest;
  ca_pg_exact's blocked quadrature is checked by default in
  tests/test_inclusion.py (test_blocked_equals_dense), its cases here are slow."""
  cases = []
  for name in estimators.ESTIMATORS:
    shapes = [(1, 1), (1, 3)] + ([] if name in estimators.SINGLE_MODEL_ESTIMATORS else [(2, 2)])
    for m, l in shapes:
      default = (m, l) == shapes[-1] and name != "ca_pg_exact"
      marks = () if default else pytest.mark.slow
      cases.append(pytest.param(name, m, l, marks=marks))
  return cases


@pytest.mark.parametrize("name, num_models, num_outputs", _blocked_estimator_cases())
def test_estimators_blocked_equal_dense(name, num_models, num_outputs):
  num_candidates, batch, num_items = 6, 8, 29
  contexts, items = _factors(num_models, batch, num_items)
  blocked = BlockedScores(contexts, items, 8)
  candidates = sampling.sample_candidates(jax.random.key(1), blocked, num_candidates)
  positions = jax.random.randint(jax.random.key(2), (batch, num_outputs), 0, num_candidates)
  rollout = rollout_lib.Rollout(
      candidates=candidates,
      outputs=jnp.take_along_axis(candidates, positions, axis=1),
      rewards=jax.random.uniform(jax.random.key(3), (batch, num_outputs)),
      position_weights=rollout_lib.position_weights(num_outputs))
  loss = estimators.get_estimator(name)

  def value(c, v, is_blocked):
    table = BlockedScores(c, v, 8)
    return loss(table if is_blocked else table.dense(), rollout)

  value_and_grad = jax.jit(jax.value_and_grad(value, argnums=(0, 1)), static_argnums=2)
  value_b, grad_b = value_and_grad(contexts, items, True)
  value_d, grad_d = value_and_grad(contexts, items, False)
  np.testing.assert_allclose(value_b, value_d, rtol=1e-5)
  for gb, gd in zip(grad_b, grad_d):
    np.testing.assert_allclose(gb, gd, rtol=1e-4, atol=1e-5)


def test_hashed_noise_is_gumbel():
  """Mean (Euler's gamma), variance (pi^2/6) and a KS distance of the hash."""
  g = np.asarray(noise.hashed_gumbel(noise.seed_words(jax.random.key(0)),
                                     jnp.arange(64), jnp.arange(20_000)), np.float64).ravel()
  n = g.size
  assert abs(g.mean() - np.euler_gamma) < 5 * np.sqrt(np.pi**2 / 6 / n)
  assert abs(g.var() - np.pi**2 / 6) < 0.01
  grid = np.linspace(-2, 6, 81)
  empirical = np.searchsorted(np.sort(g), grid) / n
  assert np.max(np.abs(empirical - np.exp(-np.exp(-grid)))) < 1.36 / np.sqrt(n) * 2


def test_hashed_noise_rows_and_items_distinct():
  words = noise.seed_words(jax.random.key(1))
  u = np.asarray(noise.hashed_uniform(*noise.row_salts(words, jnp.arange(8)), jnp.arange(4096)))
  assert np.corrcoef(u[0], u[1])[0, 1] < 0.05  # Rows are not copies of each other.
  assert len(np.unique(u[0])) > 4000  # Items within a row are distinct draws.


@pytest.mark.parametrize("sampler", ["dense_hash", "blocked_hash"])
def test_inclusion_frequencies_match_threefry_reference(sampler):
  """N = 1,000, K = 10: each item's inclusion frequency over many draws
  matches the Threefry Gumbel-top-k sampler within Monte-Carlo error."""
  num_items, num_candidates, draws = 1000, 10, 20_000
  dim = 4
  contexts = jnp.ones((1, draws, dim)) * 0.5
  items = jax.random.normal(jax.random.key(7), (1, num_items, dim))
  reference_table = BlockedScores(contexts, items, 256).dense()
  reference = DenseScores(reference_table.values, noise_generator="threefry")
  tables = {"dense_hash": reference_table, "blocked_hash": BlockedScores(contexts, items, 256)}

  def frequencies(table, key):
    cands = np.asarray(jax.jit(sampling.sample_candidates, static_argnums=2)(
        key, table, num_candidates))
    return np.bincount(cands.ravel(), minlength=num_items) / draws

  ref = frequencies(reference, jax.random.key(100))
  got = frequencies(tables[sampler], jax.random.key(200))
  # Both are estimates: the difference has variance p(1-p)(2/draws).
  p = np.clip((ref + got) / 2, 1e-4, 1)
  z = (got - ref) / np.sqrt(p * (1 - p) * 2 / draws)
  popular = ref > 0.005
  assert popular.sum() > 100
  assert np.max(np.abs(z[popular])) < 5.0, np.max(np.abs(z[popular]))
  # Chi-square-like aggregate over the popular items: mean z^2 ~ 1.
  assert np.mean(z[popular] ** 2) < 1.3


def test_blocked_top_k_through_the_pallas_kernel_equals_scan():
  """top_k_kernel="pallas" (interpreted on CPU) gives the scan path's lists."""
  contexts, items = _factors(1, 8, 300)
  key = jax.random.key(4)
  scan = BlockedScores(contexts, items, 128)
  kernel = BlockedScores(contexts, items, 128, fused_top_k=kernels.FusedTopK("pallas"))
  np.testing.assert_array_equal(sampling.sample_candidates(key, kernel, 7),
                                sampling.sample_candidates(key, scan, 7))
  np.testing.assert_array_equal(sampling.top_candidates(kernel, 7),
                                sampling.top_candidates(scan, 7))
