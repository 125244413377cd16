"""Text file objects: ``io.TextIOWrapper``'s behaviour over an async
:class:`~aiouring._files_binary.BinaryFile`.

Decoding, newline translation and ``tell``/``seek`` cookies follow the
documented ``io`` model, so that a text file reads, writes and positions
exactly as the built-in ``open`` does on the same file:

* reading decodes chunks with the codec's incremental decoder, wrapped in
  ``io.IncrementalNewlineDecoder`` for universal newlines (``newline=None``
  translates, ``''`` only splits); a multi-byte character or a ``\\r\\n``
  across two chunks is held back by the decoder until the next chunk;
* writing translates ``\\n`` to ``newline`` (``None``: ``os.linesep``), encodes
  with the incremental encoder, and never writes a BOM in the middle of a
  file;
* ``tell()`` returns an opaque cookie: the byte offset of a point where the
  decoder was empty plus, when the position is inside a decoded chunk, the
  decoder flags, the bytes to feed and the characters to skip from there (the
  same packing as CPython's C implementation, so cookies are plain byte
  offsets whenever the decoder holds nothing). ``seek(cookie)`` rebuilds the decoder state.
"""

from __future__ import annotations

import asyncio
import codecs
import io
import locale
import os
import sys
from typing import Any, Iterable, Optional

from ._files_binary import BinaryFile, _LineReader, _StreamLock

_CHUNK_SIZE = 8192
_UnsupportedOperation = io.UnsupportedOperation
_CancelledError = asyncio.CancelledError
_MASK64 = (1 << 64) - 1
_MASK32 = (1 << 32) - 1


def resolve_encoding(encoding: Optional[str]) -> str:
    """The encoding the built-in open would use."""
    if encoding is None or encoding == "locale":
        if sys.flags.utf8_mode:
            return "utf-8"
        return locale.getpreferredencoding(False)
    return encoding


def check_text_encoding(encoding: str) -> None:
    info = codecs.lookup(encoding)    # LookupError for unknown encodings, as open()
    if not getattr(info, "_is_text_encoding", True):
        raise LookupError(f"{encoding!r} is not a text encoding; use codecs.open() to handle arbitrary codecs")


# Cookie layout of CPython's C TextIOWrapper (a little-endian struct: 64-bit
# start position, 32-bit decoder flags, bytes to feed, chars to skip, 8-bit
# need-EOF), so our cookies equal the built-in file's for the same position.
def _pack_cookie(position: int, dec_flags: int = 0, bytes_to_feed: int = 0, need_eof: bool = False,
                 chars_to_skip: int = 0) -> int:
    return (position | (dec_flags << 64) | (bytes_to_feed << 96) | (chars_to_skip << 128)
            | (int(bool(need_eof)) << 160))


def _unpack_cookie(cookie: int):
    position = cookie & _MASK64
    dec_flags = (cookie >> 64) & _MASK32
    bytes_to_feed = (cookie >> 96) & _MASK32
    chars_to_skip = (cookie >> 128) & _MASK32
    need_eof = bool((cookie >> 160) & 0xFF)
    return position, dec_flags, bytes_to_feed, need_eof, chars_to_skip


