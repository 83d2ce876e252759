"""Redis URLs, parsed once for both Redis clients (``resp`` for a single node, redis-py for
Cluster and Sentinel).

Forms (user, password and query values may be percent-encoded):

- ``redis://[[user]:password@]host[:port][/db]`` (port 6379, db 0 by default);
- ``rediss://...``: the same over TLS, with query options ``ssl_cert_reqs=none|optional|required``
  (default ``required``), ``ssl_ca_certs=PATH`` and ``ssl_check_hostname=true|false`` (default
  true when certificates are required);
- ``unix://[[user]:password@]/path/to/socket[?db=N]``;
- any form: ``?db=N`` (wins over the path's db) and ``?password=P`` (wins over the userinfo's);
- Sentinel (``mode="sentinel"``): ``redis://[auth@]host1:port1,host2:port2/<master>[/db]``; the
  hosts are Sentinels (port 26379 by default), the path names the monitored master.

Every problem is a :class:`~ratelimit.errors.RedisUrlError`: ``redis URL <url>: <what is
wrong>``, the password hidden.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from ratelimit.errors import RedisUrlError

__all__ = ["CERT_REQS", "RedisUrl", "TlsOptions", "parse_redis_url", "redact"]

#: ``ssl_cert_reqs`` values and what they mean to ``ssl``.
CERT_REQS = {"none": ssl.CERT_NONE, "optional": ssl.CERT_OPTIONAL,
             "required": ssl.CERT_REQUIRED}
_TRUE = ("1", "true", "yes")
_SCHEMES = ("redis", "rediss", "unix")


@dataclass(frozen=True, slots=True)
class TlsOptions:
    """The TLS query options of a ``rediss://`` URL."""

    cert_reqs: str = "required"
    ca_certs: str | None = None
    check_hostname: bool = True

    def context(self) -> ssl.SSLContext:
        """An ``ssl`` context for these options; a bad CA file is a RedisUrlError."""
        try:
            context = ssl.create_default_context(cafile=self.ca_certs)
        except OSError as exc:  # a missing file or bad PEM (ssl.SSLError is an OSError)
            raise RedisUrlError(f"redis URL: cannot load ssl_ca_certs {self.ca_certs!r}: {exc}"
                                ) from exc
        verify = CERT_REQS[self.cert_reqs]
        # No certificate check means no name to check (as redis-py decides): asking for both
        # would make ``ssl`` refuse the context.
        context.check_hostname = verify != ssl.CERT_NONE and self.check_hostname
        context.verify_mode = verify
        return context

    def redis_py_options(self) -> dict[str, Any]:
        """The same options as redis-py connection keyword arguments."""
        return {"ssl": True, "ssl_cert_reqs": self.cert_reqs, "ssl_ca_certs": self.ca_certs,
                "ssl_check_hostname": self.check_hostname and self.cert_reqs != "none"}


@dataclass(frozen=True, slots=True)
class RedisUrl:
    """Where and how to reach Redis, as one URL says."""

    scheme: str
    #: (host, port) pairs: one node, or the Sentinels in sentinel mode; empty for unix.
    hosts: tuple[tuple[str, int], ...] = ()
    #: The unix socket path.
    path: str | None = None
    db: int = 0
    username: str | None = None
    password: str | None = None
    #: The monitored master's name (sentinel mode only).
    master: str | None = None
    tls: TlsOptions | None = None
    #: The URL as given, password hidden (for logs and ``/config``).
    redacted: str = ""

    @property
    def host(self) -> str:
        """The (first) host."""
        return self.hosts[0][0] if self.hosts else ""

    @property
    def port(self) -> int:
        """The (first) port."""
        return self.hosts[0][1] if self.hosts else 0


def redact(url: str) -> str:
    """``url`` with its password replaced by ``***`` (unchanged when it has none)."""
    try:
        parts = urlsplit(url)
        password = parts.password
    except ValueError:
        return url
    if password is None:
        return url
    host = parts.netloc.rpartition("@")[2]
    return parts._replace(netloc=f"{parts.username or ''}:***@{host}").geturl()


def _int(url: str, what: str, text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise RedisUrlError(f"redis URL {url}: {what} must be a number, got {text!r}") from None
    if value < 0:
        raise RedisUrlError(f"redis URL {url}: {what} must not be negative, got {value}")
    return value


def _hostport(url: str, item: str, default_port: int) -> tuple[str, int]:
    if item.startswith("["):  # [IPv6]:port
        host, _, rest = item[1:].partition("]")
        port = rest.removeprefix(":")
    else:
        host, _, port = item.partition(":")
    host = host or "127.0.0.1"
    number = _int(url, "port", port) if port else default_port
    if not 0 < number < 65536:
        raise RedisUrlError(f"redis URL {url}: port must be 1-65535, got {number}")
    return host, number


def _tls(url: str, query: dict[str, str]) -> TlsOptions:
    reqs = query.get("ssl_cert_reqs", "required").lower()
    if reqs not in CERT_REQS:
        raise RedisUrlError(f"redis URL {url}: invalid ssl_cert_reqs {reqs!r} "
                            "(none, optional or required)")
    check = query.get("ssl_check_hostname", "true" if reqs == "required" else "false")
    return TlsOptions(cert_reqs=reqs, ca_certs=query.get("ssl_ca_certs"),
                      check_hostname=check.lower() in _TRUE)


def parse_redis_url(url: str, *, mode: str = "single") -> RedisUrl:
    """Parse ``url`` for ``mode`` (``single``, ``cluster`` or ``sentinel``); see the module."""
    shown = redact(url)
    parts = urlsplit(url)
    if parts.scheme not in _SCHEMES:
        raise RedisUrlError(f"redis URL {shown}: unsupported scheme {parts.scheme!r} "
                            "(redis://, rediss:// or unix://)")
    query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
    userinfo, at, hostlist = parts.netloc.rpartition("@")
    user, colon, secret = userinfo.partition(":")
    username = unquote(user) if at and user else None
    password = unquote(secret) if at and colon else None
    if "password" in query:
        password = query["password"]
    common: dict[str, Any] = {"username": username, "password": password, "redacted": shown}
    if parts.scheme == "unix":
        if not parts.path:
            raise RedisUrlError(f"redis URL {shown}: a unix socket URL needs a path")
        if mode != "single":
            raise RedisUrlError(f"redis URL {shown}: a unix socket serves only mode single")
        return RedisUrl("unix", path=unquote(parts.path),
                        db=_int(shown, "db", query.get("db") or "0"), **common)
    segments = [unquote(p) for p in parts.path.split("/") if p]
    tls = _tls(shown, query) if parts.scheme == "rediss" else None
    items = [item for item in hostlist.split(",") if item] or ["127.0.0.1"]
    if mode == "sentinel":
        if not segments:
            raise RedisUrlError(f"redis URL {shown}: mode sentinel needs the master name as "
                                "its path: redis://h:26379/mymaster")
        db_text = query.get("db") or (segments[1] if len(segments) > 1 else "0")
        return RedisUrl(parts.scheme, tuple(_hostport(shown, i, 26379) for i in items),
                        db=_int(shown, "db", db_text), master=segments[0], tls=tls, **common)
    if len(items) > 1:
        raise RedisUrlError(f"redis URL {shown}: one host:port for mode {mode} "
                            "(several hosts are Sentinels: use mode sentinel)")
    db_text = query.get("db") or (segments[0] if segments else "0")
    return RedisUrl(parts.scheme, (_hostport(shown, items[0], 6379),),
                    db=_int(shown, "db", db_text), tls=tls, **common)
