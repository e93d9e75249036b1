"""The ``once`` decorator (L3): one decorator for sync and async functions."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Any, TypeVar

from payonce._errors import ConfigurationError
from payonce._guard import AsyncGuard, Guard
from payonce._intent import Intent
from payonce._model import Attempt

__all__ = ["once"]

F = TypeVar("F", bound=Callable[..., Any])


def once(
    guard: Guard | AsyncGuard,
    *,
    intent: Callable[..., Intent],
    resumable: bool | None = None,
) -> Callable[[F], F]:
    """Guard a function so that each intent it is called for runs at most once.

    ``intent`` builds the Intent from the call's arguments. The decorated function returns the
    recorded value: on the first call its own result, on every retry the replayed one. If the
    function has a parameter named ``attempt``, it receives the ``Attempt`` (with the provider
    key to send).

    Example::

        @once(guard, intent=lambda order: Intent("charge", order.total, "usd",
                                                  customer=order.customer, reference=order.id))
        def charge(order, attempt):
            return gateway_charge(order, idempotency_key=attempt.provider_key)

    The wrapped function picks the twin: a coroutine function needs an ``AsyncGuard``, a plain
    function a ``Guard``.

    Raises:
        ConfigurationError: at decoration, when the guard does not fit the function.
    """
    if not callable(intent):
        raise ConfigurationError(
            "intent must be a callable that builds an Intent from the arguments"
        )

    def decorate(fn: F) -> F:
        is_async = inspect.iscoroutinefunction(fn)
        if is_async and not isinstance(guard, AsyncGuard):
            raise ConfigurationError(
                f"{fn.__qualname__} is async: decorate it with once(AsyncGuard(...), ...)"
            )
        if not is_async and not isinstance(guard, Guard):
            raise ConfigurationError(
                f"{fn.__qualname__} is not async: decorate it with once(Guard(...), ...)"
            )
        wants_attempt = "attempt" in inspect.signature(fn).parameters

        def bind(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Callable[[Attempt], Any]:
            if wants_attempt:
                return lambda attempt: fn(*args, attempt=attempt, **kwargs)
            return lambda _attempt: fn(*args, **kwargs)

        if is_async:
            assert isinstance(guard, AsyncGuard)

            @functools.wraps(fn)
            async def async_wrapper(*args: Any, **kwargs: Any) -> Any:
                outcome = await guard.run(
                    intent(*args, **kwargs), bind(args, kwargs), resumable=resumable
                )
                return outcome.value

            return async_wrapper  # type: ignore[return-value]

        assert isinstance(guard, Guard)

        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            return guard.run(intent(*args, **kwargs), bind(args, kwargs), resumable=resumable).value

        return wrapper  # type: ignore[return-value]

    return decorate
