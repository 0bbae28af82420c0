"""Bit-identical results against golden runs recorded before the refactoring.

`tests/fixtures/make_golden_runs.py` recorded, on the commit before the
package was reorganised, the metrics and the final training-state digest of
three short `train.py` runs (dense and item-blocked scores, CA-PG-SwR, CA-PG
with M = 2, V-PG with a noisy LSR). Rerunning them must give the same
`metrics.jsonl` (every field but the wall-clock `steps_per_sec`) and the same
state digest, bit for bit.
"""

import json
import os

import pytest

from tests.fixtures import make_golden_runs


# The quickstart run is the default; the blocked and noisy-LSR runs are slow-marked.
@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n in ("vpg_noisy", "ca_pg_blocked") else n
                                  for n in sorted(make_golden_runs.RUNS)])
def test_run_matches_golden_bit_for_bit(name, tmp_path):
  golden_dir = make_golden_runs.DEFAULT_OUT
  with open(os.path.join(golden_dir, f"{name}.metrics.jsonl")) as f:
    golden_records = [json.loads(line) for line in f]
  with open(os.path.join(golden_dir, f"{name}.state_sha256")) as f:
    golden_digest = f.read().strip()

  records, digest = make_golden_runs.execute(name, str(tmp_path))

  assert len(records) == len(golden_records)
  for got, want in zip(records, golden_records):
    assert got == want, f"step {want['step']}: metrics differ from the golden run"
  assert digest == golden_digest, "the final training state differs from the golden run"
