"""The Redis store (L4): ``RedisStore`` on redis-py and ``AsyncRedisStore`` on ``redis.asyncio``
(native async), for a single Redis server or a Redis Cluster (DESIGN §7).

Every transition is one Lua script (``_redis_lua``) that compares and sets the record on its
fencing token, status and ledger head, appends the ledger entry and updates the indexes. Records
are spread over a fixed number of buckets; everything of one bucket shares one hash tag, hence
one Cluster slot, so no script ever spans two slots and the same code runs on both.

Sequence numbers: on a single server the script increments one counter, so ``seq`` order is
commit order. Redis Cluster cannot increment a counter in another slot inside the script: the
client allocates the ``seq`` one round trip earlier, so an allocation whose script then misses
leaves a gap, and entries of different buckets may become visible slightly out of ``seq`` order
(within a bucket, hence within a key, the order always holds). Hence ``gapless_ledger`` is True
on a single server and False on Cluster.

This module holds the two I/O drivers, the start-up checks and the error translation; the
operations themselves are in ``_redis_core``.
"""

from __future__ import annotations

import asyncio
import codecs
import contextlib
import inspect
import logging
import os
import re
import time
from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any, Final, TypeVar
from urllib.parse import parse_qs, unquote, urlsplit, urlunsplit

from payonce._errors import (
    ConfigurationError,
    StoreClosedError,
    StoreError,
    StoreUnavailableError,
)
from payonce._model import Checkpoint, Claimed, Entry, NewRecord, Record, ReplayView, Status
from payonce.stores import _redis_lua as lua
from payonce.stores._open import _LONGEST_WAIT, _number
from payonce.stores._redis_core import (
    SCRIPT_NAMES,
    Command,
    Effect,
    Fanout,
    Op,
    Pause,
    RedisCore,
    Script,
    _check_options,
    text,
)

try:
    import redis
    import redis.asyncio
    import redis.asyncio.cluster
    import redis.asyncio.connection
    import redis.asyncio.retry
    import redis.backoff
    import redis.cluster
    import redis.connection
    import redis.retry
    from redis import exceptions as rexc
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise ConfigurationError(
        "RedisStore needs redis-py, which is not installed: pip install 'payonce[redis]'",
        option="store",
    ) from exc

__all__ = ["AsyncRedisStore", "RedisStore"]

_log = logging.getLogger("payonce.stores.redis")
_T = TypeVar("_T")

_SOCKET_TIMEOUT: Final = 5.0  # seconds; for clients the store builds from a URL
# The connections a client the store builds from a single server's URL holds at most, unless
# the URL sets max_connections: redis-py 8's own default.
_MAX_CONNECTIONS: Final = 100
# What a pipeline to one Cluster master raises when its slot map is stale: a redirect (MOVED is
# an ASK), a slot in migration, a node gone, hung (a failover's usual start) or no longer
# serving the slot.
_STALE_MAP: Final = (
    rexc.AskError, rexc.TryAgainError, rexc.ClusterDownError, rexc.ConnectionError,
    rexc.TimeoutError, rexc.RedisClusterException,
)  # fmt: skip
# Attempts of a call by the cluster clients the store builds from a URL, after its first: each
# may wait a whole socket timeout on a hung master, and redis-py's default is ten. The client
# refreshes its slot map between attempts, which is what follows a failover.
_CLUSTER_RETRIES: Final = 2
# The settings read at open; a plain client also reads cluster-enabled, to refuse a URL of a
# Redis Cluster node.
_DURABILITY: Final = ("maxmemory-policy", "appendonly", "save")
_SCRIPTS: Final = {name: getattr(lua, name.upper()) for name in SCRIPT_NAMES}
# Conditions that pass, or that an operator fixes, after which the same intent is retried.
_UNAVAILABLE: Final = (
    rexc.ConnectionError,
    rexc.TimeoutError,
    rexc.ClusterDownError,
    rexc.TryAgainError,
    rexc.MasterDownError,
    rexc.ReadOnlyError,
    rexc.ClusterError,
    rexc.OutOfMemoryError,  # noeviction and full: an operator frees memory, then it passes
    rexc.NoScriptError,  # the script cache emptied again between a load and its resend
    # Cluster conditions that pass: no node serves a slot (during a failover), none reachable.
    rexc.SlotNotCoveredError,
    getattr(rexc, "RedisClusterUnreachableError", rexc.SlotNotCoveredError),
)
_UNAVAILABLE_REPLIES: Final = frozenset(
    # MISCONF: the server cannot persist (a full disk, a failed BGSAVE) and refuses writes
    # until an operator fixes the disk; like OOM, it passes.
    {"OOM", "BUSY", "LOADING", "MASTERDOWN", "READONLY", "NOREPLICAS", "MISCONF", "NOSCRIPT"}
)
# What an operator does about a refusal that does not pass by itself. Whether the operation
# wrote anything is not said: the refusal may answer a resend of a script that ran (the client's
# own retries after a lost reply), or a later script of an operation whose earlier ones landed.
_OPERATOR_FIX: Final = {
    "OOM": "free memory or raise maxmemory",
    "MISCONF": "fix the server's persistence (its disk, or the failed save)",
    "NOREPLICAS": "bring back the replicas that min-replicas-to-write asks for",
}
# Replies without a code of their own that pass. A read script that visits record keys it does
# not declare (PURGE_CANDIDATES, SCAN, HEADS, NEWEST) is refused this way while its bucket's slot
# is being migrated (resharding) and the record already moved; the redirect Redis gives a
# declared key (ASK, TRYAGAIN) it cannot give here. (Redirected to the importing master, where
# the record has not arrived yet, the script finds no record: NEWEST refuses, the others skip
# it; see _redis_lua.) It passes when the migration ends: payonce's undeclared keys always share
# their bucket's hash tag, so it never means a misconfiguration.
_UNAVAILABLE_TEXTS: Final = ("Script attempted to access a non local key in a cluster node",)
# An error reply's code, as redis-py words it: the reply itself, or, for a pipeline, annotated
# ("Command # 2 (EVALSHA …) of pipeline caused error: BUSY …"; some async cluster pipelines
# write the error's args there: "…caused error: ('BUSY …',)"). The code is read from the text
# where the error carries no ``status_code``: redis-py gives one to codes it has no class for
# (BUSY, NOREPLICAS) only in recent releases.
_PIPELINE_ERROR: Final = re.compile(
    r"^Command # \d+ \(.*?\) of pipeline caused error: (?:\((['\"])(?P<args>.*)\1,\)$)?", re.S
)


def _mask(url: str) -> str:
    """The URL for repr, logs and errors: without its password, and without its query and
    fragment, which can carry one too (``?password=…``)."""
    try:
        parts = urlsplit(url)
    except ValueError:  # an unbalanced bracket in the host: nothing of it is shown
        return "<unreadable Redis URL>"
    where = parts.netloc.rpartition("@")[2]
    if parts.password is not None:
        where = f"{parts.username or ''}:***@{where}"
    elif parts.username is not None:
        where = f"{parts.username}@{where}"
    return urlunsplit((parts.scheme, where, parts.path, "", ""))


# Credentials Redis refuses: redis-py raises them as connection errors (and a cluster client as
# a RedisClusterException raised from one), but waiting does not make them pass.
_REFUSED_CREDENTIALS: Final = (
    rexc.AuthenticationError,
    rexc.AuthorizationError,
    rexc.AuthenticationWrongNumberOfArgsError,
)


def _refused_credentials(exc: BaseException) -> bool:
    return isinstance(exc, _REFUSED_CREDENTIALS) or isinstance(exc.__cause__, _REFUSED_CREDENTIALS)


