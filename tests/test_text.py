"""Text datasets, the text pipeline, text networks, dd on text and ``distillbench show`` (issue 4).

Unit tests use the small files in ``tests/fixtures_text`` (written for these tests) and a 4-d GloVe
text file; the ``realdata`` tests read ``../shared/data`` and skip when it is absent.
"""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from distillbench.datasets._text import (
    PAD_ID,
    UNK_ID,
    build_vocab,
    embedding_matrix,
    encode,
    sentence_words,
    tokenize,
)
from distillbench.harness.errors import ConfigError, DataError, IncompatibleError
from distillbench.harness.plugins import DATASETS
from tests.conftest import needs_shared_data, temp_plugin

torch.set_num_threads(1)

FIXTURES = Path(__file__).parent / "fixtures_text"
GLOVE = FIXTURES / "glove.txt"


def load(spec: str, root: Path = FIXTURES):
    """Load a configured dataset from ``root``."""
    configured = DATASETS.resolve(spec)
    return configured.obj(configured.params).load(root)


def fixture_spec(name: str, **extra: object) -> str:
    """A small configuration of ``name`` using the 4-d fixture GloVe file."""
    options = {"vocab_size": 50, "max_len": 6, "embeddings": str(GLOVE), **extra}
    return f"{name}[{','.join(f'{k}={v}' for k, v in options.items())}]"


class TestTokenizerAndVocabulary:
    """The documented tokenizer, vocabulary and sequence rules."""

    def test_tokenizer_lowercases_splits_clitics_and_drops_punctuation(self):
        assert tokenize("He's here -- don't GO, 21st!") == ["he", "'s", "here", "don", "'t", "go", "21st"]
        assert tokenize("It ’s 'quoted'") == ["it", "'s", "quoted"]

    def test_vocab_specials_frequency_then_first_appearance(self):
        vocab = build_vocab([["b", "a", "c"], ["a", "c", "d"]], vocab_size=5)
        assert vocab == ("<pad>", "<unk>", "a", "c", "b")  # a, c twice; b before d by first appearance

    def test_vocab_size_below_specials_is_config_error(self):
        with pytest.raises(ConfigError, match="vocab_size"):
            build_vocab([["a"]], vocab_size=1)
        with pytest.raises(ConfigError, match="vocab_size"):
            DATASETS.resolve("sst2[vocab_size=1]")

    def test_encode_truncates_and_pads_at_the_end_with_unk(self):
        vocab = ("<pad>", "<unk>", "a", "b")
        ids = encode([["a", "zzz"], ["b", "a", "b", "a"]], vocab, 3)
        assert ids.dtype == torch.int64
        assert ids.tolist() == [[2, UNK_ID, PAD_ID], [3, 2, 3]]

    def test_embedding_matrix_pad_zero_missing_words_seeded(self):
        vocab = ("<pad>", "<unk>", "great", "notinglove")
        matrix, meta = embedding_matrix(vocab, str(GLOVE))
        again, _ = embedding_matrix(vocab, str(GLOVE))
        assert matrix.shape == (4, 4) and meta["words_without_vector"] == 1
        assert torch.equal(matrix[0], torch.zeros(4))
        assert torch.allclose(matrix[2], torch.tensor([1.0, 0.9, 0.0, 0.0]))
        assert torch.equal(matrix, again) and float(matrix[3].abs().max()) <= 0.25


