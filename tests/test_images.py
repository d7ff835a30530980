"""Photo decoding: real photos, unusual colour modes, and bytes that are not usable images."""

from __future__ import annotations

import io
import struct

import numpy as np
import pytest
from PIL import Image, ImageFile

from lookalike.image_corpus import png_bomb
from lookalike.images import MAX_PIXELS, ImageDecodeError, decode_batch, decode_image

SIZE = 16


def encode(image: Image.Image, fmt: str, **options) -> bytes:
    """The image encoded to bytes in ``fmt``."""
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def assert_rgb_array(array: np.ndarray, size: int = SIZE) -> None:
    """The array has the model-input shape and dtype."""
    assert array.shape == (size, size, 3)
    assert array.dtype == np.uint8


@pytest.fixture(scope="module")
def photo_bytes(photo_dir) -> list[bytes]:
    """Bytes of three real catalog photos (the first three by name)."""
    paths = sorted((photo_dir / "images").glob("*.jpg"))[:3]
    return [p.read_bytes() for p in paths]


@pytest.mark.parametrize("size", [16, 64, 300])
def test_real_photo_decodes_to_square_rgb(photo_bytes, size):
    """A real JPEG decodes to (size, size, 3) uint8, up- or down-scaled, and is not blank."""
    array = decode_image(photo_bytes[0], size)
    assert_rgb_array(array, size)
    assert array.std() > 0


def test_real_photo_matches_pillow_reference(photo_bytes):
    """Decoding agrees (within resampling noise) with a plain Pillow RGB convert-and-resize."""
    with Image.open(io.BytesIO(photo_bytes[0])) as image:
        reference = np.asarray(image.convert("RGB").resize((32, 32), Image.Resampling.BILINEAR), dtype=np.float64)
    decoded = decode_image(photo_bytes[0], 32).astype(np.float64)
    assert np.abs(decoded - reference).mean() < 12


@pytest.mark.parametrize(
    "make, fmt, expected",
    [
        (lambda: Image.new("RGBA", (40, 30), (10, 200, 30, 128)), "PNG", (10, 200, 30)),
        (lambda: Image.new("RGBA", (40, 30), (250, 5, 90, 0)), "PNG", (250, 5, 90)),
        (lambda: Image.new("RGB", (24, 24), (30, 60, 90)).quantize(colors=4), "PNG", (30, 60, 90)),
        (lambda: Image.new("L", (33, 17), 77), "PNG", (77, 77, 77)),
        (lambda: Image.new("L", (33, 17), 200), "JPEG", (200, 200, 200)),
        (lambda: Image.new("LA", (20, 20), (120, 50)), "PNG", (120, 120, 120)),
        (lambda: Image.new("I;16", (20, 20), 0), "PNG", (0, 0, 0)),
        (lambda: Image.new("I;16", (20, 20), 40000), "PNG", (156, 156, 156)),
        (lambda: Image.new("I;16", (20, 20), 65535), "PNG", (255, 255, 255)),
        (lambda: Image.new("RGB", (20, 20), (255, 0, 0)), "GIF", (255, 0, 0)),
        (lambda: Image.new("RGB", (20, 20), (0, 0, 255)), "WEBP", (0, 0, 255)),
    ],
    ids=["rgba", "rgba-transparent", "palette", "grey-png", "grey-jpeg", "grey-alpha", "16-bit-black", "16-bit-grey",
         "16-bit-white", "gif", "webp"],
)
def test_other_modes_decode_to_rgb(make, fmt, expected):
    """Non-RGB encodings become 3-channel RGB with the solid colour kept (alpha dropped)."""
    image = make()
    if fmt == "PNG" and image.mode == "P":
        assert Image.open(io.BytesIO(encode(image, fmt))).mode == "P"
    array = decode_image(encode(image, fmt), SIZE)
    assert_rgb_array(array)
    tolerance = 3 if fmt in ("JPEG", "WEBP") else 0
    assert np.abs(array.astype(int) - np.array(expected)).max() <= tolerance


@pytest.mark.parametrize(
    "cmyk, expected_rgb",
    [
        ((0, 0, 0, 0), (255, 255, 255)),
        ((255, 0, 0, 0), (0, 255, 255)),
        ((0, 255, 0, 0), (255, 0, 255)),
        ((0, 0, 255, 0), (255, 255, 0)),
        ((0, 0, 0, 255), (0, 0, 0)),
    ],
)
def test_cmyk_jpeg_decodes_to_rgb(cmyk, expected_rgb):
    """A CMYK JPEG (as print workflows produce) decodes to 3-channel RGB with the right primaries."""
    content = encode(Image.new("CMYK", (24, 24), cmyk), "JPEG", quality=95)
    assert Image.open(io.BytesIO(content)).mode == "CMYK"
    array = decode_image(content, SIZE)
    assert_rgb_array(array)
    assert np.abs(array.astype(int) - np.array(expected_rgb)).max() <= 4


