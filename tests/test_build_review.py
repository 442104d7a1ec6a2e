"""The review functions behind `extes review` (no browser): queue, edit, accept/discard, journal
entries with reviewer/time/before/after, exports and the human-adjustment rate per round."""

import asyncio
import json

import pytest

from extes.cli import main
from extes.llm.budget import Price
from extes.llm.journal import read_journal
from extes.selfchat.pipeline import BuildConfig, Builder
from extes.selfchat.review import (
    ReviewError,
    adjustment_rates,
    apply_review,
    build_review_app,
    load_queue,
    turns_table,
)
from extes.testing.scripted import ScriptedServer, write_seed_file

SCENES = ["Academic Stress", "Caregiver Support"]


@pytest.fixture
def run(tmp_path):
    seeds = write_seed_file(tmp_path / "seeds.json", SCENES)
    out = tmp_path / "run"
    script = ["good", "missing_strategy", "short", "malformed", "good", "good"]
    with ScriptedServer(script) as srv:
        cfg = BuildConfig(seeds=[seeds], out=out, model="scripted", target=4, base_url=srv.base_url,
                          api_key="k", concurrency=1, price=Price(1, 2), progress=False,
                          proportions={s: 0.5 for s in SCENES})
        res = asyncio.run(Builder(cfg).run())
    assert res.accepted == 4 and dict(res.counts) == {"accepted": 4, "needs_review": 1, "rejected": 2}
    return out


def test_queue_lists_needs_review_first_with_reasons(run):
    q = load_queue(run)
    assert [i["status"] for i in q] == ["needs_review", "rejected"]  # the malformed one has no dialogue
    assert q[0]["reasons"][0].startswith("missing_strategy") and q[1]["reasons"][0].startswith("too_short")
    rows = turns_table(q[0]["dialogue"])
    assert rows[3] == ["assistant", rows[3][1], ""]  # the missing strategy shows as an empty cell


def test_accept_after_edit_is_journaled_exported_and_counted(run):
    item = load_queue(run)[0]
    rows = turns_table(item["dialogue"])
    with pytest.raises(ReviewError, match="row 3: an AI turn needs a strategy"):
        apply_review(run, item["dialogue_id"], "accept", "dana", table=rows)
    with pytest.raises(ReviewError, match="reviewer"):
        apply_review(run, item["dialogue_id"], "accept", " ", table=rows)
    rows[3][2] = "EV"  # abbreviations are fine
    rows[1][1] = "Edited by a human reviewer to sound warmer."
    rec = apply_review(run, item["dialogue_id"], "accept", "dana", table=rows,
                       description=item["dialogue"]["description"])
    assert rec["reviewer"] == "dana" and rec["action"] == "accept" and rec["edited"] and rec["ts"]
    assert rec["before"]["turns"][1]["text"] != rec["after"]["turns"][1]["text"]
    assert rec["after"]["turns"][3]["strategy"] == "Emotional Validation"
    journal = [r for r in read_journal(run / "journal.jsonl") if r["type"] == "review"]
    assert len(journal) == 1
    exported = json.loads((run / "generated.json").read_text())
    assert len(exported) == 5 and any("Edited by a human" in c.get("AI", "") for d in exported for c in d["content"])
    with pytest.raises(ReviewError, match="no reviewable|already reviewed"):
        apply_review(run, item["dialogue_id"], "discard", "dana")
    rates = adjustment_rates(run)
    assert rates == [{"round": 1, "accepted": 5, "by_review": 1, "edited": 1, "reviewed": 1,
                      "human_adjustment_rate": pytest.approx(0.2)}]
    assert json.loads((run / "rounds.json").read_text())["total"]["human_adjustment_rate"] == pytest.approx(0.2)


def test_discard_removes_from_queue_and_export(run):
    rejected = load_queue(run)[1]
    apply_review(run, rejected["dialogue_id"], "discard", "lee")
    assert [i["status"] for i in load_queue(run)] == ["needs_review"]
    assert len(json.loads((run / "generated.json").read_text())) == 4
    assert adjustment_rates(run)[0]["human_adjustment_rate"] == 0.0
    with pytest.raises(ReviewError, match="action"):
        apply_review(run, rejected["dialogue_id"], "maybe", "lee")


def test_review_cli_rates_and_app_builds(run, capsys, tmp_path):
    assert main(["review", "--run", str(run), "--rates"]) == 0
    out = capsys.readouterr().out
    assert "round 1: 0/4" in out and "queue: 2" in out
    assert main(["review", "--run", str(tmp_path / "missing"), "--rates"]) == 2
    app = build_review_app(run, "dana")
    assert app is not None
