"""The walls between the toolkit's packages, read from the source with ``ast`` (nothing is imported).

Every ``import`` / ``from ... import`` of every module under ``perception/`` counts, also those inside functions
(lazy imports) and ``importlib.import_module("perception...")`` calls with a literal name. An import of
``a.b.c`` also runs the ``__init__`` of the packages ``a.b`` and ``a`` it is not inside itself, so for circles it
counts as an import of those too. Imports under ``if TYPE_CHECKING:`` never run: they count for the walls (a type
is a dependency) but not for circles.

A second check keeps task types out of the code that should only loop over tasks: outside ``perception/tasks/``
and a few legacy places (listed below with the reason each has), no string constant may spell a task type's name.
"""
from __future__ import annotations

import ast
import textwrap
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "perception"

# subpackage -> the perception subpackages it must never import. (The losses live in each task type's folder,
# under the rule of perception/tasks below.)
FORBIDDEN = {
    "models": {"engine", "data", "inference"},
    "data": {"models"},
    "mtl": {"engine", "data"},
    "metrics": {"models", "engine"},
}
# subpackage -> the only other perception subpackages it may import.
ONLY = {
    "tasks": {"ops", "utils"},
    "ops": {"utils"},
    "utils": set(),
}

# Task types a module outside perception/tasks must not name (the registered ones are added at test time).
TYPE_NAMES = {"detection", "segmentation", "depth", "normals"}

# Where a type's name may still appear, as path -> (top-level definitions it may appear in, or None for the whole
# file, why). Paths ending in "/" cover a folder.
ALLOWED_TYPE_NAMES: dict[str, tuple[frozenset[str] | None, str]] = {
    "perception/tasks/": (None, "the task types themselves"),
    "perception/data/datasets/": (None, "a dataset declares which labels it produces under the legacy label keys"),
    "perception/data/synthetic/__init__.py": (frozenset({"frame_to_sample"}),
                                              "a rendered frame as a Sample (its flat keys 'depth', 'normals')"),
    "perception/data/batch.py": (frozenset({"LABEL_KEYS", "OPTIONAL_KEYS"}),
                                  "the label-key -> task-type table of the data layer and its optional keys"),
    "perception/models/config.py": (frozenset({"ModelConfig"}),
                                    "the list form of model.tasks and its per-type sections (legacy configs)"),
    "perception/data/io.py": (frozenset({"check_sample"}),
                              "checks a Sample's flat keys ('depth') and the per-type class counts of a dataset"),
    "perception/data/labels.py": (None, "class maps of a dataset's label spaces, keyed by the legacy label keys "
                                        "that carry classes (dataset.classes['detection'], ['segmentation'])"),
    "perception/data/build.py": (frozenset({"_mix_classes", "build_dataset"}),
                                 "data.detection_classes / data.semantic_classes: the configured label spaces, "
                                 "keyed like dataset.classes"),
}


# --------------------------------------------------------------------------------------------------- scanning
@dataclass(frozen=True)
class Import:
    """One import statement's dependency on a module of the scanned package (or on ``tools``)."""

    source: str       # the importing module
    path: str         # its file, relative to the root
    line: int
    target: str       # the imported module (the longest prefix of the name that is a module of the package)
    lazy: bool        # inside a function
    type_only: bool   # under ``if TYPE_CHECKING:``


