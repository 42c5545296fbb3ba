"""Corpus adapters on the real RAVDESS and on tiny IEMOCAP / manifest fixtures; fold plans."""

import collections
import json
from pathlib import Path

import pytest
from data_support import RAVDESS_SONG
from data_support import RAVDESS_SPEECH as RAVDESS
from data_support import needs_speech as needs_ravdess

from preprocessing.corpora import (
    RAVDESS_EMOTIONS,
    Rejected,
    Utterance,
    assign_folds,
    fold_summary,
    iemocap,
    items,
    manifest,
    partition,
    ravdess,
)

needs_song = pytest.mark.skipif(
    not (RAVDESS.is_dir() and RAVDESS_SONG.is_dir()),
    reason=f"RAVDESS speech and song not both at {RAVDESS.parent} (see its README.md)",
)


# ---------------------------------------------------------------------------------------------
# RAVDESS


@pytest.fixture(scope="module")
def ravdess_4class():
    utterances, rejected = partition(ravdess(RAVDESS))
    assert rejected == []
    return utterances


@needs_ravdess
def test_ravdess_default_four_classes(ravdess_4class):
    assert len(ravdess_4class) == 672
    assert collections.Counter(u.label_name for u in ravdess_4class) == {
        "neutral": 96,
        "happy": 192,
        "sad": 192,
        "angry": 192,
    }
    assert len({u.utterance_id for u in ravdess_4class}) == 672
    first = ravdess_4class[0]
    assert first == Utterance(
        utterance_id="03-01-01-01-01-01-01",
        audio_path=str(RAVDESS / "Actor_01" / "03-01-01-01-01-01-01.flac"),
        speaker="Actor_01",
        label_name="neutral",
        transcript="Kids are talking by the door",
        gender="M",
        channel="speech",
    )
    by_id = {u.utterance_id: u for u in ravdess_4class}
    dogs = by_id["03-01-05-02-02-01-24"]
    assert (dogs.label_name, dogs.transcript, dogs.speaker, dogs.gender) == (
        "angry",
        "Dogs are sitting by the door",
        "Actor_24",
        "F",
    )
    assert collections.Counter(u.transcript for u in ravdess_4class) == {
        "Kids are talking by the door": 336,
        "Dogs are sitting by the door": 336,
    }
    assert collections.Counter(u.gender for u in ravdess_4class) == {"M": 336, "F": 336}


@needs_ravdess
def test_ravdess_all_eight_emotions():
    utterances, rejected = partition(ravdess(RAVDESS, classes=list(RAVDESS_EMOTIONS.values())))
    assert (len(utterances), len(rejected)) == (1440, 0)
    expected = {name: 192 for name in RAVDESS_EMOTIONS.values()}
    expected["neutral"] = 96
    assert collections.Counter(u.label_name for u in utterances) == expected
    assert len({u.speaker for u in utterances}) == 24


@needs_ravdess
def test_ravdess_selected_classes_only():
    utterances, _ = partition(ravdess(RAVDESS, classes=("calm", "fearful")))
    assert collections.Counter(u.label_name for u in utterances) == {"calm": 192, "fearful": 192}


def test_ravdess_unknown_class_lists_valid_ones(tmp_path):
    with pytest.raises(
        ValueError,
        match=r"unknown class names \['joy'\] \(valid: neutral, "
        r"calm, happy, sad, angry, fearful, disgust, surprised\)",
    ):
        ravdess(tmp_path, classes=("happy", "joy"))  # raised on the call, before iterating


def test_ravdess_no_actor_directories(tmp_path):
    with pytest.raises(ValueError, match="no Actor_XX directories"):
        ravdess(tmp_path)


