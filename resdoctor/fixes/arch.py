"""Architectural fixes: residual-scaling, add-normalization, pre-activation, pre-layernorm,
guard-op and reduce-depth. Each names the modules to change, taken from the run's sites."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from resdoctor.findings import Fix
from resdoctor.fixes.snippets import branch_taps, names_literal, short_list, sig

NORM_TYPES = (
    "LayerNorm",
    "BatchNorm1d",
    "BatchNorm2d",
    "BatchNorm3d",
    "GroupNorm",
    "RMSNorm",
    "InstanceNorm1d",
    "InstanceNorm2d",
    "InstanceNorm3d",
)

ADD_NEW_PARAMS = (
    "if new_params:  # the wrappers' parameters are new: give them to the optimizer\n"
    '    optimizer.add_param_group({"params": new_params})\n'
)


HELPERS = "from resdoctor.fixes.helpers import {}\n"  # real modules: a snippet stays short


def _header(*names: str) -> str:
    return "from torch import nn\n\n" + HELPERS.format(
        ", ".join(names or ("BranchWrapper", "replace_module"))
    )


def residual_scaling(
    sites: Sequence[dict[str, Any]],
    depth: int,
    post_norm: bool = False,
    reason: str = "",
    *,
    branch_ratio: float | None = None,
    growth: float | None = None,
) -> Fix:
    """Scale each residual branch by alpha: 1/sqrt(N) (DeepNorm's 1/alpha for post-LN), or a
    value derived from the measured ``branch_ratio`` (median ||F(x)||/||x|| of the worst site)
    or per-block stream RMS ``growth``."""
    n = max(int(depth), 1)
    deep_alpha, deep_beta = sig((2 * n) ** 0.25, 3), sig((8 * n) ** -0.25, 3)
    taps = [(m, i) for _, m, i in branch_taps(sites)]
    blocks = list(dict.fromkeys(str(s.get("owner", "")) for s in sites))
    alpha, formula = _alpha(n, deep_alpha, post_norm, branch_ratio, growth)
    head = f"\nALPHA = {alpha}  # N = {n} branches; derivation: see the fix's detail\n"
    if taps:
        snippet = (
            _header("BranchWrapper", "Scale", "replace_module")
            + head
            + _wrap_branches(taps, deep_beta if post_norm else None)
        )
    else:  # no module output carries the branch: edit the blocks' forward by hand
        snippet = (
            "from resdoctor.fixes.helpers import Scale\n"
            + head
            + f"BLOCKS = {names_literal(blocks)}\n"
            "# in each block: self.scale = Scale(ALPHA) in __init__, and in forward\n"
            "#     x = x + self.scale(branch(x))     instead of x + branch(x)\n"
        )
    return Fix(
        code="residual-scaling",
        title=f"Scale the {len(taps) or len(sites)} residual branches by alpha={alpha}",
        detail=(
            f"{reason} Multiply each branch by a learnable alpha initialised at {formula} "
            f"(N = {n}); 1/sqrt(N) keeps the stream's variance O(1) with depth (Hayou et al. "
            "2021). Alternatives: SkipInit / ReZero alpha = 0 (De & Smith 2020; Bachlechner "
            f"et al. 2020); DeepNorm alpha = (2N)^(1/4) = {deep_alpha}, beta = (8N)^(-1/4) = "
            f"{deep_beta} for post-LN (Wang et al. 2022)."
        ).strip(),
        snippet=snippet,
        params={
            "scale": alpha,
            "formula": formula,
            "N": n,
            "branches": [m for m, _ in taps],
            "blocks": blocks,
            "rezero_alpha": 0.0,
            "deepnorm_alpha": deep_alpha,
            "deepnorm_beta": deep_beta,
            "post_norm": bool(post_norm),
            "measured_branch_ratio": branch_ratio,
            "measured_growth": growth,
        },
    )


def _alpha(
    n: int, deep_alpha: float, post_norm: bool, branch_ratio: float | None, growth: float | None
) -> tuple[float, str]:
    """The branch scale and the formula that gave it (see ``residual_scaling``)."""
    if post_norm:  # LN(alpha*x + F(x)) == LN(x + F(x)/alpha): DeepNorm as a branch scale
        alpha, formula = 1.0 / deep_alpha, f"DeepNorm: 1/alpha, alpha=(2N)^(1/4)={deep_alpha}"
    else:
        alpha, formula = 1.0 / math.sqrt(n), "1/sqrt(N)"
    if growth is not None and growth > 1.0 and not post_norm and n > 1:
        # Var grows by (1 + alpha^2 (g^2 - 1)) per block; allow sqrt(N) in RMS over the N sites,
        # what a healthy pre-activation ResNet's stream does (He et al. 2016)
        target = n ** (1.0 / (n - 1)) - 1.0
        alpha = min(1.0, math.sqrt(target / (growth * growth - 1.0)))
        formula = (
            f"sqrt((N^(1/(N-1)) - 1) / (g^2 - 1)) with the measured per-block growth "
            f"g = {sig(growth, 3)}: the stream then grows like sqrt(N), not g^N"
        )
    if branch_ratio is not None and branch_ratio > 0 and 1.0 / branch_ratio < alpha:
        # bring the measured branch back to the skip's size: alpha * ||F(x)||/||x|| ~ 1
        alpha = 1.0 / branch_ratio
        formula = (
            f"1/r with the measured branch/skip ratio r = {sig(branch_ratio, 3)} "
            "(alpha * r ~ 1: the branch no larger than the skip)"
        )
    return sig(alpha, 3), formula


def _wrap_branches(taps: list[tuple[str, int | None]], beta: float | None) -> str:
    """Snippet lines wrapping each branch module in ``BranchWrapper(..., Scale(ALPHA))``."""
    entries = [m if i is None else f"{m}|{i}" for m, i in taps]
    beta_line = (
        ""
        if beta is None
        else (
            "    for p in model.get_submodule(name).parameters():  # DeepNorm init\n"
            f"        if p.dim() > 1:\n            p.data.mul_({beta})\n"
        )
    )
    if beta is None and all(i is None for _, i in taps):  # the common case, in 4 lines
        return (
            f"BRANCHES = {names_literal(entries)}\n"
            "scales = [Scale(ALPHA) for _ in BRANCHES]\n"
            "for name, scale in zip(BRANCHES, scales):\n"
            "    branch = model.get_submodule(name)\n"
            "    replace_module(model, name, BranchWrapper(branch, scale))\n"
            'optimizer.add_param_group({"params": [s.alpha for s in scales]})\n'
        )
    return (
        f"BRANCHES = {names_literal(entries)}\n"
        "new_params = []\n"
        "for entry in BRANCHES:\n"
        '    name, _, index = entry.partition("|")\n'
        f"{beta_line}"
        "    wrapped = BranchWrapper(model.get_submodule(name), Scale(ALPHA),\n"
        "                            int(index) if index else None)\n"
        "    new_params += list(wrapped.post.parameters())\n"
        "    replace_module(model, name, wrapped)\n" + ADD_NEW_PARAMS
    )


ACTIVATIONS = "(nn.ReLU, nn.GELU, nn.SiLU, nn.LeakyReLU, nn.Tanh, nn.Sigmoid)"


def add_normalization(
    sites: Sequence[dict[str, Any]], reason: str = "", before_activation: bool = False
) -> Fix:
    """Normalise each branch output (LayerNorm over features; BatchNorm2d for feature maps), or
    with ``before_activation`` the input of each branch's last activation."""
    entries, names, norms = [], [], []
    for site, module, index in branch_taps(sites):
        shape = list(site.get("shape") or [])
        if len(shape) == 4:
            norm = f"nn.BatchNorm2d({shape[1]})"
        elif shape:
            norm = f"nn.LayerNorm({shape[-1]})"
        else:
            continue
        entries.append(f"    ({module!r}, {index!r}, {norm}),\n")
        names.append(module)
        norms.append((norm, index))
    if len(set(norms)) == 1 and norms[0][1] is None:  # one norm for every branch: a loop
        loop = f"for name in {names_literal(names)}:\n    index, norm = None, {norms[0][0]}\n"
    else:
        loop = "for name, index, norm in [\n" + "".join(entries) + "]:\n"
    body = (
        "\nnew_params = []\n"
        + loop
        + (_BEFORE_ACTIVATION if before_activation else _AFTER_BRANCH)
        + ADD_NEW_PARAMS
    )
    where = (
        "before the last activation of each branch, so its pre-activations are re-centred "
        "and the units fire again (Ioffe & Szegedy 2015; Lu et al. 2019)"
        if before_activation
        else "at the end of each branch"
    )
    return Fix(
        code="add-normalization",
        title=f"Normalise {len(names)} residual branches",
        detail=(
            f"{reason} Add a normalisation {where}; it bounds what the branch adds to the "
            "stream (res-post-norm: Liu et al. 2022, Swin V2; BatchNorm in ResNet branches: "
            f"He et al. 2016). Branches: {short_list(names)}."
        ).strip(),
        snippet=_header() + body,
        params={"branches": names, "before_activation": bool(before_activation)},
    )


_AFTER_BRANCH = (
    "    wrapped = BranchWrapper(model.get_submodule(name), norm, index)\n"
    "    new_params += list(norm.parameters())\n"
    "    replace_module(model, name, wrapped)\n"
)

_BEFORE_ACTIVATION = (
    "    branch = model.get_submodule(name)\n"
    '    if not isinstance(branch, nn.Sequential) and "." in name:  # a layer of the branch\n'
    '        name = name.rpartition(".")[0]\n'
    "        branch = model.get_submodule(name)\n"
    "    if not isinstance(branch, nn.Sequential):\n"
    "        continue  # not a Sequential: add the norm to its forward by hand\n"
    f"    acts = [i for i, m in enumerate(branch) if isinstance(m, {ACTIVATIONS})]\n"
    "    if acts:  # the norm goes in front of the last activation\n"
    "        layers = list(branch)\n"
    "        layers.insert(acts[-1], norm)\n"
    "        new_params += list(norm.parameters())\n"
    "        replace_module(model, name, nn.Sequential(*layers))\n"
)


def pre_activation(blocks: Sequence[str], block_type: str) -> Fix:
    """Convert post-activation blocks to He et al. 2016 pre-activation blocks."""
    snippet = (
        "from torch import nn\n\n\n"
        f"class PreAct{block_type}(nn.Module):\n"
        '    """x + conv(relu(bn(conv(relu(bn(x)))))): nothing after the addition."""\n\n'
        "    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:\n"
        "        super().__init__()\n"
        "        self.bn1, self.bn2 = nn.BatchNorm2d(cin), nn.BatchNorm2d(cout)\n"
        "        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)\n"
        "        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)\n"
        "        self.shortcut = (nn.Conv2d(cin, cout, 1, stride, bias=False)\n"
        "                         if stride != 1 or cin != cout else None)\n\n"
        "    def forward(self, x):\n"
        "        out = self.bn1(x).relu()\n"
        "        skip = x if self.shortcut is None else self.shortcut(out)\n"
        "        out = self.conv2(self.bn2(self.conv1(out)).relu())\n"
        "        return out + skip\n\n\n"
        f"BLOCKS = {names_literal(list(blocks))}  # rebuild these with PreAct{block_type}\n"
    )
    return Fix(
        code="pre-activation",
        title=f"Use pre-activation blocks for {short_list(blocks, 3)}",
        detail=(
            "Move BatchNorm and ReLU before the convolutions and leave the addition "
            "unobstructed (He et al. 2016, 'Identity mappings in deep residual networks'); "
            "add a final BN-ReLU before the head."
        ),
        snippet=snippet,
        params={"blocks": list(blocks), "block_type": block_type},
    )


def pre_layernorm(blocks: Sequence[str], dim: int | None) -> Fix:
    """Move each block's LayerNorm onto the branch input (pre-LN; Xiong et al. 2020)."""
    d = dim or 512
    snippet = (
        "from torch import nn\n\n\n"
        "class PreLNBlock(nn.Module):\n"
        '    """x + attn(LN(x)), then x + mlp(LN(x)): the stream is never normalised."""\n\n'
        f"    def __init__(self, dim: int = {d}, heads: int = 4) -> None:\n"
        "        super().__init__()\n"
        "        self.ln1, self.ln2 = nn.LayerNorm(dim), nn.LayerNorm(dim)\n"
        "        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)\n"
        "        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(),\n"
        "                                 nn.Linear(4 * dim, dim))\n\n"
        "    def forward(self, x):\n"
        "        h = self.ln1(x)\n"
        "        x = x + self.attn(h, h, h, need_weights=False)[0]\n"
        "        return x + self.mlp(self.ln2(x))\n\n\n"
        f"BLOCKS = {names_literal(list(blocks))}  # rebuild these as PreLNBlock; add a final LN\n"
    )
    return Fix(
        code="pre-layernorm",
        title=f"Use pre-LayerNorm for {short_list(blocks, 3)}",
        detail=(
            "Post-LN blocks amplify updates through the normalised stream and need warm-up "
            "(Xiong et al. 2020; Liu et al. 2020): normalise the branch input instead, and "
            "add one LayerNorm before the head."
        ),
        snippet=snippet,
        params={"blocks": list(blocks), "dim": d},
    )


# how to keep each NaN-prone op's operand in its finite domain
_CLAMPS = {
    "sqrt": "torch.sqrt(x.clamp_min(EPS))",
    "rsqrt": "torch.rsqrt(x.clamp_min(EPS))",
    "log": "torch.log(x.clamp_min(EPS))",
    "log2": "torch.log2(x.clamp_min(EPS))",
    "log10": "torch.log10(x.clamp_min(EPS))",
    "log1p": "torch.log1p(x.clamp_min(-1 + EPS))",
    "div": "a / b.abs().clamp_min(EPS).copysign(b)",
    "truediv": "a / b.abs().clamp_min(EPS).copysign(b)",
    "true_divide": "a / b.abs().clamp_min(EPS).copysign(b)",
    "reciprocal": "1 / x.abs().clamp_min(EPS).copysign(x)",
    "pow": "x.clamp_min(EPS) ** p  # a fractional or negative power of x <= 0 is NaN/Inf",
    "exp": "torch.exp(x.clamp_max(80.0))  # exp(89) overflows float32",
    "expm1": "torch.expm1(x.clamp_max(80.0))",
    "acos": "torch.acos(x.clamp(-1 + EPS, 1 - EPS))",
    "asin": "torch.asin(x.clamp(-1 + EPS, 1 - EPS))",
    "atanh": "torch.atanh(x.clamp(-1 + EPS, 1 - EPS))",
    "logit": "torch.logit(x, eps=EPS)",
}


def guard_op(
    module: str,
    module_type: str,
    phase: str,
    input_absmax: float | None = None,
    ops: Sequence[str] = (),
) -> Fix:
    """Clamp the operand of the NaN-prone op(s) ``ops`` that ran in ``module``'s own code (or,
    for a normalisation layer, raise its eps). Never a hook that replaces NaN with numbers."""
    if module_type in NORM_TYPES:
        snippet = f"model.get_submodule({module!r}).eps = 1e-3  # default 1e-5\n"
        how = f"raise {module_type}.eps to 1e-3 so a near-constant input cannot divide by ~0"
    else:
        lines = [f"# {op}: {_CLAMPS[op]}" for op in ops if op in _CLAMPS]
        custom = [op for op in ops if op not in _CLAMPS]
        lines += [
            f"# {op}: a custom autograd op: keep its backward finite where its input is "
            "at the edge of its domain"
            for op in custom
        ]
        snippet = (
            f"block = model.get_submodule({module!r})  # {module_type}\n"
            f"# in {module_type}.forward, replace\n" + "\n".join(lines) + "\nEPS = 1e-6\n"
        )
        derivative = (
            " (a finite forward can still have an infinite derivative, e.g. sqrt at 0)"
            if phase == "backward"
            else ""
        )
        how = (
            f"clamp the operand of {', '.join(ops) or 'the op'} with eps=1e-6 so it stays in "
            f"the op's domain{derivative}"
        )
    return Fix(
        code="guard-op",
        title=f"Guard {', '.join(ops) or 'the op'} in {module or 'the model'} ({module_type})",
        detail=f"The first non-finite value was made in {module or 'the model'} in the {phase} "
        f"pass while what reached it was finite: {how}.",
        snippet="import torch\n\n" + snippet,
        params={
            "module": module,
            "module_type": module_type,
            "phase": phase,
            "eps": 1e-6,
            "ops": list(ops),
        },
    )


def reduce_depth(blocks: Sequence[str], depth: int, keep: int, reason: str) -> Fix:
    """Drop ``blocks`` (residual blocks whose branch adds ~nothing): ``keep`` of ``depth`` stay."""
    snippet = (
        "from torch import nn\n\nfrom resdoctor.fixes.helpers import replace_module\n\n"
        f"for name in {names_literal(list(blocks))}:\n"
        "    # an identity-skip block whose branch adds ~0 computes ~x: drop it\n"
        "    replace_module(model, name, nn.Identity())\n"
    )
    return Fix(
        code="reduce-depth",
        title=f"Reduce depth from {depth} to {keep} residual blocks",
        detail=f"{reason} Blocks: {short_list(blocks)}. Or rebuild the model with depth {keep}.",
        snippet=snippet,
        params={"blocks": list(blocks), "depth": int(keep), "depth_before": int(depth)},
    )


def add_normalization_layers(layers: Sequence[str], types: Sequence[str]) -> Fix:
    """Normalise the output of plain layers (LayerNorm after Linear, BatchNorm2d after Conv2d)."""
    usable = [n for n, t in zip(layers, types, strict=False) if t in ("Linear", "Conv2d")]
    snippet = (
        "from torch import nn\n\nfrom resdoctor.fixes.helpers import norm_for, replace_module\n\n"
        "new_params = []\n"
        f"for name in {names_literal(usable)}:\n"
        "    layer = model.get_submodule(name)\n"
        "    norm = norm_for(layer)\n"
        "    new_params += list(norm.parameters())\n"
        "    replace_module(model, name, nn.Sequential(layer, norm))\n"
        'optimizer.add_param_group({"params": new_params})\n'
    )
    return Fix(
        code="add-normalization",
        title=f"Normalise the outputs of {short_list(usable, 3) or 'the early layers'}",
        detail=(
            "Normalisation keeps each layer's output at unit scale so the backward signal "
            "is not shrunk layer after layer (Ioffe & Szegedy 2015; Ba et al. 2016)."
        ),
        snippet=snippet,
        params={"layers": usable},
    )


def add_residual(layers: Sequence[str]) -> Fix:
    """Wrap shape-preserving layers as ``x + layer(x)`` (He et al. 2016)."""
    snippet = (
        "from torch import nn\n\nfrom resdoctor.fixes.helpers import Residual, replace_module\n\n"
        f"for name in {names_literal(list(layers))}:\n"
        "    layer = model.get_submodule(name)\n"
        "    square = (isinstance(layer, nn.Linear) and layer.in_features == layer.out_features)"
        " or (\n"
        "        isinstance(layer, nn.Conv2d) and layer.in_channels == layer.out_channels\n"
        "        and layer.stride in (1, (1, 1)))\n"
        "    if square:  # only shape-preserving layers can take a skip\n"
        "        replace_module(model, name, Residual(layer))\n"
    )
    return Fix(
        code="add-residual",
        title=f"Add skip connections around {short_list(layers, 3)}",
        detail=(
            "An identity path carries the gradient to early layers undiminished (He et al. "
            "2016); wrap the shape-preserving layers or blocks as x + F(x)."
        ),
        snippet=snippet,
        params={"layers": list(layers)},
    )


def qk_norm() -> Fix:
    """Normalise queries and keys before the attention logits (QK-norm), plus a z-loss on the
    output logits: the transformer remedies for logit growth that makes the loss spike."""
    snippet = (
        "from torch import nn\n"
        "import torch.nn.functional as F\n\n"
        "# in each attention block, after projecting q and k ([batch, heads, tokens, head_dim]):\n"
        "#     q, k = self.q_norm(q), self.k_norm(k)   # self.q_norm = nn.LayerNorm(head_dim)\n\n"
        "# and a z-loss on the output logits (PaLM: 1e-4):\n"
        "z_loss = 1e-4 * torch.logsumexp(logits, dim=-1).pow(2).mean()\n"
        "loss = F.cross_entropy(logits.flatten(0, -2), targets.flatten()) + z_loss\n"
    )
    return Fix(
        code="qk-norm",
        title="Normalise queries and keys (QK-norm) and add a z-loss",
        detail=(
            "Attention logits that grow make the softmax saturate and the loss spike; "
            "LayerNorm on q and k bounds them (Dehghani et al. 2023; Wortsman et al. 2023) and "
            "a small z-loss keeps the output logits near 0 (Chowdhery et al. 2022)."
        ),
        snippet=snippet,
        params={"z_loss": 1e-4},
    )


def leaky_relu(layers: Sequence[str], slope: float = 0.01) -> Fix:
    """Replace the dying ReLU modules by LeakyReLU: a dead unit still passes a gradient."""
    snippet = (
        "from torch import nn\n\nfrom resdoctor.fixes.helpers import replace_module\n\n"
        f"for name in {names_literal(list(layers))}:\n"
        f"    replace_module(model, name, nn.LeakyReLU({slope}))\n"
    )
    return Fix(
        code="leaky-relu",
        title=f"Use LeakyReLU({slope:g}) in {short_list(layers, 3)}",
        detail=(
            "A ReLU unit whose pre-activation is negative for every input passes no gradient "
            "and never recovers; a small negative slope keeps it trainable (Maas et al. 2013; "
            "Lu et al. 2019 on dying ReLU). A lower learning rate keeps units from dying."
        ),
        snippet=snippet,
        params={"layers": list(layers), "negative_slope": slope},
    )


def replace_activation(layers: Sequence[str]) -> Fix:
    """Replace saturating sigmoid / tanh hidden activations by GELU."""
    snippet = (
        "from torch import nn\n\nfrom resdoctor.fixes.helpers import replace_module\n\n"
        f"for name in {names_literal(list(layers))}:  # hidden layers only: keep an output\n"
        "    replace_module(model, name, nn.GELU())   # sigmoid that makes probabilities\n"
    )
    return Fix(
        code="replace-activation",
        title=f"Replace the saturating activations in {short_list(layers, 3)} by GELU",
        detail=(
            "Past |x| = 5 a sigmoid's derivative is below 0.007 and a tanh's below 2e-4: the "
            "layers below learn nothing (Glorot & Bengio 2010). A non-saturating activation, or "
            "a normalisation before the squashing one, brings the gradient back."
        ),
        snippet=snippet,
        params={"layers": list(layers), "activation": "GELU"},
    )


def xavier_init(layers: Sequence[str]) -> Fix:
    """Re-initialise the layers feeding saturated sigmoid / tanh modules with Glorot's scale."""
    snippet = (
        "from torch import nn\n\n"
        f"SATURATED = {names_literal(list(layers))}  # the sigmoid / tanh modules\n"
        "modules = dict(model.named_modules())\n"
        "names = list(modules)\n"
        "for act in SATURATED:  # the Linear / Conv just before each one\n"
        "    before = [modules[n] for n in names[: names.index(act)]\n"
        "              if isinstance(modules[n], (nn.Linear, nn.Conv2d))]\n"
        "    if before:\n"
        "        gain = nn.init.calculate_gain(type(modules[act]).__name__.lower())\n"
        "        nn.init.xavier_uniform_(before[-1].weight, gain=gain)\n"
    )
    return Fix(
        code="xavier-init",
        title=f"Re-initialise the layers before {short_list(layers, 3)} with Glorot's scale",
        detail=(
            "Inputs beyond |x| = 5 at a sigmoid or tanh come from weights too large for it: "
            "Glorot initialisation keeps the pre-activations at unit variance (Glorot & Bengio "
            "2010), in the range where these activations pass a gradient."
        ),
        snippet=snippet,
        params={"layers": list(layers)},
    )
