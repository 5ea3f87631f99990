"""The ranker's mechanics on a tiny in-process Llama with the real Llama 2 tokenizer: verbalizer ids, the loss mask,
left padding, rank-train (resume, refusals) and evaluate."""

from __future__ import annotations

import dataclasses
import json
import math
import statistics

import pytest
import torch
from conftest import accelerate_launch, fast_config
from transformers import AutoModelForCausalLM, AutoTokenizer
from typer.testing import CliRunner

from llamarec_cli.cli import build_app
from llamarec_cli.errors import ArtifactError, ConfigError, DataFormatError
from llamarec_cli.evaluation.metrics import paired_difference
from llamarec_cli.layout import Workdir
from llamarec_cli.ranking.examples import random_negative_examples, training_examples, valid_subset
from llamarec_cli.ranking.fusion import resolve_alpha
from llamarec_cli.ranking.prompts import IGNORE, Example, PromptEncoder, pad_id, pad_left
from llamarec_cli.ranking.scoring import score_examples
from llamarec_cli.ranking.templates import load_template
from llamarec_cli.ranking.verbalizer import VerbalizerError, derive_verbalizer
from llamarec_cli.stages.candidates import load_candidates
from llamarec_cli.stages.evaluate import evaluate, fused_name, load_ranker
from llamarec_cli.stages.rank_train import label_loss, ranker_dir, train_ranker
from llamarec_cli.training import Reporter

TITLES = {i: f"Movie number {i} ({1990 + i % 30})" for i in range(1, 41)}
LLAMA_LETTER_A = 29909  # the piece "A" after "\n"; tokenizer.encode("A") alone is "▁A" (319), the reference's bug


@pytest.fixture(scope="module")
def tokenizer(llama2_tokenizer_dir):
    return AutoTokenizer.from_pretrained(llama2_tokenizer_dir)


@pytest.fixture(scope="module")
def tiny(tiny_llama_dir):
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_pretrained(tiny_llama_dir).eval()


@pytest.mark.parametrize("template", ["alpaca-short", "plain"])
def test_llama2_letter_ids_are_the_ones_trained(tokenizer, template):
    encoder = PromptEncoder(tokenizer, load_template(template), TITLES)
    ids = encoder.verbalizer.token_ids
    assert ids[0] == LLAMA_LETTER_A and tokenizer.encode("A", add_special_tokens=False) == [319]
    assert len(set(ids)) == 20
    for index in (0, 7, 19):
        example = Example([1, 2, 3], list(range(10, 30)), index)
        input_ids, labels = encoder.training_ids(example)
        # What is trained: exactly the letter and EOS carry labels, and they are the verbalizer's ids.
        assert [t for t in labels if t != IGNORE] == [ids[index], tokenizer.eos_token_id]
        assert labels[:-2] == [IGNORE] * (len(labels) - 2)
        # ... and they are how the training text really tokenizes: prompt + letter, in context, then EOS.
        full = tokenizer(encoder.text(example) + "ABCDEFGHIJKLMNOPQRST"[index])["input_ids"]
        assert input_ids == full + [tokenizer.eos_token_id]
        # What is scored: the prompt without the answer, whose next-token logits are read at those ids.
        assert encoder.prompt_ids(example) == input_ids[:-2]


@pytest.mark.slow
def test_smollm2_letter_ids_are_the_ones_trained(smollm2_dir):
    from llamarec_cli.ranking.models import load_tokenizer

    tokenizer = load_tokenizer(str(smollm2_dir))
    encoder = PromptEncoder(tokenizer, load_template(), TITLES)
    ids = encoder.verbalizer.token_ids
    assert tokenizer.convert_ids_to_tokens(list(ids[:3])) == ["A", "B", "C"] and len(set(ids)) == 20
    assert encoder.bos == []  # SmolLM2's tokenizer adds no BOS; its "BOS" is a chat marker
    example = Example([1, 2, 3], list(range(10, 30)), 4)
    input_ids, labels = encoder.training_ids(example)
    assert [t for t in labels if t != IGNORE] == [ids[4], tokenizer.eos_token_id]
    assert input_ids[:-1] == tokenizer(encoder.text(example) + "E")["input_ids"]
    assert encoder.prompt_ids(example) == input_ids[:-2]


