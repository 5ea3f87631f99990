"""Prompt templates: data files (TOML) that say how a history and its candidates become the ranker's prompt.

A template is found by name in this order (DESIGN.md): an explicit path, the ``--templates-dir`` directory,
templates registered by plugins, then the packaged defaults in ``templates/``. The default, ``alpaca-short``, is
the paper's prompt (METHOD.md §5). Fields and placeholders are checked when the file is read, so a broken template
is refused before any model is loaded.
"""

from __future__ import annotations

import re
import string
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from ..errors import ConfigError, DataFormatError, UnknownNameError

DEFAULT_TEMPLATE = "alpaca-short"
LETTERS = "ABCDEFGHIJKLMNOPQRST"  # index letters of the candidates: at most 20 (METHOD.md §5)

# field -> (placeholders it must contain, placeholders it may contain)
PLACEHOLDERS = {
    "layout": ({"input"}, {"instruction", "input"}),
    "input": ({"history", "candidates"}, {"history", "candidates"}),
    "history_item": ({"title"}, {"index", "title"}),
    "candidate_item": ({"letter", "title"}, {"letter", "title"}),
}
TEXT_FIELDS = (*PLACEHOLDERS, "instruction", "separator", "description")
NUMBER_FIELDS = ("history_length", "title_tokens", "max_tokens")


@dataclass(frozen=True)
class PromptTemplate:
    name: str
    path: Path
    description: str
    layout: str
    instruction: str
    input: str
    history_item: str
    candidate_item: str
    separator: str
    history_length: int
    title_tokens: int
    max_tokens: int

    def render(self, history: list[str], candidates: list[str]) -> str:
        """The prompt for (already truncated) titles: the last ``history_length`` of the history, numbered from 1,
        and the candidates lettered from A in the order given. The answer letter follows it directly."""
        if len(candidates) > len(LETTERS):
            raise ConfigError(too_many_candidates(len(candidates)))
        shown = history[-self.history_length :] if self.history_length else []
        history_text = self.separator.join(
            self.history_item.format(index=i, title=title) for i, title in enumerate(shown, 1)
        )
        candidates_text = self.separator.join(
            self.candidate_item.format(letter=letter, title=title) for letter, title in zip(LETTERS, candidates)
        )
        body = self.input.format(history=history_text, candidates=candidates_text)
        return self.layout.format(instruction=self.instruction, input=body)


def read_template(path: Path, name: str | None = None) -> PromptTemplate:
    """Read and check one template file; every problem names the file and what to fix."""
    import tomllib

    try:
        data = tomllib.loads(path.read_text(encoding="utf-8-sig"))  # -sig: a BOM, as Notepad writes, is fine
    except IsADirectoryError:
        raise DataFormatError(path, "is a directory, not a template file") from None
    except OSError as exc:
        raise DataFormatError(path, f"cannot read the template ({exc.strerror or exc})") from exc
    except UnicodeDecodeError as exc:
        line = path.read_bytes()[: exc.start].count(b"\n") + 1
        raise DataFormatError(path, "the template is not UTF-8 text; save it as UTF-8", line=line) from None
    except tomllib.TOMLDecodeError as exc:
        line = getattr(exc, "lineno", None)
        raise DataFormatError(path, f"not valid TOML ({exc})", line=line) from exc
    data.setdefault("description", "")
    missing = [f for f in (*TEXT_FIELDS, *NUMBER_FIELDS) if f not in data]
    if missing:
        raise DataFormatError(path, f"template is missing the field(s) {', '.join(missing)}")
    unknown = sorted(set(data) - set(TEXT_FIELDS) - set(NUMBER_FIELDS))
    if unknown:
        raise DataFormatError(path, f"unknown template field(s) {', '.join(unknown)}")
    for field_name in TEXT_FIELDS:
        if not isinstance(data[field_name], str):
            raise DataFormatError(path, f"field '{field_name}' must be a string")
    for field_name in NUMBER_FIELDS:
        least = 0 if field_name == "history_length" else 1  # 0 titles' tokens would blank every title
        value = data[field_name]
        if not isinstance(value, int) or isinstance(value, bool) or value < least:
            raise DataFormatError(path, f"field '{field_name}' must be a whole number >= {least}")
    for field_name, (required, allowed) in PLACEHOLDERS.items():
        found = _placeholders(path, field_name, data[field_name])
        if not required <= found <= allowed:
            missing = ", ".join("{" + p + "}" for p in sorted(required - found))
            problem = f"lacks {missing}" if missing else f"has unknown placeholder(s) {sorted(found - allowed)}"
            may = ", ".join("{" + p + "}" for p in sorted(allowed))
            raise DataFormatError(path, f"field '{field_name}' {problem} (it may use {may})")
    for field_name in ("instruction", "separator", "description"):
        if _placeholders(path, field_name, data[field_name], check=False):
            raise DataFormatError(
                path,
                f"field '{field_name}' is used as written: it cannot contain {{placeholders}} (only layout, input, "
                "history_item and candidate_item are filled in)",
            )
    if data["max_tokens"] < 16:
        raise DataFormatError(path, "field 'max_tokens' must be at least 16")
    return PromptTemplate(name=name or path.stem, path=path, **data)


