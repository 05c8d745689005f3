"""What the Detectron2 services (detector, segmenter) share: serving settings, the training config and
its presets, the manifest (``config``); the served model (``model``); COCO datasets (``dataset``);
masks as RLE and per-instance garments (``masks``); training and publishing (``train``); evaluating a
published version (``evaluate``). Only ``config`` is importable without torch.
"""
