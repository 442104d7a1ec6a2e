"""`extes report` from the repo's fixtures, every number checked against the verb that computes it.

Inputs: the seeds, the ESConv sample in ../shared/data, a small study database written through `Store`,
two `extes evaluate --predictions` results on seed dialogues, and an `extes toxicity` run with a tiny
random classifier. Each table of report.md is parsed back and compared with `extes stats --json`,
`extes agreement --json`, `extes analyze --json`, the results.json files and toxicity.json.
"""

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from extes.cli import main
from extes.metrics.registry import TABLE_COLUMNS
from extes.shares import percentages
from extes.study.records import PaneVote

ROOT = Path(__file__).resolve().parents[1]
ASPECTS = ["fluency", "identification", "comforting", "suggestion", "overall"]


def run_json(capsys, *argv):
    assert main([str(a) for a in argv]) == 0
    return json.loads(capsys.readouterr().out)


def parse_tables(markdown: str) -> dict[str, list[dict[str, str]]]:
    """Title -> rows as {header: cell} from the report's Markdown tables."""
    out, title, header = {}, None, None
    for line in markdown.splitlines():
        if line.startswith("### "):
            title, header = line[4:], None
        elif line.startswith("|") and title:
            cells = [c.strip() for c in line.strip().strip("|").split(" | ")]
            if header is None:
                header = cells
                out[title] = []
            elif not set(line) <= set("|-"):
                out[title].append(dict(zip(header, cells)))
    return out


def build_study_db(path: Path) -> None:
    from extes.study.store import Store

    store = Store(path)
    arms = ["lora", "base", "gpt"]
    pattern = ["a", "a", "b", "tie", "a", "a", "b", "a", "tie", "a", "a", "b"]
    for i in range(12):
        participant = store.create_participant()
        conv = store.create_conversation(participant.id, "job", "lost my job", lambda counts: (0, arms))
        rows = []
        for j, aspect in enumerate(ASPECTS):
            rows.append({"aspect": aspect, "pane_a": "A", "pane_b": "B", "arm_a": "lora", "arm_b": "base",
                         "outcome": pattern[(i + j) % 12]})
            rows.append({"aspect": aspect, "pane_a": "C", "pane_b": "A", "arm_a": "gpt", "arm_b": "lora",
                         "outcome": pattern[(i + 2 * j + 5) % 12]})
        store.submit_votes(conv.id, participant.id, [PaneVote(**r) for r in rows])
    judges = [store.create_participant(role="judge").id for _ in range(3)]
    scores = {"extes": [(3, 3, 2), (2, 3, 3), (3, 2, 3), (1, 2, 2)], "esconv": [(2, 1, 2), (1, 1, 2), (2, 2, 3)]}
    for source, items in scores.items():
        for k, triple in enumerate(items):
            item = f"{source}-{k}"
            store.add_annotation_item(item, "dialogue", source=source)
            for judge, score in zip(judges, triple):
                store.submit_likert(store.create_assignment(item, judge),
                                    {"Empathy": score, "Coherence": max(0, score - k % 2)})
    store.close()


