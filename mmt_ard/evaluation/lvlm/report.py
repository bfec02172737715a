"""Reports of an LVLM robustness evaluation: `results.json`, `results.md` (a table per task) and `robustness.png`
(score against eps, one panel per dataset, one line per model), written atomically like `mmt-ard-eval`'s."""

from __future__ import annotations

from collections import OrderedDict

from ..report import write_report_files


def _eps_keys(results: list[dict]) -> list[str]:
    seen: dict[str, float] = {}
    for r in results:
        for key, v in r["adversarial"].items():
            seen[key] = v["eps"]
    return sorted(seen, key=seen.get)


def markdown_table(results: list[dict]) -> str:
    """One row per (model, dataset): the clean and worst-case adversarial score per budget, and targeted success."""
    keys = _eps_keys(results)
    targets = []
    for k in keys:
        for t in sorted({t for r in results for t in r.get("targeted", {}).get(k, {})}):
            targets.append(f"{t} @ {k}")
    header = ["model", "dataset", "task", "metric", "n", "clean"] + keys + [f"targeted '{t}' success" for t in targets]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in results:
        adv = [f"{r['adversarial'][k]['score']:.1f}" if k in r["adversarial"] else "-" for k in keys]
        tg = []
        for t in targets:
            target, key = t.rsplit(" @ ", 1)
            v = r.get("targeted", {}).get(key, {}).get(target)
            tg.append(
                "-"
                if v is None
                else f"{100 * v['success_rate']:.1f}% (clean {100 * v.get('clean_rate', 0):.1f}%, n={v['num_samples']})"
            )
        n = f"{r['num_samples']}/{r['dataset_size']}"
        lines.append(
            "| "
            + " | ".join([r["model"], r["dataset"], r["task"], r["metric"], n, f"{r['clean']:.1f}"] + adv + tg)
            + " |"
        )
    return "\n".join(lines)


def markdown_report(report: dict) -> str:
    parts = [
        "# LVLM robustness",
        "",
        f"**{report['protocol_summary']}**",
        "",
        (
            "Scores: CIDEr (x100) for captioning, VQA accuracy (%) for VQA; clean, then the per-sample worst case "
            "over the attacks at each L-inf budget (in pixel units of 1/255, before the processor's normalisation). "
            "Targeted: share of samples whose reply contains the forced string (in brackets: the share whose clean "
            "reply already does)."
        ),
        "",
        markdown_table(report["results"]),
        "",
    ]
    versions = ", ".join(f"{k} {v}" for k, v in report.get("versions", {}).items())
    parts += [f"Device: {report.get('device', '?')}. Versions: {versions}. Updated {report.get('updated', '')}.", ""]
    return "\n".join(parts)


def plot_lvlm(results: list[dict], path: str, title: str = "") -> None:
    """Score against eps (x 255; 0 is clean): one panel per dataset, one line per model."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    by_dataset: OrderedDict[str, list[dict]] = OrderedDict()
    for r in results:
        by_dataset.setdefault(r["dataset"], []).append(r)
    n = max(len(by_dataset), 1)
    fig, axes = plt.subplots(1, n, figsize=(4.2 * n, 4.0), squeeze=False)
    for ax, (dataset, rows) in zip(axes[0], by_dataset.items()):
        for r in rows:
            points = [(0.0, r["clean"])] + sorted((v["eps"] * 255, v["score"]) for v in r["adversarial"].values())
            xs, ys = zip(*points)
            ax.plot(xs, ys, marker="o", lw=1.2, label=f"{r['model']} (n={r['num_samples']})")
        ax.set_title(f"{dataset} ({rows[0]['metric']})", fontsize=9)
        ax.set_xlabel("eps (x 1/255)")
        ax.set_ylabel(rows[0]["metric"])
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    if title:
        import textwrap

        fig.suptitle("\n".join(textwrap.wrap(title, width=int(75 * n))[:4]), fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_lvlm_reports(report: dict, output_dir: str) -> dict[str, str]:
    """Write `results.json`, `results.md` and `robustness.png` into `output_dir`; returns their paths."""
    return write_report_files(report, output_dir, markdown_report, plot_lvlm)
