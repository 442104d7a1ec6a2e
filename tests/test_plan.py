"""`extes plan`: sign-test power by simulation, checked against exact binomial power and statsmodels."""

import json

import numpy as np
import pytest
from scipy.stats import binom, binomtest
from statsmodels.stats.multitest import multipletests

from extes.analysis.corrections import adjust_p_values
from extes.analysis.plan import (
    Cell,
    exact_power,
    family,
    plan,
    plot_power,
    sign_test_table,
    simulated_power,
)
from extes.cli import main

CELL = Cell("x", 0.45, 0.25, 0.30)


def brute_power(cell, n, alpha):
    """Power by enumerating every (decided, wins) outcome with scipy's own binomtest."""
    total = 0.0
    for m in range(1, n + 1):
        pm = binom.pmf(m, n, 1 - cell.p_tie)
        total += sum(pm * binom.pmf(w, m, cell.win_share) for w in range(m + 1)
                     if binomtest(w, m, 0.5).pvalue < alpha)
    return total


def test_sign_test_table_is_scipys_binomtest():
    table = sign_test_table(30)
    for m in range(1, 31):
        for w in range(m + 1):
            assert table[m, w] == pytest.approx(binomtest(w, m, 0.5).pvalue, abs=1e-12)


@pytest.mark.parametrize("n", [1, 5, 12, 13, 30, 41])
@pytest.mark.parametrize("alpha", [0.05, 0.005])
def test_exact_power_equals_enumeration(n, alpha):
    assert exact_power(CELL, n, alpha) == pytest.approx(brute_power(CELL, n, alpha), abs=1e-12)


@pytest.mark.parametrize("correction", ["none", "bonferroni"])
def test_simulation_agrees_with_exact_power_at_a_fixed_level(correction):
    cells = [CELL, Cell("null", 0.4, 0.2, 0.4), Cell("strong", 0.7, 0.1, 0.2)]
    level = 0.05 if correction == "none" else 0.05 / 3
    for n in (40, 150, 400):
        sim = simulated_power(cells, n, 0.05, correction, n_sim=4000, seed=n)
        for cell, p in zip(cells, sim):
            exact = exact_power(cell, n, level)
            se = np.sqrt(exact * (1 - exact) / 4000) + 1e-3
            assert abs(p - exact) < 4 * se, (cell.name, n, p, exact)


@pytest.mark.slow  # over 10 s: in `make test`, not in `make test-fast`
@pytest.mark.parametrize(("ours", "theirs"), [("holm", "holm"), ("bh", "fdr_bh"), ("bonferroni", "bonferroni")])
def test_vectorised_corrections_equal_statsmodels(ours, theirs):
    rng = np.random.default_rng(1)
    p = rng.uniform(0, 0.2, size=(50, 7))
    p[:, 3] = p[:, 1]  # ties
    got = adjust_p_values(p, ours)
    for row, adj in zip(p, got):
        assert adj == pytest.approx(multipletests(row, method=theirs)[1], abs=1e-12)


def test_required_n_agrees_with_a_high_precision_simulation():
    """The worked example (docs/commands.md): 2,000 studies per n picked 444, where the power is 0.790 (about 452 are needed).
    Checked with 200,000 simulated studies per n (standard error 0.0009)."""
    result = plan([CELL], tests=10)
    req = result.required[0]
    members = family(CELL, 10)

    def precise(n):
        return simulated_power(members, n, 0.05, "holm", n_sim=200_000, seed=10_000 + n)[0]

    se = np.sqrt(0.8 * 0.2 / 200_000)
    assert precise(req) >= 0.8 - 3 * se  # 444: 0.790
    assert precise(req - 6) < 0.8  # and not far above the crossing
    crossing = result.crossings[0]
    assert crossing.power == pytest.approx(0.8, abs=0.006) and 0 < crossing.se < 0.003 and crossing.n_se < 3
    payload = result.to_dict()["cells"][0]
    assert payload["required_n"] == req and payload["power_mc_se"] == pytest.approx(crossing.se)
    rough = plan([CELL], tests=10, n_refine=0)  # the old rule, kept as an option
    assert rough.crossings == [None] and rough.required[0] != req


def test_plan_prints_the_monte_carlo_error(capsys):
    assert main(["plan", "--win", "45", "--tie", "25", "--loss", "30", "--n-sim", "500", "--n-refine", "4000"]) == 0
    out = capsys.readouterr().out
    assert "Monte-Carlo SE" in out and "power there (MC SE)" in out and "n MC SE" in out
    result = plan([CELL], tests=10, n_sim=500, n_refine=4000)
    x = result.crossings[0]
    assert f"{result.required[0]}       {x.power:.3f} ({x.se:.3f})" in out


