"""Issue 20: a watched model stays an ordinary model in the user's process. Pickling, saving and
copying it works and the copies record nothing; a concurrent evaluation thread is ignored; an
interrupted forward does not end recording; a NaN that makes the loop raise stays a NaN; float64
models are measured. Each test ends with a census: no resdoctor hook anywhere after close()."""

from __future__ import annotations

import copy
import dataclasses
import io
import pickle
import threading

import pytest
import torch
import torch.nn.functional as F
from torch.overrides import _get_current_function_mode_stack

import resdoctor
from resdoctor.models import ResidualMLP
from resdoctor.recording.hooks import has_resdoctor_hooks


def _no_hooks_left(*models: torch.nn.Module, opt: torch.optim.Optimizer | None = None) -> None:
    """No resdoctor hook on the models (their copies included when passed), their parameters
    or any optimizer, no global module/optimizer hook, no TorchFunctionMode left pushed."""
    import torch.nn.modules.module as module_globals
    import torch.optim.optimizer as optim_globals

    for m in models:
        assert not has_resdoctor_hooks(m)
        for p in m.parameters():
            assert not getattr(p, "_post_accumulate_grad_hooks", None)
            assert not p._backward_hooks
    for attr in dir(module_globals):
        if attr.startswith("_global_") and attr.endswith("hooks"):
            assert not getattr(module_globals, attr), attr
    for attr in ("_global_optimizer_pre_hooks", "_global_optimizer_post_hooks"):
        assert not getattr(optim_globals, attr, {}), attr
    assert not _get_current_function_mode_stack()  # no TorchFunctionMode left pushed
    assert torch._C._len_torch_function_stack() == 0
    if opt is not None:
        assert not opt._optimizer_step_pre_hooks and not opt._optimizer_step_post_hooks


def _step(model, opt, x, y) -> torch.Tensor:
    opt.zero_grad()
    loss = F.mse_loss(model(x), y)
    loss.backward()
    opt.step()
    return loss


def _setup(seed: int = 0):
    torch.manual_seed(seed)
    model = ResidualMLP(depth=3)
    return model, torch.optim.SGD(model.parameters(), 0.01), torch.randn(8, 16), torch.randn(8, 1)


def test_pickle_and_torch_save_of_a_watched_model(tmp_path):
    model, opt, x, y = _setup()
    with resdoctor.watch(model, opt, tmp_path / "r.pt", quiet=True) as doctor:
        doctor.log(loss=_step(model, opt, x, y))
        restored = pickle.loads(pickle.dumps(model))
        buf = io.BytesIO()
        torch.save(model, buf)  # checkpointing the whole module
        buf.seek(0)
        loaded = torch.load(buf, weights_only=False)
        for copy_ in (restored, loaded):
            assert torch.equal(copy_(x), model(x))
            _no_hooks_left(copy_)  # inert entries removed by the copy's first forward
        doctor.log(loss=_step(model, opt, x, y))
    assert resdoctor.load(tmp_path / "r.pt").steps == 2
    _no_hooks_left(model)


def test_deepcopy_and_averaged_model_record_nothing_into_the_run(tmp_path):
    """The copy's forwards were recorded into the run (branch ratio 0.34 -> 183-244)."""

    def train(path, with_copy: bool):
        model, opt, x, y = _setup()
        doctor = resdoctor.watch(model, opt, path, quiet=True)
        swa = torch.optim.swa_utils.AveragedModel(model) if with_copy else None
        twin = copy.deepcopy(model) if with_copy else None
        for _ in range(4):
            loss = _step(model, opt, x, y)
            if swa is not None and twin is not None:
                swa.update_parameters(model)
                with torch.no_grad():
                    swa(x * 100)
                twin(x * 100).sum().backward()
            doctor.log(loss=loss)
        doctor.close()
        return resdoctor.load(path), [m for m in (swa, twin) if m is not None], model

    plain, _, _ = train(tmp_path / "a.pt", False)
    with_copies, copies, model = train(tmp_path / "b.pt", True)
    for signal in ("branch_ratio", "grad_norm", "stream_norm"):
        assert plain.series(signal).equals(with_copies.series(signal)), signal
    _no_hooks_left(model, *copies)


