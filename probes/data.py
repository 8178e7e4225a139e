"""Seeded synthetic data sets: learnable, tiny, drawn from a private generator (never the global
RNG, so a run with and without hooks sees the same batches)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

Batch = Callable[[int], tuple[tuple[Any, ...], Any]]


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(1000 + seed)


def regression(
    d_in: int = 16, n: int = 512, batch: int = 64, seed: int = 0, d_out: int = 1, noise: float = 0.0
) -> Batch:
    """``y = sin(x W1) W2`` teacher regression, cycled in mini-batches."""
    g = _gen(seed)
    x = torch.randn(n, d_in, generator=g)
    w1 = torch.randn(d_in, 32, generator=g) / d_in**0.5
    w2 = torch.randn(32, d_out, generator=g) / 32**0.5
    y = torch.sin(2 * x @ w1) @ w2 + noise * torch.randn(n, d_out, generator=g)

    def batch_at(step: int) -> tuple[tuple[Any, ...], Any]:
        i = (step * batch) % n
        return (x[i : i + batch],), y[i : i + batch]

    return batch_at


def linear_regression(d_in: int = 16, n: int = 256, seed: int = 0) -> Batch:
    """A realisable full-batch linear target: a model can drive the loss to ~0 (converges)."""
    g = _gen(seed)
    x = torch.randn(n, d_in, generator=g)
    y = x @ (torch.randn(d_in, 1, generator=g) / d_in**0.5)
    return lambda step: ((x,), y)


def images(
    n: int = 512,
    batch: int = 32,
    size: int = 12,
    classes: int = 10,
    seed: int = 0,
    label_noise: float = 0.25,
) -> Batch:
    """Random images labelled by a fixed random read-out of their pooled colour/texture, with a
    share of random labels (so the loss cannot collapse to 0 within a probe's few epochs)."""
    g = _gen(seed)
    x = torch.randn(n, 3, size, size, generator=g)
    feats = torch.cat([x.mean((2, 3)), x[:, :, ::2, ::2].std((2, 3))], 1)  # [n, 6]
    y = (feats @ torch.randn(6, classes, generator=g)).argmax(1)
    noisy = torch.rand(n, generator=g) < label_noise
    y[noisy] = torch.randint(0, classes, (int(noisy.sum()),), generator=g)

    def batch_at(step: int) -> tuple[tuple[Any, ...], Any]:
        i = (step * batch) % n
        return (x[i : i + batch],), y[i : i + batch]

    return batch_at


def tokens(vocab: int = 64, seq: int = 16, n: int = 256, batch: int = 16, seed: int = 0) -> Batch:
    """Next-token prediction on a sparse random Markov chain (3 successors per token)."""
    g = _gen(seed)
    succ = torch.randint(0, vocab, (vocab, 3), generator=g)
    seqs = torch.empty(n, seq + 1, dtype=torch.long)
    seqs[:, 0] = torch.randint(0, vocab, (n,), generator=g)
    for t in range(seq):
        pick = torch.randint(0, 3, (n,), generator=g)
        seqs[:, t + 1] = succ[seqs[:, t], pick]

    def batch_at(step: int) -> tuple[tuple[Any, ...], Any]:
        i = (step * batch) % n
        s = seqs[i : i + batch]
        return (s[:, :-1],), s[:, 1:]

    return batch_at


def graph(
    nodes: int = 200,
    classes: int = 4,
    d_in: int = 16,
    seed: int = 0,
    p_in: float = 0.08,
    p_out: float = 0.01,
) -> Batch:
    """A stochastic block model graph; features = class centre + noise; full-batch node labels."""
    from torch_geometric.utils import stochastic_blockmodel_graph

    g = _gen(seed)
    sizes = [nodes // classes] * classes
    probs = torch.full((classes, classes), p_out).fill_diagonal_(p_in)
    state = torch.random.get_rng_state()
    torch.manual_seed(1000 + seed)  # the SBM sampler draws from the global RNG: restore it after
    edge_index = stochastic_blockmodel_graph(sizes, probs)
    torch.random.set_rng_state(state)
    y = torch.arange(classes).repeat_interleave(nodes // classes)
    centres = torch.randn(classes, d_in, generator=g)
    x = 0.5 * centres[y] + torch.randn(len(y), d_in, generator=g)
    return lambda step: ((x, edge_index), y)


def cross_entropy(out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Cross-entropy over the last dimension (token logits [B, T, V] or class logits [B, C])."""
    logits = getattr(out, "logits", out)
    return torch.nn.functional.cross_entropy(
        logits.reshape(-1, logits.shape[-1]).float(), target.reshape(-1)
    )


def scaled_targets(batch: Batch, factor: float) -> Batch:
    """``batch`` with every target multiplied by ``factor``."""

    def batch_at(step: int) -> tuple[tuple[Any, ...], Any]:
        inputs, y = batch(step)
        return inputs, y * factor

    return batch_at


def mse(out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.mse_loss(out.float(), target)


def corrupt(batch: Batch, step: int, sample: int, where: str = "input") -> Batch:
    """``batch`` with one NaN in sample ``sample`` of the ``where`` ("input" | "target") tensor
    at ``step`` only (a bad record in the data set, met once)."""

    def batch_at(s: int) -> tuple[tuple[Any, ...], Any]:
        inputs, target = batch(s)
        if s != step:
            return inputs, target
        if where == "input":
            x = inputs[0].clone()
            x[sample, 0] = float("nan")
            return (x, *inputs[1:]), target
        y = target.clone()
        y[sample] = float("nan")
        return inputs, y

    return batch_at


def scrambled(batch: Batch, steps: tuple[int, ...], vocab: int = 64, seed: int = 0) -> Batch:
    """``batch`` with its tokens (inputs and targets) mapped through a fixed random
    permutation of the vocabulary at ``steps``: a batch from another distribution (a corrupt
    shard), on which a trained model is confidently wrong, and the loss spikes."""
    perm = torch.randperm(vocab, generator=_gen(seed + 77))
    bad = set(steps)

    def batch_at(s: int) -> tuple[tuple[Any, ...], Any]:
        inputs, target = batch(s)
        if s not in bad:
            return inputs, target
        return (perm[inputs[0]], *inputs[1:]), perm[target]

    return batch_at


def finite_rows(batch: Batch) -> Batch:
    """The check-inputs / stable-loss fix: drop the samples whose input or target holds NaN/Inf."""

    def batch_at(s: int) -> tuple[tuple[Any, ...], Any]:
        inputs, target = batch(s)
        x = inputs[0]
        keep = torch.isfinite(x).flatten(1).all(1) & torch.isfinite(target).flatten(1).all(1)
        return (x[keep], *inputs[1:]), target[keep]

    return batch_at
