"""Human review of generated dialogues (`extes review --run DIR`).

The functions here do the work and are tested without a browser; `build_review_app` only wires
Gradio components to them. A decision is a "review" record in the run's journal (reviewer, time,
action, the dialogue before and after), so the review is as durable and resumable as the build,
and the exports are refreshed after every decision.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from extes.dialogue import Dialogue, Turn, load_dialogues
from extes.llm.journal import JOURNAL_NAME, Journal
from extes.selfchat.export import export_run, round_stats
from extes.selfchat.state import RunState, round_of
from extes.selfchat.validate import Rules, check_structure
from extes.taxonomy import STRATEGY_NAMES, UnknownLabelError, normalize_strategy

COLUMNS = ["role", "text", "strategy"]


class ReviewError(ValueError):
    pass


def _state(run_dir: str | Path) -> RunState:
    run_dir = Path(run_dir)
    if not (run_dir / JOURNAL_NAME).is_file():
        raise FileNotFoundError(f"{run_dir}: no {JOURNAL_NAME}; is this an `extes build --out` folder?")
    return RunState.load(run_dir)


def load_queue(run_dir: str | Path) -> list[dict[str, Any]]:
    """needs_review first, then rejected dialogues that parsed; each with its reasons."""
    return [
        {"dialogue_id": d["dialogue_id"], "request_id": d["id"], "round": d["round"], "scenario": d["scenario"],
         "status": d["status"], "reasons": d["reasons"], "notes": d.get("notes", []), "dialogue": d["dialogue"]}
        for d in _state(run_dir).queue()
    ]


def turns_table(dialogue: dict[str, Any]) -> list[list[str]]:
    rows = []
    for t in dialogue["turns"]:
        meta = t.get("meta") or {}
        strategy = t.get("strategy") or meta.get("unknown_strategy") or ""
        rows.append([t["role"], t["text"], strategy if t["role"] == "assistant" else ""])
    return rows


def _rows(table: Any) -> list[list[str]]:
    if hasattr(table, "values") and hasattr(table, "columns"):  # a pandas DataFrame from Gradio
        table = table.values.tolist()
    rows = []
    for row in table or []:
        cells = ["" if c is None else str(c) for c in list(row)[:3]]
        cells += [""] * (3 - len(cells))
        if any(c.strip() for c in cells):
            rows.append(cells)
    return rows


def edited_dialogue(before: dict[str, Any], table: Any, description: str | None,
                    rules: Rules | None = None) -> Dialogue:
    """The reviewer's version of a dialogue; ReviewError (naming the row) if it is not acceptable."""
    rules = rules or Rules()
    turns = []
    for i, (role, text, strategy) in enumerate(_rows(table)):
        role = role.strip().lower()
        role = {"ai": "assistant", "user": "user", "assistant": "assistant"}.get(role, role)
        if role not in ("user", "assistant"):
            raise ReviewError(f"row {i}: role must be 'user' or 'assistant', got {role!r}")
        canon = None
        if role == "assistant":
            try:
                canon = normalize_strategy(strategy, "extes", where=f"row {i}")
            except UnknownLabelError as exc:
                raise ReviewError(f"{exc}; choose one of: {', '.join(STRATEGY_NAMES)}") from None
            if canon is None:
                raise ReviewError(f"row {i}: an AI turn needs a strategy")
        turns.append(Turn(role, text.strip(), canon))
    d = Dialogue.from_dict(before)
    d.turns = turns
    if description is not None:
        d.description = description.strip()
    reasons, _notes = check_structure(d, before["scene"], rules)
    if reasons:
        raise ReviewError("cannot accept yet: " + "; ".join(reasons))
    return d


def _seeds_of(state: RunState) -> list[Dialogue]:
    starts = [r for r in state.records if r["type"] == "run_start"]
    if not starts:
        return []
    try:
        seeds = load_dialogues(starts[-1]["config"]["seeds"])
    except (OSError, ValueError):
        return []
    for d in seeds:
        d.meta["round"] = 0
    return seeds


def apply_review(run_dir: str | Path, dialogue_id: str, action: str, reviewer: str,
                 table: Any = None, description: str | None = None, rules: Rules | None = None) -> dict[str, Any]:
    """Record an accept (with the possibly edited dialogue) or a discard; returns the journal record."""
    if action not in ("accept", "discard"):
        raise ReviewError(f"action must be 'accept' or 'discard', got {action!r}")
    if not reviewer or not reviewer.strip():
        raise ReviewError("a reviewer name is required")
    run_dir = Path(run_dir)
    state = _state(run_dir)
    dec = next((d for d in state.decisions.values() if d["dialogue_id"] == dialogue_id), None)
    if dec is None or not dec.get("dialogue"):
        raise ReviewError(f"{run_dir}: no reviewable dialogue {dialogue_id!r}")
    if state.reviews.get(dialogue_id):
        raise ReviewError(f"{dialogue_id} was already reviewed by {state.reviews[dialogue_id][-1]['reviewer']}")
    before = dec["dialogue"]
    after = None
    edited = False
    if action == "accept":
        d = edited_dialogue(before, table if table is not None else turns_table(before), description, rules)
        for t in d.turns:
            t.meta.pop("missing_strategy", None)
            t.meta.pop("unknown_strategy", None)
        edited = [t.to_dict() for t in d.turns] != [
            Turn(t["role"], t["text"], t.get("strategy")).to_dict() for t in before["turns"]
        ] or d.description != before["description"]
        d.meta.update({"reviewed": True, "edited": edited, "reviewer": reviewer.strip()})
        after = d.to_dict()
    with Journal(run_dir / JOURNAL_NAME) as j:
        rec = j.append("review", id=dec["id"], dialogue_id=dialogue_id, round=dec["round"],
                       reviewer=reviewer.strip(), action=action, status_before=dec["status"],
                       reasons_before=dec["reasons"], edited=edited, before=before, after=after)
    export_run(run_dir, _seeds_of(RunState.load(run_dir)))
    return rec


