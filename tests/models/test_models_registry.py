"""Model registry: 30 built-in names, variants as real subclasses, plugins, helpful errors."""
from __future__ import annotations

import subprocess
import sys

import pytest

from fuxictr_chime.errors import ConfigError
from fuxictr_chime.models import MODEL_NAMES, get_model, register_model


def test_builtin_names_in_order():
    bases = ["DIN", "SimSoft", "ETA", "SDIM", "TWIN", "MIRRN"]
    assert list(MODEL_NAMES) == bases + [f"{b}{s}" for s in ("_CHIME", "_LEARN", "_HIST", "_STATS")
                                         for b in bases]
    from fuxictr_chime.models import registry

    assert registry.MODEL_NAMES == MODEL_NAMES


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_each_name_is_its_own_class(name):
    from fuxictr.pytorch.models import BaseModel

    cls = get_model(name)
    assert cls.__name__ == name and issubclass(cls, BaseModel)
    base, _, suffix = name.partition("_")
    if suffix:
        assert cls.__mro__[1] is get_model(base)
        assert cls.compressed_column == {"CHIME": "chime_hist", "LEARN": "learn_emb",
                                         "HIST": "hist_ctrl", "STATS": "stats_ctrl"}[suffix]
        assert cls.__doc__ and cls.__doc__.startswith(f"{base} w/ {suffix}")
    else:
        assert cls.compressed_column is None


def test_unknown_name_lists_known_and_suggests_closest():
    with pytest.raises(ConfigError) as err:
        get_model("TWIN_CHIM")
    msg = str(err.value)
    assert "Did you mean 'TWIN_CHIME'" in msg and all(n in msg for n in MODEL_NAMES)
    with pytest.raises(ConfigError, match="Did you mean 'SimSoft'"):
        get_model("simsoft")
    with pytest.raises(ConfigError):
        get_model("")


def test_module_path_imports_a_class_without_eval():
    assert get_model("fuxictr_chime.models.din:DIN") is get_model("DIN")
    with pytest.raises(ConfigError, match="cannot import"):
        get_model("no_such_module_xyz:Model")
    with pytest.raises(ConfigError, match="not a fuxictr"):
        get_model("collections:OrderedDict")
    with pytest.raises(ConfigError, match="not a fuxictr"):
        get_model("fuxictr_chime.models.din:Missing")


def test_register_model_for_plugins():
    from fuxictr_chime.models.din import DIN

    class MyDIN(DIN):
        pass

    register_model("MyDIN_test", MyDIN)
    assert get_model("MyDIN_test") is MyDIN
    register_model("MyDIN_test", MyDIN)  # same class again: fine
    with pytest.raises(ConfigError, match="already registered"):
        register_model("DIN", MyDIN)
    with pytest.raises(ConfigError, match="not a"):
        register_model("Nope", dict)


def test_importing_the_package_does_not_import_fuxictr():
    code = ("import sys, fuxictr_chime.models as m; "
            "assert len(m.MODEL_NAMES) == 30; "
            "assert 'fuxictr.pytorch' not in sys.modules and 'torch' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)
