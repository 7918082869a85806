"""Each on-disk format reads into the items a user expects, skipping what cannot be used."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fashion_sweeps.data.decode import decode_files
from fashion_sweeps.data.sources import (
    DataError,
    read_clothing,
    read_fashion_mnist,
    read_fashion_product,
    read_idx,
    read_image_folder,
)


def test_fashion_mnist_reads_idx_files_with_official_splits(fmnist_root: Path) -> None:
    source = read_fashion_mnist(fmnist_root, download=False)
    assert source.pixels.shape == (90, 28, 28, 1)
    assert source.splits.count("train") == 60 and source.splits.count("test") == 30
    assert source.labels[:3] == ["T-shirt/top", "Trouser", "Pullover"]


def test_fashion_mnist_missing_offline_names_path_and_ways_out(tmp_path: Path) -> None:
    with pytest.raises(DataError) as err:
        read_fashion_mnist(tmp_path / "nowhere", download=False)
    message = str(err.value)
    assert str(tmp_path / "nowhere") in message
    assert "dataset.root=" in message and "clothing_sample" in message


def test_truncated_idx_file_is_a_clear_error(fmnist_root: Path) -> None:
    path = fmnist_root / "t10k-images-idx3-ubyte.gz"
    with gzip.open(path) as f:
        data = f.read()
    with gzip.open(path, "wb") as f:
        f.write(data[:-100])
    with pytest.raises(DataError, match="truncated"):
        read_idx(path)


def test_clothing_skips_missing_images_and_reports_orphans(clothing_root: Path) -> None:
    source = read_clothing(clothing_root)
    assert len(source) == 3 * 8 + 2  # + 'Skip' row + the corrupt file (found only on decode)
    counts = source.skipped_counts()
    assert counts == {"missing_image": 1, "no_row": 1}


def test_corrupt_image_is_skipped_with_a_reason_not_a_crash(clothing_root: Path) -> None:
    source = read_clothing(clothing_root)
    pixels, reasons = decode_files(source.paths, 16, workers=1)
    assert reasons.count("corrupt_image") == 1
    assert pixels.shape == (len(source) - 1, 16, 16, 3)


def test_image_above_the_decompression_bomb_limit_is_skipped(
    clothing_root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = read_clothing(clothing_root)
    big = clothing_root / "images" / "big.png"
    Image.new("RGB", (64, 64)).save(big)
    # Pillow refuses images over twice MAX_IMAGE_PIXELS: here 64x64 against a limit of 1000.
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    pixels, reasons = decode_files([*source.paths, big], 16, workers=1)
    assert reasons[-1] == "too_large_image"
    assert reasons.count("corrupt_image") == 1
    assert pixels.shape == (len(source) - 1, 16, 16, 3)


def test_missing_clothing_root_names_the_path(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=str(tmp_path / "nope")):
        read_clothing(tmp_path / "nope")


def test_styles_csv_with_commas_in_names(product_root: Path) -> None:
    source = read_fashion_product(product_root)
    assert len(source) == 17 and source.skipped == []
    assert set(source.labels) == {"Tshirts", "Casual Shoes", "Waist Pouch"}
    by_sub = read_fashion_product(product_root, label_column="subCategory")
    assert set(by_sub.labels) == {"Topwear", "Shoes", "Bags"}


def test_unknown_label_column_lists_the_choices(product_root: Path) -> None:
    with pytest.raises(DataError, match="articleType"):
        read_fashion_product(product_root, label_column="colour")


def test_image_folder_with_split_folders(folder_root: Path) -> None:
    source = read_image_folder(folder_root)
    assert len(source) == 30
    assert {s: source.splits.count(s) for s in ("train", "val", "test")} == {
        "train": 18,
        "val": 6,
        "test": 6,
    }


def test_image_folder_without_split_folders(folder_root: Path) -> None:
    source = read_image_folder(folder_root / "train")
    assert source.splits is None
    assert sorted(set(source.labels)) == ["Dress", "Pants", "Shoes"]


def test_empty_image_folder_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "empty" / "Dress").mkdir(parents=True)
    with pytest.raises(DataError, match="holds no images"):
        read_image_folder(tmp_path / "empty")


def test_grey_images_decode_to_three_channels(tmp_path: Path) -> None:
    from PIL import Image

    Image.fromarray(np.full((10, 12), 128, dtype=np.uint8)).save(tmp_path / "grey.png")
    pixels, reasons = decode_files([tmp_path / "grey.png"], 8, "RGB", workers=1)
    assert reasons == [None] and pixels.shape == (1, 8, 8, 3)


def rewrite(path: Path, edit, encoding: str = "utf-8") -> None:
    path.write_bytes(edit(path.read_text()).encode(encoding))


def test_sixteen_bit_greyscale_is_scaled_to_eight_bits_not_clipped(tmp_path: Path) -> None:
    """A 16-bit PNG (medical, scanned and camera-raw exports) decoded near-white before: PIL's
    convert clips its values at 255. Black, mid-grey and white stay themselves."""
    levels = np.array([0, 32768, 65535], dtype=np.uint16).repeat(8)[None, :].repeat(24, axis=0)
    Image.fromarray(levels).save(tmp_path / "wide.png")
    assert Image.open(tmp_path / "wide.png").mode.startswith("I")
    for mode, channels in (("L", 1), ("RGB", 3)):
        images, reasons = decode_files([tmp_path / "wide.png"], 24, mode)
        assert reasons == [None] and images.shape == (1, 24, 24, channels)
        middle_row = images[0, 12, :, 0].astype(int)
        assert middle_row[2] == 0 and abs(middle_row[12] - 128) <= 1 and middle_row[21] == 255


def test_csv_with_a_byte_order_mark_is_read(clothing_root: Path, product_root: Path) -> None:
    before = len(read_clothing(clothing_root)), len(read_fashion_product(product_root))
    rewrite(clothing_root / "images.csv", lambda t: "\ufeff" + t)
    rewrite(product_root / "styles.csv", lambda t: "\ufeff" + t)
    assert (len(read_clothing(clothing_root)), len(read_fashion_product(product_root))) == before


def test_duplicate_rows_are_skipped_as_duplicates(clothing_root: Path, product_root: Path) -> None:
    rewrite(clothing_root / "images.csv", lambda t: t + "dress-00,7,Dress,False\n")
    source = read_clothing(clothing_root)
    assert len(source) == 3 * 8 + 2
    assert source.skipped_counts() == {"missing_image": 1, "no_row": 1, "duplicate": 1}
    rewrite(product_root / "styles.csv", lambda t: t + t.splitlines()[1] + "\n")
    product = read_fashion_product(product_root)
    assert len(product) == 17 and product.skipped_counts() == {"duplicate": 1}
    assert len(set(product.paths)) == len(product.paths)


def test_conflicting_labels_for_one_image_name_the_ids(clothing_root: Path) -> None:
    extra = "dress-00,7,Pants,False\nshoes-03,7,Dress,False\n"
    rewrite(clothing_root / "images.csv", lambda t: t + extra)
    with pytest.raises(DataError) as err:
        read_clothing(clothing_root)
    message = str(err.value)
    assert "dress-00 (Dress, Pants)" in message and "shoes-03 (Shoes, Dress)" in message


def test_csv_not_in_utf8_is_a_clear_error(clothing_root: Path, product_root: Path) -> None:
    rewrite(clothing_root / "images.csv", lambda t: t.replace("Dress", "Robe é"), "latin-1")
    with pytest.raises(DataError, match=r"images.csv is not UTF-8 text.*iconv"):
        read_clothing(clothing_root)
    rewrite(product_root / "styles.csv", lambda t: t.replace("Blue", "Bleu é"), "latin-1")
    with pytest.raises(DataError, match=r"styles.csv is not UTF-8 text"):
        read_fashion_product(product_root)


def test_decoding_holds_one_copy_of_the_images(tmp_path: Path) -> None:
    """Decoded images go straight into the result: never a list of them plus a stacked copy."""
    import tracemalloc

    rng = np.random.default_rng(0)
    paths = []
    for i in range(120):
        paths.append(tmp_path / f"{i}.png")
        Image.fromarray(rng.integers(0, 256, (48, 48, 3), dtype=np.uint8)).save(paths[-1])
    paths.append(tmp_path / "missing.png")
    tracemalloc.start()
    pixels, reasons = decode_files(paths, 48, workers=1)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert pixels.shape == (120, 48, 48, 3) and reasons[-1] == "missing_image"
    assert peak < 1.8 * pixels.nbytes  # the array, one chunk of 30 images, the decoder's buffers
    assert np.array_equal(pixels[7], np.asarray(Image.open(paths[7])))
