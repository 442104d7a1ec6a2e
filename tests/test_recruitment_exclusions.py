"""Recruitment-platform arrivals and completion links; attention flags and exclusion rules."""

import pandas as pd
import pytest

from extes.analysis.exclusions import (
    FLAGS,
    apply_exclusions,
    failed_attention,
    fast_rating,
    parse_rule,
    repeated_message,
    short_messages,
    straight_lined,
)
from extes.config import ConfigError, validate_config
from extes.study.recruitment import (
    RecruitmentError,
    RecruitmentSettings,
    arrival_from_params,
    completion_link,
    hash_platform_id,
    platform_salt,
)

PID = "5f8e3b2a9c1d4e6f7a8b9c0d"


def settings(**kw):
    return validate_config({"completion_code": "C1A2B3", **kw}, RecruitmentSettings, "protocol.yaml: recruitment")


def test_prolific_defaults_and_arrival():
    s = settings(screened_out_code="NOCONSENT")
    assert s.participant_param == "PROLIFIC_PID" and s.session_param == "SESSION_ID"
    arrival = arrival_from_params({"PROLIFIC_PID": PID, "STUDY_ID": "st1", "SESSION_ID": "se1"}, s)
    assert (arrival.participant, arrival.study, arrival.session) == (PID, "st1", "se1")
    assert arrival_from_params({}, s) is None
    assert completion_link(s) == "https://app.prolific.com/submissions/complete?cc=C1A2B3"
    assert completion_link(s, screened_out=True).endswith("cc=NOCONSENT")


def test_bad_parameters_are_refused_without_echoing_them():
    s = settings()
    with pytest.raises(RecruitmentError) as exc:
        arrival_from_params({"PROLIFIC_PID": "x\x00<script>"}, s)
    assert "script" not in str(exc.value) and "PROLIFIC_PID" in str(exc.value)


@pytest.mark.parametrize("kw, message", [
    ({"platform": "mturk"}, "completion_url is required"),
    ({"completion_url": "https://x.org/done"}, "must contain {code}"),
    ({"completion_code": "bad code!"}, "must be 1-128 letters"),
    ({"tracking": True}, "recruitment: tracking: unknown key .tracking."),
])
def test_settings_are_validated(kw, message):
    with pytest.raises(ConfigError, match=message):
        settings(**kw)


def test_platform_ids_are_keyed_hashes():
    salt = platform_salt({"EXTES_PLATFORM_SALT": "s" * 32})
    h = hash_platform_id("prolific", PID, salt)
    assert h == hash_platform_id("prolific", PID, salt) and PID not in h and len(h) == 64
    assert h != hash_platform_id("prolific", PID, b"t" * 32)
    with pytest.raises(RecruitmentError, match="EXTES_PLATFORM_SALT"):
        platform_salt({})


def test_flags():
    assert straight_lined(["tie"] * 5) and not straight_lined(["a", "tie", "a"]) and not straight_lined(["a", "a"])
    assert repeated_message(["Help me", " help  ME"]) and not repeated_message(["hi"]) and not repeated_message(["a", "b"])
    assert short_messages(["ok", "a longer message"], 5) and not short_messages(["ok"], 0)
    assert fast_rating(4.0, 10) and not fast_rating(12.0, 10) and not fast_rating(None, 10)
    assert failed_attention("a", "tie") and failed_attention(None, "tie") and not failed_attention("tie", "tie")


def test_rule_parsing():
    assert parse_rule("protocol", ["straight_lined"]) == ("straight_lined",)
    assert parse_rule(None, ["failed_attention"]) == ("failed_attention",)
    assert parse_rule("none", ["failed_attention"]) == ()
    assert parse_rule("failed_attention, fast_rating") == ("failed_attention", "fast_rating")
    with pytest.raises(ValueError, match="unknown flag.*sleepy"):
        parse_rule("sleepy")
    assert set(FLAGS) >= {"failed_attention", "straight_lined"}


def test_apply_exclusions_counts_and_reasons():
    votes = pd.DataFrame({"session_id": ["c1", "c1", "c2", "c3"], "conversation_id": ["c1", "c1", "c2", "c3"],
                          "aspect": "overall", "arm_a": "x", "arm_b": "y", "outcome": ["a", "b", "tie", "a"]})
    flags = pd.DataFrame({"conversation_id": ["c1", "c1", "c3", "c9"],
                          "flag": ["failed_attention", "straight_lined", "fast_rating", "failed_attention"]})
    kept, report = apply_exclusions(votes, flags, ("failed_attention", "straight_lined"))
    assert list(kept["conversation_id"]) == ["c2", "c3"]
    assert report.excluded == ["c1"] and report.votes_excluded == 2 and report.conversations == 3
    assert report.by_flag == {"failed_attention": 1, "straight_lined": 1}
    assert "1 of 3 conversation(s) excluded (failed_attention 1, straight_lined 1); 2 vote(s)" in report.describe()
    kept, report = apply_exclusions(votes, flags, ())
    assert len(kept) == 4 and report.describe() == "Exclusions: none applied."
