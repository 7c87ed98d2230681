"""Every setting of gpustack, with its default, its `GPUSTACK_*` variable and its flag.

Precedence: built-in default < environment variable < command-line flag. The CLI passes its
flags to `Settings.load(**flags)`; nothing else in the code reads the environment for our own
settings (third-party variables such as `HF_ENDPOINT`, `HF_TOKEN` and pip's own are read by the
code that talks to those services).
"""

from __future__ import annotations

import functools
import ipaddress
import os
import re
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, Field, field_validator, model_validator

from engines.base import CacheType, FlashAttention, KvCache, RopeScaling, Tuning
from engines.ggml_devices import rpc_endpoints
from gpustack_cli.core.json_schemas import SchemaLimits
from gpustack_cli.core.limits import Limits
from gpustack_cli.core.types import MediaLimits

ENV_PREFIX = "GPUSTACK_"
DEFAULT_PORT = 11500
DEFAULT_MODELS = ("smollm2", "all-minilm-l6-v2", "whisper-tiny.en", "piper-joe")

_DURATION = re.compile(r"^\s*(-?\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}


def parse_duration(value: str | int | float) -> float:
    """Seconds from '300', '5m', '1h', '-1' (forever) or '0' (at once), as Ollama writes keep_alive."""
    if isinstance(value, (int, float)):
        return -1.0 if value < 0 else float(value)
    match = _DURATION.match(str(value))
    if not match:
        raise ValueError(f"not a duration: {value!r} (use e.g. 300, 5m, 1h, -1 or 0)")
    seconds = float(match.group(1)) * _UNITS[match.group(2)]
    return -1.0 if seconds < 0 else seconds


def split_host(value: str) -> tuple[str, int | None, str | None]:
    """`GPUSTACK_HOST` as Ollama reads `OLLAMA_HOST`: an address, `host:port`, `[v6]:port` or a URL.
    Returns the host, the port if one is named, and the URL clients should use when the value was
    one (an https URL, or one with a path)."""
    text = value.strip()
    try:  # a bare IPv6 address (`::1`) reads as host:port otherwise
        return str(ipaddress.IPv6Address(text)), None, None
    except ValueError:
        pass
    parsed = urlsplit(text if "://" in text else f"//{text}")
    try:
        port = parsed.port
    except ValueError as exc:
        raise ValueError(f"GPUSTACK_HOST: not an address, host:port or URL: {value!r}") from exc
    host = parsed.hostname or "127.0.0.1"
    url = None
    if "://" in text and (parsed.scheme != "http" or parsed.path.strip("/")):
        url = text.rstrip("/")
    if port is None and parsed.scheme == "https":
        port = 443
    return host, port, url


@functools.cache
def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class Settings(BaseModel):
    """All settings. Field `foo_bar` is read from `GPUSTACK_FOO_BAR`."""

    home: Path = Field(default_factory=lambda: Path.home() / ".gpustack")
    host: str = "127.0.0.1"
    port: int = Field(DEFAULT_PORT, ge=0, le=65535)
    # A single key taken from the environment, besides the keys in the store.
    api_key: str | None = None
    insecure_no_auth: bool = False
    # Client commands (ps, stop, run) talk to this server; empty means http://host:port.
    server_url: str = ""

    keep_alive: float = 300.0
    max_loaded_models: int = Field(3, ge=1)
    parallel: int = Field(4, ge=1)
    max_queue: int = Field(64, ge=0)
    preload: list[str] = Field(default_factory=list)
    # Models whose native API the Generic Proxy serves, besides those whose manifest says so.
    generic_proxy: list[str] = Field(default_factory=list)
    gpu_layers: int = -1
    # Context of each request slot of a llama.cpp model, in tokens (a model's own `n_ctx` comes
    # first); unset: the largest, up to the model's trained length, whose KV cache takes at most
    # half the memory free beside its weights (engines.llama_estimate.fitting_context). The KV
    # cache holds it times `parallel` tokens.
    ctx_size: int | None = Field(None, ge=64)
    # CPU threads llama.cpp decodes with (a model's own `n_threads` option comes first); unset:
    # every core this process may use. Physical cores only is often faster on machines with SMT.
    threads: int | None = Field(None, ge=1)
    # A reasoning model's thinking: apart from its answer (auto), or left in the text (none).
    reasoning_format: Literal["auto", "none"] = "auto"
    # Seconds an embedding request waits for others to share its batch; negative: no batching.
    batch_wait: float = Field(0.005, le=1.0)

    # Seconds a remote model's upstream may stay silent (between bytes) before a 504.
    upstream_timeout: float = Field(600.0, gt=0)
    # The client that relays forwarded requests byte for byte: the hand-written one ("raw", the
    # fastest), or aiohttp's session (to compare, or where an upstream trips the raw one).
    relay_client: Literal["raw", "aiohttp"] = "raw"
    # Seconds between health checks of loaded remote models' upstreams (0: none; an upstream that
    # fails a request is still left out of the rotation for a while).
    health_interval: float = Field(10.0, ge=0)
    # Seconds between readings of the model lists of `add-remote --from-server` groups (0: only
    # when added).
    remote_refresh_interval: float = Field(60.0, ge=0)
    max_json_bytes: int = Field(32 * 1024 * 1024, ge=1024)
    max_upload_bytes: int = Field(100 * 1024 * 1024, ge=1024)

    # Limits of one request, checked before a model is loaded or a slot taken (docs/limits.md).
    # Seconds a client may take to send its whole body (a slow sender holds no handler longer).
    body_timeout: float = Field(120.0, gt=0)
    # Parts of a multipart form, and bytes of one text field in it.
    max_form_parts: int = Field(64, ge=1)
    max_form_field_bytes: int = Field(1024 * 1024, ge=1024)
    # Messages of one chat, and characters of all the text one request asks to read or tokenize
    # (messages, prompts, inputs, documents).
    max_messages: int = Field(4096, ge=1)
    # Tokens one answer may generate at most (llama-server's --n-predict); a request that asks
    # for more, or for no limit, gets this many. Unset: as many as the context leaves.
    max_completion_tokens: int | None = Field(None, ge=1)
    max_text_chars: int = Field(2_000_000, ge=1000)
    # Responses one `previous_response_id` conversation may chain (the Responses API).
    max_response_chain: int = Field(1000, ge=1)
    # Seconds of audio one transcription may hold (decoded as it is read, refused past this).
    max_audio_seconds: float = Field(3600.0, gt=0)
    # Choices one request asks for: prompts times n of a legacy completion, n of a chat.
    max_choices: int = Field(128, ge=1)
    # Stop strings of one request, and characters of each (searched for after every token).
    max_stops: int = Field(16, ge=1)
    max_stop_chars: int = Field(1000, ge=1)
    # JSON schemas of response formats and tools: nodes (subschemas, properties, enum values) in
    # all of them, and the largest count a schema may ask repeated (minItems, maxLength, ...).
    max_schema_nodes: int = Field(4000, ge=10)
    max_schema_repeat: int = Field(1000, ge=1)
    # Unbounded repetitions (`*`, `+`) in one `pattern` of a schema: each can match where the
    # others do, and the grammar's work per token grows with them (see docs/limits.md).
    max_pattern_loops: int = Field(10, ge=1)
    # Seconds a request's grammar may take to apply to one token before the request is ended
    # with an error (the other requests on the model wait on it meanwhile).
    grammar_token_budget: float = Field(1.0, gt=0)
    # Images: pixels of an uploaded image (read from its header, before it is decoded), pixels
    # of all the images one request asks for, and those pixels times the denoising steps.
    max_image_pixels: int = Field(4096 * 4096, ge=64 * 64)
    max_request_pixels: int = Field(2 * 1024 * 1024, ge=64 * 64)
    max_image_work: int = Field(1024 * 1024 * 50, ge=64 * 64)
    # llama.cpp's other load settings, for models that set none of their own: the GPU that holds a
    # model whole or its small tensors, each GPU's share of the layers ("3,1"), the tokens one
    # decode takes at most and at once, keeping weights in RAM, mapping the file, and RoPE's
    # scaling and frequencies (0: the model's own) to stretch a context past its trained length.
    main_gpu: int = Field(0, ge=0)
    tensor_split: list[float] = Field(default_factory=list)
    batch_size: int = Field(512, ge=1)
    ubatch_size: int = Field(512, ge=1)
    mlock: bool = False
    mmap: bool = True
    rope_scaling: RopeScaling | None = None
    rope_freq_base: float = Field(0.0, ge=0)
    rope_freq_scale: float = Field(0.0, ge=0, le=1)
    # Requests with a `seed` read their whole prompt instead of a slot's cached prefix: their text
    # then never depends on what ran before them (a cached prefix holds the same values, rounded
    # as the batch that read it rounded them).
    seed_from_scratch: bool = False
    # llama.cpp's KV cache, for models that set none of their own: flash attention, and the types
    # keys and values are kept in (q8_0 about halves the cache; a quantized V needs flash attention).
    flash_attn: FlashAttention = "auto"
    cache_type_k: CacheType = "f16"
    cache_type_v: CacheType = "f16"
    # RPC servers (HOST:PORT, `gpustack rpc-server`) that take the layers of llama.cpp models that
    # name none of their own; a model with RPC servers runs in a process of its own unless
    # `isolate_rpc` is off (an RPC server that stops answering ends the process holding the model).
    rpc: list[str] = Field(default_factory=list)
    isolate_rpc: bool = True
    # The server stops when its standard input ends: a model's child server, whose parent holds
    # the other end, goes with its parent however the parent ends.
    stop_with_stdin: bool = False
    # Images and audio clips in one chat (models that see and hear), and bytes of each one.
    max_media: int = Field(16, ge=1)
    max_media_bytes: int = Field(20 * 1024 * 1024, ge=1024)
    # Whether a chat's `http(s)` image URLs are fetched by the server (from public addresses
    # only, without redirects), and seconds a fetch may take; off: only data URLs and base64.
    allow_image_urls: bool = False
    image_url_timeout: float = Field(10.0, gt=0)

    # Host names a server without keys answers besides loopback and its own addresses (DNS
    # rebinding: see server/origins.py); `*` for any.
    allowed_hosts: list[str] = Field(default_factory=list)
    # Web page origins (`https://app.example`, wildcards allowed, `*` for any) that may call the
    # server from a browser, besides its own pages and loopback ones.
    origins: list[str] = Field(default_factory=list)
    # Seconds a stream may stay silent before a keep-alive is sent in it (0: never).
    sse_keepalive: float = Field(15.0, ge=0)

    # The browser playground at /ui/.
    ui: bool = True
    # How long stored responses of the Responses API are kept (0: forever).
    responses_ttl: float = 30 * 86400.0

    default_models: list[str] = Field(default_factory=lambda: list(DEFAULT_MODELS))
    pull_defaults: bool = True
    ollama_registry: str = "https://registry.ollama.ai"
    log_level: str = "info"
    # The server's event loop: uvloop where it is installed (auto), or asyncio's own (see server.py).
    event_loop: Literal["auto", "uvloop", "asyncio"] = "auto"

    @field_validator("keep_alive", "responses_ttl", mode="before")
    @classmethod
    def _duration(cls, value: Any) -> float:
        return parse_duration(value)

    @field_validator("preload", "default_models", "generic_proxy", "allowed_hosts", "origins", mode="before")
    @classmethod
    def _comma_list(cls, value: Any) -> Any:
        """A comma-separated text, or a list whose items may be such texts (repeated flags)."""
        if isinstance(value, str):
            value = [value]
        if isinstance(value, list):
            return [part.strip() for item in value for part in str(item).split(",") if part.strip()]
        return value

    @field_validator("rpc", mode="before")
    @classmethod
    def _rpc(cls, value: Any) -> Any:
        return rpc_endpoints(value) if isinstance(value, (str, list)) else value

    @field_validator("home", mode="before")
    @classmethod
    def _expand(cls, value: Any) -> Any:
        return Path(value).expanduser() if isinstance(value, (str, Path)) else value

    @field_validator("tensor_split", mode="before")
    @classmethod
    def _shares(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @model_validator(mode="after")
    def _kv_cache(self) -> Settings:
        KvCache(self.flash_attn, self.cache_type_k, self.cache_type_v)  # a ValueError says what to change
        self.tuning  # noqa: B018 (checks them together, as a load will)
        return self

    @property
    def tuning(self) -> Tuning:
        return Tuning(
            main_gpu=self.main_gpu,
            tensor_split=tuple(self.tensor_split),
            batch_size=self.batch_size,
            ubatch_size=self.ubatch_size,
            mlock=self.mlock,
            mmap=self.mmap,
            rope_scaling=self.rope_scaling,
            rope_freq_base=self.rope_freq_base,
            rope_freq_scale=self.rope_freq_scale,
        )

    @property
    def kv_cache(self) -> KvCache:
        return KvCache(self.flash_attn, self.cache_type_k, self.cache_type_v)

    @classmethod
    def load(cls, **flags: Any) -> Settings:
        """Defaults, then `GPUSTACK_*` variables, then the flags that were given (not None)."""
        values: dict[str, Any] = {}
        for name in cls.model_fields:
            raw = os.environ.get(ENV_PREFIX + name.upper())
            if raw is not None and raw != "":
                values[name] = raw
        given = {k: v for k, v in flags.items() if v is not None}
        if "host" in given or "host" in values:
            host, port, url = split_host(str(given.get("host", values.get("host"))))
            values["host"] = given["host"] = host
            if port is not None:
                values.setdefault("port", port)  # a --port flag still wins
            if url is not None:
                values.setdefault("server_url", url)
        values.update(given)
        return cls(**values)

    def environment(self) -> dict[str, str]:
        """These settings as the `GPUSTACK_*` variables that give them (a child server's)."""
        found: dict[str, str] = {}
        for name, value in self:
            if value is None:
                continue
            if isinstance(value, list):
                value = ",".join(map(str, value))
            elif isinstance(value, bool):
                value = "true" if value else "false"
            found[ENV_PREFIX + name.upper()] = str(value)
        return found

    @property
    def limits(self) -> Limits:
        """The limits a request is checked against, on the server and in the CLI alike."""
        schema = SchemaLimits(self.max_schema_nodes, self.max_schema_repeat, self.max_pattern_loops)
        return Limits(
            max_messages=self.max_messages,
            max_text_chars=self.max_text_chars,
            max_stops=self.max_stops,
            max_stop_chars=self.max_stop_chars,
            max_completion_tokens=self.max_completion_tokens,
            schema=schema,
            split_reasoning=self.reasoning_format != "none",
            media=MediaLimits(
                max_media=self.max_media,
                max_media_bytes=self.max_media_bytes,
                max_image_pixels=self.max_image_pixels,
                max_audio_seconds=self.max_audio_seconds,
                allow_urls=self.allow_image_urls,
                url_timeout=self.image_url_timeout,
            ),
        )

    @property
    def url(self) -> str:
        if self.server_url:
            return self.server_url.rstrip("/")
        host = "127.0.0.1" if self.host in ("0.0.0.0", "") else self.host
        host = f"[{host}]" if ":" in host else host
        return f"http://{host}:{self.port}"

    @property
    def client_headers(self) -> dict[str, str]:
        """What client commands (ps, stop, run) send to the server: the key, when there is one."""
        return {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}

    @property
    def loopback_only(self) -> bool:
        return is_loopback(self.host)

    @property
    def models_dir(self) -> Path:
        return self.home / "models"

    @property
    def downloads_dir(self) -> Path:
        return self.home / "downloads"

    @property
    def keys_file(self) -> Path:
        return self.home / "keys.json"

    @property
    def responses_db(self) -> Path:
        return self.home / "responses.db"
