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
    ({"attention": {"exclude": ["lazy"]}}, r"p.yaml: attention.exclude\[0\]: 'lazy' is not one of failed_attention"),
    ({"attention": {"exclude": ["fast_rating"]}}, r"p.yaml: attention.*fast_rating needs min_rating_seconds"),
    ({"attention": {"min_rating_seconds": -1}}, r"p.yaml: attention.min_rating_seconds: must be >= 0, got -1"),
    ({"attention": {"instructed_response": "yes"}}, r"p.yaml: attention.instructed_response: expected true or false"),
    ({"attention": {"captcha": True}}, r"p.yaml: attention.*unknown key"),
])
def test_protocol_errors_name_the_file_and_key(extra, message):
    with pytest.raises(ProtocolError, match=message):
        proto(**extra)


# ---------------------------------------------------------------------------------------- store (schema v3)

import json  # noqa: E402

import sqlalchemy as sa  # noqa: E402
from study_helpers import ARM_NAMES, FakePool, full_answers, make_protocol  # noqa: E402

from extes.study.records import PaneVote  # noqa: E402
from extes.study.session import INSTRUCTED_KEY, Study, StudyRefusal  # noqa: E402
from extes.study.store import MIGRATIONS, SCHEMA_VERSION, DuplicateError, RatingChecks, Store  # noqa: E402
from extes.study.store import schema as store_mod  # noqa: E402


def test_upgrade_from_v2_with_data_keeps_rows_and_adds_the_v3_tables(tmp_path):
    path = tmp_path / "v2.sqlite"
    engine = sa.create_engine(f"sqlite:///{path}")
    with engine.begin() as conn:
        store_mod.schema_version.create(conn)
        for v in (1, 2):
            MIGRATIONS[v - 1](conn)
            conn.execute(store_mod.schema_version.insert().values(version=v, applied_at="then"))
        conn.execute(store_mod.participants.insert().values(id="p-1", code="AAAA-BBBB-CCCC", role="participant",
                                                            consented_at="2026-01-01", protocol="x"))
        conn.execute(store_mod.conversations.insert().values(
            id="c-1", participant_id="p-1", seq=1, order_index=0, arm_order=json.dumps(["a", "b", "c"]),
            scenario="Academic Stress", description="", status="chatting", protocol="x", created_at="2026-01-01"))
        conn.execute(sa.text("INSERT INTO meta (key, value) VALUES ('exclusion_rule', '[]')"))
    engine.dispose()
    store = Store(path)
    assert store.schema_version() == SCHEMA_VERSION  # v2 -> v3 (and every later migration)
    assert store.participant_by_code("AAAA-BBBB-CCCC").id == "p-1"
    store.submit_votes("c-1", "p-1", [PaneVote("fluency", "A", "B", "a", "b", "a")],
                       checks=RatingChecks("b", 3.5, (("failed_attention", "answered 'b'"),)))
    assert store.rating_checks("c-1").instructed_answer == "b"
    assert store.flags_frame().to_dict("records") == [
        {"conversation_id": "c-1", "flag": "failed_attention", "detail": "answered 'b'"}]
    store.set_meta("exclusion_rule", '["failed_attention"]')
    assert store.get_meta("exclusion_rule") == '["failed_attention"]'
    store.close()


def test_platform_id_can_never_start_twice_and_raw_id_only_when_kept(tmp_path):
    store = Store(tmp_path / "s.sqlite")
    p = store.create_platform_participant("x", "prolific", "h" * 64, None, "st", "se")
    with pytest.raises(DuplicateError):
        store.create_platform_participant("x", "prolific", "h" * 64, PID, "st", "se2")
    assert not store.record_screened_out("prolific", "h" * 64, None, None, None)
    rows = store.platform_sessions()
    assert len(rows) == 1 and rows[0].participant_id == p.id and rows[0].raw_id is None
    assert store.counts()["participants"] == 1
    store.close()


# ---------------------------------------------------------------------------------------- study flow


@pytest.fixture
def env_salt(monkeypatch):
    monkeypatch.setenv("EXTES_PLATFORM_SALT", SALT)


