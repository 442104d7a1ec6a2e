"""The `extes` command: one verb per job.

Each verb lives in the layer that owns it; this file only maps verb names to the module that
configures and runs them, imported lazily so `extes stats` never pays for torch or gradio.
A verb module defines `configure_<name>(parser)` and `run_<name>(args) -> int`.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from extes.errors import CLIError

__all__ = ["CLIError", "VERBS", "build_parser", "main"]

VERBS: dict[str, tuple[str, str, str]] = {
    # verb: (module, function-name suffix, one-line help)
    "stats": ("extes.stats", "stats", "dataset statistics (ExTES paper Tables 1-3 and 5)"),
    "split": ("extes.data_cli", "split", "deterministic train/valid/test split by dialogue"),
    "convert": ("extes.data_cli", "convert", "convert ExTES JSON / ESConv JSON / JSONL between formats"),
    "build": ("extes.selfchat.cli", "build", "grow a dataset from seeds through an OpenAI-compatible LLM"),
    "review": ("extes.selfchat.cli", "review", "review generated dialogues in the browser"),
    "train": ("extes.train.cli", "train", "fine-tune a chat model (clm, lora, qlora, adapter)"),
    "serve": ("extes.models.server", "serve", "serve local arms behind an OpenAI-compatible API"),
    "chat": ("extes.models.chat_cli", "chat", "chat with one arm in the terminal"),
    "evaluate": ("extes.metrics.cli", "evaluate", "automatic metrics: PPL, METEOR, BLEU, ROUGE-L, Extrema, Distinct"),
    "toxicity": ("extes.metrics.cli", "toxicity", "toxicity of a dataset or of model replies"),
    "export": ("extes.commands.analysis_cli", "export", "export votes and ratings CSVs from a study database"),
    "analyze": ("extes.commands.analysis_cli", "analyze", "win/tie/loss with significance, Bradley-Terry"),
    "agreement": ("extes.commands.analysis_cli", "agreement", "Fleiss' kappa, Krippendorff's alpha"),
    "report": ("extes.commands.report_cli", "report", "the paper's tables in one folder: report.md, tables.tex, figures"),
    "plan": ("extes.commands.analysis_cli", "plan", "conversations needed for a powered sign test after correction"),
    "judge": ("extes.commands.judge_cli", "judge", "an LLM judges rated conversations pairwise; agreement with people"),
    "app": ("extes.commands.app_cli", "app", "run the study app (same as python app.py)"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="extes", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="verb", metavar="VERB")
    for verb, (_module, _name, help_) in VERBS.items():
        sub.add_parser(verb, help=help_, add_help=False)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in {"-h", "--help"} or argv[0] not in VERBS:
        parser = build_parser()
        if argv and argv[0] not in {"-h", "--help"}:
            parser.error(f"unknown verb {argv[0]!r}; choose from {', '.join(VERBS)}")
        parser.print_help()
        return 0
    verb, rest = argv[0], argv[1:]
    module_name, name, help_ = VERBS[verb]
    module = importlib.import_module(module_name)
    parser = argparse.ArgumentParser(prog=f"extes {verb}", description=help_)
    getattr(module, f"configure_{name}")(parser)
    args = parser.parse_args(rest)
    try:
        return int(getattr(module, f"run_{name}")(args) or 0)
    except CLIError as exc:
        print(f"extes {verb}: error: {exc}", file=sys.stderr)
        return 2
    except (ValueError, FileNotFoundError) as exc:
        print(f"extes {verb}: error: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # `extes stats ... --json | head`: the reader went away, not an error
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
