"""The researcher dashboard (`/research`): live counts, results, agreement, flags, transcripts, CSVs.

Off unless `EXTES_RESEARCH_PASSWORD` is set (the page then says so and offers nothing). Every handler
checks the login kept server-side in the session (`gr.State`), so calling the page's endpoints directly
without the password gets nothing; arm names (which the participant pages never show) are only sent
after login, so they are not in the page's config either.

It renders the analysis layer's result objects (`extes.analysis`) and the store's export frames;
the only thing it decides itself is which rows to pass in (participants' votes, judges', or both;
pairwise ratings and Likert ratings separately). The functions above the UI are plain functions of the
store, tested without a browser.

Hook: `extes.study.app.build_app` calls `build_research_ui(protocol, store, pool)` and mounts the
returned Blocks at `/research`.
"""

from __future__ import annotations

import hmac
import html
import logging
import os
import re
import time
from dataclasses import dataclass, field
from functools import wraps
from typing import Any

import gradio as gr
import pandas as pd

from extes.analysis import AnalysisInputError, agreement, dataset_quality, plot_win_tie_loss, win_tie_loss
from extes.analysis import report as analysis_report
from extes.analysis.corrections import CORRECTIONS
from extes.study import annotation as ann
from extes.study.limits import Limiter, RateLimited, client_of
from extes.study.protocol import Protocol
from extes.study.recruitment import payment_status, session_minutes
from extes.study.research_exports import EXPORTS, OneTimeDownloads, export_csvs, export_zip  # noqa: F401 - re-exported
from extes.study.research_flags import open_flag_choices, resolve_flag
from extes.study.store import VOTE_SOURCES, Store, ago

log = logging.getLogger(__name__)

PASSWORD_ENV = "EXTES_RESEARCH_PASSWORD"
N_BOOT = 1000
OFF_MESSAGE = (f"The researcher dashboard is off. Set the environment variable `{PASSWORD_ENV}` to a "
               "password and restart the app to turn it on.")
FAIL_DELAY_S = 1.0  # slows down password guessing


def md_escape(text: str) -> str:
    """Text shown literally inside Markdown (analysis notes quote item ids like 'c-1/a~b')."""
    out = html.escape(str(text), quote=False)
    return re.sub(r"([\\`*_{}\[\]()#+!|~])", r"\\\1", out)


def research_password() -> str | None:
    value = os.environ.get(PASSWORD_ENV, "")
    return value if value.strip() else None


def password_ok(given: str | None) -> bool:
    """Constant-time comparison with the configured password; always False when the dashboard is off."""
    expected = research_password()
    if expected is None or not given:
        return False
    return hmac.compare_digest(str(given).encode("utf-8"), expected.encode("utf-8"))


# ------------------------------------------------------------------------------------ the numbers


def live_counts(store: Store, protocol: Protocol | None = None) -> dict[str, int]:
    """The store's counts plus annotation coverage (when a protocol is given) and completed ratings
    (rated conversations plus judges' submitted items)."""
    out = dict(store.counts())
    if protocol is not None:
        cov = ann.coverage(store, protocol)
        out["annotation_items"] = cov["items"]
        out["annotation_items_complete"] = cov["complete_items"]
        out["annotation_judgments"] = cov["judgments"]
    out["completed_ratings"] = out["rated_conversations"] + out.get("annotation_judgments", 0)
    return out


COUNT_LABELS: tuple[tuple[str, str], ...] = (
    ("participants", "Participants"), ("conversations", "Conversations"),
    ("rated_conversations", "Rated conversations"), ("completed_ratings", "Completed ratings (incl. judges)"),
    ("messages", "Messages"), ("votes", "Participant votes"), ("annotation_judgments", "Judge submissions"),
    ("annotation_items_complete", "Annotation items with all judges"), ("flags", "Risk flags"),
    ("open_flags", "Open flags"), ("reports", "Harmful-reply reports"),
)


def counts_markdown(counts: dict[str, int]) -> str:
    rows = [f"| {label} | {counts[k]} |" for k, label in COUNT_LABELS if k in counts]
    return "| Live counts | Number |\n|---|---:|\n" + "\n".join(rows)


