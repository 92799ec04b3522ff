"""Which pointer parameters a generated kernel stores to, read from its source (for autotune/launch/trace.py).

A runtime that replays a launch needs to know which buffers come out of it: JAX hands a kernel fresh outputs and
keeps inputs immutable. The generated kernels are plain Triton: a pointer reaches ``tl.store`` or a ``tl.atomic_*``
as a parameter or as a local computed from it, possibly through a helper ``@triton.jit`` function of the same module.
``written_params`` follows exactly that: names derived from a parameter by assignment, stores and atomics, helper
calls, and ``if`` branches on constexprs resolved with the launch's values (a kernel compiled with STORE_LAST=False
writes no last state). It errs on the side of "written": a pointer that merely appears in the expression of a stored
pointer counts, which costs a replay a copy, never a wrong result.
"""

from __future__ import annotations

import ast
import inspect
import textwrap
from functools import cache

_STORES = {"store", "atomic_add", "atomic_max", "atomic_min", "atomic_xchg", "atomic_cas", "atomic_and",
           "atomic_or", "atomic_xor"}  # fmt: skip
_UNKNOWN = object()


def constexpr_params(fn) -> frozenset[str]:
    """The parameters of a @triton.jit function annotated ``tl.constexpr``."""
    return _constexpr_params(fn)


@cache
def _constexpr_params(fn) -> frozenset[str]:
    params = inspect.signature(fn).parameters.values()
    return frozenset(p.name for p in params if "constexpr" in str(p.annotation))


def written_params(fn, constexprs: dict) -> frozenset[str]:
    """The parameters of ``fn`` (a @triton.jit function's Python function) that it may store to when launched with
    these constexpr values."""
    return _written(fn, tuple(sorted((k, _hashable(v)) for k, v in constexprs.items())))


def _hashable(value):
    try:
        hash(value)
        return value
    except TypeError:
        return repr(value)


@cache
def _module_functions(fn) -> dict[str, ast.FunctionDef]:
    """The function definitions of the module that defines ``fn``, by name."""
    source = inspect.getsource(inspect.getmodule(fn))
    return {node.name: node for node in ast.parse(source).body if isinstance(node, ast.FunctionDef)}


@cache
def _written(fn, constexprs: tuple) -> frozenset[str]:
    functions = _module_functions(fn)
    node = functions.get(fn.__name__)
    if node is None:  # defined elsewhere (a test's kernel, say): parse the function alone
        node = ast.parse(textwrap.dedent(inspect.getsource(fn))).body[0]
        functions = {**functions, node.name: node}
    return frozenset(_Analysis(functions).written(node, dict(constexprs)))


class _Analysis:
    def __init__(self, functions: dict[str, ast.FunctionDef]):
        self.functions = functions
        self.depth = 0

    def written(self, fn: ast.FunctionDef, consts: dict) -> set[str]:
        """Parameter names of ``fn`` that it stores to, given the values of some of its parameters."""
        params = [a.arg for a in fn.args.args]
        self.depth += 1
        if self.depth > 32:
            raise RecursionError(f"helper calls nest too deep in {fn.name}")
        try:
            derived = {p: {p} for p in params}
            written: set[str] = set()
            for _ in range(8):  # to a fixpoint: loops carry derivations backwards
                before = {k: set(v) for k, v in derived.items()}, set(written)
                self._block(fn.body, consts, derived, written)
                if (derived, written) == before:
                    break
            return written & set(params)
        finally:
            self.depth -= 1

    def _names(self, expr, derived: dict) -> set[str]:
        out: set[str] = set()
        for node in ast.walk(expr):
            if isinstance(node, ast.Name):
                out |= derived.get(node.id, set())
        return out

    def _block(self, stmts, consts, derived, written) -> None:
        for stmt in stmts:
            self._stmt(stmt, consts, derived, written)

    def _stmt(self, stmt, consts, derived, written) -> None:
        if isinstance(stmt, ast.If):
            test = _evaluate(stmt.test, consts)
            if test is _UNKNOWN or test:
                self._block(stmt.body, consts, derived, written)
            if test is _UNKNOWN or not test:
                self._block(stmt.orelse, consts, derived, written)
            self._calls(stmt.test, consts, derived, written)
            return
        if isinstance(stmt, (ast.For, ast.While)):
            self._calls(stmt.iter if isinstance(stmt, ast.For) else stmt.test, consts, derived, written)
            self._block(stmt.body, consts, derived, written)
            self._block(stmt.orelse, consts, derived, written)
            return
        if isinstance(stmt, (ast.With,)):
            self._block(stmt.body, consts, derived, written)
            return
        self._calls(stmt, consts, derived, written)
        if isinstance(stmt, (ast.Assign, ast.AugAssign, ast.AnnAssign)) and stmt.value is not None:
            sources = self._names(stmt.value, derived)
            targets = stmt.targets if isinstance(stmt, ast.Assign) else [stmt.target]
            for target in targets:
                for node in ast.walk(target):
                    if isinstance(node, ast.Name):
                        derived.setdefault(node.id, set()).update(sources)

    def _calls(self, node, consts, derived, written) -> None:
        for call in (n for n in ast.walk(node) if isinstance(n, ast.Call)):
            func = call.func
            if isinstance(func, ast.Attribute) and func.attr in _STORES:
                pointer = call.args[0] if call.args else next(
                    (kw.value for kw in call.keywords if kw.arg == "pointer"), None)  # fmt: skip
                if pointer is not None:
                    written |= self._names(pointer, derived)
            elif isinstance(func, ast.Name) and func.id in self.functions:
                callee = self.functions[func.id]
                names = [a.arg for a in callee.args.args]
                bound = dict(zip(names, call.args))
                bound.update({kw.arg: kw.value for kw in call.keywords if kw.arg})
                callee_consts = {}
                for name, expr in bound.items():
                    value = _evaluate(expr, consts)
                    if value is not _UNKNOWN:
                        callee_consts[name] = value
                for name in self.written(callee, callee_consts):
                    if name in bound:
                        written |= self._names(bound[name], derived)


def _evaluate(expr, consts: dict):
    """The value of a constexpr condition (names, constants, not/and/or, ==/!=), or _UNKNOWN."""
    if isinstance(expr, ast.Constant):
        return expr.value
    if isinstance(expr, ast.Name):
        return consts.get(expr.id, _UNKNOWN)
    if isinstance(expr, ast.UnaryOp) and isinstance(expr.op, ast.Not):
        value = _evaluate(expr.operand, consts)
        return _UNKNOWN if value is _UNKNOWN else not value
    if isinstance(expr, ast.BoolOp):
        values = [_evaluate(v, consts) for v in expr.values]
        if isinstance(expr.op, ast.And):
            if any(v is not _UNKNOWN and not v for v in values):
                return False
            return _UNKNOWN if any(v is _UNKNOWN for v in values) else True
        if any(v is not _UNKNOWN and v for v in values):
            return True
        return _UNKNOWN if any(v is _UNKNOWN for v in values) else False
    if isinstance(expr, ast.Compare) and len(expr.ops) == 1 and isinstance(expr.ops[0], (ast.Eq, ast.NotEq)):
        left, right = _evaluate(expr.left, consts), _evaluate(expr.comparators[0], consts)
        if left is _UNKNOWN or right is _UNKNOWN:
            return _UNKNOWN
        return (left == right) if isinstance(expr.ops[0], ast.Eq) else (left != right)
    return _UNKNOWN
