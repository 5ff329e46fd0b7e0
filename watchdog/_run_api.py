"""What the two run APIs share, the sidecar's (``_sidecar``) and the Agent Server app's
(``agent_server``): the bearer token check.

Only the standard library: the Agent Server's environment has no FastAPI.
"""

from __future__ import annotations

import hmac

__all__ = ["refusal"]


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
