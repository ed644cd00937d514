"""`History`: every metric of a training run, epoch by epoch (what ``fit`` returns and a training
checkpoint saves)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class History:
    """Every metric per epoch: ``history.history["val_accuracy"][-1]`` is the last validation accuracy."""

    history: dict[str, list[float]] = field(default_factory=dict)
    epochs: list[int] = field(default_factory=list)

    def append(self, epoch: int, logs: dict[str, float]) -> None:
        """Record the metrics ``logs`` of the finished epoch ``epoch`` (counted from 1)."""
        self.epochs.append(epoch)
        for key, value in logs.items():
            self.history.setdefault(key, []).append(float(value))

    def to_dict(self) -> dict:
        """Plain data (JSON-ready): ``{"epochs": [...], "history": {metric: [...]}}``."""
        return {"epochs": list(self.epochs), "history": {k: list(v) for k, v in self.history.items()}}

    @classmethod
    def from_dict(cls, data: dict) -> "History":
        """The history :meth:`to_dict` wrote."""
        return cls(history={k: list(v) for k, v in data.get("history", {}).items()}, epochs=list(data["epochs"]))
