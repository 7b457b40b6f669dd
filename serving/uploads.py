"""The types of uploads as BentoML routes receive them: the client's file name and the contents.

BentoML treats a parameter whose type is a `PurePath` subclass as a multipart file field (in its
OpenAPI schema too), but only the standard path classes get its `FileSchema`, which reads every
upload whole into memory and writes it to a temporary file on the event loop before the handler
runs: ~1 ms of CPU per 0.4 MB clip here, and for a long recording a copy of the whole file in RAM
and a third copy on disk. `AudioUpload` validates itself instead and keeps the file as the multipart
parser spooled it (on disk beyond 1 MB): a clip is decoded from there a block at a time, so a
request's memory is a block and the model's window whatever the upload's size (reading it into
bytes first cost the whole upload again in RAM: 50 MB per request at the default limit).
"""

from __future__ import annotations

from pathlib import Path, PurePosixPath
from typing import Any, BinaryIO

from pydantic import GetCoreSchemaHandler, GetJsonSchemaHandler
from pydantic_core import core_schema
from starlette.datastructures import UploadFile


class _Upload(PurePosixPath):
    """A multipart file field BentoML hands over as it is, validated by `_validate`."""

    @classmethod
    def _validate(cls, value: Any) -> _Upload:
        raise NotImplementedError

    @classmethod
    def __get_pydantic_core_schema__(cls, source: Any, handler: GetCoreSchemaHandler) -> core_schema.CoreSchema:
        return core_schema.no_info_plain_validator_function(
            cls._validate, serialization=core_schema.plain_serializer_function_ser_schema(lambda u: u.filename)
        )

    @classmethod
    def __get_pydantic_json_schema__(cls, schema: core_schema.CoreSchema, handler: GetJsonSchemaHandler) -> dict:
        # As BentoML's FileSchema describes a file field (its clients upload "file" fields as files).
        if handler.mode == "validation":
            return {"type": "file", "format": "binary"}
        return {"type": "string", "format": "binary"}


class AudioUpload(_Upload):
    """An uploaded file left where the multipart parser put it: `filename` (as the client named it)
    and `file` (seekable; in memory up to 1 MB, on disk beyond), decoded where it lies."""

    filename: str
    file: BinaryIO

    def __new__(cls, filename: str, file: BinaryIO) -> AudioUpload:
        upload = super().__new__(cls, PurePosixPath(filename or "upload").name or "upload")
        upload.filename, upload.file = filename, file
        return upload

    @classmethod
    def _validate(cls, value: Any) -> AudioUpload:
        if isinstance(value, AudioUpload):
            return value
        if isinstance(value, UploadFile):
            return cls(value.filename or "", value.file)
        if isinstance(value, (str, Path)):  # an in-process caller's file
            path = Path(value)
            return cls(path.name, path.open("rb"))
        raise ValueError("expected an uploaded file")
