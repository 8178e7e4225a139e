"""Optimisation fixes: clip-gradients, lower-lr, lr-warmup, mixed-precision."""

from __future__ import annotations

import numpy as np

from resdoctor.findings import Fix
from resdoctor.fixes.snippets import sig

TARGET_UPDATE_RATIO = 1e-3  # ||dW|| / ||W|| per step (Karpathy, CS231n "ratio of updates")


def clip_gradients(grad_norms: np.ndarray, first: int, last: int) -> Fix:
    """Clip at the median total gradient norm of the healthy steps ``first..last``.

    Pascanu et al. 2013 ("On the difficulty of training recurrent neural networks") set the
    threshold from the average norm over many updates; the median ignores the surge itself.
    """
    g = np.asarray(grad_norms, dtype=np.float64)
    g = g[np.isfinite(g)]
    p50 = sig(float(np.median(g))) if g.size else 1.0
    p90 = sig(float(np.percentile(g, 90))) if g.size else 1.0
    max_norm = p50 if p50 > 0 else 1.0
    snippet = (
        "# after loss.backward(), before optimizer.step() (with AMP: scaler.unscale_(optimizer) "
        "first)\n"
        f"torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm={max_norm!r})\n"
    )
    return Fix(
        code="clip-gradients",
        title=f"Clip the global gradient norm at {max_norm:g}",
        detail=(
            f"max_norm = median of grad_norm_total over steps {first}-{last}, before the "
            f"surge (p90 = {p90:g}; Pascanu et al. 2013). Clipping bounds each update "
            "while the cause is fixed."
        ),
        snippet=snippet,
        params={
            "max_norm": max_norm,
            "p50": p50,
            "p90": p90,
            "steps": [int(first), int(last)],
            "samples": int(g.size),
        },
    )


def lower_lr(
    factor: float, basis: str, current_lr: float | None = None, update_ratio: float | None = None
) -> Fix:
    """Multiply every learning rate by ``factor`` (< 1); ``basis`` says where it came from."""
    factor = sig(min(max(factor, 0.01), 0.5), 2)
    new_lr = sig(current_lr * factor, 2) if current_lr else None
    change = f"  # {current_lr:g} -> {new_lr:g}" if current_lr and new_lr else ""
    snippet = f'for group in optimizer.param_groups:\n    group["lr"] *= {factor!r}{change}\n'
    params: dict[str, object] = {"factor": factor, "basis": basis}
    if current_lr:
        params.update(current_lr=sig(current_lr, 3), new_lr=new_lr)
    if update_ratio is not None:
        params.update(update_ratio=sig(update_ratio), target_update_ratio=TARGET_UPDATE_RATIO)
    title = f"Lower the learning rate {1 / factor:.3g}x" + (f" (to {new_lr:g})" if new_lr else "")
    return Fix(code="lower-lr", title=title, detail=basis, snippet=snippet, params=params)


def lr_factor_from_updates(update_ratio: float) -> float:
    """LR factor that brings the median update ratio to ``TARGET_UPDATE_RATIO``."""
    return TARGET_UPDATE_RATIO / update_ratio


def lr_warmup(onset: int, peak_lr: float | None = None) -> Fix:
    """Linear warm-up over about twice the steps the run survived (Goyal et al. 2017)."""
    steps = int(max(10, sig(2 * max(onset, 1), 1)))
    snippet = (
        "warmup = torch.optim.lr_scheduler.LambdaLR(\n"
        f"    optimizer, lambda step: min(1.0, (step + 1) / {steps}))\n"
        "# call warmup.step() after every optimizer.step()\n"
    )
    peak = f" up to lr {peak_lr:g}" if peak_lr else ""
    return Fix(
        code="lr-warmup",
        title=f"Warm the learning rate up over {steps} steps{peak}",
        detail=(
            f"The trouble began at step {onset}, while the early updates are least "
            "reliable (adaptive optimisers' second moments are still noisy: Liu et al. 2020); "
            f"a linear warm-up of {steps} steps (about twice that) lets the network "
            "settle first (Goyal et al. 2017)."
        ),
        snippet=snippet,
        params={
            "warmup_steps": steps,
            "onset": int(onset),
            **({"peak_lr": sig(peak_lr, 3)} if peak_lr else {}),
        },
    )


def mixed_precision(
    reason: str, skipped_fraction: float | None = None, max_finite: float | None = None
) -> Fix:
    """bfloat16 autocast (float32's range) instead of float16, or a gentler GradScaler."""
    snippet = (
        "device_type = next(model.parameters()).device.type\n"
        "# bfloat16 has float32's exponent range: no overflow at 65504, no GradScaler needed\n"
        "autocast = torch.autocast(device_type=device_type, dtype=torch.bfloat16)\n"
        "# with autocast:\n"
        "#     loss = loss_fn(model(inputs), targets)\n"
        "# or keep float16 with a scaler that starts lower and grows more slowly:\n"
        "scaler = torch.amp.GradScaler(device_type, init_scale=2.0**10, growth_interval=4000)\n"
    )
    params: dict[str, object] = {
        "dtype": "bfloat16",
        "init_scale": 2.0**10,
        "growth_interval": 4000,
    }
    if skipped_fraction is not None:
        params["skipped_fraction"] = sig(skipped_fraction)
    if max_finite is not None:
        params["max_finite"] = sig(max_finite)
    return Fix(
        code="mixed-precision",
        title="Train in bfloat16 (or tame the GradScaler)",
        detail=reason,
        snippet=snippet,
        params=params,
    )


def raise_lr(factor: float, update_ratio: float, current_lr: float | None = None) -> Fix:
    """Multiply every learning rate by ``factor`` (> 1): updates far below ~1e-3 of the
    weights per step move nothing."""
    factor = sig(min(max(factor, 2.0), 100.0), 2)
    new_lr = sig(current_lr * factor, 2) if current_lr else None
    change = f"  # {current_lr:g} -> {new_lr:g}" if current_lr and new_lr else ""
    return Fix(
        code="raise-lr",
        title=f"Raise the learning rate {factor:g}x" + (f" (to {new_lr:g})" if new_lr else ""),
        detail=(
            f"The median update ratio ||dW||/||W|| is {update_ratio:.2g} per step; ~"
            f"{TARGET_UPDATE_RATIO:g} is the usual healthy level (Karpathy, CS231n): at this "
            "rate the weights barely move."
        ),
        snippet=f'for group in optimizer.param_groups:\n    group["lr"] *= {factor!r}{change}\n',
        params={
            "factor": factor,
            "update_ratio": sig(update_ratio),
            "target_update_ratio": TARGET_UPDATE_RATIO,
            **({"current_lr": sig(current_lr, 3), "new_lr": new_lr} if current_lr else {}),
        },
    )
