"""Tests for `cpg_jax.inclusion` against brute force.

References are written independently of the module: P(a in C) by summing
the probabilities of every ordered K-draw without replacement (NumPy
float64), Monte-Carlo inclusion frequencies of Gumbel-top-K draws, central
finite differences, and the dense path for the blocked one. Library results
in float64 (inside the `x64` fixture) must match tightly; float32 loosely.
"""

from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cpg_jax.numerics import inclusion
from cpg_jax.numerics import successive_sampling


@pytest.fixture
def x64():
  """Runs the test with 64-bit JAX arrays; the previous mode is restored after."""
  with jax.enable_x64(True):
    yield


# ----------------------------------------------------------------------------
# Brute-force references.
# ----------------------------------------------------------------------------


def enumerate_inclusion(scores: np.ndarray, num_candidates: int) -> np.ndarray:
  """P(a in C) `[N]` for one context: the sum over every ordered K-draw of
  prod_k w_{c_k} / (W - sum_{j<k} w_{c_j}), float64."""
  scores = np.asarray(scores, np.float64)
  weights = np.exp(scores - scores.max())
  lists = np.array(list(itertools.permutations(range(len(scores)), num_candidates)))
  drawn = weights[lists]  # [lists, K]
  # The remaining mass summed over the items not yet drawn (not W minus the
  # drawn mass: that cancels to ~1e-10 relative at K = N with peaked scores).
  taken = np.zeros((len(lists), num_candidates, len(scores)), bool)
  for k in range(1, num_candidates):
    taken[:, k] = taken[:, k - 1]
    taken[np.arange(len(lists)), k, lists[:, k - 1]] = True
  remaining = np.sum(np.where(taken, 0.0, weights), axis=-1)  # [lists, K]
  prob = np.prod(drawn / remaining, axis=1)
  inclusion_prob = np.zeros(len(scores))
  for k in range(num_candidates):
    np.add.at(inclusion_prob, lists[:, k], prob)
  return inclusion_prob