def test_a_template_that_splits_the_letter_is_refused(tokenizer, tmp_path):
    text = (load_template("plain").path.read_text()).replace("Answer (the candidate's letter):\\n", "Answer: ")
    path = tmp_path / "space.toml"
    path.write_text(text)
    with pytest.raises(VerbalizerError, match="exactly one new token"):
        derive_verbalizer(tokenizer, load_template(path))


def test_titles_and_prompts_are_cut_as_the_paper_says(tokenizer):
    long_title = " ".join(f"word{i}" for i in range(100))
    encoder = PromptEncoder(tokenizer, load_template(), {1: long_title, 2: "Heat (1995)"})
    assert len(tokenizer(encoder.title(1), add_special_tokens=False)["input_ids"]) <= 32
    assert encoder.title(1).startswith("word0 word1") and encoder.title(2) == "Heat (1995)"
    big = PromptEncoder(tokenizer, load_template(), {i: long_title + str(i) for i in range(1, 41)})
    ids = big.prompt_ids(Example(list(range(1, 21)), list(range(21, 41)), 0))
    assert len(ids) == 1536 - 2 and ids[0] == tokenizer.bos_token_id  # cut from the left, BOS kept, room for answer
    assert tokenizer.decode(ids[-6:]).endswith("### Response:\n")


def test_loss_is_on_the_label_tokens_only(tokenizer, tiny):
    encoder = PromptEncoder(tokenizer, load_template(), TITLES)
    examples = [Example([1, 2, 3], list(range(5, 25)), 3), Example([4] * 30, list(range(10, 15)), 1)]
    encoded = [encoder.training_ids(e) for e in examples]
    batch = pad_left([i for i, _ in encoded], pad_id(tokenizer), [lab for _, lab in encoded])
    ours = label_loss(tiny, batch.input_ids, batch.attention_mask, batch.labels)
    # transformers' own loss over the full sequence with the same labels (every -100 ignored) must agree
    reference = tiny(input_ids=batch.input_ids, attention_mask=batch.attention_mask, labels=batch.labels).loss
    assert torch.allclose(ours, reference, atol=1e-5)
    changed = batch.labels.clone()
    changed[0, -3] = batch.input_ids[0, -3]  # one prompt token gets a label: the loss must change
    assert not torch.allclose(label_loss(tiny, batch.input_ids, batch.attention_mask, changed), ours)


def test_left_padded_batches_score_like_single_examples(tokenizer, tiny):
    encoder = PromptEncoder(tokenizer, load_template(), TITLES)
    examples = [
        Example([1], list(range(2, 22))),
        Example(list(range(1, 31)), [5, 6]),  # k = 2
        Example([7, 8, 9], list(range(10, 21))),
    ]
    batched = score_examples(tiny, encoder, examples, batch_size=3)
    for example, scores in zip(examples, batched):
        alone = score_examples(tiny, encoder, [example], batch_size=1)[0]
        assert scores.shape == (len(example.candidates),)
        assert torch.allclose(scores, alone, atol=1e-4), (scores - alone).abs().max()


def test_more_than_twenty_candidates_is_refused(tokenizer, tiny):
    encoder = PromptEncoder(tokenizer, load_template(), TITLES)
    with pytest.raises(ConfigError, match="at most 20"):
        score_examples(tiny, encoder, [Example([1], list(range(2, 23)))])


def test_random_negatives_follow_the_reference():
    train = {1: [1, 2, 3, 4], 2: [5, 6]}
    examples = random_negative_examples(train, 40, 20, [(1, 3), (2, 1)], seed=0)
    for example, (user, i) in zip(examples, [(1, 3), (2, 1)]):
        assert example.history == train[user][:i] and len(example.candidates) == 20
        assert example.candidates[example.target_index] == train[user][i]
        assert not set(example.candidates) - {train[user][i]} & set(train[user][: i + 1])
        assert len(set(example.candidates)) == 20
    positions = {e.target_index for e in random_negative_examples(train, 40, 20, [(1, 3)] * 50, seed=1)}
    assert len(positions) > 5  # shuffled, not always in one slot