def test_ravdess_badly_named_files_are_rejected(tmp_path):
    actor = tmp_path / "Actor_01"
    actor.mkdir()
    names = [
        "03-01-05-01-01-01-01.wav",  # fine: angry
        "03-01-02-01-01-01-01.wav",  # fine but calm: not asked for, skipped silently
        "03-01-05-01-01-01-02.wav",  # actor 02 in Actor_01
        "03-02-05-01-01-01-01.wav",  # song: not asked for (channels=speech), skipped
        "03-03-05-01-01-01-01.wav",  # no vocal channel 03
        "03-01-09-01-01-01-01.wav",  # no emotion 09
        "03-01-05-01-01-01-01.mp3",  # extension
        "notes.txt",
        ".DS_Store",
    ]  # hidden: ignored
    for name in names:
        (actor / name).write_bytes(b"")
    (actor / "nested").mkdir()
    (tmp_path / "README.txt").write_text("outside the actor directories: not corpus files")
    items = list(ravdess(tmp_path))
    utterances, rejected = partition(items)
    assert [u.utterance_id for u in utterances] == ["03-01-05-01-01-01-01"]
    assert all(r.stage == "corpus" for r in rejected)
    reasons = {Path(r.path).name: r.reason for r in rejected}
    assert sorted(reasons) == sorted(
        [
            "03-01-05-01-01-01-02.wav",
            "03-03-05-01-01-01-01.wav",
            "03-01-09-01-01-01-01.wav",
            "03-01-05-01-01-01-01.mp3",
            "notes.txt",
            "nested",
        ]
    )
    assert reasons["03-01-05-01-01-01-02.wav"] == "actor 02 in the name but in directory Actor_01"
    assert reasons["notes.txt"].startswith("name does not match 03-CC-EE-II-SS-RR-AA")
    assert {r.utterance_id for r in rejected} >= {"notes", "03-03-05-01-01-01-01"}
    # The same tree read for song: the song file is the only utterance.
    song, _ = partition(ravdess(tmp_path, channels="song"))
    assert [(u.utterance_id, u.channel) for u in song] == [("03-02-05-01-01-01-01", "song")]


def test_ravdess_channels_one_tree_or_several(tmp_path):
    for root, channel in ((tmp_path / "speech", "01"), (tmp_path / "song", "02")):
        (root / "Actor_02").mkdir(parents=True)
        (root / "Actor_02" / f"03-{channel}-04-01-02-01-02.flac").write_bytes(b"")
    both, rejected = partition(
        ravdess([tmp_path / "speech", tmp_path / "song"], channels="speech,song")
    )
    assert rejected == []
    assert [
        (u.utterance_id, u.channel, u.speaker, u.label_name, u.transcript, u.gender) for u in both
    ] == [
        ("03-01-04-01-02-01-02", "speech", "Actor_02", "sad", "Dogs are sitting by the door", "F"),
        ("03-02-04-01-02-01-02", "song", "Actor_02", "sad", "Dogs are sitting by the door", "F"),
    ]
    # The same directory twice: its files once, the repeats rejected.
    _, rejected = partition(ravdess([tmp_path / "song", tmp_path / "song"], channels="song"))
    assert [r.reason.startswith("the same recording was already read from") for r in rejected] == [
        True
    ]
    with pytest.raises(ValueError, match=r"unknown channel\(s\) \['choir'\]"):
        ravdess(tmp_path / "song", channels="song,choir")
    with pytest.raises(ValueError, match="only ravdess has channels"):
        items("iemocap", tmp_path, channels="song")


# ---------------------------------------------------------------------------------------------
# IEMOCAP

IEMOCAP_LABELS = {
    ("Session1", "Ses01F_impro01"): [
        ("6.2901 - 8.2357", "Ses01F_impro01_F000", "neu"),
        ("10.0100 - 11.3925", "Ses01F_impro01_F001", "xxx"),
        ("14.8872 - 18.0175", "Ses01F_impro01_M000", "exc"),
        ("19.2900 - 20.7875", "Ses01F_impro01_M001", "fru"),
    ],
    ("Session2", "Ses02M_script01_1"): [
        ("1.0000 - 2.5000", "Ses02M_script01_1_F000", "ang"),
        ("3.0000 - 4.2500", "Ses02M_script01_1_M000", "sad"),
        ("5.0000 - 7.0000", "Ses02M_script01_1_M001", "hap"),
        ("8.0000 - 9.0000", "Ses02M_script01_1_M002", "zzz"),
    ],
}
IEMOCAP_TRANSCRIPTS = {
    "Ses01F_impro01_F000": "Excuse me.",
    "Ses01F_impro01_F001": "Do you have your forms?",
    "Ses01F_impro01_M000": "Yeah.",
    "Ses01F_impro01_M001": "Let me see them.",
    "Ses02M_script01_1_F000": "What did you do that for?",
    "Ses02M_script01_1_M000": "I'm sorry.",
    # Ses02M_script01_1_M001 has no transcript line.
}