def monte_carlo_inclusion(seed: int, scores: np.ndarray, num_candidates: int,
                          num_draws: int, chunk: int = 10_000) -> np.ndarray:
  """Inclusion frequencies `[N]` of Gumbel-top-K draws for one context."""
  scores = jnp.asarray(scores, jnp.float32)

  @jax.jit
  def counts(key):
    noise = jax.random.gumbel(key, (chunk, scores.shape[0]))
    top = jax.lax.top_k(scores[None] + noise, num_candidates)[1]
    return jnp.zeros(scores.shape[0], jnp.int32).at[top.ravel()].add(1)

  keys = jax.random.split(jax.random.key(seed), num_draws // chunk)
  return sum(np.asarray(counts(key)) for key in keys) / (chunk * len(keys))


def kinds(rng, num_items: int) -> np.ndarray:
  """Scores `[3, N]`: flat (all equal up to 1e-3 noise), N(0, 1), peaked N(0, 3^2)."""
  return np.stack([1e-3 * rng.normal(size=num_items), rng.normal(size=num_items),
                   3.0 * rng.normal(size=num_items)])


def all_items(batch: int, num_items: int) -> jnp.ndarray:
  return jnp.broadcast_to(jnp.arange(num_items, dtype=jnp.int32), (batch, num_items))


def exact_log_prob(scores, num_candidates, *settings, **kwargs):
  """`exact_inclusion_log_prob` of every item (the per-item path), in one
  jitted program for each of `settings` (dicts of keyword arguments; one
  program, and one compilation, for all of them)."""
  scores = jnp.asarray(scores)
  items = all_items(*scores.shape)
  settings = settings or (kwargs,)
  values = jax.jit(lambda s: [inclusion.exact_inclusion_log_prob(
      s, items, num_candidates, **options) for options in settings])(scores)
  values = [np.asarray(v) for v in values]
  return values if len(values) > 1 else values[0]


# ----------------------------------------------------------------------------
# Exact inclusion probabilities.
# ----------------------------------------------------------------------------

SMALL_CASES = [(n, k) for n in range(1, 9) for k in range(1, n + 1)]
DEFAULT_SMALL_CASES = [(2, 1), (6, 6), (8, 1), (8, 3), (8, 7)]


def _check_against_enumeration(num_items, num_candidates):
  rng = np.random.default_rng(100 * num_items + num_candidates)
  scores = kinds(rng, num_items)
  want = np.stack([enumerate_inclusion(row, num_candidates) for row in scores])
  np.testing.assert_allclose(want.sum(axis=1), num_candidates, rtol=1e-12)
  # 64 nodes: quadrature error ~1e-9 (measured); with tail="exact" nothing
  # else is approximated. The defaults (32 nodes; the default head covers
  # N <= 8): within 1e-5.
  fine, default = exact_log_prob(scores, num_candidates, dict(tail="exact", num_nodes=64), {})
  err = np.abs(np.exp(fine) - want) / want
  assert err.max() <= 1e-6, f"max rel err {err.max():.2e}"
  err = np.abs(np.exp(default) - want) / want
  assert err.max() <= 1e-5, f"defaults: max rel err {err.max():.2e}"


@pytest.mark.parametrize("num_items,num_candidates", DEFAULT_SMALL_CASES)
def test_exact_matches_enumeration(x64, num_items, num_candidates):
  """float64, flat / random / peaked scores: <= 1e-6 relative (64 nodes)."""
  _check_against_enumeration(num_items, num_candidates)


@pytest.mark.slow
@pytest.mark.parametrize("num_items,num_candidates", SMALL_CASES)
def test_exact_matches_enumeration_every_small_case(x64, num_items, num_candidates):
  """Every N <= 8 and every K <= N."""
  _check_against_enumeration(num_items, num_candidates)


def test_exact_series_tail_matches_enumeration(x64):
  """N = 8 with a head of 3 items: the tail (5 items) goes through the odds
  power series, exact for counts <= R = 12 > K - 1."""
  rng = np.random.default_rng(3)
  scores = kinds(rng, 8)
  want = np.stack([enumerate_inclusion(row, 4) for row in scores])
  got = np.exp(exact_log_prob(scores, 4, head_size=3, num_nodes=64))
  err = np.abs(got - want) / want
  assert err.max() <= 1e-6, f"max rel err {err.max():.2e}"


def test_exact_gradient_matches_enumeration_finite_differences(x64):
  """d/ds of sum_l c_l log P(a_l in C) == central differences of the
  log-enumeration (N = 6, K = 3, items in and out of the head)."""
  rng = np.random.default_rng(5)
  scores = 1.5 * rng.normal(size=(1, 6))
  items = jnp.asarray([[0, 3, 5]], jnp.int32)
  weights = np.array([1.0, -2.0, 0.5])

  def enumerated(s):
    return float(np.dot(weights, np.log(enumerate_inclusion(s[0], 3))[[0, 3, 5]]))

  eps = 1e-5
  numeric = np.zeros_like(scores)
  for j in range(6):
    bump = np.zeros_like(scores)
    bump[0, j] = eps
    numeric[0, j] = (enumerated(scores + bump) - enumerated(scores - bump)) / (2 * eps)
  # All items in the head (exact up to quadrature: 1e-6), and a head of 2
  # with a tail of 4 through the power series (measured 2e-6: 1e-5).
  grads = jax.jit(lambda s: [jax.grad(lambda t: jnp.dot(inclusion.exact_inclusion_log_prob(
      t, items, 3, num_nodes=64, head_size=h)[0], weights))(s) for h in (None, 2)])(
          jnp.asarray(scores))
  for grad, rtol in zip(grads, (1e-6, 1e-5)):
    np.testing.assert_allclose(np.asarray(grad), numeric, rtol=rtol, atol=1e-8)


def _walked_last_entry(p: np.ndarray, q: np.ndarray, start: np.ndarray) -> np.ndarray:
  """NumPy float64: start `[K, X]` convolved with each Bernoulli (p, q `[h, X]`),
  every entry kept; the last entry `[X]`."""
  state = np.array(start, np.float64)
  for p_j, q_j in zip(p, q):
    state = q_j * state + p_j * np.concatenate([np.zeros_like(state[:1]), state[:-1]])
  return state[-1]


@pytest.mark.parametrize("head,k,chunk", [(116, 100, 11), (30, 10, 4), (10, 10, 3),
                                          (9, 10, 4), (3, 10, 2), (12, 1, 5), (1, 5, 4)])
def test_head_walk_last_entry_matches_full_walk(x64, head, k, chunk):
  """`_add_items_last` (which drops the entries that cannot reach the last
  one, in up to `_WALK_STAGES` stages of chunks) == the walk that keeps
  every entry, in value and in the gradient with respect to p, q and the
  start (central differences: the walk is linear in each input, so they are
  exact up to rounding)."""
  rng = np.random.default_rng(head * 100 + k)
  width = 3
  p = rng.uniform(size=(head, width))
  q = 1.0 - p
  start = np.sort(rng.uniform(size=(k, width)), axis=0)  # a CDF-like start
  cotangent = rng.normal(size=width)
  value = jax.jit(inclusion._add_items_last, static_argnums=3)(p, q, start, chunk)
  np.testing.assert_allclose(np.asarray(value), _walked_last_entry(p, q, start),
                             rtol=1e-13, atol=1e-15)
  grads = jax.jit(jax.grad(lambda *a: jnp.dot(inclusion._add_items_last(*a, chunk), cotangent),
                           argnums=(0, 1, 2)))(p, q, start)
  inputs = [p, q, start]
  for which, grad in enumerate(grads):
    numeric = np.zeros_like(inputs[which])
    for index in np.ndindex(*numeric.shape):
      bumped = [x.copy() for x in inputs], [x.copy() for x in inputs]
      bumped[0][which][index] += 1e-6
      bumped[1][which][index] -= 1e-6
      numeric[index] = np.dot(_walked_last_entry(*bumped[0]) - _walked_last_entry(*bumped[1]),
                              cotangent) / 2e-6
    np.testing.assert_allclose(np.asarray(grad), numeric, rtol=1e-7, atol=1e-9)


def test_exact_all_items_path_equals_per_item_path(x64):
  """The prefix/suffix tables (every item) == the per-item masked head."""
  rng = np.random.default_rng(7)
  scores = 2.0 * rng.normal(size=(2, 60))
  per_item = exact_log_prob(scores, 10, head_size=12)
  tables = np.asarray(jax.jit(lambda s: inclusion.exact_inclusion_log_prob_all(
      s, 10, head_size=12))(jnp.asarray(scores)))
  np.testing.assert_allclose(tables, per_item, rtol=0, atol=1e-12)


@pytest.mark.parametrize("num_candidates", [10, 100])
def test_exact_sums_to_k_at_n1000(x64, num_candidates):
  """N = 1,000, N(0, 1) and N(0, 3^2) scores: sum_a P(a in C) = K to 1e-5
  relative (the issue asks 1e-4; measured ~1e-8)."""
  rng = np.random.default_rng(num_candidates)
  scores = np.stack([rng.normal(size=1000), 3.0 * rng.normal(size=1000)])
  probs = np.asarray(jax.jit(lambda s: inclusion.exact_inclusion_probs_all(
      s, num_candidates))(jnp.asarray(scores)))
  total = probs.sum(axis=1)
  np.testing.assert_allclose(total, num_candidates, rtol=1e-5)
  assert np.all((probs > 0) & (probs <= 1))


def _check_monte_carlo(num_items, num_candidates, num_draws, seed):
  rng = np.random.default_rng(seed)
  scores = np.stack([rng.normal(size=num_items), 3.0 * rng.normal(size=num_items)])
  scores = scores.astype(np.float32).astype(np.float64)
  exact = np.exp(np.asarray(jax.jit(lambda s: inclusion.exact_inclusion_log_prob_all(
      s, num_candidates))(jnp.asarray(scores))))
  for row, probs in zip(scores, exact):
    mc = monte_carlo_inclusion(seed, row, num_candidates, num_draws)
    stderr = np.sqrt(probs * (1 - probs) / num_draws)
    z = np.abs(mc - probs) / np.maximum(stderr, 1e-12)
    # Every item within 4 standard errors (plus one count, for items whose
    # expected count is below 1).
    assert np.all(np.abs(mc - probs) <= 4 * stderr + 1.0 / num_draws), (
        f"max z {z.max():.2f} at item {np.argmax(z)}")


def test_exact_matches_monte_carlo_n200(x64):
  """N = 200, K = 20, 20,000 Gumbel-top-K draws, within 4 standard errors."""
  _check_monte_carlo(200, 20, 20_000, 11)


@pytest.mark.slow
@pytest.mark.parametrize("num_candidates", [10, 100])
def test_exact_matches_monte_carlo_n1000(x64, num_candidates):
  """N = 1,000, 100,000 draws, N(0, 1) and N(0, 3^2) scores, within 4 SE."""
  _check_monte_carlo(1000, num_candidates, 100_000, 12 + num_candidates)


@pytest.mark.parametrize("num_items,num_candidates", [
    (50, 1), (300, 20),
    pytest.param(8, 3, marks=pytest.mark.slow), pytest.param(50, 49, marks=pytest.mark.slow)])
def test_extreme_scores_give_finite_values_and_gradients(num_items, num_candidates):
  """float32 scores x50 and x1e3 (N(0, 1) times the scale): finite values
  <= 0 and finite gradients, for the top item, the K-th, the (K+1)-th and
  the last, for both estimators."""
  rng = np.random.default_rng(num_items + num_candidates)
  scale = np.repeat([50.0, 1e3], 3)[:, None]
  scores = jnp.asarray(scale * rng.normal(size=(6, num_items)), jnp.float32)
  order = np.argsort(-np.asarray(scores), axis=1)
  items = jnp.asarray(np.stack([order[:, 0], order[:, num_candidates - 1],
                                order[:, min(num_candidates, num_items - 1)], order[:, -1]],
                               axis=1), jnp.int32)
  fns = (inclusion.exact_inclusion_log_prob, successive_sampling.successive_sampling_log_prob)
  results = jax.jit(lambda s: [(fn(s, items, num_candidates), jax.grad(
      lambda t, fn=fn: jnp.sum(fn(t, items, num_candidates)))(s)) for fn in fns])(scores)
  for fn, (value, grad) in zip(fns, results):
    assert np.all(np.isfinite(value)), fn.__name__
    assert np.all(np.asarray(value) <= 0.0), fn.__name__
    assert np.all(np.isfinite(grad)), fn.__name__


def test_float32_agrees_with_float64():
  """N = 300, K = 20, defaults: float32 within 5e-5 relative of float64
  (measured ~3e-6), and the gradients within 1e-3 relative of their norm."""
  rng = np.random.default_rng(13)
  scores = np.stack([rng.normal(size=300), 3.0 * rng.normal(size=300)])
  scores = scores.astype(np.float32)
  items = jnp.asarray(np.argsort(-scores, axis=1)[:, [0, 5, 19, 20, 60, 299]], jnp.int32)

  def both(s):
    fn = lambda t: inclusion.exact_inclusion_log_prob(t, items, 20)
    return fn(s), jax.grad(lambda t: jnp.sum(fn(t)))(s)

  value32, grad32 = jax.jit(both)(jnp.asarray(scores))
  with jax.enable_x64(True):
    value64, grad64 = jax.jit(both)(jnp.asarray(scores, jnp.float64))
    value64, grad64 = np.asarray(value64), np.asarray(grad64)
  assert np.asarray(value32).dtype == np.float32
  err = np.abs(np.expm1(np.asarray(value32, np.float64) - value64))
  assert err.max() <= 5e-5, err.max()
  grad_err = np.linalg.norm(np.asarray(grad32, np.float64) - grad64) / np.linalg.norm(grad64)
  assert grad_err <= 1e-3, grad_err


def test_k_equal_to_n_is_certain():
  scores = jnp.asarray(np.random.default_rng(0).normal(size=(2, 5)), jnp.float32)
  items = jnp.asarray([[0, 4], [2, 3]], jnp.int32)
  for fn in (inclusion.exact_inclusion_log_prob, successive_sampling.successive_sampling_log_prob):
    np.testing.assert_array_equal(np.asarray(fn(scores, items, 5)), 0.0)


def test_bad_arguments_are_refused():
  scores, items = jnp.zeros((1, 6)), jnp.zeros((1, 1), jnp.int32)
  with pytest.raises(ValueError, match="tail"):
    inclusion.exact_inclusion_log_prob(scores, items, 2, tail="gamma")
  with pytest.raises(ValueError, match="num_nodes"):
    inclusion.exact_inclusion_log_prob(scores, items, 2, num_nodes=20, order=8)
  with pytest.raises(ValueError, match="K"):
    inclusion.exact_inclusion_log_prob(scores, items, 7)
  with pytest.raises(ValueError, match="K"):
    successive_sampling.successive_sampling_log_prob(scores, items, 0)


# ----------------------------------------------------------------------------
# Successive sampling.
# ----------------------------------------------------------------------------


def successive_sampling_all(scores, num_candidates):
  scores = jnp.asarray(scores)
  items = all_items(*scores.shape)
  return np.exp(np.asarray(jax.jit(lambda s: successive_sampling.successive_sampling_log_prob(
      s, items, num_candidates))(scores)))


@pytest.mark.parametrize("num_candidates", [1, 10, 100])
def test_successive_sampling_sums_to_k(num_candidates):
  """sum_i pi_i = K: 1e-10 relative in float64, 1e-5 in float32."""
  rng = np.random.default_rng(num_candidates)
  scores = np.stack([rng.normal(size=1000), 3.0 * rng.normal(size=1000),
                     50.0 * rng.normal(size=1000)])
  total32 = successive_sampling_all(scores.astype(np.float32), num_candidates).sum(axis=1)
  np.testing.assert_allclose(total32, num_candidates, rtol=1e-5)
  with jax.enable_x64(True):
    total64 = successive_sampling_all(scores, num_candidates).sum(axis=1)
  np.testing.assert_allclose(total64, num_candidates, rtol=1e-10)


def test_successive_sampling_gradient_matches_finite_differences(x64):
  """The implicit custom-VJP gradient == central differences of its own value."""
  rng = np.random.default_rng(17)
  scores = 2.0 * rng.normal(size=(2, 40))
  items = jnp.asarray([[0, 7, 39], [5, 5, 12]], jnp.int32)
  weights = jnp.asarray([1.0, -0.5, 2.0])
  fn = jax.jit(lambda s: jnp.sum(successive_sampling.successive_sampling_log_prob(s, items, 8) * weights))
  grad = np.asarray(jax.grad(fn)(jnp.asarray(scores)))
  eps = 1e-6
  for index in [(0, 0), (0, 7), (0, 20), (0, 39), (1, 5), (1, 12), (1, 0), (1, 33)]:
    bump = np.zeros_like(scores)
    bump[index] = eps
    numeric = (fn(scores + bump) - fn(scores - bump)) / (2 * eps)
    np.testing.assert_allclose(grad[index], numeric, rtol=1e-6, atol=1e-9, err_msg=str(index))


@pytest.mark.parametrize("num_candidates", [10, pytest.param(100, marks=pytest.mark.slow)])
def test_successive_sampling_close_to_exact(x64, num_candidates):
  """N = 1,000: largest relative error of pi_a against the exact P(a in C),
  measured 0.5% / 1.2% (K = 10, flat / peaked), 0.09% / 0.2% (K = 100);
  asserted <= 2%."""
  rng = np.random.default_rng(19)
  scores = np.stack([rng.normal(size=1000), 3.0 * rng.normal(size=1000)])
  exact = np.asarray(jax.jit(lambda s: inclusion.exact_inclusion_probs_all(
      s, num_candidates))(jnp.asarray(scores)))
  approx = successive_sampling_all(scores, num_candidates)
  err = np.abs(approx - exact) / exact
  print(f"K={num_candidates}: max rel err flat {err[0].max():.2e}, peaked {err[1].max():.2e}")
  assert err.max() <= 2e-2


# ----------------------------------------------------------------------------
# Blocked (two-tower factor) variants.
# ----------------------------------------------------------------------------


def test_blocked_equals_dense(x64):
  """203 items in blocks of 64 (not a multiple): values and gradients (contexts
  and item vectors) == the dense path on contexts @ V.T, for both estimators."""
  rng = np.random.default_rng(23)
  contexts = jnp.asarray(rng.normal(size=(3, 8)))
  vectors = jnp.asarray(0.7 * rng.normal(size=(203, 8)))
  items = jnp.asarray(rng.integers(0, 203, (3, 2)), jnp.int32)
  weights = jnp.asarray([1.0, 0.5])
  pairs = [(inclusion.exact_inclusion_log_prob_blocked, inclusion.exact_inclusion_log_prob),
           (successive_sampling.successive_sampling_log_prob_blocked,
            successive_sampling.successive_sampling_log_prob)]

  def all_results(c, v):
    out = []
    for blocked, dense in pairs:
      via_blocks = lambda c, v, f=blocked: jnp.sum(f(c, v, items, 10, block_size=64) * weights)
      via_dense = lambda c, v, f=dense: jnp.sum(
          f(jnp.dot(c, v.T, precision=jax.lax.Precision.HIGHEST), items, 10) * weights)
      out.append((jax.value_and_grad(via_blocks, argnums=(0, 1))(c, v),
                  jax.value_and_grad(via_dense, argnums=(0, 1))(c, v)))
    return out

  for (blocked, _), (got, want) in zip(pairs, jax.jit(all_results)(contexts, vectors)):
    np.testing.assert_allclose(got[0], want[0], rtol=1e-10, err_msg=blocked.__name__)
    for g, w in zip(got[1], want[1]):
      np.testing.assert_allclose(g, w, rtol=1e-8, atol=1e-12, err_msg=blocked.__name__)


def test_dense_item_blocks_equal_one_block(x64):
  """`item_block` (a scan over blocks of the dense scores) changes nothing."""
  rng = np.random.default_rng(29)
  scores = jnp.asarray(rng.normal(size=(2, 250)))
  items = jnp.asarray([[0, 100], [249, 3]], jnp.int32)
  fn = lambda s, block: jnp.sum(inclusion.exact_inclusion_log_prob(
      s, items, 20, item_block=block))
  (got, got_grad), (want, want_grad) = jax.jit(lambda s: [
      jax.value_and_grad(fn)(s, block) for block in (64, None)])(scores)
  np.testing.assert_allclose(got, want, rtol=1e-12)
  np.testing.assert_allclose(got_grad, want_grad, rtol=1e-10, atol=1e-14)