@dataclass
class WinTieLossView:
    table: pd.DataFrame | None = None  # paper layout: "W / T / L" percent per aspect, * for corrected p < 0.05
    rows: pd.DataFrame | None = None  # one row per opponent and aspect: %, counts, p-value, CI
    figure: Any = None
    note: str = ""


def win_tie_loss_view(store: Store, reference: str | None, source: str = "participant",
                      n_boot: int = N_BOOT, seed: int = 0) -> WinTieLossView:
    """Win/tie/loss of `reference` per aspect (extes.analysis.win_tie_loss), or a note saying why
    there is nothing to show yet."""
    if source not in VOTE_SOURCES:
        raise ValueError(f"votes source must be one of {', '.join(VOTE_SOURCES)}, got {source!r}")
    votes = store.votes_frame(source)
    if votes.empty:
        return WinTieLossView(note=f"No votes yet ({source}).")
    if not reference:
        return WinTieLossView(note="Choose a reference arm.")
    try:
        result = win_tie_loss(votes, reference, n_boot=n_boot, seed=seed)
    except AnalysisInputError as exc:
        return WinTieLossView(note=str(exc))
    rows = result.rows.copy()
    for col in ("win", "tie", "loss"):
        rows[col] = (100 * rows[col]).round(1)
    cols = ["opponent", "aspect", "win", "tie", "loss", "n", "n_win", "n_tie", "n_loss", "p_value", "p_adjusted",
            "ci_low", "ci_high"]

    note = (f"Reference arm: {reference}; {result.sessions} rating session(s). Win / tie / loss in %; "
            "p: two-sided sign test on wins vs losses (ties left out); p_adjusted: corrected over the table's "
            f"{result.tests} tests ({CORRECTIONS[result.correction]}); * marks p_adjusted < 0.05; "
            f"CI: {round(100 * result.confidence)}% session-bootstrap interval of win - loss ({n_boot} resamples).")
    if result.notes:
        note += " " + " ".join(result.notes)
    return WinTieLossView(result.table(), rows[cols], plot_win_tie_loss(result), note)


@dataclass
class AgreementView:
    table: pd.DataFrame | None = None  # extes.analysis.report.agreement_table: one row per source and aspect scope
    quality: pd.DataFrame | None = None  # Likert mean per metric (dataset quality, paper Table 4 layout)
    notes: list[str] = field(default_factory=list)


def agreement_view(store: Store) -> AgreementView:
    """Agreement of all ratings in the store (extes.analysis.agreement: overall, per source -
    pairwise votes and Likert scores - and per aspect), plus the Likert means (dataset_quality)."""
    view = AgreementView()
    ratings = store.ratings_frame()
    if ratings.empty:
        view.notes.append("No ratings yet.")
        return view
    try:
        result = agreement(ratings)
    except AnalysisInputError as exc:
        view.notes.append(agreement_unavailable(ratings, exc))
    else:
        view.table = analysis_report.agreement_table(result)
        notes_of = getattr(analysis_report, "agreement_notes", None)
        view.notes += notes_of(result) if notes_of else list(result.notes)
    likert = ratings[ratings["source"] != "pairwise"].reset_index(drop=True)  # Likert rows: by dataset
    if not likert.empty:
        try:
            view.quality = analysis_report.quality_table(dataset_quality(likert))
        except AnalysisInputError as exc:
            view.notes.append(f"Likert means: {exc}")
    return view


NO_SHARED_ITEMS = ("Agreement is not computed yet: it needs items rated by at least two people, and each "
                   "participant rates only their own conversation, so no item has two ratings so far. Invite "
                   "judges (section Judges below) to rate the same conversations or dataset dialogues.")


def agreement_unavailable(ratings: pd.DataFrame, exc: Exception) -> str:
    """One sentence saying why agreement cannot be computed, not the validator's row-by-row report."""
    if {"item_id", "rater_id"} <= set(ratings.columns):
        if not (ratings.groupby("item_id")["rater_id"].nunique() >= 2).any():
            return NO_SHARED_ITEMS
    first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    reason = first.split("invalid ratings: ", 1)[-1].strip().rstrip(".")
    return f"Agreement cannot be computed yet: {reason}."


