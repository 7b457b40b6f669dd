"""Data set loaders on the official layouts, their errors, decoding with skips, synthetic data, the
shipped real recordings (data/esc10) and how they were made, the window chosen from clip lengths."""

from __future__ import annotations

import csv
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from soundclassifier.audio import decode
from soundclassifier.features import Features, FeatureSettings
from testkit import audiofiles as af
from training import leakage, words
from training.datasets import (
    NUMBERED_NAME,
    SHIPPED_ESC10,
    Clip,
    DatasetError,
    choose_clip_seconds,
    decode_clips,
    load_dataset,
    outliers,
)
from training.synthetic import CLASSES, FOLDS, generate
from training.vendor import vendor

ESC_CLASSES = ["dog", "rooster", "rain"]
US_CLASSES = {0: "air_conditioner", 3: "dog_bark", 8: "siren"}


# --- ESC-50 -------------------------------------------------------------------------------------


def test_esc50_layout(tmp_path, layouts):
    root = layouts["esc50"](tmp_path / "ESC-50-master", ESC_CLASSES, clips_per_fold=2)
    ds = load_dataset("esc50", root)
    assert ds.name == "esc50"
    assert ds.labels == ESC_CLASSES  # in target order
    assert ds.folds == [1, 2, 3, 4, 5]
    assert len(ds.clips) == 3 * 5 * 2
    assert all(c.path.parent == root / "audio" and c.path.is_file() for c in ds.clips)
    for c in ds.clips:  # fold and label come from the CSV row of that very file
        fold, _, _, target = c.path.stem.split("-")
        assert (c.fold, c.label) == (int(fold), ESC_CLASSES[int(target)])
    train, valid = ds.split(2)
    assert {c.fold for c in valid} == {2} and len(valid) == 6
    assert 2 not in {c.fold for c in train} and len(train) == 24


def test_esc50_labels_follow_target_not_row_order(tmp_path, layouts):
    root = layouts["esc50"](tmp_path / "esc", ESC_CLASSES)
    csv_path = root / "meta" / "esc50.csv"
    lines = csv_path.read_text().splitlines()
    csv_path.write_text("\n".join([lines[0], *reversed(lines[1:])]) + "\n")
    assert load_dataset("esc50", root).labels == ESC_CLASSES


def test_esc50_conflicting_class_names(tmp_path, layouts):
    root = layouts["esc50"](tmp_path / "esc", ESC_CLASSES)
    csv_path = root / "meta" / "esc50.csv"
    csv_path.write_text(csv_path.read_text().replace(",0,dog,", ",0,cat,", 1))
    with pytest.raises(DatasetError, match="class id 0 is named both"):
        load_dataset("esc50", root)


# --- UrbanSound8K -------------------------------------------------------------------------------


def test_urbansound8k_layout(tmp_path, layouts):
    root = layouts["urbansound8k"](tmp_path / "UrbanSound8K", US_CLASSES, clips_per_fold=2, folds=3)
    ds = load_dataset("urbansound8k", root)
    assert ds.name == "urbansound8k"
    assert ds.labels == ["air_conditioner", "dog_bark", "siren"]  # classID order
    assert ds.folds == [1, 2, 3]
    assert len(ds.clips) == 3 * 3 * 2
    for c in ds.clips:
        assert c.path.parent == root / "audio" / f"fold{c.fold}"
        assert c.path.is_file()
        class_id = int(c.path.stem.split("-")[1])
        assert c.label == US_CLASSES[class_id]
    _, valid = ds.split(3)
    assert {c.fold for c in valid} == {3}
    with pytest.raises(DatasetError, match="fold 10 does not exist"):
        ds.split(10)


def test_urbansound8k_file_in_the_wrong_fold_folder_is_reported(tmp_path, layouts):
    root = layouts["urbansound8k"](tmp_path / "us", US_CLASSES, folds=2)
    moved = next((root / "audio" / "fold1").iterdir())
    moved.rename(root / "audio" / "fold2" / moved.name)
    with pytest.raises(DatasetError) as info:
        load_dataset("urbansound8k", root)
    assert moved.name in str(info.value) and "do not exist" in str(info.value)


# --- folder of classes --------------------------------------------------------------------------


def test_folder_layout_is_stratified(tmp_path, layouts):
    counts = {"bird": 5, "car": 7, "dog": 10, "wind": 13}
    root = layouts["folder"](tmp_path / "sounds", counts)
    (root / "car" / "notes.txt").write_text("not audio")  # ignored: not an audio suffix
    (root / ".cache").mkdir()  # hidden directories are not classes
    ds = load_dataset("folder", root, seed=0)
    assert ds.name == "folder"
    assert ds.labels == sorted(counts)
    assert len(ds.clips) == sum(counts.values())
    assert ds.folds == [1, 2, 3, 4, 5]
    for label, n in counts.items():
        per_fold = Counter(c.fold for c in ds.clips if c.label == label)
        assert set(per_fold) == {1, 2, 3, 4, 5}, (label, per_fold)  # every class in every fold
        assert max(per_fold.values()) - min(per_fold.values()) <= 1  # spread evenly
        assert sum(per_fold.values()) == n


