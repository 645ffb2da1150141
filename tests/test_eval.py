"""The in-process speculative decoding loop behind `spectool eval`: lossless, and its
acceptance counts respond to how good the proposer is (oracle -> all, random -> ~none)."""

from __future__ import annotations

import json

import pytest
import torch

from spectool.eval import (
    LosslessError,
    PromptTrace,
    VerifierRunner,
    compare_with_greedy,
    evaluate,
    evaluate_prompts,
    greedy_generate,
    read_prompts,
    render_prompts,
    spec_decode_counters,
    summarize,
)
from spectool.verifier import default_layer_ids


@pytest.fixture(scope="module")
def verifier(tiny_llama):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tiny_llama, dtype=torch.float32).eval()
    return model, AutoTokenizer.from_pretrained(tiny_llama)


@pytest.fixture(scope="module")
def prompts(verifier):
    _, tok = verifier
    chats = [[{"role": "user", "content": q}] for q in ("Count from 3 to 9.", "Reverse the words: apple river stone")]
    return render_prompts(tok, chats)


def aux_ids(model):
    return default_layer_ids(model.config.num_hidden_layers)


def oracle_for(model, prompts, max_new_tokens):
    """Proposes the verifier's own greedy continuation (computed beforehand)."""
    runner = VerifierRunner(model, aux_ids(model))
    full = {tuple(p): list(p) + greedy_generate(runner, p, max_new_tokens + 8).new_tokens for p in prompts}

    def propose(aux, tokens, k):
        tokens = tokens.tolist()
        (seq,) = [s for s in full.values() if s[: len(tokens)] == tokens]
        assert aux.shape[0] == len(tokens) - 1
        return torch.tensor(seq[len(tokens) : len(tokens) + k])

    return propose


