"""Baselines and group rollouts: the transforms, the config rules, and the
(un)biasedness claims checked by exact enumeration on a tiny system."""

import functools
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cpg_jax.numerics import baselines
from cpg_jax.numerics import estimators
from cpg_jax.numerics.rollout import Rollout
from cpg_jax.numerics.scores import DenseScores
from cpg_jax.training import config as config_lib
from cpg_jax.training import pipeline as pipeline_lib
from cpg_jax.training import state as state_lib
from cpg_jax.training import step as step_lib

# The tiny system: N = 4 items, K = 2 candidates, L = 1 output, a
# deterministic reward per item (the LSR ranks by it).
N, K = 4, 2
REWARD = np.array([1.0, 2.0, 0.5, 3.0])
SCORES = np.array([0.3, -0.5, 0.8, -0.2])
LISTS = np.array(list(itertools.permutations(range(N), K)))  # [12, K], ordered draws


@pytest.fixture
def x64():
  with jax.enable_x64(True):
    yield


def list_probs(s):
  """PL probability of each ordered list `[12]` (differentiable in s)."""
  w = jnp.exp(s)
  drawn = w[LISTS]
  before = jnp.concatenate([jnp.zeros((len(LISTS), 1)), jnp.cumsum(drawn, 1)[:, :-1]], 1)
  return jnp.prod(drawn / (jnp.sum(w) - before), axis=1)


def best_output(lists):
  """The optimal LSR's choice (highest reward) of each list: `[n, 1]`."""
  return np.take_along_axis(lists, np.argmax(REWARD[lists], 1)[:, None], 1)


def expected_estimate(loss, rows: int, outputs_of=best_output, reward_shift=0.0):
  """E[-grad loss] over `rows` independent rollouts of one context, by
  enumeration of every joint draw (and, with `outputs_of=None`, of the
  uniform LSR's choice): `[N]`."""
  combos = np.array(list(itertools.product(range(len(LISTS)), repeat=rows)))  # [n, rows]
  candidates = LISTS[combos]  # [n, rows, K]
  if outputs_of is None:  # uniform LSR: every position, probability 1/K
    outputs = np.concatenate([candidates[:, :, k:k + 1] for k in range(K)], axis=0)
    candidates = np.concatenate([candidates] * K, axis=0)
    combos = np.concatenate([combos] * K, axis=0)
    weight_scale = 1.0 / K
  else:
    outputs = np.stack([outputs_of(candidates[:, r]) for r in range(rows)], axis=1)
    weight_scale = 1.0
  rewards = REWARD[outputs] - reward_shift  # [n, rows, 1]
  s = jnp.asarray(SCORES)
  grads = _estimates(loss, s, jnp.asarray(candidates, jnp.int32),
                     jnp.asarray(outputs, jnp.int32), jnp.asarray(rewards))
  weights = jnp.prod(list_probs(s)[combos], axis=1) * weight_scale
  return np.asarray(jnp.einsum("n,nd->d", weights, grads))


@functools.partial(jax.jit, static_argnums=0)
def _estimates(loss, s, candidates, outputs, rewards):
  """-grad loss of each enumerated draw `[n, N]` (compiled once per loss and
  shape: a shifted reward reuses the program)."""
  rows = candidates.shape[1]

  def estimate(c, o, r):
    rollout = Rollout(candidates=c, outputs=o, rewards=r, position_weights=jnp.ones(1))
    return -jax.grad(lambda t: loss(DenseScores(jnp.broadcast_to(t, (1, rows, N))),
                                    rollout))(s)

  return jax.vmap(estimate)(candidates, outputs, rewards)


def true_gradient(outputs_of=best_output):
  if outputs_of is None:
    values = jnp.asarray(REWARD[LISTS].mean(axis=1))
  else:
    values = jnp.asarray(REWARD[outputs_of(LISTS)][:, 0])
  return np.asarray(jax.grad(lambda s: jnp.sum(list_probs(s) * values))(jnp.asarray(SCORES)))


def test_adjust_rewards_by_hand():
  rewards = jnp.asarray([[1.0], [3.0], [2.0], [6.0]])
  mean = baselines.adjust_rewards(rewards, "batch_mean", 1, False, False)
  np.testing.assert_allclose(np.asarray(mean)[:, 0], [-2.0, 0.0, -1.0, 3.0])
  loo = baselines.adjust_rewards(rewards, "leave_one_out", 2, False, False)
  np.testing.assert_allclose(np.asarray(loo)[:, 0], [-2.0, 2.0, -4.0, 4.0])
  shifted = baselines.adjust_rewards(rewards, "leave_one_out", 2, True, True)
  np.testing.assert_allclose(np.asarray(shifted)[:, 0], [0.0, 2.0, 0.0, 2.0])
  assert baselines.adjust_rewards(rewards, "none", 1, False, True) is rewards


@pytest.mark.parametrize("baseline, scale", [("none", 1.0), ("leave_one_out", 1.0),
                                             ("batch_mean", 0.5)])
