"""A trained ranker used wrongly: with another prompt, another retriever's or re-exported candidates, a damaged
adapter, a fusion without a ranker, a name that is not one. Each is refused in one line rather than scored quietly
on something it was not trained for; and a sampled evaluate compares both orders on the same users."""

from __future__ import annotations

import pytest
from conftest import fast_config
from typer.testing import CliRunner

from llamarec_cli.cli import build_app
from llamarec_cli.errors import ArtifactError, ConfigError, UnknownNameError
from llamarec_cli.ranking.templates import packaged_templates
from llamarec_cli.stages.candidates import export_candidates
from llamarec_cli.stages.evaluate import evaluate
from llamarec_cli.stages.rank_train import ranker_dir, train_ranker
from llamarec_cli.stages.tune_fusion import tune_fusion


@pytest.fixture
def trained(chain_with_candidates, workdir, tiny_llama_dir):
    train_ranker("chain", workdir=workdir, config=fast_config(tiny_llama_dir, max_train_examples=4), device="cpu")
    return workdir


def test_a_trained_ranker_is_not_given_another_template(trained):
    with pytest.raises(
        ConfigError, match="trained with the template .alpaca-short.; --template .*plain.toml .*--adapter none"
    ):
        evaluate("chain", workdir=trained, template="plain", device="cpu")
    same = str(packaged_templates()["alpaca-short"])  # the very file it was trained with, by path: fine
    assert evaluate("chain", workdir=trained, template=same, device="cpu", max_examples=2)["ranker"]


def test_a_template_of_the_same_name_that_differs_is_refused(trained, tmp_path):
    """A file of the same name found first in --templates-dir, or edited, would change every prompt silently."""
    shadow = tmp_path / "shadow"
    shadow.mkdir()
    text = packaged_templates()["alpaca-short"].read_text()
    (shadow / "alpaca-short.toml").write_text(text.replace("Candidate", "Option", 1))
    with pytest.raises(ArtifactError, match="trained with another 'alpaca-short' template than .*shadow"):
        evaluate("chain", workdir=trained, templates_dir=shadow, device="cpu")
    (shadow / "alpaca-short.toml").write_text(text)  # the same file: fine
    assert evaluate("chain", workdir=trained, templates_dir=shadow, device="cpu", max_examples=2)["ranker"]


def test_another_retriever_than_the_rankers_is_refused(trained):
    with pytest.raises(ConfigError, match="ranks the candidates of 'lrurec', not 'sasrec'"):
        evaluate("chain", workdir=trained, retriever="sasrec", device="cpu")
    assert evaluate("chain", workdir=trained, retriever="lrurec", device="cpu", max_examples=2)["ranker"]
    with pytest.raises(UnknownNameError, match="Unknown retriever 'foo'"):  # not "train a ranker on 'foo'"
        evaluate("chain", workdir=trained, retriever="foo", device="cpu")


def test_candidates_exported_again_after_training_are_refused_by_evaluate_as_by_tune_fusion(trained):
    export_candidates("chain", workdir=trained, k=5, device="cpu")
    for run in (
        lambda: evaluate("chain", workdir=trained, device="cpu"),
        lambda: tune_fusion("chain", workdir=trained),
    ):
        # the rerun trains the same ranker: with its model and settings, not Llama 2 7B by default
        with pytest.raises(ArtifactError, match="exported again after ranker 'default' was trained.*--set model=/"):
            run()


def test_a_fusion_without_a_ranker_is_refused(chain_with_candidates, workdir):
    with pytest.raises(ConfigError, match="--fusion 0.5 needs a ranker"):
        evaluate("chain", workdir=workdir, ranker="none", fusion="0.5")
    assert "ranker" not in evaluate("chain", workdir=workdir, ranker="none")
    assert "ranker" not in evaluate("chain", workdir=workdir, ranker="none", fusion="none")  # what none means


@pytest.mark.parametrize("options", [{"adapter": "none", "model": ""}, {"adapter": ""}, {"adapter": " "}])
def test_an_empty_model_or_adapter_is_refused_not_read_as_the_default(chain_with_candidates, workdir, options):
    """--adapter none --model '' went on to download Llama 2 7B (13 GB); --adapter '' used the trained one."""
    with pytest.raises(ConfigError, match=r"--(model|adapter) is empty"):
        evaluate("chain", workdir=workdir, device="cpu", **options)