class TestTextDatasets:
    """Parsing the canonical layouts of the fixture copies."""

    def test_sst5_root_labels_and_ptb_tokens(self):
        data = load(fixture_spec("sst5"))
        assert data.info.modality == "text" and data.info.num_classes == 5 and data.info.shape == (6,)
        assert data.train.y.tolist() == [4, 0, 2, 3, 1, 4, 0] and len(data.val) == 2 and len(data.test) == 3
        assert data.train.x.shape == (7, 6) and data.train.x.dtype == torch.int64
        assert "bad" in data.info.vocab and data.info.embeddings.shape == (len(data.info.vocab), 4)

    def test_sst2_drops_neutral_and_maps_labels(self):
        data = load(fixture_spec("sst2"))
        assert data.train.y.tolist() == [1, 0, 1, 0, 1, 0]
        assert data.test.y.tolist() == [1, 0]

    def test_mr_split_is_seeded_and_stratified(self):
        first, second = load(fixture_spec("mr")), load(fixture_spec("mr"))
        assert torch.equal(first.test.x, second.test.x) and torch.equal(first.train.x, second.train.x)
        assert first.test.class_counts(2) == [1, 1]  # 10% of 20 sentences, one per class
        assert first.meta["split"]["seed"] == 0 and first.meta["split"]["n_test"] == 2

    def test_trec_coarse_and_fine(self):
        assert load(fixture_spec("trec6")).train.y.tolist() == [1, 2, 3]
        fine = load(fixture_spec("trec50"))
        assert fine.info.num_classes == 50 and fine.info.class_names[int(fine.test.y[0])] == "NUM:date"

    def test_ag_news_test_only_uses_seeded_split(self, tmp_path):
        folder = tmp_path / "ag_news_csv"
        folder.mkdir()
        rows = [f'"{c}","title {i}","words of class {c} number {i}"' for i in range(10) for c in (1, 2, 3, 4)]
        (folder / "test.csv").write_text("\n".join(rows) + "\n")
        data = load(fixture_spec("ag_news"), tmp_path)
        assert data.test.class_counts(4) == [1, 1, 1, 1] and "test.csv" in data.meta["split"]["policy"] + str(
            data.meta["split"]["source"]
        )


def write_imdb(root: Path, per_class: dict[str, int]) -> Path:
    """A tiny fake ``aclImdb/{train,test}/{pos,neg}/*.txt`` tree (the archive's layout) under ``root``."""
    words = {"pos": "a great fun film", "neg": "a bad dull film"}
    for split in ("train", "test"):
        for cls in ("neg", "pos"):
            folder = root / "aclImdb" / split / cls
            folder.mkdir(parents=True)
            for i in range(per_class[split]):
                (folder / f"{i}_{7 if cls == 'pos' else 2}.txt").write_text(f"{words[cls]}<br />review {i}.")
    return root / "aclImdb"


class TestIMDB:
    """The IMDB loader on a fake tree; its download path is wired to the checked download, never run."""

    def test_reads_official_splits_labels_and_br_tags(self, tmp_path):
        write_imdb(tmp_path, {"train": 10, "test": 3})
        data = load(fixture_spec("imdb", max_len=8), tmp_path)
        assert data.info.num_classes == 2 and data.info.shape == (8,)
        assert len(data.train) + len(data.val) == 20 and len(data.test) == 6
        assert data.test.y.tolist() == [0, 0, 0, 1, 1, 1]  # neg = 0, pos = 1, files in sorted order
        assert data.val.class_counts(2) == [1, 1]  # validation: a stratified 10% of train
        assert data.meta["split"]["policy"] == "official train / test"
        assert "br" not in data.info.vocab and "great" in data.info.vocab  # <br /> is a line break, not words

    def test_default_max_len_is_the_paper_code_maxlen(self):
        configured = DATASETS.resolve("imdb")
        assert configured.obj(configured.params).info().shape == (400,)

    def test_missing_tree_names_path_and_address(self, tmp_path):
        with pytest.raises(DataError, match=r"aclImdb.*ai\.stanford\.edu/~amaas/data/sentiment/aclImdb_v1\.tar\.gz"):
            load(fixture_spec("imdb"), tmp_path)

    def test_download_is_checksummed_then_extracted(self, tmp_path, monkeypatch):
        """prepare(download=True) fetches the recorded address through the md5-checked download and extracts it.

        The network is replaced by a local archive; with the real md5 recorded, that archive is rejected.
        """
        import tarfile

        from distillbench.datasets import _files, text

        source = tmp_path / "src"
        write_imdb(source, {"train": 10, "test": 2})
        archive = tmp_path / "aclImdb_v1.tar.gz"
        with tarfile.open(archive, "w:gz") as tar:
            tar.add(source / "aclImdb", arcname="aclImdb")
        fetched: list[str] = []

        def fake_fetch(url: str, dest: Path, *, timeout: float = 60.0) -> None:
            fetched.append(url)
            shutil.copyfile(archive, dest)

        monkeypatch.setattr(_files, "fetch_url", fake_fetch)
        configured = DATASETS.resolve(fixture_spec("imdb"))
        dataset = configured.obj(configured.params)
        recorded = text.REMOTE["imdb"]
        assert recorded["md5"] == "7c2ac02c03563afcf9b574c7e56c153a"

        root = tmp_path / "root"
        with pytest.raises(DataError, match="md5 mismatch"):  # the fake archive is not the official one
            dataset.prepare(root, download=True)
        assert fetched == [recorded["url"]] and not (root / "aclImdb_v1.tar.gz").exists()

        monkeypatch.setitem(text.REMOTE, "imdb", {**recorded, "md5": _files.md5sum(archive)})
        dataset.prepare(root, download=True)
        assert len(fetched) == 2 and (root / "aclImdb" / "test" / "pos" / "1_7.txt").is_file()
        assert len(dataset.load(root).test) == 4


