import json

import pytest

from latentstore.errors import InputError
from latentstore.levels import level_label, level_name, level_range
from latentstore.verse import Centroids, parse_centroids, read_centroids, write_centroids


def test_level_names_follow_verse_numbering():
    assert level_name(1) == "C1" and level_name(8) == "T1" and level_name(19) == "T12"
    assert level_name(20) == "L1" and level_name(25) == "L6" and level_name(28) == "T13"
    assert level_label("l1") == 20
    assert level_range("T11-L2") == [18, 19, 20, 21]
    with pytest.raises(InputError):
        level_range("L2-T11")
    with pytest.raises(InputError):
        level_name(99)


def test_round_trip_and_wrapper(tmp_path):
    c = Centroids(("P", "I", "R"), {20: (63.2, 141.9, 31.8), 21: (53.0, 167.7, 30.8)})
    path = tmp_path / "x_seg-subreg_ctd.json"
    write_centroids(path, c)
    data = json.loads(path.read_text())
    assert data[0] == {"direction": ["P", "I", "R"]}  # direction entry first
    assert read_centroids(path) == c
    wrapped = {"vertebralCentroids": data}
    assert parse_centroids(wrapped) == c


def test_nan_entries_are_missing_not_guessed():
    c = parse_centroids([{"direction": ["L", "A", "S"]}, {"label": 20, "X": 1, "Y": 2, "Z": 3},
                         {"label": 21, "X": float("nan"), "Y": 2, "Z": 3}])
    assert set(c.points) == {20} and c.missing == (21,)


@pytest.mark.parametrize(
    "data",
    [[], [{"label": 20, "X": 1, "Y": 2, "Z": 3}], [{"direction": ["P", "I", "P"]}, {"label": 20, "X": 1, "Y": 2, "Z": 3}],
     [{"direction": ["P", "I", "R"]}, {"label": 20, "X": "a"}], [{"direction": ["P", "I", "R"]}, {"label": 99, "X": 1, "Y": 2, "Z": 3}]],
)
def test_bad_centroid_files_raise_input_error(data):
    with pytest.raises(InputError):
        parse_centroids(data)


def test_unparsable_file(tmp_path):
    p = tmp_path / "bad_ctd.json"
    p.write_text("[{")
    with pytest.raises(InputError, match="not valid JSON"):
        read_centroids(p)


def test_real_verse_sample_parses(real_data):
    c = read_centroids(real_data / "verse-sample" / "sub-verse004_seg-subreg_ctd.json")
    assert c.direction == ("P", "I", "R")
    assert sorted(c.points) == list(range(16, 25))  # T9..L5
    assert c.points[20] == (63.2, 141.9, 31.8)