class TextFile(_LineReader[str]):
    """An open text file. Built by :func:`aiouring.open`; not by users."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        raise TypeError("use aiouring.open() to open files")

    @classmethod
    def _create(cls, buffer: BinaryFile, encoding: str, errors: str, newline: Optional[str],
                line_buffering: bool, mode: str) -> "TextFile":
        self = object.__new__(cls)
        self.buffer = buffer
        self.encoding = encoding
        self.errors = errors
        self.mode = mode
        self.line_buffering = line_buffering
        self._readuniversal = not newline
        self._readtranslate = newline is None
        self._readnl = newline
        self._writetranslate = newline != ""
        self._writenl = newline or os.linesep
        self._encoder = None
        self._decoder = None
        self._decoded = ""
        self._used = 0
        # (decoder flags, bytes fed) at the start of the current decoded chunk.
        self._snapshot: Optional[tuple] = None
        self._b2cratio = 0.0
        # Text operations of several tasks on one file run one at a time, as
        # BinaryFile's do (decoded characters are shared state).
        self._lock = _StreamLock()
        # Both made now, as the built-in does: a seek then sets the decoder's
        # state (for UTF-16: "byte order known") instead of a fresh decoder
        # later demanding a BOM in the middle of the file.
        if buffer.readable():
            self._get_decoder()
        if buffer.writable():
            self._get_encoder()
            if buffer.seekable() and buffer._pos != 0:
                self._encoder.setstate(0)   # appending (or an fd at an offset): no BOM mid-file
        return self

    # ---- plumbing ---------------------------------------------------------

    @property
    def name(self) -> Any:
        return self.buffer.name

    @property
    def closed(self) -> bool:
        return self.buffer.closed

    @property
    def newlines(self) -> Any:
        return getattr(self._decoder, "newlines", None) if self._decoder else None

    def fileno(self) -> int:
        return self.buffer.fileno()

    def readable(self) -> bool:
        return self.buffer.readable()

    def writable(self) -> bool:
        return self.buffer.writable()

    def seekable(self) -> bool:
        return self.buffer.seekable()

    def isatty(self) -> bool:
        return self.buffer.isatty()

    def __repr__(self) -> str:
        return f"<aiouring TextFile name={self.name!r} mode={self.mode!r} encoding={self.encoding!r}>"

    def _check_closed(self) -> None:
        if self.buffer.closed:
            raise ValueError("I/O operation on closed file.")

    def _get_encoder(self):
        self._encoder = codecs.getincrementalencoder(self.encoding)(self.errors)
        return self._encoder

    def _get_decoder(self):
        decoder = codecs.getincrementaldecoder(self.encoding)(self.errors)
        if self._readuniversal:
            decoder = io.IncrementalNewlineDecoder(decoder, self._readtranslate)
        self._decoder = decoder
        return decoder

    def _set_decoded(self, chars: str) -> None:
        self._decoded = chars
        self._used = 0

    def _take_decoded(self, n: Optional[int] = None) -> str:
        offset = self._used
        if n is None:
            chars = self._decoded[offset:]
        else:
            chars = self._decoded[offset:offset + n]
        self._used += len(chars)
        return chars

    def _reset_read_state(self) -> None:
        self._set_decoded("")
        self._snapshot = None

    async def _read_chunk(self, size_hint: int = 0) -> bool:
        """Decode one more chunk; False at EOF. As the built-in, a read of
        many characters reads them in one chunk (``size_hint`` scaled by the
        bytes per character seen so far)."""
        decoder = self._decoder or self._get_decoder()
        dec_buffer, dec_flags = decoder.getstate()
        chunk = _CHUNK_SIZE
        if size_hint > 0:
            chunk = max(chunk, int(max(self._b2cratio, 1.0) * size_hint))
        raw = await self.buffer.read1(chunk)
        eof = not raw
        chars = decoder.decode(raw, eof)
        self._set_decoded(chars)
        self._b2cratio = len(raw) / len(chars) if chars else 0.0
        self._snapshot = (dec_flags, dec_buffer + raw)
        # As the built-in: the final decode may still produce characters (a
        # held-back "\r"); that chunk is not EOF yet, the next (empty) one is.
        return not eof or bool(chars)

    def _check_readable(self) -> None:
        if not self.buffer.readable():
            raise _UnsupportedOperation("not readable")

    # ---- reading ----------------------------------------------------------

    async def read(self, size: Optional[int] = -1) -> str:
        self._check_closed()
        self._check_readable()
        size = -1 if size is None else size.__index__()
        async with self._lock:
            return await self._undoable(self._read(size))

    async def readline(self, size: Optional[int] = -1) -> str:
        self._check_closed()
        self._check_readable()
        size = -1 if size is None else size.__index__()
        async with self._lock:
            return await self._undoable(self._readline(size))

    async def _undoable(self, coro):
        """Run a read; if it is cancelled half-way, put the text layer, its
        decoder and the binary stream back as they were, so that no character
        is lost or read twice (the same promise as BinaryFile's). Errors (a
        decoding error, an OSError) leave the state as the built-in file
        leaves it: advanced past what was read."""
        buffer = self.buffer
        decoder = self._decoder
        saved = (self._decoded, self._used, self._snapshot, self._b2cratio,
                 decoder.getstate() if decoder is not None else None,
                 buffer._pos, buffer._rbuf, buffer._roff)
        try:
            return await coro
        except _CancelledError:
            (self._decoded, self._used, self._snapshot, self._b2cratio, dec_state,
             buffer._pos, buffer._rbuf, buffer._roff) = saved
            if decoder is not None and dec_state is not None:
                decoder.setstate(dec_state)
            raise

    async def _read(self, size: int) -> str:
        decoder = self._decoder or self._get_decoder()
        if size < 0:
            result = self._take_decoded() + decoder.decode(await self.buffer.read(), final=True)
            self._reset_read_state()
            return result
        result = self._take_decoded(size)
        eof = False
        while len(result) < size and not eof:
            eof = not await self._read_chunk(size - len(result))
            result += self._take_decoded(size - len(result))
        return result

    async def _readline(self, size: int) -> str:
        if self._decoder is None:
            self._get_decoder()
        # The order of the built-in (C) TextIOWrapper: get decoded characters
        # first (reading a chunk if there are none), then look for the line
        # end, then apply the size limit. So even readline(0) reads ahead.
        line = ""
        start = 0
        while True:
            if self._used >= len(self._decoded):
                while await self._read_chunk():
                    if self._decoded:
                        break
                if not self._decoded:
                    self._reset_read_state()     # EOF
                    return line
            line += self._take_decoded()
            end = self._line_end(line, start)
            if end >= 0:
                break
            start = max(len(line) - 1, 0) if not self._readuniversal else len(line)
            if size >= 0 and len(line) >= size:
                end = size
                break
        if size >= 0 and end > size:
            end = size
        self._used -= len(line) - end       # give back what follows the line
        return line[:end]

    def _line_end(self, line: str, start: int) -> int:
        """Index just past the first line ending at or after ``start``, or -1."""
        if self._readtranslate:
            nl = line.find("\n", start)
            return nl + 1 if nl >= 0 else -1
        if self._readuniversal:
            # \r, \n or \r\n; the newline decoder never ends a chunk with a
            # \r it has not seen the next character of (except at EOF).
            nl = line.find("\n", start)
            cr = line.find("\r", start)
            if cr < 0:
                return nl + 1 if nl >= 0 else -1
            if nl == cr + 1:
                return cr + 2
            if 0 <= nl < cr:
                return nl + 1
            return cr + 1
        # A fixed newline (possibly "\r\n" split across chunks: `start` was
        # moved back by one character for that).
        pos = line.find(self._readnl, start)
        return pos + len(self._readnl) if pos >= 0 else -1

    # ---- writing ----------------------------------------------------------

    async def write(self, s: str) -> int:
        async with self._lock:
            return await self._write(s)

    async def _write(self, s: str) -> int:
        self._check_closed()
        if not isinstance(s, str):
            raise TypeError(f"write() argument must be str, not {type(s).__name__}")
        if not self.buffer.writable():
            raise _UnsupportedOperation("not writable")
        length = len(s)
        haslf = (self._writetranslate or self.line_buffering) and "\n" in s
        if haslf and self._writetranslate and self._writenl != "\n":
            s = s.replace("\n", self._writenl)
        encoder = self._encoder or self._get_encoder()
        await self.buffer.write(encoder.encode(s))
        if self.line_buffering and (haslf or "\r" in s):
            await self.buffer.flush()
        self._reset_read_state()
        if self._decoder is not None:
            self._decoder.reset()
        return length

    async def writelines(self, lines: Iterable[Any]) -> None:
        for line in lines:
            await self.write(line)

    async def flush(self) -> None:
        self._check_closed()
        await self.buffer.flush()

    # ---- positioning ------------------------------------------------------

    async def tell(self) -> int:
        async with self._lock:
            return await self._tell()

    async def _tell(self) -> int:
        self._check_closed()
        if not self.buffer.seekable():
            raise _UnsupportedOperation("underlying stream is not seekable")
        await self.buffer.flush()
        position = await self.buffer.tell()
        decoder = self._decoder
        if decoder is None or self._snapshot is None:
            return position
        dec_flags, fed = self._snapshot
        position -= len(fed)
        skip_chars = self._used
        if skip_chars == 0:
            return _pack_cookie(position, dec_flags)
        saved = decoder.getstate()
        try:
            return self._reconstruct(decoder, position, dec_flags, fed, skip_chars)
        finally:
            decoder.setstate(saved)

    def _reconstruct(self, decoder, position: int, dec_flags: int, fed: bytes, skip_chars: int) -> int:
        """Find the nearest point at or before the read position where the
        decoder holds no bytes, and how to get from there to the position."""
        # First guess a byte count from the chunk's bytes-per-char ratio and
        # walk back until decoding that prefix leaves the decoder empty and
        # does not pass the position: one decode call for fixed-width codecs.
        skip_bytes = int(self._b2cratio * skip_chars)
        step = 1
        while skip_bytes > 0:
            decoder.setstate((b"", dec_flags))
            n = len(decoder.decode(fed[:skip_bytes]))
            if n <= skip_chars:
                pending, flags = decoder.getstate()
                if not pending:
                    dec_flags = flags
                    skip_chars -= n
                    break
                skip_bytes -= len(pending)
                step = 1
            else:
                skip_bytes -= step
                step *= 2
        else:
            skip_bytes = 0
            decoder.setstate((b"", dec_flags))
        start_pos = position + skip_bytes
        start_flags = dec_flags
        if skip_chars == 0:
            return _pack_cookie(start_pos, start_flags)
        # Then feed one byte at a time, moving the start point forward each
        # time the decoder is empty, until enough characters came out.
        bytes_fed = 0
        chars = 0
        need_eof = False
        for i in range(skip_bytes, len(fed)):
            bytes_fed += 1
            chars += len(decoder.decode(fed[i:i + 1]))
            pending, flags = decoder.getstate()
            if not pending and chars <= skip_chars:
                start_pos += bytes_fed
                skip_chars -= chars
                start_flags, bytes_fed, chars = flags, 0, 0
            if chars >= skip_chars:
                break
        else:
            chars += len(decoder.decode(b"", final=True))
            need_eof = True
            if chars < skip_chars:
                raise OSError("can't reconstruct logical file position")
        return _pack_cookie(start_pos, start_flags, bytes_fed, need_eof, skip_chars)

    async def seek(self, cookie: int, whence: int = 0) -> int:
        async with self._lock:
            return await self._seek(cookie, whence)

    async def _seek(self, cookie: int, whence: int) -> int:
        self._check_closed()
        if not self.buffer.seekable():
            raise _UnsupportedOperation("underlying stream is not seekable")
        if whence == os.SEEK_CUR:
            if cookie != 0:
                raise _UnsupportedOperation("can't do nonzero cur-relative seeks")
            whence = os.SEEK_SET
            cookie = await self._tell()
        elif whence == os.SEEK_END:
            if cookie != 0:
                raise _UnsupportedOperation("can't do nonzero end-relative seeks")
            await self.flush()
            position = await self.buffer.seek(0, os.SEEK_END)
            self._reset_read_state()
            if self._decoder is not None:
                self._decoder.reset()
            self._reset_encoder(position)
            return position
        if whence != os.SEEK_SET:
            raise ValueError(f"invalid whence ({whence}, should be {os.SEEK_SET}, {os.SEEK_CUR} or {os.SEEK_END})")
        if cookie < 0:
            raise ValueError(f"negative seek position {cookie!r}")
        await self.flush()
        start_pos, dec_flags, bytes_to_feed, need_eof, skip_chars = _unpack_cookie(cookie)
        await self.buffer.seek(start_pos)
        self._reset_read_state()
        if cookie == 0 and self._decoder is not None:
            self._decoder.reset()
        elif self._decoder is not None or dec_flags or skip_chars:
            self._decoder = self._decoder or self._get_decoder()
            self._decoder.setstate((b"", dec_flags))
            self._snapshot = (dec_flags, b"")
        if skip_chars:
            raw = await self.buffer.read(bytes_to_feed)
            self._set_decoded(self._decoder.decode(raw, need_eof))
            self._snapshot = (dec_flags, raw)
            if len(self._decoded) < skip_chars:
                raise OSError("can't restore logical file position")
            self._used = skip_chars
        self._reset_encoder(cookie)
        return cookie

    def _reset_encoder(self, position: int) -> None:
        if self._encoder is None and position == 0:
            return
        encoder = self._encoder or self._get_encoder()
        if position == 0:
            encoder.reset()
        else:
            encoder.setstate(0)

    async def truncate(self, pos: Optional[int] = None) -> int:
        self._check_closed()
        async with self._lock:
            await self.flush()
            if pos is None:
                pos = await self._tell()
            return await self.buffer.truncate(pos)

    async def fsync(self) -> None:
        await self.buffer.fsync()

    async def fdatasync(self) -> None:
        await self.buffer.fdatasync()

    async def stat(self) -> os.stat_result:
        return await self.buffer.stat()

    async def close(self) -> None:
        await self.buffer.close()

    async def __aenter__(self) -> "TextFile":
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
