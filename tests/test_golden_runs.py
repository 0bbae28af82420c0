"""Results against golden runs recorded before the refactoring.

`tests/fixtures/make_golden_runs.py` recorded, on the commit before the
package was reorganised, the metrics and the final training-state digest of
three short `train.py` runs (dense and item-blocked scores, CA-PG-SwR, CA-PG
with M = 2, V-PG with a noisy LSR). Rerunning them must give the same
`metrics.jsonl` (every field but the wall-clock `steps_per_sec`) and the same
state digest, bit for bit, on a kind of machine that has a recorded set (the
reference's, or one under `golden_runs/machines/`). XLA:CPU on another
processor model rounds differently, so there the metrics must come within
the run's stated tolerance of the reference; the final state is then checked
through the last evaluation's metrics, not the digest.
"""

import os

import pytest

from tests.fixtures import make_golden_runs


def test_identical_metrics_have_no_differences_and_a_changed_value_has_one():
  records = [{"step": 0, "diverged": [None, None], "value": [5.0, 6.0], "value_mean": 5.5}]
  assert make_golden_runs.differences(records, records, rtol=0.0) == []
  nudged = [dict(records[0], value=[5.0, 6.0 + 1e-6])]
  assert make_golden_runs.differences(nudged, records, rtol=1e-6) == []
  assert make_golden_runs.differences(nudged, records, rtol=1e-8) == ["step 0.value[1]: 6.000001 vs 6.0"]
  flagged = [dict(records[0], diverged=[None, 120])]
  assert make_golden_runs.differences(flagged, records, rtol=1.0) == ["step 0.diverged[1]: 120 != None"]
  assert make_golden_runs.differences(records * 2, records, rtol=1.0) == ["2 records against 1"]


# The quickstart run is the default; the blocked and noisy-LSR runs are slow-marked.
@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n in ("vpg_noisy", "ca_pg_blocked") else n
                                  for n in sorted(make_golden_runs.RUNS)])
def test_run_matches_golden(name, tmp_path):
  records, digest = make_golden_runs.execute(name, str(tmp_path))

  reference_records, reference_digest = make_golden_runs.load(make_golden_runs.DEFAULT_OUT, name)
  found = make_golden_runs.differences(records, reference_records,
                                       make_golden_runs.CROSS_MACHINE_RTOL[name])
  assert not found, "metrics outside the tolerance of the reference:\n" + "\n".join(found[:10])
  if records == reference_records:  # the reference's kind of machine
    assert digest == reference_digest, "the final training state differs from the reference"

  machine_set = make_golden_runs.load(
      os.path.join(make_golden_runs.MACHINES_DIR, make_golden_runs.machine_fingerprint()), name)
  if machine_set is not None:
    machine_records, machine_digest = machine_set
    found = make_golden_runs.differences(records, machine_records, rtol=0.0)
    assert not found, "metrics differ from this machine's golden run:\n" + "\n".join(found[:10])
    assert digest == machine_digest, "the final training state differs from this machine's golden run"
