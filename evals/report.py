"""Aggregate raw evaluation results into ``report.json``, ``summary.md`` and PNG plots.

The raw results are the JSON lines the harness writes (one per query and mode, see
``evals.harness``). Figures are computed per dataset x mode (overall, per group - ``state`` is the
current-state accuracy, ``history`` the rest - and per query kind) and over all datasets pooled
(``overall``: every query counts once per mode, whatever its dataset).

Per cell: ``n`` queries, ``errors`` (failed requests, scored wrong), ``accuracy``,
``stale_eligible`` / ``stale_rate`` (over queries that have stale values), the retrieval means
(recall@5, recall@10, all@5, all@10, mrr, ndcg@10, in_bundle - over queries with evidence,
``n_evidence``), ``tokens`` (mean, p50, p95, max of the bundle's ``token_count``), ``latency_ms``
(client-side wall time of the request: p50, p95, mean, max), ``server_ms`` (the bundle's
``timings_ms.total``: p50, p95) and ``degraded`` (bundles whose mode differs from the one asked
for; for ``full`` that means the service fell back to chronicle-only).

The headline *stale-fact rate* is the ``state`` group's ``stale_rate``: current-state questions
answered with a superseded value, or whose best-ranked event asserts one unflagged. The ``history``
group's ``stale_rate`` is reported apart as the *earlier-answer rate*: a history question ("where
was X before", "who gave the milk") answered with another past value (an older place, an earlier
giver). That is a retrieval or ranking miss of a question about the past - nothing superseded was
passed off as current - so it is not counted as a stale fact.
"""

from __future__ import annotations

import itertools
import json
import math
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Final

__all__ = ["LENGTH_BINS", "build_report", "check_gate", "summary_markdown", "write_report"]

RETRIEVAL_KEYS: Final = ("recall@5", "recall@10", "all@5", "all@10", "mrr", "ndcg@10", "in_bundle")
LENGTH_BINS: Final = (0, 50, 100, 200, 500, 1_000, 2_000, 5_000, 10_000, 20_000, 50_000, 100_000, 1_000_000)
PLOTS: Final = {
    "accuracy": "accuracy_stale_by_mode.png",
    "latency": "latency_by_mode.png",
    "length": "accuracy_vs_length.png",
}
MODE_ORDER: Final = ("vector", "lexical", "hybrid", "chronicle_only", "full")


