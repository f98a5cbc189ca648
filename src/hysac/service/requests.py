"""Request parsing for the service: a JSON or multipart body into a validated schema plus uploads, the service
limits, text and ``k`` checks, and bounded image decoding (header-checked pixel budgets before anything is
decoded, each upload reduced to the model's input crop as soon as it is decoded)."""

from __future__ import annotations

import io
import json
import warnings
from dataclasses import asdict, dataclass
from typing import Any

from fastapi import Request
from pydantic import BaseModel, ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile

from ..errors import InputError
from ..inputs import text_problem
from .errors import ApiError, pydantic_details
from .middleware import MB

__all__ = ["Limits", "Upload", "parse_body", "check_text", "check_k", "ImageDecoder", "one_query"]


@dataclass(frozen=True)
class Limits:
    """What one request may cost: body bytes, inputs per ``/classify``, ``k``, text length, decoded pixels per
    upload and per request, queued requests, single queries per batched model call."""

    max_upload_bytes: int = 8 * MB
    max_batch: int = 16
    max_k: int = 100
    max_text_chars: int = 10_000
    max_image_pixels: int = 25_000_000
    max_request_pixels: int = 100_000_000
    max_pending: int = 1024
    coalesce: int = 64

    def __post_init__(self) -> None:
        c = self.coalesce
        if isinstance(c, bool) or int(c) != c or c < 1:
            raise InputError(f"coalesce must be a positive integer, got {c!r}")
        for name, value in asdict(self).items():
            object.__setattr__(self, name, int(value))

    def to_dict(self) -> dict[str, int]:
        return asdict(self)


@dataclass
class Upload:
    """One uploaded file of a multipart body."""

    field: str
    filename: str
    content_type: str | None
    data: bytes


async def _json_body(request: Request) -> dict[str, Any]:
    raw = await request.body()
    if not raw.strip():
        raise ApiError(400, "empty_body", "empty request body: send a JSON object")
    try:
        data = json.loads(raw)
    except UnicodeDecodeError:
        raise ApiError(400, "malformed_json", "malformed JSON body: not UTF-8") from None
    except json.JSONDecodeError as e:
        raise ApiError(400, "malformed_json", f"malformed JSON body: {e.msg} at line {e.lineno} column {e.colno}") \
            from None
    except (ValueError, RecursionError) as e:
        raise ApiError(400, "malformed_json", f"malformed JSON body: {type(e).__name__}") from None
    if not isinstance(data, dict):
        raise ApiError(422, "invalid_input", f"the JSON body must be an object, got {type(data).__name__}")
    return data


async def _form_body(request: Request, limits: Limits, list_fields: tuple[str, ...],
                     max_files: int) -> tuple[dict[str, Any], list[Upload]]:
    try:
        form = await request.form(max_files=max_files, max_fields=limits.max_batch + 16,
                                  max_part_size=max(1 * MB, limits.max_text_chars * 4))
    except (ValueError, KeyError, AssertionError) as e:  # malformed bodies the parser did not map to 400
        raise ApiError(400, "malformed_form", f"malformed form body: {e}") from None
    data: dict[str, Any] = {}
    uploads: list[Upload] = []
    try:
        for key, value in form.multi_items():
            if isinstance(value, UploadFile):
                uploads.append(Upload(key, value.filename or key, value.content_type, await value.read()))
            elif value == "":
                continue  # an empty form field means "not given"
            elif key in list_fields:
                data.setdefault(key, []).append(value)
            elif key in data:
                raise ApiError(422, "invalid_input", f"form field {key!r} given more than once")
            else:
                data[key] = value
    finally:
        await form.close()
    return data, uploads


async def parse_body(request: Request, schema: type[BaseModel], limits: Limits, *,
                     list_fields: tuple[str, ...] = (), max_files: int = 1) -> tuple[Any, list[Upload]]:
    """A JSON object or a multipart / urlencoded form → ``(schema instance, uploads)``. ``list_fields``: form
    fields that may repeat (collected into a list). Malformed bodies → 400, wrong content type → 415, invalid
    values → 422."""
    media = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    uploads: list[Upload] = []
    if media == "application/json" or media.endswith("+json"):
        data = await _json_body(request)
    elif media in ("multipart/form-data", "application/x-www-form-urlencoded"):
        data, uploads = await _form_body(request, limits, list_fields, max_files)
    else:
        raise ApiError(415, "unsupported_media_type",
                       f"unsupported content type {media or '(none)'!r}: send application/json, or "
                       "multipart/form-data for image uploads")
    try:
        body = schema.model_validate(data)
    except ValidationError as e:
        msg, details = pydantic_details(e)
        raise ApiError(422, "invalid_input", msg, details) from None
    return body, uploads


