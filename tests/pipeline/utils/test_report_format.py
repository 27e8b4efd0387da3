"""The reports' Markdown: tables, missing numbers, sections, and the files written whole."""

from __future__ import annotations

import json

from pipeline.utils.report_format import (
    config_line,
    number,
    section,
    table,
    with_delta,
    write_json,
    write_markdown,
)


def test_a_table_has_its_header_the_rule_and_a_line_per_row():
    rows = [["a", "2,384", with_delta(5.9577, 5.9621)], ["b", "5,304", number(None)]]
    assert table(["size", "N", "P=2"], rows) == [
        "| size | N | P=2 |",
        "|---|---|---|",
        "| a | 2,384 | 5.9577 (-0.0044) |",
        "| b | 5,304 | n/a |",
    ]
    assert table("size | N | P=2", rows) == table(["size", "N", "P=2"], rows)


def test_a_blank_corner_is_one_space_wide_and_a_blank_body_cell_two():
    assert table(["", "ours", "paper"], [("E", "1.5000", ""), ("k", "**0.2000**", "**0.39**")]) == [
        "| | ours | paper |",
        "|---|---|---|",
        "| E | 1.5000 |  |",
        "| k | **0.2000** | **0.39** |",
    ]


def test_numbers_take_their_format_or_say_they_are_missing():
    assert number(0.12345) == "0.1235" and number(0.5, "{:+.3f}") == "+0.500"
    assert number(None) == "n/a" and number(None, "{:.3f}", missing="-") == "-"
    assert with_delta(3.0, 3.25) == "3.0000 (-0.2500)" and with_delta(3.5, 3.25) == "3.5000 (+0.2500)"


def test_a_section_puts_a_blank_line_after_each_block_and_leaves_out_empty_ones():
    lines = section("Title", "Intro.", None, [], ["| a |", "|---|"], level=1) + section("Next", ["- one", "- two"])
    assert "\n".join(lines) == "# Title\n\nIntro.\n\n| a |\n|---|\n\n## Next\n\n- one\n- two\n"


def test_the_config_line_names_the_file_and_its_overrides():
    assert config_line("configs/a.yaml", []) == "Config: `configs/a.yaml`"
    assert config_line("a.yaml", ["x=1", "y.z=2"]) == "Config: `a.yaml` with `--set x=1 y.z=2`"


def test_reports_are_written_whole(tmp_path):
    md = write_markdown(tmp_path / "report" / "r.md", section("T", "text"))
    assert md.read_text() == "## T\n\ntext\n" and sorted(p.name for p in md.parent.iterdir()) == ["r.md"]
    data = {"rows": [{"a": 1.5}], "k": None}
    written = write_json(tmp_path / "report" / "results.json", data)
    assert json.loads(written.read_text()) == data and written.read_text() == json.dumps(data, indent=2)
