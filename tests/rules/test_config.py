import json

import pytest

from resdoctor.rules import ConfigError, parse_settings, read_config, settings
from resdoctor.rules._config import parse_value


def test_parse_value_types():
    assert parse_value("20") == 20 and parse_value("1e-3") == 1e-3
    assert parse_value("true") is True and parse_value("False") is False
    assert parse_value("[1, 2]") == [1, 2] and parse_value("abc") == "abc"


def test_parse_settings_groups_by_rule():
    got = parse_settings(
        [
            "exploding-gradients.surge_factor=20",
            "oversmoothing.enabled=false",
            "exploding-gradients.window=5",
        ]
    )
    assert got == {
        "exploding-gradients": {"surge_factor": 20, "window": 5},
        "oversmoothing": {"enabled": False},
    }


@pytest.mark.parametrize("bad", ["nodot=1", "rule.param", ".p=1", "rule.=1"])
def test_malformed_settings(bad):
    with pytest.raises(ConfigError, match="rule.param=value"):
        parse_settings([bad])


def test_toml_and_json_files(tmp_path):
    toml = tmp_path / "t.toml"
    toml.write_text(
        "[exploding-gradients]\nsurge_factor = 20\n\n[oversmoothing]\nenabled = false\n"
    )
    js = tmp_path / "t.json"
    js.write_text(json.dumps({"rules": {"dead-branch": {"ratio": 0.001}}}))
    assert read_config(toml) == {
        "exploding-gradients": {"surge_factor": 20},
        "oversmoothing": {"enabled": False},
    }
    assert read_config(js) == {"dead-branch": {"ratio": 0.001}}


def test_keyword_forms_are_equivalent_and_later_layers_win(tmp_path):
    cfg = tmp_path / "c.json"
    cfg.write_text(json.dumps({"exploding-gradients": {"surge_factor": 30, "window": 7}}))
    a = settings(cfg, exploding_gradients={"surge_factor": 20})
    b = settings(cfg, **{"exploding-gradients.surge_factor": 20})
    assert a == b == {"exploding-gradients": {"surge_factor": 20, "window": 7}}


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"nope.x": 1}, "unknown rule 'nope'"),
        ({"dead-branch.nope": 1}, "unknown threshold dead-branch.nope"),
        ({"dead-branch.ratio": "high"}, "must be float"),
        ({"dead-branch.enabled": 1}, "true or false"),
        ({"surge_factor": 3}, "unknown analyze"),
    ],
)
def test_bad_settings_raise_config_error_with_exit_code_2(kwargs, match):
    with pytest.raises(ConfigError, match=match) as info:
        settings(None, **kwargs)
    assert info.value.exit_code == 2


def test_unreadable_or_invalid_files(tmp_path):
    with pytest.raises(ConfigError, match="cannot read"):
        read_config(tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[x\n")
    with pytest.raises(ConfigError, match="not valid toml"):
        read_config(bad)
    flat = tmp_path / "flat.json"
    flat.write_text('{"dead-branch": 3}')
    with pytest.raises(ConfigError, match="must be a table"):
        read_config(flat)
