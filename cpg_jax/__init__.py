"""cpg_jax: train early-stage rankers end to end with (credit-assigned) policy gradients.

The public API, in one screen (see README.md, docs/method.md and
docs/architecture.md). The names are loaded on first use, so that
`import cpg_jax.experiments.report` (a tool that only reads files) does not
import JAX.

  Configure   default_config, apply_overrides, validate_config, ConfigError
  Run         train_and_evaluate, RunSpec, run_spec_from_config, build_pipeline
  World       make_synthetic_environment, make_kuairec_environment,
              make_reward_matrix_environment, Environment, DataFileError
  Policy      TwoTowerScorer, DenseScores, BlockedScores, sample_candidates,
              top_candidates, LateStageRanker
  Estimate    ESTIMATORS, get_estimator, Rollout, collect_rollout
  State       TrainState
  Errors      UserError (every error a user can fix)
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

# public name -> (module, attribute)
_EXPORTS = {
    "default_config": ("cpg_jax.training.config", "default_config"),
    "apply_overrides": ("cpg_jax.training.config", "apply_overrides"),
    "validate_config": ("cpg_jax.training.config", "validate"),
    "ConfigError": ("cpg_jax.training.config", "ConfigError"),
    "train_and_evaluate": ("cpg_jax.training.loop", "train_and_evaluate"),
    "RunSpec": ("cpg_jax.training.spec", "RunSpec"),
    "run_spec_from_config": ("cpg_jax.training.spec", "from_config"),
    "build_pipeline": ("cpg_jax.training.pipeline", "build"),
    "make_synthetic_environment": ("cpg_jax.environments", "make_synthetic_environment"),
    "make_kuairec_environment": ("cpg_jax.environments", "make_kuairec_environment"),
    "make_reward_matrix_environment": ("cpg_jax.environments",
                                       "make_reward_matrix_environment"),
    "Environment": ("cpg_jax.environments", "Environment"),
    "DataFileError": ("cpg_jax.environments", "DataFileError"),
    "TwoTowerScorer": ("cpg_jax.numerics.model", "TwoTowerScorer"),
    "DenseScores": ("cpg_jax.numerics.scores", "DenseScores"),
    "BlockedScores": ("cpg_jax.numerics.scores", "BlockedScores"),
    "sample_candidates": ("cpg_jax.numerics.sampling", "sample_candidates"),
    "top_candidates": ("cpg_jax.numerics.sampling", "top_candidates"),
    "LateStageRanker": ("cpg_jax.numerics.late_stage", "LateStageRanker"),
    "ESTIMATORS": ("cpg_jax.numerics.estimators", "ESTIMATORS"),
    "get_estimator": ("cpg_jax.numerics.estimators", "get_estimator"),
    "Rollout": ("cpg_jax.numerics.rollout", "Rollout"),
    "collect_rollout": ("cpg_jax.training.interaction", "collect_rollout"),
    "TrainState": ("cpg_jax.training.state", "TrainState"),
    "UserError": ("cpg_jax.user_errors", "UserError"),
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
  if name not in _EXPORTS:
    raise AttributeError(f"module 'cpg_jax' has no attribute {name!r}")
  module, attribute = _EXPORTS[name]
  value = getattr(importlib.import_module(module), attribute)
  globals()[name] = value  # Later lookups skip this function.
  return value


def __dir__():
  return __all__
