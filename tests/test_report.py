"""sdmc_report on a small fake results tree: numbers, published marks, sections, and the HTML in Chromium."""

import re
import shutil
import subprocess

import numpy as np
import pytest
import torch
from PIL import Image
from scipy.stats import wilcoxon

from sdmcunet.evaluation.metrics import summarise_cases, to_json_safe
from sdmcunet.experiment_planning.planners import SDMCPlanner
from sdmcunet.experiment_planning.plans import configuration
from sdmcunet.imageio import write_image
from sdmcunet.networks.sdmc import MaskAutoencoder, SDMCSeg
from sdmcunet.raw_dataset import make_dataset_json
from sdmcunet.reporting import report
from sdmcunet.reporting.collect import collect_results
from sdmcunet.reporting.document import Table
from sdmcunet.reporting.patient_statistics import statistics_section
from sdmcunet.reporting.qualitative import choose_slices, class_areas
from sdmcunet.reporting.reconstruction import reconstruction_section
from sdmcunet.reporting.tables import crossval_table, table3, table4
from sdmcunet.results.checkpoints import save_checkpoint
from sdmcunet.training.progress import TrainingHistory
from sdmcunet.utils.files import atomic_write_json

NAME = "Dataset2021_Stroke2021"
ENDING = ".nii.gz"
SHAPE = (48, 40)  # original geometry (not square, as real slices need not be)
SIZE = 64  # the plans' image size
# case -> lesions drawn as (label, row slice, column slice)
CASES = {
    "101": [(1, slice(10, 20), slice(8, 18))],
    "102": [(2, slice(20, 34), slice(15, 30))],
    "103": [(1, slice(5, 12), slice(5, 12)), (2, slice(30, 40), slice(20, 30))],
    "104": [],
    "105": [(1, slice(12, 30), slice(10, 30))],
    "106": [(2, slice(8, 14), slice(8, 14))],
}
SPLITS = [{"train": ["104", "105", "106"], "val": ["101", "102", "103"]},
          {"train": ["101", "102", "103"], "val": ["104", "105", "106"]}]
# trainer -> finished folds; ResUNet34Trainer has a folder but no finished fold
TRAINED = {"UNetTrainer": [0, 1], "SegResNetTrainer": [0], "SDMCFinetunedTrainer": [0, 1],
           "SDMCPretrainedTrainer": [0], "MaskAutoencoderTrainer": [0]}
# Extra columns each trainer's predictions are shifted by, so that models differ (SDMCPretrainedTrainer
# predicts exactly as SDMCFinetunedTrainer: nothing to rank).
SHIFTS = {"UNetTrainer": 1, "SegResNetTrainer": 2}
# case_info.json: patient P1 has two slices; 105 has only a study UID; 106 no entry (its own patient).
CASE_INFO = {"101": {"patient_id": "P1"}, "102": {"patient_id": "P1"}, "103": {"patient_id": "P2"},
             "104": {"patient_id": "P3"}, "105": {"patient_id": None, "study_uid": "S5"}}
METRICS = ("DSC", "IoU", "mIoU")


def label_map(case: str, shape=SHAPE) -> np.ndarray:
    labels = np.zeros(shape, dtype=np.uint8)
    for label, rows, columns in CASES[case]:
        labels[rows, columns] = label
    return labels


def fake_summary(rng: np.random.Generator, metric_per_case: list | None = None) -> dict:
    """A validation summary with random scores; NS near 1 so that any NS in a mean would show. The per-case
    scores, which the statistics over patients read, are the real ones of the fold's predictions."""
    block = {}
    for metric in METRICS:
        scores = {"NS": 0.99, "IS": float(rng.uniform(0.3, 0.9)), "HS": float(rng.uniform(0.3, 0.9))}
        block[metric] = scores | {"Mean": (scores["IS"] + scores["HS"]) / 2}
    block["n_slices"] = {"NS": 3, "IS": 2, "HS": 2}
    return {"stroke2021": block, "false_positive_slice_rate": {"IS": float(rng.uniform(0, 0.2)), "HS": None},
            "hd95": {"IS": float(rng.uniform(1, 20)), "HS": None}, "metric_per_case": metric_per_case or []}


def fake_history(epochs: int = 4) -> dict:
    return TrainingHistory(train_loss=np.linspace(1.0, 0.3, epochs).tolist(), val_loss=[0.5] * epochs,
                           val_dice=[[0.1 * e, 0.15 * e] for e in range(epochs)], val_selection=[0.1] * epochs,
                           learning_rate=[1e-3] * epochs, epoch_seconds=[1.0] * epochs).to_state()


