"""What every engine is, and how one is found and loaded.

An engine is a model loaded in this process. It knows nothing of HTTP: the API translators turn
wire formats into the request types of the capabilities an engine implements, and the scheduler
decides when engines are loaded and closed. Engine modules import their heavy libraries (torch,
llama_cpp, ...) only when a model is loaded, so `gpustack` starts fast and installs stay à la carte.
"""

from __future__ import annotations

import bisect
import importlib
import threading
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal, Protocol, runtime_checkable

FlashAttention = Literal["auto", "on", "off"]
CacheType = Literal["f16", "q8_0", "q4_0"]
# The keys a model's own KV cache settings have in its manifest's options.
KV_OPTIONS = {"flash_attn": "flash_attn", "cache_type_k": "type_k", "cache_type_v": "type_v"}


@dataclass(frozen=True)
class KvCache:
    """How llama.cpp keeps a context's keys and values: flash attention ("auto", "on", "off") and
    the types of the K and V caches ("f16", or quantized "q8_0" / "q4_0": about a half and a
    quarter of the memory). A quantized V cache needs flash attention, as llama.cpp says when it
    loads: such settings are refused here, where they are made."""

    flash_attn: FlashAttention = "auto"
    type_k: CacheType = "f16"
    type_v: CacheType = "f16"

    def __post_init__(self) -> None:
        if self.flash_attn not in ("auto", "on", "off"):
            raise ValueError(f"flash attention is one of auto, on, off, not '{self.flash_attn}'")
        for which, kind in (("K", self.type_k), ("V", self.type_v)):
            if kind not in ("f16", "q8_0", "q4_0"):
                raise ValueError(f"the {which} cache type is one of f16, q8_0, q4_0, not '{kind}'")
        if self.type_v != "f16" and self.flash_attn == "off":
            raise ValueError(
                f"a quantized V cache ({self.type_v}) needs flash attention: set --flash-attn on or auto, "
                "or keep --cache-type-v f16"
            )

    def over(self, options: dict[str, Any]) -> KvCache:
        """A model's own settings (its manifest's `options`) over these."""
        return replace(self, **{field: options[key] for key, field in KV_OPTIONS.items() if options.get(key)})


RopeScaling = Literal["none", "linear", "yarn"]
# The keys a model's own load settings have in its manifest's options, by Tuning field.
TUNING_OPTIONS = {
    "main_gpu": "main_gpu",
    "tensor_split": "tensor_split",
    "n_batch": "batch_size",
    "n_ubatch": "ubatch_size",
    "mlock": "mlock",
    "mmap": "mmap",
    "rope_scaling": "rope_scaling",
    "rope_freq_base": "rope_freq_base",
    "rope_freq_scale": "rope_freq_scale",
}