@pytest.fixture
def iemocap_tree(tmp_path):
    for (session, dialog), turns in IEMOCAP_LABELS.items():
        evaluation = tmp_path / session / "dialog" / "EmoEvaluation"
        (evaluation / "Categorical").mkdir(parents=True)  # real releases have sub-directories
        lines = ["% [START_TIME - END_TIME] TURN_NAME EMOTION [V, A, D]", ""]
        for span, utt, code in turns:
            lines += [
                f"[{span}]\t{utt}\t{code}\t[2.5000, 2.5000, 2.5000]",
                "C-E2:\tNeutral;\t()",
                "C-E3:\tNeutral;\t()",
                "A-E3:\tval 3; act 2; dom  2;\t()",
                "",
            ]
        (evaluation / f"{dialog}.txt").write_text("\n".join(lines) + "\n")
        transcriptions = tmp_path / session / "dialog" / "transcriptions"
        transcriptions.mkdir(parents=True)
        text = [
            f"{utt} [{float(span.split(' - ')[0]):08.4f}-{float(span.split(' - ')[1]):08.4f}]: "
            f"{IEMOCAP_TRANSCRIPTS[utt]}"
            for span, utt, _ in turns
            if utt in IEMOCAP_TRANSCRIPTS
        ]
        text.append(f"{dialog}_MXX0 [020.0000-021.0000]: [LAUGHTER]")  # unlabelled turn
        (transcriptions / f"{dialog}.txt").write_text("\r\n".join(text) + "\r\n")
        wav = tmp_path / session / "sentences" / "wav" / dialog
        wav.mkdir(parents=True)
        for _, utt, _ in turns:
            (wav / f"{utt}.wav").write_bytes(b"")
    aligned = tmp_path / "Session1" / "sentences" / "ForcedAlignment" / "Ses01F_impro01"
    aligned.mkdir(parents=True)
    (aligned / "Ses01F_impro01_F000.wdseg").write_text("SFrm EFrm SegAScr Word\n")
    return tmp_path


def test_iemocap_default_classes(iemocap_tree):
    utterances, rejected = partition(iemocap(iemocap_tree))
    assert [(u.utterance_id, u.label_name) for u in utterances] == [
        ("Ses01F_impro01_F000", "neutral"),
        ("Ses01F_impro01_M000", "happy"),  # exc merged into happy; xxx and fru left out
        ("Ses02M_script01_1_F000", "angry"),
        ("Ses02M_script01_1_M000", "sad"),
        ("Ses02M_script01_1_M001", "happy"),
    ]
    first = utterances[0]
    assert first == Utterance(
        utterance_id="Ses01F_impro01_F000",
        audio_path=str(
            iemocap_tree
            / "Session1"
            / "sentences"
            / "wav"
            / "Ses01F_impro01"
            / "Ses01F_impro01_F000.wav"
        ),
        speaker="Ses01_F",
        label_name="neutral",
        transcript="Excuse me.",
        alignment_path=str(
            iemocap_tree / "Session1/sentences/ForcedAlignment/Ses01F_impro01/"
            "Ses01F_impro01_F000.wdseg"
        ),
        alignment_format="wdseg",
        group="Session1",
        gender="F",
    )
    assert Path(first.audio_path).is_file()
    # A male speaker in a dialog recorded in a female-led session, and vice versa.
    assert [u.speaker for u in utterances] == [
        "Ses01_F",
        "Ses01_M",
        "Ses02_F",
        "Ses02_M",
        "Ses02_M",
    ]
    assert [u.group for u in utterances] == ["Session1"] * 2 + ["Session2"] * 3
    assert utterances[1].alignment_path is None and utterances[1].alignment_format is None
    assert [u.transcript for u in utterances[2:]] == [
        "What did you do that for?",
        "I'm sorry.",
        None,
    ]
    assert rejected == [
        Rejected(
            "Ses02M_script01_1_M002",
            str(iemocap_tree / "Session2/dialog/EmoEvaluation/Ses02M_script01_1.txt"),
            "corpus",
            "unknown emotion code 'zzz'",
        )
    ]


