"""Tests for `cpg_jax.config`: defaults validate; impossible values are refused
with a `ConfigError` whose message names the offending field."""

from __future__ import annotations

import math

import ml_collections
import pytest

from cpg_jax.training import config as config_lib
from cpg_jax.training.config import ConfigError


def config_with(**changes) -> ml_collections.ConfigDict:
  """`default_config()` with dotted-field changes ("env__name" is env.name).

  Built from a plain dict so that a value of another type (a float batch size,
  say) can be set: ConfigDict refuses such assignments itself.
  """
  values = config_lib.default_config().to_dict()
  for key, value in changes.items():
    node = values
    parts = key.split("__")
    for part in parts[:-1]:
      node = node[part]
    node[parts[-1]] = value
  return ml_collections.ConfigDict(values)


def test_default_config_is_valid():
  config_lib.validate(config_lib.default_config())


@pytest.mark.parametrize("changes", [
    dict(num_candidates=1000),  # K = N.
    dict(num_candidates=5, num_outputs=5),  # L = K.
    dict(num_candidates=5, num_models=5),  # M = K.
    dict(num_candidates=1, num_outputs=1, num_models=1),
    dict(estimator="vpg"),
    dict(estimator="ca_pg", lsr="uniform"),
    dict(lsr="noisy", lsr_temperature=0.5),
    dict(env__name="kuairec", env__data_path="/data/small_matrix.csv"),
    dict(learning_rate=1e-6),
    dict(optimizer="adam"),
])
def test_valid_edge_cases_pass(changes):
  """Boundary values that are allowed must not be refused."""
  config_lib.validate(config_with(**changes))


BAD_CASES = [
    # (id, changes, field named in the message)
    ("K_gt_N", dict(num_candidates=1001), "num_candidates"),
    ("L_gt_K", dict(num_candidates=5, num_outputs=6), "num_outputs"),
    ("M_gt_K", dict(num_candidates=5, num_models=6), "num_models"),
    ("K_lt_1", dict(num_candidates=-3), "num_candidates"),
    ("K_eq_0", dict(num_candidates=0), "num_candidates"),
    ("L_eq_0", dict(num_outputs=0), "num_outputs"),
    ("M_eq_0", dict(num_models=0), "num_models"),
    ("lr_negative", dict(learning_rate=-0.01), "learning_rate"),
    ("lr_nan", dict(learning_rate=math.nan), "learning_rate"),
    ("lr_zero", dict(learning_rate=0.0), "learning_rate"),
    ("lr_string", dict(learning_rate="fast"), "learning_rate"),
    ("unknown_estimator", dict(estimator="reinforce"), "estimator"),
    ("unknown_lsr", dict(lsr="oracle"), "lsr"),
    ("unknown_optimizer", dict(optimizer="lbfgs"), "optimizer"),
    ("batch_size_float", dict(batch_size=12.5), "batch_size"),
    ("batch_size_string", dict(batch_size="128"), "batch_size"),
    ("batch_size_bool", dict(batch_size=True), "batch_size"),
    ("batch_size_zero", dict(batch_size=0), "batch_size"),
    ("kuairec_no_data", dict(env__name="kuairec"), "env.data_path"),
    ("matrix_no_data", dict(env__name="matrix", env__data_path=""), "env.data_path"),
    ("K_float", dict(num_candidates=10.0), "num_candidates"),
    ("temperature_zero", dict(lsr_temperature=0.0), "lsr_temperature"),
    ("epsilon_gt_1", dict(lsr_epsilon=1.5), "lsr_epsilon"),
    ("alpha_negative", dict(lsr_alpha=-0.1), "lsr_alpha"),
    ("unknown_env", dict(env__name="netflix"), "env.name"),
    ("unknown_weights", dict(position_weights="rbo"), "position_weights"),
    ("unknown_combine", dict(swr_combine="max"), "swr_combine"),
]


@pytest.mark.parametrize("changes,field", [c[1:] for c in BAD_CASES],
                         ids=[c[0] for c in BAD_CASES])
def test_bad_values_raise_config_error_naming_the_field(changes, field):
  with pytest.raises(ConfigError) as info:
    config_lib.validate(config_with(**changes))
  message = str(info.value)
  assert f"config.{field}" in message, message


def test_config_error_is_a_value_error():
  assert issubclass(ConfigError, ValueError)


def test_num_items_argument_overrides_env_size():
  """A reward-matrix catalogue known only after loading bounds K as well."""
  cfg = config_with(env__name="matrix", env__data_path="q.npy", num_candidates=50)
  config_lib.validate(cfg, num_items=50)
  with pytest.raises(ConfigError, match=r"config\.num_candidates.*N=40"):
    config_lib.validate(cfg, num_items=40)


def test_missing_field_is_reported():
  values = config_lib.default_config().to_dict()
  del values["learning_rate"]
  with pytest.raises(ConfigError, match=r"config\.learning_rate"):
    config_lib.validate(ml_collections.ConfigDict(values))
