from pathlib import Path

from setuptools import find_packages, setup

CONSOLE_SCRIPTS = {
    "sdmc_download_stroke2021": "sdmcunet.dataset_conversion.download_stroke2021:main",
    "sdmc_convert_stroke2021": "sdmcunet.dataset_conversion.convert_stroke2021:main",
    "sdmc_make_synthetic": "sdmcunet.dataset_conversion.synthetic:main",
    "sdmc_verify_dataset": "sdmcunet.experiment_planning.verify_dataset:main",
    "sdmc_extract_fingerprint": "sdmcunet.experiment_planning.fingerprint:main",
    "sdmc_plan_experiment": "sdmcunet.experiment_planning.plan_and_preprocess:plan_main",
    "sdmc_preprocess": "sdmcunet.experiment_planning.plan_and_preprocess:preprocess_main",
    "sdmc_plan_and_preprocess": "sdmcunet.experiment_planning.plan_and_preprocess:main",
    "sdmc_train": "sdmcunet.training.run_training:main",
    "sdmc_predict": "sdmcunet.inference.predict:main",
    "sdmc_export_model": "sdmcunet.model_sharing.export_model:main",
    "sdmc_install_model": "sdmcunet.model_sharing.install_model:main",
    "sdmc_evaluate": "sdmcunet.evaluation.evaluate_predictions:main",
    "sdmc_ensemble": "sdmcunet.ensembling.ensemble:main",
    "sdmc_apply_postprocessing": "sdmcunet.postprocessing.remove_small_components:main",
    "sdmc_find_best_configuration": "sdmcunet.evaluation.find_best_configuration:main",
    "sdmc_report": "sdmcunet.reporting.report:main",
    "sdmc_convert_weights": "sdmcunet.weights.convert:main",
    "sdmc_download_weights": "sdmcunet.weights.download:main",
    "sdmc_import_reference": "sdmcunet.weights.import_reference:main",
}

setup(
    name="sdmcunet",
    version="0.1.0",
    description="nnU-Net-style self-configuring framework for stroke lesion segmentation "
    "in non-contrast brain CT (SDMC-Seg and baselines)",
    long_description=Path(__file__).with_name("README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.10",
    packages=find_packages(include=["sdmcunet", "sdmcunet.*"]),
    install_requires=[
        "torch>=2.1",
        "numpy>=1.24",
        "scipy>=1.10",
        "SimpleITK>=2.2",
        "pydicom>=3.0",
        "highdicom>=0.23",  # DICOM SEG of predicted series
        "batchgenerators>=0.25",
        "acvl-utils>=0.2",
        "diffusers>=0.27",
        "monai>=1.3",
        "tqdm>=4.60",
        "matplotlib>=3.6",
        "pillow>=9.0",
        "PyYAML>=6.0",
    ],
    extras_require={
        # decoders for compressed DICOM transfer syntaxes (JPEG, JPEG-LS, JPEG 2000)
        "dicom-codecs": ["pylibjpeg>=2.0", "pylibjpeg-libjpeg>=2.1", "pylibjpeg-openjpeg>=2.3"],
        # nnU-Net v2 itself, for `sdmc_train ... -tr nnUNetTrainer` (training/trainers/nnunet.py), with what it
        # needs. Caveat: dynamic-network-architectures requires timm, which pulls a torchvision built for CUDA
        # torch; beside a CPU build of torch that torchvision fails to import, and diffusers imports torchvision
        # whenever it is installed. With a CPU torch, install the first two with
        # `pip install --no-deps -r requirements/nnunet-nodeps.txt` (nnU-Net's 2d UNet needs no timm), then the rest.
        "nnunet": ["nnunetv2>=2.8,<3", "dynamic-network-architectures>=0.4.4,<0.5",
                   "scikit-learn", "scikit-image>=0.19.3", "pandas", "graphviz", "tifffile", "requests", "nibabel",
                   "seaborn", "imagecodecs", "yacs", "batchgeneratorsv2>=0.3.2", "einops", "blosc2>=3.3.2"],
    },
    entry_points={"console_scripts": [f"{name}={target}" for name, target in CONSOLE_SCRIPTS.items()]},
)
