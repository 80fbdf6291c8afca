"""The benchmark commands run end to end on tiny sizes (numbers come from the real runs)."""

from __future__ import annotations

import json

from mtlrec.pipeline.cli import main


def test_bench_ingest_compares_like_with_like(tmp_path):
    args = ["bench", "ingest", "bench.rows=4000", "bench.days=4", f"paths.work_dir={tmp_path}",
            f"paths.reports={tmp_path / 'reports'}"]
    assert main(args) == 0
    result = json.loads((tmp_path / "reports" / "ingest.json").read_text())
    assert result["rows"] == 4000
    # the pandas baseline did the same work: same good/quarantined rows and vocabularies
    assert result["same_result"] == {"rows_good": True, "rows_quarantined": True, "vocab_sizes": True}
    assert result["implementations"]["mtlrec"]["rows_quarantined"] > 0
    assert result["batch_reader"]["samples_per_s"] > 0
    assert "mtlrec / pandas rows/s" in (tmp_path / "reports" / "ingest.md").read_text()
