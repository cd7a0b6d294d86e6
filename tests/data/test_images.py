import io
import struct
import zlib

import numpy as np
import pytest
import tifffile
import torch
from PIL import Image

from protloc.data import images, limits
from protloc.data.dataset import ImageDataset
from protloc.data.images import ImageReadError, convert_channels, decode_image, load_image, read_pixels, to_chw_tensor
from protloc.data.readers import read_inputs


def png_header_only(width: int, height: int) -> bytes:
    """A PNG that announces width x height grayscale pixels and holds none: decoding it would fail, so only a
    check of the header can give the pixel-count error."""
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IEND", b"")


def test_sixteen_bit_png_scales_to_eight_bit_by_the_bit_depth(tmp_path):
    data = np.array([[0, 4095, 32768, 65535]], dtype=np.uint16)
    Image.fromarray(data).save(tmp_path / "x.png")
    assert read_pixels(tmp_path / "x.png").dtype == np.uint16
    assert decode_image(tmp_path / "x.png", bit_depth=16)[0, :, 0].tolist() == [0, 16, 128, 255]
    assert decode_image(tmp_path / "x.png", bit_depth=12)[0, :, 0].tolist() == [0, 255, 255, 255]  # saturated above 4095
    assert decode_image(tmp_path / "x.png", bit_depth=10)[0, :, 0].tolist() == [0, 255, 255, 255]
    # An 8-bit dataset has no scale for wider pixels: they are read by their container, 0..65535.
    assert decode_image(tmp_path / "x.png", bit_depth=8)[0, :, 0].tolist() == [0, 16, 128, 255]
    eight_bit = np.array([[0, 100, 255]], dtype=np.uint8)
    for depth in (8, 10, 12, 14, 16, None):  # an 8-bit file is on the 0..255 scale whatever the dataset's depth
        assert decode_image(_png_bytes(eight_bit), bit_depth=depth)[0, :, 0].tolist() == [0, 100, 255]


def test_sixteen_bit_colour_pngs_keep_their_stored_depth(tmp_path):
    import imagecodecs

    rgb = np.zeros((3, 4, 3), dtype=np.uint16)
    rgb[..., 0], rgb[..., 1], rgb[..., 2] = 1000, 4000, 2000
    rgb[0, 0] = (1, 65535, 4095)
    (tmp_path / "rgb.png").write_bytes(imagecodecs.png_encode(rgb))
    pixels = read_pixels(tmp_path / "rgb.png")
    assert pixels.dtype == np.uint16 and pixels.shape == (3, 4, 3)
    np.testing.assert_array_equal(pixels, rgb)
    np.testing.assert_array_equal(read_pixels((tmp_path / "rgb.png").read_bytes()), rgb)  # bytes alike
    # 12-bit data: 1000, 4000, 2000 are grey levels 62, 249, 125 (PIL alone would give 3, 15, 7).
    assert decode_image(tmp_path / "rgb.png", bit_depth=12)[1, 1].tolist() == [62, 249, 125]
    gray_alpha = np.stack([np.full((2, 2), 3000, np.uint16), np.full((2, 2), 65535, np.uint16)], axis=-1)
    rgba = np.concatenate([rgb, np.full((3, 4, 1), 65535, np.uint16)], axis=-1)
    assert read_pixels(imagecodecs.png_encode(gray_alpha)).tolist() == [[[3000]] * 2] * 2  # alpha dropped
    np.testing.assert_array_equal(read_pixels(imagecodecs.png_encode(rgba)), rgba)


def test_sixteen_bit_png_and_tiff_of_the_same_pixels_read_alike(tmp_path):
    import imagecodecs

    pixels = np.random.default_rng(0).integers(0, 4096, (8, 9, 3), dtype=np.uint16)
    (tmp_path / "a.png").write_bytes(imagecodecs.png_encode(pixels))
    tifffile.imwrite(tmp_path / "a.tif", pixels)
    for depth in (10, 12, 16):
        np.testing.assert_array_equal(decode_image(tmp_path / "a.png", bit_depth=depth),
                                      decode_image(tmp_path / "a.tif", bit_depth=depth))


