"""One layer-id type: parser, validator and default rule (vLLM convention), and the option in
the model group of the run configuration."""

from __future__ import annotations

import pytest

from spectool.config import ModelConfig, RunConfig, VocabConfig, field_index
from spectool.errors import SpectoolError
from spectool.layer_ids import LayerIdError, check_layer_ids, default_layer_ids, extraction_layer_ids, parse_layer_ids, resolve_layer_ids


@pytest.mark.parametrize("text", ["2,4,5", "2 4 5", " 2, 4 ,5 ", ["2", "4,5"], ["2 4", "5"]])
def test_parser_accepts_every_spelling(text):
    assert parse_layer_ids(text) == [2, 4, 5]


def test_parser_default_and_errors():
    assert parse_layer_ids(None) is None and parse_layer_ids("") is None and parse_layer_ids([]) is None
    with pytest.raises(LayerIdError, match="takes integers.*'2 x'"):
        parse_layer_ids("2,x")
    with pytest.raises(LayerIdError, match="--sliding-window-indices takes integers"):
        parse_layer_ids("a", "--sliding-window-indices")


@pytest.mark.parametrize("L,want", [(32, [2, 16, 29]), (8, [2, 4, 5]), (4, [1, 2]), (2, [0, 1]), (1, [0])])
def test_default_rule_is_vllms(L, want):
    ids = default_layer_ids(L)
    assert ids == want and all(0 <= k < L for k in ids) and ids == sorted(set(ids))
    assert extraction_layer_ids(L) == [*want, L]


@pytest.mark.parametrize("ids,needle", [([2, 8], "must not include the final layer 8"), ([2, 9], "[9] out of range"),
                                        ([-1, 2], "non-negative"), ([4, 2], "strictly ascending"), ([2, 2], "strictly ascending"),
                                        ([], "is empty"), ([True], "integers")])
def test_validator_one_line_errors(ids, needle):
    with pytest.raises(LayerIdError) as info:
        resolve_layer_ids(ids, 8)
    assert needle in str(info.value) and "\n" not in str(info.value) and isinstance(info.value, SpectoolError)


def test_without_the_verifier_only_what_needs_no_layer_count():
    assert check_layer_ids([2, 99]) == [2, 99]
    with pytest.raises(LayerIdError):
        check_layer_ids([3, 1])
    with pytest.raises(LayerIdError):
        RunConfig.from_flat({"verifier_name_or_path": "v", "target_layer_ids": [3, 3]}).validate()


def test_option_lives_in_the_model_group_and_old_run_yaml_still_reads():
    assert field_index()["target_layer_ids"] == "model"
    assert "target_layer_ids" in ModelConfig.__dataclass_fields__ and "target_layer_ids" not in VocabConfig.__dataclass_fields__
    old = RunConfig.from_dict({"vocab": {"target_layer_ids": [1, 3, 5], "draft_vocab_size": 64}})
    assert old.model.target_layer_ids == [1, 3, 5] and old.vocab.draft_vocab_size == 64
    assert RunConfig.from_dict(old.to_dict()).model.target_layer_ids == [1, 3, 5]
