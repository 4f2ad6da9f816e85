"""Plugin discovery, isolation and steering, with entry points faked in-process.

The same behaviours are checked for real, with packages installed into a fresh virtual
environment, in tests/plugins/test_install.py.
"""

from __future__ import annotations

import sys
import types
from importlib.metadata import EntryPoint

import pytest

import kd_core
from kd_core import DuplicateNameError, PluginError, UnknownNameError, hookimpl, lookup, registry
from kd_core import plugins as plugins_module
from kd_core.plugins import PluginWarning, skipped_plugins


def _module(name: str, **hooks) -> types.ModuleType:
    module = types.ModuleType(name)
    for hook_name, function in hooks.items():
        setattr(module, hook_name, hookimpl(function))
    sys.modules[name] = module
    return module


@pytest.fixture
def fake_entry_points(monkeypatch: pytest.MonkeyPatch):
    """Replace the installed entry points of group 'kd' by the given (name, module) pairs."""
    installed: list[EntryPoint] = []

    def entry_points(group: str):
        assert group == "kd"
        return list(installed)

    monkeypatch.setattr(plugins_module, "entry_points", entry_points)

    def add(name: str, module: str) -> None:
        installed.append(EntryPoint(name=name, value=module, group="kd"))

    yield add
    for entry in installed:
        sys.modules.pop(entry.value, None)


def _losses(*names):
    def kd_register_losses(register):
        for name in names:
            register(name, lambda s, t, mask=None: (s - t).sum())
    return kd_register_losses


def test_builtins_register_through_the_hooks(fake_entry_points) -> None:
    entry = registry("schedulers").entry("constant")
    assert entry.provider.distribution == "kd-core"
    assert entry.provider.module == "kd_core.builtins"


def test_a_plugin_registers_and_lookup_finds_it(fake_entry_points) -> None:
    _module("plug_a", kd_register_losses=_losses("alpha"))
    fake_entry_points("plug-a", "plug_a")
    assert callable(lookup("losses", "alpha"))
    assert registry("losses").entry("alpha").provider.module == "plug_a"


def test_duplicate_names_fail_naming_both_providers(fake_entry_points) -> None:
    _module("plug_one", kd_register_losses=_losses("same"))
    _module("plug_two", kd_register_losses=_losses("same"))
    fake_entry_points("one", "plug_one")
    fake_entry_points("two", "plug_two")
    with pytest.raises(DuplicateNameError, match=r"'same' is registered twice: by plug_one and by plug_two"):
        lookup("losses", "same")


def test_a_plugin_that_fails_to_import_is_skipped_with_one_warning(fake_entry_points) -> None:
    _module("plug_good", kd_register_losses=_losses("good"))
    fake_entry_points("broken", "plug_that_does_not_exist")
    fake_entry_points("good", "plug_good")
    with pytest.warns(PluginWarning, match=r"kd plugin broken was skipped: ModuleNotFoundError") as caught:
        assert callable(lookup("losses", "good"))
    assert len(caught) == 1
    assert [s.name for s in skipped_plugins()] == ["broken"]


def test_strict_mode_turns_the_warning_into_an_error(fake_entry_points, monkeypatch) -> None:
    monkeypatch.setenv("KD_STRICT_PLUGINS", "1")
    fake_entry_points("broken", "plug_that_does_not_exist")
    with pytest.raises(PluginError, match=r"kd plugin broken was skipped.*KD_STRICT_PLUGINS"):
        registry("losses")


def test_a_plugin_whose_hook_raises_is_dropped_whole(fake_entry_points) -> None:
    def kd_register_projections(register):
        raise RuntimeError("boom")

    _module("plug_half", kd_register_losses=_losses("half_loss"),
            kd_register_projections=kd_register_projections)
    fake_entry_points("half", "plug_half")
    with pytest.warns(PluginWarning, match="kd plugin half was skipped: RuntimeError: boom"):
        assert "half_loss" not in registry("losses")


def test_a_misspelled_hook_is_reported(fake_entry_points) -> None:
    _module("plug_typo", kd_register_loss=_losses("typo"))
    fake_entry_points("typo", "plug_typo")
    with pytest.warns(PluginWarning, match=r"unknown hooks kd_register_loss; known hooks: .*kd_register_losses"):
        registry("losses")


