"""ItemTable: distinct-item embedding equals the per-position reference (value and gradient)."""
from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from fuxictr_chime.errors import ConfigError, DataError
from fuxictr_chime.models.item_table import ItemTable, unique_inverse

from .conftest import N_ITEMS, TITLE_DIM


def _table(feature_map, tiny_dataset, **kwargs) -> ItemTable:
    torch.manual_seed(0)
    table = ItemTable(feature_map, 4, tiny_dataset.params["item_info"], **kwargs)
    for p in table.parameters():  # larger than FuxiCTR's 1e-4 init so differences show
        torch.nn.init.normal_(p, std=0.5)
    return table


def test_features_are_loaded_as_buffers_outside_the_checkpoint(make_feature_map, tiny_dataset):
    table = _table(make_feature_map(), tiny_dataset)
    assert table.feature_names == ["item_id", "cate_id", "title_emb"]
    assert table.item_title_emb.shape == (N_ITEMS + 1, TITLE_DIM)
    assert table.item_title_emb.dtype == torch.float32 and table.item_cate_id.dtype == torch.int64
    assert torch.equal(table.item_cate_id, torch.from_numpy(tiny_dataset.cate))
    assert table.output_dim == 4 + 4 + 4  # item_id, cate_id (default 4), title_emb (4)
    assert not any(k.startswith("item_") for k in table.state_dict())


def test_fast_path_equals_reference_in_value_and_gradient(make_feature_map, tiny_dataset):
    table = _table(make_feature_map(), tiny_dataset)
    gen = torch.Generator().manual_seed(1)
    index = torch.randint(0, 8, (5, 11), generator=gen)  # few items: many repeats, some padding
    weight = torch.randn(5, 11, table.output_dim, generator=gen)
    params = [p for p in table.parameters()]
    fast = table(index)
    fast_grads = torch.autograd.grad((fast * weight).sum(), params)
    ref = table.forward_reference(index)
    ref_grads = torch.autograd.grad((ref * weight).sum(), params)
    assert fast.shape == (5, 11, table.output_dim)
    assert torch.allclose(fast, ref, atol=1e-6)
    for g, r in zip(fast_grads, ref_grads):
        assert torch.allclose(g, r, atol=1e-5)
    assert (fast[index == 0] == 0).all() and (fast[index != 0].abs().sum(-1) > 0).all()


def test_lookup_embeds_each_distinct_item_once(make_feature_map, tiny_dataset):
    table = _table(make_feature_map(), tiny_dataset)
    index = torch.tensor([[0, 3, 3, 7], [7, 7, 0, 3]])
    rows, inverse = table.lookup(index)
    assert rows.shape[0] == 3  # items 0, 3, 7
    assert torch.equal(unique_inverse(index)[0][inverse], index)
    assert torch.allclose(rows[inverse], table.forward_reference(index))


def test_out_of_range_item_is_a_data_error(make_feature_map, tiny_dataset):
    table = _table(make_feature_map(), tiny_dataset)
    with pytest.raises(DataError, match="item index 41"):
        table(torch.tensor([[1, N_ITEMS + 1]]))


def test_item_info_with_shuffled_rows_is_rejected(make_feature_map, tiny_dataset, tmp_path):
    data = pq.read_table(tiny_dataset.params["item_info"]).to_pandas()
    data = data.iloc[::-1].reset_index(drop=True)
    path = tmp_path / "item_info.parquet"
    pq.write_table(pa.Table.from_pandas(data), path)
    with pytest.raises(DataError, match="item_index"):
        ItemTable(make_feature_map(), 4, str(path))


def test_missing_item_info_and_missing_column(make_feature_map, tiny_dataset, tmp_path):
    fmap = make_feature_map()
    with pytest.raises(DataError, match="not found"):
        ItemTable(fmap, 4, str(tmp_path / "nope.parquet"))
    pq.write_table(pa.table({"item_index": np.arange(3), "item_id": np.arange(3)}),
                   tmp_path / "small.parquet")
    with pytest.raises(DataError, match="cate_id"):
        ItemTable(fmap, 4, str(tmp_path / "small.parquet"))
    fmap.data_dir = str(tmp_path / "elsewhere")
    with pytest.raises(DataError, match="item_info"):
        ItemTable(fmap, 4, None)


def test_feature_map_without_item_features_is_a_config_error(make_feature_map, tiny_dataset):
    fmap = make_feature_map()
    for name in ("item_id", "cate_id", "title_emb"):
        del fmap.features[name]
    with pytest.raises(ConfigError, match="source: item"):
        ItemTable(fmap, 4, tiny_dataset.params["item_info"])
