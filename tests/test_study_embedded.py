"""One turn of the study with the real embedded model (SmolLM2-135M-Instruct) behind all three panes."""

from __future__ import annotations

import pytest
from study_helpers import make_protocol

from extes.study.session import Study
from extes.study.store import Store

pytestmark = pytest.mark.slow


def test_one_turn_with_the_embedded_model(tmp_path):
    from extes.base.embedded import EmbeddedModelMissing
    from extes.models import ArmPool

    arms = [{"name": f"emb-{i}", "base": "smollm2-135m-instruct",
             "generation": {"max_new_tokens": 12, "temperature": 0.0, "seed": i}} for i in range(3)]
    protocol = make_protocol(tmp_path, arms=arms)
    try:
        pool = ArmPool(list(protocol.arms))
    except EmbeddedModelMissing as exc:
        pytest.skip(str(exc))
    store = Store(tmp_path / "s.sqlite")
    try:
        study = Study(protocol, store, pool)
        view = study.start_conversation(study.consent().code, "Breakups or Divorce")
        views = list(study.send(view.code, view.conversation_id, "ABC", "I just broke up and I feel awful."))
        assert [p.turns for p in views[-1].panes] == [1, 1, 1]
        replies = [m for m in store.messages(view.conversation_id) if m.role == "assistant"]
        assert len(replies) == 3 and all(r.text.strip() for r in replies)
        assert all(r.latency_s > 0 and r.n_tokens <= 12 and r.settings for r in replies)
    finally:
        pool.close()
        store.close()
