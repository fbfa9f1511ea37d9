"""What decoding one image may cost, judged from its headers before any pixel is decoded.

Pillow's own guard counts pixels only. Two kinds of file get past that cheaply:

* a progressive JPEG is decoded scan by scan over ONE full-resolution coefficient buffer, so its CPU
  time grows with the number of scans (each ~5 ms at 50 Mpx) while each scan can be a few dozen bytes:
  :func:`jpeg_layout` counts the scans (SOS markers) by walking the marker segments the way libjpeg
  does, and the caller refuses more than :data:`MAX_JPEG_SCANS`;
* a JPEG, PNG or GIF made of a million empty segments, chunks or sub-blocks costs seconds of
  Python-level header parsing in Pillow before any pixel: :func:`jpeg_layout` counts JPEG markers,
  :func:`container_parts` PNG chunks and GIF blocks, and the caller refuses files with more than a
  photo ever has, before Pillow parses them;
* the memory a decode needs depends on the format and mode, not only on width x height (a 16-bit grey
  PNG, a lossless WebP, an RGBA PNG): :func:`decode_bytes` estimates the peak bytes of the arrays that
  are alive at once, and the caller refuses more than :data:`MAX_DECODE_BYTES`.

Pure functions of bytes and header fields; only the standard library.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# Every photo in clothing-dataset-small and -extra has 1 scan (baseline); libjpeg's progressive scripts
# write 6 (grey), 10 (colour) or 18 (CMYK). Each scan is one more pass over the whole coefficient
# buffer (~3.6 ms at 49 Mpx on our CPU), so 64 bounds a JPEG at a quarter second of scans.
MAX_JPEG_SCANS = 64
# Marker segments up to the end of the image. A photo has a few dozen (APPn for EXIF, ICC and XMP in
# 64 KB pieces, tables, one per scan); a file of 4-byte empty comments has a million, and every one
# costs Python-level parsing in Pillow (~1.3 us) and here. Checked before Pillow sees the file.
MAX_JPEG_MARKERS = 1000
# PNG chunks up to IEND, and GIF blocks and extension sub-blocks before the first frame's pixels:
# Pillow parses each in Python (~3 us a PNG chunk, ~0.3 us a GIF sub-block), so a 10 MB file of
# empty ones took seconds. Encoders write IDAT in 8-64 KB chunks: 10 MB is ~1300 of them.
MAX_CONTAINER_PARTS = 10_000
# Peak bytes of the arrays alive at once while one image is decoded and converted to RGB. 50 Mpx of
# baseline JPEG never comes close (draft() decodes it at 1/8 scale); this is what refuses a 50 Mpx
# 16-bit or RGBA PNG, a huge lossless WebP and a huge progressive JPEG.
MAX_DECODE_BYTES = 128 * 1024 * 1024

# SOF markers: baseline/extended/progressive/lossless, Huffman or arithmetic; C4, C8 and CC are not SOFs.
_SOF_MARKERS = frozenset({0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF})
_PROGRESSIVE_SOF = frozenset({0xC2, 0xC6, 0xCA, 0xCE})
_SOS, _EOI = 0xDA, 0xD9
# Markers without a length field: TEM, RST0-7, SOI, EOI.
_STANDALONE = frozenset({0x01, *range(0xD0, 0xD8), 0xD8, 0xD9})
# The next marker after entropy-coded data: 0xFF (maybe repeated, as fill) followed by anything but
# 0x00 (a stuffed byte), 0xFF or an RSTn (restart markers belong to the scan).
_NEXT_MARKER = re.compile(rb"\xff+(?=[^\x00\xd0-\xd7\xff])")
_ANY_MARKER = re.compile(rb"\xff+(?=[^\x00\xff])")


@dataclass(frozen=True)
class JpegLayout:
    markers: int
    scans: int
    progressive: bool
    # (horizontal, vertical) sampling factor of each component, from the frame header.
    sampling: tuple[tuple[int, int], ...]
    width: int
    height: int

    def coefficient_bytes(self) -> int:
        """Bytes of libjpeg's whole-image coefficient buffer: 64 int16 per 8x8 block of each component.

        Only multi-scan images (progressive, or baseline split over several scans) keep one; a single-scan
        baseline JPEG is decoded one MCU row at a time.
        """
        if not self.sampling or (self.scans <= 1 and not self.progressive):
            return 0
        h_max = max(h for h, _ in self.sampling)
        v_max = max(v for _, v in self.sampling)
        mcu_cols = -(-self.width // (8 * h_max))
        mcu_rows = -(-self.height // (8 * v_max))
        blocks = sum(mcu_cols * h * mcu_rows * v for h, v in self.sampling)
        return blocks * 64 * 2


def jpeg_layout(
    data: bytes, max_scans: int = MAX_JPEG_SCANS, max_markers: int = MAX_JPEG_MARKERS
) -> JpegLayout:
    """Markers, scans and frame header of the first image in ``data`` (a JPEG), up to its first EOI.

    Stops at ``max_scans + 1`` scans or ``max_markers + 1`` markers: that is enough to refuse. Never
    raises: a malformed stream just ends the walk, and the decoder reports it. Garbage between
    segments is skipped as libjpeg skips it, so scans cannot hide behind it.
    """
    markers, scans, progressive, sampling, width, height = 0, 0, False, (), 0, 0
    pos, end = 2, len(data)  # after SOI
    while pos < end and scans <= max_scans and markers <= max_markers:
        found = _ANY_MARKER.search(data, pos)
        if found is None:
            break
        pos = found.end()
        marker = data[pos]
        pos += 1
        markers += 1
        if marker in _STANDALONE:
            if marker == _EOI:
                break
            continue
        if pos + 2 > end:
            break
        length = int.from_bytes(data[pos : pos + 2], "big")
        segment = data[pos + 2 : pos + length]
        pos += length
        if marker in _SOF_MARKERS and len(segment) >= 6:
            height = int.from_bytes(segment[1:3], "big")
            width = int.from_bytes(segment[3:5], "big")
            count = segment[5]
            components = segment[6 : 6 + 3 * count]
            sampling = tuple((c >> 4, c & 0x0F) for c in components[1::3])
            progressive = marker in _PROGRESSIVE_SOF
        elif marker == _SOS:
            scans += 1
            found = _NEXT_MARKER.search(data, pos)  # skip the scan's entropy-coded data
            if found is None:
                break
            pos = found.start()
    return JpegLayout(markers, scans, progressive, sampling, width, height)


def container_parts(data: bytes, limit: int = MAX_CONTAINER_PARTS) -> int:
    """PNG chunks, or GIF blocks and extension sub-blocks before the first frame; 0 for other data.

    Stops at ``limit + 1``. Never raises: a malformed file ends the walk and the decoder reports it.
    """
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return _png_chunks(data, limit)
    if data[:6] in (b"GIF87a", b"GIF89a"):
        return _gif_parts(data, limit)
    return 0


def _png_chunks(data: bytes, limit: int) -> int:
    count, pos, end = 0, 8, len(data)
    while pos + 8 <= end and count <= limit:
        length = int.from_bytes(data[pos : pos + 4], "big")
        count += 1
        if data[pos + 4 : pos + 8] == b"IEND":
            break
        pos += 12 + length  # length, type, data, CRC
    return count


def _gif_parts(data: bytes, limit: int) -> int:
    pos, end = 13, len(data)  # header and logical screen descriptor
    if end > 10 and data[10] & 0x80:
        pos += 3 << ((data[10] & 0x07) + 1)  # global colour table
    count = 0
    while pos < end and count <= limit:
        count += 1
        if data[pos] != 0x21:  # an image descriptor (the first frame), the trailer, or garbage
            break
        pos += 2  # introducer and label, then sub-blocks until an empty one
        while pos < end and count <= limit:
            size = data[pos]
            pos += 1 + size
            count += 1
            if size == 0:
                break
    return count


# Bytes per pixel of Pillow's storage for each mode: multi-band 8-bit modes take 4 bytes a pixel.
_MODE_BYTES = {"1": 1, "L": 1, "P": 1, "I;16": 2, "I;16B": 2, "I;16L": 2, "I;16N": 2, "I": 4, "F": 4}
# Extra full-size copies a decoder makes on top of the image it fills, measured with
# bench/bombs.py's per-format cases (peak RSS growth / pixels, rounded up): Pillow's WebP
# plugin holds libwebp's canvas, libwebp's previous-frame copy and the frame as a Python bytes object.
_DECODER_COPIES = {"WEBP": 3}


def mode_bytes(mode: str) -> int:
    return _MODE_BYTES.get(mode, 4)


def decode_bytes(
    fmt: str | None,
    mode: str,
    size: tuple[int, int],
    *,
    alpha: bool,
    rotated: bool = False,
    coefficient_bytes: int = 0,
) -> int:
    """Estimated peak bytes to decode an image of ``size`` (after draft) in ``mode`` and make it RGB.

    ``alpha``: composited on white (needs an RGB canvas next to the decoded image); ``rotated``: an
    EXIF orientation is applied (one more RGB copy); ``coefficient_bytes``: a JPEG's coefficient
    buffer (:meth:`JpegLayout.coefficient_bytes`), alive while it decodes.
    """
    pixels = size[0] * size[1]
    decoded = pixels * mode_bytes(mode)
    decoding = coefficient_bytes + decoded + pixels * 4 * _DECODER_COPIES.get(fmt or "", 0)
    if mode == "RGB" and not alpha:
        converting = decoded
    elif mode.startswith("I") or mode == "F":
        converting = decoded + pixels * (1 + 1 + 4)  # 8-bit grey array, its image, then RGB
    else:
        converting = decoded + pixels * 4  # the RGB image (or canvas) next to the decoded one
    rotating = pixels * 4 * 2 if rotated else 0
    return max(decoding, converting, rotating)