def adjustment_rates(run_dir: str | Path) -> list[dict[str, Any]]:
    """Per round: accepted dialogues in total, how many needed a human, and the rate (paper: < 10%)."""

    state = _state(run_dir)
    rounds = sorted({round_of(r) for r in state.requests})
    out = []
    for k in rounds:
        s = round_stats(state, k)
        out.append({"round": k, "accepted": s["accepted_final"], "by_review": s["accepted_by_review"],
                    "edited": s["edited_by_review"], "reviewed": s["reviewed"],
                    "human_adjustment_rate": s["human_adjustment_rate"]})
    return out


def rates_markdown(run_dir: str | Path) -> str:
    rows = adjustment_rates(run_dir)
    if not rows:
        return "No rounds yet."
    lines = ["| round | accepted | accepted by review | edited | human-adjustment rate |", "|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['round']} | {r['accepted']} | {r['by_review']} | {r['edited']} | "
                     f"{100 * r['human_adjustment_rate']:.1f}% |")
    return "\n".join(lines)


def _label(item: dict[str, Any]) -> str:
    return f"{item['dialogue_id']} · {item['status']} · {item['scenario']}"


def build_review_app(run_dir: str | Path, reviewer: str = ""):
    """The Gradio page. UI only: every action calls a function above."""
    import gradio as gr

    run_dir = Path(run_dir)
    _state(run_dir)  # fail early on a wrong folder

    def choices() -> list[tuple[str, str]]:
        return [(_label(i), i["dialogue_id"]) for i in load_queue(run_dir)]

    def show(dialogue_id: str | None):
        item = next((i for i in load_queue(run_dir) if i["dialogue_id"] == dialogue_id), None)
        if item is None:
            return "Queue is empty." if not dialogue_id else f"{dialogue_id} is no longer in the queue.", "", "", []
        reasons = "\n".join(f"- {r}" for r in item["reasons"]) or "- (none)"
        notes = "\n".join(f"- {n}" for n in item["notes"])
        md = f"**{item['status']}** (round {item['round']})\n\n**Reasons**\n{reasons}"
        if notes:
            md += f"\n\n**Notes**\n{notes}"
        d = item["dialogue"]
        return md, d["scene"], d["description"], turns_table(d)

    def decide(action: str, dialogue_id: str, table: Any, description: str, who: str):
        try:
            apply_review(run_dir, dialogue_id, action, who, table=table, description=description)
            msg = f"{dialogue_id}: {action}ed by {who}."
        except (ReviewError, FileNotFoundError) as exc:
            msg = f"Not saved: {exc}"
            return (msg, gr.update(), rates_markdown(run_dir)) + tuple(gr.update() for _ in range(4))
        new_choices = choices()
        nxt = new_choices[0][1] if new_choices else None
        return (msg, gr.update(choices=new_choices, value=nxt), rates_markdown(run_dir)) + show(nxt)

    with gr.Blocks(title="ExTES build review") as app:
        gr.Markdown(f"## Review generated dialogues\nRun: `{run_dir}`. Valid strategies: "
                    + ", ".join(STRATEGY_NAMES) + " (abbreviations work too).")
        rates = gr.Markdown(rates_markdown(run_dir))
        first = choices()
        with gr.Row():
            item = gr.Dropdown(choices=first, value=first[0][1] if first else None, label="Queue")
            refresh = gr.Button("Refresh queue")
        info = gr.Markdown()
        scene = gr.Textbox(label="Scene (fixed)", interactive=False)
        description = gr.Textbox(label="Description", lines=2)
        table = gr.Dataframe(headers=COLUMNS, datatype=["str", "str", "str"], interactive=True, wrap=True,
                             label="Turns (edit text and strategies; add or delete rows as needed)")
        who = gr.Textbox(value=reviewer, label="Reviewer")
        with gr.Row():
            accept = gr.Button("Accept", variant="primary")
            discard = gr.Button("Discard", variant="stop")
        result = gr.Markdown()
        outputs = [info, scene, description, table]
        item.change(show, inputs=item, outputs=outputs, api_name="show")
        refresh.click(lambda: gr.update(choices=choices()), outputs=item, api_name="refresh")
        accept.click(lambda i, t, d, w: decide("accept", i, t, d, w), inputs=[item, table, description, who],
                     outputs=[result, item, rates] + outputs, api_name="accept")
        discard.click(lambda i, t, d, w: decide("discard", i, t, d, w), inputs=[item, table, description, who],
                      outputs=[result, item, rates] + outputs, api_name="discard")
        app.load(show, inputs=item, outputs=outputs, api_name=False)
    return app