def test_rank_train_keeps_the_best_adapter_in_peft_format(chain_with_candidates, workdir, tiny_llama_dir):
    manifest = train_ranker("chain", workdir=workdir, config=fast_config(tiny_llama_dir), device="cpu")
    folder = ranker_dir(workdir, "chain", "default")
    assert {p.name for p in (folder / "adapter").iterdir()} >= {"adapter_config.json", "adapter_model.safetensors"}
    config = json.loads((folder / "adapter" / "adapter_config.json").read_text())
    assert sorted(config["target_modules"]) == ["q_proj", "v_proj"] and config["r"] == 8
    assert config["lora_alpha"] == 32 and config["lora_dropout"] == 0.05
    assert manifest["steps"] == 6 and [v["step"] for v in manifest["validations"]] == [2, 4, 6]
    assert manifest["k"] == 10 and manifest["train_examples"] == 24
    best = max(manifest["validations"], key=lambda v: v["NDCG@10"])  # the first of equals
    assert manifest["best_step"] == best["step"]
    assert manifest["val_metrics"] == {k: v for k, v in best.items() if k not in ("step", "epoch")}
    assert manifest["val_retriever_metrics"]["Recall@10"] == 1.0  # every subset user has the item among the 10
    assert not Workdir.partial(ranker_dir(workdir, "chain", "default")).exists()

    from peft import PeftModel

    base = AutoModelForCausalLM.from_pretrained(tiny_llama_dir)
    loaded = PeftModel.from_pretrained(base, folder / "adapter")  # anywhere PEFT runs
    assert any("lora_A" in name for name, _ in loaded.named_parameters())


def test_a_full_precision_ranker_is_served_merged_with_the_same_scores(chain_with_candidates, workdir, tiny_llama_dir):
    from peft import PeftModel

    train_ranker("chain", workdir=workdir, config=fast_config(tiny_llama_dir), device="cpu")
    ranker = load_ranker(chain_with_candidates, workdir, device="cpu")
    merged, encoder = ranker.model, ranker.encoder
    assert ranker.dtype == "fp32"
    assert not isinstance(merged, PeftModel)
    folder = ranker_dir(workdir, "chain", "default") / "adapter"
    wrapped = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_llama_dir), folder).eval()
    assert any(p.abs().sum() > 0 for n, p in wrapped.named_parameters() if "lora_B" in n)  # a trained adapter
    frame, _ = load_candidates(workdir, chain_with_candidates)
    examples = valid_subset(chain_with_candidates, frame, "test").examples[:6]
    a = score_examples(merged, encoder, examples, batch_size=3)
    b = score_examples(wrapped, encoder, examples, batch_size=3)
    assert torch.allclose(torch.stack(a), torch.stack(b), atol=1e-5)


def test_a_run_interrupted_while_alpha_is_chosen_resumes_without_training_on(
    chain_with_candidates, workdir, tiny_llama_dir, tmp_path, monkeypatch
):
    from llamarec_cli.stages import rank_train

    config = fast_config(tiny_llama_dir, patience=1, eval_every=1, max_val_examples=4)  # stops early, α on all
    whole = train_ranker("chain", workdir=workdir, config=config, device="cpu")
    assert whole["stopped_early"] and whole["fusion"]["users"] > 4
    (workdir / "chain" / "ranker" / "default").rename(tmp_path / "whole")

    def interrupted(self, examples):
        raise KeyboardInterrupt

    with monkeypatch.context() as patch:
        patch.setattr(rank_train._Trainer, "fusion_scores", interrupted)
        with pytest.raises(KeyboardInterrupt):
            train_ranker("chain", workdir=workdir, config=config, device="cpu")
    # --resume may change the users α is chosen on (it is used once training is over), nothing that trains
    with pytest.raises(ConfigError, match="patience=1"):
        train_ranker(
            "chain",
            workdir=workdir,
            config=fast_config(tiny_llama_dir, eval_every=1, max_val_examples=4),
            device="cpu",
            resume=True,
        )
    rank_train._refuse_changes(config.to_dict(), dataclasses.replace(config, fusion_val_examples=3))  # accepted
    resumed = train_ranker("chain", workdir=workdir, config=config, device="cpu", resume=True)
    assert resumed["steps"] == whole["steps"] and resumed["validations"] == whole["validations"]
    assert resumed["stopped_early"] and resumed["fusion"] == whole["fusion"]