def test_a_concurrent_no_grad_eval_thread_is_not_traced(tmp_path):
    """'pop from empty mode stack', tracer hooks and a live mode left after close()."""
    model, opt, x, y = _setup()
    stop = threading.Event()
    errors: list[BaseException] = []

    def evaluate() -> None:
        try:
            while not stop.is_set():
                with torch.no_grad():
                    model(x)
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    doctor = resdoctor.watch(model, opt, tmp_path / "t.pt", quiet=True)
    worker = threading.Thread(target=evaluate)
    worker.start()
    try:
        for _ in range(15):
            doctor.log(loss=_step(model, opt, x, y))
    finally:
        stop.set()
        worker.join(30)
    doctor.close()
    assert not errors, errors
    run = resdoctor.load(tmp_path / "t.pt")
    assert run.steps == 15 and run.errors.empty
    assert run.series("branch_ratio").notna().all().all()
    _no_hooks_left(model, opt=opt)


class _Interrupting(torch.nn.Module):
    """Raises KeyboardInterrupt inside the model's forward while ``armed``."""

    def __init__(self) -> None:
        super().__init__()
        self.armed = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.armed:
            raise KeyboardInterrupt
        return x


@pytest.mark.parametrize("at_step", [0, 3])
def test_recording_resumes_after_a_keyboard_interrupt_in_forward(tmp_path, at_step):
    """A notebook interrupt inside forward stopped recording for good; at step 0 the tracer's
    mode stayed pushed and grew (23,120 nodes after 200 steps)."""
    model, opt, x, y = _setup()
    trap = _Interrupting()
    model.blocks[1].branch.insert(0, trap)
    doctor = resdoctor.watch(model, opt, tmp_path / "k.pt", quiet=True)
    done = 0
    for step in range(8):
        trap.armed = step == at_step
        try:
            loss = _step(model, opt, x, y)
        except KeyboardInterrupt:
            continue  # the user interrupts the cell, then runs it again
        doctor.log(loss=loss)
        done += 1
    assert len(_get_current_function_mode_stack()) == 0  # nothing left pushed between steps
    doctor.close()
    run = resdoctor.load(tmp_path / "k.pt")
    assert run.steps == done == 7
    ratio = run.series("branch_ratio")
    assert ratio.index.max() == done - 1 and ratio.iloc[-1].notna().all()  # still recording
    assert "forward" in set(run.errors["where"])  # the interruption is on record
    _no_hooks_left(model, opt=opt)


def test_a_nan_that_makes_the_loop_raise_is_still_a_nan_not_an_amp_skip(tmp_path):
    model, opt, x, y = _setup()
    layer = next(m for m in model.blocks[1].branch if isinstance(m, torch.nn.Linear))
    with resdoctor.watch(model, opt, tmp_path / "c.pt", quiet=True) as doctor:
        for step in range(6):
            if step == 3:
                with torch.no_grad():
                    layer.weight[0, 0] = float("nan")
            opt.zero_grad()
            loss = F.mse_loss(model(x), y)
            loss.backward()
            try:
                torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0, error_if_nonfinite=True)
            except RuntimeError:
                doctor.log(loss=loss)  # the loop skips the step and goes on
                with torch.no_grad():
                    layer.weight[0, 0] = 0.0
                continue
            opt.step()
            doctor.log(loss=loss)
    report = resdoctor.analyze(tmp_path / "c.pt")
    (nan,) = [f for f in report.findings if f.code == "nonfinite" and f.step is not None]
    assert nan.step == 3 and nan.severity == "critical"
    _no_hooks_left(model)