@pytest.fixture(scope="module")
def tiny_classifier(tmp_path_factory):
    import torch
    from transformers import LlamaConfig, LlamaForSequenceClassification

    from extes.testing.tiny import make_tokenizer

    out = tmp_path_factory.mktemp("tox-clf")
    tok = make_tokenizer()
    config = LlamaConfig(vocab_size=len(tok), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=1, pad_token_id=tok.pad_token_id,
                         id2label={0: "toxic", 1: "obscene"}, label2id={"toxic": 0, "obscene": 1},
                         problem_type="multi_label_classification")
    torch.manual_seed(0)
    LlamaForSequenceClassification(config).save_pretrained(out)
    tok.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def report(tmp_path_factory, shared_data, tiny_classifier):
    from extes.dialogue import load_dialogues, write_jsonl

    tmp = tmp_path_factory.mktemp("report")
    esconv = shared_data / "esconv" / "FailedESConv.sample.json"
    db = tmp / "study.sqlite"
    build_study_db(db)
    test_set = tmp / "seedtest.jsonl"
    write_jsonl(load_dialogues(ROOT / "seeds")[:4], test_set)
    results = tmp / "eval"
    for arm, make in {"echo": lambda user, gold: user, "short": lambda user, gold: gold.split(".")[0]}.items():
        preds = tmp / f"{arm}.jsonl"
        with preds.open("w") as fh:
            for d in load_dialogues(test_set):
                last = None
                for i, t in enumerate(d.turns):
                    if t.role == "user":
                        last = t.text
                    elif last is not None:
                        fh.write(json.dumps({"dialogue_id": d.id, "turn": i, "reply": make(last, t.text)}) + "\n")
        assert main(["evaluate", "--predictions", str(preds), "--data", str(test_set), "--wordnet", "none",
                     "--out", str(results / arm)]) == 0
    tox = tmp / "tox"
    assert main(["toxicity", "--data", str(test_set), "--role", "assistant", "--replies",
                 str(results / "echo" / "replies.jsonl"), "--classifier", str(tiny_classifier), "--out", str(tox),
                 "--cache", str(tmp / "c.sqlite"), "--no-progress"]) == 0
    names = tmp / "names.yaml"
    names.write_text("arms:\n  lora: ExTES-LoRA\n  base: Base\n  echo: Echo baseline\n"
                     "datasets:\n  seeds: ExTES seeds\n")
    out = tmp / "out"
    argv = ["report", "--data", f"seeds={ROOT / 'seeds'}", "--data", f"esconv={esconv}", "--db", db,
            "--reference", "lora", "--results", results, "--toxicity", tox / "toxicity.json",
            "--names", names, "--n-boot", 50, "--out", out]
    assert main([str(a) for a in argv]) == 0
    return {"out": out, "db": db, "esconv": esconv, "results": results, "tox": tox, "tmp": tmp}


def test_report_writes_markdown_latex_and_figures(report):
    names = {p.name for p in report["out"].iterdir()}
    assert {"report.md", "tables.tex", "preview.tex", "win_tie_loss.png", "strategies.png"} <= names
    assert (report["out"] / "strategies.png").read_bytes()[:4] == b"\x89PNG"
    tables = parse_tables((report["out"] / "report.md").read_text())
    assert [t.split(":")[0] for t in tables] == ["Table 1", "Table 2", "Table 3", "Table 5", "Table 4",
                                                 "Table 6", "Table 7", "Table 9"]


def test_dataset_tables_match_extes_stats(report, capsys):
    tables = parse_tables((report["out"] / "report.md").read_text())
    stats = {"ExTES seeds": run_json(capsys, "stats", ROOT / "seeds", "--json"),
             "esconv": run_json(capsys, "stats", report["esconv"], "--json")}
    overview = {r[""]: r for r in tables["Table 3: dataset overview"]}
    for label, st in stats.items():
        assert overview["Dialogues"][label] == str(st["dialogues"])
        assert overview["Utterances"][label] == str(st["utterances"])
        assert overview["Avg. utterances per dialogue"][label] == f"{st['avg_utterances_per_dialogue']:.2f}"
        assert overview["Avg. words per utterance"][label] == f"{st['avg_words_per_utterance']:.2f}"
        assert overview["Strategies"][label] == str(st["n_strategies"])
        assert overview["Scenarios"][label] == str(st["n_scenes"])
    for title, key in [("Table 1: dialogues per scenario", "scenes"), ("Table 2: strategy labels", "strategies")]:
        rows = tables[title]
        for label, st in stats.items():
            counts = st[key]
            shares = dict(zip(counts, percentages(list(counts.values()))))
            got = {r[""]: (r[f"{label} n"], r[f"{label} %"]) for r in rows if r[f"{label} n"] != "-"}
            total = got.pop("Total")
            assert total == (str(sum(counts.values())), f"{sum(shares.values()):.1f}")
            assert 99.0 < sum(shares.values()) <= 100.0
            assert len(got) == len(counts)
            for name, (n, pct) in got.items():
                plain = name.rsplit(" (", 1)[0] if key == "strategies" else name
                assert (n, pct) == (str(counts[plain]), f"{shares[plain]:.1f}")
            assert sum(float(p) for _, p in got.values()) == pytest.approx(float(total[1]))
            by_count = {}
            for n, pct in got.values():
                by_count.setdefault(n, set()).add(pct)
            assert all(len(p) == 1 for p in by_count.values())  # equal counts print equal percentages
    rows = tables["Table 5: top-5 strategy transitions"]
    for label, st in stats.items():
        hop = None
        for r in rows:
            hop = r["Hops"] or hop
            path, n = r[f"{label} path"], r[f"{label} n"]
            expected = st["transitions"][hop]
            if path.startswith("and "):
                assert path == f"and {len(expected) - 5} more with count {expected[-1]['count']}"
            elif path:
                assert {"path": path, "count": int(n)} in [{"path": e["path"], "count": e["count"]}
                                                           for e in expected[:5]]
        assert any(r["esconv path"].startswith("and ") for r in rows)


