"""Third-party annotation: who judges what, what they see, and how their judgments are stored.

Two kinds of items (rows of the store's `annotation_items`):
- `conversation`: a completed (rated) study conversation. A judge reads the three panes' transcripts,
  labelled Model A, B, C in a fresh random order per judge (blind: no arm names), and fills the same
  pairwise per-aspect form as the participant. Judgments are stored with the arms behind the shown
  panes, so `Store.votes_frame("judge")` and `Store.ratings_frame()` export them.
- `dialogue`: a dataset dialogue (the protocol's `annotation.dataset`: seeds or a generated set) rated
  on the paper's Likert scale (0-3) for Informativeness, Understanding, Helpfulness, Consistency and
  Coherence. Its dataset name is never shown to the judge.

Who judges: only invited judges. The researcher creates judge codes (single-use invitations, one per
judge) on /research or with `python app.py --invite-judges N`; /annotate accepts nothing else (no
participant codes, no self-service codes), and is off entirely with `annotation.enabled: false`. A revoked
code opens nothing, and its unfinished items are freed for other judges. Participants' conversations are
shown to judges only when the protocol says `annotation.judges_see_conversations: true` (the consent text
must say so); otherwise judges only see dataset dialogues.

Assignment rules (what makes Fleiss' kappa meaningful), decided in one database transaction
(`Store.assign_next`), so they hold for several app processes:
- each item is handed out until its submitted judgments plus its assignments in progress reach
  `annotation.judges_per_item`; only submitted judgments complete it, and a submission beyond the quota
  (a late judge whose assignment went stale) is refused;
- a judge never gets the same item twice (the store's unique (item, judge) constraint backs this up);
- a judge never gets a conversation they took part in;
- a judge has at most `max_open_per_judge` items in progress, all judges together `max_open_total`;
  asking again returns the oldest open item (refresh, come back later);
- among eligible items, those closest to their quota go first, so items complete rather than all
  items creeping up together; ties are broken at random.
An open assignment left untouched for `stale_after_s` (default 6 hours) no longer counts towards the
quota, so an abandoned item is handed to someone else.
"""

from __future__ import annotations

import itertools
import random
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

from extes.dialogue import load_dialogues
from extes.study.protocol import PANES, Protocol
from extes.study.records import AnnotationItem, Assignment, Participant, Role
from extes.study.store import DuplicateError, LimitError, Store

PAIRS: tuple[tuple[int, int], ...] = ((0, 1), (0, 2), (1, 2))  # shown positions: A vs B, A vs C, B vs C


def pairs_of(n_panes: int) -> tuple[tuple[int, int], ...]:
    """Shown positions compared: (0, 1) for two panes; PAIRS for three."""
    return tuple(itertools.combinations(range(n_panes), 2))
CHOICES: dict[str, str] = {"left": "a", "tie": "tie", "right": "b"}
DEFAULT_STALE_S = 6 * 3600

_synced_datasets: set[tuple[str, str, int]] = set()

# The rating form's questions speak to the participant ("your situation"); a judge reads someone else's
# conversation, so the judge page asks about "the person". One wording per aspect key (protocol.ASPECT_KEYS).
JUDGE_QUESTIONS: dict[str, str] = {
    "fluency": "Which model's replies were more coherent and easier to understand?",
    "identification": "Which model went deeper into the person's situation and identified the person's problems "
                      "better?",
    "comforting": "Which model was better at comforting and supporting the person?",
    "suggestion": "Which model gave the person more helpful suggestions?",
    "overall": "Which model's support would you prefer for this person overall?",
}


class AnnotationError(ValueError):
    """A request the annotation flow refuses (unknown code, someone else's item, incomplete form...).
    Messages are safe to show in a browser: they never name an arm or a dataset."""


