"""Which back-channel logout URIs identity accepts: https or loopback, and plain http only at a
declared service's own in-cluster address (`KIZUNA_INTERNAL_LINKS`), never anywhere else."""

from __future__ import annotations

import json

import pytest
from identity.clients import ClientSpec, ScopeCatalogue, _validate, in_cluster_links
from kizuna.kit.errors import InvalidArgument

IN_CLUSTER = in_cluster_links(json.dumps({"shop": "http://shop:8002", "points": "http://points:8001"}))
SCOPES = ScopeCatalogue.from_json("")


def spec(uri: str, *, client_id: str = "shop", first_party: bool = True) -> ClientSpec:
    return ClientSpec(
        client_id=client_id,
        client_secret="s" * 32,
        redirect_uris=[f"https://{client_id}.kizuna.example/auth/callback"],
        backchannel_logout_uri=uri,
        scopes=["openid"],
        first_party=first_party,
    )


@pytest.mark.parametrize(
    "uri",
    [
        "http://shop:8002/auth/backchannel-logout",
        "https://shop.kizuna.example/auth/backchannel-logout",
        "http://127.0.0.1:8002/auth/backchannel-logout",
    ],
)
def test_accepted(uri: str) -> None:
    _validate(spec(uri), SCOPES, IN_CLUSTER)


@pytest.mark.parametrize(
    ("uri", "client_id", "first_party"),
    [
        ("http://points:8001/auth/backchannel-logout", "shop", True),  # another service's address
        ("http://shop:8003/auth/backchannel-logout", "shop", True),  # another port
        ("http://shop.evil.example:8002/auth/backchannel-logout", "shop", True),
        ("http://x@shop:8002/auth/backchannel-logout", "shop", True),  # credentials in the address
        ("http://shop:8002/auth/backchannel-logout#x", "shop", True),
        ("http://shop:8002/auth/backchannel-logout", "shop", False),  # not a first-party client
        ("http://travel:8003/auth/backchannel-logout", "travel", True),  # no in-cluster URL known
        ("http://example.com/auth/backchannel-logout", "shop", True),
    ],
)
def test_refused(uri: str, client_id: str, first_party: bool) -> None:
    with pytest.raises(InvalidArgument, match="back-channel logout URI"):
        _validate(spec(uri, client_id=client_id, first_party=first_party), SCOPES, IN_CLUSTER)


def test_refused_without_in_cluster_links() -> None:
    with pytest.raises(InvalidArgument, match="back-channel logout URI"):
        _validate(spec("http://shop:8002/auth/backchannel-logout"), SCOPES)


def test_in_cluster_links_must_be_an_object_of_urls() -> None:
    assert in_cluster_links("  ") == {}
    for raw in ("[1]", '{"shop": 1}', "not json"):
        with pytest.raises(ValueError, match="KIZUNA_INTERNAL_LINKS"):
            in_cluster_links(raw)
