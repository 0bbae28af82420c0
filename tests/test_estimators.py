"""Tests for `cpg_jax.estimators` and `cpg_jax.late_stage`.

The unbiasedness checks are exact: every ordered candidate list (and every
LSR outcome) of a tiny problem is enumerated in float64, the expected
gradient of an estimator is the probability-weighted sum of its per-rollout
gradients, and the true gradient is `jax.grad` of the enumerated objective
V(theta) = sum_C pi_theta(C) E[R | C].
"""

from __future__ import annotations

import itertools

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from cpg_jax.numerics import estimators
from cpg_jax.numerics import rollout as rollout_lib
from cpg_jax.training import interaction
from cpg_jax.numerics import sampling
from cpg_jax.environments.base import Environment
from cpg_jax.numerics.late_stage import LSR_NAMES
from cpg_jax.numerics.late_stage import LateStageRanker
from cpg_jax.numerics.rollout import Rollout
from tests.helpers import table


@pytest.fixture
def x64():
  """Runs the test with 64-bit JAX arrays; the previous mode is restored after."""
  with jax.enable_x64(True):
    yield


@flax.struct.dataclass
class DenseEnv(Environment):
  """A tiny environment: a dense q matrix, deterministic rewards r = q."""

  q: jax.Array  # [contexts, items]
  num_contexts: int = flax.struct.field(pytree_node=False)
  num_items: int = flax.struct.field(pytree_node=False)

  def sample_contexts(self, key, batch_size):
    return jax.random.randint(key, (batch_size,), 0, self.num_contexts, jnp.int32)

  def expected_score(self, context_ids, item_ids):
    return self.q[context_ids[:, None], item_ids]

  def mean_reward(self, context_ids, item_ids):
    return self.expected_score(context_ids, item_ids)

  def sample_reward(self, key, context_ids, item_ids):
    del key  # Deterministic rewards.
    return self.mean_reward(context_ids, item_ids)

  def optimal_items(self, context_ids, k):
    return jax.lax.top_k(self.q[context_ids], k)[1].astype(jnp.int32)


def dense_env(q) -> DenseEnv:
  q = jnp.asarray(q)
  return DenseEnv(q=q, num_contexts=q.shape[0], num_items=q.shape[1])


# ----------------------------------------------------------------------------
# Exact enumeration of a one-context problem.
# ----------------------------------------------------------------------------


def brute_list_probs(scores: jax.Array, lists: np.ndarray, models) -> jax.Array:
  """pi(C) of each ordered list as an explicit product of PL ratios.

  Differentiable in `scores` `[M, N]`; lists `[U, K]` -> `[U]`. Slot k of list
  u contributes exp(s^{m(k)}_{c_k}) / sum over the items not among its first k
  entries of exp(s^{m(k)}); the masks are built in NumPy.
  """
  num_lists, num_slots = lists.shape
  num_items = scores.shape[1]
  items = np.arange(num_items)
  # available[u, k, j]: item j not among lists[u, :k].
  available = np.ones((num_lists, num_slots, num_items), bool)
  for k in range(1, num_slots):
    available[:, k] = available[:, k - 1] & (items[None, :] != lists[:, k - 1, None])
  weights = jnp.exp(scores[np.asarray(models)])  # [K, N]
  numer = weights[np.arange(num_slots)[None, :], lists]  # [U, K]
  denom = jnp.sum(jnp.where(available, weights[None], 0.0), axis=-1)  # [U, K]
  return jnp.prod(numer / denom, axis=-1)


def lsr_outcomes(lsr_name: str, q_cand: np.ndarray, num_outputs: int):
  """All LSR output-position tuples for one candidate list, with probabilities."""
  k = len(q_cand)
  if lsr_name == "optimal":
    return [(tuple(np.argsort(-q_cand, kind="stable")[:num_outputs]), 1.0)]
  if lsr_name == "anti":
    return [(tuple(np.argsort(q_cand, kind="stable")[:num_outputs]), 1.0)]
  if lsr_name == "uniform":
    return [(pos, k ** -num_outputs)
            for pos in itertools.product(range(k), repeat=num_outputs)]
  raise ValueError(lsr_name)


