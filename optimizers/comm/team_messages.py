"""The messages robots of a team send each other over a real network (``optimizers.comm.team_network``).

One message is one row of one channel from one robot, in bytes::

    magic "NNDT" | version (1 byte) | kind (1 byte) | run id (16 bytes) | sender (u32) | incarnation (u32)
    | round (u64) | channel (u8 length + UTF-8) | dtype (1 byte) | length (u32 elements) | payload
    | checksum (8 bytes: BLAKE2b of everything before) | tag (32 bytes: HMAC-SHA256 of everything before,
      keyed by the team key)

``kind`` is a row (``ROW``) or a presence note (``HELLO``: the sender's process is up, its newest round, a
random nonce of its process; ``DONE``: it finished the pair). The *run id* is a digest of the run's config, so
robots of another run (or another config) are told apart; ``incarnation`` counts the sender's restarts, so a
robot that resumed from a checkpoint (its rounds going back) is newer than its messages from before. The
checksum catches corruption on the way; the tag shows that the sender holds the team key (an outsider can
neither forge a message nor change one without it being dropped).

:func:`decode` returns a :class:`Message` or the cause it was dropped for (one of ``DROP_CAUSES``).
"""

from __future__ import annotations

import hashlib
import hmac
import os
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

MAGIC = b"NNDT"
VERSION = 1
ROW, HELLO, DONE = 1, 2, 3
KINDS = (ROW, HELLO, DONE)
_HEAD = struct.Struct("<4sBB16sIIQ")
_CHECKSUM_BYTES, _TAG_BYTES = 8, 32
DTYPES = {torch.float32: 1, torch.float64: 2, torch.float16: 3, torch.bfloat16: 4, torch.uint8: 5, torch.int64: 6}
_DTYPE_OF = {code: dtype for dtype, code in DTYPES.items()}
# why a received message was not used
DROP_CAUSES = ("corrupt", "unauthenticated", "foreign_run", "not_a_neighbour", "duplicate", "old")
KEY_ENVIRONMENT = "NNDT_TEAM_KEY"
MIN_KEY_BYTES = 16


@dataclass(frozen=True)
class Message:
    kind: int
    sender: int
    incarnation: int
    round: int
    channel: str
    row: torch.Tensor | None  # ROW messages only

    @property
    def order(self) -> tuple[int, int]:
        """Newer messages compare greater: a restart (a higher incarnation) is newer than any round before it."""
        return (self.incarnation, self.round)


def run_id(config_sha256: str) -> bytes:
    """The 16 bytes that name a run in its messages (from its config's digest)."""
    return hashlib.blake2b(config_sha256.encode(), digest_size=16).digest()


def encode(key: bytes, run: bytes, kind: int, sender: int, incarnation: int, round_index: int, channel: str,
           row: torch.Tensor | None = None) -> bytes:
    channel_bytes = channel.encode()
    if len(channel_bytes) > 255:
        raise ValueError(f"channel name longer than 255 bytes: {channel[:40]}...")
    parts = [_HEAD.pack(MAGIC, VERSION, kind, run, sender, incarnation, round_index),
             bytes([len(channel_bytes)]), channel_bytes]
    if row is None:
        parts.append(bytes([0]) + struct.pack("<I", 0))
    else:
        flat = row.detach().reshape(-1).contiguous().cpu()
        parts.append(bytes([DTYPES[flat.dtype]]) + struct.pack("<I", flat.numel()))
        parts.append(flat.view(torch.uint8).numpy().tobytes())
    body = b"".join(parts)
    body += hashlib.blake2b(body, digest_size=_CHECKSUM_BYTES).digest()
    return body + hmac.new(key, body, hashlib.sha256).digest()


def decode(key: bytes, run: bytes, data: bytes) -> Message | str:
    """The message in ``data``, or why it is dropped: "corrupt" (it does not parse or its checksum is wrong),
    "unauthenticated" (its tag is not the team key's) or "foreign_run" (another run's)."""
    if len(data) < _HEAD.size + 6 + _CHECKSUM_BYTES + _TAG_BYTES:
        return "corrupt"
    body, tag = data[:-_TAG_BYTES], data[-_TAG_BYTES:]
    content, checksum = body[:-_CHECKSUM_BYTES], body[-_CHECKSUM_BYTES:]
    if hashlib.blake2b(content, digest_size=_CHECKSUM_BYTES).digest() != checksum:
        return "corrupt"
    if not hmac.compare_digest(hmac.new(key, body, hashlib.sha256).digest(), tag):
        return "unauthenticated"
    magic, version, kind, message_run, sender, incarnation, round_index = _HEAD.unpack_from(content)
    if magic != MAGIC or version != VERSION or kind not in KINDS:
        return "corrupt"
    if message_run != run:
        return "foreign_run"
    at = _HEAD.size
    length = content[at]
    channel = content[at + 1:at + 1 + length].decode(errors="replace")
    at += 1 + length
    dtype_code, count = content[at], struct.unpack_from("<I", content, at + 1)[0]
    at += 5
    row = None
    if kind == ROW:
        dtype = _DTYPE_OF.get(dtype_code)
        if dtype is None:
            return "corrupt"
        size = torch.empty(0, dtype=dtype).element_size()
        if len(content) - at != count * size:
            return "corrupt"
        raw = np.frombuffer(content, dtype=np.uint8, count=count * size, offset=at).copy()
        row = torch.from_numpy(raw).view(dtype)
    return Message(kind, sender, incarnation, round_index, channel, row)


class TeamKeyError(ValueError):
    """No usable team key."""


def read_team_key(key_file: str | None, environ=os.environ) -> bytes:
    """The team key: the contents of ``key_file`` when given, else the environment variable NNDT_TEAM_KEY (text);
    at least 16 bytes. Raises TeamKeyError with one line otherwise."""
    if key_file:
        path = Path(key_file)
        try:
            key = path.read_bytes().strip()
        except OSError as exc:
            raise TeamKeyError(f"experiment.team.key_file: cannot read {path}: {exc.strerror or exc}") from None
        where = f"experiment.team.key_file {path}"
    elif environ.get(KEY_ENVIRONMENT):
        key, where = environ[KEY_ENVIRONMENT].strip().encode(), f"${KEY_ENVIRONMENT}"
    else:
        raise TeamKeyError(f"no team key: give experiment.team.key_file or set ${KEY_ENVIRONMENT} (every robot of "
                           f"the team the same key; make one with: python -c \"import secrets; "
                           f"print(secrets.token_hex(32))\" > team.key)")
    if len(key) < MIN_KEY_BYTES:
        raise TeamKeyError(f"{where}: the team key has {len(key)} bytes; at least {MIN_KEY_BYTES} are needed")
    return key


def new_team_key() -> bytes:
    """A fresh random key (64 hex characters)."""
    return os.urandom(32).hex().encode()
