"""Image+text calibration files: JSONL, one sample a line, ``{"text": "...", "image": "data:image/png;base64,..."}``.

Images are embedded as data URIs, so the calibration file is one fetched file under the fetch's size cap. The
file is user data: nothing is unpickled, every size is capped before the work it would cost (the base64 length
before decoding, the image header's width and height before Pillow decodes any pixel), and a bad file is a
``CalibrationError`` naming the line. ``text`` is required (it may be empty), ``image`` optional (a line
without it is a text-only sample).
"""

from __future__ import annotations

import base64
import binascii
import io
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from presso.compression.errors import CalibrationError
from presso.compression.io.calibration import jsonl_sample

MAX_IMAGES = 256  # images in one calibration file
MAX_IMAGE_BYTES = 4 * 1024 * 1024  # one image, decoded from base64 (the encoded file bytes, not the pixels)
MAX_IMAGE_SIDE = 4096  # width and height, in pixels
MAX_TEXT_CHARS = 1 << 20  # the text of one line
MAX_LINE_CHARS = (MAX_IMAGE_BYTES // 3 + 1) * 4 + MAX_TEXT_CHARS + 256  # one line: a full-size image and its text
FORMATS = {"png": "PNG", "jpeg": "JPEG", "jpg": "JPEG", "webp": "WEBP", "gif": "GIF", "bmp": "BMP"}
_DATA_URI = re.compile(r"data:image/([a-z]+);base64,", re.IGNORECASE)


@dataclass
class Sample:
    text: str
    image: bytes | None  # the encoded image (PNG, JPEG, ...) or None for a text-only line
    fmt: str | None  # Pillow's format name the data URI declares
    line: int


def has_images(path: Path) -> bool:
    """Whether ``path`` is a JSONL file that may hold images (a cheap test: ``read_samples`` decides)."""
    if path.suffix.lower() != ".jsonl":
        return False
    with path.open("rb") as f:
        tail = b""
        while chunk := f.read(1 << 20):
            if b'"image"' in tail + chunk:
                return True
            tail = chunk[-8:]
    return False


def _image_bytes(value: Any, where: str) -> tuple[bytes, str]:
    if not isinstance(value, str):
        raise CalibrationError(f"{where}: 'image' must be a data URI string (data:image/png;base64,...)")
    m = _DATA_URI.match(value)
    if m is None or m.group(1).lower() not in FORMATS:
        raise CalibrationError(f"{where}: 'image' must be a data URI of an image "
                               f"(data:image/<{'|'.join(sorted(FORMATS))}>;base64,...), got {value[:40]!r}")
    payload = value[m.end():]
    if len(payload) // 4 * 3 > MAX_IMAGE_BYTES + 2:  # before decoding: base64 holds 3 bytes per 4 characters
        raise CalibrationError(f"{where}: the image is over {MAX_IMAGE_BYTES} bytes (the limit of one image)")
    try:
        data = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise CalibrationError(f"{where}: the image's base64 is invalid") from exc
    if len(data) > MAX_IMAGE_BYTES:
        raise CalibrationError(f"{where}: the image is {len(data)} bytes, over the limit of {MAX_IMAGE_BYTES}")
    return data, FORMATS[m.group(1).lower()]


def read_samples(path: Path, limit: int | None = None) -> list[Sample]:
    """The file's samples (the first ``limit`` lines with content). Every line is checked, the image count of
    the whole file too; images are not decoded here (``decode_image``)."""
    samples: list[Sample] = []
    images = 0
    with path.open("r", encoding="utf-8", errors="replace") as f:
        for n, line in enumerate(iter(lambda: f.readline(MAX_LINE_CHARS + 1), ""), 1):
            where = f"{path.name}:{n}"
            if len(line) > MAX_LINE_CHARS:  # read no further than the cap: never a whole huge line in memory
                raise CalibrationError(f"{where}: the line is over {MAX_LINE_CHARS} characters")
            if not line.strip():
                continue
            obj = jsonl_sample(line, where)
            if len(obj["text"]) > MAX_TEXT_CHARS:
                raise CalibrationError(f"{where}: the text is over {MAX_TEXT_CHARS} characters")
            if set(obj) - {"text", "image"}:
                raise CalibrationError(f"{where}: unknown fields {sorted(set(obj) - {'text', 'image'})} "
                                       "(a line is {\"text\": ..., \"image\": \"data:image/...;base64,...\"})")
            image = fmt = None
            if obj.get("image") is not None:
                images += 1
                if images > MAX_IMAGES:
                    raise CalibrationError(f"{path.name}: more than {MAX_IMAGES} images (the limit of one file)")
                if limit is None or len(samples) < limit:
                    image, fmt = _image_bytes(obj["image"], where)
            if limit is None or len(samples) < limit:
                samples.append(Sample(text=obj["text"], image=image, fmt=fmt, line=n))
    if not samples:
        raise CalibrationError(f"{path.name}: no samples")
    return samples


def decode_image(sample: Sample, source: str) -> Any:
    """The sample's image as an RGB ``PIL.Image``: the header's format and size are checked before decoding."""
    try:
        from PIL import Image, UnidentifiedImageError
    except ImportError as exc:  # pragma: no cover - the engine install has Pillow (transformers' image processors)
        raise CalibrationError("image calibration needs Pillow (pip install pillow)") from exc
    assert sample.image is not None
    where = f"{source}:{sample.line}"
    try:
        img = Image.open(io.BytesIO(sample.image), formats=sorted(set(FORMATS.values())))
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise CalibrationError(f"{where}: not a readable image ({', '.join(sorted(set(FORMATS.values())))})") from exc
    w, h = img.size
    if w < 1 or h < 1 or w > MAX_IMAGE_SIDE or h > MAX_IMAGE_SIDE:
        raise CalibrationError(f"{where}: the image is {w}x{h} pixels; at most {MAX_IMAGE_SIDE}x{MAX_IMAGE_SIDE}")
    try:
        img.load()
        return img.convert("RGB")
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        raise CalibrationError(f"{where}: the image could not be decoded: {exc}") from exc
