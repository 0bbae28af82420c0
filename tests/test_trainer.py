"""The training loop: resume, seed batching, divergence, configs, CLI."""

import dataclasses
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cpg_jax.training import checkpointing
from cpg_jax.training import config as config_lib
from cpg_jax.training import pipeline as pipeline_lib
from cpg_jax.training import spec as spec_lib
from cpg_jax.training import loop
from cpg_jax.training import step as step_lib
from cpg_jax.training import state as state_lib
from tests.helpers import metrics_records

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TIMING_FIELDS = ("steps_per_sec",)


def tiny_config(**overrides):
  return config_lib.apply_overrides(config_lib.default_config(), {
      "env.num_contexts": 40, "env.num_items": 50, "num_candidates": 5, "batch_size": 16,
      "num_steps": 60, "eval_every": 20, "log_every": 10, "checkpoint_every": 30,
      "eval_contexts": 64, "eval_batch_size": 32, "num_seeds": 2, "learning_rate": 0.05,
      **overrides})


def _quiet(_):
  pass


def _without_timing(records):
  return [{k: v for k, v in r.items() if k not in TIMING_FIELDS} for r in records]


def _assert_same_tree(a, b):
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


class _Interrupt(Exception):
  pass


def _interrupt_at(message_part):
  def log(message):
    if message_part in message:
      raise _Interrupt(message)
  return log


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("full"))
  states = loop.train_and_evaluate(tiny_config(), workdir, log=_quiet)
  return states, metrics_records(workdir)


@pytest.mark.parametrize("interrupt_message", [
    "eval step 40",  # Mid-way through a checkpoint interval (last checkpoint: 30).
    "eval step 20",  # Before the first checkpoint: restarts from scratch.
])
def test_resume_is_bit_identical(tmp_path, uninterrupted, interrupt_message):
  full_states, full_records = uninterrupted
  workdir = str(tmp_path)
  with pytest.raises(_Interrupt):
    loop.train_and_evaluate(tiny_config(), workdir, log=_interrupt_at(interrupt_message))
  # The interrupted run left evaluation records past its last checkpoint.
  assert metrics_records(workdir)[-1]["step"] == int(interrupt_message.split()[-1])
  resumed = loop.train_and_evaluate(tiny_config(), workdir, log=_quiet)
  _assert_same_tree(resumed, full_states)
  assert _without_timing(metrics_records(workdir)) == _without_timing(full_records)


def test_resume_between_chunks_and_extension(tmp_path, uninterrupted):
  """A run stopped at a chunk end, then extended with a larger num_steps."""
  full_states, full_records = uninterrupted
  workdir = str(tmp_path)
  loop.train_and_evaluate(tiny_config(num_steps=30), workdir, log=_quiet)
  # Evaluating and logging more often is a compatible change.
  resumed = loop.train_and_evaluate(
      tiny_config(num_steps=60, log_every=5), workdir, log=_quiet)
  _assert_same_tree(resumed, full_states)
  records = _without_timing(metrics_records(workdir))
  # The shorter first invocation also evaluated at its last step, 30.
  assert [r["step"] for r in records] == [0, 20, 30, 40, 60]
  assert [r for r in records if r["step"] != 30] == _without_timing(full_records)


def test_metrics_record_fields(uninterrupted):
  _, records = uninterrupted
  assert [r["step"] for r in records] == [0, 20, 40, 60]
  for field in ("policy_value", "policy_value_mean", "expected_value_mean", "recall_mean",
                "optimal_value", "optimal_95", "diverged", "steps_per_sec"):
    assert field in records[-1], field
  assert len(records[-1]["policy_value"]) == 2
  assert records[-1]["diverged"] == [None, None]
  assert 0.0 <= records[-1]["recall_mean"] <= 1.0
  # Training on this tiny problem improves the noise-free value.
  assert records[-1]["expected_value_mean"] > records[0]["expected_value_mean"]


def test_vmapped_seeds_match_single_seed_runs():
  config = tiny_config(num_seeds=3)
  pipeline, env = pipeline_lib.from_config(config)
  chunk = step_lib.make_train_chunk(pipeline)
  together, _ = chunk(state_lib.init_states(pipeline, [0, 1, 2]), env, 25)
  for index, seed in enumerate([0, 1, 2]):
    alone, _ = chunk(state_lib.init_states(pipeline, [seed]), env, 25)
    for x, y in zip(jax.tree.leaves(together.params), jax.tree.leaves(alone.params)):
      np.testing.assert_allclose(np.asarray(x)[index], np.asarray(y)[0], rtol=1e-5, atol=1e-5)