@dataclass(frozen=True)
class Overview:
    """What the dashboard's refresh shows: live counts, win/tie/loss, agreement, flags, conversations."""

    counts: dict[str, int]
    win_tie_loss: WinTieLossView
    agreement: AgreementView
    flags: pd.DataFrame
    conversations: pd.DataFrame
    judging: str = ""  # why judges get nothing to judge, or "" when items are queued


def judging_status(store: Store, protocol: Protocol) -> str:
    """A sentence for the Judges section when invited judges would get nothing to judge, and why."""
    if protocol.annotation.enabled:
        ann.sync_items(store, protocol)
    reason = ann.idle_reason(store, protocol)
    return f"**Judges have nothing to judge.** {ann.IDLE_FOR_RESEARCHER[reason]}" if reason else ""


def flagged_conversations(store: Store) -> pd.DataFrame:
    """Risk flags and harmful-reply reports, newest first (texts stay in the transcript browser)."""
    rows = [{"conversation_id": f.conversation_id, "kind": "risk", "category": f.category,
             "message_id": f.message_id, "created_at": f.created_at, "flag_id": f.id,
             "resolved": f.resolved_at or "no", "note": f.note or ""} for f in store.flags()]
    rows += [{"conversation_id": r.conversation_id, "kind": "report", "category": r.reason,
              "message_id": r.message_id, "created_at": r.created_at, "flag_id": "", "resolved": "",
              "note": ""} for r in store.reports()]
    cols = ["conversation_id", "kind", "category", "message_id", "created_at", "flag_id", "resolved", "note"]
    frame = pd.DataFrame(rows, columns=cols)
    return frame.sort_values("created_at", ascending=False, kind="stable").reset_index(drop=True)


def conversation_list(store: Store) -> pd.DataFrame:
    """Every conversation, newest first, with its arms (researchers are not blind) and a flag marker."""
    flagged = {f.conversation_id for f in store.flags()} | {r.conversation_id for r in store.reports()}
    cols = ["conversation_id", "participant_id", "seq", "status", "scenario", "arms (A, B, C)", "flagged",
            "created_at"]
    rows = [{"conversation_id": c.id, "participant_id": c.participant_id, "seq": c.seq,
             "status": c.status, "scenario": c.scenario, "arms (A, B, C)": ", ".join(c.arm_order),
             "flagged": "yes" if c.id in flagged else "", "created_at": c.created_at}
            for c in reversed(store.all_conversations())]
    return pd.DataFrame(rows, columns=cols)


TRANSCRIPT_COLUMNS = ["pane", "arm", "role", "text", "strategy", "latency_s", "n_tokens", "finish_reason",
                      "created_at"]


def transcript(store: Store, conversation_id: str) -> tuple[str, pd.DataFrame]:
    """A heading (status, arms per pane, flags, comment) and the messages of one conversation, by pane.
    Participant text and model output go into the data frame (shown as plain text), never into Markdown."""
    conv = store.conversation((conversation_id or "").strip()) if conversation_id else None
    if conv is None:
        return "No such conversation.", pd.DataFrame(columns=TRANSCRIPT_COLUMNS)
    arms = ", ".join(f"{p} = {a}" for p, a in zip("ABC", conv.arm_order))
    n_flags = len(store.flags(conv.id)) + len(store.reports(conv.id))
    head = (f"Conversation {conv.id} ({conv.status}): panes {arms}; scenario: {conv.scenario}; "
            f"{n_flags} flag(s)/report(s)")
    msgs = store.messages(conv.id)
    frame = pd.DataFrame([{c: getattr(m, c) for c in TRANSCRIPT_COLUMNS} for m in msgs], columns=TRANSCRIPT_COLUMNS)
    if conv.comment:
        frame = pd.concat([frame, pd.DataFrame([{"pane": "", "role": "comment", "text": conv.comment}])],
                          ignore_index=True)
    return head, frame.sort_values("pane", kind="stable").reset_index(drop=True)


# ------------------------------------------------------------------------------------ handlers


class NotLoggedIn(PermissionError):
    pass


# ------------------------------------------------------------------- recruitment platforms, attention

