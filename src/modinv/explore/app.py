"""The page: a Gradio Blocks layout over :mod:`modinv.explore.compute` (the only module that imports Gradio).

    app = build_app(explorer)                       # gr.Blocks, not started
    serve(app, host="127.0.0.1", port=7860)         # blocks until Ctrl-C

Nothing leaves the machine: analytics and Gradio's version check are off, no share link is made,
server-side rendering (a Node process) is off, and the default theme's fonts are served by the
app itself. Each browser session has its own :class:`~modinv.explore.compute.Session` in a
``gr.State``; the :class:`~modinv.explore.compute.Explorer` (model and chains) is shared read-only.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any, Callable, Sequence

from modinv.analysis.color_filters import FILTERS, LABELS as FILTER_LABELS
from modinv.analysis.token_noise import DEFAULT_FRACTION
from modinv.data import SAMPLE_PHOTOS
from modinv.errors import ModinvError
from modinv.explore.compute import NONE, Explorer, Perturbation, Session, explore, token_stages
from modinv.explore.export import save_view
from modinv.explore.inputs import read_upload, sample_photo
from modinv.explore.views import detections_image, numbers_markdown, output_markdown, perturbation_title, row

OFFLINE_ENV = {"GRADIO_ANALYTICS_ENABLED": "False", "HF_HUB_DISABLE_TELEMETRY": "1"}
MAX_UPLOAD = "50mb"
# a gallery row as high as its images (Gradio keeps room for several rows), captions on two lines
CSS = (".grid-wrap.fixed-height { min-height: 0 !important; height: auto !important; max-height: none !important; }\n"
       ".caption-label { white-space: normal !important; }")


def _gradio():
    """Gradio, imported with its telemetry off; one sentence when the ``app`` extra is missing."""
    for key, value in OFFLINE_ENV.items():
        os.environ.setdefault(key, value)
    try:
        import gradio as gr
    except ImportError:
        raise ModinvError("modinv explore needs Gradio: pip install 'modinv[app]'") from None
    return gr


def _probe_token_stages(explorer: Explorer) -> list[str]:
    import torch

    return token_stages(explorer.model, explorer.forward(torch.zeros(3, *explorer.size)))


def build_app(explorer: Explorer, samples: Sequence[str] = SAMPLE_PHOTOS, title: str | None = None):
    """The page for ``explorer`` as a ``gr.Blocks`` (not started; see :func:`serve`)."""
    gr = _gradio()
    labels = list(explorer.chains)
    model = explorer.model
    title = title or f"modinv explore: {model.name}"
    downloads = tempfile.mkdtemp(prefix="modinv-explore-")
    with gr.Blocks(title=title, analytics_enabled=False) as app:
        session = gr.State(Session)
        gr.Markdown(f"## {title}\n{model.name} ({model.weights}), input {explorer.size[0]}×{explorer.size[1]}; "
                    + "; ".join(f"chain **{label}**: {', '.join(s + '⁻¹' for s in explorer.stages[label])}"
                                for label in labels))
        with gr.Row():
            sample = gr.Dropdown(list(samples), value=None, label="sample photo", elem_id="sample")
            upload = gr.UploadButton("or upload an image", type="filepath", elem_id="upload")
        perturbation, run = _perturbation_controls(gr, explorer)
        message, rows, perturbed_rows, output, detected, table = _outputs(gr, explorer)
        with gr.Row():
            save = gr.Button("Download row (PNG) and numbers (JSON)", elem_id="save")
            files = gr.File(label="downloads", file_count="multiple", elem_id="files")

        controls = [session, *perturbation]
        shown = [message, *rows, *perturbed_rows, output, detected, table]

        def update(state: Session, *values: Any, progress=gr.Progress()):
            try:
                view = explore(explorer, state, _perturbation(*values), lambda f, text: progress(f, desc=text))
            except ModinvError as exc:
                return [f"**{exc}**"] + [gr.update()] * (len(shown) - 1)
            return _shown(view, labels, gr)

        def choose(state: Session, name: str | None):
            if name:
                state.set_photo(sample_photo(name, explorer.size))
            return state

        def take(state: Session, path: str | None):
            """Read the upload into the session; the message, and whether to show it (False: keep the page)."""
            try:
                state.set_photo(read_upload(path, explorer.size))
            except ModinvError as exc:
                return state, f"**{exc}**", False
            return state, "; ".join(state.photo.notes), True

        def after_upload(ok: bool, state: Session, *values: Any, progress=gr.Progress()):
            return update(state, *values, progress=progress) if ok else [gr.update()] * len(shown)

        def download(state: Session, *values: Any):
            try:
                view = explore(explorer, state, _perturbation(*values))
            except ModinvError as exc:
                return f"**{exc}**", None
            folder = tempfile.mkdtemp(dir=downloads)
            return "", [str(p) for p in save_view(explorer, view, folder)]

        sample.change(choose, [session, sample], session).then(update, controls, shown)
        uploaded = gr.State(False)
        upload.upload(take, [session, upload], [session, message, uploaded]).then(
            after_upload, [uploaded, *controls], shown)
        run.click(update, controls, shown)
        for choice in (perturbation[0], perturbation[6]):  # the filter and the token stage
            choice.change(update, controls, shown)
        save.click(download, controls, [message, files])
    app.modinv_downloads = downloads  # removed by serve() when the server stops
    return app


def _perturbation_controls(gr, explorer: Explorer) -> tuple[list[Any], Any]:
    """The inputs of :func:`_perturbation` (filter, in-rectangle, left, top, right, bottom, token
    stage, fraction, seed) and the Reconstruct button."""
    with gr.Row():
        color = gr.Dropdown([(FILTER_LABELS.get(f, f), f) for f in (NONE, *FILTERS)], value=NONE,
                            label="colour filter", elem_id="filter")
        in_rect = gr.Checkbox(label="only inside the rectangle", value=False, elem_id="in-rect")
        rect = [gr.Slider(0, 100, value=v, step=1, label=f"{name} (%)")
                for name, v in (("left", 25), ("top", 25), ("right", 75), ("bottom", 75))]
    with gr.Row():
        stages = _probe_token_stages(explorer)
        token = gr.Dropdown([NONE] + stages, value=NONE, label="token noise at stage", elem_id="token-stage",
                            interactive=bool(stages),
                            info=None if stages else f"{explorer.model.name} has no token stage")
        fraction = gr.Slider(0.01, 1.0, value=DEFAULT_FRACTION, step=0.01, label="fraction of tokens")
        seed = gr.Number(value=0, precision=0, minimum=0, label="noise seed")
        run = gr.Button("Reconstruct", variant="primary", elem_id="run")
    return [color, in_rect, *rect, token, fraction, seed], run


def _outputs(gr, explorer: Explorer) -> tuple[Any, list[Any], list[Any], Any, Any, Any]:
    """The message, one gallery row per chain, one perturbed row per chain, the model's output,
    the detections image (detectors only) and the table of numbers."""
    message = gr.Markdown(elem_id="message")
    rows, perturbed_rows = [], []
    for i, label in enumerate(explorer.chains):
        columns = len(explorer.stages[label]) + 1
        rows.append(gr.Gallery(label=f"{label}: input and reconstructions", columns=columns, format="png", rows=1,
                               object_fit="contain", elem_id=f"row-{i}"))
        perturbed_rows.append(gr.Gallery(label=f"{label}: perturbed", columns=columns, format="png", rows=1,
                                         object_fit="contain", elem_id=f"prow-{i}"))
    with gr.Row():
        output = gr.Markdown(label="model output", elem_id="output")
        detected = gr.Image(label="detections", format="png", visible=explorer.model.meta.task == "detection",
                            elem_id="detections")
    table = gr.Markdown(elem_id="numbers")
    return message, rows, perturbed_rows, output, detected, table


def _perturbation(color: str, in_rect: bool, left: float, top: float, right: float, bottom: float,
                  token: str, fraction: float, seed: float | None) -> Perturbation:
    rect = (left / 100, top / 100, right / 100, bottom / 100) if in_rect else None
    return Perturbation(color or NONE, rect, token or NONE, float(fraction), int(seed or 0))


def _shown(view, labels: list[str], gr) -> list[Any]:
    """The values of the page's outputs for ``view``: message, rows, perturbed rows, output, boxes, table."""
    notes = "; ".join(view.notes)
    rows = [row(view.image, view.original[label], f"input: {view.name}") for label in labels]
    if view.perturbed is None:
        perturbed = [None] * len(labels)
    else:
        perturbed = [row(view.perturbed_image, view.perturbed[label],
                         f"perturbed: {perturbation_title(view.perturbation)}", view.region) for label in labels]
    output = f"**model output**\n\n{output_markdown(view.output)}"
    if view.perturbed_output is not None:
        output += f"\n\n**model output, perturbed**\n\n{output_markdown(view.perturbed_output)}"
    return [notes, *rows, *perturbed, output, detections_image(view.image, view.output), numbers_markdown(view)]


def serve(app, host: str = "127.0.0.1", port: int | None = None, block: bool = True,
          announce: Callable[[str], None] | None = print) -> str:
    """Start ``app`` on ``host``:``port`` (a free port when None) without any outside connection,
    ``announce`` its address and return it. ``block``: wait until Ctrl-C, then stop the server
    and remove the page's download files."""
    app.queue(default_concurrency_limit=1)
    app.launch(server_name=host, server_port=port, share=False, inbrowser=False, prevent_thread_lock=True,
               quiet=True, ssr_mode=False, mcp_server=False, show_error=True, max_file_size=MAX_UPLOAD,
               footer_links=[], css=CSS)
    address = app.local_url
    if announce:
        announce(address)
    if block:
        try:
            app.block_thread()
        finally:
            stop(app)
    return address


def stop(app) -> None:
    """Stop the server of ``app`` and remove its download files."""
    import shutil

    app.close()
    shutil.rmtree(getattr(app, "modinv_downloads", ""), ignore_errors=True)
