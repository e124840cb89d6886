"""The one prompt-file reader shared by generate, eval and clap."""

import pytest

from eval.prompts import read_prompts
from tta.data.prompts import PromptFileError, read_prompt_file
from tta.generate import read_prompts_file


def test_csv_and_jsonl_give_the_same_rows(tmp_path):
    (tmp_path / "p.csv").write_text("id,prompt,category\ndog,a dog barks,animals\nrain,heavy rain,weather\n")
    (tmp_path / "p.jsonl").write_text('{"id": "dog", "prompt": "a dog barks", "category": "animals"}\n\n'
                                      '{"id": "rain", "caption": "heavy rain", "category": "weather"}\n')
    for name in ("p.csv", "p.jsonl"):
        rows = read_prompt_file(tmp_path / name)
        assert [(r.id, r.prompt, r.category) for r in rows] == [("dog", "a dog barks", "animals"),
                                                                 ("rain", "heavy rain", "weather")]


def test_one_file_drives_generate_and_eval(tmp_path):
    path = tmp_path / "prompts.jsonl"
    path.write_text('{"id": "dog", "prompt": "a dog barks", "category": "animals"}\n'
                    '{"id": "empty", "prompt": ""}\n')
    assert read_prompts_file(path) == [("dog", "a dog barks"), ("empty", "")]
    # `tta generate --out-dir` writes <id>.wav; eval matches rows to those file names by id
    by_key = read_prompts(path, ["dog", "empty"])
    assert by_key["dog"].prompt == "a dog barks" and by_key["dog"].category == "animals"


def test_a_byte_order_mark_is_not_part_of_the_first_column(tmp_path):
    # Excel's "CSV UTF-8" starts the file with U+FEFF
    (tmp_path / "p.csv").write_bytes("prompt,id\na dog barks,d1\n".encode("utf-8-sig"))
    assert [(r.id, r.prompt) for r in read_prompt_file(tmp_path / "p.csv")] == [("d1", "a dog barks")]


def test_txt_skips_blank_lines(tmp_path):
    (tmp_path / "p.txt").write_text("a dog barks\n\n  rain on a roof  \n")
    assert [r.prompt for r in read_prompt_file(tmp_path / "p.txt")] == ["a dog barks", "rain on a roof"]


@pytest.mark.parametrize("name, content, fragment", [
    ("p.jsonl", '{"prompt": "ok"}\n{"prompt": \n', "p.jsonl:2: invalid JSON"),
    ("p.jsonl", '["a list"]\n', "expected a JSON object"),
    ("p.jsonl", '{"id": "x"}\n', "p.jsonl:1: expected a string prompt/caption/text field"),
    ("p.csv", "id,label\n1,dog\n", "CSV needs a prompt/caption/text column"),
    ("p.txt", "\n\n", "no prompts"),
    ("p.yaml", "prompt: x\n", "unsupported prompts file type '.yaml'"),
])
def test_bad_prompt_files_name_file_and_line(tmp_path, name, content, fragment):
    (tmp_path / name).write_text(content)
    with pytest.raises(PromptFileError) as e:
        read_prompt_file(tmp_path / name)
    assert fragment in str(e.value)


def test_missing_file(tmp_path):
    with pytest.raises(PromptFileError, match="prompts file not found"):
        read_prompt_file(tmp_path / "nope.txt")
