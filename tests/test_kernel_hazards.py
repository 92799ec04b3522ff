"""An AST lint over the generated backward kernels: no tl.dot operand may be tl.trans(X) (directly, through .to()
casts, or through a name assigned such a value) where X is not, through casts and plain names, a tl.load result or
a function parameter. A transposed dot result as a dot operand (accumulator layout -> cast -> trans -> operand) is
miscompiled on sm_90 by Triton 3.4-3.7.0 (triton-lang/triton#6124; in the head-128 chunkwise backward on an H100,
dq and dk at 6-8e-2 relative error). Form the transposed product instead (dk^T = q^T dA rather than dA^T q).

Only the backward families (FAMILIES) are linted. The rule is conservative: a tile computed in registers from loads
alone (a weighted k, say) and then transposed is flagged too, though it is no dot result."""

from __future__ import annotations

import ast
import json

import pytest

from autotune import paths

FAMILIES = ("chunkwise_bw", "parallel_bw")


def _is_tl(node: ast.AST, name: str) -> bool:
    """node is a call of tl.<name>(...)."""
    return (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == name
            and isinstance(node.func.value, ast.Name) and node.func.value.id == "tl")  # fmt: skip


def _is_cast(node: ast.AST) -> bool:
    """node is X.to(...)."""
    return isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "to"


def _assignments(fn: ast.FunctionDef) -> dict[str, list[ast.AST | None]]:
    """Every value assigned to each name in fn (None where it is unknown: augmented assignments, loop targets,
    tuples unpacked from a call)."""
    values: dict[str, list[ast.AST | None]] = {}
    for node in ast.walk(fn):
        if isinstance(node, ast.Assign):
            for target in node.targets:
                if isinstance(target, ast.Name):
                    values.setdefault(target.id, []).append(node.value)
                elif isinstance(target, ast.Tuple):
                    same = isinstance(node.value, ast.Tuple) and len(node.value.elts) == len(target.elts)
                    for i, elt in enumerate(target.elts):
                        if isinstance(elt, ast.Name):
                            values.setdefault(elt.id, []).append(node.value.elts[i] if same else None)
        elif isinstance(node, (ast.AugAssign, ast.AnnAssign, ast.For)) and isinstance(node.target, ast.Name):
            values.setdefault(node.target.id, []).append(node.value if isinstance(node, ast.AnnAssign) else None)
    return values


def _loaded(node: ast.AST, values: dict, params: set, seen: frozenset = frozenset()) -> bool:
    """node is a tl.load result or a parameter, through casts and plain names."""
    if _is_tl(node, "load"):
        return True
    if _is_cast(node):
        return _loaded(node.func.value, values, params, seen)
    if isinstance(node, ast.Name):
        if node.id in seen:
            return True  # a cycle (x = x.to(...)): the other assignments decide
        sources = values.get(node.id, [])
        if not sources and node.id not in params:
            return False
        return all(v is not None and _loaded(v, values, params, seen | {node.id}) for v in sources)
    return False


def _transposed(node: ast.AST, values: dict, seen: frozenset = frozenset()) -> ast.AST | None:
    """X if node is tl.trans(X), through casts and plain names; else None."""
    if _is_tl(node, "trans"):
        return node.args[0]
    if _is_cast(node):
        return _transposed(node.func.value, values, seen)
    if isinstance(node, ast.Name) and node.id not in seen:
        for v in values.get(node.id, []):
            inner = None if v is None else _transposed(v, values, seen | {node.id})
            if inner is not None:
                return inner
    return None


def hazards(source: str) -> list[str]:
    """'function:line: operand' for every tl.dot operand that is a transposed value not traced to a load or a
    parameter."""
    found = []
    for fn in ast.walk(ast.parse(source)):
        if isinstance(fn, ast.FunctionDef):
            params, values = {a.arg for a in fn.args.args}, _assignments(fn)
            for call in ast.walk(fn):
                for operand in call.args[:2] if _is_tl(call, "dot") else []:
                    inner = _transposed(operand, values)
                    if inner is not None and not _loaded(inner, values, params):
                        found.append(f"{fn.name}:{call.lineno}: {ast.unparse(operand)}")
    return sorted(found)


def _backward_modules() -> list[str]:
    manifest = json.loads((paths.generated_dir() / "MANIFEST.json").read_text())
    return sorted(name for name, entry in manifest.items() if entry["family"] in FAMILIES)


def test_lint_flags_a_transposed_dot_result():
    hazardous = """
def kernel(q_ptr, k_ptr):
    b_q = tl.load(q_ptr)
    b_k = tl.load(k_ptr).to(tl.bfloat16)
    b_A = tl.dot(b_q, tl.trans(b_k))
    b_A16 = b_A.to(tl.bfloat16)
    b_AT = tl.trans(b_A16)
    b_x = tl.dot(tl.trans(b_A16), b_q)
    b_y = tl.dot(b_AT, b_q)
"""
    assert hazards(hazardous) == ["kernel:8: tl.trans(b_A16)", "kernel:9: b_AT"]
    safe = hazardous.replace("tl.dot(tl.trans(b_A16), b_q)", "tl.dot(tl.trans(b_q), b_A16)")
    safe = safe.replace("tl.dot(b_AT, b_q)", "tl.dot(b_A16, b_k)")
    assert hazards(safe) == []


def test_backward_modules_listed():
    assert len(_backward_modules()) >= 2, "no backward modules in generated/MANIFEST.json"


@pytest.mark.parametrize("module", _backward_modules())
def test_no_transposed_dot_result_as_operand(module):
    assert hazards((paths.generated_dir() / module).read_text()) == []
