"""Config loading and validation: every bad input fails before any work, with its own message."""

from __future__ import annotations

import importlib.util
import re
import subprocess

import pytest

from cvdist.cli import run_recipe
from cvdist.config import ConfigError, RunConfig, to_yaml, validate
from cvdist.config_loading import load_config, load_recipe_config
from cvdist.tasks.supervised.config import SupervisedRunConfig
from tests.helpers.recipes import RECIPE, REPO, TINY, clean_env, recipe_command

_spec = importlib.util.spec_from_file_location("supervised_recipe", RECIPE)
supervised = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(supervised)


def test_yaml_then_overrides_then_types(tmp_path):
    yaml_file = tmp_path / "c.yaml"
    yaml_file.write_text("optim:\n  lr: 0.3\n  name: adamw\ndist:\n  strategy: zero2\n")
    config = load_config(yaml_paths=[yaml_file], overrides=["optim.lr=0.05", "train.max_steps=7"])
    assert isinstance(config, RunConfig)
    assert config.optim.lr == 0.05 and config.optim.name == "adamw"
    assert config.dist.strategy == "zero2" and config.train.max_steps == 7
    assert "lr: 0.05" in to_yaml(config)


def test_recipe_defaults_and_config_files(tmp_path):
    extra = tmp_path / "extra.yaml"
    extra.write_text("optim:\n  lr: 0.2\n")
    config = load_recipe_config(["--config", str(extra), "name=x"], default_yaml=RECIPE.with_suffix(".yaml"),
                                recipe="supervised", schema=SupervisedRunConfig)
    assert config.optim.lr == 0.2 and config.name == "x" and config.model.name == "small_resnet"
    assert config.loss.label_smoothing == 0.1 and config.schedule.name == "onecycle"
    assert config.recipe == "supervised"


BAD_INPUTS = [
    # (overrides, world size, words the message must contain)
    (["optim.lrr=0.1"], 1, ["unknown config key", "optim.lrr", "lr", "momentum"]),
    (["nosuchsection.x=1"], 1, ["unknown config key", "nosuchsection"]),
    (["optim.lr=fast"], 1, ["optim.lr", "fast"]),
    (["train.max_steps=1.5"], 1, ["train.max_steps"]),
    (["dist.strategy=zero4"], 1, ["dist.strategy='zero4'", "'zero1'", "'zero3'"]),
    (["optim.name=adam"], 1, ["optim.name='adam'", "'adamw'", "'lars'"]),
    (["model.name=resnet7"], 1, ["model.name='resnet7'", "'resnet18'"]),
    (["data.global_batch_size=100", "optim.accum_steps=3"], 2, ["data.global_batch_size=100", "2 x 3 = 6"]),
    (["dist.strategy=none"], 2, ["dist.strategy='none'", "2 were started"]),
    (["dist.deepspeed_config=launch/deepspeed/zero2.json"], 1, ["applies to ZeRO only", "dist.strategy=zero1/zero2/zero3"]),
    (["optim.lr=-1"], 1, ["optim.lr=-1", "> 0"]),
    (["train.max_steps=0", "train.epochs=0"], 1, ["train.max_steps", "train.epochs"]),
    (["schedule.milestones=[30,10]"], 1, ["schedule.milestones", "increasing"]),
    (["checkpoint.resume=/no/such/dir"], 1, ["checkpoint.resume", "no such checkpoint"]),
    (["optim.lr"], 1, ["key=value"]),
    (["data.train_shards=[a/{0..3}.tar]"], 1, ["not valid YAML", "quote values"]),
    (["data.mean=[0.5,0.5]"], 1, ["data.mean", "model.in_channels=1"]),
]


@pytest.mark.parametrize("overrides,world_size,words", BAD_INPUTS, ids=[" ".join(b[0]) for b in BAD_INPUTS])
def test_bad_inputs_have_their_own_message(overrides, world_size, words):
    with pytest.raises(ConfigError) as caught:
        config = load_config(overrides=overrides)
        validate(config, world_size=world_size)
    message = str(caught.value)
    for word in words:
        assert word in message, f"{word!r} not in {message!r}"