def tiny_networks(trainer: str, plans: dict) -> dict:
    families = configuration(plans, "2d")["families"]
    torch.manual_seed(0)
    if trainer == "MaskAutoencoderTrainer":
        return MaskAutoencoder(families["mask_autoencoder"]["networks"]["autoencoder"]).state_dict()
    if trainer == "SDMCPretrainedTrainer":
        return SDMCSeg(families["sdmc"]["networks"], families["sdmc"]["diffusion"], SIZE // 8).state_dict()
    return {}  # the report reads no other network


def write_raw_and_preprocessed(root) -> dict:
    """Raw images (CT in HU + PNG), reference label maps, preprocessed masks, splits and plans."""
    dataset_json = make_dataset_json({0: "CT", 1: "PNG"}, {"background": 0, "ischemic": 1, "hemorrhagic": 2},
                                     len(CASES), ENDING)
    raw, preprocessed = root / "SDMC_raw" / NAME, root / "SDMC_preprocessed" / NAME
    atomic_write_json(raw / "dataset.json", dataset_json)
    atomic_write_json(raw / "case_info.json", CASE_INFO)
    (preprocessed / "sdmcPlans_2d").mkdir(parents=True)
    rng = np.random.default_rng(0)
    for case in CASES:
        hounsfield = rng.uniform(-20, 100, SHAPE).astype(np.float32) + 30 * (label_map(case) > 0)
        write_image(hounsfield, raw / "imagesTr" / f"{case}_0000{ENDING}")
        write_image(np.clip(hounsfield, 0, 255).astype(np.uint8), raw / "imagesTr" / f"{case}_0001{ENDING}")
        write_image(label_map(case), preprocessed / "gt_segmentations" / f"{case}{ENDING}")
        np.save(preprocessed / "sdmcPlans_2d" / f"{case}_seg.npy", label_map(case, (SIZE, SIZE)))
        atomic_write_json(preprocessed / "sdmcPlans_2d" / f"{case}.json",
                          {"class_locations": {str(label): [[0, 0]] for label, _, _ in CASES[case]}})
    atomic_write_json(preprocessed / "splits_final.json", SPLITS)
    atomic_write_json(preprocessed / "dataset_fingerprint.json", {"cases": list(CASES)})
    fingerprint = {"median_shape": [SIZE, SIZE], "cases": list(CASES), "foreground_intensity_properties_per_channel": {}}
    plans = SDMCPlanner(fingerprint, dataset_json, NAME, None).plan()
    atomic_write_json(preprocessed / "sdmcPlans.json", plans)
    return {"dataset_json": dataset_json, "plans": plans}


def write_results(root, dataset_json: dict, plans: dict) -> dict:
    """Model folders with checkpoints, validation predictions and summaries; returns the summaries."""
    rng = np.random.default_rng(1)
    results = root / "SDMC_results" / NAME
    summaries = {}
    for trainer, folds in TRAINED.items():
        model = results / f"{trainer}__sdmcPlans__2d"
        atomic_write_json(model / "plans.json", plans)
        atomic_write_json(model / "dataset.json", dataset_json)
        network = tiny_networks(trainer, plans)
        for fold in folds:
            save_checkpoint(model / f"fold_{fold}" / "checkpoint_final.pth",
                            {"trainer": trainer, "history": fake_history(), "network": network, "extra": {}})
            scored = {}
            for case in SPLITS[fold]["val"]:
                prediction = np.roll(label_map(case), fold + 1 + SHIFTS.get(trainer, 0), axis=1)  # slightly off
                write_image(prediction, model / f"fold_{fold}" / "validation" / f"{case}{ENDING}")
                scored[case] = (prediction, label_map(case), (1.0, 1.0))
            summaries[trainer, fold] = fake_summary(rng, to_json_safe(summarise_cases(scored)["metric_per_case"]))
            atomic_write_json(model / f"fold_{fold}" / "validation" / "summary.json", summaries[trainer, fold])
    summaries["UNetTrainer", "0_1"] = fake_summary(rng)  # pooled over both folds, as sdmc_evaluate writes it
    atomic_write_json(results / "UNetTrainer__sdmcPlans__2d" / "crossval_results_folds_0_1" / "summary.json",
                      summaries["UNetTrainer", "0_1"])
    (results / "ResUNet34Trainer__sdmcPlans__2d" / "fold_0").mkdir(parents=True)
    return summaries


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    root = tmp_path_factory.mktemp("report")
    written = write_raw_and_preprocessed(root)
    summaries = write_results(root, written["dataset_json"], written["plans"])
    return root, summaries


@pytest.fixture
def environment(tree, monkeypatch):
    root, summaries = tree
    for variable in ("SDMC_raw", "SDMC_preprocessed", "SDMC_results"):
        monkeypatch.setenv(variable, str(root / variable))
    return summaries


@pytest.fixture(scope="module")
def made_report(tree):
    """The report, made once through the command line for the tests that read it."""
    root, _ = tree
    with pytest.MonkeyPatch.context() as patch:
        for variable in ("SDMC_raw", "SDMC_preprocessed", "SDMC_results"):
            patch.setenv(variable, str(root / variable))
        assert report.main(["-d", "2021"]) == 0
    return root / "SDMC_results" / NAME / "report"


def expected_cell(values: list[float]) -> str:
    values = [value for value in values if value is not None]
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{np.mean(values):.3f} ± {np.std(values, ddof=1):.3f}"


def test_table3_cells_are_mean_and_std_over_folds_with_ns_outside_the_mean(environment):
    summaries = environment
    table = table3(collect_results(2021, "sdmcPlans", "2d"))
    rows = {row[0].split(" ")[0]: dict(zip(table.header, row)) for row in table.rows}
    assert list(rows) == ["UNetTrainer", "SegResNetTrainer", "SDMCFinetunedTrainer", "SDMCPretrainedTrainer",
                          "ResUNet34Trainer", "SwinUNETRTrainer", "nnUNetTrainer"]  # trained, then untrained published
    for trainer in ("UNetTrainer", "SegResNetTrainer", "SDMCFinetunedTrainer"):
        folds = [summaries[trainer, fold] for fold in TRAINED[trainer]]
        row = rows[trainer]
        assert row["folds"].startswith(f"{len(folds)} (")
        for metric in METRICS:
            for name in ("NS", "IS", "HS"):
                assert row[f"{metric} {name}"] == expected_cell([s["stroke2021"][metric][name] for s in folds])
            lesion_means = [(s["stroke2021"][metric]["IS"] + s["stroke2021"][metric]["HS"]) / 2 for s in folds]
            assert row[f"{metric} Mean"] == expected_cell(lesion_means)
        assert row["FP slice rate IS"] == expected_cell([s["false_positive_slice_rate"]["IS"] for s in folds])
        assert row["FP slice rate HS"] == "–"  # null in every fold
        assert row["HD95 IS"] == row["HD95 Mean"] == expected_cell([s["hd95"]["IS"] for s in folds])  # HS: null
        assert row["HD95 HS"] == "–"
    assert "±" not in rows["SegResNetTrainer"]["DSC IS"]  # one fold: no spread
    assert rows["SwinUNETRTrainer"]["folds"] == "not trained" and rows["SwinUNETRTrainer"]["DSC Mean"] == "–"
    single, five_fold, five_fold_hd95 = (table.header[column] for column in sorted(table.published_columns))
    assert all("published, not measured" in header for header in (single, five_fold, five_fold_hd95))
    assert "slice-level single split" in single and "slice-level 5-fold" in five_fold
    assert five_fold_hd95.startswith("Mean HD95, slice-level 5-fold")
    assert rows["SDMCFinetunedTrainer"][single] == "0.760" and rows["SwinUNETRTrainer"][single] == "0.705"
    assert rows["SDMCPretrainedTrainer"][single] == "–"  # not in the published Table 3
    assert [rows["SDMCFinetunedTrainer"][five_fold], rows["SDMCFinetunedTrainer"][five_fold_hd95]] == [
        "0.745 ± 0.019", "13.00"]
    nnunet = rows["nnUNetTrainer"]
    assert [nnunet["folds"], nnunet[single], nnunet[five_fold], nnunet[five_fold_hd95]] == [
        "not trained", "–", "0.718 ± 0.019", "12.77"]
    assert rows["UNetTrainer"][five_fold] == "–"


def test_table4_is_the_published_ablation_beside_the_measured_mean(environment):
    summaries = environment
    table = table4(collect_results(2021, "sdmcPlans", "2d"))
    rows = [dict(zip(table.header, row)) for row in table.rows]
    assert [(row["mask encoder"], row["image encoder"].split(" ")[0]) for row in rows] == [
        ("pretrained", "trainable"), ("fine-tuned", "frozen"), ("fine-tuned", "trainable")]
    assert [row[table.header[-1]] for row in rows] == ["0.640", "0.539", "0.760"]
    dsc = [summaries["SDMCFinetunedTrainer", fold]["stroke2021"]["DSC"] for fold in (0, 1)]
    assert rows[2]["Mean DSC (IS, HS)"] == expected_cell([(d["IS"] + d["HS"]) / 2 for d in dsc])
    assert rows[1]["folds"] == "not trained" and rows[1]["Mean DSC (IS, HS)"] == "–"


def test_pooled_cross_validation_summaries_are_listed_beside(environment):
    dsc = environment["UNetTrainer", "0_1"]["stroke2021"]["DSC"]
    table = crossval_table(collect_results(2021, "sdmcPlans", "2d"))
    assert table.rows == [["UNetTrainer", "0, 1", *(f"{dsc[name]:.3f}" for name in ("NS", "IS", "HS")),
                           f"{(dsc['IS'] + dsc['HS']) / 2:.3f}"]]


def patient(case: str) -> str:
    info = CASE_INFO.get(case, {})
    return info.get("patient_id") or info.get("study_uid") or case


def per_patient_dice(trainer: str, folds: list[int]) -> dict[str, float]:
    """By hand: per patient, the mean of the IS and HS Dice of its validation slices that hold the class."""
    scores = {}
    for fold in folds:
        for case in SPLITS[fold]["val"]:
            reference = label_map(case)
            prediction = np.roll(reference, fold + 1 + SHIFTS.get(trainer, 0), axis=1)
            for label in (1, 2):
                if (reference == label).any():
                    overlap = np.count_nonzero((prediction == label) & (reference == label))
                    dice = 2 * overlap / (np.count_nonzero(prediction == label) + np.count_nonzero(reference == label))
                    scores.setdefault(patient(case), []).append(dice)
    return {name: float(np.mean(values)) for name, values in scores.items()}


def test_statistics_section_tests_sdmc_seg_against_each_model_on_shared_patients(environment):
    section = statistics_section(collect_results(2021, "sdmcPlans", "2d"))
    intervals, comparisons = [block for block in section.blocks if isinstance(block, Table)]
    rows = {row[0].split(" ")[0]: dict(zip(intervals.header, row)) for row in intervals.rows}
    # 5 patients in all (104 alone is P3); SegResNet's single fold holds P1 (101, 102) and P2 (103)
    assert [rows["UNetTrainer"][key] for key in ("folds pooled", "patients", "slices")] == ["0, 1", "5", "6"]
    assert [rows["SegResNetTrainer"][key] for key in ("folds pooled", "patients", "slices")] == ["0", "2", "3"]
    value, interval = rows["UNetTrainer"]["DSC Mean"].split(" ", 1)
    low, high = map(float, interval.strip("[]").split(", "))
    assert low <= float(value) <= high and low < high
    assert "HD95 Mean" in intervals.header

    proposed = per_patient_dice("SDMCFinetunedTrainer", [0, 1])
    expected_p = {}
    for trainer, folds in (("UNetTrainer", [0, 1]), ("SegResNetTrainer", [0])):
        other = per_patient_dice(trainer, folds)  # the proposed model's patients of these folds
        shared = sorted(other)
        expected_p[trainer] = wilcoxon([proposed[name] for name in shared], [other[name] for name in shared]).pvalue
    # Holm over the two tested pairs: the smaller p times 2, the larger times 1 but not below the first
    smaller, larger = sorted(expected_p.values())
    holm = {trainer: min(1.0, 2 * smaller) if p == smaller else min(1.0, max(2 * smaller, larger))
            for trainer, p in expected_p.items()}
    paired = {row[0].split(" vs ")[1].split(" ")[0]: dict(zip(comparisons.header, row)) for row in comparisons.rows}
    assert list(paired) == ["UNetTrainer", "SegResNetTrainer", "SDMCPretrainedTrainer"]
    assert paired["UNetTrainer"]["patients paired"] == "4" and paired["SegResNetTrainer"]["patients paired"] == "2"
    assert paired["SegResNetTrainer"]["folds (SDMC-Seg; other)"] == "0, 1; 0"
    for trainer in expected_p:
        assert paired[trainer]["p"] == f"{expected_p[trainer]:.3g}"
        assert paired[trainer]["Holm p"] == f"{holm[trainer]:.3g}"
        assert paired[trainer]["at 0.05 after Holm"] == "within noise"
    assert paired["SDMCPretrainedTrainer"]["at 0.05 after Holm"].startswith("not tested: every shared patient")
    words = " ".join(block for block in section.blocks if isinstance(block, str))
    assert "No difference from SDMC-Seg is significant at 0.05 after Holm correction." in words
    assert "Within noise (not significant at 0.05 after Holm correction): UNetTrainer (U-Net)" in words
    assert "Not tested: SDMCPretrainedTrainer" in words


def test_statistics_are_left_out_with_a_reason_without_patients(environment, tmp_path):
    results = collect_results(2021, "sdmcPlans", "2d")
    results.raw_folder = tmp_path  # a raw dataset without case_info.json
    section = statistics_section(results)
    assert len(section.blocks) == 1 and "Left out" in section.blocks[0] and "case_info.json" in section.blocks[0]


def test_slice_choice_is_deterministic_one_per_lesion_kind():
    areas = {case: class_areas(label_map(case)) for case in CASES}
    chosen = choose_slices(areas)
    assert chosen == choose_slices(dict(reversed(areas.items())))
    assert [category for _, category in chosen] == ["ischemic", "hemorrhagic", "both", "no lesion"]
    assert len({case for case, _ in chosen}) == 4 and dict(chosen)["104"] == "no lesion"


def test_report_files_and_sections(made_report, capsys):
    markdown = (made_report / "report.md").read_text()
    for figure in ("qualitative", "mask_reconstruction", "training_curves"):
        assert f"]({figure}.png)" in markdown
        assert Image.open(made_report / f"{figure}.png").size[0] > 100
    assert "ResUNet34Trainer: not trained" in markdown and "SwinUNETRTrainer: not trained" in markdown
    assert "UNetTrainer: 2 folds (0, 1) finished" in markdown and "sdmcPlans" in markdown
    assert "(published, not measured)" in markdown
    assert "## Statistics over patients" in markdown and "Wilcoxon signed-rank" in markdown
    assert "within noise" in markdown and "after Holm correction" in markdown
    assert "reconstruction comparison is left out" not in markdown
    html = (made_report / "report.html").read_text()
    assert html.count("data:image/png;base64,") == 3 and 'class="published"' in html


@pytest.mark.parametrize("missing, reason", [("MaskAutoencoderTrainer", "-tr MaskAutoencoderTrainer"),
                                             ("SDMCPretrainedTrainer", "random weights")])
def test_reconstruction_is_left_out_with_a_reason_when_an_autoencoder_is_missing(environment, missing, reason):
    results = collect_results(2021, "sdmcPlans", "2d")
    del results.models[missing]  # the CPU plans name no pretrained weights to fall back on
    sentences = [block for block in reconstruction_section(results).blocks if isinstance(block, str)]
    assert "left out" in sentences[-1] and reason in sentences[-1]


def test_no_trained_model_is_an_error_naming_sdmc_train(tmp_path, capsys):
    assert report.main(["-d", "2021"]) == 2
    assert "sdmc_train 2021" in capsys.readouterr().err
    (tmp_path / "SDMC_results" / NAME / "UNetTrainer__sdmcPlans__2d" / "fold_0").mkdir(parents=True)
    assert report.main(["-d", "2021"]) == 2
    error = capsys.readouterr().err
    assert "no trained model" in error and "sdmc_train 2021" in error


def test_command_prints_where_the_report_is(environment, tmp_path, capsys):
    assert report.main(["-d", "2021", "-o", str(tmp_path / "out")]) == 0
    assert str(tmp_path / "out" / "report.html") in capsys.readouterr().out
    assert (tmp_path / "out" / "report.md").is_file()


# --- the HTML in a real browser ------------------------------------------------------------
# Records, once the page has loaded, each image's natural width into the DOM that --dump-dom prints.
IMAGE_PROBE = """<script>
window.addEventListener("load", () => {
  const widths = Array.from(document.images, image => image.complete ? image.naturalWidth : -1);
  document.body.setAttribute("data-image-widths", widths.join(","));
});
</script>"""


def chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if path := shutil.which(name):
            return path
    pytest.skip("no Chromium on PATH (scripts/test.sh installs Debian's chromium where apt-get is usable)")


def run_chromium(*arguments: str) -> str:
    command = [chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", *arguments]
    return subprocess.run(command, capture_output=True, text=True, timeout=60, check=True).stdout


def test_html_renders_in_chromium_with_every_image_loaded(made_report, tmp_path):
    probed = tmp_path / "probed.html"
    probed.write_text((made_report / "report.html").read_text().replace("</body>", IMAGE_PROBE + "</body>"))
    dom = run_chromium("--virtual-time-budget=5000", "--dump-dom", probed.as_uri())
    widths = re.search(r'data-image-widths="([^"]*)"', dom)
    assert widths, "the page did not finish loading"
    assert [int(width) > 0 for width in widths.group(1).split(",")] == [True] * 3
    screenshot = tmp_path / "screenshot.png"
    run_chromium(f"--screenshot={screenshot}", "--window-size=1200,2400", (made_report / "report.html").as_uri())
    pixels = np.asarray(Image.open(screenshot).convert("RGB"))
    assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 10  # text, tables and pictures, not a blank page
