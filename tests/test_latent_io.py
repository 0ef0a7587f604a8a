"""ctgen.io.latent_io: latent files record the model that wrote them (all formats but .npy), and read back."""

from __future__ import annotations

import json

import numpy as np
import pytest

from ctgen.io.latent_io import LatentModel, load_latents, read_latents, write_latents

MINE = LatentModel("mine", "1a2b" * 16)
OTHER = LatentModel("default", "9f8e" * 16)


@pytest.mark.parametrize("suffix", [".npz", ".csv", ".jsonl"])
def test_every_format_but_npy_records_the_model(tmp_path, suffix):
    mu = np.arange(6, dtype=np.float32).reshape(2, 3) / 7
    path = tmp_path / f"latents{suffix}"
    write_latents(path, ["a.dcm", "b.dcm"], mu, None, force=False, model=MINE, warnings=[(), ("no brain",)])
    read = load_latents(str(path))
    np.testing.assert_array_equal(read.vectors, mu)
    assert read.models == (MINE,)
    assert read.foreign(MINE) is None and read.foreign(OTHER) == MINE
    assert read.foreign(LatentModel("renamed", MINE.encoder_sha256)) is None  # the encoder's bytes decide


def test_the_records_as_written(tmp_path):
    mu = np.zeros((1, 2), np.float32)
    write_latents(tmp_path / "z.csv", ["a.dcm"], mu, None, force=False, model=MINE)
    assert (tmp_path / "z.csv").read_text().splitlines() == ["file,mu_0,mu_1,model,encoder_sha256",
                                                             f"a.dcm,0.0,0.0,mine,{MINE.encoder_sha256}"]
    write_latents(tmp_path / "z.jsonl", ["a.dcm"], mu, None, force=False, model=MINE)
    line = json.loads((tmp_path / "z.jsonl").read_text())
    assert (line["model"], line["encoder_sha256"]) == ("mine", MINE.encoder_sha256)
    write_latents(tmp_path / "z.npz", ["a.dcm"], mu, None, force=False, model=MINE)
    with np.load(tmp_path / "z.npz") as archive:
        assert (str(archive["model"]), str(archive["encoder_sha256"])) == ("mine", MINE.encoder_sha256)
    write_latents(tmp_path / "z.npy", ["a.dcm"], mu, None, force=False, model=MINE)
    assert load_latents(str(tmp_path / "z.npy")).models == ()  # numbers only: numpy's header holds no more


def test_files_without_a_record_read_as_before(tmp_path):
    (tmp_path / "hand.csv").write_text("0.5,1\n2,3\n")
    (tmp_path / "hand.jsonl").write_text('[0.5, 1]\n{"mu": [2, 3]}\n')
    np.savez(tmp_path / "old.npz", files=np.array(["a"]), mu=np.ones((1, 2), np.float32))
    for name in ("hand.csv", "hand.jsonl"):
        read = load_latents(str(tmp_path / name))
        assert read.models == () and read.foreign(OTHER) is None
        np.testing.assert_array_equal(read.vectors, [[0.5, 1], [2, 3]])
    assert load_latents(str(tmp_path / "old.npz")).models == ()
    (tmp_path / "named.csv").write_text("file,a,b\nx.dcm,1,2\n")
    np.testing.assert_array_equal(read_latents(str(tmp_path / "named.csv")), [[1, 2]])


def test_an_earlier_npz_names_its_model_without_a_checksum(tmp_path):
    np.savez(tmp_path / "old.npz", files=np.array(["a"]), mu=np.ones((1, 2), np.float32), model=np.array("mine"))
    read = load_latents(str(tmp_path / "old.npz"))
    assert read.models == (LatentModel("mine"),)
    assert read.foreign(MINE) is None and read.foreign(OTHER) == LatentModel("mine")


def test_json_lines_of_several_models(tmp_path):
    lines = [json.dumps({"mu": [1, 2], **model.record()}) for model in (MINE, MINE, OTHER)] + ["[3, 4]"]
    (tmp_path / "mixed.jsonl").write_text("\n".join(lines) + "\n")
    read = load_latents(str(tmp_path / "mixed.jsonl"))
    assert read.models == (MINE, OTHER) and read.foreign(MINE) == OTHER and len(read.vectors) == 4


def test_the_explorers_json_export_reads_with_its_model(tmp_path):
    export = {"model": "mine", "encoder_sha256": MINE.encoder_sha256, "latent_size": 3, "z": [0.5, 1, 2],
              "ctgen": "0"}
    (tmp_path / "ctgen-explore.json").write_text(json.dumps(export, indent=1) + "\n")
    read = load_latents(str(tmp_path / "ctgen-explore.json"))
    np.testing.assert_array_equal(read.vectors, [[0.5, 1, 2]])
    assert read.models == (MINE,)
