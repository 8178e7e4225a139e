"""Fixtures for the app tests: real recorded runs (sick and healthy), a synthetic million-step run,
and an AppTest factory."""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))  # the app is imported as the `app` package of the checkout
sys.path.insert(1, str(Path(__file__).resolve().parent))  # app_large_run
MAIN = str(ROOT / "app" / "main.py")
CHROMIUM = "/usr/bin/chromium"


def record(path: Path, *, lr: float, norm: bool, steps: int = 30) -> str:
    """A ResidualMLP trained under watch: lr=0.1 without norms blows up (NaN at step 13)."""
    import torch
    import torch.nn.functional as F

    import resdoctor
    from resdoctor.models import ResidualMLP

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # 2 shared cores: one thread is several times faster here
    try:
        torch.manual_seed(0)
        model = ResidualMLP(depth=6, dim=32, norm=norm)
        opt = torch.optim.SGD(model.parameters(), lr, momentum=0.9)
        x, y = torch.randn(32, 16), torch.randn(32, 1)
        with resdoctor.watch(
            model, opt, path, smoothing_every=2, update_every=1, grad_share_every=2
        ) as doctor:
            for _ in range(steps):
                opt.zero_grad()
                loss = F.mse_loss(model(x), y)
                loss.backward()
                opt.step()
                doctor.log(loss=loss, lr=lr)
    finally:
        torch.set_num_threads(threads)
    return str(path)


def record_nan3(path: Path, steps: int = 200, fixed: bool = False) -> str:
    """A residual MLP whose weight turns NaN at step 3 and that trains on for ``steps``."""
    import torch
    import torch.nn.functional as F

    import resdoctor
    from resdoctor.models import ResidualMLP

    torch.manual_seed(0)
    model = ResidualMLP(depth=4, dim=16)
    opt = torch.optim.SGD(model.parameters(), 0.02)
    x, y = torch.randn(16, 16), torch.randn(16, 1)
    with resdoctor.watch(model, opt, path, quiet=True) as doctor:
        for i in range(steps):
            if i == 3 and not fixed:
                with torch.no_grad():
                    model.blocks[1].branch[1].weight.fill_(float("nan"))
            opt.zero_grad()
            loss = F.mse_loss(model(x), y)
            loss.backward()
            opt.step()
            doctor.log(loss=loss)
    return str(path)


def record_transformer(path: Path, steps: int = 30) -> str:
    import torch
    import torch.nn.functional as F

    import resdoctor
    from resdoctor.models import TinyTransformer

    torch.manual_seed(0)
    model = TinyTransformer(vocab=32, dim=32, depth=2, heads=4)
    opt = torch.optim.AdamW(model.parameters(), 3e-3)
    ids = torch.randint(0, 32, (4, 16))
    with resdoctor.watch(model, opt, path, quiet=True) as doctor:
        for _ in range(steps):
            logits = model(ids[:, :-1])
            loss = F.cross_entropy(logits.reshape(-1, 32), ids[:, 1:].reshape(-1))
            opt.zero_grad()
            loss.backward()
            opt.step()
            doctor.log(loss=loss)
    return str(path)


@pytest.fixture(scope="session")
def first_screen_runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    folder = tmp_path_factory.mktemp("first-screen")
    return {
        "nan3": record_nan3(folder / "nan3.pt"),
        "fixed": record_nan3(folder / "fixed.pt", fixed=True),
        "transformer": record_transformer(folder / "transformer.pt"),
    }


def record_edge_cases(folder: Path) -> dict[str, str]:
    """A plain (non-residual) MLP run, and a run closed before its first step."""
    import torch
    import torch.nn.functional as F

    import resdoctor
    from resdoctor.models import ResidualMLP

    model = ResidualMLP(depth=3, dim=16, residual=False)
    opt = torch.optim.SGD(model.parameters(), 0.01)
    x, y = torch.randn(8, 16), torch.randn(8, 1)
    with resdoctor.watch(model, opt, folder / "plain.pt") as doctor:
        for _ in range(5):
            opt.zero_grad()
            loss = F.mse_loss(model(x), y)
            loss.backward()
            opt.step()
            doctor.log(loss=loss)
    with resdoctor.watch(ResidualMLP(depth=3, dim=16), None, folder / "empty.pt"):
        pass
    return {"plain": str(folder / "plain.pt"), "empty": str(folder / "empty.pt")}


