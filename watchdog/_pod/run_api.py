"""What the two run APIs share, the sidecar's (``_sidecar``) and the Agent Server app's
(``agent_server``): the bearer token check, the cancel's body, and how a time is written.

Only the standard library: the Agent Server's environment has no FastAPI.
"""

from __future__ import annotations

import hmac
import json
from datetime import UTC, datetime

__all__ = ["BodyError", "cancel_reason", "refusal", "shown", "timestamp"]

MAX_REASON = 1000  # characters of a cancel's reason
CANCEL_BODY = 'a JSON object like {"reason": "..."}'


def refusal(authorization: bytes | None, token: bytes) -> tuple[str, bytes] | None:
    """Why a request with this ``Authorization`` header is refused, and the
    ``WWW-Authenticate`` challenge to answer it with; None when it carries ``token``.

    As RFC 6750 has it, a request without a bearer token is only told that one is required,
    and a wrong one is an ``invalid_token``. The token is compared in constant time.
    """
    scheme, _, given = (authorization or b"").strip().partition(b" ")
    given = given.strip()
    if scheme.lower() != b"bearer" or not given:
        return "a bearer token is required", b"Bearer"
    if hmac.compare_digest(given, token):
        return None
    return "the bearer token was refused", b'Bearer error="invalid_token"'


class BodyError(ValueError):
    """A request body that is not what the endpoint takes; ``key`` names the field at fault,
    if one is."""

    def __init__(self, message: str, key: str | None = None) -> None:
        super().__init__(message)
        self.key = key


def cancel_reason(body: bytes, default: str) -> str:
    """The reason a cancel's body gives, ``default`` when it gives none (an empty body, or no
    ``reason`` key); ``BodyError`` when the body is not a JSON object with a string reason.

    The body is read as JSON whatever its Content-Type says: ``curl -d '{"reason": "x"}'``
    sends it as a form.
    """
    if not body.strip():
        return default
    try:
        data = json.loads(body)
    except (ValueError, RecursionError):  # not JSON, not UTF-8, or nested too deep to read
        text = body[:80].decode("utf-8", "replace")
        msg = f"the body must be {CANCEL_BODY}, got {shown(text)}, which is not JSON"
        raise BodyError(msg) from None
    if not isinstance(data, dict):
        msg = f"the body must be {CANCEL_BODY}, got {shown(data)}"
        raise BodyError(msg)
    for key in data:
        if key != "reason":  # a misspelt reason must not be dropped without a word
            msg = f"{key}: unknown key {shown(key)}; expected only 'reason'"
            raise BodyError(msg, key)
    reason = data.get("reason", default)
    if not isinstance(reason, str) or len(reason) > MAX_REASON:
        msg = f"reason: expected a string of at most {MAX_REASON} characters, got {shown(reason)}"
        raise BodyError(msg, "reason")
    # JSON may hold lone surrogates, which no answer or log line could encode.
    return reason.encode("utf-8", "replace").decode()


def shown(value: object) -> str:
    """``value`` as a message quotes it: its repr, cut to 80 characters."""
    text = repr(value)
    return text if len(text) <= 80 else f"{text[:77]}..."


def timestamp(seconds: float) -> str:
    """A time in epoch ``seconds`` as the APIs write it: RFC 3339, in UTC, to the
    millisecond (``2026-11-23T21:10:27.123Z``)."""
    moment = datetime.fromtimestamp(seconds, UTC)
    return moment.isoformat(timespec="milliseconds").removesuffix("+00:00") + "Z"