def test_a_float64_model_is_measured(tmp_path):
    """A float64 model (from the start or .to(float64) after watch): no site signals, 207
    errors, HEALTHY."""
    model, opt, x, y = _setup()
    doctor = resdoctor.watch(model, opt, tmp_path / "d.pt", quiet=True)
    for step in range(6):
        if step == 3:
            model.double()
            x, y = x.double(), y.double()
        doctor.log(loss=_step(model, opt, x, y))
    doctor.close()
    run = resdoctor.load(tmp_path / "d.pt")
    assert run.errors.empty
    assert run.series("branch_ratio").notna().all().all()
    assert run.series("grad_norm").notna().all().all()


class _Grads(torch.nn.Module):
    """A residual MLP with one odd part chosen by ``kind``: a complex parameter, a sparse
    embedding, a sparse adjacency argument, a plain @dataclass output or a None output."""

    def __init__(self, kind: str) -> None:
        super().__init__()
        self.kind = kind
        self.body = ResidualMLP(depth=2)
        if kind == "complex":
            self.phase = torch.nn.Parameter(torch.randn(16, dtype=torch.cfloat))
        if kind == "sparse-embedding":
            self.emb = torch.nn.Embedding(10, 16, sparse=True)

    def forward(self, x: torch.Tensor, adj: torch.Tensor | None = None) -> object:
        if self.kind == "complex":
            x = x + (self.phase * self.phase.conj()).real * 0.01
        if self.kind == "sparse-embedding":
            x = x + self.emb(torch.arange(x.shape[0]) % 10)
        if adj is not None:
            x = torch.sparse.mm(adj, x)
        y = self.body(x)
        if self.kind == "dataclass":
            return _Out(y)
        if self.kind == "none":
            self.last = y
            return None
        return y


@dataclasses.dataclass
class _Out:
    logits: torch.Tensor


def _odd_run(tmp_path, kind: str, steps: int = 4, nan_at: int | None = None):
    torch.manual_seed(0)
    model = _Grads(kind)
    opt = torch.optim.SGD(model.parameters(), 0.01)
    x, y = torch.randn(8, 16), torch.randn(8, 1)
    adj = torch.eye(8).to_sparse() if kind == "sparse-input" else None
    doctor = resdoctor.watch(model, opt, tmp_path / f"{kind}.pt", quiet=True)
    grads = {}
    for step in range(steps):
        opt.zero_grad()
        out = model(x, adj)
        pred = out.logits if kind == "dataclass" else (model.last if kind == "none" else out)
        if step == nan_at:
            pred = _NanGrad.apply(pred)
        loss = F.mse_loss(pred, y)
        loss.backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        opt.step()
        doctor.log(loss=loss)
    doctor.close()
    _no_hooks_left(model)
    return resdoctor.load(tmp_path / f"{kind}.pt"), grads


class _NanGrad(torch.autograd.Function):
    """The loss's own backward makes NaN (outside every module)."""

    @staticmethod
    def forward(ctx, x):  # type: ignore[no-untyped-def]
        return x.clone()

    @staticmethod
    def backward(ctx, g):  # type: ignore[no-untyped-def]
        return g * float("nan")


def test_a_complex_parameter_is_measured_and_the_steps_recorded(tmp_path):
    """One complex parameter: 0 steps recorded, 40 errors, HEALTHY."""
    run, grads = _odd_run(tmp_path, "complex")
    assert run.steps == 4 and run.errors.empty
    norm = run.series("grad_norm")["<root>" if "<root>" in run.series("grad_norm") else ""]
    assert norm.iloc[-1] == pytest.approx(torch.linalg.vector_norm(grads["phase"]).item(), 1e-5)
    assert resdoctor.analyze(run).complete