def test_plan_refuses_shares_that_do_not_add_up_and_names_the_cells_file(tmp_path, capsys):
    assert main(["plan", "--win", "60", "--tie", "30", "--loss", "20"]) == 2  # was rescaled without a word
    assert "add up to 110, not 100 (percent) or 1 (fractions)" in capsys.readouterr().err
    assert main(["plan", "--win", "0.45", "--tie", "0.25", "--loss", "0.3", "--n-sim", "200", "--n-refine", "0"]) == 0
    capsys.readouterr()
    cells = tmp_path / "cells.csv"
    cells.write_text("name,win,tie,loss\nok,45,25,30\nbad,60,30,20\nword,x,25,30\n")
    assert main(["plan", "--cells", str(cells)]) == 2
    err = capsys.readouterr().err
    assert f"--cells {cells}: invalid cells" in err and "line 3 ('bad'): they add up to 110" in err
    assert "line 4 ('word'): win, tie and loss must be numbers" in err
    binary = tmp_path / "cells.bin"
    binary.write_bytes(b"\xff\xfe\x00\x81name")
    assert main(["plan", "--cells", str(binary)]) == 2
    assert f"--cells {binary}: not a readable CSV file" in capsys.readouterr().err
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    assert main(["plan", "--cells", str(empty)]) == 2
    assert f"--cells {empty}: not a readable CSV file" in capsys.readouterr().err


def test_required_n_is_the_first_n_reaching_the_target():
    result = plan([CELL], tests=10, n_sim=500)
    req = result.required_exact[0]
    assert exact_power(CELL, req, 0.005) >= 0.8 > exact_power(CELL, req - 1, 0.005)
    assert result.required[0] is not None and abs(result.required[0] - req) < 0.15 * req
    assert result.to_dict()["cells"][0]["required_n_exact"] == req
    fewer_tests = plan([CELL], tests=1, n_sim=500).required_exact[0]
    assert fewer_tests < req  # the correction costs conversations


def test_holm_is_more_powerful_than_bonferroni_when_every_cell_has_an_effect():
    cells = [Cell(f"c{i}", 0.5, 0.2, 0.3) for i in range(8)]
    holm = simulated_power(cells, 200, 0.05, "holm", n_sim=3000, seed=3)
    bonf = simulated_power(cells, 200, 0.05, "bonferroni", n_sim=3000, seed=3)
    assert (holm >= bonf).all() and holm.mean() > bonf.mean() + 0.02


def test_no_effect_never_reaches_the_target():
    result = plan([Cell("null", 0.35, 0.3, 0.35)], tests=5, n_sim=300, max_n=300)
    assert result.required == [None] and result.required_exact == [None]
    assert any("no effect" in n for n in result.notes)
    assert (result.power < 0.05).all()


def test_plan_cli_text_json_png(tmp_path, capsys):
    png = tmp_path / "power.png"
    assert main(["plan", "--win", "45", "--tie", "25", "--loss", "30", "--n-sim", "300", "--png", str(png)]) == 0
    out = capsys.readouterr().out
    req = plan([CELL], tests=10, n_sim=300).required_exact[0]
    assert "holm over 10 test(s)" in out and f" {req}\n" in out.split("Power curve")[0]
    assert png.read_bytes()[:4] == b"\x89PNG"
    assert main(["plan", "--votes", "docs/examples/votes.csv", "--reference", "extes-lora", "--n-sim", "200",
                 "--json"]) == 0
    payload = json.loads(capsys.readouterr().out)
    assert payload["tests"] == 10 and len(payload["cells"]) == 10 and payload["correction"] == "holm"
    ident = next(c for c in payload["cells"] if c["name"] == "vs base / identification")
    assert (round(ident["win"], 4), round(ident["loss"], 4)) == (0.6875, 0.125)  # 11 and 2 of 16 votes


def test_plan_cli_errors(tmp_path, capsys):
    assert main(["plan", "--win", "45", "--tie", "25"]) == 2
    assert "--win, --tie and --loss" in capsys.readouterr().err
    assert main(["plan", "--win", "45", "--tie", "25", "--loss", "30", "--votes", "docs/examples/votes.csv"]) == 2
    assert "give one of" in capsys.readouterr().err
    assert main(["plan", "--votes", "docs/examples/votes.csv"]) == 2
    assert "--reference" in capsys.readouterr().err
    bad = tmp_path / "cells.csv"
    bad.write_text("name,win,tie\nx,1,2\n")
    assert main(["plan", "--cells", str(bad)]) == 2
    assert f"--cells {bad}: missing column(s) loss" in capsys.readouterr().err


def test_power_figure_has_one_line_per_cell():
    result = plan([CELL, Cell("y", 0.6, 0.1, 0.3)], n_sim=200)
    ax = plot_power(result).axes[0]
    assert len(ax.lines) == 3  # two cells and the dashed target
    assert list(ax.lines[0].get_xdata()) == result.grid
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["x", "y"]
