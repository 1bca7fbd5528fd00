"""The tree reads as the architecture: no import circles between files anywhere in it, the engine under the
service under the doors (ui, apis, cli), no door importing another, the engine never importing gradio, the UI
never importing torch, family names compared only in the family registry, and the project's own settings not
travelling through environment variables."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("engine", "studio", "store", "server", "ui", "apis", "cli", "benchmarks", "tools")
DOORS = ("ui", "apis", "cli")
# package -> the project packages it may import (the composer app.py / serving.py may import them all)
MAY_IMPORT = {
    "engine": {"engine"},
    "store": {"store", "engine"},
    "studio": {"studio", "engine", "store"},
    "server": {"server"},  # the HTTP front: before every route, knowing none of them
    "ui": {"ui", "studio", "engine", "store"},
    "apis": {"apis", "studio", "engine", "store"},
    "cli": {"cli", "studio", "engine", "store"},
}


def _modules() -> dict[str, Path]:
    files = {"app": ROOT / "app.py", "serving": ROOT / "serving.py"}
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


def test_the_engine_sits_under_the_service_under_the_doors_and_no_door_imports_another():
    files = _modules()
    wrong = []
    for name, path in files.items():
        package = name.split(".")[0]
        if package not in MAY_IMPORT:
            continue
        for target in _imports(name, path, set(files)):
            if target.split(".")[0] not in MAY_IMPORT[package]:
                wrong.append(f"{name} -> {target}")
    assert not wrong, f"imports across the architecture: {wrong}"


def test_the_service_speaks_no_protocol():
    """studio/ is under every door: no gradio, no HTTP framework."""
    for name, path in _modules().items():
        if name.startswith("studio"):
            text = path.read_text()
            for framework in ("gradio", "fastapi", "starlette"):
                assert f"import {framework}" not in text and f"from {framework}" not in text, (name, framework)


def test_family_names_are_compared_only_in_the_registry():
    """Outside engine/families.py no code compares a family's name (`family == "flux"`): it asks the registry."""
    from engine.families import FAMILIES

    found = []
    for name, path in _modules().items():
        if name == "engine.families":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.Compare):
                continue
            sides = [node.left, *node.comparators]
            named = any("family" in ast.unparse(side).lower() for side in sides)
            literal = [n.value for side in sides for n in ast.walk(side) if isinstance(n, ast.Constant)]
            if named and any(value in FAMILIES for value in literal):
                found.append(f"{name}:{node.lineno}: {ast.unparse(node)}")
    assert not found, f"family names compared outside the registry: {found}"


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
