"""fuxictr-chime: CHIME long-term user-interest compression for FuxiCTR.

Stage 1 (compression) lives in :mod:`fuxictr_chime.compressor` and
:mod:`fuxictr_chime.learn` and never imports FuxiCTR. Stage 2 (ranking) lives in
:mod:`fuxictr_chime.models`. The two meet only at the exported feature column
(``chime_hist`` / ``learn_emb``) and its FuxiCTR feature spec.
"""

__version__ = "0.1.0"
