"""Killed and interrupted runs resume exactly; SIGTERM and Ctrl-C save and exit.

`train.py` runs as a subprocess and is killed with SIGKILL at random moments
(during compilation, a chunk, an evaluation or an asynchronous checkpoint
write), then restarted with the same command until it finishes. The final
training state and metrics.jsonl must equal those of an uninterrupted run.
Ctrl-C is a real SIGINT sent at a moment drawn from a seeded RNG: during
start-up or compilation (a clean exit, nothing saved), mid-training (a
checkpoint at the end of the chunk, exit 0, and the printed command resumes),
and twice (an abort at once); never a traceback or a crash.
"""

import importlib.util
import os
import random
import re
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


def _start(workdir, extra=(), compilation_cache=True):
  """train.py in a subprocess; without the session's compilation cache
  (tests/conftest.py) when `compilation_cache` is False, so that compiling
  takes its real time."""
  env = {**os.environ, "PYTHONPATH": REPO}
  if not compilation_cache:
    env.pop("JAX_COMPILATION_CACHE_DIR", None)
  return subprocess.Popen(_command(workdir) + list(extra), cwd=REPO, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, env=env)


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


@pytest.mark.slow
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


@pytest.mark.parametrize("damage", ["truncate", pytest.param("flip_bytes", marks=pytest.mark.slow)])
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


# Ctrl-C: real SIGINTs sent to train.py at moments drawn from a seeded RNG.

CRASH_MARKS = ("Traceback", "Fatal Python error", "Segmentation fault", "KeyboardInterrupt")


def _start_and_wait_for(workdir, marker, extra=(), compilation_cache=True):
  """Starts train.py (with the arguments `extra` added) and reads its output
  up to the first line that starts with `marker`; returns (process, the lines
  read)."""
  process = _start(workdir, extra, compilation_cache)
  lines = []
  for line in process.stdout:
    lines.append(line)
    if line.startswith(marker):
      return process, lines
  raise AssertionError(f"train.py ended before a line starting {marker!r}:\n{''.join(lines)}")


def _interrupt(process, lines, delay, count=1):
  """Sleeps `delay` s, sends SIGINT `count` times back to back, and returns
  (exit code, the whole output)."""
  time.sleep(delay)
  for _ in range(count):
    process.send_signal(signal.SIGINT)
  rest, _ = process.communicate(timeout=300)
  output = "".join(lines) + rest
  for mark in CRASH_MARKS:
    assert mark not in output, output[-3000:]
  return process.returncode, output


def _checkpoints(workdir):
  directory = os.path.join(workdir, "checkpoints")
  return sorted(int(n) for n in os.listdir(directory) if n.isdigit()) if os.path.isdir(
      directory) else []


def _stop_during_compilation(workdir, rng):
  """A Ctrl-C while the programs compile: exit 130, nothing saved."""
  # "Training ..." is printed just before the programs are compiled (seconds;
  # a cached compilation could end before the interrupt comes).
  process, lines = _start_and_wait_for(workdir, "Training ", compilation_cache=False)
  checkpoints = _checkpoints(workdir)
  code, output = _interrupt(process, lines, rng.uniform(0.0, 0.3))
  assert "Compiled in" not in output, "the interrupt came after compilation"
  assert code == 128 + signal.SIGINT, output[-3000:]
  assert "before training started: stopped; nothing was saved" in output
  assert "Start it again with:" in output
  assert _checkpoints(workdir) == checkpoints


def _stop_mid_training(workdir, rng, first_line):
  """A Ctrl-C during training: the chunk ends, a checkpoint is saved there,
  exit 0; returns the printed resume command."""
  process, lines = _start_and_wait_for(workdir, first_line)
  code, output = _interrupt(process, lines, rng.uniform(0.0, 0.1))
  assert code == 0, output[-3000:]
  assert "then saving a checkpoint and exiting" in output
  match = re.search(r"Ctrl-C \(SIGINT\): saved a checkpoint at step (\d+); exiting\. "
                    r"Resume with:\n  (.+)\n", output)
  assert match, output[-3000:]
  step, _ = _final_state(workdir)
  assert step == int(match.group(1)) and step < OVERRIDES["num_steps"]
  return match.group(2)


