"""Streaming sealed files: chunked AES-256-GCM with a per-file key, safe against reordering and truncation.

Checkpoints must only ever exist encrypted at rest. This module defines the on-disk format used for
them and a streaming reader/writer whose memory use is O(chunk size), whatever the payload size.

Format (version 1; all integers big-endian)::

    header body
      magic          9 bytes   b"TDXFLSEAL"
      version        1 byte    1
      file salt     32 bytes   random per file (doubles as the file id)
      chunk size     4 bytes   plaintext bytes per non-final chunk, 1 .. 64 MiB
      label length   2 bytes   L, 1 .. 255
      label          L bytes   UTF-8 key label / key id (bound into the key derivation)
      meta length    4 bytes   M, 0 .. 1 MiB
      metadata       M bytes   associated metadata: authenticated, NOT encrypted
    header tag      16 bytes   AES-256-GCM tag over the empty message, nonce 0xff*12, AAD = header body
    chunk records, one or more, the last one flagged final:
      flag           1 byte    0 = more chunks follow, 1 = final chunk
      length         4 bytes   n = plaintext length; == chunk size unless final, <= chunk size if final
      ciphertext   n+16 bytes  AES-256-GCM(ciphertext || tag)

    per-file key  K_f = HKDF-SHA256(ikm = model key, salt = file salt,
                                    info = b"tdxfl sealed file v1" + label, length = 32)
    chunk i       nonce = i as a 96-bit big-endian counter (i < 2**64)
                  AAD   = SHA-256(header body) || i as u64 big-endian || final flag (1 byte)

Because K_f is fresh for every file (random 32-byte salt), counter nonces never repeat under a key.
The header tag detects a wrong key or a modified header before any chunk is touched; binding the
header hash, the chunk index and the final flag into every chunk's AAD detects chunk reordering,
dropping, duplication, splicing between files and truncation (a file must end with exactly one
final chunk, followed by nothing). An empty payload is one final chunk of length 0.

Streaming caveat: :class:`SealedReader` releases each chunk's plaintext as soon as *that chunk*
authenticates, so a consumer sees early chunks before the end of the file has been checked. Treat
the data as complete only after reading to EOF without a :class:`~tdxfl.errors.SealedFileError`
(the decoders in this package do so), or use :func:`read_sealed_bytes` for small payloads.

Errors: a wrong key or a tampered header raises :class:`~tdxfl.errors.WrongKey` (the two cannot
be told apart); anything else wrong with the file raises its base class,
:class:`~tdxfl.errors.SealedFileError`. Invalid arguments (a key that is not 32 bytes, a bad
label or chunk size) raise ValueError.
"""

from __future__ import annotations

import hashlib
import os
import struct
from collections.abc import Iterable, Iterator
from types import TracebackType
from typing import IO, Any, Final

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from tdxfl.errors import SealedFileError, WrongKey
from tdxfl.files import atomic_write

__all__ = [
    "DEFAULT_CHUNK_SIZE",
    "FORMAT_VERSION",
    "KEY_SIZE",
    "MAGIC",
    "MAX_CHUNK_SIZE",
    "MAX_METADATA_SIZE",
    "SealedReader",
    "SealedWriter",
    "check_key",
    "open_sealed",
    "read_sealed_bytes",
    "seal_file",
]

MAGIC: Final = b"TDXFLSEAL"
FORMAT_VERSION: Final = 1
KEY_SIZE: Final = 32
SALT_SIZE: Final = 32
TAG_SIZE: Final = 16
DEFAULT_CHUNK_SIZE: Final = 1 << 20
MAX_CHUNK_SIZE: Final = 1 << 26
MAX_LABEL_SIZE: Final = 255
MAX_METADATA_SIZE: Final = 1 << 20