def test_iemocap_without_merging_and_other_classes(iemocap_tree):
    utterances, _ = partition(
        iemocap(iemocap_tree, classes=("happy", "excited", "frustrated"), merge_excited=False)
    )
    assert [(u.utterance_id, u.label_name) for u in utterances] == [
        ("Ses01F_impro01_M000", "excited"),
        ("Ses01F_impro01_M001", "frustrated"),
        ("Ses02M_script01_1_M001", "happy"),
    ]
    with pytest.raises(ValueError, match="'excited' is merged into 'happy'"):
        iemocap(iemocap_tree, classes=("happy", "excited"))
    with pytest.raises(ValueError, match=r"unknown class names \['calm'\]"):
        iemocap(iemocap_tree, classes=("happy", "calm"))
    with pytest.raises(ValueError, match="no SessionN directories"):
        iemocap(iemocap_tree / "Session1")


def test_iemocap_folds_one_session_each(iemocap_tree):
    utterances, _ = partition(iemocap(iemocap_tree))
    assert assign_folds(utterances, num_folds=2, by="group") == {
        "Ses01_F": 0,
        "Ses01_M": 0,
        "Ses02_F": 1,
        "Ses02_M": 1,
    }
    with pytest.raises(ValueError, match="num_folds=3 but only 2 groups"):
        assign_folds(utterances, num_folds=3, by="group")


# ---------------------------------------------------------------------------------------------
# Manifests


def test_manifest_csv(tmp_path):
    audio = tmp_path / "audio"
    audio.mkdir()
    (tmp_path / "m.csv").write_text(
        "path,label,speaker,transcript,textgrid\n"
        "audio/a.wav,angry,spk1,Hello there,align/a.TextGrid\n"
        f"{audio / 'b.flac'},Happy,spk2,,\n"
        "other/a.wav,sad,,Again,\n"
        "audio/c.wav,surprised,spk1,Oh,\n"
        "audio/d.wav,,spk1,,\n"
    )
    items = list(manifest(tmp_path / "m.csv", classes=("angry", "happy", "neutral", "sad")))
    utterances, rejected = partition(items)
    assert utterances == [
        Utterance(
            "a",
            str(tmp_path / "audio/a.wav"),
            "spk1",
            "angry",
            "Hello there",
            alignment_path=str(tmp_path / "align/a.TextGrid"),
            alignment_format="textgrid",
        ),
        Utterance("b", str(audio / "b.flac"), "spk2", "happy", None),
        Utterance("a-2", str(tmp_path / "other/a.wav"), "a-2", "sad", "Again"),  # own speaker
    ]
    assert rejected == [
        Rejected(
            "c",
            str(tmp_path / "audio/c.wav"),
            "corpus",
            "unknown label 'surprised' (classes: angry, happy, neutral, sad) "
            f"({tmp_path / 'm.csv'}:5)",
        ),
        Rejected(
            "d", str(tmp_path / "audio/d.wav"), "corpus", f"missing label ({tmp_path / 'm.csv'}:6)"
        ),
    ]
    # Without classes every label is accepted.
    labels = [u.label_name for u in partition(manifest(tmp_path / "m.csv"))[0]]
    assert labels == ["angry", "happy", "sad", "surprised"]


def test_manifest_csv_without_required_column(tmp_path):
    (tmp_path / "m.csv").write_text("file,label\nx.wav,sad\n")
    with pytest.raises(ValueError, match=r"header lacks column\(s\) \['path'\]"):
        manifest(tmp_path / "m.csv")  # raised on the call, before iterating
    (tmp_path / "m.txt").write_text("")
    with pytest.raises(ValueError, match="must be .csv or .jsonl"):
        manifest(tmp_path / "m.txt")
    with pytest.raises(ValueError, match="manifest not found"):
        manifest(tmp_path / "missing.jsonl")
    (tmp_path / "spaced.csv").write_text("path , label\nx.wav , sad\n")  # names and values stripped
    assert list(manifest(tmp_path / "spaced.csv")) == [
        Utterance("x", str(tmp_path / "x.wav"), "x", "sad", None)
    ]


