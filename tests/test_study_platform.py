"""Issue 15 wired into the study: protocol `recruitment:` / `attention:` sections, the store's platform
sessions and attention flags (schema v3), the platform arrival flow, flags at rating time, and exclusions
applied by `extes export/analyze`."""

import pytest
from study_helpers import protocol_dict

from extes.study.protocol import ProtocolError, protocol_from_dict

SALT = "test-salt-0123456789abcdef"
PID = "5f8e3b2a9c1d4e6f7a8b9c0d"


def proto(**extra):
    return protocol_from_dict(protocol_dict(**extra), where="p.yaml", build_arms=False)


def test_protocol_options_default_off():
    p = proto()
    assert p.recruitment is None
    assert p.attention.enabled() == () and p.attention.exclude == ()


def test_protocol_recruitment_and_attention_are_validated():
    p = proto(recruitment={"completion_code": "C1A2B3", "screened_out_code": "NOPE1"},
              attention={"instructed_response": True, "min_message_chars": 5, "flag_straight_lining": True,
                         "exclude": ["failed_attention", "straight_lined"]})
    assert p.recruitment.participant_param == "PROLIFIC_PID" and p.recruitment.completion_code == "C1A2B3"
    assert p.attention.enabled() == ("failed_attention", "short_messages", "straight_lined")
    assert p.attention.exclude == ("failed_attention", "straight_lined")


@pytest.mark.parametrize("extra, message", [
    ({"recruitment": {"completion_code": "bad code!"}}, r"p.yaml: recruitment: .*must be 1-128 letters"),
    ({"recruitment": {"platform": "mturk", "completion_code": "X1"}}, r"p.yaml: recruitment.*completion_url is required"),
    ({"attention": {"exclude": ["lazy"]}}, r"p.yaml: attention.*unknown flag\(s\) lazy"),
    ({"attention": {"exclude": ["fast_rating"]}}, r"p.yaml: attention.*fast_rating needs min_rating_seconds"),
    ({"attention": {"min_rating_seconds": -1}}, r"p.yaml: attention.min_rating_seconds: expected a whole number"),
    ({"attention": {"instructed_response": "yes"}}, r"p.yaml: attention.instructed_response: expected true or false"),
    ({"attention": {"captcha": True}}, r"p.yaml: attention.*unknown key"),
])
def test_protocol_errors_name_the_file_and_key(extra, message):
    with pytest.raises(ProtocolError, match=message):
        proto(**extra)