def test_folder_small_class_spreads_over_distinct_folds(tmp_path, layouts):
    root = layouts["folder"](tmp_path / "sounds", {"a": 3, "b": 6})
    ds = load_dataset("folder", root, seed=1)
    folds_a = [c.fold for c in ds.clips if c.label == "a"]
    assert len(set(folds_a)) == 3


def test_folder_split_is_deterministic_for_a_seed(tmp_path, layouts):
    root = layouts["folder"](tmp_path / "sounds", {"a": 8, "b": 9, "c": 6})

    def assignment(seed):
        return sorted((str(c.path), c.fold) for c in load_dataset("folder", root, seed=seed).clips)

    assert assignment(0) == assignment(0)
    assert assignment(7) == assignment(7)
    assert len({tuple(assignment(s)) for s in range(5)}) > 1  # the seed does change the split


def test_the_deal_does_not_depend_on_where_the_data_lives(tmp_path, layouts, monkeypatch):
    """Files of their own beside grouped takes (the shipped data/other-sounds is such a mix): the
    same folds wherever the folder is and however its path is spelled. (A file of its own used to
    be ordered by its full path among the takes' keys: /tmp/... before xylo/..., zz/... after.)"""
    import shutil

    def deal(root: Path, load) -> list[tuple[str, int]]:
        return sorted((c.path.resolve().relative_to(root.resolve()).as_posix(), c.fold) for c in load(root))

    here = layouts["takes"](tmp_path / "a" / "sounds", {"xylo": 3, "zither": 3}, cuts=2)
    for label in ("xylo", "zither"):  # beside the takes, recordings of their own
        for name in ("morning", "evening", "night", "dawn"):
            shutil.copy(here / label / f"{label}_take0_00.wav", here / label / f"{name}.wav")
    shutil.copytree(here, tmp_path / "zz" / "sounds")
    monkeypatch.chdir(tmp_path)
    as_folder = lambda root: load_dataset("folder", root).clips  # noqa: E731
    as_outliers = lambda root: outliers(root, [1, 2, 3, 4, 5])  # noqa: E731
    for load in (as_folder, as_outliers):
        assert deal(here, load) == deal(Path("zz/sounds"), load)
        assert len({fold for _, fold in deal(here, load)}) > 1


def test_folder_reads_every_audio_suffix(tmp_path):
    root = tmp_path / "sounds"
    (root / "beep").mkdir(parents=True)
    (root / "beep" / "a.wav").write_bytes(af.wav_sine(seconds=0.2))
    (root / "beep" / "b.FLAC").write_bytes(af.flac_sine(seconds=0.2))
    (root / "beep" / "c.ogg").write_bytes(af.ogg_vorbis_sine(seconds=0.2))
    (root / "beep" / "sub").mkdir()
    (root / "beep" / "sub" / "d.mp3").write_bytes(af.mp3_sine(seconds=0.2))
    ds = load_dataset("folder", root)
    assert sorted(c.path.name for c in ds.clips) == ["a.wav", "b.FLAC", "c.ogg", "d.mp3"]


# --- grouped folds: a recording never on both sides of a split -----------------------------------


def _no_recording_straddles(ds) -> None:
    for fold in ds.folds:
        train, valid = ds.split(fold)
        assert not {c.recording for c in train} & {c.recording for c in valid}, fold


def test_folder_keeps_the_cuts_of_one_take_in_one_fold(tmp_path, layouts):
    root = layouts["takes"](tmp_path / "sounds", {"kettle": 6, "tap": 5, "fan": 7}, cuts=4)
    for seed in (0, 1, 2):
        ds = load_dataset("folder", root, seed=seed)
        _no_recording_straddles(ds)
        takes = {c.recording for c in ds.clips}
        assert takes == {f"{lab}/{lab}_take{k}" for lab, n in {"kettle": 6, "tap": 5, "fan": 7}.items() for k in range(n)}
        for take in takes:  # all four cuts of a take, in one fold
            folds = [c.fold for c in ds.clips if c.recording == take]
            assert len(folds) == 4 and len(set(folds)) == 1, take
        # whole takes, yet every class in every fold and spread as evenly as takes of 4 allow
        for label in ("kettle", "tap", "fan"):
            per_fold = Counter(c.fold for c in ds.clips if c.label == label)
            assert set(per_fold) == {1, 2, 3, 4, 5} and max(per_fold.values()) - min(per_fold.values()) <= 4
    groups = ds.groups()
    assert groups["per_class"] == {"fan": 7, "kettle": 6, "tap": 5} and groups["n"] == 18
    assert "numbered name" in groups["how"] and ": 72" in groups["how"]


def test_folder_subfolders_of_a_class_are_recordings(tmp_path, layouts):
    root = layouts["takes"](tmp_path / "sounds", {"dog": 4, "cat": 3}, cuts=3, subfolders=True)
    (root / "dog" / "loose.wav").write_bytes(af.wav_sine(seconds=0.5))  # beside the takes: its own recording
    ds = load_dataset("folder", root, seed=3)
    _no_recording_straddles(ds)
    assert {c.recording for c in ds.clips if c.label == "cat"} == {"cat/take0", "cat/take1", "cat/take2"}
    assert ds.groups()["per_class"] == {"cat": 3, "dog": 5}
    assert "subfolder of the class folder: 21" in ds.groups()["how"]
    loose = next(c for c in ds.clips if c.path.name == "loose.wav")
    assert loose.group == "" and loose.recording == str(loose.path)