class Enumeration:
  """Every (candidate list, LSR outcome) pair of one context, as stacked rollouts.

  Attributes:
    lists: `[U, K]` every ordered candidate list.
    list_index: `[n]` the list of each (list, outcome) pair.
    weights: `[n]` the LSR probability of the outcome given the list.
    rollouts: a `Rollout` whose leaves have a leading axis n and batch 1.
    models: the slot models.
  """

  def __init__(self, q, num_models, num_candidates, num_outputs, lsr_name):
    num_items = len(q)
    self.num_items = num_items
    self.models = sampling.slot_models(sampling.slot_counts(num_candidates, num_models))
    self.lists = np.array(list(itertools.permutations(range(num_items), num_candidates)),
                          np.int32)
    index, outputs, rewards, weights = [], [], [], []
    for u, c in enumerate(self.lists.tolist()):
      for positions, prob in lsr_outcomes(lsr_name, np.asarray(q)[c], num_outputs):
        index.append(u)
        outputs.append([c[p] for p in positions])
        rewards.append([q[c[p]] for p in positions])
        weights.append(prob)
    self.list_index = np.asarray(index)
    self.weights = jnp.asarray(weights)
    w = rollout_lib.position_weights(num_outputs).astype(jnp.float64)
    n = len(index)
    self.rollouts = Rollout(
        candidates=jnp.asarray(self.lists[self.list_index])[:, None, :],
        outputs=jnp.asarray(outputs, jnp.int32)[:, None, :],
        rewards=jnp.asarray(rewards, jnp.float64)[:, None, :],
        position_weights=jnp.broadcast_to(w, (n, num_outputs)))

  def list_probs(self, scores: jax.Array) -> jax.Array:
    """pi(C) of each pair's list, `[n]`; scores `[M, 1, N]`."""
    return brute_list_probs(scores[:, 0], self.lists, self.models)[self.list_index]

  def value(self, scores: jax.Array) -> jax.Array:
    """V = sum pi(C) P(outcome | C) R."""
    returns = jax.vmap(lambda r: r.aggregated_reward()[0])(self.rollouts)
    return jnp.sum(self.list_probs(scores) * self.weights * returns)

  def true_gradient(self, scores: jax.Array) -> jax.Array:
    """grad V by autodiff of the enumerated objective (jitted)."""
    return jax.jit(jax.grad(self.value))(scores)

  def expected_gradient(self, loss_fn, scores: jax.Array) -> jax.Array:
    """E[grad loss] = sum pi(C) P(outcome | C) grad loss(scores, rollout) (jitted)."""

    def expectation(scores):
      grads = jax.vmap(jax.grad(loss_fn), in_axes=(None, 0))(scores, self.rollouts)
      weight = self.list_probs(scores) * self.weights
      return jnp.tensordot(weight, grads, axes=1)

    return jax.jit(expectation)(scores)

  def inclusion_log_prob(self, scores: jax.Array) -> jax.Array:
    """Exact log P(a in C) for every item `[N]` (differentiable), by enumeration."""
    probs = brute_list_probs(scores[:, 0], self.lists, self.models)  # [U]
    contains = (self.lists[:, :, None] == np.arange(self.num_items)).any(axis=1)
    return jnp.log(probs @ contains.astype(np.float64))


def on_array(loss_fn):
  """A library loss (which takes a score table) as a function of the array."""
  return lambda scores, rollout: loss_fn(table(scores), rollout)


def tiny_problem(seed=0, num_items=5, num_models=1):
  rng = np.random.default_rng(seed)
  theta = rng.normal(size=(num_models, 1, num_items))
  q = rng.uniform(0.5, 3.0, num_items)
  return jnp.asarray(theta), q


UNBIASED_CASES = [
    # (M, K, L, lsr)
    (1, 2, 1, "optimal"),
    (2, 2, 1, "optimal"),
    (1, 2, 2, "optimal"),
    (1, 3, 2, "anti"),
    (1, 2, 1, "uniform"),
    (2, 3, 2, "uniform"),
]


@pytest.mark.parametrize("num_models,num_candidates,num_outputs,lsr", UNBIASED_CASES)
def test_vpg_is_unbiased(x64, num_models, num_candidates, num_outputs, lsr):
  """E[grad of the V-PG loss] == -grad V exactly (N = 5, one context, r = q)."""
  theta, q = tiny_problem(1, 5, num_models)
  enum = Enumeration(q, num_models, num_candidates, num_outputs, lsr)
  assert abs(float(jnp.sum(enum.list_probs(theta) * enum.weights)) - 1.0) < 1e-12
  true_grad = enum.true_gradient(theta)
  expected = enum.expected_gradient(on_array(estimators.get_estimator("vpg")), theta)
  assert expected.shape == theta.shape
  assert float(jnp.max(jnp.abs(true_grad))) > 1e-2  # A non-trivial gradient.
  np.testing.assert_allclose(expected, -true_grad, rtol=0, atol=1e-8)


