"""The real WhatsUp benchmark as AdaptVis evaluates it: both file formats (WhatsUp JSON with its real image
layouts, AdaptVis prompt JSON lines) on small mock folders, the quirks real files have, the official split /
scoring / pair-set denominators re-implemented here from the official code, every malformed input, and an
end-to-end run with a tiny LLaVA."""

import json
import random

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from spatialkit.analysis import whatsup_eval
from spatialkit.data import whatsup

CONTROLLED_A = [("mug", "plate", "left"), ("mug", "plate", "right"), ("mug", "plate", "on"), ("mug", "plate", "under"),
                ("cup", "table", "left"), ("cup", "table", "right")]  # cup/table: an incomplete set
CAPTION = {"left": "to the left of", "right": "to the right of", "on": "on", "under": "under",
           "in-front": "in front of", "behind": "behind"}
CONTROLLED_B = [("bowl", "cup", "left"), ("bowl", "cup", "right"), ("bowl", "cup", "in-front"),
                ("bowl", "cup", "behind")]


def _image(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((28, 28, 3), 128, np.uint8)).save(path)


def _controlled(a, b, rel, folder):
    others = [r for r in CAPTION if r != rel][:3]
    name = f"{a}_{rel}_of_{b}" if rel in ("left", "right", "in-front") else f"{a}_{rel}_{b}"  # the real names
    return {"image_path": f"data/{folder}/{name}.jpeg",
            "caption_options": [f"A {a} {CAPTION[r]} a {b}" for r in [rel, *others]]}


def make_whatsup(root):
    """A WhatsUp checkout in miniature: data/*.json + images in the real layouts."""
    data = root / "data"
    data.mkdir(parents=True)
    a = [_controlled(*t, "controlled_images") for t in CONTROLLED_A]
    b = [_controlled(*t, "controlled_clevr") for t in CONTROLLED_B]
    for rec in a + b:
        _image(root / rec["image_path"])  # relative to the repository root, not to data/
    (data / "controlled_images_dataset.json").write_text(json.dumps(a))
    (data / "controlled_clevr_dataset.json").write_text(json.dumps(b))
    coco_one = [[397133, "A dog on the left", "A dog on the right"], [7, "A photo of a cat at the top", "A cat at the bottom"]]
    coco_two = [[139, "A cup to the left of a bowl", "A cup to the right of a bowl"]]
    vg_one = [[2345, "A man on the left", "A man on the right"], [12, "A kite at the top", "A kite at the bottom"]]
    vg_two = [[77, "A horse in front of a fence", "A horse behind a fence"],
              [78, "A girl above a pillow", "A girl below a pillow"]]
    for name, rows in (("coco_qa_one_obj.json", coco_one), ("coco_qa_two_obj.json", coco_two)):
        (data / name).write_text(json.dumps(rows))
        for r in rows:
            _image(data / "val2017" / f"{r[0]:012d}.jpg")
    for name, rows in (("vg_qa_one_obj.json", vg_one), ("vg_qa_two_obj.json", vg_two)):
        (data / name).write_text(json.dumps(rows))
        for r in rows:
            _image(data / "vg_images" / f"{r[0]}.jpg")
    return root


def _line(i, q, gold):
    return json.dumps({"id": i, "question": f"<image>\nUSER: {q}\nASSISTANT:", "answer": [gold]})


