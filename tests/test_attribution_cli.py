"""``resdoctor attribute CHECKPOINT BATCH``: safe loading, results equal to the API, exit codes."""

import json

import pytest
import torch
import typer
from typer.testing import CliRunner

import resdoctor
from resdoctor.cli import attribute as attribution_cli
from resdoctor.models import ResNet

KWARGS = {"layers": [1, 1], "widths": [4, 8]}
SPEC = "resdoctor.models:ResNet"


@pytest.fixture(scope="module")
def app():
    app = typer.Typer()
    attribution_cli.register(app)

    @app.callback()
    def main():  # a group, so that ``attribute`` is a subcommand as in ``resdoctor``
        pass

    return app


@pytest.fixture()
def files(tmp_path):
    torch.manual_seed(0)
    model = ResNet(**KWARGS)
    x = torch.randn(5, 3, 8, 8)
    paths = {
        "weights": tmp_path / "weights.pt",
        "checkpoint": tmp_path / "ckpt.pt",
        "batch": tmp_path / "batch.pt",
    }
    torch.save(model.state_dict(), paths["weights"])
    torch.save(
        {"model": SPEC, "kwargs": KWARGS, "state_dict": model.state_dict()}, paths["checkpoint"]
    )
    torch.save(x, paths["batch"])
    return model, x, paths


def invoke(app, *args):
    return CliRunner().invoke(app, ["attribute", *map(str, args)])


def test_json_output_equals_the_python_api(app, files):
    model, x, p = files
    result = invoke(
        app,
        p["weights"],
        p["batch"],
        "--model",
        SPEC,
        "--kwargs",
        json.dumps(KWARGS),
        "--method",
        "ablation",
        "--samples",
        3,
        "--json",
    )
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)  # exactly one JSON object
    assert doc["model"] == SPEC and doc["method"] == "ablation" and doc["samples"] == 3
    api = resdoctor.attribute(model, x[:3], method="ablation")
    assert [s["name"] for s in doc["sites"]] == ["layer1.0", "layer2.0"]
    for got, want in zip(doc["sites"], api, strict=True):
        assert got["share"] == pytest.approx(want.share, abs=1e-6)
        assert got["coherence"] is None  # only the gradient method measures it


def test_table_from_a_checkpoint_that_names_a_resdoctor_model(app, files):
    _, _, p = files
    result = invoke(app, p["checkpoint"], p["batch"], "--target", 3, "--sites", "layer2.0")
    assert result.exit_code == 0, result.output
    assert "layer2.0" in result.stdout and "layer1.0" not in result.stdout
    assert "class 3" in result.stdout and "coherence" in result.stdout


class Payload:
    """Pickles to a call that would create a file if the loader ran code."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def one_line_error(result, *words):
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("resdoctor attribute: error:"), lines
    assert "Traceback" not in result.output
    for word in words:
        assert word in lines[0], lines[0]


def test_unsafe_files_are_refused_without_running_code(app, files, tmp_path):
    _, _, p = files
    marker = tmp_path / "pwned"
    torch.save({"state_dict": Payload(marker)}, tmp_path / "evil.pt")
    one_line_error(invoke(app, tmp_path / "evil.pt", p["batch"], "--model", SPEC), "refused")
    torch.save(Payload(marker), tmp_path / "evil_batch.pt")
    one_line_error(invoke(app, p["checkpoint"], tmp_path / "evil_batch.pt"), "refused")
    assert not marker.exists()
    model = ResNet(**KWARGS)
    torch.save(
        {
            "model": "subprocess:Popen",
            "kwargs": {"args": ["true"]},
            "state_dict": model.state_dict(),
        },
        tmp_path / "named.pt",
    )
    one_line_error(invoke(app, tmp_path / "named.pt", p["batch"]), "--model subprocess:Popen")
    one_line_error(
        invoke(app, tmp_path / "named.pt", p["batch"], "--model", "subprocess:Popen"),
        "not an nn.Module class",
    )


@pytest.mark.parametrize(
    "case, words",
    [
        ("missing-file", ["no such checkpoint"]),
        ("weights-only", ["--model"]),
        ("wrong-kwargs", ["do not fit", "check --kwargs"]),
        ("bad-json", ["--kwargs is not valid JSON"]),
        ("bad-model", ["cannot find"]),
        ("batch-not-tensors", ["a batch must be"]),
        ("batch-wrong-shape", ["could not be attributed"]),
        ("unknown-site", ["--sites", "layer9.9"]),
        ("bad-method", ["--method"]),
    ],
)
def test_bad_input_is_one_line_and_exit_code_2(app, files, tmp_path, case, words):
    _, _, p = files
    torch.save({"x": [1, 2]}, tmp_path / "list_batch.pt")
    torch.save(torch.randn(2, 5), tmp_path / "flat_batch.pt")
    w, c, b = p["weights"], p["checkpoint"], p["batch"]
    args = {
        "missing-file": [tmp_path / "nope.pt", b],
        "weights-only": [w, b],
        "wrong-kwargs": [w, b, "--model", SPEC, "--kwargs", '{"layers": [2, 1]}'],
        "bad-json": [w, b, "--model", SPEC, "--kwargs", "{layers: 1}"],
        "bad-model": [w, b, "--model", "resdoctor.models:NoSuchNet"],
        "batch-not-tensors": [c, tmp_path / "list_batch.pt"],
        "batch-wrong-shape": [c, tmp_path / "flat_batch.pt"],
        "unknown-site": [c, b, "--sites", "layer9.9"],
        "bad-method": [c, b, "--method", "shap"],
    }[case]
    one_line_error(invoke(app, *args), *words)


def test_transformers_class_built_from_its_config(app, tmp_path):
    from transformers import GPT2LMHeadModel

    from resdoctor.cli.attribute import build

    config = {
        "n_layer": 1,
        "n_embd": 16,
        "n_head": 2,
        "vocab_size": 50,
        "n_positions": 8,
        "bos_token_id": 0,
        "eos_token_id": 0,
    }
    model = build("transformers:GPT2LMHeadModel", config)
    assert isinstance(model, GPT2LMHeadModel) and model.config.n_layer == 1
    torch.save(model.state_dict(), tmp_path / "gpt2.pt")
    torch.save({"input_ids": torch.randint(0, 50, (2, 8))}, tmp_path / "ids.pt")
    result = invoke(
        app,
        tmp_path / "gpt2.pt",
        tmp_path / "ids.pt",
        "--model",
        "transformers:GPT2LMHeadModel",
        "--kwargs",
        json.dumps(config),
        "--json",
    )
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert [s["name"] for s in doc["sites"]] == ["transformer.h.0#0", "transformer.h.0#1"]
    assert all(0 <= s["share"] <= 1 for s in doc["sites"])
