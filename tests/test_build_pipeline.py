"""`extes build` end to end against a scripted OpenAI-compatible server on loopback: validation
outcomes, retries, budget stop, rounds, resume after a simulated crash and after kill -9."""

import asyncio
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from extes.cli import main
from extes.dialogue import load_dialogues
from extes.llm.budget import Price
from extes.llm.journal import read_journal
from extes.selfchat.pipeline import BuildConfig, Builder
from extes.selfchat.prompt import build_messages, prompt_sha
from extes.testing.scripted import ScriptedServer, write_seed_file

SCENES = ["Academic Stress", "Caregiver Support", "Breakups or Divorce"]
PROPS = {"Academic Stress": 1 / 3, "Caregiver Support": 1 / 3, "Breakups or Divorce": 1 / 3}


@pytest.fixture
def seeds(tmp_path):
    return write_seed_file(tmp_path / "seeds" / "seeds.json", SCENES)


def config(seeds, out, srv, **kw):
    base = dict(seeds=[seeds], out=out, model="scripted", target=3, base_url=srv.base_url, api_key="k",
                concurrency=2, price=Price(1.0, 2.0), proportions=PROPS, backoff_base=0.01, progress=False,
                max_tokens=1000)
    base.update(kw)
    return BuildConfig(**base)


def build(cfg):
    return asyncio.run(Builder(cfg).run())


def records(out, type_=None):
    return [r for r in read_journal(out / "journal.jsonl") if type_ is None or r["type"] == type_]


def test_outcomes_with_exact_counts(seeds, tmp_path):
    out = tmp_path / "run"
    script = ["good", "fenced", "malformed", "missing_strategy", {"kind": "429", "retry_after": "0.05"},
              "prose", "short", "copy", "dup", "500", "junk", "good", "good", "good"]
    with ScriptedServer(script) as srv:
        res = build(config(seeds, out, srv, target=6, concurrency=1))
        assert srv.count() == 14 and srv.count(429) == 1 and srv.count(500) == 1
    # 12 answered requests: good, fenced, prose, good, good, good accepted; the rest judged
    assert res.stop_reason == "done" and res.accepted == 6 and res.requests == 12 and res.retries == 2
    assert dict(res.counts) == {"accepted": 6, "rejected": 5, "needs_review": 1}
    decisions = {r["id"]: r for r in records(out, "decision")}
    codes = sorted(c.split(":")[0] for d in decisions.values() if d["status"] != "accepted" for c in d["reasons"][:1])
    assert codes == ["copy_of_example", "missing_strategy", "near_duplicate", "not_json", "not_json", "too_short"]
    assert len(records(out, "retry")) == 2
    resp = records(out, "response")
    assert len(resp) == 12 and sum(r["cost"] for r in resp) == pytest.approx(12 * 0.002)
    assert res.spent == pytest.approx(0.024)
    assert all(r["template_version"] for r in records(out, "request"))
    # each request's prompt can be rebuilt exactly from its record
    by_id = {d.id: d for d in load_dialogues(seeds)}
    assert all(prompt_sha(build_messages(by_id[r["example_id"]], r["scenario"])) == r["prompt_sha"]
               for r in records(out, "request"))
    # exports: ExTES JSON in the original format + JSONL + per-round stats
    exported = json.loads((out / "generated.json").read_text())
    assert len(exported) == 6 and set(exported[0]) == {"scene", "description", "content"}
    assert all("AI Strategy" in c for d in exported for c in d["content"] if "AI" in c)
    assert len(load_dialogues(out / "extes.jsonl")) == 6 + 3
    stats = json.loads((out / "rounds.json").read_text())["rounds"][0]
    assert stats["acceptance_rate"] == pytest.approx(0.5) and stats["retries"] == 2
    assert stats["rejection_reasons"]["not_json"] == 2 and stats["scenarios_covered"] == 3
    total = json.loads((out / "rounds.json").read_text())["total"]
    assert total["by_model"] == {"scripted": {"requests": 12, "prompt_tokens": 12000, "completion_tokens": 6000,
                                              "cost_usd": pytest.approx(0.024)}}
    assert "Overview" in (out / "stats.txt").read_text()
    # the quota is met exactly: 2 per scenario
    assert sorted(d["scene"] for d in exported) == sorted(SCENES * 2)


