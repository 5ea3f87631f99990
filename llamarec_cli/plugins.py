"""The plugin manager: built-ins first, then external plugins from entry points in group ``llamarec``.

``LLAMAREC_PLUGINS`` limits which external plugins load: a comma-separated list of entry-point or distribution
names (empty: none). Built-ins always load, so they are registered here in code rather than through entry points.
"""

from __future__ import annotations

import os
import sys
from contextlib import contextmanager
from dataclasses import dataclass, field
from importlib.metadata import entry_points

import pluggy

from . import hookspecs
from .errors import DuplicateNameError, LlamarecError, PluginError
from .registry import Registry

GROUP = "llamarec"
ENV_FILTER = "LLAMAREC_PLUGINS"
BUILTIN_PLUGINS = {"llamarec": "llamarec_cli.builtins"}  # plugin name -> module

pm = pluggy.PluginManager(GROUP)
pm.add_hookspecs(hookspecs)


@dataclass
class PluginInfo:
    name: str
    distribution: str
    version: str
    builtin: bool
    commands: list[str] = field(default_factory=list)


_infos: dict[str, PluginInfo] = {}
_registries: dict[str, Registry] = {}
_loaded = False


def load_plugins() -> None:
    """Register the built-ins and the allowed external plugins (once)."""
    global _loaded
    if _loaded:
        return
    _loaded = True
    from importlib import import_module

    from .version import __version__

    for name, module in BUILTIN_PLUGINS.items():
        pm.register(import_module(module), name=name)
        _infos[name] = PluginInfo(name, "llamarec", __version__, builtin=True)

    allowed = os.environ.get(ENV_FILTER)
    allowed_names = None if allowed is None else {n.strip() for n in allowed.split(",") if n.strip()}
    installed = list(entry_points(group=GROUP))
    if allowed_names:
        _warn_unknown(allowed_names, installed)
    for ep in installed:
        dist_name = ep.dist.name if ep.dist else "?"
        if allowed_names is not None and ep.name not in allowed_names and dist_name not in allowed_names:
            continue
        if pm.has_plugin(ep.name):
            raise PluginError(f"Two plugins are named '{ep.name}' (entry point of {dist_name}); rename one.")
        try:
            plugin = ep.load()
        except Exception as exc:  # a broken third-party plugin must not look like a llamarec bug
            raise PluginError(
                f"Plugin '{ep.name}' from {dist_name} failed to load: {exc!r}. "
                f"Reinstall or uninstall it, or exclude it with {ENV_FILTER}."
            ) from exc
        with _fitting(f"Plugin '{ep.name}' from {dist_name}"):
            pm.register(plugin, name=ep.name)
        version = ep.dist.version if ep.dist else "?"
        _infos[ep.name] = PluginInfo(ep.name, dist_name, version, builtin=False)
    with _fitting("A plugin"):
        pm.check_pending()  # a hook llamarec does not have (a misspelt name)


@contextmanager
def _fitting(who: str):
    """pluggy's check of a plugin's hooks (their names and arguments) as one line that names the plugin."""
    from pluggy import PluginValidationError

    try:
        yield
    except PluginValidationError as exc:
        name = pm.get_name(exc.plugin) if pm.is_registered(exc.plugin) else None
        who = f"Plugin '{name}'" if name and who == "A plugin" else who
        problem = "; ".join(line.strip() for line in str(exc).splitlines() if line.strip())
        raise PluginError(
            f"{who} does not fit llamarec's hooks ({problem}). See docs/plugins.md for the hooks and their "
            f"arguments; or exclude the plugin with {ENV_FILTER}."
        ) from exc


def _warn_unknown(allowed: set[str], installed) -> None:
    """A name in LLAMAREC_PLUGINS that nothing installed has (a typo) would otherwise leave its plugin out without a
    word, and its retrievers reported as unknown."""
    known = {*BUILTIN_PLUGINS, *(ep.name for ep in installed), *(ep.dist.name for ep in installed if ep.dist)}
    unknown = sorted(allowed - known)
    if unknown:
        print(
            f"warning: {ENV_FILTER} names {', '.join(map(repr, unknown))}, which no installed plugin has; "
            f"installed: {', '.join(sorted(known - set(BUILTIN_PLUGINS))) or 'none'}.",
            file=sys.stderr,
        )


