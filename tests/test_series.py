"""Series: bounded memory, exact events, merges that keep spikes and NaN."""

import numpy as np
import pytest

from resdoctor.recording.journal import Journal, SegmentMeta
from resdoctor.runfile.series import Series


def test_rows_stay_bounded_and_means_are_exact():
    s = Series(["a", "b"], capacity=8)
    for step in range(1000):
        s.append(step, np.array([step, 1.0]))
    state = s.to_state()
    assert len(s) <= 8 and s.stride == 128
    steps = state["steps"].numpy()
    counts = state["count"].numpy()
    assert counts.sum() == 1000 and steps[0] == 0
    # each bucket's mean of "a" is the mean of the steps it covers
    for first, n, mean in zip(steps, counts, state["mean"][:, 0].numpy()):
        assert mean == pytest.approx(first + (n - 1) / 2)


def test_spikes_and_nan_survive_down_sampling():
    s = Series(["g"], capacity=4)
    for step in range(64):
        value = np.nan if step == 40 else (1e6 if step == 17 else 1.0)
        s.append(step, np.array([value]), present=np.array([True]))
    state = s.to_state()
    assert state["steps"].tolist() == [0, 16, 32, 48]
    assert state["max"][1, 0].item() == 1e6  # the spike at step 17 is kept in its bucket's max
    assert state["mean"][1, 0].item() < 1e6 / 10
    assert np.isnan(state["mean"][2, 0].item()) and np.isnan(state["max"][2, 0].item())
    assert state["mean"][3, 0].item() == 1.0


def test_missing_values_are_not_zeros():
    s = Series(["a", "b"], capacity=4)
    s.append(0, np.array([1.0, np.nan]))
    s.append(1, np.array([3.0, 5.0]))
    state = s.to_state()
    assert state["mean"][0, 0].item() == 1.0 and np.isnan(state["mean"][0, 1].item())
    assert state["n"].tolist() == [[1, 0], [1, 1]]


def test_a_long_run_stays_small_and_keeps_events_exact(tmp_path):
    import torch

    modules = [{"name": f"m{i}", "type": "Linear", "params": 10, "order": i} for i in range(30)]
    j = Journal(modules, [m["name"] for m in modules], capacity=64, max_events=100, meta={})
    j.set_sites([{"name": f"s{i}", "kind": "identity", "module": "B"} for i in range(10)])
    rng = np.random.default_rng(0)
    for step in range(20_000):
        grads = rng.random(30)
        if step == 12_345:
            grads[7] = np.nan
        blocks = {
            "vec": {"grad_norm": grads},
            "scalar": {},
            "site": (np.arange(10), rng.random((10, 3))),
        }
        j.consume(SegmentMeta(1, 1, True, {"loss": 1.0}, True), blocks)
    state = j.state({})
    assert j.steps == 20_000
    assert all(len(s["steps"]) <= 64 for s in state["series"].values())
    assert [(e["step"], e["module"], e["phase"]) for e in state["events"]] == [
        (12_345, "m7", "backward")
    ]
    path = tmp_path / "long.pt"
    torch.save(state, path)
    assert path.stat().st_size < 200_000