def test_a_sparse_embedding_gradient_is_measured_exactly(tmp_path):
    """Embedding(sparse=True): no grad norms (the whole fused call failed)."""
    run, grads = _odd_run(tmp_path, "sparse-embedding")
    assert run.errors.empty
    expect = torch.linalg.vector_norm(grads["emb.weight"].to_dense()).item()
    assert run.series("grad_norm")["emb"].iloc[-1] == pytest.approx(expect, rel=1e-5)
    assert run.series("grad_norm").notna().all().all()


def test_a_sparse_input_to_a_block_is_skipped_with_a_note_and_the_rest_measured(tmp_path):
    """A sparse input to a block: silent gaps (forward errors, no residual sites)."""
    run, _ = _odd_run(tmp_path, "sparse-input")
    assert run.errors.empty and len(run.sites) == 2
    assert run.series("branch_ratio").notna().all().all()
    report = resdoctor.analyze(run)
    assert not report.complete and report.to_dict()["complete"] is False
    assert any("adj" in gap and "sparse" in gap for gap in report.gaps)


@pytest.mark.parametrize("kind", ["dataclass", "none"])
def test_a_dataclass_or_none_model_output_keeps_the_gradient_signals(tmp_path, kind):
    """A plain @dataclass output (no gradient signals; a backward NaN then blamed on the input
    layer's optimizer step) or a root output None: silent gaps."""
    run, _ = _odd_run(tmp_path, kind, steps=5, nan_at=3)
    assert run.errors.empty
    assert run.series("grad_norm").iloc[:3].notna().all().all()
    first = run.events.iloc[0]  # made in the loss's backward, outside every module
    assert (first["step"], first["module"], first["phase"]) == (3, "loss", "loss")


def test_a_run_whose_gradients_could_not_be_read_is_not_complete(tmp_path):
    """Signals lost while analyze says HEALTHY: the verdict line says what is missing."""
    from typer.testing import CliRunner

    from resdoctor.cli.main import app

    model, _, x, y = _setup()
    with resdoctor.watch(model, None, tmp_path / "g.pt", quiet=True) as doctor:
        for _ in range(3):
            out = model(x)  # a forward with no backward: no gradient is ever read
            doctor.log(loss=F.mse_loss(out, y))
    res = CliRunner().invoke(app, ["analyze", str(tmp_path / "g.pt"), "-q"])
    assert res.exit_code == 0
    assert "incomplete: 1 signal gap(s)" in res.stdout
    gaps = resdoctor.analyze(tmp_path / "g.pt").gaps
    assert len(gaps) == 1 and "grad_norm" in gaps[0]
    with resdoctor.watch(model, torch.optim.SGD(model.parameters()), tmp_path / "n.pt") as d:
        d.log(loss=F.mse_loss(model(x), y))  # an optimizer that never steps: no step at all
    assert "no training step" in resdoctor.analyze(tmp_path / "n.pt").gaps[0]


class _ModelData(torch.utils.data.Dataset):
    """A dataset holding the watched model (e.g. to make targets), sent to spawn workers."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.model = model

    def __len__(self) -> int:
        return 4

    def __getitem__(self, i: int) -> torch.Tensor:
        with torch.no_grad():
            return self.model(torch.ones(1, 16))[0]


def test_a_spawn_dataloader_whose_dataset_holds_the_watched_model(tmp_path):
    """The same (PicklingError) through a spawn DataLoader whose dataset references the model."""
    model, opt, x, y = _setup()
    with resdoctor.watch(model, opt, tmp_path / "s.pt", quiet=True) as doctor:
        doctor.log(loss=_step(model, opt, x, y))
        loader = torch.utils.data.DataLoader(
            _ModelData(model), batch_size=2, num_workers=1, multiprocessing_context="spawn"
        )
        batches = list(loader)
        doctor.log(loss=_step(model, opt, x, y))
    assert len(batches) == 2 and batches[0].shape == (2, 1)
    assert resdoctor.load(tmp_path / "s.pt").steps == 2
    _no_hooks_left(model)
