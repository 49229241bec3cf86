"""``fedaug generate`` outputs: --overwrite, labelled grids, progress bar."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from fedaug.errors import ConfigError
from fedaug.generator import generate as generate_module
from fedaug.generator import sample as sample_module
from fedaug.generator.generate import generate_to_folder
from fedaug.generator.model import (
    GeneratorConfig,
    build_train_scheduler,
    build_unet,
    save_generator,
)
from fedaug.generator.sample import make_grid, sample_images, to_uint8, write_sample_grid

CFG = GeneratorConfig(image_size=8, channels=1, num_classes=3, block_out_channels=(8, 16))
NAMES = ["benign", "malignant", "normal"]


@pytest.fixture
def model_dir(tmp_path):
    torch.manual_seed(0)
    folder = tmp_path / "global"
    save_generator(folder, build_unet(CFG), build_train_scheduler(CFG), CFG)
    (folder / "model_card.json").write_text(json.dumps({"classes": NAMES}))
    return folder


def _dark_rows(img: Image.Image, x_end: int) -> np.ndarray:
    """Rows of ``img`` with a dark pixel left of ``x_end``."""
    a = np.asarray(img.convert("L"))[:, :x_end]
    return np.flatnonzero((a < 128).any(axis=1))


def test_generate_refuses_a_non_empty_folder_and_overwrite_leaves_no_stale_sample(
        model_dir, tmp_path, capsys):
    from fedaug.cli import main

    # Prepare: an earlier run of all three classes, and files of the user's beside it
    out = tmp_path / "samples"
    generate_to_folder(model_dir, out, num_samples=6, steps=2, progress=False)
    assert sorted(p.name for p in out.iterdir()) == ["benign", "grid.png", "malignant",
                                                     "normal", "samples.npz"]
    (out / "notes.txt").write_text("mine")
    (out / "photos").mkdir()
    (out / "photos" / "cat.png").write_bytes(b"not ours")
    (out / "benign" / "keep.txt").write_text("mine too")
    before = (out / "grid.png").read_bytes()
    # Execute: without --overwrite (library and command line), then with it, one class only
    with pytest.raises(ConfigError, match="--overwrite"):
        generate_to_folder(model_dir, out, num_samples=2, label=1, steps=2)
    code = main(["generate", "--model", str(model_dir), "--out", str(out), "--num-samples",
                 "2", "--label", "1", "--steps", "2"])
    refused = capsys.readouterr().err
    unchanged = (out / "grid.png").read_bytes() == before
    assert main(["generate", "--model", str(model_dir), "--out", str(out), "--num-samples",
                 "2", "--label", "1", "--steps", "2", "--overwrite"]) == 0
    # Assert: refused before anything was written; then only the new run's samples
    assert code == 2 and "--overwrite" in refused and "not empty" in refused and unchanged
    pngs = sorted(str(p.relative_to(out)) for p in out.glob("*/*.png"))
    assert pngs == ["malignant/00000.png", "malignant/00001.png", "photos/cat.png"]
    assert not (out / "normal").exists()
    assert (out / "notes.txt").read_text() == "mine"
    assert (out / "benign" / "keep.txt").read_text() == "mine too"
    data = np.load(out / "samples.npz")
    assert data["labels"].tolist() == [1, 1]


def test_generate_refuses_a_file_as_out_folder(model_dir, tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(ConfigError, match="is a file"):
        generate_to_folder(model_dir, tmp_path / "f", num_samples=1, steps=2, overwrite=True)


def test_make_grid_writes_each_row_label_left_of_its_row():
    # Prepare: mid-grey images, two rows
    images = np.full((4, 8, 8, 1), 128, dtype=np.uint8)
    plain = make_grid(images, rows=2, scale=4)
    # Execute
    labelled = make_grid(images, rows=2, scale=4, row_labels=["benign", "malignant"])
    rgb = make_grid(np.repeat(images, 3, axis=-1), rows=2, scale=4, row_labels=["a", "b"])
    # Assert: a label column left of the unchanged grid, with dark text in each row's band
    margin = labelled.width - plain.width
    assert margin > 20 and labelled.height == plain.height and labelled.mode == "L"
    assert np.array_equal(np.asarray(labelled)[:, margin:], np.asarray(plain))
    dark = _dark_rows(labelled, margin)
    row = 9 * 4  # (h + pad) * scale
    assert any(4 <= y < row for y in dark) and any(row + 4 <= y < 2 * row for y in dark)
    assert rgb.mode == "RGB" and rgb.width > plain.width
    assert np.array_equal(np.asarray(make_grid(images, rows=2, scale=4, row_labels=None)),
                          np.asarray(plain))
    with pytest.raises(ValueError, match="one label per row"):
        make_grid(images, rows=2, row_labels=["only one"])


def test_sample_grids_label_rows_with_class_names(model_dir, tmp_path):
    # Prepare: the grid write_sample_grid should write
    from fedaug.generator.model import load_generator

    unet, sched, _ = load_generator(model_dir)
    labels = [c for c in range(3) for _ in range(2)]
    images = to_uint8(sample_images(unet, sched, labels, num_inference_steps=2, seed=0))
    expected = make_grid(images, rows=3, scale=16, row_labels=NAMES)
    # Execute
    png = write_sample_grid(model_dir, tmp_path / "grid.png", per_class=2, steps=2, seed=0)
    info = generate_to_folder(model_dir, tmp_path / "out", num_samples=7, steps=2,
                              progress=False)
    # Assert: the server's grid has the class names; generate's grid one labelled row per
    # class, even when classes have unequal counts (3, 2, 2)
    assert np.array_equal(np.asarray(Image.open(png)), np.asarray(expected))
    grid = Image.open(info["grid"])
    scale = 96 // 8
    plain_width = (3 * 9 + 1) * scale
    margin = grid.width - plain_width
    assert margin > 20 and grid.height == (3 * 9 + 1) * scale
    dark = _dark_rows(grid, margin)
    for r in range(3):
        assert any(r * 9 * scale <= y < (r + 1) * 9 * scale for y in dark), r
    cells = np.asarray(grid)[:, margin:]
    # row 2 (class "malignant") has two samples: its third cell is blank (white)
    y, x = (1 + 9) * scale, (1 + 2 * 9) * scale
    assert (cells[y:y + 8 * scale, x:x + 8 * scale] == 255).all()


def test_generate_grid_shows_at_most_a_row_of_each_class(model_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(generate_module, "GRID_PER_CLASS", 2)
    info = generate_to_folder(model_dir, tmp_path / "o", num_samples=9, steps=2, progress=False)
    assert Image.open(info["grid"]).height == (3 * 9 + 1) * 12
    assert len(list((tmp_path / "o").glob("*/*.png"))) == 9


@pytest.mark.parametrize("terminal", [True, False])
def test_generate_shows_a_progress_bar_only_on_a_terminal(model_dir, tmp_path, monkeypatch,
                                                          capsys, terminal):
    from fedaug.cli import main

    # Prepare: stderr a terminal or not; no delay (the tiny run is over in well under 1 s)
    monkeypatch.setattr(generate_module, "_stderr_is_terminal", lambda: terminal)
    monkeypatch.setattr(sample_module, "PROGRESS_DELAY_S", 0.0)
    # Execute
    assert main(["generate", "--model", str(model_dir), "--out", str(tmp_path / "o"),
                 "--num-samples", "3", "--steps", "2"]) == 0
    err = capsys.readouterr().err
    # Assert: a tqdm bar counting the denoising steps, only on a terminal
    if terminal:
        assert "sampling" in err and "2/2" in err
    else:
        assert "sampling" not in err and "it/s" not in err and "step/s" not in err


def test_synthetic_labels_follow_a_prior_to_the_nearest_whole_count():
    from fedaug.generator.generate import synthetic_labels

    # 10 x (0.26, 0.74) = 2.6, 7.4: the remainder goes to the larger fraction
    assert np.bincount(synthetic_labels(10, 2, [0.26, 0.74])).tolist() == [3, 7]
    assert np.bincount(synthetic_labels(2000, 2, [0.26, 0.74])).tolist() == [520, 1480]
    # unnormalised proportions are normalised; None spreads the samples evenly
    assert np.bincount(synthetic_labels(8, 3, [2, 1, 1])).tolist() == [4, 2, 2]
    assert np.bincount(synthetic_labels(7, 3)).tolist() == [3, 2, 2]
    labels = synthetic_labels(9, 3, [0.5, 0.2, 0.3])
    assert len(labels) == 9 and np.all(np.diff(labels) >= 0)  # sorted by class
    for bad in ([0.5, 0.5], [1.0, -0.1, 0.1], [0.0, 0.0, 0.0], [1.0, float("nan"), 0.0]):
        with pytest.raises(ConfigError, match="3 non-negative proportions"):
            synthetic_labels(9, 3, bad)


def test_generate_draws_the_model_cards_class_prior_unless_asked_for_balanced(model_dir,
                                                                               tmp_path):
    from fedaug.cli import main
    from fedaug.generator.generate import generate
    from fedaug.generator.pipeline import read_class_prior

    card = {"classes": NAMES, "class-prior": {"proportions": [0.2, 0.5, 0.3]}}
    (model_dir / "model_card.json").write_text(json.dumps(card))
    assert read_class_prior(model_dir, 3) == pytest.approx([0.2, 0.5, 0.3])
    assert read_class_prior(model_dir, 4) is None  # does not fit the model
    _, labels, _ = generate(model_dir, num_samples=10, steps=1)
    assert np.bincount(labels).tolist() == [2, 5, 3]
    _, labels, _ = generate(model_dir, num_samples=10, steps=1, labels="balanced")
    assert np.bincount(labels).tolist() == [4, 3, 3]
    with pytest.raises(ConfigError, match="labels must be one of prior, balanced"):
        generate(model_dir, num_samples=10, steps=1, labels="uniform")
    assert main(["generate", "--model", str(model_dir), "--num-samples", "10", "--steps", "1",
                 "--labels", "balanced", "--out", str(tmp_path / "s")]) == 0
    saved = np.load(tmp_path / "s" / "samples.npz")
    assert np.bincount(saved["labels"]).tolist() == [4, 3, 3]
    # a card without a prior (no warm start, an older model): balanced
    (model_dir / "model_card.json").write_text(json.dumps({"classes": NAMES}))
    assert read_class_prior(model_dir, 3) is None
    _, labels, _ = generate(model_dir, num_samples=10, steps=1)
    assert np.bincount(labels).tolist() == [4, 3, 3]
