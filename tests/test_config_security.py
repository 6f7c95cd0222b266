"""Configs from elsewhere cannot run code or leak secrets: ``pipe:`` sources need
``data.allow_pipe``, interpolations need ``--allow-interpolation``, and credentials in URLs and
commands are redacted from config.yaml, the W&B config and every error line."""

from __future__ import annotations

import string

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cvdist.config import ConfigError, to_dict, to_yaml, validate
from cvdist.config_loading import load_config, load_recipe_config
from cvdist.data.sharding import expand_shard_pattern
from cvdist.redact import MASK, redact, redact_text
from cvdist.tasks.supervised.config import SupervisedRunConfig
from tests.helpers.recipes import RECIPE, TINY, run_recipe

_WORD = st.text(string.ascii_letters + string.digits + "-_.~%!$'()*+,", min_size=6, max_size=20)
_HOST = st.from_regex(r"[a-z][a-z0-9-]{0,10}(\.[a-z]{2,5}){1,2}", fullmatch=True)


@settings(max_examples=200, deadline=None)
@given(user=_WORD, password=_WORD, host=_HOST, token=_WORD.filter(lambda t: not set("&#'") & set(t)),
       parameter=st.sampled_from(["token", "access_token", "X-Amz-Signature", "X-Amz-Security-Token", "sig",
                                  "api_key", "Signature", "password"]),
       scheme=st.sampled_from(["https", "http", "s3", "sftp"]))
def test_redaction_removes_every_generated_secret_and_keeps_the_rest(user, password, host, token, parameter, scheme):
    url = f"{scheme}://{user}:{password}@{host}/data/train-{{000000..000009}}.tar?{parameter}={token}&part=7"
    # (the whole line compared: a secret may also occur by chance in the parts that stay)
    assert redact_text(f"shard {url}: truncated tar") == (
        f"shard {scheme}://{MASK}@{host}/data/train-{{000000..000009}}.tar?{parameter}={MASK}&part=7: truncated tar")


def test_redaction_of_commands_and_nested_configs():
    command = "pipe:curl -s -H 'Authorization: Bearer eyJhbGciOiJIUzI1.payload' https://h.org/a.tar"
    assert "eyJhbGciOiJIUzI1" not in redact_text(command) and "https://h.org/a.tar" in redact_text(command)
    nested = {"a": ["https://u:p4ssw0rd@h.org/x", ("https://h.org/y?sig=abcdef",)], "b": 3, "c": "plain/path"}
    assert redact(nested) == {"a": [f"https://{MASK}@h.org/x", (f"https://h.org/y?sig={MASK}",)], "b": 3,
                              "c": "plain/path"}
    assert redact_text("https://h.org/a.tar?monkey=1&keys=2") == "https://h.org/a.tar?monkey=1&keys=2"


@pytest.mark.timeout(120)  # a hang bound: a quadratic pattern would take hours on these
@pytest.mark.parametrize("unit", ["a.", ";", ";x", "a://", "bearer ", "?k", "x.y-z+", "&token"])
def test_redaction_stays_linear_on_hostile_text(unit):
    """Error lines hold a hostile shard's member names (up to 1 MiB): no backtracking blow-up."""
    text = unit * (1_000_000 // len(unit)) + " https://u:pw@h.org/x"
    assert redact_text(text).endswith(f" https://{MASK}@h.org/x")


def test_config_yaml_and_wandb_config_hold_no_credentials():
    config = load_config(overrides=["data.train_shards=['https://bob:hunter22@h.org/t-{0..3}.tar']",
                                    "data.eval_shards=https://h.org/e.tar?X-Amz-Signature=deadbeef01"])
    written = to_yaml(config) + repr(to_dict(config))
    assert "hunter22" not in written and "deadbeef01" not in written
    assert f"https://{MASK}@h.org/t-{{0..3}}.tar" in written
    assert config.data.train_shards == ["https://bob:hunter22@h.org/t-{0..3}.tar"]  # the run still uses them


@pytest.mark.parametrize("override", [
    "data.train_shards=['pipe:curl -s https://h.org/a.tar']",
    "data.train_shards=['shards/a.tar::pipe:cat b.tar']",
    "data.eval_shards=pipe:cat eval.tar",
])
def test_pipe_sources_need_the_opt_in(override):
    config = load_config(overrides=[override])
    with pytest.raises(ConfigError, match=r"runs a shell command.*data\.allow_pipe=true"):
        validate(config, world_size=1)
    validate(load_config(overrides=[override, "data.allow_pipe=true"]), world_size=1)


def test_pipe_sources_are_refused_in_the_data_layer_and_logged_once_when_allowed(tmp_path, capsys):
    (tmp_path / "a.tar").write_bytes(bytes(1024))
    with pytest.raises(ValueError, match="runs a shell command"):
        expand_shard_pattern(f"{tmp_path}/a.tar::pipe:cat {tmp_path}/b.tar")
    command = f"pipe:cat {tmp_path}/shard-{{0..1}}.tar"
    for _ in range(3):
        assert expand_shard_pattern(command, allow_pipe=True) == [f"pipe:cat {tmp_path}/shard-0.tar",
                                                                  f"pipe:cat {tmp_path}/shard-1.tar"]
    logged = capsys.readouterr().out
    assert logged.count(f"cat {tmp_path}/shard-0.tar") == 1 and logged.count(f"cat {tmp_path}/shard-1.tar") == 1


def test_interpolations_are_refused_unless_allowed(tmp_path, monkeypatch):
    monkeypatch.setenv("CVDIST_TEST_SECRET", "s3cr3t-value")
    with pytest.raises(ConfigError, match=r"override 'tracking.project=.*interpolation.*--allow-interpolation"):
        load_config(overrides=["tracking.project=${oc.env:CVDIST_TEST_SECRET}"])
    yaml_file = tmp_path / "c.yaml"
    yaml_file.write_text("tracking:\n  tags: [a, 'x-${oc.env:CVDIST_TEST_SECRET}']\n")
    with pytest.raises(ConfigError, match=r"c\.yaml.*tracking\.tags\[1\]"):
        load_config(yaml_paths=[yaml_file])
    with pytest.raises(ConfigError, match="interpolation"):
        load_config(overrides=["name=${tracking.project}"])
    allowed = load_recipe_config(["--allow-interpolation", "--config", str(yaml_file)],
                                 default_yaml=RECIPE.with_suffix(".yaml"), recipe="supervised",
                                 schema=SupervisedRunConfig)
    assert allowed.tracking.tags == ["a", "x-s3cr3t-value"]
    escaped = load_config(overrides=[r"tracking.project=\${not_resolved}"])
    assert escaped.tracking.project == "${not_resolved}"


def test_a_failing_run_prints_and_writes_no_credentials(tmp_path):
    """End to end: shards behind a URL with a password (nothing listens there); the run fails
    reading them, and neither the error lines nor the run directory contain the password."""
    url = "http://bob:hunter22@127.0.0.1:9/train-{0..1}.tar"
    result = run_recipe([*TINY, f"data.train_shards=['{url}']", f"data.eval_shards={url}", "data.num_samples=64",
                         "data.max_corrupt=1000", f"output_dir={tmp_path}", "name=leak"], check=False, timeout=120)
    assert result.returncode != 0
    assert f"http://{MASK}@127.0.0.1:9/train-0.tar" in result.stdout + result.stderr
    assert "hunter22" not in result.stdout + result.stderr
    written = "".join(path.read_text(errors="replace") for path in tmp_path.rglob("*") if path.is_file())
    assert "hunter22" not in written
