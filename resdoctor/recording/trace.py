"""A one-forward dataflow tracer that finds residual additions.

A ``TorchFunctionMode`` sees every torch call of one forward pass; each tensor produced becomes a
node with its parents. Module pre/post hooks (owned by a ``HookSet``) record which module inputs and
outputs each tensor was, so the recorder can later tap the same tensors with plain module hooks.
An addition ``a + b`` is residual when one operand is the skip and the other a branch that passed
through a parameterised op: either ``b = F(a)`` (identity skip) or ``a = S(x), b = F(x)`` with
fewer parameterised ops on S than on F (projection shortcut).
"""

from __future__ import annotations

import contextlib
import heapq
import weakref
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.autograd.function import BackwardCFunction
from torch.overrides import TorchFunctionMode

from resdoctor.recording.hooks import HookSet
from resdoctor.recording.pytree import Path, iter_tensors

ADD_NAMES = frozenset({"add", "add_", "__add__", "__radd__", "__iadd__"})
# ops that can turn finite inputs into NaN/Inf (or whose derivative can), by torch name
NAN_PRONE = frozenset(
    {
        "log",
        "log_",
        "log2",
        "log10",
        "log1p",
        "logit",
        "sqrt",
        "sqrt_",
        "rsqrt",
        "div",
        "div_",
        "true_divide",
        "__truediv__",
        "__rtruediv__",
        "__itruediv__",
        "reciprocal",
        "pow",
        "pow_",
        "__pow__",
        "__rpow__",
        "exp",
        "exp_",
        "exp2",
        "expm1",
        "acos",
        "asin",
        "atanh",
        "acosh",
        "atan2",
        "lgamma",
        "digamma",
        "polygamma",
        "erfinv",
        "tan",
    }
)


@dataclass(frozen=True)
class Tap:
    """A tensor seen at a module boundary: ``module``'s ``where`` ("input"/"output") at ``path``."""

    module: str
    where: str
    path: Path
    call: int = 0  # which call of the module within one forward (modules can be reused)

    def to_dict(self) -> dict[str, Any]:
        return {
            "module": self.module,
            "where": self.where,
            "path": list(self.path),
            "call": self.call,
        }


@dataclass
class _Node:
    idx: int
    parents: tuple[int, ...]
    data: bool  # derived from something other than parameters (inputs, buffers, created tensors)
    param_op: bool  # an op that mixes data with parameters: a layer on the activation path
    floating: bool
    shape: tuple[int, ...]
    taps: list[Tap] = field(default_factory=list)


@dataclass
class Addition:
    """A residual addition found while tracing."""

    module: str  # smallest module containing the addition ("" = root)
    kind: str  # "identity" | "projection"
    skip: _Node
    branch: _Node
    result: _Node
    source: _Node
    shape: tuple[int, ...]
    # ||skip||^2, ||branch||^2, ||sum||^2 at the addition (0-d, device), with measure_adds
    sums: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None
    key: int = -1  # the source's origin before parameter-free ops (see Tracer.residuals)
    measured: Any = None  # Tracer.measure_result of the sum (the traced step's smoothing)
    # where the addition runs: the owner's call, and how many additions (``add``, ``+``,
    # ``+=``, any module's) that call had run when this one ran, this one included
    call: int = 0
    ordinal: int = 0
    skip_first: bool = True  # the skip is the addition's first operand


