"""tasks.labels: header values and free text -> vocabularies; table driven, >100 realistic strings."""

from __future__ import annotations

import pytest

from radlint.tasks import labels

BODY_PART_EXAMINED = [
    ("CHEST", "chest"), ("chest", "chest"), ("THORAX", "chest"), ("RIB", "chest"), ("STERNUM", "chest"),
    ("CLAVICLE", "chest"), ("SCAPULA", "chest|upper_limb"), ("SKULL", "head"), ("HEAD", "head"),
    ("FACE", "head"), ("JAW", "head"), ("SINUS", "head"), ("NECK", "neck"), ("CSPINE", "neck"),
    ("TSPINE", "spine"), ("LSPINE", "spine"), ("SSPINE", "spine|pelvis"), ("COCCYX", "spine|pelvis"),
    ("SPINE", "spine"), ("ABDOMEN", "abdomen"), ("PELVIS", "pelvis"), ("HIP", "pelvis"),
    ("SACRUM", "pelvis|spine"), ("SHOULDER", "upper_limb"), ("ARM", "upper_limb"), ("HUMERUS", "upper_limb"),
    ("ELBOW", "upper_limb"), ("FOREARM", "upper_limb"), ("WRIST", "upper_limb"), ("HAND", "upper_limb"),
    ("FINGER", "upper_limb"), ("LEG", "lower_limb"), ("FEMUR", "lower_limb"), ("KNEE", "lower_limb"),
    ("TIBIA", "lower_limb"), ("FIBULA", "lower_limb"), ("ANKLE", "lower_limb"), ("FOOT", "lower_limb"),
    ("HEEL", "lower_limb"), ("TOE", "lower_limb"), ("EXTREMITY", "upper_limb|lower_limb"),
    ("CHESTABDOMEN", "chest|abdomen"), ("ABDOMENPELVIS", "abdomen|pelvis"),
    ("WHOLEBODY", "head|neck|chest|abdomen|pelvis|spine|upper_limb|lower_limb"),
    ("L-SPINE", "spine"), ("C SPINE", "neck"), ("  knee ", "lower_limb"), ("ＣＨＥＳＴ", "chest"),
    ("", None), (None, None), ("UNKNOWN", None), ("PHANTOM", None), ("BREASTX", None),
]

FREE_TEXT = [
    ("CHEST PA", "chest", "PA"), ("CHEST AP PORTABLE", "chest", "AP"), ("XR CHEST 2V", "chest", None),
    ("CXR PA/LAT", "chest", "PA|LATERAL"), ("Chest Lateral", "chest", "LATERAL"), ("THORAX AP SUPINE", "chest", "AP"),
    ("XR HAND 2V", "upper_limb", None), ("HAND PA", "upper_limb", "PA"), ("WRIST LAT", "upper_limb", "LATERAL"),
    ("L-SPINE LAT", "spine", "LATERAL"), ("LUMBAR SPINE AP", "spine", "AP"), ("T-SPINE 2V", "spine", None),
    ("Thoracic spine AP", "spine", "AP"), ("C-SPINE 3V", "neck", None), ("CERVICAL SPINE LAT", "neck", "LATERAL"),
    ("SOFT TISSUE NECK", "neck", None), ("SKULL 2V", "head", None), ("SINUSES", "head", None),
    ("FACIAL BONES", "head", None), ("MANDIBLE", "head", None), ("ABDOMEN SUPINE", "abdomen", "AP"),
    ("KUB", "abdomen", None), ("ABD 2V", "abdomen", None), ("PELVIS AP", "pelvis", "AP"),
    ("HIP RIGHT 2V", "pelvis", None), ("BILATERAL HIPS", "pelvis", None), ("KNEE 3V", "lower_limb", None),
    ("KNEE AP STANDING", "lower_limb", "AP"), ("ANKLE LT 3V", "lower_limb", None), ("FOOT 2V", "lower_limb", None),
    ("TOES", "lower_limb", None), ("FEMUR LAT", "lower_limb", "LATERAL"), ("TIB/FIB", "lower_limb", None),
    ("SHOULDER GRASHEY", "upper_limb", None), ("ELBOW 2V", "upper_limb", None), ("FOREARM AP", "upper_limb", "AP"),
    ("FINGER 3V", "upper_limb", None), ("RIBS LEFT", "chest", None), ("STERNUM LAT", "chest", "LATERAL"),
    ("CLAVICLE", "chest", None), ("SCOLIOSIS SERIES", "spine", None), ("SACRUM/COCCYX", "pelvis|spine", None),
    ("胸部正面", "chest", "PA|AP"), ("胸部側面", "chest", "LATERAL"), ("胸部臥位", "chest", "AP"),
    ("腹部臥位", "abdomen", "AP"), ("腹部立位", "abdomen", None), ("膝関節側面", "lower_limb", "LATERAL"),
    ("膝関節正面", "lower_limb", "PA|AP"), ("頸椎側面", "neck", "LATERAL"), ("頚椎正面", "neck", "PA|AP"),
    ("胸椎正面", "spine", "PA|AP"), ("腰椎側面", "spine", "LATERAL"), ("骨盤正面", "pelvis", "PA|AP"),
    ("股関節", "pelvis", None), ("頭部正面", "head", "PA|AP"), ("副鼻腔", "head", None), ("手関節側面", "upper_limb", "LATERAL"),
    ("肘関節", "upper_limb", None), ("肩関節正面", "upper_limb", "PA|AP"), ("足関節正面", "lower_limb", "PA|AP"),
    ("足部", "lower_limb", None), ("鎖骨", "chest", None), ("肋骨", "chest", None), ("ＣＨＥＳＴ　ＰＡ", "chest", "PA"),
    ("", None, None), ("SCOUT", None, None), ("DXA", None, None), ("FLUORO SPOT", None, None), ("TEST PATTERN", None, None),
]