class TestBadInput:
    """Malformed files, empty splits and bad embeddings fail with the file and line named."""

    def test_bad_ptb_tree_names_file_and_line(self, tmp_path):
        shutil.copytree(FIXTURES / "sst", tmp_path / "sst")
        (tmp_path / "sst" / "trees" / "dev.txt").write_text("(3 (2 good) (2 fun))\nnot a tree\n")
        with pytest.raises(DataError, match=r"dev\.txt, line 2"):
            load(fixture_spec("sst2"), tmp_path)

    def test_bad_trec_line_names_file_and_line(self, tmp_path):
        (tmp_path / "trec").mkdir()
        (tmp_path / "trec" / "train_5500.label").write_text("HUM:ind Who ?\nno label here\n")
        (tmp_path / "trec" / "TREC_10.label").write_text("HUM:ind Who ?\n")
        with pytest.raises(DataError, match=r"train_5500\.label, line 2"):
            load(fixture_spec("trec6"), tmp_path)

    def test_empty_split_is_data_error(self, tmp_path):
        """The message names the split and the file it was read from, on one line."""
        shutil.copytree(FIXTURES / "sst", tmp_path / "sst")
        (tmp_path / "sst" / "trees" / "test.txt").write_text("")
        with pytest.raises(DataError, match=r"test split read from \S*test\.txt is empty") as info:
            load(fixture_spec("sst2"), tmp_path)
        assert "\n" not in str(info.value)

    def test_split_with_only_dropped_labels_is_empty(self, tmp_path):
        """SST-2 drops neutral sentences; a dev file of only neutral ones is an empty validation split."""
        shutil.copytree(FIXTURES / "sst", tmp_path / "sst")
        (tmp_path / "sst" / "trees" / "dev.txt").write_text("(2 (2 it) (2 is))\n")
        with pytest.raises(DataError, match=r"validation split read from \S*dev\.txt is empty"):
            load(fixture_spec("sst2"), tmp_path)

    def test_empty_imdb_split_names_the_folder(self, tmp_path):
        write_imdb(tmp_path, {"train": 0, "test": 2})
        with pytest.raises(DataError, match=r"train split read from \S*aclImdb/train/\{neg,pos\}/\*\.txt is empty"):
            load(fixture_spec("imdb"), tmp_path)

    def test_bad_ag_news_row_names_file_and_line(self, tmp_path):
        (tmp_path / "ag_news_csv").mkdir()
        (tmp_path / "ag_news_csv" / "test.csv").write_text('"3","t","d"\n"9","t","d"\n')
        with pytest.raises(DataError, match=r"test\.csv, line 2: expected") as info:
            load(fixture_spec("ag_news"), tmp_path)
        assert "\n" not in str(info.value)

    def test_missing_files_name_path_and_address(self, tmp_path):
        with pytest.raises(DataError, match="rt-polarity.neg.*cornell") as info:
            load(fixture_spec("mr"), tmp_path)
        # mr has no recorded checksum, so 'data fetch' would refuse: the hint must not suggest it.
        assert "data fetch" not in str(info.value)

    def test_missing_imdb_suggests_fetch(self, tmp_path):
        """IMDB has a recorded checksum: the missing-files message offers 'distillbench data fetch imdb'."""
        with pytest.raises(DataError, match="data fetch imdb"):
            load(fixture_spec("imdb"), tmp_path)

    def test_glove_inconsistent_dimensions_names_file_and_line(self):
        with pytest.raises(DataError, match=r"glove_bad_dim\.txt, line 2"):
            load(fixture_spec("sst2", embeddings=FIXTURES / "glove_bad_dim.txt"))


