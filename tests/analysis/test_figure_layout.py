"""Figures fit a page and say what they show: panel layouts wrap (at most six panels a row) and no
figure is wider than 2500 px; a caption line names model, weights, chain, training steps, data and
n; ``analyze stages`` matches stages by model and name and draws only the chosen metrics."""

from __future__ import annotations

import json

import pytest
import torch
from PIL import Image

from modinv.analysis.stages import StageErrors, model_groups, stage_errors_figure, stage_errors_plot
from modinv.errors import ModinvError
from modinv.figures import MAX_PANELS_PER_ROW, caption_line, figure_caption, image_grid, panel_grid, plt

MAX_FIGURE_WIDTH_PX = 2500


def _entry(model: str, stages: list[str], metrics=("mse", "psnr", "ssim"), n: int = 4) -> dict:
    summaries = {m: {"stages": {s: {"mean": 0.1 + i / 100, "ci95": [0.09, 0.12 + i / 100], "n": n}
                                for i, s in enumerate(stages)},
                     "mean_image_baseline": {"mean": 0.2, "ci95": [0.18, 0.22], "n": n}} for m in metrics}
    return {"model": model, "weights": "random", "n_images": n, "metrics": summaries,
            "stages": summaries["mse"]["stages"], "mean_image_baseline": summaries["mse"]["mean_image_baseline"]}


def _size(path) -> tuple[int, int]:
    with Image.open(path) as image:
        return image.size


def test_many_stages_and_metrics_wrap_under_the_width_limit(tmp_path):
    stages = [f"layer{i}" for i in range(12)]
    result = StageErrors.from_entries({"m": _entry("m", stages, metrics=("mse", "psnr", "ssim", "lpips"))})
    fig = stage_errors_plot(result)
    rows = {round(ax.get_position().y0, 3) for ax in fig.axes if ax.get_visible() and ax.has_data()}
    plt.close(fig)
    assert len(rows) >= 2  # the four panels wrapped
    width, _ = _size(stage_errors_figure(result, tmp_path / "stages.png"))
    assert width <= MAX_FIGURE_WIDTH_PX


def test_panel_grid_wraps_at_six_and_hides_the_rest():
    fig, axes = panel_grid(8, (2.0, 2.0))
    visible = [ax for ax in fig.axes if ax.axison]
    assert len(axes) == 8 and len(visible) == 8 and len(fig.axes) == 2 * MAX_PANELS_PER_ROW
    plt.close(fig)


def test_a_wide_image_grid_is_saved_under_the_limit(tmp_path):
    rows = [[torch.rand(3, 8, 8) for _ in range(14)] for _ in range(2)]
    assert _size(image_grid(rows, tmp_path / "grid.png"))[0] <= MAX_FIGURE_WIDTH_PX


def test_the_caption_names_what_the_figure_was_computed_with(tmp_path):
    line = caption_line({"model": "vit-b16", "weights": "random", "chain": "runs/v/best", "steps": 200,
                         "data": "samples", "n": 4})
    assert line == ("model vit-b16 · weights random · inverse chain runs/v/best · trained 200 steps · data samples · "
                    "n = 4 images")
    result = StageErrors.from_entries({"m": _entry("m", ["a", "b"])})
    with figure_caption(chain="runs/v/best", steps=200, data="samples"):
        fig = stage_errors_plot(result)
        plt.close(fig)
        path = stage_errors_figure(result, tmp_path / "s.png")
    assert path.stat().st_size > 0  # the caption itself is checked by caption_line above


def test_compared_models_get_a_panel_row_each_with_their_own_stages():
    result = StageErrors.from_entries({"mobilenet-v2": _entry("mobilenet-v2", ["s4", "s8", "s16", "s32"]),
                                       "swin-b": _entry("swin-b", ["bb", "s1", "s2", "s3", "s4"])})
    assert model_groups(result) == {"mobilenet-v2": ["mobilenet-v2"], "swin-b": ["swin-b"]}
    fig = stage_errors_plot(result)
    panels = [ax for ax in fig.axes if ax.axison]
    assert len(panels) == 2 * 3  # two models × three metrics
    ticks = {ax.get_title(): [t.get_text() for t in ax.get_xticklabels()] for ax in panels}
    plt.close(fig)
    assert ticks["mobilenet-v2"][:4] == ["s4", "s8", "s16", "s32"]
    assert ticks["swin-b"][:5] == ["bb", "s1", "s2", "s3", "s4"]  # Swin's s4 is its own deepest stage


