"""What a model needs to know of its data — input shape and class names — read without loading it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence


@dataclass(frozen=True)
class DataInfo:
    input_shape: tuple[int, ...]  # one sample: (channels, height, width) for images, (features,) for vectors
    class_names: tuple[str, ...]

    @classmethod
    def of(cls, input_shape: Sequence[int], class_names: Sequence[Any]) -> "DataInfo":
        return cls(tuple(int(d) for d in input_shape), tuple(str(c) for c in class_names))

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def is_image(self) -> bool:
        return len(self.input_shape) == 3

    def as_dict(self) -> dict[str, Any]:
        """Plain data, as stored in a checkpoint's hyper-parameters (``weights_only`` loading)."""
        return {
            "input_shape": list(self.input_shape),
            "num_classes": self.num_classes,
            "class_names": list(self.class_names),
        }

    @classmethod
    def from_dict(cls, stored: Mapping[str, Any]) -> "DataInfo":
        names = stored.get("class_names") or [str(i) for i in range(int(stored["num_classes"]))]
        return cls.of(stored["input_shape"], names)

    def describe(self) -> str:
        return f"inputs {'x'.join(map(str, self.input_shape))} with {self.num_classes} classes"
