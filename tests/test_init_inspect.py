"""`spectool init` options and one-line errors; `spectool inspect` verdicts and exit codes."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

from spectool.cli.app import app
from spectool.cli.options import join_list_arguments

runner = CliRunner()


def run(*args: str):
    return runner.invoke(app, join_list_arguments([str(a) for a in args]))


def one_line_error(result) -> str:
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), result.output
    return lines[0]


@pytest.mark.parametrize("kind", ["eagle3", "dflash"])
def test_init_writes_a_valid_checkpoint(tiny_llama, tmp_path, kind):
    out = tmp_path / kind
    result = run("init", "--verifier-name-or-path", tiny_llama, "--speculator-type", kind, "--save-path", out, "--target-layer-ids", "1", "3", "6")
    assert result.exit_code == 0, result.output
    cfg = json.loads((out / "config.json").read_text())
    ids_key = "eagle_aux_hidden_state_layer_ids" if kind == "eagle3" else "aux_hidden_state_layer_ids"
    assert cfg[ids_key] == [1, 3, 6]
    result = run("inspect", out, "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["valid"] and report["speculator_type"] == kind and report["total_parameters"] > 0


@pytest.mark.parametrize(
    "args,message",
    [
        (["--from-pretrained", "X", "--draft-config", "Y"], "exclude each other"),
        (["--from-pretrained", "X", "--num-layers", "2"], "drop --num-layers"),
        (["--draft-config", "Y", "--draft-arch", "qwen3"], "drop --draft-arch"),
        (["--d2t-path", "a.npy"], "go together"),
        (["--norm-before-fc", "--fc-norm"], "exclude each other"),
        (["--target-layer-ids", "2", "8"], "must not include the final layer 8"),
        (["--target-layer-ids", "5", "2"], "strictly ascending"),
        (["--speculator-type", "medusa"], "is not one of eagle3, dflash, peagle"),
        (["--speculator-type", "dflash", "--mask-token-id", "9999"], "outside the verifier vocab"),
        (["--speculator-type", "dflash", "--block-size", "1"], "--block-size must be >= 2"),
        (["--draft-vocab-size", "64", "--token-freq-path", "missing.pt"], "not found"),
        (["--speculator-type", "dflash", "--num-layers", "2", "--sliding-window-indices", "0"], "mix sliding and full"),
    ],
)
def test_init_bad_options_are_one_line_errors(tiny_llama, tmp_path, args, message):
    line = one_line_error(run("init", "--verifier-name-or-path", tiny_llama, "--save-path", tmp_path / "o", *args))
    assert message in line
    assert not (tmp_path / "o" / "model.safetensors").exists()


def test_missing_verifier_is_one_line_error(tmp_path):
    assert "no such directory" in one_line_error(run("init", "--verifier-name-or-path", tmp_path / "nope", "--save-path", tmp_path / "o"))


def test_from_pretrained_config_only_and_draft_config(tiny_llama, tmp_path):
    assert run("init", "--verifier-name-or-path", tiny_llama, "--num-layers", "2", "--save-path", tmp_path / "a").exit_code == 0
    config_only = tmp_path / "config-only"
    config_only.mkdir()
    (config_only / "config.json").write_text((tmp_path / "a" / "config.json").read_text())
    result = run("init", "--verifier-name-or-path", tiny_llama, "--from-pretrained", config_only, "--save-path", tmp_path / "b", "--seed", "1")
    assert result.exit_code == 0, result.output
    a, b = load_file(str(tmp_path / "a" / "model.safetensors")), load_file(str(tmp_path / "b" / "model.safetensors"))
    assert a.keys() == b.keys() and not torch.equal(a["fc.weight"], b["fc.weight"])  # fresh weights, same shapes
    # Fine-tuning start: a checkpoint with weights is loaded as it is.
    result = run("init", "--verifier-name-or-path", tiny_llama, "--from-pretrained", tmp_path / "a", "--save-path", tmp_path / "c")
    assert result.exit_code == 0, result.output
    c = load_file(str(tmp_path / "c" / "model.safetensors"))
    assert all(torch.equal(a[k], c[k]) for k in a)
    # --draft-config accepts a full speculator config (its nested decoder config is used).
    result = run("init", "--verifier-name-or-path", tiny_llama, "--draft-config", tmp_path / "a" / "config.json", "--save-path", tmp_path / "d")
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "d" / "config.json").read_text())["transformer_layer_config"]["num_hidden_layers"] == 2


def test_init_with_reduced_vocab_caches_mapping_by_size(tiny_llama, tmp_path):
    torch.save({i: 500 - i for i in range(300)}, tmp_path / "token_freq.pt")
    result = run("init", "--verifier-name-or-path", tiny_llama, "--draft-vocab-size", "100", "--data-path", tmp_path, "--save-path", tmp_path / "o")
    assert result.exit_code == 0, result.output
    assert len(list(tmp_path.glob("d2t-100-*.npy"))) == 1 and len(list(tmp_path.glob("t2d-100-*.npy"))) == 1
    saved = load_file(str(tmp_path / "o" / "model.safetensors"))
    assert saved["d2t"].shape == (100,) and saved["lm_head.weight"].shape == (100, 64)


@pytest.mark.parametrize("damage", ["missing", "extra", "shape", "dtype"])
def test_inspect_exits_1_on_a_damaged_checkpoint(tiny_llama, tmp_path, damage):
    torch.save({i: 1 for i in range(100)}, tmp_path / "token_freq.pt")
    out = tmp_path / "ckpt"
    assert run("init", "--verifier-name-or-path", tiny_llama, "--draft-vocab-size", "32", "--data-path", tmp_path, "--save-path", out).exit_code == 0
    tensors = load_file(str(out / "model.safetensors"))
    if damage == "missing":
        del tensors["layers.0.hidden_norm.weight"]
    elif damage == "extra":
        tensors["verifier_lm_head.weight"] = torch.zeros(32, 64, dtype=torch.bfloat16)
    elif damage == "shape":
        tensors["fc.weight"] = torch.zeros(64, 128, dtype=torch.bfloat16)
    else:
        tensors["d2t"] = tensors["d2t"].to(torch.int32)
    save_file(tensors, str(out / "model.safetensors"))
    result = run("inspect", out)
    assert result.exit_code == 1, result.output
    assert "invalid" in result.output
    word = {"missing": "layers.0.hidden_norm.weight", "extra": "verifier_lm_head.weight", "shape": "fc.weight", "dtype": "I64"}[damage]
    assert word in result.output


def test_inspect_config_without_explicit_norm_flag_is_invalid(tiny_llama, tmp_path):
    assert run("init", "--verifier-name-or-path", tiny_llama, "--save-path", tmp_path / "a").exit_code == 0
    cfg = json.loads((tmp_path / "a" / "config.json").read_text())
    del cfg["norm_before_residual"]
    (tmp_path / "c.json").write_text(json.dumps(cfg))
    result = run("inspect", tmp_path / "c.json")
    assert result.exit_code == 1 and "norm_before_residual" in result.output


def test_vocab_build_cli_and_inspect(tiny_llama, tmp_path):
    torch.save({i: i for i in range(1, 200)}, tmp_path / "tf.pt")
    result = run("vocab", "build", "--token-freq-path", tmp_path / "tf.pt", "--draft-vocab-size", "50", "--verifier-name-or-path", tiny_llama, "--output-dir", tmp_path / "v")
    assert result.exit_code == 0, result.output
    report = json.loads(run("inspect", tmp_path / "v", "--json").output)
    assert report["mappings"] == [{"d2t": "d2t.npy", "t2d": "t2d.npy", "draft_vocab_size": 50, "target_vocab_size": 448}]
    line = one_line_error(run("vocab", "build", "--token-freq-path", tmp_path / "tf.pt", "--draft-vocab-size", "50", "--output-dir", tmp_path / "w"))
    assert "exactly one of" in line


def test_inspect_run_dir_lists_complete_checkpoints_and_links(tiny_llama, tmp_path):
    run_dir = tmp_path / "run"
    assert run("init", "--verifier-name-or-path", tiny_llama, "--save-path", run_dir / "epoch0_step4").exit_code == 0
    ckpt = run_dir / "epoch0_step4"
    (ckpt / "run.yaml").rename(run_dir / "run.yaml")
    (ckpt / "trainer_state").mkdir()
    (ckpt / "trainer_state" / "state.json").write_text(json.dumps({"epoch": 0, "global_step": 4, "val": {"loss": 2.5, "acceptance_length": 1.7}}))
    (ckpt / "COMPLETE").write_text("{}")
    (run_dir / "latest").symlink_to("epoch0_step4")
    (run_dir / ".tmp-epoch1_step8").mkdir()  # a write that was killed
    report = json.loads(run("inspect", run_dir, "--json").output)
    assert report["kind"] == "run" and report["valid"]
    assert [(c["name"], c["links"], c["val_loss"]) for c in report["checkpoints"]] == [("epoch0_step4", ["latest"], 2.5)]
    assert report["incomplete_ignored"] == [".tmp-epoch1_step8"]
    (ckpt / "COMPLETE").unlink()
    result = run("inspect", run_dir)
    assert result.exit_code == 1 and "no complete checkpoint" in result.output


def test_inspect_data_dir(tiny_llama, tmp_path):
    from spectool.embedded import make_chat_dataset, write_jsonl

    write_jsonl(make_chat_dataset(20), tmp_path / "chat.jsonl")
    assert run("data", "prepare", "--verifier-name-or-path", tiny_llama, "--data", tmp_path / "chat.jsonl", "--output", tmp_path / "data").exit_code == 0
    result = run("inspect", tmp_path / "data", "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["num_samples"] >= 20 and 0 < report["supervised_share"] < 1