_HKDF_INFO_PREFIX: Final = b"tdxfl sealed file v1"
_HEADER_NONCE: Final = b"\xff" * 12  # never a chunk nonce: chunk indices stay below 2**64
_MAX_CHUNKS: Final = 1 << 64
_FIXED = struct.Struct(">9sB32sIH")  # magic, version, salt, chunk size, label length
_META_LEN = struct.Struct(">I")
_RECORD = struct.Struct(">BI")  # final flag, plaintext length
_AAD_TAIL = struct.Struct(">QB")  # chunk index, final flag


def check_key(key: bytes | bytearray | memoryview) -> bytes:
    """Return ``key`` as bytes, raising ValueError (without echoing it) unless it is 32 bytes."""
    if not isinstance(key, (bytes, bytearray, memoryview)):
        raise ValueError(f"key must be {KEY_SIZE} bytes, got {type(key).__name__}")
    raw = bytes(key)
    if len(raw) != KEY_SIZE:
        raise ValueError(f"key must be {KEY_SIZE} bytes, got {len(raw)} bytes")
    return raw


def _check_label(label: str) -> bytes:
    if not isinstance(label, str):
        raise ValueError("label must be a str")
    raw = label.encode("utf-8")
    if not 1 <= len(raw) <= MAX_LABEL_SIZE:
        raise ValueError(f"label must be 1..{MAX_LABEL_SIZE} UTF-8 bytes, got {len(raw)}")
    return raw


def _file_cipher(key: bytes, salt: bytes, label: bytes) -> AESGCM:
    """The AES-256-GCM instance under the per-file key HKDF(key, salt, info || label)."""
    hkdf = HKDF(algorithm=hashes.SHA256(), length=KEY_SIZE, salt=salt, info=_HKDF_INFO_PREFIX + label)
    return AESGCM(hkdf.derive(key))


def _nonce(index: int) -> bytes:
    return index.to_bytes(12, "big")


def _aad(header_hash: bytes, index: int, final: bool) -> bytes:
    return header_hash + _AAD_TAIL.pack(index, 1 if final else 0)


