"""Plugin discovery and the registries it fills.

kd-core's built-ins are registered first, then every module announced in the entry-point group
``kd``. Environment variables steer loading:

- ``KD_LOAD_PLUGINS=a,b``: load only these plugins (entry-point or distribution names);
- ``KD_DISABLE_PLUGINS=a,b``: never load these;
- ``KD_STRICT_PLUGINS=1``: a plugin that fails to import or register raises instead of being
  skipped with one warning.

A name registered twice always fails, naming both providers.
"""

from __future__ import annotations

import os
import threading
import warnings
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from types import ModuleType
from typing import TYPE_CHECKING, Any

import pluggy

from kd_core import hookspecs
from kd_core.errors import DuplicateNameError, PluginError
from kd_core.registry import KINDS, Provider, Registry

if TYPE_CHECKING:
    import click

ENTRY_POINT_GROUP = "kd"
"""The entry-point group third-party distributions use to announce their kd plugins."""

BUILTIN_PLUGIN_NAME = "kd-core"


class PluginWarning(UserWarning):
    """A plugin was skipped because it failed to import or register."""


@dataclass
class SkippedPlugin:
    """A plugin that was not loaded, and why."""

    name: str
    distribution: str | None
    reason: str


@dataclass
class _PluginState:
    manager: pluggy.PluginManager
    providers: dict[str, Provider]
    skipped: list[SkippedPlugin] = field(default_factory=list)
    registries: dict[str, Registry] | None = None


_state: _PluginState | None = None
_lock = threading.RLock()


def plugin_manager() -> pluggy.PluginManager:
    """The pluggy manager with kd-core's built-ins and every enabled plugin registered."""
    return _loaded().manager


def registry(kind: str) -> Registry:
    """The registry of one kind (see :data:`kd_core.registry.KINDS`), filled on first use."""
    if kind not in KINDS:
        raise PluginError(f"unknown registry kind {kind!r}; kinds are: {', '.join(KINDS)}")
    with _lock:
        state = _loaded()
        if state.registries is None:
            state.registries = _fill_registries(state)
        return state.registries[kind]


def lookup(kind: str, name: str) -> Any:
    """The object registered as ``name`` of ``kind``: the one public way to get a part.

    Raises :class:`~kd_core.errors.UnknownNameError` listing the registered names and the
    closest match when ``name`` is unknown.
    """
    return registry(kind).get(name)


def skipped_plugins() -> list[SkippedPlugin]:
    """Plugins that were skipped (failed to import or to register) in this process."""
    with _lock:
        state = _loaded()
        if state.registries is None:
            state.registries = _fill_registries(state)
        return list(state.skipped)


def reset_plugins() -> None:
    """Forget loaded plugins and registries, so the next lookup discovers them again."""
    global _state
    with _lock:
        _state = None


def register_commands(cli: click.Group, owner: str = BUILTIN_PLUGIN_NAME) -> None:
    """Let every plugin add its subcommands to the ``kd`` group. The commands already in ``cli``
    belong to ``owner``; a plugin that adds a name already taken fails, naming both providers.
    A plugin whose hook raises is skipped whole, as for the registries."""
    state = _loaded()
    providers = {name: owner for name in cli.commands}
    for impl in state.manager.hook.kd_register_commands.get_hookimpls():
        provider = str(state.providers[impl.plugin_name])
        before = dict(cli.commands)
        try:
            impl.function(cli=cli)
        except Exception as exc:
            cli.commands.clear()
            cli.commands.update(before)
            _skip(state, impl.plugin_name, state.providers[impl.plugin_name].distribution, exc)
            continue
        for name, command in cli.commands.items():
            if name in before and before[name] is not command:
                raise DuplicateNameError(
                    f"command name {name!r} is registered twice: by {providers[name]} and by {provider}. "
                    "Uninstall one of them, or block one with KD_DISABLE_PLUGINS."
                )
            providers.setdefault(name, provider)


def _loaded() -> _PluginState:
    global _state
    with _lock:
        if _state is None:
            _state = _discover()
        return _state