class TestTextNetworks:
    """TextCNN, bi-RNN and bi-LSTM take token ids and embedding-space input."""

    @pytest.mark.parametrize("name", ["textcnn", "birnn[hidden=8]", "bilstm[hidden=8]"])
    def test_ids_and_embeddings_give_logits(self, name):
        from distillbench.harness.networks import build_network
        from distillbench.harness.seeding import torch_generator

        data = load(fixture_spec("sst5"))
        net = build_network(name, data.info, torch_generator(0))
        again = build_network(name, data.info, torch_generator(0))
        pairs = zip(net.state_dict().values(), again.state_dict().values(), strict=True)
        assert all(torch.equal(a, b) for a, b in pairs)
        net.eval()
        ids = data.train.x[:3]
        assert net(ids).shape == (3, 5) and net(torch.randn(2, 6, 4)).shape == (2, 5)
        # Looking up the ids by hand and feeding the embeddings gives the same logits.
        assert torch.allclose(net(ids), net(data.info.embeddings[ids]), atol=1e-6)

    def test_text_network_rejects_image_data(self, digits):
        from distillbench.harness.networks import resolve_network

        with pytest.raises(IncompatibleError, match="text"):
            resolve_network("textcnn").validate(digits.info)


class TestMethodsOnText:
    """random and dd on a text fixture; the protocol and ``show``."""

    def test_random_and_dd_run_under_text_protocols(self, tmp_path, capsys):
        from distillbench.harness.cli import main
        from distillbench.harness.protocols import TEXT_V1
        from distillbench.harness.runner import run_trial
        from distillbench.harness.spec import TrialSpec

        tiny = dataclasses.replace(TEXT_V1, name="tiny-text", epochs=3, n_models=2)
        dataset = fixture_spec("sst2")
        with temp_plugin("protocols", "tiny-text", tiny):
            [row] = run_trial(
                TrialSpec(dataset=dataset, method="random", ipc=2, protocol="tiny-text"),
                device="cpu",
                data_root=FIXTURES,
            )
            assert row["status"] == "ok", row.get("error")
            assert len(row["acc_per_class"]) == 2 and row["n_eval_models"] == 2
            out = tmp_path / "dd.safetensors"
            method = (
                "dd[net=textcnn[filters=4],epochs=2,batch_size=4,distill_steps=1,distill_epochs=2,soft_labels=true]"
            )
            [row] = run_trial(
                TrialSpec(dataset=dataset, method=method, ipc=1, protocol="tiny-text"),
                device="cpu",
                set_path=out,
                data_root=FIXTURES,
            )
            assert row["status"] == "ok", row.get("error")
            assert main(["show", str(out), "--data-root", str(FIXTURES)]) == 0
        [replayed] = run_trial(
            TrialSpec(dataset=dataset, method=method, ipc=1, protocol="dd-replay-v1"), device="cpu", data_root=FIXTURES
        )
        assert replayed["status"] == "ok" and replayed["n_eval_models"] == 1, replayed.get("error")
        lines = capsys.readouterr().out.strip().splitlines()
        assert "embedding space" in lines[0] and len(lines) == 3
        assert len(lines[1].split(": ", 1)[1].split()) == 6  # one nearest word per position

    def test_sentence_words_maps_ids_and_nearest_embeddings(self):
        data = load(fixture_spec("sst2"))
        info = data.info
        great = info.vocab.index("great")
        ids = torch.tensor([[great, PAD_ID]])
        assert sentence_words(ids, info) == [["great", "<pad>"]]
        near = info.embeddings[great] * 3 + 0.01  # same direction, other scale
        words = sentence_words(near.view(1, 1, -1), info)
        assert words == [["great"]]

    def test_dd_on_text_defaults_to_textcnn(self):
        """dd's net=auto is textcnn on text: the same trial as dd[net=textcnn]; an explicit lenet still fails."""
        from distillbench.harness.spec import TrialSpec

        auto = TrialSpec(dataset=fixture_spec("sst2"), method="dd", ipc=10, protocol="text-v1").resolve()
        explicit = TrialSpec(dataset=fixture_spec("sst2"), method="dd[net=textcnn]", ipc=10, protocol="text-v1")
        assert auto.method.params.net == "textcnn" and auto.canonical()["method"]["params"]["net"] == "textcnn"
        assert auto.trial_id == explicit.resolve().trial_id and auto.method.display == "dd"
        with pytest.raises(IncompatibleError, match="lenet"):
            TrialSpec(dataset=fixture_spec("sst2"), method="dd[net=lenet]", ipc=10, protocol="text-v1").resolve()

    def test_dd_auto_network_distils_text(self):
        """Built outside the resolver (net still 'auto'), dd trains a TextCNN on text and records it."""
        data = load(fixture_spec("sst2"))
        dset = distill_dd(data, "dd[epochs=1,batch_size=4,distill_steps=1,distill_epochs=1]")
        assert dset.meta["net"] == "textcnn" and dset.x.shape == (2, 6, 4)


