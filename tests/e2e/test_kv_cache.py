"""The KV cache settings llama.cpp users tune, on the real SmolLM2: a q8_0 cache with flash
attention set per model loads and answers; what llama.cpp would refuse is refused where it is set."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import openai

from tests.support.gguf_writer import with_metadata
from tests.support.harness import ServerProcess, clean_env, gpustack, home_sharing_models


def test_a_quantized_cache_with_flash_attention_loads_and_answers(models_home: Path, tmp_path: Path) -> None:
    home = home_sharing_models(models_home, tmp_path / "home")
    env = clean_env(GPUSTACK_HOME=str(home))
    weights = next((models_home / "models" / "smollm2").glob("*.gguf"))
    assert gpustack("pull", str(weights), "--name", "kvq", env=env).returncode == 0
    done = gpustack(
        "model", "set", "kvq", "--cache-type-k", "q8_0", "--cache-type-v", "q8_0", "--flash-attn", "on", env=env
    )
    assert done.returncode == 0, done.stderr
    shown = json.loads(gpustack("show", "kvq", "--json", env=env).stdout)["options"]
    assert (shown["cache_type_k"], shown["cache_type_v"], shown["flash_attn"]) == ("q8_0", "q8_0", "on")
    refused = gpustack("model", "set", "kvq", "--flash-attn", "off", env=env)
    assert refused.returncode == 1 and "needs flash attention" in " ".join(refused.stderr.split())
    with ServerProcess(home, "--no-pull", "--preload", "kvq", "--preload", "smollm2", "--parallel", "2") as server:
        client = openai.OpenAI(base_url=server.url + "/v1", api_key="none", max_retries=0)
        ask = [{"role": "user", "content": "What is the capital of France?"}]
        quantized = client.chat.completions.create(model="kvq", messages=ask, max_tokens=12, temperature=0)
        plain = client.chat.completions.create(model="smollm2", messages=ask, max_tokens=12, temperature=0)
        # Both answer (the 135M model's greedy words may differ with a quantized cache).
        assert quantized.choices[0].message.content and plain.choices[0].message.content
        running = {m["name"]: m for m in httpx.get(server.url + "/api/ps").json()["models"]}
        assert running["kvq"]["kv_cache"] == {"flash_attn": "on", "type_k": "q8_0", "type_v": "q8_0"}
        assert running["smollm2"]["kv_cache"] == {"flash_attn": "auto", "type_k": "f16", "type_v": "f16"}
        listed = " ".join(gpustack("ps", env=clean_env(GPUSTACK_SERVER_URL=server.url, COLUMNS="200")).stdout.split())
        assert "KV q8_0/q8_0" in listed and listed.count("KV ") == 1, listed
    bad = gpustack("serve", "--no-pull", "--cache-type-v", "q4_0", "--flash-attn", "off", env=env, timeout=60)
    assert bad.returncode == 1 and "needs flash attention" in " ".join(bad.stderr.split())


def test_show_estimate_is_within_a_tenth_of_what_a_load_takes(models_home: Path, tmp_path: Path) -> None:
    """`show --estimate` (llama.cpp's own sizes, nothing loaded) against the sizes llama.cpp
    reports when the model loads (`/api/ps` placement), on the two catalog chat models; and a
    load that cannot fit says so, with what would make it fit."""
    env = clean_env(GPUSTACK_HOME=str(models_home))
    with ServerProcess(
        home_sharing_models(models_home, tmp_path / "home"),
        "--no-pull",
        "--preload",
        "smollm2,gemma3-270m",
        "--parallel",
        "2",
        "--ctx-size",
        "2048",
        "--gpu-layers",
        "0",
    ) as server:
        running = {m["name"]: m for m in httpx.get(server.url + "/api/ps").json()["models"]}
        for name in ("smollm2", "gemma3-270m"):
            shown = gpustack("show", name, "--estimate", "--parallel", "2", "--ctx-size", "2048", "--json", env=env)
            estimate = json.loads(shown.stdout)
            loaded = sum(
                p["weights_bytes"] + p["kv_cache_bytes"] + p["compute_bytes"] for p in running[name]["placement"]
            )
            assert estimate["fits"] and abs(estimate["total_bytes"] - loaded) <= 0.1 * loaded, (name, estimate, loaded)
    huge = gpustack("show", "smollm2", "--estimate", "--parallel", "256", "--ctx-size", "8192", env=env)
    text = " ".join(huge.stdout.split())
    assert huge.returncode == 0 and "does not fit" in text and "--ctx-size" in text and "q8_0" in text, text


def test_a_model_given_no_context_gets_what_the_free_memory_holds(models_home: Path, tmp_path: Path) -> None:
    """With no context set anywhere, a model gets the largest context up to its trained length
    whose KV cache takes at most half the memory free beside its weights, and says so: a copy of
    SmolLM2 claiming a million tokens of training is given less (estimated only: loading it would
    take half this machine's memory), SmolLM2 itself its trained 8192; a context that was set is
    kept and said to be set."""
    home = home_sharing_models(models_home, tmp_path / "home")
    env = clean_env(GPUSTACK_HOME=str(home))
    weights = next((models_home / "models" / "smollm2").glob("*.gguf"))
    claimed = with_metadata(weights, tmp_path / "long.gguf", {"llama.context_length": 1 << 20})
    assert gpustack("pull", str(claimed), "--name", "long", env=env).returncode == 0
    shown = json.loads(gpustack("show", "long", "--estimate", "--json", env=env).stdout)
    assert shown["context_from"] == "memory" and shown["context"] % 256 == 0, shown
    assert 2048 <= shown["context"] < 1 << 20 and shown["kv_cache_bytes"] <= 0.5 * shown["available_bytes"], shown
    told = json.loads(gpustack("show", "long", "--estimate", "--ctx-size", "4096", "--json", env=env).stdout)
    assert (told["context"], told["context_from"]) == (4096, "settings")
    # Loaded with a long context of its own, it takes what its estimate said (within a tenth).
    assert gpustack("model", "set", "long", "--ctx-size", "16384", env=env).returncode == 0
    estimate = json.loads(gpustack("show", "long", "--estimate", "--parallel", "2", "--json", env=env).stdout)
    assert gpustack("cp", "smollm2", "short", env=env).returncode == 0
    assert gpustack("model", "set", "short", "--ctx-size", "1024", env=env).returncode == 0
    with ServerProcess(home, "--no-pull", "--preload", "smollm2,short,long", "--parallel", "2") as server:
        running = {m["name"]: m for m in httpx.get(server.url + "/api/ps").json()["models"]}
        assert (running["smollm2"]["context_length"], running["smollm2"]["context_from"]) == (8192, "memory")
        assert (running["short"]["context_length"], running["short"]["context_from"]) == (1024, "model")
        assert (running["long"]["context_length"], estimate["context"]) == (16384, 16384)
        parts = ("weights_bytes", "kv_cache_bytes", "compute_bytes")
        held = sum(p[k] for p in running["long"]["placement"] for k in parts)
        assert abs(estimate["total_bytes"] - held) <= 0.1 * held, (estimate, held)
        listed = gpustack("ps", env=clean_env(GPUSTACK_SERVER_URL=server.url, COLUMNS="200")).stdout
        assert "8192 (fit)" in listed and "1024 " in listed, listed


def test_the_load_settings_users_tune_are_checked_and_applied(models_home: Path, tmp_path: Path) -> None:
    """Batch sizes, mapping and RoPE set per model: refused where llama.cpp would refuse them, and
    a model stretched with YaRN past its trained context loads with that context and answers."""
    home = home_sharing_models(models_home, tmp_path / "home")
    env = clean_env(GPUSTACK_HOME=str(home))
    assert gpustack("cp", "smollm2", "tuned", env=env).returncode == 0
    too_long = gpustack("model", "set", "tuned", "--ctx-size", "16384", env=env)
    assert too_long.returncode == 1 and "trained for 8192" in " ".join(too_long.stderr.split())
    flags = ("--batch-size", "256", "--ubatch-size", "128", "--mmap", "false", "--rope-scaling", "yarn")
    done = gpustack("model", "set", "tuned", *flags, "--rope-freq-scale", "0.5", env=env)
    assert done.returncode == 0, done.stderr
    assert gpustack("model", "set", "tuned", "--ctx-size", "16384", env=env).returncode == 0
    refused = gpustack("model", "set", "tuned", "--ubatch-size", "1024", env=env)
    assert refused.returncode == 1 and "--ubatch-size" in refused.stderr
    assert gpustack("model", "set", "tuned", "--tensor-split", "3,x", env=env).returncode == 1
    shown = json.loads(gpustack("show", "tuned", "--json", env=env).stdout)["options"]
    assert (shown["n_batch"], shown["n_ubatch"], shown["mmap"], shown["rope_scaling"]) == (256, 128, False, "yarn")
    with ServerProcess(home, "--no-pull", "--preload", "tuned", "--parallel", "1") as server:
        client = openai.OpenAI(base_url=server.url + "/v1", api_key="none", max_retries=0)
        ask = [{"role": "user", "content": "What is the capital of France?"}]
        assert client.chat.completions.create(model="tuned", messages=ask, max_tokens=8).choices[0].message.content
        running = {m["name"]: m for m in httpx.get(server.url + "/api/ps").json()["models"]}
        assert running["tuned"]["context_length"] == 16384
    bad = gpustack("serve", "--no-pull", "--batch-size", "8", "--ubatch-size", "16", env=env, timeout=60)
    assert bad.returncode == 1 and "--ubatch-size" in " ".join(bad.stderr.split())
