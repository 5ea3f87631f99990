"""The training progress on stderr: a bar per epoch with the running loss and the last validation figures.

The trainers (``retrieval/train.fit``, ``stages/rank_train.train_ranker``) report through the ``Reporter`` interface and
print nothing themselves; the CLI commands hand them this one.
"""

from __future__ import annotations

from ..retrieval.train import RETRIEVER_EARLY_STOP_METRIC
from ..training import Reporter
from .output import stderr


class RichReporter(Reporter):
    """A progress bar per epoch with the running loss and the last validation figures, on stderr."""

    def __init__(self, max_epochs: int, metric: str = RETRIEVER_EARLY_STOP_METRIC):
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self.max_epochs, self.metric, self.loss, self.last = max_epochs, metric, None, "no validation yet"
        self.progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TextColumn("{task.fields[status]}"),
            console=stderr,
            transient=False,
        )
        self.progress.start()
        self.task = None

    def _status(self) -> str:
        loss = "" if self.loss is None else f"loss {self.loss:.4f} · "
        return loss + self.last

    def epoch(self, epoch, batches, done):
        if self.task is not None:
            self.progress.remove_task(self.task)
        self.task = self.progress.add_task(
            f"epoch {epoch + 1}/{self.max_epochs}", total=batches, completed=done, status=self._status()
        )

    def step(self, loss):
        self.loss = loss if self.loss is None else 0.98 * self.loss + 0.02 * loss
        self.progress.update(self.task, advance=1, status=self._status())

    def validated(self, step, metrics, best, bad, patience):
        self.last = (
            f"val R@10 {metrics['Recall@10']:.4f} N@10 {metrics['NDCG@10']:.4f} "
            f"(best {self.metric} {best:.4f}, {bad}/{patience} without gain)"
        )
        self.progress.update(self.task, status=self._status())

    def note(self, message):
        self.progress.console.print(message, highlight=False, soft_wrap=True)

    def close(self):
        self.progress.stop()
