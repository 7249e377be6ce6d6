"""Description -> category mapping: exact names, plurals, the synonym table, what stays unmatched."""
import pytest

from swift_coord_plugin.data.descriptions import normalize_desc
from swift_coord_plugin.eval.categories import SYNONYMS, CategoryMapper, plural

COCO_NAMES = [
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat", "traffic light",
    "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog", "horse", "sheep", "cow",
    "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella", "handbag", "tie", "suitcase", "frisbee",
    "skis", "snowboard", "sports ball", "kite", "baseball bat", "baseball glove", "skateboard", "surfboard",
    "tennis racket", "bottle", "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple",
    "sandwich", "orange", "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch",
    "potted plant", "bed", "dining table", "toilet", "tv", "laptop", "mouse", "remote", "keyboard",
    "cell phone", "microwave", "oven", "toaster", "sink", "refrigerator", "book", "clock", "vase", "scissors",
    "teddy bear", "hair drier", "toothbrush"]
COCO_IDS = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 27, 28, 31,
            32, 33, 34, 35, 36, 37, 38, 39, 40, 41, 42, 43, 44, 46, 47, 48, 49, 50, 51, 52, 53, 54, 55, 56, 57,
            58, 59, 60, 61, 62, 63, 64, 65, 67, 70, 72, 73, 74, 75, 76, 77, 78, 79, 80, 81, 82, 84, 85, 86, 87,
            88, 89, 90]
COCO = [{"id": i, "name": n} for i, n in zip(COCO_IDS, COCO_NAMES)]


@pytest.fixture(scope="module")
def mapper():
    return CategoryMapper(COCO)


def test_every_category_name_maps_to_itself(mapper):
    for c in COCO:
        assert mapper.lookup(c["name"]) == (c["id"], False)
        assert mapper.category_id(c["name"].upper()) == c["id"]


@pytest.mark.parametrize("desc,name", [
    ("people", "person"), ("Persons", "person"), ("women", "person"), ("tv", "tv"), ("Television", "tv"),
    ("TV monitor", "tv"), ("motorbike", "motorcycle"), ("motorbikes", "motorcycle"), ("cars", "car"),
    ("buses", "bus"), ("benches", "bench"), ("wine glasses", "wine glass"), ("knives", "knife"),
    ("mice", "mouse"), ("sofa", "couch"), ("sofas", "couch"), ("dining-table", "dining table"),
    ("hot_dog", "hot dog"), ("doughnuts", "donut"), ("fridge", "refrigerator"), ("cellphone", "cell phone"),
    ("aeroplane", "airplane"), ("  Dog. ", "dog"), ("hair dryer", "hair drier"), ("ski", "skis"),
    ("teddy bears", "teddy bear"), ("traffic lights", "traffic light"),
])
def test_plurals_and_synonyms(mapper, desc, name):
    cid, _ = mapper.lookup(desc)
    assert mapper.names[cid] == name


@pytest.mark.parametrize("desc", ["", "   ", "a dog", "dogcat", "unicorn", "person on a bike", "<|coord_1|>"])
def test_unmatched(mapper, desc):
    assert mapper.lookup(desc) is None


def test_normalize_and_plural_rules():
    assert normalize_desc("  Fire_Hydrant!") == "fire hydrant"
    assert normalize_desc("tennis -- racket") == "tennis racket"
    assert plural("bus") == "buses" and plural("bench") == "benches" and plural("dog") == "dogs"
    assert plural("traffic light") == "traffic lights" and plural("puppy") == "puppies" and plural("toy") == "toys"


def test_no_alias_shadows_an_exact_name(mapper):
    exact = {normalize_desc(n) for n in COCO_NAMES}
    assert not exact & set(mapper.aliases)
    for alias, name in mapper.alias_table():
        assert name in COCO_NAMES


def test_synonym_targets_are_coco_names():
    assert set(SYNONYMS) <= set(COCO_NAMES)


def test_synonyms_need_their_target_in_the_gt():
    m = CategoryMapper([{"id": 7, "name": "Dog"}, {"id": 9, "name": "table"}])
    assert m.category_id("dogs") == 7
    assert m.category_id("people") is None  # no person category in this GT
    assert m.category_id("table") == 9  # exact name of this GT wins over the dining-table synonym
    assert m.category_id("dining table") is None


def test_the_documented_synonym_table_is_the_one_in_the_code():
    from helpers import REPO

    doc = (REPO / "docs" / "evaluation.md").read_text()
    section = doc.split("The synonym table", 1)[1].split("## 5.", 1)[0]
    rows = [line.strip().strip("|").split("|") for line in section.splitlines() if line.startswith("| ")]
    table = {name.strip(): tuple(a.strip() for a in also.split(",")) for name, also in rows[1:]}
    assert rows[0][0].strip() == "category"
    assert table == dict(SYNONYMS)
