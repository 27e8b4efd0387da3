"""Planning work units and reading every input type, with bad records counted, not lost."""

from __future__ import annotations

import json

import numpy as np
import pytest
from helpers.corpus import text_doc, write_bad_jsonl, write_hf_disk, write_jsonl, write_parquet, write_tree

from data_prep.filters import clean
from data_prep.readers import read_unit
from data_prep.tokenize_units import process_unit
from data_prep.units import InputError, WorkUnit, plan, stdlib_root
from pipeline.config.data import DataConfig


def json_line(text: str) -> str:
    return json.dumps({"text": text}) + "\n"


def _docs(plans, data):
    out = []
    for p in plans:
        for unit in p.units:
            field = getattr(data.sources[unit.source], "text_field", "text")
            out += [r.text for r in read_unit(unit, field) if r.text is not None]
    return out


def test_jsonl_units_split_at_line_boundaries_and_keep_line_numbers(tmp_path):
    docs = [text_doc(i) for i in range(400)]
    write_jsonl(tmp_path / "a.jsonl", docs)
    data = DataConfig(sources=[{"type": "jsonl", "path": str(tmp_path)}], unit_mb=0.002)
    (src,) = plan(data)
    assert len(src.units) > 10
    assert _docs([src], data) == docs
    lines = [r.where for u in src.units for r in read_unit(u)]
    assert lines == [f"{tmp_path / 'a.jsonl'}:{i}" for i in range(1, 401)]


def test_bad_jsonl_records_are_rejected_with_file_and_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    expected = write_bad_jsonl(path)
    (src,) = plan(DataConfig(sources=[{"type": "jsonl", "path": str(path)}]))
    records = [r for u in src.units for r in read_unit(u)]
    got: dict[str, list[int]] = {}
    for r in records:
        if r.reason:
            got.setdefault(r.reason, []).append(int(r.where.rsplit(":", 1)[1]))
    expected = {k: v for k, v in expected.items() if k != "too_short"}  # a filter, not a reader, rule
    assert got == expected
    assert sum(r.text is not None for r in records) == 3  # two good docs + the whitespace-only one


@pytest.mark.parametrize("kind", ["parquet", "code", "text", "hf_disk", "hf_files"])
def test_each_input_type_reads_every_document_in_order(tmp_path, kind):
    docs = [text_doc(i) for i in range(40)]
    if kind == "parquet":
        src = {"type": "parquet", "path": str(write_parquet(tmp_path / "d.parquet", docs)), "text_field": "content"}
    elif kind in ("code", "text"):
        suffix = ".py" if kind == "code" else ".txt"
        write_tree(tmp_path / "tree", docs, suffix)
        src = {"type": kind, "path": str(tmp_path / "tree")}
        docs = [docs[i] for i in sorted(range(40), key=lambda i: (i % 3, i))]  # sorted by path
    elif kind == "hf_disk":
        src = {"type": "hf_disk", "path": str(write_hf_disk(tmp_path / "ds", docs))}
    else:
        write_jsonl(tmp_path / "f" / "part0.jsonl", docs[:25])
        write_jsonl(tmp_path / "f" / "part1.jsonl", docs[25:])
        src = {"type": "hf_files", "builder": "json", "path": str(tmp_path / "f" / "*.jsonl")}
    data = DataConfig(sources=[src], unit_mb=0.0005)
    plans = plan(data)
    assert len(plans[0].units) > 1
    assert _docs(plans, data) == docs


def test_files_empty_invalid_and_vanished(tmp_path):
    root = write_tree(tmp_path / "t", [text_doc(i) for i in range(3)], ".txt")
    (root / "empty.txt").write_text("")
    (root / "latin1.txt").write_bytes(b"caf\xe9")
    gone = root / "gone.txt"
    gone.write_text("here at planning time")
    (src,) = plan(DataConfig(sources=[{"type": "text", "path": str(root)}]))
    gone.unlink()
    reasons = {r.where.rsplit("/", 1)[1]: r.reason for u in src.units for r in read_unit(u) if r.reason}
    assert reasons == {"empty.txt": "empty", "latin1.txt": "invalid_utf8", "gone.txt": "unreadable"}


def test_stdlib_corpus_is_the_standard_library_without_site_packages():
    data = DataConfig(sources=[{"type": "stdlib"}])
    (src,) = plan(data)
    files = [f for u in src.units for f in u.files]
    assert len(files) > 1000 and all("site-packages" not in f for f in files)
    assert str(stdlib_root() / "os.py") in files


