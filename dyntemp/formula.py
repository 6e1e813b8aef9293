"""A temperature rule from one formula: ``Formula("0.1 + 0.05*(1 - cos(pi*s))")``.

One definition gives everything a rule has: the SymPy form (``rule.sympy(s)``), the torch
form the loss runs (``rule(s)``), and the derivative d tau / ds, from ``sympy.diff`` of that
same expression. A SymPy expression works as well: ``Formula(0.15 - sp.cos(sp.pi*s)/20)``.

A formula reads the similarity ``s`` and may read the training ``progress`` (in epochs).
It is built from

* numbers, ``s``, ``progress``, ``pi``, ``E``, ``+ - * / **`` and brackets;
* the functions ``cos sin tan cosh sinh tanh atanh exp log sqrt Abs (abs) Min Max (min max)``;
* ``Piecewise((value, condition), ..., (value, True))``, the conditions comparisons with
  ``< <= > >=`` (chains like ``-0.5 < s < 0.5`` too) joined by ``&`` and ``|``.

That covers every rule of the book: cosines, ``|s|``, exponentials, a cosine cut off by a
``Piecewise``, schedules over training time.

The text never runs as code. ``sympify`` and ``parse_expr`` call ``eval``, and a formula
may come from the config.json of a run folder somebody downloaded, so the text is parsed by
Python's ``ast`` module and its tree is walked here: anything outside the list above (names,
attributes, strings, lambdas, keywords, indexing, ...) is refused with one line saying what
and where; the SymPy expression is built node by node, and powers whose exact value would be
huge (``9**9**9``) are refused before SymPy computes them.

At construction the rule is checked: tau finite and > 0, and d tau / ds finite, on s in
[-1, 1] (2001 points, s = -1, 0 and 1 included), in float64 and float32, and over progress in
[0, ``max_progress``] epochs (201 points) when the formula reads it. The rule cannot know the
length of the run: ``max_progress`` defaults to 1000 epochs (five times the paper's 200; a
schedule period is 400) and a trainer may pass the run's own epochs. A numeric check on a grid
does not see a pole between grid points (``1/(s - 0.0005)``): such a formula passes the check
and its loss is not finite.

Equality and ``params()`` go by the text (whitespace runs made one space):
``Formula(**rule.params()) == rule``. A SymPy expression is printed to text first and then
parsed like any text, so the same checks apply and that text is what config.json stores.

The torch form is compiled from the SymPy tree, node by node, to torch operations (no
``lambdify``): numbers are folded at compile time, ``Min``/``Max`` become clamps and
``torch.minimum``/``maximum``, ``Piecewise`` nested ``torch.where``. It works in place on its
own intermediate results (out of place while autograd records), so the DySTreSS formula runs
the very operations of ``DySTreSS.tau``; it keeps s's dtype and device and never reads a
value back to the host. A formula that reads both s and progress needs the progress for its
derivative too: ``rule.derivative(s, progress)``, ``rule.logit_slope(s, progress=...)``.

This module builds on ``dyntemp.rule`` (the base class) and ``dyntemp.checks`` alone;
``dyntemp.temperature`` imports it, registers ``Formula`` as the rule ``"formula"`` and runs
its compiled code for the rules written as SymPy expressions (``ProfileRule``).
"""

from __future__ import annotations

import ast
import math
import operator
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import sympy as sp
import torch
from sympy.printing.str import StrPrinter
from torch import Tensor

from dyntemp import checks
from dyntemp.rule import TemperatureRule

__all__ = ["FUNCTIONS", "PROGRESS", "SIMILARITY", "Formula", "parse"]

#: The similarity symbol of parsed formulas (real, as the similarity is).
SIMILARITY = sp.Symbol("s", real=True)
#: The training progress in epochs; ``Formula.sympy`` shows it as ``t``, like CosineSchedule.
PROGRESS = sp.Symbol("progress", nonnegative=True)

MAX_LENGTH = 500  # characters of a formula
MAX_NODES = 200  # nodes of its syntax tree
MAX_DEPTH = 50  # nesting of its syntax tree (a sum of n terms nests n deep)
MAX_DIGITS = 1000.0  # decimal digits of an exact number a power may make SymPy compute
MAX_EXTREMUM = 6  # arguments of a Min or Max (SymPy's derivative of one grows as n^3)
DEFAULT = "0.1 + 0.05*(1 - cos(pi*s))"  # DySTreSS(0.1, 0.2), the book's default rule
DEFAULT_MAX_PROGRESS = 1000.0

