"""The run file: weights_only loading, clear errors, atomic periodic writes, crash safety."""

import os
import pickle
import signal
import subprocess
import sys
import textwrap
import time

import pytest
import torch

import resdoctor
from resdoctor.runfile import io as runfile
from resdoctor.runfile.io import RunFileError


def test_run_file_loads_with_weights_only(tmp_path):
    from resdoctor.models import ResidualMLP

    model = ResidualMLP(depth=2)
    with resdoctor.watch(model, path=tmp_path / "r.pt") as doctor:
        model(torch.randn(4, 16)).sum().backward()
        doctor.log(loss=1.0)
    state = torch.load(tmp_path / "r.pt", weights_only=True)
    assert state["format"] == "resdoctor-run" and state["schema_version"] == 1
    assert state["torch_version"] == str(torch.__version__)
    assert state["model_class"] == "ResidualMLP" and state["steps"] == 1
    assert [s["name"] for s in state["sites"]] == ["blocks.0", "blocks.1"]


class Evil:
    def __reduce__(self):
        return (os.system, ("touch /tmp/resdoctor_pwned",))


@pytest.mark.parametrize(
    "content,needle",
    [
        (None, "no such file"),
        (b"", "not a readable run file"),
        (b"not a zip at all", "not a readable run file"),
    ],
)
def test_bad_files_raise_one_clear_error(tmp_path, content, needle):
    path = tmp_path / "bad.pt"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(RunFileError, match=needle) as info:
        resdoctor.load(path)
    assert "\n" not in str(info.value)


def test_truncated_and_foreign_and_malicious_files(tmp_path):
    good = tmp_path / "good.pt"
    runfile.write(
        {
            "format": "resdoctor-run",
            "schema_version": 1,
            "steps": 0,
            "modules": [],
            "sites": [],
            "series": {},
            "events": [],
        },
        good,
    )
    assert resdoctor.load(good).steps == 0
    truncated = tmp_path / "trunc.pt"
    truncated.write_bytes(good.read_bytes()[:200])
    with pytest.raises(RunFileError, match="not a readable"):
        resdoctor.load(truncated)
    foreign = tmp_path / "weights.pt"
    torch.save({"weight": torch.zeros(3)}, foreign)
    with pytest.raises(RunFileError, match="not a resdoctor run"):
        resdoctor.load(foreign)
    newer = tmp_path / "newer.pt"
    torch.save(
        {
            "format": "resdoctor-run",
            "schema_version": 99,
            "steps": 0,
            "modules": [],
            "sites": [],
            "series": {},
            "events": [],
        },
        newer,
    )
    with pytest.raises(RunFileError, match="newer"):
        resdoctor.load(newer)
    evil = tmp_path / "evil.pt"
    marker = "/tmp/resdoctor_pwned"
    if os.path.exists(marker):
        os.unlink(marker)
    with open(evil, "wb") as f:
        pickle.dump(Evil(), f)
    with pytest.raises(RunFileError):
        resdoctor.load(evil)
    evil_zip = tmp_path / "evil_zip.pt"
    torch.save({"format": "resdoctor-run", "payload": Evil()}, evil_zip)
    with pytest.raises(RunFileError, match="refused"):
        resdoctor.load(evil_zip)
    assert not os.path.exists(marker)


def test_writes_are_atomic(tmp_path):
    path = tmp_path / "a.pt"
    state = {
        "format": "resdoctor-run",
        "schema_version": 1,
        "steps": 1,
        "modules": [],
        "sites": [],
        "series": {},
        "events": [],
    }
    runfile.write(state, path)
    runfile.write({**state, "steps": 2}, path)
    assert resdoctor.load(path).steps == 2
    assert [p.name for p in tmp_path.iterdir()] == ["a.pt"]  # no temp files left


KILLED_RUN = textwrap.dedent("""
    import sys, time, torch, torch.nn.functional as F, resdoctor
    from resdoctor.models import ResidualMLP
    model = ResidualMLP(depth=2)
    opt = torch.optim.SGD(model.parameters(), 0.01)
    x, y = torch.randn(8, 16), torch.randn(8, 1)
    doctor = resdoctor.watch(model, opt, sys.argv[1], flush_every=10, flush_seconds=0)
    step = 0
    while True:
        opt.zero_grad(); loss = F.mse_loss(model(x), y); loss.backward(); opt.step()
        doctor.log(loss=loss)
        step += 1
        if step == 25:
            print("ready", flush=True)
        time.sleep(0.01)
""")


def test_a_killed_run_keeps_what_was_flushed(tmp_path):
    path = tmp_path / "killed.pt"
    proc = subprocess.Popen(
        [sys.executable, "-c", KILLED_RUN, str(path)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout.readline().strip() == "ready"
        time.sleep(0.2)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    run = resdoctor.load(path)
    assert run.steps >= 20  # flushed at least every 10 steps, so at most 10 steps are lost
    assert len(run.scalar("loss")) == run.steps