def test_folder_of_esc_and_urbansound_names_is_grouped_by_source(tmp_path):
    root = tmp_path / "sounds"
    for label, names in {
        "dog": ["1-100032-A-0", "2-100032-B-0", "1-100038-A-0", "3-110389-A-0", "4-110389-C-0", "5-30226-A-0"],
        "siren": ["100263-8-0-117", "100263-8-0-121", "102853-8-0-0", "102853-8-1-3", "106905-8-0-0"],
    }.items():
        (root / label).mkdir(parents=True)
        for name in names:
            (root / label / f"{name}.wav").write_bytes(af.wav_noise(seconds=0.2, seed=len(name)))
    ds = load_dataset("folder", root)
    _no_recording_straddles(ds)
    assert {c.recording for c in ds.clips} == {
        "dog/100032", "dog/100038", "dog/110389", "dog/30226", "siren/100263", "siren/102853", "siren/106905"
    }
    assert "ESC-50 name" in ds.groups()["how"] and "UrbanSound8K name" in ds.groups()["how"]


@pytest.mark.parametrize(
    ("stem", "recording"),
    [("kettle_01", "kettle"), ("kettle-12", "kettle"), ("kettle 3", "kettle"), ("kettle (2)", "kettle"),
     ("kettle_part3", "kettle"), ("Kettle Part 2", "Kettle"), ("kitchen take_07", "kitchen take"),
     ("rec_2024_05_01", "rec_2024_05"), ("lincity-ng-blacksmith1-00", "lincity-ng-blacksmith1"),
     ("kettle", None), ("01", None), ("take3b", None)],
)  # fmt: skip
def test_numbered_names(stem, recording):
    m = NUMBERED_NAME.match(stem)
    assert (m[1] if m else None) == recording


def test_folder_group_pattern_names_the_recording(tmp_path, layouts):
    root = tmp_path / "sounds"
    for label in ("cow", "owl"):  # names no built-in rule reads: <session letter>x<take>
        (root / label).mkdir(parents=True)
        for session in "ABCD":
            for take in range(3):
                (root / label / f"{session}x{take}.wav").write_bytes(af.wav_noise(seconds=0.2, seed=take))
    assert len({c.recording for c in load_dataset("folder", root).clips}) == 24  # unreadable names: one each
    ds = load_dataset("folder", root, group_pattern=r"^([A-Z])x")
    _no_recording_straddles(ds)
    assert ds.groups()["per_class"] == {"cow": 4, "owl": 4}
    assert {c.recording for c in ds.clips if c.label == "cow"} == {"cow/A", "cow/B", "cow/C", "cow/D"}
    assert "--group-pattern: 24" in ds.groups()["how"]
    # no capture group: the whole match; files it does not match fall to the built-in rules
    for name in ("night_01", "night_02", "dusk_01"):
        (root / "owl" / f"{name}.wav").write_bytes(af.wav_noise(seconds=0.2, seed=len(name)))
    ds = load_dataset("folder", root, group_pattern=r"^[A-Z]")
    assert {c.recording for c in ds.clips if c.label == "owl"} == {"owl/A", "owl/B", "owl/C", "owl/D", "owl/night", "owl/dusk"}
    with pytest.raises(DatasetError, match="matches no file"):
        load_dataset("folder", root, group_pattern=r"^zzz")
    with pytest.raises(DatasetError, match="not a regular expression"):
        load_dataset("folder", root, group_pattern=r"([A-Z]")
    with pytest.raises(DatasetError, match="--group-pattern is for --dataset folder"):
        load_dataset("esc50", root, group_pattern=r"^([A-Z])")


def test_a_class_of_one_recording_is_refused(tmp_path, layouts):
    root = layouts["takes"](tmp_path / "sounds", {"dog": 1, "cat": 3}, subfolders=True)
    with pytest.raises(DatasetError, match=r"class 'dog': all 3 files are one recording \('take0'"):
        load_dataset("folder", root)