@dataclass
class ItemView:
    """What a judge is shown for one assignment; holds no arm names, model names or dataset names."""

    assignment_id: int
    kind: str  # conversation | dialogue
    panes: list[list[tuple[str, str]]] = field(default_factory=list)  # conversation: shown A, B, C -> turns
    turns: list[tuple[str, str]] = field(default_factory=list)  # dialogue: (role, text)
    scene: str = ""  # the topic the person chose (a conversation) or the dialogue's scene
    description: str = ""  # a conversation: what the person wrote about their situation before chatting


# ------------------------------------------------------------------------------------------ items


def _resolve_dataset(path: str, protocol: Protocol) -> Path:
    """A relative dataset path is read from the working directory, else from the repository root next to
    the protocol file (the same rule the protocol applies to adapter paths)."""
    p = Path(path).expanduser()
    if p.is_absolute() or p.exists():
        if not p.exists():
            raise FileNotFoundError(f"{protocol.source}: annotation.dataset: {path} not found")
        return p
    source = Path(protocol.source)
    if source.is_file():
        candidate = source.resolve().parent.parent / p
        if candidate.exists():
            return candidate
    raise FileNotFoundError(f"{protocol.source}: annotation.dataset: {path} not found")


def dataset_item_id(dataset: str, dialogue_id: str) -> str:
    return f"{Path(dataset).stem}:{dialogue_id}"


def sync_items(store: Store, protocol: Protocol) -> dict[str, int]:
    """Register every rated conversation (when the protocol's annotation is pairwise) and every dialogue
    of the protocol's annotation dataset as items. Idempotent; returns how many were new per kind."""
    new = {"conversation": 0, "dialogue": 0}
    settings = protocol.annotation
    if settings.pairwise and settings.judges_see_conversations:
        known = {r.id for r in store.annotation_items("conversation")}
        for conv in store.all_conversations():
            if conv.status == "rated" and conv.id not in known:
                new["conversation"] += store.add_annotation_item(conv.id, "conversation", source="study")
    if settings.dataset:
        path = _resolve_dataset(settings.dataset, protocol)
        stamp = (store.url, str(path.resolve()), path.stat().st_mtime_ns)
        if stamp in _synced_datasets:  # the page calls this on every "next item": read the file once
            return new
        known = {r.id for r in store.annotation_items("dialogue")}
        for d in load_dialogues(path):
            item_id = dataset_item_id(settings.dataset, d.id)
            if item_id in known:
                continue
            payload = {"scene": d.scene, "turns": [[t.role, t.text] for t in d.turns]}
            # the dialogue's own source ("extes" for ExTES JSON such as the seeds, "extes-build" for
            # generated JSONL, "esconv") so the Likert means compare datasets as the paper's Table 4
            new["dialogue"] += store.add_annotation_item(item_id, "dialogue", source=d.source or str(settings.dataset),
                                                         payload=payload)
        _synced_datasets.add(stamp)
    return new


# ------------------------------------------------------------------------------------------ judges


def invite_judges(store: Store, protocol: Protocol, n: int) -> list[str]:
    """`n` judge invitation codes (the researcher hands one to each judge)."""
    return store.invite_judges(n, protocol=protocol.source)


def new_judge(store: Store, protocol: Protocol) -> Participant:
    """One invited judge's row (for tests and scripts; the pages only accept codes made this way)."""
    [code] = invite_judges(store, protocol, 1)
    return store.participant_by_code(code)  # type: ignore[return-value]


def judge_by_code(store: Store, code: str) -> Participant:
    """The invited judge behind a code; AnnotationError for anything else (unknown, revoked, or a
    participant's code), with one message so codes cannot be probed."""
    if not isinstance(code, str):
        raise AnnotationError("unknown code: check it, or ask the researchers for a judge code")
    person = store.participant_by_code(code)
    if person is None or person.role is not Role.JUDGE or person.revoked_at:
        raise AnnotationError("unknown code: check it, or ask the researchers for a judge code")
    return person


# ------------------------------------------------------------------------------------------ assignment