@pytest.mark.parametrize(
    "source, message",
    [
        ({"type": "jsonl", "path": "/nonexistent/x.jsonl"}, r"data.sources\[0\].path: input path does not exist"),
        ({"type": "code", "path": "{tmp}", "glob": "**/*.rs"}, r"data.sources\[0\].path: no files match"),
        ({"type": "hf_disk", "path": "/nonexistent/ds"}, r"data.sources\[0\]: input path does not exist"),
        ({"type": "jsonl", "path": "{tmp}/*.none"}, r"no files match"),
    ],
)
def test_missing_inputs_are_refused_naming_the_key(tmp_path, source, message):
    source = {k: v.replace("{tmp}", str(tmp_path)) if isinstance(v, str) else v for k, v in source.items()}
    with pytest.raises(InputError, match=message):
        plan(DataConfig(sources=[source]))


def test_duplicate_source_names_are_refused(tmp_path):
    write_jsonl(tmp_path / "a.jsonl", ["x"])
    src = {"type": "jsonl", "path": str(tmp_path / "a.jsonl")}
    with pytest.raises(InputError, match=r"data.sources\[1\].name: 'jsonl-a' is used by another source"):
        plan(DataConfig(sources=[src, src]))


def test_work_unit_round_trips_through_a_dict():
    unit = WorkUnit(1, 2, "jsonl", ("a", "b"), 3, 4, 5, 6)
    assert WorkUnit.from_dict(unit.to_dict()) == unit


def test_gzip_and_zstd_jsonl_and_text_are_read_as_streams_by_extension(tmp_path):
    import gzip
    import shutil

    import zstandard

    docs = [text_doc(i) for i in range(60)]
    write_jsonl(tmp_path / "plain.jsonl", docs[:20])
    for name, opener in (("b.jsonl.gz", gzip.open), ("c.jsonl.zst", zstandard.open)):
        write_jsonl(tmp_path / "tmp.jsonl", docs[20:40] if name.endswith(".gz") else docs[40:])
        with open(tmp_path / "tmp.jsonl", "rb") as src, opener(tmp_path / name, "wb") as dst:
            shutil.copyfileobj(src, dst)
    (tmp_path / "tmp.jsonl").unlink()
    data = DataConfig(sources=[{"type": "jsonl", "path": str(tmp_path)}])
    (src,) = plan(data)
    assert [u.kind for u in src.units] == ["jsonl_stream", "jsonl_stream", "jsonl"]  # b.gz, c.zst, plain
    assert sorted(_docs([src], data)) == sorted(docs)
    assert [r.where for r in read_unit(src.units[0])][:2] == [
        f"{tmp_path / 'b.jsonl.gz'}:1",
        f"{tmp_path / 'b.jsonl.gz'}:2",
    ]

    tree = tmp_path / "texts"
    tree.mkdir()
    with gzip.open(tree / "a.txt.gz", "wt", encoding="utf-8") as handle:
        handle.write(docs[0])
    text = DataConfig(sources=[{"type": "text", "path": str(tree), "glob": "**/*.txt.gz"}])
    assert _docs(plan(text), text) == [docs[0]]