def test_injected_non_finite_gradient_freezes_one_seed():
  config = tiny_config(num_seeds=3)
  pipeline, env = pipeline_lib.from_config(config)
  bad_key = np.asarray(state_lib.init_state(pipeline, 1).key_data)
  fail_at = 7

  def poisoned_step(exp, env, state):
    bad = jnp.all(state.key_data == bad_key) & (state.step == fail_at)
    poison = jnp.where(bad, jnp.nan, 1.0)
    clean_loss = exp.loss_fn
    exp = dataclasses.replace(exp, loss_fn=lambda s, r: clean_loss(s, r) * poison)
    return step_lib.train_step(exp, env, state)

  initial = state_lib.init_states(pipeline, [0, 1, 2])
  clean, _ = step_lib.make_train_chunk(pipeline)(initial, env, 20)
  poisoned_chunk = step_lib.make_train_chunk(pipeline, poisoned_step)
  before, _ = poisoned_chunk(initial, env, fail_at)
  poisoned, metrics = poisoned_chunk(initial, env, 20)

  np.testing.assert_array_equal(np.asarray(poisoned.diverged), [False, True, False])
  np.testing.assert_array_equal(np.asarray(poisoned.diverged_step), [-1, fail_at, -1])
  assert not bool(np.asarray(metrics["finite"])[fail_at, 1])
  for p, c, b in zip(jax.tree.leaves(poisoned.params), jax.tree.leaves(clean.params),
                     jax.tree.leaves(before.params)):
    p, c, b = map(np.asarray, (p, c, b))
    # The others go on as in a clean run (another compiled program: round-off).
    np.testing.assert_allclose(p[[0, 2]], c[[0, 2]], rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(p[1], b[1])  # Frozen at its last finite state.
    assert np.abs(p[1] - c[1]).max() > 1e-3  # ... which the clean run moved on from.
    assert np.all(np.isfinite(p))


def test_divergence_is_recorded_in_metrics(tmp_path):
  config = tiny_config(num_steps=20, eval_every=10, checkpoint_every=20)
  pipeline, env = pipeline_lib.from_config(config)
  bad_key = np.asarray(state_lib.init_state(pipeline, 0).key_data)

  def poisoned_step(exp, env, state):
    bad = jnp.all(state.key_data == bad_key) & (state.step == 3)
    clean_loss = exp.loss_fn
    exp = dataclasses.replace(
        exp, loss_fn=lambda s, r: clean_loss(s, r) + jnp.where(bad, jnp.inf, 0.0))
    return step_lib.train_step(exp, env, state)

  loop.train_and_evaluate(config, str(tmp_path), step_fn=poisoned_step, log=_quiet)
  records = metrics_records(str(tmp_path))
  assert records[0]["diverged"] == [None, None]
  assert records[-1]["diverged"] == [3, None]


def test_incompatible_checkpoint_is_refused(tmp_path):
  workdir = str(tmp_path)
  loop.train_and_evaluate(tiny_config(num_steps=10, eval_every=10), workdir, log=_quiet)
  with pytest.raises(checkpointing.IncompatibleCheckpointError) as error:
    loop.train_and_evaluate(
        tiny_config(num_steps=20, estimator="vpg", num_candidates=4), workdir, log=_quiet)
  message = str(error.value)
  assert "estimator: 'ca_pg_swr' -> 'vpg'" in message
  assert "num_candidates: 5 -> 4" in message
  assert "num_steps" not in message


def test_config_differences_respect_schedule():
  old = tiny_config().to_dict()
  assert checkpointing.config_differences(old, tiny_config(num_steps=99).to_dict()) == []
  old = tiny_config(lr_schedule="cosine").to_dict()
  new = tiny_config(lr_schedule="cosine", num_steps=99).to_dict()
  assert checkpointing.config_differences(old, new) == ["num_steps: 60 -> 99"]


def _train_cli(*args, cwd=REPO):
  return subprocess.run(
      [sys.executable, os.path.join(REPO, "train.py"), *args],
      cwd=cwd, capture_output=True, text=True, timeout=300,
      env={**os.environ, "PYTHONPATH": REPO})


def test_cli_overrides_reach_the_loop(tmp_path):
  workdir = str(tmp_path / "run")
  result = _train_cli(
      "--config=configs/quickstart.py", f"--workdir={workdir}",
      "--config.num_steps=20", "--config.eval_every=10", "--config.log_every=10",
      "--config.eval_contexts=50", "--config.num_seeds=2", "--config.batch_size=8",
      "--config.env.num_items=60", "--config.num_candidates=4", "--config.estimator=vpg")
  assert result.returncode == 0, result.stderr[-3000:]
  with open(os.path.join(workdir, "config.json")) as f:
    saved = json.load(f)
  assert (saved["num_steps"], saved["batch_size"], saved["env"]["num_items"],
          saved["num_candidates"], saved["estimator"]) == (20, 8, 60, 4, "vpg")
  records = metrics_records(workdir)
  assert [r["step"] for r in records] == [0, 10, 20]
  assert len(records[-1]["policy_value"]) == 2
  assert "Learning curves:" in result.stdout
  assert os.path.exists(os.path.join(workdir, "curves.png"))


@pytest.mark.parametrize("override, expected", [
    ("--config.no_such_field=1", "no_such_field"),
    ("--config.num_candidates=abc", "num_candidates"),
    ("--config.num_candidates=5000", "num_candidates (K=5000) must be <="),
    ("--config.learning_rate=-1", "config.learning_rate must be"),
    ("--config.estimator=reinforce", "config.estimator must be one of"),
    ("--config.num_outputs=11", "config.num_outputs must be"),
])
def test_cli_bad_override_fails_early(tmp_path, override, expected):
  workdir = tmp_path / "run"
  result = _train_cli("--config=configs/quickstart.py", f"--workdir={workdir}", override)
  assert result.returncode != 0
  assert expected in result.stderr, result.stderr[-2000:]
  assert "Traceback" not in result.stderr
  assert result.returncode == 2
  assert not workdir.exists()  # Refused before anything was written or compiled.


@pytest.mark.parametrize("estimator", ["vpg", "ca_pg_swr"])
def test_blocked_score_path_trains_like_dense(estimator):
  """The item-blocked path (memory O(batch x block)) gives the same training."""
  results = {}
  for path in ("dense", "blocked"):
    config = tiny_config(score_path=path, item_block_size=16, estimator=estimator)
    pipeline, env = pipeline_lib.from_config(config)
    assert pipeline.uses_blocked_scores(config.batch_size) == (path == "blocked")
    chunk = step_lib.make_train_chunk(pipeline)
    results[path], _ = chunk(state_lib.init_states(pipeline, [0, 1]), env, 20)
  for x, y in zip(jax.tree.leaves(results["dense"].params),
                  jax.tree.leaves(results["blocked"].params)):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-4, atol=1e-5)