@dataclass(frozen=True)
class Tuning:
    """The load settings llama.cpp users tune besides the KV cache and the layers offloaded: the
    GPU that holds a model whole or its small tensors (`main_gpu`), the share of its layers each
    GPU takes (`tensor_split`), the tokens one decode takes at most (`batch_size`) and at once
    (`ubatch_size`), keeping the weights in RAM (`mlock`) or reading them instead of mapping them
    (`mmap` off), and RoPE's scaling and frequencies (0: the model's own), to stretch a context
    past the length the model was trained for. Checked where they are set."""

    main_gpu: int = 0
    tensor_split: tuple[float, ...] = ()
    batch_size: int = 512
    ubatch_size: int = 512
    mlock: bool = False
    mmap: bool = True
    rope_scaling: RopeScaling | None = None
    rope_freq_base: float = 0.0
    rope_freq_scale: float = 0.0

    def __post_init__(self) -> None:
        if self.main_gpu < 0:
            raise ValueError(f"--main-gpu is a device index, not {self.main_gpu}")
        split = tuple(float(x) for x in self.tensor_split)
        if split and (len(split) > 16 or min(split) < 0 or sum(split) <= 0):
            raise ValueError("--tensor-split is up to 16 shares, none negative and not all 0: 3,1 gives 3/4 and 1/4")
        object.__setattr__(self, "tensor_split", split)
        if not 1 <= self.ubatch_size <= self.batch_size <= 65536:
            raise ValueError(
                f"batch sizes take 1 <= --ubatch-size <= --batch-size <= 65536, not {self.ubatch_size} "
                f"and {self.batch_size}"
            )
        if self.rope_scaling not in (None, "none", "linear", "yarn"):
            raise ValueError(f"--rope-scaling is none, linear or yarn, not '{self.rope_scaling}'")
        if self.rope_freq_base < 0 or not 0 <= self.rope_freq_scale <= 1:
            raise ValueError("--rope-freq-base is >= 0 and --rope-freq-scale between 0 and 1 (0: the model's)")

    def over(self, options: dict[str, Any]) -> Tuning:
        """A model's own settings (its manifest's `options`) over these."""
        return replace(self, **{f: options[key] for key, f in TUNING_OPTIONS.items() if options.get(key) is not None})

    @property
    def context_scale(self) -> float:
        """How many times its trained length a model's context may be: 1 / the frequency scale
        when RoPE is stretched (0: the model's own, 1)."""
        return 1.0 / self.rope_freq_scale if self.rope_freq_scale else 1.0


@dataclass(frozen=True)
class LoadSpec:
    """Everything an engine needs to load a model: where its files are and how to run it."""

    name: str
    path: Path
    # What the model is for ("llm", "embedding", ...): an engine may load differently for each.
    categories: tuple[str, ...] = ()
    options: dict[str, Any] = field(default_factory=dict)
    # -1 offloads every layer to the GPU when one is present; 0 keeps the model on the CPU.
    gpu_layers: int = -1
    # CPU threads for engines that choose their own (llama.cpp); None: every core available.
    threads: int | None = None
    # Requests an engine that batches them decodes at once (llama.cpp's slots).
    parallel: int = 1
    # Tokens of context per request slot (llama.cpp); None: the engine's default.
    ctx_size: int | None = None
    # Seconds a request's grammar may take on one token before the request is ended (llama.cpp).
    grammar_budget: float = 1.0
    # llama.cpp's KV cache, for a model that sets none of its own.
    kv_cache: KvCache = field(default_factory=KvCache)
    # RPC servers (HOST:PORT) whose devices take the model's layers before this machine's (llama.cpp).
    rpc: tuple[str, ...] = ()
    # Requests with a seed read their whole prompt, never a cached prefix (llama.cpp).
    seeded_from_scratch: bool = False
    # llama.cpp's other load settings, for a model that sets none of its own.
    tuning: Tuning = field(default_factory=Tuning)


@runtime_checkable
class Engine(Protocol):
    """A loaded model. Optional attributes the server reads: `admits_all` (True: the scheduler
    admits `max_concurrency` requests at once instead of at most the server's `parallel`) and
    `merges_calls` (True: concurrent requests' calls are merged into one engine call by
    `gpustack_cli.runtime.batching`)."""

    # How many requests this loaded model can usefully run at once.
    max_concurrency: int

    def close(self) -> None:
        """Free the model's memory (and GPU memory)."""


@dataclass(frozen=True)
class Choice:
    """One kind of item a structure holds: `before`, then JSON matching `schema`, then `after`."""

    before: str
    schema: dict[str, Any]
    after: str = ""


@dataclass(frozen=True)
class Structure:
    """Output held to a shape: `opening`, then items (each one of `choices`), joined by
    `separator` (one item only when that is None), then `closing`. With a `trigger`, the text is
    free until the trigger appears, and the shape holds from there on: a model's own tool-call
    format, where it may answer in words or call a tool."""

    choices: tuple[Choice, ...]
    opening: str = ""
    closing: str = ""
    separator: str | None = None
    trigger: str | None = None


