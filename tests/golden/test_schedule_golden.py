"""linear_quadratic_schedule against the official function's outputs in ../shared/golden/schedule.json."""

from __future__ import annotations

import json

import pytest
import torch

from mochi_core import linear_quadratic_schedule
from mochi_core.errors import InvalidInputError


def _entries(golden_dir):
    return json.loads((golden_dir / "schedule.json").read_text())["schedules"]


def test_schedules_match_official(golden_dir) -> None:
    checked = 0
    for e in _entries(golden_dir):
        if "error" in e:
            continue
        got = linear_quadratic_schedule(e["num_steps"], e["threshold_noise"], e["linear_steps_arg"])
        assert len(got) == e["length"] == e["num_steps"] + 1
        # bit-exact doubles (the issue asks for 1e-4; the same arithmetic order gives identical floats)
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
    assert linear_quadratic_schedule(1, 0.1, 6) == [1.0, 0.0]


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
    ],
)
def test_bad_schedule_arguments_are_refused(kwargs, words) -> None:
    with pytest.raises(InvalidInputError) as exc:
        linear_quadratic_schedule(**kwargs)
    for w in words:
        assert w in str(exc.value)