def test_feature_towers_train():
  """config.tower_layers puts Dense layers on both towers, and they train."""
  config = tiny_config(tower_layers=(16, 8), num_seeds=1)
  pipeline, env = pipeline_lib.from_config(config)
  state = state_lib.init_state(pipeline, 0)
  assert "dense_1" in state.params["item_tower_0"]
  chunk = step_lib.make_train_chunk(pipeline)
  states, metrics = chunk(state_lib.init_states(pipeline, [0]), env, 5)
  assert np.all(np.asarray(metrics["finite"]))


def test_rerunning_a_finished_run_is_accepted(tmp_path):
  """Tuples in the config (tower_layers) survive the JSON round trip."""
  config = tiny_config(num_steps=10, eval_every=10, tower_layers=(8,))
  loop.train_and_evaluate(config, str(tmp_path), log=_quiet)
  messages = []
  loop.train_and_evaluate(config, str(tmp_path), log=messages.append)
  assert any("Resumed" in m and "step 10" in m for m in messages)


# Default: Adagrad (the paper's) and Adam; -m slow every other optimizer.
@pytest.mark.parametrize("optimizer", [
    name if name in ("adagrad", "adam") else pytest.param(name, marks=pytest.mark.slow)
    for name in config_lib.OPTIMIZER_NAMES])
def test_every_optimizer_with_clip_and_schedule_trains(optimizer):
  config = tiny_config(optimizer=optimizer, grad_clip_norm=1.0, lr_schedule="warmup_cosine",
                       warmup_steps=2, num_seeds=1, num_steps=6)
  pipeline, env = pipeline_lib.from_config(config)
  initial = state_lib.init_states(pipeline, [0])
  states, metrics = step_lib.make_train_chunk(pipeline)(initial, env, 4)
  assert np.all(np.asarray(metrics["finite"]))
  moved = [np.abs(np.asarray(a) - np.asarray(b)).max()
           for a, b in zip(jax.tree.leaves(states.params), jax.tree.leaves(initial.params))]
  assert max(moved) > 0


def test_adagrad_uses_pytorch_defaults():
  """Accumulator starts at 0: the first Adagrad step is lr * g / |g| per entry."""
  import optax
  config = tiny_config(learning_rate=0.5)
  opt = pipeline_lib.build_optimizer(spec_lib.from_config(config).optimizer)
  params = {"w": jnp.array([3.0, -0.2])}
  updates, _ = opt.update({"w": jnp.array([2.0, -0.1])}, opt.init(params), params)
  np.testing.assert_allclose(optax.apply_updates(params, updates)["w"], [2.5, 0.3], rtol=1e-6)
