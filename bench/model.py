"""What a measurement is (Spec) and what one server's result for it is (Cell)."""
from __future__ import annotations

import dataclasses
import statistics


@dataclasses.dataclass(frozen=True)
class Spec:
    id: str
    title: str
    client: str
    unit: str
    higher_is_better: bool
    target: str | None = None      # ">=1.0" (ratio at least) or "<=1.0" (ratio at most)


@dataclasses.dataclass
class Cell:
    """One server's samples for one measurement, pooled over the alternating rounds."""
    samples: list[float] = dataclasses.field(default_factory=list)
    notes: list[str] = dataclasses.field(default_factory=list)
    # False when the number exists but does not measure the same thing (e.g. Samba with
    # kernel oplocks = no: the local open never blocks because nothing is broken).
    comparable: bool = True
    na: str = ""                   # "n/a: ..." instead of a number
    errors: list[str] = dataclasses.field(default_factory=list)
    # "median", or "median+best": the table also shows a "best of N" row, where single
    # samples can be dominated by machine noise that is no server's doing (the VM's
    # memory, see bench/README.md). The median stays the figure the target is judged on.
    summary: str = "median"

    @property
    def median(self) -> float | None:
        return statistics.median(self.samples) if self.samples else None

    @property
    def best(self) -> float | None:
        return max(self.samples) if self.samples else None

    @property
    def value(self) -> float | None:
        """The number the table shows and the ratios use: the median."""
        return self.median

    def best_only(self) -> "Cell":
        """This cell reduced to its best sample (the "best of N" row)."""
        return Cell(samples=[self.best] if self.samples else [], comparable=self.comparable,
                    na=self.na, errors=list(self.errors))

    def add(self, other: "Cell") -> None:
        self.samples += other.samples
        if other.summary != "median":
            self.summary = other.summary
        for n in other.notes:
            if n not in self.notes:
                self.notes.append(n)
        self.errors += other.errors
        if not other.comparable:
            self.comparable = False
        if other.na and not self.na:
            self.na = other.na

    def to_json(self) -> dict:
        return {"samples": self.samples, "median": self.median, "value": self.value,
                "best": self.best, "summary": self.summary, "notes": self.notes,
                "comparable": self.comparable, "na": self.na, "errors": self.errors}


def na(reason: str) -> Cell:
    return Cell(na=f"n/a: {reason}")


def error(reason: str) -> Cell:
    return Cell(errors=[reason])
