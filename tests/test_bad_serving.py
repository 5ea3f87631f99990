"""serve-shell on bad input: titles that differ only by their year, ambiguous or letterless queries, and --top out of
range. Each bad input gets one clear line and never a silent wrong match."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
from rich.console import Console
from typer.testing import CliRunner

from llamarec_cli.cli import build_app
from llamarec_cli.errors import LlamarecError
from llamarec_cli.serving.recommender import CANDIDATES, TitleIndex
from llamarec_cli.serving.shell import Shell, parse_history
from llamarec_cli.stages.retrieve_train import train_retriever

TITLES = {
    1: "The Jungle Book (1967)",
    2: "The Jungle Book (1994)",
    3: "Toy Story (1995)",
    4: "東京物語 (1953)",  # no Latin letters: reachable only as written
    5: "七人の侍 (1954)",
    6: "Emma (1996)",  # the same title twice, as ml-100k has a few
    7: "Emma (1996)",
    8: "Amélie (2001)",
}


class FakeRecommender:
    """What Shell and parse_history read: a dataset name and path, the titles, and recommend (refused here: a bad
    title must stop before any recommendation)."""

    def __init__(self):
        self.titles = TITLES
        self.index = TitleIndex(TITLES)
        users = SimpleNamespace(height=3)
        self.dataset = SimpleNamespace(name="films", path=Path("/runs/films/dataset"), users=users)
        self.ranker_name = "none"

    def recommend(self, items):
        raise AssertionError(f"recommended for {items}")


@pytest.mark.parametrize(
    "query, item",
    [
        ("The Jungle Book (1967)", 1),  # exact, with its year: each year is reachable
        ("The Jungle Book (1994)", 2),
        ("  The Jungle Book (1994)\t", 2),  # whitespace is trimmed
        ("the jungle book (1967)", 1),  # case does not matter
        ("The Jungle Book 1994", 2),  # the year without its parentheses
        ("東京物語 (1953)", 4),  # no Latin letters, typed as written
        ("七人の侍 (1954)", 5),
        ("amelie", 8),  # still forgiving where there is no doubt
        ("Toy Story", 3),
    ],
)
def test_a_title_typed_exactly_is_chosen(query, item):
    match = TitleIndex(TITLES).match(query)
    assert (match.item, match.title, match.ambiguous) == (item, TITLES[item], False)


@pytest.mark.parametrize(
    "query, ambiguous, suggested",
    [
        ("The Jungle Book", True, {1, 2}),  # both years match equally
        ("jungle book", False, {1, 2}),  # close to both: offered, not chosen
        ("Emma (1996)", True, {6, 7}),  # the very same title twice
        ("🎉🎉", False, set()),  # normalises to '': no title is like it
        ("東京物語", False, set()),  # the title without its year normalises to '' too: not some other title
        ("七人の侍 (1953)", False, set()),  # the wrong year of a letterless title: not the other film of 1953
        ("(1953)", False, set()),
        ("   ", False, set()),
        ("", False, set()),
    ],
)
def test_no_title_is_chosen_when_unsure(query, ambiguous, suggested):
    match = TitleIndex(TITLES).match(query)
    assert match.item is None and match.title is None
    assert match.ambiguous == ambiguous and {i for i, _ in match.suggestions} == suggested


def test_a_title_that_normalises_to_nothing_is_not_a_wildcard():
    """A letterless title in the data must not answer every letterless query (it used to: both keyed '')."""
    index = TitleIndex({1: "🎉", 2: "Heat (1995)"})
    assert index.match("🎉").item == 1
    assert index.match("🙂").item is None and not index.match("🙂").suggestions


@pytest.mark.parametrize(
    "query, expected",
    [
        (
            "The Jungle Book",
            "Ambiguous title 'The Jungle Book': The Jungle Book (1967); The Jungle Book (1994). "
            "Type one exactly as listed.",
        ),
        ("Emma (1996)", "Ambiguous title 'Emma (1996)': films has 'Emma (1996)' more than once (items 6, 7)."),
        ("Emma", "Ambiguous title 'Emma': films has 'Emma (1996)' more than once (items 6, 7)."),
        ("🎉", "No title matches '🎉' in films: a title without Latin letters or digits must be typed exactly"),
        ("東京物語", "No title matches '東京物語' in films"),
        ("qqqq zzzz", "No title like 'qqqq zzzz' in films."),
        ("jungle book", "Not sure which title 'jungle book' is. Did you mean: The Jungle Book (1967); The Jungle"),
        ("\x1b[31mqqqq", "No title like '\\x1b[31mqqqq' in films."),  # a colour code is shown, not obeyed
        ("q" * 100_000, f"No title like '{'q' * 79}…' in films."),  # a huge title is not echoed whole
    ],
)
def test_the_one_shot_history_refuses_in_one_line(query, expected):
    with pytest.raises(LlamarecError) as caught:
        parse_history(FakeRecommender(), f"Toy Story; {query}")
    message = str(caught.value)
    assert message.startswith(expected) and "\n" not in message
    if "Latin" in expected:
        assert message.endswith(f"in {Path('/runs/films/dataset/items.parquet')}.")  # where to find the titles


@pytest.mark.parametrize("text", ["", "   ", " ; ;\t"])
def test_the_one_shot_history_needs_a_title(text):
    with pytest.raises(LlamarecError, match="--history needs titles"):
        parse_history(FakeRecommender(), text)


def test_the_one_shot_history_takes_both_years():
    assert parse_history(FakeRecommender(), "The Jungle Book (1994); The Jungle Book (1967)") == [2, 1]


@pytest.mark.parametrize(
    "line, expected",
    [
        ("history The Jungle Book", "Ambiguous title 'The Jungle Book': The Jungle Book (1967); The Jungle Book"),
        ("history 🎉", "No title matches '🎉' in films"),
        ("history Toy Story; 東京物語", "No title matches '東京物語' in films"),
        ("history [bold]Heat", "No title like '[bold]Heat' in films."),  # typed text is not read as markup
        ("history  ;  ", "Usage: history <title>"),
        ("top 0", "Usage: top <k>, k a whole number from 1 to 20."),
    ],
)
def test_the_shell_answers_bad_input_in_one_line(line, expected):
    console = Console(record=True, width=400, color_system=None)
    Shell(FakeRecommender(), console).onecmd(line)
    text = console.export_text()
    assert text.startswith(expected) and text.count("\n") == 1, text


@pytest.mark.parametrize("top", ["0", "-5", "-1"])
def test_a_non_positive_top_is_refused_before_anything_loads(top, tmp_path):
    """The work directory is empty: loading anything would fail with another error."""
    args = ["serve-shell", "chain", "-w", str(tmp_path / "empty"), "--user", "u3", "--top", top, "--device", "cpu"]
    result = CliRunner().invoke(build_app(), args)
    assert result.exit_code == 2, result.output
    assert f"--top must be a whole number from 1 to {CANDIDATES}, not {top}." in result.output
    assert not (tmp_path / "empty").exists()


@pytest.fixture
def retriever_only(chain, workdir):
    train_retriever("chain", workdir=workdir, device="cpu", flags={"hidden": 16, "val_every": 10, "max_epochs": 2})
    return ["serve-shell", "chain", "-w", str(workdir), "--ranker", "none", "--device", "cpu"]


@pytest.mark.parametrize("top", ["21", "1000000"])
def test_a_top_beyond_the_candidates_shows_them_all_and_says_so(retriever_only, top):
    result = CliRunner().invoke(build_app(), [*retriever_only, "--user", "u3", "--top", top])
    assert result.exit_code == 0, result.output
    assert f"--top {top}: there are {CANDIDATES} candidates; showing all {CANDIDATES}." in result.stderr
    assert f"│ {CANDIDATES} │" in result.stdout and f"│ {CANDIDATES + 1} │" not in result.stdout  # table rows


@pytest.mark.parametrize(
    "history, code, expected",
    [
        ("Item 3; 🎉", 1, "No title matches '🎉' in chain"),
        ("東京物語", 1, "No title matches '東京物語' in chain"),
        ("  ", 1, "--history needs titles"),
        ("item 3; Item 4", 0, None),
    ],
)
def test_the_one_shot_cli_on_bad_titles(retriever_only, history, code, expected):
    result = CliRunner().invoke(build_app(), [*retriever_only, "--history", history, "--json"])
    assert result.exit_code == code, result.output
    if expected is None:
        assert [h["title"] for h in json.loads(result.stdout)["history"]] == ["Item 3", "Item 4"]
    else:
        assert expected in result.stderr and "Traceback" not in result.output


def test_an_unknown_user_is_echoed_cut_and_with_control_characters_written_out(retriever_only):
    result = CliRunner().invoke(build_app(), [*retriever_only, "--user", "\x1b[31m" + "u" * 1000])
    assert result.exit_code != 0 and "No user '\\x1b[31m" in result.output and "u" * 200 not in result.output


@pytest.mark.parametrize(
    "command, option, message",
    [
        ("serve-shell", ["--fusion", "7"], "--fusion must be"),
        ("serve-shell", ["--dtype", "foo"], "Unknown dtype 'foo'"),
        ("serve-shell", ["--device", "gpu"], "gpu"),
        ("evaluate", ["--dtype", "foo"], "Unknown dtype 'foo'"),  # with --ranker none it was ignored, status 0
        ("serve", ["--fusion", "7"], "--fusion must be"),  # it was found after the port was bound
        ("serve", ["--wait-ms", "40000", "--timeout", "30"], "every request would time out"),
    ],
)
def test_loading_options_are_checked_before_anything_loads(chain, workdir, command, option, message):
    args = [command, "chain", "-w", str(workdir), "--ranker", "none", *option]
    result = CliRunner().invoke(build_app(), [*args, "--port", "0"] if command == "serve" else args)
    assert result.exit_code != 0 and "Traceback" not in result.output and "Listening on" not in result.output
    assert message in " ".join(result.output.split()), result.output


@pytest.mark.parametrize("value", ["inf", "1e12"])
def test_a_serve_timeout_out_of_range_is_refused(value):
    result = CliRunner().invoke(build_app(), ["serve", "chain", "--timeout", value])
    assert result.exit_code == 2 and "Traceback" not in result.output  # inf was an OverflowError


def test_an_unknown_user_is_refused_before_the_ranker_loads(retriever_only, monkeypatch):
    def never(*args, **kwargs):
        raise AssertionError("the models were loaded")

    monkeypatch.setattr("llamarec_cli.serving.recommender.Recommender.__init__", never)
    result = CliRunner().invoke(build_app(), [*retriever_only, "--user", "99999"])
    assert result.exit_code == 2 and "No user '99999' in chain" in result.output


def test_ctrl_c_leaves_the_interactive_shell_as_quit_does(retriever_only, monkeypatch):
    def interrupted(self):
        raise KeyboardInterrupt

    monkeypatch.setattr("llamarec_cli.serving.shell.Shell.cmdloop", interrupted)
    result = CliRunner().invoke(build_app(), retriever_only)
    assert result.exit_code == 0 and "Interrupted" not in result.output


def test_evaluate_with_the_retriever_alone_needs_no_device(chain_with_candidates, workdir):
    """Nothing runs on the device: a machine without a GPU may say --device cuda (the check refused it)."""
    args = ["evaluate", "chain", "-w", str(workdir), "--ranker", "none", "--device", "cuda"]
    assert CliRunner().invoke(build_app(), args).exit_code == 0


def test_a_ranker_is_not_served_beside_a_retrained_retriever(chain_with_candidates, workdir, tiny_llama_dir):
    """evaluate refused it, but serve and serve-shell retrieved with the new retriever and fused its scores with the
    α the ranker learned beside the old one."""
    from conftest import fast_config

    from llamarec_cli.errors import ArtifactError
    from llamarec_cli.serving.recommender import Recommender
    from llamarec_cli.stages.rank_train import train_ranker

    train_ranker("chain", workdir=workdir, config=fast_config(tiny_llama_dir), device="cpu")
    Recommender("chain", workdir=workdir, device="cpu")  # as trained: served
    train_retriever("chain", workdir=workdir, device="cpu", flags={"hidden": 16, "max_epochs": 2, "seed": 3})
    message = "Retriever 'lrurec' of chain was retrained after ranker 'default' learned beside it"
    with pytest.raises(ArtifactError, match=f"{message}.*llamarec candidates chain.*llamarec rank-train chain --set"):
        Recommender("chain", workdir=workdir, device="cpu")
    result = CliRunner().invoke(build_app(), ["serve-shell", "chain", "-w", str(workdir), "--user", "u3"])
    assert result.exit_code != 0 and message in " ".join(result.output.split())


def test_serving_needs_no_candidates_file(chain_with_candidates, workdir, tiny_llama_dir):
    """A replica holds the dataset, the retriever and the ranker (docs/serving.md); candidates exported again
    (another k, same retriever) do not stop it either."""
    from conftest import fast_config

    from llamarec_cli.serving.recommender import Recommender
    from llamarec_cli.stages.candidates import candidates_paths, export_candidates
    from llamarec_cli.stages.rank_train import train_ranker

    train_ranker("chain", workdir=workdir, config=fast_config(tiny_llama_dir), device="cpu")
    export_candidates("chain", workdir=workdir, k=5, device="cpu")
    Recommender("chain", workdir=workdir, device="cpu")
    for path in candidates_paths(workdir, "chain", "lrurec"):
        path.unlink()
    assert Recommender("chain", workdir=workdir, device="cpu").recommend([1, 2, 3]).ranked