@dataclass
class Sampling:
    """How to pick each next token; one per request (and per choice)."""

    max_tokens: int
    temperature: float = 0.8
    top_p: float = 0.95
    top_k: int = 40
    min_p: float = 0.05
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repeat_penalty: float = 1.0
    seed: int | None = None
    logit_bias: dict[int, float] = field(default_factory=dict)
    # A JSON schema the output must match (JSON mode, structured output, tool calls); engines
    # enforce it while sampling.
    json_schema: dict[str, Any] | None = None
    # A shape around JSON the output must take instead (a tool call in the model's own format).
    structure: Structure | None = None
    # Special tokens whose text the output shows (a format's markers, which a model's vocabulary
    # may hold as control tokens: those are left out of the text otherwise).
    preserve: tuple[str, ...] = ()
    # None: no log probabilities; k >= 0: the chosen token's and the k most likely.
    logprobs: int | None = None

    @classmethod
    def of(cls, max_tokens: int = 1, **given: Any) -> Sampling:
        """The fields given, and the defaults for those that are None (a request's absent fields):
        every protocol's request turns into sampling through here."""
        return cls(max_tokens=max_tokens, **{name: value for name, value in given.items() if value is not None})


@dataclass(frozen=True)
class Media:
    """An image or audio clip of a prompt, decoded: RGB pixels row by row (`width` x `height`),
    or mono float32 samples at the model's audio rate. `key` names its content (a hash), so the
    same picture sent again is known for the same."""

    kind: Literal["image", "audio"]
    key: str
    data: bytes
    width: int = 0
    height: int = 0


@dataclass(frozen=True)
class Token:
    id: int
    # The token's bytes: a UTF-8 character may span several tokens.
    piece: bytes
    logprob: float | None = None
    top: tuple[tuple[int, float], ...] = ()


@dataclass
class Observed:
    """A histogram of observations (seconds), kept by an engine and exported by the server."""

    bounds: tuple[float, ...]
    counts: list[int] = field(default_factory=list)
    total: float = 0.0

    def __post_init__(self) -> None:
        self.counts = [0] * (len(self.bounds) + 1)

    def observe(self, value: float) -> None:
        self.total += value
        self.counts[bisect.bisect_left(self.bounds, value)] += 1  # the first bound at or above it


@dataclass
class DecodeStats:
    """What an engine that batches requests has done (llama.cpp's decode loop), since it loaded."""

    slots: int
    busy: int = 0
    prompt_tokens: int = 0
    generated_tokens: int = 0
    # Prompt tokens a request did not evaluate because its slot held them already.
    reused_tokens: int = 0
    # Images and audio clips encoded by the model's projector (one found in a slot's cache is not).
    media_encoded: int = 0
    # Tokens proposed by speculative drafting, and those of them the model's own draw confirmed.
    drafted_tokens: int = 0
    accepted_tokens: int = 0
    steps: int = 0
    time_to_first_token: Observed = field(
        default_factory=lambda: Observed((0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0))
    )
    inter_token: Observed = field(
        default_factory=lambda: Observed((0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5))
    )


@runtime_checkable
class Tokenizer(Protocol):
    def tokenize(self, text: str, special: bool = True) -> list[int]:
        """Tokens of `text`; with `special`, BOS is added as the model wants and special tokens parsed."""

    def detokenize(self, tokens: Sequence[int]) -> str: ...


