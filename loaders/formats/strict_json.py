"""JSON from a model file's header or index, read strictly: a damaged or hostile file gets a message, not a
Python error, and never a silently different reading.

Refused: bytes that are not UTF-8, a key given twice in one object (json keeps the last one quietly),
NaN/Infinity (not JSON), absurd nesting (RecursionError), numbers longer than Python converts, and
anything else json refuses.
"""

from __future__ import annotations

import json

from ..errors import brief


class JSONProblem(ValueError):
    """What is wrong (`problem`) and, where it helps, what was found (`found`)."""

    def __init__(self, problem: str, found: str | None = None):
        super().__init__(problem)
        self.problem, self.found = problem, found


class _Duplicate(ValueError):
    pass


def _refuse_duplicates(pairs):
    out = {}
    for key, value in pairs:
        if key in out:
            raise _Duplicate(key)
        out[key] = value
    return out


def _refuse_constant(name):
    raise ValueError(f"{name} is not a JSON number")


def parse_json_object(raw: bytes) -> dict:
    """The JSON object in `raw`, or a JSONProblem (a header or index is always an object)."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise JSONProblem("it is not valid UTF-8", found=f"byte {e.start}") from None
    try:
        value = json.loads(text, object_pairs_hook=_refuse_duplicates, parse_constant=_refuse_constant)
    except _Duplicate as e:
        raise JSONProblem("a key is given twice", found=brief(e.args[0])) from None
    except RecursionError:
        raise JSONProblem("it is nested too deeply") from None
    except ValueError as e:  # JSONDecodeError, and int() limits on absurdly long numbers
        raise JSONProblem("it is not valid JSON", found=str(e)[:200]) from None
    if not isinstance(value, dict):
        raise JSONProblem("it is not a JSON object", found=f"a JSON {type(value).__name__}")
    return value