class Tracer(TorchFunctionMode):
    """Trace one forward of ``model``; ``additions`` lists the residual additions in order."""

    def __init__(self, model: nn.Module, hooks: HookSet | None = None, graph: bool = True) -> None:
        super().__init__()
        self.model = model
        self.graph = graph  # False: record the module order only, the mode sees no call
        self.nodes: list[_Node] = []
        self.additions: list[Addition] = []
        self.module_order: list[str] = []
        # module -> NaN-prone ops its own code ran (log, sqrt, div, ..., custom autograd ops)
        self.nan_ops: dict[str, set[str]] = {}
        self._customs: dict[int, Any] = {}  # custom autograd nodes already attributed
        self.measure_adds = False  # also reduce each addition's operands (the traced step)
        self.measure_result: Any = None  # and apply this to each residual sum (e.g. smoothing)
        self.measure_failed: Exception | None = None
        self._ids: dict[int, tuple[weakref.ref[torch.Tensor], int, _Node]] = {}
        # origin node -> the (module, call)s whose additions had an operand from it
        self._added_in: dict[int, set[tuple[str, int]]] = {}
        self._stack: list[str] = []
        self._adds = 0  # addition calls so far; _starts: the count when each open call began
        self._starts: list[int] = []
        self._calls: dict[str, list[int]] = {}
        self._names = {id(m): n for n, m in model.named_modules()}
        self._hooks = hooks if hooks is not None else HookSet()
        self._paused = False
        self.failed: Exception | None = None  # a bug in tracing stops tracing, never the model

    # -- lifecycle -------------------------------------------------------------------------
    def attach(self, root: bool = True) -> None:
        """Hook every module; ``root=False`` when attaching from inside the root's own hook."""
        for name, module in self.model.named_modules():
            if module is self.model and not root:
                continue
            self._hooks.forward_pre(module, self._guarded(self._pre(name)))
            self._hooks.forward(module, self._guarded(self._post(name)), always=True)

    def detach(self) -> None:
        self._hooks.remove()

    def __enter__(self) -> Tracer:
        if self.graph:  # module order only: no TorchFunctionMode, the ops run untouched
            super().__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.graph:
            super().__exit__(*exc)

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        """Calls made inside (e.g. by the recorder's own hooks) are not part of the model."""
        previous, self._paused = self._paused, True
        try:
            yield
        finally:
            self._paused = previous

    # -- module boundaries -----------------------------------------------------------------
    def _guarded(self, fn: Any) -> Any:
        def hook(*args: Any) -> None:
            if self.failed is None and not self._paused:
                try:
                    fn(*args)
                except Exception as e:  # noqa: BLE001
                    self.failed = e

        return hook

    def _pre(self, name: str) -> Any:
        def hook(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
            for _, t in iter_tensors((args, kwargs)):  # made by the caller's code, not this one
                self._custom_op(t)
            self._stack.append(name)
            self._starts.append(self._adds)
            calls = self._calls.setdefault(name, [])
            calls.append(len(calls))
            k = calls[-1]
            for i, arg in enumerate(args):
                for path, t in iter_tensors(arg, (i,)):
                    self._node(t).taps.append(Tap(name, "input", path, k))
            for key, arg in kwargs.items():
                for path, t in iter_tensors(arg, (key,)):
                    self._node(t).taps.append(Tap(name, "input", path, k))

        return hook

    def _post(self, name: str) -> Any:
        def hook(module: nn.Module, args: Any, kwargs: Any, output: Any) -> None:
            if name not in self.module_order:
                self.module_order.append(name)
            k = len(self._calls.get(name, [None])) - 1
            # still on the stack: an output made by a custom autograd op belongs to this module
            for path, t in iter_tensors(output):
                self._custom_op(t)
                self._node(t).taps.append(Tap(name, "output", path, k))
            if self._stack and self._stack[-1] == name:
                self._stack.pop()
                self._starts.pop()

        return hook

    # -- the graph -------------------------------------------------------------------------
    def _node(self, t: torch.Tensor) -> _Node:
        entry = self._ids.get(id(t))
        version = tensor_version(t)
        if entry is not None and entry[0]() is t and entry[1] == version:
            return entry[2]
        is_param = isinstance(t, nn.Parameter)
        return self._new(t, (), data=not is_param, param_op=False)

    def _custom_op(self, t: torch.Tensor) -> None:
        """A tensor made by a custom autograd Function (its forward's ops are traced, the
        Function itself is not): counted once, for the module running when it is first seen."""
        fn = t.grad_fn
        if isinstance(fn, BackwardCFunction) and id(fn) not in self._customs:
            self._customs[id(fn)] = weakref.ref(fn)
            self._nan_op(type(fn).__name__.removesuffix("Backward"))

    def _nan_op(self, name: str) -> None:
        self.nan_ops.setdefault(self._stack[-1] if self._stack else "", set()).add(name)

    def _new(self, t: torch.Tensor, parents: tuple[int, ...], data: bool, param_op: bool) -> _Node:
        node = _Node(
            len(self.nodes), parents, data, param_op, t.is_floating_point(), tuple(t.shape)
        )
        self.nodes.append(node)
        self._ids[id(t)] = (weakref.ref(t), tensor_version(t), node)
        return node

    def __torch_function__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        name = getattr(func, "__name__", "")
        if self._paused or self.failed is not None or name in ("__get__", "__set__"):
            return func(*args, **kwargs)
        try:  # operands are resolved before the call: an in-place op bumps their version
            tensors = [t for _, t in iter_tensors((args, kwargs), depth=4)]
            for t in tensors:
                self._custom_op(t)
            inputs = [self._node(t) for t in tensors]
            before = _operand_sums(name, tensors) if self.measure_adds else None
            versions = {id(t): tensor_version(t) for t in tensors}
        except Exception as e:  # noqa: BLE001
            self.failed = e
            return func(*args, **kwargs)
        if name in ADD_NAMES:
            self._adds += 1
        out = func(*args, **kwargs)  # the model's own errors propagate untouched
        try:
            if name in NAN_PRONE and _prone(name, args, kwargs):
                self._nan_op(
                    name.strip("_").removeprefix("r").removeprefix("i")
                    if name.startswith("__")
                    else name.rstrip("_")
                )
            self._record(name, inputs, _changed(out, tensors, versions), before)
        except Exception as e:  # noqa: BLE001
            self.failed = e
        return out

    def _record(
        self, name: str, inputs: list[_Node], out: Any, before: tuple[Any, Any] | None = None
    ) -> None:
        if not inputs:
            parents: tuple[int, ...] = ()
            data, param_op = True, False
        else:
            parents = tuple(n.idx for n in inputs)
            data = any(n.data for n in inputs)
            param_op = data and any(not n.data for n in inputs)
        results = [t for _, t in iter_tensors(out, depth=2)]
        for t in results:
            self._new(t, parents, data, param_op)
        if name in ADD_NAMES and len(inputs) >= 2 and len(results) == 1:
            sums = None if before is None else (*before, _sum_squares(results[0]))
            self._on_add(inputs[0], inputs[1], self._node(results[0]), sums, results[0])

    # -- classification --------------------------------------------------------------------
    def residuals(self) -> list[Addition]:
        """The residual additions, less those of a side input: a tensor added in several
        blocks (edge features, a timestep or position embedding, GCNII's initial
        representation) is no skip; a skip comes from the stream the block was given."""
        return [a for a in self.additions if len(self._added_in.get(a.key, ())) < 2]

    def _on_add(
        self, a: _Node, b: _Node, result: _Node, sums: Any = None, total: Any = None
    ) -> None:
        if not (a.data and b.data and a.floating and b.floating and a.shape == b.shape):
            return
        if result.shape != a.shape:
            return
        module = self._stack[-1] if self._stack else ""
        where = (module, self._calls[module][-1] if module in self._calls else 0)
        ordinal = self._adds - (self._starts[-1] if self._starts else 0)
        for operand in (a, b):
            self._added_in.setdefault(self._origin(operand).idx, set()).add(where)
        found = self._classify(a, b)
        if found is None:
            return
        kind, skip, branch, source = found
        if sums is not None and skip is b:
            sums = (sums[1], sums[0], sums[2])
        key = self._origin(source).idx
        measured = None
        if self.measure_result is not None and isinstance(total, torch.Tensor):
            try:  # a failing measurement loses that measurement, never the discovery
                measured = self.measure_result(total.detach())
            except Exception as e:  # noqa: BLE001
                self.measure_failed = e
        self.additions.append(
            Addition(
                module,
                kind,
                skip,
                branch,
                result,
                source,
                a.shape,
                sums,
                key=key,
                measured=measured,
                call=where[1],
                ordinal=ordinal,
                skip_first=skip is a,
            )
        )

    def _origin(self, node: _Node) -> _Node:
        """``node`` before parameter-free ops of one floating operand (scaling, slicing,
        gathering, dropout): ``alpha * x0[:n]`` comes from ``x0``."""
        while not node.param_op:
            floating = [p for p in node.parents if self.nodes[p].floating]
            if len(floating) != 1:
                break
            node = self.nodes[floating[0]]
        return node

    def _classify(self, a: _Node, b: _Node) -> tuple[str, _Node, _Node, _Node] | None:
        for skip, branch in ((a, b), (b, a)):
            if skip.idx < branch.idx and self._param_ops_between(skip, branch) > 0:
                return "identity", skip, branch, skip
        source = self._nearest_common_ancestor(a, b)
        if source is None or not source.floating:
            return None
        da, db = self._param_ops_between(source, a), self._param_ops_between(source, b)
        if da == db:
            return None
        skip, branch = (a, b) if da < db else (b, a)
        return ("projection" if min(da, db) > 0 else "identity"), skip, branch, source

    def _param_ops_between(self, src: _Node, dst: _Node) -> int:
        """Parameterised ops on paths ``src -> dst`` (0 when dst does not depend on src)."""
        region: dict[int, _Node] = {}
        todo = [dst.idx]
        while todo:
            i = todo.pop()
            if i in region or i < src.idx:
                continue
            region[i] = self.nodes[i]
            todo.extend(self.nodes[i].parents)
        if src.idx not in region:
            return 0
        reaches: set[int] = {src.idx}
        count = 0
        for i in sorted(region):
            node = region[i]
            if i != src.idx and any(p in reaches for p in node.parents):
                reaches.add(i)
                count += node.param_op
        return count if dst.idx in reaches else 0

    def _ancestors(self, node: _Node) -> set[int]:
        seen: set[int] = set()
        todo = list(node.parents)
        while todo:
            i = todo.pop()
            if i not in seen:
                seen.add(i)
                todo.extend(self.nodes[i].parents)
        return seen

    def _nearest_common_ancestor(self, a: _Node, b: _Node) -> _Node | None:
        anc_a = self._ancestors(a)
        heap = [-p for p in b.parents]
        heapq.heapify(heap)
        seen: set[int] = set()
        while heap:
            i = -heapq.heappop(heap)
            if i in seen:
                continue
            seen.add(i)
            node = self.nodes[i]
            if i in anc_a and node.data and node.floating:
                return node
            for p in node.parents:
                heapq.heappush(heap, -p)
        return None


def _changed(out: Any, tensors: list[torch.Tensor], versions: dict[int, int]) -> Any:
    """``out`` less the tensors that are an operand returned unchanged (``x.to(x.dtype)``,
    ``.contiguous()``, ``.float()`` of a float32 tensor): a no-op is no new node, so the
    operand keeps the module-boundary taps it already has (RMSNorm's ``.to(float32)``)."""
    if isinstance(out, torch.Tensor):
        same = any(out is t and tensor_version(out) == versions[id(t)] for t in tensors)
        return None if same else out
    return out


def _sum_squares(t: torch.Tensor) -> torch.Tensor:
    t = t.detach()
    if t.dtype == torch.float64:
        return torch.linalg.vector_norm(t).float().square()
    return torch.linalg.vector_norm(t, dtype=torch.float32).square()


def _operand_sums(name: str, tensors: list[torch.Tensor]) -> tuple[Any, Any] | None:
    """``(||a||^2, ||b||^2)`` of a same-shape floating addition, before it runs (an in-place
    ``a += b`` overwrites ``a``)."""
    if name not in ADD_NAMES or len(tensors) < 2:
        return None
    a, b = tensors[0], tensors[1]
    if not (a.is_floating_point() and b.is_floating_point() and a.shape == b.shape):
        return None
    return _sum_squares(a), _sum_squares(b)


def _prone(name: str, args: Any, kwargs: dict[str, Any]) -> bool:
    """Division only by a tensor, a power only with a fractional, negative or tensor exponent:
    ``x / 2`` and ``x ** 2`` cannot make NaN from finite values."""
    second = args[1] if len(args) > 1 else kwargs.get("other", kwargs.get("exponent"))
    if "div" in name or name in ("reciprocal",):
        return name == "reciprocal" or name == "__rtruediv__" or isinstance(second, torch.Tensor)
    if "pow" in name:
        if name == "__rpow__" or isinstance(second, torch.Tensor):
            return True
        return isinstance(second, (int, float)) and (second < 0 or second != int(second))
    return True


def tensor_version(t: torch.Tensor) -> int:
    """``t._version``, or -1 for inference tensors (they carry no version counter)."""
    try:
        return int(t._version)
    except RuntimeError:  # inference tensors carry no version counter
        return -1
