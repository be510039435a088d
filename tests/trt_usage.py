"""Every TensorRT name the engine layer and the TensorRT backend use, found in their source, checked
against a real ``tensorrt`` module.

``collect(trt)`` walks the AST of ``SOURCES`` and types expressions as far as TensorRT is concerned:
``trt``/``self.trt``/``api.trt`` (and local aliases such as ``flag = self.trt.BuilderFlag``) are the
module; a parameter or attribute named like a TensorRT object (``NAMED``: the code's naming
convention, e.g. ``config`` is an IBuilderConfig) is an instance of that class; a call's result takes
the return type its pybind signature declares (``network.get_layer(i)`` -> ILayer), so chains and
locals follow. Each attribute read, call (with its arity and keywords), property write, base class
and overridden method is one use; each use carries whether the code's version guards let this
TensorRT version reach it (``if not self.weakly_typed: raise``, ``if self.needs_explicit_batch_flag:``,
``self.check_dla()``...), evaluated with ``TrtApi``'s own predicates.

    python -m tests.trt_usage [ROOT]   # where ``import tensorrt`` is the real module: JSON (ROOT: a copy of the repo)
"""

from __future__ import annotations

import ast
import inspect
import json
import re
import sys
import types
from dataclasses import asdict, dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SOURCES = ("adtr_edge/engine/trt_api.py", "adtr_edge/engine/builder.py", "adtr_edge/engine/calibration.py",
           "adtr_edge/runtime/backends/tensorrt.py")
# Variables and attributes that hold TensorRT objects, by the names the code gives them.
NAMED = {"builder": "Builder", "network": "INetworkDefinition", "config": "IBuilderConfig", "parser": "OnnxParser",
         "layer": "ILayer", "engine": "ICudaEngine", "runtime": "Runtime", "ctx": "IExecutionContext",
         "self.engine": "ICudaEngine", "self.context": "IExecutionContext", "self._runtime": "Runtime"}
# Expressions that are the tensorrt module itself.
MODULE_EXPRS = ("trt", "self.trt", "api.trt", "self.api.trt")


@dataclass
class Use:
    file: str
    line: int
    owner: str  # "tensorrt" or a class of it
    name: str
    kind: str  # "read" | "call" | "write" | "base" | "override"
    reached: bool
    nargs: int = 0
    keywords: list = field(default_factory=list)
    bound: bool = True  # a call through an instance (self is implicit), not on a class or the module
    problem: str | None = None

    @property
    def key(self) -> str:
        return f"{self.owner}.{self.name}"


# -- pybind signatures --------------------------------------------------------------------------


def _split_params(text: str) -> list[str]:
    out, depth, cur = [], 0, ""
    for ch in text:
        if ch in "[(":
            depth += 1
        elif ch in "])":
            depth -= 1
        if ch == "," and depth == 0:
            out.append(cur.strip())
            cur = ""
        else:
            cur += ch
    if cur.strip():
        out.append(cur.strip())
    return out


def signatures(obj, name: str) -> list[tuple[list[tuple[str, bool]], str]]:
    """[(params [(name, has_default)] including self, return type text)] from a pybind docstring
    (one per overload); a Python function's from inspect. Empty when none can be read."""
    if isinstance(obj, (types.FunctionType, types.MethodType)):
        sig = inspect.signature(obj)
        return [([(p.name, p.default is not p.empty or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD))
                  for p in sig.parameters.values()], "")]
    doc = getattr(obj, "__doc__", None) or ""
    found = []
    for m in re.finditer(rf"(?:^|\n)(?:\d+\. )?{re.escape(name)}\((.*)\) -> ([^\n]+)", doc):
        params = []
        for p in _split_params(m.group(1)):
            pname = p.split(":")[0].split("=")[0].strip()
            params.append((pname, "=" in p))
        found.append((params, m.group(2).strip()))
    return found


