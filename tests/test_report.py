"""The report: table values, faceting, the PNG, and bad inputs.

The runs are written by hand (config.json + metrics.jsonl in the format of
`cpg_jax.training.metrics_log`) with known curves, so every number in the table is
known in advance.
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from cpg_jax.experiments import plots
from cpg_jax.experiments import report
from cpg_jax.experiments import runs as runs_lib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OPTIMUM = 10.0


def write_run(root, name, values, steps=None, optimal=OPTIMUM, diverged=None, seed=0,
              best_with_lsr=None, **config):
  """A workdir with config.json and metrics.jsonl; `values` is [evals][seeds]."""
  workdir = os.path.join(str(root), name)
  os.makedirs(workdir)
  full = {"estimator": "ca_pg_swr", "num_candidates": 10, "num_outputs": 1, "num_models": 1,
          "lsr": "optimal", "learning_rate": 0.01, "seed": seed, "num_steps": 0,
          "tower_layers": [], "env": {"name": "synthetic", "num_items": 1000}}
  for key, value in config.items():
    if key.startswith("env_"):
      full["env"][key[4:]] = value
    else:
      full[key] = value
  steps = list(steps if steps is not None else range(0, 1000 * len(values), 1000))
  full["num_steps"] = steps[-1]
  with open(os.path.join(workdir, "config.json"), "w") as f:
    json.dump(full, f)
  num_seeds = len(values[0])
  diverged = diverged or [None] * num_seeds
  with open(os.path.join(workdir, "metrics.jsonl"), "w") as f:
    for step, row in zip(steps, values):
      record = {"step": step, "policy_value": list(row),
                "policy_value_mean": float(np.mean(row)), "optimal_value": optimal,
                "optimal_95": 0.95 * optimal,
                "optimal_esr_value": optimal if best_with_lsr is None else best_with_lsr,
                "diverged": [d if d is not None and d <= step else None for d in diverged],
                "steps_per_sec": 100.0}
      f.write(json.dumps(record) + "\n")
  return workdir


def test_table_numbers(tmp_path):
  # Seeds 2, 4 and 9 at the end: mean 5, std sqrt(26/3), min 2, max 9.
  # The mean curve is 3, 8, 9.4, 9.6, 5: first >= 9.5 at step 3000.
  values = [[3, 3, 3], [8, 8, 8], [9.4, 9.4, 9.4], [9.6, 9.6, 9.6], [2, 4, 9]]
  run = write_run(tmp_path, "a", values, diverged=[None, 4000, None], seed=5)
  rows = report.summary_rows([report.load_run(run)])
  (row,) = rows
  assert row["steps"] == 4000 and row["seeds"] == 3
  assert row["final_mean"] == pytest.approx(5.0)
  assert row["final_std"] == pytest.approx(np.sqrt(26 / 3))
  assert (row["final_min"], row["final_max"]) == (2.0, 9.0)
  assert row["optimal"] == OPTIMUM
  assert row["fraction_of_optimum"] == pytest.approx(0.5)
  assert row["steps_to_95"] == 3000
  assert row["diverged"] == [(6, 4000)]  # Seed numbers start at config.seed = 5.
  table = report.markdown_table(rows)
  line = table.splitlines()[2]
  for text in ("CA-PG-SwR", "| 10 |", "5.0000", f"{np.sqrt(26 / 3):.4f}", "2.0000 – 9.0000",
               "10.0000", "0.500", "3,000", "6@4,000"):
    assert text in line, (text, line)
  header = table.splitlines()[0]
  for text in ("estimator", "K", "L", "M", "LSR", "lr", "std over seeds",
               "min – max over seeds", "steps to 95%"):
    assert text in header


def test_up_to_step_reads_a_longer_run_as_if_it_stopped_there(tmp_path):
  values = [[3, 3], [8, 8], [9.6, 9.6], [1, 1]]  # steps 0..3000; seed 1 diverges at 3000
  run = write_run(tmp_path, "a", values, diverged=[None, 3000])
  (row,) = report.summary_rows([report.load_run(run, up_to_step=2500)])
  assert row["steps"] == 2000 and row["final_mean"] == pytest.approx(9.6)
  assert row["steps_to_95"] == 2000 and row["diverged"] == []
  (full,) = report.summary_rows([report.load_run(run)])
  assert full["final_mean"] == pytest.approx(1.0) and full["diverged"] == [(1, 3000)]
  with pytest.raises(report.ReportError, match="no evaluation at or before step -1"):
    report.load_run(run, up_to_step=-1)


def test_a_field_older_runs_lack_reads_as_its_default(tmp_path):
  old = write_run(tmp_path, "old", [[1.0]], estimator="vpg")  # written before `baseline`
  new = write_run(tmp_path, "new", [[1.0]], estimator="vpg", baseline="none")
  loo = write_run(tmp_path, "loo", [[1.0]], estimator="vpg", baseline="leave_one_out")
  runs = [report.load_run(w) for w in (old, new, loo)]
  assert runs[0]["config"]["baseline"] == "none"
  assert runs_lib.varying_fields(runs[:2]) == []
  assert runs_lib.varying_fields(runs) == ["baseline"]


def test_an_option_of_another_estimator_has_no_value(tmp_path):
  closed = write_run(tmp_path, "closed", [[1.0]], estimator="ca_pg", exact_nodes=32)
  closed_16 = write_run(tmp_path, "closed_16", [[1.0]], estimator="ca_pg", exact_nodes=16)
  exact_16 = write_run(tmp_path, "exact_16", [[1.0]], estimator="ca_pg_exact", exact_nodes=16)
  exact_32 = write_run(tmp_path, "exact_32", [[1.0]], estimator="ca_pg_exact", exact_nodes=32)
  runs = {name: report.load_run(w) for name, w in
          (("closed", closed), ("closed_16", closed_16), ("exact_16", exact_16),
           ("exact_32", exact_32))}
  # ca_pg does not read exact_nodes: two ca_pg runs apart only there are alike.
  assert runs_lib.varying_fields([runs["closed"], runs["closed_16"]]) == []
  assert runs_lib.config_value(runs["closed"]["config"], "exact_nodes") == "-"
  pair = [runs["closed"], runs["exact_16"]]
  assert runs_lib.curve_labels(pair) == ["CA-PG", "CA-PG-exact"]
  columns = [row["columns"] for row in report.summary_rows(pair)]
  assert sorted((c["estimator"], c["exact_nodes"]) for c in columns) == [
      ("CA-PG", "-"), ("CA-PG-exact", "16")]
  # exact_tail is left at its default: no column (the estimator column says it all).
  assert all("exact_tail" not in c for c in columns)
  closed_and_default = [runs["closed"], runs["exact_32"]]
  assert all("exact_nodes" not in row["columns"]
             for row in report.summary_rows(closed_and_default))
  # Where it tells runs of the estimator that reads it apart, it is named there only.
  three = [runs["closed"], runs["exact_16"], runs["exact_32"]]
  assert runs_lib.curve_labels(three) == [
      "CA-PG", "CA-PG-exact, exact_nodes=16", "CA-PG-exact, exact_nodes=32"]


def test_not_reached_and_no_divergence(tmp_path):
  run = write_run(tmp_path, "a", [[1, 2], [9.0, 9.9]])  # mean 9.45 < 9.5
  (row,) = report.summary_rows([report.load_run(run)])
  assert row["steps_to_95"] is None and row["diverged"] == []
  line = report.markdown_table([row]).splitlines()[2]
  assert "not reached" in line and line.rstrip().endswith("| none |")


def test_facets_group_runs_and_order_rows(tmp_path):
  runs = []
  for k in (20, 5, 10):
    for estimator, lr in (("ca_pg", 0.01), ("vpg", 0.1)):
      runs.append(write_run(tmp_path, f"{estimator}_{k}", [[1.0], [2.0]],
                            estimator=estimator, num_candidates=k, learning_rate=lr))
  loaded = [report.load_run(r) for r in runs]
  groups = runs_lib.facet_groups(loaded, ("num_candidates",))
  assert [values for values, _ in groups] == [(5,), (10,), (20,)]  # Numeric order.
  for (k,), members in groups:
    assert sorted(loaded[i]["config"]["num_candidates"] for i in members) == [k, k]
  # Within a panel the curves differ only by estimator (the learning rate follows it).
  assert runs_lib.curve_labels(loaded, ("num_candidates",)) == ["CA-PG", "V-PG"] * 3
  # Without faceting, K tells the curves apart.
  assert runs_lib.curve_labels(loaded)[0] == "CA-PG, K=20"
  # A baseline is named even when only one estimator uses it.
  with_baseline = [write_run(tmp_path, "vpg_loo", [[1.0], [2.0]], estimator="vpg",
                             num_candidates=5, learning_rate=0.1, baseline="leave_one_out")]
  mixed = loaded + [report.load_run(r) for r in with_baseline]
  assert runs_lib.curve_labels(mixed, ("num_candidates",))[-1] == "V-PG, baseline=leave_one_out"
  rows = report.summary_rows(loaded, ("num_candidates",))
  assert [(r["columns"]["K"], r["columns"]["estimator"]) for r in rows] == [
      ("5", "V-PG"), ("5", "CA-PG"), ("10", "V-PG"), ("10", "CA-PG"),
      ("20", "V-PG"), ("20", "CA-PG")]


def test_joint_facet_and_string_facet(tmp_path):
  runs = []
  for lm in ((1, 1), (1, 5), (5, 1), (5, 5)):
    for lsr in ("optimal", "anti"):
      runs.append(write_run(tmp_path, f"{lm}_{lsr}", [[1.0]], num_outputs=lm[0],
                            num_models=lm[1], lsr=lsr))
  loaded = [report.load_run(r) for r in runs]
  groups = runs_lib.facet_groups(loaded, report.parse_facet("L,M"))
  assert [v for v, _ in groups] == [(1, 1), (1, 5), (5, 1), (5, 5)]
  assert all(len(m) == 2 for _, m in groups)
  assert runs_lib.facet_title(("num_outputs", "num_models"), (1, 5)) == "L = 1, M = 5"
  lsr_groups = runs_lib.facet_groups(loaded, ("lsr",))
  assert [v for v, _ in lsr_groups] == [("optimal",), ("anti",)]  # First appearance.
  assert runs_lib.facet_title(("lsr",), ("anti",)) == "LSR: anti"


def test_png_and_markdown_written(tmp_path):
  runs = [write_run(tmp_path, f"r{k}_{e}", [[1.0, 2.0], [5.0, 6.0], [9.0, 9.8]],
                    estimator=e, num_candidates=k, diverged=[None, 2000] if k == 5 else None)
          for k in (5, 10, 20) for e in ("vpg", "ca_pg_swr")]
  out = tmp_path / "plots" / "curves.png"
  md = tmp_path / "plots" / "table.md"
  png = report.write_report(runs, out=str(out), title="Test", markdown=str(md),
                            facet=("K",), notes=["A note."], stream=open(os.devnull, "w"))
  assert png == str(out)
  with open(out, "rb") as f:
    assert f.read(8) == b"\x89PNG\r\n\x1a\n"
  text = md.read_text()
  assert text.startswith("# Test\n") and "A note." in text and "Steps to 95%" in text
  assert text.count("V-PG") == 3 and "1@2,000" in text


def test_lsr_limited_runs_get_their_own_reference(tmp_path, monkeypatch):
  # Under the uniform LSR the best the ESR can reach (8) is below the optimum (10).
  limited = write_run(tmp_path, "uniform", [[2.0], [6.0]], lsr="uniform", best_with_lsr=8.0)
  plain = write_run(tmp_path, "optimal", [[2.0], [6.0]], lsr="optimal")
  rows = report.summary_rows([report.load_run(limited), report.load_run(plain)])
  table = report.markdown_table(rows).splitlines()
  assert "optimal ESR with this LSR" in table[0] and "fraction of it" in table[0]
  assert "| 8.0000 | 0.750 |" in table[2] and "| 0.600 |" in table[2]
  assert "| 10.0000 | 0.600 |" in table[3]  # the optimal LSR's own line is the optimum
  # Tables without such a run keep their columns.
  assert "with this LSR" not in report.markdown_table(rows[1:])
  drawn = []
  import matplotlib.axes
  original = matplotlib.axes.Axes.axhline
  def spy(ax, y=0, *args, **kwargs):
    drawn.append((round(float(y), 6), kwargs.get("linestyle")))
    return original(ax, y, *args, **kwargs)
  monkeypatch.setattr(matplotlib.axes.Axes, "axhline", spy)
  plots.plot([report.load_run(limited), report.load_run(plain)], str(tmp_path / "p.png"),
              facet=("lsr",))
  assert (8.0, ":") in drawn and drawn.count((10.0, "-")) == 2
  assert sum(1 for y, style in drawn if style == ":") == 1  # only the uniform panel


def _cli(*args):
  return subprocess.run([sys.executable, "-m", "cpg_jax.experiments.report", *args], cwd=REPO,
                        capture_output=True, text=True)


def test_cli_facet_and_markdown(tmp_path):
  runs = [write_run(tmp_path, f"{e}_{lsr}", [[1.0], [9.6]], estimator=e, lsr=lsr)
          for e in ("vpg", "ca_pg") for lsr in ("optimal", "noisy")]
  result = _cli(*runs, "--out", str(tmp_path / "c.png"), "--markdown", str(tmp_path / "c.md"),
                "--facet", "LSR", "--title", "LSR test")
  assert result.returncode == 0, result.stderr
  assert (tmp_path / "c.png").stat().st_size > 10_000
  assert "| LSR |" in (tmp_path / "c.md").read_text()
  assert "Learning curves:" in result.stdout
  result = _cli(*runs, "--out", str(tmp_path / "d.png"), "--up_to_step", "0")
  assert result.returncode == 0, result.stderr
  assert "1.0000" in result.stdout and "9.6000" not in result.stdout


def test_curve_gaps_compare_mean_curves_at_common_steps(tmp_path):
  # Panel K = 10: ca_pg mean curve 1, 5, 9 at steps 0, 1000, 2000; ca_pg_swr
  # 2, 2, 8, 7 at 0..3000: gaps -1, +3, +1 at the common steps, the largest at
  # 1000, the last (step 2000) +1 with stds 1 (ca_pg) and 2 (ca_pg_swr).
  ca = write_run(tmp_path, "ca", [[1, 1], [4, 6], [8, 10]], estimator="ca_pg")
  swr = write_run(tmp_path, "swr", [[2, 2], [2, 2], [6, 10], [7, 7]])
  # Panel K = 20 (one pair, steps 0 and 2000 only in common).
  a = write_run(tmp_path, "a20", [[3.0], [4.0]], steps=[0, 2000], num_candidates=20,
                estimator="vpg")
  b = write_run(tmp_path, "b20", [[3.5], [3.0], [3.0]], num_candidates=20, estimator="ca_pg")
  runs = [report.load_run(w) for w in (swr, ca, b, a)]
  gaps = report.curve_gaps(runs, "K")
  assert [(g["panel"], g["a"], g["b"]) for g in gaps] == [
      ("K = 10", "CA-PG", "CA-PG-SwR"), ("K = 20", "V-PG", "CA-PG")]
  first, second = gaps
  assert first["evaluations"] == 3 and first["largest"] == pytest.approx(3.0)
  assert first["largest_step"] == 1000 and first["last_step"] == 2000
  assert first["last"] == pytest.approx(1.0) and first["std_at_last"] == pytest.approx(2.0)
  assert second["evaluations"] == 2 and second["largest"] == pytest.approx(1.0)
  assert (second["largest_step"], second["last"]) == (2000, pytest.approx(1.0))
  assert second["std_at_last"] == 0.0
  table = report.gaps_table(gaps)
  assert "| K = 10 | CA-PG | CA-PG-SwR | 3 | 3.0000 | 1,000 | +1.0000 | 2,000 | 2.0000 |" in table
  result = _cli(ca, swr, "--gaps", "--out", str(tmp_path / "g.png"),
                "--markdown", str(tmp_path / "g.md"))
  assert result.returncode == 0, result.stderr
  assert "| CA-PG | CA-PG-SwR | 3 | 3.0000 |" in result.stdout
  document = (tmp_path / "g.md").read_text()
  assert "largest abs(a - b)" in document and "Gaps between curves" in document
  plain = _cli(ca, swr, "--out", str(tmp_path / "h.png"))
  assert "largest abs(a - b)" not in plain.stdout


@pytest.mark.parametrize("case", ["no_config", "empty_metrics", "missing_dir", "bad_facet"])
def test_bad_inputs_exit_2(tmp_path, case):
  good = write_run(tmp_path, "good", [[1.0]])
  if case == "no_config":
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "metrics.jsonl").write_text("")
    args, expect = [str(bad)], "no config.json"
  elif case == "empty_metrics":
    bad = write_run(tmp_path, "bad", [[1.0]])
    open(os.path.join(bad, "metrics.jsonl"), "w").close()
    args, expect = [bad], "no evaluation records"
  elif case == "missing_dir":
    args, expect = [str(tmp_path / "nowhere")], "no config.json"
  else:
    args, expect = [good, "--facet", "num_widgets"], "no field 'num_widgets'"
  result = _cli(*args, "--out", str(tmp_path / "x.png"))
  assert result.returncode == 2
  assert result.stderr.startswith("error: ") and expect in result.stderr
  assert "Traceback" not in result.stderr
  assert not (tmp_path / "x.png").exists()


def test_paper_figure_tables(tmp_path):
  from cpg_jax.experiments import paper_figure  # pylint: disable=g-import-not-at-top
  # CA-PG at K = 20: seeds 8.4 and 8.6 at step 60,000 (mean 8.5, std 0.1); the
  # mean curve first reaches 0.95 x 8.76 = 8.322 at step 60,000.
  steps = [0, 30_000, 60_000]
  write_run(tmp_path, "ca20", [[7.0, 7.0], [8.0, 8.2], [8.4, 8.6]], steps=steps,
            estimator="ca_pg", num_candidates=20)
  write_run(tmp_path, "swr20", [[7.0, 7.0], [7.5, 7.5]], steps=steps[:2],
            estimator="vpg_swr", num_candidates=20)
  found = paper_figure._find_runs(str(tmp_path))
  matched = paper_figure.matched_steps_table(found)
  assert "| 20 | 60,000 | CA-PG | 8.500 (0.100) | 2 | 8.42 | +0.080 |" in matched
  assert "| 20 | 60,000 | V-PG-SwR | not reached (at 30,000) | - | 7.97 | - |" in matched
  assert "| 20 | 60,000 | CA-PG-SwR | no run | - | 8.38 | - |" in matched
  lines = paper_figure.reference_lines_table(found)
  assert "| 20 | CA-PG | 60,000 | 10.0000 | not by 60,000 | 8.76 | 60,000 |" in lines
  assert "| 20 | V-PG-SwR | 30,000 | 10.0000 | not by 30,000 | 8.76 | not by 30,000 |" in lines
  # The command: both tables, and a clean error for a root without runs.
  result = subprocess.run([sys.executable, "-m", "cpg_jax.experiments.paper_figure",
                           str(tmp_path)], cwd=REPO, capture_output=True, text=True)
  assert result.returncode == 0 and "## Reference lines" in result.stdout, result.stderr
  empty = tmp_path / "empty"
  empty.mkdir()
  result = subprocess.run([sys.executable, "-m", "cpg_jax.experiments.paper_figure",
                           str(empty)], cwd=REPO, capture_output=True, text=True)
  assert result.returncode == 2 and "no train.py workdirs" in result.stderr
  assert "Traceback" not in result.stderr