def test_numbering_like_separate_recordings_is_not_read_as_one_take(tmp_path, layouts, caplog):
    # dog_00 ... dog_04 is how people number separate recordings too: one recording per file, said so
    root = layouts["folder"](tmp_path / "sounds", {"dog": 5, "cat": 5})
    ds = load_dataset("folder", root)
    assert ds.groups()["per_class"] == {"cat": 5, "dog": 5}
    assert "numbered like separate recordings (the class's own name or one stem): one recording each: 10" in ds.groups()["how"]
    assert "class dog: 5 numbered file(s) (dog_00.wav, ...) taken as separate recordings" in caplog.text
    # a file more does not turn them into one take; one other stem alone is not read as a take
    (root / "dog" / "bark.wav").write_bytes(af.wav_noise(seconds=0.2, seed=1))
    for k in range(3):
        (root / "cat" / f"Recording {k}.wav").write_bytes(af.wav_noise(seconds=0.2, seed=10 + k))
    assert load_dataset("folder", root).groups()["per_class"] == {"cat": 8, "dog": 6}
    # two stems besides the class's name: each stem is a take; the class's own numbering stays apart
    for take in ("kitchen", "garden"):
        for k in range(3):
            (root / "dog" / f"{take}-{k}.wav").write_bytes(af.wav_noise(seconds=0.2, seed=20 + k))
    ds = load_dataset("folder", root)
    assert {c.recording for c in ds.clips if c.path.name.startswith(("kitchen", "garden"))} == {"dog/kitchen", "dog/garden"}
    assert ds.groups()["per_class"]["dog"] == 5 + 1 + 2
    _no_recording_straddles(ds)


def test_grouped_deal_is_deterministic_and_balanced_by_class(tmp_path):
    root = tmp_path / "sounds"
    sizes = {"a": [5, 4, 3, 3, 2, 2, 1, 1, 1], "b": [2] * 10}
    for label, takes in sizes.items():
        for k, n in enumerate(takes):
            (root / label / f"t{k}").mkdir(parents=True)
            for j in range(n):
                (root / label / f"t{k}" / f"{j}.wav").write_bytes(af.wav_noise(seconds=0.1, seed=j))

    def assignment(seed):
        return sorted((str(c.path), c.fold) for c in load_dataset("folder", root, seed=seed).clips)

    assert assignment(4) == assignment(4)
    assert len({tuple(assignment(s)) for s in range(5)}) > 1
    ds = load_dataset("folder", root, seed=4)
    _no_recording_straddles(ds)
    a = Counter(c.fold for c in ds.clips if c.label == "a")  # 22 clips: 5 | 4+1 | 3+1+1 | 3+2 | 2+1...
    assert sorted(a.values()) == [4, 4, 4, 5, 5]
    assert sorted(Counter(c.fold for c in ds.clips if c.label == "b").values()) == [4] * 5


def test_outliers_are_grouped_by_name_not_by_their_kind_folders(tmp_path):
    root = tmp_path / "other"
    for kind, stems in {"music": ["song-a", "song-b"], "speech": ["talk"]}.items():
        (root / kind).mkdir(parents=True)
        for stem in stems:
            for j in range(3):
                (root / kind / f"{stem}-{j:02d}.wav").write_bytes(af.wav_noise(seconds=0.1, seed=j))
    clips = outliers(root, [1, 2, 3], seed=0)
    assert {c.recording for c in clips} == {"/song-a", "/song-b", "/talk"}
    for stem in ("song-a", "song-b", "talk"):
        assert len({c.fold for c in clips if c.path.name.startswith(stem)}) == 1


def test_esc50_and_urbansound8k_record_their_recordings_and_refuse_folds_that_cut_one(tmp_path, layouts):
    esc = layouts["esc50"](tmp_path / "esc", ESC_CLASSES, clips_per_fold=2)
    ds = load_dataset("esc50", esc)
    assert ds.groups()["per_class"] == {lab: 10 for lab in ESC_CLASSES} and "src_file" in ds.groups()["how"]
    assert {c.group for c in ds.clips} == {c.path.stem.split("-")[1] for c in ds.clips}
    _no_recording_straddles(ds)
    csv_path = esc / "meta" / "esc50.csv"
    rows = csv_path.read_text().splitlines()  # the second clip of a recording in another fold
    first = rows[1].split(",")
    rows.append(",".join(["2-extra-A-0.wav", "2", *first[2:]]))
    (esc / "audio" / "2-extra-A-0.wav").write_bytes(af.wav_noise(seconds=0.5))
    csv_path.write_text("\n".join(rows) + "\n")
    with pytest.raises(DatasetError, match=rf"clips in more than one fold, e\.g\. '{first[5]}' in folds \[1, 2\]"):
        load_dataset("esc50", esc)

    us = layouts["urbansound8k"](tmp_path / "us", US_CLASSES, clips_per_fold=3, folds=3)
    ds = load_dataset("urbansound8k", us)
    assert ds.groups()["per_class"] == {"air_conditioner": 3, "dog_bark": 3, "siren": 3}
    assert "fsID" in ds.groups()["how"]
    _no_recording_straddles(ds)
    _drop_column(us / "metadata" / "UrbanSound8K.csv", "fsID")  # then the file names say it
    ds = load_dataset("urbansound8k", us)
    assert ds.groups()["per_class"] == {"air_conditioner": 3, "dog_bark": 3, "siren": 3}
    assert "file names" in ds.groups()["how"]


def test_shipped_esc10_as_a_folder_is_grouped_by_source_recording(tmp_path):
    shipped = load_dataset("esc10", SHIPPED_ESC10)
    root = tmp_path / "mine"
    for c in shipped.clips:  # the clips as a user would have them: <label>/<ESC file name>
        (root / c.label).mkdir(parents=True, exist_ok=True)
        (root / c.label / c.path.name).symlink_to(c.path)
    ds = load_dataset("folder", root)
    assert ds.groups()["per_class"] == {lab: shipped.groups()["per_class"][lab] for lab in ds.labels}
    assert ds.groups()["n"] == len({c.group for c in shipped.clips}) < len(shipped.clips)
    _no_recording_straddles(ds)


