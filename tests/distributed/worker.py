"""torchrun worker: trains a tiny residual MLP under DDP or FSDP2 with resdoctor watching.

``python -m torch.distributed.run --nproc_per_node=2 worker.py MODE OUT``; MODE is ``ddp`` or
``fsdp``. Rank 1 makes NaN in ``blocks.1.branch.1``'s forward at step 7. Every rank saves the
reference values (full gradient norms per module, loss, update ratios, hook counts) to
``OUT/expected.rank{r}.pt``. ``ddp`` then records ``partial.pt`` on rank 0 only, and
``crash.pt`` on every rank until all ranks die without ``close()``.
"""

from __future__ import annotations

import os
import sys
from collections import Counter
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.profiler import ProfilerActivity, profile

import resdoctor
from resdoctor.models import ResidualMLP

STEPS, NAN_STEP, NAN_RANK, NAN_MODULE = 10, 7, 1, "blocks.1.branch.1"
BAD_INPUT = (1, 5, 2)  # rank, step, sample of the NaN input (bad_batch)
CENSUS_STEPS = 2  # unwatched steps profiled for the collective census


def full(t: torch.Tensor) -> torch.Tensor:
    return t.full_tensor() if hasattr(t, "full_tensor") else t


def module_norms(model: nn.Module, names: list[str], grads: bool) -> list[float]:
    """Reference norms of each module's full (unsharded) gradients or parameters."""
    modules = dict(model.named_modules())
    out = []
    for name in names:
        ps = list(modules[name].parameters(recurse=False))
        ts = [full(p.grad if grads else p.detach()) for p in ps]
        out.append(float(torch.sqrt(sum((t.double() ** 2).sum() for t in ts))))
    return out


def hook_count(model: nn.Module, opt: torch.optim.Optimizer) -> int:
    modules = sum(
        len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks)
        for m in model.modules()
    )
    return modules + len(opt._optimizer_step_pre_hooks) + len(opt._optimizer_step_post_hooks)


