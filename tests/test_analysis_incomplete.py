"""Incomplete designs and repeated votes: k arms shown two at a time, pairs never compared, aspects without
votes, and a comparison voted twice. Every pair and aspect is reported (console, JSON, report.md,
tables.tex), and a repeated vote is refused or dropped with a count, never counted twice."""

import itertools
import json

import pandas as pd
import pytest

from extes.analysis import ASPECTS, AnalysisInputError, bradley_terry, load_votes, win_tie_loss
from extes.cli import main

ARMS = ["a", "b", "c", "d", "e"]
NEVER = {("a", "e"), ("c", "d")}  # pairs the design never shows together
ASKED = [x for x in ASPECTS if x != "suggestion"]  # "suggestion" gets no vote at all


def design(conversations: int = 80) -> pd.DataFrame:
    """Five arms, two panes per conversation, eight of the ten pairs in rotation; one vote per aspect."""
    pairs = [p for p in itertools.combinations(ARMS, 2) if p not in NEVER]
    rows = []
    for i in range(conversations):
        x, y = pairs[i % len(pairs)]
        if i % 2:
            x, y = y, x  # either pane
        for j, aspect in enumerate(ASKED):
            rows.append((f"c{i:03d}", aspect, x, y, ["a", "b", "tie", "a"][(i + j) % 4], f"p{i:03d}"))
    return pd.DataFrame(rows, columns=["session_id", "aspect", "arm_a", "arm_b", "outcome", "rater_id"])


@pytest.fixture()
def votes_csv(tmp_path):
    path = tmp_path / "votes.csv"
    design().to_csv(path, index=False)
    return path


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_every_pair_and_aspect_is_a_row_of_the_table():
    result = win_tie_loss(design(), "a", n_boot=0)
    rows = result.rows.set_index(["opponent", "aspect"])
    assert len(rows) == 4 * 5  # four opponents x five aspects, none dropped
    assert rows.loc[("e", "overall"), "status"] == "never compared" and rows.loc[("e", "overall"), "n"] == 0
    assert rows.loc[("b", "suggestion"), "status"] == "no votes"
    assert rows.loc[("b", "overall"), "status"] == "compared" and rows.loc[("b", "overall"), "n"] == 10
    assert (result.rows["n"] > 0).sum() == 3 * 4 and result.tests <= 12  # tests: compared cells only
    assert result.table().set_index("comparison").loc["a vs e", "fluency"] == "never compared"
    assert result.omissions() == ["no votes at all on suggestion", "a never compared with e on any aspect"]


def test_bradley_terry_reports_every_arm_and_a_disconnected_design():
    bt = bradley_terry(design(), n_boot=0)
    assert set(bt.ratings.query("aspect == 'overall'")["arm"]) == set(ARMS)
    assert bt.ratings.query("aspect == 'suggestion'")["n"].tolist() == [0] * 5
    # the design is connected; drop every comparison between {a, b} and {c, d, e} to split it in two
    votes = design()
    side = votes[["arm_a", "arm_b"]].isin(["a", "b"])
    only = votes[side["arm_a"] == side["arm_b"]]
    split = bradley_terry(only, n_boot=0)
    assert any("2 groups never compared with each other ({a b} | {c d e})" in n for n in split.notes)
    assert not any("groups never compared" in n for n in bt.notes)


