"""Finding the box file's images under a folder (``evaluate_localization``'s images root)."""

from __future__ import annotations

from cxr_lightning.explain.explain_files import find_image_files


def test_box_images_are_found_where_nih_puts_them_and_anywhere_below(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "images_002" / "images").mkdir(parents=True)
    (tmp_path / "top.png").write_bytes(b"x")
    (tmp_path / "images" / "flat.png").write_bytes(b"x")
    (tmp_path / "images_002" / "images" / "kaggle.png").write_bytes(b"x")
    found, missing = find_image_files(tmp_path, ["kaggle.png", "top.png", "gone.png", "flat.png", "top.png"])
    assert list(found) == ["kaggle.png", "top.png", "flat.png"]  # the order asked for, each once
    assert found["top.png"] == tmp_path / "top.png"
    assert found["flat.png"] == tmp_path / "images" / "flat.png"
    assert found["kaggle.png"] == tmp_path / "images_002" / "images" / "kaggle.png"
    assert missing == ["gone.png"]


def test_a_folder_named_like_the_image_gives_way_to_the_file_and_broken_entries_are_found(tmp_path):
    """As in the dataset's index: a file beats a folder of the same name; a broken link or a link loop is
    found (decoding then names what is wrong) instead of passing for missing."""
    (tmp_path / "images_001" / "images").mkdir(parents=True)
    (tmp_path / "shadow.png").mkdir()  # a folder where root/name would be looked up first
    (tmp_path / "images_001" / "images" / "shadow.png").write_bytes(b"x")
    (tmp_path / "only_folder.png").mkdir()
    (tmp_path / "broken.png").symlink_to(tmp_path / "nowhere.png")
    (tmp_path / "loop.png").symlink_to("loop.png")
    found, missing = find_image_files(tmp_path, ["shadow.png", "only_folder.png", "broken.png", "loop.png"])
    assert found["shadow.png"] == tmp_path / "images_001" / "images" / "shadow.png"
    assert found["only_folder.png"] == tmp_path / "only_folder.png"  # the only entry: decoding says it is a folder
    assert found["broken.png"] == tmp_path / "broken.png" and found["loop.png"] == tmp_path / "loop.png"
    assert missing == []