def test_quality_table_matches_extes_agreement(report, capsys):
    tables = parse_tables((report["out"] / "report.md").read_text())
    payload = run_json(capsys, "agreement", "--db", report["db"], "--json")
    quality = {(q["source"], q["aspect"]): q for q in payload["dataset_quality"]}
    rows = {r["Metric"]: r for r in tables["Table 4: dataset quality (Likert), Fleiss' kappa per metric"]}
    assert set(rows) == {"empathy", "coherence"}
    for (source, aspect), q in quality.items():
        label = {"extes": "extes", "esconv": "esconv"}[source]
        assert rows[aspect][f"{label} mean"] == f"{q['mean']:.2f}"
        assert rows[aspect][f"{label} n"] == str(q["n_ratings"])
        kappa = payload["per_source"][source]["per_aspect"][aspect]["fleiss_kappa"]
        assert rows[aspect][f"{label} kappa"] == f"{kappa:.3f}"


def test_automatic_and_toxicity_tables_match_their_json(report):
    tables = parse_tables((report["out"] / "report.md").read_text())
    rows = {r["Model"]: r for r in tables["Table 6: automatic metrics on seedtest"]}
    assert set(rows) == {"Echo baseline", "short"}  # display names from --names
    for arm, shown in [("echo", "Echo baseline"), ("short", "short")]:
        metrics = json.loads((report["results"] / arm / "results.json").read_text())["metrics"]
        for col in ["PPL", "METEOR", "B-2", "B-4", "R-L", "Extrema", "D-1", "D-2", "D-3"]:
            value = metrics[col]
            assert rows[shown][col] == ("-" if value is None else f"{value:.2f}")
    tox = json.loads((report["tox"] / "toxicity.json").read_text())
    rows = {r["Source"]: r for r in tables["Table 7: toxicity (mean probability)"]}
    for r in tox:
        for attr, value in r["means"].items():
            assert rows[r["source"]][attr] == f"{value:.4f}"
        assert rows[r["source"]]["n"] == str(r["n_scored"])


def test_pairwise_table_matches_extes_analyze(report, capsys):
    text = (report["out"] / "report.md").read_text()
    tables = parse_tables(text)
    payload = run_json(capsys, "analyze", "--db", report["db"], "--reference", "lora", "--json", "--n-boot", 50)
    rows = {r["ExTES-LoRA"]: r for r in tables["Table 9: human evaluation, win / tie / loss"]}
    assert set(rows) == {"vs Base", "vs gpt"}
    for r in payload["rows"]:
        cell = rows[f"vs {'Base' if r['opponent'] == 'base' else r['opponent']}"]
        head = r["aspect"].capitalize()
        n = r["n"]
        counts = [round(r[k] * n) for k in ("win", "tie", "loss")]
        w, t, lo = percentages(counts)
        star = "*" if r["p_adjusted"] is not None and r["p_adjusted"] < 0.05 else ""
        assert (cell[f"{head} W"], cell[f"{head} T"], cell[f"{head} L"], cell[f"{head} n"]) == (
            f"{w:.1f}{star}", f"{t:.1f}", f"{lo:.1f}", str(n))
    assert payload["correction"] == "holm" and f"over the {payload['tests']} tests" in text
    sentence = (f"{payload['votes']} votes in all; {payload['votes_with_reference']} of them involve lora")
    assert sentence in text


def test_latex_has_booktabs_tables_with_the_same_numbers(report):
    tex = (report["out"] / "tables.tex").read_text()
    md = parse_tables((report["out"] / "report.md").read_text())
    floats = tex.count("\\begin{table}") + tex.count("\\begin{table*}")
    assert floats == len(md)
    assert tex.count("\\begin{tabular}") == tex.count("\\toprule") == tex.count("\\bottomrule") == len(md) + 1
    assert tex.count("\\end{table}") + tex.count("\\end{table*}") == floats
    assert "\\usepackage" not in tex  # a fragment to \input; preview.tex holds the preamble
    assert "ExTES-LoRA" in tex and "Echo baseline" in tex and "ExTES seeds" in tex
    rows9 = md["Table 9: human evaluation, win / tie / loss"]
    for r in rows9:  # Table 9 in two stacked blocks: three aspects, then two (21 columns did not fit)
        cells = [c.replace("*", "$^{*}$") for c in r.values()]
        assert " & ".join(cells[:13]) + " \\\\" in tex
        assert " & ".join(cells[:1] + cells[13:]) + " \\\\" in tex
    assert "\\cmidrule(lr){2-5}" in tex  # Fluency's W/T/L/n group
    # captions: LaTeX numbers them; the paper's number is \thetable, not a "Table 9:" prefix in the text
    captions = [line for line in tex.splitlines() if line.startswith("\\caption{")]
    assert len(captions) == len(md) and not any("Table " in c.split(".")[0] for c in captions)
    assert "\\renewcommand{\\thetable}{9}" in tex and "\\renewcommand{\\thetable}{4}" in tex
    assert "`" not in tex and "\\texttt{extes stats}" in tex  # was `extes stats`, printed as quotes