def make_prompts(root):
    """AdaptVis prompt files for the mock checkout, with the quirks of the real ones."""
    p = root / "prompts"
    p.mkdir(parents=True, exist_ok=True)
    four_a = "Answer with left, right, on or under."
    lines_a = []
    for i, (a, b, rel) in enumerate(CONTROLLED_A):
        verb = "are" if a == "cup" else "is"  # plural, as "Where are the sunglasses ..." in the real file
        lines_a.append(_line(i, f"Where {verb} the {a} in relation to the {b}? {four_a}", rel.capitalize()))
    (p / "Controlled_Images_A_with_answer_four_options.jsonl").write_text("\n".join(lines_a) + "\n")
    six_one = "Answer with left, right, front, behind, top or bottom"
    (p / "VG_QA_one_obj_with_answer_six_options.jsonl").write_text("\n".join([
        _line(0, f"Where is the man in the photo? {six_one}..", "Left"),  # doubled punctuation
        _line(1, f"Where is the kite in the photo? {six_one}.", "Top")]) + "\n")
    (p / "VG_QA_two_obj_with_answer_six_options.jsonl").write_text("\n".join([
        _line(0, "Where is the horse in relation to the fence? Answer with left, right, front, behind, above or "
                 "below.", "Front"),
        # the real file's record 56: gold "Above" with top/bottom listed
        _line(1, "Where is the girl in relation to the pillow? Answer with left, right, front, behind, top, or "
                 "bottom.", "Above")]) + "\n")
    return root


@pytest.fixture
def checkout(tmp_path):
    return make_whatsup(tmp_path / "whatsup_vlms")


def test_whatsup_files_read_with_real_image_layouts(checkout):
    subsets = whatsup.load_real(checkout)
    assert list(subsets) == ["controlled_a", "controlled_b", "coco_one", "coco_two", "vg_one", "vg_two"]
    a = subsets["controlled_a"].items
    assert [(it.subject, it.object, it.gold) for it in a] == CONTROLLED_A
    assert a[0].image_path == str(checkout / "data/controlled_images/mug_left_of_plate.jpeg")
    assert a[0].options == ("left", "right", "on", "under") and a[0].pair_key == "mug|plate"
    assert a[0].prompt == "Where is the mug in relation to the plate? Answer with left, right, on or under."
    assert [it.gold for it in subsets["controlled_b"].items] == ["left", "right", "front", "behind"]
    coco = subsets["coco_one"].items
    assert coco[0].image_path == str(checkout / "data/val2017/000000397133.jpg")
    assert (coco[1].subject, coco[1].gold, coco[1].object) == ("cat", "top", None)
    assert subsets["coco_two"].items[0].options == ("left", "right", "above", "below")
    vg_one, vg_two = subsets["vg_one"].items, subsets["vg_two"].items
    assert vg_one[0].image_path == str(checkout / "data/vg_images/2345.jpg")
    assert vg_one[0].options == ("left", "right", "front", "behind", "top", "bottom")  # the official six, in order
    assert vg_two[0].options == ("left", "right", "front", "behind", "above", "below")
    assert vg_two[0].gold == "front" and not vg_two[0].flags
    assert all(s.questions_from == "captions" for s in subsets.values())
    # the data/ folder itself works too: image paths still resolve against the repository root
    again = whatsup.load_real(checkout / "data", ["controlled_a"])["controlled_a"].items
    assert [it.image_path for it in again] == [it.image_path for it in a]


def test_four_options_keep_and_flag_vg_depth_golds(checkout):
    vg_two = whatsup.load_real(checkout, ["vg_two"], n_options=4)["vg_two"]
    front = vg_two.items[0]
    assert front.gold == "front" and front.options == ("left", "right", "above", "below")
    assert front.flags == ("gold_not_in_options",)
    assert vg_two.quirks()["gold_not_in_options"] == 1 and vg_two.flagged("gold_not_in_options") == [0]