def _transient(exc: Exception, reply: str) -> bool:
    """A condition that passes (or that an operator fixes) after which a retry can succeed."""
    if isinstance(exc, _UNAVAILABLE):
        return True
    if isinstance(exc, rexc.RedisClusterException):
        # Other cluster errors are a misconfiguration ("Cluster mode is not enabled", keys
        # in different slots), except the older "cannot be connected", raised from the
        # connection error.
        return isinstance(exc.__cause__, rexc.ConnectionError | rexc.TimeoutError)
    code = getattr(exc, "status_code", None) or reply.split(" ", 1)[0]
    return code in _UNAVAILABLE_REPLIES or any(words in reply for words in _UNAVAILABLE_TEXTS)


# The operations that never write: an outage during one leaves nothing to resolve. Not the
# ledger horizon: on Cluster it raises the counter and every bucket's watermark.
_READS: Final = frozenset(
    {"get", "replay_view", "newest", "scan", "entries", "heads", "checkpoints"}
)


# Redis's answer to a command it does not know quotes the command's first arguments: for a HELLO
# sent at connect (protocol=3 to a Redis before 6) those are AUTH, the user and the password.
_QUOTED_ARGS: Final = re.compile(r",? with args beginning with:.*", re.DOTALL)


def _unquoted(reply: str) -> str:
    """A Redis error's text without the arguments Redis quotes back (I8)."""
    return _QUOTED_ARGS.sub("", reply)


def _cause(exc: BaseException) -> BaseException | None:
    """``exc`` to chain to payonce's error, or None where its text quotes a command's arguments
    (they may hold a password): a traceback or ``logging.exception`` prints the cause too."""
    return None if _QUOTED_ARGS.search(str(exc)) else exc


def _translate(exc: Exception, operation: str) -> StoreError:
    name = type(exc).__name__
    # Redis's own words first: a pipeline's annotation (the command, cut) would push them
    # past the length shown.
    reply = _unquoted(str(exc))
    if annotated := _PIPELINE_ERROR.match(reply):
        reply = annotated["args"] or reply[annotated.end() :]
    if _refused_credentials(exc):
        # At open this is a ConfigurationError (see _config_refusal); later, the credentials
        # were changed under a running store.
        return StoreError(
            f"the payonce store failed during {operation}: Redis refused the store's credentials "
            f"({name}: {reply[:200]}). This is not transient: check the user, password and ACL "
            "the store was given, then open the store again.",
            operation=operation,
        )
    if isinstance(exc, rexc.MovedError | rexc.ClusterCrossSlotError):
        # A plain client of a Redis Cluster node whose CONFIG GET was refused at open.
        return StoreError(
            f"the payonce store failed during {operation}: Redis answered {name} "
            f"({reply[:200]}); nothing was written. If the server is a Redis Cluster node, "
            f"{_USE_CLUSTER_URL}",
            operation=operation,
        )
    if (exhausted := _pool_exhausted(exc, operation)) is not None:
        return exhausted
    if _transient(exc, reply):
        code = getattr(exc, "status_code", None) or reply.split(" ", 1)[0]
        if isinstance(exc, rexc.OutOfMemoryError):
            code = "OOM"  # redis-py's class for it keeps only the words after the code
        fix = _OPERATOR_FIX.get(code)
        if operation in _READS:
            effect = "it only reads, so nothing changed"
        else:
            effect = "it may or may not have taken effect (payonce resolves either case)"
        effect += f"; {fix}, then retry" if fix else "; retry once Redis answers again"
        return StoreUnavailableError(
            f"Redis was unavailable ({name}: {reply[:200]}); {effect}",
            operation=operation,
        )
    return StoreError(
        f"the payonce store failed during {operation}: Redis answered {name} ({reply[:200]}). "
        "This is not transient: the payonce keys may have been changed outside payonce, or the "
        "server refuses the scripts; check the server and its keys before retrying.",
        operation=operation,
    )


# What redis-py says when a client's pool has no connection to give: a plain pool (or a cluster
# node's) at its max_connections, as MaxConnectionsError (a bare ConnectionError in older releases);
# a blocking pool (the store's own on a single server) after waiting its timeout.
_AT_LIMIT: Final = "Too many connections"
_NONE_CAME_FREE: Final = "No connection available."
_FEWER_CALLS: Final = (
    "raise max_connections in the store URL (?max_connections=N) or on the client you passed, "
    "or lower the number of concurrent calls"
)


def _pool_exhausted(exc: Exception, operation: str) -> StoreUnavailableError | None:
    """A command the client never sent, for want of a connection: not an outage of Redis."""
    if not isinstance(exc, rexc.ConnectionError):
        return None
    if operation in _READS:
        effect = "it only reads, so nothing changed"
    else:
        effect = (
            "an earlier command of the same operation may have taken effect (payonce resolves "
            "either case)"
        )
    if isinstance(exc, rexc.MaxConnectionsError) or str(exc) == _AT_LIMIT:
        return StoreUnavailableError(
            "the Redis client's connection limit was reached (max_connections; per node on "
            f"Redis Cluster), so this command was NOT sent to Redis; {effect}; {_FEWER_CALLS}",
            operation=operation,
        )
    if str(exc) == _NONE_CAME_FREE:
        return StoreUnavailableError(
            "no connection of the Redis client's pool came free in time: all max_connections "
            "stayed in use (Redis answers slowly or not at all, or more calls run at once than "
            f"the pool holds), so this command was NOT sent to Redis; {effect}; check that Redis "
            f"answers, then {_FEWER_CALLS}",
            operation=operation,
        )
    return None


def _credentials_error(exc: BaseException) -> ConfigurationError:
    """Not an outage to wait out: the store was given credentials Redis refuses."""
    refused = exc if isinstance(exc, _REFUSED_CREDENTIALS) else exc.__cause__
    return ConfigurationError(
        f"Redis refused the credentials the store was given ({type(refused).__name__}: "
        f"{refused}); check the user name and password in the store URL "
        "(redis://user:password@host) or on the client you passed, and the user's ACL (it needs "
        "the payonce key prefix, EVALSHA, SCRIPT LOAD and CONFIG GET or "
        "allow_unsafe_durability=True)",
        option="store",
    )


def _opening(exc: Exception) -> Exception:
    """An error while opening a store as its caller sees it: credentials or a database number to
    fix, a cluster URL for a server that is not one, or as ``_translate`` has it."""
    if _refused_credentials(exc):
        return _credentials_error(exc)
    if isinstance(exc, rexc.ResponseError) and _NO_SUCH_DATABASE in str(exc):
        # SELECT, as a connection starts, of a database number the server does not have.
        return ConfigurationError(
            "Redis has no database with the number the store was given (the path of the URL, "
            "redis://host:6379/0, or the client's db): use a number below the server's "
            "'databases' setting (16 by default).",
            option="db",
        )
    if isinstance(exc, rexc.RedisClusterException) and _NOT_A_CLUSTER in str(exc):
        return ConfigurationError(
            "the store URL asks for Redis Cluster (redis+cluster://, or a RedisCluster client) "
            "but the server is not in cluster mode (cluster-enabled no): use redis://host:port/0 "
            "(rediss:// for TLS) for a single server, or point the URL at a cluster node.",
            option="url",
        )
    if isinstance(exc, rexc.MovedError):
        # Only a plain client sees MOVED (a cluster client follows it): one whose CONFIG GET
        # was refused, so that cluster-enabled could not be read.
        return ConfigurationError(_CLUSTER_NODE, option="url")
    return _translate(exc, "open")


