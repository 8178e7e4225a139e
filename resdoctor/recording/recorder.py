"""Recorder: owns every hook and dispatches to the sensors; it measures nothing itself.

The sensors declare what they need (``sensors.needs``); the recorder places one forward
pre/post hook pair per module that any of them needs, a tensor hook on the model output that
queues one end-of-backward callback, and optimizer step hooks. ``end_segment()`` packs what the
sensors pooled into one tensor and transfers it once. Every hook body runs under ``_guard``: an
error inside resdoctor is counted in the run file, never raised into training.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from resdoctor.recording.addition_taps import AdditionTaps
from resdoctor.recording.discovery import Site, architecture, repeated_layers, sites_from
from resdoctor.recording.flusher import Flusher
from resdoctor.recording.hooks import HookSet
from resdoctor.recording.intake import Intake
from resdoctor.recording.journal import Journal, SegmentMeta
from resdoctor.recording.options import Options
from resdoctor.recording.pytree import call_inputs, get_path, iter_tensors
from resdoctor.recording.segment import Buffers, Segment, Unpacker
from resdoctor.recording.sensors import (
    GradNorm,
    GradShare,
    NonFinite,
    SiteMagnitude,
    Smoothing,
    Units,
    UpdateRatio,
)
from resdoctor.recording.sensors.nonfinite import summing_bias
from resdoctor.recording.sensors.units import kind as unit_kind
from resdoctor.recording.trace import Tracer
from resdoctor.runfile.layout import RunState

# transferred segments folded into the journal together (more: fewer host operations per step,
# a journal further behind the training between reads; every read settles it first)
INTAKE_BATCH = 256


class Recorder:
    """Records one model (and optionally its optimizer) into a run file."""

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer | Sequence[torch.optim.Optimizer] | None,
        path: str,
        options: Options,
        scaler: Any = None,
        traced: Tracer | None = None,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        self.optimizers = _optimizers(optimizer)
        self.optimizer = self.optimizers[0] if self.optimizers else None
        self.model, self.path, self.options = model, path, options
        self.scaler, self.rank, self.world_size = scaler, rank, world_size
        self.hooks = HookSet()
        # torch.compile'd: hooks inside the compiled graph cannot run (they are compiled away),
        # so only the wrapper's boundary is hooked; modules are named as in the original
        inner = compiled_module(model)
        self.compiled = inner is not None
        named = list((inner or model).named_modules())
        self.names = {id(m): n for n, m in named}
        groups = [(n, list(m.parameters(recurse=False))) for n, m in named]
        groups = [(n, [p for p in ps if p.requires_grad]) for n, ps in groups]
        groups = [(n, ps) for n, ps in groups if ps]
        # the sensors; the hooks placed below are the ones their needs call for
        self.grads = GradNorm([ps for _, ps in groups])
        # modules none of whose parameters an optimizer steps: update ratio not measured (NaN)
        stepped = {id(p) for o in self.optimizers for g in o.param_groups for p in g["params"]}
        self._unstepped = np.array([not any(id(p) in stepped for p in ps) for _, ps in groups])
        self.updates = UpdateRatio(self.grads, options.update_every)
        self.smoothing = Smoothing(options.smoothing_samples, options.smoothing_every)
        self.nonfinite = NonFinite()
        self.magnitude = SiteMagnitude()
        self.grad_share = GradShare(options.grad_share_every)
        self.units = Units(options.units_every)
        # schedules are read once, when the plan is made
        self._due_smoothing = self.smoothing.needs.when
        self._due_grad_share = self.grad_share.needs.when
        self._due_update = self.updates.needs.when
        self._due_units = self.units.needs.when
        # activation modules: dead ReLU units and saturated sigmoid / tanh inputs
        acts = [(n, m, unit_kind(m)) for n, m in named] if options.units_every else []
        self._dead_cols = [n for n, _, k in acts if k == "dead"]
        self._sat_cols = [n for n, _, k in acts if k == "sat"]
        modules = [
            {
                "name": n or "<root>",
                "type": type(m).__name__,
                "params": sum(p.numel() for p in m.parameters(recurse=False)),
                "order": -1,
            }
            for n, m in named
        ]
        self.module_index = {n: i for i, (n, _) in enumerate(named)}
        self._arg_names = _parameter_names(model)
        meta = {
            "model_class": type(model).__name__,
            "rank": rank,
            "world_size": world_size,
            "created": time.time(),
            "path": str(path),
            "device": str(next(model.parameters()).device) if groups else "cpu",
            "architecture": architecture(inner or model),
            "optimizers": [type(o).__name__ for o in self.optimizers],
            # the parameters' floating dtype; "autocast" is added at the first autocast forward
            "param_dtype": _param_dtype(model),
            "compiled": self.compiled,
        }
        self.journal = Journal(
            modules, [n or "<root>" for n, _ in groups], options.capacity, options.max_events, meta
        )
        self.journal.set_units(self._dead_cols, self._sat_cols)
        decode = {s.kind: s.decode for s in (self.magnitude, self.grad_share)}
        self.intake = Intake(self.journal, Unpacker(decode), self._fold, INTAKE_BATCH, self.rank)
        self.buffers = Buffers()  # the device buffers results are written into, kept
        self.seg = Segment(self.buffers)
        self.sites: list[Site] | None = None
        self._tracer: Tracer | None = None
        self._plans: dict[str, _Plan] = {}
        self._forward_id = 0
        self._pending: dict[int, dict[str, Any]] = {}
        self._backward_queued = False
        self._in_forward = 0
        self._forward_ok = False  # the root's forward returned (set by a non-always hook)
        self._grad_forward = False  # the outermost forward started with grad enabled
        self._paused = 0
        self._own = 0  # inside resdoctor's own hook code (AdditionTaps ignore its ops)
        if scaler is not None:
            self.journal.set_meta("grad_scaler", True)
        self._last_flush = (0, time.monotonic())
        self.flusher = Flusher(path, lambda e: self.record_error("flush", e))
        self._step = 0
        self.closed = False
        self._no_forward = 0  # steps that stepped with no forward seen (compiled after watch)
        try:
            self._attach(named)
        except BaseException:
            self.hooks.remove()  # a failing watch() leaves no hook behind
            raise
        if self.compiled:  # no trace: the compiled graph runs no Python per op
            self.sites = []
            self.journal.set_sites([])
        elif traced is not None:  # discovered on example inputs
            self._discovered(traced)

    # -- hook plumbing ---------------------------------------------------------------------
    def _guard(self, where: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            if torch.compiler.is_compiling():  # traced by dynamo: compiled away, no graph break
                return None
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
            self.journal.errors.append(
                {
                    "where": where,
                    "type": type(e).__name__,
                    "message": str(e)[:500],
                    "count": 1,
                    "first_step": self.journal.steps + self.intake.behind,
                }
            )

    def _unit_hook(self, what: str, col: int) -> Callable[..., None]:
        def hook(module: nn.Module, args: Any, kwargs: Any, output: Any) -> None:
            if not (self._in_forward and self._training() and self._due_units(self._step)):
                return
            if what == "dead" and isinstance(output, torch.Tensor):
                self._untraced(self.units.dead, self.seg, col, output)
            elif what == "sat" and args and isinstance(args[0], torch.Tensor):
                self._untraced(self.units.saturated, self.seg, col, args[0])

        return hook

    def _attach(self, named: list[tuple[str, nn.Module]]) -> None:
        root = self.model
        modules_by_name = dict(named)
        self.hooks.forward_pre(root, self._guard("forward", self._begin_forward))
        # registered before the always-called hook: it runs only when the forward returned
        self.hooks.forward(root, self._guard("forward", self._forward_returned))
        self.hooks.forward(root, self._guard("forward", self._end_forward), always=True)
        if self.options.nonfinite:
            summed = self._summing_biases(named)
            for name, module in named:
                if self.compiled and name:
                    continue  # inside the compiled graph
                checks = self.nonfinite.checks(module)
                if checks is None:
                    continue
                plan = self._plan(name, root if not name else module)
                plan.check = checks
                if checks[2]:  # the incoming gradient: read from the bias gradient if it can be
                    plan.bias = summed.get(name)
        if not self.compiled:
            for cols, what in ((self._dead_cols, "dead"), (self._sat_cols, "sat")):
                for col, name in enumerate(cols):
                    hook = self._guard("units", self._unit_hook(what, col))
                    self.hooks.forward(modules_by_name[name], hook)
        for optimizer in self.optimizers:  # several: one step is all of them, up to log()
            self.hooks.step_pre(optimizer, self._guard("optimizer", self._before_step))
            self.hooks.step_post(optimizer, self._guard("optimizer", self._after_step))

    def _summing_biases(self, named: list[tuple[str, nn.Module]]) -> dict[str, int]:
        """Module name -> the gradient-norm index of its ``summing_bias``: the modules whose
        incoming gradient is checked from their bias gradient (taken after every backward
        anyway) instead of a hook and a reduction per call. Not across ranks: an all-reduced
        bias gradient carries the other ranks' NaN, and this rank's check must not."""
        if self.world_size > 1 or self.compiled:
            return {}
        position = {id(p): k for k, p in enumerate(self.grads.params)}
        owners = np.bincount(self.grads.index, minlength=len(self.grads.params))
        out = {}
        for name, module in named:
            bias = summing_bias(module)
            k = position.get(id(bias)) if bias is not None else None
            if k is not None and owners[k] == 1:  # a tied bias sums another module's too
                out[name] = k
        return out

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

    def state(self) -> RunState:
        """The run file's state as of now (host memory only)."""
        self.settle()
        return self.journal.state(self.options.to_dict())

    def settle(self) -> None:
        """Fold every transferred segment into the journal (before anyone reads it)."""
        self.intake.settle()

    def _grad_mode(self) -> bool:
        """Whether this is a training pass: inside a forward, the grad mode the root forward
        started in (a reentrant checkpoint runs its blocks under ``no_grad``: still training)."""
        return self._grad_forward if self._in_forward else torch.is_grad_enabled()

    def _recording(self) -> bool:
        return not (self.closed or self._paused) and (self._grad_mode() or self.options.record_eval)

    def _training(self) -> bool:
        """A recorded forward that trains: only these feed the per-step site statistics
        (with ``record_eval`` a validation forward is checked for NaN/Inf, not averaged in)."""
        return self._grad_mode() and self._recording()

    # -- forward ---------------------------------------------------------------------------
    def _begin_forward(self, module: nn.Module, args: Any, kwargs: Any) -> None:
        if self._in_forward:  # the root starts while "inside" itself: the last forward was
            self._recover_interrupted()  # interrupted (KeyboardInterrupt skips always-hooks)
        self._in_forward += 1
        if self._in_forward == 1:
            self._grad_forward = torch.is_grad_enabled()
        if self._in_forward > 1 or not self._recording():
            return
        if self.seg.stepped:  # no log() since the optimizer step: the step ended there
            self.end_segment()
        self.seg.forwards += 1
        self._forward_id += 1
        self._reset_sensors()
        self._pending.clear()
        self._forward_ok = False
        if "autocast" not in self.journal.meta:
            dtype = _autocast_dtype(self.journal.meta.get("device", "cpu"))
            if dtype is not None:
                self.journal.set_meta("autocast", dtype)
        if self.options.nonfinite and (args or kwargs):
            self._check_root_inputs(args, kwargs)
        if self.sites is None and self._tracer is None:
            # with sites=False only the module order is traced (no TorchFunctionMode)
            self._tracer = Tracer(self.model, self.hooks.group(), graph=self.options.sites)
            self._tracer.measure_adds = self.options.sites and self._training()
            if self._tracer.measure_adds and self._due_smoothing(self._step):
                self._tracer.measure_result = self.smoothing  # step 0 gets its smoothing too
            self._tracer.attach(root=False)
            self._tracer.__enter__()

    def _check_root_inputs(self, args: Any, kwargs: Any) -> None:
        sparse = self.nonfinite.root_inputs(self.seg, args, kwargs, self._arg_names)
        if sparse and "unmeasured_inputs" not in self.journal.meta:
            self.journal.set_meta("unmeasured_inputs", sparse)

    def _recover_interrupted(self) -> None:
        """Undo what an interrupted forward left open (modes pushed, counters raised), so
        recording goes on from this forward; the interruption is recorded."""
        self._exit_open_modes()
        self._in_forward = 0
        self.record_error("forward", InterruptedError("a forward pass was interrupted; resumed"))

    def _exit_open_modes(self) -> None:
        """Pop every TorchFunctionMode resdoctor pushed and did not pop (innermost first)."""
        for plan in self._plans.values():
            while plan.modes:
                mode = plan.modes.pop()
                if mode is not None:
                    with contextlib.suppress(Exception):
                        mode.__exit__(None, None, None)
        if self._tracer is not None:  # discovery starts again on this forward
            tracer, self._tracer = self._tracer, None
            with contextlib.suppress(Exception):
                tracer.__exit__(None, None, None)
            tracer.detach()

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
            if tracer.measure_failed is not None:
                self.record_error("smoothing", tracer.measure_failed)
            if self._forward_ok:  # else the trace is partial: discover on the next forward
                self._discovered(tracer)
                self._traced_magnitudes(tracer)
        if not self._recording():
            return
        found = next(
            (t for _, t in iter_tensors(output) if t.requires_grad and t.grad_fn is not None),
            None,
        )
        if found is None:  # an output without a tensor (None, a custom object): the backward
            found = self.nonfinite.last_output()  # reaches the last module output anyway,
            root = self.module_index.get("")  # and its gradient is the model's output gradient
            if found is not None and root is not None and torch.is_grad_enabled():
                hooks = self._hooks_for("backward")
                self.nonfinite.incoming(self._segment, hooks, root, found)
        if found is not None:
            self.hooks.tensor(found, self._guard("backward", self._on_output_grad))

    def _discovered(self, tracer: Tracer) -> None:
        """Take what a finished trace found: the forward order, the NaN-prone ops of each
        module's own code and the residual sites."""
        if tracer.failed is not None:
            self.record_error("discovery", tracer.failed)
            self._set_sites([])
            return
        self.journal.set_order({n or "<root>": i for i, n in enumerate(tracer.module_order)})
        self.journal.set_nan_ops({n or "<root>": sorted(ops) for n, ops in tracer.nan_ops.items()})
        try:
            sites = sites_from(tracer, self.model) if self.options.sites else []
        except Exception as e:  # noqa: BLE001 - record, and stop retrying every step
            self.record_error("discovery", e)
            sites = []
        self._set_sites(sites)

    def _traced_magnitudes(self, tracer: Tracer) -> None:
        """The discovery forward is a training step too: its sites' magnitudes, reduced by the
        tracer at each addition, go into this step (one site per addition, in order)."""
        if not self.sites or not self._training():
            return
        for i, add in enumerate(tracer.residuals()[: len(self.sites)]):
            if add.sums is not None:
                n = int(np.prod(add.shape)) if add.shape else 1
                self.magnitude.row_of_sums(self.seg, i, add.sums, n)
            if add.measured is not None:  # smoothing of the sum
                self.seg.add_row("smooth", i, tuple(map(self.seg.put, add.measured)))

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
        """Run a measurement; during the discovery forward, outside the trace (and outside
        the count of any AdditionTaps)."""
        self._own += 1
        try:
            if self._tracer is None:
                fn(*args)
                return
            with self._tracer.paused():
                fn(*args)
        finally:
            self._own -= 1

    def _before(self, plan: _Plan, args: Any, kwargs: Any) -> None:
        plan.calls += 1
        if plan.check and plan.check[0]:
            plan.inputs.append(self.nonfinite.inputs(self.seg, args, kwargs))
        if plan.taps_in:
            merged = call_inputs(args, kwargs)
            for i, role, tap in plan.taps_in:
                if tap.call == plan.calls:
                    t = get_path(merged, tap.path)
                    if t is not None:
                        self._site_value(i, role, t)

    def _after(self, plan: _Plan, args: Any, kwargs: Any, output: Any) -> None:
        if plan.check:
            forward, input_grads, incoming = plan.check
            if forward and plan.inputs:
                self.nonfinite.outputs(self.seg, plan.index, plan.inputs.pop(), output)
            if torch.is_grad_enabled():
                hooks = self._hooks_for("backward")
                if input_grads:
                    self.nonfinite.input_grads(self._segment, hooks, plan.index, args, kwargs)
                if incoming:
                    self.nonfinite.incoming(self._segment, hooks, plan.index, output, plan.bias)
        for i, role, tap in plan.taps_out:
            if tap.call == plan.calls:
                t = get_path(output, tap.path)
                if t is not None:
                    self._site_value(i, role, t)

    def _segment(self) -> Segment:
        """The segment being filled now (a backward hook runs after its forward's segment)."""
        return self.seg

    def _hooks_for(self, where: str) -> _GuardedHooks:
        return _GuardedHooks(self, where)

    def _reset_sensors(self) -> None:
        """Pooled slots point into one segment: per-forward caches start again."""
        self.nonfinite.reset()
        self.magnitude.reset()

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
                self._tap_addition(i, site, modules)
                continue
            for role in ("skip", "branch", "result", "source"):
                tap = getattr(site, role)
                module = modules.get(tap.module) if tap is not None else None
                if module is None or tap.module not in self.module_index:
                    continue
                plan = self._plan(tap.module, module)
                (plan.taps_in if tap.where == "input" else plan.taps_out).append((i, role, tap))

    def _tap_addition(self, i: int, site: Site, modules: dict[str, nn.Module]) -> None:
        """Site ``i`` has no module boundary to tap: measure it at the addition, in its
        owner's call (see ``AdditionTaps``)."""
        owner = modules.get(site.owner)
        if owner is None or site.owner not in self.module_index:
            return
        plan = self._plan(site.owner, owner)
        if not plan.additions:  # the owner's own pair: enter before its forward, always leave
            self.hooks.forward_pre(owner, self._guard("sites", self._enter_additions(plan)))
            self.hooks.forward(
                owner, self._guard("sites", self._leave_additions(plan)), always=True
            )
        call, ordinal, skip_first = site.at
        plan.additions.append((i, call, ordinal, skip_first))

    def _enter_additions(self, plan: _Plan) -> Callable[..., None]:
        def hook(module: nn.Module, args: Any, kwargs: Any) -> None:
            mode = None  # one entry per call, so the leave hook always pops its own
            if plan.forward_id == self._forward_id and self._in_forward and self._training():
                targets = {o: (i, f) for i, c, o, f in plan.additions if c == plan.calls}
                if targets:
                    mode = AdditionTaps(
                        targets,
                        self._guard("sites", self._addition_measured),
                        lambda: self._own > 0,
                        lambda e: self.record_error("sites", e),
                    )
                    mode.__enter__()
            plan.modes.append(mode)

        return hook

    def _leave_additions(self, plan: _Plan) -> Callable[..., None]:
        def hook(module: nn.Module, args: Any, kwargs: Any, output: Any) -> None:
            mode = plan.modes.pop() if plan.modes else None
            if mode is not None:
                mode.__exit__(None, None, None)

        return hook

    def _addition_measured(
        self,
        i: int,
        skip_ss: torch.Tensor,
        branch_ss: torch.Tensor,
        sum_ss: torch.Tensor,
        total: torch.Tensor,
        n: int,
    ) -> None:
        self.magnitude.row_of_sums(self.seg, i, (skip_ss, branch_ss, sum_ss), n)
        if self._due_smoothing(self._step):
            measured = self.smoothing(total)
            if measured is not None:
                self.seg.add_row(
                    "smooth", i, (self.seg.put(measured[0]), self.seg.put(measured[1]))
                )

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
            if not self._due_smoothing(self._step):
                return
            t = next((t for _, t in iter_tensors(output) if t.is_floating_point()), None)
            if t is None:
                return
            measured = self.smoothing(t)
            if measured is not None:
                self.seg.add_row("lsmooth", i, tuple(map(self.seg.put, measured)))

        return hook

    def _site_value(self, i: int, role: str, t: torch.Tensor) -> None:
        """One operand of site i arrived: measured at once (a later in-place update must not
        change it); once the site is complete, its sensors run."""
        if not self._training():
            return  # a validation forward (record_eval) is not averaged into the step
        site = self.sites[i]  # type: ignore[index]
        p = self._pending.setdefault(i, {})
        p[role] = t
        p[role + "_fn"] = t.grad_fn  # before any in-place op rebases it (gradient share)
        if role != "source" and self.magnitude.operand(self.seg, site, p, role, t):
            self._complete(i, site, self._pending.pop(i))

    def _complete(self, i: int, site: Site, p: dict[str, Any]) -> None:
        self.magnitude.row(self.seg, i, p)
        if self._due_smoothing(self._step):
            total = p.get("result")
            measured = (
                self.smoothing(total)
                if total is not None
                else self.smoothing.of_sum(p["skip"], p["branch"])
            )
            if measured is not None:
                self.seg.add_row(
                    "smooth", i, (self.seg.put(measured[0]), self.seg.put(measured[1]))
                )
        if self._due_grad_share(self._step):
            self.grad_share(self._segment, self._hooks_for("backward"), i, site, p)

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
        self.nonfinite.summed_rows(self.seg, None if raw is None else raw[1])
        if raw is not None:
            self.seg.vectors["grad_l2"], self.seg.vectors["grad_max"] = raw
        else:
            self.seg.vectors.pop("grad_l2", None)
            self.seg.vectors.pop("grad_max", None)

    def _before_step(self, optimizer: Any, args: Any, kwargs: Any) -> None:
        if self._due_update(self._step):
            self.updates.before()

    def _after_step(self, optimizer: Any, args: Any, kwargs: Any) -> None:
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
        if self.seg.stepped:  # after every optimizer of the step has stepped
            self.seg.vectors.update(self._guard("optimizer", self.updates.after)() or {})
        seg, self.seg = self.seg, Segment(self.buffers)
        self._reset_sensors()  # their slots point into the finished segment's pool
        self.nonfinite.discard_summed()
        if not self._in_forward:
            self.hooks.forget_transient()
        if seg.empty:
            return
        with torch.no_grad():
            flat, layout = seg.pack()
        meta = SegmentMeta(
            seg.forwards, seg.backwards, seg.stepped, dict(seg.scalars), self.optimizer is not None
        )
        self.intake.submit(meta, flat, layout)
        if seg.stepped or self.optimizer is None:
            self._step += 1
            if seg.stepped and not seg.forwards:
                self._no_forward += 1
                self.journal.set_meta("steps_without_forward", self._no_forward)
        self.drain()
        self._maybe_flush()

    def drain(self, wait: bool = False) -> None:
        self.intake.drain(wait)

    def _fold(self, raw: dict[str, Any]) -> dict[str, Any]:
        """Per-parameter vectors -> the journal's per-module ones (host side of GradNorm)."""
        grads = self.grads
        out = {k: v for k, v in raw.items() if not k.startswith(("grad_", "param_", "update_"))}
        for kind in ("grad", "param"):
            if f"{kind}_l2" in raw:
                out[f"{kind}_norm"] = grads.fold(raw[f"{kind}_l2"])
            if f"{kind}_max" in raw:
                out[f"{kind}_bad"] = grads.bad(raw[f"{kind}_max"])
        if "grad_max" in raw:
            out["grad_bad_own"] = grads.bad_own(raw["grad_max"])
        if "update_l2" in raw and "update_old_l2" in raw:
            out["update_ratio"] = np.where(
                self._unstepped,
                np.nan,
                grads.fold(raw["update_l2"]) / np.maximum(grads.fold(raw["update_old_l2"]), 1e-12),
            )
        return out

    def _maybe_flush(self) -> None:
        steps, when = self._last_flush
        o = self.options
        if not self.flusher.due():  # backing off after a failed write
            return
        if (o.flush_every and self._step - steps >= o.flush_every) or (
            o.flush_seconds and time.monotonic() - when >= o.flush_seconds
        ):
            self.flush()

    def flush(self, wait: bool = False) -> None:
        """Snapshot the run and hand it to the background writer. Only device copies that
        already finished are taken (no sync); ``wait``: also wait for the pending copies and
        for the file to be written (an explicit ``Watcher.flush()``)."""
        self._last_flush = (self._step, time.monotonic())
        self.intake.settle(wait=wait)
        self.flusher.submit(self.journal.state(self.options.to_dict()))
        if wait:
            self.flusher.wait()

    def write_header(self) -> None:
        """Write the run file at once (a run with no step yet): a previous run's file at the
        path is replaced, never mistaken for this one. A failure is recorded, not raised."""
        try:
            self.flusher.write_now(self.journal.state(self.options.to_dict()))
        except Exception:  # noqa: BLE001 - recorded by the flusher; retried at the next flush
            pass

    def close(self) -> None:
        if self.closed:
            return
        try:
            self._exit_open_modes()  # a forward interrupted before close() left them open
            self.end_segment()
            self.intake.settle(wait=True)  # the one wait for device copies: at close
            self.flusher.write_now(self.journal.state(self.options.to_dict()))
        finally:
            self.closed = True
            self.flusher.close()
            self.remove_hooks()


