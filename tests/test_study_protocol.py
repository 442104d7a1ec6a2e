"""Study protocols: the shipped YAMLs parse, and bad files fail at start-up with clear errors."""

from __future__ import annotations

import pytest
import yaml
from study_helpers import ARM_NAMES, make_protocol, protocol_dict

from extes.study.protocol import ASPECT_KEYS, ProtocolError, load_protocol, protocol_from_dict


@pytest.mark.parametrize("name", ["default.yaml", "extes_paper.yaml"])
def test_shipped_protocols_parse(repo_root, name):
    p = load_protocol(repo_root / "eval_protocol" / name, build_arms=False)
    assert len(p.arms) == 3 and [a.key for a in p.aspects] == list(ASPECT_KEYS)
    assert p.reveal_identities == "never" and p.max_message_chars == 4000
    assert {"suicide", "self_harm", "abuse", "danger_to_others"} <= set(p.crisis.patterns)


def test_default_protocol_arms(repo_root):
    data = yaml.safe_load((repo_root / "eval_protocol" / "default.yaml").read_text())
    assert data["arms"][0] == {"name": "embedded", "base": "smollm2-135m-instruct"}
    assert data["arms"][1]["adapter"] == "results/adapters/seeds-lora"
    assert data["arms"][2]["adapter"] == "results/adapters/seeds-lora-strategies" and data["arms"][2]["strategies"]
    assert data["min_user_turns"] == 10 and data["conversations_per_participant"] == 2


def test_arms_are_validated_and_replies_capped(tmp_path):
    p = make_protocol(tmp_path, max_reply_tokens=20)
    assert p.arm_names == ARM_NAMES
    assert all(a.generation.max_new_tokens == 20 for a in p.arms)


def test_missing_adapter_names_file_and_arm(tmp_path):
    arms = [{"name": "a"}, {"name": "b", "adapter": "results/adapters/nope"}, {"name": "c"}]
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump(protocol_dict(arms=arms)))
    with pytest.raises(ProtocolError) as err:
        load_protocol(path)
    assert str(path) in str(err.value) and "'b'" in str(err.value) and "results/adapters/nope" in str(err.value)


@pytest.mark.parametrize("change, expected", [
    ({"colour": "blue"}, "colour: unknown key 'colour'"),
    ({"arms": [{"name": "a"}, {"name": "b"}]}, "exactly 3 arms"),
    ({"arms": [{"name": "a"}, {"name": "a"}, {"name": "b"}]}, "distinct"),
    ({"min_user_turns": 0}, "min_user_turns"),
    ({"conversations_per_participant": "two"}, "conversations_per_participant"),
    ({"reveal_identities": "sometimes"}, "reveal_identities"),
    ({"aspects": [{"key": "charm", "question": "?"}]}, "aspects[0].key"),
    ({"aspects": []}, "aspects"),
    ({"crisis": {"banner": "help", "patterns": {"suicide": ["(unclosed"]}}}, "crisis.patterns.suicide[0]"),
    ({"crisis": {"banner": "", "patterns": {"x": ["y"]}}}, "banner"),
    ({"annotation": {"judges_per_item": 0}}, "judges_per_item"),
    ({"annotation": {"likert_scale": [3, 0]}}, "likert_scale"),
    ({"title": None}, "title"),
])
def test_bad_protocols_fail_clearly(change, expected):
    data = protocol_dict()
    data.update(change)
    with pytest.raises(ProtocolError) as err:
        protocol_from_dict(data, where="study.yaml")
    assert str(err.value).startswith("study.yaml: ") and expected in str(err.value)


