"""The dependency graph is readable from the top of each module (issue 25, item 3).

- No module imports another module's private name (`from extes.a import _b`).
- A function-level `from extes...` import is deliberate: it says why in one line (a `lazy:` comment on the
  import or the line above it), or sits under `if TYPE_CHECKING:` or `if __name__ == "__main__":`.
- Modules imported at start-up by every `extes` verb stay light: `extes --help` loads no torch, gradio or
  transformers.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

EXTES = Path(__file__).resolve().parents[1] / "extes"


def _modules() -> list[Path]:
    return sorted(EXTES.rglob("*.py"))


def _module_name(path: Path) -> str:
    parts = path.relative_to(EXTES.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _guarded_lines(tree: ast.Module) -> set[int]:
    """Line numbers inside `if TYPE_CHECKING:` or `if __name__ == "__main__":` blocks."""
    lines: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If):
            test = ast.unparse(node.test)
            if "TYPE_CHECKING" in test or "__main__" in test:
                for inner in ast.walk(node):
                    if hasattr(inner, "lineno"):
                        lines.add(inner.lineno)
    return lines


def test_no_module_imports_another_modules_private_name():
    found = []
    for path in _modules():
        own = _module_name(path)
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("extes"):
                if node.module == own:
                    continue
                found += [f"{path.relative_to(EXTES.parent)}:{node.lineno} {node.module}.{a.name}"
                          for a in node.names if a.name.startswith("_") and not a.name.startswith("__")]
    assert not found, found


def test_function_level_imports_of_extes_say_why():
    unexplained = []
    for path in _modules():
        text = path.read_text(encoding="utf-8")
        lines = text.splitlines()
        tree = ast.parse(text)
        guarded = _guarded_lines(tree)
        for fn in ast.walk(tree):
            if not isinstance(fn, ast.FunctionDef | ast.AsyncFunctionDef):
                continue
            for node in ast.walk(fn):
                if not isinstance(node, ast.Import | ast.ImportFrom) or node.lineno in guarded:
                    continue
                names = [node.module or ""] if isinstance(node, ast.ImportFrom) else [a.name for a in node.names]
                if not any(n == "extes" or n.startswith("extes.") for n in names):
                    continue
                # the reason: on the import itself, or in the comment lines just above it (a block of lazy
                # imports shares one comment)
                i = node.lineno - 1
                said = "lazy" in lines[i]
                j = i - 1
                while not said and j >= 0 and (lines[j].strip().startswith(("#", "import ", "from "))
                                               or not lines[j].strip()):
                    said = "lazy" in lines[j] and lines[j].strip().startswith("#") or "# lazy" in lines[j]
                    if lines[j].strip().startswith(("def ", "class ")):
                        break
                    j -= 1
                if not said:
                    unexplained.append(f"{path.relative_to(EXTES.parent)}:{node.lineno}")
    assert not unexplained, unexplained


def test_the_cli_starts_without_the_heavy_stacks():
    code = ("import sys, extes.cli; heavy = [m for m in ('torch', 'gradio', 'transformers', 'matplotlib') "
            "if m in sys.modules]; print(','.join(heavy))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=EXTES.parent).stdout.strip()
    assert out == "", f"`import extes.cli` loads {out}"
