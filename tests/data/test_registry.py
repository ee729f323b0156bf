"""Registry lookup order and the one-time verified download (exercised with a file:// URL)."""

import dataclasses

import pytest

from gptlab.data import registry
from gptlab.data.registry import DatasetSpec, Locations, find_raw, sha256_file
from gptlab.errors import GptlabError


def _spec(tmp_path, content: bytes, sha: str | None = None) -> DatasetSpec:
    src = tmp_path / "remote.txt"
    src.write_bytes(content)
    return DatasetSpec("toy", "toy/input.txt", src.as_uri(), sha or sha256_file(src))


def test_download_once_into_cache_then_reuse(tmp_path):
    spec = _spec(tmp_path, b"hello world\n" * 100)
    loc = Locations(cache_dir=tmp_path / "cache")
    path = find_raw(spec, loc)
    assert path == tmp_path / "cache" / "raw" / "toy" / "input.txt"
    assert path.read_bytes() == b"hello world\n" * 100
    (tmp_path / "remote.txt").unlink()  # second lookup must not download again
    assert find_raw(spec, loc) == path


def test_checksum_mismatch_leaves_nothing_behind(tmp_path):
    spec = _spec(tmp_path, b"tampered", sha="0" * 64)
    loc = Locations(cache_dir=tmp_path / "cache")
    with pytest.raises(GptlabError, match="expected 0000"):
        find_raw(spec, loc)
    assert not list((tmp_path / "cache" / "raw" / "toy").iterdir())


def test_data_dir_wins_over_cache_and_network(tmp_path):
    spec = dataclasses.replace(_spec(tmp_path, b"x"), url="http://invalid.invalid/none")
    local = tmp_path / "data" / "toy"
    local.mkdir(parents=True)
    (local / "input.txt").write_text("local copy")
    loc = Locations(cache_dir=tmp_path / "cache", data_dir=tmp_path / "data")
    assert find_raw(spec, loc).read_text() == "local copy"


def test_failed_download_says_where_to_put_the_file(tmp_path):
    spec = dataclasses.replace(_spec(tmp_path, b"x"), url=(tmp_path / "missing").as_uri())
    with pytest.raises(GptlabError, match="put the file at .*toy/input.txt"):
        find_raw(spec, Locations(cache_dir=tmp_path / "cache"))


def test_shakespeare_is_registered_with_its_checksum():
    spec = registry.REGISTRY["shakespeare_char"]
    assert spec.sha256.startswith("86c4e6aa") and spec.url.endswith("input.txt")
