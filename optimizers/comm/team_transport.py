"""How a robot's messages reach its neighbours: Eclipse Zenoh, or a loopback hub inside one process (tests).

A transport publishes bytes under a key (``<prefix>/<pair>/<sender>/<channel>``) and calls a subscriber's
callback with every message published under a key prefix, from a thread of its own. Delivery is best effort:
a message may be late, lost or never sent (by default Zenoh drops what a congested link cannot take rather
than blocking the robot; ``block_when_congested`` makes the sender wait instead, so nothing is lost over TCP);
what the robots make of that is ``optimizers.comm.team_network``'s.

Zenoh (``eclipse-zenoh``, the transport of ROS 2's rmw_zenoh) runs peer to peer: robot i listens on
``tcp/<host_i>:<base_port + i>`` and connects to its neighbours' endpoints (no router, no multicast scouting);
with ``router`` given, every robot is a client of that router instead. Zenoh's shared memory between sessions of one
host is off: robots on one machine send their rows over TCP as robots on several would.
"""

from __future__ import annotations

import json
import threading
from collections import defaultdict
from typing import Callable

Callback = Callable[[bytes], None]


def endpoint(host: str, port: int, protocol: str = "tcp") -> str:
    return f"{protocol}/{host}:{port}"


class ZenohTransport:
    """One Zenoh session of one robot."""

    def __init__(self, listen: list[str], connect: list[str], router: str | None = None,
                 block_when_congested: bool = False):
        import zenoh

        config = zenoh.Config()
        config.insert_json5("scouting/multicast/enabled", "false")
        # every message crosses the network, as between robots: no shared memory between sessions of one host
        config.insert_json5("transport/shared_memory/enabled", "false")
        if router:
            config.insert_json5("mode", json.dumps("client"))
            config.insert_json5("connect/endpoints", json.dumps([router]))
        else:
            config.insert_json5("mode", json.dumps("peer"))
            config.insert_json5("listen/endpoints", json.dumps(listen))
            config.insert_json5("connect/endpoints", json.dumps(connect))
            config.insert_json5("connect/exit_on_failure", "false")
            config.insert_json5("listen/exit_on_failure", "true")  # a taken port ends the robot with an error
        self.session = zenoh.open(config)
        self._publishers: dict[str, object] = {}
        self._subscribers: list[object] = []
        self.bytes_published = 0
        self._congestion = zenoh.CongestionControl.BLOCK if block_when_congested else zenoh.CongestionControl.DROP

    def publish(self, key: str, data: bytes) -> None:
        publisher = self._publishers.get(key)
        if publisher is None:
            publisher = self._publishers[key] = self.session.declare_publisher(
                key, congestion_control=self._congestion)
        publisher.put(data)  # type: ignore[attr-defined]
        self.bytes_published += len(data)

    def subscribe(self, prefix: str, callback: Callback) -> None:
        def on_sample(sample):
            callback(bytes(sample.payload.to_bytes()))

        self._subscribers.append(self.session.declare_subscriber(f"{prefix}/**", on_sample))

    def close(self) -> None:
        for subscriber in self._subscribers:
            try:
                subscriber.undeclare()  # type: ignore[attr-defined]
            except Exception:
                pass
        self._subscribers.clear()
        self._publishers.clear()
        self.session.close()


class LoopbackHub:
    """Transports inside one process that deliver each published message to every subscriber of its prefix
    (at once, on the publisher's thread), with an optional ``filter(key, data) -> bytes | None`` that may
    drop or change a message on its way (tests of loss, tampering and outsiders)."""

    def __init__(self):
        self._subscribers: dict[str, list[Callback]] = defaultdict(list)
        self._lock = threading.Lock()
        self.filter: Callable[[str, bytes], bytes | None] | None = None

    def transport(self) -> "LoopbackTransport":
        return LoopbackTransport(self)

    def deliver(self, key: str, data: bytes) -> None:
        if self.filter is not None:
            changed = self.filter(key, data)
            if changed is None:
                return
            data = changed
        with self._lock:
            targets = [cb for prefix, cbs in self._subscribers.items()
                       if key == prefix or key.startswith(prefix + "/") for cb in cbs]
        for callback in targets:
            callback(data)


class LoopbackTransport:
    def __init__(self, hub: LoopbackHub):
        self.hub = hub
        self.bytes_published = 0
        self._mine: list[tuple[str, Callback]] = []

    def publish(self, key: str, data: bytes) -> None:
        self.bytes_published += len(data)
        self.hub.deliver(key, data)

    def subscribe(self, prefix: str, callback: Callback) -> None:
        with self.hub._lock:
            self.hub._subscribers[prefix].append(callback)
        self._mine.append((prefix, callback))

    def close(self) -> None:
        with self.hub._lock:
            for prefix, callback in self._mine:
                if callback in self.hub._subscribers.get(prefix, []):
                    self.hub._subscribers[prefix].remove(callback)
        self._mine.clear()