def _png_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def test_one_bit_depth_maps_a_pixel_value_to_one_grey_level_whatever_the_brightest_pixel():
    dim = np.full((4, 4), 4000, dtype=np.uint16)
    with_saturated_corner = dim.copy()
    with_saturated_corner[0, 0] = 65535
    for depth, level in ((12, 249), (16, 16)):
        assert decode_image(_png_bytes(dim), bit_depth=depth)[2, 2, 0] == level
        assert decode_image(_png_bytes(with_saturated_corner), bit_depth=depth)[2, 2, 0] == level
    # bit_depth=None, for runs from before the bit depth was stored, still guesses per image.
    assert decode_image(_png_bytes(dim))[2, 2, 0] == 249
    assert decode_image(_png_bytes(with_saturated_corner))[2, 2, 0] == 16


def test_channel_conversions_follow_hpa_order_and_refuse_to_guess():
    rgby = np.stack([np.full((2, 2), v, np.uint8) for v in (10, 20, 30, 40)], axis=-1)
    assert convert_channels(rgby, 1)[0, 0].tolist() == [20]  # the protein stain
    assert convert_channels(rgby[:, :, :3], 1)[0, 0].tolist() == [20]
    assert convert_channels(rgby, 3)[0, 0].tolist() == [10, 20, 30]  # alpha or yellow dropped
    gray = rgby[:, :, 1:2]
    with pytest.raises(ImageReadError, match=r"^1 channel \(grayscale\), but the run reads 3 \(red, green, blue\): "
                                             r"give one grayscale file per stain, <Id>_red.png, .*--gray-as green"):
        convert_channels(gray, 3)
    with pytest.raises(ImageReadError, match=r"3 channels \(RGB\), but the run reads 4 \(red, green, blue, yellow\)"):
        convert_channels(rgby[:, :, :3], 4)
    assert convert_channels(gray, 3, gray_as="green")[0, 0].tolist() == [0, 20, 0]
    assert convert_channels(gray, 4, gray_as="yellow")[0, 0].tolist() == [0, 0, 0, 20]
    with pytest.raises(ImageReadError, match="gray as yellow: expected one of the run's stains, red, green, blue"):
        convert_channels(gray, 3, gray_as="yellow")


def test_stain_sets_compose_in_order_and_colour_stain_files_read_as_their_brightest_channel(tmp_path):
    planes = {stain: np.full((6, 5), value, np.uint8) for stain, value in (("red", 10), ("green", 20), ("blue", 30))}
    for stain, plane in planes.items():
        Image.fromarray(plane).save(tmp_path / f"a_{stain}.png")
    coloured_green = np.zeros((6, 5, 3), np.uint8)
    coloured_green[:, :, 1] = 20  # a stain drawn in its colour, as HPA's web images are
    Image.fromarray(coloured_green).save(tmp_path / "b_green.png")
    paths = [str(tmp_path / f"a_{stain}.png") for stain in planes]
    assert load_image(tuple(paths), 3)[0, 0].tolist() == [10, 20, 30]
    assert load_image((paths[0], str(tmp_path / "b_green.png"), paths[2]), 3)[0, 0].tolist() == [10, 20, 30]
    with pytest.raises(ImageReadError, match=r"a stain set of 3 files for a 4-channel run \(expected red, green, blue, yellow"):
        load_image(tuple(paths), 4)
    Image.fromarray(np.zeros((7, 5), np.uint8)).save(tmp_path / "c_blue.png")
    with pytest.raises(ImageReadError, match="stain images differ in size: 5x6 and 5x7"):
        load_image((paths[0], paths[1], str(tmp_path / "c_blue.png")), 3)


