"""`lumina-mgpt demo`: input clamps, the command, the handlers, and the Gradio app driven in headless Chromium.

The app tests need gradio, playwright (PyPI, no browser download) and Debian's /usr/bin/chromium: they
are skipped where those are missing, and fail instead under CI=true (`.ci/run` installs them). The
screenshots go to a temporary folder, or to DEMO_SCREENSHOTS=DIR (docs/images holds those of docs/demo.md).
"""

import importlib
import io
import json
import os
import re
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

import diffusers_lumina_mgpt
from diffusers_lumina_mgpt.cli import main
from diffusers_lumina_mgpt.demo import limits
from diffusers_lumina_mgpt.demo.handlers import PNG_METADATA_KEY, DemoBackend, EditSession
from diffusers_lumina_mgpt.demo.preview import PENDING_GREY, finished_rows, stream_from_worker

IN_CI = os.environ.get("CI") == "true"
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
LOAD_REQUESTS = 20
LOAD_QUEUE = 3  # the app's max queue: most of the 20 simultaneous requests must be refused
UI_TIMEOUT_MS = 30_000


def need(module: str):
    """The module; where it is missing, a skip locally and a failure in CI."""
    if IN_CI:
        return importlib.import_module(module)
    return pytest.importorskip(module)


# ------------------------------------------------------------------------------------- limits
def test_inputs_are_clamped_to_the_named_ranges():
    assert limits.clamp(99, limits.GUIDANCE_RANGE, 3.0) == limits.GUIDANCE_RANGE[1]
    assert limits.clamp(-5, limits.GUIDANCE_RANGE, 3.0) == limits.GUIDANCE_RANGE[0]
    assert limits.clamp("2.5", limits.GUIDANCE_RANGE, 3.0) == 2.5
    for junk in (None, "abc", float("nan"), float("inf")):
        assert limits.clamp(junk, limits.TEMPERATURE_RANGE, 1.0) == 1.0
    assert limits.clamp_int(10**12, limits.SEED_RANGE, 0) == limits.SEED_RANGE[1]
    assert limits.clamp_int(0, limits.IMAGE_TOP_K_RANGE, 2000) == 1
    assert limits.clamp_int(3.6, (1, limits.MAX_IMAGES), 1) == min(4, limits.MAX_IMAGES)
    assert len(limits.clean_text(" word" * 5000)) == limits.MAX_PROMPT_CHARS
    assert limits.clean_text(None) == ""


def test_sizes_come_from_the_buckets_within_max_side():
    buckets = [(128, 32), (64, 64), (32, 128), (4 * limits.MAX_SIDE, 32)]  # (width, height)
    sizes = limits.allowed_sizes(buckets, default_size=64)
    assert sizes == [(64, 64), (32, 128), (128, 32)]  # (height, width), the default first, too wide dropped
    assert limits.parse_size("32x128", sizes) == (32, 128)
    assert limits.parse_size(None, sizes) == (64, 64)
    with pytest.raises(ValueError, match="choose one of 64x64, 32x128, 128x32"):
        limits.parse_size("4096x4096", sizes)


# ------------------------------------------------------------------------------------ command
def test_demo_help_shows_defaults_and_an_example(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["demo", "--help"])
    assert exit_.value.code == 0
    out = " ".join(capsys.readouterr().out.split())
    for text in ("--model", "(default: 127.0.0.1)", "(default: 7860)", f"(default: {limits.DEFAULT_MAX_QUEUE})",
                 "example: lumina-mgpt demo"):
        assert text in out


def test_registering_the_command_imports_no_gradio():
    code = ("import sys; from diffusers_lumina_mgpt.cli import build_parser; build_parser(); "
            "import diffusers_lumina_mgpt.demo.handlers; assert 'gradio' not in sys.modules, 'gradio was imported'")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr


def test_without_gradio_the_command_says_how_to_install_it(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "gradio", None)  # `import gradio` raises ImportError
    assert main(["demo", "--model", "some-folder"]) == 2
    err = capsys.readouterr().err
    assert 'pip install "diffusers-lumina-mgpt[demo]"' in err
    assert len(err.strip().splitlines()) == 1


