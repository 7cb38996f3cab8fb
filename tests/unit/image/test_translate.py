"""Image names and their translation to URLs: parsing, normalisation, rules, the default, rules files."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from qmprt.errors import InvalidArgument
from qmprt.image.fetch_settings import FetchSettings
from qmprt.image.reference import normalise_name, parse_reference
from qmprt.image.rules import (
    ImageConfig,
    image_config_from_table,
    RuleSet,
    TranslationRule,
    parse_rules_file,
    rules_from_document,
    translate,
)

HEX = "a" * 64
OTHER_HEX = "b" * 64


@pytest.mark.parametrize(
    ("name", "normalised"),
    [
        ("images.example.org/ubuntu/jammy:22.04", "images.example.org/ubuntu/jammy:22.04"),
        ("images.example.org/ubuntu/jammy", "images.example.org/ubuntu/jammy:latest"),
        ("localhost:5000/tiny", "localhost:5000/tiny:latest"),
        ("tiny", "tiny:latest"),
        ("library/tiny:v1", "library/tiny:v1"),
        (f"host.example/tiny@sha256:{HEX}", f"host.example/tiny@sha256:{HEX}"),
        (f"host.example/tiny:v1@sha256:{HEX}", f"host.example/tiny:v1@sha256:{HEX}"),
        ("[::1]:8080/x/y:z", "[::1]:8080/x/y:z"),
        ("https://mirror.example.org/Jammy.QCOW2", "https://mirror.example.org/Jammy.QCOW2"),
        ("file:///srv/images/tiny.qcow2", "file:///srv/images/tiny.qcow2"),
        (f"http://h/x.img@sha256:{HEX}", f"http://h/x.img@sha256:{HEX}"),
    ],
    ids=["tagged", "untagged", "port", "short", "library", "pinned", "tag-and-pin", "ipv6", "https-url",
         "file-url", "pinned-url"],
)
def test_names_normalise_as_kubelet_users_expect(name: str, normalised: str) -> None:
    assert normalise_name(name) == normalised


@pytest.mark.parametrize(
    "name",
    [
        "",
        "Images/UPPER:1",
        "host.example/a..b",
        "host.example/x:bad/tag",
        "host.example/x:-tag",
        "host.example/x@sha256:abc",
        f"host.example/x@sha512:{HEX}",
        f"host.example/x@sha256:{HEX.upper()}",
        "ftp://host/x.qcow2",
        "https://user:secret@host/x.qcow2",
        "file://otherhost/x",
        "https:///nohost",
        "http://h/x y",
        HEX,
        "host.example/x?y=1",
    ],
    ids=["empty", "uppercase-path", "double-dot", "tag-with-slash", "tag-leading-dash", "short-digest",
         "sha512", "uppercase-digest", "ftp", "credentials-in-url", "file-remote-host", "no-host",
         "space", "bare-digest", "query"],
)
def test_invalid_names_are_refused(name: str) -> None:
    with pytest.raises(InvalidArgument):
        parse_reference(name)


def test_reference_parts() -> None:
    ref = parse_reference(f"images.example.org:8443/ubuntu/jammy:22.04@sha256:{HEX}")
    assert (ref.domain, ref.path, ref.tag, ref.digest) == (
        "images.example.org:8443", "ubuntu/jammy", "22.04", f"sha256:{HEX}"
    )
    assert ref.unpinned == "images.example.org:8443/ubuntu/jammy:22.04"
    pinned_only = parse_reference(f"h.example/x@sha256:{HEX}")
    assert pinned_only.effective_tag is None and pinned_only.unpinned == "h.example/x"
    url = parse_reference(f"https://m.example/x.qcow2@sha256:{HEX}")
    assert url.is_url and url.repository == "https://m.example/x.qcow2" and url.digest == f"sha256:{HEX}"


CONFIG = ImageConfig()


def test_a_reference_with_a_host_and_no_rule_goes_to_its_registry() -> None:
    for name in ("images.example.org/ubuntu/jammy:22.04", "localhost:5000/tiny", f"h.example/a/b@sha256:{HEX}"):
        assert translate(name, CONFIG) is None, name


def test_default_scheme_is_refused_with_what_replaces_it() -> None:
    with pytest.raises(InvalidArgument, match="plain_http"):
        image_config_from_table({"default_scheme": "http"})


def test_default_mapping_needs_a_host() -> None:
    with pytest.raises(InvalidArgument, match="names no host"):
        translate("ubuntu:22.04", CONFIG)


def test_urls_are_used_verbatim_and_skip_rules() -> None:
    catch_all = TranslationRule(regexp="(.*)", url="https://mirror.example/{1}")
    config = ImageConfig(rules=(catch_all,), default_transport=FetchSettings(timeout_s=7))
    for url in ("https://h.example/X.qcow2?sig=1", "http://h.example/x", "file:///srv/i/x.raw"):
        assert translate(url, config) == (url, FetchSettings(timeout_s=7))
    assert translate(f"https://h.example/x@sha256:{HEX}", config).url == "https://h.example/x"


def test_rules_apply_in_order_first_match_wins() -> None:
    first = TranslationRule(name="tiny:v1", url="http://first/tiny-v1.qcow2", transport=FetchSettings(timeout_s=1))
    second = TranslationRule(regexp=r"tiny:(.+)", url="http://second/tiny-{1}.qcow2")
    third = TranslationRule(regexp=r".*", url="http://third/{0}")
    config = ImageConfig(rules=(first, second, third))
    assert translate("tiny:v1", config) == ("http://first/tiny-v1.qcow2", FetchSettings(timeout_s=1))
    assert translate("tiny:v2", config).url == "http://second/tiny-v2.qcow2"
    assert translate("tiny", config).url == "http://second/tiny-latest.qcow2"
    assert translate("other", config).url == "http://third/other:latest"


def test_regexp_groups_named_groups_and_builtin_fields() -> None:
    rule = TranslationRule(
        regexp=r"(?P<host>[^/]+)/(?P<os>[a-z]+)/(.+):(.+)",
        url="https://mirror.example/{os}/{3}-{tag}.qcow2?from={host}&name={name}&path={path}",
    )
    url, _ = translate("images.example.org/ubuntu/jammy:22.04", ImageConfig(rules=(rule,)))
    assert url == (
        "https://mirror.example/ubuntu/jammy-22.04.qcow2"
        "?from=images.example.org&name=images.example.org/ubuntu/jammy&path=ubuntu/jammy"
    )


def test_exact_name_without_tag_matches_every_tag() -> None:
    rule = TranslationRule(name="images.example.org/ubuntu", url="https://m.example/ubuntu-{tag}.img")
    config = ImageConfig(rules=(rule,))
    assert translate("images.example.org/ubuntu:20.04", config).url == "https://m.example/ubuntu-20.04.img"
    assert translate("images.example.org/ubuntu", config).url == "https://m.example/ubuntu-latest.img"
    # Another repository falls through to its registry.
    assert translate("images.example.org/ubuntu2:1", config) is None


def test_digest_field_and_a_template_needing_a_missing_tag() -> None:
    rule = TranslationRule(regexp=r"cas\.example/.*", url="https://cas.example/sha256/{digest}")
    config = ImageConfig(rules=(rule,))
    assert translate(f"cas.example/x@sha256:{HEX}", config).url == f"https://cas.example/sha256/{HEX}"
    with pytest.raises(InvalidArgument, match="digest"):
        translate("cas.example/x:v1", config)
    needs_tag = TranslationRule(regexp=r"t\.example/.*", url="https://t.example/{tag}")
    with pytest.raises(InvalidArgument, match="tag"):
        translate(f"t.example/x@sha256:{HEX}", ImageConfig(rules=(needs_tag,)))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"regexp": "(unclosed", "url": "http://x/{1}"}, "bad regexp"),
        ({"regexp": "a(b)", "url": "http://x/{2}"}, "group"),
        ({"regexp": "a", "url": "http://x/{nope}"}, "unknown"),
        ({"regexp": "a", "url": "http://x/{0.__class__}"}, "plain"),
        ({"regexp": "a", "url": "http://x/{0!r}"}, "plain"),
        ({"regexp": "a", "url": "http://x/{0:>9}"}, "plain"),
        ({"regexp": "a", "url": "http://x/{"}, "template"),
        ({"url": "http://x/"}, "exactly one"),
        ({"name": "a", "regexp": "a", "url": "http://x/"}, "exactly one"),
        ({"name": "a", "url": "http://x/{1}"}, "group"),
        ({"name": "https://h/x", "url": "http://x/"}, "without digest"),
        ({"name": "a", "url": ""}, "empty"),
    ],
    ids=["bad-regexp", "missing-group", "unknown-field", "attribute", "conversion", "format-spec",
         "unbalanced", "neither", "both", "group-in-exact-rule", "url-as-name", "empty-url"],
)
def test_bad_rules_are_refused_when_parsed(kwargs: dict[str, str], message: str) -> None:
    with pytest.raises(InvalidArgument, match=message):
        TranslationRule(**kwargs)  # type: ignore[arg-type]


def test_rules_file(tmp_path: Path) -> None:
    path = tmp_path / "10-mirror.toml"
    path.write_text(
        """