def return_class(trt, text: str) -> str | None:
    """The tensorrt class a signature's return type names (``nvonnxparser::IParserError`` is bound
    as ParserError)."""
    base = re.split(r"[.:]", text.strip())[-1]
    for cand in (base, base[1:] if base.startswith("I") else None):
        if cand and isinstance(getattr(trt, cand, None), type):
            return cand
    return None


def arity_problem(params: list[tuple[str, bool]], nargs: int, keywords: list[str], bound: bool) -> str | None:
    if bound and params:
        params = params[1:]  # self
    names = [p for p, _ in params]
    if any(p.startswith("*") for p in names):
        return None
    if nargs > len(params):
        return f"{nargs} positional arguments, the signature takes {len(params)}"
    unknown = [k for k in keywords if k not in names]
    if unknown:
        return f"keyword {unknown[0]!r} is not a parameter"
    missing = [p for p, default in params[nargs:] if not default and p not in keywords]
    if missing:
        return f"parameter {missing[0]!r} not passed"
    return None


# -- version guards -------------------------------------------------------------------------------


def _predicates(version: str) -> dict:
    from adtr_edge.engine.trt_api import TrtApi  # noqa: PLC0415

    api = TrtApi(types.SimpleNamespace(__version__=version))
    names = [n for n, v in vars(TrtApi).items() if isinstance(v, property)]
    return {n: getattr(api, n) for n in names}


def _check_methods(tree: ast.Module) -> dict[str, ast.expr]:
    """TrtApi methods that only refuse a version (body: ``if COND: raise``): name -> COND."""
    out = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.ClassDef) and node.name == "TrtApi":
            for fn in node.body:
                body = [s for s in getattr(fn, "body", []) if not (isinstance(s, ast.Expr) and isinstance(s.value, ast.Constant))]
                if (isinstance(fn, ast.FunctionDef) and len(body) == 1 and isinstance(body[0], ast.If)
                        and all(isinstance(s, ast.Raise) for s in body[0].body) and not body[0].orelse):
                    out[fn.name] = body[0].test
    return out


class Guards:
    def __init__(self, preds: dict, checks: dict):
        self.preds, self.checks = preds, checks

    def value(self, node):
        """True/False where the version decides, None where something else does."""
        if isinstance(node, ast.Attribute) and node.attr in self.preds and ast.unparse(node.value) in ("self", "api", "self.api"):
            return self.preds[node.attr]
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not):
            v = self.value(node.operand)
            return None if v is None else not v
        if isinstance(node, ast.BoolOp):
            vals = [self.value(v) for v in node.values]
            if isinstance(node.op, ast.And):
                return False if False in vals else (True if all(v is True for v in vals) else None)
            return True if True in vals else (False if all(v is False for v in vals) else None)
        if isinstance(node, ast.Compare) and len(node.ops) == 1:
            left, right = self.value(node.left), self.value(node.comparators[0])
            if left is None or right is None:
                return None
            return {ast.Lt: left < right, ast.LtE: left <= right, ast.Gt: left > right, ast.GtE: left >= right,
                    ast.Eq: left == right, ast.NotEq: left != right}.get(type(node.ops[0]))
        if isinstance(node, ast.Constant):
            return node.value
        if isinstance(node, ast.Tuple):
            vals = [self.value(e) for e in node.elts]
            return None if None in vals else tuple(vals)
        return None

    def exits(self, stmt) -> ast.expr | None:
        """The condition under which the code after ``stmt`` is NOT reached, if the version decides."""
        if isinstance(stmt, ast.If) and not stmt.orelse and stmt.body and isinstance(stmt.body[-1], (ast.Raise, ast.Return)):
            return stmt.test
        if isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Call) and isinstance(stmt.value.func, ast.Attribute):
            f = stmt.value.func
            if f.attr in self.checks and ast.unparse(f.value) in ("self", "api", "self.api"):
                return self.checks[f.attr]
        return None


# -- the walk -------------------------------------------------------------------------------------


