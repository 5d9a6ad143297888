"""`lore eval` (also `python -m evals.cli`): run the evaluation harness, or rebuild a report.

    lore eval run DATASET... [--url URL --api-key KEY] [--modes MODE...] [--out DIR] [--limit N]
                             [--max-tokens N] [--preset NAME] [--concurrency N] [--resume]
                             [--fail-under X] [--datasets-dir DIR] [--service-data-dir DIR]
    lore eval report [DIR] [--fail-under X]

DATASET is a spec of the dataset registry (`evals.datasets.registry.get_dataset`): `generator:1000`,
`babi:1`, `babi-long:1`, `propara`, `locomo:PATH` ... Without --url the embedded service is started
(and stopped) for the run, on `.data/eval-service` (see --service-data-dir). An interrupted run
continues with `--resume` (same arguments): chronicles are reused, answered queries skipped.
Exit status: 0, 1 when --fail-under's gate fails, 2 on a usage or run error, 130 on Ctrl-C.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from evals.harness import ALL_MODES, REPO, EvalError, read_records, rescore, run_evaluation

__all__ = ["main"]

DEFAULT_OUT = REPO / "evals" / "reports" / "latest"
DEFAULT_SERVICE_DIR = REPO / ".data" / "eval-service"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lore eval", description="Lorekeeper evaluation harness")
    commands = parser.add_subparsers(title="commands", metavar="COMMAND", dest="command")

    run = commands.add_parser("run", help="evaluate datasets against a service (or the embedded one)")
    run.add_argument(
        "datasets", nargs="+", metavar="DATASET", help="dataset specs, e.g. generator:1000 babi:1"
    )
    run.add_argument("--url", default=os.environ.get("LORE_EVAL_URL"),
                     help="a running service (default: start the embedded one)")  # fmt: skip
    run.add_argument(
        "--api-key", default=os.environ.get("LORE_API_KEY"), help="API key for --url (or LORE_API_KEY)"
    )
    run.add_argument("--modes", nargs="+", choices=ALL_MODES, default=list(ALL_MODES), metavar="MODE",
                     help=f"modes to compare (default all: {' '.join(ALL_MODES)})")  # fmt: skip
    run.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"output folder (default {DEFAULT_OUT})")
    run.add_argument("--limit", type=int, help="at most N queries per dataset (spread over the stream)")
    run.add_argument("--max-tokens", type=int, default=1_500, help="bundle budget (default 1500)")
    run.add_argument("--preset", default="default", help="retrieval preset (default 'default')")
    run.add_argument("--concurrency", type=int, default=1, help="streams evaluated at once (default 1)")
    run.add_argument(
        "--resume",
        action="store_true",
        help="continue the run in --out (reuse chronicles and results) instead of starting clean",
    )
    run.add_argument(
        "--fail-under",
        type=float,
        metavar="X",
        help="exit 1 unless full-mode current-state accuracy >= X and > the hybrid baseline",
    )
    run.add_argument(
        "--datasets-dir",
        type=Path,
        default=os.environ.get("LORE_EVAL_DATA") or None,
        help="where the bAbI / ProPara files are (default: the registry's, ../shared/datasets)",
    )
    run.add_argument(
        "--service-data-dir",
        default=str(DEFAULT_SERVICE_DIR),
        help=f"LORE_DATA_DIR of the embedded service (default {DEFAULT_SERVICE_DIR}; wiped at the start "
        "of a fresh run, kept afterwards so that --resume finds its chronicles; 'temp': a temp dir, "
        "deleted at the end)",
    )
    run.add_argument("--ecs-timeout", type=float, default=300.0, help="seconds to wait for ECS to catch up")
    run.add_argument(
        "--keep-bundles",
        action="store_true",
        help="store every bundle in the raw results (for `report --rescore`)",
    )
    run.add_argument("--no-progress", action="store_true", help="no progress bar")
    run.set_defaults(handler=_cmd_run)

    report = commands.add_parser("report", help="rebuild report.json, summary.md and plots from raw results")
    report.add_argument("out", type=Path, nargs="?", default=DEFAULT_OUT, help="the run's output folder")
    report.add_argument("--fail-under", type=float, metavar="X", help="as for `run`")
    report.add_argument(
        "--rescore",
        action="store_true",
        help="score kept bundles again with the current evals/metrics.py first",
    )
    report.set_defaults(handler=_cmd_report)
    return parser


def _gate_status(gate: dict[str, object] | None) -> int:
    if gate is None:
        return 0
    if gate["passed"]:
        print(f"gate passed: full-mode current-state accuracy {gate['full_state_accuracy']:.3f} "
              f">= {gate['threshold']} and > hybrid {gate['hybrid_state_accuracy']:.3f}")  # fmt: skip
        return 0
    for problem in gate["problems"]:  # type: ignore[attr-defined]
        print(f"gate FAILED: {problem}", file=sys.stderr)
    return 1


def _print_headline(report: dict[str, object]) -> None:
    overall = report["overall"]
    assert isinstance(overall, dict)
    rows = [("mode", "state acc", "all acc", "stale", "recall@10", "MRR", "tokens", "p50 ms", "p95 ms")]
    for mode, b in overall.items():
        rows.append((
            mode,
            _f(b["state"]["accuracy"]), _f(b["all"]["accuracy"]), _f(b["state"]["stale_rate"]),
            _f(b["all"]["recall@10"]), _f(b["all"]["mrr"]), _f(b["all"]["tokens"]["mean"], 0),
            _f(b["all"]["latency_ms"]["p50"], 0), _f(b["all"]["latency_ms"]["p95"], 0),
        ))  # fmt: skip
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for row in rows:
        print(
            "  ".join(
                cell.rjust(w) if i else cell.ljust(w)
                for i, (cell, w) in enumerate(zip(row, widths, strict=True))
            )
        )


def _f(value: object, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _cmd_run(args: argparse.Namespace) -> int:
    if args.limit is not None and args.limit < 1:
        raise EvalError("--limit must be at least 1")
    if not 16 <= args.max_tokens <= 100_000:
        raise EvalError("--max-tokens must be within 16..100000")
    outcome = run_evaluation(
        args.datasets,
        url=args.url,
        api_key=args.api_key,
        modes=list(dict.fromkeys(args.modes)),
        out_dir=args.out,
        limit=args.limit,
        max_tokens=args.max_tokens,
        concurrency=max(1, args.concurrency),
        preset=args.preset,
        data_dir=args.datasets_dir,
        service_data_dir=None if args.service_data_dir == "temp" else Path(args.service_data_dir),
        resume=args.resume,
        ecs_timeout=args.ecs_timeout,
        fail_under=args.fail_under,
        keep_bundles=args.keep_bundles,
        progress=not args.no_progress,
    )
    _print_headline(outcome.report)
    print(f"report: {outcome.out_dir / 'summary.md'}")
    return _gate_status(outcome.gate)


def _cmd_report(args: argparse.Namespace) -> int:
    from evals import report as reporting

    config_path = args.out / "config.json"
    if not config_path.is_file():
        raise EvalError(f"{config_path}: no such file (not an evaluation output folder?)")
    if args.rescore:
        print(f"rescored {rescore(args.out)} results")
    records = read_records(args.out)
    if not records:
        raise EvalError(f"{args.out}: no raw results")
    report = reporting.build_report(records, json.loads(config_path.read_text()), fail_under=args.fail_under)
    reporting.write_report(args.out, report, records)
    _print_headline(report)
    print(f"report: {args.out / 'summary.md'}")
    return _gate_status(report.get("gate"))


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "handler"):
        parser.print_help()
        return 2
    try:
        return int(args.handler(args))
    except EvalError as error:
        print(f"lore eval: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("lore eval: interrupted; continue with --resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
