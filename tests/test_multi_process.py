"""Several processes on this machine: `train.py` x 2 with `jax.distributed`
on localhost (gloo CPU collectives), 2 CPU devices each.

- 2 processes x 2 devices train like 1 process x 4 devices (same mesh);
- a SIGKILL of one process makes the other exit non-zero with a clear line
  within a bounded time, and restarting both resumes exactly;
- a checkpoint written on 4 devices restores on 1 device and on 2 processes;
- a process count that does not match the coordinator's is refused.

The kill and the restores are marked slow (about 5 minutes on 2 cores):
`python -m pytest -q -m slow tests/test_multi_process.py`.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS = 120
OVERRIDES = {"num_steps": STEPS, "eval_every": 40, "log_every": 40, "checkpoint_every": 40,
             "num_seeds": 2, "env.num_items": 301, "env.num_contexts": 200,
             "eval_contexts": 256, "eval_batch_size": 128, "batch_size": 64}
# A survivor must be gone within this (heartbeat 30 s + shutdown + start-up).
KILL_BOUND_S = 120
TIMING_FIELDS = ("steps_per_sec",)


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def _command(workdir, *extra, **overrides):
  values = {**OVERRIDES, **overrides}
  return [sys.executable, os.path.join(REPO, "train.py"), "--config=configs/quickstart.py",
          f"--workdir={workdir}", "--noplot",
          *[f"--config.{k}={v}" for k, v in values.items()], *extra]


def _env():
  env = {k: v for k, v in os.environ.items() if not k.startswith(("XLA_", "JAX_"))}
  env["JAX_PLATFORMS"] = "cpu"
  return env


def _start_pair(workdir, port=None, **overrides):
  port = port or _free_port()
  return [subprocess.Popen(
      _command(workdir, "--cpu_devices=2", f"--coordinator_address=localhost:{port}",
               "--num_processes=2", f"--process_id={i}", **overrides),
      cwd=REPO, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
      for i in range(2)]


def _run_pair(workdir, **overrides):
  processes = _start_pair(workdir, **overrides)
  outputs = [p.communicate(timeout=900)[0] for p in processes]
  for p, out in zip(processes, outputs):
    assert p.returncode == 0, out[-3000:]
  return outputs


def _run_single(workdir, devices, **overrides):
  result = subprocess.run(_command(workdir, f"--cpu_devices={devices}", **overrides),
                          cwd=REPO, env=_env(), capture_output=True, text=True, timeout=900)
  assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
  return result.stdout + result.stderr


def _records(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [{k: v for k, v in json.loads(line).items() if k not in TIMING_FIELDS} for line in f]


def _assert_close_records(got, want, rtol=1e-6):
  assert [r["step"] for r in got] == [r["step"] for r in want]
  for a, b in zip(got, want):
    for name in ("policy_value", "expected_value", "recall"):
      for x, y in zip(a[name], b[name]):
        assert abs(x - y) <= rtol * max(1.0, abs(y)), (a["step"], name, x, y)
    assert a["diverged"] == b["diverged"]


@pytest.fixture(scope="module")
def four_devices(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("one_process_four_devices"))
  _run_single(workdir, 4)
  return workdir


def test_two_processes_train_like_one_process_with_four_devices(tmp_path, four_devices):
  outputs = _run_pair(str(tmp_path))
  assert "mesh 2 seeds x 2 items (4 cpu devices on 2 processes)" in outputs[0]
  # Only process 0 prints progress and writes the records.
  assert "eval step" in outputs[0] and "eval step" not in outputs[1]
  _assert_close_records(_records(str(tmp_path)), _records(four_devices))


@pytest.mark.slow
def test_sigkill_of_one_process_ends_the_other_then_both_resume(tmp_path, four_devices):
  workdir = str(tmp_path)
  processes = _start_pair(workdir)
  # Kill process 1 once training is under way (process 0 printed a step).
  for line in processes[0].stdout:
    if line.startswith("step "):
      break
  processes[1].send_signal(signal.SIGKILL)
  start = time.monotonic()
  output = processes[0].communicate(timeout=KILL_BOUND_S)[0]
  elapsed = time.monotonic() - start
  processes[1].communicate()
  assert processes[0].returncode not in (0, None), output[-2000:]
  assert elapsed < KILL_BOUND_S
  assert "another process died" in output or "unhealthy" in output, output[-2000:]
  _run_pair(workdir)  # restart both: resumes from the last checkpoint
  _assert_close_records(_records(workdir), _records(four_devices))


@pytest.mark.slow
def test_checkpoint_of_four_devices_restores_on_one_device_and_two_processes(
    tmp_path, four_devices):
  for name, run in (("one_device", lambda w: _run_single(w, 1, num_steps=STEPS + 40)),
                    ("two_processes", lambda w: _run_pair(w, num_steps=STEPS + 40))):
    workdir = str(tmp_path / name)
    subprocess.run(["cp", "-r", four_devices, workdir], check=True)
    output = run(workdir)
    output = output if isinstance(output, str) else output[0]
    assert f"Resumed from step {STEPS}" in output, output[-2000:]
    records = _records(workdir)
    assert records[-1]["step"] == STEPS + 40
    _assert_close_records(records[:-1], _records(four_devices))


@pytest.mark.slow  # About 40 s, most of it the coordinator's handshake.
def test_process_count_mismatch_is_refused(tmp_path):
  port = _free_port()
  coordinator = subprocess.Popen(
      _command(str(tmp_path), "--cpu_devices=2", f"--coordinator_address=localhost:{port}",
               "--num_processes=2", "--process_id=0"),
      cwd=REPO, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
  other = subprocess.run(
      _command(str(tmp_path), "--cpu_devices=2", f"--coordinator_address=localhost:{port}",
               "--num_processes=3", "--process_id=1"),
      cwd=REPO, env=_env(), capture_output=True, text=True, timeout=300)
  coordinator.kill()
  coordinator.communicate()
  assert other.returncode == 2, (other.stdout + other.stderr)[-2000:]
  assert "--num_processes=3" in other.stderr and "runs 2 processes" in other.stderr