class _Plan:
    """What the forward hooks of one module do, and their state within the current forward."""

    __slots__ = (
        "index",
        "check",
        "taps_in",
        "taps_out",
        "additions",
        "modes",
        "forward_id",
        "calls",
        "inputs",
        "bias",
    )

    def __init__(self, index: int) -> None:
        self.index = index
        # (check outputs, check input gradients, check incoming gradient); () = no check
        self.check: tuple[bool, bool, bool] | tuple[()] = ()
        self.bias: int | None = None  # the incoming gradient is read from this bias gradient
        self.taps_in: list[tuple[int, str, Any]] = []  # (site, role, tap)
        self.taps_out: list[tuple[int, str, Any]] = []
        # sites measured at the addition: (site, call, ordinal, skip first); the open modes
        self.additions: list[tuple[int, int, int, bool]] = []
        self.modes: list[AdditionTaps | None] = []
        self.forward_id = -1
        self.calls = -1  # calls of the module in this forward (taps name the call they read)
        self.inputs: list[tuple[int, int] | None] = []  # input extrema slots, one per open call


class _GuardedHooks:
    """The hook registrar lent to sensors: every callback guarded, every handle in the
    recorder's ``HookSet`` (transient: it dies with the step's graph)."""

    __slots__ = ("_recorder", "_where")

    def __init__(self, recorder: Recorder, where: str) -> None:
        self._recorder, self._where = recorder, where

    def tensor(self, t: torch.Tensor, fn: Callable[[torch.Tensor], Any]) -> None:
        self._recorder.hooks.tensor(t, self._recorder._guard(self._where, fn))

    def node(self, node: Any, fn: Callable[..., Any]) -> None:
        self._recorder.hooks.node(node, self._recorder._guard(self._where, fn))


