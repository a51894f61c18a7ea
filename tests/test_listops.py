"""ListOps generator and reader: determinism, labels, bounds, splits, the official format."""

from __future__ import annotations

import logging
import os
import random
import re
import statistics
from pathlib import Path

import pytest

from lra.data.listops import (
    VOCAB,
    ListOpsDataModule,
    ListOpsSpec,
    generate_examples,
    is_complete,
    read_tsv,
    sample_tree,
    tokenize,
    write_listops,
)
from lra.io import sha256

SMALL = ListOpsSpec(
    max_depth=4, max_args=5, min_length=10, max_length=120, num_train=300, num_val=40, num_test=40
)


def evaluate(source: str) -> int:
    """An independent evaluator: a stack machine over the bracketed form."""
    stack: list[tuple[str, list[int]]] = [("top", [])]
    for tok in source.split():
        if tok in ("(", ")"):
            continue
        if tok.startswith("["):
            stack.append((tok, []))
        elif tok == "]":
            op, args = stack.pop()
            value = {
                "[MIN": min,
                "[MAX": max,
                "[MED": lambda a: int(statistics.median(a)),
                "[SM": lambda a: sum(a) % 10,
            }[op](args)
            stack[-1][1].append(value)
        else:
            stack[-1][1].append(int(tok))
    (value,) = stack[0][1]
    return value


def operator_depth(source: str) -> int:
    depth = deepest = 0
    for tok in source.split():
        if tok.startswith("["):
            depth += 1
            deepest = max(deepest, depth)
        elif tok == "]":
            depth -= 1
    return deepest


def length(source: str) -> int:
    return sum(tok not in ("(", ")") for tok in source.split())


@pytest.mark.parametrize(
    "source, label",
    [
        ("( ( ( [MAX 2 ) 9 ) ] )", 9),
        ("( ( ( [MIN 2 ) 9 ) ] )", 2),
        ("( ( ( [MED 1 ) 2 ) ] )", 1),  # median 1.5, truncated as LRA's int(np.median)
        ("( ( ( ( [MED 1 ) 7 ) 4 ) ] )", 4),
        ("( ( ( ( [SM 9 ) 8 ) 7 ) ] )", 4),
        ("( ( ( [MAX ( ( ( [MIN 3 ) 5 ) ] ) ) ( ( ( [SM 6 ) 7 ) ] ) ) ] )", 3),
        ("( ( ( ( [MED ( ( ( [SM 5 ) 5 ) ] ) ) 9 ) ( ( ( [MAX 0 ) 8 ) ] ) ) ] )", 8),
    ],
)
def test_hand_written_expressions_have_the_labels_lra_defines(source: str, label: int) -> None:
    assert evaluate(source) == label
    assert tokenize(source) == [VOCAB[t] for t in source.split() if t not in "()"]


def test_generated_labels_match_an_independent_evaluator() -> None:
    rng = random.Random(3)
    checked = 0
    while checked < 300:
        tree = sample_tree(rng, SMALL)
        if tree is None:
            continue
        source, value, n = tree
        assert evaluate(source) == value
        assert n == length(source)
        checked += 1


def test_source_strings_use_lra_bracketed_form() -> None:
    rng = random.Random(0)
    tree = None
    while tree is None:
        tree = sample_tree(rng, SMALL)
    source = tree[0]
    assert source.count("(") == source.count(")")
    ops = sum(tok.startswith("[") for tok in source.split())
    assert source.split().count("]") == ops


def test_lengths_depth_and_split_sizes_respect_the_spec() -> None:
    splits = generate_examples(SMALL, seed=1)
    assert {k: len(v) for k, v in splits.items()} == {"train": 300, "val": 40, "test": 40}
    sources = [s for rows in splits.values() for s, _ in rows]
    assert len(set(sources)) == len(sources), "examples are deduplicated across splits"
    for source in sources:
        assert SMALL.min_length < length(source) < SMALL.max_length
        # operators live at depths 1..max_depth-1; leaves may reach max_depth
        assert operator_depth(source) <= SMALL.max_depth - 1
    labels = [label for rows in splits.values() for _, label in rows]
    assert set(labels) <= set(range(10)) and len(set(labels)) > 5