class Walker:
    def __init__(self, trt, guards: Guards, file: str):
        self.trt, self.guards, self.file = trt, guards, file
        self.uses: list[Use] = []

    # types: ("mod", path tuple) or ("obj", class name) or None
    def type_of(self, node, env):
        text = ast.unparse(node)
        if text in MODULE_EXPRS:
            return ("mod", ())
        if isinstance(node, ast.Name):
            return env.get(node.id, ("obj", NAMED[node.id]) if node.id in NAMED else None)
        if isinstance(node, ast.Attribute):
            if text in NAMED:
                return ("obj", NAMED[text])
            base = self.type_of(node.value, env)
            if base is None:
                return None
            if base[0] == "mod":
                return ("mod", base[1] + (node.attr,))
            member = getattr(getattr(self.trt, base[1], None), node.attr, None)
            if isinstance(member, property) and member.fget is not None:
                sigs = signatures(member.fget, "")
                ret = return_class(self.trt, sigs[0][1]) if sigs else None
                return ("obj", ret) if ret else None
            return None
        if isinstance(node, ast.Call):
            ftype = self.type_of(node.func, env)
            if ftype is None:
                return None
            if ftype[0] == "mod":
                target = self._resolve(ftype[1])
                if isinstance(target, type):
                    return ("obj", target.__name__)
                return None
            return None
        return None

    def _resolve(self, path):
        obj = self.trt
        for p in path:
            obj = getattr(obj, p, None)
            if obj is None:
                return None
        return obj

    def call_type(self, call: ast.Call, env):
        """The return type of a call on a TensorRT instance (``recv.method(...)``)."""
        f = call.func
        if isinstance(f, ast.Attribute):
            recv = self.type_of(f.value, env)
            if recv and recv[0] == "obj":
                cls = getattr(self.trt, recv[1], None)
                sigs = signatures(getattr(cls, f.attr, None), f.attr) if cls is not None else []
                ret = return_class(self.trt, sigs[0][1]) if sigs else None
                return ("obj", ret) if ret else None
        return self.type_of(call, env)

    def record(self, owner, name, kind, node, reached, **kw):
        self.uses.append(Use(self.file, node.lineno, owner, name, kind, reached, **kw))

    def visit_expr(self, node, env, reached, parent=None):
        """Record the TensorRT uses inside one expression (children first)."""
        if isinstance(node, (ast.GeneratorExp, ast.ListComp, ast.SetComp, ast.DictComp)):
            inner = dict(env)
            for gen in node.generators:
                self.visit_expr(gen.iter, inner, reached)
                elt = self._element_type(gen.iter, inner)
                if isinstance(gen.target, ast.Name):
                    inner[gen.target.id] = elt
                for cond in gen.ifs:
                    self.visit_expr(cond, inner, reached)
            for part in ([node.key, node.value] if isinstance(node, ast.DictComp) else [node.elt]):
                self.visit_expr(part, inner, reached)
            return
        if isinstance(node, ast.Lambda):
            return
        if isinstance(node, ast.Call):
            self.visit_expr(node.func, env, reached, parent=node)
            for a in node.args + [k.value for k in node.keywords]:
                self.visit_expr(a, env, reached)
            return
        if isinstance(node, ast.Attribute):
            self.visit_expr(node.value, env, reached)
            base = self.type_of(node.value, env)
            if base is None and isinstance(node.value, ast.Call):
                base = self.call_type(node.value, env)
            if base is None:
                return
            owner = "tensorrt" if base == ("mod", ()) else (".".join(base[1]) if base[0] == "mod" else base[1])
            if isinstance(parent, ast.Call) and parent.func is node:
                bound = base[0] == "obj"  # through an instance: self is implicit; on a class or the module: not
                self.record(owner, node.attr, "call", node, reached, nargs=len(parent.args),
                            keywords=[k.arg for k in parent.keywords if k.arg], bound=bound)
            elif isinstance(node.ctx, ast.Store):
                self.record(owner, node.attr, "write", node, reached)
            else:
                self.record(owner, node.attr, "read", node, reached)
            return
        for child in ast.iter_child_nodes(node):
            self.visit_expr(child, env, reached)

    def _element_type(self, it, env):
        if isinstance(it, (ast.GeneratorExp, ast.ListComp)) and len(it.generators) == 1:
            return self.call_type(it.elt, env) if isinstance(it.elt, ast.Call) else self.type_of(it.elt, env)
        return None

    def visit_body(self, stmts, env, reached):
        for stmt in stmts:
            self.visit_stmt(stmt, env, reached)
            cond = self.guards.exits(stmt)
            if cond is not None and self.guards.value(cond) is True:
                reached = False  # this version leaves (raise/return) before the rest

    def visit_stmt(self, stmt, env, reached):
        g = self.guards
        if isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef)):
            inner = dict(env)
            for a in stmt.args.args:
                inner.pop(a.arg, None)
            self.visit_body(stmt.body, inner, reached)
        elif isinstance(stmt, ast.ClassDef):
            bases = []
            for b in stmt.bases:
                t = self.type_of(b, env)
                if t and t[0] == "mod" and len(t[1]) == 1:
                    self.record("tensorrt", t[1][0], "base", b, reached)
                    bases.append(t[1][0])
            for fn in stmt.body:
                if bases and isinstance(fn, ast.FunctionDef) and not fn.name.startswith("_"):
                    base_cls = getattr(self.trt, bases[0], None)
                    if base_cls is not None and hasattr(base_cls, fn.name):
                        self.record(bases[0], fn.name, "override", fn, reached, nargs=len(fn.args.args) - 1)
            self.visit_body(stmt.body, dict(env), reached)
        elif isinstance(stmt, ast.If):
            self.visit_expr(stmt.test, env, reached)
            v = g.value(stmt.test)
            self.visit_body(stmt.body, env, reached and v is not False)
            self.visit_body(stmt.orelse, env, reached and v is not True)
        elif isinstance(stmt, ast.Assign):
            self.visit_expr(stmt.value, env, reached)
            t = self.call_type(stmt.value, env) if isinstance(stmt.value, ast.Call) else self.type_of(stmt.value, env)
            for target in stmt.targets:
                if isinstance(target, ast.Name):
                    env[target.id] = t
                else:
                    self.visit_expr(target, env, reached)
        elif isinstance(stmt, (ast.For, ast.While)):
            if isinstance(stmt, ast.For):
                self.visit_expr(stmt.iter, env, reached)
                if isinstance(stmt.target, ast.Name):
                    env[stmt.target.id] = self._element_type(stmt.iter, env)
            else:
                self.visit_expr(stmt.test, env, reached)
            self.visit_body(stmt.body, env, reached)
            self.visit_body(stmt.orelse, env, reached)
        elif isinstance(stmt, (ast.With, ast.AsyncWith)):
            for item in stmt.items:
                self.visit_expr(item.context_expr, env, reached)
            self.visit_body(stmt.body, env, reached)
        elif isinstance(stmt, ast.Try):
            self.visit_body(stmt.body, env, reached)
            for h in stmt.handlers:
                inner = dict(env)
                if h.name:
                    inner[h.name] = None  # an exception, whatever its name
                self.visit_body(h.body, inner, reached)
            self.visit_body(stmt.orelse, env, reached)
            self.visit_body(stmt.finalbody, env, reached)
        else:
            for child in ast.iter_child_nodes(stmt):
                if isinstance(child, ast.expr):
                    self.visit_expr(child, env, reached)


