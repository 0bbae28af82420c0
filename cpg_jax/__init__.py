"""cpg_jax: train early-stage rankers end to end with (credit-assigned) policy gradients.

The public API; see README.md and ../shared/spec/method.md.
"""

from cpg_jax.config import ConfigError
from cpg_jax.config import apply_overrides
from cpg_jax.config import default_config
from cpg_jax.config import validate as validate_config
from cpg_jax.environments import DataFileError
from cpg_jax.environments import Environment
from cpg_jax.environments import make_kuairec_environment
from cpg_jax.environments import make_reward_matrix_environment
from cpg_jax.environments import make_synthetic_environment
from cpg_jax.estimators import ESTIMATORS
from cpg_jax.estimators import get_estimator
from cpg_jax.experiment import Experiment
from cpg_jax.experiment import build_experiment
from cpg_jax.late_stage import LateStageRanker
from cpg_jax.loop import train_and_evaluate
from cpg_jax.model import TwoTowerScorer
from cpg_jax.rollout import Rollout
from cpg_jax.rollout import collect_rollout
from cpg_jax.sampling import sample_candidates
from cpg_jax.sampling import top_candidates
from cpg_jax.scores import BlockedScores
from cpg_jax.scores import DenseScores
from cpg_jax.trainer import TrainState

__version__ = "0.1.0"

__all__ = [
    "BlockedScores",
    "ConfigError",
    "DataFileError",
    "DenseScores",
    "ESTIMATORS",
    "Environment",
    "Experiment",
    "LateStageRanker",
    "Rollout",
    "TrainState",
    "TwoTowerScorer",
    "apply_overrides",
    "build_experiment",
    "collect_rollout",
    "default_config",
    "get_estimator",
    "make_kuairec_environment",
    "make_reward_matrix_environment",
    "make_synthetic_environment",
    "sample_candidates",
    "top_candidates",
    "train_and_evaluate",
    "validate_config",
]