def test_vpg_with_each_baseline_stays_unbiased(x64, baseline, scale):
  """Two rollouts of one context (pool of 2): E[estimate] = grad V exactly for
  none and leave-one-out; batch_mean (own reward included) gives (1 - 1/2)
  grad V, the same direction, as bias_reason says."""
  loss = baselines.with_baseline(estimators.get_estimator("vpg"), "vpg", baseline, 2, False)
  got = expected_estimate(loss, rows=2)
  want = true_gradient()
  assert np.linalg.norm(want) > 0.1
  np.testing.assert_allclose(got, scale * want, rtol=1e-10, atol=1e-12)


def test_vpg_standardised_is_biased(x64):
  """Dividing by the pool's standard deviation changes the expectation (the
  reason config refuses it without allow_biased_baseline)."""
  loss = baselines.with_baseline(estimators.get_estimator("vpg"), "vpg", "leave_one_out", 2,
                                 True)
  got, want = expected_estimate(loss, rows=2), true_gradient()
  # (With pools of 2 the standardised rewards are +-1: the expectation keeps
  # nearly the direction, not the size.)
  assert np.linalg.norm(got - want) > 0.05 * np.linalg.norm(want), (got, want)


def test_ca_pg_constant_baseline_biases_at_l_below_k(x64):
  """CA-PG with the exact inclusion probability, L = 1 < K = 2, optimal LSR:
  subtracting a constant b = 1 moves the expected estimate by
  b E[grad log P(a_out in C)] != 0. With the uniform LSR the same baseline
  leaves it unchanged (sum_a P(a) grad log P(a) = grad K = 0): the test can
  tell the two apart."""
  loss = estimators.get_estimator("ca_pg_exact", exact_nodes=64, exact_tail="exact")
  plain = expected_estimate(loss, rows=1)
  shifted = expected_estimate(loss, rows=1, reward_shift=1.0)
  bias = np.linalg.norm(shifted - plain)
  assert bias > 0.05 * np.linalg.norm(plain), (plain, shifted)
  uniform = expected_estimate(loss, rows=1, outputs_of=None)
  uniform_shifted = expected_estimate(loss, rows=1, outputs_of=None, reward_shift=1.0)
  np.testing.assert_allclose(uniform_shifted, uniform, atol=1e-6 * np.linalg.norm(uniform))


def _config(**overrides):
  return config_lib.apply_overrides(config_lib.default_config(), {
      "env.num_contexts": 40, "env.num_items": 50, "num_candidates": 5, "batch_size": 16,
      "num_steps": 20, "eval_every": 10, "eval_contexts": 32, "eval_batch_size": 32,
      "num_seeds": 1, **overrides})


@pytest.mark.parametrize("estimator", ["ca_pg", "ca_pg_swr", "ca_pg_exact", "ca_pg_ss",
                                       "vpg_swr"])
def test_biasing_baseline_is_refused_unless_allowed(estimator):
  with pytest.raises(config_lib.ConfigError, match="biases.*allow_biased_baseline"):
    config_lib.validate(_config(estimator=estimator, baseline="batch_mean"))
  config_lib.validate(_config(estimator=estimator, baseline="batch_mean",
                              allow_biased_baseline=True))


def test_vpg_baselines_pass_and_standardising_needs_the_opt_in():
  config_lib.validate(_config(estimator="vpg", baseline="leave_one_out", group_size=4))
  config_lib.validate(_config(estimator="vpg", baseline="batch_mean"))
  with pytest.raises(config_lib.ConfigError, match="standard deviation"):
    config_lib.validate(_config(estimator="vpg", standardize_rewards=True))


@pytest.mark.parametrize("changes, message", [
    ({"group_size": 3}, "must divide config.batch_size"),
    ({"group_size": 0}, "group_size"),
    ({"baseline": "mean"}, "config.baseline must be one of"),
    ({"baseline": "leave_one_out", "batch_size": 1, "estimator": "vpg"}, "at least 2"),
])
def test_bad_variance_reduction_values(changes, message):
  with pytest.raises(config_lib.ConfigError, match=message):
    config_lib.validate(_config(**changes))


def test_group_rollouts_repeat_each_context():
  pipeline, env = pipeline_lib.from_config(_config())
  ids = np.asarray(step_lib.sample_context_groups(env, jax.random.key(0), 16, 4))
  assert ids.shape == (16,)
  assert np.all(ids.reshape(4, 4) == ids.reshape(4, 4)[:, :1])
  same = step_lib.sample_context_groups(env, jax.random.key(0), 16, 1)
  np.testing.assert_array_equal(np.asarray(same),
                                np.asarray(env.sample_contexts(jax.random.key(0), 16)))


@pytest.mark.parametrize("overrides", [
    {"estimator": "vpg", "baseline": "leave_one_out", "group_size": 4},
    {"estimator": "ca_pg", "baseline": "batch_mean", "group_size": 8,
     "standardize_rewards": True, "allow_biased_baseline": True},
])
def test_grouped_training_steps_are_finite(overrides):
  pipeline, env = pipeline_lib.from_config(_config(**overrides))
  states, metrics = step_lib.make_train_chunk(pipeline)(
      state_lib.init_states(pipeline, [0]), env, 10)
  assert np.all(np.asarray(metrics["finite"]))
  assert np.all(np.isfinite(np.asarray(metrics["loss"])))