def test_rank_train_resumes_exactly(chain_with_candidates, workdir, tiny_llama_dir, tmp_path):
    config = fast_config(tiny_llama_dir)
    whole = train_ranker("chain", workdir=workdir, config=config, device="cpu")
    (workdir / "chain" / "ranker" / "default").rename(tmp_path / "whole")
    stopped = train_ranker("chain", workdir=workdir, config=config, device="cpu", stop_after_steps=4)
    assert stopped["interrupted"]
    with pytest.raises(ArtifactError, match="--resume"):
        train_ranker("chain", workdir=workdir, config=config, device="cpu")
    with pytest.raises(ConfigError, match="lr=0.001"):
        train_ranker("chain", workdir=workdir, config=fast_config(tiny_llama_dir, lr=1e-2), device="cpu", resume=True)
    resumed = train_ranker("chain", workdir=workdir, config=config, device="cpu", resume=True)
    assert resumed["validations"] == whole["validations"] and resumed["fusion"] == whole["fusion"]
    assert resumed["model"]["dtype_reason"] == f"dtype {resumed['model']['dtype']}, as the interrupted run trained"
    from safetensors.torch import load_file

    a = load_file(tmp_path / "whole" / "adapter" / "adapter_model.safetensors")
    b = load_file(ranker_dir(workdir, "chain", "default") / "adapter" / "adapter_model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_rank_train_in_4bit_on_cpu(chain_with_candidates, workdir, tiny_llama_dir, dtype):
    """QLoRA's path (NF4 base, double quantisation, k-bit preparation) trains and saves an adapter on a CPU too, with
    either compute dtype."""
    config = fast_config(
        tiny_llama_dir, quantization="4bit", dtype=dtype, max_train_examples=8, eval_every=1, max_val_examples=4
    )
    manifest = train_ranker("chain", workdir=workdir, config=config, device="cpu")
    assert manifest["model"]["quantization"] == "4bit" and manifest["steps"] == 2
    assert manifest["model"]["dtype"] == dtype
    assert (ranker_dir(workdir, "chain", "default") / "adapter" / "adapter_model.safetensors").is_file()
    report = evaluate("chain", workdir=workdir, device="cpu", max_examples=4)  # loads 4-bit again, with the adapter
    assert report["ranked_users"] == 4 and report["fusion"]["alpha"] == manifest["fusion"]["alpha"]
    assert set(report["subset"]) == {"retriever", "ranker", fused_name(manifest["fusion"]["alpha"])}
    assert report["ranker"]["dtype"] == dtype


def test_retrieved_negatives_are_the_retrievers_candidates(chain_with_candidates, workdir):
    from llamarec_cli.stages.retrieve_train import load_retriever

    retriever, _ = load_retriever(workdir, chain_with_candidates, "lrurec")
    examples = training_examples(
        chain_with_candidates, k=10, negatives="retrieved", max_examples=30, retriever=retriever
    )
    assert len(examples) == 30
    train = chain_with_candidates.sequences("train")
    for example in examples:
        seq = train[example.user]
        i = len(example.history)
        assert seq[:i] == example.history and example.candidates[example.target_index] == seq[i]
        assert not set(example.candidates) & set(example.history)
    shuffled = training_examples(
        chain_with_candidates, k=10, negatives="retrieved", max_examples=30, retriever=retriever, shuffle=True
    )
    moved = 0
    for a, b in zip(examples, shuffled, strict=True):  # the same requests, candidates in another order
        assert a.history == b.history and sorted(a.candidates) == sorted(b.candidates)
        assert b.candidates[b.target_index] == a.candidates[a.target_index]
        assert dict(zip(b.candidates, b.retriever_scores)) == dict(zip(a.candidates, a.retriever_scores))
        moved += a.candidates != b.candidates
    assert moved >= 25


def test_paired_difference_by_hand():
    # ranks 1 vs 3, 11 vs 1, 2 vs 2: NDCG@10 differences 1 - 0.5, 0 - 1, 0
    d = paired_difference([1, 11, 2], [3, 1, 2])
    diffs = [0.5, -1.0, 0.0]
    assert d["difference"] == pytest.approx(-0.5 / 3)
    assert d["half_width"] == pytest.approx(1.96 * statistics.stdev(diffs) / math.sqrt(3))
    assert (d["users"], d["better"], d["worse"]) == (3, 1, 1)
    assert paired_difference([1], [2])["half_width"] is None  # one user: no interval (and no NaN in the JSON)


def test_evaluate_reports_both_views(chain_with_candidates, workdir, tiny_llama_dir):
    train_ranker("chain", workdir=workdir, config=fast_config(tiny_llama_dir), device="cpu")
    report = evaluate("chain", workdir=workdir, device="cpu")
    frame, manifest = load_candidates(workdir, chain_with_candidates)
    subset = valid_subset(chain_with_candidates, frame, "test")
    assert report["subset_users"] == len(subset.examples) and report["hit_rate"] == subset.hit_rate
    for key, value in report["subset"]["ranker"].items():
        assert report["overall"]["ranker"][key] == pytest.approx(value * subset.hit_rate)
    # the retriever's order on the subset: rank = position in the candidate list
    recall5 = sum(e.target_index < 5 for e in subset.examples) / len(subset.examples)
    assert report["subset"]["retriever"]["Recall@5"] == pytest.approx(recall5)
    assert report["overall"]["retriever"]["NDCG@10"] == pytest.approx(manifest["splits"]["test"]["NDCG@10"])
    text = (workdir / "chain" / "reports" / "evaluate-default.md").read_text()
    assert "| ranker |" in text and "| retriever |" in text and "Ranker: default" in text
    ranks = report["ranks"]
    assert ranks["retriever"] == [e.target_index + 1.0 for e in subset.examples]
    assert report["paired"] == paired_difference(ranks["ranker"], ranks["retriever"])
    assert "Ranker minus retriever order, NDCG@10" in text

    retriever_only = evaluate("chain", workdir=workdir, ranker="none")
    assert "ranker" not in retriever_only and retriever_only["subset"]["retriever"] == report["subset"]["retriever"]
    zero_shot = evaluate("chain", workdir=workdir, adapter="none", model=str(tiny_llama_dir), device="cpu")
    assert zero_shot["ranker"]["name"] == "zero-shot"


def test_cli_errors_are_one_line(chain, workdir, tiny_llama_dir):
    runner = CliRunner()
    app = build_app()
    result = runner.invoke(app, ["rank-train", "chain", "--model", str(tiny_llama_dir), "-w", str(workdir)])
    assert result.exit_code == 1 and "Run first: llamarec candidates chain" in result.output
    result = runner.invoke(app, ["evaluate", "chain", "-w", str(workdir)])
    assert result.exit_code == 1 and "llamarec rank-train chain" in result.output
    result = runner.invoke(app, ["rank-train", "chain", "--negatives", "hard", "-w", str(workdir)])
    assert result.exit_code == 2 and "random, retrieved" in result.output
    result = runner.invoke(app, ["pipeline", "chain", "--negatives", "hard", "-w", str(workdir)])
    assert result.exit_code == 2 and "random, retrieved" in result.output and "1/5" not in result.output
    result = runner.invoke(app, ["templates", "show", "nope"])
    assert result.exit_code == 2 and "Known prompt templates: alpaca-short, plain" in result.output


def test_template_files_with_errors_are_refused_before_loading_a_model(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('layout = "{input}"\n')
    with pytest.raises(DataFormatError, match="missing the field"):
        load_template(bad)


def test_rank_train_command_ends_with_the_bar_to_clear(chain_with_candidates, workdir, tiny_llama_dir):
    args = ["rank-train", "chain", "--model", str(tiny_llama_dir), "-w", str(workdir), "--device", "cpu"]
    args += ["--batch-size", "2", "--max-train-examples", "8", "--eval-every", "2", "--max-val-examples", "4"]
    result = CliRunner().invoke(build_app(), args)
    assert result.exit_code == 0, result.output
    manifest = json.loads((ranker_dir(workdir, "chain", "default") / "manifest.json").read_text())
    bar = manifest["val_retriever_metrics"]["NDCG@10"]
    assert f"the retriever's order of the same users: NDCG@10 {bar:.4f}" in " ".join(result.output.split())


def test_rank_train_runs_on_two_processes_under_accelerate_launch(chain_with_candidates, workdir, tiny_llama_dir):
    """Multi-GPU / multi-node go through `accelerate launch` with no code change. Without a GPU, --multi_gpu starts
    two CPU processes that talk over gloo (accelerate's --cpu launcher would need MPI for more than one)."""
    done = accelerate_launch(
        *("-m", "llamarec_cli", "rank-train", "chain", "--model", str(tiny_llama_dir), "-w", str(workdir)),
        *("--batch-size", "2", "--max-train-examples", "16", "--eval-every", "2", "--max-val-examples", "8"),
        *("--warmup-steps", "1", "--device", "cpu", "--json"),
    )
    assert done.returncode == 0, done.stderr[-3000:]
    manifest = json.loads((ranker_dir(workdir, "chain", "default") / "manifest.json").read_text())
    assert manifest["processes"] == 2
    assert manifest["steps"] == 4  # 16 examples, 2 per process per step
    assert [v["step"] for v in manifest["validations"]] == [2, 4]


def test_templates_commands_list_and_render_for_a_user(chain_with_candidates, workdir):
    runner = CliRunner()
    listed = runner.invoke(build_app(), ["templates", "list"])
    assert listed.exit_code == 0 and "alpaca-short" in listed.output and "packaged" in listed.output
    shown = runner.invoke(build_app(), ["templates", "show", "--dataset", "chain", "--user", "u3", "-w", str(workdir)])
    assert shown.exit_code == 0, shown.output
    assert shown.output.startswith("### Instruction:\n") and "(1) Item " in shown.output and "(J) Item " in shown.output
    missing = runner.invoke(
        build_app(), ["templates", "show", "--dataset", "chain", "--user", "999", "-w", str(workdir)]
    )
    assert missing.exit_code == 2 and "No user '999' in chain" in missing.output


def test_the_letters_loss_is_cross_entropy_over_the_letters_read_when_ranking(tokenizer, tiny):
    from llamarec_cli.ranking.fusion import retriever_log_probabilities
    from llamarec_cli.stages.rank_train import letter_loss

    encoder = PromptEncoder(tokenizer, load_template(), TITLES)
    scores = [float(s) for s in range(20, 0, -1)]
    examples = [
        Example([1, 2, 3], list(range(5, 25)), 3, 1, scores),
        Example([4] * 9, list(range(10, 15)), 1, 2, scores[:5]),
    ]
    letters = score_examples(tiny, encoder, examples, batch_size=1)  # what evaluate reads
    pad = pad_id(tokenizer)
    for prior in (0.0, 1.0, 2.5):
        by_hand = torch.stack(
            [
                -torch.log_softmax(s + prior * retriever_log_probabilities(e.retriever_scores), -1)[e.target_index]
                for s, e in zip(letters, examples)
            ]
        ).mean()
        loss = letter_loss(tiny, encoder, examples, pad, "cpu", prior)
        torch.testing.assert_close(loss, by_hand, atol=1e-4, rtol=1e-4)  # the 5-candidate row ignores letters F-T
    assert not torch.allclose(
        letter_loss(tiny, encoder, examples, pad, "cpu", 1.0), letter_loss(tiny, encoder, examples, pad, "cpu", 0.0)
    )


def test_a_retriever_prior_needs_retrieved_negatives_and_the_letters_loss(tiny_llama_dir):
    refused = (
        {"retriever_prior": 1.0},
        {"retriever_prior": 1.0, "loss": "letters"},  # random negatives have no retriever scores
        {"retriever_prior": 1.0, "negatives": "retrieved"},  # the lm loss has no letters to add them to
        {"loss": "words"},
    )
    for changes in refused:
        with pytest.raises(ConfigError, match="retriever_prior|Unknown loss"):
            fast_config(tiny_llama_dir, **changes)
    config = fast_config(tiny_llama_dir, retriever_prior=3.0, loss="letters", negatives="retrieved")
    assert config.validation_alpha == 0.25 and fast_config(tiny_llama_dir).validation_alpha is None


def test_a_ranker_trained_beside_the_retriever_prior_is_validated_fused(chain_with_candidates, workdir, tiny_llama_dir):
    config = fast_config(tiny_llama_dir, negatives="retrieved", loss="letters", retriever_prior=2.0)
    config = dataclasses.replace(config, fusion_val_examples=config.max_val_examples)  # α on the validated users
    manifest = train_ranker("chain", workdir=workdir, config=config, device="cpu")
    assert manifest["val_order"] == "fused at alpha 0.333333" and manifest["config"]["retriever_prior"] == 2.0
    curve = manifest["fusion"]["val"]  # NDCG@10 of the best adapter's validation scores at each α, 1/3 included
    assert manifest["fusion"]["trained_alpha"] == pytest.approx(1 / 3)
    assert manifest["val_metrics"]["NDCG@10"] == pytest.approx(curve["0.333333"], abs=1e-6)
    assert curve["0.333333"] != curve["1"]  # the pure ranker's order would have scored otherwise
    _, source = resolve_alpha("none", manifest["fusion"])
    assert "trained beside the retriever's scores" in source
    for v in manifest["validations"]:
        assert 0 < v["NDCG@10"] <= 1


def test_resuming_a_run_from_before_the_letters_loss_refuses_switching_to_it(tiny_llama_dir):
    from llamarec_cli.stages.rank_train import _refuse_changes

    saved = {k: v for k, v in fast_config(tiny_llama_dir).to_dict().items() if k not in ("loss", "retriever_prior")}
    _refuse_changes(saved, fast_config(tiny_llama_dir))  # the same run: accepted
    with pytest.raises(ConfigError, match="loss=lm"):
        _refuse_changes(saved, fast_config(tiny_llama_dir, loss="letters"))


def test_validation_requests_train_apart_from_the_users_held_out(chain_with_candidates, workdir, tiny_llama_dir):
    from llamarec_cli.data.artifact import load_dataset
    from llamarec_cli.stages.rank_train import held_out_training_set, sample

    dataset = load_dataset(workdir, "chain")
    val = valid_subset(dataset, load_candidates(workdir, dataset)[0], "val", 10)
    before = [(e.user, list(e.candidates), e.target_index) for e in val.examples]
    held_out = sample(val.examples, 3, 42)
    config = fast_config(tiny_llama_dir, negatives="validation", shuffle_candidates=True, max_train_examples=None)
    examples = held_out_training_set(val, held_out, config, "chain", 1)
    assert len(examples) == len(val.examples) - 3 and len(val.examples) > 3
    assert not {e.user for e in examples} & {e.user for e in held_out}
    assert all(e.candidates[e.target_index] == dataset.sequences("val")[e.user][0] for e in examples)
    assert [(e.user, e.candidates, e.target_index) for e in val.examples] == before  # shuffled copies only
    shown = {user: index for user, _, index in before}
    assert any(e.target_index != shown[e.user] for e in examples)  # the copies were shuffled
    again = held_out_training_set(val, held_out, config, "chain", 1)
    assert [(e.user, e.candidates) for e in again] == [(e.user, e.candidates) for e in examples]  # every process's
    with pytest.raises(ConfigError, match="--max-val-examples"):
        held_out_training_set(val, val.examples, config, "chain", 1)
    one = fast_config(tiny_llama_dir, negatives="validation", max_train_examples=1)
    with pytest.raises(ConfigError, match="2 process"):  # one example for two processes: refused, not a DDP hang
        held_out_training_set(val, held_out, one, "chain", 2)
    everyone = fast_config("no-such-model", negatives="validation", max_val_examples=None)
    with pytest.raises(ConfigError, match="--max-val-examples"):  # all held out: refused before a model loads
        train_ranker("chain", workdir=workdir, config=everyone, device="cpu")

    changes = dict(negatives="validation", max_val_examples=3, max_train_examples=None, eval_every=50)
    config = fast_config(tiny_llama_dir, loss="letters", retriever_prior=1.0, **changes)
    manifest = train_ranker("chain", workdir=workdir, config=config, device="cpu", stop_after_steps=1)
    assert manifest["train_examples"] == len(val.examples) - 3 and manifest["val_examples"] == 3


class Notes(Reporter):
    """The notes a training says before it starts."""

    def __init__(self):
        self.lines = []

    def note(self, message):
        self.lines.append(message)


def test_a_budget_above_what_the_dataset_gives_is_said(chain_with_candidates, workdir, tiny_llama_dir):
    """A huge --max-train-examples used to spend minutes finding examples without a word, then train on fewer."""
    notes = Notes()
    config = fast_config(tiny_llama_dir, negatives="retrieved", max_train_examples=10**9)
    train_ranker("chain", workdir=workdir, config=config, device="cpu", reporter=notes, stop_after_steps=1)
    assert any(line.startswith("Finding training requests whose true item lrurec retrieves") for line in notes.lines)
    said = [line for line in notes.lines if "fewer than --max-train-examples 1,000,000,000" in line]
    assert len(said) == 1 and said[0].split()[0].replace(",", "").isdigit(), notes.lines


def test_a_batch_above_the_training_examples_is_said(chain_with_candidates, workdir, tiny_llama_dir):
    """--batch-size 10^20 trained one step an epoch without a word."""
    notes = Notes()
    config = fast_config(tiny_llama_dir, batch_size=10**20)
    train_ranker("chain", workdir=workdir, config=config, device="cpu", reporter=notes, stop_after_steps=1)
    assert any("A step's batch of 100,000,000,000,000,000,000 is more than the" in line for line in notes.lines)


def test_a_bad_template_is_refused_before_the_config_is_shown_or_the_weights_load(
    chain_with_candidates, workdir, tiny_llama_dir, tmp_path, monkeypatch
):
    shown = CliRunner().invoke(build_app(), ["rank-train", "chain", "--template", "nosuch", "--show-config"])
    assert (
        shown.exit_code != 0 and "Unknown prompt template 'nosuch'" in shown.output and "alpaca-short" in shown.output
    )

    split = tmp_path / "space.toml"  # the answer letter would not be one token after "Answer: "
    split.write_text(load_template("plain").path.read_text().replace("Answer (the candidate's letter):\\n", "Answer: "))

    def never(*args, **kwargs):
        raise AssertionError("the weights were loaded")

    monkeypatch.setattr("llamarec_cli.ranking.models.load_model", never)
    config = fast_config(tiny_llama_dir, template=str(split))
    with pytest.raises(VerbalizerError, match="exactly one new token"):
        train_ranker("chain", workdir=workdir, config=config, device="cpu")


def test_a_lora_rank_above_the_model_width_is_refused_before_the_weights_load(
    chain_with_candidates, workdir, tiny_llama_dir, monkeypatch
):
    """--lora-r 1000000000 passed every check, loaded the model, then failed in peft allocating terabytes."""

    def never(*args, **kwargs):
        raise AssertionError("the weights were loaded")

    monkeypatch.setattr("llamarec_cli.ranking.models.load_model", never)
    with pytest.raises(ConfigError, match="--lora-r 1,000,000,000 is above the model's hidden size"):
        train_ranker("chain", workdir=workdir, config=fast_config(tiny_llama_dir, lora_r=10**9), device="cpu")