def test_budget_stops_before_max_cost_then_resumes_with_more(seeds, tmp_path):
    out = tmp_path / "run"
    # worst case per request = 1000 max_tokens * $2/M = $0.002 (prompt price 0); real cost $0.001
    with ScriptedServer() as srv:
        cfg = config(seeds, out, srv, target=10, price=Price(0.0, 2.0), max_cost=0.0045)
        res = build(cfg)
        assert res.stop_reason == "budget" and srv.count() == 3
        assert res.spent == pytest.approx(0.003) and res.spent <= 0.0045
        stop = records(out, "budget_stop")[-1]
        assert stop["spent"] + stop["next_worst_case"] > 0.0045
        # same command with a higher cap continues; nothing is asked twice
        res2 = build(config(seeds, out, srv, target=10, price=Price(0.0, 2.0), max_cost=1.0))
        assert res2.stop_reason == "done" and res2.accepted == 10 and srv.count() == 10
        assert len({e["id"] for e in srv.log}) == 10


def test_cli_exit_codes_and_budget_message(seeds, tmp_path, capsys):
    out = tmp_path / "run"
    with ScriptedServer() as srv:
        rc = main(["build", "--seeds", str(seeds), "--out", str(out), "--model", "scripted", "--base-url",
                   srv.base_url, "--target", "5", "--max-cost", "0.0045", "--price-in", "0", "--price-out", "2",
                   "--max-tokens", "1000", "--no-progress"])
        err = capsys.readouterr().err
        assert rc == 3 and "stopped before --max-cost" in err and "estimate for scripted" in err
        rc = main(["build", "--seeds", str(seeds), "--out", str(out), "--model", "scripted", "--base-url",
                   srv.base_url, "--target", "5", "--no-progress", "--concurrency", "3"])
        assert rc == 0 and "resuming: 3 accepted" in capsys.readouterr().err
    assert len(json.loads((out / "generated.json").read_text())) == 5
    with ScriptedServer(["401"]) as srv:
        rc = main(["build", "--seeds", str(seeds), "--out", str(tmp_path / "r2"), "--model", "scripted",
                   "--base-url", srv.base_url, "--target", "2", "--no-progress"])
        assert rc == 2 and "refused" in capsys.readouterr().err
    rc = main(["build", "--seeds", str(tmp_path / "nope"), "--out", str(tmp_path / "r3"), "--model", "m",
               "--base-url", "http://127.0.0.1:9", "--target", "1"])
    assert rc == 2 and "nope" in capsys.readouterr().err


def test_junk_model_exhausts_attempts_without_crashing(seeds, tmp_path):
    out = tmp_path / "run"
    with ScriptedServer(default="junk") as srv:
        res = build(config(seeds, out, srv, target=2, max_attempts_factor=3))
    assert res.stop_reason == "exhausted" and res.accepted == 0 and srv.count() == 6
    assert all(d["status"] == "rejected" and d["reasons"] for d in records(out, "decision"))


def test_rounds_draw_examples_from_earlier_rounds(seeds, tmp_path):
    out = tmp_path / "run"
    with ScriptedServer() as srv:
        res = build(config(seeds, out, srv, target=6, rounds=2, concurrency=3))
    assert res.accepted == 6 and [r["accepted_final"] for r in res.rounds] == [3, 3]
    reqs = records(out, "request")
    seed_ids = {d.id for d in load_dialogues(seeds)}
    r1 = {d["dialogue_id"] for d in records(out, "decision") if d["round"] == 1 and d["status"] == "accepted"}
    assert all(r["example_id"] in seed_ids for r in reqs if r["round"] == 1)
    assert all(r["example_id"] in seed_ids | r1 for r in reqs if r["round"] == 2)
    assert any(r["example_id"] in r1 for r in reqs if r["round"] == 2)  # same-scene preference, 1 seed vs 1 new


def test_resume_after_simulated_crash_does_not_resend_paid_requests(seeds, tmp_path):
    out = tmp_path / "run"
    with ScriptedServer() as srv:
        build(config(seeds, out, srv, target=6, concurrency=1))
        assert srv.count() == 6
    # cut the journal as a crash would: after the 4th response (its decision lost) and the 5th request
    lines = (out / "journal.jsonl").read_text().splitlines(keepends=True)
    kept, responses = [], 0
    for line in lines:
        rec = json.loads(line)
        if rec["type"] == "response":
            responses += 1
        if rec["type"] == "decision" and responses == 4:
            continue
        if rec["type"] == "request" and rec["id"] == "r1-000005":
            kept.append(line)
            break
        kept.append(line)
    (out / "journal.jsonl").write_text("".join(kept) + '{"type": "resp')  # plus a torn last line
    with ScriptedServer() as srv:
        res = build(config(seeds, out, srv, target=6, concurrency=1))
        # 4 paid responses reused (one judged now), r1-000005 abandoned, 2 new requests with new ids
        assert srv.count() == 2 and [e["id"] for e in srv.log] == ["r1-000006", "r1-000007"]
    assert res.accepted == 6
    aband = records(out, "abandoned")
    assert [a["id"] for a in aband] == ["r1-000005"] and aband[0]["charged"] > 0
    assert res.spent == pytest.approx(6 * 0.002 + aband[0]["charged"])
    ids = [d.id for d in load_dialogues(out / "generated.jsonl")]
    assert len(ids) == len(set(ids)) == 6 and "gen-r1-000004" in ids