DROPOUT_AFTER_S = 30 * 60  # a platform session not seen for this long (and not finished) counts as dropped out


def platform_sessions_view(store: Store) -> pd.DataFrame:
    """Per platform session: started, completed, screened out or dropped out (and at which stage), minutes.
    The platform id shows as the first characters of its keyed hash (never the raw id)."""
    stale = ago(DROPOUT_AFTER_S)
    rows = []
    for s in store.platform_sessions():
        status = payment_status(s)
        if status == "incomplete":
            status = (f"dropped out at {s.last_stage}" if s.last_seen_at < stale
                      else f"in progress ({s.last_stage})")
        rows.append({"platform": s.platform, "id (hash)": s.platform_hash[:10], "session_id": s.session_id or "",
                     "status": status, "started_at": s.started_at, "completed_at": s.completed_at or "",
                     "last_seen_at": s.last_seen_at, "minutes": session_minutes(s)})
    cols = ["platform", "id (hash)", "session_id", "status", "started_at", "completed_at", "last_seen_at", "minutes"]
    return pd.DataFrame(rows, columns=cols)


def platform_summary(frame: pd.DataFrame) -> str:
    if frame.empty:
        return "No participant has arrived from a recruitment platform."
    status = frame["status"]
    done = frame[status == "completed"]["minutes"].dropna()
    dropped = status[status.str.startswith("dropped out")].str.replace("dropped out at ", "", regex=False)
    where = ", ".join(f"{stage} {n}" for stage, n in dropped.value_counts().sort_index().items())
    return (f"{len(frame)} started, {int((status == 'completed').sum())} completed, "
            f"{int((status == 'screened_out').sum())} screened out, {len(dropped)} dropped out"
            + (f" ({where})" if where else "") + f", {int(status.str.startswith('in progress').sum())} in progress"
            + (f"; median time to complete {done.median():.1f} min" if len(done) else "") + ".")


def attention_flags_view(store: Store) -> pd.DataFrame:
    return store.flags_frame()


class Dashboard:
    """What the dashboard's buttons do, without Gradio: each call takes the session's login state
    (`ok`, kept server-side in a gr.State) and refuses with NotLoggedIn when it is False."""

    def __init__(self, store: Store, protocol: Protocol, downloads: OneTimeDownloads | None = None):
        self.store = store
        self.protocol = protocol
        self.limiter = Limiter(store)
        self.downloads = downloads or OneTimeDownloads()

    def login(self, given: str | None, client: str | None = None) -> list[str]:
        """The arm names (the UI preselects the last: the paper's strategy arm) when the password is right;
        NotLoggedIn otherwise, after a delay that slows down guessing. Wrong passwords lock the client
        out (extes.study.limits), saying for how long: while locked even the right password is refused."""
        if research_password() is None:
            raise NotLoggedIn(OFF_MESSAGE)
        try:
            self.limiter.check("password", client)
        except RateLimited as exc:
            raise NotLoggedIn(str(exc)) from None
        if not isinstance(given, str) or not password_ok(given):
            time.sleep(FAIL_DELAY_S)
            try:
                self.limiter.hit("password", client)
            except RateLimited as exc:
                raise NotLoggedIn(str(exc)) from None
            raise NotLoggedIn("Wrong password.")
        # The protocol's arms first, then any other arm the database holds votes for (an earlier protocol).
        votes = self.store.votes_frame("all")
        seen = sorted(set(votes["arm_a"]) | set(votes["arm_b"]))
        return list(dict.fromkeys([*self.protocol.arm_names, *seen]))

    @staticmethod
    def _check(ok: bool) -> None:
        if ok is not True:
            raise NotLoggedIn("Log in first.")

    def refresh(self, ok: bool, reference: str | None, source: str = "participant") -> Overview:
        self._check(ok)
        return Overview(counts=live_counts(self.store, self.protocol),
                        win_tie_loss=win_tie_loss_view(self.store, reference, source),
                        agreement=agreement_view(self.store), flags=flagged_conversations(self.store),
                        conversations=conversation_list(self.store),
                        judging=judging_status(self.store, self.protocol))

    def resolve_flag(self, ok: bool, flag_id: Any, note: str | None) -> str:
        self._check(ok)
        return resolve_flag(self.store, flag_id, note)

    def open_flags(self, ok: bool) -> list[tuple[str, str]]:
        self._check(ok)
        return open_flag_choices(self.store)

    def transcript(self, ok: bool, conversation_id: str) -> tuple[str, pd.DataFrame]:
        self._check(ok)
        return transcript(self.store, conversation_id)

    def invite(self, ok: bool, n: Any) -> list[str]:
        """`n` new judge codes (single-use invitations for /annotate)."""
        self._check(ok)
        try:
            count = int(n)
        except (TypeError, ValueError):
            raise ValueError("number of judge invitations must be a whole number") from None

        return ann.invite_judges(self.store, self.protocol, count)

    def revoke(self, ok: bool, code: str) -> int:
        """Revoke a judge code; returns how many unfinished items were freed."""
        self._check(ok)
        return self.store.revoke_judge(str(code or ""))

    def judges(self, ok: bool) -> pd.DataFrame:
        self._check(ok)
        rows = self.store.judges()
        return pd.DataFrame([{"judge_id": r.id, "code": r.code, "created_at": r.consented_at,
                              "revoked": "yes" if r.revoked_at else "", "submitted": r.done} for r in rows],
                            columns=["judge_id", "code", "created_at", "revoked", "submitted"])

    def export(self, ok: bool) -> str:
        """A one-time download token for the zipped CSVs (see OneTimeDownloads)."""
        self._check(ok)
        return self.downloads.put(export_zip(self.store))