@pytest.mark.parametrize("suffix", [".gz", ".zst"])
def test_a_broken_compressed_file_is_named_up_front_or_where_its_stream_breaks(tmp_path, suffix):
    import gzip

    import zstandard

    name = {".gz": "gzip", ".zst": "zstd"}[suffix]
    (tmp_path / f"fake.jsonl{suffix}").write_bytes(b'{"text": "plain, not compressed"}\n')
    with pytest.raises(InputError, match=rf"data.sources\[0\].path: .*fake.jsonl{suffix}: not a {name} file"):
        plan(DataConfig(sources=[{"type": "jsonl", "path": str(tmp_path)}]))
    (tmp_path / f"fake.jsonl{suffix}").unlink()
    content = "".join(json.dumps({"text": text_doc(i)}) + "\n" for i in range(2000)).encode()
    payload = gzip.compress(content) if suffix == ".gz" else zstandard.ZstdCompressor().compress(content)
    (tmp_path / f"cut.jsonl{suffix}").write_bytes(payload[: len(payload) // 2])  # truncated mid-stream
    (src,) = plan(DataConfig(sources=[{"type": "jsonl", "path": str(tmp_path)}]))
    records = list(read_unit(src.units[0]))
    kept, last = [r for r in records if r.text is not None], records[-1]
    assert 0 < len(kept) < 2000 and last.reason == "corrupt_compressed_stream"
    assert [r.reason for r in records[:-1] if r.reason] in ([], ["malformed_json"])  # the line cut in two
    assert last.where.startswith(f"{tmp_path / f'cut.jsonl{suffix}'}:{len(records)} (")


def test_zstd_files_of_several_frames_are_read_whole(tmp_path):
    import zstandard

    first, second = (f"{json_line(text_doc(i))}" for i in range(2))
    streamed = zstandard.ZstdCompressor().compressobj()  # a frame without a content size
    (tmp_path / "two.jsonl.zst").write_bytes(
        zstandard.ZstdCompressor().compress(first.encode()) + streamed.compress(second.encode()) + streamed.flush()
    )
    (src,) = plan(DataConfig(sources=[{"type": "jsonl", "path": str(tmp_path)}]))
    assert [r.text for r in read_unit(src.units[0])] == [text_doc(0), text_doc(1)]


@pytest.mark.parametrize("suffix", ["", ".gz"])
def test_a_lone_surrogate_is_invalid_utf8_at_its_line_and_a_bom_is_stripped(tmp_path, suffix):
    import gzip

    lines = "\ufeff" + json_line("first") + '{"text": "half a pair \\ud800 here"}\n' + json_line("third")
    path = tmp_path / f"odd.jsonl{suffix}"
    path.write_bytes(gzip.compress(lines.encode()) if suffix else lines.encode())
    (src,) = plan(DataConfig(sources=[{"type": "jsonl", "path": str(tmp_path)}]))
    records = [r for u in src.units for r in read_unit(u)]
    assert [(r.text, r.reason, r.where) for r in records] == [
        ("first", None, f"{path}:1"),
        (None, "invalid_utf8", f"{path}:2"),
        ("third", None, f"{path}:3"),
    ]
    (tmp_path / "bom.txt").write_bytes("\ufeffa text file".encode())
    text = DataConfig(sources=[{"type": "text", "path": str(tmp_path / "bom.txt")}])
    assert _docs(plan(text), text) == ["a text file"]


CONTROL_DOCS = [
    "a NUL\x00here",
    "colour \x1b[31mred\x1b[0m",
    "tab\tand\nnewline\x0cform feed",
    "DEL\x7f C1\x85",
    "\x00\x00",
]


@pytest.mark.parametrize("mode", ["strip", "reject", "keep"])
def test_control_characters_are_stripped_rejected_or_kept(tmp_path, mode):
    class Chars:  # a tokenizer of one id per character, enough to read back what was kept
        eos_id = -1

        def encode_batch(self, texts):
            return [[ord(c) for c in t] for t in texts]

    write_jsonl(tmp_path / "c.jsonl", CONTROL_DOCS)
    data = DataConfig(sources=[{"type": "jsonl", "path": str(tmp_path)}], control_chars=mode)
    (src,) = plan(data)
    result = process_unit(src.units[0], Chars(), data, np.dtype(np.int32))
    kept = "".join(chr(t) if t >= 0 else "|" for t in result.tokens.tolist()).split("|")[:-1]
    where = [f"{tmp_path / 'c.jsonl'}:{i}" for i in range(1, 6)]
    if mode == "strip":  # the default
        assert kept == ["a NULhere", "colour [31mred[0m", "tab\tand\nnewline\x0cform feed", "DEL C1"]
        assert result.stripped.to_dict() == {
            "counts": {"control_chars": 3},
            "examples": {"control_chars": where[:2] + where[3:4]},
        }
        assert result.rejected.to_dict()["counts"] == {"too_short": 1}  # nothing left of the NUL-only one
    elif mode == "reject":
        assert kept == [CONTROL_DOCS[2]]
        assert result.rejected.to_dict() == {
            "counts": {"control_chars": 4},
            "examples": {"control_chars": where[:2] + where[3:]},
        }
    else:
        assert kept == CONTROL_DOCS and result.rejected.total == 0 and result.stripped.total == 0
    assert DataConfig().control_chars == "strip"
    assert clean("x\r\ny\x00", data)[0] == ("x\ny\x00" if mode != "strip" else "x\ny")
