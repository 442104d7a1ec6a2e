"""The one configuration loader: YAML into pydantic models, errors naming the file, key path and reason."""

from typing import Literal

import pytest
from pydantic import Field, field_validator

from extes.config import ConfigError, ConfigModel, format_loc, load_config


class Gen(ConfigModel):
    temperature: float = 0.7


class Item(ConfigModel):
    name: str
    kind: Literal["a", "b"] = "a"
    size: int = Field(default=1, ge=1)
    generation: Gen = Gen()

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not v.isidentifier():
            raise ValueError(f"name {v!r} must be an identifier")
        return v


class Top(ConfigModel):
    items: list[Item]


def test_format_loc():
    assert format_loc(("items", 1, "generation", "temperature")) == "items[1].generation.temperature"


def test_valid_file_loads(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("items:\n  - name: x\n  - name: y\n    kind: b\n    generation: {temperature: 0}\n")
    top = load_config(path, Top)
    assert [i.name for i in top.items] == ["x", "y"] and top.items[1].generation.temperature == 0


@pytest.mark.parametrize(
    "text, message",
    [
        ("items:\n  - name: x\n    generation: {temprature: 1}\n", r"c\.yaml: items\[0\]\.generation\.temprature: unknown key 'temprature'; allowed: temperature$"),
        ("items:\n  - name: x\n  - name: 'no good'\n", r"c\.yaml: items\[1\]\.name: name 'no good' must be an identifier"),
        ("items:\n  - kind: b\n", r"c\.yaml: items\[0\]\.name: is required"),
        ("items:\n  - name: x\n    kind: c\n", r"c\.yaml: items\[0\]\.kind: 'c' is not one of a, b$"),
        ("items:\n  - name: x\n    size: 0\n", r"c\.yaml: items\[0\]\.size: must be >= 1, got 0$"),
        ("items:\n  - name: x\n    colour: red\n",
         r"c\.yaml: items\[0\]\.colour: unknown key 'colour'; allowed: name, kind, size, generation$"),
        ("- just a list\n", r"c\.yaml: expected a mapping at the top level, got list"),
        ("items: [\n", r"c\.yaml: not valid YAML"),
    ],
)
def test_errors_name_file_key_path_and_reason(tmp_path, text, message):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message):
        load_config(path, Top)


def test_missing_file_is_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError, match="protocol file .* does not exist"):
        load_config(tmp_path / "nope.yaml", Top, "protocol")


def test_config_dataclass_is_a_frozen_dataclass_validated_like_a_model(tmp_path):
    import dataclasses

    from extes.config import config_dataclass, validate_config

    @config_dataclass
    class Point:
        x: int
        label: str = "p"

        @field_validator("x")
        @classmethod
        def _x(cls, v: int) -> int:
            if v < 0:
                raise ValueError(f"x={v} must be >= 0")
            return v

    p = Point(1)
    assert dataclasses.replace(p, label="q") == Point(1, "q") and hash(p) == hash(Point(1))
    with pytest.raises(dataclasses.FrozenInstanceError):
        p.x = 2
    assert validate_config({"x": 3}, Point, "pts.yaml") == Point(3)
    with pytest.raises(ConfigError, match=r"^pts\.yaml: x: x=-1 must be >= 0$"):
        validate_config({"x": -1}, Point, "pts.yaml")
    with pytest.raises(ConfigError, match=r"^pts\.yaml: y: unknown key 'y'; allowed: x, label$"):
        validate_config({"x": 1, "y": 2}, Point, "pts.yaml")
    with pytest.raises(ValueError, match="x=-2"):  # built in code, values are checked too
        Point(-2)
