"""PoolingMiddleware: lend each request pooled Django connections, take them back on close().

Use it to wrap Django's WSGI application under a gevent (or threaded) WSGI server
talking to MySQL/MariaDB or PostgreSQL (or SQLite, when named in ``aliases``). Do not
use it for ASGI: Django's async views keep connections per task, not per greenlet.
"""

from __future__ import annotations

import os
import sys
import threading
import weakref
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from . import _events, _registry, _storage
from ._aliases import resolve_aliases
from ._closing import Response, unavailable
from ._connector import AliasConnector
from ._lease import Lease, install
from ._scope import PooledScope
from .config import PoolConfig
from .pool import Pool

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment
    from typing_extensions import Unpack

    from .config import PoolSettings

__all__ = ["PoolingMiddleware", "live_middlewares"]

live_middlewares = _registry.live_middlewares  # kept for callers of 0.1


class PoolingMiddleware:
    """A WSGI middleware that pools Django's database connections across requests.

    A request checks out a connection the first time it uses a pooled alias and
    gives it back when the server calls ``close()`` on the response: rolled back if
    a transaction is open, then recycled, or discarded when broken or too old. At
    most ``pool_size + max_overflow`` connections per alias are open in a process
    (one more per other pooled alias, for requests that hold those while they wait:
    so that pools never wait on each other); a request that cannot get one within
    ``timeout`` seconds is answered ``503`` with ``Retry-After: retry_after``.

    Keyword arguments:
        aliases: the ``DATABASES`` aliases to pool; default: every MySQL and PostgreSQL alias.
        pool_size: idle connections kept open per alias for reuse.
        max_overflow: connections beyond ``pool_size`` opened in bursts.
        timeout: seconds a checkout may take in all (waiting, connecting, pinging).
        max_age: seconds after which a connection is closed rather than reused (None: never).
        max_idle: seconds a connection may sit idle before it is closed (None: never).
        rebalance: seconds after which a connection may be retired, when idle or given
            back (never in use), so that its replacement goes where the load balancer
            sends new connections (a cluster node that came back); paced at one
            retirement per ``rebalance / (pool_size + max_overflow)`` seconds on average,
            jittered, so a full pool is renewed once per ``rebalance`` without a
            reconnect burst (None: off, only ``max_age`` retires connections).
        overflow_max_idle: seconds a connection beyond ``pool_size`` may sit idle before
            it is closed (None: as ``max_idle``), so that a swinging load does not
            reopen the overflow on every burst.
        pre_ping: ping a connection before reuse: True always, False never, or a
            number: when it sat idle at least that many seconds.
        retry_after: seconds sent in the 503's ``Retry-After`` header.
        max_waiting: the most checkouts waiting per alias; one more is answered 503 at
            once (None: no limit).
        reset_session: how a connection's session (user and session variables,
            temporary tables, named locks, prepared statements, the role) is cleared
            after each request, whatever SQL or routine set it: "auto" after every
            request that may have left any (with PyMySQL, a plain SELECT provably
            leaves none, and the reset rides on the next request's first command);
            "always", after every request, completed before the connection goes back;
            "never", trusting the application.
        min_size: connections per alias opened in the background when the process
            serves its first request, one at a time, and kept open despite ``max_idle``.
        warn_hold: seconds after which a connection still (or was) held by one
            request logs ``db_pool.long_hold`` with where it was checked out (None: off).
        capture_stack: with ``warn_hold``, record the stack at each checkout for
            that event (costs a stack walk per checkout).
        write_slots: of each alias's ``pool_size + max_overflow``, the connections kept
            for requests whose method is not safe (POST, PUT, PATCH, DELETE: any but
            GET, HEAD, OPTIONS, TRACE), which use only those; the others use the rest.
            Writes stalled by the database (a Galera node lost) then cannot hold the
            connections that reads need. None: one pool per alias for all requests.
        logger: a structlog logger for the ``db_pool.*`` events.
    """

    def __init__(
        self,
        app: WSGIApplication,
        *,
        aliases: Iterable[str] | None = None,
        logger: Any = None,
        **settings: Unpack[PoolSettings],
    ) -> None:
        if not callable(app):
            raise TypeError(f"app must be a WSGI application (a callable), not {app!r}")
        self.app = app
        # The defaults live in PoolConfig alone; it names an unknown keyword.
        self.config = config = PoolConfig.from_settings(settings)
        _events.check_logger(logger)
        self.aliases = resolve_aliases(aliases)
        self._logger = logger
        log = _events.resolve(logger)
        if config.write_slots is None:
            reads, writes = config, None
        else:
            reads, writes = config.split()
        self._pools = {alias: _pool(alias, alias, reads, log) for alias in self.aliases}
        # With write_slots, requests with an unsafe method check out from pools of their
        # own: a write the database stalls (a Galera node lost, a lock wait) then holds
        # one of those, and never the connections the reads need.
        self._write_pools = (
            None
            if writes is None
            else {alias: _pool(f"{alias}:writes", alias, writes, log) for alias in self.aliases}
        )
        self._every_pool = [*self._pools.values(), *(self._write_pools or {}).values()]
        self._log = log
        self._retry_after = config.retry_after
        self._capture_stack = config.capture_stack
        self._ready = False
        self._stop: threading.Event | None = None
        self._pid = os.getpid()
        install()
        _storage.install_storage()
        _registry.register(self)

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        if self._pid != os.getpid():
            # Forked without Python's at-fork hooks (uWSGI forks in C): as they would.
            self._after_fork()
        if not self._ready:
            self._prepare()
        pools = self._pools
        if self._write_pools is not None and environ.get("REQUEST_METHOD") not in _SAFE_METHODS:
            pools = self._write_pools
        lease = Lease(pools, environ.get("PATH_INFO"), self._capture_stack)
        lease.begin()
        response = Response(start_response, lease, self._retry_after)
        try:
            result = self.app(environ, response.start_response)
        except BaseException:
            # No iterable, so nobody will call close(): give back here.
            lease.finish()
            if lease.unavailable is not None:
                status, headers, body = unavailable(self._retry_after)
                start_response(status, headers, sys.exc_info())
                return body
            raise
        return response.wrap(result)

    # -- per process ---------------------------------------------------------------

    def _prepare(self) -> None:
        """First request in this process: after any fork and after gevent's patching."""
        if _storage.fix_storage():
            self._log.warning(
                "db_pool.storage_rebound",
                detail="django.db was imported before gevent patched threading; "
                "its connection storage was made greenlet-local",
            )
        self._log = _events.resolve(self._logger)
        for pool in self._every_pool:
            pool.set_log(self._log)
        if self._stop is None and not self.closed:
            self._start_reaper()
        self._ready = True

    def _after_fork(self) -> None:
        # The child must never use (or QUIT) a connection its parent opened.
        for pool in self._every_pool:
            pool.after_fork()
        self._stop = None
        self._ready = False
        self._pid = os.getpid()

    def _start_reaper(self) -> None:
        interval = self.config.reap_interval
        # threading as it is now: a greenlet once gevent has patched it.
        stop = threading.Event()
        self._stop = stop
        thread = threading.Thread(
            target=_reap_loop,
            args=(weakref.ref(self), stop, interval),
            name="wsgi_db_pool-reaper",
            daemon=True,
        )
        thread.start()

    def _reap(self) -> None:
        for pool in self._every_pool:
            pool.reap()
            pool.fill()

    # -- public --------------------------------------------------------------------

    @property
    def pools(self) -> dict[str, Pool]:
        """The pool of each pooled alias (with ``write_slots``: the safe requests' pool)."""
        return self._pools

    def pooled(self) -> PooledScope:
        """``with application.pooled():`` lends this middleware's pools to non-request code."""
        return PooledScope(self, None)

    def stats(self) -> dict[str, dict[str, Any]]:
        """Per alias: ``open``, ``idle``, ``in_use``, ``waiting`` and running totals."""
        return {pool.name: pool.stats() for pool in self._every_pool}

    @property
    def closed(self) -> bool:
        """Whether ``close()`` was called."""
        return any(pool.closed for pool in self._every_pool)

    def close(self) -> None:
        """Close every idle connection; later checkouts raise PoolClosed (a 503 to clients).

        Connections still in use are closed when their requests give them back.
        Calling it twice is harmless.
        """
        if self._stop is not None:
            self._stop.set()
        for pool in self._every_pool:
            pool.close()


# RFC 9110's safe methods: requests that ought to read only. The others (POST, PUT,
# PATCH, DELETE, ...) use the write pools when write_slots is set.
_SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "TRACE"})


def _pool(name: str, alias: str, config: PoolConfig, log: Any) -> Pool:
    return Pool(name, AliasConnector(alias, config.reset_session, config.timeout), config, log)


def _reap_loop(
    ref: Callable[[], PoolingMiddleware | None], stop: threading.Event, every: float
) -> None:
    # The first pass warms the pools up to min_size; later ones reap and refill.
    while True:
        middleware = ref()
        if middleware is None:
            return
        middleware._reap()
        del middleware
        if stop.wait(every):
            return