def module_files(root: Path, package: str = PACKAGE) -> dict[str, Path]:
    """Dotted module name -> file, for every module of ``package`` under ``root`` (a package is its __init__)."""
    out = {}
    for path in sorted((root / package).rglob("*.py")):
        parts = list(path.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _known_prefix(name: str, modules: dict[str, Path]) -> str | None:
    parts = name.split(".")
    for end in range(len(parts), 0, -1):
        if ".".join(parts[:end]) in modules:
            return ".".join(parts[:end])
    return None


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or \
        (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


class _ImportVisitor(ast.NodeVisitor):
    def __init__(self, module: str, is_package: bool, path: str, modules: dict[str, Path]) -> None:
        self.module, self.path, self.modules = module, path, modules
        self.package = module if is_package else module.rpartition(".")[0]
        self.depth = 0          # function nesting
        self.type_only = 0      # TYPE_CHECKING nesting
        self.found: list[Import] = []

    def _add(self, name: str, line: int) -> None:
        if name == "tools" or name.startswith("tools."):
            target = name
        elif name == PACKAGE or name.startswith(PACKAGE + "."):
            target = _known_prefix(name, self.modules) or name
        else:
            return
        self.found.append(Import(self.module, self.path, line, target, self.depth > 0, self.type_only > 0))

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            self._add(alias.name, node.lineno)

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        if node.level:
            base = self.package.split(".")
            base = base[:len(base) - node.level + 1]
            name = ".".join(base + ([node.module] if node.module else []))
        else:
            name = node.module or ""
        for alias in node.names:
            # ``from a import b`` imports the module a.b when there is one, else a name of a.
            sub = f"{name}.{alias.name}"
            self._add(sub if sub in self.modules else name, node.lineno)

    def visit_Call(self, node: ast.Call) -> None:
        func = node.func
        name = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else ""
        if name == "import_module" and node.args and isinstance(node.args[0], ast.Constant) \
                and isinstance(node.args[0].value, str):
            self._add(node.args[0].value, node.lineno)
        self.generic_visit(node)

    def _function(self, node: ast.AST) -> None:
        self.depth += 1
        self.generic_visit(node)
        self.depth -= 1

    visit_FunctionDef = visit_AsyncFunctionDef = visit_Lambda = _function

    def visit_If(self, node: ast.If) -> None:
        if _is_type_checking(node.test):
            self.type_only += 1
            for child in node.body:
                self.visit(child)
            self.type_only -= 1
            for child in node.orelse:
                self.visit(child)
        else:
            self.generic_visit(node)


def scan_imports(root: Path, package: str = PACKAGE) -> list[Import]:
    """Every import of a module of ``package`` (or of ``tools``) by a module of ``package`` under ``root``."""
    modules = module_files(root, package)
    found = []
    for module, path in modules.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        visitor = _ImportVisitor(module, path.name == "__init__.py", str(path.relative_to(root)), modules)
        visitor.visit(tree)
        found += visitor.found
    return found


def subpackage(module: str) -> str:
    """``perception.models.build`` -> ``models``; ``perception.config`` -> ``config``; the root -> ``""``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def wall_breaches(imports: list[Import]) -> list[tuple[str, str]]:
    """(wall, ``file:line: imports X: rule``) per import that breaks a wall; the wall is the importing
    subpackage, or ``tools``."""
    out = []
    for imp in imports:
        src, dst = subpackage(imp.source), subpackage(imp.target)
        rule, wall = None, src
        if imp.target.split(".")[0] == "tools":
            rule, wall = "nothing in perception imports tools", "tools"
        elif src in FORBIDDEN and dst in FORBIDDEN[src]:
            rule = f"{src} never imports {', '.join(sorted(FORBIDDEN[src]))}"
        elif src in ONLY and dst not in ONLY[src] | {src, ""}:
            allowed = ", ".join(f"perception.{p}" for p in sorted(ONLY[src] | {src}))
            rule = f"{src} imports only {allowed}"
        if rule:
            kind = " (type hint)" if imp.type_only else " (inside a function)" if imp.lazy else ""
            out.append((wall, f"{imp.path}:{imp.line}: imports {imp.target}{kind}: {rule}"))
    return out


def import_graph(imports: list[Import]) -> dict[str, dict[str, Import]]:
    """Module -> {module it runs on import -> the import that does it}, without type-only imports.

    Importing ``a.b.c`` from outside ``a.b`` also runs ``a.b/__init__``: an edge to every package on the way that
    does not contain the importer.
    """
    graph: dict[str, dict[str, Import]] = {}
    for imp in imports:
        if imp.type_only or imp.target.split(".")[0] == "tools":
            continue
        parts = imp.target.split(".")
        for end in range(1, len(parts) + 1):
            target = ".".join(parts[:end])
            if target == imp.source or imp.source.startswith(target + "."):
                continue  # the importer's own packages are already initialising
            graph.setdefault(imp.source, {}).setdefault(target, imp)
    return graph


Edge = tuple[str, Import]  # (the module run, the import statement that runs it)


def find_cycles(graph: dict[str, dict[str, Import]]) -> list[list[Edge]]:
    """One circle (as its edges, in order) per strongly connected component with more than one module."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def strongconnect(node: str) -> None:  # Tarjan; the package graph is small enough for recursion
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for succ in graph.get(node, {}):
            if succ not in index:
                strongconnect(succ)
                low[node] = min(low[node], low[succ])
            elif succ in on_stack:
                low[node] = min(low[node], index[succ])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                components.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            strongconnect(node)
    return [_cycle_in(graph, set(component), component[0]) for component in sorted(components)]


def _cycle_in(graph: dict[str, dict[str, Import]], members: set[str], start: str) -> list[Edge]:
    # Breadth-first from start back to start inside the component: the shortest circle through it.
    previous: dict[str, Import] = {}
    frontier = [start]
    while frontier:
        nxt = []
        for node in frontier:
            for succ, imp in sorted(graph.get(node, {}).items()):
                if succ not in members or succ in previous:
                    continue
                previous[succ] = imp
                if succ == start:
                    path = []
                    while True:
                        path.append((succ, previous[succ]))
                        succ = previous[succ].source
                        if succ == start:
                            return path[::-1]
                nxt.append(succ)
        frontier = nxt
    raise AssertionError(f"no cycle through {start}")  # unreachable for a strongly connected component


def describe_cycle(cycle: list[Edge]) -> str:
    steps = [f"{imp.source} -> {target} ({imp.path}:{imp.line} imports {imp.target}"
             f"{', inside a function' if imp.lazy else ''})" for target, imp in cycle]
    return "import circle: " + "; ".join(steps)


@dataclass(frozen=True)
class NameHit:
    path: str
    line: int
    value: str
    scope: str   # the top-level definition it is in ("" at module level outside any)
    context: str


def _context(node: ast.AST, parents: dict[ast.AST, ast.AST]) -> str:
    parent = parents.get(node)
    while isinstance(parent, (ast.Tuple, ast.List, ast.Set)):
        node, parent = parent, parents.get(parent)
    if isinstance(parent, ast.Compare):
        return "comparison"
    if isinstance(parent, ast.Subscript) and node is parent.slice:
        return "subscript"
    if isinstance(parent, ast.Dict) and node in parent.keys:
        return "dict key"
    if isinstance(parent, (ast.Call, ast.keyword)):
        return "call argument"
    return "value"


def type_name_hits(root: Path, names: set[str], package: str = PACKAGE) -> list[NameHit]:
    """String constants equal to one of ``names`` in the modules of ``package`` (docstrings excluded)."""
    hits = []
    for path in module_files(root, package).values():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
        scopes = {}
        for top in tree.body:
            name = ""
            if isinstance(top, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                name = top.name
            elif isinstance(top, (ast.Assign, ast.AnnAssign)):
                targets = top.targets if isinstance(top, ast.Assign) else [top.target]
                name = ",".join(t.id for t in targets if isinstance(t, ast.Name))
            for node in ast.walk(top):
                scopes[node] = name
        for node in ast.walk(tree):
            if not (isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value in names):
                continue
            if isinstance(parents.get(node), ast.Expr):
                continue  # a docstring or a bare string statement
            hits.append(NameHit(str(path.relative_to(root)), node.lineno, node.value, scopes.get(node, ""),
                                _context(node, parents)))
    return sorted(hits, key=lambda h: (h.path, h.line))


def _allowance(path: str, table: dict) -> str | None:
    for key in table:
        if path == key or (key.endswith("/") and path.startswith(key)):
            return key
    return None


def disallowed_type_names(hits: list[NameHit]) -> list[str]:
    out = []
    for hit in hits:
        key = _allowance(hit.path, ALLOWED_TYPE_NAMES)
        if key is not None:
            scopes, _ = ALLOWED_TYPE_NAMES[key]
            if scopes is None or hit.scope in scopes:
                continue
        where = f" in {hit.scope}" if hit.scope else ""
        out.append(f"{hit.path}:{hit.line}: task type {hit.value!r} named as a {hit.context}{where}: code outside "
                   "perception/tasks loops over the model's tasks (task.name, task.label, task methods) instead")
    return out


# ------------------------------------------------------------------------------------------ the toolkit's walls
@pytest.fixture(scope="module")
def imports() -> list[Import]:
    return scan_imports(ROOT)


def test_every_module_is_scanned(imports: list[Import]) -> None:
    modules = module_files(ROOT)
    assert {"perception.config", "perception.engine.trainer", "perception.tasks.base"} <= set(modules)
    # The scan sees module-level, lazy and from-imports alike.
    trainer = {(i.target, i.lazy) for i in imports if i.source == "perception.engine.trainer"}
    assert ("perception.engine.step", False) in trainer and ("perception.data", True) in trainer


@pytest.mark.parametrize("rule", sorted(set(FORBIDDEN) | set(ONLY) | {"tools"}))
def test_walls(imports: list[Import], rule: str) -> None:
    breaches = [message for wall, message in wall_breaches(imports) if wall == rule]
    assert not breaches, "\n".join(breaches)


def test_no_import_circles(imports: list[Import]) -> None:
    cycles = find_cycles(import_graph(imports))
    assert not cycles, "\n".join(describe_cycle(c) for c in cycles)


def test_config_runs_none_of_the_engine(imports: list[Import]) -> None:
    # perception.config imports the engine's sections, which runs perception/engine/__init__ too; the trainer and
    # the evaluator read a whole Config (they import perception.config), so that __init__ must not reach them.
    graph = import_graph(imports)
    reached, todo = set(), ["perception.config"]
    while todo:
        for succ in graph.get(todo.pop(), {}):
            if succ not in reached:
                reached.add(succ)
                todo.append(succ)
    assert {"perception.engine", "perception.engine.config"} <= reached
    assert not reached & {"perception.engine.trainer", "perception.engine.evaluator", "perception.config"}


def test_task_types_are_named_only_in_task_folders() -> None:
    from perception.tasks import TASK_TYPES

    hits = type_name_hits(ROOT, TYPE_NAMES | set(TASK_TYPES))
    bad = disallowed_type_names(hits)
    assert not bad, "\n".join(bad)
    # Every allowance is still needed (the list only shrinks).
    for key, (scopes, _) in ALLOWED_TYPE_NAMES.items():
        used = [h for h in hits if _allowance(h.path, {key: None}) and (scopes is None or h.scope in scopes)]
        assert used, f"ALLOWED_TYPE_NAMES[{key!r}] allows names that are no longer there: remove it"


# ------------------------------------------------------------------------------------------- the checker itself
def _write_package(root: Path, files: dict[str, str]) -> None:
    for rel, text in files.items():
        path = root / PACKAGE / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text), encoding="utf-8")
    for folder in [root / PACKAGE, *(p for p in (root / PACKAGE).rglob("*") if p.is_dir())]:
        (folder / "__init__.py").touch()


def test_checker_finds_breaches_lazy_relative_and_type_only(tmp_path: Path) -> None:
    _write_package(tmp_path, {
        "models/net.py": """
            from typing import TYPE_CHECKING
            from ..data import batch
            if TYPE_CHECKING:
                from perception.engine.step import Step
            def build():
                import perception.inference.predictor
                return importlib.import_module("perception.engine.step")
        """,
        "tasks/head.py": "from perception.models import net\nfrom perception.ops import layers\n",
        "ops/layers.py": "from perception.utils import x\nimport tools.train\n",
        "data/batch.py": "", "engine/step.py": "", "inference/predictor.py": "", "utils/x.py": "",
    })
    breaches = [message for _, message in wall_breaches(scan_imports(tmp_path))]
    assert breaches == [
        "perception/models/net.py:3: imports perception.data.batch: models never imports data, engine, inference",
        "perception/models/net.py:5: imports perception.engine.step (type hint): models never imports data, engine, "
        "inference",
        "perception/models/net.py:7: imports perception.inference.predictor (inside a function): models never "
        "imports data, engine, inference",
        "perception/models/net.py:8: imports perception.engine.step (inside a function): models never imports "
        "data, engine, inference",
        "perception/ops/layers.py:2: imports tools.train: nothing in perception imports tools",
        "perception/tasks/head.py:1: imports perception.models.net: tasks imports only perception.ops, "
        "perception.tasks, perception.utils",
    ]


def test_checker_finds_circles_through_package_inits(tmp_path: Path) -> None:
    _write_package(tmp_path, {
        # config.py -> engine/__init__ (run on the way to engine.settings) -> engine.runner -> config.py
        "config.py": "from perception.engine.settings import S\n",
        "engine/__init__.py": "from perception.engine.runner import run\n",
        "engine/runner.py": "def run():\n    from perception.config import C\n",
        "engine/settings.py": "",
        # A package's __init__ importing its own submodules is no circle; nor is a type-only import.
        "models/__init__.py": "from perception.models.net import Net\n",
        "models/net.py": "from perception.models.layers import L\nfrom typing import TYPE_CHECKING\n"
                         "if TYPE_CHECKING:\n    from perception.engine.runner import run\n",
        "models/layers.py": "",
    })
    cycles = find_cycles(import_graph(scan_imports(tmp_path)))
    assert [[(imp.source, target) for target, imp in cycle] for cycle in cycles] == [[
        ("perception.config", "perception.engine"),
        ("perception.engine", "perception.engine.runner"),
        ("perception.engine.runner", "perception.config"),
    ]]
    assert describe_cycle(cycles[0]) == (
        "import circle: perception.config -> perception.engine (perception/config.py:1 imports "
        "perception.engine.settings); perception.engine -> perception.engine.runner (perception/engine/__init__.py:1 "
        "imports perception.engine.runner); perception.engine.runner -> perception.config "
        "(perception/engine/runner.py:2 imports perception.config, inside a function)")


def test_checker_type_names_skip_docstrings(tmp_path: Path) -> None:
    _write_package(tmp_path, {
        "engine/loop.py": '''
            """Trains detection, segmentation and depth."""
            def f(outputs, name):
                """depth"""
                if name == "depth":
                    return outputs["detection"]
                return {"segmentation": 1}, name in ("normals", "other"), g(key="depth")
        ''',
    })
    hits = type_name_hits(tmp_path, TYPE_NAMES)
    assert [(h.line, h.value, h.scope, h.context) for h in hits] == [
        (5, "depth", "f", "comparison"), (6, "detection", "f", "subscript"), (7, "segmentation", "f", "dict key"),
        (7, "normals", "f", "comparison"), (7, "depth", "f", "call argument")]
