"""`spectool inspect` checks every invariant of the checkpoint format (per algorithm plug-in),
and unreadable input gives one line, never a traceback."""

from __future__ import annotations

import copy
import json
import os
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

from spectool.cli.app import app
from spectool.cli.options import join_list_arguments

runner = CliRunner()


def run(*args):
    return runner.invoke(app, join_list_arguments([str(a) for a in args]))


@pytest.fixture(scope="module", params=["eagle3", "dflash", "peagle"])
def pristine(request, tiny_llama, tmp_path_factory):
    root = tmp_path_factory.mktemp(request.param)
    torch.save({i: 1000 - i for i in range(200)}, root / "token_freq.pt")
    out = root / request.param
    result = run("init", "--verifier-name-or-path", tiny_llama, "--speculator-type", request.param, "--draft-vocab-size", "32",
                 "--data-path", root, "--save-path", out)
    assert result.exit_code == 0, result.output
    assert run("inspect", out).exit_code == 0
    return out


@pytest.fixture
def checkpoint(pristine, tmp_path):
    """A fresh copy of a valid reduced-vocab checkpoint to damage."""
    out = tmp_path / pristine.name
    out.mkdir()
    for name in ("config.json", "model.safetensors"):
        shutil.copy(pristine / name, out / name)
    return out


def invalid(path, *needles):
    """Exit 1, each problem on one line of the text report, the same problems in --json."""
    result = run("inspect", path)
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    report = json.loads(run("inspect", path, "--json").output)
    assert not report["valid"] and report["problems"]
    lines = [line.strip()[2:] for line in result.output.splitlines() if line.strip().startswith("- ")]
    assert lines == report["problems"], result.output
    for needle in needles:
        assert any(needle in p for p in report["problems"]), (needle, report["problems"])
    return report["problems"]


def damage_weights(ckpt, fn):
    tensors = load_file(str(ckpt / "model.safetensors"))
    fn(tensors)
    save_file(tensors, str(ckpt / "model.safetensors"))


def damage_config(ckpt, fn):
    cfg = json.loads((ckpt / "config.json").read_text())
    fn(cfg)
    (ckpt / "config.json").write_text(json.dumps(cfg))


def aux_key(ckpt):
    return "eagle_aux_hidden_state_layer_ids" if "eagle" in ckpt.name else "aux_hidden_state_layer_ids"


def test_d2t_ids_not_strictly_increasing(checkpoint):
    def swap(t):
        t["d2t"][1] = t["d2t"][0] - 1  # target id of draft id 1 == that of draft id 0
    damage_weights(checkpoint, swap)
    invalid(checkpoint, "not strictly increasing")


def test_d2t_ids_outside_the_verifier_vocab(checkpoint):
    damage_weights(checkpoint, lambda t: t["d2t"].__setitem__(-1, 10_000))
    invalid(checkpoint, "outside [0, 448)")


def test_t2d_marks_other_ids_than_d2t(checkpoint):
    def flip(t):
        t["t2d"][int(torch.nonzero(~t["t2d"])[0])] = True
    damage_weights(checkpoint, flip)
    invalid(checkpoint, "t2d marks 33 ids, not exactly the 32")


def test_nan_weights_are_refused(checkpoint):
    def nan(t):
        t["fc.weight"][0, 0] = float("nan")
        t["norm.weight"][3] = float("inf")
    damage_weights(checkpoint, nan)
    invalid(checkpoint, "non-finite values (NaN/Inf) in fc.weight, norm.weight")


@pytest.mark.parametrize("ids,needle", [([2, 4, 99], "[99] lie outside the verifier's 8 layers"), ([-1, 4], "non-negative"),
                                        ([4, 2], "strictly ascending"), ([2, 8], "[8] lie outside")])
def test_aux_ids_outside_the_verifier(checkpoint, ids, needle):
    damage_config(checkpoint, lambda c: c.__setitem__(aux_key(checkpoint), ids))
    invalid(checkpoint, needle)
    invalid(checkpoint / "config.json", needle)


def test_insane_sizes_are_refused(checkpoint, tmp_path):
    damage_config(checkpoint, lambda c: c["transformer_layer_config"].__setitem__("num_hidden_layers", 10**7))
    invalid(checkpoint, "num_hidden_layers must be an integer in [1, 64]")


