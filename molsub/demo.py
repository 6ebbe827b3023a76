"""The README's main job on embedded defaults: no PACS, no broker, no trained weights needed."""

from __future__ import annotations

from pathlib import Path


def run_demo(workdir: Path) -> int:
    """SYNTHETIC study + UNTRAINED bundle -> `molsub predict` -> SR summary and heatmap PNGs."""
    from model.bundle import init_untrained, read_bundle_info
    from molsub.predict import predict_files
    from molsub.synth import write_synthetic_studies

    studies_dir, bundle_dir, out_dir = workdir / "studies", workdir / "bundle", workdir / "results"
    studies = write_synthetic_studies(studies_dir, patients=1, seed=0)
    if (bundle_dir / "bundle.json").exists():
        info = read_bundle_info(bundle_dir)
    else:
        info = init_untrained(bundle_dir)
    print(
        f"SYNTHETIC study: {studies[0].patient_id} ({studies[0].subtype}), "
        f"bundle: {info.display_name}"
    )
    report = predict_files(
        [studies_dir / studies[0].patient_id], bundle_dir=bundle_dir, out_dir=out_dir
    )
    for unit in report.units:
        print(unit.summary)
        for path in unit.written:
            kind = "heatmap PNG" if path.suffix == ".png" else "DICOM"
            print(f"  {kind:11s} {path}")
    for failure in report.failures:
        print(f"error: {failure}")
    return 1 if report.failures or not report.units else 0
