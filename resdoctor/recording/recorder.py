"""Recorder: owns every hook, measures through the sensors, hands segments to the journal.

Per step: module hooks measure activations (norms reused through a per-forward cache), a tensor
hook on the model output queues one end-of-backward callback for fused gradient norms, optimizer
hooks measure parameters and updates. ``end_segment()`` packs everything into one tensor and
transfers it once. Every hook body runs under ``_guard``: an error inside resdoctor is counted
in the run file, never raised into training.
"""

from __future__ import annotations

import contextlib
import functools
import time
import weakref
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch
from torch import nn

from resdoctor.runfile import io as runfile
from resdoctor.recording.hooks import HookSet
from resdoctor.recording.pytree import call_inputs, get_path, iter_tensors
from resdoctor.recording.segment import Segment, Transfer, const, unpack
from resdoctor.recording.trace import Tracer, tensor_version
from resdoctor.recording.discovery import Site, sites_from
from resdoctor.recording.journal import Journal, SegmentMeta
from resdoctor.recording.options import Options
from resdoctor.recording.sensors import GradNorm, Smoothing, UpdateRatio
from resdoctor.recording.sensors.site_probe import DECODE, extrema, inner, sum_squares

# Modules that turn finite inputs into finite outputs: their outputs need no NaN/Inf check.
FINITE_PRESERVING: tuple[type[nn.Module], ...] = (
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.GELU, nn.SiLU, nn.Tanh, nn.Sigmoid, nn.ELU, nn.Mish,
    nn.Hardtanh, nn.Softmax, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Identity, nn.Flatten,
    nn.MaxPool1d, nn.MaxPool2d, nn.AvgPool1d, nn.AvgPool2d, nn.AdaptiveAvgPool1d,
    nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d, nn.BatchNorm1d, nn.BatchNorm2d, nn.LayerNorm,
    nn.GroupNorm, nn.Embedding,
)