# --- the leakage check ---------------------------------------------------------------------------


def test_fingerprint_sees_through_gain_trim_and_padding_but_not_another_take(tmp_path, layouts):
    root = layouts["takes"](tmp_path / "sounds", {"kettle": 2}, cuts=2, seconds=1.0)
    features = Features(FeatureSettings())
    x, y = (features.waveform(decode(root / "kettle" / f"kettle_take{k}_00.wav")) for k in (0, 1))
    fx = leakage.fingerprint(x, features)

    def distance(other):
        return float(np.sqrt(np.mean((leakage.fingerprint(other, features) - fx) ** 2)))

    pad = np.zeros(2205, np.float32)
    assert distance(0.25 * x) < 0.01
    assert distance(x[2205:]) < leakage.NEAR_DB
    assert distance(np.concatenate([pad, x, pad])) < leakage.NEAR_DB  # the cut edges click: 0.55 here
    assert distance(y) > 2 * leakage.NEAR_DB  # the kettle's other take: 15 Hz lower, other noise


def test_a_folder_made_to_leak_is_split_by_take_and_named_when_the_names_hide_the_takes(tmp_path, layouts, caplog):
    takes = layouts["takes"](tmp_path / "sounds", {"kettle": 4, "tap": 4}, cuts=3, seconds=1.0)
    features = Features(FeatureSettings())
    grouped = load_dataset("folder", takes)
    _no_recording_straddles(grouped)
    assert leakage.find(decode_clips(grouped.clips, grouped.labels, features), features, grouped.folds) == ([], [])

    take_of = layouts["hide_names"](takes, tmp_path / "hidden")
    ds = load_dataset("folder", tmp_path / "hidden")
    assert ds.groups()["n"] == 24  # the names no longer tell: a file each, dealt apart
    data = decode_clips(ds.clips, ds.labels, features)
    identical, near = leakage.find(data, features, ds.folds)
    assert identical == []
    straddling = {frozenset((a.path.name, b.path.name)) for a in data.clips for b in data.clips
                  if a.fold != b.fold and take_of[a.path.name] == take_of[b.path.name]}  # fmt: skip
    assert len(straddling) >= 8
    found = {frozenset((p.a.path.name, p.b.path.name)) for p in near}
    assert found <= straddling  # every pair named is two cuts of one take ...
    assert len(found) >= 0.75 * len(straddling)  # ... and most such pairs are found
    meta = leakage.check(data, features, ds.folds, ds.root)  # a warning with the names, and a count
    assert meta["near_duplicates"] == len(near) and meta["identical"] == 0
    first = near[0]
    assert f"{first.a.label}/{first.a.path.name} (fold {first.a.fold}) ~ {first.b.label}/{first.b.path.name}" in caplog.text
    assert [first.a.label + "/" + first.a.path.name + f" (fold {first.a.fold})"] == meta["pairs"][0][:1]
    # a single split only counts pairs with one clip in its held-out fold
    _, near_1 = leakage.find(data, features, [1])
    assert 0 < len(near_1) < len(near) and all(1 in (p.a.fold, p.b.fold) for p in near_1)


def test_leakage_command_checks_a_folder_without_training(tmp_path, layouts, capsys):
    takes = layouts["takes"](tmp_path / "sounds", {"kettle": 4, "tap": 4}, cuts=3, seconds=1.0)
    layouts["hide_names"](takes, tmp_path / "hidden")
    features = Features(FeatureSettings())
    ds = load_dataset("folder", tmp_path / "hidden")
    _, near = leakage.find(decode_clips(ds.clips, ds.labels, features), features, ds.folds)
    assert leakage.main(["--dataset", "folder", "--data-dir", str(tmp_path / "hidden"), "--closest", "2", "--altered", "12"]) == 0
    out = capsys.readouterr().out
    assert "'per_class': {'kettle': 12, 'tap': 12}" in out
    assert f"across the cross-validation folds: {len(near)} near-duplicate pair(s)" in out and near
    assert len(re.findall(r"^  closest different recordings: clip\d+\.wav \(fold \d\) ~ clip\d+\.wav", out, re.M)) == 2
    gain = re.search(r"^  gain x0\.3: median ([\d.]+) dB, max [\d.]+, within 0\.75: (\d+)/(\d+)$", out, re.M)
    assert gain and float(gain[1]) < 0.01 and gain[2] == gain[3] == "2"  # clips 0 and 12, each found again