# What redis-py says when the node a cluster client starts from answers CLUSTER SLOTS with an
# error (sync and async clients, as the cause or within "Redis Cluster cannot be connected").
_NOT_A_CLUSTER: Final = "Cluster mode is not enabled"
# What to do about a plain client of a Redis Cluster node, said at open and after a redirect.
_USE_CLUSTER_URL: Final = (
    "use redis+cluster://host:port (rediss+cluster:// for TLS) or a RedisCluster client: a plain "
    "client sends every script to one node, which refuses the keys of the slots other nodes serve."
)
_CLUSTER_NODE: Final = (
    "the store URL names a single Redis server (redis://, or a plain Redis client) but the "
    f"server is a Redis Cluster node (cluster-enabled yes): {_USE_CLUSTER_URL}"
)
# What Redis answers SELECT of a database number it does not have.
_NO_SUCH_DATABASE: Final = "DB index is out of range"


def _connected(url: str) -> Any:
    """The sync client for ``url``; a cluster client connects here already, so its errors are
    translated as at open."""
    try:
        return _client_from_url(url, asynchronous=False)
    except (rexc.RedisError, rexc.RedisClusterException) as exc:
        raise _opening(exc) from _cause(exc)


def _setup_refusal(exc: Exception) -> Exception:
    """What a failed PING after a refused CONFIG GET at open means: Redis refused to set up the
    connection (CLIENT SETNAME of a name with a space, HELLO of a protocol it does not speak, …),
    which is no refused CONFIG GET that ``allow_unsafe_durability`` would get past; else as at
    open."""
    opening = _opening(exc)
    if isinstance(exc, rexc.ResponseError) and type(opening) is StoreError:
        return ConfigurationError(
            "Redis refused to set up the store's connection ("
            f"{type(exc).__name__}: {_unquoted(str(exc))[:200]}): check the connection options in "
            "the store URL's query (client_name takes no spaces; protocol, lib_name, username, …) "
            "or on the client you passed, then open the store again.",
            option="url",
        )
    return opening


def _config_refusal(exc: Exception) -> Exception:
    """What a failed CONFIG GET at open means: a refusal to report (CONFIG renamed, disabled,
    or denied by an ACL), returned; or an outage (BUSY, CLUSTERDOWN, a lost connection), raised
    as one, not mistaken for a refusal that only ``allow_unsafe_durability`` would get past."""
    opening = _opening(exc)
    if isinstance(exc, rexc.ResponseError) and type(opening) is StoreError:
        return exc
    raise opening from _cause(exc)


def _durability(
    replies: Sequence[Any],
    *,
    allow_unsafe: bool,
    where: str,
    refused: Exception | None,
    cluster: bool,
) -> None:
    """Refuse (or warn about) a Redis that may drop records, see ``RedisStore``, and a plain
    client of a Redis Cluster node."""
    if refused is not None:
        message = (
            f"payonce could not read the configuration of Redis at {where}: CONFIG GET is "
            f"refused ({type(refused).__name__}), as on most managed Redis services. Check in "
            "your provider's settings that maxmemory-policy is noeviction and that persistence "
            "(AOF) is on, then pass allow_unsafe_durability=True to confirm."
        )
        if not allow_unsafe:
            raise ConfigurationError(message, option="allow_unsafe_durability")
        _log.warning("%s Continuing: allow_unsafe_durability=True.", message)
        return
    # Standalone: one {name: value} per CONFIG GET; Cluster: {node: {name: value}} per call.
    nodes: dict[str, dict[str, str]] = {}
    for reply in replies:
        decoded = {text(k): v for k, v in reply.items()}
        if decoded and all(isinstance(v, Mapping) for v in decoded.values()):
            for node, settings in decoded.items():
                nodes.setdefault(node, {}).update({text(k): text(v) for k, v in settings.items()})
        else:
            nodes.setdefault(where, {}).update({k: text(v) for k, v in decoded.items()})
    if not cluster and any(node.get("cluster-enabled") == "yes" for node in nodes.values()):
        raise ConfigurationError(_CLUSTER_NODE, option="url")
    for name, node in sorted(nodes.items()):
        policy = node.get("maxmemory-policy")
        if policy != "noeviction":
            message = (
                f"Redis at {name} runs with maxmemory-policy={policy!r}: under memory pressure "
                "it may evict payonce records, and an evicted claim lets a second caller move "
                "the money again. Set maxmemory-policy to noeviction (CONFIG SET "
                "maxmemory-policy noeviction, and in redis.conf on every node), or pass "
                "allow_unsafe_durability=True to run anyway."
            )
            if not allow_unsafe:
                raise ConfigurationError(message, option="maxmemory-policy")
            _log.warning("%s Continuing: allow_unsafe_durability=True.", message)
        if node.get("appendonly") == "no" and not node.get("save"):
            _log.warning(
                "Redis at %s has neither AOF nor RDB persistence: a restart loses every payonce "
                "record and ledger entry. Deterministic provider keys keep a retried intent from "
                "moving money twice at gateways that deduplicate them; turn on appendonly yes "
                "(appendfsync everysec or always) for production.",
                name,
            )


def _client_from_url(url: str, *, asynchronous: bool) -> Any:
    """The client for ``url``, its URL checked first (``_check_url``).

    Raises:
        ConfigurationError: a URL redis-py would refuse, or accept and fail on later.
    """
    scheme, sep, rest = url.partition("://")
    if not sep or scheme.lower() not in _SCHEMES:
        raise ConfigurationError(
            "this is not a Redis URL; use redis://host:6379/0, rediss://… (TLS), "
            "unix:///path/to/redis.sock or redis+cluster://host:port for Redis Cluster.",
            option="url",
        )
    cluster = scheme.lower().endswith("+cluster")
    plain = f"{scheme.lower().removesuffix('+cluster')}://{rest}"
    given = _check_url(plain, cluster=cluster, asynchronous=asynchronous)
    # Without a socket timeout a stalled server would hold a claim forever; the URL's own
    # socket_timeout / socket_connect_timeout query parameters take precedence.
    options: dict[str, Any] = {
        "socket_timeout": _SOCKET_TIMEOUT,
        "socket_connect_timeout": _SOCKET_TIMEOUT,
    }
    try:
        if not cluster:
            # A blocking pool: a call beyond max_connections waits for a connection to come
            # back, as long as it would wait for a reply, instead of failing at once (redis-py's
            # plain pool raises MaxConnectionsError, an outage to the caller, on a healthy Redis:
            # a burst of concurrent calls then failed claims, and completes after the charge).
            # The URL's own max_connections is kept; from_pool hands the pool to the client,
            # which closes it with itself (redis>=5.0.1, as the async client's aclose).
            wait = float(given.get("socket_timeout", _SOCKET_TIMEOUT))
            if asynchronous:
                pool = redis.asyncio.BlockingConnectionPool.from_url(
                    plain, max_connections=_MAX_CONNECTIONS, timeout=wait, **options
                )
                return redis.asyncio.Redis.from_pool(pool)
            return redis.Redis.from_pool(
                redis.BlockingConnectionPool.from_url(
                    plain, max_connections=_MAX_CONNECTIONS, timeout=wait, **options
                )
            )
        # redis-py has no blocking pool for Redis Cluster: a call beyond a node's
        # max_connections fails at once (see _translate).
        retry = redis.asyncio.retry.Retry if asynchronous else redis.retry.Retry
        options["retry"] = retry(redis.backoff.ExponentialBackoff(), _CLUSTER_RETRIES)
        if int(redis.__version__.split(".")[0]) < 6:
            # Before 6.0 the cluster client counts its attempts here, and ``retry`` is only
            # each connection's.
            options["cluster_error_retry_attempts"] = _CLUSTER_RETRIES
        cls = redis.asyncio.cluster.RedisCluster if asynchronous else redis.cluster.RedisCluster
        return cls.from_url(plain, **options)
    except (ValueError, TypeError) as exc:
        # What _check_url does not foresee (another redis-py release); only the type is shown,
        # since redis-py's text may quote the URL.
        raise ConfigurationError(
            f"redis-py refused the Redis URL ({type(exc).__name__}): check its host, port, "
            "database and query options against redis-py's from_url documentation.",
            option="url",
        ) from None


