"""suite.cli's parser from a config dataclass: flags, types, defaults and rules declared once."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from suite.cli import cli_fields, dataclass_parser, field_errors, flag


@dataclass
class Demo:
    out: str  # not a flag: no help metadata
    algo: list[str] = flag(help="algorithms", choices=("a", "b"), default_factory=lambda: ["a"])
    lr: float = flag(0.5, help="step size", gt=0, why="a step", group="opt")
    seeds: list[int] = flag(help="seeds", ge=0, lt=10, default_factory=lambda: [1])
    m: int | None = flag(None, help="chunk size", ge=1)
    fast: bool = flag(False, help="go fast", group="opt")
    tokens: list[float] = flag(help="tokens", parse=str, cli_default=["1"], default_factory=list)
    extra: dict = field(default_factory=dict)


def parser():
    return dataclass_parser(Demo, prog="demo", description="d", groups=("opt",))


def test_flags_types_and_defaults_come_from_the_fields():
    p = parser()
    assert [f.name for f in cli_fields(Demo)] == ["algo", "lr", "seeds", "m", "fast", "tokens"]
    a = p.parse_args([])
    assert (a.algo, a.lr, a.seeds, a.m, a.fast, a.tokens) == (["a"], 0.5, [1], None, False, ["1"])
    assert not hasattr(a, "out") and not hasattr(a, "extra")
    a = p.parse_args(["--algo", "a", "b", "--lr", "2", "--seeds", "3", "4", "--m", "5", "--fast"])
    assert (a.algo, a.lr, a.seeds, a.m, a.fast) == (["a", "b"], 2.0, [3, 4], 5, True)
    assert p.parse_args(["--tokens", "x=1"]).tokens == ["x=1"]  # parse=str: the caller's tokens
    text = " ".join(p.format_help().split())
    for want in (
        "step size (default: 0.5)",
        "algorithms (default: a)",
        "chunk size (default: none)",
        "go fast (default: off)",
        "opt:",
    ):
        assert want in text


@pytest.mark.parametrize(
    "argv, needle",
    [(["--lr", "nan"], "--lr"), (["--algo", "c"], "--algo"), (["--seeds", "x"], "--seeds")],
)
def test_parse_errors_name_the_flag(argv, needle, capsys):
    with pytest.raises(SystemExit) as e:
        parser().parse_args(argv)
    assert e.value.code == 2 and needle in capsys.readouterr().err


def test_field_errors_check_bounds_choices_and_finiteness():
    assert field_errors(Demo(out="x")) is None
    assert field_errors(Demo(out="x", m=1, seeds=[0, 9], lr=1e-9)) is None  # at the bounds
    assert field_errors(Demo(out="x", lr=0.0)) == "--lr must be > 0 (a step); got 0"
    assert field_errors(Demo(out="x", seeds=[0, 10])) == "--seeds must be >= 0 and < 10; got 10"
    assert field_errors(Demo(out="x", seeds=[-1])).startswith("--seeds must be >= 0")
    assert field_errors(Demo(out="x", m=0)) == "--m must be >= 1; got 0"
    assert field_errors(Demo(out="x", lr=float("inf"))).startswith("--lr must be a finite")
    assert field_errors(Demo(out="x", algo=["a", "z"])).startswith("--algo 'z': unknown")


def test_a_group_not_declared_is_refused():
    with pytest.raises(ValueError, match="group 'opt'"):
        dataclass_parser(Demo, prog="demo", description="d", groups=("other",))
