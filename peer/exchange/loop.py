"""An event loop running in its own thread, for callers that are not async.

The round engine is synchronous; the exchange is asyncio (hivemind's P2P). This owns one
loop in a daemon thread and runs coroutines on it with ``run_coroutine_threadsafe``.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

logger = logging.getLogger(__name__)

T = TypeVar("T")


def new_event_loop(use_uvloop: bool) -> tuple[asyncio.AbstractEventLoop, str]:
    """A fresh loop and its name: uvloop's when asked for and importable, else asyncio's."""
    if use_uvloop:
        try:
            import uvloop
        except ImportError:
            logger.warning("uvloop is not installed; the exchange runs on the asyncio loop")
        else:
            return uvloop.new_event_loop(), "uvloop"
    return asyncio.new_event_loop(), "asyncio"


class LoopThread:
    """One event loop in one daemon thread; ``stop()`` ends both."""

    def __init__(self, *, use_uvloop: bool, name: str = "swarmtrain-exchange") -> None:
        self.loop, self.loop_name = new_event_loop(use_uvloop)
        self._thread = threading.Thread(target=self._main, name=name, daemon=True)
        self._stopped = False
        self._thread.start()

    def _main(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    @property
    def in_loop_thread(self) -> bool:
        return threading.current_thread() is self._thread

    def submit(self, coro: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        """Schedule ``coro`` on the loop; the future can be waited on from any thread."""
        if self._stopped:
            coro.close()
            raise RuntimeError("the exchange loop is stopped; start a new Exchange")
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def run(self, coro: Coroutine[Any, Any, T], timeout: float | None) -> T:
        """Run ``coro`` on the loop and wait for its result (cancelled after ``timeout``)."""
        if self.in_loop_thread:
            coro.close()
            raise RuntimeError("blocking call from the exchange's own loop thread would deadlock; "
                               "await the async API instead")
        future = self.submit(coro)
        try:
            return future.result(timeout)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise

    def stop(self, timeout: float = 10.0) -> None:
        """Cancel what still runs on the loop, stop it, join the thread, close the loop."""
        if self._stopped:
            return
        self._stopped = True
        try:
            asyncio.run_coroutine_threadsafe(self._cancel_all(), self.loop).result(timeout)
        except (concurrent.futures.TimeoutError, RuntimeError) as exc:
            logger.warning("exchange loop did not wind down cleanly: %r", exc)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout)
        if not self._thread.is_alive():
            self.loop.close()

    @staticmethod
    async def _cancel_all() -> None:
        current = asyncio.current_task()
        tasks = [task for task in asyncio.all_tasks() if task is not current]
        for task in tasks:
            task.cancel()
        # Let cancelled tasks run their cleanup (closing sockets, removing socket files).
        await asyncio.gather(*tasks, return_exceptions=True)
