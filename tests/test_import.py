"""``import resdoctor`` stays light: no heavy optional dependency is imported with it."""

import subprocess
import sys


def test_import_is_light():
    code = (
        "import sys, resdoctor; heavy = ['streamlit', 'wandb', 'captum', 'scipy', 'pandas', "
        "'transformers', 'lightning', 'torch_geometric', 'typer']; "
        "print([m for m in heavy if m in sys.modules])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_public_api_is_exactly_all():
    import resdoctor

    for name in resdoctor.__all__:
        assert getattr(resdoctor, name) is not None
    assert {"watch", "discover", "load", "analyze", "Watcher", "Run", "Report"} <= set(
        resdoctor.__all__
    )


def test_an_old_torch_fails_at_import_with_one_clear_line():
    import pytest

    from resdoctor.version import check_torch

    check_torch("2.13.0+cpu")
    check_torch("2.4.0")
    with pytest.raises(ImportError, match=r"^resdoctor needs torch >= 2\.4 \(found 2\.3\.1\)"):
        check_torch("2.3.1")
