"""The browser playground in a real browser: Debian's chromium driven by Playwright against a real
`gpustack serve` with the default models and a tiny image pipeline. Each tab does its job end to
end; the key prompt works; model output is shown as text, never run. A screenshot of each tab is
saved under `test-artifacts/playground/` (or `$GPUSTACK_TEST_ARTIFACTS`)."""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import Browser, Page, expect, sync_playwright

from tests.support.harness import ROOT, ServerProcess, clean_env, gpustack, home_sharing_models

ARTIFACTS = Path(os.environ.get("GPUSTACK_TEST_ARTIFACTS") or ROOT / "test-artifacts") / "playground"
KEY = "playground-key"
WAIT = 120_000  # ms: a model's first load and answer on two busy cores


def chromium() -> str:
    found = os.environ.get("CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    if not found:
        pytest.fail("The playground's tests need Debian's chromium: apt-get install chromium")
    return found


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as playwright:
        # A fake microphone (a tone), granted without asking: the recorder's path end to end.
        fake_media = ["--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream"]
        launched = playwright.chromium.launch(executable_path=chromium(), args=["--no-sandbox", *fake_media])
        yield launched
        launched.close()


@pytest.fixture(scope="module")
def home(
    models_home: Path,
    tiny_sd: str,
    tiny_vision: str,
    chat_templates: dict[str, str],
    tmp_path_factory: pytest.TempPathFactory,
) -> Path:
    """The test models, and SmolLM2 under DeepSeek-R1's template as `thinker` (a reasoning model)."""
    path = home_sharing_models(models_home, tmp_path_factory.mktemp("playground-home"))
    env = clean_env(GPUSTACK_HOME=str(path))
    weights = next((models_home / "models" / "smollm2").glob("*.gguf"))
    assert gpustack("pull", str(weights), "--name", "thinker", env=env).returncode == 0
    template = path / "r1.jinja"
    template.write_text(chat_templates["deepseek-ai-DeepSeek-R1-Distill-Llama-8B.jinja"])
    assert gpustack("model", "set", "thinker", "--chat-template", str(template), env=env).returncode == 0
    return path


@pytest.fixture(scope="module")
def server(home: Path) -> Iterator[ServerProcess]:
    with ServerProcess(home, "--no-pull", "--preload", "smollm2") as running:
        yield running


@pytest.fixture
def page(browser: Browser, server: ServerProcess) -> Iterator[Page]:
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    opened = context.new_page()
    errors: list[str] = []
    opened.on("pageerror", lambda error: errors.append(str(error)))
    opened.goto(server.url + "/")
    expect(opened.locator("#tab-chat")).to_be_visible()
    yield opened
    context.close()
    assert not errors, errors  # no script error on any page


def shot(page: Page, name: str) -> None:
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


def ask(page: Page, text: str) -> None:
    page.select_option("#chat-model", "smollm2")
    page.fill("#chat-input", text)
    page.click("#chat-send")


def test_served_with_a_strict_policy(server: ServerProcess) -> None:
    root = httpx.get(server.url + "/", follow_redirects=False, timeout=30, headers={"Accept": "text/html"})
    assert root.status_code == 302 and root.headers["location"] == "/ui/"  # a browser goes to the page
    page = httpx.get(server.url + "/ui/", timeout=30)
    policy = page.headers["content-security-policy"]
    assert "script-src 'self'" in policy and "default-src 'none'" in policy and "connect-src 'self'" in policy
    assert page.headers["x-content-type-options"] == "nosniff" and "<script" in page.text
    assert httpx.get(server.url + "/ui/js/main.js", timeout=30).headers["content-type"].startswith("text/javascript")
    assert httpx.get(server.url + "/ui/../keys.json", timeout=30).status_code == 404


def test_tabs_follow_the_models(page: Page) -> None:
    tabs = page.locator("[role=tab]").all_inner_texts()
    assert tabs == ["Chat", "Images", "Speech", "Embeddings & rerank", "Models"]
    page.locator("#tab-chat").focus()
    page.keyboard.press("ArrowRight")  # the tab list answers the keyboard
    expect(page.locator("#panel-images")).to_be_visible()


def test_chat_streams_an_answer_with_its_counts(page: Page) -> None:
    page.fill("#chat-system", "Answer in one short sentence.")
    ask(page, "What is the capital of France?")
    answer = page.locator(".message.assistant").last
    expect(answer.locator(".stats")).to_contain_text("tokens/s", timeout=WAIT)
    assert answer.locator(".text").inner_text().strip()
    assert "prompt +" in answer.locator(".stats").inner_text()
    shot(page, "chat")
    # The conversation is kept in the browser: a reload shows it again.
    page.reload()
    expect(page.locator(".message.user").first).to_contain_text("capital of France")


def test_an_image_goes_to_a_model_that_sees(page: Page, tmp_path: Path) -> None:
    from PIL import Image

    photo = tmp_path / "red.png"
    Image.new("RGB", (48, 48), "red").save(photo)
    page.select_option("#chat-model", "smollm2")
    expect(page.locator("#chat-attach")).to_be_hidden()  # a text-only model takes no image
    page.select_option("#chat-model", "tiny-vision")
    expect(page.locator("#chat-attach")).to_be_visible()
    page.set_input_files("#chat-image", str(photo))
    expect(page.locator("#chat-attached img")).to_have_count(1)
    page.fill("#chat-max-tokens", "8")
    page.fill("#chat-input", "Describe this.")
    page.click("#chat-send")
    expect(page.locator(".message.user").last.locator(".images img")).to_have_count(1)
    answer = page.locator(".message.assistant").last
    expect(answer.locator(".stats")).to_contain_text("tokens/s", timeout=WAIT)
    assert not answer.locator(".error").count()
    expect(page.locator("#chat-attached img")).to_have_count(0)  # sent with the message, not kept for the next
    shot(page, "chat-image")


def test_reasoning_is_folded_apart(page: Page) -> None:
    page.click("#chat-new")
    page.fill("#chat-max-tokens", "24")
    page.select_option("#chat-model", "thinker")
    page.fill("#chat-input", "Hello! Who are you?")
    page.click("#chat-send")
    answer = page.locator(".message.assistant").last
    expect(answer.locator(".stats")).to_contain_text("tokens", timeout=WAIT)
    fold = answer.locator("details")
    expect(fold.locator("summary")).to_have_text("Reasoning")
    assert fold.get_attribute("open") is None  # folded
    thinking = fold.locator(".reasoning").text_content()
    assert thinking.strip() and "<think>" not in thinking
    assert thinking.strip() not in answer.locator(".text").inner_text()
    fold.locator("summary").click()
    expect(fold.locator(".reasoning")).to_be_visible()
    shot(page, "chat-reasoning")


def test_stop_aborts_the_answer_and_frees_the_slot(page: Page, server: ServerProcess) -> None:
    page.fill("#chat-max-tokens", "3000")
    ask(page, "Write a very long story about a dragon who learns to cook, with many chapters.")
    text = page.locator(".message.assistant .text").last
    expect(text).not_to_be_empty(timeout=WAIT)
    page.click("#chat-stop")
    expect(page.locator(".message.assistant .stats").last).to_have_text("Stopped.")
    stopped = text.inner_text()
    page.wait_for_timeout(1000)
    assert text.inner_text() == stopped  # nothing more arrives
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        loaded = {m["name"]: m for m in httpx.get(server.url + "/api/ps", timeout=30).json()["models"]}
        if loaded["smollm2"]["active"] == 0:
            break
        time.sleep(0.2)
    assert loaded["smollm2"]["active"] == 0  # the server let the slot go


def test_edit_and_resend(page: Page) -> None:
    page.click("#chat-new")
    page.fill("#chat-max-tokens", "8")
    ask(page, "Say one word.")
    expect(page.locator(".message.assistant .stats").last).to_contain_text("tokens", timeout=WAIT)
    page.locator(".message.user button", has_text="Edit").first.click()
    page.locator(".message.user textarea").fill("Say two words.")
    page.locator(".message.user button", has_text="Resend").click()
    expect(page.locator(".message.assistant .stats").last).to_contain_text("tokens", timeout=WAIT)
    assert page.locator(".message.user").all_inner_texts()[-1].endswith("Say two words.")
    assert page.locator(".message").count() == 2  # the old answer went with the old question


def test_model_output_is_text_not_html(page: Page) -> None:
    """The answer is held by a JSON schema to a string full of markup: it must show as text."""
    markup = "<script>window.pwned = 1</script><img src=x onerror='window.pwned = 2'>"
    page.click("#chat-new")
    page.check("#chat-json")
    schema = {"type": "object", "properties": {"html": {"const": markup}}, "required": ["html"]}
    page.fill("#chat-schema", json.dumps(schema))
    ask(page, "Anything.")
    answer = page.locator(".message.assistant").last
    expect(answer.locator(".stats")).to_contain_text("tokens", timeout=WAIT)
    assert "<script>window.pwned = 1</script>" in answer.locator(".text").inner_text()
    assert page.locator("#chat-log script, #chat-log img").count() == 0
    assert page.evaluate("window.pwned") is None
    page.uncheck("#chat-json")


def test_view_code(page: Page) -> None:
    page.fill("#chat-input", "Hello!")
    page.click("#chat-code")
    code = page.locator("#code-body")
    expect(code).to_contain_text("/v1/chat/completions")
    assert "$GPUSTACK_API_KEY" in code.inner_text()
    page.locator("#code-tabs button", has_text="Python").click()
    expect(code).to_contain_text("client.chat.completions.create(")
    assert '"content": "Hello!"' in code.inner_text()
    shot(page, "chat-code")
    page.click("#code-close")


def test_images(page: Page) -> None:
    page.click("#tab-images")
    page.select_option("#image-model", "tiny-sd")
    page.fill("#image-steps", "2")
    page.fill("#image-seed", "1")
    # Count the pictures the first gallery slot shows: previews while denoising, then the image.
    page.evaluate(
        """() => {
        window.shown = 0;
        new MutationObserver((changes) => { window.shown += changes.filter((c) => c.attributeName === "src").length; })
          .observe(document.getElementById("image-gallery"), { attributes: true, subtree: true });
    }"""
    )
    page.click("#image-go")
    image = page.locator("#image-gallery img").first
    expect(image).to_have_attribute("src", re.compile(r"^data:image/png;base64,"), timeout=WAIT)
    expect(page.locator("#image-status")).to_contain_text("1 image", timeout=WAIT)
    assert page.evaluate("window.shown") >= 2  # at least one preview before the image
    # An edit: the image just made, uploaded, with a stroke of mask painted on it.
    made = image.get_attribute("src")
    source = ARTIFACTS / "edit-source.png"
    source.write_bytes(base64.b64decode(made.split(",", 1)[1]))
    page.set_input_files("#image-source", str(source))
    canvas = page.locator("#image-canvas")
    expect(canvas).to_be_visible()
    box = canvas.bounding_box()
    page.mouse.move(box["x"] + 5, box["y"] + box["height"] / 2)
    page.mouse.down()
    page.mouse.move(box["x"] + box["width"] - 5, box["y"] + box["height"] / 2, steps=5)
    page.mouse.up()
    expect(page.locator("#image-go")).to_have_text("Edit")
    page.click("#image-go")
    expect(page.locator("#image-gallery figure")).to_have_count(2, timeout=WAIT)
    expect(page.locator("#image-status")).to_contain_text("1 image", timeout=WAIT)
    assert page.locator("#image-gallery img").first.get_attribute("src").startswith("data:image/png;base64,")
    shot(page, "images")


def test_speech_and_transcription(page: Page, server: ServerProcess, tmp_path: Path) -> None:
    page.click("#tab-speech")
    expect(page.locator("#tts-voice option")).not_to_have_count(0)
    page.fill("#tts-text", "Hello there.")
    page.click("#tts-go")
    expect(page.locator("#tts-audio")).to_be_visible(timeout=WAIT)
    assert page.locator("#tts-audio").get_attribute("src").startswith("blob:")
    expect(page.locator("#tts-download")).to_have_attribute("download", "speech.wav")
    # Piper's speech, as a file to upload, is transcribed back.
    spoken = httpx.post(
        server.url + "/v1/audio/speech",
        json={"model": "piper-joe", "input": "Hello there.", "voice": "alloy", "response_format": "wav"},
        timeout=120,
    )
    wav = tmp_path / "hello.wav"
    wav.write_bytes(spoken.content)
    page.select_option("#stt-model", "whisper-tiny.en")
    page.set_input_files("#stt-file", str(wav))
    page.click("#stt-go")
    expect(page.locator("#stt-text")).to_contain_text("Hello", timeout=WAIT)
    expect(page.locator("#stt-segments tbody tr")).not_to_have_count(0)
    expect(page.locator("#stt-srt")).to_be_visible()
    shot(page, "speech")
    # The microphone: a recording (the browser's own format, webm or ogg) is read by the server.
    page.click("#stt-record")
    expect(page.locator("#stt-record")).to_have_text("Stop recording")
    page.wait_for_timeout(1500)
    page.click("#stt-record")
    expect(page.locator("#stt-status")).to_contain_text("Recorded")
    page.click("#stt-go")
    expect(page.locator("#stt-status")).to_contain_text(" s of ", timeout=WAIT)
    expect(page.locator("#notice")).to_be_hidden()


def test_rerank_and_embeddings(page: Page) -> None:
    page.click("#tab-rank")
    page.click("#rerank-go")
    results = page.locator("#rerank-results li")
    expect(results).to_have_count(4, timeout=WAIT)
    top_two = " ".join(results.nth(i).inner_text() for i in range(2))
    assert "panda" in top_two.lower() and "Pandas eat bamboo" in top_two
    assert "stock market" in results.nth(3).inner_text() or "Paris" in results.nth(3).inner_text()
    page.click("#embed-go")
    expect(page.locator("#embed-matrix tr")).to_have_count(4, timeout=WAIT)
    cells = page.locator("#embed-matrix td").all_inner_texts()
    assert [cells[0], cells[4], cells[8]] == ["1.000", "1.000", "1.000"]
    cat_kitten, cat_market = float(cells[1]), float(cells[2])
    assert cat_kitten > cat_market  # the two sentences of a cat are the closest
    shot(page, "rank")


def test_models_tab_unloads(page: Page, server: ServerProcess) -> None:
    # smollm2 loaded last, so that no other model's load has pushed it out.
    chat = {"model": "smollm2", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 1}
    assert httpx.post(server.url + "/v1/chat/completions", json=chat, timeout=120).status_code == 200
    page.click("#tab-models")
    row = page.locator("#models-table tr", has_text="smollm2")
    expect(row.locator("td").nth(2)).to_have_text("loaded")
    expect(row.locator("td").nth(3)).to_have_text(re.compile(r"^0 / \d+$"))
    expect(page.locator("#chart-tps")).to_be_visible()
    shot(page, "models")
    row.get_by_role("button", name="Unload smollm2").click()
    expect(row.locator("td").nth(2)).to_have_text("not loaded", timeout=30_000)
    assert "smollm2" not in [m["name"] for m in httpx.get(server.url + "/api/ps", timeout=30).json()["models"]]


def test_a_phone_sized_screen(browser: Browser, server: ServerProcess) -> None:
    context = browser.new_context(viewport={"width": 390, "height": 844}, is_mobile=True)
    phone = context.new_page()
    phone.goto(server.url + "/")
    expect(phone.locator("#tab-chat")).to_be_visible()
    assert phone.evaluate("document.documentElement.scrollWidth <= window.innerWidth")  # nothing sideways
    phone.screenshot(path=str(ARTIFACTS / "phone.png"), full_page=True)
    context.close()


# -- keys --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def keyed(models_home: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ServerProcess, str]]:
    """A server with keys: the environment's (every scope), and one for smollm2 only."""
    home = home_sharing_models(models_home, tmp_path_factory.mktemp("keyed-home"))
    env = clean_env(GPUSTACK_HOME=str(home))
    limited = gpustack("keys", "create", "--name", "chat-only", "--models", "smollm2", env=env)
    assert limited.returncode == 0, limited.stderr
    with ServerProcess(home, "--no-pull", env={"GPUSTACK_API_KEY": KEY}) as running:
        yield running, limited.stdout.strip()


def test_the_key_prompt(browser: Browser, keyed: tuple[ServerProcess, str]) -> None:
    server, limited = keyed
    context = browser.new_context()
    page = context.new_page()
    page.goto(server.url + "/")
    dialog = page.locator("#key-dialog")
    expect(dialog).to_be_visible()
    expect(page.locator("#key-message")).to_contain_text("asks for an API key")
    page.fill("#key-input", "gpustack_wrong_key")
    page.click("#key-save")
    expect(page.locator("#key-message")).to_contain_text("That key was refused")
    shot(page, "key-refused")
    page.fill("#key-input", limited)
    page.click("#key-save")
    # A key for smollm2 alone sees only the chat (and the models it may use).
    expect(page.locator("[role=tab]")).to_have_text(["Chat", "Models"])
    assert page.locator("#chat-model option").all_inner_texts() == ["smollm2"]
    # The key lives in the tab's session storage, nowhere else.
    assert page.evaluate("sessionStorage.getItem('gpustack.key')") == limited
    assert not page.evaluate("key => Object.values(localStorage).some(v => v.includes(key))", limited)
    assert limited not in page.content() and limited not in page.url
    page.click("#tab-models")
    expect(page.locator("#models-note")).to_contain_text("lacks the management scope")
    expect(page.get_by_role("button", name="Unload smollm2")).to_be_disabled()
    expect(page.locator("#panel-models .charts")).to_be_hidden()
    shot(page, "key-limited")
    context.close()
