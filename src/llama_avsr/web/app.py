"""The web page (Gradio): the layout, and the handlers that turn page inputs into what the page shows.

The handlers (:class:`Page`) take and return plain values (paths, numbers, arrays, figures) and
never raise: a bad clip or an unexpected failure becomes a one-line message on the page (the full
traceback of an unexpected one goes to the server log).  :func:`build_app` wires them to Gradio.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from llama_avsr.io import atomic_write_json
from llama_avsr.web.demo import (
    NOISE_BABBLE,
    NOISE_CLEAN,
    NOISE_FILE,
    SAMPLE_RATE,
    Clip,
    ClipError,
    Demo,
    NeedsInput,
    Transcript,
    main_transcript,
    mouth_strip,
    transcript_table,
    waveform_figure,
    wer_plot,
    write_mouth_clip,
)

log = logging.getLogger(__name__)

TABLE_HEADERS = ["condition", "transcript", "WER %", "decoding s"]
VIDEO_SUFFIXES = (".mp4", ".mov", ".mkv", ".webm", ".avi")
SNR_RANGE = (-10.0, 30.0)
SNR_DEFAULT = 5.0
#: mouth clips and plots kept in the work folder
KEEP_FILES = 200


@dataclasses.dataclass
class View:
    """Everything one handler call shows; ``None`` leaves a picture empty."""

    clip: Clip | None = None
    message: str = ""
    transcript: str = ""
    table: list[list[Any]] = dataclasses.field(default_factory=list)
    strip: np.ndarray | None = None  # (2·96, 4·96) uint8 mouth crops
    mouth_video: str | None = None  # mp4 of the mouth crops with the (noisy) audio
    waveform: Any = None  # matplotlib figure
    audio: tuple[int, np.ndarray] | None = None  # (16000, (T_a,)) what the model hears
    noise: str = NOISE_CLEAN
    rows: list[Transcript] = dataclasses.field(default_factory=list)


def _error_text(e: BaseException) -> str:
    if isinstance(e, ClipError):
        return f"**Cannot use this file:** {e}"
    if isinstance(e, NeedsInput):
        return f"**{str(e)[:1].upper()}{str(e)[1:]}.**"
    log.exception("unexpected failure in a page handler")
    first = (str(e).strip().splitlines() or [""])[0]
    return f"**Something went wrong** ({type(e).__name__}: {first}); the server log has the details."


def _snr_text(noise: str, snr: float | None) -> str:
    return "clean audio" if noise == NOISE_CLEAN or snr is None else f"{noise} noise at {snr:g} dB SNR"


class Page:
    """The page's handlers around one :class:`Demo`. workdir: where mouth clips are written."""

    def __init__(self, demo: Demo, workdir: str | Path | None = None) -> None:
        self.demo = demo
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix="llama-avsr-serve-"))
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._count = 0

    def _out(self, suffix: str) -> Path:
        """A new file in the work folder; the oldest are removed as new ones come (the page has
        long shown others by then)."""
        self._count += 1
        for old in self.workdir.glob(f"{self._count - KEEP_FILES:05d}.*"):
            old.unlink(missing_ok=True)
        return self.workdir / f"{self._count:05d}{suffix}"

    def on_clip(
        self,
        path: str | None,
        noise: str = NOISE_CLEAN,
        snr: float = SNR_DEFAULT,
        noise_file: str | None = None,
        reference: str = "",
    ) -> View:
        """A new clip (upload, recording or example): prepare it, preview it, transcribe it."""
        if not path:
            return View(message="Upload a video, record one with the webcam, or pick an example.")
        try:
            clip = self.demo.load(path, self.workdir)
        except Exception as e:  # noqa: BLE001 — the page shows a message, never a stack trace
            return View(message=_error_text(e), noise=noise)
        view = self.on_noise(clip, noise, snr, noise_file, reference)
        view.strip = mouth_strip(clip.video)
        return view

    def on_noise(
        self,
        clip: Clip | None,
        noise: str = NOISE_CLEAN,
        snr: float = SNR_DEFAULT,
        noise_file: str | None = None,
        reference: str = "",
        slider_moved: bool = False,
    ) -> View:
        """Mix the chosen noise at ``snr`` into the clip's audio and transcribe again. Moving the slider
        while the audio is clean switches the noise to babble (what moving a noise slider means)."""
        if clip is None:
            return View(
                message="Upload a video, record one with the webcam, or pick an example.", noise=noise
            )
        if slider_moved and noise == NOISE_CLEAN:
            noise = NOISE_BABBLE
        view = View(clip=clip, noise=noise, strip=mouth_strip(clip.video))
        try:
            audio = self.demo.mix(clip, snr, noise, noise_file)
            rows = self.demo.transcribe(clip, audio, reference)
            if clip.video is not None:
                view.mouth_video = str(write_mouth_clip(clip, self._out(".mp4"), audio))
        except Exception as e:  # noqa: BLE001
            view.message = _error_text(e)
            return view
        view.rows = rows
        view.transcript = main_transcript(rows)
        view.table = transcript_table(rows)
        view.waveform = waveform_figure(clip.audio, audio, title=_snr_text(noise, snr))
        if audio is not None:
            view.audio = (SAMPLE_RATE, audio)
        note = f"{clip.name}: {clip.seconds:.1f} s, {_snr_text(noise, snr)}"
        if rows and len(rows[0].segments) > 1:
            note += f", {len(rows[0].segments)} segments (long-form)"
        missing = [m for m in self.demo.model.modalities if getattr(clip, m) is None]
        if missing:
            note += f" — no {' or '.join(missing)} in this clip: blanked"
        warnings = sorted({w for r in rows for w in r.warnings})
        if warnings:
            note += " — " + "; ".join(w.replace(str(clip.name), "").strip() for w in warnings)
        view.message = note
        return view

    def on_sweep(
        self,
        clip: Clip | None,
        reference: str,
        noise: str = NOISE_BABBLE,
        noise_file: str | None = None,
        progress: Callable[[float, str], None] | None = None,
    ) -> tuple[str | None, str]:
        """WER against SNR for this clip, audio-only vs audio-visual: (plot PNG path, message)."""
        if clip is None:
            return None, "Load a clip first."
        try:
            by_condition = self.demo.sweep(clip, reference, noise, noise_file, progress=progress)
        except Exception as e:  # noqa: BLE001
            return None, _error_text(e)
        path = wer_plot(by_condition, self._out(".png"))
        atomic_write_json(path.with_suffix(".json"), by_condition, indent=1)
        kind = NOISE_BABBLE if noise == NOISE_CLEAN else noise
        return str(path), f"WER against SNR for {clip.name} ({kind})"


