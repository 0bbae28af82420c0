"""The experiment configuration: defaults and validation.

A config is an `ml_collections.ConfigDict` (configs/*.py return one built on
`default_config()`). It is read in one place: `training.spec.from_config`
validates it (`validate`, once, before anything is compiled; impossible
values are refused with a `ConfigError` naming the field and what is
allowed) and turns it into the typed, frozen `RunSpec` that everything else
takes. No ConfigDict reaches compiled code.

This module imports no JAX (the choice lists of the numerics are imported
when `validate` runs), so config files and the file-reading tools load fast.
"""

from __future__ import annotations

import importlib.util
import math
import numbers
import os

import ml_collections

from cpg_jax.user_errors import UserError

ENVIRONMENT_NAMES = ("synthetic", "kuairec", "matrix", "movielens")
OPTIMIZER_NAMES = ("adagrad", "adam", "sgd", "adamw", "rmsprop")
SCHEDULE_NAMES = ("constant", "cosine", "linear", "warmup_cosine")
POSITION_WEIGHTS = ("mean", "sum", "dcg")


class ConfigError(UserError, ValueError):
  """A configuration value is impossible; the message names the field."""


# Where each config field is documented, as (topic, fields, where). Every
# field also has its default (and a comment where the name does not say it
# all) in `default_config` below. `train.py --help` and README.md list these
# groups; tests/test_config.py checks that they name every field once.
FIELD_DOCS = (
    ("the two-stage system and the estimator",
     ("estimator", "swr_combine", "num_candidates", "num_outputs", "num_models",
      "position_weights"),
     "docs/method.md §1, §4; cpg_jax/numerics/estimators.py"),
    ("the late-stage ranker", ("lsr", "lsr_temperature", "lsr_epsilon", "lsr_alpha"),
     "docs/method.md §3; cpg_jax/numerics/late_stage.py"),
    ("the score model", ("embedding_dim", "tower_layers"),
     "docs/method.md §2; cpg_jax/numerics/model.py"),
    ("how scores are held and sampled",
     ("score_path", "item_block_size", "dense_budget_mb", "noise_generator", "top_k_kernel"),
     "README.md (Large catalogues); docs/performance.md; cpg_jax/numerics/scores.py"),
    ("the synthetic environment",
     ("env.name", "env.seed", "env.num_contexts", "env.num_items", "env.dim",
      "env.reward_scale", "env.shared_key"),
     "docs/method.md §5.1; cpg_jax/environments/synthetic.py"),
    ("reward-matrix environments (kuairec, matrix, movielens)",
     ("env.data_path", "env.noise_std", "env.clip_max"),
     "docs/method.md §5.2; cpg_jax/environments/reward_matrix.py; configs/kuairec.py"),
    ("the MovieLens completion",
     ("env.fit_rank", "env.fit_l2", "env.fit_iterations", "env.fit_holdout",
      "env.cache_dir"),
     "configs/movielens.py; cpg_jax/environments/movielens.py"),
    ("the optimiser", ("optimizer", "learning_rate", "lr_schedule", "warmup_steps",
                       "grad_clip_norm"),
     "docs/method.md §6 (Optimiser and learning rates); cpg_jax/training/pipeline.py"),
    ("the protocol", ("batch_size", "num_steps", "eval_every", "eval_contexts",
                      "eval_batch_size", "num_seeds", "seed"),
     "docs/method.md §6 (Length, seeds and evaluation); cpg_jax/training/evaluation.py"),
    ("running and recording", ("log_every", "checkpoint_every", "keep_checkpoints",
                               "tensorboard"),
     "README.md (Outputs, Guarantees); cpg_jax/training/loop.py; "
     "cpg_jax/training/tensorboard_log.py"),
    ("the device mesh", ("mesh.seeds", "mesh.item_shards"),
     "README.md (GPUs, TPUs, many devices and hosts); cpg_jax/training/mesh.py"),
)


def default_config() -> ml_collections.ConfigDict:
  """Every field with its default: the paper's synthetic setting.

  The fields are documented where they are set: the two-stage system and
  the estimator, the score path, the environment (`config.env.*`), the
  optimiser and the protocol.
  """
  c = ml_collections.ConfigDict()
  _system_defaults(c)
  _score_path_defaults(c)
  c.env = _environment_defaults()
  _training_defaults(c)
  return c


