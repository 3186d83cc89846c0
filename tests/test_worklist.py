"""Worklists of the review: manifests (CSV, JSON) and folders of images; bad rows named and skipped."""

from __future__ import annotations

import json

import pytest
from PIL import Image

from lvlm_studio.core.errors import InputError
from lvlm_studio.core.formats.worklist import read_worklist


@pytest.fixture
def images(tmp_path):
    for name in ("a.png", "b.png", "b.jpg"):
        Image.new("RGB", (8, 8), "white").save(tmp_path / name)
    return tmp_path


def test_a_json_manifest_with_several_questions_per_case(images):
    manifest = images / "cases.json"
    manifest.write_text(json.dumps({"cases": [
        {"case": "c-1", "image": "a.png", "questions": ["What is shown?", "Which side?"], "reference": ["x", "left"]},
        {"case": 7, "image": "b.png", "question": "Is it normal?"},
        {"case": "c-3", "image": "b.png", "question": ["one", "two"], "reference": ["only one"]},
        "not an object",
    ]}))
    worklist = read_worklist(manifest)
    assert [(i.id, i.case, i.question, i.reference) for i in worklist.items] == [
        ("c-1#1", "c-1", "What is shown?", "x"), ("c-1#2", "c-1", "Which side?", "left"),
        ("7", "7", "Is it normal?", None)]
    assert worklist.items[0].image == images / "a.png"
    assert worklist.skipped == ["case 3: it has 2 questions and 1 reference answers.",
                                "case 4: it is not an object with case, image and question."]
    error = worklist.skipped_error()
    assert error.message.startswith("2 rows of cases.json were skipped; the other 3 questions loaded")


def test_a_csv_manifest_skips_bad_rows_and_keeps_the_rest(images):
    manifest = images / "cases.csv"
    manifest.write_text("Case,Image,Question,Reference\n"
                        "c-1,a.png,What is shown?,\n"
                        "\n"
                        "c-1,a.png,Which side?,left\n"
                        "c-1,b.png,Another image?,\n"
                        "c-2,missing.png,What?,\n"
                        ",a.png,No case?,\n"
                        "c-3,a.png,What is shown?,\n"
                        "c-3,a.png,What is shown?,\n"
                        "c-4,a.png,too,many,cells\n", encoding="utf-8")
    worklist = read_worklist(manifest)
    assert [i.id for i in worklist.items] == ["c-1#1", "c-1#2", "c-3"]
    assert [line.split(":")[0] for line in worklist.skipped] == ["row 5", "row 6", "row 7", "row 9", "row 10"]
    assert "given before (row 2) with another image" in worklist.skipped[0]
    assert read_worklist(images / "cases.csv").items[1].reference == "left"


def test_a_folder_of_images_is_a_worklist_with_one_question(images):
    worklist = read_worklist(images, "What is shown?")
    assert [i.id for i in worklist.items] == ["a", "b.jpg", "b.png"]  # b.* share a stem: the name is the id
    assert {i.question for i in worklist.items} == {"What is shown?"}
    with pytest.raises(InputError, match="needs the question"):
        read_worklist(images)


@pytest.mark.parametrize(("name", "text", "message"), [
    ("cases.csv", "case,image\nc,a.png\n", "no 'question' column"),
    ("cases.csv", "", "is empty"),
    ("cases.json", "{not json", "not valid JSON"),
    ("cases.json", '{"rows": []}', "no list of cases"),
    ("cases.json", '[{"case": "c", "image": "nowhere.png", "question": "q"}]', "has no case that can be reviewed"),
    ("cases.txt", "case,image,question\n", "not a worklist"),
])
def test_a_manifest_that_cannot_be_used_is_one_clear_error(images, name, text, message):
    (images / name).write_text(text)
    with pytest.raises(InputError, match=message) as caught:
        read_worklist(images / name)
    assert caught.value.hint
