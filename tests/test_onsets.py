"""``onsets.clean`` is a fast negative: whenever it says a segment is clean, ``find`` finds
nothing there. Checked on random segments with non-finite values and bad counts sprinkled
into every place a phase reads."""

import numpy as np
import pytest

from resdoctor.recording import onsets

NAMES = ["", "a", "a.x", "a.y", "b", "b.x", "head"]
PARAMS = ["a.x", "a.y", "b.x", "head"]
TABLE = onsets.ModuleTable(NAMES, PARAMS, {n: k for k, n in enumerate(NAMES)})


def _segment(rng: np.random.Generator, rate: float) -> tuple[dict, dict, dict]:
    def spoil(a: np.ndarray) -> np.ndarray:
        a = a.astype(float)
        a[rng.random(a.shape) < rate] = rng.choice([np.nan, np.inf, -np.inf])
        return a

    n = len(NAMES)
    blocks = {
        "fwd": (np.arange(1, n), spoil(rng.normal(size=(n - 1, 4)))),
        "gin": (np.arange(n), spoil(rng.normal(size=(n, 2)))),
        "bwd": (np.array([1, 4]), spoil(rng.normal(size=(2, 2)))),
    }
    vectors = {
        "grad_norm": spoil(rng.random(len(PARAMS))),
        "param_norm": spoil(rng.random(len(PARAMS))),
        "grad_bad": (rng.random(len(PARAMS)) < rate).astype(float),
        "param_bad": (rng.random(len(PARAMS)) < rate).astype(float),
        "grad_bad_own": (rng.random(len(PARAMS)) < rate).astype(float),
        "input:forward:x": (rng.random(8) < rate).astype(float),
    }
    for key in list(vectors):
        if rng.random() < 0.3:  # not every segment records everything
            del vectors[key]
    scalars = {"loss": float(spoil(np.array([1.0]))[0])} if rng.random() < 0.8 else {}
    return blocks, vectors, scalars


@pytest.mark.parametrize("rate", [0.0, 0.01, 0.05, 0.3])
def test_clean_segments_have_no_onset(rate):
    rng = np.random.default_rng(int(rate * 1000))
    said_clean = found = 0
    for _ in range(400):
        blocks, vectors, scalars = _segment(rng, rate)
        if onsets.clean(blocks, vectors, scalars):
            said_clean += 1
            assert onsets.find(blocks, vectors, scalars, TABLE) == []
        found += bool(onsets.find(blocks, vectors, scalars, TABLE))
    if rate == 0.0:
        assert said_clean == 400  # the usual step takes the fast path
    else:
        assert found > 0 and said_clean < 400