# -- checking one use -----------------------------------------------------------------------------


def check(trt, use: Use) -> str | None:
    """Why ``use`` fails against ``trt``, or None."""
    owner = trt
    for part in ([] if use.owner == "tensorrt" else use.owner.split(".")):
        owner = getattr(owner, part, None)
        if owner is None:
            return f"tensorrt has no {use.owner}"
    if use.kind == "base":
        return None if isinstance(getattr(trt, use.name, None), type) else f"tensorrt has no class {use.name}"
    static = None
    if isinstance(owner, type):
        try:
            static = inspect.getattr_static(owner, use.name)
        except AttributeError:
            static = None
    if static is None and not hasattr(owner, use.name):
        return f"{use.key} does not exist"
    member = getattr(owner, use.name)
    if use.kind == "write":
        if not isinstance(static, property):
            return f"{use.key} is not a property (cannot be assigned)"
        return None if static.fset is not None else f"{use.key} is read-only"
    if use.kind == "read":
        enum_member = use.name in (getattr(owner, "__members__", None) or {})
        if use.owner != "tensorrt" and not enum_member and not isinstance(static, property) and not isinstance(member, type) \
                and callable(member):
            return f"{use.key} is a method, read without a call"
        return None
    if use.kind == "override":
        sigs = signatures(member, use.name)
        if sigs and all(arity_problem(p, use.nargs, [], True) for p, _ in sigs):
            return f"{use.key} is overridden with {use.nargs} parameters: the base takes {len(sigs[0][0]) - 1}"
        return None
    # a call
    if isinstance(static, property):
        return f"{use.key} is a property, called like a method"
    target, name, strip_self = member, use.name, use.bound
    if isinstance(member, type):  # a constructor: __init__'s self is the new object
        target, name, strip_self = member.__init__, "__init__", True
    sigs = signatures(target, name)
    if not sigs:
        return f"{use.key}: no signature can be read from its docstring"
    problems = [arity_problem(p, use.nargs, use.keywords, strip_self) for p, _ in sigs]
    return None if any(p is None for p in problems) else f"{use.key}: {problems[0]}"


