"""RecLMIS, language-guided medical image segmentation: the Rust library from Python.

``load`` a model, ``Model.segment`` numpy images with notes, ``train`` and ``evaluate`` as the
``reclmis`` command line does. Compute runs with the GIL released.
"""

from ._reclmis import (  # noqa: F401
    BadInputError,
    Model,
    ReclmisError,
    __version__,
    evaluate,
    load,
)
from ._reclmis import train as _train

__all__ = ["BadInputError", "Model", "ReclmisError", "evaluate", "load", "train", "__version__"]


def train(data, out, *, progress=None, **kwargs):
    """Train on a dataset in LViT layout into the run folder ``out``.

    ``preset`` ("qata" or "mosmed"), ``config`` (a dict or the path of a TOML file, merged over
    the preset), ``clip``, ``resume``, ``allow_missing_notes`` and the command line's flags as
    keyword arguments (``epochs=5``, ``image_size=112``, ``canonical_notes=True``, ...).

    ``progress`` is called with one dict per event; without it, a tqdm bar per epoch is shown
    when tqdm is installed. Returns ``{"best_val_dice", "best_epoch", "out", "history"}``.
    """
    if progress is None:
        progress = _tqdm_progress()
    return _train(str(data), str(out), progress=progress, **kwargs)


def _tqdm_progress():
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return None
    bar = None

    def on(event):
        nonlocal bar
        kind = event["event"]
        if kind == "epoch_start":
            bar = tqdm(total=event["steps"], desc=f"epoch {event['epoch']}", leave=True)
        elif kind == "step" and bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{event['loss']:.4f}", dice=f"{event['dice']:.3f}")
        elif kind == "epoch" and bar is not None:
            bar.set_postfix(val_dice=f"{event['val_dice']:.4f}")
            bar.close()
            bar = None

    return on
