"""The pipeline around pruning: fine-tuning (``finetune``), sparse training (``sparsity``,
``regularizers``), export (``export``), sensitivity analysis (``sensitivity``), pictures
(``plots``), reports (``report``, ``artifacts``) and atomic file writes (``atomic``).

Nothing here is imported by ``import surgery``; each module loads on first use, so the
engine stays light (TFLite, tfmot and matplotlib are heavy).
"""