_NAMES: dict[str, sp.Expr] = {"s": SIMILARITY, "progress": PROGRESS, "pi": sp.pi, "E": sp.E}
# name -> (SymPy function, least and most arguments)
_FUNCTION_TABLE: dict[str, tuple[Callable[..., sp.Expr], int, int | None]] = {
    "cos": (sp.cos, 1, 1),
    "sin": (sp.sin, 1, 1),
    "tan": (sp.tan, 1, 1),
    "cosh": (sp.cosh, 1, 1),
    "sinh": (sp.sinh, 1, 1),
    "tanh": (sp.tanh, 1, 1),
    "atanh": (sp.atanh, 1, 1),
    "exp": (sp.exp, 1, 1),
    "log": (sp.log, 1, 1),
    "sqrt": (sp.sqrt, 1, 1),
    "Abs": (sp.Abs, 1, 1),
    "abs": (sp.Abs, 1, 1),
    "Min": (sp.Min, 2, None),
    "Max": (sp.Max, 2, None),
    "min": (sp.Min, 2, None),
    "max": (sp.Max, 2, None),
}
#: The functions a formula may call.
FUNCTIONS: tuple[str, ...] = (*_FUNCTION_TABLE, "Piecewise")

_ALLOWED = (
    "numbers, s, progress, pi, E, + - * / ** and "
    + ", ".join(FUNCTIONS)
    + " (conditions: < <= > >= & |)"
)
_BINARY = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul}
_COMPARE = {ast.Lt: sp.Lt, ast.LtE: sp.Le, ast.Gt: sp.Gt, ast.GtE: sp.Ge}
_WHAT = {  # how a refusal names a node
    ast.Attribute: "attribute access",
    ast.Subscript: "indexing",
    ast.Lambda: "a lambda",
    ast.IfExp: "an if-expression",
    ast.List: "a list",
    ast.Tuple: "a tuple outside Piecewise",
    ast.Dict: "a dict",
    ast.Set: "a set",
    ast.Compare: "a comparison outside a Piecewise condition",
    ast.BoolOp: "and/or (write the conditions with & and |)",
    ast.NamedExpr: "assignment",
    ast.Starred: "a starred argument",
    ast.JoinedStr: "a string",
    ast.ListComp: "a comprehension",
    ast.GeneratorExp: "a comprehension",
}


def _refuse(text: str, what: str, node: ast.AST | None = None) -> ValueError:
    where = ""
    if node is not None and hasattr(node, "col_offset"):
        segment = ast.get_source_segment(text, node) or ""
        where = f" ({segment!r} at column {node.col_offset + 1})"
    return ValueError(f"formula {text!r}: {what} is not allowed{where}; a formula uses {_ALLOWED}")


def _log10_size(expr: sp.Expr) -> float:
    """About how many decimal digits the exact numbers in ``expr`` have together."""
    total = 0.0
    for number in expr.atoms(sp.Rational):
        for part in (number.p, number.q):
            if part:
                total += math.log10(abs(part))
    return total