def collect(trt, root: Path = REPO) -> list[Use]:
    """Every use in ``root``'s copy of SOURCES, with its reachability and problem on ``trt``."""
    preds = _predicates(str(trt.__version__))
    checks = _check_methods(ast.parse((root / SOURCES[0]).read_text(encoding="utf-8")))
    uses = []
    for rel in SOURCES:
        tree = ast.parse((root / rel).read_text(encoding="utf-8"))
        walker = Walker(trt, Guards(preds, checks), rel)
        walker.visit_body(tree.body, {}, True)
        uses.extend(walker.uses)
    for use in uses:
        use.problem = check(trt, use)
    return uses


def construct(trt) -> dict:
    """The project's TensorRT subclasses made through the real base classes' constructors."""
    import numpy as np  # noqa: PLC0415

    from adtr_edge.cuda import CudaRuntime  # noqa: PLC0415
    from adtr_edge.engine.calibration import make_entropy_calibrator  # noqa: PLC0415
    from adtr_edge.engine.trt_api import LogSink, TrtApi, process_logger  # noqa: PLC0415
    from tests.trt_standin.fake_trt import make_cudart  # noqa: PLC0415

    api = TrtApi(trt)
    out = {}
    logger = process_logger(api)
    sink = LogSink()
    with logger.capture(sink):
        logger.log(trt.ILogger.Severity.ERROR, "an error")
        logger.log(trt.ILogger.Severity.WARNING, "a warning")
    out["logger"] = {"is_ilogger": isinstance(logger, trt.ILogger), "errors": sink.errors, "warnings": sink.warnings}
    for cls in ("Builder", "Runtime"):
        try:
            getattr(trt, cls)(logger)
            out[cls] = "constructed"
        except TypeError as e:  # accepted as an ILogger; the stub's factory then returns NULL
            out[cls] = str(e)
    if api.has_calibrators:
        written = []
        batch = np.arange(6, dtype=np.float32).reshape(2, 3)
        cal = make_entropy_calibrator(api, CudaRuntime(make_cudart()), [batch], "images", None, written.append)
        first, last = cal.get_batch(["images"]), cal.get_batch(["images"])
        algo = trt.IInt8EntropyCalibrator2.get_algorithm(cal)
        cal.release()
        out["calibrator"] = {"is_base": isinstance(cal, trt.IInt8EntropyCalibrator2), "batch_size": cal.get_batch_size(),
                             "first": [type(p).__name__ for p in first or []], "last": last, "error": repr(cal.error),
                             "algorithm": str(algo)}
    return out