def platform_study(tmp_path, **extra):
    extra.setdefault("recruitment", {"completion_code": "C1A2B3", "screened_out_code": "NOCONSENT"})
    protocol = make_protocol(tmp_path, min_turns=1, conversations=2, **extra)
    return Study(protocol, Store(tmp_path / "study.sqlite"), FakePool())


PARAMS = {"PROLIFIC_PID": PID, "STUDY_ID": "study-1", "SESSION_ID": "session-1"}


def chat_and_rate(study, view, text="I have been feeling low lately", choice="left", instructed="tie"):
    for _ in range(study.protocol.min_user_turns):
        list(study.send(view.code, view.conversation_id, "ABC", text))
    answers = full_answers(study, choice)
    if instructed is not None:
        answers[INSTRUCTED_KEY] = instructed
    return study.submit_rating(view.code, view.conversation_id, answers)


def test_salt_is_required_for_a_platform_study(tmp_path, monkeypatch):
    monkeypatch.delenv("EXTES_PLATFORM_SALT", raising=False)
    with pytest.raises(ValueError, match="EXTES_PLATFORM_SALT"):
        platform_study(tmp_path)


def test_platform_flow_consent_resume_done_and_second_start_refused(tmp_path, env_salt, caplog):
    caplog.set_level("DEBUG")
    s = platform_study(tmp_path)
    assert s.platform_arrival({}) is None  # no parameters: the ordinary consent and code screens
    v = s.platform_arrival(PARAMS)
    assert v.stage == "consent" and s.store.counts()["participants"] == 0  # nothing stored before consent
    v = s.platform_consent(PARAMS)
    assert v.stage == "setup" and v.completion_url == ""
    with pytest.raises(StudyRefusal, match="cannot be started twice"):
        s.platform_consent(PARAMS)
    assert s.store.counts()["participants"] == 1
    v = s.start_conversation(v.code, "Academic Stress")
    # the participant drops out mid-chat and comes back with the same link: resumed where they were, with
    # the code their browser kept (the link alone asks for the code: see the tests below)
    back = s.platform_arrival(PARAMS, held_code=v.code)
    assert back.stage == "chat" and back.conversation_id == v.conversation_id and back.code == v.code
    v = chat_and_rate(s, back, instructed=None)
    v = s.start_conversation(v.code, "Work-related Stress and Burnout")
    v = chat_and_rate(s, v, instructed=None)
    assert v.stage == "done"
    assert v.completion_url == "https://app.prolific.com/submissions/complete?cc=C1A2B3" and v.completion_code == "C1A2B3"
    again = s.platform_arrival(PARAMS, held_code=v.code)
    assert again.stage == "done" and again.completion_code == "C1A2B3"
    (row,) = s.store.platform_sessions()
    assert row.completed_at and row.last_stage == "done" and row.raw_id is None
    assert row.study_id == "study-1" and row.session_id == "session-1" and PID not in repr(row)
    assert PID not in caplog.text and "feeling low" not in caplog.text
    s.store.close()


def test_declining_gives_the_screened_out_link_and_keeps_the_raw_id_only_when_asked(tmp_path, env_salt):
    s = platform_study(tmp_path, recruitment={"completion_code": "C1A2B3", "screened_out_code": "NOCONSENT",
                                              "keep_raw_id": True})
    v = s.platform_decline(PARAMS)
    assert v.stage == "screened_out" and v.completion_url.endswith("cc=NOCONSENT")
    assert s.platform_arrival(PARAMS).stage == "screened_out"
    (row,) = s.store.platform_sessions()
    assert row.raw_id == PID and row.participant_id is None and row.screened_out_at
    assert s.store.counts()["participants"] == 0
    # a decline does not lock the id out: its owner (or the same person, who changed their mind) may agree
    v = s.platform_consent(PARAMS)
    assert v.stage == "setup" and s.store.counts()["participants"] == 1
    (row,) = s.store.platform_sessions()
    assert row.participant_id == v.participant_id and row.screened_out_at is None
    s.store.close()


