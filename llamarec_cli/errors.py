"""Errors a user can act on. The CLI prints each as one red line and exits non-zero."""

from __future__ import annotations


class LlamarecError(Exception):
    """Base class: an expected failure with an actionable message."""

    exit_code = 1


def as_typed(text: str, limit: int = 80) -> str:
    """What a user typed, fit to be echoed in one line: control characters (a terminal's colour codes) written out,
    a long text cut (a megabyte sent as a title must not come back in the error)."""
    shown = "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)
    return shown if len(shown) <= limit else shown[: limit - 1] + "…"


class UnknownUserError(LlamarecError):
    """A user id the dataset does not have."""

    exit_code = 2


class UnknownNameError(LlamarecError, KeyError):
    """A dataset, retriever or template name that nothing registered."""

    exit_code = 2

    def __init__(self, kind: str, name: str, known: list[str]):
        self.kind, self.name, self.known = kind, name, sorted(known)
        known_text = ", ".join(self.known) if self.known else "none"
        super().__init__(f"Unknown {kind} '{name}'. Known {kind}s: {known_text}.")

    def __str__(self) -> str:  # KeyError would add quotes around the message
        return self.args[0]


class ConfigError(LlamarecError, ValueError):
    """A config value that is out of range or of the wrong type."""

    exit_code = 2


class DuplicateNameError(LlamarecError):
    """Two plugins registered the same name."""


class PluginError(LlamarecError):
    """A plugin failed to load or registered something invalid."""


class RawDataMissingError(LlamarecError):
    """Raw input files are neither given, cached nor downloadable."""


class DataFormatError(LlamarecError):
    """A raw or imported file does not have the expected content."""

    def __init__(self, path, message: str, line: int | None = None):
        self.path, self.line = path, line
        where = f"{path}" if line is None else f"{path}, line {line}"
        super().__init__(f"{where}: {message}")


class ArtifactError(LlamarecError):
    """An artifact in the work directory is missing, stale or does not match."""


class WorkdirError(LlamarecError):
    """The work directory cannot be used."""

    @classmethod
    def unwritable(cls, workdir, exc: OSError) -> WorkdirError:
        return cls(
            f"Cannot write to work directory {workdir}: {exc.strerror or exc}. "
            f"Choose a writable one with --workdir or LLAMAREC_WORKDIR."
        )


class TrainingDivergedError(LlamarecError):
    """The training loss became NaN or infinite: the run stops rather than save broken weights. ``untrained``: it
    was so before any update (the model itself, not the learning rate)."""

    def __init__(self, message: str, untrained: bool = False):
        super().__init__(message)
        self.untrained = untrained


class ModelError(LlamarecError):
    """A language model or tokenizer that cannot be found or loaded."""
