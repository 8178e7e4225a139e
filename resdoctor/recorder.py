"""Recorder: owns every hook, measures through the sensors, hands segments to the journal.

Per step: module hooks measure activations (norms reused through a per-forward cache), a tensor
hook on the model output queues one end-of-backward callback for fused gradient norms, optimizer
hooks measure parameters and updates. ``end_segment()`` packs everything into one tensor and
transfers it once. Every hook body runs under ``_guard``: an error inside resdoctor is counted
in the run file, never raised into training.
"""

from __future__ import annotations

import functools
import time
import weakref
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from resdoctor import runfile
from resdoctor._hooks import HookSet
from resdoctor._pytree import call_inputs, get_path, iter_tensors
from resdoctor._segment import Segment, Transfer, unpack
from resdoctor._trace import Tracer, _version
from resdoctor.discovery import Site, sites_from
from resdoctor.journal import Journal, SegmentMeta
from resdoctor.options import Options
from resdoctor.sensors import GradNorm, SiteProbe, Smoothing, UpdateRatio
from resdoctor.sensors.site_probe import extrema, rms

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
        self.scaler, self.rank = scaler, rank
        self.hooks = HookSet()
        self._site_hooks = HookSet()
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
        self._norm_cache: dict[int, tuple[weakref.ref, int, torch.Tensor]] = {}
        self._extrema_cache: dict[int, tuple[weakref.ref, int, torch.Tensor]] = {}
        self._calls: dict[str, int] = {}
        self._pending: dict[int, dict[str, Any]] = {}
        self._in_stack: dict[str, list[torch.Tensor | None]] = {}
        self._backward_queued = False
        self._in_forward = 0
        self._last_flush = (0, time.monotonic())
        self._step = 0
        self.closed = False
        self._grad_checked: set[str] = set()
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
        self.hooks.forward(root, self._guard("forward", self._end_forward), always=True)
        if self.options.nonfinite:
            # parameter-free leaf ops (custom functions) can create NaN in backward without any
            # parameter gradient showing it first: their input gradient is checked too
            self._grad_checked = {
                n for n, m in named
                if not isinstance(m, FINITE_PRESERVING) and not list(m.children())
                and not any(True for _ in m.parameters())
            }
            for name, module in named:
                if not isinstance(module, FINITE_PRESERVING):
                    self.hooks.forward_pre(module, self._guard("forward", self._check_in(name)))
                    self.hooks.forward(module, self._guard("forward", self._check_out(name)))
        if self.optimizer is not None:
            self.hooks.step_pre(self.optimizer, self._guard("optimizer", self._before_step))
            self.hooks.step_post(self.optimizer, self._guard("optimizer", self._after_step))

    def _recording(self) -> bool:
        return not self.closed and (torch.is_grad_enabled() or self.options.record_eval)

    # -- forward ---------------------------------------------------------------------------
    def _begin_forward(self, module: nn.Module, args: Any, kwargs: Any) -> None:
        self._in_forward += 1
        if self._in_forward > 1 or not self._recording():
            return
        if self.seg.stepped:  # no log() since the optimizer step: the step ended there
            self.end_segment()
        self.seg.forwards += 1
        self._norm_cache.clear()
        self._extrema_cache.clear()
        self._calls.clear()
        self._pending.clear()
        self._in_stack.clear()
        if self.sites is None and self._tracer is None:
            self._tracer = Tracer(self.model)
            self._tracer.attach(root=False)
            self._tracer.__enter__()

    def _end_forward(self, module: nn.Module, args: Any, kwargs: Any, output: Any) -> None:
        self._in_forward = max(0, self._in_forward - 1)
        if self._in_forward:
            return
        if self._tracer is not None:
            tracer, self._tracer = self._tracer, None
            tracer.__exit__(None, None, None)
            tracer.detach()
            if tracer.failed is not None:
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
                t.register_hook(self._guard("backward", self._on_output_grad))
                break

    def _cached(self, cache: dict, t: torch.Tensor, fn: Callable[[torch.Tensor], Any]) -> Any:
        """``fn(t)`` computed at most once per tensor version per forward."""
        entry = cache.get(id(t))
        version = _version(t)
        if entry is not None and entry[0]() is t and entry[1] == version:
            return entry[2]
        with torch.no_grad(), self._paused():
            value = fn(t)
        cache[id(t)] = (weakref.ref(t), version, value)
        return value

    def _norm(self, t: torch.Tensor) -> torch.Tensor:
        """RMS of ``t`` (site magnitudes)."""
        return self._cached(self._norm_cache, t, rms)

    def _extrema(self, tensors: list[torch.Tensor]) -> torch.Tensor | None:
        """``[min, max]`` over the floating tensors: finite exactly when every element is.

        Unlike a norm this cannot overflow: activations that are huge but finite stay finite.
        """
        floats = [t for t in tensors if t.is_floating_point()]
        if not floats:
            return None
        pairs = [self._cached(self._extrema_cache, t, extrema) for t in floats]
        if len(pairs) == 1:
            return pairs[0]
        with self._paused():
            stacked = torch.stack([p.to(pairs[0].device) for p in pairs])  # [k, 2]
            return torch.stack([stacked[:, 0].amin(), stacked[:, 1].amax()])

    def _paused(self) -> Any:
        return self._tracer.paused() if self._tracer is not None else _NULL

    def _check_in(self, name: str) -> Callable[..., None]:
        def hook(module: nn.Module, args: Any, kwargs: Any) -> None:
            if self._in_forward and self._recording():
                ts = [t for _, t in iter_tensors((args, kwargs))]
                self._in_stack.setdefault(name, []).append(self._extrema(ts))
        return hook

    def _check_out(self, name: str) -> Callable[..., None]:
        index = self.module_index[name]

        def hook(module: nn.Module, args: Any, kwargs: Any, output: Any) -> None:
            stack = self._in_stack.get(name)
            if not stack or not self._recording():
                return
            span_in = stack.pop()
            span_out = self._extrema([t for _, t in iter_tensors(output)])
            if span_out is None:
                return
            with self._paused():
                if span_in is None or span_in.device != span_out.device:
                    span_in = torch.zeros_like(span_out)  # e.g. token ids into an embedding
                # [in min, in max, out min, out max] in the tensors' own dtype: exact, no overflow
                self.seg.add(("fwd", index), torch.cat([span_in, span_out]))
            if name in self._grad_checked and torch.is_grad_enabled():
                self._check_input_grads(index, args, kwargs)
        return hook

    def _check_input_grads(self, index: int, args: Any, kwargs: Any) -> None:
        def on_grad(g: torch.Tensor) -> None:
            with torch.no_grad():
                self.seg.add(("bwd", index), extrema(g))

        for _, t in iter_tensors((args, kwargs)):
            if t.is_floating_point() and t.requires_grad:
                t.register_hook(self._guard("backward", on_grad))

    # -- residual sites --------------------------------------------------------------------
    def _set_sites(self, sites: list[Site]) -> None:
        self.sites = sites
        self.journal.set_sites([s.to_dict() for s in sites])
        if not sites and self.options.smoothing_every:
            self._watch_layers()
        if not self.options.sites:
            return
        taps: dict[str, list[tuple[int, str, Any]]] = {}
        for i, site in enumerate(sites):
            if not site.measurable:
                continue
            for role in ("skip", "branch", "result", "source"):
                tap = getattr(site, role)
                if tap is not None:
                    taps.setdefault(tap.module, []).append((i, role, tap))
        modules = dict(self.model.named_modules())
        for name, items in taps.items():
            module = modules.get(name)
            if module is None:
                continue
            ins = [x for x in items if x[2].where == "input"]
            outs = [x for x in items if x[2].where == "output"]
            self._site_hooks.forward_pre(module, self._guard("sites", self._tap_in(name, ins)))
            if outs:
                self._site_hooks.forward(module, self._guard("sites", self._tap_out(name, outs)))

    def _watch_layers(self) -> None:
        """No residual site: sample over-smoothing at the outputs of the repeated layers instead
        (a plain deep GCN or MLP smooths too, and has no addition to measure it at)."""
        layers = repeated_layers(self.model)
        if not layers:
            return
        self.journal.set_layers([name for name, _ in layers])
        for i, (_, module) in enumerate(layers):
            self._site_hooks.forward(module, self._guard("layers", self._layer_out(i)))

    def _layer_out(self, i: int) -> Callable[..., None]:
        def hook(module: nn.Module, args: Any, kwargs: Any, output: Any) -> None:
            if not (self._in_forward and self._recording()):
                return
            if not _due(self.options.smoothing_every, self._step):
                return
            t = next((t for _, t in iter_tensors(output) if t.is_floating_point()), None)
            if t is None:
                return
            with torch.no_grad():
                measured = self.smoothing(t)
                if measured is not None:
                    self.seg.add(("lsmooth", i), torch.stack(measured))
        return hook

    def _tap_in(self, name: str, items: list[tuple[int, str, Any]]) -> Callable[..., None]:
        def hook(module: nn.Module, args: Any, kwargs: Any) -> None:
            call = self._calls.get(name, -1) + 1
            self._calls[name] = call
            if not items or not (self._in_forward and self._recording()):
                return
            merged = call_inputs(args, kwargs)
            for i, role, tap in items:
                if tap.call == call:
                    t = get_path(merged, tap.path)
                    if t is not None:
                        self._site_value(i, role, t)
        return hook

    def _tap_out(self, name: str, items: list[tuple[int, str, Any]]) -> Callable[..., None]:
        def hook(module: nn.Module, args: Any, kwargs: Any, output: Any) -> None:
            if not (self._in_forward and self._recording()):
                return
            call = self._calls.get(name, 0)
            for i, role, tap in items:
                if tap.call == call:
                    t = get_path(output, tap.path)
                    if t is not None:
                        self._site_value(i, role, t)
        return hook

    def _site_value(self, i: int, role: str, t: torch.Tensor) -> None:
        site = self.sites[i]  # type: ignore[index]
        p = self._pending.setdefault(i, {})
        p[role] = t
        with torch.no_grad():
            if role == "skip":
                p["skip_rms"] = self._norm(t)
            elif role == "branch":
                p["branch_rms"] = self._norm(t)
                if site.result is None and "skip" in p:
                    p["stream"] = SiteProbe.from_operands(p["skip"], t, p["skip_rms"],
                                                          p["branch_rms"])
            elif role == "result":
                p["stream"] = self._norm(t)
                if site.branch is None and "skip" in p:
                    p["branch_rms"] = SiteProbe.branch_from_sum(t, p["skip"])
        if "skip_rms" in p and "branch_rms" in p and "stream" in p:
            self._complete(i, self._pending.pop(i))

    def _complete(self, i: int, p: dict[str, Any]) -> None:
        site = self.sites[i]  # type: ignore[index]
        with torch.no_grad():
            self.seg.add(("site", i), torch.stack([p["skip_rms"], p["branch_rms"], p["stream"]]))
            if _due(self.options.smoothing_every, self._step):
                stream = p.get("result")
                if stream is None:
                    stream = p["skip"] + p["branch"]
                measured = self.smoothing(stream)
                if measured is not None:
                    self.seg.add(("smooth", i), torch.stack(measured))
        if _due(self.options.grad_share_every, self._step) and torch.is_grad_enabled():
            self._grad_share(i, site, p)

    # -- gradient branch share -----------------------------------------------------------------
    def _grad_share(self, i: int, site: Site, p: dict[str, Any]) -> None:
        """share = |g_branch| / (|g_branch| + |g_skip|) at the site's source x, where the
        gradient reaching x is split into what came through the skip and through the branch."""
        x = p["skip"] if site.kind == "identity" and site.source == site.skip else p.get("source")
        if x is None or not x.requires_grad:
            return
        box: dict[str, torch.Tensor] = {}
        if x is p["skip"]:
            carrier = p.get("result") if p.get("result") is not None else p.get("branch")
            if carrier is None or not carrier.requires_grad:
                return
            carrier.register_hook(self._guard("backward", lambda g: box.__setitem__("skip", g)))
        elif not self._hook_shortcut(p["skip"], x, box):
            return

        def on_x(g_total: torch.Tensor) -> None:
            g_skip = box.pop("skip", None)
            if g_skip is None:
                return
            with torch.no_grad():
                skip = torch.linalg.vector_norm(g_skip, dtype=torch.float32)
                branch = torch.linalg.vector_norm(g_total - g_skip, dtype=torch.float32)
                self.seg.add(("gshare", i), (branch / (branch + skip).clamp_min(1e-30)).reshape(1))

        x.register_hook(self._guard("backward", on_x))

    def _hook_shortcut(self, skip: torch.Tensor, x: torch.Tensor, box: dict) -> bool:
        """Hook the autograd nodes of the shortcut path that consume x: their input gradient is
        the gradient reaching x through the skip."""
        if x.grad_fn is None or skip.grad_fn is None:
            return False
        found = _consumers(skip.grad_fn, x.grad_fn)

        def collect(k: int) -> Callable[..., None]:
            def hook(grad_inputs: Any, grad_outputs: Any) -> None:
                g = grad_inputs[k]
                if g is not None:
                    box["skip"] = g if "skip" not in box else box["skip"] + g
            return hook

        for node, k in found:
            node.register_hook(self._guard("backward", collect(k)))
        return bool(found)

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
            norms, bad = self.grads(scale)
            self.seg.vectors["grad_norm"] = norms
            self.seg.vectors["grad_bad"] = bad

    def _before_step(self, optimizer: Any, args: Any, kwargs: Any) -> None:
        if _due(self.options.update_every, self._step):
            self.updates.before()

    def _after_step(self, optimizer: Any, args: Any, kwargs: Any) -> None:
        param_norm, bad, ratio = self.updates.after()
        self.seg.vectors["param_norm"] = param_norm
        self.seg.vectors["param_bad"] = bad
        if ratio is not None:
            self.seg.vectors["update_ratio"] = ratio
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
            self.journal.consume(meta, unpack(flat, layout), self.rank)

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
            self.hooks.remove()
            self._site_hooks.remove()


class _Null:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: Any) -> None:
        return None


_NULL = _Null()


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


def _consumers(start: Any, target: Any, limit: int = 64) -> list[tuple[Any, int]]:
    """Autograd nodes reachable from ``start`` (before ``target``) that take ``target``'s output
    as their k-th input: ``[(node, k), ...]``."""
    found: list[tuple[Any, int]] = []
    todo: list[Any] = [start]
    seen: set[int] = set()
    while todo and len(seen) < limit:
        node = todo.pop()
        if node is None or id(node) in seen:
            continue
        seen.add(id(node))
        for k, (nxt, _) in enumerate(node.next_functions):
            if nxt is target:
                found.append((node, k))
            elif nxt is not None:
                todo.append(nxt)
    return found


def _due(every: int, step: int) -> bool:
    return every > 0 and step % every == 0