def find_examples(root: str | Path | None) -> list[tuple[Path, str]]:
    """Example clips with their transcripts: the full-face videos of a corpus made by ``llama-avsr
    synth`` / ``demo`` (listed in its ``synth.json``), or the videos of a folder (``.txt`` beside each)."""
    if root is None:
        return []
    root = Path(root)
    for manifest in (root / "synth.json", root / "corpus" / "synth.json"):
        if manifest.is_file():
            m = json.loads(manifest.read_text())
            base = manifest.parent
            out = []
            for face in m.get("faces", []):
                for p in (base / m.get("dataset", "") / face["video"], base / face["video"]):
                    if p.is_file():
                        out.append((p, face.get("text", "")))
                        break
            return out
    if not root.is_dir():
        return []
    out = []
    for p in sorted(root.iterdir()):
        if p.suffix.lower() in VIDEO_SUFFIXES and p.is_file():
            txt = p.with_suffix(".txt")
            out.append((p, txt.read_text().strip() if txt.is_file() else ""))
    return out


def _describe(model: Any) -> str:
    mods = tuple(model.modalities)
    kind = {("audio",): "ASR", ("video",): "VSR"}.get(mods, "AVSR")
    return f"{kind} model reading {' + '.join(mods)}"


def build_app(page: Page, title: str = "Llama-AVSR", model_name: str = "") -> Any:
    """The Gradio Blocks of the page (not launched)."""
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    import gradio as gr

    demo = page.demo
    av = len(tuple(demo.model.modalities)) > 1

    def show(view: View) -> tuple:
        return (
            view.clip,
            view.message,
            view.transcript,
            view.table,
            view.strip,
            view.mouth_video,
            view.waveform,
            view.audio,
            view.noise,
        )

    def clip_changed(path, noise, snr, noise_file, reference):
        return show(page.on_clip(path, noise, snr, noise_file, reference))

    def noise_changed(clip, noise, snr, noise_file, reference):
        return show(page.on_noise(clip, noise, snr, noise_file, reference))

    def slider_moved(clip, noise, snr, noise_file, reference):
        return show(page.on_noise(clip, noise, snr, noise_file, reference, slider_moved=True))

    def sweep(clip, reference, noise, noise_file, progress=gr.Progress()):  # noqa: B008 — Gradio's idiom
        return page.on_sweep(clip, reference, noise, noise_file, progress=lambda f, d: progress(f, desc=d))

    # Gradio's copies of uploads older than a day are removed every hour
    with gr.Blocks(title=title, analytics_enabled=False, delete_cache=(3600, 86400)) as app:
        gr.Markdown(
            f"# {title}\n{_describe(demo.model)}{f' — `{model_name}`' if model_name else ''}. "
            "Upload a video of a talking face, record one, or pick an example; add noise and compare "
            + ("what the model reads from both streams with what it hears alone." if av else "transcripts.")
        )
        clip_state = gr.State(None)
        with gr.Row():
            with gr.Column(scale=1):
                video_in = gr.Video(
                    sources=["upload", "webcam"],
                    include_audio=True,
                    label="your clip (upload or record)",
                    elem_id="clip",
                    webcam_options=gr.WebcamOptions(mirror=False),
                )
                reference = gr.Textbox(
                    label="reference transcript (optional: WER and the SNR sweep need it)",
                    elem_id="reference",
                    lines=1,
                )
                if demo.examples:
                    gr.Examples(
                        examples=[[str(p), text] for p, text in demo.examples],
                        inputs=[video_in, reference],
                        label="examples",
                    )
                with gr.Group():
                    noise = gr.Radio(
                        [NOISE_CLEAN, NOISE_BABBLE, NOISE_FILE],
                        value=NOISE_CLEAN,
                        label="noise",
                        elem_id="noise",
                    )
                    snr = gr.Slider(
                        *SNR_RANGE,
                        value=SNR_DEFAULT,
                        step=1,
                        label="SNR (dB): lower is noisier",
                        elem_id="snr",
                    )
                    noise_file = gr.File(
                        label="my noise file (audio or video)",
                        type="filepath",
                        elem_id="noise-file",
                        height=80,
                    )
            with gr.Column(scale=2):
                message = gr.Markdown(elem_id="message")
                transcript = gr.Textbox(
                    label="transcript", elem_id="transcript", interactive=False, lines=2, buttons=["copy"]
                )
                table = gr.Dataframe(
                    headers=TABLE_HEADERS,
                    label="side by side: each stream condition, with its decoding time",
                    elem_id="conditions",
                    interactive=False,
                    wrap=True,
                )
                with gr.Row():
                    strip = gr.Image(label="mouth crops the model reads", elem_id="strip", interactive=False)
                    mouth = gr.Video(
                        label="mouth crop + audio", elem_id="mouth", interactive=False, height=200
                    )
                wave = gr.Plot(label="waveform", elem_id="waveform")
                heard = gr.Audio(label="what the model hears", elem_id="heard", interactive=False)
                with gr.Row():
                    sweep_btn = gr.Button("WER vs SNR for this clip", elem_id="sweep")
                plot = gr.Image(
                    label="WER against SNR",
                    elem_id="wer-plot",
                    interactive=False,
                    type="filepath",
                    height=360,
                )
                sweep_msg = gr.Markdown(elem_id="sweep-message")

        outputs = [clip_state, message, transcript, table, strip, mouth, wave, heard, noise]
        inputs = [noise, snr, noise_file, reference]
        video_in.change(clip_changed, [video_in, *inputs], outputs)
        snr.release(slider_moved, [clip_state, *inputs], outputs)
        noise.input(noise_changed, [clip_state, *inputs], outputs)
        noise_file.change(noise_changed, [clip_state, *inputs], outputs)
        reference.submit(noise_changed, [clip_state, *inputs], outputs)
        sweep_btn.click(sweep, [clip_state, reference, noise, noise_file], [plot, sweep_msg])
    app.queue(default_concurrency_limit=1)  # one decoding at a time: the model is shared
    return app


def launch(
    page: Page,
    host: str = "127.0.0.1",
    port: int | None = None,
    max_upload_mb: float | None = None,
    model_name: str = "",
    block: bool = True,
    on_ready: Callable[[str], None] | None = None,
) -> Any:
    """Start the server. Returns Gradio's (app, local url, share url) when ``block`` is false."""
    app = build_app(page, model_name=model_name)
    mb = max_upload_mb if max_upload_mb is not None else page.demo.limits.max_upload_mb
    result = app.launch(
        server_name=host,
        server_port=port,
        share=False,
        max_file_size=f"{mb:g}mb",
        prevent_thread_lock=True,
        show_error=False,
        quiet=True,
        ssr_mode=False,
        allowed_paths=[str(page.workdir), *sorted({str(p.parent) for p, _ in page.demo.examples})],
    )
    url = result[1] if isinstance(result, tuple) else app.local_url
    log.warning("llama-avsr web demo on %s (Ctrl-C to stop)", url)
    if on_ready is not None:
        on_ready(url)
    if block:
        try:
            app.block_thread()
        except KeyboardInterrupt:
            pass
        finally:
            app.close()
            shutil.rmtree(page.workdir, ignore_errors=True)
    return result
