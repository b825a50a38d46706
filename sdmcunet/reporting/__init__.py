"""`sdmc_report`: the Table 3 / Table 4 style comparison of a dataset's trained models (docs/design.md §1)."""