def _system_defaults(c: ml_collections.ConfigDict) -> None:
  """The estimator, the two stages (K, L, M, the LSR) and the score model."""
  c.estimator = "ca_pg_swr"
  c.swr_combine = "sum"  # ca_pg_swr with M > 1: "sum" (default) or "logsumexp".
  # ca_pg_exact: quadrature nodes per context (a multiple of 16) and the model
  # of the count of the items outside the exact head (numerics/inclusion.py).
  c.exact_nodes = 32
  c.exact_tail = "series"
  # Variance reduction (numerics/baselines.py): a baseline subtracted from the
  # rewards ("none", "batch_mean", "leave_one_out"), computed over each group
  # of group_size rollouts of one context (batch_size counts rollouts: a step
  # sees batch_size / group_size contexts) or over the batch at group_size 1;
  # standardize_rewards divides by the pool's standard deviation. The
  # credit-assigned estimators then get the pool's minimum subtracted (r >= 0).
  # Combinations that bias the estimator are refused unless
  # allow_biased_baseline is True.
  c.baseline = "none"
  c.group_size = 1
  c.standardize_rewards = False
  c.allow_biased_baseline = False
  c.num_candidates = 10  # K
  c.num_outputs = 1  # L
  c.num_models = 1  # M
  c.lsr = "optimal"
  c.lsr_temperature = 1.0  # noisy
  c.lsr_epsilon = 0.1  # epsilon_greedy
  c.lsr_alpha = 0.5  # interpolate
  c.position_weights = "mean"
  c.embedding_dim = 10
  c.tower_layers = ()  # Dense layers on both towers, e.g. (64, 10); () = ID embeddings.


def _score_path_defaults(c: ml_collections.ConfigDict) -> None:
  """How the scores of a batch are held and sampled."""
  # Item axis: "dense" builds [M, batch, items] score matrices; "blocked"
  # scans the items in blocks of item_block_size (memory O(batch x block));
  # "auto" goes blocked when a dense matrix would exceed dense_budget_mb.
  c.score_path = "auto"
  c.item_block_size = 65536
  c.dense_budget_mb = 1024
  c.noise_generator = "hash"  # Gumbel noise: "hash" (fast) or "threefry".
  # Blocked top-k: "xla" (lax.scan), "pallas" (fused kernel; interpreted on
  # CPU) or "auto" (kernel on GPU/TPU). The kernel is not yet run on a GPU.
  c.top_k_kernel = "xla"


def _environment_defaults() -> ml_collections.ConfigDict:
  """`config.env`: the fixed world (cpg_jax/environments/)."""
  env = ml_collections.ConfigDict()
  env.name = "synthetic"
  env.seed = 0  # The environment's own seed (fixed across training seeds); movielens: the fit's.
  env.num_contexts = 1000
  env.num_items = 1000
  env.dim = 10
  env.reward_scale = 10.0
  env.shared_key = True  # Reference-compatible draws (docs/method.md).
  env.data_path = ""  # kuairec / matrix; movielens: "" = the file installed by recbole.
  env.noise_std = 0.3  # kuairec / matrix / movielens multiplicative reward noise.
  env.clip_max = 10.0  # kuairec watch_ratio clip.
  # movielens: the rating matrix is completed by biased ALS (environments/movielens.py);
  # these defaults gave the lowest held-out RMSE (0.917) on MovieLens-100K.
  env.fit_rank = 5  # Factor rank; 0 fits the user and item biases only.
  env.fit_l2 = 10.0  # Ridge penalty on every bias and factor.
  env.fit_iterations = 20  # ALS sweeps (users, then items).
  env.fit_holdout = 0.1  # Fraction of ratings held out to report the fit error.
  env.cache_dir = ""  # Completed-matrix cache; "" = $XDG_CACHE_HOME/cpg_jax or ~/.cache/cpg_jax.
  return env