_SCHEMES: Final = frozenset({"redis", "rediss", "unix", "redis+cluster", "rediss+cluster"})
# How redis-py reads a query option, in words, for the refusal of a value it cannot read.
_KINDS: Final[dict[Any, str]] = {int: "a whole number", float: "a number"}


def _check_url(url: str, *, cluster: bool, asynchronous: bool) -> dict[str, str]:
    """Refuse, before a client is built, a URL redis-py would refuse with a bare ValueError, or
    accept and fail on only later: a query option its connections do not take (a TypeError at
    the first connection; a cluster client drops it silently), a database path that is not a
    number (read as database 0), a socket timeout that overflows at the first connection, a
    value of encoding, protocol, ssl_cert_reqs or ssl_ca_certs the first connection would fail
    on (read as an outage, or a refused CONFIG GET).

    No message quotes the URL or a value from it: either may carry a password.

    Returns:
        The query options, each with its first non-empty value, as redis-py reads them.
    """
    if "@" in url.partition("?")[2] or "@" in url.partition("#")[2]:
        # A '?' or '#' in the password ends the host part early: what follows would be read as
        # query options (or a fragment), the password's tail among them.
        raise ConfigurationError(
            "the Redis URL has an '@' after a '?' or '#': a '?' or '#' in a password ends the "
            "host part early, so percent-encode them in the password as %3F and %23 (and "
            f"{_ENCODE_ALSO}); an '@' in a query option's value is written %40.",
            option="url",
        )
    try:
        parts = urlsplit(url)
    except ValueError:  # "Invalid IPv6 URL"
        raise ConfigurationError(
            "the host of the Redis URL cannot be read: an IPv6 address goes in brackets "
            "(redis://[::1]:6379/0), and a '[' or ']' in a password must be percent-encoded "
            "(%5B, %5D)",
            option="url",
        ) from None
    try:
        parts.port  # noqa: B018 - reading it checks it
    except ValueError:
        raise ConfigurationError(
            "the port of the Redis URL is not a number from 0 to 65535: write "
            "redis://host:6379/0, and percent-encode in a password a '?' as %3F and a '#' as "
            f"%23 (they end the host part early), and {_ENCODE_ALSO}",
            option="url",
        ) from None
    database = unquote(parts.path).replace("/", "") if parts.scheme != "unix" else ""
    if database and not (database.isascii() and database.isdigit()):
        raise ConfigurationError(
            "the path of a Redis URL is the database number, e.g. redis://host:6379/0; this "
            "one is not a number (redis-py would use database 0). A '/' in a password must be "
            "percent-encoded as %2F.",
            option="db",
        )
    query = parse_qs(parts.query, keep_blank_values=True)
    accepted = _url_options(url, asynchronous=asynchronous)
    for name in sorted(query):
        if name not in accepted:
            # Only a name that looks like one is quoted: anything else may be part of a
            # password (a '&' or '=' in it, unencoded).
            shown = repr(name) if _OPTION_NAME.fullmatch(name) else "(not shown)"
            raise ConfigurationError(
                f"unknown option {shown} in the Redis URL: the client takes redis-py's "
                "connection options there (socket_timeout, socket_connect_timeout, "
                "client_name, db, max_connections, health_check_interval, ssl_…). payonce's "
                "own (prefix, buckets, read_first, allow_unsafe_durability) are read from a URL "
                "only by open_store and --store; RedisStore takes them as keyword arguments. "
                "Check the spelling, and percent-encode a '&', '=' or '?' in a password.",
                option=name if _OPTION_NAME.fullmatch(name) else "url",
            )
    # As redis-py reads them: the first non-empty value of each.
    options = {
        name: given[0] for name, values in query.items() if (given := [*filter(None, values)])
    }
    for name, value in options.items():
        parse: Any = redis.connection.URL_QUERY_ARGUMENT_PARSERS.get(name)
        if parse is None:
            continue
        try:
            parse(value)
        except (ValueError, TypeError):
            kind = _KINDS.get(parse, "a value redis-py accepts (see its from_url documentation)")
            raise ConfigurationError(
                f"{name} in the Redis URL must be {kind}", option=name
            ) from None
    for name in ("socket_timeout", "socket_connect_timeout"):
        if name in options:
            _number(dict(options), name, "5 (seconds)", float, most=_LONGEST_WAIT)
    _check_values(options)
    if cluster and int(options.get("db", database or "0")) != 0:
        raise ConfigurationError(
            "Redis Cluster has only database 0: drop the database from the URL "
            "(redis+cluster://host:7000) or write /0",
            option="db",
        )
    return options


# What a password must have percent-encoded besides '?' and '#'.
_ENCODE_ALSO: Final = "':', '/', '@', '[', ']' and '%' as %3A, %2F, %40, %5B, %5D and %25"
# What an option name looks like; anything else in the name's place is not quoted.
_OPTION_NAME: Final = re.compile(r"[a-z][a-z0-9_]{0,63}")
# The values redis-py's SSL connection takes for ssl_cert_reqs.
_CERT_REQS: Final = ("none", "optional", "required")


def _check_values(options: Mapping[str, str]) -> None:
    """Refuse a value the first connection would fail on, where the failure would read as
    something else: an unknown encoding (a bare LookupError), a protocol Redis does not speak
    (an outage), an ssl_cert_reqs redis-py does not know (a Redis error) or a CA file that is
    not there (an outage). The value is not quoted: it may carry a password."""
    if "encoding" in options:
        try:
            codecs.lookup(options["encoding"])
        except LookupError:
            raise ConfigurationError(
                "encoding in the Redis URL is not a codec Python knows: use utf-8 (the "
                "default), or another name codecs.lookup accepts",
                option="encoding",
            ) from None
    if "protocol" in options and int(options["protocol"]) not in (2, 3):  # read above
        raise ConfigurationError(
            "protocol in the Redis URL must be 2 (RESP2, the default) or 3 (RESP3)",
            option="protocol",
        )
    if "ssl_cert_reqs" in options and options["ssl_cert_reqs"] not in _CERT_REQS:
        raise ConfigurationError(
            "ssl_cert_reqs in the Redis URL must be none, optional or required (the default)",
            option="ssl_cert_reqs",
        )
    if "ssl_ca_certs" in options and not os.path.isfile(options["ssl_ca_certs"]):
        raise ConfigurationError(
            "ssl_ca_certs in the Redis URL must be the path of a file of CA certificates (PEM) "
            "that exists on this machine; check the path (percent-encoded in the URL), or drop "
            "the option to use the system's CA certificates",
            option="ssl_ca_certs",
        )


