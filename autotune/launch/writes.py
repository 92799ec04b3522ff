"""Which pointer parameters a generated kernel stores to, read from its source (for autotune/launch/trace.py).

A runtime that replays a launch needs to know which buffers come out of it: JAX hands a kernel fresh outputs and
keeps inputs immutable. The generated kernels are plain Triton: a pointer reaches ``tl.store`` or a ``tl.atomic_*``
as a parameter or as a local computed from it, possibly through a helper ``@triton.jit`` function of the same module.
``written_params`` follows exactly that: names derived from a parameter by assignment (not through what ``tl.load``
returns, and through a helper only via what the helper returns, element by element for a tuple), stores and atomics,
helper calls, and ``if`` branches on constexprs resolved with the launch's values (a kernel compiled with
STORE_LAST=False writes no last state). It errs on the side of "written": a pointer that appears in the expression
of a stored pointer counts, which costs a replay a copy, never a wrong result.
"""

from __future__ import annotations

import ast
import inspect
import textwrap
from functools import cache

_STORES = {"store", "atomic_add", "atomic_max", "atomic_min", "atomic_xchg", "atomic_cas", "atomic_and",
           "atomic_or", "atomic_xor"}  # fmt: skip
_VALUES = {"load", "program_id", "num_programs", "arange", "zeros", "full", "cdiv"}  # calls that make values
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
    """Which parameters a function stores to, and which parameters each value it returns derives from."""

    def __init__(self, functions: dict[str, ast.FunctionDef]):
        self.functions = functions
        self.depth = 0
        self.memo: dict[tuple, tuple[set[str], object]] = {}

    def written(self, fn: ast.FunctionDef, consts: dict) -> set[str]:
        """Parameter names of ``fn`` that it stores to, given the values of some of its parameters."""
        return self.analyse(fn, consts)[0]

    def analyse(self, fn: ast.FunctionDef, consts: dict):
        """(written parameters, returned derivation): the latter a list of parameter sets per element when every
        ``return`` gives a tuple of one length, else one set."""
        key = (fn.name, tuple(sorted((k, _hashable(v)) for k, v in consts.items())))
        if key in self.memo:
            return self.memo[key]
        params = [a.arg for a in fn.args.args]
        self.depth += 1
        if self.depth > 32:
            raise RecursionError(f"helper calls nest too deep in {fn.name}")
        try:
            derived = {p: {p} for p in params}
            written: set[str] = set()
            returns: list = []
            for _ in range(8):  # to a fixpoint: loops carry derivations backwards
                before = {k: set(v) for k, v in derived.items()}, set(written)
                returns = []
                self._block(fn.body, consts, derived, written, returns)
                if (derived, written) == before:
                    break
            result = (written & set(params), _merge_returns(returns, set(params)))
            self.memo[key] = result
            return result
        finally:
            self.depth -= 1

    def _names(self, expr, derived: dict, consts: dict):
        """The parameters a value derives from: through names, arithmetic and calls, but not through what
        ``tl.load`` (and other value-making calls) return, and through a helper only via what it returns."""
        if isinstance(expr, ast.Name):
            return set(derived.get(expr.id, set()))
        if isinstance(expr, ast.Call):
            func = expr.func
            if isinstance(func, ast.Attribute) and func.attr in _VALUES:
                return set()
            if isinstance(func, ast.Name) and func.id in self.functions:
                out = self._helper(expr, derived, consts)
                return set().union(*out) if isinstance(out, list) else out
        out: set[str] = set()
        for child in ast.iter_child_nodes(expr):
            out |= self._names(child, derived, consts)
        return out

    def _bound(self, call: ast.Call):
        callee = self.functions[call.func.id]
        bound = dict(zip([a.arg for a in callee.args.args], call.args))
        bound.update({kw.arg: kw.value for kw in call.keywords if kw.arg})
        return callee, bound

    def _callee_consts(self, bound: dict, consts: dict) -> dict:
        out = {}
        for name, expr in bound.items():
            value = _evaluate(expr, consts)
            if value is not _UNKNOWN:
                out[name] = value
        return out

    def _helper(self, call: ast.Call, derived: dict, consts: dict):
        """What a helper call's value derives from, in the caller's parameters (per element for a tuple)."""
        callee, bound = self._bound(call)
        _, returns = self.analyse(callee, self._callee_consts(bound, consts))

        def caller(params):
            out: set[str] = set()
            for p in params:
                if p in bound:
                    out |= self._names(bound[p], derived, consts)
            return out

        return [caller(r) for r in returns] if isinstance(returns, list) else caller(returns)

    def _block(self, stmts, consts, derived, written, returns) -> None:
        for stmt in stmts:
            self._stmt(stmt, consts, derived, written, returns)

    def _stmt(self, stmt, consts, derived, written, returns) -> None:
        if isinstance(stmt, ast.If):
            test = _evaluate(stmt.test, consts)
            if test is _UNKNOWN or test:
                self._block(stmt.body, consts, derived, written, returns)
            if test is _UNKNOWN or not test:
                self._block(stmt.orelse, consts, derived, written, returns)
            self._calls(stmt.test, consts, derived, written)
            return
        if isinstance(stmt, (ast.For, ast.While)):
            self._calls(stmt.iter if isinstance(stmt, ast.For) else stmt.test, consts, derived, written)
            if isinstance(stmt, ast.For):
                self._assign([stmt.target], stmt.iter, consts, derived)
            self._block(stmt.body, consts, derived, written, returns)
            self._block(stmt.orelse, consts, derived, written, returns)
            return
        if isinstance(stmt, ast.With):
            self._block(stmt.body, consts, derived, written, returns)
            return
        self._calls(stmt, consts, derived, written)
        if isinstance(stmt, ast.Return) and stmt.value is not None:
            if isinstance(stmt.value, ast.Tuple):
                returns.append([self._names(e, derived, consts) for e in stmt.value.elts])
            else:
                returns.append(self._names(stmt.value, derived, consts))
        elif isinstance(stmt, (ast.Assign, ast.AugAssign, ast.AnnAssign)) and stmt.value is not None:
            targets = stmt.targets if isinstance(stmt, ast.Assign) else [stmt.target]
            self._assign(targets, stmt.value, consts, derived)

    def _assign(self, targets, value, consts, derived) -> None:
        per_element = None
        if isinstance(value, ast.Call) and isinstance(value.func, ast.Name) and value.func.id in self.functions:
            per_element = self._helper(value, derived, consts)
        elif isinstance(value, ast.Tuple):
            per_element = [self._names(e, derived, consts) for e in value.elts]
        whole = set().union(*per_element) if isinstance(per_element, list) else (
            per_element if per_element is not None else self._names(value, derived, consts))  # fmt: skip
        for target in targets:
            if isinstance(target, ast.Tuple) and isinstance(per_element, list) and len(per_element) == len(target.elts):
                for element, sources in zip(target.elts, per_element):
                    self._bind(element, sources, derived)
            else:
                self._bind(target, whole, derived)

    def _bind(self, target, sources: set, derived: dict) -> None:
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
                    written |= self._names(pointer, derived, consts)
            elif isinstance(func, ast.Name) and func.id in self.functions:
                callee, bound = self._bound(call)
                for name in self.written(callee, self._callee_consts(bound, consts)):
                    if name in bound:
                        written |= self._names(bound[name], derived, consts)


def _merge_returns(returns: list, params: set):
    """One derivation per tuple element when every return gives a tuple of one length, else one set."""
    if returns and all(isinstance(r, list) for r in returns) and len({len(r) for r in returns}) == 1:
        return [set().union(*(r[i] for r in returns)) & params for i in range(len(returns[0]))]
    out: set[str] = set()
    for r in returns:
        out |= set().union(*r) if isinstance(r, list) else r
    return out & params


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
