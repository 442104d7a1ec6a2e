"""Formatting and masking for training: token-by-token checks on the tiny llama's ChatML template."""

from __future__ import annotations

import pytest

from extes.dialogue import Dialogue, Turn
from extes.taxonomy import split_strategy_tag
from extes.train.formatting import (
    DIALOGPT_TEMPLATE,
    IGNORE,
    collate,
    encode_dialogue,
    encode_messages,
    ensure_chat_template,
    length_grouped_batches,
    padding_waste,
)


@pytest.fixture(scope="module")
def tok(tiny_llama):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_llama)


MESSAGES = [
    {"role": "system", "content": "Be kind."},
    {"role": "user", "content": "I feel alone."},
    {"role": "assistant", "content": "[Emotional Validation] That sounds hard."},
    {"role": "user", "content": "yes"},
    {"role": "assistant", "content": "I am here."},
]


def _supervised_text(tok, enc) -> list[str]:
    """Decoded runs of consecutive supervised tokens."""
    runs, cur = [], []
    for i, lab in zip(enc.input_ids, enc.labels):
        if lab != IGNORE:
            assert lab == i, "a supervised label must equal its input token (shift happens in the loss)"
            cur.append(i)
        elif cur:
            runs.append(tok.decode(cur))
            cur = []
    if cur:
        runs.append(tok.decode(cur))
    return runs


def test_ids_equal_the_chat_template_rendering(tok):
    [enc] = encode_messages(tok, MESSAGES, max_length=1024)
    rendered = tok.apply_chat_template(MESSAGES, tokenize=False)
    assert tok.decode(enc.input_ids) == rendered
    assert len(enc.labels) == len(enc.input_ids)


def test_mask_token_by_token(tok):
    [enc] = encode_messages(tok, MESSAGES, max_length=1024)
    im_end = tok.convert_tokens_to_ids("<|im_end|>")
    im_start = tok.convert_tokens_to_ids("<|im_start|>")
    # Walk the sequence with the template's structure: each message is
    # <|im_start|> role \n content <|im_end|> \n ; only assistant content + its <|im_end|> is supervised.
    pos = 0
    for m in MESSAGES:
        assert enc.input_ids[pos] == im_start and enc.labels[pos] == IGNORE
        end = enc.input_ids.index(im_end, pos)
        header_and_content = enc.input_ids[pos:end]
        text = tok.decode(header_and_content)
        assert text == f"<|im_start|>{m['role']}\n{m['content']}"
        header_len = len(tok(f"<|im_start|>{m['role']}\n", add_special_tokens=False)["input_ids"])
        for k in range(pos, end + 2):  # through <|im_end|> and the newline after it
            tok_is_content = pos + header_len <= k <= end  # content tokens and <|im_end|>
            supervised = enc.labels[k] != IGNORE
            assert supervised == (m["role"] == "assistant" and tok_is_content), (m["role"], k, tok.decode([enc.input_ids[k]]))
        assert tok.decode([enc.input_ids[end + 1]]) == "\n"
        pos = end + 2
    assert pos == len(enc.input_ids)
    assert _supervised_text(tok, enc) == [
        "[Emotional Validation] That sounds hard.<|im_end|>",
        "I am here.<|im_end|>",
    ]


def test_context_tokens_match_inference_prompt(tok):
    """The tokens before each reply equal what the engine feeds the model at generation time."""
    [enc] = encode_messages(tok, MESSAGES, max_length=1024)
    prompt = tok.apply_chat_template(MESSAGES[:4], tokenize=False, add_generation_prompt=True)
    prompt_ids = tok(prompt, add_special_tokens=False)["input_ids"]
    assert enc.input_ids[: len(prompt_ids)] == prompt_ids
    assert enc.labels[len(prompt_ids)] != IGNORE and enc.labels[len(prompt_ids) - 1] == IGNORE


def _dialogue(n_pairs: int, words: int = 6) -> Dialogue:
    turns = []
    for k in range(n_pairs):
        turns.append(Turn("user", f"user message {k} " + "sad " * words))
        turns.append(Turn("assistant", f"reply {k} " + "kind " * words, strategy="Emotional Validation"))
    return Dialogue(id="d1", source="test", scene="Breakups or Divorce", description="A breakup.", turns=turns)


def test_strategies_tag_each_reply_and_the_tag_parses_back(tok):
    d = _dialogue(2)
    [enc] = encode_dialogue(tok, d, strategies=True, max_length=1024)
    runs = _supervised_text(tok, enc)
    assert len(runs) == 2
    for k, run in enumerate(runs):
        strategy, text = split_strategy_tag(run.removesuffix("<|im_end|>"), "extes")
        assert strategy == "Emotional Validation" and text.startswith(f"reply {k}")
    [plain] = encode_dialogue(tok, d, strategies=False, max_length=1024)
    assert all(not r.startswith("[") for r in _supervised_text(tok, plain))


def test_with_scene_goes_to_system_prompt_unsupervised(tok):
    d = _dialogue(1)
    [enc] = encode_dialogue(tok, d, strategies=False, with_scene=True, max_length=1024)
    text = tok.decode(enc.input_ids)
    assert "Topic: Breakups or Divorce. Situation: A breakup." in text.split("<|im_end|>")[0]
    assert all("Topic" not in r for r in _supervised_text(tok, enc))