def _param_dtype(model: nn.Module) -> str | None:
    dtypes = {p.dtype for p in model.parameters() if p.is_floating_point()}
    return (
        str(min(dtypes, key=lambda d: torch.finfo(d).bits)).removeprefix("torch.")
        if dtypes
        else None
    )


def _autocast_dtype(device: str) -> str | None:
    """The autocast dtype in force for ``device`` ("float16", "bfloat16"), None when off."""
    kind = device.split(":")[0] if device else "cpu"
    try:
        if not torch.is_autocast_enabled(kind):
            return None
        return str(torch.get_autocast_dtype(kind)).removeprefix("torch.")
    except (TypeError, AttributeError, RuntimeError):  # an older torch or an unknown device
        return None


def compiled_module(model: nn.Module) -> nn.Module | None:
    """The module ``torch.compile`` wrapped, when ``model`` is its ``OptimizedModule``."""
    inner = getattr(model, "_orig_mod", None)
    return inner if isinstance(inner, nn.Module) else None


def _parameter_names(model: nn.Module) -> list[str]:
    """Names of ``model.forward``'s positional parameters (to name a bad input argument)."""
    try:
        params = inspect.signature(model.forward).parameters.values()
    except (TypeError, ValueError):
        return []
    kinds = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    return [p.name for p in params if p.kind in kinds]


def _optimizers(optimizer: Any) -> list[torch.optim.Optimizer]:
    """``None``, one optimizer or several (a list or tuple), as a list."""
    if optimizer is None:
        return []
    if isinstance(optimizer, (list, tuple)):
        found = list(optimizer)
    else:
        found = [optimizer]
    for o in found:
        if not hasattr(o, "register_step_pre_hook") or not hasattr(o, "param_groups"):
            raise TypeError(f"optimizer must be a torch optimizer or a list of them, not {o!r}")
    return found