def test_manifest_jsonl(tmp_path):
    rows = [
        {"path": "x/one.wav", "label": "neutral", "speaker": "s1", "transcript": "Hi."},
        {"path": "/abs/two.wav", "label": "joy", "speaker": "s2"},
        {"label": "sad"},
        {"path": "three.wav", "label": "sad", "gender": "F", "group": "day1"},
    ]
    lines = (
        [json.dumps(r) for r in rows[:2]]
        + ["", "{not json", '"a string"']
        + [json.dumps(r) for r in rows[2:]]
    )
    path = tmp_path / "sub" / "m.jsonl"
    path.parent.mkdir()
    path.write_text("\n".join(lines) + "\n")
    utterances, rejected = partition(manifest(path, classes=["neutral", "sad"]))
    assert utterances == [
        Utterance("one", str(tmp_path / "sub/x/one.wav"), "s1", "neutral", "Hi."),
        Utterance(
            "three", str(tmp_path / "sub/three.wav"), "three", "sad", None, group="day1", gender="F"
        ),
    ]
    assert [(r.utterance_id, r.reason.split(" (")[0]) for r in rejected] == [
        ("two", "unknown label 'joy'"),
        (f"{path}:4", "not valid JSON"),
        (f"{path}:5", "not a JSON object"),
        (f"{path}:6", "missing path"),
    ]
    assert rejected[0].reason == f"unknown label 'joy' (classes: neutral, sad) ({path}:2)"


# ---------------------------------------------------------------------------------------------
# Folds


@needs_ravdess
def test_ravdess_folds_speaker_independent_and_gender_balanced(ravdess_4class):
    folds = assign_folds(ravdess_4class, num_folds=5)
    assert sorted(folds) == [f"Actor_{i:02d}" for i in range(1, 25)]  # each speaker exactly once
    members = collections.defaultdict(list)
    for speaker, fold in folds.items():
        members[fold].append(speaker)
    # Deterministic plan: actor n goes to fold (n - 1) mod 5.
    assert {f: sorted(s) for f, s in members.items()} == {
        f: [f"Actor_{i:02d}" for i in range(f + 1, 25, 5)] for f in range(5)
    }
    for fold, speakers in members.items():
        genders = collections.Counter("M" if int(s[-2:]) % 2 else "F" for s in speakers)
        assert genders["M"] >= 2 and genders["F"] >= 2, (fold, speakers)
    summary = fold_summary(ravdess_4class, folds)
    for entry in summary:
        print(entry["fold"], entry["speakers"], entry["utterances"], entry["labels"])
    # 28 four-class utterances per actor: 24 actors over 5 folds is 5,5,5,5,4 actors.
    assert [e["utterances"] for e in summary] == [140, 140, 140, 140, 112]
    assert summary[4]["labels"] == {"angry": 32, "happy": 32, "neutral": 16, "sad": 32}
    assert assign_folds(ravdess_4class, num_folds=5) == folds  # deterministic
    shuffled = assign_folds(ravdess_4class, num_folds=5, seed=3)
    assert shuffled != folds
    assert sorted(collections.Counter(shuffled.values()).values()) == [4, 5, 5, 5, 5]
    assert len(set(assign_folds(ravdess_4class, num_folds=24).values())) == 24


@needs_song
def test_ravdess_song_four_class_subset():
    song, rejected = partition(ravdess(RAVDESS_SONG, channels="song"))
    assert rejected == []
    assert len(song) == 644  # ../shared/data/README.md
    assert collections.Counter(u.label_name for u in song) == {
        "neutral": 92,
        "happy": 184,
        "sad": 184,
        "angry": 184,
    }
    speakers = {u.speaker for u in song}
    assert len(speakers) == 23 and "Actor_18" not in speakers
    assert {u.channel for u in song} == {"song"}
    assert all(u.utterance_id.split("-")[1] == "02" for u in song)
    assert collections.Counter(u.transcript for u in song) == {
        "Kids are talking by the door": 322,
        "Dogs are sitting by the door": 322,
    }


