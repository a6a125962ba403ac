"""The name registry (lazy imports, suggestions) and model spec resolution."""
import sys
import textwrap

import pytest
import yaml

from facebench import models
from facebench.paths import PACKAGE_DIR
from facebench.registry import Registry, UnknownNameError, suggest


@pytest.fixture
def lazy_modules(tmp_path, monkeypatch):
    """Two throwaway modules on sys.path: a holder with a registry, and a plugin that registers itself in it."""
    tag = f"fb_test_{abs(hash(str(tmp_path))) % 10**8}"
    holder, plugin = f"{tag}_holder", f"{tag}_plugin"
    (tmp_path / f"{holder}.py").write_text(textwrap.dedent(f"""
        from facebench.registry import Registry

        REG = Registry("widget", lazy={{"gizmo": "{plugin}"}})

        @REG.register("sprocket")
        def sprocket():
            return "sprocket"
    """))
    (tmp_path / f"{plugin}.py").write_text(textwrap.dedent(f"""
        from {holder} import REG

        IMPORTS = globals().get("IMPORTS", 0) + 1

        @REG.register("gizmo")
        class Gizmo:
            pass
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    yield holder, plugin
    for name in (holder, plugin):
        sys.modules.pop(name, None)


def test_lazy_entry_is_imported_on_first_get(lazy_modules):
    holder_name, plugin_name = lazy_modules
    holder = __import__(holder_name)
    reg = holder.REG
    assert plugin_name not in sys.modules
    # Listing and membership do not import the plugin.
    assert reg.names() == ["gizmo", "sprocket"]
    assert "gizmo" in reg and "sprocket" in reg and "gadget" not in reg
    assert plugin_name not in sys.modules
    # Neither does getting another name.
    assert reg.get("sprocket")() == "sprocket"
    assert plugin_name not in sys.modules

    cls = reg.get("gizmo")
    assert plugin_name in sys.modules
    plugin = sys.modules[plugin_name]
    assert cls is plugin.Gizmo and cls.__name__ == "Gizmo"
    assert reg.get("gizmo") is cls
    assert plugin.IMPORTS == 1
    assert reg.names() == ["gizmo", "sprocket"]


def test_lazy_module_that_does_not_register_its_name(lazy_modules, tmp_path):
    holder_name, plugin_name = lazy_modules
    (tmp_path / f"{plugin_name}.py").write_text("# registers nothing\n")
    reg = __import__(holder_name).REG
    with pytest.raises(UnknownNameError) as info:
        reg.get("gizmo")
    assert plugin_name in sys.modules  # the module was imported
    assert "Did you mean 'gizmo'" not in str(info.value)
    assert plugin_name in str(info.value)


def test_register_returns_the_object_unchanged():
    reg = Registry("colour")

    def red():
        return "#f00"

    assert reg.register("red")(red) is red
    assert reg.get("red") is red
    assert reg.names() == ["red"]


def test_typo_suggests_the_closest_name():
    reg = Registry("colour", lazy={"yellow": "nowhere.at.all"})
    reg.register("red")(object())
    reg.register("blue")(object())
    with pytest.raises(UnknownNameError) as info:
        reg.get("rde")
    assert str(info.value) == "unknown colour 'rde'. Did you mean 'red'? Known: blue, red, yellow."
    # Lazy names are suggested too, without importing their module.
    with pytest.raises(UnknownNameError) as info:
        reg.get("yelow")
    assert str(info.value) == "unknown colour 'yelow'. Did you mean 'yellow'? Known: blue, red, yellow."
    # A name with nothing close gets the list alone.
    with pytest.raises(UnknownNameError) as info:
        reg.get("xyzzy")
    assert str(info.value) == "unknown colour 'xyzzy'. Known: blue, red, yellow."


def test_empty_registry_message():
    with pytest.raises(UnknownNameError, match=r"Known: \(none\)\.$"):
        Registry("thing").get("anything")


def test_suggest_offers_up_to_three():
    text = suggest("model", ["model1", "model2", "model3", "model4", "other"], what="model")
    assert text.startswith("unknown model 'model'. Did you mean ")
    assert text.count(" or ") == 2
    assert "'other'" not in text.split("Known:")[0]


def test_unknown_name_error_is_key_and_value_error():
    err = UnknownNameError("unknown colour 'rde'.")
    assert isinstance(err, KeyError) and isinstance(err, ValueError)
    assert str(err) == "unknown colour 'rde'."  # KeyError alone would quote it
    assert str(KeyError("unknown colour 'rde'.")) != str(err)
    with pytest.raises(KeyError):
        Registry("x").get("y")
    with pytest.raises(ValueError):
        Registry("x").get("y")


# ------------------------------------------------------------------ models


def test_resolve_registry_name():
    entry = yaml.safe_load((PACKAGE_DIR / "models.yaml").read_text())["models"]["dlib"]
    spec = models.resolve("dlib")
    assert isinstance(spec, models.ModelSpec)
    assert spec.spec == "dlib" and spec.backend == "dlib" == entry["backend"]
    assert spec.settings == entry["settings"]
    assert spec.settings == {"upsample": 1, "num_jitters": 0, "chip_size": 150, "chip_padding": 0.25,
                             "threshold": 0.6}
    assert spec.entry["family"] == entry["family"]
    # The settings are a copy: changing them does not change the next resolve.
    spec.settings["threshold"] = 0.1
    assert models.resolve("dlib").settings["threshold"] == 0.6


def test_resolve_dlib_backend_is_available():
    spec = models.resolve("dlib")
    assert spec.availability() == (True, "available")
    cls = models.BACKENDS.get("dlib")
    assert issubclass(cls, models.EmbeddingVerifier)
    verifier = spec.load()
    assert isinstance(verifier, cls)
    assert verifier.threshold == 0.6 and verifier.chip_size == 150


@pytest.mark.parametrize("spec", ["nope:x", "nope", "dlb"])
def test_resolve_unknown_spec(spec):
    with pytest.raises(UnknownNameError) as info:
        models.resolve(spec)
    assert isinstance(info.value, KeyError) and isinstance(info.value, ValueError)
    assert str(info.value).startswith(f"unknown model {spec!r}.")
    assert "dlib" in str(info.value).split("Known: ")[1].rstrip(".").split(", ")


def test_resolve_typo_suggests_dlib():
    with pytest.raises(UnknownNameError, match=r"Did you mean 'dlib'\?"):
        models.resolve("dlb")