def test_truncated_png_is_an_image_read_error(tmp_path):
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(tmp_path / "x.png")
    data = (tmp_path / "x.png").read_bytes()
    (tmp_path / "x.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageReadError):
        decode_image(tmp_path / "x.png")
    with pytest.raises(ImageReadError, match="file not found"):
        decode_image(tmp_path / "missing.png")


def test_bytes_and_paths_decode_alike_tiff_by_its_signature(tmp_path):
    rgb = np.random.default_rng(1).integers(0, 255, (20, 30, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "x.png")
    # A 16-bit channel-first stack under a name that does not say TIFF.
    tifffile.imwrite(tmp_path / "stack.data", np.moveaxis(rgb, -1, 0).astype(np.uint16) * 257)
    for path in (tmp_path / "x.png", tmp_path / "stack.data"):
        from_path, from_bytes = decode_image(path), decode_image(path.read_bytes())
        np.testing.assert_array_equal(from_path, rgb)
        np.testing.assert_array_equal(from_bytes, rgb)


def test_to_chw_tensor():
    array = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    tensor = to_chw_tensor(array)
    assert tensor.shape == (4, 2, 3) and tensor.dtype == torch.uint8 and tensor.is_contiguous()
    assert tensor[:, 1, 2].tolist() == array[1, 2].tolist()


def test_pixel_count_is_checked_from_the_header_before_decoding(tmp_path, monkeypatch):
    # 12,000 x 10,000: over protloc's limit, under the size at which PIL refuses by itself.
    (tmp_path / "big.png").write_bytes(png_header_only(12_000, 10_000))
    with pytest.raises(ImageReadError, match="10000 x 12000 x 1 image: 120,000,000 pixels, more than the limit of 100,000,000"):
        decode_image(tmp_path / "big.png")
    with pytest.raises(ImageReadError, match="more than the limit"):
        decode_image((tmp_path / "big.png").read_bytes())
    # Far over PIL's own limit: protloc's limit decides there too, and says so in its words.
    with pytest.raises(ImageReadError, match="400,000,000 pixels, more than the limit of 100,000,000"):
        decode_image(png_header_only(20_000, 20_000))


def test_pixel_limit_is_settable_in_code_and_by_environment(tmp_path, monkeypatch):
    Image.fromarray(np.zeros((10, 20, 3), dtype=np.uint8)).save(tmp_path / "x.png")
    tiff = io.BytesIO()
    tifffile.imwrite(tiff, np.zeros((10, 20, 3), dtype=np.uint8))
    (tmp_path / "x.tif").write_bytes(tiff.getvalue()[: len(tiff.getvalue()) // 2])  # pixels cut off: header only
    monkeypatch.setattr(limits, "MAX_PIXELS", 599)
    for path in (tmp_path / "x.png", tmp_path / "x.tif"):
        with pytest.raises(ImageReadError, match="600 pixels, more than the limit of 599"):
            decode_image(path)
    monkeypatch.setattr(limits, "MAX_PIXELS", 600)
    assert decode_image(tmp_path / "x.png").shape == (10, 20, 3)
    # One limit: a file within protloc's is read whatever PIL's own (here far lower) says.
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 50)
    assert decode_image(tmp_path / "x.png").shape == (10, 20, 3)
    assert Image.MAX_IMAGE_PIXELS == 50  # and PIL's is left as it was
    monkeypatch.setenv("PROTLOC_MAX_PIXELS", "100")
    with pytest.raises(ImageReadError, match="more than the limit of 100 "):
        decode_image(tmp_path / "x.png")
    monkeypatch.setenv("PROTLOC_MAX_PIXELS", "many")
    with pytest.raises(ImageReadError, match="PROTLOC_MAX_PIXELS='many': expected a whole number"):
        decode_image(tmp_path / "x.png")


def test_dataset_items_carry_why_an_image_was_unreadable(tmp_path):
    Image.fromarray(np.zeros((8, 8, 3), dtype=np.uint8)).save(tmp_path / "good.png")
    (tmp_path / "bad.png").write_text("not an image")
    table = read_inputs([str(tmp_path / "good.png"), str(tmp_path / "bad.png")])
    dataset = ImageDataset(table, channels=3, transform=lambda image: image.float(), image_size=8, strict=False)
    image, _, _, problem = dataset[0]
    assert problem == "" and image.shape == (3, 8, 8)
    image, _, index, problem = dataset[1]
    assert index == 1 and image.abs().sum() == 0
    assert problem.startswith(f"{tmp_path / 'bad.png'}: not a readable image")
    with pytest.raises(ImageReadError, match="bad.png: not a readable image"):
        ImageDataset(table, channels=3, transform=lambda image: image, image_size=8)[1]


def test_an_unreadable_stain_is_named(tmp_path):
    stains = [tmp_path / f"a_{stain}.png" for stain in ("red", "green", "blue")]
    for path in stains:
        Image.fromarray(np.zeros((8, 8), dtype=np.uint8)).save(path)
    stains[1].write_bytes(b"broken")
    with pytest.raises(ImageReadError) as caught:
        load_image(tuple(map(str, stains)), 3)
    assert caught.value.path == str(stains[1])