def test_full_size_trees_respect_lra_length_bounds() -> None:
    rng = random.Random(0)
    spec = ListOpsSpec()
    kept = [t for t in (sample_tree(rng, spec) for _ in range(3000)) if t is not None]
    assert kept, "some trees fall within LRA's bounds"
    assert all(500 < n < 2000 and operator_depth(s) <= 9 for s, _, n in kept)


def test_same_seed_gives_byte_identical_files_and_manifest_checksums(tmp_path: Path) -> None:
    a = write_listops(tmp_path / "a", SMALL, seed=7)
    b = write_listops(tmp_path / "b", SMALL, seed=7)
    c = write_listops(tmp_path / "c", SMALL, seed=8)
    for split in ("train", "val", "test"):
        name = f"basic_{split}.tsv"
        assert sha256(tmp_path / "a" / name) == sha256(tmp_path / "b" / name) == a[name]["sha256"]
        assert a[name]["sha256"] == b[name]["sha256"] != c[name]["sha256"]
    assert (tmp_path / "a" / "MANIFEST.json").exists()
    header = (tmp_path / "a" / "basic_train.tsv").read_text().splitlines()[0]
    assert header == "Source\tTarget"


def test_generation_replaces_its_own_files_and_nothing_else(tmp_path: Path) -> None:
    out = tmp_path / "listops"
    first = write_listops(out, SMALL, seed=1)
    (out / "user.txt").write_text("not the generator's")
    second = write_listops(out, SMALL, seed=2)
    assert sorted(p.name for p in out.iterdir()) == [
        "MANIFEST.json",
        "basic_test.tsv",
        "basic_train.tsv",
        "basic_val.tsv",
        "user.txt",
    ]
    assert (out / "user.txt").read_text() == "not the generator's"
    assert sha256(out / "basic_train.tsv") == second["basic_train.tsv"]["sha256"]
    assert first["basic_train.tsv"]["sha256"] != second["basic_train.tsv"]["sha256"]
    assert not list(tmp_path.glob(".listops*")), "no temporary folder is left behind"


def test_a_set_cut_short_is_not_complete(tmp_path: Path) -> None:
    out = tmp_path / "listops"
    write_listops(out, SMALL, seed=1)
    assert is_complete(out)
    with open(
        out / "basic_val.tsv", "a"
    ) as f:  # a move cut short: another file than the manifest's
        f.write("( 1 )\t1\n")
    assert not is_complete(out)


def test_reader_on_an_official_format_tsv(tmp_path: Path) -> None:
    path = tmp_path / "basic_test.tsv"
    path.write_text(
        "Source\tTarget\n"
        "( ( ( [MAX 2 ) 9 ) ] )\t9\n"
        "( ( ( ( [SM ( ( ( [MIN 3 ) 5 ) ] ) ) 4 ) 1 ) ] )\t8\n"
    )
    rows = list(read_tsv(path))
    d = {t: VOCAB[t] for t in ("[MAX", "[SM", "[MIN", "]")}
    digit = {str(i): VOCAB[str(i)] for i in range(10)}
    assert rows[0] == ([d["[MAX"], digit["2"], digit["9"], d["]"]], 9)
    assert rows[1][0] == [
        d["[SM"],
        d["[MIN"],
        digit["3"],
        digit["5"],
        d["]"],
        digit["4"],
        digit["1"],
        d["]"],
    ]
    assert rows[1][1] == 8
    assert min(VOCAB.values()) == 1 and max(VOCAB.values()) == 15, "0 is kept for padding"


