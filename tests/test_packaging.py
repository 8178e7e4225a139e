"""The wheel is the product: ``pip install .`` (not editable) into a fresh environment, then
``resdoctor app RUN`` serves the report from the installed package, not from a checkout."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

CHECK_APP = """
import sys
from pathlib import Path
import resdoctor.app
from streamlit.testing.v1 import AppTest
main = Path(resdoctor.app.__file__).parent / "main.py"
assert "site-packages" in str(main), main
sys.argv = [str(main)]
at = AppTest.from_file(str(main), default_timeout=120)
at.query_params["run"] = RUN
at.run()
assert not at.exception, [e.message for e in at.exception]
text = " ".join(m.value for m in at.markdown) + " ".join(str(m.value) for m in at.metric)
print("VERDICT" if ("CRITICAL" in text.upper() or "HEALTHY" in text.upper()) else text[:500])
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    pytest.importorskip("streamlit")
    venv = tmp_path_factory.mktemp("venv")
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(venv)], check=True)
    py = venv / "bin" / "python"
    done = subprocess.run(
        [str(py), "-m", "pip", "install", "-q", "--no-deps", str(ROOT)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return venv


def test_pip_install_then_resdoctor_app_serves_the_report(installed, tmp_path):
    import torch
    import torch.nn.functional as F

    import resdoctor
    from resdoctor.models import ResidualMLP

    model = ResidualMLP(depth=3, dim=16)
    opt = torch.optim.SGD(model.parameters(), 0.01)
    run = tmp_path / "run.pt"
    with resdoctor.watch(model, opt, run) as doctor:
        for _ in range(3):
            opt.zero_grad()
            loss = F.mse_loss(model(torch.randn(8, 16)), torch.randn(8, 1))
            loss.backward()
            opt.step()
            doctor.log(loss=loss)

    py = installed / "bin" / "python"
    # the page itself, from the installed files, renders a verdict for the run
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # the installed copy only
    check = subprocess.run(
        [str(py), "-c", f"RUN = {str(run)!r}\n" + CHECK_APP],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert check.returncode == 0 and "VERDICT" in check.stdout, check.stdout + check.stderr[-2000:]

    # and `resdoctor app` serves it over HTTP
    port = _free_port()
    server = subprocess.Popen(
        [str(installed / "bin" / "resdoctor"), "app", str(run), "--headless", "--port", str(port)],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline, health = time.monotonic() + 90, ""
        while time.monotonic() < deadline and server.poll() is None:
            try:
                with urllib.request.urlopen(
                    f"http://127.0.0.1:{port}/_stcore/health", timeout=2
                ) as r:
                    health = r.read().decode()
                    break
            except OSError:
                time.sleep(0.5)
        assert health == "ok", server.stdout.read() if server.poll() is not None else health
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5) as r:
            assert "<title>" in r.read().decode().lower()  # the page shell
    finally:
        server.terminate()
        server.wait(timeout=30)
    # the server itself stopped (no orphaned streamlit child keeps serving)
    time.sleep(1)
    with pytest.raises(OSError):
        urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health", timeout=2)
