"""The floor plan (issue 16), read from the source with `ast`: the seams stay where they are meant to be."""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PACKAGES = ("lema", "services", "trainer")


def _modules():
    for package in PACKAGES:
        for path in sorted((REPO / package).rglob("*.py")):
            if "/v1/" not in str(path) and "migrations" not in path.parts:
                yield path, ast.parse(path.read_text(), filename=str(path))


def _imports(tree: ast.AST) -> set[str]:
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


def test_only_the_verifier_builds_a_verifier_pool():
    builders = []
    for path, tree in _modules():
        for node in ast.walk(tree):
            if isinstance(node, ast.Call):
                name = node.func.id if isinstance(node.func, ast.Name) else getattr(node.func, "attr", "")
                if name == "VerifierPool" and path.parent != REPO / "services" / "verifier":
                    builders.append(f"{path.relative_to(REPO)}:{node.lineno}")
    assert not builders, f"consumers get a verifier from services.verifier.open_verifier: {builders}"


def test_the_core_imports_nothing_from_lema_tiny():
    leaks = [str(path.relative_to(REPO)) for path, tree in _modules()
             if path.is_relative_to(REPO / "lema" / "core") and any(m.startswith("lema.tiny") for m in _imports(tree))]
    assert not leaks, leaks


def test_only_the_verifier_package_face_is_imported_by_other_services():
    """Other services use `services.verifier` (the interface and factory), never its pool or servicer."""
    leaks = []
    for path, tree in _modules():
        if not path.is_relative_to(REPO / "services") or path.is_relative_to(REPO / "services" / "verifier"):
            continue  # the CLI starts services (lema serve verifier); other services use the package's face
        leaks += [f"{path.relative_to(REPO)}: {m}" for m in _imports(tree)
                  if m.startswith("services.verifier.") and m.split(".")[2] in ("pool", "servicer", "server")]
    assert not leaks, leaks


def test_services_use_only_each_other_s_package_face():
    """services/X imports services.Y (the interface and factory in Y's __init__) and nothing deeper."""
    leaks = []
    for path, tree in _modules():
        if not path.is_relative_to(REPO / "services"):
            continue
        own = path.relative_to(REPO / "services").parts[0]
        for module in _imports(tree):
            parts = module.split(".")
            if parts[0] != "services" or len(parts) < 3 or parts[1] == own:
                continue
            inner = REPO / "services" / parts[1] / parts[2]  # a module inside Y, not a name Y's face exports
            if inner.with_suffix(".py").exists() or inner.is_dir():
                leaks.append(f"{path.relative_to(REPO)}: {module}")
    assert not leaks, leaks


def test_the_source_tree_is_the_import_tree():
    """lema/, services/ and trainer/ install under their own names: no package_dir remap, no sys.modules alias."""
    import importlib.util

    for package in PACKAGES:
        spec = importlib.util.find_spec(package)
        assert spec is not None and Path(spec.origin) == REPO / package / "__init__.py", (package, spec)
    aliases = []
    for path, tree in _modules():
        for node in ast.walk(tree):
            if isinstance(node, ast.Subscript) and isinstance(node.ctx, ast.Store):
                target = node.value
                if isinstance(target, ast.Attribute) and target.attr == "modules" and \
                        isinstance(target.value, ast.Name) and target.value.id == "sys":
                    aliases.append(f"{path.relative_to(REPO)}:{node.lineno}")
    assert not aliases, f"sys.modules assignments: {aliases}"
    assert not (REPO / "setup.py").exists()


def test_no_except_keyerror_wraps_generation_in_the_endpoint():
    """A KeyError from inside an engine is a bug, not "model not served": only resolving the model answers 404."""
    for name in ("openai_api.py", "service.py"):
        tree = ast.parse((REPO / "services" / "endpoint" / name).read_text())
        caught = [node.lineno for node in ast.walk(tree) if isinstance(node, ast.ExceptHandler)
                  and isinstance(node.type, ast.Name) and node.type.id == "KeyError"]
        assert not caught, f"{name}: except KeyError at lines {caught}"


def test_the_unit_tier_starts_nothing():
    """tests/unit/ stays fast: no subprocesses, no servers (those tests live beside it and are marked slow)."""
    starters = {"subprocess", "multiprocessing"}
    offenders = []
    for path in sorted((REPO / "tests" / "unit").rglob("*.py")):
        used = {m.split(".")[0] for m in _imports(ast.parse(path.read_text()))}
        offenders += [f"{path.relative_to(REPO)}: {m}" for m in sorted(used & starters)]
    assert not offenders, offenders
