"""Validate our raw bodies against the official openai package's own typed models, strictly.

The openai package ships a pydantic model for every response and stream event, generated from
OpenAI's OpenAPI document. They are validated from JSON in strict mode: a missing required
field, a value of the wrong type or an enum value the model does not list fails. (The models
accept fields they do not declare, as clients must, so extra fields pass.) The few shapes the
package has no model for (the error body, the models list) are written here in the same way.
"""

from __future__ import annotations

import functools
import json
from typing import Any, Literal

import pydantic
from openai.types import (
    Completion,
    CreateEmbeddingResponse,
    ImageEditCompletedEvent,
    ImageEditPartialImageEvent,
    ImageGenCompletedEvent,
    ImageGenPartialImageEvent,
    ImagesResponse,
    Model,
)
from openai.types.audio import Transcription, TranscriptionVerbose
from openai.types.chat import ChatCompletion, ChatCompletionChunk
from openai.types.responses import Response, ResponseItemList, ResponseStreamEvent
from openai.types.shared import ErrorObject


class ErrorResponse(pydantic.BaseModel):
    error: ErrorObject


class ListModelsResponse(pydantic.BaseModel):
    object: Literal["list"]
    data: list[Model]


# The names are those of the schemas in OpenAI's OpenAPI document.
MODELS: dict[str, type[pydantic.BaseModel]] = {
    "ErrorResponse": ErrorResponse,
    "ListModelsResponse": ListModelsResponse,
    "Model": Model,
    "CreateChatCompletionResponse": ChatCompletion,
    "CreateChatCompletionStreamResponse": ChatCompletionChunk,
    "CreateCompletionResponse": Completion,
    "CreateEmbeddingResponse": CreateEmbeddingResponse,
    "CreateTranscriptionResponseJson": Transcription,
    "CreateTranscriptionResponseVerboseJson": TranscriptionVerbose,
    "ImagesResponse": ImagesResponse,
    "ImageGenPartialImageEvent": ImageGenPartialImageEvent,
    "ImageGenCompletedEvent": ImageGenCompletedEvent,
    "ImageEditPartialImageEvent": ImageEditPartialImageEvent,
    "ImageEditCompletedEvent": ImageEditCompletedEvent,
    "Response": Response,
    "ResponseStreamEvent": ResponseStreamEvent,  # type: ignore[dict-item]
    "ResponseItemList": ResponseItemList,
}


@functools.cache
def _adapter(schema_name: str) -> pydantic.TypeAdapter[Any]:
    return pydantic.TypeAdapter(MODELS[schema_name])


def validate(instance: Any, schema_name: str) -> None:
    """Raise pydantic.ValidationError unless `instance` is a valid `schema_name` for the openai
    package's own model of it."""
    _adapter(schema_name).validate_json(json.dumps(instance), strict=True)