@runtime_checkable
class TextGenerator(Tokenizer, Protocol):
    """Chat and completions: tokens in, a stream of sampled tokens out, one request at a time.
    Optional attributes the text core reads: `name` (for errors), `template_kwargs` (the
    chat template's variables unless a request sets them) and `stop_strings` (the model's own,
    which end its text as its end of turn does)."""

    n_ctx: int
    architecture: str
    chat_template: str | None
    bos_text: str
    eos_text: str

    def piece(self, token: int) -> bytes: ...

    def fim_tokens(self) -> tuple[int, int, int] | None:
        """(prefix, suffix, middle) tokens for fill-in-the-middle, or None where the model has none."""

    def check_schema(self, schema: dict[str, Any]) -> None:
        """Raise InvalidSchema unless `Sampling.json_schema` can be this schema."""

    def generate(self, prompt: Sequence[int], sampling: Sampling, cancel: threading.Event) -> Iterator[Token]:
        """Sampled tokens until an end-of-generation token, `max_tokens`, or `cancel` is set."""


@runtime_checkable
class MediaTokenizer(Protocol):
    """A TextGenerator whose prompts may hold images or audio: a projector is loaded beside the
    model. `modalities` holds "vision" and/or "audio" (empty: text only); the prompt text holds
    `media_marker` where each medium goes, and `tokenize_media` gives the prompt the engine's
    `generate` takes (its length counts the positions the media take)."""

    modalities: tuple[str, ...]
    media_marker: str
    # Samples per second the projector's audio is to be given at (0: it takes no audio).
    audio_rate: int

    def tokenize_media(self, text: str, media: Sequence[Media]) -> list[Any]: ...


@runtime_checkable
class AsyncTextGenerator(TextGenerator, Protocol):
    """A TextGenerator whose tokens can also come to the event loop as they are made, so that
    no thread waits on each request (an engine that decodes many requests in one loop)."""

    def agenerate(self, prompt: Sequence[int], sampling: Sampling, request_id: str) -> AsyncIterator[Token]:
        """As `generate`, under an id (the caller's name for the request); closing the iterator
        ends the request, as `abort(request_id)` does."""

    def abort(self, request_id: str) -> bool:
        """End the requests of that id from outside their readers (their iterators raise
        RequestAborted) and free their slots; False when none runs."""


@runtime_checkable
class Embedder(Tokenizer, Protocol):
    max_input_tokens: int
    dimensions: int
    # Whether vectors may be cut to fewer dimensions (Matryoshka-trained models).
    truncatable: bool

    def token_counts(self, texts: list[str]) -> list[int]:
        """How many tokens the model reads for each text (special tokens included)."""

    def embed(self, texts: list[str]) -> list[list[float]]:
        """One L2-normalised vector per text; texts longer than `max_input_tokens` are truncated."""


@dataclass
class Ranking:
    # One relevance score per document, in the documents' order (higher is more relevant).
    scores: list[float]
    prompt_tokens: int


@runtime_checkable
class Reranker(Protocol):
    def rerank(self, query: str, documents: list[str]) -> Ranking: ...


@runtime_checkable
class Speaker(Protocol):
    """Text to speech: 16-bit mono PCM at `sample_rate`, one chunk per sentence as it is made."""

    sample_rate: int
    voices: list[str]

    def speak(self, text: str, voice: str | None, speed: float) -> Iterator[bytes]: ...


@dataclass(frozen=True)
class Word:
    word: str
    start: float
    end: float


@dataclass(frozen=True)
class Segment:
    id: int
    start: float
    end: float
    text: str
    tokens: list[int]
    temperature: float
    avg_logprob: float
    compression_ratio: float
    no_speech_prob: float
    words: list[Word] = field(default_factory=list)


@dataclass(frozen=True)
class Transcription:
    language: str
    duration: float
    # Produced lazily, as the audio is decoded: iterate to transcribe.
    segments: Iterator[Segment]


class MediaError(ValueError):
    """A prompt's images or audio cannot go into it as given (a marker without its medium, a
    medium the model's projector does not take)."""


class InvalidSchema(ValueError):
    """A JSON schema the engine cannot enforce while sampling; the message says why."""


class AudioError(ValueError):
    """The audio, or what was asked of it, cannot be transcribed; `param` names the field."""

    def __init__(self, message: str, param: str = "file"):
        super().__init__(message)
        self.param = param