def _training_defaults(c: ml_collections.ConfigDict) -> None:
  """The optimiser and the protocol: steps, evaluation, checkpoints, seeds."""
  c.optimizer = "adagrad"
  c.learning_rate = 0.01
  c.lr_schedule = "constant"
  c.warmup_steps = 0
  c.grad_clip_norm = 0.0  # 0 disables clipping.

  c.batch_size = 128
  c.num_steps = 500_000
  c.eval_every = 1000
  c.eval_contexts = 10_000
  c.eval_batch_size = 1000
  c.log_every = 1000
  c.checkpoint_every = 10_000
  c.keep_checkpoints = 3
  c.num_seeds = 10
  c.seed = 0
  # Devices on the seed axis x devices on the item axis (0: auto; see
  # cpg_jax/training/mesh.py). Auto puts as many devices on seeds as divide
  # num_seeds, the rest on items; one device runs the single-device program.
  c.mesh = ml_collections.ConfigDict()
  c.mesh.seeds = 0
  c.mesh.item_shards = 0
  # TensorBoard event files in <workdir>/tensorboard (training.tensorboard_log).
  c.tensorboard = False


def _check_int(config, field: str, low: int, high: float = math.inf) -> int:
  value = _get(config, field)
  if isinstance(value, bool) or not isinstance(value, numbers.Integral):
    raise ConfigError(f"config.{field} must be an integer, got {value!r}")
  if not low <= value <= high:
    upper = "" if high == math.inf else f" and <= {high}"
    raise ConfigError(f"config.{field} must be >= {low}{upper}, got {value}")
  return int(value)


def _check_float(config, field: str, low: float, high: float = math.inf,
                 low_open: bool = False) -> float:
  value = _get(config, field)
  if isinstance(value, bool) or not isinstance(value, numbers.Real):
    raise ConfigError(f"config.{field} must be a number, got {value!r}")
  value = float(value)
  ok = (value > low if low_open else value >= low) and value <= high
  if not ok or math.isnan(value):
    bound = f"> {low}" if low_open else f">= {low}"
    upper = "" if high == math.inf else f" and <= {high}"
    raise ConfigError(f"config.{field} must be a finite number {bound}{upper}, got {value}")
  return value


def _check_choice(config, field: str, choices) -> str:
  value = _get(config, field)
  if value not in choices:
    raise ConfigError(
        f"config.{field} must be one of {', '.join(choices)}; got {value!r}")
  return value


def _get(config, field: str):
  node = config
  for part in field.split("."):
    if part not in node:
      raise ConfigError(f"config.{field} is missing")
    node = node[part]
  return node


def validate(config: ml_collections.ConfigDict, num_items: int | None = None) -> None:
  """Raises `ConfigError` for the first impossible value found.

  Args:
    config: the experiment config.
    num_items: the catalogue size when it is known only after loading data
      (reward-matrix environments; without it K <= N is checked later, by
      `RunSpec.check_catalogue`); defaults to `config.env.num_items` for the
      synthetic environment.
  """
  _validate_choices(config)
  _validate_environment(config)
  _validate_system(config, num_items)
  _validate_training(config)


def _validate_choices(config: ml_collections.ConfigDict) -> None:
  # The registries live with the numerics (JAX); imported here, when needed.
  from cpg_jax.numerics import baselines, estimators, late_stage, scores  # pylint: disable=g-import-not-at-top
  from cpg_jax.training import spec  # pylint: disable=g-import-not-at-top
  _check_choice(config, "estimator", tuple(estimators.ESTIMATORS))
  _check_choice(config, "swr_combine", ("sum", "logsumexp"))
  _check_choice(config, "exact_tail", estimators.EXACT_TAILS)
  _check_choice(config, "baseline", baselines.BASELINES)
  _check_choice(config, "lsr", late_stage.LSR_NAMES)
  _check_choice(config, "position_weights", POSITION_WEIGHTS)
  _check_choice(config, "env.name", ENVIRONMENT_NAMES)
  _check_choice(config, "optimizer", OPTIMIZER_NAMES)
  _check_choice(config, "score_path", scores.SCORE_PATHS)
  _check_choice(config, "noise_generator", scores.NOISE_GENERATORS)
  _check_choice(config, "top_k_kernel", spec.TOP_K_KERNELS)
  _check_choice(config, "lr_schedule", SCHEDULE_NAMES)


