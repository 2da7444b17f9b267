import argparse
import json

import pytest

from edgegate.export.profiles import BUILTIN, DeviceProfile, ProfileError, all_profiles, get_profile


def test_builtin_targets_and_alias():
    assert set(BUILTIN) == {"cpu", "android", "jetson-orin-nano", "jetson-agx-orin"}
    assert get_profile("jetson").name == "jetson-orin-nano"
    cpu = get_profile("cpu")
    assert cpu.backends[0] == "onnxruntime" and cpu.precision == "int8" and cpu.format == "onnx"
    assert get_profile("android").backends[0] == "executorch"
    for name in ("jetson-orin-nano", "jetson-agx-orin"):
        p = get_profile(name)
        assert p.backends[0] == "tensorrt" and p.precision == "fp16"
    for p in BUILTIN.values():
        assert 0 <= p.budget < 1 and p.scope in ("encoder", "decoder", "both") and p.threads >= 1


def test_unknown_target_lists_choices():
    with pytest.raises(ProfileError, match="unknown target 'nope'.*cpu"):
        get_profile("nope")


def test_user_profiles_toml_and_json(tmp_path, monkeypatch):
    (tmp_path / "pi5.toml").write_text('name = "pi5"\nbase = "cpu"\nthreads = 4\nbudget = 0.5\nscope = "encoder"\n')
    (tmp_path / "board.json").write_text(json.dumps({"name": "board", "backends": ["onnxruntime"], "threads": 3}))
    p = get_profile(str(tmp_path / "pi5.toml"))
    assert (p.name, p.threads, p.budget, p.scope, p.backends) == ("pi5", 4, 0.5, "encoder", ("onnxruntime",))
    assert p.source.endswith("pi5.toml")
    monkeypatch.setenv("EDGEGATE_PROFILES", str(tmp_path))
    assert get_profile("board").threads == 3
    assert {"pi5", "board", "cpu"} <= set(all_profiles())


@pytest.mark.parametrize("text, match", [
    ('name = "x"\nbudget = 1.5\n', "budget"),
    ('name = "x"\nprecision = "int3"\n', "precision"),
    ('name = "x"\nwarp = 9\n', "unknown profile key"),
    ('threads = 2\n', "needs a 'name'"),
    ('name = "x"\nbase = "toaster"\n', "not a built-in"),
    ('name = [', "not a valid"),
])
def test_bad_profiles_are_one_line_errors(tmp_path, text, match):
    f = tmp_path / "p.toml"
    f.write_text(text)
    with pytest.raises(ProfileError, match=match) as info:
        get_profile(str(f))
    assert "\n" not in str(info.value)


def test_profile_round_trips_to_dict():
    p = get_profile("jetson-agx-orin")
    d = p.to_dict()
    assert DeviceProfile(**{**d, "backends": tuple(d["backends"]), "pinned": tuple(d["pinned"])}) == p


def test_profiles_command_lists_builtins(capsys):
    from edgegate.commands import profiles

    parser = argparse.ArgumentParser()
    profiles.register(parser.add_subparsers())
    args = parser.parse_args(["profiles"])
    assert args.func(args) == 0
    out = capsys.readouterr().out
    for name in BUILTIN:
        assert name in out
    assert "jetson -> jetson-orin-nano" in out
    args = parser.parse_args(["profiles", "--json"])
    args.func(args)
    assert json.loads(capsys.readouterr().out)["cpu"]["backends"] == ["onnxruntime"]
