"""Run logging: metrics.csv (one row per logged step and per epoch), TensorBoard when installed."""

import csv
import json
import os

try:
    from torch.utils.tensorboard import SummaryWriter
except ImportError:  # tensorboard is optional
    SummaryWriter = None


class MetricsLogger:
    """Appends rows with fixed columns to `<run_dir>/metrics.csv` and mirrors them to TensorBoard.

    The file is opened in append mode, so a resumed run continues the same table.
    """

    def __init__(self, run_dir: str, columns: list[str], tensorboard: bool = True) -> None:
        self.path = os.path.join(run_dir, "metrics.csv")
        self.columns = ["kind", "epoch", "step", *columns]
        new_file = not os.path.isfile(self.path) or os.path.getsize(self.path) == 0
        self.file = open(self.path, "a", newline="")
        self.writer = csv.DictWriter(self.file, fieldnames=self.columns, extrasaction="ignore")
        if new_file:
            self.writer.writeheader()
        self.tb = SummaryWriter(run_dir) if tensorboard and SummaryWriter is not None else None

    def log(self, kind: str, epoch: float, step: int, **values: float) -> None:
        """`kind` is "step" or "epoch"; `epoch` may be fractional for step rows."""
        row = {"kind": kind, "epoch": round(epoch, 6), "step": step}
        row.update({k: _fmt(v) for k, v in values.items() if v is not None})
        self.writer.writerow(row)
        self.file.flush()
        if self.tb is not None:
            for key, value in values.items():
                if value is not None:
                    self.tb.add_scalar(f"{kind}/{key}", value, step)

    def close(self) -> None:
        self.file.close()
        if self.tb is not None:
            self.tb.close()


class NullLogger:
    """MetricsLogger's stand-in on the DDP processes other than rank 0, which write nothing."""

    def log(self, kind: str, epoch: float, step: int, **values: float) -> None:
        pass

    def close(self) -> None:
        pass


def _fmt(value: float) -> str:
    return f"{value:.6g}"


def read_metrics(run_dir: str) -> list[dict]:
    with open(os.path.join(run_dir, "metrics.csv"), newline="") as f:
        return list(csv.DictReader(f))


def write_json(path: str, data: dict) -> None:
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        json.dump(data, f, indent=2, sort_keys=True, default=str)
        f.write("\n")
    os.replace(tmp, path)
