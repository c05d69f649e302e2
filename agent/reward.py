"""Per-field rewards for the adaptive policies: a named quantity or a user expression of an observation.

An expression is plain arithmetic over the names of :meth:`Observation.variables` (``n_defects``,
``n_atoms``, ``new_defects``, ``mean_mutual_info``, ``ood_score``, ``n_vacancy``...), numbers, ``+ - * /
**``, unary minus, comparisons (true is 1) and the functions ``min``, ``max``, ``abs``, ``log1p``,
``sqrt``.  It is parsed once with :mod:`ast` and checked node by node: nothing else can run.
"""

from __future__ import annotations

import ast
import math
import operator
from collections.abc import Callable
from typing import Any

from agent.observation import Observation

_BINARY: dict[type[ast.operator], Callable[[float, float], float]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: lambda a, b: a / b if b else 0.0,
    ast.Pow: operator.pow,
}
_COMPARE: dict[type[ast.cmpop], Callable[[float, float], bool]] = {
    ast.Lt: operator.lt,
    ast.LtE: operator.le,
    ast.Gt: operator.gt,
    ast.GtE: operator.ge,
}
#: How many arguments each function takes: (fewest, most).
_ARITY = {"min": (1, 99), "max": (1, 99), "abs": (1, 1), "log1p": (1, 1), "sqrt": (1, 1)}
_FUNCTIONS: dict[str, Callable[..., float]] = {
    "min": min,
    "max": max,
    "abs": abs,
    "log1p": lambda v: math.log1p(max(v, -0.999999)),
    "sqrt": lambda v: math.sqrt(max(v, 0.0)),
}


class RewardError(ValueError):
    """A reward expression that cannot be used, with the reason."""


class Reward:
    """A reward computed from an observation.

    Parameters
    ----------
    expression
        E.g. ``"n_defects"``, ``"n_vacancy + 2 * n_dopant"``, ``"new_defects - 5 * (ood_score > 3)"``.
    names
        The variable names allowed (those of :meth:`Observation.variables` for the model in use).

    Raises
    ------
    RewardError
        Syntax errors, unknown names, or any construct outside the arithmetic listed above.
    """

    def __init__(self, expression: str, names: set[str]) -> None:
        self.expression = expression
        try:
            tree = ast.parse(expression, mode="eval")
        except SyntaxError as exc:
            raise RewardError(f"reward expression {expression!r} is not valid: {exc.msg}") from None
        self._check(tree.body, names)
        self._tree = tree.body

    def _check(self, node: ast.AST, names: set[str]) -> None:
        if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)) and not isinstance(node.value, bool):
            return
        if isinstance(node, ast.Name):
            if node.id not in names:
                raise RewardError(f"unknown name {node.id!r} in reward; known: {', '.join(sorted(names))}")
            return
        if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
            self._check(node.left, names)
            self._check(node.right, names)
            return
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
            self._check(node.operand, names)
            return
        if isinstance(node, ast.Compare) and len(node.ops) == 1 and type(node.ops[0]) in _COMPARE:
            self._check(node.left, names)
            self._check(node.comparators[0], names)
            return
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id in _FUNCTIONS
            and not node.keywords
        ):
            low, high = _ARITY[node.func.id]
            if not low <= len(node.args) <= high:
                want = f"{low}" if low == high else f"at least {low}"
                raise RewardError(f"{node.func.id}() takes {want} argument(s), got {len(node.args)}")
            for arg in node.args:
                self._check(arg, names)
            return
        raise RewardError(f"{ast.unparse(node)!r} is not allowed in a reward expression")

    def __call__(self, observation: Observation) -> float:
        """The reward of ``observation`` (a finite float; 0 where the arithmetic breaks down)."""
        try:
            value = float(self._eval(self._tree, observation.variables()))
        except (OverflowError, ValueError, ZeroDivisionError, TypeError):  # TypeError: a complex power
            return 0.0
        return value if math.isfinite(value) else 0.0

    def _eval(self, node: ast.AST, env: dict[str, float]) -> Any:
        if isinstance(node, ast.Constant):  # floats, all of it: 9**9**9**9 in Python integers never ends
            assert isinstance(node.value, (int, float))  # (checked when the expression was read)
            return float(node.value)
        if isinstance(node, ast.Name):
            return float(env.get(node.id, 0.0))
        if isinstance(node, ast.BinOp):
            return _BINARY[type(node.op)](self._eval(node.left, env), self._eval(node.right, env))
        if isinstance(node, ast.UnaryOp):
            value = self._eval(node.operand, env)
            return -value if isinstance(node.op, ast.USub) else value
        if isinstance(node, ast.Compare):
            left, right = self._eval(node.left, env), self._eval(node.comparators[0], env)
            return float(_COMPARE[type(node.ops[0])](left, right))
        assert isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
        return _FUNCTIONS[node.func.id](*(self._eval(a, env) for a in node.args))
