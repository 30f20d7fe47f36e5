"""A plain FuxiCTR DNN, written the way FuxiCTR's own ``model_zoo/DNN`` writes it.

This file is the plug-and-play example of the utilization stage (CHIME paper section 1 and
4.4: the compressed interest is "an ordinary feature" any ranking model can consume). Nothing
here knows about CHIME: the model embeds every non-meta feature of the batch with FuxiCTR's
``FeatureEmbedding`` and feeds the concatenation to FuxiCTR's ``MLP_Block``. When the
experiment's dataset config has ``chime_hist`` active (``type: embedding``, ``source: user``),
FuxiCTR's embedding layer projects the 64-float histogram with ``Linear(pretrain_dim,
embedding_dim)`` and it enters the MLP like any other field; the loader's ``item_seq`` /
``seq_mask`` columns are ``type: meta`` and are skipped by ``BaseModel.get_inputs``.

It is referenced from ``examples/config/model_config.yaml`` as ``model: ../dnn.py:DNN`` (a
path relative to that YAML); no change to the fuxictr_chime library is needed.

Defaults: learning_rate 1e-3, embedding_dim 10, hidden_units (64, 64, 64), ReLU, no dropout,
no batch norm (as FuxiCTR's DNN).
"""
from __future__ import annotations

from fuxictr.pytorch.layers import FeatureEmbedding, MLP_Block
from fuxictr.pytorch.models import BaseModel


class DNN(BaseModel):
    """Embedding layer + MLP over all (non-meta) features: FuxiCTR's DNN."""

    def __init__(self, feature_map, model_id: str = "DNN", gpu: int = -1,
                 learning_rate: float = 1e-3, embedding_dim: int = 10,
                 hidden_units: list[int] | tuple[int, ...] = (64, 64, 64),
                 hidden_activations: str = "ReLU", net_dropout: float = 0.0,
                 batch_norm: bool = False, embedding_regularizer=None, net_regularizer=None,
                 **kwargs):
        super().__init__(feature_map, model_id=model_id, gpu=gpu,
                         embedding_regularizer=embedding_regularizer,
                         net_regularizer=net_regularizer, **kwargs)
        self.embedding_layer = FeatureEmbedding(feature_map, embedding_dim)
        self.mlp = MLP_Block(input_dim=feature_map.sum_emb_out_dim(), output_dim=1,
                             hidden_units=list(hidden_units),
                             hidden_activations=hidden_activations,
                             output_activation=self.output_activation,
                             dropout_rates=net_dropout, batch_norm=batch_norm)
        self.compile(kwargs["optimizer"], kwargs["loss"], learning_rate)
        self.reset_parameters()
        self.model_to_device()

    def forward(self, inputs: dict) -> dict:
        X = self.get_inputs(inputs)  # non-meta features only (item_seq/seq_mask are meta)
        feature_emb = self.embedding_layer(X, flatten_emb=True)  # (B, sum of field dims)
        return {"y_pred": self.mlp(feature_emb)}  # (B, 1)
