import pytest

from extes import taxonomy as tx


def test_36_scenarios_with_paper_counts():
    assert len(tx.SCENARIOS) == 36
    assert len(set(tx.SCENARIO_NAMES)) == 36
    # the per-scenario counts published with ExTES (they add up to 11,183; the paper text says 11,177)
    assert sum(s.paper_count for s in tx.SCENARIOS) == 11183
    props = tx.scenario_proportions()
    assert props["Conflicts or Communication Problems"] == pytest.approx(0.099, abs=0.001)
    assert props["Breakups or Divorce"] == pytest.approx(0.063, abs=0.001)
    assert all(s.description and s.description != s.name for s in tx.SCENARIOS)


def test_16_strategies_and_esconv_8():
    assert tx.STRATEGY_ABBRS == ("RS", "Cla", "EV", "ES", "Aff", "OH", "AJC", "SO", "CP", "PDP", "RNT", "SI",
                                 "NE", "PSP", "SM", "Oth")
    assert len(tx.ESCONV_STRATEGIES) == 8
    assert "Restatement or Paraphrasing" in tx.ESCONV_STRATEGY_NAMES


@pytest.mark.parametrize("label,canon", [
    ("emotional validation", "Emotional Validation"),
    ("  Emotional   Validation ", "Emotional Validation"),
    ("EV", "Emotional Validation"),
    ("ev", "Emotional Validation"),
    ("Avoid Judgement and Criticism", "Avoid Judgment and Criticism"),
    ("Promote Self-Care Practices", "Promote Self-Care Practices"),
    ("promote self care practices", "Promote Self-Care Practices"),
    ("Other", "Others"),
])
def test_extes_label_variants(label, canon):
    assert tx.normalize_strategy(label) == canon


@pytest.mark.parametrize("label,canon", [
    ("Questions", "Question"),
    ("Restatement", "Restatement or Paraphrasing"),
    ("Approval and Reassurance", "Affirmation and Reassurance"),
    ("Reflection of feelings", "Reflection of Feelings"),
    ("Other", "Others"),
    ("Direct Guidance", "Providing Suggestions"),
])
def test_esconv_label_variants(label, canon):
    assert tx.normalize_strategy(label, "esconv") == canon


def test_unknown_label_is_reported_with_location():
    with pytest.raises(tx.UnknownLabelError, match=r"'Telepathy' at data.json: record 3"):
        tx.normalize_strategy("Telepathy", where="data.json: record 3")
    assert tx.normalize_strategy("") is None and tx.normalize_strategy(None) is None


def test_scenario_normalisation():
    assert tx.normalize_scenario("breakups or divorce") == "Breakups or Divorce"
    with pytest.raises(tx.UnknownLabelError):
        tx.normalize_scenario("Alien abduction")


def test_strategy_tag_round_trip():
    text = tx.format_strategy_tag("Emotional Validation") + "That sounds really hard."
    assert tx.split_strategy_tag(text, "extes") == ("Emotional Validation", "That sounds really hard.")
    assert tx.split_strategy_tag("No tag here.") == (None, "No tag here.")
    # an unknown tag is still removed from what people see
    assert tx.split_strategy_tag("[Weird] hi", "extes") == ("Weird", "hi")
