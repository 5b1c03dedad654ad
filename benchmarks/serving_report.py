"""The serving benchmark's report: one row per point (median of the rounds),
paired per-round ratios, and the Markdown tables `serving.py` prints."""

from __future__ import annotations

from typing import Any


def _cell(row: dict[str, Any] | None) -> str:
    if row is None:
        return "– | – | –"
    return f"{row['rps']:.0f} | {row['p50_ms']:.2f} | {row['p99_ms']:.2f}"


def _median(values: list[float]) -> float:
    ordered = sorted(values)
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2


def summarize(rows: list[dict[str, Any]]) -> dict[tuple[str, str, int], dict[str, Any]]:
    """One row per (model, path, concurrency): with several rounds, the round of the
    median req/s (its p50 and p99 with it), and `rounds_rps` listing every round."""
    groups: dict[tuple[str, str, int], list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault((r["model"], r["path"], r["concurrency"]), []).append(r)
    out = {}
    for key, group in groups.items():
        ordered = sorted(group, key=lambda r: r["rps"])
        out[key] = ordered[(len(ordered) - 1) // 2] | {"rounds_rps": [r["rps"] for r in group]}
    return out


def paired_ratio(rows: list[dict[str, Any]], a: dict[str, Any] | None, b: dict[str, Any] | None) -> float | None:
    """a / b in req/s: the median of the per-round ratios (each round's paths ran
    seconds apart, so a round compares like with like on a drifting machine)."""
    if not a or not b:
        return None
    by_round = {(r["path"], r.get("round", 0)): r["rps"] for r in rows if r["model"] == a["model"] and r["concurrency"] == a["concurrency"]}
    ratios = [
        by_round[(a["path"], n)] / by_round[(b["path"], n)]
        for (path, n) in by_round
        if path == b["path"] and (a["path"], n) in by_round and by_round[(path, n)]
    ]
    return _median(ratios) if ratios else None


Summary = dict[tuple[str, str, int], dict[str, Any]]


def _ratio(rows: list[dict[str, Any]], a: dict[str, Any] | None, b: dict[str, Any] | None) -> str:
    value = paired_ratio(rows, a, b)
    return "–" if value is None else f"{value:.2f}"


def _machine_head(report: dict[str, Any]) -> str:
    cfg = report["config"]
    m = report["machine_at_start"]
    end = report["machine_at_end"]
    return (
        f"{m['cpus_usable']} cores; load average {m['load_avg'][0]:.2f} at start, {end['load_avg'][0]:.2f} at end; "
        f"inference_threads={cfg['inference_threads']}, model_threads={cfg['model_threads']}, "
        f"{cfg['duration']:g} s per point after {cfg['warmup']:g} s warm-up"
        + (f", {cfg['rounds']} rounds (medians)" if cfg.get("rounds", 1) > 1 else "")
    )


def _paths_table(report: dict[str, Any], find: Summary, *, model: str, head: str) -> list[str]:
    """raw, reference, direct and gateway side by side, one row per concurrency."""
    rows = report["results"]
    raw1 = find.get((model, "raw", 1))
    per_call = f", {raw1['p50_ms']:.2f} ms per call at concurrency 1" if raw1 else ""
    lines = [
        f"### {model}{per_call}",
        "",
        f"Machine: {head}.",
        "",
        "| conc | raw req/s | p50 ms | p99 ms | reference req/s | p50 | p99 | direct req/s | p50 | p99 "
        "| gateway req/s | p50 | p99 | b/a | c/a | direct/ref | gateway/ref | load |",
        "|---:|" + "---:|" * 17,
    ]
    for c in report["config"]["concurrency"]:
        a, ref = find.get((model, "raw", c)), find.get((model, "reference", c))
        b, g = find.get((model, "direct", c)), find.get((model, "gateway", c))
        loads = [r["load_avg"] for r in (a, ref, b, g) if r]
        load = f"{sum(loads) / len(loads):.1f}" if loads else "–"
        lines.append(
            f"| {c} | {_cell(a)} | {_cell(ref)} | {_cell(b)} | {_cell(g)} | {_ratio(rows, b, a)} | {_ratio(rows, g, a)} "
            f"| {_ratio(rows, b, ref)} | {_ratio(rows, g, ref)} | {load} |"
        )
    return lines


def _batched_table(report: dict[str, Any], find: Summary, *, model: str, head: str) -> list[str]:
    batched = [r for (m, path, _), r in sorted(find.items()) if m == model and path.startswith("batched")]
    if not batched:
        return []
    cfg = report["config"]
    lines = [
        "",
        f"Dynamic batching ({model}, max_batch_size={cfg['max_batch_size']}, "
        f"max_queue_delay_us={cfg['max_queue_delay_us']}); machine: {head}.",
        "",
        "| path | conc | batch-1 req/s | p50 | p99 | batched req/s | p50 | p99 | batched / batch-1 | load |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in batched:
        plain = find.get((model, r["path"].removeprefix("batched-"), r["concurrency"]))
        lines.append(
            f"| {r['path'].removeprefix('batched-')} | {r['concurrency']} | {_cell(plain)} | {_cell(r)} "
            f"| {_ratio(report['results'], r, plain)} | {r['load_avg']:.1f} |"
        )
    return lines


def _stream_table(report: dict[str, Any], find: Summary, *, model: str, head: str) -> list[str]:
    streamed = [r for (m, path, _), r in sorted(find.items()) if m == model and path.startswith("stream")]
    if not streamed:
        return []
    rows = report["results"]
    lines = [
        "",
        f"ModelStreamInfer ({model}, one stream, `conc` requests in flight); machine: {head}.",
        "",
        "| path | conc | unary req/s | p50 | p99 | stream req/s | p50 | p99 | stream / unary | stream / reference |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in sorted(streamed, key=lambda r: (r["path"], r["concurrency"])):
        plain = find.get((model, r["path"].removeprefix("stream-"), r["concurrency"]))
        ref = find.get((model, "reference", r["concurrency"]))
        lines.append(
            f"| {r['path'].removeprefix('stream-')} | {r['concurrency']} | {_cell(plain)} | {_cell(r)} "
            f"| {_ratio(rows, r, plain)} | {_ratio(rows, r, ref)} |"
        )
    return lines


def tables(report: dict[str, Any]) -> str:
    """Markdown tables; `load` is the 1-minute load average when the row's points were taken.
    With `--rounds` > 1 a cell is the round of median req/s and a ratio the median of the
    per-round ratios."""
    find = summarize(report["results"])
    head = _machine_head(report)
    lines: list[str] = []
    for model in report["config"]["models"]:
        lines += _paths_table(report, find, model=model, head=head)
        lines += _batched_table(report, find, model=model, head=head)
        lines += _stream_table(report, find, model=model, head=head)
        lines.append("")
    return "\n".join(lines)
