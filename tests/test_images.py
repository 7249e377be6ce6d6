"""Image files as other tools write them: modes, transparency, 16 bits, EXIF orientation, truncation, size
limits, and the decode cache. Test images are made here from a shipped COCO image with PIL."""
import io
import json

import numpy as np
import pytest
from helpers import SAMPLE_DIR
from PIL import Image

from swift_coord_plugin.core import samples as sample_rules
from swift_coord_plugin.core.images import EXIF_ORIENTATION
from swift_coord_plugin.data import images

SOURCE = sorted((SAMPLE_DIR / "images").glob("*.jpg"))[0]


@pytest.fixture(scope="module")
def rgb():
    with Image.open(SOURCE) as im:
        return im.convert("RGB")


def test_rgb_and_greyscale_and_palette_and_cmyk_are_shown_as_pil_converts_them(rgb, tmp_path):
    assert images.to_rgb(rgb) is rgb
    grey = rgb.convert("L")
    out = np.asarray(images.to_rgb(grey))
    assert out.shape[2] == 3 and (out[..., 0] == np.asarray(grey)).all() and (out[..., 0] == out[..., 2]).all()
    for mode in ("P", "CMYK", "1"):
        im = rgb.convert(mode)
        path = tmp_path / f"x.{'tif' if mode == 'CMYK' else 'png'}"
        im.save(path)
        loaded = images.load_rgb(str(path))
        assert loaded.mode == "RGB" and loaded.size == rgb.size
        assert np.array_equal(np.asarray(loaded), np.asarray(Image.open(path).convert("RGB")))