def _parse_time(stamp: str) -> datetime:
    t = datetime.fromisoformat(stamp)
    return t if t.tzinfo else t.replace(tzinfo=UTC)


def _counting(assignments: list[Assignment], stale_after_s: float) -> dict[str, int]:
    """Assignments that count towards each item's quota: done ones, and open ones not yet stale."""
    cutoff = datetime.now(UTC) - timedelta(seconds=stale_after_s)
    counts: dict[str, int] = {}
    for a in assignments:
        if a.status == "done" or (a.status == "open" and _parse_time(a.created_at) > cutoff):
            counts[a.item_id] = counts.get(a.item_id, 0) + 1
    return counts


def _kinds(protocol: Protocol) -> tuple[str, ...]:
    s = protocol.annotation
    return ("conversation", "dialogue") if (s.pairwise and s.judges_see_conversations) else ("dialogue",)


def eligible_items(store: Store, protocol: Protocol, judge_id: str,
                   stale_after_s: float = DEFAULT_STALE_S) -> list[tuple[AnnotationItem, int]]:
    """Items this judge may get next, with how many judges count towards each so far."""
    quota = protocol.annotation.judges_per_item
    all_assignments = store.assignments()
    counts = _counting(all_assignments, stale_after_s)
    seen = {a.item_id for a in all_assignments if a.judge_id == judge_id}
    own = {c.id for c in store.conversations_of(judge_id)}
    kinds = _kinds(protocol)
    out = []
    for item in store.annotation_items():
        if item.id in seen or item.id in own or item.kind not in kinds:
            continue
        n = counts.get(item.id, 0)
        if n < quota:
            out.append((item, n))
    return out


def open_assignment(store: Store, judge_id: str) -> Assignment | None:
    for a in store.assignments(judge_id=judge_id):
        if a.status == "open":
            return a
    return None


def next_assignment(store: Store, protocol: Protocol, judge_id: str, rng: random.Random | None = None,
                    stale_after_s: float = DEFAULT_STALE_S) -> Assignment | None:
    """The judge's open assignment, or a new one (None when nothing is left for this judge). The choice
    is made inside the store's write transaction (`Store.assign_next`)."""
    rng = rng or random.SystemRandom()
    settings = protocol.annotation
    own = [c.id for c in store.conversations_of(judge_id)]

    def pick(candidates: list[tuple[AnnotationItem, int]]) -> tuple[str, list[str] | None]:
        top = max(n for _, n in candidates)
        item = rng.choice([it for it, n in candidates if n == top])
        pane_order = None
        if item.kind == "conversation":  # a two-pane conversation shows the order's A and B (`_shown`)
            pane_order = list(PANES)
            rng.shuffle(pane_order)
        return item.id, pane_order

    try:
        return store.assign_next(judge_id, pick, quota=settings.judges_per_item, stale_after_s=stale_after_s,
                                 max_open_per_judge=settings.max_open_per_judge,
                                 max_open_total=settings.max_open_total, kinds=_kinds(protocol), exclude=own)
    except LimitError as exc:
        if exc.reason == "busy":
            raise AnnotationError("Many judges are working right now; please try again in a few minutes.") from None
        raise AnnotationError("unknown code: check it, or ask the researchers for a judge code") from None


def _assignment(store: Store, judge_id: str, assignment_id: int) -> Assignment:
    """The assignment, if it belongs to this judge; AnnotationError otherwise (same message for
    "not yours" and "does not exist", so ids cannot be probed)."""
    for a in store.assignments(judge_id=judge_id):
        if a.id == int(assignment_id):
            return a
    raise AnnotationError(f"assignment {assignment_id} is not one of yours")


def _item(store: Store, item_id: str) -> AnnotationItem:
    for it in store.annotation_items():
        if it.id == item_id:
            return it
    raise AnnotationError(f"annotation item {item_id} no longer exists")