def random_proposer(vocab, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return lambda aux, tokens, k: torch.randint(0, vocab, (k,), generator=gen)


@pytest.mark.parametrize("use_cache", [True, False])
def test_oracle_accepts_everything_and_output_is_greedy(verifier, prompts, use_cache):
    model, _ = verifier
    K, new = 3, 13  # 1 prefill token + 3 full steps of K+1
    report, traces = evaluate_prompts(model, prompts, oracle_for(model, prompts, new), aux_ids(model), K, new, use_cache=use_cache)
    assert report.lossless_checked and report.near_ties == 0
    for t in traces:
        assert len(t.new_tokens) == new
        assert t.accepted_per_step == t.drafted_per_step == [K] * 3
    assert report.acceptance_length == pytest.approx(K + 1)
    assert report.per_position_acceptance == [1.0] * K
    assert report.accepted_histogram == [0, 0, 0, 3 * len(prompts)]


def test_oracle_al_drops_only_at_the_end(verifier, prompts):
    model, _ = verifier
    K, new = 3, 12  # prefill + 2 full steps (8) + a last step that may draft only 2
    report, traces = evaluate_prompts(model, prompts, oracle_for(model, prompts, new), aux_ids(model), K, new)
    for t in traces:
        assert t.drafted_per_step == [3, 3, 2] and t.accepted_per_step == [3, 3, 2]
        assert t.committed_in_steps == new - 1
    assert report.acceptance_length == pytest.approx((4 + 4 + 3) / 3)


def test_random_proposer_accepts_about_nothing_and_stays_lossless(verifier, prompts):
    model, _ = verifier
    K, new = 4, 20
    report, traces = evaluate_prompts(model, prompts, random_proposer(model.config.vocab_size), aux_ids(model), K, new)
    assert report.near_ties == 0
    assert 1.0 <= report.acceptance_length < 1.2
    assert report.per_position_acceptance[0] < 0.2
    for t in traces:
        assert len(t.new_tokens) == new


def test_speculative_output_equals_plain_greedy(verifier, prompts):
    """Independent of the checker inside evaluate_prompts: compare to HF generate."""
    model, tok = verifier
    new = 15
    _, traces = evaluate_prompts(model, prompts, random_proposer(model.config.vocab_size, 1), aux_ids(model), 3, new, check_lossless=False)
    for p, t in zip(prompts, traces):
        out = model.generate(torch.tensor([p]), max_new_tokens=new, do_sample=False, eos_token_id=None, pad_token_id=tok.pad_token_id)
        assert out[0, len(p) :].tolist() == t.new_tokens


def test_eos_stops_inside_an_accepted_run(verifier, prompts):
    model, _ = verifier
    p = prompts[0]
    ref = greedy_generate(VerifierRunner(model, aux_ids(model)), p, 10).new_tokens
    eos = ref[5]
    stop = ref.index(eos)
    report, traces = evaluate_prompts(model, [p], oracle_for(model, [p], 10), aux_ids(model), 3, 10, eos_token_ids=[eos])
    assert traces[0].new_tokens == ref[: stop + 1]


def test_a_broken_loop_is_caught():
    spec = PromptTrace(new_tokens=[1, 2, 3], margins=[5.0, 5.0, 5.0])
    ref = PromptTrace(new_tokens=[1, 2, 4], margins=[5.0, 5.0, 5.0])
    with pytest.raises(LosslessError, match="new token 2"):
        compare_with_greedy(spec, ref, 1e-3, "prompt 0")
    tie = PromptTrace(new_tokens=[1, 2, 4], margins=[5.0, 5.0, 1e-6])
    assert compare_with_greedy(spec, tie, 1e-3, "prompt 0") is False
    with pytest.raises(LosslessError, match="3 new tokens, plain greedy 2"):
        compare_with_greedy(spec, PromptTrace(new_tokens=[1, 2], margins=[5.0, 5.0]), 1e-3, "p")


def test_summary_counts_positions_like_vllm():
    t = PromptTrace(new_tokens=[0] * 9, steps=3, committed_in_steps=8, accepted_per_step=[3, 0, 2], drafted_per_step=[3, 3, 3])
    s = summarize([t], 3)
    assert s["acceptance_length"] == pytest.approx(8 / 3)
    assert s["per_position_acceptance"] == pytest.approx([2 / 3, 2 / 3, 1 / 3])
    assert s["accepted_histogram"] == [1, 0, 1, 1]


def _make_draft(tmp_path, verifier_dir, kind):
    from spectool.config import RunConfig
    from spectool.engine.trainer import dry_run

    cfg = RunConfig()
    cfg.model.verifier_name_or_path = str(verifier_dir)
    cfg.model.speculator_type = kind
    cfg.training.save_path = str(tmp_path / kind)
    if kind == "dflash":
        cfg.dflash.block_size = 4
        cfg.vocab.mask_token_id = 0
    return dry_run(cfg)


@pytest.mark.parametrize("kind", ["eagle3", "dflash"])
def test_real_drafts_run_through_the_loop(tmp_path, tiny_llama, kind):
    rows = [{"conversations": [{"from": "human", "value": "Spell the word river."}, {"from": "gpt", "value": "r i v e r"}]},
            {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is 2 plus 2?"}]}]
    data = tmp_path / "prompts.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert [len(t) for t in read_prompts(data)] == [1, 2]
    draft = _make_draft(tmp_path, tiny_llama, kind)
    report = evaluate(draft, str(tiny_llama), data, max_new_tokens=12)
    assert report.num_prompts == 2 and report.lossless_checked
    assert report.num_speculative_tokens == (3 if kind == "eagle3" else 3)
    assert report.steps > 0 and 1.0 <= report.acceptance_length <= report.num_speculative_tokens + 1
    assert sum(report.accepted_histogram) == report.steps
    if kind == "eagle3":
        report2 = evaluate(draft, str(tiny_llama), data, max_new_tokens=12, num_speculative_tokens=2, limit=1)
        assert report2.num_speculative_tokens == 2 and report2.num_prompts == 1


def test_prometheus_counters_are_summed_and_per_position():
    text = """# HELP vllm:spec_decode_num_drafts_total x
vllm:spec_decode_num_drafts_total{engine="0",model_name="d"} 10.0
vllm:spec_decode_num_drafts_total{engine="1",model_name="d"} 5.0
vllm:spec_decode_num_draft_tokens_total{engine="0",model_name="d"} 45.0
vllm:spec_decode_num_accepted_tokens_total{engine="0",model_name="d"} 20.0
vllm:spec_decode_num_accepted_tokens_per_pos_total{engine="0",model_name="d",position="0"} 12.0
vllm:spec_decode_num_accepted_tokens_per_pos_total{engine="0",model_name="d",position="1"} 8.0
vllm:spec_decode_num_drafts_created 1.7e9
"""
    c = spec_decode_counters(text)
    assert c == {"num_drafts": 15.0, "num_draft_tokens": 45.0, "num_accepted_tokens": 20.0, "accepted_pos_0": 12.0, "accepted_pos_1": 8.0}


def test_cli_eval_json_and_table(tmp_path, tiny_llama):
    from typer.testing import CliRunner

    from spectool.cli.app import app

    data = tmp_path / "p.jsonl"
    data.write_text(json.dumps({"conversations": [{"role": "user", "content": "Count from 1 to 5."}]}) + "\n")
    draft = _make_draft(tmp_path, tiny_llama, "eagle3")
    runner = CliRunner()
    res = runner.invoke(app, ["eval", str(draft), "--verifier-name-or-path", str(tiny_llama), "--data", str(data), "--max-new-tokens", "8", "--json"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    assert out["convention"].startswith("acceptance length = 1 + accepted draft tokens per drafting verifier step")
    assert 0 < out["committed_per_step"] <= out["num_speculative_tokens"] + 1
    assert out["new_tokens"] == 8 and out["lossless_checked"] is True
    res = runner.invoke(app, ["eval", str(draft), "--verifier-name-or-path", str(tiny_llama), "--data", str(data), "--max-new-tokens", "4", "--num-speculative-tokens", "0"])
    assert res.exit_code == 2 and "--num-speculative-tokens must be >= 1" in res.output


def test_simulated_acceptance_on_held_out_hidden_states(tmp_path, tiny_llama):
    import numpy as np

    from spectool.data.dataset import write_processed_dataset
    from spectool.data.hidden_states.files import cache_file, save_hidden_states
    from spectool.data.hidden_states.layers import write_layer_record
    from spectool.data.local_generator import LocalGenerator
    from spectool.eval import simulated_acceptance
    from spectool.verifier import load_verifier_info

    info = load_verifier_info(str(tiny_llama))
    aux = info.resolve_layer_ids(None)
    rng = np.random.default_rng(0)
    samples = [(rng.integers(3, 300, size=n).tolist(), [0] * 8 + [1] * (n - 8)) for n in (40, 36, 44, 48)]
    data = tmp_path / "data"
    write_processed_dataset(data, samples, {"verifier": str(tiny_llama)})
    gen = LocalGenerator(str(tiny_llama), aux, device="cpu")
    write_layer_record(data / "hidden_states", aux, info.num_layers, info.hidden_size, str(tiny_llama))
    for i, (ids, _) in enumerate(samples):
        save_hidden_states(cache_file(data / "hidden_states", i), gen.generate_batch([ids])[0], np.asarray(ids))
    draft = _make_draft(tmp_path, tiny_llama, "eagle3")
    sim = simulated_acceptance(draft, data, str(tiny_llama), val_ratio=0.5)
    assert sim["held_out_samples"] == 2 and sim["batches"] >= 1
    assert len(sim["full_acc"]) == 3
    assert sim["full_acc"][0] >= sim["full_acc"][1] >= sim["full_acc"][2]  # cumulative: can only drop
    assert sim["acceptance_length"] == pytest.approx(1 + sum(sim["full_acc"]))
    assert 1.0 <= sim["acceptance_length"] < 1.5  # an untrained draft


class _FakeVllm:
    """A stdlib HTTP server that answers like a vLLM with a draft: /v1/models, greedy
    /v1/chat/completions (each request adds 4 drafts with 2 accepted tokens), /metrics.
    ``late``: the counters of a request appear only on the next /metrics read after its
    reply (as a server that records a finished request's last step after replying)."""

    def __init__(self, late: bool = False):
        import http.server
        import threading

        self.drafts = self.accepted = self.pending = 0
        self.requests: list[dict] = []
        fake = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _send(self, body: str, ctype: str = "application/json"):
                data = body.encode()
                self.send_response(200)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self):
                if self.path == "/v1/models":
                    self._send(json.dumps({"data": [{"id": "verifier"}]}))
                elif self.path == "/metrics":
                    text = fake.metrics_text()
                    if fake.pending:
                        fake.drafts, fake.accepted, fake.pending = fake.drafts + 4 * fake.pending, fake.accepted + 2 * fake.pending, 0
                    self._send(text, "text/plain")
                else:
                    self.send_error(404)

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                fake.requests.append(body)
                if late:
                    fake.pending += 1
                else:
                    fake.drafts, fake.accepted = fake.drafts + 4, fake.accepted + 2
                reply = {"choices": [{"finish_reason": "length"}], "usage": {"prompt_tokens": 7, "completion_tokens": body["max_tokens"]}}
                self._send(json.dumps(reply))

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def metrics_text(self) -> str:
        return (
            f'vllm:spec_decode_num_drafts_total{{engine="0",model_name="verifier"}} {self.drafts}.0\n'
            f'vllm:spec_decode_num_draft_tokens_total{{engine="0",model_name="verifier"}} {3 * self.drafts}.0\n'
            f'vllm:spec_decode_num_accepted_tokens_total{{engine="0",model_name="verifier"}} {self.accepted}.0\n'
            f'vllm:spec_decode_num_accepted_tokens_per_pos_total{{engine="0",model_name="verifier",position="0"}} {self.accepted}.0\n'
        )

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    def __enter__(self):
        self.drafts, self.accepted = 10, 1  # counters of earlier traffic are diffed away
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()


@pytest.mark.parametrize("late", [False, True])
def test_vllm_endpoint_diffs_counters_around_greedy_chats(tmp_path, late):
    from typer.testing import CliRunner

    from spectool.cli.app import app

    data = tmp_path / "p.jsonl"
    lines = [{"conversations": [{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": "a"}]} for i in range(3)]
    data.write_text("".join(json.dumps(x) + "\n" for x in lines))
    with _FakeVllm(late=late) as fake:
        # No --verifier-name-or-path: the server renders the prompts with its own template.
        res = CliRunner().invoke(app, ["eval", str(tmp_path), "--vllm-endpoint", fake.url, "--data", str(data), "--max-new-tokens", "5", "--json"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    assert out["drafts"] == 12 and out["accepted_tokens"] == 6 and out["draft_tokens"] == 36
    assert out["acceptance_length"] == pytest.approx(1.5)
    assert out["per_position_acceptance"] == [pytest.approx(0.5)]
    assert out["spec"]["completion_tokens"] == 15 and out["spec"]["prompt_tokens"] == [7, 7, 7]
    assert out["spec"]["finish_reasons"] == {"length": 3}
    assert [r["messages"] for r in fake.requests] == [[{"role": "user", "content": f"q{i}"}] for i in range(3)]
    assert all(r["temperature"] == 0.0 and r["max_tokens"] == 5 and r["model"] == "verifier" for r in fake.requests)


def test_eval_needs_a_verifier_without_vllm_endpoint(tmp_path):
    from typer.testing import CliRunner

    from spectool.cli.app import app

    data = tmp_path / "p.jsonl"
    data.write_text(json.dumps({"conversations": [{"role": "user", "content": "x"}]}) + "\n")
    res = CliRunner().invoke(app, ["eval", str(tmp_path), "--data", str(data)])
    assert res.exit_code == 2 and "--verifier-name-or-path is required" in res.output