def test_prompt_files_parse_and_join_with_images(checkout):
    make_prompts(checkout)
    layout = whatsup.detect_layout(checkout)
    assert layout.whatsup == checkout / "data" and layout.prompts == checkout / "prompts"
    raw = whatsup.read_prompts(checkout / "prompts" / "Controlled_Images_A_with_answer_four_options.jsonl")
    assert raw[0].image_path is None and raw[0].subset == "controlled_a"
    assert [(it.subject, it.object, it.gold) for it in raw] == CONTROLLED_A
    assert [it.flags for it in raw].count(("plural",)) == 2

    subsets = whatsup.load_real(checkout)
    a = subsets["controlled_a"]
    assert a.questions_from == "prompt file" and len(a.files) == 2
    assert a.items[4].prompt == "Where are the cup in relation to the table? Answer with left, right, on or under."
    assert a.items[4].image_path == str(checkout / "data/controlled_images/cup_left_of_table.jpeg")
    assert a.quirks()["plural"] == 2
    vg_one = subsets["vg_one"]
    assert vg_one.items[0].options == ("left", "right", "front", "behind", "top", "bottom")
    assert vg_one.items[0].prompt.endswith("top or bottom..") and "doubled_punctuation" in vg_one.items[0].flags
    assert vg_one.items[1].gold == "top" and vg_one.items[1].image_path.endswith("vg_images/12.jpg")
    vg_two = subsets["vg_two"]
    assert vg_two.items[1].gold == "above" and vg_two.items[1].options[-2:] == ("top", "bottom")
    assert set(vg_two.items[1].flags) == {"gold_not_in_options", "oxford_comma"}
    table = whatsup.summary_table(subsets).set_index("subset")
    assert table.loc["vg_two", "gold_not_in_options"] == 1 and table.loc["vg_two", "gold not in options (records)"] == [1]
    assert table.loc["controlled_a", "plural"] == 2 and table.loc["coco_one", "questions from"] == "captions"


def test_official_split_is_seed_one_random_sample():
    state = random.getstate()
    try:
        for n in (412, 408, 2247, 440, 1160, 291, 7):
            random.seed(1)  # main_aro.py: seed_all(1), then random.sample(range(N), int(0.2 * N)), sorted
            official = sorted(random.sample(range(n), int(0.2 * n)))
            tune, report = whatsup.split_indices(n)
            assert tune.tolist() == official
            assert report.tolist() == sorted(set(range(n)) - set(official))
    finally:
        random.setstate(state)
    assert len(whatsup.split_indices(408)[0]) == 81  # int(81.6), not round()
    assert whatsup.split_seeds(3) == [1, 2, 3]
    with pytest.raises(ValueError, match="cannot split 3 items"):
        whatsup.split_indices(3)


@pytest.mark.parametrize("output, gold, official, whole_word", [
    ("Underneath", "under", True, False),
    ("leftmost", "left", True, False),
    ("In front of, on the left", "on", False, True),
    ("On", "on", True, True),
    ("The mug is on the plate.", "On", True, True),
    ("right", "left", False, False),
])
def test_official_scoring_rule(output, gold, official, whole_word):
    assert whatsup.is_correct(output, gold) is official
    assert whatsup.is_correct(output, gold, "whole_word") is whole_word
    with pytest.raises(ValueError, match="'rule'"):
        whatsup.is_correct(output, gold, "fuzzy")


def _official_pair_set(rows):
    """Controlled_Images.evaluate_scores: eval_dict keyed by the file name's first and last word."""
    eval_dict = {}
    for name, correct in rows:
        parts = name[:-5].split("_")
        eval_dict.setdefault((parts[0], parts[-1]), {"left": 0, "right": 0, "on": 0, "under": 0})[parts[1]] = correct
    pair = sum((d["left"] and d["right"]) + (d["on"] and d["under"]) for d in eval_dict.values())
    sets = sum(sum(d.values()) == 4 for d in eval_dict.values())
    return pair * 100 / (len(rows) / 2), sets * 100 / (len(rows) / 4)