def test_a_sampled_evaluate_compares_both_orders_on_the_same_users(trained):
    report = evaluate("chain", workdir=trained, device="cpu", max_examples=3)
    for who in ("retriever", "ranker"):
        for key, value in report["subset"][who].items():
            assert report["overall"][who][key] == pytest.approx(value * report["hit_rate"])


def test_a_truncated_adapter_given_with_adapter_is_one_line(trained, tmp_path):
    import shutil

    adapter = tmp_path / "adapter"
    shutil.copytree(ranker_dir(trained, "chain", "default") / "adapter", adapter)
    weights = adapter / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:40])
    args = ["evaluate", "chain", "-w", str(trained), "--adapter", str(adapter), "--device", "cpu"]
    result = CliRunner().invoke(build_app(), args)
    assert result.exit_code == 1 and "cannot be loaded" in result.output and "Traceback" not in result.output


def test_a_ranker_name_that_is_not_one_lists_those_there_and_an_interrupted_one_says_resume(trained, tiny_llama_dir):
    with pytest.raises(ArtifactError, match="No trained ranker 'nosuch'.*Trained rankers there: default"):
        evaluate("chain", workdir=trained, ranker="nosuch", device="cpu")
    config = fast_config(tiny_llama_dir)  # validation every 2 steps: resumable from step 2
    train_ranker("chain", workdir=trained, config=config, name="cut", device="cpu", stop_after_steps=3)
    with pytest.raises(ArtifactError, match="'cut' for chain was interrupted.*--name cut .*--resume"):
        evaluate("chain", workdir=trained, ranker="cut", device="cpu")


@pytest.mark.parametrize(
    "args, message",
    [
        (["--user", "u3", "--history", "Item 3"], "Give --user or --history, not both"),
        (["--ranker", "none", "--fusion", "0.5"], "--fusion 0.5 needs a ranker"),
        (["--device", "mps"], "Unknown device 'mps'. Use auto, cpu, cuda or cuda:N."),
    ],
)
def test_serve_shell_refuses_options_it_would_ignore(chain_with_candidates, workdir, args, message):
    result = CliRunner().invoke(build_app(), ["serve-shell", "chain", "-w", str(workdir), *args])
    assert result.exit_code == 2 and message in result.output, result.output


def test_an_unknown_retriever_lists_the_known_ones_rather_than_a_command_that_fails(chain_with_candidates, workdir):
    with pytest.raises(UnknownNameError, match="Unknown retriever 'nope'. Known retrievers: .*lrurec"):
        evaluate("chain", workdir=workdir, ranker="none", retriever="nope")


def test_rank_train_on_cpu_0_is_the_cpu(chain_with_candidates, workdir, tiny_llama_dir):
    config = fast_config(tiny_llama_dir, max_train_examples=4)
    assert train_ranker("chain", workdir=workdir, config=config, device="cpu:0")["device"] == "cpu"


def test_a_ranker_is_refused_on_titles_changed_since_it_trained(chain_with_candidates, workdir, tiny_llama_dir):
    """The dataset's checksum covers the interactions only: preprocess again with other titles (other raw files,
    --unescape-titles) and the ranker was scored on prompts of titles it never read, without a word."""
    import dataclasses

    import polars as pl

    from llamarec_cli import hookimpl, plugins
    from llamarec_cli.stages.preprocess import preprocess
    from llamarec_cli.testing import chain_dataset

    train_ranker("chain", workdir=workdir, config=fast_config(tiny_llama_dir), device="cpu")
    renamed = pl.DataFrame({"item": [f"i{i}" for i in range(40)], "title": [f"Renamed {i}" for i in range(40)]})

    class RenamedChain:
        @hookimpl
        def register_datasets(self, register):
            register(dataclasses.replace(chain_dataset("chain", 150), read_titles=lambda files, needed: renamed))

    plugins.unregister_plugin("chain-plugin")
    plugins.register_plugin(RenamedChain(), name="chain-plugin")  # the chain fixture unregisters it
    preprocess("chain", workdir=workdir)
    with pytest.raises(ArtifactError, match="trained on other titles of chain.*Rerun: llamarec rank-train chain"):
        evaluate("chain", workdir=workdir, device="cpu", max_examples=2)