def test_dflash_block_size_1e7_refused(tiny_llama, tmp_path):
    out = tmp_path / "d"
    assert run("init", "--verifier-name-or-path", tiny_llama, "--speculator-type", "dflash", "--save-path", out).exit_code == 0
    damage_config(out, lambda c: c.__setitem__("block_size", 10**7))
    invalid(out, "block_size 10000000 must lie in [2, 256]")


def test_eagle3_ttt_steps_bound(tiny_llama, tmp_path):
    out = tmp_path / "e"
    assert run("init", "--verifier-name-or-path", tiny_llama, "--save-path", out).exit_code == 0
    damage_config(out, lambda c: c["speculators_config"]["proposal_methods"][0].__setitem__("speculative_tokens", 10**6))
    invalid(out, "ttt_steps (speculative_tokens) 1000000 must lie in [1, 64]")


def test_several_problems_each_on_one_line(checkpoint):
    def both(t):
        t["d2t"][1] = t["d2t"][0] - 1
        t["fc.weight"][0, 0] = float("nan")
    damage_weights(checkpoint, both)
    assert len(invalid(checkpoint, "strictly increasing", "non-finite")) == 2


def one_line_error(result, needle):
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and needle in lines[0], result.output


def test_random_bytes(tmp_path, checkpoint):
    noise = os.urandom(4096)
    (tmp_path / "noise.bin").write_bytes(noise)
    one_line_error(run("inspect", tmp_path / "noise.bin"), "is not a checkpoint")
    (tmp_path / "noise.json").write_bytes(noise)
    invalid(tmp_path / "noise.json", "not text")
    (checkpoint / "model.safetensors").write_bytes(noise)
    invalid(checkpoint, "model.safetensors cannot be read")
    (checkpoint / "config.json").write_bytes(b"[1, 2, 3]")
    invalid(checkpoint, "not a JSON object")
    (checkpoint / "config.json").write_bytes(b"{not json")
    invalid(checkpoint, "not valid JSON")


def test_symlink_loops(tmp_path, checkpoint):
    (tmp_path / "loop").symlink_to(tmp_path / "loop")
    one_line_error(run("inspect", tmp_path / "loop"), "symlink loop")
    (checkpoint / "config.json").unlink()
    (checkpoint / "config.json").symlink_to(checkpoint / "config.json")
    invalid(checkpoint, "config.json cannot be read")


def test_huge_config_is_refused_before_reading(tmp_path):
    path = tmp_path / "config.json"
    with open(path, "wb") as f:  # sparse: 1.5 GB on paper, nothing on disk
        f.truncate(1536 * 2**20)
    invalid(path, "config.json is 1,536 MiB: not a speculator config")


ODD_VALUES = [None, -1, 0, 10**12, "x", [], {}, 1.5, True]


def _key_paths(cfg: dict) -> list[tuple]:
    paths = [(k,) for k in cfg]
    paths += [("transformer_layer_config", k) for k in cfg["transformer_layer_config"]]
    paths += [("speculators_config", k) for k in cfg["speculators_config"]]
    paths += [("speculators_config", "proposal_methods", 0, k) for k in cfg["speculators_config"]["proposal_methods"][0]]
    paths += [("speculators_config", "verifier", k) for k in cfg["speculators_config"]["verifier"]]
    return paths


def test_any_odd_value_in_config_json_is_a_problem_not_a_traceback(pristine, tmp_path):
    """Every field of config.json set to each odd value: inspect returns a verdict whose
    problems are single lines (it never raises)."""
    from spectool import inspection

    base = json.loads((pristine / "config.json").read_text())
    ckpt = tmp_path / "c"
    ckpt.mkdir()
    shutil.copy(pristine / "model.safetensors", ckpt / "model.safetensors")
    invalid_count = 0
    for path in _key_paths(base):
        for value in ODD_VALUES:
            cfg = copy.deepcopy(base)
            node = cfg
            for key in path[:-1]:
                node = node[key]
            node[path[-1]] = value
            (ckpt / "config.json").write_text(json.dumps(cfg))
            report = inspection.inspect_checkpoint(ckpt)
            assert all(isinstance(p, str) and "\n" not in p for p in report["problems"]), (path, value, report["problems"])
            assert report["valid"] == (not report["problems"])
            invalid_count += not report["valid"]
    assert invalid_count > len(_key_paths(base))  # most odd values are refused