# ------------------------------------------------------------------------------------------- UI


def render_research(store: Store, protocol: Protocol, downloads: OneTimeDownloads | None = None) -> None:  # noqa: C901, PLR0915 - the dashboard's layout and wiring, top to bottom as the page shows them
    """Build the dashboard's components inside the current `gr.Blocks` context."""
    gr.Markdown("# Researcher dashboard")
    if research_password() is None:
        gr.Markdown(OFF_MESSAGE, elem_id="research-off")
        return

    authed = gr.State(False)
    with gr.Column(visible=True) as login_box:
        password = gr.Textbox(label="Password", type="password", max_lines=1, elem_id="research-password")
        login_btn = gr.Button("Open the dashboard", variant="primary", elem_id="research-login")
    with gr.Column(visible=False) as board:
        with gr.Row():
            reference = gr.Dropdown(label="Reference arm", choices=[], interactive=True, scale=2)
            source = gr.Radio(list(VOTE_SOURCES), value="participant", label="Votes from", scale=2)
            refresh_btn = gr.Button("Refresh", scale=1, elem_id="research-refresh")
        counts_md = gr.Markdown(elem_id="research-counts")
        gr.Markdown("## Win / tie / loss per aspect")
        wtl_note = gr.Markdown()
        wtl_table = gr.Dataframe(label="W / T / L (%), * corrected p < 0.05", interactive=False, wrap=True)
        wtl_plot = gr.Plot(label="Win / tie / loss")
        wtl_rows = gr.Dataframe(label="Details: counts, sign-test p-value, bootstrap CI", interactive=False, wrap=True)
        gr.Markdown("## Agreement")
        agree_note = gr.Markdown()
        agree_table = gr.Dataframe(label="Fleiss' kappa, Krippendorff's alpha, percent agreement "
                                   "(pairwise: participants' and judges' votes; likert: judges' scores)",
                                   interactive=False)
        quality = gr.Dataframe(label="Likert mean per metric", interactive=False)
        gr.Markdown("## Flagged conversations\nRisk-pattern matches and harmful-reply reports. "
                    "Click a row to open its transcript below.")
        flags_note = gr.Markdown()
        flags_df = gr.Dataframe(interactive=False, wrap=True, visible=False)
        with gr.Row():
            flag_pick = gr.Dropdown(label="Open flag to resolve", choices=[], value=None, scale=2,
                                    elem_id="research-flag-pick")
            flag_note = gr.Textbox(label="Note: what was done", max_lines=3, scale=3, elem_id="research-flag-note")
            resolve_btn = gr.Button("Resolve flag", scale=1, elem_id="research-resolve")
        resolved_md = gr.Markdown(elem_id="research-resolved")
        gr.Markdown("## Transcripts")
        convs_df = gr.Dataframe(label="Conversations, newest first (click a row)", interactive=False, wrap=True,
                                max_height=300)
        with gr.Row():
            conv_id = gr.Textbox(label="Conversation id", max_lines=1, scale=3)
            show_btn = gr.Button("Show transcript", scale=1)
        conv_head = gr.Markdown()
        conv_msgs = gr.Dataframe(interactive=False, wrap=True, visible=False)
        gr.Markdown("## Judges\nJudges need a code from you: each code is one judge's single-use invitation "
                    "to `/annotate`. Revoking a code locks it out and frees its unfinished items.")
        with gr.Row():
            n_invites = gr.Number(label="How many judge codes", value=1, precision=0, minimum=1, maximum=1000, scale=1)
            invite_btn = gr.Button("Create judge codes", scale=1, elem_id="research-invite")
            revoke_code = gr.Textbox(label="Judge code to revoke", max_lines=1, scale=2)
            revoke_btn = gr.Button("Revoke", scale=1, elem_id="research-revoke")
        judging_md = gr.Markdown(elem_id="research-judging")
        invites_md = gr.Markdown(elem_id="research-invites")
        judges_df = gr.Dataframe(interactive=False, visible=False)
        gr.Markdown("## Recruitment platform sessions and attention flags")
        platform_md = gr.Markdown(elem_id="research-platform")
        platform_df = gr.Dataframe(interactive=False, wrap=True, visible=False)
        attention_df = gr.Dataframe(label="Attention flags (conversation, flag, detail)", interactive=False,
                                    wrap=True, visible=False)
        gr.Markdown("## Downloads")
        export_btn = gr.Button("Prepare CSV downloads", elem_id="research-export")
        files = gr.Markdown(elem_id="research-download")

    board_fns = Dashboard(store, protocol, downloads)

    def guarded(fn):
        @wraps(fn)
        def wrapper(*args):
            try:
                return fn(*args)
            except NotLoggedIn as exc:
                raise gr.Error(str(exc), print_exception=False) from None
            except Exception as exc:  # noqa: BLE001 - logged by type only, shown generically
                log.error("dashboard handler %s failed: %s", fn.__name__, type(exc).__name__)
                raise gr.Error("The dashboard could not compute this; see the server log.", print_exception=False) from None
        return wrapper

    def check_login(given: str, request: gr.Request = None):  # the login's validator: the reason in place
        try:  # (raising would draw an "Error" badge on every output and hide the form's own message)
            return gr.validate(board_fns.login(given, client_of(request)) is not None, "")  # one input: no list
        except NotLoggedIn as exc:
            return gr.validate(False, str(exc))

    @guarded
    def login(given: str, request: gr.Request = None):
        arms = board_fns.login(given, client_of(request))
        return {authed: True, login_box: gr.update(visible=False), board: gr.update(visible=True),
                reference: gr.update(choices=arms, value=arms[-1] if arms else None)}

    def frame(value: pd.DataFrame | None):
        """An empty table is hidden rather than drawn as Gradio's placeholder grid."""
        if value is None or value.empty:
            return gr.update(value=None, visible=False)
        return gr.update(value=value, visible=True)

    @guarded
    def refresh(ok: bool, ref: str | None, src: str):
        d = board_fns.refresh(ok, ref, src)
        wtl, agree = d.win_tie_loss, d.agreement
        return {
            counts_md: counts_markdown(d.counts),
            wtl_note: md_escape(wtl.note), wtl_table: frame(wtl.table),
            wtl_plot: gr.update(value=wtl.figure, visible=wtl.figure is not None), wtl_rows: frame(wtl.rows),
            agree_note: "\n".join(f"- {md_escape(n)}" for n in agree.notes),
            agree_table: frame(agree.table), quality: frame(agree.quality),
            flags_df: frame(d.flags) if not d.flags.empty else gr.update(value=None, visible=False),
            convs_df: frame(d.conversations),
            flags_note: "" if not d.flags.empty else "No flags or reports.",
            flag_pick: gr.update(choices=board_fns.open_flags(ok), value=None), judging_md: d.judging,
        }

    @guarded
    def resolve(ok: bool, flag_id: str | None, note: str | None, ref: str | None, src: str):
        board_fns._check(ok)
        try:
            said, note_update = board_fns.resolve_flag(ok, flag_id, note), ""
        except ValueError as exc:  # shown in place: the form stays usable and keeps the note
            said, note_update = str(exc), gr.update()
        return {**refresh(ok, ref, src), resolved_md: md_escape(said), flag_note: note_update}

    @guarded
    def show(ok: bool, cid: str):
        head, msgs = board_fns.transcript(ok, cid)
        return {conv_head: md_escape(head), conv_msgs: frame(msgs)}

    @guarded
    def select_row(ok: bool, evt: gr.SelectData):
        row = getattr(evt, "row_value", None) or []
        cid = str(row[0]) if row else ""
        head, msgs = board_fns.transcript(ok, cid)
        return {conv_id: cid, conv_head: md_escape(head), conv_msgs: frame(msgs)}

    @guarded
    def export(ok: bool):
        token = board_fns.export(ok)
        return {files: (f"[Download votes.csv, judge_votes.csv and ratings.csv (zip)](/research-download/{token}) "
                        "(with payments.csv, attention_flags.csv, and every message as shown in transcripts.jsonl "
                        "and transcripts.csv) (one download, within 5 minutes)")}

    @guarded
    def invite(ok: bool, n):
        codes = board_fns.invite(ok, n)
        text = "New judge codes (give one to each judge):\n\n```\n" + "\n".join(codes) + "\n```"
        return {invites_md: text, judges_df: frame(board_fns.judges(ok))}

    @guarded
    def revoke(ok: bool, code: str):
        try:
            freed = board_fns.revoke(ok, code)
        except ValueError as exc:
            raise gr.Error(str(exc), print_exception=False) from None
        return {invites_md: f"Revoked; {freed} unfinished item(s) freed.", judges_df: frame(board_fns.judges(ok))}

    invite_btn.click(invite, [authed, n_invites], [invites_md, judges_df], **dict(api_visibility="private"))
    revoke_btn.click(revoke, [authed, revoke_code], [invites_md, judges_df], **dict(api_visibility="private"))

    outputs = [counts_md, wtl_note, wtl_table, wtl_plot, wtl_rows, agree_note, agree_table,
               quality, flags_df, convs_df, flags_note, flag_pick, judging_md]
    private = dict(api_visibility="private")
    for trigger in (login_btn.click, password.submit):
        trigger(login, [password], [authed, login_box, board, reference], validator=check_login,
                **private).success(refresh, [authed, reference, source], outputs, **private)
    for trigger in (refresh_btn.click, reference.input, source.input):
        trigger(refresh, [authed, reference, source], outputs, **private)
    for trigger in (show_btn.click, conv_id.submit):
        trigger(show, [authed, conv_id], [conv_head, conv_msgs], **private)
    for table in (convs_df, flags_df):
        table.select(select_row, [authed], [conv_id, conv_head, conv_msgs], **private)
    export_btn.click(export, [authed], [files], **private)
    resolve_btn.click(resolve, [authed, flag_pick, flag_note, reference, source],
                      [*outputs, resolved_md, flag_note], **private)

    @guarded
    def platform(ok: bool):
        board_fns._check(ok)
        sessions = platform_sessions_view(store)
        return {platform_md: platform_summary(sessions), platform_df: frame(sessions),
                attention_df: frame(attention_flags_view(store))}

    authed.change(platform, [authed], [platform_md, platform_df, attention_df], **private)
    refresh_btn.click(platform, [authed], [platform_md, platform_df, attention_df], **private)


def build_research_ui(protocol: Protocol, store: Store, pool: Any = None):
    """The `/research` Blocks (mounted by extes.study.app.build_app, which serves `demo.extes_downloads`
    at /research-download/<token>)."""
    downloads = OneTimeDownloads()
    with gr.Blocks(title="Study dashboard", analytics_enabled=False, fill_width=True) as demo:
        render_research(store, protocol, downloads)
    demo.extes_downloads = downloads
    return demo
