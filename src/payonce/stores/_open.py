"""Open a store from a URL (L4), for the command line, the service and configuration files.

The production backends import their drivers only when their URL is opened, so ``import payonce``
still loads no third-party module.
"""

from __future__ import annotations

import importlib
import math
from datetime import timedelta
from typing import Any, Final
from urllib.parse import parse_qs, unquote_plus, urlsplit

from payonce._errors import ConfigurationError, StoreMissingError
from payonce._protocols import Store
from payonce.stores._memory import MemoryStore
from payonce.stores._sqlite import SQLiteStore

__all__ = ["open_store"]

_FORMS: Final = (
    "sqlite:///relative/path.db, sqlite:////absolute/path.db, sqlite:///:memory:, memory://, "
    "postgresql://user@host/db, redis://host:6379/0?prefix=payonce or redis+cluster://host:7000"
)
_SQLITE_OPTIONS: Final = frozenset({"synchronous", "busy_timeout"})
_POSTGRES_OPTIONS: Final = frozenset(
    {"timeout", "max_size", "read_first", "allow_unsafe_durability"}
)
_REDIS_OPTIONS: Final = frozenset({"prefix", "buckets", "read_first", "allow_unsafe_durability"})
# The longest wait a URL may ask for. Longer is a mistake, not a setting, and far longer ones
# overflow where they are used (timedelta past 1e9 days, a socket or lock wait past ~9e9 s).
_LONGEST_WAIT: Final = 86_400  # seconds


def open_store(url: str, *, create: bool = True) -> Store:
    """Open the store a URL names.

    With ``create=False`` it opens only a store that exists and changes nothing: a SQLite file
    that is not there, a PostgreSQL database without payonce's tables, or a Redis prefix with no
    payonce keys is refused with ``StoreMissingError`` instead of being created (a PostgreSQL
    database needing a migration with ``ConfigurationError``). Read-only tools use it, so that a
    mistyped URL is reported rather than answered from a new, empty store.

    Forms: ``sqlite:///relative/path.db`` (three slashes, then the path; four for an absolute
    path), ``sqlite:///:memory:``, ``memory://``, ``postgresql://…`` (or ``postgres://``),
    ``redis://…`` / ``rediss://…`` / ``unix://…`` and ``redis+cluster://host:port``. SQLite
    takes the query options ``synchronous`` (FULL, NORMAL, EXTRA) and ``busy_timeout``
    (seconds); PostgreSQL takes ``timeout`` (seconds to wait for a connection, 30 by default),
    ``max_size`` (the pool), ``read_first`` and ``allow_unsafe_durability=true``, and passes every
    other query parameter to libpq; Redis takes ``prefix``, ``buckets``, ``read_first`` and
    ``allow_unsafe_durability=true``. ``read_first`` is ``true``, ``false`` or ``auto`` (the
    default: see ``PostgresStore``).

    Raises:
        StoreMissingError: with ``create=False``, no store at the URL.
        ConfigurationError: for a malformed URL, an unknown scheme or option, or a backend whose
            extra is not installed (the message names the extra). No message quotes the URL: it
            may carry a password.
    """
    if not isinstance(url, str) or "://" not in url:
        raise ConfigurationError(
            f"a store URL looks like one of: {_FORMS}; this one has no '://' after its scheme",
            option="url",
        )
    if "\x00" in url or not _is_text(url):
        # Not quoted: it may hold a password. A NUL would end the string early in libpq.
        raise ConfigurationError(
            "the store URL holds a NUL character or bytes that are not UTF-8 text; percent-encode "
            "any byte outside printable UTF-8 (a NUL cannot be part of a store URL)",
            option="url",
        )
    try:
        parts = urlsplit(url)
    except ValueError:  # "Invalid IPv6 URL": an unbalanced '[' or ']' in the host
        raise ConfigurationError(
            "the host of the store URL cannot be read: an IPv6 address goes in brackets "
            "(postgresql://user@[::1]:5432/db, redis://[::1]:6379/0), and a '[' or ']' in a "
            "password must be percent-encoded (%5B, %5D)",
            option="url",
        ) from None
    scheme = parts.scheme.lower()
    if scheme == "sqlite":
        return _open_sqlite(url, create)
    if scheme == "memory":
        if not create:
            raise StoreMissingError(
                "a memory:// store is new and empty each time it is opened, so there is none to "
                "read (create=False, as every payonce command but migrate and demo): pass the "
                "URL of the store the service writes to.",
                option="url",
            )
        return MemoryStore()
    if scheme in ("postgresql", "postgres"):
        return _open_postgres(url, create)
    if scheme in ("redis", "rediss", "unix", "redis+cluster", "rediss+cluster"):
        return _open_redis(url, create)
    raise ConfigurationError(
        f"unknown store URL scheme {parts.scheme!r}; use one of: {_FORMS}", option="url"
    )


