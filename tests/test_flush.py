"""Flushing: the training thread hands a snapshot to a background writer and never waits for
the disk; a new run replaces the previous run's file at once; a failing path is reported once
and retried with back-off; temp files of killed writes are cleaned up."""

from __future__ import annotations

import os
import threading
import time

import torch
import torch.nn.functional as F

import resdoctor
from resdoctor.models import ResidualMLP
from resdoctor.runfile import io as runfile


def _train(doctor, model, opt, steps: int) -> float:
    """Seconds the loop spent in ``doctor.log`` (where flushes happen)."""
    x, y = torch.randn(8, 16), torch.randn(8, 1)
    spent = 0.0
    for _ in range(steps):
        opt.zero_grad()
        loss = F.mse_loss(model(x), y)
        loss.backward()
        opt.step()
        t0 = time.perf_counter()
        doctor.log(loss=loss)
        spent += time.perf_counter() - t0
    return spent


def test_a_flush_does_not_block_the_training_thread_on_the_write(tmp_path):
    """The disk is held shut: training goes on (a blocking flush would wait 60 s per step),
    the file keeps the header until the disk opens, and close() writes every step."""
    torch.manual_seed(0)
    model = ResidualMLP(depth=3)
    opt = torch.optim.SGD(model.parameters(), 0.01)
    path = tmp_path / "run.pt"
    gate, started = threading.Event(), threading.Event()
    doctor = resdoctor.watch(model, opt, path, flush_every=1, quiet=True)
    assert resdoctor.load(path).steps == 0  # the header, written by watch()

    def slow_disk(state, where):
        started.set()
        assert gate.wait(60), "never released"
        runfile.write(state, where)

    doctor.recorder.flusher.write = slow_disk
    spent = _train(doctor, model, opt, 6)
    assert started.wait(10)  # a write is in progress (blocked) ...
    assert spent < 10  # ... and every log() returned meanwhile
    assert resdoctor.load(path).steps == 0  # nothing written yet: the write is still held
    gate.set()
    doctor.close()
    assert resdoctor.load(path).steps == 6


def test_explicit_flush_waits_for_the_file(tmp_path):
    model = ResidualMLP(depth=2)
    opt = torch.optim.SGD(model.parameters(), 0.01)
    with resdoctor.watch(model, opt, tmp_path / "r.pt", flush_every=0, quiet=True) as doctor:
        _train(doctor, model, opt, 3)
        doctor.flush()
        assert resdoctor.load(tmp_path / "r.pt").steps == 3


def test_a_new_run_never_leaves_the_previous_runs_file(tmp_path):
    """Issue 20: a run killed before its first flush left the old file, read as this run."""
    path = tmp_path / "run.pt"
    model = ResidualMLP(depth=2)
    opt = torch.optim.SGD(model.parameters(), 0.01)
    with resdoctor.watch(model, opt, path, quiet=True) as doctor:
        _train(doctor, model, opt, 5)
    assert resdoctor.load(path).steps == 5
    doctor = resdoctor.watch(ResidualMLP(depth=4), None, path, quiet=True)
    try:
        run = resdoctor.load(path)  # as a kill right now would leave it
        assert run.steps == 0 and len(run.modules) != 0
    finally:
        doctor.close()


def test_temp_files_of_a_killed_write_are_removed(tmp_path):
    path = tmp_path / "run.pt"
    stale, fresh = tmp_path / ".run.pt.abc123.tmp", tmp_path / ".run.pt.def456.tmp"
    for f in (stale, fresh):
        f.write_bytes(b"half a file")
    old = time.time() - 3600
    os.utime(stale, (old, old))
    model = ResidualMLP(depth=2)
    with resdoctor.watch(model, None, path, quiet=True):
        pass
    assert not stale.exists()
    assert fresh.exists()  # young: it could belong to a writer still running


def test_an_unwritable_path_is_reported_once_and_retried_with_backoff(tmp_path, capfd):
    """Issue 20: an unwritable path re-serialised the whole run on every step (+76% step
    time) with no notice until close()."""
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    path = blocker / "run.pt"
    model = ResidualMLP(depth=2)
    opt = torch.optim.SGD(model.parameters(), 0.01)
    doctor = resdoctor.watch(model, opt, path, flush_every=1, quiet=True)
    calls = []
    real = doctor.recorder.flusher.write

    def counting(state, where):
        calls.append(time.monotonic())
        real(state, where)

    doctor.recorder.flusher.write = counting
    _train(doctor, model, opt, 40)
    doctor.recorder.flusher.wait(10)
    assert len(calls) <= 2  # back-off: 2 s, then 4 s, ... not 40 attempts
    errors = doctor.recorder.journal.errors
    assert [e["where"] for e in errors] == ["flush"] and errors[0]["count"] >= 1
    doctor.close()
    err = capfd.readouterr().err
    assert err.count("cannot write") == 1
    assert not path.exists()
