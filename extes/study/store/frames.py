"""The DataFrame readers that `extes.analysis` consumes (docs/analysis.md) and the dashboard's counts."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa

from extes.study.store.base import StoreBase
from extes.study.store.schema import (
    annotation_items,
    conversation_flags,
    conversations,
    flags,
    judgments,
    likert_ratings,
    llm_votes,
    messages,
    participants,
    reports,
    votes,
)

VOTE_SOURCES = ("participant", "judge", "all", "llm")  # votes_frame sources; "all" is people only


class FramesStore(StoreBase):
    def votes_frame(self, source: str = "participant"):
        """Votes CSV frame: session_id, aspect, arm_a, arm_b, outcome, rater_id, conversation_id, created_at.

        source="participant": the participants' own votes (session_id = conversation id: one rating form);
        "judge": third-party judgments (session_id = "j<assignment id>"); "all": both (people only);
        "llm": LLM judges' votes (`extes judge --db`; rater_id = "llm:<model>").
        """
        import pandas as pd

        cols = ["session_id", "aspect", "arm_a", "arm_b", "outcome", "rater_id", "conversation_id", "created_at"]
        rows: list[dict[str, Any]] = []
        with self.engine.connect() as conn:
            if source in ("participant", "all"):
                for r in conn.execute(sa.select(votes).order_by(votes.c.id)):
                    rows.append({"session_id": r.conversation_id, "aspect": r.aspect, "arm_a": r.arm_a,
                                 "arm_b": r.arm_b, "outcome": r.outcome, "rater_id": r.rater_id,
                                 "conversation_id": r.conversation_id, "created_at": r.created_at})
            if source in ("judge", "all"):
                for r in conn.execute(sa.select(judgments).order_by(judgments.c.id)):
                    rows.append({"session_id": f"j{r.assignment_id}", "aspect": r.aspect, "arm_a": r.arm_a,
                                 "arm_b": r.arm_b, "outcome": r.outcome, "rater_id": r.judge_id,
                                 "conversation_id": r.conversation_id, "created_at": r.created_at})
            if source == "llm":
                for r in conn.execute(sa.select(llm_votes).order_by(llm_votes.c.id)):
                    rows.append({"session_id": r.conversation_id, "aspect": r.aspect, "arm_a": r.arm_a,
                                 "arm_b": r.arm_b, "outcome": r.outcome, "rater_id": f"llm:{r.judge_model}",
                                 "conversation_id": r.conversation_id, "created_at": r.created_at})
            if source not in VOTE_SOURCES:
                raise ValueError(f"votes source must be {', '.join(VOTE_SOURCES)}, got {source!r}")
        return pd.DataFrame(rows, columns=cols)

    def ratings_frame(self):
        """Ratings CSV frame: item_id, rater_id, label, aspect, source.

        - Likert rows: judges' 0-3 scores of dataset dialogues (item_id = annotation item id,
          label = the score as text, aspect = the Likert aspect lower-cased, source = the dialogue's
          dataset source, e.g. "extes" or "extes-build", so means compare datasets as in Table 4);
        - source "pairwise": every pairwise vote on a conversation, by its participant and by judges,
          labelled by `extes.analysis.agreement.pairwise_rating_rows`.
        """
        # lazy, as pandas: the store itself runs without the analysis stack
        import pandas as pd

        from extes.analysis.agreement import pairwise_rating_rows

        out: list[dict[str, Any]] = []
        with self.engine.connect() as conn:
            q = (sa.select(likert_ratings, annotation_items.c.source.label("item_source"))
                 .join(annotation_items, annotation_items.c.id == likert_ratings.c.item_id)
                 .order_by(likert_ratings.c.id))
            for r in conn.execute(q):
                out.append({"item_id": r.item_id, "rater_id": r.judge_id, "label": str(r.score),
                            "aspect": r.aspect.lower(), "source": r.item_source or "likert"})
            pair_rows = [(r.conversation_id, r.rater_id, r.aspect, r.arm_a, r.arm_b, r.outcome)
                         for r in conn.execute(sa.select(votes).order_by(votes.c.id))]
            pair_rows += [(r.conversation_id, r.judge_id, r.aspect, r.arm_a, r.arm_b, r.outcome)
                          for r in conn.execute(sa.select(judgments).order_by(judgments.c.id))]
        out += pairwise_rating_rows(pair_rows)
        return pd.DataFrame(out, columns=["item_id", "rater_id", "label", "aspect", "source"])

    def flags_frame(self):
        """Attention flags for extes.analysis.exclusions.apply_exclusions: conversation_id, flag, detail."""
        import pandas as pd

        cols = ["conversation_id", "flag", "detail"]
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(*(conversation_flags.c[c] for c in cols))
                                .order_by(conversation_flags.c.id)).all()
        return pd.DataFrame([tuple(r) for r in rows], columns=cols)

    def screening_frame(self):
        """Replies per arm and how many the screen replaced (`extes.study.screening`): arm, replies,
        screened_out, share (screened_out / replies), and capped_cut (capped replies ended at a sentence)."""
        import pandas as pd

        screened = sa.func.sum(sa.case((messages.c.screened.is_not(None), 1), else_=0))
        cut = sa.func.sum(sa.case((messages.c.cut_chars > 0, 1), else_=0))
        q = (sa.select(messages.c.arm, sa.func.count(), screened, cut).where(messages.c.role == "assistant")
             .group_by(messages.c.arm).order_by(messages.c.arm))
        with self.engine.connect() as conn:
            rows = [(a, int(n), int(s or 0), int(c or 0)) for a, n, s, c in conn.execute(q)]
        frame = pd.DataFrame(rows, columns=["arm", "replies", "screened_out", "capped_cut"])
        frame.insert(3, "share", (frame["screened_out"] / frame["replies"]).astype(float) if rows else [])
        return frame

    def counts(self) -> dict[str, int]:
        """Live counts for the dashboard."""
        with self.engine.connect() as conn:
            def n(q):
                return int(conn.execute(q).scalar() or 0)
            return {
                "participants": n(sa.select(sa.func.count()).select_from(participants)
                                  .where(participants.c.role == "participant")),
                "conversations": n(sa.select(sa.func.count()).select_from(conversations)),
                "rated_conversations": n(sa.select(sa.func.count()).select_from(conversations)
                                         .where(conversations.c.status == "rated")),
                "votes": n(sa.select(sa.func.count()).select_from(votes)),
                "messages": n(sa.select(sa.func.count()).select_from(messages)),
                "flags": n(sa.select(sa.func.count()).select_from(flags)),
                "open_flags": n(sa.select(sa.func.count()).select_from(flags).where(flags.c.resolved_at.is_(None))),
                "reports": n(sa.select(sa.func.count()).select_from(reports)),
            }