def _is_text(url: str) -> bool:
    """Whether ``url`` is UTF-8 text: a command-line argument that is not arrives with lone
    surrogates (Python's surrogateescape), which no driver can send."""
    try:
        url.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _open_sqlite(url: str, create: bool) -> SQLiteStore:
    rest = url[len("sqlite://") :]
    path, _, query = rest.partition("?")
    if not path.startswith("/") or len(path) < 2:
        raise ConfigurationError(
            "a SQLite URL is sqlite:///relative/path.db or sqlite:////absolute/path.db (three "
            "slashes before a relative path, four before an absolute one)",
            option="url",
        )
    path = path[1:]  # the third slash separates the (empty) host from the path
    options = {name: values[-1] for name, values in parse_qs(query, strict_parsing=False).items()}
    unknown = sorted(set(options) - _SQLITE_OPTIONS)
    if unknown:
        raise ConfigurationError(
            f"unknown SQLite URL option {unknown[0]!r}; the options are synchronous and "
            "busy_timeout (seconds)",
            option=unknown[0],
        )
    kwargs: dict[str, Any] = {}
    if "synchronous" in options:
        kwargs["synchronous"] = options["synchronous"]
    if "busy_timeout" in options:
        seconds = _number(
            options, "busy_timeout", "30 (seconds)", float, most=_LONGEST_WAIT, zero=True
        )
        kwargs["busy_timeout"] = timedelta(seconds=seconds)
    return SQLiteStore(path, create=create, **kwargs)


def _take_options(url: str, names: frozenset[str]) -> tuple[str, dict[str, str]]:
    """Split payonce's own query parameters (``names``) out of ``url``.

    The rest of the URL is kept byte for byte (``postgresql:///db`` keeps its empty host, and
    percent-encoded or empty values stay as written), since the driver parses it.
    """
    base, sep, query = url.partition("?")
    if not sep:
        return url, {}
    ours: dict[str, str] = {}
    kept: list[str] = []
    for item in query.split("&"):
        name, _, value = item.partition("=")
        if unquote_plus(name) in names:
            ours[unquote_plus(name)] = unquote_plus(value)
        elif item:
            kept.append(item)
    return (f"{base}?{'&'.join(kept)}" if kept else base), ours


def _flag(options: dict[str, str], name: str) -> bool:
    value = options.pop(name).lower()
    if value not in ("true", "false"):
        raise ConfigurationError(
            f"{name} in a store URL is true or false; got {value!r}", option=name
        )
    return value == "true"


def _read_first(options: dict[str, str]) -> bool | None:
    value = options.pop("read_first").lower()
    if value not in ("true", "false", "auto"):
        raise ConfigurationError(
            f"read_first in a store URL is true, false or auto (adapt, the default); got {value!r}",
            option="read_first",
        )
    return None if value == "auto" else value == "true"


