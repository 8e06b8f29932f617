"""The bookkeeping every local port shares: output lines as last set, and writer pause/resume."""

from __future__ import annotations

import pytest

from meshserial.ports.base import WRITE_HIGH_WATER, WRITE_LOW_WATER, RemembersControl, WriterFlow

from ._helpers import Recorder


class Lines(RemembersControl):
    def __init__(self) -> None:
        self._control = (True, True, False)
        self.calls: list[tuple[tuple[bool, bool, bool], bool | None, bool | None, bool | None]] = []

    def _control_changed(
        self, before: tuple[bool, bool, bool], *, dtr: bool | None, rts: bool | None, break_: bool | None
    ) -> None:
        self.calls.append((before, dtr, rts, break_))


@pytest.mark.parametrize(
    ("change", "after"),
    [
        ({}, (True, True, False)),
        ({"dtr": False}, (False, True, False)),
        ({"rts": False}, (True, False, False)),
        ({"break_": True}, (True, True, True)),
        ({"dtr": False, "rts": False, "break_": True}, (False, False, True)),
        ({"dtr": True, "rts": None}, (True, True, False)),
    ],
)
def test_set_control_keeps_the_lines_not_given(
    change: dict[str, bool | None], after: tuple[bool, ...]
) -> None:
    port = Lines()
    port.set_control(**change)
    assert port.control == after
    given = (change.get("dtr"), change.get("rts"), change.get("break_"))
    assert port.calls == [((True, True, False), *given)]


def test_writer_flow_pauses_and_resumes_once_per_crossing() -> None:
    flow = WriterFlow()
    flow.update(WRITE_HIGH_WATER + 1)  # nobody to tell yet: nothing remembered either
    assert not flow.paused
    rec = Recorder()
    flow.listener = rec
    for size in (WRITE_HIGH_WATER, WRITE_HIGH_WATER + 1, WRITE_HIGH_WATER + 2, WRITE_LOW_WATER + 1):
        flow.update(size)
    assert (rec.pauses, rec.resumes, flow.paused) == (1, 0, True)
    for size in (WRITE_LOW_WATER, 0, WRITE_LOW_WATER + 1):
        flow.update(size)
    assert (rec.pauses, rec.resumes, flow.paused) == (1, 1, False)


def test_writer_flow_with_marks_at_zero_follows_any_byte() -> None:
    flow = WriterFlow(high=0, low=0)
    rec = Recorder()
    flow.listener = rec
    flow.update(0)
    flow.update(1)
    flow.update(1000)
    flow.update(0)
    assert (rec.pauses, rec.resumes) == (1, 1)