def check_text(text: str, what: str, limits: Limits) -> str:
    """Empty, too long, lone surrogates, control characters: refused as ``hysac classify --text`` refuses them
    (:func:`hysac.inputs.text_problem`)."""
    problem = text_problem(text, limits.max_text_chars)
    if problem is not None:
        raise ApiError(422, problem[0], f"{what} {problem[1]}")
    return text


def check_k(k: int, limits: Limits, lo: int = 1) -> int:
    if not lo <= k <= limits.max_k:
        raise ApiError(422, "invalid_input", f"k must be between {lo} and {limits.max_k}, got {k}")
    return k


def one_query(body: Any, uploads: list[Upload], limits: Limits) -> tuple[str, str | None, Upload | None]:
    """Validate a single text-or-image query (``body.text`` or one upload) → ``(modality, text, upload)``."""
    if len(uploads) > 1:
        raise ApiError(422, "invalid_input", f"upload one image query, not {len(uploads)}")
    if body.text is not None and uploads:
        raise ApiError(422, "invalid_input", "give a text or an image query, not both")
    if uploads:
        return "image", None, uploads[0]
    if body.text is None:
        raise ApiError(422, "empty_query", "empty query: give 'text' or upload an image")
    return "text", check_text(body.text, "query text", limits), None


class ImageDecoder:
    """Uploads → RGB images under the request's pixel budgets. ``spec``: the model's
    :class:`~hysac.images.PixelSpec` (``None`` when the backbone declares none); when the model reads only a square
    centre crop of its input size, each upload is kept as that crop (a few hundred KB) as soon as it is decoded."""

    def __init__(self, spec: Any, limits: Limits):
        self.spec = spec
        self.limits = limits
        self.keep_crop = spec is not None and spec.crop[0] == spec.crop[1] == int(spec.size)

    @staticmethod
    def header_size(up: Upload) -> tuple[int, int]:
        """The header size of an upload, without decoding it (0x0 when it cannot be opened: decode says why)."""
        from PIL import Image

        try:
            with Image.open(io.BytesIO(up.data)) as im:
                return im.size
        except Exception:  # noqa: BLE001 - decode reports the reason
            return 0, 0

    def decode(self, up: Upload):
        """One upload → RGB image (or its model input crop); 413 over the pixel limit, 422 when not an image."""
        from PIL import Image, UnidentifiedImageError

        name = up.filename[:120]
        if not up.data:
            raise ApiError(422, "invalid_image", f"upload {name!r} is empty")
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                with Image.open(io.BytesIO(up.data)) as im:
                    return self._reduce(im, name)
        except ApiError:
            raise
        except UnidentifiedImageError:
            raise ApiError(422, "invalid_image", f"upload {name!r} is not a recognised image format") from None
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
            raise ApiError(413, "image_too_large", f"refusing upload {name!r}: {e}") from None
        except Exception as e:  # noqa: BLE001 - PIL raises many types on corrupt data; all are bad input
            raise ApiError(422, "invalid_image",
                           f"upload {name!r} is a corrupt or truncated image ({type(e).__name__}: "
                           f"{' '.join(str(e).split())[:200]})") from None

    def _reduce(self, im, name: str):
        from ..images import open_reduced

        w, h = im.size
        if w * h > self.limits.max_image_pixels:
            raise ApiError(413, "image_too_large",
                           f"upload {name!r} is {w}x{h} pixels; the limit is {self.limits.max_image_pixels} pixels")
        try:
            rgb = open_reduced(im, f"upload {name!r}")
        except InputError as e:
            raise ApiError(422, "invalid_image", str(e)) from None
        return self.spec.resize_crop(rgb) if self.keep_crop else rgb

    def decode_all(self, uploads: list[Upload]) -> list:
        """Check the request's decoded-pixel budget from the headers, then decode one upload at a time (each
        reduced to the model's input before the next is decoded)."""
        total = sum(w * h for w, h in map(self.header_size, uploads))
        if total > self.limits.max_request_pixels:
            raise ApiError(413, "image_too_large",
                           f"the {len(uploads)} uploads hold {total} pixels together; the limit is "
                           f"{self.limits.max_request_pixels} decoded pixels per request")
        return [self.decode(u) for u in uploads]

    async def __call__(self, uploads: list[Upload]) -> list:
        """:meth:`decode_all` off the event loop."""
        return await run_in_threadpool(self.decode_all, uploads)
