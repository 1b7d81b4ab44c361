import pytest

from ichbench.datasets.labels import LabelError, read_ctfsh, read_reads_majority, scan_labels


def test_ctfsh_counts(shared_data):
    df = read_ctfsh(shared_data / "ctfsh" / "cq500_labels.csv")
    assert len(df) == 364
    assert (df["label"] == 0).sum() == 117 and (df["label"] == 1).sum() == 247
    assert df.loc[df["scan_id"] == "CQ500-CT-0", "label"].item() == 1


def test_reads_majority_counts(shared_data):
    df = read_reads_majority(shared_data / "cq500" / "reads.csv")
    assert len(df) == 491
    assert (df["ich_votes"] >= 2).sum() == 205
    assert (df["label"] == 1).sum() == 205
    # CQ500-CT-0: one reader only marks ICH -> not ICH by majority, and not normal either
    row = df[df["scan_id"] == "CQ500-CT-0"].iloc[0]
    assert row["ich_votes"] == 1 and row["label"] != row["label"]  # NaN


def test_ctfsh_bad_rows_are_named(tmp_path):
    p = tmp_path / "labels.csv"
    p.write_text("name;is_pathl;diagnosis;TEST;notes\nCT_1;1;IPH;0;\nfoo;0;HEALTHY;0;\n")
    with pytest.raises(LabelError, match=r"labels.csv: row 3: scan name 'foo'"):
        read_ctfsh(p)
    p.write_text("name,is_pathl\nCT_1,1\n")
    with pytest.raises(LabelError, match="missing column"):
        read_ctfsh(p)


def test_scan_id_format(tmp_path):
    p = tmp_path / "l.csv"
    p.write_text("name;is_pathl;diagnosis;TEST;notes\nCT_7;0;HEALTHY;0;\n")
    assert scan_labels("ctfsh", ctfsh=str(p), scan_id_format="SYN-CT-{n}")["scan_id"].tolist() == ["SYN-CT-7"]


def test_ctfsh_name_forms(tmp_path):
    p = tmp_path / "l.csv"
    p.write_text("name;is_pathl;diagnosis;TEST;notes\nCT_7;0;HEALTHY;0;\nCQ500-CT-8;1;SDH;0;\nct-9;1;IPH;0;\n")
    assert read_ctfsh(p)["scan_id"].tolist() == ["CQ500-CT-7", "CQ500-CT-8", "CQ500-CT-9"]


def test_scan_table_and_labels_from_masks(tmp_path):
    import pandas as pd

    from ichbench.datasets.labels import labels_from_slices, read_scan_table

    p = tmp_path / "t.csv"
    p.write_text("scan_id,label\na,0\nb,1\n")
    assert read_scan_table(p).to_dict("list") == {"scan_id": ["a", "b"], "label": [0, 1]}
    p.write_text("scan_id;label\na;0\nb;2\n")
    with pytest.raises(LabelError, match="row 3: label '2'"):
        read_scan_table(p)
    p.write_text("id,label\na,0\n")
    with pytest.raises(LabelError, match="scan_id and label"):
        read_scan_table(p)
    slices = pd.DataFrame({"patient_id": ["a", "a", "b", "b", "c"], "slice_truth": [0, 0, 0, 1, -1]})
    assert labels_from_slices(slices).to_dict("list") == {"scan_id": ["a", "b"], "label": [0, 1]}


def test_reads_protocol_keeps_undecided_for_reporting(shared_data):
    df = scan_labels("reads", reads=str(shared_data / "cq500" / "reads.csv"), keep_undecided=True)
    assert len(df) == 491 and df["label"].isna().sum() == 491 - len(scan_labels("reads", reads=str(shared_data / "cq500" / "reads.csv")))