def test_forged_platform_parameters_are_refused_without_echo(tmp_path, env_salt):
    s = platform_study(tmp_path)
    with pytest.raises(StudyRefusal) as exc:
        s.platform_arrival({"PROLIFIC_PID": "<script>x</script>"})
    assert "script" not in str(exc.value)


ATTENTION = {"instructed_response": True, "min_message_chars": 10, "min_rating_seconds": 30,
             "flag_repeated_messages": True, "flag_straight_lining": True,
             "exclude": ["failed_attention", "straight_lined"]}


def test_attention_flags_are_computed_and_stored_at_rating_time(tmp_path):
    protocol = make_protocol(tmp_path, min_turns=2, conversations=2, attention=ATTENTION)
    s = Study(protocol, Store(tmp_path / "study.sqlite"), FakePool())
    assert json.loads(s.store.get_meta("exclusion_rule")) == ["failed_attention", "straight_lined"]
    v = s.start_conversation(s.consent().code, "Academic Stress")
    with pytest.raises(StudyRefusal, match="the attention row"):
        list(s.send(v.code, v.conversation_id, "ABC", "ok"))
        list(s.send(v.code, v.conversation_id, "ABC", "ok"))
        s.submit_rating(v.code, v.conversation_id, full_answers(s, "tie"))
    v = chat_and_rate(s, v, text="ok", choice="tie", instructed="left")
    conv1 = s.store.all_conversations()[0].id
    flags = {r.flag: r.detail for r in s.store.conversation_flags(conv1)}
    assert set(flags) == {"failed_attention", "short_messages", "repeated_message", "fast_rating", "straight_lined"}
    assert "ok" not in " ".join(flags.values()).replace("took", "")  # details never hold the text
    checks = s.store.rating_checks(conv1)
    assert checks.instructed_answer == "a" and checks.rating_seconds < 30
    assert len(s.store.votes(conv1)) == 3 * len(protocol.aspects)  # the attention row is not a vote
    # a careful participant raises nothing (except the time, which a test cannot wait for)
    v = s.start_conversation(v.code, "Work-related Stress and Burnout")
    for text in ("I lost my job last week", "and I do not know what to do next"):
        list(s.send(v.code, v.conversation_id, "ABC", text))
    answers = full_answers(s, "left")
    answers[next(iter(answers))] = "tie"
    answers[INSTRUCTED_KEY] = "tie"
    s.submit_rating(v.code, v.conversation_id, answers)
    assert {r.flag for r in s.store.conversation_flags(v.conversation_id)} == {"fast_rating"}
    s.store.close()


def test_no_checks_no_rows(tmp_path):
    protocol = make_protocol(tmp_path, min_turns=1, conversations=1)
    s = Study(protocol, Store(tmp_path / "study.sqlite"), FakePool())
    v = s.start_conversation(s.consent().code, "Academic Stress")
    v = chat_and_rate(s, v, instructed=None)
    assert v.stage == "done" and s.store.conversation_flags() == [] and v.completion_url == ""
    s.store.close()


# ---------------------------------------------------------------------------------------- exclusions at analysis

from extes.cli import main  # noqa: E402


