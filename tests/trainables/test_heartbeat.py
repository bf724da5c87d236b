"""The training loop's heartbeat: progress lines between reports, at most one per interval."""

from __future__ import annotations

import pytest

from trainables.training.loop import _Heartbeat


def test_heartbeat_prints_at_most_once_per_interval(capsys: pytest.CaptureFixture[str],
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    clock = [1000.0]
    monkeypatch.setattr("trainables.training.loop.time.time", lambda: clock[0])
    beat = _Heartbeat("exp", max_steps=600, start_step=100, every_s=60.0)  # resumed at step 100
    clock[0] += 30.0
    beat.tick(110)  # too soon
    assert capsys.readouterr().out == ""
    clock[0] += 30.0
    beat.tick(120)  # 60 s for 20 steps: 3 s/step, 480 steps left = 24 min
    assert capsys.readouterr().out == "[exp] step 120/600: 3.00 s/step, about 24 min left\n"
    clock[0] += 10.0
    beat.tick(125)
    clock[0] += 100.0
    beat.tick(600)  # the last step: the report says it
    assert capsys.readouterr().out == ""