VIEW_POSITION = [
    ("PA", "PA"), ("AP", "AP"), ("LL", "LATERAL"), ("RL", "LATERAL"), ("LATERAL", "LATERAL"), ("LAT", "LATERAL"),
    ("pa", "PA"), (" AP ", "AP"), ("LLD", None), ("RLD", None), ("RAO", None), ("LPO", None), ("", None), (None, None),
]

PATIENT_ORIENTATION = [
    ("L\\F", "upright"), ("R\\F", "upright"), ("A\\F", "upright"), ("P\\FL", "upright"), ("L\\H", "rot180"),
    ("F\\L", "rot90ccw"), ("H\\R", "rot90cw"), ("F\\R", "rot90ccw"), ("L\\P", None), ("", None), (None, None), ("X", None),
]


@pytest.mark.parametrize("value,expected", BODY_PART_EXAMINED)
def test_body_part_examined(value, expected):
    assert labels.body_part_from_examined(value) == expected


@pytest.mark.parametrize("text,body,projection", FREE_TEXT)
def test_free_text(text, body, projection):
    assert labels.body_part_from_text(text) == body
    assert labels.projection_from_text(text) == projection


@pytest.mark.parametrize("value,expected", VIEW_POSITION)
def test_view_position(value, expected):
    assert labels.projection_from_view_position(value) == expected


@pytest.mark.parametrize("value,expected", PATIENT_ORIENTATION)
def test_patient_orientation(value, expected):
    assert labels.orientation_from_patient_orientation(value) == expected


def test_table_has_over_100_strings():
    assert len(BODY_PART_EXAMINED) + len(FREE_TEXT) + len(VIEW_POSITION) + len(PATIENT_ORIENTATION) > 100


def test_header_labels_prefers_coded_elements_then_text():
    row = {"body_part_examined": None, "view_position": "", "series_description": "XR KNEE LAT",
           "protocol_name": "CHEST", "study_description": None, "patient_orientation": "A\\F"}
    got = labels.header_labels(row)
    assert got["label_body_part"] == "lower_limb" and got["label_body_part_source"] == "series_description"
    assert got["label_projection"] == "LATERAL" and got["label_projection_source"] == "series_description"
    assert got["label_orientation"] == "upright"
    coded = labels.header_labels({**row, "body_part_examined": "CHEST", "view_position": "AP"})
    assert coded["label_body_part"] == "chest" and coded["label_body_part_source"] == "BodyPartExamined"
    assert coded["label_projection"] == "AP" and coded["label_projection_source"] == "ViewPosition"


def test_read_label_file_csv_and_rejects_unknown(tmp_path):
    good = tmp_path / "labels.csv"
    good.write_text("SOPInstanceUID,body_part,projection\n1.2.3,CHEST,pa\n1.2.4,knee,\n")
    table = labels.read_label_file(good)
    assert table.column("sop_instance_uid").to_pylist() == ["1.2.3", "1.2.4"]
    assert table.column("body_part").to_pylist() == ["chest", "lower_limb"]
    assert table.column("projection").to_pylist() == ["PA", None]
    bad = tmp_path / "bad.csv"
    bad.write_text("uri,body_part\nfile:///x,banana\n")
    with pytest.raises(labels.LabelFileError, match="banana"):
        labels.read_label_file(bad)
    nokey = tmp_path / "nokey.csv"
    nokey.write_text("id,body_part\n1,chest\n")
    with pytest.raises(labels.LabelFileError, match="sop_instance_uid or uri"):
        labels.read_label_file(nokey)