def test_transparency_is_composited_on_white(rgb, tmp_path):
    rgba = rgb.convert("RGBA")
    a = np.asarray(rgba).copy()
    a[:, : a.shape[1] // 2, 3] = 0  # left half fully transparent
    a[:, a.shape[1] // 2:, 3] = 255
    path = tmp_path / "t.png"
    Image.fromarray(a, "RGBA").save(path)
    out = np.asarray(images.load_rgb(str(path)))
    half = a.shape[1] // 2
    assert (out[:, :half] == 255).all()  # white, not the colours hidden under the alpha
    assert np.array_equal(out[:, half:], a[:, half:, :3])
    assert not (np.asarray(Image.open(path).convert("RGB"))[:, :half] == 255).all()  # what convert("RGB") shows
    # half transparency: the colour blended halfway to white
    a[..., 3] = 128
    semi = images.to_rgb(Image.fromarray(a, "RGBA"))
    want = (a[..., :3].astype(int) * 128 + 255 * 127 + 127) // 255
    assert np.abs(np.asarray(semi).astype(int) - want).max() <= 1
    # grey + alpha, and a palette with a transparent index
    la = Image.fromarray(np.stack([np.full((8, 8), 10, np.uint8), np.zeros((8, 8), np.uint8)], -1), "LA")
    assert (np.asarray(images.to_rgb(la)) == 255).all()
    p = Image.new("P", (8, 8), 3)
    p.putpalette([0, 0, 0] * 256)
    p.info["transparency"] = 3
    assert (np.asarray(images.to_rgb(p)) == 255).all()


def test_sixteen_bit_greyscale_is_scaled_not_clipped(tmp_path):
    values = np.array([[0, 257, 32768, 65535]], dtype=np.uint16)
    path = tmp_path / "g16.png"
    Image.fromarray(values).save(path)
    with Image.open(path) as im:
        assert im.mode.startswith("I")
    out = np.asarray(images.load_rgb(str(path)))[0, :, 0]
    assert out.tolist() == [0, 1, 128, 255]
    assert np.asarray(Image.open(path).convert("RGB"))[0, 2, 0] == 255  # PIL's own conversion clips
    with pytest.raises(images.ImageProblem, match="mode F"):
        images.to_rgb(Image.fromarray(np.zeros((2, 2), np.float32)))


def test_truncated_jpeg_passes_the_header_and_fails_the_full_decode(tmp_path):
    data = SOURCE.read_bytes()
    path = tmp_path / "cut.jpg"
    path.write_bytes(data[: len(data) // 2])
    assert images.cheap_check(str(path)) is None  # the header is intact ...
    problem = images.decode_problem(str(path))
    assert problem and "truncated" in problem  # ... the pixels are not
    assert images.full_check(str(path)) == problem


def test_exif_rotation_against_the_declared_size(rgb, tmp_path):
    im = rgb.resize((400, 200))
    exif = Image.Exif()
    exif[EXIF_ORIENTATION] = 6  # viewers show it rotated: 200 x 400
    path = tmp_path / "rot.jpg"
    im.save(path, exif=exif)
    assert images.header(str(path)) == (400, 200, "RGB", 6)
    assert images.cheap_check(str(path), 400, 200) is None  # COCO's frame: the stored pixels
    problem = images.cheap_check(str(path), 200, 400)
    assert "EXIF-rotated view (orientation 6)" in problem and "stores 400x200" in problem
    assert "stores 400x200" in images.cheap_check(str(path), 300, 200)
    # the model gets the stored pixels, not the rotated view
    assert images.load_rgb(str(path)).size == (400, 200)
    reason, message = images.sample_problem({"image": str(path), "objects": [], "width": 200, "height": 400})
    assert reason == sample_rules.IMAGE_SIZE_MISMATCH and "fields width, height" in message
    assert sample_rules.fields_problem({"image": str(path), "objects": [], "width": 200, "height": 400}) is None


def test_fields_are_checked_before_the_file_and_without_it(tmp_path):
    """core.samples.fields_problem judges values only; data.images.sample_problem adds the image file."""
    missing = {"image": str(tmp_path / "none.jpg"), "objects": [{"desc": "dog", "bbox": [0.1, 0.1, 0.5, 0.5]}]}
    assert sample_rules.fields_problem(missing) is None
    assert images.sample_problem(missing)[0] == sample_rules.MISSING_IMAGE
    assert images.sample_problem(missing, check_readable=False)[0] == sample_rules.MISSING_IMAGE
    bad_box = dict(missing, objects=[{"desc": "dog", "bbox": [0.5, 0.1, 0.1, 0.5]}])
    assert sample_rules.fields_problem(bad_box)[0] == images.sample_problem(bad_box)[0] == sample_rules.BAD_BBOX


def test_sizes_the_processor_refuses():
    assert images.processor_problem(640, 480) is None
    assert images.processor_problem(200, 1) is None
    assert "aspect ratio 201.0" in images.processor_problem(201, 1)
    assert "decompression-bomb" in images.processor_problem(20000, 20000)


def test_decode_cache_is_paid_once_and_invalidated_by_a_change(tmp_path):
    good = tmp_path / "a.jpg"
    good.write_bytes(SOURCE.read_bytes())
    cut = tmp_path / "b.jpg"
    cut.write_bytes(SOURCE.read_bytes()[:3000])
    cache_file = tmp_path / "cache" / images.CACHE_FILE
    first = images.decode_problems([str(good), str(cut)], images.DecodeCache(str(cache_file)), workers=1)
    assert first[str(good)] is None and "truncated" in first[str(cut)]
    lines = cache_file.read_text().splitlines()
    assert len(lines) == 2 and json.loads(lines[0])[0] == str(good)
    calls = []
    again = images.DecodeCache(str(cache_file))
    second = images.decode_problems([str(good), str(cut)], again, workers=1, progress=calls.append)
    assert second == first and len(cache_file.read_text().splitlines()) == 2  # nothing decoded again
    cut.write_bytes(SOURCE.read_bytes())  # repaired: another size, so the entry no longer holds
    third = images.decode_problems([str(good), str(cut)], images.DecodeCache(str(cache_file)), workers=1)
    assert third == {str(good): None, str(cut): None}
    assert len(cache_file.read_text().splitlines()) == 3


def test_parallel_decode_gives_the_serial_answers(tmp_path):
    paths = []
    for i in range(70):  # above the threshold for worker processes
        p = tmp_path / f"{i}.jpg"
        p.write_bytes(SOURCE.read_bytes() if i % 7 else SOURCE.read_bytes()[:4000])
        paths.append(str(p))
    par = images.decode_problems(paths, images.DecodeCache(str(tmp_path / "c1.jsonl")), workers=2)
    ser = images.decode_problems(paths, images.DecodeCache(str(tmp_path / "c2.jsonl")), workers=1)
    assert par == ser and sum(v is not None for v in par.values()) == 10


def test_bytes_and_in_memory_images_take_the_same_path(rgb):
    buf = io.BytesIO()
    rgb.convert("LA").save(buf, format="PNG")
    from_bytes = images.load_rgb(io.BytesIO(buf.getvalue()))
    assert from_bytes.mode == "RGB" and from_bytes.size == rgb.size
