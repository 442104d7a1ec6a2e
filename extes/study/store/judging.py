"""Third-party judging: annotation items, assignments, judgments, Likert scores, judge invitations."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import sqlalchemy as sa

from extes.study.store.base import DuplicateError, LimitError, StoreBase, new_code, normalize_code, row_dict
from extes.study.store.schema import annotation_items, assignments, judgments, likert_ratings, participants
from extes.study.store.times import ago, now


class JudgingStore(StoreBase):
    def add_annotation_item(self, item_id: str, kind: str, source: str = "", payload: Any = None) -> bool:
        """Register an item judges can be assigned (True if new, False if it existed)."""
        if kind not in ("conversation", "dialogue"):
            raise ValueError(f"annotation item kind must be 'conversation' or 'dialogue', got {kind!r}")
        try:
            with self.engine.begin() as conn:
                conn.execute(annotation_items.insert().values(
                    id=item_id, kind=kind, source=source, created_at=now(),
                    payload=json.dumps(payload, ensure_ascii=False) if payload is not None else None))
            return True
        except sa.exc.IntegrityError:
            return False

    def annotation_items(self, kind: str | None = None) -> list[dict[str, Any]]:
        q = sa.select(annotation_items).order_by(annotation_items.c.created_at, annotation_items.c.id)
        if kind is not None:
            q = q.where(annotation_items.c.kind == kind)
        with self.engine.connect() as conn:
            rows = [row_dict(r) for r in conn.execute(q)]
        for r in rows:
            r["payload"] = json.loads(r["payload"]) if r["payload"] else None
        return rows

    def create_assignment(self, item_id: str, judge_id: str, pane_order: Sequence[str] | None = None) -> int:
        """Assign an item to a judge; DuplicateError if that judge already has it."""
        try:
            with self.engine.begin() as conn:
                return int(conn.execute(assignments.insert().values(
                    item_id=item_id, judge_id=judge_id, status="open", created_at=now(),
                    pane_order=json.dumps(list(pane_order)) if pane_order else None)).inserted_primary_key[0])
        except sa.exc.IntegrityError:
            raise DuplicateError(f"item {item_id} is already assigned to this judge") from None

    def assign_next(self, judge_id: str, pick: Callable[[list[tuple[dict[str, Any], int]]], tuple[str, Any]],
                    *, quota: int, stale_after_s: float, max_open_per_judge: int = 1, max_open_total: int = 100,
                    kinds: Sequence[str] = ("conversation", "dialogue"),
                    exclude: Iterable[str] = ()) -> dict[str, Any] | None:
        """The judge's oldest open assignment, or a new one, decided in one write transaction so quotas and
        limits hold with several app processes on one database.

        An item counts its submitted judgments plus open assignments younger than `stale_after_s`; it is
        eligible while that is below `quota`, the judge never had it and it is not in `exclude` (their own
        conversations). `pick(candidates)` gets [(item, count)] and returns (item id, pane order or None).
        None when nothing is eligible, when the judge already has `max_open_per_judge` open items, or when
        `max_open_total` items are in progress across all judges (LimitError "busy" then)."""
        cutoff = ago(stale_after_s)
        with self._write("assignments") as conn:
            judge = conn.execute(sa.select(participants).where(participants.c.id == judge_id)).first()
            if judge is None or judge.revoked_at is not None:
                raise LimitError("this judge code was revoked", "revoked")
            mine = [row_dict(r) for r in conn.execute(sa.select(assignments).where(assignments.c.judge_id == judge_id)
                                                    .order_by(assignments.c.id))]
            open_mine = [a for a in mine if a["status"] == "open"]
            if open_mine:
                a = open_mine[0]
                a["pane_order"] = json.loads(a["pane_order"]) if a["pane_order"] else None
                return a
            if max_open_per_judge < 1:
                return None
            live = (assignments.c.status == "done") | (
                (assignments.c.status == "open") & (assignments.c.created_at > cutoff))
            n_open = conn.execute(sa.select(sa.func.count()).select_from(assignments).where(
                assignments.c.status == "open", assignments.c.created_at > cutoff)).scalar() or 0
            counts = {item: n for item, n in conn.execute(
                sa.select(assignments.c.item_id, sa.func.count()).where(live).group_by(assignments.c.item_id))}
            seen = {a["item_id"] for a in mine} | set(exclude)
            items = [row_dict(r) for r in conn.execute(sa.select(annotation_items)
                                                   .where(annotation_items.c.kind.in_(list(kinds)))
                                                   .order_by(annotation_items.c.created_at, annotation_items.c.id))]
            candidates = []
            for item in items:
                n = counts.get(item["id"], 0)
                if item["id"] not in seen and n < quota:
                    item["payload"] = json.loads(item["payload"]) if item["payload"] else None
                    candidates.append((item, n))
            if not candidates:
                return None
            if n_open >= max_open_total:
                raise LimitError("too many items are being judged right now", "busy")
            item_id, pane_order = pick(candidates)
            row = {"item_id": item_id, "judge_id": judge_id, "status": "open", "created_at": now(),
                   "pane_order": json.dumps(list(pane_order)) if pane_order else None}
            row["id"] = int(conn.execute(assignments.insert().values(**row)).inserted_primary_key[0])
        row["pane_order"] = list(pane_order) if pane_order else None
        row["completed_at"] = None
        return row

    def assignments(self, judge_id: str | None = None, item_id: str | None = None) -> list[dict[str, Any]]:
        q = sa.select(assignments).order_by(assignments.c.id)
        if judge_id is not None:
            q = q.where(assignments.c.judge_id == judge_id)
        if item_id is not None:
            q = q.where(assignments.c.item_id == item_id)
        with self.engine.connect() as conn:
            rows = [row_dict(r) for r in conn.execute(q)]
        for r in rows:
            r["pane_order"] = json.loads(r["pane_order"]) if r["pane_order"] else None
        return rows

    def assignment_counts(self) -> dict[str, int]:
        """Number of judges assigned per item id (open or done)."""
        q = sa.select(assignments.c.item_id, sa.func.count()).group_by(assignments.c.item_id)
        with self.engine.connect() as conn:
            return {item: n for item, n in conn.execute(q)}

    def submit_judgments(self, assignment_id: int, rows: Sequence[dict[str, Any]], quota: int | None = None) -> int:
        """Pairwise judgments for an assigned conversation (aspect, arm_a, arm_b, outcome), atomically,
        closing the assignment; DuplicateError when it was already done."""
        return self._submit_assignment(assignment_id, judgments, rows, ("aspect", "arm_a", "arm_b", "outcome"),
                                       extra=lambda a: {"conversation_id": a["item_id"]}, quota=quota)

    def submit_likert(self, assignment_id: int, scores: dict[str, int], quota: int | None = None) -> int:
        """Likert scores (aspect -> score) for an assigned dataset dialogue, atomically."""
        rows = [{"aspect": k, "score": int(v)} for k, v in scores.items()]
        return self._submit_assignment(assignment_id, likert_ratings, rows, ("aspect", "score"),
                                       extra=lambda a: {"item_id": a["item_id"]}, quota=quota)

    def _submit_assignment(self, assignment_id: int, table: sa.Table, rows: Sequence[dict[str, Any]],
                           keys: tuple[str, ...], extra: Callable[[dict], dict], quota: int | None = None) -> int:
        """LimitError "quota" when the item already has `quota` submitted judgments (a late judge whose
        assignment went stale: the assignment is closed as "expired"), "revoked" for a revoked judge."""
        stamp = now()
        full = False
        try:
            with self._write("assignments") as conn:
                a = conn.execute(sa.select(assignments).where(assignments.c.id == assignment_id)).first()
                if a is None:
                    raise ValueError(f"no assignment {assignment_id}")
                a = row_dict(a)
                revoked = conn.execute(sa.select(participants.c.revoked_at)
                                       .where(participants.c.id == a["judge_id"])).scalar()
                if revoked is not None:
                    raise LimitError("this judge code was revoked", "revoked")
                if quota is not None and a["status"] == "open":
                    done = conn.execute(sa.select(sa.func.count()).select_from(assignments).where(
                        assignments.c.item_id == a["item_id"], assignments.c.status == "done")).scalar() or 0
                    if done >= quota:
                        conn.execute(assignments.update().where(assignments.c.id == assignment_id)
                                     .values(status="expired", completed_at=stamp))
                        full = True
                if not full:
                    updated = conn.execute(assignments.update().where(
                        assignments.c.id == assignment_id, assignments.c.status == "open"
                    ).values(status="done", completed_at=stamp)).rowcount
                    if updated != 1:
                        raise DuplicateError("this assignment was already submitted")
                    conn.execute(table.insert(), [
                        {"assignment_id": assignment_id, "judge_id": a["judge_id"], "created_at": stamp,
                         **extra(a), **{k: r[k] for k in keys}} for r in rows
                    ])
        except sa.exc.IntegrityError:
            raise DuplicateError("this assignment was already submitted") from None
        if full:
            raise LimitError("this item already has all the judgments it needs", "quota")
        return len(rows)

    def invite_judges(self, n: int, protocol: str = "") -> list[str]:
        """`n` new judge codes (single-use invitations: each is one judge's identity), as the researcher
        hands them out. Longer than participant codes: 16 characters (about 79 bits)."""
        if not 1 <= int(n) <= 1000:
            raise ValueError(f"number of judge invitations must be 1-1000, got {n}")
        codes = []
        for _ in range(int(n)):
            for _attempt in range(20):
                row = {"id": f"p-{uuid.uuid4().hex[:12]}", "code": new_code(4), "role": "judge",
                       "consented_at": now(), "protocol": protocol}
                try:
                    with self.engine.begin() as conn:
                        conn.execute(participants.insert().values(**row))
                    codes.append(row["code"])
                    break
                except sa.exc.IntegrityError:  # pragma: no cover - a code collision
                    continue
        return codes

    def revoke_judge(self, code: str) -> int:
        """Revoke a judge invitation: the code no longer opens /annotate, and the judge's unfinished items
        are freed for others (their open assignments are deleted). Returns how many were freed; ValueError
        when no judge has this code."""
        code = normalize_code(code)
        with self._write("assignments") as conn:
            judge = conn.execute(sa.select(participants).where(participants.c.code == code,
                                                               participants.c.role == "judge")).first()
            if judge is None:
                raise ValueError("no judge invitation with this code")
            conn.execute(participants.update().where(participants.c.id == judge.id)
                         .values(revoked_at=judge.revoked_at or now()))
            freed = conn.execute(assignments.delete().where(assignments.c.judge_id == judge.id,
                                                            assignments.c.status == "open")).rowcount
        return int(freed)

    def judges(self) -> list[dict[str, Any]]:
        """Every judge invitation with its state and submitted items (for the dashboard)."""
        done = sa.select(assignments.c.judge_id, sa.func.count().label("n")).where(
            assignments.c.status == "done").group_by(assignments.c.judge_id).subquery()
        q = (sa.select(participants.c.id, participants.c.code, participants.c.consented_at, participants.c.revoked_at,
                       sa.func.coalesce(done.c.n, 0).label("done"))
             .outerjoin(done, done.c.judge_id == participants.c.id)
             .where(participants.c.role == "judge").order_by(participants.c.consented_at))
        with self.engine.connect() as conn:
            return [row_dict(r) for r in conn.execute(q)]