def test_kill_9_mid_run_then_resume(seeds, tmp_path):
    out = tmp_path / "run"
    env = {**os.environ, "OPENAI_API_KEY": "k"}
    with ScriptedServer(delay=0.2) as srv:
        cmd = [sys.executable, "-m", "extes.cli", "build", "--seeds", str(seeds), "--out", str(out),
               "--model", "scripted", "--base-url", srv.base_url, "--target", "14", "--concurrency", "2",
               "--no-progress", "--price-in", "1", "--price-out", "2"]
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if (out / "journal.jsonl").exists() and len(
                    [r for r in read_journal(out / "journal.jsonl") if r["type"] == "decision"]) >= 4:
                break
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        first = read_journal(out / "journal.jsonl")
        accepted_before = {r["dialogue_id"] for r in first if r["type"] == "decision" and r["status"] == "accepted"}
        paid_before = {r["id"] for r in first if r["type"] == "response"}
        sent_before = len(srv.log)
        assert 4 <= len(accepted_before) < 14
        assert not [r for r in first if r["type"] == "run_end"]  # really killed mid-run
        done = subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=120)
        assert done.returncode == 0, done.stderr.decode()[-2000:]
        after_ids = [e["id"] for e in srv.log[sent_before:]]
    assert not paid_before & set(after_ids)          # no paid request sent again
    assert len({e["id"] for e in srv.log}) == len(srv.log)  # no request id ever sent twice
    final = load_dialogues(out / "generated.jsonl")
    ids = [d.id for d in final]
    assert len(ids) == len(set(ids)) == 14
    assert accepted_before <= set(ids)               # nothing accepted was lost
    recs = read_journal(out / "journal.jsonl")
    sent = {r["id"] for r in recs if r["type"] == "request"}
    settled = {r["id"] for r in recs if r["type"] in ("response", "abandoned", "error")}
    assert sent == settled and {e["id"] for e in srv.log} <= sent


def test_one_build_per_folder(seeds, tmp_path):
    with ScriptedServer() as srv:
        first = Builder(config(seeds, tmp_path / "run", srv))
        with pytest.raises(ValueError, match="another `extes build` is running"):
            Builder(config(seeds, tmp_path / "run", srv))
        first.close()
        assert build(config(seeds, tmp_path / "run", srv)).accepted == 3


def test_estimate_only_with_the_repository_seeds(repo_root, tmp_path, capsys):
    rc = main(["build", "--seeds", str(repo_root / "seeds"), "--out", str(tmp_path / "run"), "--model",
               "gpt-4o-mini", "--target", "1000", "--estimate-only"])
    err = capsys.readouterr().err
    assert rc == 0 and "estimate for gpt-4o-mini: ~1250 requests" in err
    assert not (tmp_path / "run" / "journal.jsonl").exists()  # nothing sent, nothing journaled


def test_a_dead_server_stops_the_run_after_three_failed_requests(seeds, tmp_path):
    from extes.selfchat.pipeline import FatalRequestError

    out = tmp_path / "run"
    with ScriptedServer(["500", "500", "good", "500", "500", "500", "500", "500", "500", "500"]) as srv:
        with pytest.raises(FatalRequestError, match="3 requests in a row failed"):
            build(config(seeds, out, srv, target=5, concurrency=1, max_retries=1))
        assert srv.count() == 9  # 1 failed (2 attempts), 1 good, then 3 failed (6 attempts)
    errors = records(out, "error")
    assert len(errors) == 4 and all(e["attempts"] == 2 for e in errors)
    assert records(out, "run_end")[-1]["reason"] == "fatal"
    assert len(json.loads((out / "generated.json").read_text())) == 1  # exported all the same