def item_view(store: Store, judge_id: str, assignment_id: int) -> ItemView:
    """The blind transcript for one of the judge's assignments."""
    a = _assignment(store, judge_id, assignment_id)
    item = _item(store, a.item_id)
    if item.kind == "conversation":
        msgs = store.messages(item.id)
        conv = store.conversation(item.id)
        panes = [[(m.role, m.text) for m in msgs if m.pane == pane] for pane in _shown(a, conv)]
        return ItemView(a.id, "conversation", panes=panes, scene=conv.scenario if conv else "",
                        description=conv.description if conv else "")
    payload = item.payload or {}
    turns = [(str(r), str(t)) for r, t in payload.get("turns", [])]
    return ItemView(a.id, "dialogue", turns=turns, scene=str(payload.get("scene") or ""))


def progress(store: Store, protocol: Protocol, judge_id: str) -> dict[str, int]:
    """For the judge's page: items done by this judge, and items still available to them."""
    done = sum(1 for a in store.assignments(judge_id=judge_id) if a.status == "done")
    return {"done": done, "available": len(eligible_items(store, protocol, judge_id))}


IDLE_FOR_RESEARCHER: dict[str, str] = {
    "off": "Judging is off: the protocol's annotation section says `enabled: false`.",
    "no_source": ("No finished conversations are queued for judging: the protocol's annotation section does not "
                  "show participants' conversations to judges (`judges_see_conversations: false`) and names no "
                  "dataset of dialogues (`dataset`), so an invited judge gets nothing to judge."),
    "no_conversation": "No conversation has finished yet: a conversation is queued for judging once it is rated.",
    "empty_dataset": "The protocol's dataset of dialogues (`annotation.dataset`) holds no dialogues to judge.",
    "all_done": "Every queued item has all its judgments; new conversations are queued as they are rated.",
}
IDLE_FOR_JUDGE: dict[str, str] = {
    "off": "Judging is closed.",
    "no_source": ("No conversations are queued for judging: the study is not set up to show conversations to "
                  "judges yet. The researchers see this on their dashboard."),
    "no_conversation": "No conversation has finished yet, so none is queued for judging. Please come back later.",
    "empty_dataset": "No dialogues are queued for judging. The researchers see this on their dashboard.",
    "all_done": "Every item has all the judgments it needs for now. Please come back later.",
    "": "You have judged every item available to you. Please come back later.",
}


def idle_reason(store: Store, protocol: Protocol) -> str:
    """Why judges get nothing to judge, as a key of IDLE_FOR_RESEARCHER / IDLE_FOR_JUDGE; "" when the queue
    holds items someone may still judge. Call after `sync_items`."""
    s = protocol.annotation
    if not s.enabled:
        return "off"
    conversations_on = s.pairwise and s.judges_see_conversations
    if not conversations_on and not s.dataset:
        return "no_source"
    kinds = _kinds(protocol)
    items = [it for it in store.annotation_items() if it.kind in kinds]
    if not items:
        return "no_conversation" if conversations_on else "empty_dataset"
    done: dict[str, int] = {}
    for a in store.assignments():
        if a.status == "done":
            done[a.item_id] = done.get(a.item_id, 0) + 1
    return "all_done" if all(done.get(it.id, 0) >= s.judges_per_item for it in items) else ""


def coverage(store: Store, protocol: Protocol) -> dict[str, int]:
    """For the dashboard: items, items with a full set of completed judgments, completed judgments."""
    quota = protocol.annotation.judges_per_item
    done: dict[str, int] = {}
    for a in store.assignments():
        if a.status == "done":
            done[a.item_id] = done.get(a.item_id, 0) + 1
    items = store.annotation_items()
    return {"items": len(items), "complete_items": sum(1 for it in items if done.get(it.id, 0) >= quota),
            "judgments": sum(done.values())}


# ------------------------------------------------------------------------------------------ forms


def _shown(a: Assignment, conv) -> list[str]:
    """The conversation's panes in the order this judge sees them (a random order of its 2 or 3 panes)."""
    panes = conv.panes if conv is not None else PANES
    return [p for p in (a.pane_order or PANES) if p in panes]