def _percentile(values: Sequence[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    position = (len(ordered) - 1) * q / 100
    low, high = math.floor(position), math.ceil(position)
    value = ordered[low] + (ordered[high] - ordered[low]) * (position - low)
    return round(value, 3)


def _mean(values: Sequence[float]) -> float | None:
    return round(sum(values) / len(values), 6) if values else None


def _expected_mode(mode: str) -> str:
    return "chronicle_only" if mode == "chronicle_only" else "full"


def cell(records: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The figures of one group of records (see the module docstring)."""
    n = len(records)
    out: dict[str, Any] = {"n": n, "errors": sum(1 for r in records if r.get("error"))}
    out["accuracy"] = _mean([1.0 if r.get("correct") else 0.0 for r in records])
    eligible = [r for r in records if r.get("stale") is not None]
    out["stale_eligible"] = len(eligible)
    out["stale_rate"] = _mean([1.0 if r["stale"] else 0.0 for r in eligible])
    with_evidence = [
        r["retrieval"] for r in records if r.get("retrieval") and r["retrieval"].get("mrr") is not None
    ]
    out["n_evidence"] = len(with_evidence)
    for key in RETRIEVAL_KEYS:
        out[key] = _mean([float(m[key]) for m in with_evidence])
    tokens = [float(r["token_count"]) for r in records if r.get("token_count") is not None]
    out["tokens"] = {"mean": _mean(tokens), "p50": _percentile(tokens, 50), "p95": _percentile(tokens, 95),
                     "max": max(tokens) if tokens else None}  # fmt: skip
    latency = [float(r["latency_ms"]) for r in records if r.get("latency_ms") is not None]
    out["latency_ms"] = {"p50": _percentile(latency, 50), "p95": _percentile(latency, 95),
                         "mean": _mean(latency), "max": max(latency) if latency else None}  # fmt: skip
    server = [
        float(r["timings_ms"]["total"])
        for r in records
        if (r.get("timings_ms") or {}).get("total") is not None
    ]
    out["server_ms"] = {"p50": _percentile(server, 50), "p95": _percentile(server, 95)}
    out["degraded"] = sum(
        1 for r in records if r.get("bundle_mode") and r["bundle_mode"] != _expected_mode(str(r.get("mode")))
    )
    return out


def _modes(records: Iterable[Mapping[str, Any]], config: Mapping[str, Any]) -> list[str]:
    seen = {str(r["mode"]) for r in records}
    ordered = [m for m in config.get("modes") or MODE_ORDER if m in seen]
    return ordered + sorted(seen - set(ordered))


def _breakdown(records: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    by_kind: dict[str, list[Mapping[str, Any]]] = defaultdict(list)
    by_group: dict[str, list[Mapping[str, Any]]] = defaultdict(list)
    for r in records:
        by_kind[str(r["kind"])].append(r)
        by_group[str(r.get("group") or "history")].append(r)
    return {
        "all": cell(records),
        "state": cell(by_group.get("state", [])),
        "history": cell(by_group.get("history", [])),
        "kinds": {kind: cell(rs) for kind, rs in sorted(by_kind.items())},
    }


def _bin_label(low: int, high: int) -> str:
    return f"{low + 1}-{high}" if low else f"<={high}"


def accuracy_vs_length(records: Sequence[Mapping[str, Any]], modes: Sequence[str]) -> dict[str, Any]:
    """Accuracy by the number of events ingested when the question was asked (binned)."""
    bins = list(itertools.pairwise(LENGTH_BINS))
    out: dict[str, Any] = {"bins": [], "modes": {m: {"all": [], "state": [], "n": []} for m in modes}}
    used = []
    for low, high in bins:
        inside = [r for r in records if low < int(r.get("asked_after") or 0) <= high
                  or (low == 0 and int(r.get("asked_after") or 0) == 0)]  # fmt: skip
        if inside:
            used.append((low, high, inside))
    for low, high, inside in used:
        out["bins"].append({"low": low, "high": high, "label": _bin_label(low, high)})
        for mode in modes:
            mine = [r for r in inside if r["mode"] == mode]
            state = [r for r in mine if r.get("group") == "state"]
            out["modes"][mode]["all"].append(_mean([1.0 if r.get("correct") else 0.0 for r in mine]))
            out["modes"][mode]["state"].append(_mean([1.0 if r.get("correct") else 0.0 for r in state]))
            out["modes"][mode]["n"].append(len(mine))
    return out


def check_gate(report: Mapping[str, Any], threshold: float) -> dict[str, Any]:
    """CI gate: full-mode current-state accuracy (all datasets pooled) >= threshold and > hybrid."""
    overall = report.get("overall") or {}
    full = ((overall.get("full") or {}).get("state") or {}).get("accuracy")
    hybrid = ((overall.get("hybrid") or {}).get("state") or {}).get("accuracy")
    problems = []
    if full is None:
        problems.append("no full-mode state-kind results")
    elif full < threshold:
        problems.append(f"full-mode current-state accuracy {full:.3f} < {threshold}")
    if hybrid is None:
        problems.append("no hybrid baseline results to compare with")
    elif full is not None and not full > hybrid:
        problems.append(f"full-mode current-state accuracy {full:.3f} is not above hybrid's {hybrid:.3f}")
    return {"threshold": threshold, "full_state_accuracy": full, "hybrid_state_accuracy": hybrid,
            "passed": not problems, "problems": problems}  # fmt: skip


def build_report(
    records: Sequence[Mapping[str, Any]], config: Mapping[str, Any], *, fail_under: float | None = None
) -> dict[str, Any]:
    modes = _modes(records, config)
    datasets = [d for d in config.get("datasets") or [] if any(r["dataset"] == d for r in records)]
    datasets += sorted({str(r["dataset"]) for r in records} - set(datasets))
    report: dict[str, Any] = {"config": dict(config), "modes": modes, "datasets": {}, "overall": {}}
    for dataset in datasets:
        mine = [r for r in records if r["dataset"] == dataset]
        report["datasets"][dataset] = {
            "queries": len({(r["stream"], r["query_id"]) for r in mine}),
            "streams": len({r["stream"] for r in mine}),
            "max_asked_after": max(int(r.get("asked_after") or 0) for r in mine),
            "modes": {m: _breakdown([r for r in mine if r["mode"] == m]) for m in modes},
        }
    for mode in modes:
        report["overall"][mode] = _breakdown([r for r in records if r["mode"] == mode])
    report["accuracy_vs_length"] = accuracy_vs_length(records, modes)
    report["plots"] = dict(PLOTS)
    report["gate"] = check_gate(report, fail_under) if fail_under is not None else None
    return report


# --------------------------------------------------------------------------------------------------
# Markdown


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _metric_rows() -> list[tuple[str, Any]]:
    def g(*path: str) -> Any:
        def get(breakdown: Mapping[str, Any]) -> Any:
            value: Any = breakdown
            for key in path:
                value = (value or {}).get(key)
            return value

        return get

    return [
        ("current-state accuracy", g("state", "accuracy")),
        ("history-kind accuracy", g("history", "accuracy")),
        ("all-kinds accuracy", g("all", "accuracy")),
        ("stale-fact rate ↓ (current state)", g("state", "stale_rate")),
        ("earlier-answer rate ↓ (history kinds)", g("history", "stale_rate")),
        ("evidence recall@5", g("all", "recall@5")),
        ("evidence recall@10", g("all", "recall@10")),
        ("all-evidence@10", g("all", "all@10")),
        ("MRR", g("all", "mrr")),
        ("nDCG@10", g("all", "ndcg@10")),
        ("evidence in bundle", g("all", "in_bundle")),
        ("tokens / bundle (mean)", lambda b: _fmt(((b["all"]["tokens"] or {}).get("mean")), 0)),
        ("latency p50 / p95 ms", lambda b: f"{_fmt(b['all']['latency_ms']['p50'], 0)} / "
                                           f"{_fmt(b['all']['latency_ms']['p95'], 0)}"),
        ("queries (state / history)", lambda b: f"{b['state']['n']} / {b['history']['n']}"),
        ("stale-eligible (state / history)",
         lambda b: f"{b['state']['stale_eligible']} / {b['history']['stale_eligible']}"),
        ("errors / degraded", lambda b: f"{b['all']['errors']} / {b['all']['degraded']}"),
    ]  # fmt: skip


def _table(breakdowns: Mapping[str, Mapping[str, Any]], modes: Sequence[str]) -> list[str]:
    lines = ["| metric | " + " | ".join(modes) + " |", "|---|" + "---:|" * len(modes)]
    for label, get in _metric_rows():
        lines.append(f"| {label} | " + " | ".join(_fmt(get(breakdowns[m])) for m in modes) + " |")
    return lines


def _kind_table(breakdowns: Mapping[str, Mapping[str, Any]], modes: Sequence[str]) -> list[str]:
    kinds = sorted({k for m in modes for k in breakdowns[m]["kinds"]})
    lines = ["| kind (accuracy, n) | " + " | ".join(modes) + " |", "|---|" + "---:|" * len(modes)]
    for kind in kinds:
        cells = []
        for mode in modes:
            c = breakdowns[mode]["kinds"].get(kind)
            cells.append("–" if c is None else f"{_fmt(c['accuracy'], 2)} ({c['n']})")
        lines.append(f"| {kind} | " + " | ".join(cells) + " |")
    return lines


def summary_markdown(report: Mapping[str, Any]) -> str:
    config = report["config"]
    modes = report["modes"]
    model = config.get("embedding_model")
    lines = [
        f"# Lorekeeper evaluation ({config.get('run_id')})",
        "",
        f"- datasets: {', '.join(f'`{d}`' for d in report['datasets'])}; modes: {', '.join(modes)}",
        f"- max_tokens {config.get('max_tokens')}, preset `{config.get('preset')}`, embedding model "
        f"`{model}`, service {config.get('service_mode')} "
        f"(version {(config.get('service') or {}).get('version')})",
        f"- date {config.get('date')}, git commit `{(config.get('git_commit') or 'unknown')[:12]}`, "
        f"{config.get('seconds', '?')} s on {(config.get('machine') or {}).get('cpu_count')} CPUs "
        f"({(config.get('machine') or {}).get('processor', 'unknown CPU')})",
        "- scoring without an LLM: see `evals/metrics.py` for how answers are read off bundles",
        "",
    ]
    gate = report.get("gate")
    if gate:
        verdict = "PASSED" if gate["passed"] else "FAILED: " + "; ".join(gate["problems"])
        lines += [f"**Gate** (full current-state accuracy ≥ {gate['threshold']} and > hybrid): {verdict}", ""]
    if len(report["datasets"]) > 1:
        lines += ["## All datasets", "", *_table(report["overall"], modes), ""]
    for dataset, entry in report["datasets"].items():
        lines += [
            f"## `{dataset}`",
            "",
            f"{entry['queries']} queries over {entry['streams']} stream(s), asked after up to "
            f"{entry['max_asked_after']} events.",
            "",
            *_table(entry["modes"], modes),
            "",
            *_kind_table(entry["modes"], modes),
            "",
        ]
    plots = report.get("plots") or PLOTS
    lines += [
        "## Plots",
        "",
        f"![accuracy and stale-fact rate by mode]({plots['accuracy']})",
        "",
        f"![latency by mode]({plots['latency']})",
        "",
        f"![accuracy vs chronicle length]({plots['length']})",
        "",
        "Modes: `vector` = pgvector only, `lexical` = full-text only, `hybrid` = fused retrieval "
        "(no state), `chronicle_only` = degraded mode (state replayed from the chronicle), `full` = "
        "the product (ECS state + hybrid retrieval). Stale-fact rate: share of current-state "
        "questions with superseded values where the bundle gave one, or ranked first an event "
        "asserting one without marking it superseded. Earlier-answer rate: share of history "
        "questions with other past values (an older place, an earlier giver) answered with one. "
        "Latency is client-side wall time per context request.",
        "",
    ]
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------------
# Plots


def _figure(width: float, height: float) -> Any:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), dpi=110)
    FigureCanvasAgg(figure)
    return figure


def plot_accuracy(report: Mapping[str, Any], path: Path) -> None:
    modes = report["modes"]
    overall = report["overall"]
    figure = _figure(11, 4.2)
    left, right = figure.subplots(1, 2, gridspec_kw={"width_ratios": [2, 1]})
    groups = [("state", "current state"), ("history", "history kinds"), ("all", "all kinds")]
    width = 0.8 / len(groups)
    for i, (group, label) in enumerate(groups):
        values = [overall[m][group]["accuracy"] or 0.0 for m in modes]
        xs = [x + (i - (len(groups) - 1) / 2) * width for x in range(len(modes))]
        bars = left.bar(xs, values, width, label=label)
        left.bar_label(bars, labels=[f"{v:.2f}" for v in values], fontsize=7, padding=1)
    left.set_xticks(range(len(modes)), modes)
    left.set_ylim(0, 1.1)
    left.set_ylabel("accuracy")
    left.set_title("Answer accuracy by mode")
    left.legend(loc="upper left", fontsize=8)
    stale = [overall[m]["state"]["stale_rate"] or 0.0 for m in modes]
    bars = right.bar(range(len(modes)), stale, 0.6, color="tab:red")
    right.bar_label(bars, labels=[f"{v:.2f}" for v in stale], fontsize=7, padding=1)
    right.set_xticks(range(len(modes)), modes, rotation=30, ha="right")
    right.set_ylim(0, max(1.0, max(stale, default=0) * 1.1))
    right.set_title("Stale-fact rate, current state (lower is better)", fontsize=10)
    figure.tight_layout()
    figure.savefig(path)


def plot_latency(records: Sequence[Mapping[str, Any]], modes: Sequence[str], path: Path) -> None:
    figure = _figure(8, 4.2)
    axes = figure.subplots()
    data = [[float(r["latency_ms"]) for r in records if r["mode"] == m and r.get("latency_ms") is not None]
            for m in modes]  # fmt: skip
    axes.boxplot(data, showfliers=True, flierprops={"markersize": 2, "alpha": 0.4})
    axes.set_xticks(range(1, len(modes) + 1), modes)
    for i, values in enumerate(data, start=1):
        if values:
            axes.annotate(f"p95 {_percentile(values, 95):.0f}", (i, _percentile(values, 95) or 0),
                          fontsize=7, xytext=(12, 0), textcoords="offset points")  # fmt: skip
    axes.set_yscale("log")
    axes.set_ylabel("ms per context request (client side)")
    axes.set_title("Latency by mode")
    figure.tight_layout()
    figure.savefig(path)


def plot_length(report: Mapping[str, Any], path: Path) -> None:
    curve = report["accuracy_vs_length"]
    labels = [b["label"] for b in curve["bins"]]
    figure = _figure(10, 4.2)
    axes_all, axes_state = figure.subplots(1, 2, sharey=True)
    for mode, series in curve["modes"].items():
        for axes, key in ((axes_state, "state"), (axes_all, "all")):
            points = [(i, v) for i, v in enumerate(series[key]) if v is not None]
            if points:
                axes.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=mode)
    for axes, title in ((axes_all, "all kinds"), (axes_state, "current-state kinds")):
        axes.set_xticks(range(len(labels)), labels, rotation=30, ha="right", fontsize=8)
        axes.set_xlabel("events ingested when asked")
        axes.set_title(f"Accuracy vs chronicle length ({title})")
        axes.set_ylim(0, 1.05)
        axes.grid(alpha=0.3)
    axes_all.set_ylabel("accuracy")
    axes_state.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path)


def write_report(
    out_dir: Path, report: Mapping[str, Any], records: Sequence[Mapping[str, Any]]
) -> dict[str, Path]:
    """Write ``report.json``, ``summary.md`` and the PNGs; returns their paths."""
    out_dir = Path(out_dir)
    paths = {"json": out_dir / "report.json", "markdown": out_dir / "summary.md"}
    paths["json"].write_text(json.dumps(report, indent=1, default=str) + "\n")
    paths["markdown"].write_text(summary_markdown(report))
    if records:
        paths["accuracy"] = out_dir / PLOTS["accuracy"]
        plot_accuracy(report, paths["accuracy"])
        paths["latency"] = out_dir / PLOTS["latency"]
        plot_latency(records, report["modes"], paths["latency"])
        paths["length"] = out_dir / PLOTS["length"]
        plot_length(report, paths["length"])
    return paths
