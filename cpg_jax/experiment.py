"""Builds the parts of an experiment from a validated config.

The environment, the score model, the late-stage ranker, the estimator and the
Optax optimiser: everything the trainer wires together. Data files are loaded
and every value validated here, before anything is compiled.
"""

from __future__ import annotations

import dataclasses

import jax
import ml_collections
import optax

from cpg_jax import config as config_lib
from cpg_jax import environments
from cpg_jax import estimators
from cpg_jax import rollout as rollout_lib
from cpg_jax import scores as scores_lib
from cpg_jax.late_stage import LateStageRanker
from cpg_jax.model import TwoTowerScorer


@dataclasses.dataclass(frozen=True)
class Experiment:
  """The static pieces of one run (no training state)."""

  config: ml_collections.ConfigDict
  env: environments.Environment
  model: TwoTowerScorer
  lsr: LateStageRanker
  loss_fn: estimators.Loss
  optimizer: optax.GradientTransformation
  position_weights: jax.Array

  @property
  def num_candidates(self) -> int:
    return self.config.num_candidates

  def uses_blocked_scores(self, batch_size: int) -> bool:
    """Whether a batch of this size is scored in item blocks (static)."""
    path = self.config.score_path
    if path != "auto":
      return path == "blocked"
    dense_bytes = 4 * self.config.num_models * batch_size * self.env.num_items
    return (dense_bytes > self.config.dense_budget_mb * 2**20
            and self.config.noise_generator == "hash")

  def score_table(self, params, context_ids: jax.Array) -> scores_lib.ScoreTable:
    """The ESR's scores of every item for `context_ids` `[batch]`, dense or
    item-blocked by `uses_blocked_scores`; differentiable in `params`."""
    variables = {"params": params}
    if self.uses_blocked_scores(context_ids.shape[0]):
      contexts, items = self.model.apply(variables, context_ids, method="factors")
      return scores_lib.BlockedScores(contexts, items, self.config.item_block_size,
                                      self.config.top_k_kernel)
    return scores_lib.DenseScores(self.model.apply(variables, context_ids),
                                  noise_generator=self.config.noise_generator)


def build_environment(config: ml_collections.ConfigDict) -> environments.Environment:
  env_config = config.env
  if env_config.name == "synthetic":
    return environments.make_synthetic_environment(
        seed=env_config.seed,
        num_contexts=env_config.num_contexts,
        num_items=env_config.num_items,
        context_dim=env_config.dim,
        item_dim=env_config.dim,
        reward_scale=env_config.reward_scale,
        shared_key=env_config.shared_key,
    )
  if env_config.name == "kuairec":
    return environments.make_kuairec_environment(
        env_config.data_path, noise_std=env_config.noise_std, clip_max=env_config.clip_max)
  matrix = environments.load_dense_matrix(env_config.data_path)
  return environments.make_reward_matrix_environment(matrix, noise_std=env_config.noise_std)


def learning_rate_schedule(config: ml_collections.ConfigDict) -> optax.Schedule:
  lr, steps, warmup = config.learning_rate, config.num_steps, config.warmup_steps
  name = config.lr_schedule
  if name == "constant":
    return optax.constant_schedule(lr)
  if name == "cosine":
    return optax.cosine_decay_schedule(lr, decay_steps=steps)
  if name == "linear":
    return optax.linear_schedule(lr, 0.0, transition_steps=steps)
  return optax.warmup_cosine_decay_schedule(
      0.0, lr, warmup_steps=max(warmup, 1), decay_steps=max(steps, warmup + 1))


def build_optimizer(config: ml_collections.ConfigDict) -> optax.GradientTransformation:
  """The optimiser by name; Adagrad uses PyTorch's defaults (§6)."""
  lr = learning_rate_schedule(config)
  name = config.optimizer
  if name == "adagrad":
    # PyTorch: initial accumulator 0, eps 1e-10 (optax defaults differ).
    opt = optax.adagrad(lr, initial_accumulator_value=0.0, eps=1e-10)
  elif name == "adam":
    opt = optax.adam(lr)
  elif name == "adamw":
    opt = optax.adamw(lr)
  elif name == "rmsprop":
    opt = optax.rmsprop(lr)
  else:
    opt = optax.sgd(lr)
  if config.grad_clip_norm > 0:
    opt = optax.chain(optax.clip_by_global_norm(config.grad_clip_norm), opt)
  return opt


def build_experiment(config: ml_collections.ConfigDict) -> Experiment:
  """Validates `config`, loads data, and builds every static piece.

  Raises:
    config_lib.ConfigError: an impossible config value.
    environments.DataFileError: a missing or malformed data file.
  """
  config_lib.validate(config)
  env = build_environment(config)
  config_lib.validate(config, num_items=env.num_items)
  model = TwoTowerScorer(
      num_contexts=env.num_contexts,
      num_items=env.num_items,
      embedding_dim=config.embedding_dim,
      num_models=config.num_models,
      tower_layers=tuple(config.tower_layers),
  )
  lsr = LateStageRanker(
      name=config.lsr,
      num_outputs=config.num_outputs,
      temperature=config.lsr_temperature,
      epsilon=config.lsr_epsilon,
      alpha=config.lsr_alpha,
  )
  return Experiment(
      config=config,
      env=env,
      model=model,
      lsr=lsr,
      loss_fn=estimators.get_estimator(config.estimator, config.swr_combine),
      optimizer=build_optimizer(config),
      position_weights=rollout_lib.position_weights(config.num_outputs, config.position_weights),
  )
