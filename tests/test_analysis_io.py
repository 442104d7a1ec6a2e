"""Votes/Ratings validation errors and all-or-nothing report writing."""

import pandas as pd
import pytest

from extes.analysis.io import AnalysisInputError, load_ratings, load_votes
from extes.analysis.report import write_csv_atomic, write_outputs

HEADER = "session_id,aspect,arm_a,arm_b,outcome\n"


def write(tmp_path, text, name="votes.csv"):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_missing_columns_are_named(tmp_path):
    path = write(tmp_path, "session_id,arm_a,arm_b\ns1,x,y\n")
    with pytest.raises(AnalysisInputError, match=r"votes.csv: missing votes column\(s\) aspect, outcome"):
        load_votes(path)


def test_bad_rows_are_listed_with_line_numbers_and_reasons(tmp_path):
    lines = [
        "s1,overall,x,y,a",  # line 2: fine
        "s1,overall,x,y,maybe",  # line 3: unknown outcome
        "s1,empathy,x,y,a",  # line 4: unknown aspect
        "s2,Overall,x,x,A",  # line 5: same arm twice (case of aspect/outcome is normalised)
        "s3,overall,,y,b",  # line 6: empty arm_a
    ]
    path = write(tmp_path, HEADER + "\n".join(lines) + "\n")
    with pytest.raises(AnalysisInputError) as info:
        load_votes(path)
    message = str(info.value)
    assert "unknown outcome" in message and "line 3 (outcome='maybe')" in message
    assert "unknown aspect" in message and "line 4 (aspect='empathy')" in message
    assert "arm_a == arm_b" in message and "line 5" in message
    assert "empty required field" in message and "line 6" in message
    assert "line 2" not in message


def test_only_the_first_offending_rows_are_listed(tmp_path):
    path = write(tmp_path, HEADER + "".join(f"s{i},overall,x,y,q\n" for i in range(12)))
    with pytest.raises(
        AnalysisInputError, match=r"unknown outcome .* in 12 rows: line 2 .*line 6 .*and 7 more"
    ):
        load_votes(path)


def test_empty_and_unreadable_inputs(tmp_path):
    with pytest.raises(AnalysisInputError, match="no votes"):
        load_votes(write(tmp_path, HEADER))
    with pytest.raises(AnalysisInputError, match="empty file"):
        load_votes(write(tmp_path, ""))
    with pytest.raises(FileNotFoundError, match="nowhere.csv"):
        load_votes(tmp_path / "nowhere.csv")
    assert load_votes(write(tmp_path, HEADER), allow_empty=True).empty


def test_dataframe_input_names_rows_and_normalises():
    frame = pd.DataFrame(
        {
            "session_id": [1, 2],
            "aspect": [" Fluency ", "overall"],
            "arm_a": ["x", "y"],
            "arm_b": ["y", "x"],
            "outcome": ["TIE", "b"],
            "rater_id": [7.0, None],
        }
    )
    got = load_votes(frame, where="store")
    assert got["session_id"].tolist() == ["1", "2"]
    assert got["aspect"].tolist() == ["fluency", "overall"]
    assert got["outcome"].tolist() == ["tie", "b"]
    assert got["rater_id"].tolist() == ["7", ""]
    with pytest.raises(AnalysisInputError, match=r"(?s)store: invalid votes.*row 1 \(outcome='c'\)"):
        load_votes(frame.assign(outcome=["a", "c"]), where="store")


def test_ratings_validation(tmp_path):
    with pytest.raises(AnalysisInputError, match=r"missing ratings column\(s\) label"):
        load_ratings(write(tmp_path, "item_id,rater_id\n1,a\n", "r.csv"))
    lone = write(tmp_path, "item_id,rater_id,label\n1,a,3\n2,b,4\n", "lone.csv")
    with pytest.raises(AnalysisInputError, match=r"(?s)every item has fewer than two raters.*line 2.*line 3"):
        load_ratings(lone)
    assert len(load_ratings(lone, require_pairs=False)) == 2
    dup = write(tmp_path, "item_id,rater_id,label\n1,a,3\n1,a,4\n1,b,4\n", "dup.csv")
    with pytest.raises(AnalysisInputError, match=r"(?s)repeated rating.*line 3"):
        load_ratings(dup)
    gap = write(tmp_path, "item_id,rater_id,label,aspect\n1,a,3,fluency\n1,b,4,\n", "gap.csv")
    with pytest.raises(AnalysisInputError, match=r"(?s)empty field.*line 3"):
        load_ratings(gap)


def test_write_outputs_is_all_or_nothing(tmp_path):
    out = tmp_path / "report"

    def boom(path):
        raise RuntimeError("plot failed")

    with pytest.raises(RuntimeError, match="plot failed"):
        write_outputs(out, {"a.txt": lambda p: p.write_text("a"), "b.png": boom})
    assert not out.exists()
    assert list(tmp_path.iterdir()) == []  # no temp directory left behind

    write_outputs(out, {"a.txt": lambda p: p.write_text("first")})
    (out / "keep.txt").write_text("mine")
    with pytest.raises(RuntimeError):
        write_outputs(out, {"a.txt": lambda p: p.write_text("second"), "b.png": boom})
    assert (out / "a.txt").read_text() == "first"
    write_outputs(out, {"a.txt": lambda p: p.write_text("second")})
    assert (out / "a.txt").read_text() == "second" and (out / "keep.txt").read_text() == "mine"


def test_write_csv_atomic_replaces_whole_file(tmp_path):
    path = tmp_path / "sub" / "x.csv"
    write_csv_atomic(pd.DataFrame({"a": [1, 2]}), path)
    write_csv_atomic(pd.DataFrame({"a": [3]}), path)
    assert path.read_text() == "a\n3\n"
    assert [p.name for p in path.parent.iterdir()] == ["x.csv"]
