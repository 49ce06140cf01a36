"""The results table: medians per server, smbd_py/Samba ratios, targets and by how much
they are missed; rendered as Markdown (file and terminal) and JSON (raw samples)."""
from __future__ import annotations

from .model import Cell, Spec
from .targets import LABELS, SAMBA_KO_NO, SAMBA_KO_YES, SMBD_PY

SAMBAS = (SAMBA_KO_YES, SAMBA_KO_NO)


def fmt_value(v: float) -> str:
    if v >= 1000:
        return f"{v:,.0f}"
    if v >= 100:
        return f"{v:.0f}"
    if v >= 10:
        return f"{v:.1f}"
    if v >= 1:
        return f"{v:.2f}"
    return f"{v:.3f}"


def fmt_cell(c: Cell | None) -> str:
    if c is None:
        return "not run"
    if c.na:
        return c.na
    if c.value is None:
        return "error" if c.errors else "no data"
    s = fmt_value(c.value)
    if not c.comparable:
        s += " (no break)"
    if c.errors:
        s += " (!)"
    return s


def ratio(spec: Spec, row: dict[str, Cell]) -> dict[str, float | None]:
    """smbd_py / Samba per Samba config, only where both measured the same thing."""
    ours = row.get(SMBD_PY)
    out: dict[str, float | None] = {}
    for s in SAMBAS:
        theirs = row.get(s)
        if (ours is None or theirs is None or ours.value is None or theirs.value is None
                or not ours.comparable or not theirs.comparable or theirs.value == 0
                or ours.na or theirs.na):
            out[s] = None
        else:
            out[s] = ours.value / theirs.value
    return out


def fmt_ratio(r: float | None, row: dict[str, Cell], s: str) -> str:
    if r is not None:
        return f"{r:.2f}"
    ours, theirs = row.get(SMBD_PY), row.get(s)
    why = []
    if ours is not None and ours.median is not None and not ours.comparable:
        why.append("smbd_py: no break")
    if theirs is not None and theirs.median is not None and not theirs.comparable:
        why.append("Samba: no break")
    return f"n/a ({', '.join(why)})" if why else "n/a"


def _pct(x: float) -> str:
    return f"{100 * x:.1f}%" if x < 0.1 else f"{100 * x:.0f}%"


def verdict(spec: Spec, ratios: dict[str, float | None], row: dict[str, Cell]) -> str:
    if spec.target is None:
        return ""
    op, bound = spec.target[:2], float(spec.target[2:])
    ours = row.get(SMBD_PY)
    if ours is not None and ours.na:
        return f"not evaluated: smbd_py {ours.na}"
    if ours is not None and ours.median is not None and not ours.comparable:
        broke = [LABELS[s] for s in SAMBAS
                 if (c := row.get(s)) is not None and c.median is not None and c.comparable]
        if broke:
            return (f"MISSED: smbd_py granted but sent no break (grant not backed by a kernel "
                    f"lease), while {', '.join(broke)} did")
        return "not evaluated: no server sent a break"
    parts = []
    for s in SAMBAS:
        r = ratios.get(s)
        if r is None:
            continue
        short = LABELS[s]
        if op == ">=":
            parts.append(f"met vs {short}" if r >= bound
                         else f"MISSED vs {short} by {_pct((bound - r) / bound)} "
                              f"(ratio {r:.3f} < {bound})")
        else:
            parts.append(f"met vs {short}" if r <= bound
                         else f"MISSED vs {short} by {_pct((r - bound) / bound)} "
                              f"(ratio {r:.3f} > {bound})")
    return "; ".join(parts) if parts else "not evaluated (no comparable numbers)"


def best_row(row: dict[str, Cell]) -> dict[str, Cell] | None:
    """The "best of N" companion of a row whose cells ask for it (summary median+best)."""
    if not any(c.summary == "median+best" for c in row.values()):
        return None
    return {name: c.best_only() for name, c in row.items()}


def table(specs: list[Spec], rows: dict[str, dict[str, Cell]]) -> str:
    head = ["measurement", "client", "unit", LABELS[SMBD_PY], LABELS[SAMBA_KO_YES],
            LABELS[SAMBA_KO_NO], "smbd_py / ko=yes", "smbd_py / ko=no", "target", "verdict"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]

    def line(title: str, unit: str, row: dict[str, Cell], target: str, judged: str) -> None:
        rs = ratio(spec, row)
        cells = [title, spec.client, unit,
                 fmt_cell(row.get(SMBD_PY)), fmt_cell(row.get(SAMBA_KO_YES)),
                 fmt_cell(row.get(SAMBA_KO_NO)),
                 fmt_ratio(rs[SAMBA_KO_YES], row, SAMBA_KO_YES),
                 fmt_ratio(rs[SAMBA_KO_NO], row, SAMBA_KO_NO), target,
                 verdict(spec, rs, row) if judged else ""]
        lines.append("| " + " | ".join(c.replace("|", "/") for c in cells) + " |")

    for spec in specs:
        row = rows.get(spec.id, {})
        better = "higher is better" if spec.higher_is_better else "lower is better"
        unit = f"{spec.unit} ({better})"
        best = best_row(row)
        line(spec.title, unit, row, f"ratio {spec.target}" if spec.target else "-", "yes")
        if best is not None:
            n = max((len(c.samples) for c in row.values()), default=0)
            # Not judged: the target is judged on the median row above.
            line(f"{spec.title} (best of {n})", unit, best, "- (median row is judged)", "")
    return "\n".join(lines)


def cell_notes(specs: list[Spec], rows: dict[str, dict[str, Cell]]) -> list[str]:
    out = []
    for spec in specs:
        for name, c in rows.get(spec.id, {}).items():
            for n in c.notes:
                out.append(f"- {spec.id} / {LABELS[name]}: {n}")
            for e in dict.fromkeys(c.errors):
                out.append(f"- {spec.id} / {LABELS[name]}: ERROR {e}")
            if c.samples:
                out.append(f"- {spec.id} / {LABELS[name]}: {len(c.samples)} samples, "
                           f"min {fmt_value(min(c.samples))}, median {fmt_value(c.median)}, "
                           f"max {fmt_value(max(c.samples))}"
                           + (" (table: median row, and best in the best-of row)"
                              if c.summary == "median+best" else ""))
    return out


def markdown(*, title: str, machine: list[tuple[str, str]], settings: dict,
             specs: list[Spec], rows: dict[str, dict[str, Cell]], notes: list[str],
             profiles: dict[str, str], elapsed: float) -> str:
    md = [f"# {title}", "", "## Machine", ""]
    md += [f"- {k}: {v}" for k, v in machine]
    md += ["", "## Settings", ""]
    md += [f"- {k}: {v}" for k, v in settings.items()]
    md += [f"- wall time of the whole run: {elapsed:.0f} s", "",
           "## Results (medians; write rows add a best-of-N row, not judged; "
           "ratio = smbd_py / Samba)", "", table(specs, rows), "",
           "## Notes", ""]
    md += notes
    md += ["", "### Per-cell details", ""] + cell_notes(specs, rows)
    if profiles:
        md += ["", "## Where smbd_py's time goes (py-spy, sampled during extra runs)", ""]
        for label, text in profiles.items():
            md += [f"### {label}", "", "```", text, "```", ""]
    return "\n".join(md) + "\n"
