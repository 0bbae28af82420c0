"""Times README.md's two commands as a new user runs them: a fresh clone, a new venv.

  python benchmarks/first_hour.py                  # both commands
  python benchmarks/first_hour.py --commands=1     # install + quickstart only
  python benchmarks/first_hour.py --json=first_hour.json

The two commands are read from README.md's "Two commands" section (the first
two bash blocks), so what is timed is what the README says. Each runs in its
own fresh `git clone` of this repository's committed HEAD (under --work, a
temporary directory by default), split at its last `&&` into the install
part (`python3 -m venv .venv && . .venv/bin/activate && pip install ...`) and
the run part (`python train.py ...` or `python -m pytest -q`), each timed on
its own. pip uses its usual configuration and cache, so say whether the cache
was warm when you quote the install time.

Printed: the machine (CPU cores and model, the 1-minute load average sampled
every 2 s during each part: mean and maximum), the two times per command, the
exit codes, the ETA of the first progress line beside the time the rest of
training then took, and every output line a new user could take for an error
(a traceback, `error`, `warning`, `fatal`, an absl-formatted log line; pip's
own warnings about this machine's pip configuration count too). The README
and the config docstrings quote these numbers.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import threading
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Lines a new user could read as something having gone wrong.
ALARMING = re.compile(r"traceback|error|warning|fatal|segmentation|^[IWEF]\d{4} \d\d:\d\d",
                      re.IGNORECASE)


def readme_commands(readme_path: str) -> list[str]:
  """The bash commands of the README's "Two commands" section, in order."""
  with open(readme_path) as f:
    text = f.read()
  section = text.split("## Two commands", 1)[1].split("\n## ", 1)[0]
  return [block.strip() for block in re.findall(r"```bash\n(.*?)```", section, re.DOTALL)]


def split_command(command: str) -> tuple[str, str]:
  """(install part, run part): the run part is what follows the last `&&`,
  after activating the venv again (each part runs in its own shell)."""
  install, _, run = command.rpartition(" && ")
  return install, f". .venv/bin/activate && {run}"


class LoadSampler:
  """Samples the 1-minute load average every `every` seconds in a thread."""

  def __init__(self, every: float = 2.0):
    self._every, self.samples = every, []
    self._stop = threading.Event()
    self._thread = threading.Thread(target=self._run, daemon=True)

  def _run(self):
    while not self._stop.is_set():
      self.samples.append(os.getloadavg()[0])
      self._stop.wait(self._every)

  def __enter__(self):
    self._thread.start()
    return self

  def __exit__(self, *exc):
    self._stop.set()
    self._thread.join()

  def summary(self) -> dict[str, float]:
    samples = self.samples or [os.getloadavg()[0]]
    return {"load_mean": round(sum(samples) / len(samples), 2),
            "load_max": round(max(samples), 2)}


def timed(shell_command: str, cwd: str) -> dict:
  """Runs `shell_command` in bash in `cwd`; its time, exit code, load, the
  alarming output lines, and how the first ETA compared with the time the
  training then took."""
  env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH")}
  stamped = []  # (seconds since start, line); stderr merged into stdout.
  with LoadSampler() as load:
    start = time.perf_counter()
    process = subprocess.Popen(["bash", "-c", shell_command], cwd=cwd, env=env, text=True,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    for line in process.stdout:
      stamped.append((time.perf_counter() - start, line.rstrip("\n")))
    returncode = process.wait()
    seconds = time.perf_counter() - start
  lines = [line for _, line in stamped]
  return {"command": shell_command, "seconds": round(seconds, 1), "returncode": returncode,
          **load.summary(), **eta_check(stamped),
          "alarming_lines": [line for line in lines if ALARMING.search(line)][:20],
          "output_tail": lines[-15:]}


_PROGRESS = re.compile(r"^step (\d+)/(\d+) \|.*\| ETA (?:(\d+)h)?(\d+)m(\d\d)s \|")


def eta_check(stamped: list[tuple[float, str]]) -> dict:
  """The ETA of the first progress line, and the seconds from that line to
  the last one (the training it predicted)."""
  progress = [(t, _PROGRESS.match(line)) for t, line in stamped]
  progress = [(t, m) for t, m in progress if m]
  if len(progress) < 2:
    return {}
  (first_time, first), (last_time, _) = progress[0], progress[-1]
  hours, minutes, secs = (int(g or 0) for g in first.groups()[2:])
  return {"first_eta_at_step": int(first.group(1)),
          "first_eta_seconds": 3600 * hours + 60 * minutes + secs,
          "then_took_seconds": round(last_time - first_time, 1)}


def fresh_clone(work: str, name: str) -> str:
  target = os.path.join(work, name)
  subprocess.run(["git", "clone", "--quiet", "--no-hardlinks", REPO, target], check=True)
  return target


def machine() -> dict:
  model = "unknown CPU"
  if os.path.exists("/proc/cpuinfo"):
    with open("/proc/cpuinfo") as f:
      names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
    model = names[0] if names else model
  return {"cores": os.cpu_count(), "cpu": model, "platform": platform.platform(),
          "python3": subprocess.run(["python3", "--version"], capture_output=True,
                                    text=True).stdout.strip()}


def measure(commands: list[str], chosen: list[int], work: str) -> dict:
  results = {"machine": machine(), "commands": []}
  for number in chosen:
    install, run = split_command(commands[number - 1])
    clone = fresh_clone(work, f"command{number}")
    entry = {"number": number, "readme_command": commands[number - 1],
             "install": timed(install, clone)}
    if entry["install"]["returncode"] == 0:
      entry["run"] = timed(run, clone)
    results["commands"].append(entry)
  return results


def _part_text(name: str, part: dict) -> list[str]:
  lines = [f"  {name}: {part['seconds']:.0f} s (exit {part['returncode']}; load average "
           f"{part['load_mean']} mean, {part['load_max']} max): {part['command']}"]
  if "first_eta_seconds" in part:
    lines.append(f"      ETA at step {part['first_eta_at_step']:,}: "
                 f"{part['first_eta_seconds']} s; the rest of training then took "
                 f"{part['then_took_seconds']:.0f} s")
  if part["returncode"] != 0:
    lines += [f"      | {line}" for line in part["output_tail"]]
  lines += [f"      alarming line: {line}" for line in part["alarming_lines"]]
  return lines


def report(results: dict) -> str:
  m = results["machine"]
  lines = [f"Machine: {m['cores']} CPU cores ({m['cpu']}), {m['platform']}, {m['python3']}"]
  for entry in results["commands"]:
    lines.append(f"README command {entry['number']}:")
    lines += _part_text("install", entry["install"])
    if "run" in entry:
      lines += _part_text("run", entry["run"])
  return "\n".join(lines)


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--commands", default="1,2", help="which README commands: 1, 2 or 1,2")
  parser.add_argument("--work", default=None, help="where the clones go (default: a temp dir)")
  parser.add_argument("--json", default=None, help="also write the results here")
  args = parser.parse_args(argv)
  chosen = [int(c) for c in args.commands.split(",")]
  commands = readme_commands(os.path.join(REPO, "README.md"))
  work = args.work or tempfile.mkdtemp(prefix="first_hour.")
  os.makedirs(work, exist_ok=True)
  results = measure(commands, chosen, work)
  print(report(results))
  if args.json:
    with open(args.json, "w") as f:
      json.dump(results, f, indent=2)
  failed = any(e["install"]["returncode"] or e.get("run", {}).get("returncode", 1)
               for e in results["commands"])
  return 1 if failed else 0


if __name__ == "__main__":
  sys.exit(main())