@needs_song
def test_ravdess_speech_and_song_folds_keep_each_actor_together(ravdess_4class):
    speech_plan = assign_folds(ravdess_4class, num_folds=5)
    # Today's speech-only plan, unchanged: actor n in fold (n - 1) mod 5.
    assert speech_plan == {f"Actor_{i:02d}": (i - 1) % 5 for i in range(1, 25)}
    both, rejected = partition(ravdess([RAVDESS, RAVDESS_SONG], channels=("speech", "song")))
    assert rejected == [] and len(both) == 672 + 644
    assert len({u.utterance_id for u in both}) == len(both)  # ids unique across channels
    plan = assign_folds(both, num_folds=5)
    # Folds are by actor: an actor's speech and song share one fold, the speech-only one.
    assert plan == speech_plan
    fold_of = collections.defaultdict(set)
    for u in both:
        fold_of[u.speaker].add(plan[u.speaker])
    assert all(len(folds) == 1 for folds in fold_of.values())
    summary = fold_summary(both, plan)
    assert [e["channels"] for e in summary] == [
        {"song": 140, "speech": 140},
        {"song": 140, "speech": 140},
        {"song": 112, "speech": 140},  # fold 2 holds Actor_18, who recorded no song
        {"song": 140, "speech": 140},
        {"song": 112, "speech": 112},
    ]
    # Song alone is dealt on its own counts; still one fold per actor.
    song_plan = assign_folds([u for u in both if u.channel == "song"], num_folds=5)
    assert sorted(song_plan) == sorted({u.speaker for u in both if u.channel == "song"})


def test_folds_size_speakers_by_speech_only():
    # Song never moves a speaker: with it, the plan is the speech-only plan.
    speech = [
        Utterance(f"{s}{i}", "x.wav", s, "sad", None, channel="speech")
        for s, n in {"ann": 3, "bob": 2, "cid": 2}.items()
        for i in range(n)
    ]
    song = [
        Utterance(f"{s}-song{i}", "x.wav", s, "sad", None, channel="song")
        for s, n in {"bob": 9, "cid": 9, "dan": 1}.items()
        for i in range(n)
    ]
    # ann | bob, cid: a speaker with song only (dan) goes to the lighter fold, 0.
    assert assign_folds(speech + song, 2) == {**assign_folds(speech, 2), "dan": 0}


def test_folds_balance_utterance_counts_greedily():
    counts = {"ann": 5, "bob": 4, "cid": 3, "dan": 3, "eve": 1}
    utterances = [
        Utterance(f"{s}{i}", f"{s}{i}.wav", s, "sad", None)
        for s, n in counts.items()
        for i in range(n)
    ]
    folds = assign_folds(utterances + [Rejected("x", "x.wav", "corpus", "bad")], num_folds=2)
    # Largest first to the lightest fold: ann|bob, cid->bob's, dan->ann's, eve->bob's: 8 / 8.
    assert folds == {"ann": 0, "dan": 0, "bob": 1, "cid": 1, "eve": 1}


def test_fold_errors():
    utterances = [Utterance(f"u{i}", f"u{i}.wav", f"s{i % 3}", "sad", None) for i in range(6)]
    with pytest.raises(ValueError, match="num_folds must be >= 2"):
        assign_folds(utterances, num_folds=1)
    with pytest.raises(ValueError, match="num_folds=4 but only 3 speakers"):
        assign_folds(utterances, num_folds=4)
    with pytest.raises(ValueError, match="has no group"):
        assign_folds(utterances, num_folds=2, by="group")
    with pytest.raises(ValueError, match="by must be"):
        assign_folds(utterances, by="gender")
    with pytest.raises(ValueError, match="no utterances"):
        assign_folds([])
    split = [
        Utterance("a", "a.wav", "s", "sad", None, group="g1"),
        Utterance("b", "b.wav", "s", "sad", None, group="g2"),
        Utterance("c", "c.wav", "t", "sad", None, group="g2"),
    ]
    with pytest.raises(ValueError, match="speaker s is in groups g1 and g2"):
        assign_folds(split, num_folds=2, by="group")
