"""The shape of the code that issue 29 set, checked on the source of ``surgery/``:

- no function over 80 lines (argparse parser builders aside);
- the graph is resolved only by public functions (``surgery.__all__``, the public
  ``surgery.criteria`` and ``surgery.cost`` modules, the CLI entry points); the stages
  below them take the resolved graph;
- no import circle, imports inside functions included (a package's ``__init__`` that
  imports its submodules counts: a submodule must not import it back);
- imports inside functions only for optional or heavy dependencies, each with a comment
  saying why it is lazy.

The layers themselves are import-linter's contract (``.importlinter``, ``lint-imports`` in
``.ci/run``). Each check is run on a small bad example too, so that it can fail.
"""
import ast
import os

import pytest

import surgery

ROOT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "surgery")
MAX_LINES = 80
#: what a function may import lazily: optional backends and extras, heavy or Keras-2-only
#: packages, Keras 3 itself (a Keras 2 process must never import it), and TensorFlow at
#: start-up (it must load after the Keras generation is chosen)
LAZY_OK = ("onnx", "onnxruntime", "tf2onnx", "torch", "jax", "keras", "keras_hub",
           "kerassurgeon", "tensorflow_model_optimization", "ai_edge_litert", "jax2onnx",
           "sklearn", "tensorflow", "tf_keras", "numpy._core", "numpy.core",
           "surgery.engine.keras3", "surgery.engine.surgeon", "surgery.patches")
#: the command line's entry points (they may resolve what the user passed)
CLI_ENTRY_POINTS = ("main", "run")


def _sources():
    for folder, _, files in os.walk(ROOT):
        for name in sorted(files):
            if name.endswith(".py"):
                path = os.path.join(folder, name)
                with open(path, encoding="utf-8") as f:
                    yield os.path.relpath(path, os.path.dirname(ROOT)), f.read()


def _module(rel: str) -> str:
    mod = rel[:-3].replace(os.sep, ".")
    return mod[:-len(".__init__")] if mod.endswith(".__init__") else mod


def long_functions(sources) -> list:
    return [f"{rel}:{node.lineno} {node.name} ({node.end_lineno - node.lineno} lines)"
            for rel, text in sources for node in ast.walk(ast.parse(text))
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
            and "parser" not in node.name and node.end_lineno - node.lineno >= MAX_LINES]


def resolving_functions(sources) -> set:
    """``(file, enclosing function)`` of every call of ``resolve``."""
    found = set()

    def visit(node, rel, stack):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                visit(child, rel, stack + [child.name])
                continue
            func = getattr(child, "func", None)
            if isinstance(child, ast.Call) and getattr(func, "id", getattr(func, "attr", "")) \
                    == "resolve":
                found.add((rel, stack[0] if stack else "<module>"))
            visit(child, rel, stack)

    for rel, text in sources:
        visit(ast.parse(text), rel, [])
    return found


def import_edges(sources) -> dict:
    """Module -> the ``surgery`` modules it imports (anywhere in the file); ``from p
    import x`` imports ``p`` (its ``__init__``) and ``p.x`` when that is a module."""
    sources = list(sources)
    modules = {_module(rel) for rel, _ in sources}
    edges = {}
    for rel, text in sources:
        mod, targets = _module(rel), set()
        package = mod if rel.endswith("__init__.py") else mod.rpartition(".")[0]
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.Import):
                targets |= {a.name for a in node.names}
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parts = package.split(".")[:len(package.split(".")) - node.level + 1]
                    base = ".".join(parts + ([node.module] if node.module else []))
                targets |= {base} | {f"{base}.{a.name}" for a in node.names}
        edges[mod] = {t for t in targets if t in modules and t not in (mod, "surgery")}
    return edges


def circles(edges: dict) -> list:
    """The strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on, found, counter = {}, {}, [], set(), [], [0]

    def connect(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in edges.get(v, ()):
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            connect(v)
    return found


def lazy_imports(sources) -> list:
    """Imports inside functions that are not of :data:`LAZY_OK`, or that no comment
    explains (on the import's line, or on the line just above it)."""
    bad = []
    for rel, text in sources:
        lines = text.splitlines()
        for fn in ast.walk(ast.parse(text)):
            if not isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            previous = None
            for node in ast.walk(fn):
                if not isinstance(node, (ast.Import, ast.ImportFrom)):
                    continue
                names = [a.name for a in node.names] if isinstance(node, ast.Import) \
                    else [f"{node.module}.{a.name}" for a in node.names]
                allowed = all(any(n == ok or n.startswith(ok + ".") for ok in LAZY_OK)
                              for n in names)
                said = "#" in lines[node.lineno - 1] or \
                    lines[node.lineno - 2].strip().startswith("#") or \
                    previous == node.lineno - 1  # one comment serves a block of imports
                if not (allowed and said):
                    bad.append(f"{rel}:{node.lineno}: {lines[node.lineno - 1].strip()}")
                previous = node.end_lineno
    return bad


def public_names() -> set:
    names = set(surgery.__all__) | set(surgery.criteria.__all__) | set(surgery.cost.__all__)
    return names | set(CLI_ENTRY_POINTS)


def test_no_function_is_over_80_lines():
    assert long_functions(_sources()) == []


def test_only_public_functions_resolve_the_graph():
    private = sorted(f"{rel}: {fn}" for rel, fn in resolving_functions(_sources())
                     if fn not in public_names())
    assert private == []


def test_no_import_circle():
    assert circles(import_edges(_sources())) == []


def test_imports_inside_functions_are_optional_dependencies_with_a_reason():
    assert lazy_imports(_sources()) == []


BAD = '''
from surgery.b import thing
def plan_helper(model):
    import numpy
    graph = resolve(model)
''' + "\n".join("    x = 1" for _ in range(MAX_LINES)) + '''
def other():
    import onnx  # lazy: the onnx extra
'''


@pytest.mark.parametrize("check", ["long", "resolve", "circle", "lazy"])
def test_each_check_catches_a_bad_example(check):
    sources = [("surgery/a.py", BAD), ("surgery/b.py", "from surgery.a import plan_helper\n")]
    if check == "long":
        assert [f for f in long_functions(sources) if "plan_helper" in f]
    elif check == "resolve":
        assert ("surgery/a.py", "plan_helper") in resolving_functions(sources)
        assert "plan_helper" not in public_names()
    elif check == "circle":
        assert circles(import_edges(sources)) == [["surgery.a", "surgery.b"]]
    else:
        assert lazy_imports(sources) == ["surgery/a.py:4: import numpy"]
