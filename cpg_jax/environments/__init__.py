"""Environments: the fixed world an experiment runs in (method.md §5).

- `SyntheticEnvironment` / `make_synthetic_environment`: the published
  synthetic generator, scalable to millions of items.
- `RewardMatrixEnvironment` / `make_reward_matrix_environment`: any dense
  user x item reward matrix; `make_kuairec_environment` and
  `load_kuairec_matrix` for KuaiRec's small_matrix.csv, `load_dense_matrix`
  for .npy / .csv matrices.
- `kuairec_like`: writes a generated file in KuaiRec's format and shape
  (`python -m cpg_jax.environments.kuairec_like --out PATH`), to run
  experiment (d) end to end without the real data.
"""

from cpg_jax.environments.base import Environment
from cpg_jax.environments.errors import DataFileError
from cpg_jax.environments.reward_matrix import load_dense_matrix
from cpg_jax.environments.reward_matrix import load_kuairec_matrix
from cpg_jax.environments.reward_matrix import make_kuairec_environment
from cpg_jax.environments.reward_matrix import make_reward_matrix_environment
from cpg_jax.environments.reward_matrix import RewardMatrixEnvironment
from cpg_jax.environments.synthetic import make_synthetic_environment
from cpg_jax.environments.synthetic import SyntheticEnvironment

__all__ = [
    'DataFileError',
    'Environment',
    'RewardMatrixEnvironment',
    'SyntheticEnvironment',
    'load_dense_matrix',
    'load_kuairec_matrix',
    'make_kuairec_environment',
    'make_reward_matrix_environment',
    'make_synthetic_environment',
]
