"""Fixes for NaN/Inf that starts outside the model: in the data it is fed, or in the loss."""

from __future__ import annotations

from collections.abc import Sequence

from resdoctor.findings import Fix


def check_inputs(argument: str, samples: Sequence[int], values: int, batch: int) -> Fix:
    """Find and drop (or repair) the samples whose inputs hold NaN/Inf."""
    shown = ", ".join(str(s) for s in samples[:8]) or "?"
    snippet = (
        "import torch\n\n\n"
        "def bad_samples(x: torch.Tensor) -> torch.Tensor:\n"
        '    """Indices of the samples (dim 0) holding NaN/Inf."""\n'
        "    return (~torch.isfinite(x)).flatten(1).any(1).nonzero().flatten()\n\n\n"
        "# 1. find the rows in the dataset once, before training:\n"
        "#    bad = [i for i in range(len(dataset)) if not torch.isfinite(dataset[i][0]).all()]\n"
        "# 2. or guard each batch (a loader that yields dataset indices names the rows):\n"
        f"#    x = batch[{argument!r}] / the tensor passed as {argument}\n"
        "#    bad = bad_samples(x)\n"
        "#    if len(bad):\n"
        '#        print("non-finite samples at batch positions", bad.tolist())\n'
        "#        keep = torch.ones(len(x), dtype=torch.bool); keep[bad] = False\n"
        "#        x, y = x[keep], y[keep]   # drop them (or repair them at the source)\n"
    )
    return Fix(
        code="check-inputs",
        title=f"Find and drop the non-finite samples in `{argument}`",
        detail=(
            f"The batch the model received held {values} NaN/Inf value(s) in `{argument}`, in "
            f"{len(samples)} of {batch} samples (batch positions {shown}): the data, not the "
            "model, made them. Find those rows in the dataset and drop or repair them; "
            "clipping or a lower learning rate cannot help."
        ),
        snippet=snippet,
        params={"argument": argument, "samples": list(samples)[:8], "values": int(values)},
    )


def stable_loss(seen_as: str) -> Fix:
    """Compute the loss from logits with a stable op, clamp log/div operands, check targets."""
    snippet = (
        "import torch\n"
        "import torch.nn.functional as F\n\n"
        "# from logits: log-softmax and NLL in one stable op (never log(softmax(x)))\n"
        "loss = F.cross_entropy(logits, targets)\n"
        "# or, if you need log-probabilities: F.log_softmax(logits, dim=-1)\n\n"
        "# a hand-written loss: keep the operand of log / division away from 0\n"
        "EPS = 1e-7\n"
        "# loss = -(p.gather(1, targets[:, None]).clamp_min(EPS).log()).mean()\n\n"
        "# and check the targets: a NaN label makes the loss NaN with a finite model\n"
        'assert torch.isfinite(targets).all(), "non-finite targets in this batch"\n'
    )
    return Fix(
        code="stable-loss",
        title="Compute the loss stably and check the targets",
        detail=(
            f"Every module output was finite, but {seen_as} was not: the loss computation made "
            "the NaN/Inf (log(0), 0/0, or a non-finite target). Compute it from logits with "
            "F.cross_entropy or log_softmax, clamp the operand of log / division with a small "
            "eps, and check the targets. Clipping or a lower learning rate would not help."
        ),
        snippet=snippet,
        params={"seen_as": seen_as, "eps": 1e-7},
    )


def skip_batch(what: str, sigmas: float, window: int) -> Fix:
    """Skip the optimizer step when the loss (or gradient norm) spikes: the OLMo / PaLM
    practice of dropping the offending batch instead of letting it move the weights."""
    snippet = (
        "from collections import deque\n\n"
        f"recent = deque(maxlen={window})  # the last {window} step values\n\n"
        "# each step, after loss.backward() (value: loss.item() or the total gradient norm)\n"
        "mean = sum(recent) / len(recent) if recent else None\n"
        "std = (sum((v - mean) ** 2 for v in recent) / len(recent)) ** 0.5 if recent else None\n"
        f"if mean is not None and len(recent) >= 20 and value > mean + {sigmas:g} * std:\n"
        "    optimizer.zero_grad()  # skip this batch: log its index to look at the data\n"
        "else:\n"
        "    optimizer.step()\n"
        "    recent.append(value)\n"
    )
    return Fix(
        code="skip-batch",
        title=f"Skip the step when the {what} spikes ({sigmas:g} sigma)",
        detail=(
            f"A {what} {sigmas:g} sigma above the last {window} steps comes from one batch "
            "(bad data) or a transient instability: skip that optimizer step and record the "
            "batch (Chowdhery et al. 2022, PaLM, restarted around such batches)."
        ),
        snippet=snippet,
        params={"sigmas": sigmas, "window": window, "signal": what},
    )


def overfit_batch() -> Fix:
    """Check that the model can learn at all: overfit one fixed batch (Karpathy's recipe)."""
    snippet = (
        "x, y = next(iter(loader))  # one fixed batch\n"
        "for step in range(200):\n"
        "    optimizer.zero_grad()\n"
        "    loss = loss_fn(model(x), y)\n"
        "    loss.backward()\n"
        "    optimizer.step()\n"
        "print(float(loss))  # ~0 if the model, loss and labels fit together; if not: look at\n"
        "# the labels (shuffled apart from the inputs?), the loss (targets' format) and the LR\n"
    )
    return Fix(
        code="overfit-batch",
        title="Check the model can overfit one batch",
        detail=(
            "A loss that stays at its initial level with healthy gradients is most often the "
            "data or the loss: labels shuffled apart from inputs, a target in the wrong "
            "format, a frozen or detached part of the model. Overfitting one fixed batch tells "
            "which (Karpathy, 'A Recipe for Training Neural Networks', 2019)."
        ),
        snippet=snippet,
        params={"steps": 200},
    )
