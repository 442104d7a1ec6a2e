"""Pure text metrics against hand-computed values and against the reference implementations."""

import math

import pytest

from extes.metrics.distinct import distinct
from extes.metrics.extrema import GloveEmbeddings, vector_extrema
from extes.metrics.overlap import bleu, meteor, rouge_l
from extes.metrics.text import tokenize

CAT = "the cat sat on the mat".split()
CAT_REF = "the cat is on the mat".split()


def test_tokenize_is_nltk_treebank_lowercased():
    assert tokenize("I can't sleep. It's late!") == ["i", "ca", "n't", "sleep", ".", "it", "'s", "late", "!"]
    assert tokenize("  ") == []


def test_bleu_hand_computed():
    # unigrams 5/6, bigrams 3/5, trigrams 1/4, 4-grams 0/3 -> floor smoothing 0.1/3; equal lengths: BP = 1
    assert bleu([CAT], [CAT_REF], 2) == pytest.approx(100 * math.sqrt(5 / 6 * 3 / 5))
    assert bleu([CAT], [CAT_REF], 4) == pytest.approx(100 * (5 / 6 * 3 / 5 * 1 / 4 * 0.1 / 3) ** 0.25)


def test_bleu_brevity_penalty_and_corpus_level():
    hyp = ["the", "cat"]
    # corpus: 2 + 6 hyp tokens vs 6 + 6 ref tokens -> BP = exp(1 - 12/8)
    got = bleu([hyp, CAT], [CAT_REF, CAT_REF], 2)
    p1 = (2 + 5) / (2 + 6)
    p2 = (1 + 3) / (1 + 5)
    assert got == pytest.approx(100 * math.exp(1 - 12 / 8) * math.sqrt(p1 * p2))


def test_bleu_agrees_with_nltk_method1_when_replies_have_all_orders():
    from nltk.translate.bleu_score import SmoothingFunction, corpus_bleu

    hyps = [tokenize(t) for t in ["I hear you, that sounds really hard to carry alone.",
                                  "What would help you most right now?",
                                  "It makes sense that you feel hurt after what she said."]]
    refs = [tokenize(t) for t in ["That sounds so hard to carry on your own.",
                                  "What do you think would help the most tonight?",
                                  "Feeling hurt after what she said makes complete sense."]]
    sm = SmoothingFunction().method1
    for order, weights in ((2, (0.5, 0.5)), (4, (0.25,) * 4)):
        ref = 100 * corpus_bleu([[r] for r in refs], hyps, weights=weights, smoothing_function=sm)
        assert bleu(hyps, refs, order) == pytest.approx(ref, rel=1e-9)


def test_rouge_l_hand_computed_and_matches_rouge_score():
    from rouge_score.rouge_scorer import RougeScorer

    # LCS("the cat on the mat") = 5 of 6 and 6; "i sad" = 2 of 3 and 4 -> F = 4/7
    got = rouge_l([CAT, "i am sad".split()], [CAT_REF, "i feel very sad".split()])
    assert got == pytest.approx(100 * (5 / 6 + 4 / 7) / 2)
    plain = RougeScorer(["rougeL"])
    pairs = [("you are not alone in this", "you are never alone with this"), ("call your sister", "maybe call a friend")]
    ours = rouge_l([tokenize(h) for h, _ in pairs], [tokenize(r) for _, r in pairs])
    theirs = 100 * sum(plain.score(r, h)["rougeL"].fmeasure for h, r in pairs) / len(pairs)
    assert ours == pytest.approx(theirs)


def test_meteor_without_synonyms_hand_computed():
    # 2 of 3 words match in one chunk: P = R = 2/3, Fmean = 2/3, penalty 0.5 * (1/2)^3
    assert meteor([["i", "am", "happy"]], [["i", "am", "glad"]]) == pytest.approx(100 * 2 / 3 * (1 - 0.5 * 0.125))
    assert meteor([[]], [["x"]]) == 0.0


def test_meteor_uses_wordnet_synonyms_when_found():
    from extes.metrics.wordnet import find_wordnet

    wn = find_wordnet()
    if not wn.available:
        pytest.skip(wn.source)
    hyp, ref = [["i", "have", "an", "auto"]], [["i", "have", "a", "car"]]
    assert meteor(hyp, ref, wn.reader) > meteor(hyp, ref, None)