def _validate_environment(config: ml_collections.ConfigDict) -> None:
  if config.env.name == "synthetic":
    _check_int(config, "env.num_contexts", 1)
    _check_int(config, "env.num_items", 1)
    _check_int(config, "env.dim", 1)
    _check_float(config, "env.reward_scale", 0.0, low_open=True)
  elif config.env.name == "movielens":
    for field in ("env.data_path", "env.cache_dir"):
      if not isinstance(_get(config, field), str):
        raise ConfigError(f"config.{field} must be a string (a path, or \"\" for the "
                          f"default), got {_get(config, field)!r}")
    _check_float(config, "env.noise_std", 0.0)
    _check_int(config, "env.fit_rank", 0)
    _check_float(config, "env.fit_l2", 0.0, low_open=True)
    _check_int(config, "env.fit_iterations", 1)
    _check_float(config, "env.fit_holdout", 0.0, 0.5, low_open=True)
    _check_int(config, "env.seed", 0)
  else:
    if not config.env.data_path:
      raise ConfigError(
          f"config.env.data_path is required for env.name={config.env.name!r} "
          "(the path of the reward matrix file; nothing is downloaded)")
    _check_float(config, "env.noise_std", 0.0)
    _check_float(config, "env.clip_max", 0.0, low_open=True)


def _validate_system(config: ml_collections.ConfigDict, num_items: int | None) -> None:
  if num_items is None and config.env.name == "synthetic":
    num_items = config.env.num_items

  k = _check_int(config, "num_candidates", 1)
  if num_items is not None and k > num_items:
    raise ConfigError(
        f"config.num_candidates (K={k}) must be <= the number of items (N={num_items})")
  _check_int(config, "num_outputs", 1, k)
  _check_int(config, "num_models", 1, k)
  _validate_single_model_estimators(config)
  _check_float(config, "lsr_temperature", 0.0, low_open=True)
  _check_float(config, "lsr_epsilon", 0.0, 1.0)
  _check_float(config, "lsr_alpha", 0.0, 1.0)
  _check_int(config, "embedding_dim", 1)
  layers = _get(config, "tower_layers")
  if not isinstance(layers, (tuple, list)) or not all(
      isinstance(w, int) and not isinstance(w, bool) and w >= 1 for w in layers):
    raise ConfigError(
        f"config.tower_layers must be a tuple of positive layer widths, e.g. (64, 10); "
        f"got {layers!r}")
  _check_int(config, "item_block_size", 1)
  _check_float(config, "dense_budget_mb", 0.0)
  if config.noise_generator == "threefry" and config.score_path == "blocked":
    raise ConfigError("config.noise_generator='threefry' needs config.score_path='dense' "
                      "or 'auto' (the blocked path draws hashed noise per block)")


def _validate_single_model_estimators(config: ml_collections.ConfigDict) -> None:
  """ca_pg_exact and ca_pg_ss: one model, an unsharded catalogue, valid nodes."""
  from cpg_jax.numerics import estimators  # pylint: disable=g-import-not-at-top
  name = config.estimator
  nodes = _check_int(config, "exact_nodes", estimators.EXACT_NODE_MULTIPLE)
  if nodes % estimators.EXACT_NODE_MULTIPLE:
    raise ConfigError(f"config.exact_nodes must be a multiple of "
                      f"{estimators.EXACT_NODE_MULTIPLE} (two Gauss-Legendre panels of 8 "
                      f"per side), got {nodes}")
  if name not in estimators.SINGLE_MODEL_ESTIMATORS:
    return
  if config.num_models != 1:
    raise ConfigError(
        f"config.estimator={name!r} is defined for one model only (its inclusion "
        f"probability is that of a single Plackett-Luce ranking); got config.num_models="
        f"{config.num_models}. Use num_models=1, or ca_pg / ca_pg_swr for M > 1")
  if _get(config, "mesh.item_shards") > 1:
    raise ConfigError(
        f"config.estimator={name!r} does not support an item-sharded catalogue "
        f"(config.mesh.item_shards={_get(config, 'mesh.item_shards')}); use mesh.item_shards=1")