def build(mode: str) -> tuple[nn.Module, nn.Module]:
    torch.manual_seed(0)
    model = ResidualMLP(d_in=8, dim=16, depth=3)
    state = {"step": 0, "inject": True}

    def inject(module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor | None:
        if dist.get_rank() == NAN_RANK and state["step"] == NAN_STEP and state["inject"]:
            return output * float("nan")
        return None

    # registered before watch(): resdoctor's check sees the faulty output of this very module
    dict(model.named_modules())[NAN_MODULE].register_forward_hook(inject)
    model.state = state  # type: ignore[assignment]
    if mode == "fsdp":
        from torch.distributed.fsdp import fully_shard

        for block in model.blocks:
            fully_shard(block)
        fully_shard(model)
        return model, model
    return model, nn.parallel.DistributedDataParallel(model)


def bad_batch(out: str) -> None:
    """Issue 14: rank 1's input batch holds a NaN at step 5; every other value stays finite.
    Rank 0 only receives the NaN through the gradient all-reduce."""
    rank = dist.get_rank()
    torch.manual_seed(0)
    model = ResidualMLP(d_in=8, dim=16, depth=3)
    wrapped = nn.parallel.DistributedDataParallel(model)
    opt = torch.optim.SGD(wrapped.parameters(), lr=0.05)
    doctor = resdoctor.watch(model, optimizer=opt, path=os.path.join(out, "input.pt"))
    for step in range(8):
        x = torch.randn(4, 8, generator=torch.Generator().manual_seed(1000 * rank + step))
        if rank == BAD_INPUT[0] and step == BAD_INPUT[1]:
            x[BAD_INPUT[2], 3] = float("nan")
        loss = wrapped(x).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        doctor.log(loss=loss.detach())
    doctor.close()
    dist.barrier()
    dist.destroy_process_group()


def main(mode: str, out: str) -> None:
    dist.init_process_group("gloo")
    if mode == "ddp-input":
        bad_batch(out)
        return
    rank = dist.get_rank()
    model, wrapped = build(mode)
    names = [n for n, m in model.named_modules() if list(m.parameters(recurse=False))]
    opt = torch.optim.SGD(wrapped.parameters(), lr=0.05)
    hooks_before = hook_count(model, opt)
    model.state["inject"] = False  # the same loop unwatched, for the collective census
    for _ in range(2):  # DDP broadcasts its rebuilt buckets once, in its second forward
        wrapped(torch.randn(4, 8)).sum().backward()
        opt.zero_grad()
    with profile(activities=[ProfilerActivity.CPU]) as plain:
        train(model, wrapped, opt, None, new_expected(names), rank, steps=CENSUS_STEPS)
    model.state["inject"] = True
    doctor = resdoctor.watch(
        model,
        optimizer=opt,
        path=os.path.join(out, "run.pt"),
        flush_every=2,
        flush_seconds=0,
        update_every=1,
    )
    expected = new_expected(names)
    with profile(activities=[ProfilerActivity.CPU]) as watched:
        train(model, wrapped, opt, doctor, expected, rank)
    expected["collectives"] = [collectives(plain), collectives(watched)]
    doctor.close()
    expected["hooks"] = [hooks_before, hook_count(model, opt)]
    torch.save(expected, os.path.join(out, f"expected.rank{rank}.pt"))
    if mode == "ddp":
        watch_on_rank_0_only(model, wrapped, opt, out, rank)
        dist.barrier()
        crash(model, wrapped, opt, out)
    dist.barrier()
    dist.destroy_process_group()


def new_expected(names: list[str]) -> dict[str, Any]:
    return {"modules": names, "grad_norm": [], "loss": [], "update": []}


def collectives(prof: profile) -> dict[str, int]:
    """Collective calls seen by the profiler, by name (``c10d::allreduce_``, ...)."""
    return dict(Counter(e.name for e in prof.events() if e.name.startswith(("c10d::", "gloo:"))))


def train(
    model: nn.Module,
    wrapped: nn.Module,
    opt: torch.optim.Optimizer,
    doctor: Any,
    expected: dict[str, Any],
    rank: int,
    steps: int = STEPS,
) -> None:
    names = expected["modules"]
    for step in range(steps):
        model.state["step"] = step
        gen = torch.Generator().manual_seed(1000 * rank + step)
        x = torch.randn(4, 8, generator=gen)
        loss = wrapped(x).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        expected["grad_norm"].append(module_norms(model, names, grads=True))
        before = [full(p.detach()).clone() for p in model.parameters()]
        opt.step()
        after = [full(p.detach()) for p in model.parameters()]
        expected["update"].append(update_ratios(model, names, before, after))
        expected["loss"].append(float(loss.detach()))
        if doctor is not None:
            doctor.log(loss=loss.detach())


def watch_on_rank_0_only(
    model: nn.Module, wrapped: nn.Module, opt: torch.optim.Optimizer, out: str, rank: int
) -> None:
    """Only rank 0 watches: its close() must not wait for rank 1."""
    path = os.path.join(out, "partial.pt")
    doctor = resdoctor.watch(model, optimizer=opt, path=path) if rank == 0 else None
    for _ in range(2):
        wrapped(torch.randn(4, 8)).pow(2).mean().backward()
        opt.step()
        if doctor is not None:
            doctor.log()
    if doctor is not None:
        doctor.close()


def crash(model: nn.Module, wrapped: nn.Module, opt: torch.optim.Optimizer, out: str) -> None:
    """Every rank dies after 5 steps without close(): only the periodic flushes remain."""
    doctor = resdoctor.watch(
        model, optimizer=opt, path=os.path.join(out, "crash.pt"), flush_every=2, flush_seconds=0
    )
    for _ in range(5):
        wrapped(torch.randn(4, 8)).pow(2).mean().backward()
        opt.step()
    os._exit(0 if doctor.step == 4 else 1)


def update_ratios(
    model: nn.Module, names: list[str], before: list[torch.Tensor], after: list[torch.Tensor]
) -> list[float]:
    index = {id(p): i for i, p in enumerate(model.parameters())}
    modules = dict(model.named_modules())
    out = []
    for name in names:
        idx = [index[id(p)] for p in modules[name].parameters(recurse=False)]
        delta = sum(((after[i] - before[i]).double() ** 2).sum() for i in idx)
        norm = sum((before[i].double() ** 2).sum() for i in idx)
        out.append(float(torch.sqrt(delta / norm)))
    return out


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
