"""Evaluation reports in the layout of the paper's Tables 2 and 3: JSON, Markdown and ROC plots.

Every result is given twice: per image (as the paper does) and per lesion, with the views of a
lesion fused by ``model.fusion`` (the rule the node's SR uses), so the two can be compared.
Every page and plot says "Research use only", and SYNTHETIC when the data is synthetic.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from model.fusion import FUSION_RULE
from train.metrics import (
    METHODS,
    METRIC_NAMES,
    choose_threshold,
    compute_metrics,
    fast_delong,
    mean_sd,
    roc_points,
    summary_value,
)
from train.predictions import (
    Predictions,
    concat_predictions,
    fuse_by_lesion,
    read_predictions,
    read_run_info,
    run_fold_csvs,
    run_test_csv,
)

RESEARCH_USE = "Research use only - not a medical device."
SYNTHETIC_BANNER = "SYNTHETIC data: these numbers say nothing about real performance."
COLUMNS = ("AUC (95% CI)", "ACC", "SENS", "SPEC", "PPV", "NPV")
LEVELS = (("image", "Image level"), ("lesion", "Lesion level (views fused)"))
_ROC_GRID = np.linspace(0.0, 1.0, 201)


# -------------------------------------------------------------------------- computation


def level_metrics(
    preds: Predictions, *, threshold: float | None = None, lesion_threshold: float | None = None
) -> dict[str, Any]:
    """Image-level metrics with the lesion-level (fused) ones under "lesion_level"."""
    image = compute_metrics(preds, threshold=threshold)
    image["level"] = "image"
    lesion = compute_metrics(fuse_by_lesion(preds), threshold=lesion_threshold)
    lesion["level"] = "lesion"
    lesion["fusion_rule"] = FUSION_RULE
    image["lesion_level"] = lesion
    return image


def _banner(synthetic: bool) -> dict[str, Any]:
    return {"synthetic": synthetic, "research_use_only": True}


def evaluate_predictions(
    preds: Predictions,
    out_dir: Path,
    *,
    title: str,
    threshold: float | None = None,
    synthetic: bool = False,
) -> dict[str, Any]:
    """Report one prediction set: out_dir/report.json, report.md, roc.png, confusion.png.

    ``threshold`` (binary tasks) calls p(positive) >= threshold positive at both levels;
    without it the call is the argmax.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    report = {
        "title": title,
        **_banner(synthetic),
        **level_metrics(preds, threshold=threshold, lesion_threshold=threshold),
    }
    fused = fuse_by_lesion(preds)
    heading = _plot_title(title, preds.task, synthetic)
    plot_roc(
        out_dir / "roc.png",
        [
            ("Image level", _set_curves(preds, "")),
            ("Lesion level (views fused)", _set_curves(fused, "")),
        ],
        heading,
    )
    plot_confusion(
        out_dir / "confusion.png",
        [("Image level", report), ("Lesion level (views fused)", report["lesion_level"])],
        heading,
    )
    _write_json(out_dir / "report.json", report)
    lines = _md_head(title, synthetic)
    lines += _md_task_intro(report)
    rows = [
        ("Image level", _row(report)),
        ("Lesion level (views fused)", _row(report["lesion_level"])),
    ]
    lines += _md_table(rows, first="Level")
    lines += _md_per_class(report)
    lines += ["", "![ROC](roc.png)", "", "![Confusion matrices](confusion.png)", ""]
    lines += _md_methods()
    (out_dir / "report.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return report


@dataclass(frozen=True)
class _TaskSets:
    test: Predictions
    folds: list[tuple[int, Predictions]]


def _read_task(run_dir: Path, task: str) -> _TaskSets:
    test_path = run_test_csv(run_dir, task)
    if not test_path.is_file():
        raise FileNotFoundError(f"{run_dir}: task {task} has no {test_path.name} ({test_path})")
    folds = [(k, read_predictions(path, task)) for k, path in run_fold_csvs(run_dir, task)]
    return _TaskSets(read_predictions(test_path, task), folds)


def _thresholds(sets: _TaskSets, youden: bool) -> tuple[float | None, float | None]:
    """Youden thresholds chosen on all validation folds pooled (image, lesion level)."""
    if not youden or sets.test.spec.num_classes != 2:
        return None, None
    if not sets.folds:
        raise ValueError(f"{sets.test.task}: Youden's threshold needs validation folds")
    pooled = concat_predictions([p for _, p in sets.folds])
    return choose_threshold(pooled), choose_threshold(fuse_by_lesion(pooled))


def evaluate_run(
    run_dir: Path, out_dir: Path | None = None, *, youden_threshold: bool = False
) -> dict[str, dict[str, Any]]:
    """Report a training run: per task the test set, each validation fold and their CV mean.

    Writes out_dir/<task>/report.json, roc.png and confusion.png, and out_dir/report.md
    (default out_dir: RUN_DIR/report). With ``youden_threshold`` binary tasks are called at
    the Youden threshold of the pooled validation folds (applied to the test set; the fold
    rows are then in-sample for the threshold).
    """
    run_dir = Path(run_dir)
    info = read_run_info(run_dir)
    out_dir = Path(out_dir) if out_dir is not None else run_dir / "report"
    out_dir.mkdir(parents=True, exist_ok=True)
    title = f"Training run {run_dir.name}"
    reports: dict[str, dict[str, Any]] = {}
    lines = _md_head(title, info.synthetic)
    deploy = info.deploy.value if info.deploy else None
    lines += [
        f"Run directory: `{run_dir}`. Test set: the deployed model ({deploy or 'not stated'}) "
        "on the held-out test patients; folds: each fold's best checkpoint on its "
        "validation patients.",
        "",
    ]
    if youden_threshold:
        lines += [
            "Binary tasks are called at the Youden threshold chosen on the pooled validation "
            "folds (separately for images and fused lesions); the fold rows are therefore "
            "in-sample for the threshold, the test row is not.",
            "",
        ]
    for task in info.tasks:
        sets = _read_task(run_dir, task)
        thr_image, thr_lesion = _thresholds(sets, youden_threshold)
        report = {
            "title": title,
            **_banner(info.synthetic),
            "deploy": deploy,
            "set": "test",
            **level_metrics(sets.test, threshold=thr_image, lesion_threshold=thr_lesion),
        }
        folds = []
        for k, preds in sets.folds:
            m = level_metrics(preds, threshold=thr_image, lesion_threshold=thr_lesion)
            m["fold"] = k
            m["lesion_level"]["fold"] = k
            folds.append(m)
        report["folds"] = [{k: v for k, v in f.items() if k != "lesion_level"} for f in folds]
        report["cv_mean_sd"] = _cv(report["folds"])
        report["lesion_level"]["folds"] = [f["lesion_level"] for f in folds]
        report["lesion_level"]["cv_mean_sd"] = _cv(report["lesion_level"]["folds"])
        task_dir = out_dir / task
        task_dir.mkdir(parents=True, exist_ok=True)
        heading = _plot_title(title, task, info.synthetic)
        plot_roc(task_dir / "roc.png", _run_roc_panels(sets), heading)
        plot_confusion(
            task_dir / "confusion.png",
            [
                ("Test, image level", report),
                ("Test, lesion level (views fused)", report["lesion_level"]),
            ],
            heading,
        )
        _write_json(task_dir / "report.json", report)
        reports[task] = report
        lines += _md_task_intro(report)
        for key, name in LEVELS:
            level = report if key == "image" else report["lesion_level"]
            rows = [(f"Fold {f['fold']}", _row(f)) for f in level["folds"]]
            if level["folds"]:
                rows.append(("CV mean ± SD", _cv_row(level["cv_mean_sd"])))
            rows.append(("Test", _row(level)))
            lines += [f"### {name}", ""]
            lines += _md_table(rows, first="Set")
        lines += _md_per_class(report, heading="Test set per class")
        lines += [f"![ROC]({task}/roc.png)", "", f"![Confusion]({task}/confusion.png)", ""]
    lines += _md_methods()
    (out_dir / "report.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return reports


def evaluate_named_sets(
    sets: dict[str, Predictions],
    out_dir: Path,
    title: str,
    *,
    synthetic: bool = False,
    threshold: float | None = None,
) -> dict[str, Any]:
    """Several prediction sets of one task side by side (e.g. preprocessing profiles).

    Each set after the first is also compared with the first by paired tests on the cases both
    have (``train.compare``). Writes out_dir/report.json, report.md, roc.png, confusion.png.
    """
    from train.compare import compare_predictions, format_level

    if not sets:
        raise ValueError("no prediction sets to report")
    tasks = {p.task for p in sets.values()}
    if len(tasks) != 1:
        raise ValueError(f"named sets must share one task, got {sorted(tasks)}")
    task = tasks.pop()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    results = {
        name: level_metrics(p, threshold=threshold, lesion_threshold=threshold)
        for name, p in sets.items()
    }
    names = list(sets)
    first = names[0]
    paired: dict[str, Any] = {}
    for name in names[1:]:
        try:
            paired[name] = compare_predictions(sets[name], sets[first])
        except ValueError as exc:
            paired[name] = {"skipped": str(exc)}
    report = {
        "title": title,
        **_banner(synthetic),
        "task": task,
        "sets": results,
        "paired_vs": first,
        "paired": paired,
    }
    heading = _plot_title(title, task, synthetic)
    panels = []
    for key, label in LEVELS:
        curves: list[_Curve] = []
        for name, p in sets.items():
            level_preds = p if key == "image" else fuse_by_lesion(p)
            curves += _summary_curves(level_preds, name)
        panels.append((label, curves))
    plot_roc(out_dir / "roc.png", panels, heading)
    plot_confusion(
        out_dir / "confusion.png",
        [(f"{name}, image", r) for name, r in results.items()]
        + [(f"{name}, lesion", r["lesion_level"]) for name, r in results.items()],
        heading,
    )
    _write_json(out_dir / "report.json", report)
    lines = _md_head(title, synthetic)
    lines += _md_task_intro(results[first])
    for key, label in LEVELS:
        rows = [
            (name, _row(r if key == "image" else r["lesion_level"])) for name, r in results.items()
        ]
        lines += [f"### {label}", ""] + _md_table(rows, first="Set")
    if paired:
        lines += [f"### Paired tests against {first}", "", "```"]
        for name, res in paired.items():
            lines.append(f"{name} (A) vs {first} (B):")
            if "skipped" in res:
                lines.append(f" skipped: {res['skipped']}")
                continue
            lines.extend(f" note: {m}" for m in res["alignment"]["messages"])
            lines.extend(format_level(res, "image level"))
            lines.extend(format_level(res["lesion_level"], "lesion level (views fused)"))
        lines += ["```", ""]
    lines += ["![ROC](roc.png)", "", "![Confusion matrices](confusion.png)", ""]
    lines += _md_methods()
    (out_dir / "report.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return report


def _cv(folds: Sequence[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {m: mean_sd([summary_value(f, m) for f in folds]) for m in METRIC_NAMES}


def _write_json(path: Path, data: dict[str, Any]) -> None:
    path.write_text(json.dumps(data, indent=2, allow_nan=False) + "\n", encoding="utf-8")


# ------------------------------------------------------------------------------ markdown


def _num(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.4f}"


def _with_ci(value: float | None, ci: Sequence[float] | None) -> str:
    if value is None:
        return "n/a"
    if not ci:
        return _num(value)
    return f"{_num(value)} ({_num(ci[0])}, {_num(ci[1])})"


def _row(m: dict[str, Any]) -> list[str]:
    cells = [str(m["n"]), _with_ci(m["auc"], m["auc_ci95"])]
    for name in METRIC_NAMES[1:]:
        cells.append(_with_ci(m[name]["value"], m[name]["ci95"]))
    return cells


def _cv_row(cv: dict[str, dict[str, Any]]) -> list[str]:
    cells = [""]
    for name in METRIC_NAMES:
        entry = cv[name]
        mean, sd = entry["mean"], entry["sd"]
        cells.append("n/a" if mean is None else f"{_num(mean)} ± {_num(sd)}")
    return cells


def _md_table(
    rows: Sequence[tuple[str, list[str]]], *, first: str, columns: Sequence[str] = COLUMNS
) -> list[str]:
    header = [first, "n", *columns]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join([label, *cells]) + " |" for label, cells in rows]
    return [*lines, ""]


def _md_head(title: str, synthetic: bool) -> list[str]:
    lines = [f"# Evaluation report: {title}", "", f"**{RESEARCH_USE}**", ""]
    if synthetic:
        lines += [f"**{SYNTHETIC_BANNER}**", ""]
    return lines


def _md_task_intro(m: dict[str, Any]) -> list[str]:
    counts = ", ".join(f"{c} {n}" for c, n in m["class_counts"].items())
    op = m["operating_point"]
    if m.get("threshold") is not None:
        op += f" p({m['positive_class']}) >= {m['threshold']:.4f}"
    lesion = m.get("lesion_level", {})
    if lesion.get("threshold") is not None and lesion["threshold"] != m.get("threshold"):
        op += f" (lesion level: >= {lesion['threshold']:.4f})"
    return [
        f"## {m['task']}: positive class {m['positive_class']}",
        "",
        f"{m['n']} images of {m['n_patients']} patients ({m['n_lesions']} lesions); "
        f"classes: {counts}. Operating point: {op}. Values with 95% CIs in brackets.",
        "",
    ]


def _md_per_class(report: dict[str, Any], heading: str = "Per class") -> list[str]:
    if "per_class" not in report:
        return []
    lines: list[str] = []
    for key, name in LEVELS:
        level = report if key == "image" else report["lesion_level"]
        rows = []
        for cls, m in level["per_class"].items():
            cells = [str(m["n_positive"]), _with_ci(m["auc"], m["auc_ci95"])]
            cells += [_with_ci(m[r]["value"], m[r]["ci95"]) for r in METRIC_NAMES[2:]]
            rows.append((cls, cells))
        lines += [f"### {heading} (one-vs-rest), {name.lower()}", ""]
        columns = [c for c in COLUMNS if c != "ACC"]
        lines += _md_table(rows, first="Class", columns=columns)
    return lines


def _md_methods() -> list[str]:
    lines = ["## Methods", ""]
    lines += [f"- {key}: {text}" for key, text in METHODS.items()]
    lines += [
        "- CV mean ± SD: over the folds, sample SD (n - 1).",
        "- Multiclass n column of per-class tables: cases of that class.",
        f"- Lesion level: the views of a lesion fused by their {FUSION_RULE} probability.",
        "",
    ]
    return lines


# --------------------------------------------------------------------------------- plots


@dataclass(frozen=True)
class _Curve:
    label: str
    fpr: np.ndarray
    tpr: np.ndarray
    thin: bool = False


def _plot_title(title: str, task: str, synthetic: bool) -> str:
    tail = "Research use only" + (" - SYNTHETIC data" if synthetic else "")
    return f"{title} - {task}\n{tail}"


def _set_curves(preds: Predictions, prefix: str, thin: bool = False) -> list[_Curve]:
    """Binary: one curve; multiclass: one one-vs-rest curve per class."""
    spec = preds.spec
    lead = f"{prefix} " if prefix else ""
    if spec.num_classes == 2:
        pts = roc_points(preds.labels == 1, preds.probs[:, 1])
        if pts is None:
            return []
        auc = _class_auc(preds, 1)
        label = f"{prefix} (AUC {auc:.3f})" if prefix else f"AUC {auc:.3f}"
        return [_Curve(label, *pts, thin)]
    curves = []
    for c, name in enumerate(spec.class_names):
        pts = roc_points(preds.labels == c, preds.probs[:, c])
        if pts is not None:
            curves.append(_Curve(f"{lead}{name} (AUC {_class_auc(preds, c):.3f})", *pts, thin))
    return curves


def _class_auc(preds: Predictions, c: int) -> float:
    """One-vs-rest AUC of class c (midranks; equal to scikit-learn's, tested)."""
    return float(fast_delong(preds.probs[:, c], preds.labels == c).aucs[0])


def _macro_curve(preds: Predictions, label: str, thin: bool) -> list[_Curve]:
    """Macro-average one-vs-rest ROC: the classes' TPR averaged on a common FPR grid."""
    tprs, aucs = [], []
    for c in range(preds.spec.num_classes):
        pts = roc_points(preds.labels == c, preds.probs[:, c])
        if pts is not None:
            tprs.append(np.interp(_ROC_GRID, *pts))
            aucs.append(_class_auc(preds, c))
    if not tprs:
        return []
    tpr = np.mean(tprs, axis=0)
    return [_Curve(f"{label} macro (AUC {np.mean(aucs):.3f})", _ROC_GRID, tpr, thin)]


def _summary_curves(preds: Predictions, label: str, thin: bool = False) -> list[_Curve]:
    if preds.spec.num_classes == 2:
        return _set_curves(preds, label, thin)
    return _macro_curve(preds, label, thin)


def _run_roc_panels(sets: _TaskSets) -> list[tuple[str, list[_Curve]]]:
    panels = []
    for key, name in LEVELS:
        test = sets.test if key == "image" else fuse_by_lesion(sets.test)
        curves = _set_curves(test, "Test")
        for k, fold in sets.folds:
            fold_level = fold if key == "image" else fuse_by_lesion(fold)
            curves += _summary_curves(fold_level, f"Fold {k}", thin=True)
        panels.append((name, curves))
    return panels


def plot_roc(path: Path, panels: Sequence[tuple[str, Sequence[_Curve]]], title: str) -> None:
    """ROC curves, one panel per level, AUCs in the legends (like the paper's Figs 2 and 3)."""
    fig = Figure(figsize=(6.0 * len(panels), 6.6))
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    for ax, (name, curves) in zip(axes, panels, strict=True):
        ax.plot([0, 1], [0, 1], linestyle=":", color="grey", linewidth=1)
        for curve in curves:
            ax.plot(
                curve.fpr,
                curve.tpr,
                linewidth=1.0 if curve.thin else 2.0,
                alpha=0.6 if curve.thin else 1.0,
                linestyle="--" if curve.thin else "-",
                label=curve.label,
            )
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1.01)
        ax.set_xlabel("1 - specificity (false positive rate)")
        ax.set_ylabel("Sensitivity (true positive rate)")
        ax.set_title(name)
        ax.set_aspect("equal")
        if curves:
            ax.legend(loc="lower right", fontsize=8)
        else:
            ax.text(0.5, 0.5, "ROC undefined: one class only", ha="center")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def plot_confusion(path: Path, panels: Sequence[tuple[str, dict[str, Any]]], title: str) -> None:
    """Confusion matrices (rows true, columns predicted) with counts in the cells."""
    cols = min(len(panels), 4)
    rows = -(-len(panels) // cols)
    fig = Figure(figsize=(4.8 * cols, 4.8 * rows + 0.8))
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    for ax, (name, metrics) in zip(axes, panels, strict=False):
        cm = np.asarray(metrics["confusion_matrix"]["counts"])
        labels = metrics["confusion_matrix"]["labels"]
        ax.imshow(cm, cmap="Blues")
        top = cm.max() if cm.size else 0
        for (i, j), v in np.ndenumerate(cm):
            colour = "white" if top and v > top / 2 else "black"
            ax.text(j, i, str(v), ha="center", va="center", color=colour)
        ax.set_xticks(range(len(labels)), labels, rotation=45, ha="right", fontsize=7)
        ax.set_yticks(range(len(labels)), labels, fontsize=7)
        ax.set_xlabel("Predicted")
        ax.set_ylabel("True")
        ax.set_title(f"{name} ({metrics['operating_point']})", fontsize=9)
    for ax in axes[len(panels) :]:
        ax.set_visible(False)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


# ---------------------------------------------------------------------------------- text


def _ci_text(value: float | None, ci: Sequence[float] | None) -> str:
    if value is None:
        return "n/a"
    if not ci:
        return f"{value:.3f}"
    return f"{value:.3f} (95% CI {ci[0]:.3f}-{ci[1]:.3f})"


def format_level_summary(m: dict[str, Any]) -> str:
    """One line: AUC and the rates of one metrics dict."""
    parts = [f"AUC {_ci_text(m['auc'], m['auc_ci95'])}"]
    for name, short in zip(METRIC_NAMES[1:], COLUMNS[1:], strict=True):
        parts.append(f"{short} {_ci_text(m[name]['value'], m[name]['ci95'])}")
    return f"n={m['n']}: " + "; ".join(parts)


def format_summary(report: dict[str, Any], *, lesion_level: bool = True) -> str:
    """Short text of one task's report for a terminal."""
    lines = [
        f"{report['task']} (positive class: {report['positive_class']}; "
        f"{report['n_patients']} patients; operating point {report['operating_point']})"
    ]
    if "cv_mean_sd" in report and report["folds"]:
        cv = report["cv_mean_sd"]["auc"]
        sd = f" ± {cv['sd']:.3f}" if cv["sd"] is not None else ""
        mean = "n/a" if cv["mean"] is None else f"{cv['mean']:.3f}{sd}"
        lines.append(f"  CV AUC mean ± SD over {cv['n_folds']} folds: {mean}")
    label = "test, image level" if "cv_mean_sd" in report else "image level"
    lines.append(f"  {label}: {format_level_summary(report)}")
    if lesion_level:
        label = label.replace("image level", "lesion level")
        lines.append(f"  {label}: {format_level_summary(report['lesion_level'])}")
    return "\n".join(lines)
