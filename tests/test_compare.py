"""Run comparison: grouping by run name and mean ± std over versions."""

from __future__ import annotations

import json

from udaseg.compare import collect, main, summarize


def write(root, name, version, miou, road):
    path = root / name / f"seed{version}" / "test_metrics.json"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"iteration": 600, "mIoU": miou, "IoU/road": road}))


def test_groups_versions_and_reports_mean_and_std(tmp_path, capsys):
    write(tmp_path, "advent", 0, 40.0, 80.0)
    write(tmp_path, "advent", 1, 42.0, 82.0)
    write(tmp_path, "source_only", 0, 30.0, 70.0)
    runs = collect(tmp_path, "test")
    assert sorted(runs) == ["advent", "source_only"] and len(runs["advent"]) == 2
    header, rows = summarize(runs, per_class=True)
    assert header == ["run", "seeds", "mIoU", "road"]
    assert rows[0] == ["advent", "2", "41.0 ± 1.4", "81.0 ± 1.4"]
    assert rows[1] == ["source_only", "1", "30.0", "70.0"]
    main([str(tmp_path), "--markdown"])
    assert "| advent | 2 | 41.0 ± 1.4 |" in capsys.readouterr().out
