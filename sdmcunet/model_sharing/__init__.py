"""Sharing a trained model as one zip archive, as nnU-Net's `nnUNetv2_export_model_to_zip` and
`nnUNetv2_install_pretrained_model_from_zip` do.

`sdmc_export_model` packs what inference reads from a model folder (plans, dataset.json, the
fingerprint, each exported fold's checkpoints, frozen parts and validation summary) under the same
paths the results folder has, with a manifest of their sha256s; `sdmc_install_model` checks the
archive against its manifest and moves the model folder into `$SDMC_results` in one rename.
"""
