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
