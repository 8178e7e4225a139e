"""On a CUDA device: watching adds no host-device synchronisation inside hooks."""

import pytest
import torch
import torch.nn.functional as F

import resdoctor
from resdoctor.models import ResNet, TinyTransformer

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


@pytest.mark.parametrize(
    "make",
    [
        lambda: (ResNet((2, 2)), torch.randn(16, 3, 32, 32), torch.randint(0, 10, (16,))),
        lambda: (
            TinyTransformer(depth=2),
            torch.randint(0, 64, (4, 16)),
            torch.randint(0, 64, (4, 16)),
        ),
    ],
)
def test_no_sync_inside_watched_steps(tmp_path, make):
    model, x, y = make()
    model, x, y = model.cuda(), x.cuda(), y.cuda()
    opt = torch.optim.SGD(model.parameters(), 0.01)
    scaler = torch.amp.GradScaler("cuda")

    def step(doctor):
        opt.zero_grad()
        with torch.autocast("cuda", dtype=torch.float16):
            out = model(x)
            loss = F.cross_entropy(out.flatten(0, -2) if out.dim() > 2 else out, y.flatten())
        scaler.scale(loss).backward()
        scaler.step(opt)  # GradScaler.step itself syncs once (found_inf.item()) by design
        scaler.update()
        doctor.log(loss=loss)

    with resdoctor.watch(
        model,
        opt,
        tmp_path / "r.pt",
        scaler=scaler,
        flush_every=1,  # a flush every step: it must not sync either
        smoothing_every=1,
        grad_share_every=1,
        update_every=1,
    ) as doctor:
        step(doctor)  # the first forward traces the model to find sites
        for _ in range(3):
            torch.cuda.set_sync_debug_mode("error")
            try:
                opt.zero_grad()
                with torch.autocast("cuda", dtype=torch.float16):
                    out = model(x)
                    loss = F.cross_entropy(
                        out.flatten(0, -2) if out.dim() > 2 else out, y.flatten()
                    )
                scaler.scale(loss).backward()  # every resdoctor hook runs inside these calls
            finally:
                torch.cuda.set_sync_debug_mode("default")
            scaler.step(opt)
            scaler.update()
            torch.cuda.set_sync_debug_mode("error")
            try:
                doctor.log(loss=loss)  # packing and the async copy must not sync either
            finally:
                torch.cuda.set_sync_debug_mode("default")
    run = resdoctor.load(tmp_path / "r.pt")
    assert run.steps == 4 and run.errors.empty