def test_identical_audio_across_the_split_is_refused_with_the_file_names(tmp_path, layouts):
    root = layouts["takes"](tmp_path / "sounds", {"kettle": 3, "tap": 3}, cuts=2)
    original = root / "tap" / "tap_take1_00.wav"
    (root / "tap" / "copy.wav").write_bytes(original.read_bytes())  # its own recording, by name
    features = Features(FeatureSettings())
    seed = next(s for s in range(20) if len({c.fold for c in load_dataset("folder", root, seed=s).clips
                                             if c.path.name in ("copy.wav", original.name)}) == 2)  # fmt: skip
    ds = load_dataset("folder", root, seed=seed)
    data = decode_clips(ds.clips, ds.labels, features)
    folds = {c.path.name: c.fold for c in ds.clips}
    with pytest.raises(DatasetError) as info:
        leakage.check(data, features, ds.folds, ds.root)
    message = str(info.value)
    assert "1 pair(s) of files with identical audio on both sides of the split" in message
    assert f"tap/copy.wav (fold {folds['copy.wav']})" in message and f"tap/{original.name}" in message
    # a split that keeps both on one side is not refused; nor are they counted as near-duplicates
    aside = [f for f in ds.folds if f not in (folds["copy.wav"], folds[original.name])]
    assert leakage.check(data, features, aside[:1], ds.root)["near_duplicates"] == 0


# --- errors before training ---------------------------------------------------------------------


def test_missing_directory(tmp_path):
    with pytest.raises(DatasetError, match="does not exist"):
        load_dataset("folder", tmp_path / "nope")
    with pytest.raises(DatasetError, match=r"esc50\.csv does not exist"):
        load_dataset("esc50", tmp_path / "nope")
    with pytest.raises(DatasetError, match=r"UrbanSound8K\.csv does not exist"):
        load_dataset("urbansound8k", tmp_path / "nope")


def test_folder_without_class_directories(tmp_path):
    (tmp_path / "flat").mkdir()
    (tmp_path / "flat" / "x.wav").write_bytes(af.wav_sine(seconds=0.1))
    with pytest.raises(DatasetError, match="no class sub-directories"):
        load_dataset("folder", tmp_path / "flat")


def test_empty_class_folder(tmp_path, layouts):
    root = layouts["folder"](tmp_path / "sounds", {"cat": 5, "dog": 5})
    (root / "owl").mkdir()
    (root / "owl" / "readme.txt").write_text("to do: record owls")
    with pytest.raises(DatasetError) as info:
        load_dataset("folder", root)
    assert "owl" in str(info.value) and "no audio files" in str(info.value)


def test_csv_listing_a_missing_file(tmp_path, layouts):
    root = layouts["esc50"](tmp_path / "esc", ESC_CLASSES)
    gone = sorted((root / "audio").iterdir())[3]
    gone.unlink()
    with pytest.raises(DatasetError) as info:
        load_dataset("esc50", root)
    msg = str(info.value)
    assert "1 file(s) that do not exist" in msg
    assert f"audio/{gone.name}" in msg


@pytest.mark.parametrize("column", ["filename", "fold", "target", "category"])
def test_esc50_csv_missing_a_column(tmp_path, layouts, column):
    root = layouts["esc50"](tmp_path / "esc", ESC_CLASSES)
    _drop_column(root / "meta" / "esc50.csv", column)
    with pytest.raises(DatasetError) as info:
        load_dataset("esc50", root)
    assert column in str(info.value) and "lacks the column" in str(info.value)


@pytest.mark.parametrize("column", ["slice_file_name", "fold", "classID", "class"])
def test_urbansound8k_csv_missing_a_column(tmp_path, layouts, column):
    root = layouts["urbansound8k"](tmp_path / "us", US_CLASSES)
    _drop_column(root / "metadata" / "UrbanSound8K.csv", column)
    with pytest.raises(DatasetError, match=f"lacks the column.*'{column}'"):
        load_dataset("urbansound8k", root)


def test_csv_with_no_rows(tmp_path, layouts):
    root = layouts["esc50"](tmp_path / "esc", ESC_CLASSES)
    csv_path = root / "meta" / "esc50.csv"
    csv_path.write_text(csv_path.read_text().splitlines()[0] + "\n")
    with pytest.raises(DatasetError, match="lists no clips"):
        load_dataset("esc50", root)


def test_unknown_dataset_name(tmp_path):
    with pytest.raises(DatasetError, match="unknown data set 'esc51'"):
        load_dataset("esc51", tmp_path)


def _drop_column(path: Path, column: str) -> None:
    with path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    keep = [c for c in rows[0] if c != column]
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, keep, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)


# --- decoding for training ----------------------------------------------------------------------


def test_decode_clips_skips_and_reports_unreadable_files(tmp_path):
    good = tmp_path / "good.wav"
    good.write_bytes(af.wav_sine(seconds=0.5, rate=44100))
    text = tmp_path / "text.wav"
    text.write_bytes(af.text())
    cut = tmp_path / "cut.wav"
    cut.write_bytes(af.truncated_wav())
    good2 = tmp_path / "good2.flac"
    good2.write_bytes(af.flac_sine(seconds=0.25))
    labels = ["a", "b"]
    clips = [Clip(good, "b", 1), Clip(text, "a", 1), Clip(cut, "a", 2), Clip(good2, "a", 2)]
    out = decode_clips(clips, labels, Features(FeatureSettings()))
    assert [c.path for c in out.clips] == [good, good2]
    assert out.targets == [1, 0]
    assert [len(w) for w in out.waves] == [11025, round(0.25 * 22050)]  # resampled to 22.05 kHz
    assert [p for p, _ in out.skipped] == [str(text), str(cut)]
    assert all(isinstance(reason, str) and reason for _, reason in out.skipped)
    assert "not an audio file" in out.skipped[0][1]
    assert "truncated" in out.skipped[1][1]


