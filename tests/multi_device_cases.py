"""Multi-device cases, run by tests/test_multi_device.py in a subprocess that
forces 8 CPU devices (`XLA_FLAGS=--xla_force_host_platform_device_count=8`,
set before JAX starts). Not collected on its own (no `test_` prefix).

Each case trains a tiny synthetic run on one device and on a mesh
(seeds x items), from the same initial state, and compares: the sampled and
the deterministic candidates exactly (at a fixed point), the rewards of every
step, the evaluation metrics and the reference values within float32
round-off of their means (a different candidate would move them by orders
of magnitude more), the parameters within float32 round-off grown through
Adagrad, and the gradients of the losses at a fixed point (values, and
against float64 finite differences for a tiny case).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cpg_jax.numerics import sampling
from cpg_jax.training import config as config_lib
from cpg_jax.training import evaluation
from cpg_jax.training import interaction
from cpg_jax.training import mesh as mesh_lib
from cpg_jax.training import pipeline as pipeline_lib
from cpg_jax.training import spec as spec_lib
from cpg_jax.training import state as state_lib
from cpg_jax.training import step as step_lib
from cpg_jax.training import streams

assert jax.device_count() == 8, "run with XLA_FLAGS=--xla_force_host_platform_device_count=8"

ESTIMATORS = ("vpg", "vpg_swr", "ca_pg", "ca_pg_swr")
MESHES = ((2, 4), (4, 2), (1, 8))
STEPS = 10
# Parameters after STEPS Adagrad steps: float32 round-off of sums taken in
# another order (per-shard log-sum-exps, psum) grows through Adagrad's
# normalisation g / sqrt(sum g^2) of tiny gradients; measured <= 2e-4.
PARAM_ATOL = 1e-3
# Rewards, evaluation and reference values: float32 round-off of means.
VALUE_RTOL = 1e-6


def tiny_config(**overrides):
  num_items = overrides.pop("N", 61)
  return config_lib.apply_overrides(config_lib.default_config(), {
      "env.num_contexts": 40, "env.num_items": num_items, "num_candidates": 5,
      "batch_size": 16, "num_steps": STEPS, "eval_contexts": 64, "eval_batch_size": 32,
      "num_seeds": 8, "learning_rate": 0.05, **overrides})


def _build(config, shape):
  spec = spec_lib.from_config(config)
  if shape is None:
    pipeline, env = pipeline_lib.build(spec)
    return pipeline, env, None, state_lib.init_states(pipeline, spec.seeds)
  mesh_shape = mesh_lib.MeshShape(*shape)
  mesh = mesh_lib.build(mesh_shape)
  pipeline, env = pipeline_lib.build(spec, mesh_shape.item_shards)
  states = mesh_lib.place_states(state_lib.init_states(pipeline, spec.seeds), mesh,
                                 pipeline.item_shards)
  return pipeline, mesh_lib.place_env(env, mesh, pipeline.item_shards), mesh, states


def train(config, shape):
  """(final params on the host, unpadded), per-step metrics, eval metrics,
  reference values) of STEPS steps on one device (shape None) or a mesh."""
  pipeline, env, mesh, states = _build(config, shape)
  states, metrics = step_lib.make_train_chunk(pipeline, mesh=mesh)(states, env, STEPS)
  evaluated = evaluation.make_evaluate(pipeline, mesh)(states, env)
  reference = evaluation.reference_values(pipeline, env, 0, mesh)
  host = mesh_lib.unpad_states(jax.device_get(states), config.env.num_items)
  return host.params, jax.device_get(metrics), jax.device_get(evaluated), reference


def _assert_same_run(config, shape, loss_rtol=1e-4):
  want = train(config, None)
  got = train(config, shape)
  # A different candidate would move a batch's mean reward by O(1 / batch);
  # the sums themselves may round differently on another layout (1e-7).
  np.testing.assert_allclose(got[1]["reward"], want[1]["reward"], rtol=VALUE_RTOL)
  np.testing.assert_array_equal(got[1]["finite"], want[1]["finite"])
  for name in want[2]:
    np.testing.assert_allclose(got[2][name], want[2][name], rtol=VALUE_RTOL, err_msg=name)
  for name in want[3]:
    np.testing.assert_allclose(got[3][name], want[3][name], rtol=VALUE_RTOL, err_msg=name)
  np.testing.assert_allclose(got[1]["loss"], want[1]["loss"], rtol=loss_rtol)
  for a, b in zip(jax.tree.leaves(got[0]), jax.tree.leaves(want[0]), strict=True):
    np.testing.assert_allclose(a, b, rtol=0, atol=PARAM_ATOL)


# 4 x 2 (more seed shards than item shards) runs under -m slow; 2 x 4 and
# 1 x 8 (every device on items) by default.
@pytest.mark.parametrize("shape", [
    shape if shape != (4, 2) else pytest.param(shape, marks=pytest.mark.slow)
    for shape in MESHES])
def test_every_mesh_matches_one_device(shape):
  # N = 64 divides by every item axis; the estimator cases take N = 61.
  _assert_same_run(tiny_config(estimator="ca_pg_swr", N=64), shape)


@pytest.mark.parametrize("estimator", ESTIMATORS)
@pytest.mark.parametrize("num_items", [61, pytest.param(64, marks=pytest.mark.slow)])
def test_every_estimator_matches_one_device(estimator, num_items):
  _assert_same_run(tiny_config(estimator=estimator, N=num_items), (2, 4))


@pytest.mark.parametrize("case", [pytest.param("multi_model", marks=pytest.mark.slow),
                                  "blocked",
                                  pytest.param("uniform_lsr", marks=pytest.mark.slow)])
def test_harder_paths_match_one_device(case):
  overrides = {
      "multi_model": dict(estimator="ca_pg", num_models=2, num_outputs=2),
      "blocked": dict(estimator="ca_pg", score_path="blocked", item_block_size=4),
      "uniform_lsr": dict(estimator="vpg", lsr="uniform", N=64, score_path="blocked",
                          item_block_size=7),
  }[case]
  _assert_same_run(tiny_config(**overrides), (1, 8))


@pytest.mark.slow
@pytest.mark.parametrize("estimator", ESTIMATORS)
@pytest.mark.parametrize("num_items", [61, 64])
@pytest.mark.parametrize("shape", MESHES)
def test_full_product(estimator, num_items, shape):
  _assert_same_run(tiny_config(estimator=estimator, N=num_items), shape)


def _loss_and_candidates(pipeline, env, params, key):
  """The loss of one batch at `params` and its sampled candidates (one seed)."""
  spec = pipeline.spec
  key_contexts, key_rollout = jax.random.split(key)
  context_ids = env.sample_contexts(key_contexts, spec.batch_size)

  def loss_fn(p):
    scores = pipeline.score_table(p, context_ids)
    rollout = interaction.collect_rollout(key_rollout, env, context_ids, scores,
                                          spec.num_candidates, pipeline.lsr,
                                          pipeline.position_weights())
    return pipeline.loss_fn(scores, rollout), rollout.candidates

  (loss, candidates), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
  top = sampling.top_candidates(pipeline.score_table(params, context_ids).stop_gradient(),
                                spec.num_candidates)
  return loss, grads, candidates, top


def gradients(config, shape):
  """(loss, grads, sampled candidates, top candidates) of seed 0's first batch."""
  pipeline, env, mesh, states = _build(config, shape)
  key = streams.stream_key(jax.random.key(0), streams.TRAIN_STREAM, 0)
  seed0 = jax.tree.map(lambda x: x[:1], states)
  if mesh is None:
    return jax.jit(lambda p: _loss_and_candidates(pipeline, env, p, key))(
        jax.tree.map(lambda x: x[0], seed0.params))
  sharded = pipeline.item_shards is not None
  specs = mesh_lib.state_specs(seed0, sharded)
  # One seed on a (1 x D) mesh: the item axis only.
  fn = jax.shard_map(
      lambda p, e: jax.vmap(lambda q: _loss_and_candidates(pipeline, e, q, key))(p),
      mesh=mesh, in_specs=(specs.params, mesh_lib.env_specs(env, sharded)),
      out_specs=(jax.sharding.PartitionSpec(mesh_lib.SEED_AXIS), specs.params,
                 jax.sharding.PartitionSpec(mesh_lib.SEED_AXIS),
                 jax.sharding.PartitionSpec(mesh_lib.SEED_AXIS)))
  loss, grads, candidates, top = jax.jit(fn)(seed0.params, env)
  grads = mesh_lib.unpad_states(jax.device_get(grads), config.env.num_items)
  return (loss[0], jax.tree.map(lambda x: x[0], grads), candidates[0], top[0])


