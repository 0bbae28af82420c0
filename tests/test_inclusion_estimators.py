"""ca_pg_exact and ca_pg_ss as estimators: the registry, the config, training.

The probabilities themselves are tested in tests/test_inclusion.py.
"""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cpg_jax.numerics import estimators
from cpg_jax.numerics import inclusion
from cpg_jax.numerics import successive_sampling
from cpg_jax.numerics.rollout import Rollout
from cpg_jax.numerics.scores import BlockedScores, DenseScores
from cpg_jax.training import config as config_lib
from cpg_jax.training import loop
from cpg_jax.training import pipeline as pipeline_lib
from cpg_jax.training import state as state_lib
from cpg_jax.training import step as step_lib
from tests.helpers import metrics_records

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NEW = ("ca_pg_exact", "ca_pg_ss")


def tiny_config(**overrides):
  return config_lib.apply_overrides(config_lib.default_config(), {
      "env.num_contexts": 40, "env.num_items": 50, "num_candidates": 5, "batch_size": 16,
      "num_steps": 60, "eval_every": 20, "log_every": 10, "checkpoint_every": 30,
      "eval_contexts": 64, "eval_batch_size": 32, "num_seeds": 2, "learning_rate": 0.05,
      **overrides})


def _rollout(rng, batch, num_items, k, num_outputs):
  candidates = np.stack([rng.permutation(num_items)[:k] for _ in range(batch)])
  return Rollout(candidates=jnp.asarray(candidates, jnp.int32),
                 outputs=jnp.asarray(candidates[:, :num_outputs], jnp.int32),
                 rewards=jnp.asarray(rng.uniform(size=(batch, num_outputs)), jnp.float32),
                 position_weights=jnp.full((num_outputs,), 1.0 / num_outputs))


@pytest.mark.parametrize("name", NEW)
def test_loss_is_minus_credit_times_log_inclusion(name):
  """The registered loss = -mean_b sum_l w_l r_l log P(a_l in C), P from its module."""
  rng = np.random.default_rng(0)
  scores = jnp.asarray(rng.normal(size=(1, 4, 30)), jnp.float32)
  rollout = _rollout(rng, 4, 30, 6, 2)
  fn = (inclusion.exact_inclusion_log_prob if name == "ca_pg_exact" else
        successive_sampling.successive_sampling_log_prob)
  # Compiled, not run op by op: the quadrature is hundreds of small operations.
  log_p = jax.jit(fn, static_argnums=2)(scores[0], rollout.outputs, 6)
  want = -jnp.mean(jnp.sum(log_p * rollout.rewards * rollout.position_weights, axis=-1))
  got = jax.jit(estimators.get_estimator(name))(DenseScores(scores), rollout)
  np.testing.assert_allclose(float(got), float(want), rtol=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize("name", NEW)
def test_blocked_table_gives_the_dense_loss_and_gradient(name):
  rng = np.random.default_rng(1)
  contexts = jnp.asarray(rng.normal(size=(1, 4, 3)), jnp.float32)
  items = jnp.asarray(rng.normal(size=(1, 45, 3)), jnp.float32)
  rollout = _rollout(rng, 4, 45, 7, 3)
  loss = estimators.get_estimator(name)

  def both(table_of):
    return jax.value_and_grad(lambda c, i: loss(table_of(c, i), rollout), argnums=(0, 1))(
        contexts, items)

  dense = both(lambda c, i: BlockedScores(c, i).dense())
  blocked = both(lambda c, i: BlockedScores(c, i, block_size=16))
  for x, y in zip(jax.tree.leaves(dense), jax.tree.leaves(blocked)):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=2e-4, atol=1e-6)


@pytest.mark.parametrize("name", NEW)
def test_more_than_one_model_is_refused(name):
  with pytest.raises(config_lib.ConfigError, match="one model only"):
    config_lib.validate(tiny_config(estimator=name, num_models=2))
  with pytest.raises(ValueError, match="num_models = 1"):
    estimators.get_estimator(name)(DenseScores(jnp.zeros((2, 1, 10))),
                                   _rollout(np.random.default_rng(0), 1, 10, 3, 1))


@pytest.mark.parametrize("name", NEW)
def test_item_sharded_mesh_is_refused(name):
  config = tiny_config(estimator=name)
  config.mesh.item_shards = 2
  with pytest.raises(config_lib.ConfigError, match="item-sharded"):
    config_lib.validate(config)


@pytest.mark.parametrize("nodes", [8, 24, 0])
def test_bad_node_count_is_refused(nodes):
  with pytest.raises(config_lib.ConfigError, match="exact_nodes"):
    config_lib.validate(tiny_config(estimator="ca_pg_exact", exact_nodes=nodes))


def test_bad_tail_is_refused():
  with pytest.raises(config_lib.ConfigError, match="exact_tail"):
    config_lib.validate(tiny_config(estimator="ca_pg_exact", exact_tail="gauss"))


@pytest.mark.slow
@pytest.mark.parametrize("name", NEW)
def test_blocked_score_path_trains_like_dense(name):
  results = {}
  for path in ("dense", "blocked"):
    config = tiny_config(score_path=path, item_block_size=16, estimator=name)
    pipeline, env = pipeline_lib.from_config(config)
    chunk = step_lib.make_train_chunk(pipeline)
    results[path], metrics = chunk(state_lib.init_states(pipeline, [0, 1]), env, 20)
    assert np.all(np.asarray(metrics["finite"]))
  for x, y in zip(jax.tree.leaves(results["dense"].params),
                  jax.tree.leaves(results["blocked"].params)):
    # float32 sums in another order over 20 Adagrad steps (measured <= 1.2e-4).
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-3, atol=5e-4)


@pytest.mark.parametrize("name", NEW)
def test_training_raises_the_policy_value(name, tmp_path):
  """300 steps on the tiny system: finite, and the mean policy value of both
  seeds rises (measured: by ~0.5-0.7 from ~4.9)."""
  config = tiny_config(estimator=name, num_steps=300, eval_every=300, log_every=100,
                       checkpoint_every=300)
  loop.train_and_evaluate(config, str(tmp_path), log=lambda _: None)
  records = metrics_records(str(tmp_path))
  first, last = np.mean(records[0]["policy_value"]), np.mean(records[-1]["policy_value"])
  assert np.isfinite(last)
  assert last > first + 0.1, (first, last)


@pytest.mark.slow
def test_train_py_runs_both_estimators(tmp_path):
  """The command line of the README: `--config.estimator=ca_pg_exact` (and ca_pg_ss)."""
  for name in NEW:
    workdir = str(tmp_path / name)
    result = subprocess.run(
        [sys.executable, "train.py", "--config=configs/quickstart.py", f"--workdir={workdir}",
         f"--config.estimator={name}", "--config.num_steps=20", "--config.eval_every=10",
         "--config.log_every=10", "--config.eval_contexts=50", "--config.num_seeds=1",
         "--config.batch_size=8", "--config.env.num_items=60", "--config.num_candidates=4"],
        cwd=REPO, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": REPO})
    assert result.returncode == 0, result.stderr[-3000:]
    with open(os.path.join(workdir, "config.json")) as f:
      assert json.load(f)["estimator"] == name
    records = metrics_records(workdir)
    assert [r["step"] for r in records] == [0, 10, 20]
    assert np.all(np.isfinite(records[-1]["policy_value"]))
