"""Reading a till's credentials (`authorization: Basic …`), as REST and gRPC both do."""

from __future__ import annotations

import base64

import pytest
from kizuna.kit.errors import Unauthenticated
from partner.partners import MAX_AUTHORIZATION_LENGTH, TILL_CREDENTIALS, basic_credentials


def _basic(raw: bytes, scheme: str = "Basic") -> str:
    return f"{scheme} {base64.b64encode(raw).decode()}"


def test_an_id_and_a_secret_are_read_whatever_the_scheme_case() -> None:
    assert basic_credentials(_basic(b"ptn_0123456789abcdef:s3cr:et")) == ("ptn_0123456789abcdef", "s3cr:et")
    assert basic_credentials(_basic(b"ptn_1:x", scheme="basic")) == ("ptn_1", "x")


@pytest.mark.parametrize(
    "header",
    [
        "",
        "Basic",
        "Basic ",
        "Bearer " + base64.b64encode(b"ptn_1:x").decode(),
        "Basic !!not*base64!!",
        "Basic cHRuXzE6eA",  # padding missing
        "Basic \xff\xfe",  # header bytes beyond ASCII, as HTTP hands them over (Latin-1)
        _basic(b"ptn_1"),  # no colon
        _basic(b":secret"),
        _basic(b"ptn_1:"),
        _basic(b"ptn_\xff:secret"),  # not UTF-8
        _basic(b"ptn_1\x00:secret"),
        _basic(b"ptn_1:sec\nret"),
        _basic(b"p" * 65 + b":secret"),
        _basic(b"ptn_1:" + b"s" * MAX_AUTHORIZATION_LENGTH),
    ],
)
def test_every_malformed_value_is_unauthenticated_with_one_message(header: str) -> None:
    with pytest.raises(Unauthenticated) as refused:
        basic_credentials(header)
    assert refused.value.message == TILL_CREDENTIALS
    assert refused.value.headers["WWW-Authenticate"].startswith("Basic realm=")  # REST's challenge
