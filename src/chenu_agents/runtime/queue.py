"""Tasks from RabbitMQ: the agent's durable quorum queue, consumed inside the runtime process.

roles/rabbitmq declares the queue (`chenu.tasks.<agent>`, dead-letter exchange `chenu.tasks.dlx`,
delivery limit 5); the runtime only checks that it exists (a passive declare) and never declares it
with arguments of its own. A message is the body of POST /v1/tasks, `{input, session_id?, attributes?}`
as JSON, and goes through the same task path (`app.execute_task`). It is acknowledged only once
answered; a task that fails (4xx or 5xx) is rejected without requeue, so that the broker dead-letters
it to `chenu.tasks.<agent>.dlq` with its `x-death` history. A process that dies mid-task acknowledges
nothing: the broker redelivers, and the quorum queue's delivery limit dead-letters a message that
keeps killing its consumers. When the message names `reply_to`, the answer (or the error) is published
there through the default exchange, with the message's `correlation_id` and an `x-chenu-status` header
carrying the HTTP status.

A paused or deprecated agent stops consuming (basic.cancel) and finishes the tasks it holds; it
consumes again once active. Shutdown does the same before the thread pool closes.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import aio_pika
from aio_pika.abc import AbstractChannel, AbstractIncomingMessage, AbstractQueue, AbstractRobustConnection

from .config import QueueSettings

if TYPE_CHECKING:
    from .agent import LoadedAgent
    from .app import Runtime

# app.execute_task: passed in rather than imported, app imports this module.
Execute = Callable[..., Awaitable[tuple[int, dict[str, Any]]]]

log = logging.getLogger("chenu_agents.runtime.queue")
STATUS_HEADER = "x-chenu-status"


class TaskConsumer:
    def __init__(self, runtime: Runtime, settings: QueueSettings, execute: Execute):
        self.runtime = runtime
        self.settings = settings
        self.execute = execute
        self.queue_name = settings.queue_name(runtime.current.agent)
        self.state = "stopped"  # stopped | connecting | consuming | paused | error
        self.error: str | None = None
        self.handled = 0
        self._connection: AbstractRobustConnection | None = None
        self._channel: AbstractChannel | None = None
        self._queue: AbstractQueue | None = None
        self._tag: str | None = None
        self._runner: asyncio.Task[None] | None = None
        self._in_flight: set[asyncio.Task[None]] = set()
        self._stopping = asyncio.Event()

    def describe(self) -> dict[str, Any]:
        return {
            "queue": self.queue_name,
            "state": self.state,
            "prefetch": self.settings.prefetch,
            "in_flight": len(self._in_flight),
            "handled": self.handled,
            "error": self.error,
        }

    def start(self) -> None:
        self._stopping.clear()
        self._runner = asyncio.get_running_loop().create_task(self._run(), name="chenu-queue-consumer")

    async def stop(self, timeout_s: float = 30.0) -> None:
        """Stop consuming, let the tasks held finish (acknowledged or dead-lettered), then disconnect."""
        self._stopping.set()
        if self._runner is not None:
            self._runner.cancel()
            await asyncio.gather(self._runner, return_exceptions=True)
        await self._cancel_consumer()
        if self._in_flight:
            _done, pending = await asyncio.wait(set(self._in_flight), timeout=timeout_s)
            if pending:
                # Unacknowledged: the broker redelivers them to another consumer once the channel closes.
                log.warning("%d queued tasks still running after %.0f s; left to redelivery", len(pending), timeout_s)
                for task in pending:
                    task.cancel()
        await self._drop_connection()
        self.state = "stopped"

    # -- connection and lifecycle -----------------------------------------------------------------

    async def _run(self) -> None:
        while not self._stopping.is_set():
            try:
                await self._connect()
                await self._follow_lifecycle()
                return
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # aio-pika's connection and channel errors: retry, keep serving HTTP
                self.state, self.error = "error", f"{type(exc).__name__}: {exc}"
                log.warning("queue %s: %s; retrying in %.0f s", self.queue_name, self.error, self.settings.reconnect_s)
                await self._drop_connection()
                try:
                    await asyncio.wait_for(self._stopping.wait(), self.settings.reconnect_s)
                except TimeoutError:
                    pass

    async def _connect(self) -> None:
        self.state = "connecting"
        self._connection = await aio_pika.connect_robust(self.settings.connection_url())
        self._channel = await self._connection.channel()
        await self._channel.set_qos(prefetch_count=self.settings.prefetch)
        self._queue = await self._channel.get_queue(self.queue_name, ensure=True)
        self.error = None

    async def _drop_connection(self) -> None:
        connection = self._connection
        self._connection, self._channel, self._queue, self._tag = None, None, None, None
        if connection is not None:
            try:
                await connection.close()
            except Exception:  # already broken: nothing more to release
                log.debug("closing a broken connection", exc_info=True)

    async def _follow_lifecycle(self) -> None:
        """Consume while the agent is active; cancel the consumer while it is paused or deprecated."""
        while not self._stopping.is_set():
            active = self.runtime.serves_tasks()
            if active and self._tag is None:
                assert self._queue is not None
                self._tag = await self._queue.consume(self._deliver, no_ack=False)
                self.state = "consuming"
                log.info("consuming %s (prefetch %d)", self.queue_name, self.settings.prefetch)
            elif not active and self._tag is not None:
                await self._cancel_consumer()
                self.state = "paused"
                log.info("agent not active: stopped consuming %s", self.queue_name)
            try:
                await asyncio.wait_for(self._stopping.wait(), self.settings.lifecycle_poll_s)
            except TimeoutError:
                pass

    async def _cancel_consumer(self) -> None:
        tag, self._tag = self._tag, None
        if tag is not None and self._queue is not None:
            try:
                await self._queue.cancel(tag)
            except Exception:  # the channel is gone: so is the consumer
                log.debug("cancelling consumer %s", tag, exc_info=True)

    # -- one message --------------------------------------------------------------------------------

    async def _deliver(self, message: AbstractIncomingMessage) -> None:
        # A task of our own: aio-pika cancels its delivery tasks when the channel closes, and a task
        # in flight must finish (and be acknowledged) through a shutdown.
        task = asyncio.get_running_loop().create_task(self._handle(message))
        self._in_flight.add(task)
        task.add_done_callback(self._in_flight.discard)

    async def _handle(self, message: AbstractIncomingMessage) -> None:
        rt = self.runtime
        if not rt.serves_tasks():
            # Delivered just before the consumer was cancelled: back to the queue for an active slot.
            await message.nack(requeue=True)
            return
        started = time.perf_counter()
        agent = rt.current
        try:
            data: Any = json.loads(message.body)
        except ValueError:
            status, payload = 400, {"error": "the body is not JSON", "agent": agent.agent, "version": agent.version}
        else:
            status, payload = await self.execute(rt, agent, data, transport="amqp")
        rt.record(agent, status, started)
        self.handled += 1
        try:
            if message.reply_to:
                await self._reply(message, agent, status, payload)
            if status == 200:
                await message.ack()
            else:
                log.warning("queued task %s failed (%d): %s", message.message_id, status, payload.get("error"))
                await message.reject(requeue=False)
        except Exception:  # the channel is gone: unacknowledged, the broker redelivers the message
            log.exception("queued task %s answered but not acknowledged", message.message_id)

    async def _reply(
        self, message: AbstractIncomingMessage, agent: LoadedAgent, status: int, payload: dict[str, Any]
    ) -> None:
        assert self._channel is not None
        reply = aio_pika.Message(
            json.dumps(payload, ensure_ascii=False).encode(),
            content_type="application/json",
            correlation_id=message.correlation_id,
            headers={STATUS_HEADER: status, "x-chenu-agent": agent.agent, "x-chenu-version": agent.version},
        )
        await self._channel.default_exchange.publish(reply, routing_key=str(message.reply_to))