@pytest.mark.parametrize("name", ["vpg_swr", "ca_pg", "ca_pg_swr"])
def test_other_estimators_are_biased(x64, name):
  """The same exact check separates V-PG from the biased estimators."""
  theta, q = tiny_problem(1, 5, 1)
  enum = Enumeration(q, 1, 2, 1, "optimal")
  true_grad = -enum.true_gradient(theta)
  expected = enum.expected_gradient(on_array(estimators.get_estimator(name)), theta)
  gap = float(jnp.max(jnp.abs(expected - true_grad)))
  print(f"{name}: max |E[grad] - grad V| = {gap:.4f} "
        f"(|grad V|_max = {float(jnp.max(jnp.abs(true_grad))):.4f})")
  assert gap > 1e-3 * float(jnp.max(jnp.abs(true_grad))) + 1e-6


@pytest.mark.parametrize("num_candidates,num_outputs", [(2, 1), (3, 2)])
def test_ca_with_exact_inclusion_is_unbiased_under_uniform_lsr(x64, num_candidates,
                                                                num_outputs):
  """Method §4.5: with a uniform LSR and exact P(a in C), CA-PG is unbiased;
  with the closed-form P (the library's `ca_pg`) it is not."""
  theta, q = tiny_problem(2, 5, 1)
  enum = Enumeration(q, 1, num_candidates, num_outputs, "uniform")
  true_grad = -enum.true_gradient(theta)

  def exact_ca_loss(scores, rollout):
    log_incl = enum.inclusion_log_prob(scores)[rollout.outputs]  # [1, L]
    return estimators._credit_loss(log_incl, rollout)

  exact_ca = enum.expected_gradient(exact_ca_loss, theta)
  np.testing.assert_allclose(exact_ca, true_grad, rtol=0, atol=1e-8)
  closed_ca = enum.expected_gradient(on_array(estimators.get_estimator("ca_pg")), theta)
  assert float(jnp.max(jnp.abs(closed_ca - true_grad))) > 1e-3


# ----------------------------------------------------------------------------
# Every estimator: scalar loss, finite gradients at extreme scores.
# ----------------------------------------------------------------------------

ESTIMATOR_VARIANTS = {
    "vpg": estimators.get_estimator("vpg"),
    "vpg_swr": estimators.get_estimator("vpg_swr"),
    "ca_pg": estimators.get_estimator("ca_pg"),
    "ca_pg_swr": estimators.get_estimator("ca_pg_swr"),
    "ca_pg_swr_lse": estimators.get_estimator("ca_pg_swr", swr_combine="logsumexp"),
}

FINITE_CASES = [
    # (M, N, K, L)
    (1, 8, 3, 1),
    (1, 8, 8, 8),
    (2, 8, 3, 3),
    (2, 8, 8, 1),
    pytest.param(1, 8, 3, 3, marks=pytest.mark.slow),
    pytest.param(1, 8, 8, 1, marks=pytest.mark.slow),
    pytest.param(2, 8, 3, 1, marks=pytest.mark.slow),
    pytest.param(2, 8, 8, 8, marks=pytest.mark.slow),
]


@pytest.mark.parametrize("num_models,num_items,num_candidates,num_outputs", FINITE_CASES)
def test_estimators_finite_with_extreme_scores(num_models, num_items, num_candidates,
                                               num_outputs):
  """Scores up to +-1e3 (random signs), K up to N, L up to K: every estimator's
  loss is a finite scalar and its gradient is finite."""
  rng = np.random.default_rng(num_models * 100 + num_candidates * 10 + num_outputs)
  batch = 32
  env = dense_env(rng.uniform(0.0, 5.0, (4, num_items)).astype(np.float32))
  lsr = LateStageRanker("optimal" if num_outputs > 1 else "noisy", num_outputs)
  weights = rollout_lib.position_weights(num_outputs)

  @jax.jit
  def run(key, env, scores, context_ids):
    roll = interaction.collect_rollout(
        key, env, context_ids, table(scores), num_candidates, lsr, weights)
    return {name: jax.value_and_grad(on_array(fn))(scores, roll)
            for name, fn in ESTIMATOR_VARIANTS.items()}

  for scale in (1.0, 1e3):
    signs = rng.choice([-1.0, 1.0], (num_models, batch, num_items))
    scores = jnp.asarray(scale * signs * rng.uniform(0.2, 1.0, signs.shape), jnp.float32)
    context_ids = jnp.asarray(rng.integers(0, 4, batch), jnp.int32)
    results = run(jax.random.key(scale == 1.0), env, scores, context_ids)
    for name, (loss, grad) in results.items():
      assert loss.shape == (), name
      assert np.isfinite(loss), (name, scale, loss)
      assert grad.shape == scores.shape, name
      assert np.all(np.isfinite(grad)), (name, scale)
      assert float(jnp.max(jnp.abs(grad))) > 0.0 or name.startswith("ca"), name