def compile_latex(folder: Path, name: str = "preview.tex") -> tuple[str, dict[str, str]]:
    """Run pdflatex twice (labels settle); return the log and {label: printed table number} from the .aux."""
    import re

    for _ in range(2):
        proc = subprocess.run(["pdflatex", "-interaction=nonstopmode", "-halt-on-error", name],
                              cwd=folder, capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stdout[-2000:]
    stem = name.rsplit(".", 1)[0]
    log = (folder / f"{stem}.log").read_text(errors="replace")
    labels = dict(re.findall(r"\\newlabel\{tab:([^}]*)\}\{\{([^}]*)\}", (folder / f"{stem}.aux").read_text()))
    return log, labels


def layout_problems(log: str) -> list[str]:
    """Overfull boxes, floats too large for the page, undefined commands, labels defined twice."""
    keys = ("Overfull \\hbox", "Overfull \\vbox", "Float too large", "Undefined control sequence",
            "multiply defined")
    return [line for line in log.splitlines() if any(k in line for k in keys)]


@pytest.mark.skipif(shutil.which("pdflatex") is None, reason="pdflatex not installed (make system-deps)")
def test_preview_compiles_without_overfull_boxes_and_numbers_each_table_once(report, tmp_path):
    for name in ("tables.tex", "preview.tex"):
        shutil.copy(report["out"] / name, tmp_path / name)
    log, labels = compile_latex(tmp_path)
    assert (tmp_path / "preview.pdf").stat().st_size > 1000
    # before: Table 9 105.7 pt too wide (seeds + ESConv here: Table 5 44.7 pt too wide, Table 1 too tall)
    assert layout_problems(log) == []
    # every table carries the paper's number, once: captions read "Table 9: ...", not "Table 8: Table 9: ..."
    assert labels == {"table1": "1", "table2": "2", "table3": "3", "table5": "5", "table4": "4",
                      "table6-seedtest": "6", "table7": "7", "table9": "9"}
    assert len(set(labels.values())) == len(labels)


@pytest.mark.skipif(shutil.which("pdflatex") is None, reason="pdflatex not installed (make system-deps)")
def test_latex_document_of_a_wide_incomplete_table9_compiles_cleanly(tmp_path):
    """`latex_document` (its docstring says a test compiles it): a 5-arm Table 9 with pairs never compared
    and three test sets (Tables 6, 8 and 8b, never two tables with one number)."""
    import pandas as pd

    from extes.analysis import tables as T
    from extes.analysis.pairwise import win_tie_loss

    arms = ["lora", "base", "gpt", "esconv", "qlora"]
    rows = [(f"s{i}", aspect, "lora", arms[1 + i % 2], "a" if i % 3 else "tie") for i in range(30)
            for aspect in ASPECTS]
    rows += [(f"t{i}", "overall", "esconv", "lora", "b") for i in range(5)]  # lora vs esconv: overall only
    rows += [(f"u{i}", "overall", "gpt", "qlora", "b") for i in range(5)]  # lora never meets qlora
    wtl = win_tie_loss(pd.DataFrame(rows, columns=["session_id", "aspect", "arm_a", "arm_b", "outcome"]), "lora",
                       n_boot=0)
    results = [{"data": {"label": label}, "arm": {"name": "lora"}, "metrics": {"PPL": 1.0}}
               for label in ("test", "ood", "extra")]
    tables = [T.table9_pairwise(wtl), *T.tables_automatic(results, TABLE_COLUMNS)]
    (tmp_path / "doc.tex").write_text(T.latex_document(tables))
    log, labels = compile_latex(tmp_path, "doc.tex")
    assert layout_problems(log) == []
    assert labels == {"table9": "9", "table6-test": "6", "table8-ood": "8", "table8b-extra": "8b"}
    md = T.to_markdown(tables[0])
    assert ("Never compared with lora (- with n = 0): esconv (fluency, identification, comforting, suggestion); "
            "qlora.") in md
    assert md.count("| vs ") == 4  # base, esconv, gpt, qlora: every other arm has a row


def test_report_errors_are_clear(report, capsys, tmp_path):
    assert main(["report", "--out", str(tmp_path / "x")]) == 2
    assert "nothing to report" in capsys.readouterr().err
    assert main(["report", "--db", str(report["db"]), "--out", str(tmp_path / "y")]) == 2
    assert "--reference" in capsys.readouterr().err
    bad = tmp_path / "names.yaml"
    bad.write_text("arm:\n  lora: X\n")
    assert main(["report", "--data", str(ROOT / "seeds"), "--names", str(bad), "--out", str(tmp_path / "z")]) == 2
    assert "unknown key 'arm'" in capsys.readouterr().err
    assert not any((tmp_path / d).exists() for d in "xyz")


def test_report_from_csvs_and_a_build_run(tmp_path, capsys):
    from extes.dialogue import load_dialogues, write_jsonl

    run = tmp_path / "run"
    run.mkdir()
    (run / "rounds.json").write_text('{"rounds": [], "total": {}}')
    generated = load_dialogues(ROOT / "seeds")[:5]
    write_jsonl(generated, run / "generated.jsonl")
    write_jsonl(load_dialogues(ROOT / "seeds"), run / "extes.jsonl")  # seeds + generated: not what is counted
    out = tmp_path / "out"
    assert main(["report", "--data", str(run), "--votes", "docs/examples/votes.csv", "--ratings",
                 "docs/examples/ratings.csv", "--reference", "extes-lora", "--n-boot", "0", "--out", str(out)]) == 0
    capsys.readouterr()
    tables = parse_tables((out / "report.md").read_text())
    assert {r[""]: r["run"] for r in tables["Table 3: dataset overview"]}["Dialogues"] == "5"
    payload = run_json(capsys, "analyze", "--votes", "docs/examples/votes.csv", "--reference", "extes-lora",
                       "--json", "--n-boot", "0")
    rows9 = {r["extes-lora"]: r for r in tables["Table 9: human evaluation, win / tie / loss"]}
    for r in payload["rows"]:
        assert rows9[f"vs {r['opponent']}"][f"{r['aspect'].capitalize()} n"] == str(r["n"])
    quality = run_json(capsys, "agreement", "--ratings", "docs/examples/ratings.csv", "--json")["dataset_quality"]
    rows4 = {r["Metric"]: r for r in tables["Table 4: dataset quality (Likert), Fleiss' kappa per metric"]}
    for q in quality:
        assert rows4[q["aspect"]][f"{q['source']} mean"] == f"{q['mean']:.2f}"


def test_merged_turns_are_named_in_the_notes(tmp_path, capsys):
    notes = {}
    for merged in (False, True):
        out = tmp_path / f"m{merged}"
        argv = ["report", "--data", f"seeds={ROOT / 'seeds'}", "--out", str(out)] + (["--merge-consecutive"] * merged)
        assert main(argv) == 0
        md = (out / "report.md").read_text()
        notes[merged] = md.split("### Table 3: dataset overview")[1].split("### ")[0]
    capsys.readouterr()
    assert notes[True] != notes[False]  # were word for word the same although the counts differ
    assert "consecutive utterances of one speaker merged into one (--merge-consecutive)" in notes[True]
    assert "consecutive ones of one speaker not merged" in notes[False]


def test_report_ratings_without_source_or_numbers_names_the_problem(tmp_path, capsys):
    no_source = tmp_path / "a.csv"
    no_source.write_text("item_id,rater_id,label\nd1,r1,3\nd1,r2,4\n")
    assert main(["report", "--ratings", str(no_source), "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert "nothing to report" not in err  # the old message, although --ratings was given
    assert f"--ratings {no_source}: Table 4 needs a 'source' column" in err
    words = tmp_path / "b.csv"
    words.write_text("item_id,rater_id,label,source\nd1,r1,good,extes\nd1,r2,bad,extes\n")
    assert main(["report", "--ratings", str(words), "--out", str(tmp_path / "y")]) == 2
    assert "Table 4 needs numeric labels (Likert scores); no source has only numbers: extes ('good')" in (
        capsys.readouterr().err)
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()
