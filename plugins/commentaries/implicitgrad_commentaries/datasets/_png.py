"""A small PNG decoder on the standard library's zlib, so that image folders (Omniglot) can
be read without adding an imaging dependency.

It decodes non-interlaced PNGs of every colour type and bit depth (PNG specification, ISO/IEC
15948, sections 7-9). Interlaced (Adam7) files are left to Pillow where it is installed.
"""

from __future__ import annotations

import struct
import zlib

import numpy as np

__all__ = ["PNGError", "decode_png", "to_gray"]

_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_CHANNELS = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}


class PNGError(ValueError):
    """The bytes are not a PNG this decoder can read; the message says why."""


def _paeth(a: int, b: int, c: int) -> int:
    p = a + b - c
    pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
    if pa <= pb and pa <= pc:
        return a
    return b if pb <= pc else c


def _unfilter(raw: bytes, height: int, stride: int, bpp: int) -> np.ndarray:
    """Undo the per-row filters (section 9). Sub and Up are vectorized; Average and Paeth
    depend on the byte just reconstructed, so they run byte by byte."""
    if len(raw) < height * (stride + 1):
        raise PNGError(f"image data is {len(raw)} bytes, expected {height * (stride + 1)}")
    rows = np.frombuffer(raw, np.uint8, count=height * (stride + 1)).reshape(height, stride + 1)
    out = np.zeros((height, stride), np.uint8)
    prev = np.zeros(stride, np.uint8)
    pad = (-stride) % bpp
    for r in range(height):
        kind, cur = rows[r, 0], rows[r, 1:].copy()
        if kind == 1:
            lanes = np.concatenate([cur, np.zeros(pad, np.uint8)]).reshape(-1, bpp)
            cur = (np.cumsum(lanes, 0, dtype=np.uint64) % 256).astype(np.uint8).ravel()[:stride]
        elif kind == 2:
            cur = cur + prev
        elif kind in (3, 4):
            line, up = cur.tolist(), prev.tolist()
            for i in range(stride):
                left = line[i - bpp] if i >= bpp else 0
                if kind == 3:
                    line[i] = (line[i] + ((left + up[i]) >> 1)) & 0xFF
                else:
                    corner = up[i - bpp] if i >= bpp else 0
                    line[i] = (line[i] + _paeth(left, up[i], corner)) & 0xFF
            cur = np.array(line, np.uint8)
        elif kind != 0:
            raise PNGError(f"unknown filter type {kind} in row {r}")
        out[r] = cur
        prev = cur
    return out


def decode_png(data: bytes) -> np.ndarray:
    """Decode a PNG to a float32 array `(height, width, channels)` in $[0, 1]$.

    Palette images are expanded to RGB; the channels are otherwise the file's own (grey,
    grey + alpha, RGB or RGBA).
    """
    if not data.startswith(_SIGNATURE):
        raise PNGError("no PNG signature")
    pos, header, palette, idat = len(_SIGNATURE), None, None, []
    while pos + 8 <= len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind, body = data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + length]
        if len(body) != length:
            raise PNGError(f"chunk {kind!r} is truncated")
        if kind == b"IHDR":
            header = struct.unpack(">IIBBBBB", body)
        elif kind == b"PLTE":
            palette = np.frombuffer(body, np.uint8).reshape(-1, 3)
        elif kind == b"IDAT":
            idat.append(body)
        elif kind == b"IEND":
            break
        pos += 12 + length
    if header is None or not idat:
        raise PNGError("missing IHDR or IDAT chunk")
    width, height, depth, color, _, _, interlace = header
    if color not in _CHANNELS or depth not in (1, 2, 4, 8, 16):
        raise PNGError(f"unsupported colour type {color} with bit depth {depth}")
    if interlace:
        return _decode_with_pillow(data)
    channels = _CHANNELS[color]
    bits = channels * depth
    stride = (width * bits + 7) // 8
    try:
        raw = zlib.decompress(b"".join(idat))
    except zlib.error as err:
        raise PNGError(f"corrupt image data ({err})") from None
    rows = _unfilter(raw, height, stride, max(1, bits // 8))
    if depth == 16:
        values = rows.view(">u2").astype(np.float32) / 65535.0
    elif depth == 8:
        values = rows.astype(np.float32)
    else:
        bits_per_row = np.unpackbits(rows, axis=1).reshape(height, -1, depth)
        weights = (1 << np.arange(depth - 1, -1, -1)).astype(np.uint8)
        values = (bits_per_row * weights).sum(-1).astype(np.float32)
    values = values[:, : width * channels].reshape(height, width, channels)
    if color == 3:
        if palette is None:
            raise PNGError("palette image without a PLTE chunk")
        index = values[..., 0].astype(np.intp)
        if index.max(initial=0) >= len(palette):
            raise PNGError("palette index out of range")
        return palette[index].astype(np.float32) / 255.0
    if depth < 16:
        values /= float((1 << depth) - 1)
    return values


def _decode_with_pillow(data: bytes) -> np.ndarray:
    try:
        import io

        from PIL import Image
    except ImportError:
        raise PNGError("interlaced PNG (install Pillow, or save it non-interlaced)") from None
    image = Image.open(io.BytesIO(data))
    mode = {"1": "L", "L": "L", "LA": "LA", "P": "RGB", "I;16": "L"}.get(image.mode, "RGBA")
    array = np.asarray(image.convert(mode), np.float32) / 255.0
    return array[..., None] if array.ndim == 2 else array


def to_gray(image: np.ndarray) -> np.ndarray:
    """`(height, width)` luminance of a decoded image (alpha dropped; ITU-R BT.601 weights)."""
    colour = image[..., :3] if image.shape[-1] >= 3 else image[..., :1]
    if colour.shape[-1] == 1:
        return colour[..., 0]
    return colour @ np.array([0.299, 0.587, 0.114], np.float32)