def _url_options(url: str, *, asynchronous: bool) -> frozenset[str]:
    """The query options a client built from ``url`` takes: every keyword argument of the
    connection class its scheme selects, and the pool's ``max_connections``. redis-py hands
    any other option to that class, which then fails at the first connection (a cluster client
    drops it instead); read from the class, so that the list follows the installed redis-py."""
    module = redis.asyncio.connection if asynchronous else redis.connection
    scheme = url.partition("://")[0]
    connection: type = {
        "rediss": module.SSLConnection, "unix": module.UnixDomainSocketConnection
    }.get(scheme, module.Connection)  # fmt: skip
    names = {"max_connections"}
    for cls in connection.__mro__:
        init = vars(cls).get("__init__")
        if init is not None:
            names.update(
                name
                for name, parameter in inspect.signature(init).parameters.items()
                if parameter.kind in (parameter.POSITIONAL_OR_KEYWORD, parameter.KEYWORD_ONLY)
            )
    return frozenset(names - {"self"})


def _check_flags(**flags: object) -> None:
    """Refuse a flag that is not a bool before anything is built: the string "false" is true."""
    for name, value in flags.items():
        if type(value) is not bool:
            raise ConfigurationError(
                f"{name} must be True or False, not a {type(value).__name__} (a string such as "
                "'false' would count as true); pass a bool.",
                option=name,
            )


def _describe(client: Any, url: str | None) -> str:
    """Where the store points, without credentials: for repr, logs and errors."""
    if url is not None:
        return _mask(url)
    pool = getattr(client, "connection_pool", None)
    options = getattr(pool, "connection_kwargs", {})
    if "host" in options:
        return f"{options['host']}:{options.get('port', 6379)}/{options.get('db', 0)}"
    if "path" in options:
        return f"unix:{options['path']}"
    return type(client).__name__


def _queue(pipe: Any, calls: Sequence[Script | Command], scripts: Mapping[str, Any]) -> None:
    """Queue a fan-out's calls on a pipeline (sync or async, plain or Cluster), each script as a
    plain EVALSHA of its registered sha, without redis-py's SCRIPT EXISTS check in front."""
    for call in calls:
        if isinstance(call, Script):
            # execute_command, not pipe.evalsha (the same command): the Cluster pipeline blocks
            # the evalsha method (redis-py #2914, lifted by PR #4206) though it routes EVALSHA
            # by its keys, which share one slot here.
            sha = scripts[call.name].sha
            pipe.execute_command("EVALSHA", sha, len(call.keys), *call.keys, *call.args)
        else:
            getattr(pipe, call.name)(*call.args, **call.kwargs)


def _sources(calls: Sequence[Script | Command]) -> list[str]:
    """The Lua source of each script the calls use, once each: what SCRIPT LOAD sends after a
    NOSCRIPT."""
    names = sorted({call.name for call in calls if isinstance(call, Script)})
    return [_SCRIPTS[name] for name in names]


# -- the sync store --------------------------------------------------------------------------------


