"""lambda_function.jsonfile: the one reader of sidecars and labels.json used by serving and conversion."""

import json

import pytest

from lambda_function.jsonfile import JSONFileError, labels_problem, read_json, read_json_object


def test_reads_a_json_value(tmp_path):
    path = tmp_path / "labels.json"
    path.write_text(json.dumps(["a", "b"]))
    assert read_json(path, "Labels file") == ["a", "b"]


@pytest.mark.parametrize(
    ("content", "needle"),
    [
        (None, "Labels file not found"),
        (b"[1, 2", "is not valid JSON"),
        (b"\xff\xfe not utf-8", "could not be read"),
    ],
)
def test_unreadable_files_name_the_file_and_the_reason(tmp_path, content, needle):
    path = tmp_path / "labels.json"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(JSONFileError, match=needle) as info:
        read_json(path, "Labels file")
    assert str(path) in str(info.value)


def test_a_directory_is_not_a_json_file(tmp_path):
    with pytest.raises(JSONFileError, match="could not be read"):
        read_json(tmp_path, "Labels file")


@pytest.mark.parametrize("value", [[1, 2], "text", 3, None])
def test_object_files_refuse_other_json_values(tmp_path, value):
    path = tmp_path / "model.json"
    path.write_text(json.dumps(value))
    with pytest.raises(JSONFileError, match="must hold a JSON object"):
        read_json_object(path, "Metadata sidecar")


def test_object_files_name_every_missing_key(tmp_path):
    path = tmp_path / "model.json"
    path.write_text(json.dumps({"format": "tflite"}))
    with pytest.raises(JSONFileError, match="lacks: labels, sha256"):
        read_json_object(path, "Metadata sidecar", required=("format", "labels", "sha256"))
    assert read_json_object(path, "Metadata sidecar", required=("format",)) == {"format": "tflite"}


@pytest.mark.parametrize(
    ("labels", "needle"),
    [
        (None, "non-empty list"),
        ({"a": 1}, "non-empty list"),
        ([], "non-empty list"),
        (["a", ""], "non-empty strings"),
        (["a", 1], "non-empty strings"),
        (["a", "b", "a"], "not unique"),
    ],
)
def test_bad_label_lists_are_explained(labels, needle):
    assert needle in labels_problem(labels)


def test_good_label_list_has_no_problem():
    assert labels_problem(["dress", "hat", "longsleeve"]) is None
