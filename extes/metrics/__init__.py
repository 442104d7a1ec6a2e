"""Automatic evaluation (docs/metrics.md): PPL, METEOR, BLEU-2/4, ROUGE-L, Vector Extrema, Distinct-1/2/3
and toxicity.

Modules: `text` (tokenisation), `overlap` (BLEU, METEOR, ROUGE-L), `wordnet` (offline WordNet for METEOR),
`distinct`, `extrema`, `perplexity`, `evaluate` (one arm x one test set), `matrix` (arms x test sets),
`toxicity` (Perspective API client and local classifier), `cli` (`extes evaluate`, `extes toxicity`).
Heavy dependencies (torch, transformers, peft) are imported inside the functions that need them.
"""
