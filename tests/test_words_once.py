"""Each word of the field is defined once: the aspects, the p-value corrections, the metric registry, the
crash-safe journal and the rounding of percentages. Every other module uses that one definition (the same objects, not copies)."""

import numpy as np
import pytest
from statsmodels.stats.multitest import multipletests

from extes import taxonomy
from extes.analysis import corrections


def test_one_aspect_type_for_protocol_judge_and_analysis():
    from extes import analysis, judge
    from extes.analysis import io
    from extes.study import protocol

    assert protocol.Aspect is taxonomy.Aspect and judge.Aspect is taxonomy.Aspect
    assert protocol.ASPECT_KEYS is taxonomy.ASPECT_KEYS and io.ASPECTS is taxonomy.ASPECT_KEYS
    assert analysis.ASPECTS is taxonomy.ASPECT_KEYS
    assert judge.DEFAULT_ASPECTS is taxonomy.ASPECTS
    assert tuple(a.key for a in taxonomy.ASPECTS) == taxonomy.ASPECT_KEYS
    parsed = protocol.protocol_from_dict(_protocol_with_aspects([{"key": " Overall ", "question": "Who?"}]))
    assert parsed.aspects == (taxonomy.Aspect("overall", "Overall", "Who?"),)


def _protocol_with_aspects(aspects):
    from study_helpers import protocol_dict

    data = protocol_dict()
    data["aspects"] = aspects
    return data


def test_one_correction_function_for_analysis_and_planner():
    from extes.analysis import pairwise, plan, report, tables

    for module in (pairwise, plan):
        assert module.adjust_p_values is corrections.adjust_p_values
        assert not hasattr(module, "adjust") and not hasattr(module, "CORRECTION_NAMES")
    assert pairwise.CORRECTIONS is corrections.CORRECTIONS
    assert "CORRECTIONS" not in vars(plan) or plan.CORRECTIONS is corrections.CORRECTIONS
    assert report.__name__ and tables.__name__  # they caption with corrections.CORRECTIONS (imported lazily)


def test_one_rounding_of_percentages_for_analysis_dataset_statistics_and_the_report():
    from extes import shares, stats
    from extes.analysis import pairwise, report, tables
    from extes.commands import report_cli

    for module in (pairwise, tables, stats, report_cli):
        assert module.percentages is shares.percentages, module.__name__
    assert report.RULE is shares.RULE and tables.RULE is shares.RULE
    assert not hasattr(stats, "largest_remainder")


@pytest.mark.parametrize(("ours", "theirs"), [("holm", "holm"), ("bh", "fdr_bh"), ("bonferroni", "bonferroni")])
def test_corrections_skip_untested_entries_like_statsmodels_on_the_tested_ones(ours, theirs):
    rng = np.random.default_rng(3)
    p = rng.uniform(0, 0.1, size=(20, 6))
    p[rng.uniform(size=p.shape) < 0.3] = np.nan
    p[0] = np.nan  # a family with no test at all
    got = corrections.adjust_p_values(p, ours)
    assert np.array_equal(np.isnan(got), np.isnan(p))
    for row, adj in zip(p, got):
        tested = ~np.isnan(row)
        if tested.any():
            assert adj[tested] == pytest.approx(multipletests(row[tested], method=theirs)[1], abs=1e-12)
    assert np.array_equal(corrections.adjust_p_values(p, "none"), p, equal_nan=True)
    with pytest.raises(ValueError, match="unknown correction 'sidak'; use one of holm, bh, bonferroni, none"):
        corrections.adjust_p_values(p, "sidak")


def test_one_metric_registry_read_by_evaluate_tables_and_report():
    import inspect

    from extes.analysis import tables
    from extes.commands import report_cli
    from extes.metrics import evaluate, registry

    assert registry.TABLE_COLUMNS == ("PPL", "METEOR", "B-2", "B-4", "R-L", "Extrema", "D-1", "D-2", "D-3")
    assert registry.EXTRA_COLUMNS == ("D-1 avg", "D-2 avg", "D-3 avg")
    assert not registry.BY_NAME["PPL"].higher_is_better and registry.BY_NAME["METEOR"].higher_is_better
    assert evaluate.TABLE_COLUMNS is registry.TABLE_COLUMNS and report_cli.TABLE_COLUMNS is registry.TABLE_COLUMNS
    for module in (evaluate, tables):
        assert not {"COLUMNS", "AVG_COLUMNS", "METRIC_COLUMNS"} & set(vars(module))
    assert '"B-2"' not in inspect.getsource(evaluate) and '"B-2"' not in inspect.getsource(tables)
    scored = evaluate.text_metrics(["i hear you , that sounds hard"], ["that sounds really hard"], None,
                                   _NoWordnet())
    assert tuple(scored["metrics"]) == tuple(m.name for m in registry.METRICS if m.score is not None)
    table = tables.tables_automatic([{"data": {"label": "t"}, "arm": {"name": "a"}, "metrics": {"PPL": 2.0}}],
                                    registry.TABLE_COLUMNS)[0]
    assert table.header == ["Model", *registry.TABLE_COLUMNS]


class _NoWordnet:
    reader = None
    source = "none"
    available = False


def test_one_crash_safe_journal_for_the_build_and_the_evaluate_cache(tmp_path):
    from extes.judge import core
    from extes.llm import journal
    from extes.metrics import evaluate

    assert evaluate.Journal is journal.Journal and core.Journal is journal.Journal
    assert not {"_append", "_repair_tail"} & set(vars(evaluate))
    cache = tmp_path / "c.jsonl"
    j = journal.Journal(cache, torn="drop")
    j.append_records([{"key": "a", "reply": "x"}, {"key": "b", "reply": "y"}])
    j.close()
    cache.write_bytes(cache.read_bytes() + b'{"key": "c", "re')  # a crash mid-write
    j = journal.Journal(cache, torn="drop")
    assert cache.read_bytes().endswith(b"\n") and list(evaluate.read_cache(cache)) == ["a", "b"]
    j.append_records([{"key": "c", "reply": "z"}])
    j.close()
    assert len(cache.read_text().splitlines()) == 3 and list(evaluate.read_cache(cache)) == ["a", "b", "c"]
