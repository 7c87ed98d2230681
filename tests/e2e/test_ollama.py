"""Ollama's API with its real clients: the official `ollama` Python package, ollama-js under
node, and LangChain's `ChatOllama` and `OllamaEmbeddings`, against `gpustack serve` with an API
key sent as a header, on the real default models."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import ollama
import pytest

from tests.support.gguf_writer import with_metadata
from tests.support.harness import CACHE, ROOT, ServerProcess, clean_env, gpustack, pull_as

KEY = "ollama-test-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Get the current weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}
# A ChatML template that thinks, as Qwen3's does: `think` on opens a <think> section, off closes it.
THINKING_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message.role }}\n{{ message.content }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n"
    "{% if enable_thinking is defined and enable_thinking is false %}<think>\n\n</think>\n\n"
    "{% else %}<think>\n{% endif %}{% endif %}"
)


@pytest.fixture(scope="module")
def fim_model(models_home: Path) -> str:
    """SmolLM2's weights with fill-in-the-middle tokens named in its metadata (no small model on
    the package index has them): three of its own control tokens."""
    target = CACHE / "tiny-fim.gguf"
    if not target.is_file():
        source = next((models_home / "models" / "smollm2").rglob("*.gguf"))
        fim = {"tokenizer.ggml.fim_pre_token_id": 3, "tokenizer.ggml.fim_suf_token_id": 4}
        with_metadata(source, target, {**fim, "tokenizer.ggml.fim_mid_token_id": 5})
    return pull_as(models_home, target, "tiny-fim")


@pytest.fixture(scope="module")
def thinking_model(models_home: Path, tmp_path_factory: pytest.TempPathFactory) -> str:
    """SmolLM2 under a chat template with a thinking section (a copy sharing its files)."""
    env = clean_env(GPUSTACK_HOME=str(models_home))
    if not (models_home / "models" / "tiny-think").is_dir():
        assert gpustack("cp", "smollm2", "tiny-think", env=env).returncode == 0
    template = tmp_path_factory.mktemp("template") / "think.jinja"
    template.write_text(THINKING_TEMPLATE)
    result = gpustack("model", "set", "tiny-think", "--chat-template", str(template), env=env)
    assert result.returncode == 0, result.stderr
    return "tiny-think"


@pytest.fixture(scope="module")
def server(models_home: Path, fim_model: str, thinking_model: str) -> Iterator[ServerProcess]:
    # Seeded requests read their whole prompt: a seeded answer's length (no early end of turn) then
    # does not depend on the prefix an earlier test left in a slot.
    env = {"GPUSTACK_API_KEY": KEY, "GPUSTACK_SEED_FROM_SCRATCH": "true"}
    with ServerProcess(models_home, "--no-pull", env=env) as running:
        yield running


@pytest.fixture(scope="module")
def client(server: ServerProcess) -> ollama.Client:
    return ollama.Client(host=server.url, headers=AUTH, timeout=300)


def test_version_root_list_and_show(server: ServerProcess, client: ollama.Client) -> None:
    version = httpx.get(server.url + "/api/version").json()["version"]  # no key needed, as Ollama's
    assert re.fullmatch(r"\d+\.\d+\.\d+", version)
    assert httpx.get(server.url + "/", headers={"Accept": "*/*"}).text == "Ollama is running"
    assert httpx.head(server.url + "/").status_code == 200
    listed = {m.model: m for m in client.list().models}
    assert {"smollm2", "all-minilm-l6-v2"} <= set(listed)
    assert listed["smollm2"].details.format == "gguf" and listed["smollm2"].details.quantization_level == "Q4_1"
    assert listed["smollm2"].size > 50_000_000 and len(listed["smollm2"].digest) == 64
    shown = client.show("smollm2:latest")  # clients add the tag Ollama assumes
    assert {"completion", "tools"} <= set(shown.capabilities) and "thinking" not in shown.capabilities
    assert shown.modelinfo["llama.context_length"] == 8192 and shown.modelinfo["general.architecture"] == "llama"
    assert shown.details.family == "llama" and shown.details.parameter_size == "135M"
    assert "im_start" in shown.template and shown.parameters is not None and shown.license == "apache-2.0"
    assert client.show("all-minilm-l6-v2").capabilities == ["embedding"]
    assert "thinking" in client.show("tiny-think").capabilities
    assert "insert" in client.show("tiny-fim").capabilities


def test_chat_plain_streamed_and_in_a_schema(client: ollama.Client) -> None:
    answer = client.chat(
        model="smollm2",
        messages=[{"role": "user", "content": "Say hello."}],
        options={"num_predict": 8, "temperature": 0},  # greedy: its answer runs past 8 tokens
    )
    assert answer.done and answer.message.role == "assistant" and answer.message.content
    assert answer.eval_count == 8 and answer.done_reason == "length"
    assert answer.prompt_eval_count > 5 and answer.total_duration >= answer.eval_duration > 0
    parts = list(
        client.chat(
            model="smollm2",
            messages=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Count to five."}],
            options={"num_predict": 10, "temperature": 0.2, "seed": 3},
            stream=True,
        )
    )
    assert all(not p.done for p in parts[:-1]) and parts[-1].done and parts[-1].eval_count == 10
    assert "".join(p.message.content for p in parts).strip()
    schema = {
        "type": "object",
        "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
        "required": ["name", "age"],
    }
    shaped = client.chat(
        model="smollm2",
        messages=[{"role": "user", "content": "A person, as JSON."}],
        format=schema,
        options={"num_predict": 80},
    )
    person = json.loads(shaped.message.content)
    assert isinstance(person["name"], str) and isinstance(person["age"], int)
    # "json": an object from the first token (cut where num_predict ends it).
    loose = client.chat(
        model="smollm2", messages=[{"role": "user", "content": "JSON"}], format="json", options={"num_predict": 20}
    )
    assert loose.message.content.lstrip().startswith("{")


def test_a_tool_round_trip(client: ollama.Client) -> None:
    """A call with its arguments as an object, then its result in a `tool` turn. Small models call
    tools at whim: the conversation shows one call made, and seeds are tried until the model makes
    the next."""
    conversation = [
        {"role": "user", "content": "What is the weather in Rome?"},
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [{"function": {"name": "get_weather", "arguments": {"city": "Rome"}}}],
        },
        {"role": "tool", "content": "cloudy, 18C", "tool_name": "get_weather"},
        {"role": "assistant", "content": "It is cloudy in Rome, 18C."},
        {"role": "user", "content": "What is the weather in Paris?"},
    ]
    called = None
    for seed in range(8):
        answer = client.chat(
            model="gemma3-270m",
            messages=conversation,
            tools=[WEATHER],
            options={"num_predict": 60, "temperature": 0.2, "seed": seed},
        )
        if answer.message.tool_calls:
            called = answer.message
            break
    assert called is not None, "no seed made the model call the tool"
    call = called.tool_calls[0]
    assert call.function.name == "get_weather" and isinstance(call.function.arguments, dict)
    assert "city" in call.function.arguments
    after = client.chat(
        model="gemma3-270m",
        messages=[*conversation, called, {"role": "tool", "content": "sunny, 25C", "tool_name": "get_weather"}],
        tools=[WEATHER],
        options={"num_predict": 30, "seed": 1},
    )
    assert after.done


def test_thinking_comes_apart_from_the_answer(client: ollama.Client, thinking_model: str) -> None:
    thought = client.chat(
        model=thinking_model,
        messages=[{"role": "user", "content": "Why is the sky blue?"}],
        think=True,
        options={"num_predict": 16},
    )
    assert thought.message.thinking and "<think>" not in thought.message.thinking
    plain = client.chat(
        model=thinking_model,
        messages=[{"role": "user", "content": "Why is the sky blue?"}],
        think=False,
        options={"num_predict": 16},
    )
    assert not plain.message.thinking and plain.message.content
    streamed = list(
        client.generate(model=thinking_model, prompt="Why?", think=True, options={"num_predict": 8}, stream=True)
    )
    assert "".join(p.thinking or "" for p in streamed)


def test_generate_raw_and_fill_in_the_middle(client: ollama.Client, fim_model: str) -> None:
    greedy = {"num_predict": 5, "temperature": 0}  # its 5 tokens, with no early end
    answer = client.generate(model="smollm2", prompt="The sky is", raw=True, options=greedy)
    assert answer.response and answer.prompt_eval_count == 3 and answer.eval_count == 5
    templated = client.generate(model="smollm2", prompt="Hi", system="Be brief.", options={"num_predict": 5})
    assert templated.prompt_eval_count > answer.prompt_eval_count  # the chat template wrapped it
    filled = client.generate(
        model=fim_model, prompt="def add(a, b):\n", suffix="\n    return c", options={"num_predict": 6}
    )
    assert filled.done and 1 <= filled.eval_count <= 6
    # The prefix and the suffix between the model's three fill-in-the-middle tokens.
    prefix = client.generate(model=fim_model, prompt="def add(a, b):\n", raw=True, options={"num_predict": 1})
    suffix = client.generate(model=fim_model, prompt="\n    return c", raw=True, options={"num_predict": 1})
    assert filled.prompt_eval_count == prefix.prompt_eval_count + suffix.prompt_eval_count + 3
    with pytest.raises(ollama.ResponseError) as refused:
        client.generate(model="smollm2", prompt="def f(", suffix="return 1")
    assert refused.value.status_code == 400 and "fill-in-the-middle" in refused.value.error
    with pytest.raises(ollama.ResponseError) as refused:
        client.generate(model="smollm2", prompt="x", context=[1, 2, 3])
    assert refused.value.status_code == 400 and "/api/chat" in refused.value.error


def test_embed_and_the_older_route(server: ServerProcess, client: ollama.Client) -> None:
    embedded = client.embed(model="all-minilm-l6-v2", input=["a cat", "a dog"])
    assert len(embedded.embeddings) == 2 and len(embedded.embeddings[0]) == 384 and embedded.prompt_eval_count > 0
    assert len(client.embed(model="all-minilm-l6-v2:latest", input="one", dimensions=384).embeddings) == 1
    one = client.embeddings(model="all-minilm-l6-v2", prompt="a cat")
    assert one.embedding == pytest.approx(embedded.embeddings[0], abs=1e-5)
    too_long = httpx.post(
        server.url + "/api/embed",
        json={"model": "all-minilm-l6-v2", "input": "word " * 2000, "truncate": False},
        headers=AUTH,
    )
    assert too_long.status_code == 400 and "maximum input length" in too_long.json()["error"]
    cut = client.embed(model="all-minilm-l6-v2", input="word " * 2000)  # truncate defaults to true
    assert len(cut.embeddings) == 1 and 0 < cut.prompt_eval_count < 2000  # cut to the model's maximum


def test_keep_alive_loads_and_unloads(client: ollama.Client) -> None:
    client.generate(model="smollm2", prompt="")  # an empty prompt loads the model
    assert "smollm2" in [m.model for m in client.ps().models]
    gone = client.generate(model="smollm2", prompt="", keep_alive=0)
    assert gone.done_reason == "unload" and "smollm2" not in [m.model for m in client.ps().models]
    client.chat(model="smollm2", messages=[{"role": "user", "content": "Hi"}], options={"num_predict": 2}, keep_alive=0)
    assert "smollm2" not in [m.model for m in client.ps().models]  # unloaded once it answered
    client.chat(
        model="smollm2", messages=[{"role": "user", "content": "Hi"}], options={"num_predict": 2}, keep_alive="5m"
    )
    loaded = {m.model: m for m in client.ps().models}["smollm2"]
    assert loaded.context_length > 0 and loaded.expires_at is not None
    # What llama.cpp holds, its KV cache included: more than the weights' file.
    stored = {m.model: m for m in client.list().models}["smollm2"]
    assert loaded.size > stored.size and 0 <= loaded.size_vram <= loaded.size


def test_errors_in_ollamas_shape(server: ServerProcess, client: ollama.Client) -> None:
    with pytest.raises(ollama.ResponseError) as missing:
        client.chat(model="no-such-model", messages=[{"role": "user", "content": "x"}])
    assert missing.value.status_code == 404
    malformed = httpx.post(server.url + "/api/chat", content=b"{not json", headers=AUTH)
    assert malformed.status_code == 400 and isinstance(malformed.json()["error"], str)
    wrong = httpx.post(server.url + "/api/chat", json={"model": "smollm2", "messages": "hi"}, headers=AUTH)
    assert wrong.status_code == 400 and "messages" in wrong.json()["error"]
    keyless = httpx.get(server.url + "/api/tags")
    assert keyless.status_code == 401 and isinstance(keyless.json()["error"], str)
    for path in ("/api/create", "/api/push"):
        refused = httpx.post(server.url + path, json={"model": "x"}, headers=AUTH)
        assert refused.status_code == 501 and "not supported" in refused.json()["error"]
    images = httpx.post(
        server.url + "/api/chat",
        json={"model": "smollm2", "messages": [{"role": "user", "content": "x", "images": ["aGk="]}]},
        headers=AUTH,
    )
    assert images.status_code == 400 and "image" in images.json()["error"].lower()


def test_pull_copy_and_delete(tmp_path: Path, models_home: Path) -> None:
    """A pull into an empty store streams its progress from the real pull, then the model is
    there to copy, use and delete."""
    with ServerProcess(tmp_path / "home", "--no-pull", env={"GPUSTACK_API_KEY": KEY}) as fresh:
        client = ollama.Client(host=fresh.url, headers=AUTH, timeout=600)
        events = list(client.pull("piper-joe", stream=True))
        assert events[0].status == "pulling manifest" and events[-1].status == "success"
        files = [e for e in events if e.total]
        assert files and max(e.completed for e in files) == max(e.total for e in files)
        assert client.pull("piper-joe").status == "success"  # already there
        assert client.copy("piper-joe", "joe").status == "success"
        assert {"piper-joe", "joe"} <= {m.model for m in client.list().models}
        assert client.delete("joe").status == "success"
        assert "joe" not in {m.model for m in client.list().models}
        with pytest.raises(ollama.ResponseError) as refused:
            client.pull("/etc/passwd")
        assert refused.value.status_code == 400 and "command line" in refused.value.error
        with pytest.raises(ollama.ResponseError) as gone:
            client.delete("joe")
        assert gone.value.status_code == 404


def test_langchain(server: ServerProcess) -> None:
    from langchain_core.tools import tool
    from langchain_ollama import ChatOllama, OllamaEmbeddings

    chat = ChatOllama(model="smollm2", base_url=server.url, num_predict=8, client_kwargs={"headers": AUTH})
    assert chat.invoke("Say hello.").content

    @tool
    def get_weather(city: str) -> str:
        """Get the current weather in a city."""
        return "sunny"

    answered = chat.bind_tools([get_weather]).invoke("What is the weather in Paris?")
    assert answered.content or answered.tool_calls
    vectors = OllamaEmbeddings(model="all-minilm-l6-v2", base_url=server.url, client_kwargs={"headers": AUTH})
    assert len(vectors.embed_query("a cat")) == 384 and len(vectors.embed_documents(["a", "b"])) == 2


def test_ollama_js(server: ServerProcess) -> None:
    """The official JavaScript library under node (installed from the npm registry once)."""
    node = shutil.which("node")
    assert node is not None, "node is needed for ollama-js"
    folder = CACHE / "ollama-js"
    if not (folder / "node_modules" / "ollama").is_dir():
        folder.mkdir(parents=True, exist_ok=True)
        installed = subprocess.run(
            ["npm", "install", "--prefix", str(folder), "ollama@0.6.4"], capture_output=True, text=True, timeout=600
        )
        assert installed.returncode == 0, installed.stderr
    shutil.copy(ROOT / "tests" / "support" / "ollama_check.mjs", folder / "check.mjs")
    ran = subprocess.run(
        [node, str(folder / "check.mjs")],
        capture_output=True,
        text=True,
        timeout=300,
        env={**clean_env(), "HOST": server.url, "KEY": KEY},
        cwd=folder,
    )
    assert ran.returncode == 0, ran.stderr
    said = json.loads(ran.stdout)
    assert said["models"] >= 2 and said["chat"] and said["streamed"] and said["dims"] == 384


def test_copilot_and_continue_first_calls(server: ServerProcess, fim_model: str) -> None:
    """The calls VS Code Copilot's Ollama provider and Continue make before and for a chat, in
    the shapes they send and read (recorded from their sources), with httpx."""
    http = httpx.Client(base_url=server.url, headers=AUTH, timeout=300)
    # Copilot: the version (each part read as an integer, at least 0.6.4), the models, each
    # model's capabilities and context from /api/show, then OpenAI's chat completions.
    parts = [int(p) for p in http.get("/api/version").json()["version"].split(".")]
    assert parts >= [0, 6, 4]
    names = [m["model"] for m in http.get("/api/tags").json()["models"]]
    shown = http.post("/api/show", json={"model": "smollm2"}).json()
    architecture = shown["model_info"]["general.architecture"]
    assert "tools" in shown["capabilities"] and shown["model_info"][f"{architecture}.context_length"] > 0
    assert "smollm2" in names
    chat = http.post(
        "/v1/chat/completions",
        json={"model": "smollm2", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4, "stream": False},
    )
    assert chat.status_code == 200 and chat.json()["choices"][0]["message"]["content"]
    # Continue: /api/show by `name`, its `parameters` and `template` as text, then a streamed
    # chat with its options and keep_alive, and autocomplete as a raw generate with a suffix.
    described = http.post("/api/show", json={"name": fim_model}).json()
    assert isinstance(described["parameters"], str) and isinstance(described["template"], str)
    lines = []
    with http.stream(
        "POST",
        "/api/chat",
        json={
            "model": "smollm2",
            "messages": [{"role": "user", "content": "Hi"}],
            "options": {"num_ctx": 8192, "num_predict": 5, "temperature": 0.01, "stop": ["```"]},
            "keep_alive": 1800,
            "stream": True,
        },
    ) as streamed:
        assert streamed.headers["content-type"].startswith("application/x-ndjson")
        lines = [json.loads(line) for line in streamed.iter_lines() if line]
    assert lines[-1]["done"] and all(not line["done"] for line in lines[:-1])
    completed = http.post(
        "/api/generate",
        json={
            "model": fim_model,
            "prompt": "def add(a, b):\n    ",
            "suffix": "\n",
            "raw": True,
            "options": {"num_predict": 8, "stop": ["\n\n"]},
            "keep_alive": 1800,
            "stream": False,
        },
    ).json()
    assert completed["done"] and "response" in completed
