"""Config dataclasses and the options generated from them: every `train` option has help and the config's default,
parsed values reach the config with its types, the JSON form round-trips (old runs' too), and `--help` stays light."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from dataclasses import fields
from pathlib import Path

import pytest

from seg2refine_core import cli
from seg2refine_core.cli.train import config_from_args
from seg2refine_core.errors import Seg2RefineError
from seg2refine_core.training.configs import (
    SFANET_VARIANTS,
    TOPOLOGY_TERMS,
    Baseline3dTrainConfig,
    Stage1TrainConfig,
    Stage2TrainConfig,
)
from seg2refine_core.training.demo_weights import DemoWeightsConfig
from seg2refine_core.training.options import option_specs

ROOT = Path(__file__).resolve().parents[1]
#: sub-command -> (config class, the options it needs)
COMMANDS = {
    "stage1": (Stage1TrainConfig, ["--data", "d", "--out", "o"]),
    "stage2": (Stage2TrainConfig, ["--data", "d", "--stage1", "s1.safetensors", "--out", "o"]),
    "baseline3d": (Baseline3dTrainConfig, ["--data", "d", "--out", "o"]),
    "demo": (DemoWeightsConfig, ["--out", "o"]),
}


def subparser(name: str) -> argparse.ArgumentParser:
    train = next(a for a in cli.build_parser()._actions if isinstance(a, argparse._SubParsersAction)).choices["train"]
    stages = next(a for a in train._actions if isinstance(a, argparse._SubParsersAction))
    return stages.choices[name]


@pytest.mark.parametrize("name", list(COMMANDS))
def test_every_option_is_a_config_field_with_help_and_its_default(name):
    config_class, _ = COMMANDS[name]
    actions = [a for a in subparser(name)._actions if not isinstance(a, argparse._HelpAction)]
    on_cli = {spec.name: spec for spec in option_specs(config_class) if spec.cli}
    assert sorted(a.dest for a in actions) == sorted(on_cli)
    for action in actions:
        spec = on_cli[action.dest]
        assert action.option_strings == [spec.flag] and action.help and action.help.startswith(spec.help[:20])
        if spec.default is not None and spec.kind is not bool and not spec.required:
            shown = " ".join(map(str, spec.default)) if spec.length else str(spec.default)
            assert action.help.endswith(f"(default: {shown})"), action.help
    assert "--help" in subparser(name).format_help()  # formats (a bare % in a help text would not)


@pytest.mark.parametrize("name", list(COMMANDS))
def test_options_left_out_give_the_dataclass_defaults(name, monkeypatch):
    config_class, needed = COMMANDS[name]
    monkeypatch.setattr(sys, "argv", ["seg2refine", "train", name, *needed])
    config = config_from_args(cli.build_parser().parse_args(["train", name, *needed]), config_class)
    required = {"data": Path("d"), "out": Path("o"), "stage1": Path("s1.safetensors")}
    kwargs = {f.name: required[f.name] for f in fields(config_class) if f.name in required}
    if any(f.name == "command" for f in fields(config_class)):
        kwargs["command"] = f"seg2refine train {name} {' '.join(needed)}"
    assert config == config_class(**kwargs)


def test_given_options_reach_the_config_with_its_types():
    args = cli.build_parser().parse_args(
        ["train", "stage1", "--data", "d", "--out", "o", "--crop", "32", "48", "--no-amp", "--compile", "--lr", "1e-3",
         "--split", "split.csv", "--variant", "unet", "--samples-per-epoch", "64", "--threads", "1"])
    config = config_from_args(args, Stage1TrainConfig)
    assert config.crop == (32, 48) and config.amp is False and config.compile is True and config.lr == 1e-3
    assert config.split == Path("split.csv") and config.variant == "unet" and config.samples_per_epoch == 64
    assert config.threads == 1
    args = cli.build_parser().parse_args(
        ["train", "stage2", "--data", "d", "--stage1", "s", "--out", "o", "--lambda", "3", "--no-delta-b0",
         "--patch", "32", "32", "48", "--topology", "cldice", "--augment", "off", "--test-fraction", "0.3"])
    config = config_from_args(args, Stage2TrainConfig)
    assert (config.lam, config.delta_b0, config.patch_size, config.topology) == (3.0, False, (32, 32, 48), "cldice")
    assert config.augment == "off" and config.test_fraction == 0.3 and config.split_seed is None
    demo = config_from_args(cli.build_parser().parse_args(["train", "demo", "--out", "w", "--cases", "4",
                                                           "--shape", "32", "64", "64"]), DemoWeightsConfig)
    assert demo.n_cases == 4 and demo.shape == (32, 64, 64) and demo.stage1_lr == 1e-3
    assert demo.augment == "default" and demo.cohort_cases == 10 and demo.cohort_matrix == 256  # the bundled recipe
    assert demo.target_spacing == (1.0, 0.7, 0.7)  # the bundled weights' canonical space
    args = cli.build_parser().parse_args(["train", "baseline3d", "--data", "d", "--out", "o", "--target-spacing",
                                          "1", "0.7", "0.7"])
    assert config_from_args(args, Baseline3dTrainConfig).target_spacing == (1.0, 0.7, 0.7)


@pytest.mark.parametrize("name", list(COMMANDS))
def test_augment_offers_the_presets_and_new_runs_use_default(name):
    from seg2refine_core.data.augment import PRESETS

    config_class, needed = COMMANDS[name]
    spec = next(spec for spec in option_specs(config_class) if spec.name == "augment")
    assert spec.choices == PRESETS and spec.flag == "--augment"
    assert spec.default == "default"
    for preset in PRESETS:
        args = cli.build_parser().parse_args(["train", name, *needed, "--augment", preset])
        assert config_from_args(args, config_class).augment == preset
    with pytest.raises(SystemExit):
        cli.build_parser().parse_args(["train", name, *needed, "--augment", "heavy"])


def test_required_options_are_named(tmp_path, capsys):
    assert cli.main(["train", "stage2", "--out", str(tmp_path / "run")]) == 2
    assert "--data and --stage1 are required (unless --resume)" in capsys.readouterr().err
    assert cli.main(["train", "stage1", "--out", str(tmp_path / "run"), "--resume"]) == 2
    assert "nothing to resume" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # argparse: --out is always required
        cli.build_parser().parse_args(["train", "stage1", "--data", "d"])
    with pytest.raises(SystemExit):  # choices come from the field
        cli.build_parser().parse_args(["train", "stage1", "--data", "d", "--out", "o", "--variant", "resnet"])


def test_json_form_round_trips_and_reads_older_runs(tmp_path):
    config = Stage1TrainConfig(data=tmp_path, out=tmp_path / "run", split=tmp_path / "s.csv", crop=(32, 48),
                               lr=1e-3, command="x")
    stored = json.loads(json.dumps(config.to_dict()))
    assert stored["crop"] == [32, 48] and stored["split"] == str(tmp_path / "s.csv")
    assert stored["preprocess"]["window_center"] == 200.0
    assert Stage1TrainConfig.from_dict({**stored, "removed_option": 1}) == config
    stage2 = Stage2TrainConfig(data=tmp_path, stage1=tmp_path / "s1", out=tmp_path / "o", patch_size=(32, 32, 32))
    assert Stage2TrainConfig.from_dict(json.loads(json.dumps(stage2.to_dict()))) == stage2
    # runs stored before the options were generated and before the augmentation presets (the weights bundled until
    # the rebuild): no threads; stage 1 stored no augment (it always flipped and rotated), stage 2 augment: true;
    # both were the recipe the 'none' preset keeps
    for made, config_class in ((config, Stage1TrainConfig), (stage2, Stage2TrainConfig)):
        old = {k: v for k, v in json.loads(json.dumps(made.to_dict())).items() if k not in ("threads", "augment")}
        if config_class is Stage2TrainConfig:
            old["augment"] = True
        again = config_class.from_dict(old).to_dict()
        assert {k: again[k] for k in old if k != "augment"} == {k: v for k, v in old.items() if k != "augment"}
        assert again["threads"] is None and again["augment"] == "none"


@pytest.mark.parametrize("config_class", [Stage1TrainConfig, Stage2TrainConfig, Baseline3dTrainConfig])
def test_older_runs_augment_switch_reads_as_a_preset(config_class, tmp_path):
    required = {"data": tmp_path, "out": tmp_path / "o"}
    if config_class is Stage2TrainConfig:
        required["stage1"] = tmp_path / "s1"
    stored = json.loads(json.dumps(config_class(**required).to_dict()))
    assert stored["augment"] == "default"
    # augment: true was today's 'none' recipe, false 'off'; a run stored before the option existed used 'none'
    for old, now in ((True, "none"), (False, "off"), ("none", "none"), ("off", "off"), ("default", "default")):
        assert config_class.from_dict({**stored, "augment": old}).augment == now
    assert config_class.from_dict({k: v for k, v in stored.items() if k != "augment"}).augment == "none"
    with pytest.raises(Seg2RefineError, match="--augment 'heavy': expected one of default, none, off"):
        config_class(**required, augment="heavy").check()


def test_run_defining_options_are_the_ones_resume_has_always_refused():
    split = {"split", "fold", "val_fraction", "test_fraction", "split_seed", "layout", "seed", "batch_size",
             "augment", "target_spacing"}
    assert set(Stage1TrainConfig.run_defining()) == split | {
        "variant", "width", "lr", "weight_decay", "samples_per_epoch", "positive_fraction", "crop", "preprocess"}
    patches = {"patch_size", "patches_per_epoch", "vessel_fraction"}
    assert set(Stage2TrainConfig.run_defining()) == split | patches | {
        "width", "disc_width", "lam", "delta_b0", "topology", "topology_weight", "lr_g", "lr_d"}
    assert set(Baseline3dTrainConfig.run_defining()) == split | patches | {
        "width", "num_res_units", "lr", "weight_decay", "preprocess"}
    assert Stage2TrainConfig.flag("lam") == "--lambda" and Stage2TrainConfig.flag("delta_b0") == "--no-delta-b0"


def test_checks_name_the_option():
    base = {"data": Path("d"), "out": Path("o")}
    for config, message in (
        (Stage1TrainConfig(**base, epochs=0), "--epochs must be >= 1"),
        (Stage1TrainConfig(**base, variant="x"), "--variant 'x'"),
        (Stage1TrainConfig(**base, crop=(8, 8)), "--crop needs two sizes"),
        (Stage2TrainConfig(**base, stage1=Path("s"), patch_size=(16, 32, 32)), "--patch needs three sides"),
        (Stage2TrainConfig(**base, stage1=Path("s"), val_fraction=1.0), r"--val-fraction must be in \[0, 1\)"),
        (Baseline3dTrainConfig(**base, vessel_fraction=1.5), r"--vessel-fraction must be in \[0, 1\]"),
        (Baseline3dTrainConfig(**base, num_workers=-1), "--num-workers must be >= 0"),
        (Stage1TrainConfig(**base, target_spacing=(1.0, 0.0, 0.7)), "--target-spacing needs three positive sizes"),
    ):
        with pytest.raises(Seg2RefineError, match=message):
            config.check()


def test_the_configs_name_what_the_networks_and_losses_offer():
    from seg2refine_core.nets.sfanet import VARIANTS
    from seg2refine_core.training import gan_losses

    assert SFANET_VARIANTS == tuple(VARIANTS) and TOPOLOGY_TERMS == gan_losses.TOPOLOGY_TERMS


def test_building_the_command_line_does_not_import_torch():
    code = "import sys; from seg2refine_core import cli; cli.build_parser(); print('torch' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                          env={"PYTHONPATH": str(ROOT / "src")})
    assert done.stdout.strip() == "False", done.stderr
