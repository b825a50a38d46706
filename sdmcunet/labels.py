"""The label convention of the Stroke2021 dataset (docs/design.md §2) and the colours that encode it."""

NON_STROKE, ISCHEMIC, HEMORRHAGIC = 0, 1, 2

# nnU-Net v2 `dataset.json` "labels": name -> value; background must be 0.
LABELS = {"background": NON_STROKE, "ischemic": ISCHEMIC, "hemorrhagic": HEMORRHAGIC}
CLASS_ABBREVIATIONS = {NON_STROKE: "NS", ISCHEMIC: "IS", HEMORRHAGIC: "HS"}

# Colours of the organisers' overlays and MASK files: outline (overlay) or fill (mask) per class.
CLASS_COLOURS = {ISCHEMIC: (0, 0, 255), HEMORRHAGIC: (0, 255, 0)}
# The lesion fill of an overlay is a semi-transparent blend towards pure red.
OVERLAY_FILL_COLOUR = (255, 0, 0)
# SDMC-Seg's mask colour image (docs/design.md §5), also the class colours of the published figures.
MASK_IMAGE_COLOURS = {NON_STROKE: (255, 0, 0), ISCHEMIC: (0, 255, 0), HEMORRHAGIC: (0, 0, 255)}