def _number(
    options: dict[str, str],
    name: str,
    example: str,
    cast: type[float] | type[int],
    *,
    most: float = math.inf,
    zero: bool = False,
) -> Any:
    """Pop option ``name`` as a positive (or, with ``zero``, non-negative) finite number of at
    most ``most``."""
    try:
        value = cast(options.pop(name))
    except ValueError:
        raise ConfigurationError(
            f"{name} in a store URL is a number, e.g. {name}={example}", option=name
        ) from None
    if not math.isfinite(value) or value < 0 or (value == 0 and not zero) or value > most:
        sign = "non-negative" if zero else "positive"
        limit = f" of at most {most:g}" if math.isfinite(most) else ""
        raise ConfigurationError(
            f"{name} in a store URL must be a {sign}, finite number{limit}, e.g. {name}={example}",
            option=name,
        )
    return value


def _check_conninfo(conninfo: str) -> None:
    """Refuse, before any connection is tried, what libpq would refuse."""
    try:
        from psycopg import Error  # noqa: PLC0415 - the postgres extra
        from psycopg.conninfo import conninfo_to_dict  # noqa: PLC0415
    except ImportError:
        return  # _backend names the missing extra
    try:
        conninfo_to_dict(conninfo)
    except Error as exc:
        raise ConfigurationError(
            f"the PostgreSQL URL is not one libpq accepts ({type(exc).__name__}): check its "
            "spelling and options; payonce's own options are timeout, max_size, read_first and "
            "allow_unsafe_durability, every other one goes to libpq.",
            option="url",
        ) from None


def _open_postgres(url: str, create: bool) -> Store:
    # payonce's own options come out of the query; libpq refuses parameters it does not know,
    # so the rest is checked here, before any connection is tried.
    rest, options = _take_options(url, _POSTGRES_OPTIONS)
    _check_conninfo(rest)
    kwargs: dict[str, Any] = {}
    if "timeout" in options:
        seconds = _number(options, "timeout", "5 (seconds)", float, most=_LONGEST_WAIT)
        kwargs["timeout"] = timedelta(seconds=seconds)
    if "max_size" in options:
        kwargs["max_size"] = _number(options, "max_size", "10", int)
    if "read_first" in options:
        kwargs["read_first"] = _read_first(options)
    if "allow_unsafe_durability" in options:
        kwargs["allow_unsafe_durability"] = _flag(options, "allow_unsafe_durability")
    postgres = _backend("payonce.stores._postgres", "PostgresStore", "postgres")
    store: Store = postgres(rest, create=create, **kwargs)
    return store


def _open_redis(url: str, create: bool) -> Store:
    # payonce's own options come out of the query; redis-py would pass unknown ones through to
    # the connection.
    rest, options = _take_options(url, _REDIS_OPTIONS)
    kwargs: dict[str, Any] = {}
    if "prefix" in options:
        kwargs["prefix"] = options.pop("prefix")
    if "buckets" in options:
        try:
            kwargs["buckets"] = int(options.pop("buckets"))
        except ValueError:
            raise ConfigurationError(
                "buckets in a Redis URL is a whole number, e.g. buckets=16", option="buckets"
            ) from None
    if "read_first" in options:
        kwargs["read_first"] = _read_first(options)
    if "allow_unsafe_durability" in options:
        kwargs["allow_unsafe_durability"] = _flag(options, "allow_unsafe_durability")
    store: Store = _backend("payonce.stores._redis", "RedisStore", "redis")(
        rest, create=create, **kwargs
    )
    return store


def _backend(module: str, name: str, extra: str) -> Any:
    try:
        loaded = importlib.import_module(module)
    except ModuleNotFoundError as exc:
        if exc.name == module:
            raise ConfigurationError(
                f"this version of payonce has no {extra} store; use one of: {_FORMS}",
                option="url",
            ) from exc
        raise ConfigurationError(
            f"the {extra} store needs its extra: pip install 'payonce[{extra}]' ({exc.name} is "
            "missing)",
            option="url",
        ) from exc
    return getattr(loaded, name)
