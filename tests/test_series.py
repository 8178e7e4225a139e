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


class _RowByRow:
    """The fold, one step at a time, as ``Series`` did before it batched its appends: the
    reference that the batched fold must equal bit for bit."""

    def __init__(self, n: int, capacity: int) -> None:
        self.capacity, self.stride, self.rows = capacity, 1, 0
        self.steps = np.zeros(capacity, dtype=np.int64)
        self.count = np.zeros(capacity, dtype=np.int64)
        self.sum = np.zeros((capacity, n))
        self.n = np.zeros((capacity, n), dtype=np.int64)
        self.max = np.full((capacity, n), -np.inf)
        self.min = np.full((capacity, n), np.inf)

    def append(self, step: int, values: np.ndarray, present: np.ndarray | None) -> None:
        row = self.rows - 1
        if self.rows == 0 or step // self.stride != self.steps[row] // self.stride:
            if self.rows == self.capacity:
                self.compact()
            row = self.rows
            self.rows += 1
            self.steps[row] = step
        present = ~np.isnan(values) if present is None else present
        self.count[row] += 1
        self.n[row] += present
        with np.errstate(invalid="ignore"):
            np.add(self.sum[row], values, out=self.sum[row], where=present)
            np.maximum(self.max[row], values, out=self.max[row], where=present)
            np.minimum(self.min[row], values, out=self.min[row], where=present)

    def compact(self) -> None:
        half, even, odd = self.capacity // 2, slice(0, None, 2), slice(1, None, 2)
        for a in (self.steps, self.count, self.sum, self.n, self.max, self.min):
            merged = (
                a[even]
                if a is self.steps
                else np.maximum(a[even], a[odd])
                if a is self.max
                else np.minimum(a[even], a[odd])
                if a is self.min
                else a[even] + a[odd]
            )
            a[:half] = merged
            a[half:] = {id(self.max): -np.inf, id(self.min): np.inf}.get(id(a), 0)
        self.rows, self.stride = half, self.stride * 2


@pytest.mark.parametrize("seed", range(6))
def test_batched_appends_equal_folding_each_step_bit_for_bit(seed):
    rng = np.random.default_rng(seed)
    capacity = int(rng.choice([2, 4, 8, 16]))
    s, ref = Series(["a", "b", "c"], capacity), _RowByRow(3, capacity)
    step = 0
    for _ in range(int(rng.integers(50, 700))):
        step += int(rng.choice([0, 1, 1, 1, 2, 7]))  # repeats and gaps
        values = rng.lognormal(0, 3, 3) * rng.choice([-1, 1], 3)
        values[rng.random(3) < 0.003] = np.nan
        values[rng.random(3) < 0.002] = np.inf
        present = None if rng.random() < 0.5 else rng.random(3) < 0.8
        s.append(step, values, present)
        ref.append(step, values, present)
        if rng.random() < 0.02:  # a read in between settles the pending steps
            assert len(s) == ref.rows
    state, r = s.to_state(), ref.rows
    assert s.stride == ref.stride and len(s) == r
    assert state["steps"].tolist() == ref.steps[:r].tolist()
    assert state["count"].tolist() == ref.count[:r].tolist()
    n = ref.n[:r]
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(n > 0, ref.sum[:r] / np.maximum(n, 1), np.nan).astype(np.float32)
    np.testing.assert_array_equal(state["mean"].numpy(), mean)  # NaN equal to NaN, no tolerance
    np.testing.assert_array_equal(s._sum[:r], ref.sum[:r])  # the float64 sums, not only means
    np.testing.assert_array_equal(
        state["max"].numpy(), np.where(n > 0, ref.max[:r], np.nan).astype(np.float32)
    )
    np.testing.assert_array_equal(
        state["min"].numpy(), np.where(n > 0, ref.min[:r], np.nan).astype(np.float32)
    )


def test_columns_added_while_steps_are_pending_read_as_missing_before():
    s = Series(["a"], capacity=8)
    s.append(0, np.array([1.0]))
    s.add_columns(["b"])
    s.append(1, np.array([2.0, 3.0]))
    state = s.to_state()
    assert state["mean"][:, 0].tolist() == [1.0, 2.0]
    assert np.isnan(state["mean"][0, 1].item()) and state["mean"][1, 1].item() == 3.0
