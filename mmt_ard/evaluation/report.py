"""Reports of a robust evaluation: `results.json`, a markdown table, and a PNG of robust accuracy against eps.

Every accuracy is printed with its sample count and its 95 % Wilson interval, every report with its protocol, and a
flagged result (a failed gradient-masking check) is marked in the table with the names of the failed checks. Two
models evaluated on the same images under the same protocol are compared image by image (from their per-sample
files): the difference of their accuracies with a paired 95 % interval, and McNemar's exact test.
"""

from __future__ import annotations

import itertools
import json
import os
from collections import OrderedDict

from .samples import read_records
from .stats import mcnemar_exact, paired_difference_interval, wilson_interval

RESULTS_JSON = "results.json"
RESULTS_MD = "results.md"
RESULTS_PNG = "robustness.png"


def _eps_keys(results: list[dict]) -> list[str]:
    """Eps keys of all results, in increasing budget."""
    seen: dict[str, float] = {}
    for r in results:
        for key, v in r["robust_accuracy"].items():
            seen[key] = v["eps"]
    return sorted(seen, key=seen.get)


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}"


def _pct_ci(k: int | None, n: int | None, x: float | None = None) -> str:
    """`83.3 [72.1, 90.7]`: the accuracy `k / n` in % with its 95 % Wilson interval."""
    if k is None or not n:
        return _pct(x)
    low, high = wilson_interval(k, n)
    return f"{100 * k / n:.1f} [{100 * low:.1f}, {100 * high:.1f}]"


def _count(accuracy: float | None, stored: int | None, n: int) -> int | None:
    if stored is not None:
        return int(stored)
    return None if accuracy is None else round(accuracy * n)