# --- synthetic data and fingerprints ------------------------------------------------------------


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_synthetic_is_deterministic_for_a_seed(tmp_path):
    a = _tree(generate(tmp_path / "a", clips_per_class=2, seed=3))
    b = _tree(generate(tmp_path / "b", clips_per_class=2, seed=3))
    c = _tree(generate(tmp_path / "c", clips_per_class=2, seed=4))
    assert a == b
    assert a.keys() == c.keys()
    assert any(a[k] != c[k] for k in a if k.endswith(".wav"))


def test_synthetic_has_ten_classes_and_five_folds(synthetic_dir):
    ds = load_dataset("synthetic", synthetic_dir)
    assert ds.name == "synthetic"
    assert len(ds.labels) >= 10 and ds.labels == list(CLASSES)
    assert ds.folds == list(range(1, FOLDS + 1)) == [1, 2, 3, 4, 5]
    assert len(ds.clips) == 6 * len(CLASSES)
    for label in ds.labels:  # every class in every fold
        assert {c.fold for c in ds.clips if c.label == label} == {1, 2, 3, 4, 5}
    info = sf.info(str(ds.clips[0].path))
    assert (info.samplerate, info.channels, info.frames) == (22050, 1, 5 * 22050)


def test_load_dataset_generates_synthetic_when_absent(tmp_path):
    root = tmp_path / "synth"
    ds = load_dataset("synthetic", root, clips_per_class=1, seed=0)
    assert (root / "meta" / "esc50.csv").is_file()
    assert len(ds.clips) == len(CLASSES)
    before = _tree(root)
    load_dataset("synthetic", root, clips_per_class=1, seed=99)  # present: not regenerated
    assert _tree(root) == before


def test_fingerprint_identifies_the_data(tmp_path, layouts):
    root = layouts["esc50"](tmp_path / "esc", ESC_CLASSES)
    fp = load_dataset("esc50", root).fingerprint()
    assert len(fp) == 64 and fp == load_dataset("esc50", root).fingerprint()
    # the same data elsewhere on disk is the same data
    copy = layouts["esc50"](tmp_path / "copy", ESC_CLASSES)
    assert load_dataset("esc50", copy).fingerprint() == fp
    # a file that grows changes it
    victim = sorted((root / "audio").iterdir())[0]
    victim.write_bytes(af.wav_sine(seconds=0.6))
    assert load_dataset("esc50", root).fingerprint() != fp


def test_fingerprint_changes_when_a_file_changes_but_keeps_its_size(tmp_path, layouts):
    root = layouts["esc50"](tmp_path / "esc", ESC_CLASSES)
    fp = load_dataset("esc50", root).fingerprint()
    victim = sorted((root / "audio").iterdir())[0]
    original = victim.read_bytes()
    replacement = af.wav_noise(seconds=0.5, seed=123)  # another recording, same format and length
    assert len(replacement) == len(original) and replacement != original
    victim.write_bytes(replacement)
    assert load_dataset("esc50", root).fingerprint() != fp


def test_fingerprint_changes_with_labels_and_folds(tmp_path, layouts):
    root = layouts["esc50"](tmp_path / "esc", ESC_CLASSES)
    fp = load_dataset("esc50", root).fingerprint()
    csv_path = root / "meta" / "esc50.csv"
    text = csv_path.read_text()
    first = text.splitlines()[1]
    csv_path.write_text(text.replace(first, first.replace(",1,0,dog,", ",2,0,dog,")))
    assert load_dataset("esc50", root).fingerprint() != fp


# --- the shipped real recordings ----------------------------------------------------------------

ESC10 = ["dog_bark", "rain", "sea_waves", "baby_cry", "clock_tick", "person_sneeze", "helicopter",
         "chainsaw", "rooster", "fire_crackling"]  # fmt: skip


def test_shipped_esc10_is_the_default_real_set():
    ds = load_dataset("esc10", SHIPPED_ESC10)
    assert ds.name == "esc10"
    assert ds.labels == ESC10
    assert ds.folds == [2, 3, 4, 5]  # fold 1 is the held-out test and is not shipped
    assert len(ds.clips) == 320
    assert Counter(c.label for c in ds.clips) == {lab: 32 for lab in ESC10}
    assert Counter(c.fold for c in ds.clips) == {f: 80 for f in (2, 3, 4, 5)}
    sizes = [c.path.stat().st_size for c in ds.clips]
    assert max(sizes) < 5 * 2**20 and sum(sizes) < 12e6
    for c in ds.clips[::40]:
        info = sf.info(str(c.path))
        assert (info.format, info.subtype, info.channels, info.samplerate) == ("OGG", "VORBIS", 1, 22050)
        assert 3.0 < info.duration < 5.5


