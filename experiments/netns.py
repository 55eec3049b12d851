"""Real packet loss for a team of processes: a Linux network namespace whose kernel drops a share of the packets.

``LossyNamespace(loss)`` makes a namespace with its own loopback and an nftables rule on its input hook that drops
each packet with probability ``loss`` (``numgen random mod 10000 < loss * 10000 drop``): the sender does not learn
of it, as on a radio. Processes started with ``namespace.command(argv)`` (``ip netns exec``) talk over that loopback;
``counters()`` reads what the kernel passed and dropped. Needs root, ``ip`` (iproute2) and ``nft`` (nftables);
``unavailable()`` says why not, where not.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import uuid
from functools import lru_cache

TABLE = "nndt_loss"


def _run(argv: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(argv, capture_output=True, text=True, timeout=30)


@lru_cache(maxsize=1)
def unavailable() -> str | None:
    """Why lossy namespaces cannot be made here (None: they can)."""
    if os.name != "posix" or not hasattr(os, "geteuid") or os.geteuid() != 0:
        return "real packet loss needs root (a network namespace and nftables rules)"
    for tool, package in (("ip", "iproute2"), ("nft", "nftables")):
        if shutil.which(tool) is None:
            return f"real packet loss needs the {tool} command (apt-get install {package})"
    try:
        with LossyNamespace(0.5):
            pass
    except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
        return f"this kernel or container refuses a lossy network namespace: {exc}"
    return None


class LossyNamespace:
    def __init__(self, loss: float, name: str | None = None):
        if not 0.0 <= loss < 1.0:
            raise ValueError(f"packet loss must be in [0, 1), got {loss}")
        self.loss = float(loss)
        self.name = name or f"nndt-{uuid.uuid4().hex[:10]}"

    def _ns(self, *argv: str) -> subprocess.CompletedProcess:
        done = _run(["ip", "netns", "exec", self.name, *argv])
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(argv)}: {done.stderr.strip() or done.returncode}")
        return done

    def __enter__(self) -> "LossyNamespace":
        done = _run(["ip", "netns", "add", self.name])
        if done.returncode != 0:
            raise RuntimeError(f"ip netns add: {done.stderr.strip()}")
        try:
            self._ns("ip", "link", "set", "lo", "up")
            self._ns("nft", "add", "table", "inet", TABLE)
            self._ns("nft", "add", "chain", "inet", TABLE, "input", "{ type filter hook input priority 0 ; }")
            threshold = int(round(self.loss * 10000))
            self._ns("nft", "add", "rule", "inet", TABLE, "input", "numgen", "random", "mod", "10000", "<",
                     str(threshold), "counter", "drop")
            self._ns("nft", "add", "rule", "inet", TABLE, "input", "counter")
        except Exception:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc) -> None:
        _run(["ip", "netns", "del", self.name])

    def command(self, argv: list[str]) -> list[str]:
        """``argv`` run inside the namespace."""
        return ["ip", "netns", "exec", self.name, *argv]

    def counters(self) -> dict[str, int]:
        """Packets and bytes the kernel dropped and passed on the namespace's input so far."""
        rules = [item["rule"] for item in json.loads(self._ns("nft", "-j", "list", "table", "inet", TABLE).stdout)
                 ["nftables"] if "rule" in item]
        counts = []
        for rule in rules:
            counter = next(e["counter"] for e in rule["expr"] if "counter" in e)
            counts.append((counter["packets"], counter["bytes"]))
        (dropped_packets, dropped_bytes), (passed_packets, passed_bytes) = counts[0], counts[1]
        return {"dropped_packets": dropped_packets, "dropped_bytes": dropped_bytes,
                "passed_packets": passed_packets, "passed_bytes": passed_bytes}
