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

    The file is opened in append mode, so a resumed run continues the same table (cut back to
    its checkpoint first: truncate_metrics); `purge_step`, a resumed run's first step, hides
    TensorBoard's events from that step on, which the run logs again.
    """

    def __init__(
        self,
        run_dir: str,
        columns: list[str],
        tensorboard: bool = True,
        purge_step: int | None = None,
    ) -> None:
        self.path = os.path.join(run_dir, "metrics.csv")
        self.columns = ["kind", "epoch", "step", *columns]
        new_file = not os.path.isfile(self.path) or os.path.getsize(self.path) == 0
        self.file = open(self.path, "a", newline="")
        self.writer = csv.DictWriter(self.file, fieldnames=self.columns, extrasaction="ignore")
        if new_file:
            self.writer.writeheader()
        self.tb = None
        if tensorboard and SummaryWriter is not None:
            self.tb = SummaryWriter(run_dir, purge_step=purge_step)

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


def truncate_metrics(source_dir: str, run_dir: str, step: int) -> int:
    """Write `run_dir`/metrics.csv as the rows of `source_dir`/metrics.csv up to global step
    `step` (a checkpoint's): what a run never stopped had logged by then. Rows logged after the
    checkpoint (a run killed before its next one) and a row cut short by the kill are dropped;
    returns how many. `source_dir` is `run_dir` for a resume in place, the original run's for a
    run continued into a new folder."""
    source = os.path.join(source_dir, "metrics.csv")
    if not os.path.isfile(source):
        return 0
    with open(source, newline="") as f:
        text = f.read()
    lines = text.splitlines(keepends=True)
    if not lines:
        return 0
    header, kept, dropped = lines[0], [], 0
    width = len(next(csv.reader([header])))
    for line in lines[1:]:
        fields = next(csv.reader([line]), [])
        complete = line.endswith("\n") and len(fields) == width
        if complete and fields[2].isdigit() and int(fields[2]) <= step:
            kept.append(line)
        else:
            dropped += 1
    target = os.path.join(run_dir, "metrics.csv")
    if not dropped and os.path.realpath(source) == os.path.realpath(target):
        return 0  # as it is: left untouched
    tmp = f"{target}.tmp"
    with open(tmp, "w", newline="") as f:
        f.write(header if header.endswith("\n") else header + "\n")
        f.writelines(kept)
    os.replace(tmp, target)
    return dropped


def write_json(path: str, data: dict) -> None:
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        json.dump(data, f, indent=2, sort_keys=True, default=str)
        f.write("\n")
    os.replace(tmp, path)