def test_missing_required_key_and_bad_yaml(tmp_path):
    data = protocol_dict()
    del data["consent"]
    with pytest.raises(ProtocolError, match="x.yaml: consent: is required"):
        protocol_from_dict(data, where="x.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("title: [unclosed\n")
    with pytest.raises(ProtocolError, match="not valid YAML"):
        load_protocol(bad)
    with pytest.raises(FileNotFoundError, match="protocol file not found"):
        load_protocol(tmp_path / "none.yaml")


def test_default_protocol_validates_once_the_demo_adapters_exist(repo_root, tmp_path, monkeypatch):
    """The default protocol's arms agree with what `extes train` records (base and strategies)."""
    import json

    for name, strategies in (("seeds-lora", False), ("seeds-lora-strategies", True)):
        folder = tmp_path / "results" / "adapters" / name
        folder.mkdir(parents=True)
        (folder / "adapter_config.json").write_text(json.dumps(
            {"peft_type": "LORA", "base_model_name_or_path": "smollm2-135m-instruct"}))
        (folder / "training_config.json").write_text(json.dumps(
            {"base": "smollm2-135m-instruct", "strategies": strategies}))
    monkeypatch.chdir(tmp_path)
    p = load_protocol(repo_root / "eval_protocol" / "default.yaml")
    assert [a.strategies for a in p.arms] == [False, False, True]
    assert p.arms[2].adapter == str((tmp_path / "results/adapters/seeds-lora-strategies").resolve())
    assert all(a.generation.max_new_tokens <= p.max_reply_tokens for a in p.arms)


@pytest.mark.parametrize("change, expected", [
    ({"min_user_turns": True}, "study.yaml: min_user_turns: expected a whole number, got True"),
    ({"min_user_turns": "3"}, "study.yaml: min_user_turns: expected a whole number, got '3'"),
    ({"min_user_turns": 201}, "study.yaml: min_user_turns: must be <= 200, got 201"),
    ({"scenario_to_models": "yes"}, "study.yaml: scenario_to_models: expected true or false, got 'yes'"),
    ({"title": "   "}, "study.yaml: title: expected a non-empty text, got '   '"),
    ({"reveal_identities": "sometimes"}, "study.yaml: reveal_identities: 'sometimes' is not one of never, after_rating"),
    ({"annotation": {"likert_scale": [3, 0]}}, "study.yaml: annotation.likert_scale: expected [low, high] with low < high"),
    ({"screening": {"toxicity_threshold": 0}}, "study.yaml: screening.toxicity_threshold: must be > 0, got 0"),
    ({"screening": {"toxicity_threshold": True}}, "study.yaml: screening.toxicity_threshold: expected a number"),
    ({"crisis": ["help"]}, "study.yaml: crisis: expected a mapping"),
    ({"crisis": {"banner": "help", "patterns": {}}}, "study.yaml: crisis.patterns: must not be empty"),
    ({"arms": [{"name": "a"}, "b"]}, "study.yaml: arms[1]: expected a mapping"),
])
def test_protocol_types_carry_the_checks(change, expected):
    """Strict types and constraints, worded once by extes.config: `true` is not a number, "yes" is not a flag."""
    data = protocol_dict()
    data.update(change)
    with pytest.raises(ProtocolError) as err:
        protocol_from_dict(data, where="study.yaml", build_arms=False)
    assert expected in str(err.value), str(err.value)


def test_null_sections_and_one_pattern_take_their_defaults():
    data = protocol_dict()
    data.update(annotation=None, attention={"exclude": None}, screening=None, instructions=None,
                crisis={"banner": " Help is here. ", "patterns": {"suicide": "kill myself"}})
    p = protocol_from_dict(data, where="study.yaml", build_arms=False)
    assert p.annotation.judges_per_item == 3 and p.attention.exclude == () and p.screening.toxicity_threshold == 0.5
    assert p.instructions == "" and p.crisis.banner == "Help is here." and p.crisis.patterns == {"suicide": ("kill myself",)}
    assert p.source == "study.yaml"
    with pytest.raises(ProtocolError, match="source: unknown key 'source'"):
        protocol_from_dict({**protocol_dict(), "source": "forged"}, where="study.yaml", build_arms=False)
