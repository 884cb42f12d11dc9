from os import PathLike
from typing import Any, Callable, Literal, Optional, TypedDict, Union

import numpy as np
import numpy.typing as npt

__version__: str

class ReclmisError(Exception): ...
class BadInputError(ReclmisError): ...

class Segmentation(TypedDict):
    mask: npt.NDArray[np.uint8]
    prob: npt.NDArray[np.float32]
    poi: npt.NDArray[np.float32]
    woi: list[tuple[str, float]]
    note: str
    model_text: str
    truncated: list[str]

Image = Union[npt.NDArray[np.uint8], npt.NDArray[np.uint16], npt.NDArray[np.float32]]
Path = Union[str, PathLike[str]]

class Model:
    @property
    def config(self) -> dict[str, Any]: ...
    @property
    def image_size(self) -> int: ...
    def segment(self, image: Image, note: str) -> Segmentation: ...
    def segment_batch(self, images: list[Image], notes: list[str]) -> list[Segmentation]: ...

def load(path: Path) -> Model: ...
def train(
    data: Path,
    out: Path,
    *,
    preset: Literal["qata", "mosmed"] = "qata",
    config: Optional[Union[dict[str, Any], Path]] = None,
    clip: Optional[Path] = None,
    resume: bool = False,
    allow_missing_notes: bool = False,
    progress: Optional[Callable[[dict[str, Any]], None]] = None,
    **overrides: Any,
) -> dict[str, Any]: ...
def evaluate(
    checkpoint: Path,
    data: Path,
    split: Literal["train", "val", "test"] = "test",
    text: Literal["given", "shuffled", "empty"] = "given",
    notes: Optional[Path] = None,
    notes_as: Optional[Literal["raw", "canonical"]] = None,
    seed: int = 0,
    allow_missing_notes: bool = False,
) -> dict[str, Any]: ...