def test_non_square_image_is_stretched_not_cropped():
    """A wide image is resized to a square without cropping: left and right halves keep their colours."""
    image = Image.new("RGB", (200, 50), (255, 0, 0))
    image.paste((0, 0, 255), (100, 0, 200, 50))
    array = decode_image(encode(image, "PNG"), SIZE)
    assert (array[:, : SIZE // 2 - 1] == (255, 0, 0)).all()
    assert (array[:, SIZE // 2 + 1 :] == (0, 0, 255)).all()


def test_empty_bytes_raise():
    """Zero bytes are not an image."""
    with pytest.raises(ImageDecodeError):
        decode_image(b"", SIZE)


@pytest.mark.parametrize("content", [b"item_id,price\n1,2\n", b"<html>not found</html>", bytes(range(256)) * 4])
def test_non_image_bytes_raise(content):
    """Text or random bytes raise ImageDecodeError (a ValueError), not some other exception."""
    with pytest.raises(ImageDecodeError) as info:
        decode_image(content, SIZE)
    assert isinstance(info.value, ValueError)


@pytest.mark.parametrize("keep", [0.5, 0.1, 0.01])
def test_truncated_jpeg_raises(photo_bytes, keep):
    """A JPEG cut short (half, a tenth, only the header) raises ImageDecodeError."""
    content = photo_bytes[0]
    with pytest.raises(ImageDecodeError):
        decode_image(content[: max(2, int(len(content) * keep))], SIZE)


def test_truncated_png_raises():
    """A PNG missing its tail raises ImageDecodeError."""
    rng = np.random.default_rng(0)
    content = encode(Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)), "PNG")
    with pytest.raises(ImageDecodeError):
        decode_image(content[: len(content) // 2], SIZE)


def test_image_over_pixel_limit_is_refused():
    """An image whose header claims more than MAX_PIXELS pixels is refused, as the module promises."""
    side = int(np.ceil(np.sqrt(MAX_PIXELS))) + 1  # just over the limit, below Pillow's 2x hard limit
    content = encode(Image.new("1", (side, side)), "PNG")
    with pytest.raises(ImageDecodeError):
        decode_image(content, SIZE)


def test_decode_batch_reports_errors_and_keeps_order(photo_bytes):
    """Good items come back stacked in input order; every bad item gets its own error, nothing raises."""
    contents = [photo_bytes[0], b"", None, b"not an image", photo_bytes[1], photo_bytes[0][:100], photo_bytes[2]]
    images, errors = decode_batch(contents, SIZE)
    assert len(errors) == len(contents)
    assert [e is None for e in errors] == [True, False, False, False, True, False, True]
    assert all(isinstance(e, str) and e for e in errors if e is not None)
    assert images.shape == (3, SIZE, SIZE, 3)
    assert images.dtype == np.uint8
    for position, content in enumerate([photo_bytes[0], photo_bytes[1], photo_bytes[2]]):
        np.testing.assert_array_equal(images[position], decode_image(content, SIZE))
    assert not np.array_equal(images[0], images[1])


def test_decode_batch_all_bad_gives_empty_stack():
    """When nothing decodes the images array is empty but correctly shaped, and errors has one entry each."""
    images, errors = decode_batch([b"", b"x", None], SIZE)
    assert images.shape == (0, SIZE, SIZE, 3)
    assert images.dtype == np.uint8
    assert len(errors) == 3 and all(errors)


def test_decode_batch_accepts_generator_and_empty_input(photo_bytes):
    """Any iterable works (the UDF passes a pandas Series); no input gives no output."""
    images, errors = decode_batch((c for c in photo_bytes[:2]), SIZE)
    assert images.shape == (2, SIZE, SIZE, 3) and errors == [None, None]
    images, errors = decode_batch([], SIZE)
    assert images.shape == (0, SIZE, SIZE, 3) and errors == []


@pytest.mark.parametrize("side", [8_000, 20_000], ids=["over-our-limit", "over-pillow-limit"])
def test_decompression_bomb_is_refused_without_decoding_pixels(side, monkeypatch):
    """A small PNG whose header claims 64M or 400M pixels is refused from its header alone."""
    content = png_bomb(side, side)
    assert len(content) < 1_000_000 < side * side
    assert struct.unpack(">II", content[16:24]) == (side, side)  # the header's width and height

    def no_pixels(self, *args, **kwargs):
        raise AssertionError("the bomb's pixels were decoded")

    monkeypatch.setattr(ImageFile.ImageFile, "load", no_pixels)
    with pytest.raises(ImageDecodeError, match="too large|DecompressionBomb"):
        decode_image(content, SIZE)


def test_animated_gif_decodes_its_first_frame():
    """An animated GIF (a product spin, say) decodes to its first frame, not a blend of frames."""
    frames = [Image.new("RGB", (30, 30), colour) for colour in ((255, 0, 0), (0, 255, 0), (0, 0, 255))]
    content = encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    assert Image.open(io.BytesIO(content)).n_frames == 3
    array = decode_image(content, SIZE)
    assert_rgb_array(array)
    assert (array == (255, 0, 0)).all()


def test_large_photo_decodes_to_model_size():
    """A 6000x4000 JPEG (a raw studio export) decodes to the model size with its colours kept."""
    image = Image.new("RGB", (6000, 4000), (20, 120, 220))
    image.paste((250, 250, 250), (0, 0, 3000, 4000))
    array = decode_image(encode(image, "JPEG", quality=90), SIZE)
    assert_rgb_array(array)
    assert np.abs(array[:, : SIZE // 2 - 1].astype(int) - 250).max() <= 4
    assert np.abs(array[:, SIZE // 2 + 1 :].astype(int) - (20, 120, 220)).max() <= 4
