import numpy as np
import pytest
import torch

from ichbench.inputs.windowing import (PAPER_WINDOWS, Window, apply_windows, dequantise, hu_to_cache, quantise, resize,
                                resize_mask, to_hu)


def test_paper_windows_are_the_papers():
    assert [(w.name, w.level, w.width) for w in PAPER_WINDOWS] == [
        ("brain", 40, 80), ("subdural", 75, 215), ("bone", 600, 2800)]


def test_to_hu_applies_slope_and_intercept():
    stored = np.array([[0, 1024, 2048]], dtype=np.uint16)
    assert to_hu(stored, 1.0, -1024.0).tolist() == [[-1024.0, 0.0, 1024.0]]
    assert to_hu(np.array([[100]], np.int16), 0.5, -10.0).tolist() == [[40.0]]


@pytest.mark.parametrize("hu, expected", [
    # brain 40/80: [0, 80] -> [-1, 1]
    (-1000, (-1.0, -1.0, -1.0)),
    (0, (-1.0, 2 * (0 - (75 - 107.5)) / 215 - 1, 2 * (0 - (600 - 1400)) / 2800 - 1)),
    (40, (0.0, 2 * (40 + 32.5) / 215 - 1, 2 * (40 + 800) / 2800 - 1)),
    (80, (1.0, 2 * (80 + 32.5) / 215 - 1, 2 * (80 + 800) / 2800 - 1)),
    (75, (0.875, 0.0, 2 * (75 + 800) / 2800 - 1)),
    (600, (1.0, 1.0, 0.0)),
    (3000, (1.0, 1.0, 1.0)),
])
def test_window_values_exactly(hu, expected):
    out = apply_windows(np.full((1, 1), hu, np.float32))
    assert out.shape == (3, 1, 1)
    np.testing.assert_allclose(out[:, 0, 0], expected, atol=1e-6)


def test_windows_clip_to_minus_one_one():
    hu = np.linspace(-2000, 4000, 1000, dtype=np.float32).reshape(10, 100)
    out = apply_windows(hu)
    assert out.min() == -1.0 and out.max() == 1.0


def test_custom_window():
    out = apply_windows(np.array([[0.0, 50.0, 100.0]], np.float32), [Window("w", 50, 100)])
    np.testing.assert_allclose(out[0, 0], [-1, 0, 1])


def test_resize_area_keeps_range_and_mean():
    rng = np.random.default_rng(0)
    x = rng.uniform(-1, 1, (2, 3, 256, 256)).astype(np.float32)
    y = resize(x, 128)
    assert y.shape == (2, 3, 128, 128)
    assert y.min() >= -1 and y.max() <= 1
    np.testing.assert_allclose(y.mean(), x.mean(), atol=1e-5)
    # 2x2 block means exactly
    np.testing.assert_allclose(y[0, 0, 0, 0], x[0, 0, :2, :2].mean(), atol=1e-6)


def test_resize_mask_majority():
    m = np.zeros((1, 4, 4), bool)
    m[0, :2, :2] = True
    assert resize_mask(m, 2)[0].tolist() == [[True, False], [False, False]]


def test_quantise_roundtrip_error_below_half_a_step():
    x = np.linspace(-1, 1, 10001, dtype=np.float32)
    err = np.abs(dequantise(quantise(x)) - x)
    assert err.max() <= 1 / 255 + 1e-6
    assert quantise(np.array([-1.0, 1.0])).tolist() == [0, 255]
    t = dequantise(torch.tensor([0, 255], dtype=torch.uint8))
    assert t.tolist() == [-1.0, 1.0]


def test_hu_to_cache_shape_dtype():
    q = hu_to_cache(np.zeros((2, 256, 256), np.float32), PAPER_WINDOWS, 128)
    assert q.shape == (2, 3, 128, 128) and q.dtype == np.uint8


def test_dequantise_numpy_and_torch_agree_exactly():
    q = np.arange(256, dtype=np.uint8)
    assert np.array_equal(dequantise(q), dequantise(torch.from_numpy(q)).numpy())
