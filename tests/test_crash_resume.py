"""Killed runs resume exactly; SIGTERM checkpoints and exits cleanly.

`train.py` runs as a subprocess and is killed with SIGKILL at random moments
(during compilation, a chunk, an evaluation or an asynchronous checkpoint
write), then restarted with the same command until it finishes. The final
training state and metrics.jsonl must equal those of an uninterrupted run.
"""

import importlib.util
import os
import random
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from cpg_jax.training import checkpointing
from cpg_jax.training import config as config_lib
from cpg_jax.training import pipeline as pipeline_lib
from cpg_jax.training import spec as spec_lib
from cpg_jax.training import loop
from cpg_jax.training import state as state_lib
from tests.helpers import metrics_records

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OVERRIDES = {
    "env.num_contexts": 40, "env.num_items": 50, "num_candidates": 5, "batch_size": 16,
    "num_steps": 60_000, "eval_every": 2000, "log_every": 1000, "checkpoint_every": 3000,
    "eval_contexts": 64, "eval_batch_size": 32, "num_seeds": 2, "keep_checkpoints": 2,
}


def _config():
  spec = importlib.util.spec_from_file_location(
      "quickstart", os.path.join(REPO, "configs", "quickstart.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return config_lib.apply_overrides(module.get_config(), OVERRIDES)


def _command(workdir):
  return ([sys.executable, os.path.join(REPO, "train.py"), "--config=configs/quickstart.py",
           f"--workdir={workdir}", "--noplot"]
          + [f"--config.{k}={v}" for k, v in OVERRIDES.items()])


def _start(workdir):
  return subprocess.Popen(_command(workdir), cwd=REPO, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True,
                          env={**os.environ, "PYTHONPATH": REPO})


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("reference"))
  states = loop.train_and_evaluate(_config(), workdir, log=lambda _: None)
  return states, metrics_records(workdir)


def _final_state(workdir):
  config = _config()
  pipeline, env = pipeline_lib.from_config(config)
  abstract = jax.eval_shape(lambda: state_lib.init_states(pipeline, spec_lib.from_config(config).seeds))
  ckpt = checkpointing.Checkpointer(workdir, keep=2)
  step = ckpt.latest_step()
  state, _ = ckpt.restore(step, checkpointing.abstract_like(abstract))
  ckpt.close()
  return step, state


def _strip_timing(records):
  return [{k: v for k, v in r.items() if k != "steps_per_sec"} for r in records]


def _kill_and_resume(workdir, kills, rng):
  for _ in range(kills):
    process = _start(workdir)
    # Start-up and compilation take about 8 s here, training about 6 s more.
    time.sleep(rng.uniform(4.0, 16.0))
    process.send_signal(signal.SIGKILL)
    process.communicate()
  process = _start(workdir)
  output, _ = process.communicate(timeout=600)
  assert process.returncode == 0, output[-3000:]
  return output


def _assert_matches_reference(workdir, reference):
  states, records = reference
  step, state = _final_state(workdir)
  assert step == OVERRIDES["num_steps"]
  for a, b in zip(jax.tree.leaves(state), jax.tree.leaves(states), strict=True):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  got = metrics_records(workdir)
  assert [r["step"] for r in got] == list(range(0, OVERRIDES["num_steps"] + 1, 2000))
  assert _strip_timing(got) == _strip_timing(records)


def test_sigkill_once_then_resume(tmp_path, reference):
  _kill_and_resume(str(tmp_path), kills=1, rng=random.Random(0))
  _assert_matches_reference(str(tmp_path), reference)


@pytest.mark.slow
@pytest.mark.parametrize("seed", [1, 2])
def test_sigkill_repeatedly_then_resume(tmp_path, reference, seed):
  _kill_and_resume(str(tmp_path), kills=5, rng=random.Random(seed))
  _assert_matches_reference(str(tmp_path), reference)


def test_sigterm_saves_and_exits_cleanly(tmp_path, reference):
  workdir = str(tmp_path)
  process = _start(workdir)
  # Wait until training is under way (the first progress line), then stop it.
  for line in process.stdout:
    if line.startswith("step "):
      break
  process.send_signal(signal.SIGTERM)
  output, _ = process.communicate(timeout=300)
  assert process.returncode == 0, output[-3000:]
  assert "SIGTERM: saved a checkpoint" in output, output[-3000:]
  step, _ = _final_state(workdir)
  assert 0 < step < OVERRIDES["num_steps"]
  # The stopped run resumes to the same end as an uninterrupted one.
  _kill_and_resume(workdir, kills=0, rng=random.Random(0))
  _assert_matches_reference(workdir, reference)


def _small(**overrides):
  return config_lib.apply_overrides(_config(), {
      "num_steps": 90, "eval_every": 30, "checkpoint_every": 30, "log_every": 30,
      "keep_checkpoints": 3, **overrides})


@pytest.mark.parametrize("damage", ["truncate", "flip_bytes"])
def test_damaged_latest_checkpoint_falls_back(tmp_path, damage):
  quiet = lambda _: None
  full_dir, workdir = str(tmp_path / "full"), str(tmp_path / "damaged")
  full = loop.train_and_evaluate(_small(num_steps=120), full_dir, log=quiet)
  loop.train_and_evaluate(_small(), workdir, log=quiet)  # Checkpoints 30, 60, 90.
  latest = os.path.join(workdir, "checkpoints", "90")
  data = [os.path.join(d, f) for d, _, fs in os.walk(latest) for f in fs
          if os.sep + "d" + os.sep in os.path.join(d, f)]
  biggest = max(data, key=os.path.getsize)
  with open(biggest, "r+b") as f:
    if damage == "truncate":
      f.truncate(os.path.getsize(biggest) // 2)
    else:  # Same size, different bytes: only the digest can tell.
      f.seek(os.path.getsize(biggest) // 2)
      chunk = f.read(64)
      f.seek(os.path.getsize(biggest) // 2)
      f.write(bytes(b ^ 0xFF for b in chunk))
  messages = []
  resumed = loop.train_and_evaluate(_small(num_steps=120), workdir, log=messages.append)
  warning = next(m for m in messages if m.startswith("WARNING: checkpoint at step 90"))
  assert "damaged" in warning and "damaged_checkpoints" in warning
  assert any("Resumed" in m and "step 60" in m for m in messages)
  for a, b in zip(jax.tree.leaves(resumed), jax.tree.leaves(full), strict=True):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  assert _strip_timing(metrics_records(workdir)) == _strip_timing(
      metrics_records(full_dir))