def main(argv: list[str]) -> int:
    import tensorrt as trt  # noqa: PLC0415

    root = Path(argv[0]) if argv else REPO
    uses = collect(trt, root)
    doc = {"version": str(trt.__version__), "uses": [asdict(u) for u in uses]}
    if root == REPO:
        doc["constructed"] = construct(trt)
    print(json.dumps(doc))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))


# -- the stand-ins (tests/trt_standin/fake_trt.py) against the real module -------------------------


def _standin_names(cls) -> list[str]:
    api = cls.__dict__.get("_api")
    if api is not None:
        return sorted(api)
    return sorted(n for c in cls.__mro__[:-1] for n in vars(c) if not n.startswith("_"))


def _accepts(params: list[tuple[str, bool]]) -> tuple[set, set]:
    """(positional counts, keyword names) a signature accepts, self excluded."""
    params = params[1:]
    required = sum(1 for _, d in params if not d)
    return set(range(required, len(params) + 1)), {p for p, _ in params}


def standin_differences(real, fake) -> list[str]:
    """What the stand-in module ``fake`` accepts that the real module ``real`` does not: names
    (module attributes, enum members, class members), writes to read-only properties, methods that
    are properties there (or the reverse), and call arities or keyword names."""
    out = []
    for name, value in vars(fake).items():
        if name.startswith("_") or name in ("__version__",):
            continue
        rval = getattr(real, name, None)
        if rval is None:
            out.append(f"tensorrt.{name} does not exist")
            continue
        if isinstance(value, types.SimpleNamespace):  # a stand-in enum
            members = getattr(rval, "__members__", {})
            out += [f"{name}.{m} does not exist" for m in vars(value) if m not in members]
    for rname, cls in fake._classes.items():
        rcls = getattr(real, rname, None)
        if rcls is None:
            out.append(f"tensorrt.{rname} does not exist")
            continue
        for name in _standin_names(cls):
            where = f"{rname}.{name}"
            try:
                rstatic = inspect.getattr_static(rcls, name)
            except AttributeError:
                out.append(f"{where} does not exist")
                continue
            sstatic = next((c.__dict__[name] for c in cls.__mro__ if name in c.__dict__), None)
            if isinstance(sstatic, types.FunctionType):
                if isinstance(rstatic, property):
                    out.append(f"{where} is a property, the stand-in has a method")
                    continue
                if isinstance(getattr(rcls, name), type):
                    continue  # a nested class (ILogger.Severity)
                rsigs = signatures(getattr(rcls, name), name)
                if not rsigs:
                    out.append(f"{where}: no signature to compare")
                    continue
                counts, keywords = set(), set()
                for params, _ in rsigs:
                    c, k = _accepts(params)
                    counts |= c
                    keywords |= k
                scounts, skeywords = _accepts(signatures(sstatic, name)[0][0])
                if not scounts <= counts:
                    out.append(f"{where}: the stand-in takes {sorted(scounts)} arguments, the real one {sorted(counts)}")
                if not skeywords <= keywords:
                    out.append(f"{where}: the stand-in's parameters {sorted(skeywords - keywords)} are not the real ones {sorted(keywords)}")
            elif isinstance(sstatic, (type, types.SimpleNamespace)):
                continue  # a nested class or enum (ILogger.Severity)
            elif sstatic is None and not isinstance(rstatic, property):
                continue  # listed but not implemented: the stand-in raises AttributeError on use
            else:
                if not isinstance(rstatic, property):
                    if callable(getattr(rcls, name)) and not isinstance(getattr(rcls, name), type):
                        out.append(f"{where} is a method, the stand-in has an attribute")
                    continue
                writable = (not isinstance(sstatic, property) or sstatic.fset is not None) and name not in getattr(cls, "_readonly", ())
                if writable and "_api" in vars(cls) and rstatic.fset is None:
                    out.append(f"{where} is read-only, the stand-in lets it be assigned")
    return out