def test_analyze_console_json_and_report_say_never_compared(capsys, votes_csv, tmp_path):
    out_dir = tmp_path / "r"
    code, out, _ = run(capsys, "analyze", "--votes", votes_csv, "--reference", "a", "--n-boot", 20, "--out", out_dir)
    assert code == 0
    table = out.split("\nDetails")[0]
    for opp in ["b", "c", "d", "e"]:
        assert f"a vs {opp}" in table
    assert "never compared" in table and "no votes" in table
    assert "Not in the votes: no votes at all on suggestion; a never compared with e on any aspect." in out
    assert "Win rate, row arm vs column arm (suggestion; ties = half)\nno votes" in out
    overall = out.split("Win rate, row arm vs column arm (overall; ties = half)\n")[1]
    assert overall.count("never compared") == 4  # a-e and c-d, both ways
    report = (out_dir / "report.md").read_text()
    assert "| a vs e | never compared |" in report and "### suggestion\n\nno votes" in report
    assert "| overall | - | e | no votes |" not in report  # e has overall votes (with b, c, d)
    assert "| suggestion | - | a | no votes | - | - | 0 |" in report
    code, out, _ = run(capsys, "analyze", "--votes", votes_csv, "--reference", "a", "--n-boot", 0, "--json")
    payload = json.loads(out)
    assert len(payload["rows"]) == 20 and payload["omissions"][1] == "a never compared with e on any aspect"
    assert payload["win_rate"]["overall"]["rates"][0][4] is None  # a vs e
    assert payload["win_rate"]["overall"]["counts"][2][3] == 0  # c vs d


def test_report_table9_lists_every_pair(capsys, votes_csv, tmp_path):
    out_dir = tmp_path / "rep"
    assert main(["report", "--votes", str(votes_csv), "--reference", "a", "--n-boot", "0", "--out", str(out_dir)]) == 0
    capsys.readouterr()
    md = (out_dir / "report.md").read_text()
    assert "| vs e | - | - | - | 0 |" in md
    assert "No votes at all on suggestion: its cells read - with n = 0." in md
    assert "Never compared with a (- with n = 0): e." in md
    tex = (out_dir / "tables.tex").read_text()
    assert "vs e & - & - & - & 0" in tex and "Never compared with a" in tex


def test_a_repeated_vote_is_refused_with_its_rows(capsys, tmp_path):
    frame = design(4)
    repeat = frame.iloc[[2]].assign(outcome="b", arm_a=frame.iloc[2]["arm_b"], arm_b=frame.iloc[2]["arm_a"])
    path = tmp_path / "dup.csv"
    pd.concat([frame, repeat], ignore_index=True).to_csv(path, index=False)
    code, _, err = run(capsys, "analyze", "--votes", path, "--reference", "a")
    assert code == 2
    assert "the same comparison voted more than once" in err
    assert f"line {len(frame) + 2} (session_id='c000', aspect='comforting'" in err and "repeats line 4" in err
    with pytest.raises(AnalysisInputError, match="voted more than once"):
        win_tie_loss(pd.concat([frame, repeat], ignore_index=True), "a")
    # counted twice before: n 2 for one conversation's comparison
    code, out, err = run(capsys, "analyze", "--votes", path, "--reference", "a", "--duplicates", "last", "--json",
                         "--n-boot", 0)
    payload = json.loads(out)
    assert code == 0 and "1 duplicate vote(s) dropped (--duplicates last" in " ".join(payload["notes"])
    cell = next(r for r in payload["rows"] if r["opponent"] == "b" and r["aspect"] == "comforting")
    assert (cell["n"], cell["win"], cell["tie"]) == (1, 1.0, 0.0)  # the last vote kept (a won), not the tie
    first = load_votes(path, duplicates="first")
    assert len(first) == len(frame) and first.attrs["extes_duplicates"] == ("first", 1)
    code, out, err = run(capsys, "analyze", "--votes", path, "--reference", "a", "--duplicates", "first",
                         "--n-boot", 0)
    assert code == 0 and "warning: 1 duplicate vote(s) dropped (--duplicates first" in err


def test_other_raters_and_sessions_are_not_duplicates():
    frame = design(4)
    other_rater = frame.assign(rater_id="judge-1")
    assert len(load_votes(pd.concat([frame, other_rater], ignore_index=True))) == 2 * len(frame)
    other_aspect_or_pair = frame.assign(session_id=frame["session_id"] + "-b")
    assert len(load_votes(pd.concat([frame, other_aspect_or_pair], ignore_index=True))) == 2 * len(frame)