@runtime_checkable
class Transcriber(Protocol):
    # Whether the model knows languages other than English (and so can translate into English).
    multilingual: bool

    def transcribe(
        self,
        audio: Any,
        *,
        language: str | None = None,
        prompt: str | None = None,
        temperature: float | None = None,
        translate: bool = False,
        words: bool = False,
        # The longest audio to take, in seconds: longer is an AudioError, found while decoding.
        max_seconds: float | None = None,
    ) -> Transcription: ...


@dataclass
class ImageRequest:
    prompt: str
    width: int
    height: int
    n: int = 1
    steps: int | None = None
    guidance: float | None = None
    negative_prompt: str | None = None
    seed: int | None = None
    # A scheduler name (see the engine's `samplers`), or None for the model's own.
    sampler: str | None = None
    # Edits without a mask: how far from the input image to go (0 to 1).
    strength: float = 0.8
    # Partial images to hand to `on_preview` while denoising (spread over the steps; fewer when
    # there are too few steps).
    previews: int = 0


@runtime_checkable
class ImageGenerator(Protocol):
    default_size: int
    # Denoising steps when a request names none.
    default_steps: int
    # Width and height must be multiples of this.
    multiple: int
    samplers: list[str]

    def generate(
        self,
        request: ImageRequest,
        cancel: threading.Event,
        on_step: Any = None,
        image: Any = None,
        mask: Any = None,
        on_preview: Any = None,
    ) -> list[Any]:
        """PIL images: from text, or edits of `image` (inpainting where `mask` is white).
        `on_preview(index, images)` gets the partial images `request.previews` asks for."""

    def count_tokens(self, text: str) -> int:
        """Tokens of a prompt in the pipeline's text encoder."""


class InvalidTokens(ValueError):
    """Token ids outside the model's vocabulary (a 400 on the wire: never passed to the engine,
    where llama.cpp would abort the whole process)."""


class RequestAborted(RuntimeError):
    """The engine ended a request before its end: aborted by id, or its model unloaded."""


class OutOfMemory(RuntimeError):
    """A model that cannot be loaded in the memory there is, as it is asked to load (its context
    times its slots, say); the message names the memory it needs."""


class EngineUnavailable(RuntimeError):
    """The engine a model needs is not installed (or does not exist in this build)."""


@dataclass(frozen=True)
class EngineInfo:
    module: str
    # The `pip install 'gpustack-cli[EXTRA]'` extra that brings the engine's libraries.
    extra: str


ENGINES: dict[str, EngineInfo] = {
    "llama.cpp": EngineInfo("engines.llama", "llm"),
    "sentence-transformers": EngineInfo("engines.sentence", "embeddings"),
    "diffusers": EngineInfo("engines.diffusion", "images"),
    "faster-whisper": EngineInfo("engines.whisper", "audio"),
    "piper": EngineInfo("engines.piper", "audio"),
    "remote": EngineInfo("gpustack_cli.upstream.pool", "llm"),
}


def load_engine(engine: str, spec: LoadSpec) -> Engine:
    """Import the engine's module and load the model (blocking: call it off the event loop)."""
    info = ENGINES.get(engine)
    if info is None:
        raise EngineUnavailable(f"unknown engine '{engine}' for model '{spec.name}'")
    try:
        module = importlib.import_module(info.module)
    except ModuleNotFoundError as exc:
        if exc.name == info.module:  # only a binary built without the engine lacks our own module
            raise EngineUnavailable(
                f"the {engine} engine is not part of this gpustack binary: build one with it "
                f"(scripts/build_binary.py --engines {info.extra}) or pip install 'gpustack-cli[{info.extra}]'"
            ) from exc
        raise EngineUnavailable(
            f"the {engine} engine needs '{exc.name}', which is not installed: pip install 'gpustack-cli[{info.extra}]'"
        ) from exc
    return module.load(spec)