def _env_names(variable: str) -> set[str] | None:
    value = os.environ.get(variable, "").strip()
    if not value:
        return None
    return {part.strip() for part in value.split(",") if part.strip()}


def _strict() -> bool:
    return os.environ.get("KD_STRICT_PLUGINS", "").strip().lower() not in ("", "0", "false", "no")


def _discover() -> _PluginState:
    from kd_core import builtins

    manager = pluggy.PluginManager(hookspecs.PROJECT_NAME)
    manager.add_hookspecs(hookspecs)
    manager.register(builtins, name=BUILTIN_PLUGIN_NAME)
    state = _PluginState(manager, {BUILTIN_PLUGIN_NAME: Provider("kd-core", builtins.__name__)})

    only = _env_names("KD_LOAD_PLUGINS")
    blocked = _env_names("KD_DISABLE_PLUGINS") or set()
    for ep in sorted(entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name):
        distribution = ep.dist.name if ep.dist is not None else None
        names = {ep.name, distribution}
        if (only is not None and not names & only) or names & blocked:
            continue
        if ep.name in state.providers:
            other = state.providers[ep.name]
            raise DuplicateNameError(
                f"two plugins are named {ep.name!r}: {other} and {distribution} ({ep.value}). "
                "Rename one entry point, or block one with KD_DISABLE_PLUGINS."
            )
        try:
            module = ep.load()
            _register_module(manager, module, ep.name)
        except Exception as exc:
            _skip(state, ep.name, distribution, exc)
            continue
        state.providers[ep.name] = Provider(distribution, ep.value)
    return state


def _register_module(manager: pluggy.PluginManager, module: ModuleType, name: str) -> None:
    manager.register(module, name=name)
    unknown = [
        attr
        for attr in dir(module)
        if attr.startswith("kd_") and callable(getattr(module, attr))
        and hasattr(getattr(module, attr), f"{hookspecs.PROJECT_NAME}_impl")
        and not hasattr(hookspecs, attr)
    ]
    if unknown:
        manager.unregister(name=name)
        known = ", ".join(h for h in dir(hookspecs) if h.startswith("kd_register_"))
        raise PluginError(f"implements unknown hooks {', '.join(unknown)}; known hooks: {known}")


def _skip(state: _PluginState, name: str, distribution: str | None, exc: BaseException) -> None:
    where = f"{name} (distribution {distribution})" if distribution else name
    message = f"kd plugin {where} was skipped: {type(exc).__name__}: {exc}"
    if _strict():
        raise PluginError(message + " [KD_STRICT_PLUGINS is set]") from exc
    state.skipped.append(SkippedPlugin(name, distribution, f"{type(exc).__name__}: {exc}"))
    if state.manager.has_plugin(name):
        state.manager.unregister(name=name)
    warnings.warn(message + ". Set KD_STRICT_PLUGINS=1 to make this an error.", PluginWarning,
                  stacklevel=3)


def _fill_registries(state: _PluginState) -> dict[str, Registry]:
    # All of a plugin's registrations are staged first, so that a plugin whose hook raises is
    # dropped whole rather than left half-registered.
    staged: dict[str, list[tuple[str, str, Any]]] = {}
    failed: set[str] = set()
    for kind in KINDS:
        for impl in getattr(state.manager.hook, f"kd_register_{kind}").get_hookimpls():
            plugin = impl.plugin_name
            if plugin in failed:
                continue
            bucket = staged.setdefault(plugin, [])
            try:
                impl.function(register=lambda name, obj, _k=kind, _b=bucket: _b.append((_k, name, obj)))
            except Exception as exc:
                failed.add(plugin)
                del staged[plugin]
                _skip(state, plugin, state.providers[plugin].distribution, exc)
    registries = {kind: Registry(kind) for kind in KINDS}
    for plugin, items in staged.items():
        for kind, name, obj in items:
            registries[kind].add(name, obj, state.providers[plugin])
    return registries