def test_distinct_both_definitions_hand_computed():
    replies = [["a", "b", "a", "b"], ["a", "b"]]
    d1 = distinct(replies, 1)
    assert (d1.corpus, d1.per_response) == (pytest.approx(100 * 2 / 6), pytest.approx(100 * (2 / 4 + 2 / 2) / 2))
    d2 = distinct(replies, 2)  # ab ba ab | ab
    assert d2.corpus == pytest.approx(100 * 2 / 4)
    assert d2.per_response == pytest.approx(100 * (2 / 3 + 1) / 2)
    d3 = distinct(replies, 3)  # aba bab | (none): the short reply is left out of the average
    assert (d3.corpus, d3.per_response, d3.skipped_short) == (100.0, 100.0, 1)
    with pytest.raises(ValueError):
        distinct(replies, 0)


def test_vector_extrema_hand_computed(tmp_path):
    glove = tmp_path / "vec.txt"
    glove.write_text("a 1 -3\nb 2 1\nc -1 0.5\n")
    emb = GloveEmbeddings(glove)
    # extrema([a, b]) = (2, -3); extrema([c]) = (-1, 0.5)
    cos_ab_c = (2 * -1 + -3 * 0.5) / (math.sqrt(13) * math.sqrt(1.25))
    score, empty = vector_extrema([["a", "b"], ["a"], ["zzz"]], [["c"], ["a"], ["a"]], emb)
    assert empty == 1
    assert score == pytest.approx(100 * (cos_ab_c + 1 + 0) / 3)


def test_glove_errors_name_the_line(tmp_path):
    bad = tmp_path / "bad.txt"
    bad.write_text("a 1 2\nb 1\n")
    with pytest.raises(ValueError, match="line 2"):
        GloveEmbeddings(bad)
    with pytest.raises(FileNotFoundError):
        GloveEmbeddings(tmp_path / "missing.txt")


def test_model_embeddings_mean_subword_vectors():
    import torch

    from extes.metrics.extrema import ModelEmbeddings
    from extes.testing.tiny import make_tokenizer

    tok = make_tokenizer()
    weight = torch.randn(len(tok), 4)
    emb = ModelEmbeddings(weight, tok, "tiny")
    ids = tok(" sleep", add_special_tokens=False)["input_ids"]
    assert emb.vectors(["sleep"])[0] == pytest.approx(weight[ids].mean(0).numpy(), abs=1e-6)
    assert "input embeddings of tiny" in emb.describe


def test_readme_metric_list_states_what_the_code_does():
    """The README's one-line definitions match the behaviour pinned here (issue 14: docs must match code)."""
    from pathlib import Path

    from nltk.translate.bleu_score import SmoothingFunction, corpus_bleu
    from rouge_score.rouge_scorer import RougeScorer

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    # ROUGE-L on our tokens: punctuation counts, so 75 here, 100 with rouge-score's own tokenizer
    assert rouge_l([tokenize("HELLO There, Friend!")], [tokenize("hello there friend")]) == pytest.approx(75.0)
    assert RougeScorer(["rougeL"]).score("hello there friend", "HELLO There, Friend!")["rougeL"].fmeasure == 1.0
    assert '"HELLO There, Friend!"' in readme and "scores 75 here and 100 with rouge-score's defaults" in readme
    # BLEU with a reply shorter than n differs from NLTK's corpus_bleu (method1)
    hyps = [["thanks"], ["i", "hear", "you", "that", "is", "hard"]]
    refs = [["thank", "you"], ["i", "hear", "you", "it", "is", "hard"]]
    nltk_bleu = 100 * corpus_bleu([[r] for r in refs], hyps, smoothing_function=SmoothingFunction().method1)
    assert (round(bleu(hyps, refs, 4), 1), round(nltk_bleu, 1)) == (21.2, 17.8)
    assert "21.2 here vs 17.8 in NLTK" in readme
    # the scale and the two different word counts
    assert "every metric except PPL is reported x100" in readme
    assert len("Hi, there!".split()) == 2 and len(tokenize("Hi, there!")) == 4
    assert '"Hi, there!" is 2 words there, 4 tokens here' in readme
