"""The bodies of `extes serve`'s OpenAI-compatible API as pydantic models (FastChat's and vLLM's shape).

A request is validated once, here, with OpenAI's own ranges (temperature 0-2, top_p 0-1, penalties -2..2,
at most 4 stop strings). What the server does not implement is refused with a 400 naming the parameter
(`param`) and a `code`, never accepted and ignored: tools and function calling, `response_format` other
than `{"type": "text"}`, `logprobs`/`top_logprobs`, `logit_bias`, presence/frequency penalties other
than 0, `n` other than 1, audio and the like, and any key OpenAI does not define (vLLM's
`repetition_penalty` is the one extension taken). `developer` (OpenAI's newer name for `system`) is a
system message. An assistant message may carry `strategy` (the server's own extension, see
extes.models.pool).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

MAX_STOP_STRINGS = 4  # OpenAI's limit


class ProtocolError(Exception):
    """A request OpenAI's API would refuse, or one this server does not implement: HTTP 400 by default."""

    def __init__(self, message: str, code: str, param: str | None = None, status: int = 400,
                 type_: str = "invalid_request_error"):
        super().__init__(message)
        self.message, self.code, self.param, self.status, self.type = message, code, param, status, type_

    def body(self) -> dict[str, Any]:
        return ErrorResponse(error=ErrorInfo(message=self.message, type=self.type, param=self.param,
                                             code=self.code)).model_dump()


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


# ---------------------------------------------------------------------------------------------- requests


class TextPart(_Strict):
    type: Literal["text"]
    text: str


class ChatMessage(_Strict):
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextPart]
    strategy: str | None = None  # extes: the strategy of an earlier assistant turn

    def text(self) -> str:
        return self.content if isinstance(self.content, str) else "".join(p.text for p in self.content)

    def for_pool(self) -> dict[str, str]:
        out = {"role": "system" if self.role == "developer" else self.role, "content": self.text()}
        if self.role == "assistant" and self.strategy:
            out["strategy"] = self.strategy
        return out


class StreamOptions(_Strict):
    include_usage: bool = False
    include_obfuscation: bool | None = None  # the SDK may send it; it changes nothing here


# Parameters OpenAI defines that this server refuses unless they hold their no-op value.
_UNSUPPORTED: dict[str, str] = {
    "tools": "tools and function calling are not supported",
    "tool_choice": "tools and function calling are not supported",
    "parallel_tool_calls": "tools and function calling are not supported",
    "functions": "function calling is not supported",
    "function_call": "function calling is not supported",
    "logit_bias": "logit_bias is not supported",
    "audio": "audio output is not supported",
    "modalities": "only text output is supported",
    "prediction": "predicted outputs are not supported",
    "web_search_options": "web search is not supported",
    "reasoning_effort": "these models do not reason; reasoning_effort is not supported",
    "verbosity": "verbosity is not supported",
    "service_tier": "service tiers are not supported",
    "metadata": "stored completions are not supported",
    "prompt_cache_key": "prompt_cache_key is not supported",
    "safety_identifier": "safety_identifier is not supported",
}


