"""The Python package against the authors' numbers and its documented errors.

The reference folder is ``../shared`` beside the checkout, or ``RECLMIS_SHARED``.
"""

import json
import os
import pathlib
import struct

import numpy as np
import pytest

import reclmis

ROOT = pathlib.Path(__file__).resolve().parents[2]
SHARED = pathlib.Path(os.environ.get("RECLMIS_SHARED", ROOT.parent / "shared"))
PARITY = SHARED / "reference" / "official-parity" / "qata"
QATA = SHARED / "data" / "qata-cov19"


def read_safetensors(path):
    """Float32 tensors of a safetensors file, read by hand (no extra package needed)."""
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + n])
    out = {}
    for name, t in header.items():
        if name == "__metadata__" or t["dtype"] != "F32":
            continue
        a, b = t["data_offsets"]
        out[name] = np.frombuffer(raw[8 + n + a : 8 + n + b], dtype="<f4").reshape(t["shape"])
    return out


def read_png(path):
    from PIL import Image

    return np.asarray(Image.open(path).convert("RGB"))


@pytest.fixture(scope="module")
def authors_model():
    return reclmis.load(PARITY / "best_model-RecLMIS.pth.tar")


def test_segment_gives_the_authors_probabilities(authors_model):
    manifest = json.loads((PARITY / "manifest.json").read_text())
    first = manifest["inputs"][0]
    image = read_png(PARITY / "inputs" / "img" / first["image"])
    out = authors_model.segment(image, first["note"])
    ref = read_safetensors(PARITY / "io.safetensors")
    probs = ref["probs"].reshape(-1)[: 224 * 224].reshape(224, 224)
    assert out["prob"].dtype == np.float32 and out["prob"].shape == (224, 224)
    assert np.abs(out["prob"] - probs).max() < 1e-4
    poi = ref["poi"].reshape(-1)[:196].reshape(14, 14)
    assert np.abs(out["poi"] - poi).max() < 1e-5
    assert out["mask"].dtype == np.uint8
    decided = np.abs(probs - 0.5) >= 1e-4
    assert (out["mask"][decided] == (probs[decided] > 0.5)).all()
    assert out["woi"][0][0] == "bilateral"
    # The batch form gives the same numbers.
    (again,) = authors_model.segment_batch([image], [first["note"]])
    assert np.array_equal(again["prob"], out["prob"])


def test_grey_uint16_and_float_images_are_accepted(authors_model):
    grey = np.full((50, 60), 30000, dtype=np.uint16)
    out = authors_model.segment(grey, "Unilateral pulmonary infection, one infected area, lower left lung.")
    assert out["mask"].shape == (authors_model.image_size,) * 2
    as_float = authors_model.segment((grey >> 8).astype(np.float32) / 255, out["note"])
    assert np.abs(as_float["prob"] - out["prob"]).max() < 1e-6


def test_bad_arrays_raise_clear_errors(authors_model):
    note = "Bilateral pulmonary infection."
    with pytest.raises(TypeError, match="uint8, uint16 or float32"):
        authors_model.segment(np.zeros((8, 8)), note)  # float64
    with pytest.raises(ValueError, match="H×W or H×W×3"):
        authors_model.segment(np.zeros((2, 8, 8, 3), dtype=np.uint8), note)
    with pytest.raises(ValueError, match="channels"):
        authors_model.segment(np.zeros((8, 8, 4), dtype=np.uint8), note)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        authors_model.segment(np.full((8, 8), 2.0, dtype=np.float32), note)
    with pytest.raises(ValueError, match="2 images but 1 notes"):
        authors_model.segment_batch([np.zeros((8, 8), np.uint8)] * 2, [note])


def test_a_missing_checkpoint_is_bad_input(tmp_path):
    missing = tmp_path / "nope.safetensors"
    with pytest.raises(reclmis.BadInputError, match="nope.safetensors"):
        reclmis.load(missing)
    assert issubclass(reclmis.BadInputError, reclmis.ReclmisError)


def test_train_then_evaluate_a_tiny_run(tmp_path):
    events = []
    run = reclmis.train(
        QATA,
        tmp_path / "run",
        progress=events.append,
        config={"model": {"rec_layers": 1}},
        epochs=1,
        image_size=32,
        base_channels=8,
        batch_size=4,
        max_train=8,
        max_val=4,
    )
    kinds = [e["event"] for e in events]
    assert kinds[:2] == ["loading", "loaded"] and kinds[-1] == "epoch"
    assert kinds.count("step") == 2
    assert run["best_epoch"] == 1 and len(run["history"]) == 1
    assert (tmp_path / "run" / "best.safetensors").exists()
    model = reclmis.load(tmp_path / "run")
    assert model.config["rec_layers"] == 1 and model.image_size == 32

    s = reclmis.evaluate(tmp_path / "run", QATA, split="val", text="empty")
    assert s["n"] == len(s["per_image"]) == 250
    assert 0.0 <= s["dice"] <= 1.0 and s["text"] == "empty"
    with pytest.raises(reclmis.BadInputError, match="split"):
        reclmis.evaluate(tmp_path / "run", QATA, split="dev")
    with pytest.raises(reclmis.BadInputError, match="epoch"):
        reclmis.train(QATA, tmp_path / "other", epoch=1)
