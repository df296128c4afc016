"""The floor plan (issues 16 and 29), read from the source with `ast`: one import package, imports one way, the seams
where they are meant to be."""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
# The one import package and the root folders installed inside it (pyproject.toml's package-dir).
PACKAGES = {"lema": REPO / "lema", "lema.services": REPO / "services", "lema.trainer": REPO / "trainer"}
# Bottom to top: a module may import its own layer and the layers below, never above. The foundation is the rest
# of `lema` (lema.core, the protos in lema.v1, the tiny model in lema.tiny, lema.devtools).
LAYERS = ("lema", "lema.services", "lema.trainer", "lema.app")


def _source_files():
    for package, folder in PACKAGES.items():
        for path in sorted(folder.rglob("*.py")):
            if "/v1/" in str(path) or "migrations" in path.parts:
                continue
            parts = path.relative_to(folder).with_suffix("").parts
            yield ".".join([package, *(parts[:-1] if parts[-1] == "__init__" else parts)]), path


def _modules():
    for _, path in _source_files():
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


def _import_graph() -> dict[str, set[str]]:
    """module -> the lema modules it imports anywhere (top level, in functions, under TYPE_CHECKING): `from p import
    m` is an import of module p.m when m is one, else of p (as grimp, under import-linter, reads them)."""
    files = dict(_source_files())
    modules = set(files) | {"lema.v1"}

    def owner(name: str) -> str | None:
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name or None

    graph = {}
    for module, path in files.items():
        targets = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in modules else node.module
                         for a in node.names]
            else:
                continue
            targets.update(filter(None, map(owner, names)))
        graph[module] = targets - {module}
    return graph


def _layer(module: str) -> int:
    return max(i for i, layer in enumerate(LAYERS) if module == layer or module.startswith(layer + "."))


def test_imports_go_one_way_foundation_services_trainer_application():
    upward = [f"{module} -> {target}" for module, targets in _import_graph().items() for target in sorted(targets)
              if _layer(target) > _layer(module)]
    assert not upward, f"imports against the layers {' <- '.join(LAYERS)}: {upward}"


def test_no_import_cycle():
    """Strongly connected components of the module graph (Tarjan): each must be a single module."""
    graph = _import_graph()
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles = []

    def visit(module: str) -> None:
        index[module] = low[module] = len(index)
        stack.append(module)
        for target in graph.get(module, ()):
            if target not in index:
                visit(target)
                low[module] = min(low[module], low[target])
            elif target in stack:
                low[module] = min(low[module], index[target])
        if low[module] == index[module]:
            component = []
            while not component or component[-1] != module:
                component.append(stack.pop())
            if len(component) > 1:
                cycles.append(sorted(component))

    for module in sorted(graph):
        if module not in index:
            visit(module)
    assert not cycles, cycles


def test_the_layer_check_sees_an_upward_import():
    """The checks above read real edges: the application imports the trainer and the trainer the services."""
    graph = _import_graph()
    assert "lema.trainer.ablation" in graph["lema.app.demo"] or any(t.startswith("lema.trainer")
                                                                   for t in graph["lema.app.demo"])
    assert any(t.startswith("lema.services") for m, ts in graph.items() if m.startswith("lema.trainer") for t in ts)


def test_one_import_package():
    """Nothing imports the root folders under their own names (`services`, `trainer`: taken on PyPI); the
    installed package maps them inside `lema`."""
    import importlib.util

    generic = [f"{path.relative_to(REPO)}: {m}" for path, tree in _modules() for m in _imports(tree)
               if m.split(".")[0] in ("services", "trainer")]
    assert not generic, generic
    for package, folder in PACKAGES.items():
        spec = importlib.util.find_spec(package)
        assert spec is not None and Path(spec.origin) == folder / "__init__.py", (package, spec)


def test_only_the_verifier_builds_a_verifier_pool():
    builders = []
    for path, tree in _modules():
        for node in ast.walk(tree):
            if isinstance(node, ast.Call):
                name = node.func.id if isinstance(node.func, ast.Name) else getattr(node.func, "attr", "")
                if name == "VerifierPool" and path.parent != REPO / "services" / "verifier":
                    builders.append(f"{path.relative_to(REPO)}:{node.lineno}")
    assert not builders, f"consumers get a verifier from lema.services.verifier.open_verifier: {builders}"


def test_the_core_imports_nothing_from_lema_tiny():
    leaks = [str(path.relative_to(REPO)) for path, tree in _modules()
             if path.is_relative_to(REPO / "lema" / "core") and any(m.startswith("lema.tiny") for m in _imports(tree))]
    assert not leaks, leaks


def test_only_the_verifier_package_face_is_imported_by_other_services():
    """Other services use `lema.services.verifier` (the interface and factory), never its pool or servicer."""
    leaks = []
    for path, tree in _modules():
        if not path.is_relative_to(REPO / "services") or path.is_relative_to(REPO / "services" / "verifier"):
            continue  # the CLI starts services (lema serve verifier); other services use the package's face
        leaks += [f"{path.relative_to(REPO)}: {m}" for m in _imports(tree)
                  if m.startswith("lema.services.verifier.") and m.split(".")[3] in ("pool", "servicer", "server")]
    assert not leaks, leaks


def test_services_use_only_each_other_s_package_face():
    """services/X imports lema.services.Y (the interface and factory in Y's __init__) and nothing deeper."""
    leaks = []
    for path, tree in _modules():
        if not path.is_relative_to(REPO / "services"):
            continue
        own = path.relative_to(REPO / "services").parts[0]
        for module in _imports(tree):
            parts = module.split(".")[1:]  # without the leading "lema"
            if module.split(".")[0] != "lema" or parts[:1] != ["services"] or len(parts) < 3 or parts[1] == own:
                continue
            inner = REPO / "services" / parts[1] / parts[2]  # a module inside Y, not a name Y's face exports
            if inner.with_suffix(".py").exists() or inner.is_dir():
                leaks.append(f"{path.relative_to(REPO)}: {module}")
    assert not leaks, leaks


def test_no_sys_modules_alias():
    aliases = []
    for path, tree in _modules():
        for node in ast.walk(tree):
            if isinstance(node, ast.Subscript) and isinstance(node.ctx, ast.Store):
                target = node.value
                if isinstance(target, ast.Attribute) and target.attr == "modules" and \
                        isinstance(target.value, ast.Name) and target.value.id == "sys":
                    aliases.append(f"{path.relative_to(REPO)}:{node.lineno}")
    assert not aliases, f"sys.modules assignments: {aliases}"


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
