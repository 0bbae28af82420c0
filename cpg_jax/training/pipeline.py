"""Builds the pieces of a run from its `RunSpec`: the two-stage pipeline.

The environment (loaded and checked here, before anything is compiled), the
score model, the late-stage ranker, the estimator's loss and the Optax
optimiser. `Pipeline` holds the static pieces (no arrays but constants); the
environment is a pytree and travels separately, as an argument of the
compiled functions.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import optax

from cpg_jax import environments
from cpg_jax.numerics import baselines
from cpg_jax.numerics import estimators
from cpg_jax.numerics import rollout as rollout_lib
from cpg_jax.numerics import scores as scores_lib
from cpg_jax.numerics.model import TwoTowerScorer
from cpg_jax.numerics.sharding import ItemShards
from cpg_jax.training import mesh as mesh_lib
from cpg_jax.training.spec import EnvironmentSpec, OptimizerSpec, RunSpec


@dataclasses.dataclass(frozen=True)
class Pipeline:
  """The static pieces of one run (no training state).

  Attributes:
    spec: the run's typed description.
    model: the ESR's score model (over the whole catalogue: its parameters
      are initialised with it).
    loss_fn: the estimator's surrogate loss.
    optimizer: the Optax optimiser.
    item_shards: None, or how the catalogue is cut over the mesh's item
      axis; then the compiled functions run inside `shard_map`, each device
      with its own rows (`local_model`).
  """

  spec: RunSpec
  model: TwoTowerScorer
  loss_fn: estimators.Loss
  optimizer: optax.GradientTransformation
  item_shards: ItemShards | None = None

  @property
  def local_model(self) -> TwoTowerScorer:
    """The score model over this device's rows of the catalogue."""
    if self.item_shards is None:
      return self.model
    return self.model.clone(num_items=self.item_shards.local_size)

  @property
  def lsr(self):
    return self.spec.lsr

  def position_weights(self) -> jax.Array:
    """w_l, float32 `[L]`."""
    return rollout_lib.position_weights(self.spec.num_outputs, self.spec.position_weights)

  def uses_blocked_scores(self, batch_size: int) -> bool:
    """Whether a batch of this size is scored in item blocks (static)."""
    return self.spec.scores.uses_blocked(self.spec.num_models, batch_size,
                                         self.local_model.num_items)

  def score_table(self, params, context_ids: jax.Array) -> scores_lib.ScoreTable:
    """The ESR's scores of every item for `context_ids` `[batch]`, dense or
    item-blocked by the spec; differentiable in `params`."""
    contexts, items = self.local_model.apply({"params": params}, context_ids,
                                             method="factors")
    return self.spec.scores.build(contexts, items, self.item_shards)


def build_environment(spec: EnvironmentSpec) -> environments.Environment:
  """The environment of `spec`; data files are read and checked here.

  Raises:
    environments.DataFileError: a missing or malformed data file.
  """
  if spec.name == "synthetic":
    return environments.make_synthetic_environment(
        seed=spec.seed,
        num_contexts=spec.num_contexts,
        num_items=spec.num_items,
        context_dim=spec.dim,
        item_dim=spec.dim,
        reward_scale=spec.reward_scale,
        shared_key=spec.shared_key,
    )
  if spec.name == "kuairec":
    return environments.make_kuairec_environment(
        spec.data_path, noise_std=spec.noise_std, clip_max=spec.clip_max)
  if spec.name == "movielens":
    # Logs the completion report (held-out error, cache) at INFO, once per build.
    return environments.make_movielens_environment(
        spec.data_path, noise_std=spec.noise_std, rank=spec.fit_rank, l2=spec.fit_l2,
        iterations=spec.fit_iterations, holdout=spec.fit_holdout, seed=spec.seed,
        cache_dir=spec.cache_dir)
  matrix = environments.load_dense_matrix(spec.data_path)
  return environments.make_reward_matrix_environment(matrix, noise_std=spec.noise_std)


def learning_rate_schedule(spec: OptimizerSpec) -> optax.Schedule:
  lr, steps, warmup = spec.learning_rate, spec.num_steps, spec.warmup_steps
  if spec.schedule == "constant":
    return optax.constant_schedule(lr)
  if spec.schedule == "cosine":
    return optax.cosine_decay_schedule(lr, decay_steps=steps)
  if spec.schedule == "linear":
    return optax.linear_schedule(lr, 0.0, transition_steps=steps)
  return optax.warmup_cosine_decay_schedule(
      0.0, lr, warmup_steps=max(warmup, 1), decay_steps=max(steps, warmup + 1))