def markdown_table(results: list[dict]) -> str:
    """One row per (model, dataset) plus a per-model mean; accuracies in %, `n` the number of images."""
    keys = _eps_keys(results)
    header = ["model", "dataset", "n", "clean"] + [f"robust {k}" for k in keys] + ["attacks", "checks"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    by_model: OrderedDict[str, list[dict]] = OrderedDict()
    for r in results:
        by_model.setdefault(r["model"], []).append(r)
    for model, rows in by_model.items():
        for r in rows:
            n_images = r["num_samples"]
            robust = []
            for k in keys:
                entry = r["robust_accuracy"].get(k, {})
                count = _count(entry.get("worst_case"), entry.get("num_robust"), n_images)
                robust.append(_pct_ci(count, n_images, entry.get("worst_case")))
            clean = _pct_ci(_count(r["clean_accuracy"], r.get("num_clean_correct"), n_images), n_images)
            checks = (
                "FLAGGED: " + ", ".join(r["failed_checks"])
                if r.get("flagged")
                else ("ok" if r.get("checks") else "not run")
            )
            n = f"{r['num_samples']}/{r['dataset_size']}" if r.get("dataset_size") else str(r["num_samples"])
            lines.append(
                "| " + " | ".join([model, r["dataset"], n, clean] + robust + [" + ".join(r["attacks"]), checks]) + " |"
            )
        if len(rows) > 1:
            mean = lambda vals: sum(vals) / len(vals) if vals else None
            robust = [
                _pct(mean([r["robust_accuracy"][k]["worst_case"] for r in rows if k in r["robust_accuracy"]]))
                for k in keys
            ]
            flagged = sum(bool(r.get("flagged")) for r in rows)
            lines.append(
                "| "
                + " | ".join(
                    [
                        f"**{model}**",
                        f"**mean of {len(rows)}**",
                        str(sum(r["num_samples"] for r in rows)),
                        _pct(mean([r["clean_accuracy"] for r in rows])),
                    ]
                    + robust
                    + ["", f"{flagged} flagged" if flagged else "ok"]
                )
                + " |"
            )
    return "\n".join(lines)


def checks_table(results: list[dict]) -> str:
    names = []
    for r in results:
        names += [c for c in r.get("checks", {}) if c not in names]
    if not names:
        return "Gradient-masking checks were not run."
    lines = ["| model | dataset | n | " + " | ".join(names) + " |", "|" + "---|" * (len(names) + 3)]
    for r in results:
        cells = []
        for c in names:
            check = r.get("checks", {}).get(c)
            cells.append("-" if check is None else ("pass" if check["passed"] else "**FAIL**"))
        lines.append(f"| {r['model']} | {r['dataset']} | {r.get('check_samples', '-')} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def skipped_note(results: list[dict]) -> list[str]:
    """Lines (ending with a blank one) counting the rows left out as bad (`bad_samples="skip"`) per result; none
    when nothing was skipped."""
    skipped = [r for r in results if r.get("num_skipped")]
    if not skipped:
        return []
    lines = [
        (
            "**Skipped rows** (`--bad-samples skip`: unreadable images or labels outside the class names). "
            "Accuracies are over the rows evaluated (`n`), without them:"
        ),
        "",
    ]
    for r in skipped:
        listed = ", ".join(str(s["row"]) for s in r.get("skipped_rows", [])[:10])
        more = ", ..." if r["num_skipped"] > 10 else ""
        lines.append(f"- {r['model']} x {r['dataset']}: {r['num_skipped']} skipped (rows {listed}{more})")
    return lines + [""]


def _hit(record: dict, key: str) -> bool:
    """Whether the image is right: clean (`key == "clean"`) or robust at eps `key`."""
    return record["clean_pred"] == record["label"] if key == "clean" else bool(record["eps"][key]["robust"])


def paired_comparisons(results: list[dict], output_dir: str) -> list[dict]:
    """Every two models evaluated on the same dataset under the same protocol, compared image by image.

    Reads the per-sample files (`samples_file`) of the results; per dataset, model pair and budget (`clean` and each
    eps key): the images both were evaluated on, each model's correct/robust count, the images only one of them gets
    right, `acc_A - acc_B` with its paired 95 % interval (Newcombe) and McNemar's exact p-value.
    """
    outcomes: dict[int, dict[int, dict]] = {}
    for i, r in enumerate(results):
        path = os.path.join(output_dir, r["samples_file"]) if r.get("samples_file") else None
        if path and os.path.isfile(path):
            outcomes[i] = read_records(path)[1]
    rows = []
    for i, j in itertools.combinations(sorted(outcomes), 2):
        a, b = results[i], results[j]
        if a["dataset"] != b["dataset"] or a.get("protocol_fingerprint") != b.get("protocol_fingerprint"):
            continue
        common = sorted(set(outcomes[i]) & set(outcomes[j]))
        if not common:
            continue
        for key in ["clean", *[k for k in a["robust_accuracy"] if k in b["robust_accuracy"]]]:
            pairs = [(_hit(outcomes[i][x], key), _hit(outcomes[j][x], key)) for x in common]
            both = sum(p and q for p, q in pairs)
            only_a = sum(p and not q for p, q in pairs)
            only_b = sum(q and not p for p, q in pairs)
            neither = len(pairs) - both - only_a - only_b
            diff, low, high = paired_difference_interval(both, only_a, only_b, neither)
            rows.append(
                {
                    "dataset": a["dataset"],
                    "eps": key,
                    "model_a": a["model"],
                    "model_b": b["model"],
                    "num_samples": len(pairs),
                    "correct_a": both + only_a,
                    "correct_b": both + only_b,
                    "only_a": only_a,
                    "only_b": only_b,
                    "difference": diff,
                    "difference_ci95": [low, high],
                    "mcnemar_p": mcnemar_exact(only_a, only_b),
                }
            )
    return rows


def paired_table(rows: list[dict]) -> str:
    header = "| dataset | eps | model A | model B | n | A | B | A - B [95 % CI] | only A | only B | McNemar p |"
    lines = [header, "|" + "---|" * 11]
    for c in rows:
        n = c["num_samples"]
        low, high = c["difference_ci95"]
        lines.append(
            f"| {c['dataset']} | {c['eps']} | {c['model_a']} | {c['model_b']} | {n} | {_pct(c['correct_a'] / n)} | "
            f"{_pct(c['correct_b'] / n)} | {100 * c['difference']:+.1f} [{100 * low:+.1f}, {100 * high:+.1f}] | "
            f"{c['only_a']} | {c['only_b']} | {c['mcnemar_p']:.3g} |"
        )
    return "\n".join(lines)


def markdown_report(report: dict) -> str:
    results = report["results"]
    summaries = sorted({r.get("protocol_summary", "") for r in results} - {""})
    parts = ["# Robust zero-shot accuracy", "", f"**{report['protocol_summary']}**", ""]
    if report["protocol"].get("description"):
        parts += [report["protocol"]["description"], ""]
    if len(summaries) > 1:
        parts += ["**Warning:** these results mix protocols:", ""] + [f"- {s}" for s in summaries] + [""]
    parts += [
        (
            "Accuracies in %, on `n` = evaluated images / images in the split (seeded subset), with their 95 % "
            "Wilson interval in brackets. Robust = worst case per image over the attacks listed (an image counts "
            "only if every attack fails)."
        ),
        "",
        markdown_table(results),
        "",
        *skipped_note(results),
        "## Gradient-masking checks",
        "",
        checks_table(results),
        "",
    ]
    flagged = [r for r in results if r.get("flagged")]
    for r in flagged:
        parts.append(
            f"- **{r['model']} x {r['dataset']}** flagged: "
            + "; ".join(f"{c}: {r['checks'][c]['message']}" for c in r["failed_checks"])
        )
    if report.get("paired_comparisons"):
        parts += [
            "",
            "## Paired comparisons",
            "",
            (
                "Two models on the same images (same protocol), image by image: `A - B` in points with its paired "
                "95 % interval (Newcombe), the images only one model gets right, and McNemar's exact test (p < 0.05: "
                "the difference is unlikely to be chance on these images)."
            ),
            "",
            paired_table(report["paired_comparisons"]),
        ]
    versions = ", ".join(f"{k} {v}" for k, v in report.get("versions", {}).items())
    parts += [
        "",
        f"Device: {report.get('device', '?')}. Versions: {versions}. Updated {report.get('updated', '')}.",
        "",
    ]
    return "\n".join(parts)


def plot_robustness(results: list[dict], path: str, title: str = "") -> None:
    """Robust accuracy (%) against eps (x 255), one panel per model side by side, one line per dataset plus the
    mean; eps 0 is the clean accuracy."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    by_model: OrderedDict[str, list[dict]] = OrderedDict()
    for r in results:
        by_model.setdefault(r["model"], []).append(r)
    n = max(len(by_model), 1)
    fig, axes = plt.subplots(1, n, figsize=(4.2 * n, 4.0), sharey=True, squeeze=False)
    for ax, (model, rows) in zip(axes[0], by_model.items()):
        curves = []
        for r in rows:
            points = [(0.0, r["clean_accuracy"])] + sorted(
                (v["eps"] * 255, v["worst_case"]) for v in r["robust_accuracy"].values()
            )
            xs, ys = zip(*points)
            ax.plot(
                xs,
                [100 * y for y in ys],
                marker="o",
                lw=1,
                alpha=0.8,
                label=f"{r['dataset']} (n={r['num_samples']})" + (" [flagged]" if r.get("flagged") else ""),
            )
            curves.append(dict(points))
        common = sorted(set.intersection(*[set(c) for c in curves])) if curves else []
        if len(rows) > 1 and common:
            ax.plot(
                common,
                [100 * sum(c[e] for c in curves) / len(curves) for e in common],
                color="black",
                lw=2.5,
                marker="s",
                label="mean",
            )
        ax.set_title(model if len(model) <= 40 else "..." + model[-37:], fontsize=9)
        ax.set_xlabel("eps (x 1/255)")
        ax.grid(alpha=0.3)
        ax.set_ylim(0, 100)
        ax.legend(fontsize=7)
    axes[0][0].set_ylabel("robust accuracy (%)")
    if title:
        import textwrap

        lines = textwrap.wrap(title, width=int(75 * n))
        fig.suptitle("\n".join(lines[:4]), fontsize=7)
        fig.tight_layout(rect=(0, 0, 1, 1 - 0.045 * min(len(lines), 4)))
    else:
        fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _atomic_write(path: str, text: str) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def write_report_files(report: dict, output_dir: str, render_markdown, plot) -> dict[str, str]:
    """Write `results.json`, `results.md` (`render_markdown(report)`) and `robustness.png`
    (`plot(results, path, title=...)`) into `output_dir`, each atomically; returns their paths."""
    os.makedirs(output_dir, exist_ok=True)
    paths = {name: os.path.join(output_dir, name) for name in (RESULTS_JSON, RESULTS_MD, RESULTS_PNG)}
    _atomic_write(paths[RESULTS_JSON], json.dumps(report, indent=2))
    _atomic_write(paths[RESULTS_MD], render_markdown(report))
    if report["results"]:
        tmp = paths[RESULTS_PNG] + ".tmp.png"
        plot(report["results"], tmp, title=report["protocol_summary"])
        os.replace(tmp, paths[RESULTS_PNG])
    return paths


def write_reports(report: dict, output_dir: str) -> dict[str, str]:
    """Write `results.json`, `results.md` and `robustness.png` into `output_dir`; returns their paths."""
    report = {**report, "paired_comparisons": paired_comparisons(report["results"], output_dir)}
    return write_report_files(report, output_dir, markdown_report, plot_robustness)