def test_pair_and_set_accuracy_count_incomplete_sets_as_failures(checkout):
    items = whatsup.load_real(checkout, ["controlled_a"])["controlled_a"].items
    correct = [True, True, True, True, True, True]
    df = pd.DataFrame({"subset": [it.subset for it in items], "set": ["|".join(it.set_key) for it in items],
                       "gold": [it.gold for it in items], "subject": [it.subject for it in items],
                       "object": [it.object for it in items], "correct": correct})
    acc = whatsup.accuracies(df)
    pair, sets = _official_pair_set([(it.image_path.rsplit("/", 1)[1], c) for it, c in zip(items, correct)])
    assert acc["pair"] * 100 == pytest.approx(pair) == pytest.approx(100.0)  # 3 pairs right of 6/2
    assert acc["set"] * 100 == pytest.approx(sets) == pytest.approx(100 / 1.5)  # 1 set right of 6/4
    complete = whatsup.accuracies(df, denominators="complete")
    assert complete["pair"] == 1.0 and complete["set"] == 1.0
    df.loc[2, "correct"] = False  # mug "on" wrong
    pair, sets = _official_pair_set([(it.image_path.rsplit("/", 1)[1], c) for it, c in zip(items, df.correct)])
    acc = whatsup.accuracies(df)
    assert (acc["pair"] * 100, acc["set"] * 100) == (pytest.approx(pair), pytest.approx(sets))
    coco = pd.DataFrame({"subset": ["coco_one"], "subject": ["dog"], "object": [None], "gold": ["left"],
                         "correct": [True]})
    assert np.isnan(whatsup.accuracies(coco)["pair"])  # COCO/VG have no sets