@pytest.mark.parametrize("estimator", ["vpg", "ca_pg",
                                       *[pytest.param(e, marks=pytest.mark.slow)
                                         for e in ("vpg_swr", "ca_pg_swr")]])
def test_sharded_gradients_equal_one_device(estimator):
  config = tiny_config(estimator=estimator, num_seeds=1, N=61)
  want = gradients(config, None)
  got = gradients(config, (1, 8))
  np.testing.assert_array_equal(got[2], want[2])  # sampled candidates
  np.testing.assert_array_equal(got[3], want[3])  # deterministic top-K
  np.testing.assert_allclose(got[0], want[0], rtol=1e-5)
  for a, b in zip(jax.tree.leaves(got[1]), jax.tree.leaves(want[1]), strict=True):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("estimator", [pytest.param("vpg", marks=pytest.mark.slow), "ca_pg"])
def test_sharded_gradients_match_float64_finite_differences(estimator):
  with jax.enable_x64(True):
    config = tiny_config(estimator=estimator, num_seeds=1, N=13, num_candidates=3,
                         batch_size=4)
    pipeline, env, mesh, states = _build(config, (1, 4))
    key = streams.stream_key(jax.random.key(0), streams.TRAIN_STREAM, 0)
    seed0 = jax.tree.map(lambda x: x[:1].astype(jnp.float64)
                         if jnp.issubdtype(x.dtype, jnp.floating) else x[:1], states)
    specs = mesh_lib.state_specs(seed0, True)
    env_specs = mesh_lib.env_specs(env, True)

    def local(p, e):
      return jax.vmap(lambda q: _loss_and_candidates(pipeline, e, q, key)[:2])(p)

    fn = jax.jit(jax.shard_map(
        local, mesh=mesh, in_specs=(specs.params, env_specs),
        out_specs=(jax.sharding.PartitionSpec(mesh_lib.SEED_AXIS), specs.params)))
    loss, grads = fn(seed0.params, env)
    params = jax.device_get(seed0.params)
    grads = jax.device_get(grads)
    rng = np.random.default_rng(0)
    eps = 1e-6
    for leaf_index, (leaf, grad) in enumerate(zip(jax.tree.leaves(params), jax.tree.leaves(grads))):
      for _ in range(4):
        index = tuple(rng.integers(0, n) for n in leaf.shape)
        if len(index) > 1 and index[1] >= 13 and leaf.shape[1] > 13:
          continue  # a padding row: not an item
        def shifted(delta):
          leaves = [x.copy() for x in jax.tree.leaves(params)]
          leaves[leaf_index][index] += delta
          tree = jax.tree.unflatten(jax.tree.structure(params), leaves)
          placed = mesh_lib.put(tree, mesh, specs.params)
          return float(fn(placed, env)[0][0])
        numeric = (shifted(eps) - shifted(-eps)) / (2 * eps)
        np.testing.assert_allclose(grad[index], numeric, rtol=1e-4, atol=1e-7)


@pytest.mark.slow
@pytest.mark.parametrize("estimator", ["ca_pg_exact", "ca_pg_ss"])
def test_single_model_estimators_on_a_seed_mesh(estimator):
  """ca_pg_exact / ca_pg_ss (M = 1, no item sharding) on 8 seed devices. The
  quadrature's float32 sums round differently when compiled per device
  (measured: one loss of 80 off by 1.4e-4 relative)."""
  _assert_same_run(tiny_config(estimator=estimator), (8, 1), loss_rtol=1e-3)


def test_single_model_estimators_refuse_an_item_mesh():
  """The automatic mesh can put devices on items; the pipeline refuses that."""
  with pytest.raises(config_lib.ConfigError, match="item-sharded"):
    _build(tiny_config(estimator="ca_pg_exact"), (2, 4))


@pytest.mark.slow
def test_grouped_leave_one_out_baseline_on_an_item_mesh():
  """Group rollouts and a leave-one-out baseline inside shard_map, items sharded."""
  _assert_same_run(tiny_config(estimator="vpg", baseline="leave_one_out", group_size=4),
                   (2, 4))
