"""``resdoctor attribute CHECKPOINT BATCH``: attribution shares of a saved model on a saved batch.

Thin: load safely, call ``resdoctor.attribute``, render. Files are read with
``torch.load(weights_only=True)``, so neither file can run code. The model class comes from
``--model module:Class`` (any ``nn.Module`` subclass the user names) or from a checkpoint that
names a class of ``resdoctor.models``; a checkpoint naming any other class is refused unless the
same class is passed with ``--model``.
"""

from __future__ import annotations

import importlib
import json
import math
import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch
import typer
from torch import nn

from resdoctor.cli.errors import one_line_errors
from resdoctor.errors import ResdoctorError, first_line

TRUSTED = "resdoctor.models:"
METHODS = ("gradient", "ablation")


class AttributeInputError(ResdoctorError, ValueError):
    """A checkpoint, batch or option the command cannot use; one clear line, exit code 2."""


def register(app: typer.Typer) -> None:
    """Add the ``attribute`` command to the ``resdoctor`` CLI."""
    app.command("attribute", no_args_is_help=True)(
        one_line_errors("resdoctor attribute: error")(attribute_command)
    )


def attribute_command(
    checkpoint: Path = typer.Argument(
        ...,
        help="torch.save'd state_dict, or a dict with "
        "'state_dict' and optionally 'model' and 'kwargs'.",
    ),
    batch: Path = typer.Argument(
        ...,
        help="torch.save'd sample batch: a tensor, a list of "
        "positional tensors or a dict of keyword tensors.",
    ),
    model: str | None = typer.Option(
        None,
        "--model",
        help="The network class, module:Class "
        "(e.g. resdoctor.models:ResNet, transformers:GPT2LMHeadModel).",
    ),
    kwargs: str | None = typer.Option(
        None,
        "--kwargs",
        help="JSON keyword arguments of the class (for a transformers model: of its config).",
    ),
    method: str = typer.Option(
        "gradient",
        "--method",
        help="gradient (one forward+backward) or ablation (exact, one batched forward).",
    ),
    target: int | None = typer.Option(
        None, "--target", help="Class to attribute (default: the predicted class of each sample)."
    ),
    samples: int | None = typer.Option(None, "--samples", min=1, help="Use the first N samples."),
    sites: str | None = typer.Option(
        None, "--sites", help="Comma-separated site names (default all)."
    ),
    mode: str = typer.Option("eval", "--mode", help="eval or train (BatchNorm, dropout)."),
    device: str = typer.Option("cpu", "--device", help="Device to run on, e.g. cpu, cuda."),
    as_json: bool = typer.Option(False, "--json", help="Print exactly one JSON object."),
) -> None:
    """Per residual site, the share of the output attribution through the branch vs the skip."""
    result, spec = _run(
        checkpoint, batch, model, kwargs, method, target, samples, sites, mode, device
    )
    if as_json:
        from resdoctor import __version__

        doc = {
            "resdoctor": __version__,
            "checkpoint": str(checkpoint),
            "batch": str(batch),
            "model": spec,
            **result.to_dict(),
        }
        typer.echo(json.dumps(doc, allow_nan=False))
    else:
        _table(result, spec)


def _run(
    checkpoint: Path,
    batch: Path,
    model: str | None,
    kwargs: str | None,
    method: str,
    target: int | None,
    samples: int | None,
    sites: str | None,
    mode: str,
    device: str,
) -> tuple[Any, str]:
    if method not in METHODS:
        raise AttributeInputError(f"--method must be one of {', '.join(METHODS)}, not {method!r}")
    if mode not in ("eval", "train"):
        raise AttributeInputError(f"--mode must be eval or train, not {mode!r}")
    try:
        where = torch.device(device)
    except RuntimeError as e:
        raise AttributeInputError(f"--device {device!r}: {first_line(e)}") from None
    net, spec = load_model(checkpoint, model, kwargs)
    inputs = load_batch(batch)
    names = [s.strip() for s in sites.split(",") if s.strip()] if sites else None
    return _attribute(net, inputs, target, names, method, samples, mode, where), spec


def _attribute(
    net: nn.Module,
    inputs: Any,
    target: int | None,
    names: list[str] | None,
    method: str,
    samples: int | None,
    mode: str,
    device: torch.device,
) -> Any:
    from resdoctor.attribution.inputs import Batch
    from resdoctor.attribution.shares import UnknownSiteError, attribute

    try:
        batch = Batch.of(inputs).to(device)
        return attribute(
            net.to(device),
            batch,
            target=target,
            sites=names,
            method=method,  # type: ignore[arg-type]  # checked against METHODS
            samples=samples,
            mode=mode,  # type: ignore[arg-type]  # checked: eval or train
        )
    except ImportError as e:
        raise AttributeInputError(first_line(e)) from None
    except UnknownSiteError as e:
        raise AttributeInputError(f"--sites: {first_line(e)}") from None
    except (ValueError, TypeError, RuntimeError, IndexError, KeyError) as e:
        raise AttributeInputError(
            f"the model could not be attributed on this batch: {first_line(e)}"
        ) from None


# -- loading ------------------------------------------------------------------------------------
def _load(path: Path, what: str) -> Any:
    if not path.exists():
        raise AttributeInputError(f"{path}: no such {what} file")
    if path.is_dir():
        raise AttributeInputError(f"{path}: is a directory, not a {what} file")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise AttributeInputError(
            f"{path}: refused to load (not plain tensors and containers: {first_line(e)})"
        ) from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError) as e:
        raise AttributeInputError(
            f"{path}: not a readable torch.save file ({first_line(e)})"
        ) from None


