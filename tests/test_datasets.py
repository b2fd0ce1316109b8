import csv
from pathlib import Path

import nibabel as nib
import nrrd
import numpy as np
import pytest
from openpyxl import Workbook

from seg2refine_core.data.datasets import (
    Case,
    discover_cases,
    holdout_split,
    normalize_case_id,
    read_split,
    split_cases,
)
from seg2refine_core.errors import DatasetError


def _touch(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")
    return path


def _write_nifti(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(np.zeros((4, 4, 3), dtype=np.int16), np.diag([0.4, 0.4, 0.8, 1.0])), path)
    return path


def _write_nrrd(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nrrd.write(str(path), np.zeros((4, 4, 3), dtype=np.int16))
    return path


def _ids(cases: list[Case]) -> list[str]:
    return [case.case_id for case in cases]


def test_imagecas_flat_sorted_numerically_with_real_file(tmp_path):
    _write_nifti(tmp_path / "2.img.nii.gz")
    _write_nifti(tmp_path / "2.label.nii.gz")
    for i in (10, 1):
        _touch(tmp_path / f"{i}.img.nii.gz")
        _touch(tmp_path / f"{i}.label.nii.gz")
    _touch(tmp_path / "11.img.nii.gz")  # unlabelled image is kept
    _touch(tmp_path / "notes.txt")
    cases = discover_cases(tmp_path)
    assert _ids(cases) == ["1", "2", "10", "11"]
    assert cases[1] == Case("2", tmp_path / "2.img.nii.gz", tmp_path / "2.label.nii.gz")
    assert cases[3].label is None
    assert nib.load(cases[1].image).shape == (4, 4, 3)


def test_imagecas_sharded(tmp_path):
    for i in (1, 2, 201):
        shard = "1-200" if i <= 200 else "201-400"
        _touch(tmp_path / shard / f"{i}.img.nii.gz")
        _touch(tmp_path / shard / f"{i}.label.nii.gz")
    _touch(tmp_path / "extra" / "deeper" / "3.img.nii.gz")
    _touch(tmp_path / "extra" / "deeper" / "3.label.nii.gz")
    cases = discover_cases(tmp_path, layout="imagecas")
    assert _ids(cases) == ["1", "2", "3", "201"]
    assert cases[3].image == tmp_path / "201-400" / "201.img.nii.gz"
    assert cases[2].label == tmp_path / "extra" / "deeper" / "3.label.nii.gz"


def test_imagecas_orphan_labels_and_duplicates_are_errors(tmp_path):
    _touch(tmp_path / "1.img.nii.gz")
    _touch(tmp_path / "1.label.nii.gz")
    _touch(tmp_path / "7.label.nii.gz")
    with pytest.raises(DatasetError, match=r"label\(s\) without an image: 7\.label\.nii\.gz"):
        discover_cases(tmp_path)
    (tmp_path / "7.label.nii.gz").unlink()
    _touch(tmp_path / "a" / "1.img.nii.gz")
    with pytest.raises(DatasetError, match="appears twice"):
        discover_cases(tmp_path)


def test_asoca_with_missing_annotations(tmp_path):
    _write_nrrd(tmp_path / "Normal" / "CTCA" / "Normal_1.nrrd")
    _write_nrrd(tmp_path / "Normal" / "Annotations" / "Normal_1.nrrd")
    _touch(tmp_path / "Normal" / "CTCA" / "Normal_10.nrrd")
    _touch(tmp_path / "Normal" / "Annotations" / "Normal_10.nrrd")
    _touch(tmp_path / "Diseased" / "CTCA" / "Diseased_2.nrrd")  # test case: no annotation
    cases = discover_cases(tmp_path)
    assert _ids(cases) == ["Diseased_2", "Normal_1", "Normal_10"]
    assert cases[0].label is None
    assert cases[1].label == tmp_path / "Normal" / "Annotations" / "Normal_1.nrrd"
    data, _ = nrrd.read(str(cases[1].image))
    assert data.shape == (4, 4, 3)


def test_generic_pairs_by_stem(tmp_path):
    _write_nifti(tmp_path / "images" / "caseA.nii.gz")
    _write_nifti(tmp_path / "labels" / "caseA.nii.gz")
    _touch(tmp_path / "images" / "caseB.nrrd")
    _touch(tmp_path / "labels" / "caseB.nrrd")
    _touch(tmp_path / "images" / "caseC.nii")
    _touch(tmp_path / "images" / "readme.json")
    cases = discover_cases(tmp_path)
    assert _ids(cases) == ["caseA", "caseB", "caseC"]
    assert cases[0].label == tmp_path / "labels" / "caseA.nii.gz"
    assert cases[2].label is None
    _touch(tmp_path / "labels" / "caseZ.nii.gz")
    with pytest.raises(DatasetError, match="caseZ"):
        discover_cases(tmp_path, layout="generic")


def test_folder_errors(tmp_path):
    with pytest.raises(DatasetError, match="does not exist"):
        discover_cases(tmp_path / "nope")
    with pytest.raises(DatasetError, match="is empty"):
        discover_cases(tmp_path)
    _touch(tmp_path / "scan.dcm")
    with pytest.raises(DatasetError, match=r"matches no known layout.*img\.nii\.gz.*CTCA.*images/"):
        discover_cases(tmp_path)
    with pytest.raises(DatasetError, match="holds no asoca images"):
        discover_cases(tmp_path, layout="asoca")
    with pytest.raises(DatasetError, match="unknown dataset layout"):
        discover_cases(tmp_path, layout="kaggle")


def test_ambiguous_layout_needs_explicit_choice(tmp_path):
    _touch(tmp_path / "images" / "1.img.nii.gz")
    _touch(tmp_path / "labels" / "1.label.nii.gz")
    with pytest.raises(DatasetError, match=r"several layouts \(imagecas, generic\)"):
        discover_cases(tmp_path)
    assert _ids(discover_cases(tmp_path, layout="imagecas")) == ["1"]


ROWS = [
    ("1.img.nii.gz", "Training", "Testing", "Val", "Training"),
    ("2.img.nii.gz", "Training", "Training", "Testing", "Val"),
    ("10.img.nii.gz", "Val", "Training", "Training", "Testing"),
    ("3.img.nii.gz", "Testing", "Val", "Training", "Training"),
]
HEADER = ("FileName", "Split-1", "Split-2", "Split-3", "Split-4")


def _write_xlsx(path: Path, rows=ROWS, header=HEADER, sheet="v2-latest") -> Path:
    workbook = Workbook()
    workbook.active.title = "v1"
    workbook.active.append(("old",))
    table = workbook.create_sheet(sheet)
    table.append(header)
    for row in rows:
        table.append(row)
    workbook.save(path)
    return path


def test_read_split_xlsx_folds(tmp_path):
    path = _write_xlsx(tmp_path / "imageCAS_data_split.xlsx")
    assert read_split(path) == {"train": ["1", "2"], "val": ["10"], "test": ["3"]}
    assert read_split(path, fold=2) == {"train": ["2", "10"], "val": ["3"], "test": ["1"]}
    assert read_split(path, fold=4) == {"train": ["1", "3"], "val": ["2"], "test": ["10"]}


def test_read_split_csv_with_bare_ids(tmp_path):
    path = tmp_path / "split.csv"
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(HEADER)
        writer.writerows([(name.split(".")[0], *rest) for name, *rest in ROWS])
        writer.writerow(())
    assert read_split(path, fold=3) == {"train": ["3", "10"], "val": ["1"], "test": ["2"]}


def test_read_split_errors_name_the_file(tmp_path):
    path = _write_xlsx(tmp_path / "split.xlsx")
    for fold in (0, 5):
        with pytest.raises(DatasetError, match="split.xlsx: fold must be"):
            read_split(path, fold=fold)
    with pytest.raises(DatasetError, match=r"split.xlsx has no sheet 'v3'.*v2-latest"):
        read_split(path, sheet="v3")
    with pytest.raises(DatasetError, match="does not exist"):
        read_split(tmp_path / "missing.xlsx")
    no_column = _write_xlsx(tmp_path / "cols.xlsx", header=("FileName", "Split-1", "Split-2", "Split-3"))
    with pytest.raises(DatasetError, match="cols.xlsx has no column 'Split-4'"):
        read_split(no_column, fold=4)
    bad_value = _write_xlsx(tmp_path / "bad.xlsx", rows=[*ROWS, ("4.img.nii.gz", "Train?", "", "", "")])
    with pytest.raises(DatasetError, match=r"bad.xlsx: row 6 has unknown Split-1 value 'Train\?'"):
        read_split(bad_value)
    other = tmp_path / "split.txt"
    other.write_text("x")
    with pytest.raises(DatasetError, match="unsupported type"):
        read_split(other)


def test_normalize_case_id():
    assert normalize_case_id("1-200/12.img.nii.gz") == "12"
    assert normalize_case_id("12.label.nii.gz") == "12"
    assert normalize_case_id(12) == "12"
    assert normalize_case_id(12.0) == "12"
    assert normalize_case_id(" Normal_3.nrrd ") == "Normal_3"


def _cases(n: int) -> list[Case]:
    return [Case(str(i), Path(f"{i}.img.nii.gz"), Path(f"{i}.label.nii.gz")) for i in range(1, n + 1)]


def test_split_cases_maps_ids_and_reports_missing():
    cases = _cases(4)
    split = split_cases(cases, {"train": ["1", "2"], "val": ["3"], "test": ["4"]})
    assert _ids(split["train"]) == ["1", "2"] and split["test"][0] is cases[3]
    with pytest.raises(DatasetError, match=r"2 case\(s\) not found in the dataset: 9, 12"):
        split_cases(cases, {"train": ["1", "9"], "val": [], "test": ["12"]})


def test_holdout_split_is_deterministic_and_disjoint():
    cases = _cases(20)
    split = holdout_split(cases, val_fraction=0.1, test_fraction=0.25, seed=3)
    assert [len(split[k]) for k in ("train", "val", "test")] == [13, 2, 5]
    assert sorted(sum(split.values(), []), key=int) == [str(i) for i in range(1, 21)]
    assert holdout_split(list(reversed(cases)), 0.1, 0.25, seed=3) == split
    assert holdout_split(cases, 0.1, 0.25, seed=4) != split
    small = holdout_split(_cases(3), 0.1, 0.1)
    assert [len(small[k]) for k in ("train", "val", "test")] == [1, 1, 1]
    with pytest.raises(DatasetError, match="too few"):
        holdout_split(_cases(2), 0.1, 0.1)
    with pytest.raises(DatasetError, match="val_fraction"):
        holdout_split(cases, 1.0, 0.0)


def test_generic_images_may_be_dicom_series_folders(tmp_path):
    from dicom_support import ct_series
    from seg2refine_core.io.volume import read_mask, read_volume, write_volume

    hu = np.zeros((4, 32, 32), np.int16)
    hu[1:3, 10:20, 10:20] = 400
    ct_series(tmp_path / "images" / "patient7" / "DICOM" / "SE1", hu)  # PACS exports nest folders
    (tmp_path / "images" / "case8.mha").write_bytes(b"")
    (tmp_path / "images" / "notes").mkdir()
    (tmp_path / "images" / "notes" / "readme.txt").write_text("not DICOM")
    (tmp_path / "labels").mkdir()
    ct = read_volume(tmp_path / "images" / "patient7")
    write_volume(tmp_path / "labels" / "patient7.nii.gz", (ct.array > 0).astype(np.uint8), like=ct)
    cases = discover_cases(tmp_path)
    assert [(c.case_id, c.image.name, c.label and c.label.name) for c in cases] == [
        ("case8", "case8.mha", None),
        ("patient7", "patient7", "patient7.nii.gz"),
    ]
    image = read_volume(cases[1].image)
    np.testing.assert_array_equal(read_mask(cases[1].label, like=image), (hu > 0).astype(np.uint8))
