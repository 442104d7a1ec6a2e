"""The study's verbs: `app` (serve the web app; manage judge codes and risk flags), and the offline verbs
that read a study's database or CSVs: export/analyze/agreement/plan, report, judge.

They sit above `extes.study` (the web app and its store) and below the dispatcher `extes.cli`.
"""
