"""Registry authentication: challenges as registries write them, the token requests, hostile answers."""

from __future__ import annotations

import base64
import urllib.parse

import pytest

from qmprt.errors import PermissionDenied
from qmprt.image.fetch import PullAuth
from qmprt.image.registryauth import Challenge, parse_challenge, parse_token_response, token_request

REG = "registry.local:5000"
DOCKER_HUB = 'Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/x:pull"'


def test_a_bearer_challenge_is_read_with_its_quoting() -> None:
    challenge = parse_challenge(DOCKER_HUB, REG)
    assert challenge == Challenge("bearer", {"realm": "https://auth.docker.io/token", "service": "registry.docker.io", "scope": "repository:library/x:pull"})
    escaped = parse_challenge(r'bearer Realm="https://a/t", service="a \"b\", c",error="insufficient_scope"', REG)
    assert escaped.params == {"realm": "https://a/t", "service": 'a "b", c', "error": "insufficient_scope"}
    assert parse_challenge('Basic realm="Registry Realm"', REG) == Challenge("basic", {"realm": "Registry Realm"})


@pytest.mark.parametrize("header", ["Negotiate abc", "", "Digest realm=x", "Bearer " + "x" * 5000])
def test_challenges_qmprt_cannot_answer_name_the_registry(header: str) -> None:
    with pytest.raises(PermissionDenied, match=REG):
        parse_challenge(header, REG)


def test_token_requests_carry_the_pull_credentials() -> None:
    challenge = parse_challenge(DOCKER_HUB, REG)
    anonymous = token_request(challenge, PullAuth(), REG, "https", "repository:vm/x:pull")
    assert anonymous.method == "GET" and anonymous.headers == {}
    query = urllib.parse.parse_qs(urllib.parse.urlsplit(anonymous.url).query)
    assert query == {"service": ["registry.docker.io"], "scope": ["repository:library/x:pull"]}

    basic = token_request(challenge, PullAuth(username="u", password="p:w"), REG, "https", "s")
    assert basic.headers["Authorization"] == "Basic " + base64.b64encode(b"u:p:w").decode()
    encoded = token_request(challenge, PullAuth(auth=base64.b64encode(b"a:b").decode()), REG, "https", "s")
    assert encoded.headers["Authorization"] == "Basic " + base64.b64encode(b"a:b").decode()

    refresh = token_request(challenge, PullAuth(identity_token="refresh-me"), REG, "https", "s")
    assert refresh.method == "POST" and refresh.body is not None
    form = urllib.parse.parse_qs(refresh.body.decode())
    assert form["grant_type"] == ["refresh_token"] and form["refresh_token"] == ["refresh-me"]


def test_the_scope_asked_for_fills_a_challenge_without_one() -> None:
    challenge = parse_challenge('Bearer realm="https://auth.local/token?x=1"', REG)
    request = token_request(challenge, PullAuth(), REG, "https", "repository:vm/tiny:pull")
    assert request.url == "https://auth.local/token?x=1&scope=repository%3Avm%2Ftiny%3Apull"


@pytest.mark.parametrize(
    ("realm", "auth", "words"),
    [
        ("ftp://auth.local/t", PullAuth(), "not an http\\(s\\) URL"),
        ("", PullAuth(), "not an http\\(s\\) URL"),
        ("http://auth.local/t", PullAuth(username="u", password="p"), "plain http; credentials are not sent"),
    ],
)
def test_unusable_realms_are_refused(realm: str, auth: PullAuth, words: str) -> None:
    with pytest.raises(PermissionDenied, match=words):
        token_request(Challenge("bearer", {"realm": realm}), auth, REG, "https", "s")


def test_an_http_realm_is_fine_for_an_anonymous_pull_or_an_http_registry() -> None:
    challenge = Challenge("bearer", {"realm": "http://auth.local/t"})
    assert token_request(challenge, PullAuth(), REG, "https", "s").method == "GET"
    assert token_request(challenge, PullAuth(username="u", password="p"), REG, "http", "s").headers


def test_token_answers() -> None:
    assert parse_token_response(b'{"token": "abc", "expires_in": 300}', REG) == "abc"
    assert parse_token_response(b'{"access_token": "def"}', REG) == "def"
    for body, words in [
        (b"<html>", "not JSON"),
        (b"[]", "no token"),
        (b'{"token": ""}', "no token"),
        (b'{"token": 5}', "no token"),
        (b'{"token": "a\\r\\nX-Evil: 1"}', "characters an HTTP header cannot carry"),
        (b" " * (1 << 20) + b"{}", "larger than"),
    ]:
        with pytest.raises(PermissionDenied, match=words):
            parse_token_response(body, REG)