class RedisStore(RedisCore):
    """Records and ledger in Redis or Redis Cluster, shared by any number of processes.

    Args:
        client_or_url: a ``redis.Redis`` or ``redis.cluster.RedisCluster`` (left open by
            ``close``; give it a ``socket_timeout``), or a URL: ``redis://``, ``rediss://``,
            ``unix://``, or ``redis+cluster://host:port`` for a cluster. The store owns a client
            it builds from a URL, with 5 s socket timeouts unless the URL sets
            ``socket_timeout`` / ``socket_connect_timeout``. The URL's query options are
            redis-py's connection options, checked before any command (``_check_url``).
        prefix: the first part of every key; deployments sharing one Redis use distinct prefixes.
        buckets: how many hash slots the records spread over (fixed when the prefix is first
            used). More buckets spread a cluster's load over more masters; scans, purges and
            ``newest`` visit every bucket.
        read_first: whether the guard reads five fields (``HMGET``) before it claims. True: a
            replay is that read, a fresh call pays it as an extra round trip. False: a fresh
            call is the claim script alone, a replay sends the whole claim. None (the default)
            adapts: it reads first while most recent calls found their intent finished. On
            Redis Cluster the store always reads first: a claim there costs a sequence
            allocation before its script.
        allow_unsafe_durability: run against a Redis whose ``maxmemory-policy`` is not
            ``noeviction``, or whose configuration cannot be read, with a logged warning.
        create: False opens only a prefix payonce has used already, writing nothing: a prefix
            with no payonce keys is refused with ``StoreMissingError`` (for read-only tools
            pointed at a URL or prefix that may be mistyped).

    Raises:
        StoreMissingError: with ``create=False``, nothing under the prefix.
        ConfigurationError: a bad option or URL (an unknown query option, a port or database
            that is not a number, a cluster URL for a server not in cluster mode), credentials
            Redis refuses, a Redis that may evict records (unless allowed), or a prefix created
            by another layout or bucket count.
        StoreUnavailableError: Redis could not be reached.
    """

    def __init__(
        self,
        client_or_url: Any,
        *,
        prefix: str = "payonce",
        buckets: int = 16,
        read_first: bool | None = None,
        allow_unsafe_durability: bool = False,
        create: bool = True,
    ) -> None:
        # Before any client is built: bad input connects to nothing.
        _check_flags(allow_unsafe_durability=allow_unsafe_durability, create=create)
        _check_options(prefix, buckets)
        url = client_or_url if isinstance(client_or_url, str) else None
        client = _connected(url) if url is not None else client_or_url
        cluster = isinstance(client, redis.cluster.RedisCluster)
        if not cluster and not isinstance(client, redis.Redis):
            raise ConfigurationError(
                "RedisStore takes a redis.Redis, a redis.cluster.RedisCluster or a URL; for "
                "redis.asyncio clients use AsyncRedisStore.",
                option="client",
            )
        super().__init__(prefix=prefix, buckets=buckets, cluster=cluster, read_first=read_first)
        self._client = client
        self._owned = url is not None
        self._where = _describe(client, url)
        self._closed = False
        self._scripts = {name: client.register_script(src) for name, src in _SCRIPTS.items()}
        try:
            self._check_durability(allow_unsafe_durability)
            self._run(self._meta(buckets, create), "open")
        except BaseException:
            self.close()
            raise

    def __repr__(self) -> str:
        return f"RedisStore({self._where!r}, prefix={self._prefix!r})"

    def _check_durability(self, allow_unsafe: bool) -> None:
        kwargs: dict[str, Any] = {}
        if self._cluster:
            kwargs["target_nodes"] = redis.cluster.RedisCluster.PRIMARIES
        replies, refused = [], None
        try:
            for name in _DURABILITY:
                replies.append(self._client.config_get(name, **kwargs))
        except (rexc.RedisError, rexc.RedisClusterException) as exc:
            refused = _config_refusal(exc)
            # A connection whose setup Redis refused fails every command, CONFIG GET first: a
            # PING tells it from a refused CONFIG GET (only then, to spare a start the round
            # trip). A user whose ACL denies PING keeps the refusal.
            try:
                self._client.ping(**kwargs)
            except rexc.NoPermissionError:
                pass
            except (rexc.RedisError, rexc.RedisClusterException) as again:
                raise _setup_refusal(again) from _cause(again)
        if not self._cluster:
            # Its own call: a server that refuses only this name keeps its durability answers
            # (an outage is raised as one).
            try:
                replies.append(self._client.config_get("cluster-enabled"))
            except (rexc.RedisError, rexc.RedisClusterException) as exc:
                _config_refusal(exc)
        _durability(
            replies,
            allow_unsafe=allow_unsafe,
            where=self._where,
            refused=refused,
            cluster=self._cluster,
        )

    def _perform(self, effect: Effect, operation: str) -> Any:
        if self._closed:
            raise StoreClosedError(store="RedisStore", operation=operation)
        if isinstance(effect, Pause):
            time.sleep(effect.delay.total_seconds())
            return None
        try:
            if isinstance(effect, Fanout):
                return self._fan_out(effect)
            if isinstance(effect, Script):
                return self._script(self._client, effect)
            return getattr(self._client, effect.name)(*effect.args, **effect.kwargs)
        except (rexc.RedisError, rexc.RedisClusterException) as exc:
            if self._closed:
                # close() ran while the call was in flight: its connection went with the client.
                raise StoreClosedError(store="RedisStore", operation=operation) from _cause(exc)
            raise _translate(exc, operation) from _cause(exc)

    def _script(self, client: Any, call: Script) -> Any:
        """Run one script: EVALSHA, loaded and sent again on NOSCRIPT (redis-py's Script); if
        the server lost it again before that resend (a second restart, failover or SCRIPT FLUSH
        in between), EVAL of its source, which no script cache can miss. NOSCRIPT means the
        script did not run, so sending it again is always safe."""
        try:
            return self._scripts[call.name](keys=call.keys, args=call.args, client=client)
        except rexc.NoScriptError:
            return client.eval(_SCRIPTS[call.name], len(call.keys), *call.keys, *call.args)

    def _fan_out(self, fanout: Fanout) -> list[Any]:
        """One call per bucket, as one pipeline (not a transaction: each call stands alone) per
        server: a read over every bucket costs one round trip (and redis-py's check that the
        scripts are loaded) per master, not one per bucket."""
        if not self._cluster:
            return self._pipelined(self._client, fanout.calls)
        # Each call's keys share its bucket's hash tag, hence one slot and one master; the
        # sync cluster pipeline refuses its script methods (eval, evalsha, load_scripts), so
        # the calls are grouped by master here, a plain pipeline each. A slot map gone stale (a
        # failover or reshard since) answers MOVED, fails to connect or times out on a hung
        # master: then the calls go through the cluster client one by one, which follows
        # redirects and refreshes the map (a pipeline sent by hand would keep the stale map for
        # good); a master that is still down fails the first of them as an outage. The calls
        # are reads, or the idempotent seal watermark, so sending them again is harmless.
        by_node: dict[str, tuple[Any, list[int]]] = {}
        try:
            for i, call in enumerate(fanout.calls):
                first = call.keys[0] if isinstance(call, Script) else call.args[0]
                node = self._client.get_node_from_key(first)
                by_node.setdefault(node.name, (node, []))[1].append(i)
            replies: list[Any] = [None] * len(fanout.calls)
            for node, indexes in by_node.values():
                server = self._client.get_redis_connection(node)
                answers = self._pipelined(server, [fanout.calls[i] for i in indexes])
                for i, answer in zip(indexes, answers, strict=True):
                    replies[i] = answer
        except _STALE_MAP:
            return [self._call(self._client, call) for call in fanout.calls]
        return replies

    def _pipelined(self, client: Any, calls: Sequence[Script | Command]) -> list[Any]:
        """The calls as one pipeline on ``client``, in one round trip. The scripts go as plain
        EVALSHA: redis-py would check them with SCRIPT EXISTS before every pipeline, a second
        round trip. A server that lost them (a restart, a failover, SCRIPT FLUSH) answers
        NOSCRIPT; they are loaded and the pipeline is sent once more, which is harmless, since
        a fan-out only reads (or raises the idempotent seal watermark)."""
        for attempt in range(2):
            pipe = client.pipeline(transaction=False)
            _queue(pipe, calls, self._scripts)
            try:
                replies: list[Any] = pipe.execute()
            except rexc.NoScriptError:
                if attempt:
                    # Lost again since the load: each call alone (see ``_script``).
                    return [self._call(client, call) for call in calls]
                for source in _sources(calls):
                    client.script_load(source)
            else:
                return replies
        raise AssertionError("unreachable: the second attempt returns")

    def _call(self, client: Any, call: Script | Command) -> Any:
        if isinstance(call, Script):
            return self._script(client, call)
        return getattr(client, call.name)(*call.args, **call.kwargs)

    def _run(self, op: Op[_T], operation: str) -> _T:
        try:
            effect = next(op)
            while True:
                effect = op.send(self._perform(effect, operation))
        except StopIteration as stop:
            result: _T = stop.value
            return result

    def claim(self, new: NewRecord, *, now: datetime, lease_for: timedelta) -> Claimed:
        """Create the record as CLAIMED, first writer wins; see ``Store.claim``.

        Raises:
            StoreUnavailableError: Redis could not be reached (the claim may or may not exist).
        """
        claimed = self._run(self._claim(new, now, lease_for), "claim")
        self._read_first.claimed(claimed)
        return claimed

    def takeover(
        self, scope: str, key: str, *, token: int, now: datetime, lease_for: timedelta
    ) -> Claimed:
        """Take over an UNKNOWN or lease-expired record; see ``Store.takeover``.

        Raises:
            LeaseLostError: the record no longer exists.
            StoreUnavailableError: Redis could not be reached.
        """
        return self._run(self._takeover(scope, key, token, now, lease_for), "takeover")

    def complete(
        self, scope: str, key: str, *, token: int, status: Status, outcome: str, now: datetime
    ) -> Record:
        """CLAIMED → SUCCEEDED/FAILED, fenced on ``token``; see ``Store.complete``.

        Raises:
            LeaseLostError: the record is gone or no longer CLAIMED under ``token``.
            StoreUnavailableError: Redis could not be reached.
        """
        op = self._fenced(scope, key, token, "complete", status=status, outcome=outcome, now=now)
        record = self._run(op, "complete")
        assert record is not None
        return record

    def mark_unknown(
        self, scope: str, key: str, *, token: int, reason: str, now: datetime
    ) -> Record:
        """CLAIMED → UNKNOWN, fenced on ``token``; see ``Store.mark_unknown``.

        Raises:
            LeaseLostError: the record is gone or no longer CLAIMED under ``token``.
            StoreUnavailableError: Redis could not be reached.
        """
        record = self._run(
            self._fenced(scope, key, token, "mark_unknown", reason=reason, now=now), "mark_unknown"
        )
        assert record is not None
        return record

    def release(self, scope: str, key: str, *, token: int, reason: str, now: datetime) -> None:
        """CLAIMED → (none), fenced on ``token``; see ``Store.release``.

        Raises:
            LeaseLostError: the record is gone or no longer CLAIMED under ``token``.
            StoreUnavailableError: Redis could not be reached.
        """
        self._run(self._fenced(scope, key, token, "release", reason=reason, now=now), "release")

    def get(self, scope: str, key: str) -> Record | None:
        """The record, or None. Never writes.

        Raises:
            StoreUnavailableError: Redis could not be reached.
        """
        return self._run(self._get(scope, key), "get")

    def replay_view(self, scope: str, key: str) -> ReplayView | None:
        """The replay path's fields of the record, or None. Never writes.

        Raises:
            StoreUnavailableError: Redis could not be reached.
        """
        view = self._run(self._replay_view(scope, key), "replay_view")
        self._read_first.viewed(view)
        return view

    def newest(self, scope: str, family: str) -> Record | None:
        """The record of ``family`` with the highest generation, or None.

        Raises:
            StoreUnavailableError: Redis could not be reached.
        """
        return self._run(self._newest(scope, family), "newest")

    def scan(self, *, now: datetime, limit: int) -> Sequence[Record]:
        """UNKNOWN and lease-expired CLAIMED records, oldest first; see ``Store.scan``.

        Raises:
            StoreUnavailableError: Redis could not be reached.
        """
        return self._run(self._scan(now, limit), "scan")

    def purge(self, *, now: datetime, retention: timedelta, limit: int) -> int:
        """Delete terminal records past retention, one ``purged`` entry each.

        Raises:
            StoreUnavailableError: Redis could not be reached.
        """
        return self._run(self._purge(now, retention, limit), "purge")

    def entries(self, *, after: int, limit: int) -> Sequence[Entry]:
        """Up to ``limit`` ledger entries with ``seq > after``, in sequence order.

        Raises:
            StoreUnavailableError: Redis could not be reached.
        """
        return self._run(self._entries(after, limit), "entries")

    def heads(self, *, after: tuple[str, str] | None, limit: int) -> Sequence[tuple[str, str, str]]:
        """``(scope, key, ledger_head)`` of records in (scope, key) order, after ``after``.

        Raises:
            StoreUnavailableError: Redis could not be reached.
        """
        return self._run(self._heads(after, limit), "heads")

    def ledger_horizon(self) -> int:
        """The highest seq at or below which every entry is final (see ``Store``): on one
        server the ledger counter; on Cluster the counter or the highest seq of any bucket,
        whichever is higher, after the counter and every bucket's watermark were raised to it
        (a write holding a seq at or below it then draws another).

        Raises:
            StoreUnavailableError: Redis could not be reached.
        """
        return self._run(self._horizon(), "ledger_horizon")

    def checkpoints(self) -> Sequence[Checkpoint]:
        """Every sealed checkpoint, in order.

        Raises:
            StoreUnavailableError: Redis could not be reached.
        """
        return self._run(self._checkpoints(), "checkpoints")

    def append_checkpoint(self, checkpoint: Checkpoint) -> None:
        """Store the next checkpoint.

        Raises:
            ConflictError: its number is not the next one (another worker sealed it first).
            StoreUnavailableError: Redis could not be reached.
        """
        self._run(self._append_checkpoint(checkpoint), "append_checkpoint")

    def close(self) -> None:
        """Close the client if this store created it (from a URL); the store is unusable after."""
        self._closed = True
        if self._owned:
            self._client.close()