def test_get_estimator_names():
  """Every registered name resolves; unknown names raise a clear ValueError."""
  for name in ("vpg", "vpg_swr", "ca_pg", "ca_pg_swr"):
    assert callable(estimators.get_estimator(name))
  with pytest.raises(ValueError, match=r"unknown estimator 'reinforce'.*vpg"):
    estimators.get_estimator("reinforce")
  with pytest.raises(ValueError, match="swr_combine"):
    estimators.get_estimator("ca_pg_swr", swr_combine="mean")


# ----------------------------------------------------------------------------
# Late-stage rankers.
# ----------------------------------------------------------------------------


def _distinct_q(seed, batch, num_candidates):
  rng = np.random.default_rng(seed)
  return np.stack([rng.permutation(num_candidates) + rng.uniform(0, 0.5, num_candidates)
                   for _ in range(batch)]).astype(np.float32)


@pytest.mark.parametrize("num_outputs", [1, 3, 6])
def test_optimal_and_anti(num_outputs):
  """optimal: top-L by q, best first; anti: bottom-L, worst first. Also at eval."""
  q = _distinct_q(0, 50, 6)
  for deterministic in (False, True):
    best = LateStageRanker("optimal", num_outputs).select(
        jax.random.key(0), jnp.asarray(q), deterministic)
    worst = LateStageRanker("anti", num_outputs).select(
        jax.random.key(0), jnp.asarray(q), deterministic)
    assert best.dtype == jnp.int32 and best.shape == (50, num_outputs)
    np.testing.assert_array_equal(best, np.argsort(-q, axis=1)[:, :num_outputs])
    np.testing.assert_array_equal(worst, np.argsort(q, axis=1)[:, :num_outputs])


def test_noisy_at_eval_is_optimal():
  q = _distinct_q(1, 50, 6)
  for temperature in (0.1, 1.0, 100.0):
    got = LateStageRanker("noisy", 3, temperature=temperature).select(
        jax.random.key(1), jnp.asarray(q), deterministic=True)
    np.testing.assert_array_equal(got, np.argsort(-q, axis=1)[:, :3])


def _first_position_counts(lsr, q_row, num_draws, seed, deterministic=False):
  q = jnp.broadcast_to(jnp.asarray(q_row, jnp.float32), (num_draws, len(q_row)))
  pos = np.asarray(jax.jit(lsr.select, static_argnums=2)(jax.random.key(seed), q,
                                                         deterministic))
  return pos, np.bincount(pos[:, 0], minlength=len(q_row))


def _assert_frequencies(counts, probs, label):
  """Each frequency within 4 standard errors, and a chi-square p > 1e-3."""
  n = counts.sum()
  freq = counts / n
  stderr = np.sqrt(np.maximum(probs * (1 - probs), 1e-12) / n)
  z = np.abs(freq - probs) / stderr
  print(f"{label}: max |freq - p| = {np.max(np.abs(freq - probs)):.2e}, max z = {z.max():.2f}")
  positive = probs > 0
  assert np.all(counts[~positive] == 0), label
  assert np.all(z[positive] < 4.0), (label, freq, probs)
  if positive.sum() > 1:
    assert stats.chisquare(counts[positive], probs[positive] * n).pvalue > 1e-3, label


@pytest.mark.parametrize("temperature", [0.5, 2.0])
def test_noisy_training_first_position_is_softmax(temperature):
  """noisy in training: P(first output = c) = softmax(q / T)_c (Monte Carlo)."""
  q_row = np.array([1.0, 0.3, -0.5, 2.0, 0.0], np.float32)
  _, counts = _first_position_counts(LateStageRanker("noisy", 2, temperature=temperature),
                                     q_row, 100_000, 2)
  logits = q_row.astype(np.float64) / temperature
  probs = np.exp(logits - logits.max())
  _assert_frequencies(counts, probs / probs.sum(), f"noisy T={temperature}")


def _assert_uniform_with_replacement(pos, num_candidates, label):
  """Each output position uniform over K; two positions coincide w.p. 1/K."""
  for l in range(pos.shape[1]):
    counts = np.bincount(pos[:, l], minlength=num_candidates)
    _assert_frequencies(counts, np.full(num_candidates, 1 / num_candidates),
                        f"{label} position {l}")
  if pos.shape[1] > 1:
    same = np.mean(pos[:, 0] == pos[:, 1])
    stderr = np.sqrt((1 / num_candidates) * (1 - 1 / num_candidates) / len(pos))
    assert abs(same - 1 / num_candidates) < 4 * stderr, (label, same)


