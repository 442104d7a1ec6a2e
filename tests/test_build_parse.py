"""Parsing, normalisation, validation, dedup, quotas and budget arithmetic of `extes build`."""

import json

import pytest

from extes.dialogue import Dialogue, Turn
from extes.llm.budget import Budget, Price, estimate_run, load_prices, price_for
from extes.selfchat.dedup import NearDupIndex, TurnIndex, jaccard, shingles
from extes.selfchat.parse import ParseError, extract_json, parse_reply
from extes.selfchat.prompt import EXAMPLE_BEGIN, TEMPLATE_VERSION, build_messages
from extes.selfchat.quota import allocate, load_proportions, split_rounds
from extes.selfchat.validate import ACCEPTED, NEEDS_REVIEW, REJECTED, judge
from extes.taxonomy import SCENARIO_NAMES, STRATEGY_NAMES
from extes.testing.scripted import make_dialogue

SCENE = "Academic Stress"


def good(index=1, scene=SCENE):
    return make_dialogue(scene, index)


def test_extract_json_from_fences_prose_and_slips():
    obj = {"scene": SCENE, "content": [{"User": "a {brace} in a string"}]}
    text = json.dumps(obj)
    assert extract_json(text) == obj
    assert extract_json(f"Here you go:\n```json\n{text}\n```\nEnjoy!") == obj
    assert extract_json(f"Sure! {text} Hope it helps {{not json}}") == obj
    assert extract_json('{"scene": "x", "content": [{"User": "hi"},],}')["scene"] == "x"  # trailing commas
    with pytest.raises(ParseError, match="malformed JSON"):
        extract_json(text[: len(text) // 2])
    with pytest.raises(ParseError, match="empty"):
        extract_json("   ")
    with pytest.raises(ParseError, match="no JSON"):
        extract_json("I cannot help with that.")


def test_normalise_key_spellings_nested_ai_and_strategy_variants():
    raw = {
        "Scene": SCENE,
        "Situation": "Maya, 19, failed her first chemistry midterm and is afraid to tell her parents tonight.",
        "Dialogue": [
            {"user": "hi"},
            {"AI": {"text": "Hello, what is on your mind?", "strategy": "others"}},
            {"User": "exams"},
            {"ai": "That sounds like a lot.", "AI strategy": "Empathetic statement"},
            {"role": "user", "content": "yes"},
            {"role": "assistant", "content": "Tell me more?", "strategy": "Cla"},
            {"User": "ok"},
            {"AI": "You are not alone in this.", "AI Strategy": "Normalise experiences"},
        ],
    }
    p = parse_reply("```\n" + json.dumps(raw) + "\n```", SCENE)
    d = p.dialogue
    assert d.scene == SCENE and d.description.startswith("Maya")
    assert [t.role for t in d.turns] == ["user", "assistant"] * 4
    assert d.strategies == ["Others", "Empathetic Statements", "Clarification", "Normalize Experiences"]


def test_unknown_and_missing_strategies_are_kept_for_validation():
    d = good()
    d["content"][1]["AI Strategy"] = "Telepathy"
    del d["content"][3]["AI Strategy"]
    v = judge(json.dumps(d), SCENE, None, None, None)
    assert v.status == NEEDS_REVIEW
    assert set(v.codes) == {"missing_strategy", "unknown_strategy"}
    assert "Telepathy" in " ".join(v.reasons)


@pytest.mark.parametrize("mutate, code, status", [
    (lambda d: d.update(scene="Breakups or Divorce"), "scene_changed", REJECTED),
    (lambda d: d.update(content=d["content"][:6]), "too_short", REJECTED),
    (lambda d: d.update(description=SCENE), "generic_description", NEEDS_REVIEW),
    (lambda d: d.update(description=""), "generic_description", NEEDS_REVIEW),
    (lambda d: d["content"].__setitem__(2, {"User": "   "}), "empty_turn", REJECTED),
    (lambda d: d["content"].__setitem__(4, dict(d["content"][2])), "duplicate_turn", NEEDS_REVIEW),
    (lambda d: [c.pop("AI Strategy", None) for c in d["content"]], "strategies", REJECTED),
    (lambda d: d["content"].reverse(), "roles_not_alternating", REJECTED),
])
def test_validation_outcomes(mutate, code, status):
    d = good()
    mutate(d)
    v = judge(json.dumps(d), SCENE, None, None, None)
    assert code in v.codes, v.reasons
    assert v.status == status, v.reasons


def test_good_dialogue_accepted_and_mergeable_turns_merged():
    d = good()
    assert judge(json.dumps(d), SCENE, None, None, None).status == ACCEPTED
    d["content"].insert(1, {"User": "and another thing about my thesis supervisor"})
    v = judge(json.dumps(d), SCENE, None, None, None)
    assert v.status == ACCEPTED and any("merged 1" in n for n in v.notes)
    assert len(v.dialogue.turns) == 12


def test_copy_of_example_near_duplicate_and_turn_duplicates():
    example = load_dialogues_from(good(5))
    v = judge(json.dumps(good(5)), SCENE, example, None, None)
    assert v.status == REJECTED and "copy_of_example" in v.codes
    near, turns = NearDupIndex(0.5), TurnIndex()
    first = load_dialogues_from(good(7))
    near.add("first", " ".join(t.text for t in first.turns))
    turns.add("first", first)
    v = judge(json.dumps(good(7)), SCENE, None, near, turns)
    assert "near_duplicate" in v.codes and v.status == REJECTED
    one = good(8)
    one["content"][2] = good(7)["content"][2]  # one copied user turn: a reviewer can fix it
    v = judge(json.dumps(one), SCENE, None, near, turns)
    assert v.codes == ["duplicate_turn"] and v.status == NEEDS_REVIEW


def load_dialogues_from(obj) -> Dialogue:
    turns = []
    for c in obj["content"]:
        if "User" in c:
            turns.append(Turn("user", c["User"]))
        else:
            turns.append(Turn("assistant", c["AI"], c["AI Strategy"]))
    return Dialogue("ex", "test", obj["scene"], obj["description"], turns)


def test_not_json_rejected_with_reason():
    v = judge("I'm sorry, I can't do that.", SCENE, None, None, None)
    assert v.status == REJECTED and v.codes == ["not_json"]


def test_shingle_jaccard_and_index_threshold():
    a = shingles("one two three four five six")
    assert jaccard(a, a) == 1.0
    assert jaccard(a, shingles("seven eight nine ten eleven")) == 0.0
    idx = NearDupIndex(0.8)
    idx.add("x", "the quick brown fox jumps over the lazy dog near the river bank today")
    assert idx.query("the quick brown fox jumps over the lazy dog near the river bank today")[0] == "x"
    assert idx.query("completely different words about exams and coffee in the morning") is None
    with pytest.raises(ValueError, match="threshold"):
        NearDupIndex(0)


def test_prompt_carries_requirements_and_example():
    ex = load_dialogues_from(good(3))
    msgs = build_messages(ex, "Caregiver Support")
    text = msgs[1]["content"]
    assert all(name in text for name in STRATEGY_NAMES)
    assert '"Caregiver Support"' in text and EXAMPLE_BEGIN in text and ex.description in text
    assert '"AI Strategy"' in text and "description" in text
    assert TEMPLATE_VERSION


def test_quota_allocation_is_exact_and_follows_table1(tmp_path):
    from extes.taxonomy import scenario_proportions

    q = allocate(1000, scenario_proportions())
    assert sum(q.values()) == 1000
    assert q["Conflicts or Communication Problems"] == max(q.values())  # 1109 of 11183
    assert allocate(5, scenario_proportions()) == allocate(5, scenario_proportions())
    assert split_rounds(10, 3) == [4, 3, 3]
    # rounds take consecutive slices: together they are the allocation of the total, and a small
    # second round covers other scenarios than the first
    r1, r2 = allocate(6, scenario_proportions()), allocate(6, scenario_proportions(), start=6)
    assert set(r1).isdisjoint(r2)
    both = allocate(12, scenario_proportions())
    assert {s: r1.get(s, 0) + r2.get(s, 0) for s in both} == both
    f = tmp_path / "q.json"
    f.write_text(json.dumps({"academic stress": 1, "Caregiver Support": 3}))
    props = load_proportions(f)
    assert props == {"Academic Stress": 0.25, "Caregiver Support": 0.75}
    assert allocate(4, props) == {"Academic Stress": 1, "Caregiver Support": 3}
    f.write_text(json.dumps({"Space Travel": 1}))
    with pytest.raises(ValueError, match="Space Travel"):
        load_proportions(f)
    assert len(SCENARIO_NAMES) == 36


def test_budget_reserve_charge_and_prices(tmp_path):
    b = Budget(Price(1.0, 2.0), max_cost=0.01)
    assert b.worst_case(1000, 1000) == pytest.approx(0.003)
    assert b.reserve(0.003) and b.reserve(0.003) and b.reserve(0.003)
    assert not b.reserve(0.003) and b.stopped
    assert b.charge(1000, 500, reserved=0.003) == pytest.approx(0.002)
    assert b.spent == pytest.approx(0.002) and b.reserved == pytest.approx(0.006)
    with pytest.raises(ValueError, match="price"):
        Budget(None, max_cost=1.0)
    assert price_for("gpt-4o-mini-2024-07-18") == Price(0.15, 0.60)
    assert price_for("my-local-model") is None
    assert price_for("x", price_in=1, price_out=3) == Price(1, 3)
    f = tmp_path / "prices.json"
    f.write_text(json.dumps({"my-local-model": {"input": 0.5, "output": 1}}))
    assert price_for("my-local-model", load_prices(f)) == Price(0.5, 1.0)
    f.write_text(json.dumps({"m": {"input": 1}}))
    with pytest.raises(ValueError, match="'m'"):
        load_prices(f)
    e = estimate_run(80, 2000, 1000, 2048, Price(1.0, 2.0), acceptance=0.8)
    assert e.requests == 100 and e.cost == pytest.approx(0.2 + 0.2)

