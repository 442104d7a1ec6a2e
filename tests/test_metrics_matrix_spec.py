"""The evaluation-matrix YAML: a pydantic model read through extes.config, with the wording users get."""

from __future__ import annotations

import pytest

from extes.metrics.matrix import MatrixSpecError, load_spec


def _spec(tmp_path, text):
    (tmp_path / "t.jsonl").write_text("")
    p = tmp_path / "m.yaml"
    p.write_text(text)
    return p


def test_valid_spec_resolves_paths_next_to_the_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path.parent)
    spec = load_spec(_spec(tmp_path, "arms: [a, {name: b}]\ntest_sets: {T: t.jsonl}\nlimit: 2\n"
                                     "settings: {max_new_tokens: 4}\ngreedy: false\nbatch_size: 3\n"))
    assert spec.arms == ["a", {"name": "b"}] and spec.test_sets == {"T": tmp_path / "t.jsonl"}
    o = spec.options
    assert (o.limit, o.settings, o.greedy, o.batch_size, o.ppl) == (2, {"max_new_tokens": 4}, False, 3, True)
    assert spec.out.as_posix() == "results/eval/m" and spec.where == str(tmp_path / "m.yaml")


@pytest.mark.parametrize("text, message", [
    ("arms: [a]\ntest_sets: {T: t.jsonl}\ncolour: red\n", r"colour: unknown key 'colour'; allowed: arms, test_sets, arms_file, "),
    ("arms: []\ntest_sets: {T: t.jsonl}\n", r"arms: must not be empty$"),
    ("test_sets: {T: t.jsonl}\n", r"arms: is required$"),
    ("arms: [a]\ntest_sets: [t.jsonl]\n", r"test_sets: expected a mapping, got \['t.jsonl'\]$"),
    ("arms: [a]\ntest_sets: {T: 3}\n", r"test_sets.T: expected a text, got 3$"),
    ("arms: [a]\ntest_sets: {T: t.jsonl}\nlimit: 0\n", r"limit: must be >= 1, got 0$"),
    ("arms: [a]\ntest_sets: {T: t.jsonl}\nlimit: true\n", r"limit: expected a whole number, got True$"),
    ("arms: [a]\ntest_sets: {T: t.jsonl}\nppl_tag: all\n", r"ppl_tag: 'all' is not one of context, scored$"),
    ("arms: [a]\ntest_sets: {T: t.jsonl}\nsettings: [1]\n", r"settings: expected a mapping, got \[1\]$"),
    ("- a\n", r"expected a mapping with `arms` and `test_sets`"),
    ("arms: [\n", r"not valid YAML"),
])
def test_bad_specs_name_file_and_reason(tmp_path, text, message):
    p = _spec(tmp_path, text)
    with pytest.raises(MatrixSpecError, match=message) as info:
        load_spec(p)
    assert str(p) in str(info.value)


def test_missing_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="matrix spec .* does not exist"):
        load_spec(tmp_path / "nope.yaml")
    with pytest.raises(FileNotFoundError, match="test_sets.T: gone.jsonl does not exist"):
        load_spec(_spec(tmp_path, "arms: [a]\ntest_sets: {T: gone.jsonl}\n"))


def test_the_example_spec_matches_the_schema(repo_root):
    from extes.config import read_yaml, validate_config
    from extes.metrics.matrix import MatrixFile

    spec = validate_config(read_yaml(repo_root / "configs" / "eval-matrix.example.yaml"), MatrixFile, "example")
    assert spec.arms and spec.test_sets