def load_batch(path: Path) -> Any:
    """A tensor, a tuple/list of tensors or a dict of name -> tensor, from ``path``."""
    data = _load(path, "batch")
    ok = (
        isinstance(data, torch.Tensor)
        or (
            isinstance(data, (tuple, list))
            and data
            and all(isinstance(t, torch.Tensor) for t in data)
        )
        or (
            isinstance(data, dict)
            and data
            and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in data.items())
        )
    )
    if not ok:
        raise AttributeInputError(
            f"{path}: a batch must be a tensor, a list of tensors or a "
            f"dict of name -> tensor, not {type(data).__name__}"
        )
    return data


def load_model(path: Path, model: str | None, kwargs: str | None) -> tuple[nn.Module, str]:
    """Build the class and load the weights; returns the model and its ``module:Class``."""
    data = _load(path, "checkpoint")
    state, saved_spec, saved_kwargs = _unpack(path, data)
    spec = model or saved_spec
    if spec is None:
        raise AttributeInputError(
            f"{path} holds weights only: pass the class with --model module:Class (and --kwargs)"
        )
    if model is None and not spec.startswith(TRUSTED):
        raise AttributeInputError(
            f"{path} names the class {spec!r}; pass --model {spec} to trust it"
        )
    options = _kwargs(kwargs) if kwargs is not None else saved_kwargs
    net = build(spec, options)
    try:
        keys = net.load_state_dict(state, strict=False)
    except RuntimeError as e:  # shape mismatches
        raise AttributeInputError(
            f"{path}: the weights do not fit {spec} (check --kwargs): {first_line(e, whole=True)}"
        ) from None
    wrong = [
        f"{len(ks)} {what} key(s) ({', '.join(ks[:3])}{', ...' if len(ks) > 3 else ''})"
        for what, ks in (("missing", keys.missing_keys), ("unexpected", keys.unexpected_keys))
        if ks
    ]
    if wrong:
        raise AttributeInputError(
            f"{path}: the weights do not fit {spec} (check --kwargs): " + "; ".join(wrong)
        )
    return net, spec


def _unpack(path: Path, data: Any) -> tuple[dict[str, torch.Tensor], str | None, dict]:
    if isinstance(data, dict) and isinstance(data.get("state_dict"), dict):
        spec, options = data.get("model"), data.get("kwargs", {})
        if (spec is not None and not isinstance(spec, str)) or not isinstance(options, dict):
            raise AttributeInputError(
                f"{path}: 'model' must be a 'module:Class' string and 'kwargs' a dict"
            )
        data = data["state_dict"]
    else:
        spec, options = None, {}
    if not (
        isinstance(data, dict)
        and data
        and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in data.items())
    ):
        raise AttributeInputError(f"{path}: not a state_dict (a dict of name -> tensor)")
    return data, spec, options


def build(spec: str, options: dict[str, Any]) -> nn.Module:
    """Instantiate ``module:Class`` (an ``nn.Module`` subclass) with ``options``; a transformers
    model (a class with ``config_class``) gets ``config_class(**options)``."""
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise AttributeInputError(f"--model must look like module:Class, not {spec!r}")
    try:
        obj: Any = importlib.import_module(module_name)
        for part in attr.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError) as e:
        raise AttributeInputError(f"cannot find {spec}: {first_line(e)}") from None
    if not (isinstance(obj, type) and issubclass(obj, nn.Module)):
        raise AttributeInputError(f"{spec} is not an nn.Module class")
    config = getattr(obj, "config_class", None)
    try:
        return obj(config(**options)) if config is not None else obj(**options)
    except Exception as e:  # noqa: BLE001 - any constructor failure is a bad option
        raise AttributeInputError(f"cannot build {spec}(**{options}): {first_line(e)}") from None


def _kwargs(text: str) -> dict[str, Any]:
    try:
        options = json.loads(text)
    except json.JSONDecodeError as e:
        raise AttributeInputError(f"--kwargs is not valid JSON: {e}") from None
    if not isinstance(options, dict):
        raise AttributeInputError("--kwargs must be a JSON object, e.g. '{\"layers\": [2, 2]}'")
    return options


# -- rendering ----------------------------------------------------------------------------------
def _table(result: Any, spec: str) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"attribution through residual branches: {spec}", title_justify="left")
    for col in ("site", "kind", "branch", "skip", "share", ""):
        table.add_column(col, justify="left" if col in ("site", "kind", "") else "right")
    if result.method == "gradient":
        table.add_column("coherence", justify="right")
    for s in result.sites:
        row = [s.name, s.kind, _num(s.branch), _num(s.skip), _num(s.share, 3), _bar(s.share)]
        if result.method == "gradient":
            row.append(_num(s.coherence, 2))
        table.add_row(*row)
    console = Console()
    console.print(table)
    console.print(
        f"method {result.method}, target {result.target}, {result.samples} samples, "
        f"{result.mode} mode. share = |branch| / (|branch| + |skip|): 0 = the output "
        "ignores the branch, 1 = it ignores the skip."
    )


def _num(x: float, digits: int | None = None) -> str:
    if math.isnan(x):
        return "-"
    return f"{x:.{digits}f}" if digits is not None else f"{x:.3g}"


def _bar(share: float, width: int = 20) -> str:
    return "" if math.isnan(share) else "#" * round(share * width)