# What asyncio and redis.asyncio say of a connection, lock or queue used from an event loop
# other than the one it was made on (a second asyncio.run with the same store).
_OTHER_LOOP: Final = re.compile(r"[Ee]vent loop is closed|different (event )?loop")


def _other_loop(exc: RuntimeError) -> ConfigurationError | None:
    """A RuntimeError of a store used from a second event loop, as a ConfigurationError; None
    for any other RuntimeError."""
    if not _OTHER_LOOP.search(str(exc)):
        return None
    # Not the RuntimeError's text: asyncio puts the repr of a task and a future in it.
    if "closed" in str(exc):
        which = "the loop it first ran on is closed"
    else:
        which = "its connections belong to a loop that is still running"
    return ConfigurationError(
        "this AsyncRedisStore was used from another event loop than the one it first ran on "
        f"(RuntimeError: {which}): an AsyncRedisStore is bound to the event loop it first ran "
        "on, as its connections are. Create one store per event loop (e.g. inside "
        "the coroutine asyncio.run runs, closed at its end), or keep one loop for the process.",
        option="store",
    )


# -- the async store -------------------------------------------------------------------------------


class AsyncRedisStore(RedisCore):
    """The async twin of ``RedisStore`` on ``redis.asyncio`` (native async, no threads).

    Takes the same arguments, with a ``redis.asyncio.Redis`` or
    ``redis.asyncio.cluster.RedisCluster`` client. Constructing it does no I/O: the start-up
    checks (durability, layout) run in ``connect()``, or before the first operation.

    Raises:
        ConfigurationError: as ``RedisStore``; the URL is checked at construction, the
            durability, cluster mode and layout refusals come from ``connect()`` or the first
            operation.
    """

    def __init__(
        self,
        client_or_url: Any,
        *,
        prefix: str = "payonce",
        buckets: int = 16,
        read_first: bool | None = None,
        allow_unsafe_durability: bool = False,
        create: bool = True,
    ) -> None:
        # Before any client is built: bad input connects to nothing.
        _check_flags(allow_unsafe_durability=allow_unsafe_durability, create=create)
        _check_options(prefix, buckets)
        url = client_or_url if isinstance(client_or_url, str) else None
        client = _client_from_url(url, asynchronous=True) if url is not None else client_or_url
        cluster = isinstance(client, redis.asyncio.cluster.RedisCluster)
        if not cluster and not isinstance(client, redis.asyncio.Redis):
            raise ConfigurationError(
                "AsyncRedisStore takes a redis.asyncio.Redis, a "
                "redis.asyncio.cluster.RedisCluster or a URL; for sync clients use RedisStore.",
                option="client",
            )
        super().__init__(prefix=prefix, buckets=buckets, cluster=cluster, read_first=read_first)
        self._client = client
        self._owned = url is not None
        self._where = _describe(client, url)
        self._closed = False
        self._allow_unsafe = allow_unsafe_durability
        self._create = create
        self._bucket_count = buckets
        self._ready = False
        self._starting = asyncio.Lock()
        self._scripts = {name: client.register_script(src) for name, src in _SCRIPTS.items()}

    def __repr__(self) -> str:
        return f"AsyncRedisStore({self._where!r}, prefix={self._prefix!r})"

    async def connect(self) -> None:
        """Run the start-up checks now (otherwise the first operation runs them).

        Raises:
            ConfigurationError: credentials Redis refuses, a Redis that may evict records
                (unless allowed), a prefix created by another layout or bucket count, or a
                store used from another event loop than the one it first ran on.
            StoreUnavailableError: Redis could not be reached.
        """
        try:
            async with self._starting:
                await self._checked_start()
        except RuntimeError as exc:
            if (elsewhere := _other_loop(exc)) is None:
                raise
            raise elsewhere from exc

    async def _checked_start(self) -> None:
        """``_start``; one at a time (under ``_starting``), since a start that fails closes the
        client's connections, which must not be another task's start in flight."""
        try:
            await self._start()
        except BaseException:
            # As the sync store's constructor does: a refused start leaves no connection of
            # the client the store built open (a later call connects and checks again). Not
            # once an earlier start passed: calls of other tasks may be in flight.
            if self._owned and not self._ready:
                with contextlib.suppress(rexc.RedisError):
                    await self._client.aclose()
            raise
        self._ready = True

    async def _start(self) -> None:
        """The start-up checks of ``connect``: durability, then the layout under the prefix."""
        kwargs: dict[str, Any] = {}
        if self._cluster:
            kwargs["target_nodes"] = redis.asyncio.cluster.RedisCluster.PRIMARIES
        replies, refused = [], None
        try:
            for name in _DURABILITY:
                replies.append(await self._client.config_get(name, **kwargs))
        except (rexc.RedisError, rexc.RedisClusterException) as exc:
            refused = _config_refusal(exc)
            # See RedisStore._check_durability.
            try:
                await self._client.ping(**kwargs)
            except rexc.NoPermissionError:
                pass
            except (rexc.RedisError, rexc.RedisClusterException) as again:
                raise _setup_refusal(again) from _cause(again)
        if not self._cluster:
            # See RedisStore._check_durability.
            try:
                replies.append(await self._client.config_get("cluster-enabled"))
            except (rexc.RedisError, rexc.RedisClusterException) as exc:
                _config_refusal(exc)
        _durability(
            replies,
            allow_unsafe=self._allow_unsafe,
            where=self._where,
            refused=refused,
            cluster=self._cluster,
        )
        await self._drive(self._meta(self._bucket_count, self._create), "open")

    async def _perform(self, effect: Effect, operation: str) -> Any:
        if self._closed:
            raise StoreClosedError(store="AsyncRedisStore", operation=operation)
        if isinstance(effect, Pause):
            await asyncio.sleep(effect.delay.total_seconds())
            return None
        try:
            if isinstance(effect, Fanout):
                return await self._fan_out(effect)
            if isinstance(effect, Script):
                return await self._script(self._client, effect)
            return await getattr(self._client, effect.name)(*effect.args, **effect.kwargs)
        except (rexc.RedisError, rexc.RedisClusterException) as exc:
            if self._closed:
                # close() ran while the call was in flight: its connection went with the client.
                raise StoreClosedError(store="AsyncRedisStore", operation=operation) from _cause(
                    exc
                )
            raise _translate(exc, operation) from _cause(exc)

    async def _script(self, client: Any, call: Script) -> Any:
        """One script; see ``RedisStore._script``."""
        try:
            return await self._scripts[call.name](keys=call.keys, args=call.args, client=client)
        except rexc.NoScriptError:
            return await client.eval(_SCRIPTS[call.name], len(call.keys), *call.keys, *call.args)

    async def _fan_out(self, fanout: Fanout) -> list[Any]:
        """One call per bucket, as one pipeline (not a transaction) per server; see
        ``RedisStore._fan_out``.

        On Cluster the pipeline is the cluster client's own: unlike the sync one, the async
        cluster pipeline already does what ``RedisStore._fan_out`` does by hand (and
        ``redis.asyncio.cluster`` has no per-node client to do it with): it groups the calls by
        master, sends each master its share as one plain pipeline, concurrently, and sends the
        calls answered MOVED, ASK or TRYAGAIN (a stale slot map) once more one by one through
        the cluster client, which follows the redirect and refreshes the map. A connection
        error, a timeout or CLUSTERDOWN makes it send the pipeline again within the client's
        retries: recent redis-py refreshes the map first and leaves the client's connections
        alone; older releases (5.x) close all the cluster client's connections first, as they
        do for a failed single call, so a call another task had in flight may be sent again.
        Every payonce script is safe to receive twice (a claim or takeover recognises its own
        lease, a fenced write its own ledger entry; tests/faults/test_redis_resend.py), and
        the fan-out's calls only read (or raise the idempotent seal watermark).
        """
        return await self._pipelined(self._client, fanout.calls)

    async def _pipelined(self, client: Any, calls: Sequence[Script | Command]) -> list[Any]:
        """The calls as one pipeline on ``client``; see ``RedisStore._pipelined``. On Cluster,
        SCRIPT LOAD goes to every master."""
        for attempt in range(2):
            pipe = client.pipeline(transaction=False)
            _queue(pipe, calls, self._scripts)
            try:
                replies: list[Any] = await pipe.execute()
            except rexc.NoScriptError:
                if attempt:
                    # Lost again since the load: each call alone (see ``RedisStore._script``).
                    return [await self._call(client, call) for call in calls]
                for source in _sources(calls):
                    await client.script_load(source)
            else:
                return replies
        raise AssertionError("unreachable: the second attempt returns")

    async def _call(self, client: Any, call: Script | Command) -> Any:
        if isinstance(call, Script):
            return await self._script(client, call)
        return await getattr(client, call.name)(*call.args, **call.kwargs)

    async def _drive(self, op: Op[_T], operation: str) -> _T:
        try:
            effect = next(op)
            while True:
                effect = op.send(await self._perform(effect, operation))
        except StopIteration as stop:
            result: _T = stop.value
            return result

    async def _run(self, op: Op[_T], operation: str) -> _T:
        try:
            # A closed store goes straight to _perform, which refuses the operation by its name.
            if not self._ready and not self._closed:
                async with self._starting:
                    # Another task's start may have passed meanwhile, or a close.
                    if not self._ready and not self._closed:
                        await self._checked_start()
            return await self._drive(op, operation)
        except RuntimeError as exc:
            if (elsewhere := _other_loop(exc)) is None:
                raise
            raise elsewhere from exc

    async def claim(self, new: NewRecord, *, now: datetime, lease_for: timedelta) -> Claimed:
        """See ``RedisStore.claim``."""
        claimed = await self._run(self._claim(new, now, lease_for), "claim")
        self._read_first.claimed(claimed)
        return claimed

    async def takeover(
        self, scope: str, key: str, *, token: int, now: datetime, lease_for: timedelta
    ) -> Claimed:
        """See ``RedisStore.takeover``."""
        return await self._run(self._takeover(scope, key, token, now, lease_for), "takeover")

    async def complete(
        self, scope: str, key: str, *, token: int, status: Status, outcome: str, now: datetime
    ) -> Record:
        """See ``RedisStore.complete``."""
        op = self._fenced(scope, key, token, "complete", status=status, outcome=outcome, now=now)
        record = await self._run(op, "complete")
        assert record is not None
        return record

    async def mark_unknown(
        self, scope: str, key: str, *, token: int, reason: str, now: datetime
    ) -> Record:
        """See ``RedisStore.mark_unknown``."""
        op = self._fenced(scope, key, token, "mark_unknown", reason=reason, now=now)
        record = await self._run(op, "mark_unknown")
        assert record is not None
        return record

    async def release(
        self, scope: str, key: str, *, token: int, reason: str, now: datetime
    ) -> None:
        """See ``RedisStore.release``."""
        op = self._fenced(scope, key, token, "release", reason=reason, now=now)
        await self._run(op, "release")

    async def get(self, scope: str, key: str) -> Record | None:
        """See ``RedisStore.get``."""
        return await self._run(self._get(scope, key), "get")

    async def replay_view(self, scope: str, key: str) -> ReplayView | None:
        """See ``RedisStore.replay_view``."""
        view = await self._run(self._replay_view(scope, key), "replay_view")
        self._read_first.viewed(view)
        return view

    async def newest(self, scope: str, family: str) -> Record | None:
        """See ``RedisStore.newest``."""
        return await self._run(self._newest(scope, family), "newest")

    async def scan(self, *, now: datetime, limit: int) -> Sequence[Record]:
        """See ``RedisStore.scan``."""
        return await self._run(self._scan(now, limit), "scan")

    async def purge(self, *, now: datetime, retention: timedelta, limit: int) -> int:
        """See ``RedisStore.purge``."""
        return await self._run(self._purge(now, retention, limit), "purge")

    async def entries(self, *, after: int, limit: int) -> Sequence[Entry]:
        """See ``RedisStore.entries``."""
        return await self._run(self._entries(after, limit), "entries")

    async def heads(
        self, *, after: tuple[str, str] | None, limit: int
    ) -> Sequence[tuple[str, str, str]]:
        """See ``RedisStore.heads``."""
        return await self._run(self._heads(after, limit), "heads")

    async def ledger_horizon(self) -> int:
        """See ``RedisStore.ledger_horizon``."""
        return await self._run(self._horizon(), "ledger_horizon")

    async def checkpoints(self) -> Sequence[Checkpoint]:
        """See ``RedisStore.checkpoints``."""
        return await self._run(self._checkpoints(), "checkpoints")

    async def append_checkpoint(self, checkpoint: Checkpoint) -> None:
        """See ``RedisStore.append_checkpoint``."""
        await self._run(self._append_checkpoint(checkpoint), "append_checkpoint")

    async def close(self) -> None:
        """See ``RedisStore.close``."""
        self._closed = True
        if self._owned:
            await self._client.aclose()