def pair_labels(n_panes: int = 3) -> list[tuple[str, str]]:
    """The shown pane labels of each pair: [("A", "B"), ("A", "C"), ("B", "C")] for three panes."""
    return [(PANES[i], PANES[j]) for i, j in pairs_of(n_panes)]


def submit_pairwise(store: Store, protocol: Protocol, judge_id: str, assignment_id: int,
                    choices: dict[tuple[str, int], str | None]) -> int:
    """Store a judge's pairwise form. `choices[(aspect key, pair index)]` is "left", "tie" or "right"
    for pair index 0 (A vs B), 1 (A vs C), 2 (B vs C) of the panes as shown. Every cell is required;
    nothing is written unless the whole form is valid. Returns the number of judgments."""
    a = _assignment(store, judge_id, assignment_id)
    item = _item(store, a.item_id)
    if item.kind != "conversation":
        raise AnnotationError(f"assignment {assignment_id} is a dataset dialogue: it takes Likert scores")
    if a.status != "open":
        raise AnnotationError("this item was already submitted")
    conv = store.conversation(item.id)
    if conv is None:
        raise AnnotationError(f"conversation {item.id} no longer exists")
    arm_of = dict(zip(conv.panes, conv.arm_order))
    shown = _shown(a, conv)
    missing = []
    rows = []
    for aspect in protocol.aspects:
        for k, (i, j) in enumerate(pairs_of(len(shown))):
            choice = choices.get((aspect.key, k))
            if choice not in CHOICES:
                missing.append(f"{aspect.label}: {PANES[i]} vs {PANES[j]}")
                continue
            rows.append({"aspect": aspect.key, "arm_a": arm_of[shown[i]], "arm_b": arm_of[shown[j]],
                         "outcome": CHOICES[choice]})
    if missing:
        raise AnnotationError(f"please answer every question; missing: {', '.join(missing)}")
    return _submit(lambda: store.submit_judgments(a.id, rows, quota=protocol.annotation.judges_per_item))


def _submit(write) -> int:
    try:
        return write()
    except DuplicateError:
        raise AnnotationError("this item was already submitted") from None
    except LimitError as exc:
        if exc.reason == "quota":
            raise AnnotationError("This item already has all the judgments it needs; thank you.") from None
        raise AnnotationError("unknown code: check it, or ask the researchers for a judge code") from None


def submit_likert(store: Store, protocol: Protocol, judge_id: str, assignment_id: int,
                  scores: dict[str, int | str | None]) -> int:
    """Store a judge's Likert scores for a dataset dialogue: one score per protocol Likert aspect, each a
    whole number within the protocol's scale. Nothing is written unless all are valid."""
    a = _assignment(store, judge_id, assignment_id)
    item = _item(store, a.item_id)
    if item.kind != "dialogue":
        raise AnnotationError(f"assignment {assignment_id} is a study conversation: it takes pairwise votes")
    if a.status != "open":
        raise AnnotationError("this item was already submitted")
    extra = set(scores) - set(protocol.annotation.likert_aspects)
    if extra:
        raise AnnotationError(f"unknown Likert aspect(s): {', '.join(sorted(extra))}")
    lo, hi = protocol.annotation.likert_scale
    clean: dict[str, int] = {}
    problems = []
    for aspect in protocol.annotation.likert_aspects:
        value = scores.get(aspect)
        text = "" if value is None else str(value).strip()
        score = int(text) if text.lstrip("-").isdigit() else None
        if score is None or not lo <= score <= hi:
            problems.append(aspect)
        else:
            clean[aspect] = score
    if problems:
        raise AnnotationError(f"please give every score as a whole number from {lo} to {hi}; missing or "
                              f"invalid: {', '.join(problems)}")
    return _submit(lambda: store.submit_likert(a.id, clean, quota=protocol.annotation.judges_per_item))