[[rule]]
regexp = 'images\\.example\\.org/(.+):(.+)'
url = "https://mirror.example.org/{1}-{2}.qcow2"
ca_file = "/etc/qmprt/ca.pem"
timeout_s = 12
max_redirects = 0
proxy = ""

[[rule]]
name = "tiny"
url = "file:///srv/images/tiny.qcow2"
insecure_skip_verify = true
"""
    )
    first, second = parse_rules_file(path)
    assert first.transport == FetchSettings(ca_file="/etc/qmprt/ca.pem", timeout_s=12.0, max_redirects=0, proxy="")
    assert second.name == "tiny" and second.transport.insecure_skip_verify
    assert translate("images.example.org/a/b:c", ImageConfig(rules=(first, second))).url == (
        "https://mirror.example.org/a/b-c.qcow2"
    )


@pytest.mark.parametrize(
    "document",
    [
        {"rules": []},
        {"rule": {"name": "a", "url": "u"}},
        {"rule": [{"name": "a"}]},
        {"rule": [{"name": "a", "url": "http://x/", "colour": "red"}]},
        {"rule": [{"name": "a", "url": "http://x/", "timeout_s": "fast"}]},
        {"rule": [{"name": "a", "url": "http://x/", "timeout_s": -1}]},
        {"rule": [{"name": "a", "url": "http://x/", "insecure_skip_verify": "yes"}]},
        {"rule": [{"name": 3, "url": "http://x/"}]},
    ],
    ids=["wrong-table", "not-an-array", "no-url", "unknown-key", "timeout-type", "timeout-negative",
         "bool-type", "name-type"],
)
def test_bad_rules_documents_are_refused(document: dict[str, object]) -> None:
    with pytest.raises(InvalidArgument):
        rules_from_document(document, "test.toml")


def test_rules_file_syntax_error(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text("[[rule]\n")
    with pytest.raises(InvalidArgument, match="bad.toml"):
        parse_rules_file(path)


def _touch_later(path: Path) -> None:
    later = time.time_ns() + 2_000_000_000
    os.utime(path, ns=(later, later))


def test_rules_directory_is_reread_when_it_changes(tmp_path: Path) -> None:
    rules_dir = tmp_path / "rules.d"
    rules_dir.mkdir()
    config_rule = TranslationRule(name="pinned", url="http://config/pinned")
    rule_set = RuleSet(ImageConfig(rules=(config_rule,), rules_dir=str(rules_dir)))
    assert rule_set.translate("h.example/x:1") is None  # no rule yet: the registry

    (rules_dir / "20-b.toml").write_text('[[rule]]\nregexp = ".*"\nurl = "http://b/{0}"\n')
    (rules_dir / "10-a.toml").write_text('[[rule]]\nname = "h.example/x"\nurl = "http://a/x-{tag}"\n')
    assert rule_set.translate("h.example/x:1").url == "http://a/x-1"  # 10-a before 20-b
    assert rule_set.translate("h.example/y:1").url == "http://b/h.example/y:1"
    assert rule_set.translate("pinned").url == "http://config/pinned"  # config rules come first

    # A broken edit keeps the previous rules in force.
    (rules_dir / "10-a.toml").write_text("[[rule]\n")
    _touch_later(rules_dir / "10-a.toml")
    assert rule_set.translate("h.example/x:1").url == "http://a/x-1"

    (rules_dir / "10-a.toml").unlink()
    assert rule_set.translate("h.example/x:1").url == "http://b/h.example/x:1"


def test_broken_rules_directory_fails_at_start(tmp_path: Path) -> None:
    (tmp_path / "x.toml").write_text("[[rule]]\nregexp = '('\nurl = 'http://x/'\n")
    with pytest.raises(InvalidArgument, match="bad regexp"):
        RuleSet(ImageConfig(rules_dir=str(tmp_path)))


def test_missing_rules_directory_is_empty(tmp_path: Path) -> None:
    rule_set = RuleSet(ImageConfig(rules_dir=str(tmp_path / "absent")))
    assert rule_set.current() == ()


@pytest.mark.parametrize(
    "kwargs",
    [
        {"max_virtual_size_bytes": 0},
        {"file_roots": ("relative",)},
        {"max_download_bytes": -1},
    ],
    ids=["size", "relative-root", "download-limit"],
)
def test_bad_image_config_is_refused(kwargs: dict[str, object]) -> None:
    with pytest.raises(InvalidArgument):
        ImageConfig(**kwargs)  # type: ignore[arg-type]


def test_transport_validation() -> None:
    with pytest.raises(InvalidArgument):
        FetchSettings(timeout_s=0)
    with pytest.raises(InvalidArgument):
        FetchSettings(max_redirects=-1)
    with pytest.raises(InvalidArgument):
        FetchSettings(client_key="/k.pem")


def test_image_config_from_the_config_table() -> None:
    import tomllib

    from qmprt.image.rules import image_config_from_table

    document = tomllib.loads(
        """
[image]
rules_dir = "/etc/qmprt/image-rules.d"
max_virtual_size_bytes = 1073741824
file_roots = ["/srv/images"]
qemu_img_timeout_s = 30
[image.transport]
ca_file = "/etc/ssl/ca.pem"
[[image.rule]]
name = "tiny"
url = "file:///srv/images/tiny.qcow2"
"""
    )
    config = image_config_from_table(document["image"])
    assert config.rules_dir == "/etc/qmprt/image-rules.d" and config.max_virtual_size_bytes == 1 << 30
    assert config.file_roots == ("/srv/images",) and config.qemu_img_timeout_s == 30.0
    assert config.default_transport == FetchSettings(ca_file="/etc/ssl/ca.pem")
    assert translate("tiny", config).url == "file:///srv/images/tiny.qcow2"
    assert image_config_from_table({}) == ImageConfig()
    for bad in ({"colour": 1}, {"max_virtual_size_bytes": "big"}, {"file_roots": "/srv"}, {"file_roots": [1]},
                {"transport": {"colour": 1}}, {"rule": [{"name": "x"}]}, {"max_virtual_size_bytes": True}):
        with pytest.raises(InvalidArgument):
            image_config_from_table(bad)  # type: ignore[arg-type]
