"""The one Redis URL parser both clients use: every form, and the exact error texts."""

from __future__ import annotations

import ssl
from pathlib import Path

import pytest

from ratelimit.backends.resp import ConnectionSettings
from ratelimit.backends.url import RedisUrl, TlsOptions, parse_redis_url, redact
from ratelimit.errors import RedisUrlError


def test_tcp_with_auth_and_db() -> None:
    """redis://user:password@host:port/db, percent-encoding undone."""
    url = parse_redis_url("redis://us%3Aer:p%40ss@redis.local:6380/3")
    assert (url.scheme, url.host, url.port, url.db) == ("redis", "redis.local", 6380, 3)
    assert (url.username, url.password, url.tls) == ("us:er", "p@ss", None)
    assert url.redacted == "redis://us%3Aer:***@redis.local:6380/3"


def test_defaults_password_only_and_query_overrides() -> None:
    """Port 6379, db 0; ':pw@' is a password alone; ?db= and ?password= win."""
    url = parse_redis_url("redis://h")
    assert (url.port, url.db, url.username, url.password) == (6379, 0, None, None)
    url = parse_redis_url("redis://:pw@h/1?db=4&password=other")
    assert (url.username, url.password, url.db) == (None, "other", 4)
    assert parse_redis_url("redis://[::1]:7000").hosts == (("::1", 7000),)


def test_unix_socket() -> None:
    """unix:///path?db=N&password=P: a socket path, no host."""
    url = parse_redis_url("unix:///run/redis.sock?db=2&password=pw")
    assert (url.path, url.hosts, url.db, url.password) == ("/run/redis.sock", (), 2, "pw")


def test_tls_options() -> None:
    """rediss:// carries cert checks (default required, hostname checked) and a CA file."""
    assert parse_redis_url("rediss://h").tls == TlsOptions("required", None, True)
    tls = parse_redis_url("rediss://h/0?ssl_cert_reqs=optional&ssl_ca_certs=/ca.pem").tls
    assert tls == TlsOptions("optional", "/ca.pem", False)
    none = parse_redis_url("rediss://h?ssl_cert_reqs=none&ssl_check_hostname=true").tls
    assert none is not None
    context = none.context()
    assert (context.verify_mode, context.check_hostname) == (ssl.CERT_NONE, False)
    assert none.redis_py_options() == {"ssl": True, "ssl_cert_reqs": "none",
                                       "ssl_ca_certs": None, "ssl_check_hostname": False}


def test_sentinel_hosts_master_and_db() -> None:
    """Sentinel mode: several hosts (port 26379 by default), the master and db in the path."""
    url = parse_redis_url("redis://:pw@s1,s2:26380/mymaster/2", mode="sentinel")
    assert url.hosts == (("s1", 26379), ("s2", 26380))
    assert (url.master, url.db, url.password) == ("mymaster", 2, "pw")


def test_resp_settings_come_from_the_parser() -> None:
    """The lean client's settings are the parsed URL's."""
    parsed = parse_redis_url("rediss://u:p@h:6390/5?ssl_cert_reqs=none")
    settings = ConnectionSettings.from_url("rediss://u:p@h:6390/5?ssl_cert_reqs=none")
    assert isinstance(parsed, RedisUrl)
    assert (settings.host, settings.port, settings.db, settings.username, settings.password) == (
        parsed.host, parsed.port, parsed.db, parsed.username, parsed.password)
    assert settings.ssl is not None and settings.server_hostname == "h"


@pytest.mark.parametrize(("url", "mode", "message"), [
    ("memcache://h:1", "single",
     "redis URL memcache://h:1: unsupported scheme 'memcache' (redis://, rediss:// or unix://)"),
    ("redis://h:port", "single", "redis URL redis://h:port: port must be a number, got 'port'"),
    ("redis://h:70000", "single", "redis URL redis://h:70000: port must be 1-65535, got 70000"),
    ("redis://:secret@h/x", "single",
     "redis URL redis://:***@h/x: db must be a number, got 'x'"),
    ("unix://", "single", "redis URL unix://: a unix socket URL needs a path"),
    ("unix:///s.sock", "cluster",
     "redis URL unix:///s.sock: a unix socket serves only mode single"),
    ("rediss://h?ssl_cert_reqs=bogus", "single",
     "redis URL rediss://h?ssl_cert_reqs=bogus: invalid ssl_cert_reqs 'bogus' "
     "(none, optional or required)"),
    ("redis://h1,h2", "single",
     "redis URL redis://h1,h2: one host:port for mode single (several hosts are Sentinels: "
     "use mode sentinel)"),
    ("redis://s1:26379", "sentinel", "redis URL redis://s1:26379: mode sentinel needs the "
     "master name as its path: redis://h:26379/mymaster"),
])
def test_bad_urls_have_exact_messages(url: str, mode: str, message: str) -> None:
    """Each bad form fails with one RedisUrlError (a ValueError) saying what is wrong."""
    with pytest.raises(RedisUrlError) as raised:
        parse_redis_url(url, mode=mode)
    assert str(raised.value) == message
    assert isinstance(raised.value, ValueError)


def test_bad_ca_file_is_a_url_error(tmp_path: Path) -> None:
    """A CA file that cannot be loaded is reported when the TLS context is built."""
    tls = parse_redis_url(f"rediss://h?ssl_ca_certs={tmp_path / 'missing.pem'}").tls
    assert tls is not None
    with pytest.raises(RedisUrlError, match="cannot load ssl_ca_certs"):
        tls.context()


def test_redact_hides_only_the_password() -> None:
    """The password becomes ***; a URL without one is unchanged."""
    assert redact("redis://u:pw@h:1/0") == "redis://u:***@h:1/0"
    assert redact("redis://h:1/0") == "redis://h:1/0"
