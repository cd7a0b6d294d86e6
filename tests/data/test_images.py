import numpy as np
import pytest
from PIL import Image

from protloc.data.images import ImageReadError, convert_channels, read_array


def test_sixteen_bit_png_scales_to_eight_bit(tmp_path):
    data = np.array([[0, 32768, 65535]], dtype=np.uint16)
    Image.fromarray(data).save(tmp_path / "x.png")
    assert read_array(tmp_path / "x.png")[0, :, 0].tolist() == [0, 128, 255]


def test_channel_conversions_follow_hpa_order():
    rgby = np.stack([np.full((2, 2), v, np.uint8) for v in (10, 20, 30, 40)], axis=-1)
    assert convert_channels(rgby, 1)[0, 0].tolist() == [20]  # the protein stain
    assert convert_channels(rgby, 3)[0, 0].tolist() == [10, 20, 30]
    assert convert_channels(rgby[:, :, :3], 4)[0, 0].tolist() == [10, 20, 30, 0]
    assert convert_channels(rgby[:, :, 1:2], 3)[0, 0].tolist() == [20, 20, 20]


def test_truncated_png_is_an_image_read_error(tmp_path):
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(tmp_path / "x.png")
    data = (tmp_path / "x.png").read_bytes()
    (tmp_path / "x.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageReadError):
        read_array(tmp_path / "x.png")
