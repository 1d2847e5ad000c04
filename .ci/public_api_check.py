"""What ruff (SLF001) and import-linter cannot see of "libraries only through their
documented API" (issue [11]):

- a class that derives from a third-party class (paho's Client, a websockets connection,
  aiohttp's classes, PyYAML's loaders, ...): a subclass depends on the library's
  internals, which a routine upgrade may change;
- getattr/setattr/hasattr/delattr with a literal name starting with one underscore (not a
  dunder) on anything but `self` or `cls`: the dynamic spelling of a private access;
- importing a name or a module whose name starts with an underscore from a third-party
  package.

Standard-library bases (Exception, logging.Filter, typing.Protocol, enum.Enum, ...) and
the project's own classes are fine.

    python .ci/public_api_check.py adapter sepl_dev

prints one line per finding (`file:line: what`) and exits 1 if there is any.
"""

from __future__ import annotations

import ast
import sys
from collections.abc import Iterator
from pathlib import Path

OWN_PACKAGES = frozenset({"adapter", "sepl_dev", "tests", "bench"})
DYNAMIC_ACCESS = frozenset({"getattr", "setattr", "hasattr", "delattr"})


def is_third_party(module: str) -> bool:
    top = module.split(".")[0]
    return bool(top) and top not in OWN_PACKAGES and top not in sys.stdlib_module_names


def is_private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def imported_names(tree: ast.Module) -> dict[str, str]:
    """Local name -> the module (or module.attribute) it stands for."""
    names: dict[str, str] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                local = alias.asname or alias.name.split(".")[0]
                names[local] = alias.name if alias.asname else alias.name.split(".")[0]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            for alias in node.names:
                names[alias.asname or alias.name] = f"{node.module}.{alias.name}"
    # A module-level alias of a library's class (`Base = getattr(yaml, "CLoader", ...)`)
    # stands for what it was taken from.
    for statement in tree.body:
        value = statement.value if isinstance(statement, ast.Assign | ast.AnnAssign) else None
        targets = (
            statement.targets
            if isinstance(statement, ast.Assign)
            else [statement.target]
            if isinstance(statement, ast.AnnAssign)
            else []
        )
        if value is None:
            continue
        if isinstance(value, ast.Call) and isinstance(value.func, ast.Name) and value.args:
            source = root_name(value.args[0]) if value.func.id == "getattr" else None
        else:
            source = root_name(value)
        origin = names.get(source or "")
        for target in targets:
            if origin is not None and isinstance(target, ast.Name):
                names[target.id] = origin
    return names


def root_name(node: ast.expr) -> str | None:
    while isinstance(node, ast.Attribute):
        node = node.value
    if isinstance(node, ast.Subscript):  # Generic[T], SomeBase[int]
        return root_name(node.value)
    return node.id if isinstance(node, ast.Name) else None


def findings(path: Path) -> Iterator[tuple[int, str]]:
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    names = imported_names(tree)
    for node in ast.walk(tree):
        if isinstance(node, ast.ClassDef):
            for base in node.bases:
                root = root_name(base)
                origin = names.get(root or "")
                if origin is not None and is_third_party(origin):
                    yield (
                        node.lineno,
                        f"class {node.name} derives from {ast.unparse(base)} ({origin}), "
                        "a third-party class",
                    )
        elif isinstance(node, ast.Call):
            func = node.func
            if (
                isinstance(func, ast.Name)
                and func.id in DYNAMIC_ACCESS
                and len(node.args) >= 2
                and isinstance(node.args[1], ast.Constant)
                and isinstance(node.args[1].value, str)
                and is_private(node.args[1].value)
                and not (isinstance(node.args[0], ast.Name) and node.args[0].id in ("self", "cls"))
            ):
                yield (
                    node.lineno,
                    f"{func.id}(…, {node.args[1].value!r}) reaches a private member",
                )
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            if not is_third_party(node.module):
                continue
            if any(is_private(part) for part in node.module.split(".")):
                yield node.lineno, f"import from the private module {node.module}"
            for alias in node.names:
                if is_private(alias.name):
                    yield node.lineno, f"import of the private name {node.module}.{alias.name}"
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if is_third_party(alias.name) and any(
                    is_private(part) for part in alias.name.split(".")
                ):
                    yield node.lineno, f"import of the private module {alias.name}"


def main(argv: list[str]) -> int:
    found = 0
    for root in argv or ["adapter"]:
        for path in sorted(Path(root).rglob("*.py")):
            for line, what in findings(path):
                print(f"{path}:{line}: {what}")
                found += 1
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