def _placeholders(path: Path, field_name: str, text: str, check: bool = True) -> set[str]:
    """The placeholder names in ``text``. With ``check``, each must be a bare name such as ``{title}``: a format spec
    (``{title:>9}``, ``{title:{index}}``), a conversion (``{title!r}``) or attribute/index access (``{title.x}``,
    ``{title[0]}``) would fail, or build a huge string, only when a prompt is rendered, so they are refused here."""
    try:
        parsed = [(name, spec, conversion) for _, name, spec, conversion in string.Formatter().parse(text)]
    except ValueError as exc:
        raise DataFormatError(path, f"field '{field_name}' has a malformed placeholder ({exc})") from exc
    if check:
        for name, spec, conversion in parsed:
            if name is not None:
                _check_placeholder(path, field_name, name, spec, conversion)
    return {name for name, _, _ in parsed if name is not None}


def _check_placeholder(path: Path, field_name: str, name: str, spec: str, conversion: str | None) -> None:
    """Refuse anything but a bare name, naming the field, the placeholder as written and its bare form."""
    shown = "{" + name + (f"!{conversion}" if conversion else "") + (f":{spec}" if spec else "") + "}"
    stem = re.match(r"\s*([A-Za-z_]\w*)", name)
    if not name.isidentifier():
        if not name:
            problem = "has no name"
        elif stem and name[stem.end() :][:1] in (".", "["):
            problem = "uses attribute or index access"
        else:
            problem = "is not a plain name"
    elif conversion:
        problem = f"has a conversion (!{conversion})"
    elif spec:
        problem = f"has a format spec (:{spec})"
    else:
        return
    allowed = PLACEHOLDERS.get(field_name, (set(), set()))[1]
    if stem and stem.group(1) in allowed:
        fix = f"write a bare {{{stem.group(1)}}}"
    else:
        fix = "use a bare name: " + ", ".join("{" + p + "}" for p in sorted(allowed))
    raise DataFormatError(
        path,
        f"field '{field_name}': placeholder {shown} {problem}, which templates do not allow; {fix} "
        f"({{{{ and }}}} write literal braces)",
    )


def too_many_candidates(count: int) -> str:
    return (
        f"A prompt can letter at most {len(LETTERS)} candidates ({LETTERS[0]}-{LETTERS[-1]}), got {count}. "
        f"Export at most {len(LETTERS)}: llamarec candidates <dataset> --k {len(LETTERS)}"
    )


def packaged_templates() -> dict[str, Path]:
    folder = resources.files("llamarec_cli") / "templates"
    return {Path(str(f)).stem: Path(str(f)) for f in folder.iterdir() if f.name.endswith(".toml")}


def available_templates(templates_dir: Path | None = None) -> dict[str, tuple[Path, str]]:
    """name -> (path, where it comes from), the first source in the search order winning."""
    from .. import plugins

    found: dict[str, tuple[Path, str]] = {}
    if templates_dir is not None:
        # A mistyped --templates-dir would otherwise fall back to the packaged templates without a word.
        if not Path(templates_dir).is_dir():
            raise ConfigError(f"templates directory {templates_dir} does not exist or is not a directory")
        for path in sorted(Path(templates_dir).iterdir()):
            if path.suffix.lower() == ".toml":  # Template.TOML too, as some editors save it
                found.setdefault(path.stem, (path, f"directory {templates_dir}"))
    registry = plugins.prompt_templates()
    for name in registry.names():
        found.setdefault(name, (Path(registry.get(name)), f"plugin {registry.owner(name)}"))
    for name, path in sorted(packaged_templates().items()):
        found.setdefault(name, (path, "packaged"))
    return found


def load_template(name_or_path: str | Path = DEFAULT_TEMPLATE, templates_dir: Path | None = None) -> PromptTemplate:
    """A template by path (ending in .toml, or with a folder in it), by name, or else by a bare file name."""
    candidate = Path(name_or_path)
    if candidate.suffix.lower() == ".toml" or len(candidate.parts) > 1:
        if not candidate.exists():
            raise DataFormatError(candidate, "no such template file")
        return read_template(candidate)
    found = available_templates(templates_dir)
    if str(name_or_path) in found:  # a template's name wins over a file of that name in the current folder
        return read_template(found[str(name_or_path)][0], name=str(name_or_path))
    if candidate.is_file():  # a bare file name (a ranker trained with one stores it so)
        return read_template(candidate)
    raise UnknownNameError("prompt template", str(name_or_path), list(found))