# Compatible changes that make the chunk from the resume step to 30,000 one
# long chunk (seconds), so that the second Ctrl-C comes while it runs: a
# signal sent while the same one is still pending is merged with it.
LONG_CHUNKS = ["--config.log_every=30000", "--config.eval_every=30000",
               "--config.checkpoint_every=30000"]


def _abort_with_two_interrupts(workdir, rng):
  """Ctrl-C, and again once train.py says it is finishing the chunk: exit
  130 at once, saying what is lost; nothing of this run is saved."""
  before = _checkpoints(workdir)
  process, lines = _start_and_wait_for(workdir, "Compiled in", LONG_CHUNKS)
  time.sleep(rng.uniform(0.0, 0.5))
  process.send_signal(signal.SIGINT)
  for line in process.stdout:
    lines.append(line)
    if "then saving a checkpoint and exiting" in line:
      break
  code, output = _interrupt(process, lines, 0.0)
  assert code == 128 + signal.SIGINT, output[-3000:]
  assert ("Second Ctrl-C: stopped at once without saving; lost: the steps after step "
          f"{before[-1]}, the last checkpoint") in output, output[-3000:]
  assert "Resume with:" in output
  assert _checkpoints(workdir) == before


def _resume_with(command, workdir, reference):
  """The printed command, run by a shell as a user would paste it, finishes
  the run exactly as an uninterrupted one."""
  resumed = subprocess.run(command, shell=True, cwd=REPO, capture_output=True, text=True,
                           timeout=600, env={**os.environ, "PYTHONPATH": REPO})
  assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
  assert re.search(r"^Resumed from step \d+ ", resumed.stdout, re.MULTILINE), resumed.stdout
  _assert_matches_reference(workdir, reference)


def test_ctrl_c_during_compilation_mid_training_and_twice_then_exact_resume(
    tmp_path, reference):
  """In one workdir: Ctrl-C while compiling (nothing saved), Ctrl-C at step
  1,000 (before the first periodic checkpoint, 3,000: the stop saves one),
  two Ctrl-Cs after resuming (abort), then the printed command resumes."""
  rng = random.Random(0)
  workdir = str(tmp_path)
  _stop_during_compilation(workdir, rng)
  command = _stop_mid_training(workdir, rng, "step 1000/")
  _abort_with_two_interrupts(workdir, rng)
  _resume_with(command, workdir, reference)


@pytest.mark.slow
@pytest.mark.parametrize("seed", [1, 2])
def test_ctrl_c_at_random_moments_then_exact_resume(tmp_path, reference, seed):
  rng = random.Random(seed)
  workdir = str(tmp_path)
  _stop_during_compilation(workdir, rng)
  command = _stop_mid_training(workdir, rng, f"step {rng.choice([1, 2, 4]) * 1000}/")
  _stop_during_compilation(workdir, rng)  # After a resume: the checkpoint stays.
  _abort_with_two_interrupts(workdir, rng)
  _resume_with(command, workdir, reference)


def test_ctrl_c_during_start_up_exits_cleanly(tmp_path):
  """At a random moment after the config line: JAX's import, the data, the
  pipeline (before train.py's first statement runs, the interpreter's own
  start-up is Python's to interrupt)."""
  rng = random.Random(3)
  process, lines = _start_and_wait_for(str(tmp_path), "Config: ")
  code, output = _interrupt(process, lines, rng.uniform(0.0, 0.5))
  assert code == 128 + signal.SIGINT, output[-3000:]
  assert "before training started: stopped; nothing was saved" in output, output[-3000:]
  assert "Compiled in" not in output
