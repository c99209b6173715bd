import json

from foresight.core.report import markdown_table, write_run_report


def test_a_run_report_renders_the_main_table_and_every_titled_table_in_order(tmp_path):
    res = {
        "system": "S",
        "experiment": "e",
        "claim": "c",
        "verdict": "partial",
        "rule": "r",
        "scale": "tiny",
        "seed": 0,
        "wall_seconds": 1.5,
        "table": [{"a": 1}],
        "tables": {"Table 7 — x": [{"size": "60k", "nll": 4.25}], "Table 10 — y": [{"w": 64}, {"w": 32, "z": "!"}]},
        "figures": ["f.png"],
    }
    (tmp_path / "results.json").write_text(json.dumps(res))
    text = write_run_report(tmp_path).read_text()
    assert text.index("| a |") < text.index("**Table 7 — x**") < text.index("| size | nll |")
    assert text.index("| size | nll |") < text.index("**Table 10 — y**") < text.index("![f.png](figures/f.png)")
    assert "| 32 | ! |" in text and "| 64 |  |" in text  # rows may add columns; missing cells are blank


def test_markdown_table_formats_floats_and_is_empty_without_rows():
    assert markdown_table([]) == ""
    assert markdown_table([{"x": 0.123456, "y": float("nan")}]).splitlines()[-1] == "| 0.1235 | nan |"


def test_a_resumed_run_reports_its_wall_time_over_all_sessions(tmp_path):
    res = {"system": "S", "experiment": "e", "claim": "c", "verdict": "partial", "scale": "full", "seed": 0}
    res |= {"wall_seconds": 336.0, "wall_seconds_total": 3241.6, "resumed": True}
    (tmp_path / "results.json").write_text(json.dumps(res))
    assert "**wall time:** 3241.6 s over all sessions (336.0 s in the last, resumed one)" in (
        write_run_report(tmp_path).read_text()
    )
    (tmp_path / "results.json").write_text(json.dumps(res | {"resumed": False, "wall_seconds_total": 336.0}))
    assert "**wall time:** 336.0 s\n" in write_run_report(tmp_path).read_text()