def register_plugin(plugin: object, name: str) -> None:
    """Register an in-process plugin (tests, notebooks). The object an installed plugin's entry point names is loaded
    already and left as it is, so a plugin's tests run the same installed or not."""
    load_plugins()
    info = _infos.get(pm.get_name(plugin) or "")
    if info is not None and info.distribution != "(in-process)":
        return  # loaded through its entry point (or built in)
    pm.register(plugin, name=name)
    _infos[name] = PluginInfo(name, "(in-process)", "", builtin=False)
    _registries.clear()


def unregister_plugin(name: str) -> None:
    """Undo ``register_plugin``; a plugin it left as installed stays."""
    info = _infos.get(name)
    if info is None or info.distribution != "(in-process)":
        return
    pm.unregister(name=name)
    _infos.pop(name, None)
    _registries.clear()


def _registry(kind: str, hook_name: str, make_register) -> Registry:
    load_plugins()
    if kind not in _registries:
        registry: Registry = Registry(kind)
        hook = getattr(pm.hook, hook_name)
        # Call each implementation on its own so that every component is attributed to its plugin.
        for impl in hook.get_hookimpls():  # registration order: built-ins first
            try:
                impl.function(register=make_register(registry, impl.plugin_name))
            except LlamarecError:
                raise
            except Exception as exc:
                raise PluginError(f"Plugin '{impl.plugin_name}' failed in {hook_name}: {exc!r}") from exc
        _registries[kind] = registry
    return _registries[kind]


def datasets() -> Registry:
    def make_register(registry, plugin):
        def register(spec):
            from .data.spec import DatasetSpec

            if not isinstance(spec, DatasetSpec):
                raise PluginError(
                    f"Plugin '{plugin}' registered a dataset as {type(spec).__name__}, not a llamarec_cli.DatasetSpec."
                )
            registry.add(spec.name, spec, plugin)

        return register

    return _registry("dataset", "register_datasets", make_register)


def retrievers() -> Registry:
    def make_register(registry, plugin):
        def register(name, retriever):
            from .retrieval.contract import Retriever, RetrieverConfig

            if not (isinstance(retriever, type) and issubclass(retriever, Retriever)):
                what = (
                    retriever.__name__ if isinstance(retriever, type) else f"an instance of {type(retriever).__name__}"
                )
                raise PluginError(
                    f"Plugin '{plugin}' registered retriever {name!r:.60} as {what}, which is not a subclass of "
                    "llamarec_cli.Retriever (register the class itself)."
                )
            if not (isinstance(retriever.Config, type) and issubclass(retriever.Config, RetrieverConfig)):
                raise PluginError(f"Retriever '{name}' of plugin '{plugin}': its Config is not a RetrieverConfig.")
            missing = retriever.missing_methods()
            if missing:
                raise PluginError(
                    f"Retriever '{name}' of plugin '{plugin}' does not implement {' nor '.join(missing)}. "
                    "See docs/plugins.md."
                )
            registry.add(name, retriever, plugin)

        return register

    return _registry("retriever", "register_retrievers", make_register)


def prompt_templates() -> Registry:
    def make_register(registry, plugin):
        return lambda name, path: registry.add(name, path, plugin)

    return _registry("prompt template", "register_prompt_templates", make_register)


def install_commands(cli) -> None:
    """Let every plugin add its subcommands to the Typer app, recording which plugin added which."""
    load_plugins()
    owners: dict[str, str] = {}
    for impl in pm.hook.register_commands.get_hookimpls():
        before, groups_before = len(cli.registered_commands), len(cli.registered_groups)
        try:
            impl.function(cli=cli)
        except LlamarecError:
            raise
        except Exception as exc:  # a broken third-party plugin must not look like a llamarec bug
            raise PluginError(f"Plugin '{impl.plugin_name}' failed in register_commands: {exc!r}") from exc
        names = [c.name or c.callback.__name__.replace("_", "-") for c in cli.registered_commands[before:]]
        names += [g.name for g in cli.registered_groups[groups_before:]]  # e.g. `templates`
        for name in names:
            if name in owners:
                raise DuplicateNameError(
                    f"Command '{name}' is registered by both plugin '{owners[name]}' and plugin "
                    f"'{impl.plugin_name}'. Uninstall one of them, or choose plugins with {ENV_FILTER}."
                )
            owners[name] = impl.plugin_name
        if impl.plugin_name in _infos:
            _infos[impl.plugin_name].commands = names


def plugin_infos() -> list[PluginInfo]:
    load_plugins()
    return list(_infos.values())
