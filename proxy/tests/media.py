"""Real media files for tests, made and read with the standard library: PCM WAVs and PNGs."""

from __future__ import annotations

import functools
import math
import struct
import zlib

WAV_RATE = 8000  # frames per second of `wav_bytes` unless told
WAV_SAMPLE_BYTES = 2  # 16-bit signed little-endian PCM
WAV_HEADER_BYTES = 44  # RIFF + fmt + data chunk headers, as `wav_bytes` writes them
TONE_HZ = 440  # an integer, so one second of samples repeats seamlessly
TONE_AMPLITUDE = 1000  # of 32767: a quiet tone
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
PNG_RGB = (32, 96, 160)  # the one colour every pixel of `png_bytes` has


def wav_bytes(seconds: float, *, rate: int = WAV_RATE, channels: int = 1) -> bytes:
    """A 16-bit PCM WAV of `round(seconds * rate)` frames (a quiet tone on every channel).

    Its duration is exactly `seconds` whenever `seconds * rate` is whole (90.0 s at 8000 Hz:
    720000 frames); the file is `WAV_HEADER_BYTES + frames * channels * 2` bytes long.
    """
    if seconds < 0 or rate < 1 or channels < 1:
        raise ValueError("seconds must be >= 0, rate and channels >= 1")
    frames = round(seconds * rate)
    data = _tone_frames(rate, channels, frames)
    byte_rate = rate * channels * WAV_SAMPLE_BYTES
    header = b"RIFF" + struct.pack("<I", 36 + len(data)) + b"WAVE"
    header += b"fmt " + struct.pack(
        "<IHHIIHH", 16, 1, channels, rate, byte_rate, channels * WAV_SAMPLE_BYTES, 16
    )
    return header + b"data" + struct.pack("<I", len(data)) + data


def _tone_frames(rate: int, channels: int, frames: int) -> bytes:
    # One second of a whole-hertz tone ends where it began: build it once and repeat it,
    # so that minutes of audio cost a bytes multiplication, not a sine per sample.
    second = b"".join(
        struct.pack("<h", round(TONE_AMPLITUDE * math.sin(2 * math.pi * TONE_HZ * i / rate)))
        * channels
        for i in range(rate)
    )
    whole, rest = divmod(frames, rate)
    return second * whole + second[: rest * channels * WAV_SAMPLE_BYTES]


def wav_duration(data: bytes, *, size: int | None = None) -> float | None:
    """The seconds a WAV's samples last, or None if `data` does not start like a WAV.

    That is the length of its `data` chunk (as declared, but no more than the file holds)
    over the byte rate its `fmt ` chunk states. `data` may be only the file's first bytes
    (up to and including the `data` chunk's header) when `size`, the whole file's length,
    is given.
    """
    total = len(data) if size is None else size
    if len(data) < 12 or data[:4] != b"RIFF" or data[8:12] != b"WAVE":
        return None
    byte_rate = None
    offset = 12
    while offset + 8 <= len(data):
        chunk_id = data[offset : offset + 4]
        (chunk_size,) = struct.unpack("<I", data[offset + 4 : offset + 8])
        body = offset + 8
        if chunk_id == b"fmt " and body + 12 <= len(data):
            (byte_rate,) = struct.unpack("<I", data[body + 8 : body + 12])
        elif chunk_id == b"data":
            if not byte_rate:
                return None
            return min(chunk_size, max(0, total - body)) / byte_rate
        offset = body + chunk_size + (chunk_size & 1)  # chunks are padded to even sizes
    return None


@functools.lru_cache(maxsize=16)
def png_bytes(width: int, height: int) -> bytes:
    """A valid 8-bit RGB PNG of `width` x `height` pixels, all `PNG_RGB`."""
    if width < 1 or height < 1:
        raise ValueError("width and height must be >= 1")
    row = b"\x00" + bytes(PNG_RGB) * width  # filter type 0, then the pixels
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        PNG_SIGNATURE
        + _png_chunk(b"IHDR", header)
        + _png_chunk(b"IDAT", zlib.compress(row * height))
        + _png_chunk(b"IEND", b"")
    )


def _png_chunk(kind: bytes, body: bytes) -> bytes:
    crc = zlib.crc32(kind + body)
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", crc)


def png_size(data: bytes) -> tuple[int, int] | None:
    """`(width, height)` from a PNG's IHDR chunk, or None if `data` is not a PNG."""
    if len(data) < 24 or data[:8] != PNG_SIGNATURE or data[12:16] != b"IHDR":
        return None
    width, height = struct.unpack(">II", data[16:24])
    return width, height