def distill_dd(data, method: str, ipc: int = 1, seed: int = 0):
    """A dd set distilled directly (no runner) on a loaded text bundle."""
    from distillbench.harness.plugins import METHODS
    from distillbench.harness.seeding import torch_generator
    from distillbench.harness.types import Context

    configured = METHODS.resolve(method)
    ctx = Context(device=torch.device("cpu"), generator=torch_generator(seed), seed=seed)
    return configured.obj(configured.params).distill(data, ipc, ctx)


TINY_DD = "dd[net=textcnn[filters=4],epochs=2,batch_size=4,distill_steps=1,distill_epochs=2"


class TestTextProtocol:
    """text-v1 replays sets with learned steps (dd) and trains on every other set (issue 4)."""

    def tiny(self):
        from distillbench.harness.protocols import TEXT_V1

        return dataclasses.replace(TEXT_V1, name="tiny-text", epochs=3, n_models=3)

    def test_text_v1_engine(self):
        """text-v1 picks the engine per set; dd-replay-v1 and convnet-v1 keep theirs."""
        from distillbench.harness.plugins import METHODS
        from distillbench.harness.protocols import CONVNET_V1, DD_REPLAY_V1, TEXT_V1, replays_method, replays_set
        from distillbench.harness.types import DistilledSet

        dd_set = DistilledSet(torch.zeros(2, 6), torch.zeros(2, dtype=torch.long), extras={"lrs": torch.ones(1)})
        real = DistilledSet(torch.zeros(2, 6), torch.zeros(2, dtype=torch.long))
        assert TEXT_V1.engine == "replay_or_train"
        assert replays_set(TEXT_V1, dd_set) and not replays_set(TEXT_V1, real)
        assert replays_set(DD_REPLAY_V1, real) and not replays_set(CONVNET_V1, dd_set)
        assert replays_method(TEXT_V1, METHODS.get("dd")) and not replays_method(TEXT_V1, METHODS.get("random"))

    def test_random_init_dd_set_is_replayed_on_k_fresh_networks(self):
        """Under text-v1 a random-init dd set gives exactly the replay engine's K results, on its own network."""
        from distillbench.harness.evaluate import evaluate
        from distillbench.harness.replay import replay

        data = load(fixture_spec("sst2"))
        dset = distill_dd(data, TINY_DD + ",init=random,soft_labels=true]")
        tiny = self.tiny()
        result = evaluate(tiny, dset, data, seed=3, network="textcnn")
        direct = replay(tiny, dset, data, seed=3)
        assert result.network == "textcnn[filters=4]" and len(result.acc_per_model) == 3
        assert result.acc_per_model == direct.acc_per_model and result.acc_per_class == direct.acc_per_class
        trained = evaluate(dataclasses.replace(tiny, engine="train"), dset, data, seed=3)
        assert trained.network == "textcnn"  # the same set under ordinary training: the protocol's TextCNN

    def test_real_sentences_are_trained(self):
        """A set without learned steps (random real sentences) trains K TextCNNs, as the train engine does."""
        from distillbench.harness.evaluate import evaluate
        from distillbench.harness.types import DistilledSet

        data = load(fixture_spec("sst2"))
        dset = DistilledSet(data.train.x[:4], data.train.y[:4])
        tiny = self.tiny()
        result = evaluate(tiny, dset, data, seed=1)
        trained = evaluate(dataclasses.replace(tiny, engine="train"), dset, data, seed=1)
        assert result.network == "textcnn" and result.acc_per_model == trained.acc_per_model

    def test_partial_learned_steps_fail_clearly(self):
        """A set with only some learned-step extras is not silently trained on: the replay names what is missing."""
        from distillbench.harness.evaluate import evaluate
        from distillbench.harness.types import DistilledSet

        data = load(fixture_spec("sst2"))
        dset = DistilledSet(torch.randn(2, 6, 4), torch.tensor([0, 1]), extras={"lrs": torch.ones(2)})
        with pytest.raises(ConfigError, match="missing step_of_sample"):
            evaluate(self.tiny(), dset, data, seed=0)

    def test_runner_rows_name_the_replayed_network(self):
        """Rows of dd under text-v1 report the set's network and K=1 for a fixed init; random rows the TextCNN."""
        from distillbench.harness.runner import run_trial
        from distillbench.harness.spec import TrialSpec

        dataset = fixture_spec("sst2")
        with temp_plugin("protocols", "tiny-text", self.tiny()):
            [dd_row] = run_trial(
                TrialSpec(dataset=dataset, method=TINY_DD + "]", ipc=1, protocol="tiny-text"),
                device="cpu",
                data_root=FIXTURES,
            )
            [random_row] = run_trial(
                TrialSpec(dataset=dataset, method="random", ipc=1, protocol="tiny-text"),
                device="cpu",
                data_root=FIXTURES,
            )
        assert dd_row["status"] == "ok", dd_row.get("error")
        assert dd_row["eval_network"] == "textcnn[filters=4]" and dd_row["n_eval_models"] == 1
        assert len(dd_row["acc_per_class"]) == 2
        assert random_row["eval_network"] == "textcnn" and random_row["n_eval_models"] == 3


@pytest.mark.realdata
class TestRealText:
    """SST-2 and MR from ../shared/data with the packaged GloVe vectors."""

    @needs_shared_data("sst")
    def test_sst2_counts(self):
        from tests.conftest import SHARED_DATA

        data = load("sst2", SHARED_DATA)
        assert (len(data.train), len(data.val), len(data.test)) == (6920, 872, 1821)
        assert data.info.embeddings.shape == (5000, 50) and data.meta["words_without_vector"] < 50

    @needs_shared_data("rt-polaritydata")
    def test_mr(self):
        from tests.conftest import SHARED_DATA

        data = load("mr", SHARED_DATA)
        assert len(data.train) + len(data.val) + len(data.test) == 10662
        assert data.test.class_counts(2) == [533, 533]
        assert np.isclose(float(data.train.y.float().mean()), 0.5, atol=0.01)