def _write(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


@pytest.mark.parametrize("records, match", [
    ([{"image_path": "data/x/a_left_of_b.jpeg", "caption_options": []}],
     r"record 0: field 'caption_options' is empty"),
    ([{"image_path": "data/x/a_left_of_b.jpeg", "caption_options": "A mug to the left of a plate"}],
     r"record 0: field 'caption_options' must be a list"),
    ([{"image_path": "x.jpeg", "caption_options": ["A mug on a plate", "A mug under a plate"]}, 3],
     r"record 1: expected an object"),
    ([None], r"record 0: expected an object"),
    ([{"image_path": "x.jpeg", "caption_options": ["A mug on a plate"], "answer": 2}],
     r"record 0: field 'answer' = 2 is not an index"),
    ([{"caption_options": ["A mug on a plate"]}], r"record 0: lacks field 'image_path'"),
    ([{"image_path": "x.jpeg", "caption_options": ["a plate", "b"]}], r"record 0: field 'caption_options'\[0\]"),
    ({"image_path": "x.jpeg"}, r"expected a JSON list"),
])
def test_bad_whatsup_records_name_file_record_and_field(tmp_path, records, match):
    path = _write(tmp_path / "data" / "controlled_images_dataset.json", json.dumps(records))
    with pytest.raises(ValueError, match=match) as err:
        whatsup.load_subset(tmp_path, "controlled_a")
    assert str(path) in str(err.value) and "\n" not in str(err.value)


def test_bad_coco_rows_and_json_lines_name_the_file(tmp_path):
    path = _write(tmp_path / "coco_qa_two_obj.json", json.dumps([[139, "A cup to the left of a bowl"]]))
    with pytest.raises(ValueError, match=r"coco_qa_two_obj.json, record 0: a COCO-QA / VG-QA row needs"):
        whatsup.load_subset(tmp_path, "coco_two")
    _write(path, json.dumps([["abc", "A cup to the left of a bowl", "A cup to the right of a bowl"]]))
    with pytest.raises(ValueError, match=r"record 0: field 0 \(image id\)"):
        whatsup.load_subset(tmp_path, "coco_two")
    lines = _write(tmp_path / "export.json", _line(0, "Where is the mug in the photo? Answer with left or right.", "Left")
                   + "\n" + _line(1, "Where is the cup in the photo? Answer with left or right.", "Left") + "\n")
    with pytest.raises(ValueError, match=r"export.json: line 2 column 1: not valid JSON \(Extra data\).*JSON-lines"):
        whatsup.from_export(lines)


def test_missing_image_is_named_when_the_subset_loads(checkout):
    (checkout / "data/controlled_images/mug_on_plate.jpeg").unlink()
    with pytest.raises(ValueError, match=r"controlled_images_dataset.json, record 2: field 'image_path': image "
                                         r".*mug_on_plate.jpeg not found"):
        whatsup.load_real(checkout, ["controlled_a"])
    (checkout / "data/val2017/000000397133.jpg").unlink()
    with pytest.raises(ValueError, match=r"coco_qa_one_obj.json, record 0: field 'image id \(field 0\)'.*"
                                         r"000000397133.jpg not found"):
        whatsup.load_real(checkout, ["coco_one"])


@pytest.mark.parametrize("line, match", [
    ("{not json", r":2: column 2: not a JSON object"),
    ("7", r":2: expected an object"),
    ("null", r":2: expected an object"),
    ('{"id": 1, "question": "<image>\\nUSER: Where is the cup in the photo? Answer with left or right.\\nASSISTANT:",'
     ' "answer": "Left"}', r":2: field 'answer' must be a non-empty list"),
    ('{"id": 1, "question": "<image>\\nUSER: Where is the cup in the photo? Answer with left or right.\\nASSISTANT:",'
     ' "answer": []}', r":2: field 'answer' must be a non-empty list"),
    ('{"id": 1, "question": "USER: Where is the cup?", "answer": ["Left"]}', r":2: field 'question' is not '<image>"),
    ('{"id": 1, "question": "<image>\\nUSER: What colour is the cup?\\nASSISTANT:", "answer": ["Red"]}',
     r":2: field 'question' is not 'Where is/are"),
    ('{"id": 1, "answer": ["Left"]}', r":2: field 'question' must be a string"),
])
def test_bad_prompt_lines_name_file_line_and_field(tmp_path, line, match):
    good = _line(0, "Where is the dog in the photo? Answer with left, right, top or bottom.", "Left")
    path = _write(tmp_path / "COCO_QA_one_obj_with_answer_four_options.jsonl", good + "\n" + line + "\n")
    with pytest.raises(ValueError, match=match) as err:
        whatsup.read_prompts(path)
    assert str(path) in str(err.value)


def test_folders_that_cannot_run_say_why(tmp_path, checkout):
    with pytest.raises(ValueError, match="no WhatsUp layout found"):
        whatsup.detect_layout(tmp_path / "whatsup_vlms" / "data" / "controlled_images")
    with pytest.raises(ValueError, match="not a folder"):
        whatsup.detect_layout(tmp_path / "nope")
    only = make_prompts(tmp_path / "adaptvis")
    assert whatsup.detect_layout(only).prompt_only == ("controlled_a", "vg_one", "vg_two")
    with pytest.raises(ValueError, match="carry no images"):
        whatsup.load_real(only)
    make_prompts(checkout)
    (checkout / "prompts" / "Controlled_Images_A_with_answer_four_options.jsonl").write_text(
        _line(0, "Where is the mug in relation to the plate? Answer with left, right, on or under.", "Left") + "\n")
    with pytest.raises(ValueError, match=r"1 questions but .*controlled_images_dataset.json has 6 records"):
        whatsup.load_real(checkout, ["controlled_a"])
    with pytest.raises(ValueError, match="'data' = ''"):
        whatsup_eval.load_benchmark("")


def test_paper_table_has_the_llava15_rows():
    t = whatsup.paper_table().set_index("paper name")
    assert t.loc["Cont_A", ["baseline", "ScalingVis", "AdaptVis"]].tolist() == [60.3, 64.5, 84.9]
    assert t.loc["VG_two", ["baseline", "ScalingVis", "AdaptVis"]].tolist() == [40.8, 48.1, 48.1]
    assert "ICML 2025" in whatsup.PAPER_CITATION


def test_end_to_end_official_protocol_with_a_tiny_llava(tmp_path, checkout):
    from spatialkit.models import hf
    from spatialkit.testing import hf_tiny

    make_prompts(checkout)
    hf_tiny.save_tiny("llava", tmp_path / "llava", seed=0)
    vlm = hf.load(tmp_path / "llava")
    subsets = whatsup_eval.load_benchmark(str(checkout), ["controlled_a", "vg_two"])
    items = subsets["controlled_a"].items
    with whatsup_eval.use_prompt_format(vlm):  # AdaptVis' LLaVA-1.5 string, verbatim
        assert vlm.prompt_texts([items[0].prompt]) == [f"<image>\nUSER: {items[0].prompt}\nASSISTANT:"]
    assert vlm.prompt_texts([items[0].prompt])[0].startswith("USER: <image>\n")  # restored: llava-hf's template
    table = whatsup_eval.scaling_table(vlm, items, [0.5], batch_size=4, max_new_tokens=3)
    assert len(table) == 2 * len(items) and set(table.alpha) == {0.5, 1.0}
    assert table["correct"].tolist() == [whatsup.is_correct(o, g) for o, g in zip(table.output, table.gold)]
    assert table.loc[table.alpha == 1.0, "set"].tolist()[:2] == ["controlled_a|mug|plate"] * 2
    out = whatsup.tune_and_report(table, alphas=[0.5], alpha1s=[0.5], alpha2s=[1.0], betas=[0.5])
    tune, report = whatsup.split_indices(len(items))
    assert out["tune"].tolist() == tune.tolist() and out["report"].tolist() == report.tolist()
    base = table[table.alpha == 1.0]
    acc = whatsup.accuracies(base)
    assert set(acc) == {"individual", "pair", "set"} and 0 <= acc["pair"] <= 1
    ours = pd.DataFrame({"subset": ["controlled_a"], "method": ["baseline"], "accuracy": [100 * acc["individual"]]})
    cmp = whatsup_eval.compare_with_paper(ours)
    assert cmp.iloc[0]["paper (LLaVA-1.5)"] == 60.3 and cmp.iloc[0]["subset"] == "Cont_A"
    vg = whatsup_eval.evaluate(vlm, subsets["vg_two"].items, max_new_tokens=2)
    assert vg["gold"].tolist() == ["front", "above"] and len(vg) == 2


@pytest.mark.slow
def test_notebook_04_runs_a_real_layout_folder_with_a_local_model_from_the_cli(tmp_path, checkout):
    """`spatialkit run --only 04_adaptvis -p data <folder> -p model <local model>`, end to end."""
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    from spatialkit.testing import hf_tiny

    import shutil

    repo = Path(__file__).resolve().parents[1]
    root = tmp_path / "root"  # a private book root: the executed copy must not land in the real book/
    (root / "notebooks").mkdir(parents=True)
    shutil.copy(repo / "notebooks" / "04_adaptvis.ipynb", root / "notebooks")
    for small in ("controlled_clevr_dataset.json", "coco_qa_one_obj.json", "coco_qa_two_obj.json",
                  "vg_qa_one_obj.json", "vg_qa_two_obj.json"):
        (checkout / "data" / small).unlink()  # 2-4 items each: too few for a 20/80 split; Controlled A has 6
    hf_tiny.save_tiny("llava", tmp_path / "llava", seed=0)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "SPATIALKIT_ROOT": str(root)}
    out = root / "book" / "executed"
    cmd = [sys.executable, "-m", "spatialkit", "run", "--profile", "smoke", "--only", "04_adaptvis", "--force",
           "-p", "data", str(checkout), "-p", "model", str(tmp_path / "llava"), "-p", "max_new_tokens", "2"]
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    nb = json.loads((out / "04_adaptvis.ipynb").read_text())
    text = "".join("".join(o.get("text", "")) + "".join(o.get("data", {}).get("text/plain", ""))
                   for c in nb["cells"] for o in c.get("outputs", []))
    assert "Cont_A" in text and "60.3" in text  # the real subset ran and sits beside the paper's row
