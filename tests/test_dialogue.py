import json

import pytest

from extes.dialogue import (
    DataError,
    Dialogue,
    Turn,
    load_dialogues,
    read_file,
    to_chat_messages,
    write_extes_json,
    write_jsonl,
)

EXTES = [
    {"scene": "Breakups or Divorce", "description": "Ana, 31, split up with her partner of six years.",
     "content": [
         {"User": "Hi. I don't know where to start."},
         {"AI": "Hello, I'm here. Take your time.", "AI Strategy": "Others"},
         {"User": "He moved out yesterday."},
         {"AI": {"text": "That must feel so empty.", "AI Strategy": "Empathetic Statements"}},
         {"User": "It does."},
         {"AI": "What has the first night been like?", "AI strategy": "clarification"},
         {"User": "Quiet."},
         {"AI": "Quiet can be loud after a loss."},
     ]},
]


def _write(tmp_path, name, obj):
    p = tmp_path / name
    p.write_text(obj if isinstance(obj, str) else json.dumps(obj), encoding="utf-8")
    return p


def test_extes_reader_tolerates_variants(tmp_path):
    [d] = load_dialogues(_write(tmp_path, "x.data", EXTES))  # format by content, not by name
    assert d.source == "extes" and d.scene == "Breakups or Divorce"
    assert [t.role for t in d.turns] == ["user", "assistant"] * 4
    assert [t.strategy for t in d.turns if t.role == "assistant"] == [
        "Others", "Empathetic Statements", "Clarification", None]
    assert d.turns[3].text == "That must feel so empty."


def test_esconv_reader_real_sample(shared_data):
    path = shared_data / "esconv" / "FailedESConv.sample.json"
    ds = load_dialogues(path)
    assert len(ds) == 98
    assert all(d.source == "esconv" for d in ds)
    from extes.taxonomy import ESCONV_STRATEGY_NAMES
    labels = {t.strategy for d in ds for t in d.turns if t.role == "assistant"}
    assert labels <= set(ESCONV_STRATEGY_NAMES)
    assert all(t.text == t.text.strip() for d in ds for t in d.turns)  # trailing newlines gone
    raw = {t.meta.get("raw_strategy") for d in ds for t in d.turns} - {None}
    assert "Questions" in raw  # spelling variants are normalised, and the original is kept
    merged = load_dialogues(path, merge_consecutive=True)
    assert len(merged) == 98
    for d in merged:
        assert all(a.role != b.role for a, b in zip(d.turns, d.turns[1:]))
    assert sum(len(d.turns) for d in merged) < sum(len(d.turns) for d in ds)


def test_esconv_seeker_supporter_layout(tmp_path):
    rec = [{"problem_type": "job crisis", "situation": "laid off", "emotion_type": "anxiety",
            "dialog": [{"speaker": "seeker", "annotation": {}, "content": "I lost my job."},
                       {"speaker": "supporter", "annotation": {"strategy": "Question"}, "content": "When?"}]}]
    [d] = load_dialogues(_write(tmp_path, "esconv.json", rec))
    assert (d.scene, d.description) == ("job crisis", "laid off")
    assert d.turns[1].strategy == "Question" and d.meta["emotion_type"] == "anxiety"


def test_jsonl_round_trip_is_lossless(tmp_path):
    ds = load_dialogues(_write(tmp_path, "x.json", EXTES))
    ds[0].meta["note"] = {"nested": [1, 2]}
    ds[0].turns[0].meta["x"] = 1
    p = write_jsonl(ds, tmp_path / "out.jsonl")
    back = load_dialogues(p)
    assert [d.to_dict() for d in back] == [d.to_dict() for d in ds]


def test_extes_writer_round_trip(tmp_path):
    ds = load_dialogues(_write(tmp_path, "x.json", EXTES))
    p = write_extes_json(ds, tmp_path / "out.json")
    back = load_dialogues(p)
    assert [(t.role, t.text, t.strategy) for t in back[0].turns] == [(t.role, t.text, t.strategy) for t in ds[0].turns]
    assert json.loads(p.read_text())[0]["content"][1] == {"AI": "Hello, I'm here. Take your time.", "AI Strategy": "Others"}


@pytest.mark.parametrize("content,match", [
    ("not json at all", "not JSON or JSONL"),
    ("[1, 2", "not valid JSON"),
    (json.dumps([{"scene": "x", "description": "y"}]), "record 0: unknown key layout"),
    (json.dumps([{"scene": "x", "content": [{"User": "a"}, {"Bot": "b"}]}]), "record 0, turn 1: a turn needs"),
    (json.dumps([{"scene": "x", "content": []}]), "record 0: no turns"),
    (json.dumps([{"scene": "x", "content": [{"User": "a"}, {"AI": "b", "AI Strategy": "Mind reading"}]}]),
     "unknown extes strategy label 'Mind reading' at .*record 0, turn 1"),
    ('{"id": "a", "turns": [{"role": "user", "text": "hi"}]}\n{"id": "b", "turns": []}\n', "record 1"),
])
def test_bad_input_names_file_record_and_reason(tmp_path, content, match):
    p = _write(tmp_path, "bad.json", content)
    with pytest.raises(DataError, match=match) as exc:
        read_file(p)
    assert "bad.json" in str(exc.value)


def test_lenient_skips_and_reports(tmp_path):
    recs = EXTES + [{"scene": "x", "content": [{"Robot": "?"}]}, EXTES[0]]
    skipped: list[str] = []
    ds = load_dialogues(_write(tmp_path, "x.json", recs), lenient=True, skipped=skipped)
    assert len(ds) == 2 and len(skipped) == 1 and "record 1" in skipped[0]
    assert len({d.id for d in ds}) == 2  # duplicate records get distinct ids


def test_missing_path():
    with pytest.raises(FileNotFoundError):
        load_dialogues("/nonexistent/folder")


def test_chat_messages_with_strategies_and_scene():
    d = Dialogue("d1", "extes", "Academic Stress", "Exams next week.",
                 [Turn("user", "I'm scared."), Turn("assistant", "That's understandable.", "Emotional Validation")])
    msgs = to_chat_messages(d, system_prompt="SYS", strategies=True, with_scene=True)
    assert msgs[0]["role"] == "system" and "Academic Stress" in msgs[0]["content"] and msgs[0]["content"].startswith("SYS")
    assert msgs[2]["content"] == "[Emotional Validation] That's understandable."
    assert to_chat_messages(d, system_prompt=None)[0] == {"role": "user", "content": "I'm scared."}
