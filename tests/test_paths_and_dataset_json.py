from pathlib import Path

import pytest

from sdmcunet import paths
from sdmcunet.raw_dataset import dataset_folder_name, find_dataset, load_dataset_json, make_dataset_json
from sdmcunet.utils.errors import SDMCError
from sdmcunet.utils.files import atomic_write_json


def test_environment_variables_override_the_defaults(monkeypatch, tmp_path):
    monkeypatch.setenv("SDMC_raw", str(tmp_path / "elsewhere"))
    assert paths.raw_root() == tmp_path / "elsewhere"
    for variable, function, default in [("SDMC_raw", paths.raw_root, "raw_data"),
                                        ("SDMC_preprocessed", paths.preprocessed_root, "preprocessed"),
                                        ("SDMC_results", paths.results_root, "results"),
                                        ("SDMC_weights", paths.weights_root, "weights")]:
        monkeypatch.delenv(variable)
        assert function() == Path(default)


def test_dataset_folder_names_follow_nnunet():
    assert dataset_folder_name(2021, "Stroke2021") == "Dataset2021_Stroke2021"
    assert dataset_folder_name(7, "Mine") == "Dataset007_Mine"
    with pytest.raises(SDMCError):
        dataset_folder_name(0, "Zero")
    with pytest.raises(SDMCError):
        dataset_folder_name(3, "bad name/..")


def test_find_dataset_errors_name_the_fix(tmp_path):
    with pytest.raises(SDMCError, match="no dataset with id 5.*sdmc_convert_stroke2021"):
        find_dataset(tmp_path, 5)
    (tmp_path / "Dataset005_A").mkdir()
    assert find_dataset(tmp_path, 5) == tmp_path / "Dataset005_A"
    (tmp_path / "Dataset5_B").mkdir()
    with pytest.raises(SDMCError, match="ambiguous"):
        find_dataset(tmp_path, 5)


@pytest.mark.parametrize("change,message", [
    (lambda d: d.pop("labels"), "missing key"),
    (lambda d: d["labels"].update(background=1), "background"),
    (lambda d: d["labels"].update(hemorrhagic=5), "consecutive"),
    (lambda d: d.update(file_ending="nii.gz"), "file_ending"),
    (lambda d: d["channel_names"].update({"3": "X"}), "numbered"),
])
def test_invalid_dataset_json_is_refused(tmp_path, change, message):
    content = make_dataset_json({0: "CT"}, {"background": 0, "ischemic": 1, "hemorrhagic": 2}, 3, ".nii.gz")
    change(content)
    atomic_write_json(tmp_path / "dataset.json", content)
    with pytest.raises(SDMCError, match=message):
        load_dataset_json(tmp_path)
    (tmp_path / "dataset.json").write_text("{not json")
    with pytest.raises(SDMCError, match="not valid JSON"):
        load_dataset_json(tmp_path)