def test_messages_are_distinct():
    messages = set()
    for overrides, world_size, _ in BAD_INPUTS:
        try:
            validate(load_config(overrides=overrides), world_size=world_size)
        except ConfigError as error:
            messages.add(str(error))
    assert len(messages) == len(BAD_INPUTS)


def test_half_precision_on_cpu_is_refused(tmp_path, capsys):
    code = run_recipe(supervised.main, [*TINY, f"output_dir={tmp_path}", "dist.precision=fp16"])
    assert code == 2
    assert "dist.precision=fp16 needs a GPU" in capsys.readouterr().err
    assert not (tmp_path / "supervised").exists()


def test_bad_input_through_the_recipe_exits_nonzero_and_keeps_an_existing_run(tmp_path):
    out = tmp_path / "runs"
    args = [*TINY, f"output_dir={out}", "name=kept", "train.max_steps=2"]
    first = subprocess.run(recipe_command(nproc=1) + args, cwd=REPO, env=clean_env(), capture_output=True, text=True)
    assert first.returncode == 0, first.stderr[-3000:]
    run_dir = out / "kept"
    before = {p.relative_to(run_dir): p.read_bytes() for p in run_dir.rglob("*") if p.is_file()}

    for bad in (["optim.lrr=1"], ["dist.strategy=zero9"], []):  # [] = same name again without resume
        result = subprocess.run(recipe_command(nproc=1) + args + bad, cwd=REPO, env=clean_env(),
                                capture_output=True, text=True)
        assert result.returncode == 2, result.stderr[-3000:]
        assert result.stderr.strip().splitlines()[-1].startswith("cvdist: error: ")
        assert "Traceback" not in result.stderr
    assert "already holds a run" in result.stderr and "checkpoint.resume=auto" in result.stderr
    after = {p.relative_to(run_dir): p.read_bytes() for p in run_dir.rglob("*") if p.is_file()}
    assert after == before


def test_timm_model_names_pass_validation():
    from cvdist.config import RunConfig, validate
    from cvdist.config_loading import load_config

    config = load_config(yaml_paths=[], overrides=["model.name=timm:resnet10t"], schema=RunConfig)
    validate(config, world_size=1)
    with pytest.raises(ConfigError, match="or timm:<name>"):
        validate(load_config(yaml_paths=[], overrides=["model.name=resnet7"], schema=RunConfig), world_size=1)


def _choice_fields(schema: type, prefix: str = "") -> list[tuple[str, tuple]]:
    """Every ``Literal`` field of ``schema`` and its sections: ``(dotted key, allowed values)``."""
    import dataclasses
    import typing

    found = []
    for name, hint in typing.get_type_hints(schema).items():
        if typing.get_origin(hint) is typing.Literal:
            found.append((prefix + name, typing.get_args(hint)))
        elif isinstance(hint, type) and dataclasses.is_dataclass(hint):
            found += _choice_fields(hint, prefix + name + ".")
    return found


def test_every_choice_field_of_every_task_fails_with_one_message():
    from cvdist.tasks.autoencoder.config import AutoencoderRunConfig
    from cvdist.tasks.compress.run import CompressRunConfig
    from cvdist.tasks.contrastive.config import ContrastiveRunConfig
    from cvdist.tasks.detect.config import DetectRunConfig
    from cvdist.tasks.distill.config import DistillRunConfig
    from cvdist.tasks.longtail.config import LongtailRunConfig
    from cvdist.tasks.segment.config import SegmentRunConfig

    checked = set()
    for schema in (SupervisedRunConfig, LongtailRunConfig, ContrastiveRunConfig, AutoencoderRunConfig,
                   DistillRunConfig, CompressRunConfig, DetectRunConfig, SegmentRunConfig):
        for key, allowed in _choice_fields(schema):
            expected = f"{key}='bogus' is not allowed; choose one of {', '.join(repr(a) for a in allowed)}"
            with pytest.raises(ConfigError) as error:
                load_config(schema=schema, overrides=[f"{key}=bogus"])
            assert str(error.value) == expected
            load_config(schema=schema, overrides=[f"{key}={allowed[-1]}"])  # every allowed value loads
            checked.add(key)
    # the choice fields of the shared sections and of each task are all Literal types
    assert {"data.sampling", "data.augment", "optim.name", "dist.strategy", "loss.name", "longtail.stage",
            "ssl.method", "ae.kind", "ae.vit", "kd.feature_loss", "prune.method", "report.balanced",
            "detect.architecture", "segment.head"} <= checked