@pytest.mark.parametrize(
    "body, message",
    [
        ("( ( ( [MAX 2 ) 9 ) ] )\n", "expected 2 tab-separated columns"),
        ("( ( ( [MAX 2 ) 9 ) ] )\tnine\n", "is not a number"),
        ("( ( ( [MEAN 2 ) 9 ) ] )\t5\n", "unknown ListOps token '[MEAN'"),
        ("( ( ( [MAX 2 ) 9 ) ] )\t12\n", "label '12' is not a whole number in 0..9"),
        ("( ( ( [MAX 2 ) 9 ) ] )\t3.7\n", "label '3.7' is not a whole number in 0..9"),
        ("( ( ( [MAX 2 ) 9 ) ] )\tinf\n", "label 'inf' is not a whole number in 0..9"),
        ("( ( ( [MAX 2 ) 9 ) ] )\tnan\n", "label 'nan' is not a whole number in 0..9"),
    ],
)
def test_reader_errors_name_file_and_line(tmp_path: Path, body: str, message: str) -> None:
    path = tmp_path / "basic_train.tsv"
    path.write_text("Source\tTarget\n( ( ( [MIN 1 ) 2 ) ] )\t1\n" + body)
    with pytest.raises(ValueError, match=re.escape(message)) as err:
        list(read_tsv(path))
    assert f"{path}:3" in str(err.value)


def test_labels_written_as_floats_are_read_as_lra_reads_them(tmp_path: Path) -> None:
    path = tmp_path / "basic_test.tsv"
    path.write_text("Source\tTarget\n( ( ( [MAX 2 ) 9 ) ] )\t9.0\n")
    assert [label for _, label in read_tsv(path)] == [9]


def release(folder: Path, rows: dict[str, str]) -> ListOpsDataModule:
    folder.mkdir(parents=True, exist_ok=True)
    for split in ("train", "val", "test"):
        (folder / f"basic_{split}.tsv").write_text("Source\tTarget\n" + rows.get(split, rows["*"]))
    return ListOpsDataModule(task_name="listops", cache_dir=str(folder / "cache"), max_len=6,
                             batch_size=2, dir=str(folder), generate=False)  # fmt: skip


def test_an_empty_split_is_an_error_naming_the_file(tmp_path: Path) -> None:
    dm = release(tmp_path / "lo", {"*": "( ( [MAX 2 ) 9 ] )\t9\n", "val": ""})
    with pytest.raises(ValueError, match=r"listops val: no rows in .*basic_val.tsv: the split is"):
        dm.prepare_data()


def test_cut_rows_and_a_single_class_are_warned_once(tmp_path: Path, caplog) -> None:
    long = "( ( ( ( [SM ( ( ( [MIN 3 ) 5 ) ] ) ) 4 ) 1 ) ] )\t8\n"  # 8 tokens > max_len 6
    dm = release(tmp_path / "lo", {"*": long + "( ( [MAX 2 ) 9 ] )\t9\n", "test": long * 3})
    with caplog.at_level(logging.WARNING):
        dm.prepare_data()
    cut = [r.message for r in caplog.records if "longer than task.max_len" in r.message]
    assert "ListOps train: 1 of 2 rows are longer than task.max_len=6 (the longest has 8 tokens)" \
        in cut[0] and len(cut) == 3  # fmt: skip
    single = [r.message for r in caplog.records if "single class" in r.message]
    assert len(single) == 1 and "listops test: every one of the 3 rows has label 8" in single[0]


def test_a_first_generation_cut_short_is_ours_and_made_again(tmp_path: Path, monkeypatch) -> None:
    out = tmp_path / "listops"

    def killed_after_the_first_file(src, dst) -> None:
        if Path(dst).name == "basic_val.tsv":  # basic_train.tsv has been moved in
            raise KeyboardInterrupt("killed mid-move")
        os.rename(src, dst)

    monkeypatch.setattr(os, "replace", killed_after_the_first_file)
    with pytest.raises(KeyboardInterrupt):
        write_listops(out, SMALL, seed=1)
    monkeypatch.undo()
    assert not is_complete(out) and (out / "basic_train.tsv").exists()
    write_listops(out, SMALL, seed=1)  # ours (the first manifest says so): no --force needed
    assert is_complete(out)


def test_a_generated_set_in_the_release_folder_is_recorded_as_generated(tmp_path: Path) -> None:
    write_listops(tmp_path / "lra_release" / "listops-1000", SMALL, seed=1)  # an older harness's
    dm = ListOpsDataModule(task_name="listops", cache_dir=str(tmp_path / "cache"), max_len=120,
                           batch_size=8, dir=str(tmp_path / "lra_release" / "listops-1000"),
                           generated_dir=str(tmp_path / "generated"))  # fmt: skip
    dm.prepare_data()
    assert dm.source()["kind"] == "generated" and dm.source()["seed"] == 1