def run_cli(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def rated_study(tmp_path, n_good=3, attention=ATTENTION, **extra):
    """A study DB: one conversation that fails the attention row, n_good that pass."""
    attention = {k: v for k, v in attention.items() if k not in ("min_rating_seconds",)}
    protocol = make_protocol(tmp_path, min_turns=1, conversations=1, attention=attention, **extra)
    s = Study(protocol, Store(tmp_path / "study.sqlite"), FakePool())
    bad = None
    for i in range(n_good + 1):
        v = s.start_conversation(s.consent().code, "Academic Stress")
        answers = full_answers(s, "left")
        answers[next(iter(answers))] = "tie"  # not straight-lined
        answers[INSTRUCTED_KEY] = "right" if i == 0 else "tie"
        list(s.send(v.code, v.conversation_id, "ABC", f"something long enough {i}"))
        s.submit_rating(v.code, v.conversation_id, answers)
        bad = bad or v.conversation_id
    s.store.close()
    return tmp_path / "study.sqlite", bad


def test_attention_failure_is_excluded_from_analyze_by_default_and_listed(tmp_path, capsys):
    db, bad = rated_study(tmp_path)
    per_conv = 3 * 5  # 3 pairs x 5 aspects in the default protocol
    code, out, _ = run_cli(capsys, "analyze", "--db", db, "--reference", ARM_NAMES[0], "--json", "--n-boot", 10)
    assert code == 0
    payload = json.loads(out)
    assert payload["exclusions"] == {"rule": ["failed_attention", "straight_lined"], "conversations": 4,
                                     "excluded": [bad], "by_flag": {"failed_attention": 1, "straight_lined": 0},
                                     "votes_excluded": per_conv}
    assert payload["votes"] == 3 * per_conv
    code, out, _ = run_cli(capsys, "analyze", "--db", db, "--reference", ARM_NAMES[0], "--n-boot", 10)
    assert ("Exclusions (failed_attention, straight_lined): 1 of 4 conversation(s) excluded (failed_attention 1); "
            f"{per_conv} vote(s) left out, kept in the store.") in out
    code, out, _ = run_cli(capsys, "analyze", "--db", db, "--reference", ARM_NAMES[0], "--json", "--n-boot", 10,
                           "--exclusions", "none")
    assert json.loads(out)["votes"] == 4 * per_conv
    # the excluded votes stay in the store
    store = Store(db)
    assert len(store.votes(bad)) == per_conv
    store.close()


def test_export_applies_the_rule_and_analyze_votes_accepts_flags(tmp_path, capsys):
    db, bad = rated_study(tmp_path)
    votes, flags = tmp_path / "votes.csv", tmp_path / "flags.csv"
    code, out, _ = run_cli(capsys, "export", "--db", db, "--votes", votes, "--flags", flags)
    assert code == 0 and "1 of 4 conversation(s) excluded" in out
    import pandas as pd

    assert bad not in set(pd.read_csv(votes).conversation_id)
    assert pd.read_csv(flags)[["conversation_id", "flag"]].values.tolist() == [[bad, "failed_attention"]]
    code, out, _ = run_cli(capsys, "export", "--db", db, "--votes", votes, "--exclusions", "none")
    assert bad in set(pd.read_csv(votes).conversation_id) and "Exclusions: none applied." in out
    code, out, _ = run_cli(capsys, "analyze", "--votes", votes, "--flags", flags, "--exclusions", "failed_attention",
                           "--reference", ARM_NAMES[0], "--json", "--n-boot", 10)
    assert json.loads(out)["exclusions"]["excluded"] == [bad]
    code, _, err = run_cli(capsys, "analyze", "--votes", votes, "--exclusions", "failed_attention",
                           "--reference", ARM_NAMES[0], "--n-boot", 10)
    assert code != 0 and "give --db, or --flags FILE" in err
    code, _, err = run_cli(capsys, "analyze", "--db", db, "--exclusions", "lazy", "--reference", ARM_NAMES[0])
    assert code != 0 and "unknown flag(s) lazy" in err


def test_payments_export_has_ids_status_codes_times_and_no_chat_text(tmp_path, env_salt, capsys):
    s = platform_study(tmp_path)
    v = s.platform_consent(PARAMS)
    for _ in range(2):
        v = s.start_conversation(v.code, "Academic Stress")
        v = chat_and_rate(s, v, text="my private words here", instructed=None)
    other = {"PROLIFIC_PID": "aaaaaaaaaaaaaaaaaaaaaaaa", "STUDY_ID": "study-1", "SESSION_ID": "session-2"}
    s.platform_decline(other)
    third = {"PROLIFIC_PID": "bbbbbbbbbbbbbbbbbbbbbbbb", "STUDY_ID": "study-1", "SESSION_ID": "session-3"}
    s.start_conversation(s.platform_consent(third).code, "Academic Stress")  # drops out while chatting
    s.store.close()
    out_csv = tmp_path / "payments.csv"
    code, out, _ = run_cli(capsys, "export", "--db", tmp_path / "study.sqlite", "--payments", out_csv)
    assert code == 0 and "wrote 3 platform sessions" in out
    import pandas as pd

    text = out_csv.read_text()
    frame = pd.read_csv(out_csv, dtype=str, keep_default_na=False)
    assert list(frame["status"]) == ["completed", "screened_out", "incomplete"]
    assert list(frame["completion_code"]) == ["C1A2B3", "NOCONSENT", ""]
    assert list(frame["session_id"]) == ["session-1", "session-2", "session-3"]
    assert list(frame["id_kind"]) == ["hash"] * 3 and frame["last_stage"].iloc[2] == "chat"
    assert PID not in text and "private words" not in text and "Academic" not in text
    assert list(frame.columns) == ["platform", "platform_id", "id_kind", "study_id", "session_id", "status",
                                   "completion_code", "started_at", "completed_at", "screened_out_at", "last_stage",
                                   "minutes"]


def test_dashboard_platform_sessions_dropouts_and_zip(tmp_path, env_salt):
    import io
    import zipfile

    from extes.study import ui_research as ui

    s = platform_study(tmp_path)
    v = s.platform_consent(PARAMS)
    for _ in range(2):
        v = s.start_conversation(v.code, "Academic Stress")
        v = chat_and_rate(s, v, instructed=None)
    s.platform_decline({"PROLIFIC_PID": "a" * 24, "SESSION_ID": "s2"})
    gone = s.platform_consent({"PROLIFIC_PID": "b" * 24, "SESSION_ID": "s3"})
    s.start_conversation(gone.code, "Academic Stress")
    s.platform_consent({"PROLIFIC_PID": "c" * 24, "SESSION_ID": "s4"})  # still on the setup page
    with s.store.engine.begin() as conn:  # the third was last seen an hour ago
        conn.execute(store_mod.platform_sessions.update().where(store_mod.platform_sessions.c.session_id == "s3")
                     .values(last_seen_at="2000-01-01T00:00:00.000+00:00"))
    frame = ui.platform_sessions_view(s.store)
    assert list(frame["status"]) == ["completed", "screened_out", "dropped out at chat", "in progress (setup)"]
    summary = ui.platform_summary(frame)
    assert summary.startswith("4 started, 1 completed, 1 screened out, 1 dropped out (chat 1), 1 in progress")
    assert PID not in frame.to_csv()
    with zipfile.ZipFile(io.BytesIO(ui.export_zip(s.store))) as zf:
        assert {"payments.csv", "attention_flags.csv"} <= set(zf.namelist())
        payments = zf.read("payments.csv").decode()
    assert "C1A2B3" in payments and "NOCONSENT" in payments and PID not in payments
    s.store.close()


def test_page_platform_parameters_are_checked():
    from extes.study.ui_participant import _params

    assert _params("") == {} and _params('{"PROLIFIC_PID": "x1"}') == {"PROLIFIC_PID": "x1"}
    for bad in ("not json", "[1]", '{"PROLIFIC_PID": 5}'):
        with pytest.raises(StudyRefusal, match="recruitment platform"):
            _params(bad)


# ---------------------------------------------------------------------------------------- a platform id is not a password


def _shows_nothing(view):
    """A view that reveals nothing of a participant: no code, conversation, panes or completion code."""
    return (view.code == "" and view.participant_id == "" and view.conversation_id == "" and view.panes == []
            and view.completion_code == "" and view.completion_url == "")


def test_platform_id_alone_opens_nothing_mid_chat_or_after_the_end(tmp_path, env_salt):
    s = platform_study(tmp_path)
    v = s.platform_consent(PARAMS)
    v = s.start_conversation(v.code, "Academic Stress")
    list(s.send(v.code, v.conversation_id, "ABC", "my private words"))
    # another address, no browser state, wrong STUDY_ID / SESSION_ID: the id alone asks for the code
    forged = {"PROLIFIC_PID": PID, "STUDY_ID": "other", "SESSION_ID": "other"}
    for params in (PARAMS, forged):
        view = s.platform_arrival(params)
        assert view.stage == "return" and _shows_nothing(view)
    other = s.consent()  # a code this browser kept, of somebody else: not theirs either
    assert s.platform_arrival(PARAMS, held_code=other.code).stage == "return"
    assert s.platform_arrival(PARAMS, held_code="ZZZZ-ZZZZ-ZZZZ").stage == "return"
    # the code they hold resumes (typed in, or kept by their browser)
    assert s.platform_arrival(PARAMS, held_code=v.code).conversation_id == v.conversation_id
    assert s.resume(v.code).conversation_id == v.conversation_id
    v = chat_and_rate(s, v, instructed=None)
    v = s.start_conversation(v.code, "Academic Stress")
    v = chat_and_rate(s, v, instructed=None)
    assert v.stage == "done" and v.completion_code == "C1A2B3"
    view = s.platform_arrival(PARAMS)  # after the end: no completion code for the id alone
    assert view.stage == "return" and _shows_nothing(view)
    assert s.platform_arrival(PARAMS, held_code=v.code).completion_code == "C1A2B3"
    s.store.close()


def test_a_case_variant_of_a_finished_id_cannot_start_again(tmp_path, env_salt):
    s = platform_study(tmp_path)
    s.platform_consent(PARAMS)
    for variant in (PID.upper(), PID.capitalize(), f" {PID} ".strip()):
        params = {**PARAMS, "PROLIFIC_PID": variant}
        assert s.platform_arrival(params).stage == "return"
        with pytest.raises(StudyRefusal, match="cannot be started twice"):
            s.platform_consent(params)
    assert s.store.counts()["participants"] == 1
    s.store.close()


def test_ids_stored_before_normalisation_are_still_recognised(tmp_path, env_salt):
    """A database written before ids were case-folded holds the hash of the id as it arrived."""
    import hashlib
    import hmac

    mturk = {"workerId": "A1B2C3D4E5F6G7", "assignmentId": "x", "hitId": "y"}
    s = platform_study(tmp_path, recruitment={"platform": "mturk", "completion_code": "C1",
                                              "completion_url": "https://example.org/done?c={code}"})
    legacy = hmac.new(SALT.encode(), b"mturk:A1B2C3D4E5F6G7", hashlib.sha256).hexdigest()
    s.store.create_platform_participant("x", "mturk", legacy, None, "y", "x")
    for worker in ("A1B2C3D4E5F6G7", "a1b2c3d4e5f6g7"):
        params = {**mturk, "workerId": worker}
        assert s.platform_arrival(params).stage == "return"
        with pytest.raises(StudyRefusal, match="cannot be started twice"):
            s.platform_consent(params)
        assert not s.store.record_screened_out("mturk", "z" * 64, None, None, None, also_known_as=[legacy])
    s.store.close()


def test_a_decline_cannot_screen_out_an_id_that_agreed(tmp_path, env_salt):
    s = platform_study(tmp_path)
    v = s.platform_consent(PARAMS)
    with pytest.raises(StudyRefusal, match="close this page"):
        s.platform_decline(PARAMS)
    with pytest.raises(StudyRefusal, match="close this page"):
        s.platform_decline({**PARAMS, "PROLIFIC_PID": PID.upper()})
    (row,) = s.store.platform_sessions()
    assert row.participant_id == v.participant_id and row.screened_out_at is None
    assert s.platform_arrival(PARAMS, held_code=v.code).stage == "setup"
    s.store.close()


def test_a_restart_with_another_salt_is_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("EXTES_PLATFORM_SALT", SALT)
    s = platform_study(tmp_path)
    s.platform_consent(PARAMS)
    s.store.close()
    monkeypatch.setenv("EXTES_PLATFORM_SALT", "another-salt-0123456789")
    with pytest.raises(ValueError, match="EXTES_PLATFORM_SALT differs") as exc:
        platform_study(tmp_path)
    assert "another-salt" not in str(exc.value) and SALT not in str(exc.value)
    monkeypatch.setenv("EXTES_PLATFORM_SALT", SALT)  # the original salt: starts, and the id is known
    s = platform_study(tmp_path)
    assert s.platform_arrival(PARAMS).stage == "return"
    s.store.close()
