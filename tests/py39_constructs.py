"""What Python 3.9+ code vermin lets through, found by AST (used by tests/test_py38.py).

vermin flags ``str.removeprefix`` only when it can tell the receiver is a ``str`` literal, and with
``--eval-annotations`` it still accepts ``str | None``, which typer evaluates at start-up
(``typing.get_type_hints`` on each command). This walk needs no types: any call of a method that only
exists from 3.9/3.10 on (``x.removeprefix(...)`` whatever ``x`` is), the module functions added then
(``math.lcm``, ``functools.cache``...), ``zip(strict=...)``, and, where annotations are evaluated
(or outside annotations: ``isinstance(x, int | str)``, ``list[int]()``), ``X | None`` unions and
subscripted builtins (``list[int]``).
"""

from __future__ import annotations

import ast

# Methods of builtin or stdlib types new in 3.9 / 3.10 (str/bytes, pathlib, int).
NEW_METHODS = {"removeprefix": "3.9", "removesuffix": "3.9", "is_relative_to": "3.9", "with_stem": "3.9",
               "bit_count": "3.10"}
NEW_FUNCTIONS = {("math", "lcm"): "3.9", ("math", "nextafter"): "3.9", ("math", "ulp"): "3.9",
                 ("functools", "cache"): "3.9", ("random", "randbytes"): "3.9", ("asyncio", "to_thread"): "3.9",
                 ("itertools", "pairwise"): "3.10", ("os", "waitstatus_to_exitcode"): "3.9"}
NEW_KEYWORDS = {("zip", "strict"): "3.10", ("dataclass", "slots"): "3.10", ("dataclass", "kw_only"): "3.10"}
GENERIC_BUILTINS = {"list", "dict", "tuple", "set", "frozenset", "type"}
TYPE_NAMES = GENERIC_BUILTINS | {"int", "float", "str", "bytes", "bool", "complex", "object"}


def _is_typeish(node) -> bool:
    """``None``, a builtin type name, a subscripted type or another union: an operand of ``X | Y``."""
    if isinstance(node, ast.Constant) and node.value is None:
        return True
    if isinstance(node, ast.Name):
        return node.id in TYPE_NAMES or node.id[:1].isupper()
    if isinstance(node, ast.Attribute):
        return node.attr[:1].isupper()
    if isinstance(node, ast.Subscript):
        return _is_typeish(node.value)
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.BitOr):
        return _is_typeish(node.left) and _is_typeish(node.right)
    return False


def _type_violations(expr, where: str) -> list[str]:
    """3.10 unions and 3.9 builtin generics in an expression that is evaluated as a type."""
    out = []
    for node in ast.walk(expr):
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.BitOr) and _is_typeish(node.left) and _is_typeish(node.right) \
                and (isinstance(node.left, ast.Constant) or isinstance(node.right, ast.Constant) or
                     any(isinstance(s, ast.Name) and s.id in TYPE_NAMES for s in (node.left, node.right))):
            out.append(f"{where}:{node.lineno}: '{ast.unparse(node)}' union needs 3.10 (use Optional/Union)")
        if isinstance(node, ast.Subscript) and isinstance(node.value, ast.Name) and node.value.id in GENERIC_BUILTINS:
            out.append(f"{where}:{node.lineno}: '{ast.unparse(node)}' needs 3.9 (use typing.{node.value.id.capitalize()})")
    return out


def _annotations(tree) -> list[ast.expr]:
    found = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            args = node.args
            for a in args.posonlyargs + args.args + args.kwonlyargs + [args.vararg, args.kwarg]:
                if a is not None and a.annotation is not None:
                    found.append(a.annotation)
            if node.returns is not None:
                found.append(node.returns)
        elif isinstance(node, ast.AnnAssign):
            found.append(node.annotation)
    return found


def violations(tree: ast.Module, where: str, annotations_evaluated: bool) -> list[str]:
    """Each 3.9+ construct in ``tree`` as 'file:line: what'."""
    out = []
    annotation_nodes = {id(n) for a in _annotations(tree) for n in ast.walk(a)}
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            f = node.func
            if isinstance(f, ast.Attribute) and f.attr in NEW_METHODS:
                out.append(f"{where}:{node.lineno}: .{f.attr}() needs {NEW_METHODS[f.attr]}")
            fname = f.id if isinstance(f, ast.Name) else f.attr if isinstance(f, ast.Attribute) else ""
            for k in node.keywords:
                if (fname, k.arg) in NEW_KEYWORDS:
                    out.append(f"{where}:{node.lineno}: {fname}({k.arg}=...) needs {NEW_KEYWORDS[(fname, k.arg)]}")
        elif isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and (node.value.id, node.attr) in NEW_FUNCTIONS:
            # called or not: ``@functools.cache`` is a use too
            out.append(f"{where}:{node.lineno}: {node.value.id}.{node.attr} needs {NEW_FUNCTIONS[(node.value.id, node.attr)]}")
        elif isinstance(node, ast.ImportFrom) and node.module:
            for alias in node.names:
                if (node.module, alias.name) in NEW_FUNCTIONS:
                    out.append(f"{where}:{node.lineno}: from {node.module} import {alias.name} needs "
                               f"{NEW_FUNCTIONS[(node.module, alias.name)]}")
    # Types evaluated at run time: outside annotations always; annotations only where evaluated.
    for node in ast.walk(tree):
        if isinstance(node, (ast.BinOp, ast.Subscript)) and id(node) not in annotation_nodes:
            out += _type_violations(node, where)
    if annotations_evaluated:
        for a in _annotations(tree):
            if not (isinstance(a, ast.Constant) and isinstance(a.value, str)):  # a string annotation stays unevaluated
                out += _type_violations(a, where)
    return sorted(set(out))

