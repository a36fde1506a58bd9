"""Subjects: token rules, wildcards and matching (PROTOCOL.md section 5)."""

from __future__ import annotations

import re

from .constants import MAX_SUBJECT

#: Unicode White_Space and general category Cc, the characters no token (and no free-form
#: header key or queue group) may contain.
FORBIDDEN_CHARS = re.compile("[\u0000-\u0020\u007f-\u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]")


def subject_error(subject: str, *, literal: bool) -> str | None:
    """Why `subject` is not a valid filter (or, with `literal`, a valid literal subject);
    ``None`` when it is valid. The reasons are the spec's (section 14.3)."""
    if not subject:
        return "empty subject"
    if not subject.isascii():
        try:
            subject.encode()
        except UnicodeEncodeError:
            return "subject is not valid UTF-8 (a lone surrogate)"
    if len(subject) > MAX_SUBJECT // 4 and len(subject.encode()) > MAX_SUBJECT:
        return f"subject of {len(subject.encode())} bytes exceeds the limit of {MAX_SUBJECT}"
    if FORBIDDEN_CHARS.search(subject):
        return "whitespace or control character"
    tokens = subject.split(".")
    last = len(tokens) - 1
    wildcard = False
    for i, t in enumerate(tokens):
        if not t:
            return "empty token"
        if t == "*":
            wildcard = True
        elif t == ">":
            if i != last:
                return "'>' must be the last token"
            wildcard = True
        elif "*" in t or ">" in t:
            return "wildcard inside a token"
    if literal and wildcard:
        return "wildcards are only allowed in subscriptions"
    return None


def is_valid_filter(subject: str) -> bool:
    """Whether `subject` may be subscribed to (wildcards allowed)."""
    return subject_error(subject, literal=False) is None


def is_valid_literal(subject: str) -> bool:
    """Whether `subject` may be published to (no wildcards)."""
    return subject_error(subject, literal=True) is None


def matches(filter_: str, subject: str) -> bool:
    """Whether the filter matches the literal subject (section 5.4)."""
    f = filter_.split(".")
    s = subject.split(".")
    for i, t in enumerate(f):
        if t == ">":
            return len(s) > i
        if i >= len(s):
            return False
        if t != "*" and t != s[i]:
            return False
    return len(f) == len(s)