def test_without_a_default_model_the_command_asks_for_one(monkeypatch, capsys, tmp_path):
    monkeypatch.setattr("diffusers_lumina_mgpt.demo.cli.require_gradio", lambda: None)
    monkeypatch.setattr(diffusers_lumina_mgpt, "DEFAULT_MODEL", str(tmp_path / "no-model"))
    assert main(["demo"]) == 2
    err = capsys.readouterr().err
    assert "no default model" in err and "--model" in err and len(err.strip().splitlines()) == 1


# ------------------------------------------------------------------------- worker and previews
def test_the_worker_streams_updates_and_raises_its_errors():
    lock = threading.Lock()

    def slow(emit, cancelled):
        for i in range(3):
            emit(i)
            time.sleep(0.05)
        return "result"

    assert list(stream_from_worker(lock, slow)) == [("update", 0), ("update", 1), ("update", 2), ("done", "result")]

    go, release = threading.Event(), threading.Event()

    def burst(emit, cancelled):  # updates faster than the consumer reads: only the newest is shown
        emit("start")
        go.wait(5)
        for i in range(100):
            emit(i)
        release.wait(5)
        return "result"

    events = stream_from_worker(lock, burst)
    assert next(events) == ("update", "start")
    go.set()
    time.sleep(0.2)
    assert next(events) == ("update", 99)
    release.set()
    assert list(events) == [("done", "result")]

    def failing(emit, cancelled):
        raise ValueError("bad input")

    with pytest.raises(ValueError, match="bad input"):
        list(stream_from_worker(lock, failing))

    seen = threading.Event()

    def endless(emit, cancelled):
        while not cancelled.wait(0.01):
            emit("tick")
        seen.set()

    stream = stream_from_worker(lock, endless)
    assert next(stream) == ("update", "tick")
    stream.close()  # the viewer left
    assert seen.wait(5)
    assert not lock.locked() or lock.acquire(timeout=5)


def test_finished_rows_counts_whole_rows_decided():
    w = 4  # codes per latent row; a row is w codes then NEWLINE
    body = torch.full((2, 3 * (w + 1) + 1), -1)
    body[0, : w + 1] = 7  # one full row
    body[1, : 2 * (w + 1) - 1] = 7  # one row and all codes of the next, its NEWLINE not yet
    assert finished_rows(body, w) == [1, 1]
    body[1, 2 * (w + 1) - 1] = 7
    assert finished_rows(body, w) == [1, 2]


# --------------------------------------------------------------------------------- handlers
@pytest.fixture(scope="module")
def backend(tiny_pipe_dir, tmp_path_factory):
    return DemoBackend(tiny_pipe_dir, output_dir=tmp_path_factory.mktemp("demo-out"))