class Recorder:
    """Records one model (and optionally its optimizer) into a run file."""

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer | None, path: str,
                 options: Options, scaler: Any = None, sites: list[Site] | None = None,
                 rank: int = 0, world_size: int = 1) -> None:
        self.model, self.optimizer, self.path, self.options = model, optimizer, path, options
        self.scaler, self.rank, self.world_size = scaler, rank, world_size
        self.hooks = HookSet()
        self.names = {id(m): n for n, m in model.named_modules()}
        named = list(model.named_modules())
        groups = [(n, list(m.parameters(recurse=False))) for n, m in named]
        groups = [(n, [p for p in ps if p.requires_grad]) for n, ps in groups]
        groups = [(n, ps) for n, ps in groups if ps]
        self.grads = GradNorm([ps for _, ps in groups])
        self.updates = UpdateRatio(self.grads)
        self.smoothing = Smoothing(options.smoothing_samples)
        modules = [{"name": n or "<root>", "type": type(m).__name__,
                    "params": sum(p.numel() for p in m.parameters(recurse=False)), "order": -1}
                   for n, m in named]
        self.module_index = {n: i for i, (n, _) in enumerate(named)}
        meta = {"model_class": type(model).__name__, "rank": rank, "world_size": world_size,
                "created": time.time(), "path": str(path),
                "device": str(next(model.parameters()).device) if groups else "cpu"}
        self.journal = Journal(modules, [n or "<root>" for n, _ in groups], options.capacity,
                               options.max_events, meta)
        self.transfer = Transfer()
        self.seg = Segment()
        self.sites: list[Site] | None = None
        self._tracer: Tracer | None = None
        self._plans: dict[str, _Plan] = {}
        self._forward_id = 0
        self._extrema_cache: dict[int, tuple[Any, int, Any]] = {}  # see _once
        self._ss_cache: dict[int, tuple[Any, int, Any]] = {}
        self._pending: dict[int, dict[str, Any]] = {}
        self._backward_queued = False
        self._in_forward = 0
        self._forward_ok = False  # the root's forward returned (set by a non-always hook)
        self._paused = 0
        self._last_flush = (0, time.monotonic())
        self._step = 0
        self.closed = False
        self._attach(named)
        if sites is not None:
            self._set_sites(sites)

    # -- hook plumbing ---------------------------------------------------------------------
    def _guard(self, where: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            try:
                return fn(*args, **kwargs)
            except Exception as e:  # noqa: BLE001 - never raise into the training loop
                self.record_error(where, e)
                return None
        return wrapper

    def record_error(self, where: str, e: BaseException) -> None:
        for err in self.journal.errors:
            if err["where"] == where and err["type"] == type(e).__name__:
                err["count"] += 1
                return
        if len(self.journal.errors) < 100:
            self.journal.errors.append({"where": where, "type": type(e).__name__,
                                        "message": str(e)[:500], "count": 1,
                                        "first_step": self.journal.steps})

    def _attach(self, named: list[tuple[str, nn.Module]]) -> None:
        root = self.model
        self.hooks.forward_pre(root, self._guard("forward", self._begin_forward))
        # registered before the always-called hook: it runs only when the forward returned
        self.hooks.forward(root, self._guard("forward", self._forward_returned))
        self.hooks.forward(root, self._guard("forward", self._end_forward), always=True)
        if self.options.nonfinite:
            for name, module in named:
                if isinstance(module, FINITE_PRESERVING):
                    continue
                # parameter-free leaf ops (custom functions) can create NaN in backward without
                # any parameter gradient showing it first: their input gradient is checked too
                leaf_op = not list(module.children()) and not any(True for _ in module.parameters())
                self._plan(name, module).check = (True, leaf_op)
        if self.optimizer is not None:
            self.hooks.step_pre(self.optimizer, self._guard("optimizer", self._before_step))
            self.hooks.step_post(self.optimizer, self._guard("optimizer", self._after_step))

    def _plan(self, name: str, module: nn.Module) -> _Plan:
        """The one pair of forward hooks of ``module`` (non-finite check and site taps share it)."""
        plan = self._plans.get(name)
        if plan is None:
            plan = self._plans[name] = _Plan(self.module_index[name])
            self.hooks.forward_pre(module, self._guard("forward", self._pre_hook(plan)))
            self.hooks.forward(module, self._guard("forward", self._post_hook(plan)))
        return plan

    def remove_hooks(self) -> None:
        self.hooks.remove()
        self._plans.clear()

    @property
    def step(self) -> int:
        """Steps completed so far."""
        return self._step

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        """Nothing run inside is recorded (e.g. an integration's own forward passes)."""
        self._paused += 1
        try:
            yield
        finally:
            self._paused -= 1

    def begin_forward(self, module: nn.Module, args: Any, kwargs: Any) -> None:
        """Open a forward span by hand (guarded; see ``Context.begin_forward``)."""
        self._guard("forward", self._begin_forward)(module, args, kwargs)

    def end_forward(self, module: nn.Module, args: Any, kwargs: Any, output: Any) -> None:
        """Close a span opened with ``begin_forward`` (guarded)."""
        self._forward_ok = True
        self._guard("forward", self._end_forward)(module, args, kwargs, output)

    def state(self) -> dict[str, Any]:
        """The run file's state as of now (host memory only)."""
        return self.journal.state(self.options.to_dict())

    def _recording(self) -> bool:
        return not (self.closed or self._paused) and (
            torch.is_grad_enabled() or self.options.record_eval)

    def _training(self) -> bool:
        """A recorded forward that trains: only these feed the per-step site statistics
        (with ``record_eval`` a validation forward is checked for NaN/Inf, not averaged in)."""
        return torch.is_grad_enabled() and self._recording()

    # -- forward ---------------------------------------------------------------------------
    def _begin_forward(self, module: nn.Module, args: Any, kwargs: Any) -> None:
        self._in_forward += 1
        if self._in_forward > 1 or not self._recording():
            return
        if self.seg.stepped:  # no log() since the optimizer step: the step ended there
            self.end_segment()
        self.seg.forwards += 1
        self._forward_id += 1
        self._extrema_cache.clear()
        self._ss_cache.clear()
        self._pending.clear()
        self._forward_ok = False
        if self.sites is None and self._tracer is None:
            # with sites=False only the module order is traced (no TorchFunctionMode)
            self._tracer = Tracer(self.model, self.hooks.group(), graph=self.options.sites)
            self._tracer.attach(root=False)
            self._tracer.__enter__()

    def _forward_returned(self, module: nn.Module, args: Any, kwargs: Any, output: Any) -> None:
        self._forward_ok = True

    def _end_forward(self, module: nn.Module, args: Any, kwargs: Any, output: Any) -> None:
        self._in_forward = max(0, self._in_forward - 1)
        if self._in_forward:
            return
        if self._tracer is not None:
            tracer, self._tracer = self._tracer, None
            tracer.__exit__(None, None, None)
            tracer.detach()
            if not self._forward_ok:
                pass  # the forward raised: its trace is partial, discover on the next forward
            elif tracer.failed is not None:
                self.record_error("discovery", tracer.failed)
                self._set_sites([])
            else:
                self.journal.set_order({n or "<root>": i
                                        for i, n in enumerate(tracer.module_order)})
                try:
                    sites = sites_from(tracer, self.model)
                except Exception as e:  # noqa: BLE001 - record, and stop retrying every step
                    self.record_error("discovery", e)
                    sites = []
                self._set_sites(sites)
        if not self._recording():
            return
        for _, t in iter_tensors(output):
            if t.requires_grad and t.grad_fn is not None:
                self.hooks.tensor(t, self._guard("backward", self._on_output_grad))
                break

    def _live(self, plan: _Plan) -> bool:
        """Inside a recorded forward; the plan's per-forward state is reset on first use."""
        if not self._in_forward or not self._recording():
            return False
        if plan.forward_id != self._forward_id:
            plan.forward_id = self._forward_id
            plan.inputs.clear()
            plan.calls = -1
        return True

    def _pre_hook(self, plan: _Plan) -> Callable[..., None]:
        def hook(module: nn.Module, args: Any, kwargs: Any) -> None:
            if self._live(plan):
                self._untraced(self._before, plan, args, kwargs)
        return hook

    def _post_hook(self, plan: _Plan) -> Callable[..., None]:
        def hook(module: nn.Module, args: Any, kwargs: Any, output: Any) -> None:
            # the root's own hook runs after _end_forward: the forward id still matches
            if plan.forward_id == self._forward_id and self._recording():
                self._untraced(self._after, plan, args, kwargs, output)
        return hook

    def _untraced(self, fn: Callable[..., None], *args: Any) -> None:
        """Run a measurement; during the discovery forward, outside the trace."""
        if self._tracer is None:
            fn(*args)
            return
        with self._tracer.paused():
            fn(*args)

    def _before(self, plan: _Plan, args: Any, kwargs: Any) -> None:
        plan.calls += 1
        if plan.check:
            plan.inputs.append(self._extrema(_inputs(args, kwargs)))
        if plan.taps_in:
            merged = call_inputs(args, kwargs)
            for i, role, tap in plan.taps_in:
                if tap.call == plan.calls:
                    t = get_path(merged, tap.path)
                    if t is not None:
                        self._site_value(i, role, t)

    def _after(self, plan: _Plan, args: Any, kwargs: Any, output: Any) -> None:
        if plan.check and plan.inputs:
            slots_in = plan.inputs.pop()
            slots_out = self._extrema(_outputs(output))
            if slots_out is not None:
                # [in min, in max, out min, out max] in the tensors' own dtype: exact, no
                # overflow; an input without floats (token ids) reads as 0
                self.seg.add_row("fwd", plan.index, (slots_in or (-1, -1)) + slots_out)
            if plan.check[1] and torch.is_grad_enabled():
                self._check_input_grads(plan.index, args, kwargs)
        for i, role, tap in plan.taps_out:
            if tap.call == plan.calls:
                t = get_path(output, tap.path)
                if t is not None:
                    self._site_value(i, role, t)

    def _extrema(self, tensors: list[torch.Tensor]) -> tuple[int, int] | None:
        """Pool slots of ``(min, max)`` over the floating tensors: both finite exactly when every
        element is. Unlike a norm this cannot overflow: huge but finite activations stay finite.
        Each tensor is reduced at most once per version per forward."""
        if len(tensors) == 1:
            return self._extremum(tensors[0])
        found = [s for s in map(self._extremum, tensors) if s is not None]
        if len(found) < 2:
            return found[0] if found else None
        pool = self.seg.pool
        lo = torch.stack([pool[a] for a, _ in found]).amin()
        hi = torch.stack([pool[b] for _, b in found]).amax()
        return self.seg.put(lo), self.seg.put(hi)

    def _extremum(self, t: torch.Tensor) -> tuple[int, int] | None:
        def measure(t: torch.Tensor) -> tuple[int, int] | None:
            if not t.is_floating_point() or not t.numel():
                return None
            lo, hi = extrema(t)
            return self.seg.put(lo), self.seg.put(hi)
        return _once(self._extrema_cache, t, measure)

    def _sum_squares(self, t: torch.Tensor) -> int:
        """Pool slot of ``||t||^2`` (site magnitudes)."""
        return _once(self._ss_cache, t, lambda t: self.seg.put(sum_squares(t)))

    def _check_input_grads(self, index: int, args: Any, kwargs: Any) -> None:
        def on_grad(g: torch.Tensor) -> None:
            if g.numel():
                lo, hi = extrema(g)
                self.seg.add_row("bwd", index, (self.seg.put(lo), self.seg.put(hi)))

        for t in _inputs(args, kwargs):
            if t.is_floating_point() and t.requires_grad:
                self.hooks.tensor(t, self._guard("backward", on_grad))

    # -- residual sites --------------------------------------------------------------------
    def _set_sites(self, sites: list[Site]) -> None:
        self.sites = sites
        self.journal.set_sites([s.to_dict() for s in sites])
        if not sites and self.options.smoothing_every and self.options.sites:
            self._watch_layers()
        if not self.options.sites:
            return
        modules = dict(self.model.named_modules())
        for i, site in enumerate(sites):
            if not site.measurable:
                continue
            for role in ("skip", "branch", "result", "source"):
                tap = getattr(site, role)
                module = modules.get(tap.module) if tap is not None else None
                if module is None or tap.module not in self.module_index:
                    continue
                plan = self._plan(tap.module, module)
                (plan.taps_in if tap.where == "input" else plan.taps_out).append((i, role, tap))

    def _watch_layers(self) -> None:
        """No residual site: sample over-smoothing at the outputs of the repeated layers instead
        (a plain deep GCN or MLP smooths too, and has no addition to measure it at)."""
        layers = repeated_layers(self.model)
        if not layers:
            return
        self.journal.set_layers([name for name, _ in layers])
        for i, (_, module) in enumerate(layers):
            self.hooks.forward(module, self._guard("layers", self._layer_out(i)))

    def _layer_out(self, i: int) -> Callable[..., None]:
        def hook(module: nn.Module, args: Any, kwargs: Any, output: Any) -> None:
            if not (self._in_forward and self._recording()):
                return
            if not _due(self.options.smoothing_every, self._step):
                return
            t = next((t for _, t in iter_tensors(output) if t.is_floating_point()), None)
            if t is None:
                return
            measured = self.smoothing(t)
            if measured is not None:
                self.seg.add_row("lsmooth", i, tuple(map(self.seg.put, measured)))
        return hook

    def _site_value(self, i: int, role: str, t: torch.Tensor) -> None:
        """One operand of site i arrived. Magnitudes are pooled as sums of squares (the host
        takes the roots): ``||skip||^2``, ``||branch||^2``, and ``||skip + branch||^2`` or, when
        the sum is not tapped, ``<skip, branch>`` (one fused dot instead of materialising it)."""
        site = self.sites[i]  # type: ignore[index]
        p = self._pending.setdefault(i, {})
        p[role] = t
        p[role + "_fn"] = t.grad_fn  # before any in-place op rebases it (gradient share)
        if role == "skip":
            p["skip_ss"] = self._sum_squares(t)
        elif role == "branch":
            p["branch_ss"] = self._sum_squares(t)
            if site.result is None and "skip" in p:
                p["cross"] = self.seg.put(inner(p["skip"], t))
        elif role == "result":
            p["sum_ss"] = self._sum_squares(t)
            if site.branch is None and "skip" in p:
                p["branch_ss"] = self.seg.put(sum_squares(t.detach() - p["skip"].detach()))
                p["branch"] = None
        if "skip_ss" in p and "branch_ss" in p and ("sum_ss" in p or "cross" in p):
            self._complete(i, self._pending.pop(i))

    def _complete(self, i: int, p: dict[str, Any]) -> None:
        site = self.sites[i]  # type: ignore[index]
        seg = self.seg
        skip = p["skip"]
        total = p.get("result")
        n = skip.numel()
        seg.add_row("site", i, (
            p["skip_ss"], p["branch_ss"], p.get("sum_ss", -1), p.get("cross", -1),
            const(n), const(n if p.get("branch") is None else p["branch"].numel()),
            const(0 if total is None else total.numel()),
        ))
        if _due(self.options.smoothing_every, self._step):
            measured = (self.smoothing(total) if total is not None
                        else self.smoothing.of_sum(skip, p["branch"]))
            if measured is not None:
                seg.add_row("smooth", i, (seg.put(measured[0]), seg.put(measured[1])))
        if _due(self.options.grad_share_every, self._step) and torch.is_grad_enabled():
            self._grad_share(i, site, p)

    # -- gradient branch share -----------------------------------------------------------------
    def _grad_share(self, i: int, site: Site, p: dict[str, Any]) -> None:
        """share = |g_branch| / (|g_branch| + |g_skip|) at the site's source x. Each part is read
        where it enters x: hooks on the autograd nodes of the branch (and of a projection
        shortcut) that consume x; an identity skip passes the sum's gradient on unchanged."""
        identity = site.kind == "identity" and site.source == site.skip
        x_fn = p.get("skip_fn") if identity else p.get("source_fn")
        skip_fn = x_fn if identity else p.get("skip_fn")
        branch_fn = p.get("branch_fn") or _other_operand(p.get("result_fn"), skip_fn)
        if x_fn is None or branch_fn is None:
            return
        branch_nodes = _consumers(branch_fn, x_fn)
        if not branch_nodes:
            return
        seg, box = self.seg, {}

        def arrived(role: str) -> Callable[[torch.Tensor], None]:
            def store(g: torch.Tensor) -> None:
                box[role] = seg.put(sum_squares(g))
                if len(box) == 2:
                    seg.add_row("gshare", i, (box["skip"], box["branch"]))
            return store

        if identity:
            carrier = p.get("result") if p.get("result") is not None else p.get("branch")
            if carrier is None or not carrier.requires_grad:
                return
            self.hooks.tensor(carrier, self._guard("backward", arrived("skip")))
        else:
            skip_nodes = _consumers(skip_fn, x_fn)
            if not skip_nodes:
                return
            self._sum_grads(skip_nodes, arrived("skip"))
        self._sum_grads(branch_nodes, arrived("branch"))

    def _sum_grads(self, consumers: list[tuple[Any, int]],
                   done: Callable[[torch.Tensor], None]) -> None:
        """Hook each ``(node, k)``; once all have run, ``done(sum of their k-th input grads)``:
        the gradient that reaches their common input through them."""
        parts: list[torch.Tensor] = []

        def collect(k: int) -> Callable[..., None]:
            def hook(grad_inputs: Any, grad_outputs: Any) -> None:
                if grad_inputs[k] is not None:
                    parts.append(grad_inputs[k])
                if len(parts) == len(consumers):
                    done(parts[0] if len(parts) == 1 else torch.stack(parts).sum(0))
            return hook

        for node, k in consumers:
            self.hooks.node(node, self._guard("backward", collect(k)))

    # -- backward and optimizer ------------------------------------------------------------
    def _on_output_grad(self, grad: torch.Tensor) -> None:
        if not self._backward_queued:
            self._backward_queued = True
            engine = torch.autograd.Variable._execution_engine  # type: ignore[attr-defined]
            measure = self._guard("backward", self._after_backward)
            # queued again from inside the first callback, it runs after every callback queued
            # during backward: DDP's all-reduce and FSDP's reduce-scatter have then finished
            engine.queue_callback(lambda: engine.queue_callback(measure))

    def _after_backward(self) -> None:
        self._backward_queued = False
        self.seg.backwards += 1
        scale = getattr(self.scaler, "_scale", None)
        if not (isinstance(scale, torch.Tensor) and self.scaler.is_enabled()):
            scale = None
        with torch.no_grad():
            # with accumulation, the last backward of the step holds the accumulated gradient
            raw = self.grads(scale)
        if raw is not None:
            self.seg.vectors["grad_l2"], self.seg.vectors["grad_max"] = raw
        else:
            self.seg.vectors.pop("grad_l2", None)
            self.seg.vectors.pop("grad_max", None)

    def _before_step(self, optimizer: Any, args: Any, kwargs: Any) -> None:
        if _due(self.options.update_every, self._step):
            self.updates.before()

    def _after_step(self, optimizer: Any, args: Any, kwargs: Any) -> None:
        self.seg.vectors.update(self.updates.after())
        lr = optimizer.param_groups[0].get("lr") if optimizer.param_groups else None
        if isinstance(lr, (int, float)):
            self.seg.scalars.setdefault("lr", float(lr))
        self.seg.stepped = True

    # -- segments, flushing, closing -------------------------------------------------------
    def log(self, scalars: dict[str, Any]) -> None:
        for name, value in scalars.items():
            if isinstance(value, torch.Tensor):
                self.seg.tensor_scalars[name] = value.detach()
            elif value is not None:
                self.seg.scalars[name] = float(value)
        self.end_segment()

    def end_segment(self) -> None:
        seg, self.seg = self.seg, Segment()
        self._extrema_cache.clear()  # their slots point into the finished segment's pool
        if not self._in_forward:
            self.hooks.forget_transient()
        self._ss_cache.clear()
        if seg.empty:
            return
        with torch.no_grad():
            flat, layout = seg.pack()
        meta = SegmentMeta(seg.forwards, seg.backwards, seg.stepped, dict(seg.scalars),
                           self.optimizer is not None)
        self.transfer.submit(meta, flat, layout)
        if seg.stepped or self.optimizer is None:
            self._step += 1
        self.drain()
        self._maybe_flush()

    def drain(self, wait: bool = False) -> None:
        for meta, flat, layout in self.transfer.ready(wait):
            blocks = unpack(flat, layout, DECODE)
            blocks["vec"] = self._fold(blocks["vec"])
            self.journal.consume(meta, blocks, self.rank)

    def _fold(self, raw: dict[str, Any]) -> dict[str, Any]:
        """Per-parameter vectors -> the journal's per-module ones (host side of GradNorm)."""
        grads = self.grads
        out = {k: v for k, v in raw.items() if not k.startswith(("grad_", "param_", "update_"))}
        for kind in ("grad", "param"):
            if f"{kind}_l2" in raw:
                out[f"{kind}_norm"] = grads.fold(raw[f"{kind}_l2"])
            if f"{kind}_max" in raw:
                out[f"{kind}_bad"] = grads.bad(raw[f"{kind}_max"])
        if "update_l2" in raw and "update_old_l2" in raw:
            out["update_ratio"] = (grads.fold(raw["update_l2"])
                                   / np.maximum(grads.fold(raw["update_old_l2"]), 1e-12))
        return out

    def _maybe_flush(self) -> None:
        steps, when = self._last_flush
        o = self.options
        if (o.flush_every and self._step - steps >= o.flush_every) or (
            o.flush_seconds and time.monotonic() - when >= o.flush_seconds
        ):
            self.flush()

    def flush(self) -> None:
        self.drain(wait=True)
        runfile.write(self.journal.state(self.options.to_dict()), self.path)
        self._last_flush = (self._step, time.monotonic())

    def close(self) -> None:
        if self.closed:
            return
        try:
            if self._tracer is not None:
                tracer, self._tracer = self._tracer, None
                tracer.__exit__(None, None, None)
                tracer.detach()
            self.end_segment()
            self.flush()
        finally:
            self.closed = True
            self.remove_hooks()


class _Plan:
    """What the forward hooks of one module do, and their state within the current forward."""

    __slots__ = ("index", "check", "taps_in", "taps_out", "forward_id", "calls", "inputs")

    def __init__(self, index: int) -> None:
        self.index = index
        self.check: tuple[bool, bool] | tuple[()] = ()  # (check, also check input gradients)
        self.taps_in: list[tuple[int, str, Any]] = []   # (site, role, tap)
        self.taps_out: list[tuple[int, str, Any]] = []
        self.forward_id = -1
        self.calls = -1  # calls of the module in this forward (taps name the call they read)
        self.inputs: list[tuple[int, int] | None] = []  # input extrema slots, one per open call


def _once(cache: dict[int, tuple[Any, int, Any]], t: torch.Tensor,
          measure: Callable[[torch.Tensor], Any]) -> Any:
    """``measure(t)`` at most once per tensor version per forward: the cache is keyed by id and
    version and holds a weak reference, so it keeps no activation alive."""
    key, version = id(t), tensor_version(t)
    entry = cache.get(key)
    if entry is not None and entry[1] == version and entry[0]() is t:
        return entry[2]
    value = measure(t)
    cache[key] = (weakref.ref(t), version, value)
    return value


def _inputs(args: tuple[Any, ...], kwargs: dict[str, Any]) -> list[torch.Tensor]:
    """The tensors among a module's inputs (fast path for the usual single tensor)."""
    if not kwargs and len(args) == 1 and isinstance(args[0], torch.Tensor):
        return [args[0]]
    return [t for _, t in iter_tensors((args, kwargs))]


def _outputs(output: Any) -> list[torch.Tensor]:
    if isinstance(output, torch.Tensor):
        return [output]
    return [t for _, t in iter_tensors(output)]


def repeated_layers(model: nn.Module, min_layers: int = 3) -> list[tuple[str, nn.Module]]:
    """The longest ModuleList/Sequential of same-type, parameterised modules: the model's layers."""
    best: list[tuple[str, nn.Module]] = []
    for name, module in model.named_modules():
        if not isinstance(module, (nn.ModuleList, nn.Sequential)):
            continue
        children = list(module.named_children())
        if len(children) < max(min_layers, len(best) + 1):
            continue
        kinds = {type(child) for _, child in children}
        if len(kinds) == 1 and any(True for _ in children[0][1].parameters()):
            prefix = f"{name}." if name else ""
            best = [(prefix + n, child) for n, child in children]
    return best


def _consumers(start: Any, target: Any, limit: int = 512) -> list[tuple[Any, int]]:
    """Autograd nodes reachable from ``start`` (without passing ``target``) that take
    ``target``'s output as their k-th input: ``[(node, k), ...]``; empty when the graph is larger
    than ``limit`` nodes (an incomplete list would give a wrong sum)."""
    if start is None or target is None:
        return []
    found: list[tuple[Any, int]] = []
    todo: list[Any] = [start]
    seen: set[int] = set()
    while todo:
        node = todo.pop()
        if node is None or id(node) in seen:
            continue
        if len(seen) >= limit:
            return []
        seen.add(id(node))
        for k, (nxt, _) in enumerate(node.next_functions):
            if nxt is target:
                found.append((node, k))
            elif nxt is not None:
                todo.append(nxt)
    return found


def _other_operand(sum_fn: Any, skip_fn: Any) -> Any:
    """The branch's autograd node from the sum's: a branch that is no module's output (such as
    ``x + scale * h``) is the operand of the addition that is not the skip."""
    if sum_fn is None or skip_fn is None:
        return None
    others = [f for f, _ in sum_fn.next_functions if f is not None and f is not skip_fn]
    return others[0] if len(others) == 1 else None


def _due(every: int, step: int) -> bool:
    return every > 0 and step % every == 0