def test_load_and_disable_lists(fake_entry_points, monkeypatch) -> None:
    _module("plug_x", kd_register_losses=_losses("x_loss"))
    _module("plug_y", kd_register_losses=_losses("y_loss"))
    fake_entry_points("x", "plug_x")
    fake_entry_points("y", "plug_y")
    monkeypatch.setenv("KD_LOAD_PLUGINS", "x")
    assert "x_loss" in registry("losses") and "y_loss" not in registry("losses")
    kd_core.reset_plugins()
    monkeypatch.delenv("KD_LOAD_PLUGINS")
    monkeypatch.setenv("KD_DISABLE_PLUGINS", "x")
    assert "x_loss" not in registry("losses") and "y_loss" in registry("losses")


def test_unknown_names_list_the_registered_ones_and_suggest(fake_entry_points) -> None:
    _module("plug_h", kd_register_losses=_losses("hidden_mse_like", "attention_kl_like"))
    fake_entry_points("h", "plug_h")
    with pytest.raises(UnknownNameError) as error:
        lookup("losses", "hiden_mse_like")
    message = str(error.value)
    assert "Registered losses: attention_kl_like, hidden_mse_like." in message
    assert "Did you mean 'hidden_mse_like'?" in message


def test_an_empty_kind_says_what_to_install(fake_entry_points) -> None:
    with pytest.raises(UnknownNameError, match=r"no augmenters are registered at all\. Install a plugin"):
        lookup("augmenters", "masking")


def test_unknown_kind_is_an_error() -> None:
    with pytest.raises(PluginError, match="unknown registry kind 'loss'"):
        registry("loss")


def test_kd_core_registers_its_metrics_through_the_hooks(fake_entry_points) -> None:
    assert {"accuracy", "matthews", "macro_f1", "entity_f1"} <= set(registry("metrics").names())
    assert registry("metrics").entry("accuracy").provider.module == "kd_core.builtins"
    assert lookup("metrics", "entity_f1").reads == "tags"


def test_a_plugin_metric_is_found_and_checked_against_the_task(fake_entry_points) -> None:
    from kd_core.metrics import Metric

    def kd_register_metrics(register):
        register("always_half", Metric(lambda pred, gold: 0.5, reads="spans"))

    _module("kd_test_metric_plugin", kd_register_metrics=kd_register_metrics)
    fake_entry_points("metric-plugin", "kd_test_metric_plugin")
    assert kd_core.get_metric("always_half")(None, None) == 0.5

    class LabelTask:
        reads = ("labels",)

    with pytest.raises(kd_core.ConfigError, match=r"'always_half' reads spans, but task demo gives metrics labels"):
        kd_core.get_metric("always_half", LabelTask(), "demo")
    with pytest.raises(kd_core.ConfigError, match="Did you mean 'accuracy'"):
        kd_core.get_metric("acuracy")


def test_builtin_commands_come_from_the_cli_and_a_plugin_cannot_take_their_names(fake_entry_points) -> None:
    import click

    from kd_core.cli import build_cli

    assert {"plugins", "distill", "train", "demo", "size"} <= set(build_cli().commands)
    kd_core.reset_plugins()

    def kd_register_commands(cli):
        cli.add_command(click.Command("distill", callback=lambda: None))

    _module("kd_test_command_plugin", kd_register_commands=kd_register_commands)
    fake_entry_points("command-plugin", "kd_test_command_plugin")
    with pytest.raises(DuplicateNameError, match=r"'distill' is registered twice: by kd-core and by "
                                                 r"kd_test_command_plugin"):
        build_cli()


def test_a_plugin_whose_command_hook_raises_is_skipped_and_its_commands_removed(fake_entry_points) -> None:
    import click

    from kd_core.cli import build_cli

    def kd_register_commands(cli):
        cli.add_command(click.Command("half-added", callback=lambda: None))
        raise RuntimeError("broken after adding one")

    _module("kd_test_broken_commands", kd_register_commands=kd_register_commands)
    fake_entry_points("broken-commands", "kd_test_broken_commands")
    with pytest.warns(PluginWarning, match="broken-commands.*broken after adding one"):
        commands = build_cli().commands
    assert "half-added" not in commands and "distill" in commands