def test_results_of_one_model_with_other_stage_orders_are_refused():
    result = StageErrors.from_entries({"a": _entry("m", ["x", "y"]), "b": _entry("m", ["y", "x"])})
    with pytest.raises(ModinvError, match="order its stages differently"):
        stage_errors_plot(result)


def test_compare_draws_only_the_chosen_metrics(vit, chains, main, common_args, png_widths, tmp_path):
    saved = tmp_path / "other.json"
    saved.write_text(json.dumps(_entry("vit-b16", ["bb", "enc"])))  # holds MSE, PSNR and SSIM
    out = tmp_path / "out"
    argv = common_args("vit-b16", vit.input_size, [chains["vit"]], "samples", out)
    assert main("stages", *argv, "--metrics", "mse", "--compare", str(saved)) == 0
    assert json.loads((out / "stages.json").read_text())["metrics"] == ["mse"]
    assert png_widths(out)[out / "stages.png"] <= MAX_FIGURE_WIDTH_PX


def test_robustness_bars_carry_their_interval_n_and_a_named_metric(tmp_path):
    import types

    from modinv.analysis.color_figures import robustness_figure, task_interval

    scores = {"none": 0.5, "red": 0.25}
    details = {"none": {"top1": 0.5, "n": 40, "correct": 20}, "red": {"top1": 0.25, "n": 40, "correct": 10}}
    robustness = {"metric": "top1", "scores": scores, "details": details}
    result = types.SimpleNamespace(label="vit-b16", model="vit-b16",
                                   to_json=lambda: {"label": "vit-b16", "robustness": robustness})
    low, high = task_interval("top1", details["none"])
    assert low < 0.5 < high and high - low > 0.2  # n = 40: a wide interval
    assert task_interval("AP", {"AP": 0.3, "n_images": 5}) is None
    fig_path = robustness_figure(result, tmp_path / "r.png")
    width, height = _size(fig_path)
    assert 600 <= width <= MAX_FIGURE_WIDTH_PX  # was 462 px wide with a raw "top1" axis


def test_efficiency_marks_an_estimated_memory():
    import types

    from modinv.analysis.efficiency import MEMORY_METHODS, _memory_title

    assert _memory_title(types.SimpleNamespace(memory_method=MEMORY_METHODS["cpu"])) == "peak memory (MB, estimated)"
    assert _memory_title(types.SimpleNamespace(memory_method=MEMORY_METHODS["cuda"])) == "peak memory (MB, measured)"


def test_a_long_layer_stack_continues_on_further_rows(tmp_path):
    import types

    from modinv.analysis.layers import MAX_LAYER_COLUMNS, layer_figure

    image = torch.rand(3, 16, 16)
    rows = [{"key": "s1", "source": "s1", "entry": "s1", "native_layer": 2},
            {"key": "s3", "source": "s3", "entry": "s3", "native_layer": 18}]  # Swin: 2 and 18 blocks
    figure = {"images": [image], "names": ["cat.png"], "rows": rows,
              "recons": [{"s1": [image] * 3, "s3": [image] * 19}],
              "columns": {"s1": ["0 (input)", "1", "2"], "s3": ["0 (input)"] + [str(i) for i in range(1, 19)]}}
    result = types.SimpleNamespace(figure_data=figure, model="swin-b", weights="random")
    width, height = _size(layer_figure(result, tmp_path / "layers.png"))
    assert width <= MAX_LAYER_COLUMNS * 2.2 * 110 + 200 and width <= MAX_FIGURE_WIDTH_PX  # was 4884 px for Swin
    assert height > 2.5 * 2.2 * 110  # s1 on one row, s3 on two
