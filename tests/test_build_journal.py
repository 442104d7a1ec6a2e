"""The build journal: append-only, torn last lines, group-committed fsyncs, run state derived from it."""

import asyncio
import json
import os

import pytest

from extes.llm.journal import Journal, JournalError, read_journal
from extes.selfchat.state import RunState


def test_torn_last_line_is_skipped_and_never_glued_to_new_records(tmp_path, capsys):
    path = tmp_path / "journal.jsonl"
    with Journal(path) as j:
        j.append("request", id="r1-000001", round=1, scenario="x")
    with path.open("a") as fh:
        fh.write('{"type": "response", "id": "r1-00')  # the crash
    assert [r["type"] for r in read_journal(path)] == ["request"]
    assert "line 2" in capsys.readouterr().err
    with pytest.raises(JournalError, match="line 2"):
        read_journal(path, strict=True)
    with Journal(path) as j:
        j.append("abandoned", id="r1-000001", charged=0.1)
    assert [r["type"] for r in read_journal(path)] == ["request", "abandoned"]
    lines = path.read_text().splitlines()
    assert len(lines) == 3 and json.loads(lines[2])["type"] == "abandoned"  # torn bytes kept on their own line


def test_concurrent_syncs_share_fsyncs(tmp_path, monkeypatch):
    calls = []
    real = os.fsync

    def counting(fd):
        calls.append(fd)
        real(fd)

    monkeypatch.setattr(os, "fsync", counting)
    j = Journal(tmp_path / "journal.jsonl")

    async def writer(i):
        await j.append_async("retry", id=f"r1-{i:06d}", attempt=1)

    async def go():
        await asyncio.gather(*(writer(i) for i in range(20)))

    asyncio.run(go())
    j.close()
    assert len(read_journal(tmp_path / "journal.jsonl")) == 20
    assert j._synced == 20 and 1 <= len(calls) < 20


def test_state_counts_unsettled_and_undecided_requests(tmp_path):
    with Journal(tmp_path / "journal.jsonl") as j:
        for n in (1, 2, 3):
            j.append("request", id=f"r1-{n:06d}", round=1, scenario="x", reserved=0.5)
        j.append("response", id="r1-000001", text="{}", usage={"prompt_tokens": 1, "completion_tokens": 1}, cost=0.25)
        j.append("response", id="r1-000002", text="{}", usage={"prompt_tokens": 1, "completion_tokens": 1}, cost=0.25)
        j.append("decision", id="r1-000001", dialogue_id="gen-r1-000001", round=1, scenario="x",
                 status="rejected", reasons=["not_json: x"], dialogue=None)
    st = RunState.load(tmp_path)
    assert st.unsettled() == ["r1-000003"] and st.undecided() == ["r1-000002"]
    assert st.spent == pytest.approx(0.5) and st.next_seq(1) == 4 and st.next_seq(2) == 1