def build_optimizer(spec: OptimizerSpec, item_shards: ItemShards | None = None
                    ) -> optax.GradientTransformation:
  """The optimiser by name; Adagrad uses PyTorch's defaults (docs/method.md).

  With `item_shards` (inside `shard_map`), gradient clipping takes the
  global norm over every shard's rows.
  """
  lr = learning_rate_schedule(spec)
  if spec.name == "adagrad":
    # PyTorch: initial accumulator 0, eps 1e-10 (optax defaults differ).
    opt = optax.adagrad(lr, initial_accumulator_value=0.0, eps=1e-10)
  elif spec.name == "adam":
    opt = optax.adam(lr)
  elif spec.name == "adamw":
    opt = optax.adamw(lr)
  elif spec.name == "rmsprop":
    opt = optax.rmsprop(lr)
  else:
    opt = optax.sgd(lr)
  if spec.grad_clip_norm > 0:
    clip = (optax.clip_by_global_norm(spec.grad_clip_norm) if item_shards is None
            else _clip_by_sharded_global_norm(spec.grad_clip_norm, item_shards))
    opt = optax.chain(clip, opt)
  return opt


def _clip_by_sharded_global_norm(max_norm: float, shards: ItemShards
                                 ) -> optax.GradientTransformation:
  """optax.clip_by_global_norm for updates whose item leaves are cut over the
  mesh's item axis: their squares are summed over the shards."""

  def update(updates, state, params=None):
    del params
    def squares(path, x):
      total = jnp.sum(jnp.square(x))
      return jax.lax.psum(total, shards.axis) if mesh_lib.is_item_leaf(path) else total
    norm = jnp.sqrt(sum(jax.tree.leaves(jax.tree_util.tree_map_with_path(squares, updates))))
    scale = jnp.where(norm < max_norm, 1.0, max_norm / norm)
    return jax.tree.map(lambda t: (t * scale).astype(t.dtype), updates), state

  return optax.GradientTransformation(lambda params: optax.EmptyState(), update)


def build(spec: RunSpec, item_shards_of=None) -> tuple[Pipeline, environments.Environment]:
  """Loads the environment and builds every static piece of the run.

  `item_shards_of(num_items)`: how the loaded catalogue is cut over the
  mesh (`MeshShape.item_shards`); None for one device.

  Raises:
    config.ConfigError: K larger than the loaded catalogue.
    environments.DataFileError: a missing or malformed data file.
  """
  env = build_environment(spec.env)
  spec.check_catalogue(env.num_items)
  model = TwoTowerScorer(
      num_contexts=env.num_contexts,
      num_items=env.num_items,
      embedding_dim=spec.embedding_dim,
      num_models=spec.num_models,
      tower_layers=spec.tower_layers,
  )
  item_shards = None if item_shards_of is None else item_shards_of(env.num_items)
  if item_shards is not None:
    # The automatic mesh can put devices on the item axis (config.mesh = 0).
    mesh_lib.check_supported(
        item_shards.count, spec.estimator, spec.scores.noise_generator,
        "xla" if spec.scores.fused_top_k is None else spec.scores.fused_top_k.implementation)
  pipeline = Pipeline(
      spec=spec,
      model=model,
      loss_fn=baselines.with_baseline(
          estimators.get_estimator(spec.estimator, spec.swr_combine,
                                   exact_nodes=spec.exact_nodes, exact_tail=spec.exact_tail),
          spec.estimator, spec.baseline, spec.group_size, spec.standardize_rewards),
      optimizer=build_optimizer(spec.optimizer, item_shards),
      item_shards=item_shards,
  )
  return pipeline, env


def from_config(config) -> tuple[Pipeline, environments.Environment]:
  """Validates an `ml_collections.ConfigDict` and builds its pipeline and
  environment (scripts, benchmarks and tests; the host loop does the same)."""
  from cpg_jax.training import spec as spec_lib  # pylint: disable=g-import-not-at-top
  return build(spec_lib.from_config(config))