class ChatCompletionRequest(_Strict):
    model: str = Field(min_length=1)
    messages: list[ChatMessage] = Field(min_length=1)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, ge=0, le=1)
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    n: int | None = Field(default=None, ge=1, le=128)
    stream: bool = False
    stream_options: StreamOptions | None = None
    stop: str | list[str] | None = None
    seed: int | None = None
    presence_penalty: float | None = Field(default=None, ge=-2, le=2)
    frequency_penalty: float | None = Field(default=None, ge=-2, le=2)
    repetition_penalty: float | None = Field(default=None, gt=0)  # vLLM's extension
    logprobs: bool | None = None
    top_logprobs: int | None = Field(default=None, ge=0, le=20)
    response_format: dict[str, Any] | None = None
    store: bool | None = None
    user: str | None = None  # an end-user id for abuse monitoring upstream; never stored or logged here
    # defined by OpenAI, refused below unless absent (see _UNSUPPORTED)
    tools: Any = None
    tool_choice: Any = None
    parallel_tool_calls: Any = None
    functions: Any = None
    function_call: Any = None
    logit_bias: Any = None
    audio: Any = None
    modalities: Any = None
    prediction: Any = None
    web_search_options: Any = None
    reasoning_effort: Any = None
    verbosity: Any = None
    service_tier: Any = None
    metadata: Any = None
    prompt_cache_key: Any = None
    safety_identifier: Any = None

    @field_validator("stop")
    @classmethod
    def _stop(cls, value: str | list[str] | None) -> list[str] | None:
        if value is None:
            return None
        stops = [value] if isinstance(value, str) else value
        if len(stops) > MAX_STOP_STRINGS:
            raise ValueError(f"at most {MAX_STOP_STRINGS} stop sequences, got {len(stops)}")
        if any(s == "" for s in stops):
            raise ValueError("a stop sequence must not be empty")
        return stops or None

    def refuse_unsupported(self) -> None:
        """Raise ProtocolError for the first parameter set to something this server does not do."""
        for name, reason in _UNSUPPORTED.items():
            value = getattr(self, name)
            if value is None or (name == "parallel_tool_calls" and value is False):
                continue
            if name == "tool_choice" and value == "none":
                continue
            if name in {"tools", "functions", "logit_bias", "metadata"} and not value:
                continue
            raise ProtocolError(f"{reason} (got `{name}`)", "unsupported_parameter", name)
        if self.n not in (None, 1):
            raise ProtocolError("only n=1 is supported", "unsupported_parameter", "n")
        if self.logprobs:
            raise ProtocolError("logprobs are not supported by this server", "unsupported_parameter", "logprobs")
        if self.top_logprobs:
            raise ProtocolError("top_logprobs needs logprobs, which this server does not support",
                                "unsupported_parameter", "top_logprobs")
        for name in ("presence_penalty", "frequency_penalty"):
            if getattr(self, name):
                raise ProtocolError(f"{name} is not supported (use repetition_penalty)", "unsupported_parameter",
                                    name)
        if self.response_format is not None and self.response_format != {"type": "text"}:
            raise ProtocolError("only response_format {\"type\": \"text\"} is supported (no JSON mode or schema)",
                                "unsupported_parameter", "response_format")
        if self.store:
            raise ProtocolError("stored completions are not supported", "unsupported_parameter", "store")
        if self.stream_options is not None and not self.stream:
            raise ProtocolError("stream_options needs stream: true", "invalid_value", "stream_options")

    def settings_override(self) -> dict[str, Any]:
        """The arm's generation settings this request overrides (names of GenerationSettings)."""
        out: dict[str, Any] = {}
        tokens = self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens
        for key, value in (("max_new_tokens", tokens), ("temperature", self.temperature), ("top_p", self.top_p),
                           ("seed", self.seed), ("repetition_penalty", self.repetition_penalty)):
            if value is not None:
                out[key] = value
        return out

    def pool_messages(self) -> list[dict[str, str]]:
        return [m.for_pool() for m in self.messages]


_CODES = {"missing": "missing_required_parameter", "extra_forbidden": "unknown_parameter",
          "greater_than_equal": "decimal_below_min_value", "greater_than": "decimal_below_min_value",
          "less_than_equal": "decimal_above_max_value", "less_than": "decimal_above_max_value",
          "too_short": "invalid_value", "too_long": "invalid_value", "literal_error": "invalid_value",
          "value_error": "invalid_value"}


def _param(loc: tuple) -> str:
    """('messages', 0, 'role') -> 'messages[0].role'; pydantic's union branch tags (`str`, `list[str]`,
    `function-after[...]`) are dropped."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif not str(part).isidentifier() or part in {"str", "int", "float", "bool"}:
            continue
        else:
            out += f".{part}" if out else str(part)
    return out


def parse_request(body: Any) -> ChatCompletionRequest:
    """Validate a decoded JSON body; ProtocolError (400) names the first bad parameter."""
    if not isinstance(body, dict):
        raise ProtocolError("the request body must be a JSON object", "invalid_body")
    try:
        request = ChatCompletionRequest.model_validate(body)
    except ValidationError as exc:
        err = _most_telling(exc.errors(include_url=False))
        param = _param(tuple(err["loc"]))
        if err["type"] == "extra_forbidden":
            raise ProtocolError(f"unrecognized request argument: {param}", "unknown_parameter", param) from None
        if param.endswith(".role") and err["type"] == "literal_error":
            raise ProtocolError(f"{param} must be one of ['system', 'developer', 'user', 'assistant'], got "
                                f"{err.get('input')!r}", "invalid_value", param) from None
        reason = err["msg"].removeprefix("Value error, ")
        if err["type"] == "too_short":
            reason = "must not be empty"
        raise ProtocolError(f"invalid `{param}`: {reason}", _CODES.get(err["type"], "invalid_type"), param) from None
    request.refuse_unsupported()
    return request


def _most_telling(errors: list[dict]) -> dict:
    """pydantic reports one error per union branch; prefer a range or literal error over a type error."""
    for err in errors:
        if err["type"] in _CODES:
            return err
    return errors[0]


# --------------------------------------------------------------------------------------------- responses


class ErrorInfo(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(BaseModel):
    error: ErrorInfo


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int = 0
    owned_by: str = "extes"
    strategies: bool = False  # extes: replies carry a `strategy` field


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str
    strategy: str | None = None


class Choice(BaseModel):
    index: int = 0
    message: AssistantMessage
    finish_reason: Literal["stop", "length"]
    logprobs: None = None
    strategy: str | None = None


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[Choice]
    usage: Usage


class Delta(BaseModel):
    role: Literal["assistant"] | None = None
    content: str | None = None


class ChunkChoice(BaseModel):
    index: int = 0
    delta: Delta
    finish_reason: Literal["stop", "length"] | None = None
    logprobs: None = None
    strategy: str | None = None


class ChatCompletionChunk(BaseModel):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChunkChoice]
    usage: Usage | None = None
