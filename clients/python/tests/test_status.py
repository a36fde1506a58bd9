"""Status names and classes agree with the table of PROTOCOL.md section 13."""

from __future__ import annotations

import re
from pathlib import Path

import mitto
from mitto.errors import error_for
from mitto.proto import Status, is_caller_error, is_retryable, status_name

SPEC = Path(__file__).resolve().parents[3] / "spec" / "PROTOCOL.md"


def spec_rows() -> list[tuple[int, str, bool, bool]]:
    text = SPEC.read_text()
    section = text[text.index("## 13. Status codes") : text.index("## 14. Error handling")]
    rows = []
    for m in re.finditer(r"^\| (\d+) \| `(\w+)` \| [^|]* \|\s*(yes)?\s*\|\s*(yes)?\s*\|$", section, re.M):
        rows.append((int(m.group(1)), m.group(2), m.group(3) == "yes", m.group(4) == "yes"))
    return rows


def test_every_status_matches_the_spec_table() -> None:
    rows = spec_rows()
    assert [r[0] for r in rows] == list(range(22))
    for code, name, retryable, caller in rows:
        assert status_name(code) == name
        assert Status[name.upper()] == code
        assert is_retryable(code) is retryable, name
        assert is_caller_error(code) is caller, name
    assert status_name(4000) == "status_4000"
    assert not is_retryable(4000) and not is_caller_error(4000)


def test_errors_carry_their_status_and_class() -> None:
    e = error_for(Status.NO_RESPONDERS, "nobody", remote=True)
    assert isinstance(e, mitto.NoRespondersError)
    assert (e.status, e.status_name, e.reason, e.retryable, e.remote) == (
        10,
        "no_responders",
        "nobody",
        True,
        True,
    )
    t = error_for(Status.TIMEOUT)
    assert isinstance(t, mitto.TimeoutError) and isinstance(t, TimeoutError)
    assert type(error_for(4000)) is mitto.MittoError