@pytest.mark.parametrize("deterministic", [False, True])
def test_uniform_is_uniform_with_replacement(deterministic):
  """uniform: each position ~ 1/K, drawn with replacement, stochastic at eval too."""
  q_row = np.array([5.0, 1.0, 3.0, 2.0, 4.0], np.float32)
  pos, _ = _first_position_counts(LateStageRanker("uniform", 3), q_row, 60_000, 3,
                                  deterministic)
  _assert_uniform_with_replacement(pos, 5, f"uniform det={deterministic}")


@pytest.mark.parametrize("name,param,value,reduces_to", [
    ("epsilon_greedy", "epsilon", 0.0, "optimal"),
    ("epsilon_greedy", "epsilon", 1.0, "uniform"),
    ("interpolate", "alpha", 1.0, "optimal"),
    ("interpolate", "alpha", 0.0, "uniform"),
])
def test_mixtures_at_extremes(name, param, value, reduces_to):
  """epsilon_greedy(0) / interpolate(1) are optimal; epsilon_greedy(1) /
  interpolate(0) are uniform."""
  q_row = np.array([5.0, 1.0, 3.0, 2.0, 4.0], np.float32)
  lsr = LateStageRanker(name, 2, **{param: value})
  pos, _ = _first_position_counts(lsr, q_row, 60_000, 4)
  if reduces_to == "optimal":
    np.testing.assert_array_equal(pos, np.broadcast_to([0, 4], pos.shape))
  else:
    _assert_uniform_with_replacement(pos, 5, f"{name} {param}={value}")


def test_mixtures_in_between():
  """epsilon_greedy(0.3): P(first = best) = 0.7 + 0.3/K; interpolate(0.4):
  P(position l = l-th best) = 0.4 + 0.6/K at every position."""
  q_row = np.array([5.0, 1.0, 3.0, 2.0, 4.0], np.float32)
  _, counts = _first_position_counts(LateStageRanker("epsilon_greedy", 2, epsilon=0.3),
                                     q_row, 60_000, 5)
  probs = np.full(5, 0.3 / 5)
  probs[0] += 0.7
  _assert_frequencies(counts, probs, "epsilon_greedy 0.3")
  pos, _ = _first_position_counts(LateStageRanker("interpolate", 2, alpha=0.4),
                                  q_row, 60_000, 6)
  for l, best in enumerate([0, 4]):
    probs = np.full(5, 0.6 / 5)
    probs[best] += 0.4
    _assert_frequencies(np.bincount(pos[:, l], minlength=5), probs, f"interpolate l={l}")


@pytest.mark.parametrize("kwargs,field", [
    (dict(name="best", num_outputs=1), "late-stage ranker"),
    (dict(name="optimal", num_outputs=0), "num_outputs"),
    (dict(name="noisy", num_outputs=1, temperature=0.0), "temperature"),
    (dict(name="noisy", num_outputs=1, temperature=-1.0), "temperature"),
    (dict(name="noisy", num_outputs=1, temperature=float("nan")), "temperature"),
    (dict(name="epsilon_greedy", num_outputs=1, epsilon=-0.1), "epsilon"),
    (dict(name="epsilon_greedy", num_outputs=1, epsilon=1.5), "epsilon"),
    (dict(name="epsilon_greedy", num_outputs=1, epsilon=float("nan")), "epsilon"),
    (dict(name="interpolate", num_outputs=1, alpha=2.0), "alpha"),
    (dict(name="interpolate", num_outputs=1, alpha=-0.5), "alpha"),
])
def test_late_stage_ranker_rejects_bad_parameters(kwargs, field):
  with pytest.raises(ValueError, match=field):
    LateStageRanker(**kwargs)


def test_late_stage_ranker_rejects_more_outputs_than_candidates():
  with pytest.raises(ValueError, match="L=4"):
    LateStageRanker("optimal", 4).select(jax.random.key(0), jnp.zeros((2, 3)))


def test_all_lsr_names_construct_and_select():
  """Every advertised name builds and returns valid positions."""
  q = jnp.asarray(_distinct_q(7, 20, 5))
  for name in LSR_NAMES:
    pos = np.asarray(LateStageRanker(name, 2).select(jax.random.key(0), q))
    assert pos.shape == (20, 2) and pos.min() >= 0 and pos.max() < 5, name