class _Parser:
    """Builds the SymPy expression from the syntax tree, admitting only the whitelist."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.nodes = 0

    def refuse(self, what: str, node: ast.AST | None = None) -> ValueError:
        return _refuse(self.text, what, node)

    def visit(self, node: ast.AST, depth: int) -> None:
        self.nodes += 1
        if self.nodes > MAX_NODES:
            raise self.refuse(f"a formula of more than {MAX_NODES} syntax nodes")
        if depth > MAX_DEPTH:
            raise self.refuse(f"nesting deeper than {MAX_DEPTH}", node)

    def expr(self, node: ast.AST, depth: int = 0) -> sp.Expr:
        self.visit(node, depth)
        if isinstance(node, ast.BinOp):
            left = self.expr(node.left, depth + 1)
            right = self.expr(node.right, depth + 1)
            if type(node.op) in _BINARY:
                return _BINARY[type(node.op)](left, right)
            if isinstance(node.op, ast.Div):
                return left / right
            if isinstance(node.op, ast.Pow):
                return self.power(left, right, node)
            raise self.refuse(f"the operator {type(node.op).__name__}", node)
        if isinstance(node, ast.UnaryOp):
            operand = self.expr(node.operand, depth + 1)
            if isinstance(node.op, ast.USub):
                return -operand
            if isinstance(node.op, ast.UAdd):
                return operand
            raise self.refuse(f"the operator {type(node.op).__name__}", node)
        if isinstance(node, ast.Constant):
            value = node.value
            if isinstance(value, bool) or not isinstance(value, int | float):
                what = "a string" if isinstance(value, str | bytes) else f"the constant {value!r}"
                raise self.refuse(what, node)
            if isinstance(value, int):
                return sp.Integer(value)
            if not math.isfinite(value):
                raise self.refuse("a number too large for a float", node)
            return sp.Rational(repr(value))  # exact decimal: 0.1 -> 1/10
        if isinstance(node, ast.Name):
            if node.id not in _NAMES:
                raise self.refuse(f"the name {node.id!r}", node)
            return _NAMES[node.id]
        if isinstance(node, ast.Call):
            return self.call(node, depth)
        raise self.refuse(_WHAT.get(type(node), type(node).__name__), node)

    def power(self, base: sp.Expr, exponent: sp.Expr, node: ast.AST) -> sp.Expr:
        if exponent.is_number and not exponent.has(sp.zoo, sp.nan, sp.oo, -sp.oo):
            try:
                size = abs(complex(exponent.evalf(15)))  # exponent: bounded already
            except (TypeError, ValueError, OverflowError):
                size = math.inf
            if _log10_size(base) * max(size, 1.0) > MAX_DIGITS:
                raise self.refuse("a power too large to evaluate exactly", node)
        return base**exponent

    def call(self, node: ast.Call, depth: int) -> sp.Expr:
        if not isinstance(node.func, ast.Name):
            raise self.refuse("calling anything but a listed function by name", node)
        name = node.func.id
        if node.keywords:
            raise self.refuse(f"a keyword argument to {name}", node)
        if any(isinstance(arg, ast.Starred) for arg in node.args):
            raise self.refuse(f"a starred argument to {name}", node)
        if name == "Piecewise":
            return self.piecewise(node, depth)
        if name not in _FUNCTION_TABLE:
            raise self.refuse(f"the function {name!r}", node)
        function, least, most = _FUNCTION_TABLE[name]
        count = len(node.args)
        if count < least or (most is not None and count > most):
            wanted = str(least) if least == most else f"at least {least}"
            raise self.refuse(f"{name} with {count} arguments ({wanted} wanted)", node)
        result = function(*(self.expr(arg, depth + 1) for arg in node.args))
        if isinstance(result, sp.Min | sp.Max) and len(result.args) > MAX_EXTREMUM:
            # counted after SymPy merges nested calls: Min(Min(a, b), c) is Min(a, b, c)
            raise self.refuse(f"{name} of more than {MAX_EXTREMUM} arguments", node)
        return result

    def piecewise(self, node: ast.Call, depth: int) -> sp.Expr:
        if not node.args:
            raise self.refuse("an empty Piecewise", node)
        pieces = []
        for arg in node.args:
            self.visit(arg, depth + 1)
            if not (isinstance(arg, ast.Tuple) and len(arg.elts) == 2):
                raise self.refuse("a Piecewise argument other than (value, condition)", arg)
            value, condition = arg.elts
            pieces.append((self.expr(value, depth + 2), self.condition(condition, depth + 2)))
        return sp.Piecewise(*pieces)

    def condition(self, node: ast.AST, depth: int) -> sp.Basic:
        self.visit(node, depth)
        if isinstance(node, ast.Constant) and node.value is True:
            return sp.true
        if isinstance(node, ast.Compare):
            terms = [self.expr(node.left, depth + 1)]
            terms += [self.expr(c, depth + 1) for c in node.comparators]
            relations = []
            for op, left, right in zip(node.ops, terms, terms[1:], strict=False):
                if type(op) not in _COMPARE:
                    raise self.refuse(f"the comparison {type(op).__name__}", node)
                relations.append(_COMPARE[type(op)](left, right))
            return sp.And(*relations)
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.BitAnd | ast.BitOr):
            left = self.condition(node.left, depth + 1)
            right = self.condition(node.right, depth + 1)
            return (sp.And if isinstance(node.op, ast.BitAnd) else sp.Or)(left, right)
        raise self.refuse("a condition other than comparisons joined by & and |", node)


def parse(text: str) -> sp.Expr:
    """The SymPy expression of a formula's text, in the symbols ``SIMILARITY`` and ``PROGRESS``.

    Never evaluates the text: raises ValueError, one line, for anything not allowed.
    """
    if not isinstance(text, str):
        raise ValueError(f"a formula must be a string, got {type(text).__name__}")
    if len(text) > MAX_LENGTH:
        raise ValueError(f"a formula of {len(text)} characters is too long (at most {MAX_LENGTH})")
    if not text.strip():
        raise ValueError("the formula is empty")
    try:
        tree = ast.parse(text.strip(), mode="eval")
    except (SyntaxError, ValueError, RecursionError, MemoryError) as error:
        reason = getattr(error, "msg", None) or str(error) or type(error).__name__
        raise ValueError(f"formula {text!r} is not a valid expression: {reason}") from None
    parser = _Parser(text.strip())
    try:
        expr = parser.expr(tree.body)
    except RecursionError:
        raise parser.refuse("an expression this deep") from None
    except (TypeError, ArithmeticError) as error:  # SymPy refusing, e.g. s < I
        raise ValueError(f"formula {text!r} cannot be built: {error}") from None
    if not isinstance(expr, sp.Expr):
        raise parser.refuse("a formula that is not a number-valued expression")
    return expr


class _Printer(StrPrinter):
    """``sstr`` with floats as Python writes them (0.05, not 0.0500000000000000)."""

    def _print_Float(self, expr: sp.Float) -> str:
        return repr(float(expr))


def _text_of(expr: sp.Basic) -> str:
    """The text of a SymPy expression, checked to read only s and progress."""
    names = sorted(str(symbol) for symbol in expr.free_symbols)
    other = [name for name in names if name not in ("s", "progress")]
    if other:
        raise ValueError(
            f"a formula reads only the symbols s and progress, got {', '.join(other)} in {expr}"
        )
    return _Printer().doprint(expr)


# ---------------------------------------------------------------------------------------
# The torch form: a small compiler from the SymPy tree to torch operations.


@dataclass(frozen=True)
class _CompiledExpr:
    """A compiled subexpression.

    ``run(s, progress, inplace)`` computes it (None for a constant, whose ``value`` is a
    float or a bool); ``owned``: its result is a fresh tensor the parent may overwrite;
    ``full``: it depends on s, so has the shape of s (else the shape of progress, 0-d).
    """

    run: Callable[[Tensor, Tensor | None, bool], Any] | None
    value: float | bool | None = None
    owned: bool = False
    full: bool = False


_UNARY = {
    sp.cos: "cos",
    sp.sin: "sin",
    sp.tan: "tan",
    sp.cosh: "cosh",
    sp.sinh: "sinh",
    sp.tanh: "tanh",
    sp.atanh: "atanh",
    sp.exp: "exp",
    sp.log: "log",
    sp.Abs: "abs",
    sp.sign: "sign",
}
_RELATIONS = {
    sp.StrictLessThan: "lt",
    sp.LessThan: "le",
    sp.StrictGreaterThan: "gt",
    sp.GreaterThan: "ge",
    sp.Equality: "eq",
    sp.Unequality: "ne",
}
_SWAPPED = {"lt": "gt", "le": "ge", "gt": "lt", "ge": "le", "eq": "eq", "ne": "ne"}


def _short(expr: sp.Basic, limit: int = 60) -> str:
    """``expr`` for a message, cut short (without printing numbers of many digits)."""
    digits = _log10_size(expr)
    if digits > 2 * limit:
        return f"a number of about {digits:.0f} digits"
    text = str(expr)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _const(value: float | bool) -> _CompiledExpr:
    return _CompiledExpr(None, value)


def _on_constants(name: str, *values: float) -> float:
    """Apply the torch function ``name`` to constants, in float64 on the CPU (compile time)."""
    args = [torch.tensor(float(v), dtype=torch.float64) for v in values]
    return float(getattr(torch, name)(*args))


def _apply(name: str, x: Tensor, *args: Any, owned: bool, inplace: bool) -> Tensor:
    if inplace and owned:
        return getattr(x, name + "_")(*args)
    return getattr(torch, name)(x, *args)


class _Compiler:
    def __init__(self, text: str) -> None:
        self.text = text

    def fail(self, what: str) -> ValueError:
        return ValueError(f"formula {self.text!r}: {what}")

    def compile(self, expr: sp.Basic) -> _CompiledExpr:
        code = self.node(expr)
        if code.run is None and isinstance(code.value, float) and not math.isfinite(code.value):
            raise self.fail(f"the constant {_short(expr)} is not a finite real number")
        return code

    def node(self, expr: sp.Basic) -> _CompiledExpr:
        if expr == SIMILARITY:
            return _CompiledExpr(lambda s, p, inplace: s, full=True)
        if expr == PROGRESS:
            return _CompiledExpr(lambda s, p, inplace: p)
        if expr is sp.true or expr is sp.false:
            return _const(bool(expr))
        if isinstance(expr, sp.Rational):
            try:
                return _const(expr.p / expr.q)
            except OverflowError:
                raise self.fail(f"{_short(expr)} is too large for a float") from None
        if isinstance(expr, sp.Float | sp.NumberSymbol):
            return _const(float(expr))
        if expr.is_Number or expr.has(sp.I, sp.zoo, sp.nan, sp.oo):
            raise self.fail(f"{_short(expr)} is not a finite real number")
        if isinstance(expr, sp.Add):
            return self.add(expr)
        if isinstance(expr, sp.Mul):
            return self.mul(expr)
        if isinstance(expr, sp.Pow):
            return self.power(self.node(expr.base), self.node(expr.exp))
        if type(expr) in _UNARY:
            return self.unary(_UNARY[type(expr)], self.node(expr.args[0]))
        if isinstance(expr, sp.Min | sp.Max):
            return self.extremum(expr)
        if isinstance(expr, sp.Heaviside):
            middle = float(expr.args[1]) if len(expr.args) > 1 else 0.5
            return self.heaviside(self.node(expr.args[0]), middle)
        if isinstance(expr, sp.Piecewise):
            return self.piecewise(expr)
        if type(expr) in _RELATIONS:
            return self.relation(_RELATIONS[type(expr)], *map(self.node, expr.args))
        if isinstance(expr, sp.And | sp.Or):
            return self.logical(expr)
        if isinstance(expr, sp.Not):
            inner = self.node(expr.args[0])
            if inner.run is None:
                return _const(not inner.value)
            run = inner.run
            return _CompiledExpr(
                lambda s, p, inplace: torch.logical_not(run(s, p, inplace)), full=inner.full
            )
        raise self.fail(f"{type(expr).__name__} ({_short(expr)}) has no torch form here")

    def add(self, expr: sp.Add) -> _CompiledExpr:
        codes = [self.node(arg) for arg in expr.args]
        constant = math.fsum(c.value for c in codes if c.run is None)
        result = None
        for code in (c for c in codes if c.run is not None):
            result = code if result is None else self.binary("add", result, code)
        if result is None:
            return _const(constant)
        return result if constant == 0 else self.scalar("add", result, constant)

    def mul(self, expr: sp.Mul) -> _CompiledExpr:
        numerator, denominator, constant = [], [], 1.0
        for factor in expr.args:
            if (
                isinstance(factor, sp.Pow)
                and factor.exp.is_number
                and factor.exp.is_negative
                and not factor.base.is_number
            ):
                denominator.append(self.node(factor.base ** (-factor.exp)))
                continue
            code = self.node(factor)
            if code.run is None:
                constant *= code.value
            else:
                numerator.append(code)
        if not numerator and not denominator:
            return _const(constant)
        result = None
        for code in numerator:
            result = code if result is None else self.binary("mul", result, code)
        if result is None:  # constant / (product of the denominator)
            bottom = denominator[0]
            for code in denominator[1:]:
                bottom = self.binary("mul", bottom, code)
            result = self.unary("reciprocal", bottom)
            return result if constant == 1 else self.scalar("mul", result, constant)
        if constant != 1:
            result = self.scalar("mul", result, constant)
        for code in denominator:
            result = self.binary("div", result, code)
        return result

    def scalar(self, name: str, code: _CompiledExpr, value: float) -> _CompiledExpr:
        """``code <name> value`` for add, mul, clamp_min, clamp_max, pow."""
        run, owned = code.run, code.owned

        def scaled(s, p, inplace):
            return _apply(name, run(s, p, inplace), value, owned=owned, inplace=inplace)

        return _CompiledExpr(scaled, owned=True, full=code.full)

    def binary(self, name: str, a: _CompiledExpr, b: _CompiledExpr) -> _CompiledExpr:
        """``a <name> b`` for two non-constant codes: add, mul, div, pow, minimum, maximum."""
        run_a, run_b = a.run, b.run
        into_a = a.owned and (a.full or not b.full)
        into_b = name in ("add", "mul") and b.owned and (b.full or not a.full) and not into_a
        if name in ("minimum", "maximum"):
            into_a = into_b = False  # no in-place form

        def both(s, p, inplace):
            x, y = run_a(s, p, inplace), run_b(s, p, inplace)
            if inplace and into_a:
                return getattr(x, name + "_")(y)
            if inplace and into_b:
                return getattr(y, name + "_")(x)
            return getattr(torch, name)(x, y)

        return _CompiledExpr(both, owned=True, full=a.full or b.full)

    def unary(self, name: str, code: _CompiledExpr) -> _CompiledExpr:
        if code.run is None:
            return _const(_on_constants(name, code.value))
        run, owned = code.run, code.owned
        return _CompiledExpr(
            lambda s, p, inplace: _apply(name, run(s, p, inplace), owned=owned, inplace=inplace),
            owned=True,
            full=code.full,
        )

    def power(self, base: _CompiledExpr, exponent: _CompiledExpr) -> _CompiledExpr:
        if base.run is None and exponent.run is None:
            return _const(_on_constants("pow", base.value, exponent.value))
        if exponent.run is None:
            e = exponent.value
            special = {0.5: "sqrt", -0.5: "rsqrt", -1.0: "reciprocal"}
            if e == 1.0:
                return self.scalar("mul", base, 1.0)
            if e in special:
                return self.unary(special[e], base)
            whole = float(e).is_integer() and abs(e) < 2**31
            return self.scalar("pow", base, int(e) if whole else e)
        if base.run is None:
            c, run = base.value, exponent.run
            return _CompiledExpr(
                lambda s, p, inplace: torch.pow(c, run(s, p, inplace)),
                owned=True,
                full=exponent.full,
            )
        return self.binary("pow", base, exponent)

    def extremum(self, expr: sp.Min | sp.Max) -> _CompiledExpr:
        pick, pairwise, clamp = (
            (min, "minimum", "clamp_max")
            if isinstance(expr, sp.Min)
            else (max, "maximum", "clamp_min")
        )
        codes = [self.node(arg) for arg in expr.args]
        constants = [c.value for c in codes if c.run is None]
        result = None
        for code in (c for c in codes if c.run is not None):
            result = code if result is None else self.binary(pairwise, result, code)
        if result is None:
            return _const(pick(constants))
        return self.scalar(clamp, result, pick(constants)) if constants else result

    def heaviside(self, code: _CompiledExpr, middle: float) -> _CompiledExpr:
        if code.run is None:
            return _const(float(code.value > 0) if code.value != 0 else middle)
        run = code.run
        return _CompiledExpr(
            lambda s, p, inplace: torch.heaviside(x := run(s, p, inplace), x.new_full((), middle)),
            owned=True,
            full=code.full,
        )

    def relation(self, name: str, a: _CompiledExpr, b: _CompiledExpr) -> _CompiledExpr:
        if a.run is None and b.run is None:
            return _const(bool(getattr(operator, name)(a.value, b.value)))
        if a.run is None:
            a, b, name = b, a, _SWAPPED[name]
        run_a, full = a.run, a.full or b.full
        if b.run is None:
            value = b.value
            return _CompiledExpr(
                lambda s, p, inplace: getattr(torch, name)(run_a(s, p, inplace), value), full=full
            )
        run_b = b.run
        return _CompiledExpr(
            lambda s, p, inplace: getattr(torch, name)(run_a(s, p, inplace), run_b(s, p, inplace)),
            full=full,
        )

    def logical(self, expr: sp.And | sp.Or) -> _CompiledExpr:
        name = "logical_and" if isinstance(expr, sp.And) else "logical_or"
        codes = [self.node(arg) for arg in expr.args]
        runs = [c.run for c in codes if c.run is not None]
        constants = [c.value for c in codes if c.run is None]
        if constants:  # SymPy simplifies constant terms away; kept for completeness
            fold = all(constants) if name == "logical_and" else any(constants)
            if fold != (name == "logical_and"):
                return _const(fold)
        if not runs:
            return _const(name == "logical_and")

        def joined(s, p, inplace):
            result = runs[0](s, p, inplace)
            for run in runs[1:]:
                result = getattr(torch, name)(result, run(s, p, inplace))
            return result

        return _CompiledExpr(joined, full=any(c.full for c in codes))

    def piecewise(self, expr: sp.Piecewise) -> _CompiledExpr:
        result = _const(math.nan)  # SymPy's Piecewise is undefined where no condition holds
        for piece in reversed(expr.args):
            value, condition = self.node(piece.expr), self.node(piece.cond)
            if condition.run is None:
                result = value if condition.value else result
                continue
            result = self.where(condition, value, result)
        return result

    def where(self, condition: _CompiledExpr, a: _CompiledExpr, b: _CompiledExpr) -> _CompiledExpr:
        cond = condition.run
        both_constant = a.run is None and b.run is None

        def operand(code: _CompiledExpr, s: Tensor, p: Tensor | None, inplace: bool, mask: Tensor):
            if code.run is not None:
                return code.run(s, p, inplace)
            # one constant takes the other's dtype; two need a tensor of s's dtype
            return s.new_full(mask.shape, code.value) if both_constant else code.value

        def chosen(s, p, inplace):
            mask = cond(s, p, inplace)
            return torch.where(
                mask, operand(a, s, p, inplace, mask), operand(b, s, p, inplace, mask)
            )

        return _CompiledExpr(chosen, owned=True, full=a.full or b.full or condition.full)


class Formula(TemperatureRule):
    """A temperature rule from one formula of ``s`` (and ``progress``, in epochs).

    ``Formula("0.1 + 0.05*(1 - cos(pi*s))")`` is DySTreSS(0.1, 0.2). ``formula`` is the text
    (see the module's docstring for what it may contain) or a SymPy expression of symbols
    named ``s`` and ``progress``; ``max_progress`` the last epoch the construction check
    covers, for formulas that read the progress.

    >>> rule = Formula("0.1 + 0.05*(1 - cos(pi*s))")
    >>> rule(torch.tensor([-1.0, 0.0, 1.0]))  # tau of each similarity
    tensor([0.2000, 0.1000, 0.2000])
    >>> rule.sympy(sp.Symbol("s"))
    3/20 - cos(pi*s)/20
    >>> Formula("1/s")
    Traceback (most recent call last):
    ValueError: formula '1/s' gives tau = -1 at s = -1 (float64); tau must be positive ...
    """

    arguments = {
        "formula": "tau as a formula of s and progress (epochs), e.g. '0.1 + 0.05*(1 - cos(pi*s))'",
        "max_progress": "the last epoch the construction check covers (default: {default})",
    }

    def __init__(
        self, formula: str | sp.Basic = DEFAULT, max_progress: float = DEFAULT_MAX_PROGRESS
    ) -> None:
        if isinstance(formula, sp.Basic):
            formula = _text_of(formula)
        elif isinstance(formula, int | float) and not isinstance(formula, bool):
            formula = repr(formula)
        elif not isinstance(formula, str):
            raise ValueError(
                f"formula must be a string or a SymPy expression, got {type(formula).__name__}"
            )
        self.text = " ".join(formula.split())
        self.max_progress = checks.number("max_progress", max_progress, above=0)
        #: The rule as a SymPy expression of ``SIMILARITY`` and ``PROGRESS``.
        self.expression = parse(self.text)
        self.per_pair = SIMILARITY in self.expression.free_symbols
        self.needs_progress = PROGRESS in self.expression.free_symbols
        compiler = _Compiler(self.text)
        self._tau = compiler.compile(self.expression)
        self._slope = compiler.compile(sp.diff(self.expression, SIMILARITY))
        self._check()

    def params(self) -> dict[str, Any]:
        """``{"formula": text}``, and ``max_progress`` for a formula that reads the progress."""
        params: dict[str, Any] = {"formula": self.text}
        if self.needs_progress:
            params["max_progress"] = self.max_progress
        return params

    def __repr__(self) -> str:
        extra = f", max_progress={self.max_progress:g}" if self.needs_progress else ""
        return f"Formula({self.text!r}{extra})"

    def __reduce__(self):  # pickle and deepcopy rebuild from the text
        return (type(self), (self.text, self.max_progress))

    def _run(
        self,
        code: _CompiledExpr,
        s: Tensor,
        progress: float | Tensor | None,
        inplace: bool | None = None,
    ) -> Tensor:
        if code.run is None:
            return s.new_full((), code.value)  # a fill, not a host-to-device copy
        p = None
        if self.needs_progress:
            if progress is None:
                raise ValueError(f"{self!r} needs the training progress (in epochs)")
            if isinstance(progress, Tensor):
                p = progress.detach().to(s)
            else:
                p = s.new_full((), float(progress))
        if inplace is None:  # intermediate results are overwritten unless autograd needs them
            inplace = not (torch.is_grad_enabled() and s.requires_grad)
        out = code.run(s, p, inplace)
        if isinstance(out, Tensor):
            return out.clone() if out is s or out is p else out
        return s.new_full((), out)

    def tau(self, s, progress=None, positive_mean=None):
        return self._run(self._tau, s, progress)

    def derivative(self, s: Tensor, progress: float | Tensor | None = None) -> Tensor:
        """d tau / ds from ``sympy.diff``; ``progress`` for a formula that reads both."""
        if not self.per_pair:
            return s.new_zeros(())
        if self.needs_progress and progress is None and self._slope.run is not None:
            raise ValueError(
                f"{self!r} reads both s and progress: its derivative needs progress=..., "
                "which a loss with the temperature in the graph must pass to logit_slope"
            )
        return self._run(self._slope, s, progress)

    def logit_slope(self, s, tau=None, *, progress=None, positive_mean=None):
        if isinstance(s, sp.Basic):
            return super().logit_slope(s, progress=progress, positive_mean=positive_mean)
        if tau is None:
            tau = self.tau(s, progress)
        slope = self.derivative(s, progress) * s
        return slope.neg_().add_(tau).div_(tau).div_(tau)

    def sympy(self, s, *, progress=None, positive_mean=None, symbolic=False):
        """The formula with ``s`` and the progress (``t`` when not given) put in.

        ``symbolic`` changes nothing: a formula's numbers are its own.
        """
        if progress is None:
            progress = sp.Symbol("t", nonnegative=True)
        elif isinstance(progress, int | float) and not isinstance(progress, bool):
            progress = sp.Float(progress) if isinstance(progress, float) else sp.Integer(progress)
        elif not isinstance(progress, sp.Basic):
            raise ValueError(f"progress must be a number or a SymPy expression, got {progress!r}")
        return self.expression.xreplace({SIMILARITY: s, PROGRESS: progress})

    def _check(self) -> None:
        """tau finite and > 0, d tau / ds finite, on the grid, in float64 and float32."""
        for dtype in (torch.float64, torch.float32):
            s = torch.arange(-1000, 1001, dtype=torch.float64).div_(1000).to(dtype)
            p = None
            if self.needs_progress:
                p = torch.linspace(0.0, self.max_progress, 201, dtype=dtype)[:, None]
                p[-1] = self.max_progress
            s = s[None, :].expand(1 if p is None else p.shape[0], -1)
            name = "float64" if dtype == torch.float64 else "float32"
            with torch.no_grad():
                tau = self._grid(self._tau, s, p)
                self._require(tau, s, p, name, "tau", lambda x: torch.isfinite(x) & (x > 0))
                if self.per_pair:
                    slope = self._grid(self._slope, s, p)
                    self._require(slope, s, p, name, "d tau / ds", torch.isfinite)

    def _grid(self, code: _CompiledExpr, s: Tensor, p: Tensor | None) -> Tensor:
        if code.run is None:
            return torch.full_like(s, code.value)
        try:
            out = code.run(s, p, False)
        except (RuntimeError, TypeError, OverflowError) as error:
            reason = str(error).splitlines()[0] if str(error) else type(error).__name__
            raise ValueError(f"formula {self.text!r} fails in torch: {reason}") from None
        return torch.broadcast_to(torch.as_tensor(out, dtype=s.dtype), s.shape)

    def _require(self, values, s, p, dtype: str, what: str, test) -> None:
        bad = ~test(values)
        if not bool(bad.any()):
            return
        row, column = (int(i) for i in bad.nonzero()[0])
        at = f"s = {float(s[row, column]):g}"
        if p is not None:
            at += f", progress = {float(p[row, 0]):g}"
        ranges = "s in [-1, 1]"
        if p is not None:
            ranges += f" and progress in [0, {self.max_progress:g}] epochs"
        need = "positive and finite" if what == "tau" else "finite"
        raise ValueError(
            f"formula {self.text!r} gives {what} = {float(values[row, column]):g} at {at} "
            f"({dtype}); {what} must be {need} for {ranges}"
        )