RECIPE_SCHEMAS = {
    "supervised": "cvdist.tasks.supervised.config:SupervisedRunConfig",
    "longtail": "cvdist.tasks.longtail.config:LongtailRunConfig",
    "pretrain_contrastive": "cvdist.tasks.contrastive.config:ContrastiveRunConfig",
    "pretrain_autoencoder": "cvdist.tasks.autoencoder.config:AutoencoderRunConfig",
    "distill": "cvdist.tasks.distill.config:DistillRunConfig",
    "compress": "cvdist.tasks.compress.run:CompressRunConfig",
    "detect": "cvdist.tasks.detect.config:DetectRunConfig",
    "segment": "cvdist.tasks.segment.config:SegmentRunConfig",
}


@pytest.mark.parametrize("recipe", sorted(RECIPE_SCHEMAS))
def test_a_task_schema_holds_its_recipe_defaults_and_the_yaml_agrees(recipe):
    import importlib

    from cvdist.config import to_dict

    module, name = RECIPE_SCHEMAS[recipe].split(":")
    schema = getattr(importlib.import_module(module), name)
    from_schema = to_dict(load_config(schema=schema))
    from_yaml = to_dict(load_config(schema=schema, yaml_paths=[REPO / "recipes" / f"{recipe}.yaml"]))
    assert from_yaml == from_schema  # one set of defaults: the schema's, repeated in the YAML for reading
    assert sorted(path.stem for path in (REPO / "recipes").glob("*.py")) == sorted(RECIPE_SCHEMAS)


def _float_fields(schema: type, prefix: str = "") -> list[str]:
    """Every ``float`` field (scalar or list) of ``schema`` and its sections, as dotted keys."""
    import dataclasses
    import typing

    found = []
    for name, hint in typing.get_type_hints(schema).items():
        if hint is float or hint in (list[float], typing.Optional[float]):
            found.append(prefix + name)
        elif isinstance(hint, type) and dataclasses.is_dataclass(hint):
            found += _float_fields(hint, prefix + name + ".")
    return found


@pytest.mark.parametrize("recipe", sorted(RECIPE_SCHEMAS))
def test_nan_and_inf_are_refused_in_every_float_field(recipe):
    import importlib

    module, name = RECIPE_SCHEMAS[recipe].split(":")
    schema = getattr(importlib.import_module(module), name)
    keys = _float_fields(schema)
    assert keys and ("optim.lr" in keys or recipe == "compress")
    for key in keys:
        for bad in ("nan", "inf", "-inf"):
            value = f"[{bad}]" if "list" in repr(typing_hint(schema, key)) else bad
            with pytest.raises(ConfigError, match=r"must be a finite number"):
                load_config(schema=schema, overrides=[f"{key}={value}"])


def typing_hint(schema: type, key: str):
    import typing

    for part in key.split(".")[:-1]:
        schema = typing.get_type_hints(schema)[part]
    return typing.get_type_hints(schema)[key.split(".")[-1]]


@pytest.mark.parametrize("override,message", [
    ("optim.momentum=1.5", "optim.momentum=1.5 must lie in [0, 1)"),
    ("optim.betas=[0.9,1.0]", "optim.betas=[0.9, 1.0] must be two values in [0, 1)"),
    ("data.std=[0]", "data.std=[0.0] must be > 0"),
    ("schedule.milestones=[5,5]", "must be positive and strictly increasing"),
    ("schedule.milestones=[0,5]", "must be positive and strictly increasing"),
])
def test_numeric_ranges_name_the_key(override, message):
    config = load_config(overrides=[override])
    with pytest.raises(ConfigError, match=re.escape(message)):
        validate(config, world_size=1)


@pytest.mark.parametrize("word", ["off", "on", "yes", "no", "true", "False"])
def test_a_text_field_keeps_words_yaml_reads_as_booleans(word):
    config = load_config(overrides=[f"name={word}", f"tracking.project={word}"])
    assert config.name == word and config.tracking.project == word
    assert load_config(overrides=[f"dist.compile={word}"]).dist.compile is (word.lower() in ("on", "yes", "true"))