class SealedWriter:
    """Encrypt a byte stream into the sealed format, one chunk at a time.

    ``fileobj`` is a binary file opened for writing; the header is written immediately. Call
    :meth:`close` to write the final chunk; the underlying file is *not* closed. Used as a context
    manager, an exception inside the block abandons the stream without writing a final chunk, so a
    reader reports the output as truncated instead of accepting a partial payload.

    Memory stays O(chunk_size): input is buffered up to one chunk, and large writes are encrypted
    straight from the caller's buffer without copying.
    """

    def __init__(
        self,
        fileobj: IO[bytes],
        key: bytes | bytearray | memoryview,
        *,
        label: str,
        metadata: bytes | bytearray | memoryview = b"",
        chunk_size: int = DEFAULT_CHUNK_SIZE,
    ) -> None:
        """Derive a fresh per-file key and write the header.

        Raises ValueError for a key that is not 32 bytes, an empty or over-long label, metadata over
        1 MiB, or a chunk size outside 1 .. 64 MiB.
        """
        raw_key = check_key(key)
        label_raw = _check_label(label)
        meta = bytes(metadata)
        if len(meta) > MAX_METADATA_SIZE:
            raise ValueError(f"metadata must be at most {MAX_METADATA_SIZE} bytes, got {len(meta)}")
        if isinstance(chunk_size, bool) or not isinstance(chunk_size, int):
            raise ValueError("chunk_size must be an int")
        if not 1 <= chunk_size <= MAX_CHUNK_SIZE:
            raise ValueError(f"chunk_size must be in 1..{MAX_CHUNK_SIZE}, got {chunk_size}")
        salt = os.urandom(SALT_SIZE)
        body = (
            _FIXED.pack(MAGIC, FORMAT_VERSION, salt, chunk_size, len(label_raw))
            + label_raw
            + _META_LEN.pack(len(meta))
            + meta
        )
        self._cipher = _file_cipher(raw_key, salt, label_raw)
        del raw_key
        self._header_hash = hashlib.sha256(body).digest()
        self._file = fileobj
        self._chunk_size = chunk_size
        self._buf = bytearray(chunk_size)
        self._fill = 0
        self._index = 0
        self._closed = False
        header_tag = self._cipher.encrypt(_HEADER_NONCE, b"", body)
        self._write_all(body + header_tag)
        self.bytes_written = len(body) + len(header_tag)
        """Sealed bytes written to ``fileobj`` so far."""
        self.file_id = salt
        """The file's random salt, also usable as a unique id."""

    def __repr__(self) -> str:
        return f"<SealedWriter file_id={self.file_id.hex()[:16]} chunks={self._index} closed={self._closed}>"

    @property
    def closed(self) -> bool:
        """Whether the stream was finalized or abandoned."""
        return self._closed

    def _write_all(self, data: bytes) -> None:
        """Write all of ``data``, looping over short writes (raw, unbuffered files may do them)."""
        view = memoryview(data)
        while view:
            n = self._file.write(view)
            if n is None or n >= len(view):
                return
            view = view[n:]

    def _emit(self, chunk: memoryview, final: bool) -> None:
        if self._index >= _MAX_CHUNKS:
            raise SealedFileError("too many chunks for one sealed file")
        ciphertext = self._cipher.encrypt(_nonce(self._index), chunk, _aad(self._header_hash, self._index, final))
        self._write_all(_RECORD.pack(1 if final else 0, len(chunk)))
        self._write_all(ciphertext)
        self.bytes_written += _RECORD.size + len(ciphertext)
        self._index += 1

    def write(self, data: bytes | bytearray | memoryview) -> int:
        """Append ``data`` (any C-contiguous bytes-like object) to the payload; return its length."""
        if self._closed:
            raise ValueError("write to a closed SealedWriter")
        view = memoryview(data)
        if view.nbytes == 0:
            return 0
        if view.ndim != 1 or view.format != "B":
            view = view.cast("B")
        total = len(view)
        size = self._chunk_size
        pos = 0
        while pos < total:
            if self._fill == size:
                # The buffer is full and more bytes follow, so it is not the final chunk.
                self._emit(memoryview(self._buf), final=False)
                self._fill = 0
            if self._fill == 0 and total - pos > size:
                # A whole chunk with more data after it: encrypt in place, no copy.
                self._emit(view[pos : pos + size], final=False)
                pos += size
                continue
            take = min(size - self._fill, total - pos)
            self._buf[self._fill : self._fill + take] = view[pos : pos + take]
            self._fill += take
            pos += take
        return total

    def close(self) -> None:
        """Write the buffered tail as the final chunk (an empty one for an empty payload).

        Idempotent. The underlying file is neither flushed nor closed.
        """
        if self._closed:
            return
        self._emit(memoryview(self._buf)[: self._fill], final=True)
        self._closed = True
        self._buf = bytearray()

    def abort(self) -> None:
        """Stop without writing a final chunk: what was written reads back as truncated."""
        self._closed = True
        self._buf = bytearray()

    def __enter__(self) -> SealedWriter:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


