"""``llamarec serve-shell``: an interactive prompt over a loaded Recommender (cmd.Cmd, with readline editing and a
history file). Every expected problem is answered in one line; the shell never shows a traceback."""

from __future__ import annotations

import cmd
from pathlib import Path

from rich.console import Console
from rich.table import Table

from ..errors import LlamarecError
from .answer import resolve_history, unmatched
from .recommender import CANDIDATES, Recommendation, Recommender

HELP = """Commands:
  user <id>                  recommend for a user of the dataset (their whole history)
  history <title>; <title>   recommend for a new user with this history, oldest first
  top <k>                    show the top k of the ranked list (now {top})
  help                       this text
  quit                       leave (or Ctrl-D)"""


def print_recommendation(console: Console, rec: Recommendation, top: int, who: str) -> None:
    console.print(f"[bold]{who}[/bold]: last {len(rec.history)} items, oldest first")
    for i, (_, title) in enumerate(rec.history, 1):
        console.print(f"  ({i}) {title}", highlight=False)
    shown = min(top, len(rec.candidates))
    retrieved = Table(title=f"Retriever: top {shown} of {len(rec.candidates)} candidates", title_justify="left")
    for column in ("#", "title", "score"):
        retrieved.add_column(column, justify="right" if column != "title" else "left")
    for rank, c in enumerate(rec.candidates[:top], 1):
        retrieved.add_row(str(rank), c["title"], f"{c['score']:.2f}")
    console.print(retrieved)
    if rec.ranked is not None:
        title = "Ranker" if rec.alpha is None else f"Ranker fused with the retriever (α = {rec.alpha:g})"
        ranked = Table(title=title, title_justify="left")
        for column in ("#", "title", "probability", "was"):
            ranked.add_column(column, justify="right" if column != "title" else "left")
        was = {c["item"]: n for n, c in enumerate(rec.candidates, 1)}
        for rank, r in enumerate(rec.ranked[:top], 1):
            ranked.add_row(str(rank), r["title"], f"{r['probability']:.3f}", f"#{was[r['item']]}")
        console.print(ranked)
    timing = f"retrieval {rec.seconds['retrieval'] * 1000:.0f} ms"
    if rec.ranked is not None:
        timing += f", ranking {rec.seconds['ranking'] * 1000:.0f} ms"
    console.print(f"[dim]{timing}[/dim]")


class Shell(cmd.Cmd):
    prompt = "llamarec> "

    def __init__(self, recommender: Recommender, console: Console, top: int = 10, history_file: Path | None = None):
        super().__init__()
        self.recommender, self.console, self.top = recommender, console, top
        self.history_file = history_file
        self.intro = (
            f"{recommender.dataset.name}: {recommender.dataset.users.height:,} users, "
            f"{len(recommender.titles):,} items; "
            f"ranker: {recommender.ranker_name}. Type help."
        )

    # readline keeps the typed lines across sessions
    def preloop(self):
        try:
            import readline

            if self.history_file and self.history_file.is_file():
                readline.read_history_file(self.history_file)
        except (ImportError, OSError):
            pass

    def postloop(self):
        try:
            import readline

            if self.history_file:
                self.history_file.parent.mkdir(parents=True, exist_ok=True)
                readline.write_history_file(self.history_file)
        except (ImportError, OSError):
            pass

    def onecmd(self, line):
        try:
            return super().onecmd(line)
        except LlamarecError as exc:
            self.console.print(f"[red]{exc}[/red]")
        except Exception as exc:  # noqa: BLE001 - a shell must survive anything a line can cause
            self.console.print(f"[red]Unexpected error: {exc!r}. Set LLAMAREC_DEBUG=1 and rerun to see where.[/red]")
        return False

    def emptyline(self):
        return False

    def default(self, line):
        self.console.print(f"Unknown command '{line.split()[0]}'. Type help.")

    def do_help(self, arg):
        self.console.print(HELP.format(top=self.top), highlight=False)

    def do_quit(self, arg):
        return True

    do_exit = do_quit

    def do_EOF(self, arg):  # noqa: N802 - the name cmd.Cmd gives Ctrl-D
        self.console.print()
        return True

    def do_top(self, arg):
        if not arg.strip().isdigit() or int(arg) < 1:
            self.console.print(f"Usage: top <k>, k a whole number from 1 to {CANDIDATES}.")
            return
        self.top = min(int(arg), CANDIDATES)
        self.console.print(f"Showing the top {self.top}.")

    def do_user(self, arg):
        user = arg.strip()
        if not user:
            self.console.print("Usage: user <id>")
            return
        history = self.recommender.user_history(user)
        print_recommendation(self.console, self.recommender.recommend(history), self.top, f"User {user}")

    def do_history(self, arg):
        titles = [t.strip() for t in arg.split(";") if t.strip()]
        if not titles:
            self.console.print("Usage: history <title>; <title>; ...")
            return
        items = []
        for title in titles:
            match = self.recommender.index.match(title)
            if match.item is None:
                self.console.print(unmatched(match, self.recommender), highlight=False, markup=False)
                return
            if not match.exact:
                self.console.print(f"[dim]'{title}' → {match.title}[/dim]", highlight=False)
            items.append(match.item)
        print_recommendation(self.console, self.recommender.recommend(items), self.top, "Your history")


def parse_history(recommender: Recommender, text: str) -> list[int]:
    """For the one-shot path: titles separated by ';', every one must match; the error lists the close ones."""
    titles = [t.strip() for t in text.split(";") if t.strip()]
    if not titles:
        raise LlamarecError("--history needs titles separated by ';'.")
    return resolve_history(recommender, titles)
