"""`sdmc_report -d ID`: compare a dataset's trained models, Table 3 / Table 4 style, in Markdown and HTML.

    sdmc_report -d 2021                      # -> $SDMC_results/Dataset2021_Stroke2021/report/
    sdmc_report -d 2021 -p sdmcPlans -c 2d -o my_report

Writes `report.md` with its PNG figures beside it and `report.html`, one self-contained file
(figures inline), each atomically.
"""

import argparse
import logging
from datetime import datetime
from pathlib import Path

from sdmcunet.reporting.collect import Results, collect_results
from sdmcunet.results.trained_model import TrainedModel
from sdmcunet.reporting.document import BulletList, Figure, Report, Section
from sdmcunet.reporting.figures import training_curves
from sdmcunet.reporting.patient_statistics import statistics_section
from sdmcunet.reporting.published import PUBLISHED_MARK, SLICE_LEVEL_SPLIT
from sdmcunet.reporting.qualitative import qualitative_section
from sdmcunet.reporting.reconstruction import reconstruction_section
from sdmcunet.reporting.render import figure_file_name, render_html, render_markdown
from sdmcunet.reporting.tables import crossval_table, table3, table4
from sdmcunet.training.trainers import MASK_AUTOENCODER_TRAINER
from sdmcunet.utils.cli import configure_logging, console_entry, non_negative_int
from sdmcunet.utils.files import atomic_write_bytes

log = logging.getLogger("sdmcunet.reporting")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="sdmc_report", description=__doc__.splitlines()[0])
    parser.add_argument("-d", dest="dataset_id", type=non_negative_int, required=True, help="dataset id, e.g. 2021")
    parser.add_argument("-p", dest="plans", default="sdmcPlans", help="plans name (default sdmcPlans)")
    parser.add_argument("-c", dest="configuration", default="2d", help="configuration (default 2d)")
    parser.add_argument("-o", dest="output", type=Path, default=None,
                        help="output folder (default $SDMC_results/Dataset{ID}_{Name}/report)")
    return parser.parse_args(argv)


def _counted_folds(names: list[str]) -> str:
    """"2 folds (0, 1)", "1 fold (all)", "no fold": a fold named 0 never reads as a count."""
    if not names:
        return "no fold"
    return f"{len(names)} fold{'s' if len(names) > 1 else ''} ({', '.join(names)})"


def _model_line(model: TrainedModel, results: Results) -> str:
    folds = model.finished_folds()
    finished = _counted_folds([fold.name for fold in folds])
    evaluated = _counted_folds([fold.name for fold in model.evaluated_folds()])
    line = f"{model.trainer}: {finished} finished, {evaluated} with a validation summary"
    unevaluated = [fold.name for fold in folds if fold.is_cross_validation and fold.summary is None]
    if unevaluated:
        line += (f"; no validation/summary.json for fold {', '.join(unevaluated)} (make it with `sdmc_train "
                 f"{results.dataset_id} {results.configuration} FOLD -tr {model.trainer} -p {results.plans_name} --val`)")
    if any(not fold.is_cross_validation for fold in folds):
        line += "; fold all trains on every case, so its validation is not held out and stays out of the tables"
    return line


def header_section(results: Results) -> Section:
    made = datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    found = [_model_line(model, results) for model in results.models.values()]
    return Section("Overview", [
        f"Dataset {results.dataset_name}, plans `{results.plans_name}`, configuration `{results.configuration}`; "
        f"made {made} from `{results.folder}`.",
        BulletList(found + [f"{trainer}: not trained" for trainer in results.not_trained]),
    ])


def comparison_section(results: Results) -> Section:
    section = Section("Models compared (Table 3 style)", [
        "Stroke2021 protocol: per class, the mean over the validation slices whose reference holds the class; "
        "Mean is the average of IS and HS. NS (non-stroke) is shown but, as published, not in the Mean. Each cell "
        "is the mean ± sample standard deviation over the model's evaluated cross-validation folds (their number "
        "in 'folds'; with one fold, its value alone). FP slice rate: among validation slices without the class in "
        "the reference, the share predicted to contain it, which the protocol does not see. HD95 (mm): each fold's "
        "mean over the cases where both prediction and reference hold the class.",
        table3(results),
        f"The last three columns ({PUBLISHED_MARK}) quote the authors, never these models: the SDMC-Seg paper's "
        f"Table 3 (mean DSC over IS and HS, one train/test split) and the same authors' later 5-fold "
        f"cross-validation (mean DSC over IS and HS, mean ± std over folds, and mean HD95 over IS and HS). Both come "
        f"from a {SLICE_LEVEL_SPLIT}, so they are not directly comparable with the measured columns, whose folds "
        f"keep each patient on one side.",
    ])
    pooled = crossval_table(results)
    if pooled is not None:
        section.blocks += ["Pooled cross-validation summaries (the slices of all listed folds scored together):", pooled]
    return section


def ablation_section(results: Results) -> Section:
    return Section("SDMC-Seg ablation (Table 4 style)", [
        "Mean DSC over IS and HS of the three SDMC-Seg variants (mean ± sample standard deviation over evaluated "
        f"folds); the last column ({PUBLISHED_MARK}) quotes the paper's Table 4 (its slice-level split).",
        table4(results),
    ])


def curves_section(results: Results) -> Section:
    def histories(models: list[TrainedModel]) -> dict:
        """Trainer -> (fold, history) of the folds trained here (an imported model's fold has no epochs)."""
        trained = {model.trainer: [(fold.name, fold.history()) for fold in model.finished_folds()] for model in models}
        return {trainer: [(fold, history) for fold, history in folds if history.train_loss]
                for trainer, folds in trained.items() if any(history.train_loss for _, history in folds)}

    groups = {}
    if segmentation := histories(results.segmentation_models):
        groups["segmentation"] = segmentation
    if MASK_AUTOENCODER_TRAINER in results.models and (mask := histories([results.models[MASK_AUTOENCODER_TRAINER]])):
        groups["mask autoencoder"] = mask
    if not groups:
        return Section("Training curves", ["No model was trained here (imported models carry no training history)."])
    caption = ("Per epoch, from each finished fold's checkpoint_final.pth: validation Dice (mean of IS and HS; for the "
               "mask autoencoder, of its reconstructions) and training loss (log scale). One line per fold, the first "
               "fold solid, the others lighter.")
    return Section("Training curves", [Figure("training_curves", training_curves(groups), caption)])


def build_report(results: Results) -> Report:
    sections = [header_section(results), comparison_section(results), statistics_section(results),
                ablation_section(results)]
    for make_section in (qualitative_section, reconstruction_section, curves_section):
        log.info("report: %s", make_section.__name__.removesuffix("_section").replace("_", " "))
        sections.append(make_section(results))
    return Report(f"sdmcunet report: {results.dataset_name}", sections)


def write_report(report: Report, output: Path) -> Path:
    """report.md with its PNGs beside it, and the self-contained report.html; returns the HTML path."""
    for figure in report.figures:
        atomic_write_bytes(output / figure_file_name(figure), figure.png)
    atomic_write_bytes(output / "report.md", render_markdown(report).encode("utf-8"))
    atomic_write_bytes(output / "report.html", render_html(report).encode("utf-8"))
    return output / "report.html"


@console_entry
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    configure_logging()
    results = collect_results(args.dataset_id, args.plans, args.configuration)
    output = args.output or results.folder / "report"
    html_path = write_report(build_report(results), output)
    print(f"report written to {html_path} and {output / 'report.md'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