class SealedReader:
    """Authenticate and decrypt a sealed stream chunk by chunk.

    The constructor reads and authenticates the header (raising :class:`~tdxfl.errors.WrongKey`
    for a wrong key or tampered header), so :attr:`metadata` and :attr:`label` are trustworthy once it
    returns. Each chunk's plaintext is released only after that chunk authenticates; reaching EOF
    without an error proves the payload complete (final chunk present, nothing after it).

    ``label``, when given, must equal the label in the header (it names which key / purpose the
    file was sealed for). The underlying file is closed by :meth:`close` only if ``owns_file``.
    A read that fails (tampering, truncation, I/O error) leaves the reader failed: every later read
    raises :class:`SealedFileError`.
    """

    def __init__(
        self,
        fileobj: IO[bytes],
        key: bytes | bytearray | memoryview,
        *,
        label: str | None = None,
        owns_file: bool = False,
    ) -> None:
        """Read and authenticate the header of the sealed stream in ``fileobj``."""
        raw_key = check_key(key)
        self._file = fileobj
        self._owns_file = owns_file
        fixed = self._read_header_part(_FIXED.size, not_sealed_if_short=True)
        magic, version, salt, chunk_size, label_len = _FIXED.unpack(fixed)
        if magic != MAGIC:
            raise SealedFileError("not a sealed file (bad magic)")
        if version != FORMAT_VERSION:
            raise SealedFileError(f"unsupported sealed file version {version} (this reader handles {FORMAT_VERSION})")
        if not 1 <= chunk_size <= MAX_CHUNK_SIZE or not 1 <= label_len <= MAX_LABEL_SIZE:
            raise WrongKey("wrong key or tampered header (header fields out of range)")
        label_raw = self._read_header_part(label_len)
        (meta_len,) = _META_LEN.unpack(self._read_header_part(_META_LEN.size))
        if meta_len > MAX_METADATA_SIZE:
            raise WrongKey("wrong key or tampered header (metadata length out of range)")
        meta = self._read_header_part(meta_len)
        header_tag = self._read_header_part(TAG_SIZE)
        body = fixed + label_raw + _META_LEN.pack(meta_len) + meta
        try:
            label_text = label_raw.decode("utf-8")
        except UnicodeDecodeError:
            raise WrongKey("wrong key or tampered header (label is not UTF-8)") from None
        if label is not None and label_text != label:
            raise SealedFileError(f"sealed file has key label {label_text!r}, expected {label!r}")
        self._cipher = _file_cipher(raw_key, salt, label_raw)
        del raw_key
        try:
            self._cipher.decrypt(_HEADER_NONCE, header_tag, body)
        except InvalidTag:
            raise WrongKey("wrong key or tampered header") from None
        self._header_hash = hashlib.sha256(body).digest()
        self._chunk_size = chunk_size
        self._cbuf = memoryview(bytearray(chunk_size + TAG_SIZE))  # one chunk's ciphertext and tag
        self._pbuf = memoryview(bytearray(chunk_size))  # plaintext of a chunk that does not fit a readinto
        self._index = 0
        self._done = False
        self._closed = False
        self._failed = False
        self._pending: memoryview = memoryview(b"")
        self.label: str = label_text
        """The key label from the (authenticated) header."""
        self.metadata: bytes = meta
        """The associated metadata from the (authenticated, not encrypted) header."""
        self.chunk_size: int = chunk_size
        """Plaintext bytes per non-final chunk."""
        self.file_id: bytes = salt
        """The file's random salt / id."""

    def __repr__(self) -> str:
        return f"<SealedReader file_id={self.file_id.hex()[:16]} label={self.label!r} chunk={self._index}>"

    # -- low-level reading -------------------------------------------------------------------

    def _read_into(self, view: memoryview) -> int:
        """Fill ``view`` from the file; return how many bytes were read (short only at EOF)."""
        got = 0
        readinto = getattr(self._file, "readinto", None)
        while got < len(view):
            if readinto is not None:
                n = readinto(view[got:])
            else:
                data = self._file.read(len(view) - got)
                n = len(data)
                view[got : got + n] = data
            if not n:
                break
            got += n
        return got

    def _read_header_part(self, size: int, *, not_sealed_if_short: bool = False) -> bytes:
        buf = bytearray(size)
        if self._read_into(memoryview(buf)) != size:
            if not_sealed_if_short:
                raise SealedFileError("not a sealed file (too short for a header)")
            raise SealedFileError("truncated or tampered header: file ends inside the header")
        return bytes(buf)

    def _next_record(self) -> tuple[int, bool, int] | None:
        """Read and check the next chunk record's header; (index, final, plaintext length), or None
        after the final chunk. Its ciphertext is read next (:meth:`_read_ciphertext`)."""
        if self._closed:
            raise ValueError("read from a closed SealedReader")
        if self._failed:
            raise SealedFileError("an earlier read from this sealed file failed")
        if self._done:
            return None
        index = self._index
        record = bytearray(_RECORD.size)
        got = self._read_into(memoryview(record))
        if got == 0:
            raise SealedFileError(f"truncated: missing final chunk (file ends after {index} chunk(s))")
        if got < _RECORD.size:
            raise SealedFileError(f"truncated: chunk {index} is cut short (missing final chunk)")
        flag, length = _RECORD.unpack(record)
        if flag > 1 or length > self._chunk_size or (flag == 0 and length != self._chunk_size):
            raise SealedFileError(f"chunk {index} failed authentication (tampered or wrong key): malformed record")
        return index, flag == 1, length

    def _read_ciphertext(self, index: int, length: int) -> memoryview:
        """Read chunk ``index``'s ciphertext and tag (``length`` plaintext bytes) into the reused buffer."""
        view = self._cbuf[: length + TAG_SIZE]
        if self._read_into(view) != len(view):
            raise SealedFileError(f"truncated: chunk {index} is cut short (missing final chunk)")
        return view

    def _finish_chunk(self, final: bool) -> None:
        self._index += 1
        if final:
            if self._read_into(memoryview(bytearray(1))):
                raise SealedFileError("trailing data after final chunk")
            self._done = True
            self._cbuf = memoryview(b"")

    def _next_chunk(self) -> bytes | None:
        """Authenticate and decrypt the next chunk; None once the final chunk has been consumed."""
        try:
            record = self._next_record()
            if record is None:
                return None
            index, final, length = record
            view = self._read_ciphertext(index, length)
            try:
                plaintext = self._cipher.decrypt(_nonce(index), view, _aad(self._header_hash, index, final))
            except InvalidTag:
                raise SealedFileError(f"chunk {index} failed authentication (tampered or wrong key)") from None
            self._finish_chunk(final)
        except BaseException:
            self._failed = True
            raise
        return plaintext

    def _unseal_into(self, index: int, final: bool, out: memoryview) -> None:
        """Read, authenticate and decrypt chunk ``index`` into ``out`` (its plaintext length); on
        failure ``out`` is zeroed before raising, so no unauthenticated plaintext is left in it."""
        ciphertext = self._read_ciphertext(index, len(out))
        try:
            self._cipher.decrypt_into(_nonce(index), ciphertext, _aad(self._header_hash, index, final), out)
        except InvalidTag:
            out[:] = bytes(len(out))
            raise SealedFileError(f"chunk {index} failed authentication (tampered or wrong key)") from None

    # -- public reading API ------------------------------------------------------------------

    def read_chunk(self) -> bytes:
        """Return the next authenticated plaintext piece (the rest of a chunk); b"" at the verified end."""
        if self._pending:
            out = bytes(self._pending)
            self._pending = memoryview(b"")
            return out
        while True:
            chunk = self._next_chunk()
            if chunk is None:
                return b""
            if chunk:
                return chunk

    def __iter__(self) -> Iterator[bytes]:
        """Yield authenticated plaintext chunks until the verified end of the payload."""
        while True:
            chunk = self.read_chunk()
            if not chunk:
                return
            yield chunk

    def _take_pending(self, target: memoryview) -> int:
        """Copy as much pending plaintext as fits into ``target``; return how much."""
        take = min(len(target), len(self._pending))
        target[:take] = self._pending[:take]
        self._pending = self._pending[take:]
        return take

    def readinto(self, buffer: Any) -> int:
        """Fill ``buffer`` with up to ``len(buffer)`` plaintext bytes; 0 only at the verified end.

        Each chunk that fits the rest of ``buffer`` is decrypted straight into it; a chunk that does
        not fit is decrypted into a reused buffer and copied. On failure the reader is left failed
        and what this call wrote into ``buffer`` from the chunk that failed on is zeroed; the chunks
        before it stay.
        """
        target = memoryview(buffer)
        if target.ndim != 1 or target.format != "B":
            target = target.cast("B")
        want = len(target)
        got = self._take_pending(target)
        start = got  # where the chunk being read starts in target
        try:
            while got < want:
                start = got
                record = self._next_record()
                if record is None:
                    break
                index, final, length = record
                if length > want - got:
                    self._unseal_into(index, final, self._pbuf[:length])
                    self._finish_chunk(final)
                    self._pending = self._pbuf[:length]
                    got += self._take_pending(target[got:])
                    break
                self._unseal_into(index, final, target[got : got + length])
                got += length
                self._finish_chunk(final)
        except BaseException:
            self._failed = True
            self._pending = memoryview(b"")
            self._pbuf[:] = bytes(len(self._pbuf))
            target[start:got] = bytes(got - start)
            raise
        return got

    def read(self, n: int = -1) -> bytes:
        """Return up to ``n`` plaintext bytes (all remaining ones if ``n`` < 0); b"" at the verified end.

        Fewer than ``n`` bytes are returned only at the end of the payload.
        """
        parts: list[bytes] = []
        remaining = n
        while remaining != 0:
            if not self._pending:
                chunk = self._next_chunk()
                if chunk is None:
                    break
                self._pending = memoryview(chunk)
                continue
            take = len(self._pending) if remaining < 0 else min(remaining, len(self._pending))
            parts.append(bytes(self._pending[:take]))
            self._pending = self._pending[take:]
            if remaining > 0:
                remaining -= take
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def verify_to_end(self) -> None:
        """Require that no plaintext is left, and that the stream ends correctly.

        Raises SealedFileError if unread plaintext remains or the file is truncated / tampered.
        """
        if self._pending or self.read_chunk():
            raise SealedFileError("unexpected extra payload data after the expected end")

    @property
    def at_end(self) -> bool:
        """Whether the final chunk has been authenticated and fully consumed."""
        return self._done and not self._pending

    def close(self) -> None:
        """Drop buffers; close the underlying file if this reader owns it."""
        self._closed = True
        self._pending = memoryview(b"")
        self._cbuf = memoryview(b"")
        self._pbuf = memoryview(b"")
        if self._owns_file:
            self._file.close()

    def __enter__(self) -> SealedReader:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def seal_file(
    path: str | os.PathLike[str],
    key: bytes | bytearray | memoryview,
    data_iter: Iterable[bytes | bytearray | memoryview] | bytes | bytearray | memoryview,
    *,
    label: str,
    metadata: bytes | bytearray | memoryview = b"",
    chunk_size: int = DEFAULT_CHUNK_SIZE,
) -> int:
    """Atomically write the pieces of ``data_iter`` to ``path`` as a sealed file; return its size.

    The sealed stream is written with :func:`tdxfl.files.atomic_write` (a mode 0600 temporary file
    beside ``path``, fsynced, renamed over it, directory fsynced). If anything fails (including the
    iterator raising), the temporary file is removed and any previous file at ``path`` is left
    untouched. Only ciphertext ever reaches the disk. A single bytes-like object may be passed
    instead of an iterable of pieces.
    """
    pieces: Iterable[bytes | bytearray | memoryview]
    if isinstance(data_iter, (bytes, bytearray, memoryview)):
        pieces = (data_iter,)
    else:
        pieces = data_iter
    with atomic_write(path) as out:
        writer = SealedWriter(out, key, label=label, metadata=metadata, chunk_size=chunk_size)
        for piece in pieces:
            writer.write(piece)
        writer.close()
    return writer.bytes_written


def open_sealed(
    path: str | os.PathLike[str], key: bytes | bytearray | memoryview, *, label: str | None = None
) -> SealedReader:
    """Open ``path`` and return a :class:`SealedReader` that owns (and closes) the file."""
    check_key(key)
    fileobj = open(path, "rb")  # noqa: SIM115 - ownership passes to the reader
    try:
        return SealedReader(fileobj, key, label=label, owns_file=True)
    except BaseException:
        fileobj.close()
        raise


def read_sealed_bytes(
    path: str | os.PathLike[str], key: bytes | bytearray | memoryview, *, label: str | None = None
) -> bytes:
    """Return the whole verified payload of a (small) sealed file; nothing is returned unless it is intact."""
    with open_sealed(path, key, label=label) as reader:
        return reader.read()
