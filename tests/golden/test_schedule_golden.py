"""linear_quadratic_schedule against the official function's outputs in ../shared/golden/schedule.json."""

from __future__ import annotations

import json

import pytest
import torch

from mochi_core import linear_quadratic_schedule
from mochi_core.errors import InvalidInputError

pytestmark = pytest.mark.numerics


def _entries(golden_dir):
    return json.loads((golden_dir / "schedule.json").read_text())["schedules"]


def test_schedules_match_official(golden_dir) -> None:
    checked = 0
    for e in _entries(golden_dir):
        if "error" in e:
            continue
        got = linear_quadratic_schedule(e["num_steps"], e["threshold_noise"], e["linear_steps_arg"])
        assert len(got) == e["length"] == e["num_steps"] + 1
        # bit-exact doubles: scalar Python float arithmetic in the official order (no vector kernels, no threads)
        assert got == e["sigma_schedule"], (e["num_steps"], e["threshold_noise"])
        dsigma = [got[i] - got[i + 1] for i in range(e["num_steps"])]
        assert dsigma == e["dsigma"]
        fed = torch.tensor(got[:-1], dtype=torch.float32)
        assert torch.equal(fed, torch.tensor(e["sigma_float32_fed_to_dit"], dtype=torch.float32))
        checked += 1
    assert checked == 4


def test_one_step_differs_from_official_on_purpose(golden_dir) -> None:
    """The official function raises ZeroDivisionError for 1 step; we return ComfyUI's [1.0, 0.0]."""
    (entry,) = [e for e in _entries(golden_dir) if e["num_steps"] == 1]
    assert entry["error"].startswith("ZeroDivisionError")
    assert linear_quadratic_schedule(1) == [1.0, 0.0]
    assert linear_quadratic_schedule(1, 0.1, 1) == [1.0, 0.0]
    # linear_steps is checked before the one-step shortcut: a value that cannot apply is refused, not ignored
    with pytest.raises(InvalidInputError, match=r"linear_steps=6 is not allowed with steps=1: use 1\.\.1"):
        linear_quadratic_schedule(1, 0.1, 6)


def test_default_64_step_landmarks() -> None:
    s = linear_quadratic_schedule(64)
    assert s[0] == 1.0 and s[-1] == 0.0 and len(s) == 65
    assert s[32] == pytest.approx(0.975, abs=1e-12)  # end of the linear part: 1 - threshold
    assert all(a > b for a, b in zip(s, s[1:]))


@pytest.mark.parametrize(
    "kwargs, words",
    [
        ({"steps": 0}, ["steps=0", ">= 1"]),
        ({"steps": 4, "threshold_noise": 0.0}, ["threshold_noise", "(0, 1)"]),
        ({"steps": 4, "threshold_noise": 1.5}, ["threshold_noise", "(0, 1)"]),
        ({"steps": 4, "linear_steps": 4}, ["linear_steps=4", "1..3"]),
        ({"steps": 4, "linear_steps": 0}, ["linear_steps=0", "1..3"]),
        ({"steps": 4, "linear_steps": 2.0}, ["linear_steps=2.0", "1..3"]),
        ({"steps": 1, "linear_steps": -1}, ["linear_steps=-1", "steps=1"]),
        ({"steps": 4, "threshold_noise": "0.1"}, ["threshold_noise='0.1'", "not a number"]),
        ({"steps": 4, "threshold_noise": float("nan")}, ["threshold_noise=nan", "(0, 1)"]),
        # the quadratic overshoots 1 (sigma_3 = -0.15, then back up to 0)
        ({"steps": 4, "threshold_noise": 0.9}, ["threshold_noise=0.9", "steps=4", "linear_steps=2", "<= 0.6666"]),
        ({"steps": 64, "threshold_noise": 0.8, "linear_steps": 8}, ["threshold_noise=0.8", "<= 0.2222"]),
    ],
)
def test_bad_schedule_arguments_are_refused(kwargs, words) -> None:
    with pytest.raises(InvalidInputError) as exc:
        linear_quadratic_schedule(**kwargs)
    for w in words:
        assert w in str(exc.value)


@pytest.mark.parametrize("steps", [2, 3, 4, 5, 8, 16, 31, 64, 100])
def test_every_returned_schedule_decreases_from_one_to_zero(steps) -> None:
    """Over a grid of thresholds and linear parts: a schedule that comes back is strictly decreasing in [0, 1]
    (sigma_0 = 1, sigma_steps = 0); one that would not is refused, with a bound that itself works."""
    refused = 0
    for lin in sorted({None, 1, steps // 3 or 1, max(1, steps - 1)}, key=lambda v: -1 if v is None else v):
        for tau in [0.001, 0.025, 0.1, 0.3, 0.5, 0.6, 0.7, 0.8, 0.9, 0.99]:
            try:
                s = linear_quadratic_schedule(steps, tau, lin)
            except InvalidInputError as exc:
                refused += 1
                bound = float(str(exc).split("threshold_noise <= ")[1].split()[0])
                assert 0.0 < bound < tau
                s = linear_quadratic_schedule(steps, bound, lin)  # the advice is a working value
            assert len(s) == steps + 1 and s[0] == 1.0 and s[-1] == 0.0
            assert all(1.0 >= a > b >= 0.0 for a, b in zip(s, s[1:])), (steps, tau, lin)
    assert refused > 0 or steps <= 2