@pytest.fixture(scope="module")
def scene(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("scene") / "scene.png"
    image = Image.new("RGB", (64, 64), "white")
    ImageDraw.Draw(image).rectangle((16, 16, 47, 47), fill=(210, 30, 30))
    image.save(path)
    return path


def png_settings(path) -> dict:
    return json.loads(Image.open(path).text[PNG_METADATA_KEY])


def test_the_sliders_start_at_the_model_folders_defaults(backend):
    """The sliders start where the pipelines would sample with no arguments: the shipped model's guidance 2,
    top-k 3 and greedy edits; Lumina-mGPT's demo values for a converted checkpoint that records none."""
    from diffusers_lumina_mgpt import DEFAULT_MODEL, LuminaMGPTPipeline
    from diffusers_lumina_mgpt.demo.handlers import sampling_defaults

    assert backend.defaults == {"t2i_guidance": 3.0, "t2i_image_top_k": backend.pipe.scheduler.config.image_top_k,
                                "edit_guidance": 1.0, "edit_image_top_k": limits.EDIT_IMAGE_TOP_K}
    shipped = LuminaMGPTPipeline.from_pretrained(DEFAULT_MODEL)
    assert sampling_defaults(shipped) == {"t2i_guidance": 2.0, "t2i_image_top_k": 3, "edit_guidance": 1.0,
                                          "edit_image_top_k": 1}
    shipped.scheduler = type(shipped.scheduler).from_config(shipped.scheduler.config, image_top_k=None)
    assert sampling_defaults(shipped)["t2i_image_top_k"] == limits.T2I_IMAGE_TOP_K  # "no top-k": a slider can't say


def test_text_to_image_previews_row_by_row_then_saves_pngs_with_settings(backend):
    events = list(backend.text_to_image("a red circle", "64x64", 5, False, 99.0, 10**6, 9.0, "AR", 10))
    *previews, (images, files, seed, status) = events
    total_rows = 64 // backend.pipe.image_processor.config.downsample_factor
    assert previews, "no preview before the result"
    rows = [int(re.search(r"row (\d+) of", p[3]).group(1)) for p in previews]
    assert rows == sorted(set(rows)) and 0 < rows[0] and rows[-1] < total_rows
    first = previews[0][0][0]
    assert first.size == (64, 64) and previews[0][1] is None
    assert first.getpixel((32, 63)) == PENDING_GREY  # the bottom row is not decided yet
    assert seed == 5 and status.startswith("done: 4 image(s)") and images == files
    assert len(files) == limits.MAX_IMAGES  # 10 asked, clamped
    settings = png_settings(files[1])
    assert settings["guidance_scale"] == limits.GUIDANCE_RANGE[1]
    assert settings["image_top_k"] == limits.IMAGE_TOP_K_RANGE[1]
    assert settings["temperature"] == limits.TEMPERATURE_RANGE[1]
    assert (settings["seed"], settings["index"], settings["height"], settings["width"]) == (5, 1, 64, 64)
    # the clamped settings reach the pipeline: the same call gives the same images
    backend.pipe.scheduler = backend.schedulers["AR"]
    reference = backend.pipe("a red circle", height=64, width=64, guidance_scale=10.0, num_images_per_prompt=4,
                             generator=torch.Generator().manual_seed(5), image_top_k=8192, temperature=2.0).images
    for path, ref in zip(files, reference):
        assert np.array_equal(np.asarray(Image.open(path).convert("RGB")), np.asarray(ref))


def test_jacobi_greedy_gives_the_ar_greedy_image_and_random_seeds_stay_in_range(backend):
    *_, (_, ar, _, _) = backend.text_to_image("two squares", "32x128", 1, False, 3.0, 1, 1.0, "AR", 1)
    *_, (_, jacobi, _, _) = backend.text_to_image("two squares", "32x128", 1, False, 3.0, 1, 1.0, "Jacobi", 1)
    assert Image.open(ar[0]).size == (128, 32)
    assert np.array_equal(np.asarray(Image.open(ar[0])), np.asarray(Image.open(jacobi[0])))
    assert png_settings(jacobi[0])["scheduler"] == "jacobi"
    *_, (_, _, seed, _) = backend.text_to_image("x", None, 0, True, 3.0, 1, 1.0, "AR", 1)
    assert limits.SEED_RANGE[0] <= seed <= limits.SEED_RANGE[1]
    for bad, message in ((("", "64x64", "AR"), "enter a prompt"), (("x", "640x640", "AR"), "not offered"),
                         (("x", "64x64", "fast"), "scheduler must be")):
        prompt, size, scheduler = bad
        with pytest.raises(ValueError, match=message):
            list(backend.text_to_image(prompt, size, 0, False, 3.0, 1, 1.0, scheduler, 1))


def test_edit_turns_continue_the_history_and_report_errors(backend, scene):
    image = Image.open(scene)
    first, session, outputs, status = backend.edit(image, "edit", "Make it blue.", 0, 1.0, 200, False, EditSession())
    assert outputs == [first] and status.startswith("turn 1: edit")
    direct = backend.edit_pipe(image, "Make it blue.", generator=torch.Generator().manual_seed(0), image_top_k=200)
    assert np.array_equal(np.asarray(Image.open(first)), np.asarray(direct.images[0]))
    second, session, outputs, _ = backend.edit(None, "depth", "ignored", 0, 1.0, 200, True, session)
    assert outputs == [first, second]
    assert session.history.messages[-2].value == "Depth estimation."  # the previous answer is the input
    third, session, outputs, _ = backend.edit(None, "denoise", "", 0, 1.0, 200, True, session)
    assert len(outputs) == 3 and png_settings(third)["task"] == "denoise"
    assert len(session.history.images) == 4  # the upload and three answers
    with pytest.raises(ValueError, match="needs a text prompt"):
        backend.edit(image, "detection", "", 0, 1.0, 200, False, session)
    with pytest.raises(ValueError, match="no earlier result"):
        backend.edit(image, "edit", "x", 0, 1.0, 200, True, EditSession())
    with pytest.raises(ValueError, match="upload an image"):
        backend.edit(None, "edit", "x", 0, 1.0, 200, False, None)


class ImageAnswers:
    """Steers the random model's chat answers: `text_tokens` text tokens, then an image, then end of turn
    (by raising the BOI and EOT logits of text forwards; image forwards return code logits only)."""

    def __init__(self, pipe, text_tokens: int = 2):
        self.pipe, self.boi_at, self.calls = pipe, text_tokens, 0

    def _raise(self, module, args, output):
        if output.logits.shape[-1] != module.config.vocab_size:
            return output
        vocab = self.pipe.vocab
        output.logits[..., vocab.boi_id if self.calls == self.boi_at else vocab.eot_id] += 1e4 * (self.calls >= self.boi_at)
        self.calls += 1
        return output

    def __enter__(self):
        self.handle = self.pipe.transformer.register_forward_hook(self._raise)
        return self

    def __exit__(self, *exc):
        self.handle.remove()


def test_chat_streams_text_and_shows_answer_images(backend, scene):
    with ImageAnswers(backend.edit_pipe):
        events = list(backend.chat({"text": "What is this?", "files": [str(scene)]}, [], None, 16, 5, 1.0, True,
                                   "64x64", 0))
    messages, history = events[-1]
    assert [m["role"] for m in messages] == ["user", "assistant"]
    assert messages[0]["content"] == [{"path": str(scene)}, "What is this?"]
    text, picture = messages[1]["content"]
    assert Image.open(picture["path"]).size == (64, 64)
    for update, _ in events[:-1]:  # streamed text grows towards the answer
        assert text.startswith(update[-1]["content"].removesuffix("[image]"))
    assert [m.role for m in history.messages] == ["human", "gpt"] and len(history.images) == 2
    more, history = list(backend.chat({"text": "And now?"}, messages, history, 3, 5, 1.0, False, None, 0))[-1]
    assert len(more) == 4 and len(history.messages) == 4


# ------------------------------------------------------------------------------ the app in Chromium
@pytest.fixture(scope="module")
def app_url(backend):
    need("gradio")
    from diffusers_lumina_mgpt.demo.app import build_demo, launch

    demo = build_demo(backend, max_queue=LOAD_QUEUE)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    launch(demo, "127.0.0.1", port, prevent_thread_lock=True, quiet=True)
    yield f"http://127.0.0.1:{port}/"
    demo.close()


@pytest.fixture(scope="module")
def page():
    sync_api = need("playwright.sync_api")
    if not CHROMIUM.exists():
        message = f"{CHROMIUM} is missing (apt-get install chromium)"
        pytest.fail(message) if IN_CI else pytest.skip(message)
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        tab = browser.new_page(viewport={"width": 1280, "height": 900})
        tab.set_default_timeout(UI_TIMEOUT_MS)
        yield tab
        browser.close()


@pytest.fixture(scope="module")
def shots(tmp_path_factory) -> Path:
    folder = Path(os.environ.get("DEMO_SCREENSHOTS") or tmp_path_factory.mktemp("screenshots"))
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def expect(locator):
    from playwright.sync_api import expect as playwright_expect

    return playwright_expect(locator)


def dismiss_toasts(page):
    for close in page.locator(".toast-close").all():
        close.click()


def test_text_to_image_tab_in_the_browser(page, app_url, shots):
    page.goto(app_url)
    page.locator("#t2i-prompt textarea").fill("a red circle above a blue square")
    page.locator("#t2i-run").click()
    expect(page.locator("#t2i-status textarea")).to_have_value(re.compile(r"^done: 1 image"))
    image = page.locator("#t2i-gallery img").first
    expect(image).to_be_visible()
    assert image.evaluate("img => img.complete && img.naturalWidth") == 64
    href = page.locator("#t2i-files a[download]").first.get_attribute("href")
    png = Image.open(io.BytesIO(page.request.get(href).body()))
    assert json.loads(png.text[PNG_METADATA_KEY])["prompt"] == "a red circle above a blue square"
    page.screenshot(path=shots / "demo-t2i.png")


def test_edit_tab_in_the_browser(page, app_url, shots, scene):
    page.goto(app_url)
    page.get_by_role("tab", name="Edit / Omni").click()
    status = page.locator("#edit-status textarea")
    page.locator("#edit-input input[type=file]").set_input_files(str(scene))
    page.locator("#edit-prompt textarea").fill("Make the red square blue.")
    page.locator("#edit-run").click()
    expect(status).to_have_value(re.compile(r"^turn 1: edit"))
    expect(page.locator("#edit-output img")).to_be_visible()
    # a failing request shows its message in the page, and the app keeps serving
    page.locator("#edit-task input").click()
    page.get_by_role("option", name=re.compile(r"^detection")).click()
    page.locator("#edit-prompt textarea").fill("")
    page.locator("#edit-run").click()
    expect(page.get_by_text("needs a text prompt").first).to_be_visible()
    dismiss_toasts(page)
    # a second turn on the first result
    page.locator("#edit-continue input").check()
    page.locator("#edit-prompt textarea").fill("the square")
    page.locator("#edit-run").click()
    expect(status).to_have_value(re.compile(r"^turn 2: detection"))
    expect(page.locator("#edit-turns img")).to_have_count(2)
    assert page.locator("#edit-output img").evaluate("img => img.complete && img.naturalWidth") == 64
    page.screenshot(path=shots / "demo-edit.png")


def test_chat_tab_in_the_browser(page, app_url, shots, scene, backend):
    page.goto(app_url)
    page.get_by_role("tab", name="Chat").click()
    page.locator("#chat-settings").get_by_role("button").first.click()
    page.locator("#chat-image-size input").click()
    page.get_by_role("option", name="64x64", exact=True).click()
    page.locator("#chat-input input[type=file]").set_input_files(str(scene))
    expect(page.locator("#chat-input img")).to_be_visible()
    page.locator("#chat-input textarea").fill("What is in this image?")
    with ImageAnswers(backend.edit_pipe):
        page.locator("#chat-input textarea").press("Enter")
        answer = page.locator("#chat-window .bot-row")
        expect(answer.locator("img")).to_be_visible()
    expect(page.locator("#chat-window .user-row img")).to_have_count(1)
    assert answer.first.inner_text().strip(), "the answer's text is missing"
    assert answer.locator("img").first.evaluate("img => img.complete && img.naturalWidth") == 64
    page.screenshot(path=shots / "demo-chat.png")


def test_a_burst_of_requests_is_served_or_refused_and_the_app_keeps_serving(app_url, backend):
    client = need("gradio_client").Client(app_url, verbose=False)
    args = ("load", "64x64", 0, False, 3.0, 2000, 1.0, "AR", 1)

    def slow_forward(module, args, kwargs):  # each request takes a while, so that the queue fills
        time.sleep(0.05)

    handle = backend.pipe.transformer.register_forward_pre_hook(slow_forward, with_kwargs=True)
    try:
        jobs = [client.submit(*args, api_name="/text_to_image") for _ in range(LOAD_REQUESTS)]
        served, refused = [], []
        for job in jobs:
            try:
                served.append(job.result(timeout=120)[3])
            except Exception as err:  # gradio_client raises for a refused request
                refused.append(str(err))
    finally:
        handle.remove()
    assert len(served) + len(refused) == LOAD_REQUESTS
    assert served and all(status.startswith("done") for status in served)
    assert refused and all("Queue is full" in message for message in refused), refused
    assert client.predict(*args, api_name="/text_to_image")[3].startswith("done")