@pytest.fixture(scope="session")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    folder = tmp_path_factory.mktemp("runs")
    return {
        "sick": record(folder / "sick.pt", lr=0.1, norm=False),
        "healthy": record(folder / "healthy.pt", lr=0.02, norm=True),
    }


@pytest.fixture(scope="session")
def edge_runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    return record_edge_cases(tmp_path_factory.mktemp("edge"))


@pytest.fixture(scope="session")
def large_run(tmp_path_factory: pytest.TempPathFactory) -> str:
    from app_large_run import large_state

    from resdoctor.runfile import io as runfile

    path = tmp_path_factory.mktemp("large") / "large.pt"
    runfile.write(large_state(), path)
    return str(path)


@pytest.fixture(autouse=True)
def _argv(monkeypatch: pytest.MonkeyPatch) -> None:
    """The app reads runs from sys.argv; under pytest that holds pytest's own arguments."""
    monkeypatch.setattr(sys, "argv", [MAIN])


@pytest.fixture
def app() -> Callable[..., Any]:
    """``app(run=..., compare=..., tab=..., argv=[...])`` -> a ran AppTest."""
    from streamlit.testing.v1 import AppTest

    def make(argv: list[str] | None = None, window: bool = False, **query: str) -> AppTest:
        """``window=False`` opens every step (``?steps=all``); True: the default finite
        window of a run that went NaN."""
        if argv is not None:
            sys.argv = [MAIN, *argv]
        if not window:
            query.setdefault("steps", "all")
        at = AppTest.from_file(MAIN, default_timeout=120)
        for k, v in query.items():
            at.query_params[k] = v
        return at.run()

    return make


@pytest.fixture(scope="session")
def chromium() -> Iterator[str]:
    """Debian's chromium; installed with apt-get when missing (skipped where there is no apt)."""
    if not Path(CHROMIUM).exists():
        apt = shutil.which("apt-get")
        if apt is None:
            pytest.skip("chromium is missing and there is no apt-get to install it")
        for args in (
            ["install", "-y", "-q", "chromium"],
            ["update", "-q"],
            ["install", "-y", "-q", "chromium"],
        ):
            if Path(CHROMIUM).exists():
                break
            done = subprocess.run([apt, *args], capture_output=True, text=True, timeout=900)
        if not Path(CHROMIUM).exists():
            pytest.fail(f"apt-get could not install chromium: {done.stderr.strip()[-300:]}")
    yield CHROMIUM


def chart_data(at: Any) -> list[tuple[dict[str, Any], list[Any]]]:
    """Every vega-lite chart of the page: (spec, [its datasets as pandas frames]) as sent."""
    import json

    import pyarrow as pa

    out = []

    def walk(node: Any) -> None:
        for child in getattr(node, "children", {}).values():
            if child.type == "vega_lite_chart":
                proto = child.proto
                blobs = [d.data.data for d in proto.datasets]
                blobs += [proto.data.data] if proto.data.data else []
                frames = [pa.ipc.open_stream(b).read_all().to_pandas() for b in blobs]
                out.append((json.loads(proto.spec), frames))
            walk(child)

    tabs = list(at.tabs)
    for root in tabs or [at.main]:  # the section's charts (the header's loss chart is apart)
        walk(root)
    return out


def texts(at: Any) -> str:
    """All markdown, captions, subheaders and alerts of the page as one string."""
    parts = [
        e.value
        for kind in ("markdown", "caption", "subheader", "success", "warning", "error", "info")
        for e in getattr(at, kind)
    ]
    return "\n".join(str(p) for p in parts)