def _validate_training(config: ml_collections.ConfigDict) -> None:
  _check_float(config, "learning_rate", 0.0, low_open=True)
  _check_int(config, "warmup_steps", 0)
  _check_float(config, "grad_clip_norm", 0.0)
  _check_int(config, "batch_size", 1)
  _check_int(config, "num_steps", 1)
  _check_int(config, "eval_every", 1)
  _check_int(config, "eval_contexts", 1)
  _check_int(config, "eval_batch_size", 1)
  _check_int(config, "log_every", 1)
  _check_int(config, "checkpoint_every", 1)
  _check_int(config, "keep_checkpoints", 1)
  _check_int(config, "num_seeds", 1)
  _check_int(config, "seed", 0)
  _check_int(config, "mesh.seeds", 0)
  _check_int(config, "mesh.item_shards", 0)
  if not isinstance(_get(config, "tensorboard"), bool):
    raise ConfigError(f"config.tensorboard must be True or False, got "
                      f"{_get(config, 'tensorboard')!r}")
  _validate_variance_reduction(config)


def _check_bool(config: ml_collections.ConfigDict, field: str) -> bool:
  value = _get(config, field)
  if not isinstance(value, bool):
    raise ConfigError(f"config.{field} must be True or False, got {value!r}")
  return value


def _validate_variance_reduction(config: ml_collections.ConfigDict) -> None:
  """Group sizes that fit the batch; baselines that keep the estimator unbiased
  (or an explicit `allow_biased_baseline`)."""
  from cpg_jax.numerics import baselines  # pylint: disable=g-import-not-at-top
  group = _check_int(config, "group_size", 1)
  standardize = _check_bool(config, "standardize_rewards")
  allow = _check_bool(config, "allow_biased_baseline")
  if config.batch_size % group:
    raise ConfigError(f"config.group_size={group} must divide config.batch_size="
                      f"{config.batch_size} (batch_size counts rollouts)")
  pool = group if group > 1 else config.batch_size
  if config.baseline == "leave_one_out" and pool < 2:
    raise ConfigError("config.baseline='leave_one_out' needs at least 2 rollouts per pool "
                      "(config.group_size >= 2, or config.batch_size >= 2 at group_size 1)")
  reason = baselines.bias_reason(config.estimator, config.baseline, standardize)
  if reason is not None and not allow:
    raise ConfigError(
        f"config.baseline={config.baseline!r} (standardize_rewards={standardize}) biases "
        f"config.estimator={config.estimator!r}: {reason}. Set "
        f"config.allow_biased_baseline=True to use it anyway")


def load_config_file(arg: str, error: type[Exception] = ConfigError
                     ) -> ml_collections.ConfigDict:
  """The ConfigDict of a config file argument `FILE[:ARG]` (its `get_config`),
  as `--config` reads it. Raises `error` when FILE does not exist."""
  path, _, config_arg = arg.partition(":")
  module_spec = importlib.util.spec_from_file_location("_cpg_jax_config_file", path)
  if module_spec is None or not os.path.isfile(path):
    raise error(f"--config={arg}: no such config file")
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  return module.get_config(config_arg) if config_arg else module.get_config()


def parse_config_arg(arg: str, defaults: dict[str, str], config_file: str) -> dict[str, str]:
  """Parses the `name=value,name=value` argument of `--config=FILE:ARG`.

  Args:
    arg: the text after the colon ("" when absent).
    defaults: every allowed name with its default value.
    config_file: the config file's name, for error messages.
  """
  values = dict(defaults)
  for part in filter(None, (arg or "").split(",")):
    name, _, value = part.partition("=")
    if name not in values:
      raise ConfigError(
          f"{config_file}: unknown argument {name!r}; allowed: {', '.join(values)}")
    values[name] = value
  return values


def apply_overrides(config: ml_collections.ConfigDict,
                    overrides: dict[str, object]) -> ml_collections.ConfigDict:
  """Sets dotted fields in place (`{"env.num_items": 50}`) and returns `config`.

  The programmatic twin of `--config.env.num_items=50`.
  """
  for name, value in overrides.items():
    node = config
    *parents, leaf = name.split(".")
    for part in parents:
      node = node[part]
    node[leaf] = value
  return config


def flatten_config(config, prefix: str = "") -> dict[str, object]:
  """{"env": {"name": "x"}} -> {"env.name": "x"} (dicts or ConfigDicts)."""
  flat = {}
  for name, value in config.items():
    path = f"{prefix}{name}"
    if isinstance(value, (dict, ml_collections.ConfigDict)):
      flat.update(flatten_config(value, path + "."))
    else:
      flat[path] = value
  return flat
