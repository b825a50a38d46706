"""The results contract: what a trained model's folder holds and how it is read and written.

The counterpart of `raw_dataset.py` on the ground floor, used by training (which writes it) and by
inference, evaluation, ensembling and reporting (which read it):

    $SDMC_results/Dataset{ID}_{Name}/{Trainer}__{Plans}__{configuration}/   a model folder
        plans.json, dataset.json, dataset_fingerprint.json                 self-contained for inference
        fold_{f}/                                                           f = 0..4, or all
            checkpoint_best.pth, checkpoint_final.pth, checkpoint_latest.pth
            mask_autoencoder/                                               frozen parts, once per fold
            validation/{case}{ending}, {case}.npz, summary.json             the fold's validation
            training_log.txt, progress.png, training.lock
        crossval_results_folds_0_1_2_3_4/summary.json                       folds scored together

The references of validations are the preprocessed dataset's `gt_segmentations/`, and each fold's
cases come from its `splits_final.json` (`load_splits`).
"""
