"""Environments: the fixed world an experiment runs in (docs/method.md).

- `SyntheticEnvironment` / `make_synthetic_environment`: the published
  synthetic generator, scalable to millions of items.
- `RewardMatrixEnvironment` / `make_reward_matrix_environment`: any dense
  user x item reward matrix; `make_kuairec_environment` and
  `load_kuairec_matrix` for KuaiRec's small_matrix.csv, `load_dense_matrix`
  for .npy / .csv matrices.
- `make_movielens_environment` / `load_movielens_matrix`: MovieLens-100K
  (installed by `pip install --no-deps recbole==1.2.1`, or the user's u.data /
  .inter file), its ratings completed into a dense matrix by a low-rank fit.
- `kuairec_like`: writes a generated file in KuaiRec's format and shape
  (`python -m cpg_jax.environments.kuairec_like --out PATH`), to run
  experiment (d) end to end without the real data.
"""

from cpg_jax.environments.base import Environment
from cpg_jax.environments.errors import DataFileError
from cpg_jax.environments.movielens import load_movielens_matrix
from cpg_jax.environments.movielens import make_movielens_environment
from cpg_jax.environments.movielens import MovieLensNotInstalledError
from cpg_jax.environments.reward_matrix import load_dense_matrix
from cpg_jax.environments.reward_matrix import load_kuairec_matrix
from cpg_jax.environments.reward_matrix import make_kuairec_environment
from cpg_jax.environments.reward_matrix import make_reward_matrix_environment
from cpg_jax.environments.reward_matrix import RewardMatrixEnvironment
from cpg_jax.environments.synthetic import draw_components
from cpg_jax.environments.synthetic import make_synthetic_environment
from cpg_jax.environments.synthetic import SyntheticDraws
from cpg_jax.environments.synthetic import SyntheticEnvironment

__all__ = [
    'DataFileError',
    'Environment',
    'MovieLensNotInstalledError',
    'RewardMatrixEnvironment',
    'SyntheticDraws',
    'SyntheticEnvironment',
    'draw_components',
    'load_dense_matrix',
    'load_kuairec_matrix',
    'load_movielens_matrix',
    'make_kuairec_environment',
    'make_movielens_environment',
    'make_reward_matrix_environment',
    'make_synthetic_environment',
]
