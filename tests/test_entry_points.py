"""The command-line programs run as ``python -m <package>.<module>`` from the checkout's root,
with no ``sys.path`` manipulation in the code, and their ``--help`` names that command."""

from __future__ import annotations

import ast
import importlib
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CLIS = (
    "deep_nets.train",
    "deep_nets.eval_sharpness",
    "diagonal_linear_nets.train",
    "one_layer_relu_nets.train",
)


@pytest.mark.parametrize("module", CLIS)
def test_help_names_the_python_m_command(module, capsys):
    main = importlib.import_module(module).main
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0
    assert capsys.readouterr().out.startswith(f"usage: python -m {module} ")


def test_a_cli_runs_with_python_m_from_the_root():
    """The other CLIs' subprocess tests (test_deep_train_procs, test_diagonal_resume,
    test_one_layer_cli) run them this way too; this one has none."""
    res = subprocess.run(
        [sys.executable, "-m", "deep_nets.eval_sharpness", "--help"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert res.returncode == 0, res.stderr[-2000:]
    assert res.stdout.startswith("usage: python -m deep_nets.eval_sharpness ")


def _sys_path_edits(tree: ast.AST) -> list[int]:
    """Lines that assign to or call a method of ``sys.path``."""
    lines = []
    for node in ast.walk(tree):
        target = None
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            target = node.func.value  # sys.path.insert(...), sys.path.append(...)
        elif isinstance(node, (ast.Assign, ast.AugAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            target = next(
                (t for t in targets if isinstance(t, (ast.Attribute, ast.Subscript))), None
            )
            if isinstance(target, ast.Subscript):
                target = target.value  # sys.path[:0] = ...
        if (
            isinstance(target, ast.Attribute)
            and target.attr == "path"
            and isinstance(target.value, ast.Name)
            and target.value.id == "sys"
        ):
            lines.append(node.lineno)
    return sorted(lines)


def test_no_module_of_the_repository_edits_sys_path():
    """``python -m`` puts the root on the path; scripts that patch ``sys.path`` (and the
    ``# noqa: E402`` imports after them) are not needed. Tests may still build throw-away driver
    scripts in strings; those are not parsed here."""
    names = subprocess.run(
        ["git", "ls-files", "*.py"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.split()
    hits = [
        f"{n}:{line}"
        for n in names
        if (ROOT / n).exists()
        for line in _sys_path_edits(ast.parse((ROOT / n).read_text(encoding="utf-8")))
    ]
    assert not hits, f"sys.path edited (run the module with python -m instead): {hits}"


def test_the_scan_sees_each_form_of_sys_path_edit():
    src = "\n".join(
        [
            "import sys",
            "sys.path.insert(0, 'x')",
            "sys.path[:0] = ['y']",
            "sys.path += ['z']",
            "len(sys.path)",
        ]
    )
    assert _sys_path_edits(ast.parse(src)) == [2, 3, 4]