def test_long_dialogue_windows_keep_system_and_supervise_each_reply_once(tok):
    d = _dialogue(8)
    full = encode_dialogue(tok, d, strategies=False, system_prompt="Be kind.", max_length=100_000)
    assert len(full) == 1
    max_len = len(full[0]) // 3
    windows = encode_dialogue(tok, d, strategies=False, system_prompt="Be kind.", max_length=max_len)
    assert len(windows) >= 3
    sup_runs = []
    for w in windows:
        assert len(w) <= max_len
        text = tok.decode(w.input_ids)
        assert text.startswith("<|im_start|>system\n"), "every window keeps the system prompt"
        assert "<|im_start|>user\n" in text, "a window starts its turns at a user message"
        sup_runs += _supervised_text(tok, w)
    # every reply supervised exactly once, in order, with its end-of-turn token
    assert sup_runs == [f"reply {k} " + "kind " * 6 + "<|im_end|>" for k in range(8)]
    # later windows drop the oldest turns but keep some context before their first reply
    assert "user message 0" not in tok.decode(windows[-1].input_ids)


def test_single_exchange_longer_than_max_length_is_shortened_not_dropped(tok):
    d = _dialogue(1, words=200)
    [w] = encode_dialogue(tok, d, strategies=False, system_prompt="Be kind.", max_length=120)
    assert len(w) <= 120
    runs = _supervised_text(tok, w)
    assert len(runs) == 1 and runs[0].startswith("reply 0") and runs[0].endswith("<|im_end|>")
    with pytest.raises(ValueError, match="d1.*system prompt"):
        encode_dialogue(tok, d, strategies=False, system_prompt="word " * 300, max_length=120)


def test_no_reply_gives_no_example_and_bad_messages_are_named(tok):
    assert encode_messages(tok, [{"role": "user", "content": "hi"}]) == []
    with pytest.raises(ValueError, match="message 1"):
        encode_messages(tok, [{"role": "user", "content": "hi"}, {"role": "bot", "content": "x"}])


def test_dialogpt_style_joins_utterances_with_eos(tiny_gpt2):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_gpt2)
    assert ensure_chat_template(tok, "dialogpt") == "dialogpt"
    assert tok.chat_template == DIALOGPT_TEMPLATE
    msgs = [{"role": "user", "content": "I feel alone."}, {"role": "assistant", "content": "I am here."},
            {"role": "user", "content": "thanks"}, {"role": "assistant", "content": "Any time."}]
    [enc] = encode_messages(tok, msgs)
    eos = tok.eos_token
    assert tok.decode(enc.input_ids) == f"I feel alone.{eos}I am here.{eos}thanks{eos}Any time.{eos}"
    assert _supervised_text(tok, enc) == [f"I am here.{eos}", f"Any time.{eos}"]


def test_ensure_chat_template_auto_and_errors(tok):
    assert ensure_chat_template(tok, "auto") == "template"
    with pytest.raises(ValueError, match="chat format"):
        ensure_chat_template(tok, "xml")


def test_length_grouped_batches_cut_padding():
    import random

    rng = random.Random(1)
    lengths = [rng.randint(50, 1000) for _ in range(400)]
    batches = length_grouped_batches(lengths, batch_size=4, seed=0)
    assert sorted(i for b in batches for i in b) == list(range(400))
    naive = [list(range(i, i + 4)) for i in range(0, 400, 4)]
    assert padding_waste(lengths, batches) < 0.05 < padding_waste(lengths, naive)
    assert length_grouped_batches(lengths, 4, seed=0) == batches  # deterministic
    assert length_grouped_batches(lengths, 4, seed=1) != batches


def test_collate_pads_right_and_masks_padding(tok):
    encs = encode_messages(tok, MESSAGES) + encode_messages(tok, MESSAGES[:3])
    batch = collate(encs, pad_id=tok.pad_token_id)
    n0, n1 = len(encs[0]), len(encs[1])
    assert batch["input_ids"].shape == (2, n0)
    assert batch["attention_mask"][1].sum().item() == n1
    assert (batch["labels"][1, n1:] == IGNORE).all()
    assert (batch["input_ids"][1, n1:] == tok.pad_token_id).all()


def test_esconv_dialogues_train_with_their_own_strategies(tok, tmp_path):
    import json

    from extes.dialogue import load_dialogues

    rec = {"problem_type": "job crisis", "situation": "Lost my job.", "emotion_type": "anxiety", "dialog": [
        {"speaker": "seeker", "content": "I lost my job today.", "annotation": {}},
        {"speaker": "supporter", "content": "I am sorry. How are you coping?", "annotation": {"strategy": "Question"}},
        {"speaker": "seeker", "content": "Badly.", "annotation": {}},
        {"speaker": "supporter", "content": "That is understandable.", "annotation": {"strategy": "Affirmation and Reassurance"}},
    ]}
    (tmp_path / "esconv.json").write_text(json.dumps([rec]))
    [d] = load_dialogues(tmp_path / "esconv.json")
    [enc] = encode_dialogue(tok, d, strategies=True, system_prompt="Be kind.")
    tags = [split_strategy_tag(r.removesuffix("<|im_end|>"), "esconv")[0] for r in _supervised_text(tok, enc)]
    assert tags == ["Question", "Affirmation and Reassurance"]
