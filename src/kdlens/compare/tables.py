"""The comparison's tables: the IE-KD paper's Table 1 (test error per method,
mean ± std over seeds), Table 4 (mutual learning), the IEP paper's Table 1
(test accuracy per sample rate and method) and the per-seed numbers, as
Markdown and CSV, plus the papers' claims checked against them."""

from __future__ import annotations

import csv
import io
import statistics
from typing import Any, Mapping, Optional, Sequence

from kdlens.compare.seed_interval import paired_seed_interval

Results = Mapping[str, Mapping[str, Mapping[str, Any]]]  # title -> seed -> row
RateResults = Mapping[str, Results]  # rate label ("25%") -> Results


def rate_percent(label: str) -> float:
    """A sample-rate label as a number: "25%" -> 25.0."""
    return float(label.rstrip("%"))


def error_stats(per_seed: Mapping[str, Mapping[str, Any]], key: str = "test_error") -> dict[str, Any]:
    """Mean and sample standard deviation (n - 1) over seeds; std is None for one seed."""
    values = [row[key] for row in per_seed.values() if row.get(key) is not None]
    if not values:
        return {"mean": None, "std": None, "n": 0, "values": []}
    return {
        "mean": statistics.fmean(values),
        "std": statistics.stdev(values) if len(values) > 1 else None,
        "n": len(values),
        "values": values,
    }


def fmt_error(stats: Optional[Mapping[str, Any]]) -> str:
    if not stats or stats.get("mean") is None:
        return "-"
    if stats.get("std") is None:
        return f"{stats['mean']:.2f}"
    return f"{stats['mean']:.2f} ± {stats['std']:.2f}"


