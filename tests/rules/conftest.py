"""Small real runs, recorded once per session, for the rules' real-run and healthy-trap tests."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import resdoctor
from resdoctor.demo import record_demo
from resdoctor.models import PreActResNet, ResidualMLP, ResNet
from resdoctor.runfile.run import Run


def record(
    path: str,
    model: nn.Module,
    inputs: tuple,
    loss_fn: Callable,
    steps: int,
    lr: float = 0.01,
    adam: bool = False,
    scaler=None,
    **options,
) -> Run:
    """Train ``model`` under watch for ``steps`` steps and load the run."""
    opt = (
        torch.optim.Adam(model.parameters(), lr)
        if adam
        else torch.optim.SGD(model.parameters(), lr, momentum=0.9)
    )
    with resdoctor.watch(model, opt, path, scaler=scaler, **options) as doctor:
        for _ in range(steps):
            opt.zero_grad()
            loss = loss_fn(model(*inputs))
            if scaler is None:
                loss.backward()
                opt.step()
            else:
                scaler.scale(loss).backward()
                scaler.step(opt)
                scaler.update()
            doctor.log(loss=loss, lr=lr)
    return resdoctor.load(path)


def _images(n: int = 8, size: int = 8, classes: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return torch.randn(n, 3, size, size, generator=g), torch.randint(0, classes, (n,), generator=g)


def _table(n: int = 32, d: int = 8, classes: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return torch.randn(n, d, generator=g), torch.randint(0, classes, (n,), generator=g)


@pytest.fixture(scope="session")
def runs_dir(tmp_path_factory: pytest.TempPathFactory):
    return tmp_path_factory.mktemp("runs")


@pytest.fixture(scope="session")
def sick(runs_dir) -> Run:
    """The demo's sick run: unnormalised residual MLP, LR too high, NaN at step ~10."""
    return resdoctor.load(record_demo(str(runs_dir / "sick.pt"), steps=20))


@pytest.fixture(scope="session")
def healthy(runs_dir) -> Run:
    return resdoctor.load(record_demo(str(runs_dir / "healthy.pt"), steps=30, healthy=True))


@pytest.fixture(scope="session")
def zero_init(runs_dir) -> Run:
    """torchvision-style ResNet with zero-initialised last BN: branches start at 0, wake up."""
    torch.manual_seed(0)
    x, y = _images()
    model = ResNet((2, 1), widths=(4, 8), num_classes=4, zero_init_residual=True)
    return record(
        str(runs_dir / "zero.pt"), model, (x,), lambda o: F.cross_entropy(o, y), 40, lr=0.05
    )


@pytest.fixture(scope="session")
def preact(runs_dir) -> Run:
    """A 12-block pre-activation ResNet: its stream grows like sqrt(depth)."""
    torch.manual_seed(0)
    x, y = _images()
    model = PreActResNet((6, 6), widths=(4, 8), num_classes=4)
    return record(
        str(runs_dir / "preact.pt"), model, (x,), lambda o: F.cross_entropy(o, y), 8, lr=0.05
    )


@pytest.fixture(scope="session")
def converged(runs_dir) -> Run:
    """A tiny residual MLP trained to ~zero loss: tiny gradients everywhere, loss converged."""
    torch.manual_seed(0)
    x, y = _table(16)
    model = ResidualMLP(d_in=8, dim=16, depth=4, d_out=4)
    return record(
        str(runs_dir / "converged.pt"),
        model,
        (x,),
        lambda o: F.cross_entropy(o, y),
        150,
        lr=0.01,
        adam=True,
        smoothing_every=0,
        grad_share_every=0,
    )


@pytest.fixture(scope="session")
def amp(runs_dir) -> Run:
    """A GradScaler that starts too high and grows every 10 steps: a few normal skips."""
    torch.manual_seed(0)
    x, y = _table(16)
    model = ResidualMLP(d_in=8, dim=16, depth=3, d_out=4)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**127, growth_interval=10)
    return record(
        str(runs_dir / "amp.pt"),
        model,
        (x,),
        lambda o: F.cross_entropy(o, y, reduction="sum"),
        40,
        lr=0.002,
        scaler=scaler,
    )


@pytest.fixture(scope="session")
def plain_sigmoid(runs_dir) -> Run:
    """A deep plain (non-residual) sigmoid MLP: gradients vanish toward the input."""
    torch.manual_seed(0)
    x, y = _table()
    model = ResidualMLP(
        d_in=8, dim=16, depth=8, d_out=4, norm=False, residual=False, activation=nn.Sigmoid
    )
    return record(str(runs_dir / "sigmoid.pt"), model, (x,), lambda o: F.cross_entropy(o, y), 15)


class SmoothGCN(nn.Module):
    """``x + GCNConv(x)`` per layer, identity-initialised: neighbour averaging smooths nodes."""

    def __init__(self, dim: int = 8, layers: int = 14) -> None:
        super().__init__()
        import torch_geometric.nn as gnn

        self.convs = nn.ModuleList(gnn.GCNConv(dim, dim) for _ in range(layers))
        for conv in self.convs:
            nn.init.eye_(conv.lin.weight)

    def forward(self, x: torch.Tensor, edge_index: torch.Tensor) -> torch.Tensor:
        for conv in self.convs:
            x = x + conv(x, edge_index)
        return x


@pytest.fixture(scope="session")
def smooth_gcn(runs_dir) -> Run:
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    x, edges = torch.randn(30, 8, generator=g), torch.randint(0, 30, (2, 150), generator=g)
    return record(
        str(runs_dir / "gcn.pt"),
        SmoothGCN(),
        (x, edges),
        lambda o: o.mean(),
        6,
        lr=1e-6,
        smoothing_every=1,
    )


@pytest.fixture(scope="session")
def dominant(runs_dir) -> Run:
    """Unnormalised residual MLP whose branches are scaled x40: ||F(x)|| >> ||x||."""
    torch.manual_seed(0)
    x, y = _table()
    model = ResidualMLP(d_in=8, dim=16, depth=4, d_out=4, norm=False, scale=40.0)
    return record(
        str(runs_dir / "dominant.pt"), model, (x,), lambda o: F.cross_entropy(o, y), 8, lr=1e-7
    )


@pytest.fixture(scope="session")
def dead(runs_dir) -> Run:
    """Residual MLP whose branches are scaled by 1e-4 (fixed): they never contribute."""
    torch.manual_seed(0)
    x, y = _table()
    model = ResidualMLP(d_in=8, dim=16, depth=4, d_out=4, scale=1e-4)
    return record(
        str(runs_dir / "dead.pt"), model, (x,), lambda o: F.cross_entropy(o, y), 30, lr=0.05
    )
