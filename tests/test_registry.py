import sys
import textwrap

import pytest

from cnnkit import registry as reg
from cnnkit.errors import RegistryError
from cnnkit.registry import NORMS, Registry


class Widget:
    """A widget used by these tests."""

    def __init__(self, size: int, color: str = "red"):
        self.size, self.color = size, color


class Gadget:
    def __init__(self, size: int = 1):
        self.size = size


def test_register_aliases_and_normalized_names():
    r = Registry("things")
    r.register("big_widget", Widget, aliases=("bw",))
    assert r.get("Big-Widget") is Widget
    assert r.get("BW") is Widget
    assert r.get_entry("bigwidget").description == "A widget used by these tests."


def test_decorator_registration_returns_the_object():
    r = Registry("things")

    @r.register("g", description="a gadget")
    class G(Gadget):
        pass

    assert r.get("g") is G and r.get_entry("g").description == "a gadget"


def test_same_object_twice_is_a_no_op_and_another_object_errors_naming_both():
    r = Registry("things")
    r.register("w", Widget)
    r.register("w", Widget)  # a re-imported module / re-run cell
    with pytest.raises(RegistryError) as err:
        r.register("w", Gadget)
    message = str(err.value)
    assert "test_registry.py" in message and message.count("test_registry.py") == 2
    assert "override=True" in message
    r.register("w", Gadget, override=True)
    assert r.get("w") is Gadget


def test_unknown_name_suggests_close_matches_and_lists_names():
    with pytest.raises(RegistryError) as err:
        NORMS.get("bn_pree")
    message = str(err.value)
    assert "did you mean 'bn_pre'" in message
    assert "available:" in message and "bn_post" in message and "none" in message
    assert "imports:" in message


def test_build_merges_preset_spec_and_overrides_in_order():
    r = Registry("things")
    r.register("small", Widget, size=1, color="blue")
    assert r.build("small").size == 1
    w = r.build({"name": "small", "size": 2})
    assert (w.size, w.color) == (2, "blue")
    w = r.build({"name": "small", "size": 2}, size=3, color="green")
    assert (w.size, w.color) == (3, "green")


def test_kwargs_are_checked_before_the_call():
    r = Registry("things")
    r.register("w", Widget)
    with pytest.raises(RegistryError, match="has no argument 'colour' \\(did you mean 'color'\\?\\)"):
        r.build({"name": "w", "size": 1, "colour": "red"})
    with pytest.raises(RegistryError, match="needs argument\\(s\\) 'size'"):
        r.build("w")
    with pytest.raises(RegistryError, match="needs a 'name' key"):
        r.build({"size": 1})


def test_optional_kwargs_reach_only_targets_that_take_them():
    r = Registry("things")
    r.register("w", Widget)
    r.register("g", Gadget)
    assert r.build("w", optional={"size": 5, "unused": 1}).size == 5
    assert r.build({"name": "g", "size": 7}, optional={"size": 5}).size == 7  # the spec wins


def test_lazy_entries_list_without_importing(tmp_path, monkeypatch):
    (tmp_path / "lazy_target_mod.py").write_text("class Thing:\n    pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    r = Registry("things")
    r.register_lazy("thing", "lazy_target_mod:Thing", "declared, not imported")
    assert r.names() == ["thing"]
    assert "lazy_target_mod" not in sys.modules
    assert r.get("thing").__name__ == "Thing"
    assert "lazy_target_mod" in sys.modules


def test_lazy_entry_that_cannot_import_is_a_clear_error():
    r = Registry("things")
    r.register_lazy("ghost", "no_such_module_xyz:Ghost", "missing")
    with pytest.raises(RegistryError, match="declared at no_such_module_xyz:Ghost but could not be loaded"):
        r.get("ghost")


def test_imports_a_py_file_that_registers_a_norm(tmp_path):
    path = tmp_path / "user_norm_file.py"
    path.write_text(
        textwrap.dedent("""
        from cnnkit import NORMS, NormScheme

        @NORMS.register("user_file_norm")
        class UserFileNorm(NormScheme):
            order = "post"
    """)
    )
    reg.import_user_code([str(path)])
    reg.import_user_code([str(path)])  # once only
    assert NORMS.get("user_file_norm").order == "post"


def test_imports_module_that_fails_shows_its_own_error(tmp_path, monkeypatch):
    (tmp_path / "broken_user_mod.py").write_text("raise ValueError('boom in user code')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(RegistryError, match="broken_user_mod' failed to import: ValueError: boom in user code"):
        reg.import_user_code(["broken_user_mod"])
    with pytest.raises(RegistryError, match="not found"):
        reg.import_user_code(["no_such_user_module_abc"])
    with pytest.raises(RegistryError, match="file 'missing.py' not found"):
        reg.import_user_code(["missing.py"])


def _install_plugin(root, dist: str, module: str, value: str, code: str) -> None:
    (root / f"{module}.py").write_text(code)
    info = root / f"{dist}-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(f"[cnnkit.plugins]\n{dist} = {value}\n")


def test_entry_point_plugins_load_lazily_and_a_broken_one_is_reported(tmp_path, monkeypatch, capsys):
    _install_plugin(
        tmp_path,
        "good_plugin",
        "good_plugin_mod",
        "good_plugin_mod:register",
        "def register():\n"
        "    from cnnkit import ACTIVATIONS\n"
        "    from torch import nn\n"
        "    ACTIVATIONS.register('plugin_act', nn.SiLU, description='from a plugin')\n",
    )
    _install_plugin(
        tmp_path, "bad_plugin", "bad_plugin_mod", "bad_plugin_mod", "raise ImportError('plugin is broken')\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delenv("CNNKIT_NO_PLUGINS")
    reg.reset_plugins()
    try:
        from cnnkit.registry import ACTIVATIONS

        assert type(ACTIVATIONS.build("plugin_act")).__name__ == "SiLU"
        err = capsys.readouterr().err
        assert "plugin 'bad_plugin'" in err and "plugin is broken" in err
    finally:
        reg.reset_plugins()


def test_plugins_can_be_turned_off(monkeypatch):
    reg.reset_plugins()
    monkeypatch.setenv("CNNKIT_NO_PLUGINS", "1")
    assert reg.load_plugins() is False