def markdown_text(text: str) -> str:
    """``text`` (a method label, a claim naming one) as literal Markdown: a ``|``
    cannot split a table cell, ``<...>`` shows as text rather than HTML, and a
    line break cannot end a table row."""
    text = str(text).replace("\\", "\\\\").replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    return " ".join(text.replace("|", "\\|").split())


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    """A Markdown table whose cells are literal text (see :func:`markdown_text`)."""
    lines = ["| " + " | ".join(map(markdown_text, header)) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(map(markdown_text, row)) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def table1(teacher_name: str, teacher_error: Optional[float], student_name: str,
           summary: Mapping[str, Mapping[str, Any]]) -> str:
    """One row in the form of the IE-KD paper's Table 1: test error (%)."""
    titles = list(summary)
    header = [f"Teacher: {teacher_name}", f"Student: {student_name}", *titles[1:]]
    teacher_cell = "-" if teacher_error is None else f"{teacher_error:.2f}"
    return markdown_table(header, [[teacher_cell, *(fmt_error(summary[t]) for t in titles)]])


def per_seed_table(results: Results) -> str:
    seeds = sorted({s for per_seed in results.values() for s in per_seed}, key=int)
    header = ["method", *(f"seed {s}" for s in seeds), "mean ± std", "train error", "training minutes (all seeds)"]
    rows = []
    for title, per_seed in results.items():
        stats = error_stats(per_seed)
        train = error_stats(per_seed, "train_error")
        minutes = sum(row.get("seconds", 0.0) for row in per_seed.values()) / 60
        cells = [f"{per_seed[s]['test_error']:.2f}" if s in per_seed else "-" for s in seeds]
        rows.append([title, *cells, fmt_error(stats), fmt_error(train), f"{minutes:.1f}"])
    return markdown_table(header, rows)


def table4(net1: str, net2: str, mutual: Mapping[str, Mapping[str, Mapping[str, Any]]]) -> str:
    """IE-KD Table 4: error of each network, independent and mutually trained."""
    header = ["Net 1", "Net 2"]
    cells = [net1, net2]
    for title, per_net in mutual.items():
        header += [f"{title} Net 1", f"{title} Net 2"]
        cells += [fmt_error(per_net.get("net1")), fmt_error(per_net.get("net2"))]
    return markdown_table(header, [cells])


def results_csv(by_rate: RateResults) -> str:
    """Every run: sample rate, method, seed and its numbers."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["rate", "method", "seed", "test_error", "train_error", "test_accuracy", "seconds"])
    for rate, results in by_rate.items():
        for title, per_seed in results.items():
            for seed, row in per_seed.items():
                writer.writerow([rate, title, seed, f"{row['test_error']:.4f}", f"{row['train_error']:.4f}",
                                 f"{row['test_accuracy']:.6f}", f"{row.get('seconds', 0.0):.1f}"])
    return buffer.getvalue()


def accuracy_stats(per_seed: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """Mean ± std of the test accuracy in %, over seeds."""
    return error_stats({s: {"accuracy": 100.0 - row["test_error"]} for s, row in per_seed.items()}, "accuracy")


def rate_table(by_rate: RateResults) -> str:
    """The IEP paper's Table 1: test accuracy (%) per sample rate (rows) and
    method (columns), mean ± std over seeds."""
    titles = list(dict.fromkeys(t for results in by_rate.values() for t in results))
    rows = [[rate, *(fmt_error(accuracy_stats(results[t])) if t in results else "-" for t in titles)]
            for rate, results in by_rate.items()]
    return markdown_table(["Rate", *titles], rows)


def rate_claims(
    by_rate: RateResults, method: str, baseline: str, rivals: Optional[list[str]] = None
) -> list[dict[str, Any]]:
    """The IEP paper's observations on its Table 1, for ``method``: it beats
    the other methods (``rivals``, by default every other column) at every
    rate, and its gain over the baseline grows as the rate falls (read as:
    larger at the lowest rate than at the highest; the gains at every rate
    are listed). ``holds`` is None where a number is missing."""
    out: list[dict[str, Any]] = []
    gains: list[tuple[float, Optional[float]]] = []
    for rate, results in by_rate.items():
        summary = {t: accuracy_stats(per_seed) for t, per_seed in results.items()}
        mine = summary.get(method, {}).get("mean")
        others = {t: s["mean"] for t, s in summary.items()
                  if t != method and (rivals is None or t in rivals) and s.get("mean") is not None}
        if mine is None or not others:
            out.append({"claim": f"{method} is the most accurate at {rate}", "holds": None, "gap": None,
                        "within_noise": None})
        else:
            best = max(others, key=others.get)
            noise = max(summary[method].get("std") or 0.0, summary[best].get("std") or 0.0)
            gap = mine - others[best]
            out.append({"claim": f"{method} is the most accurate at {rate} (best other: {best})",
                        "holds": gap > 0, "gap": gap, "within_noise": abs(gap) <= noise,
                        "paired": paired_seed_interval(results[method], results[best])})
        base = summary.get(baseline, {}).get("mean")
        gains.append((rate_percent(rate), None if mine is None or base is None else mine - base))
    known = sorted((r, g) for r, g in gains if g is not None)
    if len(known) >= 2:
        growing = known[0][1] > known[-1][1]
        out.append({"claim": f"{method}'s gain over {baseline} grows as the rate falls",
                    "holds": growing, "gap": known[0][1] - known[-1][1],
                    "gains": {f"{r:g}%": g for r, g in known}})
    return out


def claims(results: Results, baseline: str, ie_pairs: Sequence[tuple[str, str]] = ()) -> list[dict[str, Any]]:
    """The paper's two observations on Table 1, checked on these numbers with
    paired seed intervals (``kdlens.compare.seed_interval``): each IE variant
    beats its base method (``ie_pairs``: (IE title, base title), see
    ``CompareConfig.ie_pairs``), and every method beats the independently
    trained student. ``results`` is {title: {seed: row}}. Each check has
    ``verdict`` yes / no / inconclusive (None when a side is missing), ``gap``
    (test-error points saved, mean over the shared seeds) and its interval
    ``low``, ``high``."""
    checks = [(ie, base, f"{ie} beats {base}") for ie, base in ie_pairs if ie in results and base in results]
    checks += [(t, baseline, f"{t} beats the independent student") for t in results if t != baseline]
    return [{"claim": claim, "better": better, "worse": worse,
             **paired_seed_interval(results[better], results[worse])} for better, worse, claim in checks]
