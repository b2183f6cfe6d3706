"""The streamed, factored ΔM/ΔD against a NumPy computation on merged matrices."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lowrank.analysis.row_changes import FactoredUpdate, FullUpdate, TensorRows, check_shapes, magnitude_direction_changes
from tests.numpy_reference import dm_dd, merged


def _case(seed: int, out: int = 7, inp: int = 5, rank: int = 3):
    g = torch.Generator().manual_seed(seed)
    w0 = torch.randn(out, inp, generator=g, dtype=torch.float64)
    a = torch.randn(rank, inp, generator=g, dtype=torch.float64) * 0.3
    b = torch.randn(out, rank, generator=g, dtype=torch.float64) * 0.3
    m = w0.norm(dim=1) * (1 + 0.1 * torch.randn(out, generator=g, dtype=torch.float64))
    full = w0 + 0.05 * torch.randn(out, inp, generator=g, dtype=torch.float64)
    return w0, a, b, m, full


@pytest.mark.parametrize("block_elements", [1, 6, 10**6])  # one row per block, a few rows, the whole matrix
def test_full_lora_and_dora_match_numpy_in_one_pass(block_elements):
    w0, a, b, m, full = _case(0)
    updates = [FullUpdate(TensorRows(full)), FactoredUpdate(a, b, 1.7), FactoredUpdate(a, b, 1.7, m)]
    got = magnitude_direction_changes(TensorRows(w0), updates, block_elements=block_elements)
    expected = [dm_dd(full.numpy(), w0.numpy()), dm_dd(merged(w0, a, b, 1.7), w0.numpy()),
                dm_dd(merged(w0, a, b, 1.7, m), w0.numpy())]
    assert [u.method for u in updates] == ["full", "lora", "dora"]
    np.testing.assert_allclose(got, expected, rtol=1e-10, atol=1e-14)


@pytest.mark.parametrize("block_elements", [1, 14, 10**6])
def test_transposed_storage_measures_columns(block_elements):
    w0, a, b, m, full = _case(1)
    stored = [TensorRows(w0.T.contiguous()), FullUpdate(TensorRows(full.T.contiguous()))]
    got = magnitude_direction_changes(stored[0], [stored[1], FactoredUpdate(a, b, 0.5, m)], transposed=True,
                                      block_elements=block_elements)
    expected = [dm_dd(full.numpy(), w0.numpy()), dm_dd(merged(w0, a, b, 0.5, m), w0.numpy())]
    np.testing.assert_allclose(got, expected, rtol=1e-10, atol=1e-14)


def test_low_precision_storage_is_computed_in_float64():
    w0, a, b, _, full = _case(2, out=64, inp=48)
    half, base_half = full.to(torch.bfloat16), w0.to(torch.bfloat16)
    ((dm, dd),) = magnitude_direction_changes(TensorRows(base_half), [FullUpdate(TensorRows(half))], block_elements=100)
    assert (dm, dd) == pytest.approx(dm_dd(half.double().numpy(), base_half.double().numpy()), rel=1e-12)


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10**6), out=st.integers(1, 9), inp=st.integers(1, 9), rank=st.integers(1, 4),
       scaling=st.floats(0.01, 4.0), block=st.integers(1, 40))
def test_factored_equals_merged_for_any_shape(seed, out, inp, rank, scaling, block):
    w0, a, b, m, _ = _case(seed, out, inp, rank)
    got = magnitude_direction_changes(TensorRows(w0), [FactoredUpdate(a, b, scaling), FactoredUpdate(a, b, scaling, m)],
                                      block_elements=block)
    expected = [dm_dd(merged(w0, a, b, scaling), w0.numpy()), dm_dd(merged(w0, a, b, scaling, m), w0.numpy())]
    np.testing.assert_allclose(got, expected, rtol=1e-8, atol=1e-12)


def test_shapes_that_do_not_fit_are_named():
    with pytest.raises(ValueError, match=r"shape \(3, 5\), the base's \(7, 5\)"):
        check_shapes((7, 5), weight=(3, 5))
    with pytest.raises(ValueError, match=r"A \(2, 4\) and B \(7, 2\) do not fit the base weight \(7, 5\)"):
        check_shapes((7, 5), lora_A=(2, 4), lora_B=(7, 2))
    with pytest.raises(ValueError, match=r"magnitude has shape \(5,\), need \(7,\)"):
        check_shapes((7, 5), lora_A=(2, 5), lora_B=(7, 2), magnitude=(5,))
    with pytest.raises(ValueError, match="not a 2-D"):
        check_shapes((7,))
    w0 = torch.zeros(7, 5)
    with pytest.raises(ValueError, match="do not fit"):
        magnitude_direction_changes(TensorRows(w0), [FactoredUpdate(torch.zeros(2, 5), torch.zeros(5, 2), 1.0)])


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_magnitude_direction_change_in_memory_matches_numpy(seed):
    """The in-memory ΔM/ΔD of notebook 04 and the Figure-2 study, against the NumPy loop over rows."""
    from lowrank.magnitude_direction import magnitude_direction_change

    w0, a, b, m, full = _case(seed)
    for weight in (full, torch.as_tensor(merged(w0, a, b, 0.8, m)), w0 * 1.3):
        got = magnitude_direction_change(weight.float(), w0.float())
        assert got == pytest.approx(dm_dd(weight.float().double().numpy(), w0.float().double().numpy()), rel=1e-9)
