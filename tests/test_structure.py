"""The tree reads as the architecture: no import circles between files, the engine never imports gradio, the UI
never imports torch, and the project's own settings do not travel through environment variables."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("engine", "ui", "cli")


def _modules() -> dict[str, Path]:
    files = {"app": ROOT / "app.py"}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            parts = path.relative_to(ROOT).with_suffix("").parts
            files[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return files


def _imports(name: str, path: Path, known: set[str]) -> set[str]:
    """Every project module `name` imports, anywhere in the file (lazy imports in functions count too)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        targets = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(up + ([base] if base else []))
            targets = [f"{base}.{a.name}" for a in node.names] + [base]
        for target in targets:
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target and target != name and not name.startswith(target + "."):  # a package's own __init__
                found.add(target)
    return found


def test_no_import_circles_anywhere():
    files = _modules()
    graph = {name: _imports(name, path, set(files)) for name, path in files.items()}
    circles = []

    def visit(node, stack, seen):
        for nxt in graph[node]:
            if nxt in stack:
                circles.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in seen:
                seen.add(nxt)
                visit(nxt, stack + [nxt], seen)

    for start in graph:
        visit(start, [start], {start})
    assert not circles, f"import circles: {circles[:3]}"


def test_engine_has_no_gradio_and_ui_has_no_torch():
    for name, path in _modules().items():
        text = path.read_text()
        if name.startswith("engine"):
            assert "import gradio" not in text and "from gradio" not in text, name
        if name.startswith("ui"):
            assert "import torch" not in text and "from torch" not in text, name


def test_no_project_setting_travels_in_an_environment_variable():
    """Settings enter at app.py (flags, and a Space's STUDIO_MODEL) and travel in EngineConfig; nothing else reads
    or writes the environment for them (Hugging Face's and Gradio's own variables aside)."""
    import re

    pattern = re.compile(r"environ[^\n]*STUDIO_|getenv\([^)]*STUDIO_|environ\[\"HF_HUB_OFFLINE\"\]\s*=")
    for name, path in _modules().items():
        if name != "app":
            assert not pattern.search(path.read_text()), f"{name} passes settings through the environment"