def test_shipped_esc10_credits_every_clip_and_names_its_licence():
    ds = load_dataset("esc10", SHIPPED_ESC10)
    with (SHIPPED_ESC10 / "ATTRIBUTION.csv").open(newline="") as f:
        credits = {r["filename"]: r for r in csv.DictReader(f)}
    assert set(credits) == {c.path.name for c in ds.clips}
    assert all(r["author"] and r["source_url"].startswith("http") and r["license"] for r in credits.values())
    readme = (SHIPPED_ESC10 / "README.md").read_text()
    assert "CC BY" in readme and "Piczak" in readme and "ATTRIBUTION.csv" in readme
    assert "python -m training.vendor" in readme


def test_vendor_reencodes_to_mono_22k_vorbis_and_keeps_meta_and_credits(tmp_path, layouts):
    src = layouts["esc50"](tmp_path / "src", ["dog", "rain"], clips_per_fold=1, folds=2, seconds=1.0)
    stereo = next((src / "audio").iterdir())  # one clip as 44.1 kHz stereo Vorbis, as ESC-50 ships it
    left = af.sine(freq=440.0, seconds=1.0, rate=44100)
    sf.write(stereo, np.stack([left, left * 0.5], axis=1), 44100, format="WAV")
    rows = list(csv.DictReader((src / "meta" / "esc50.csv").open(newline="")))
    with (src / "ATTRIBUTION.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["filename", "source_recording", "source_url", "author", "license"])
        w.writerows([r["filename"], "x.wav", "http://example.org/1", "someone", "CC-BY"] for r in rows)
    dest = tmp_path / "small"
    total = vendor(src, dest)
    assert (dest / "meta" / "esc50.csv").read_bytes() == (src / "meta" / "esc50.csv").read_bytes()
    assert (dest / "ATTRIBUTION.csv").read_bytes() == (src / "ATTRIBUTION.csv").read_bytes()
    assert "CC BY" in (dest / "README.md").read_text()
    out = sorted((dest / "audio").iterdir())
    assert [p.name for p in out] == sorted(r["filename"] for r in rows)
    assert total == sum(p.stat().st_size for p in out)
    for p in out:
        info = sf.info(str(p))
        assert (info.format, info.subtype, info.channels, info.samplerate) == ("OGG", "VORBIS", 1, 22050)
        assert info.duration == pytest.approx(1.0, abs=0.01)
    # the audio survives: the stereo sine comes back at 440 Hz with the mean of its channels' level
    x, rate = sf.read(dest / "audio" / stereo.name)
    spectrum = np.abs(np.fft.rfft(x))
    assert np.fft.rfftfreq(len(x), 1 / rate)[spectrum.argmax()] == pytest.approx(440, abs=2)
    assert np.sqrt(np.mean(x**2)) == pytest.approx(np.sqrt(np.mean((left * 0.75) ** 2)), rel=0.1)
    assert load_dataset("esc50", dest).labels == ["dog", "rain"]


# --- the window chosen from the clips ------------------------------------------------------------


def test_window_covers_most_clips_in_quarter_seconds_between_half_a_second_and_five():
    assert choose_clip_seconds([5.0] * 300 + [3.64, 5.14]) == 5.0  # ESC-50: 5 s recordings
    assert choose_clip_seconds([4.0] * 100) == 4.0
    assert choose_clip_seconds([4.01] * 100) == 4.25
    assert choose_clip_seconds([30.0] * 10) == 5.0  # long recordings: read in 5 s windows
    assert choose_clip_seconds([0.1] * 10) == 0.75
    # the 95th percentile, not the longest: a few long outliers do not set the window
    assert choose_clip_seconds([0.9] * 96 + [4.9] * 4) == 1.0


def test_short_word_clips_get_a_short_window(tmp_path):
    root = words.generate(tmp_path / "words", clips_per_class=6, seed=0)
    ds = load_dataset("folder", root)
    assert ds.labels == sorted(words.WORDS)
    rates = {sf.info(str(c.path)).samplerate for c in ds.clips}
    durations = [sf.info(str(c.path)).duration for c in ds.clips]
    assert rates == {8000} and max(durations) < 1.0
    decoded = decode_clips(ds.clips, ds.labels, Features(FeatureSettings()))
    chosen = choose_clip_seconds([len(w) / 22050 for w in decoded.waves])
    assert chosen <= 1.0
    assert chosen >= np.percentile(durations, 95)


def test_decoded_split_follows_the_folds_in_data_set_order(tmp_path, layouts):
    root = layouts["esc50"](tmp_path / "esc", ESC_CLASSES, clips_per_fold=2)
    ds = load_dataset("esc50", root)
    decoded = decode_clips(ds.clips, ds.labels, Features(FeatureSettings()))
    train, valid = decoded.split(ds, 3)
    want_train, want_valid = ds.split(3)
    assert train.clips == want_train and valid.clips == want_valid
    assert [ds.labels[t] for t in valid.targets] == [c.label for c in want_valid]
    assert len(train.waves) == len(train.targets) == 24 and len(valid.waves) == 6
    with pytest.raises(DatasetError, match="fold 9 does not exist"):
        decoded.split(ds, 9)
