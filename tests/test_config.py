"""Config composition, validation and the errors users see."""

from __future__ import annotations

import pytest
import yaml

from mtlrec.pipeline import config
from mtlrec.pipeline.cli import main


def test_defaults_compose_and_are_typed():
    cfg = config.load()
    assert cfg.data.name == "synth" and cfg.model.arch == "mmoe" and cfg.method.name == "ew"
    assert [f.name for f in cfg.data.numeric][:2] == ["numerical_1", "numerical_2"]
    assert len(cfg.data.numeric) == 63 and len(cfg.data.categorical) == 16 + 1  # + multi-valued tags
    assert [f.name for f in cfg.data.multi_fields] == ["tags"]
    assert cfg.data.group == "country" and cfg.data.day == "day"


def test_keys_left_at_their_default_by_a_yaml_can_be_set():
    cfg = config.load(["model=mmoe", "model.n_experts=3", "trainer.threads=1"])
    assert cfg.model.n_experts == 3 and cfg.trainer.threads == 1


def test_a_key_the_architecture_does_not_use_is_an_error_naming_its_keys():
    with pytest.raises(config.ConfigError) as err:
        config.load(["model=hps", "model.n_experts=3"])
    msg = str(err.value)
    assert "model.n_experts: unknown key" in msg and "expert_hidden" in msg and "levels" not in msg


def test_dtjs_on_unsharded_torchrec_tables_is_refused_before_training():
    """Its hypergradient needs the lookup's second derivative, which EmbeddingBag lacks."""
    with pytest.raises(config.ConfigError, match="model.embedding_impl=fused"):
        config.load(["method=dtjs", "model.embedding_impl=torchrec"])
    config.load(["method=dtjs", "model.embedding_impl=torchrec", "trainer.sharding.tables=table_wise"])
    config.load(["method=dtjs"])


def test_an_unknown_top_level_key_suggests_the_key_it_resembles(capsys):
    assert main(["serve", "port=8001"]) == 2
    err = capsys.readouterr().err
    assert "port: unknown key; did you mean serve.port?" in err and "+port" not in err
    with pytest.raises(config.ConfigError, match="did you mean trainer.max_epochs"):
        config.load(["trainer.max_epoch=3"])


def test_group_choices_and_dotted_overrides():
    cfg = config.load(["data=census", "model=ple", "method=stl", "trainer.max_epochs=3",
                       "data.source.train=/logs/train.csv", "data.split.method=tail"])
    assert cfg.data.name == "census" and cfg.model.arch == "ple" and cfg.method.name == "stl"
    assert cfg.trainer.max_epochs == 3
    assert cfg.data.source.train == "/logs/train.csv"
    assert cfg.data.split.method == "tail"
    assert cfg.paths.features.endswith("features/census")


def test_unknown_key_lists_valid_keys():
    with pytest.raises(config.ConfigError) as err:
        config.load(["trainer.max_epoch=3"])
    msg = str(err.value)
    assert "trainer.max_epoch: unknown key" in msg and "max_epochs" in msg and "batch_size" in msg


def test_unknown_option_lists_available_options():
    with pytest.raises(config.ConfigError) as err:
        config.load(["model=transformer"])
    msg = str(err.value)
    assert "model/transformer" in msg
    for option in ("hps", "mmoe", "ple"):
        assert option in msg


def test_invalid_value_names_the_field_and_choices():
    with pytest.raises(config.ConfigError) as err:
        config.load(["trainer.device=tpu"])
    assert "trainer.device" in str(err.value) and "'cuda'" in str(err.value)


def test_unknown_key_inside_data_conf_names_valid_keys():
    with pytest.raises(config.ConfigError) as err:
        config.load(["data.source.seperator=x"])
    msg = str(err.value)
    assert "data.source.seperator: unknown key" in msg and "separator" in msg


def test_inconsistent_data_conf_is_explained():
    with pytest.raises(config.ConfigError, match="label columns must not also be features"):
        config.load(["data=aliexpress", "data.labels=[{name: ctr, column: categorical_1}]"])


def test_resolved_config_roundtrips_through_yaml():
    cfg = config.load(["data=census"])
    again = config.Config.model_validate(yaml.safe_load(config.to_yaml(cfg)))
    assert again == cfg


def test_cli_prints_resolved_config_and_rejects_bad_override(capsys):
    assert main(["config", "data=aliexpress", "trainer.batch_size=64"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["data"]["name"] == "aliexpress" and printed["trainer"]["batch_size"] == 64
    assert main(["config", "trainer.nope=1"]) == 2
    assert "trainer.nope: unknown key" in capsys.readouterr().err


def test_a_new_dataset_is_one_yaml_file(tmp_path):
    """A user's own log (other names, ';' separator, labels derived from other columns),
    declared in the user's own config folder, its data path relative to the file."""
    conf_dir = tmp_path / "myconf"
    (conf_dir / "data").mkdir(parents=True)
    logs = conf_dir / "data" / "shop.csv"
    rows = ["uid;item;price;viewed;bought"] + [
        f"{i};it{i % 4};{i * 1.5};{int(i % 2 == 0)};{int(i % 4 == 0)}" for i in range(40)
    ]
    logs.write_text("\n".join(rows) + "\n")
    (conf_dir / "data" / "shop.yaml").write_text(yaml.safe_dump({
        "name": "shop",
        "source": {"train": "shop.csv", "separator": ";"},
        "categorical": [{"name": "item"}],
        "numeric": [{"name": "price", "log1p": True}],
        "labels": [{"name": "ctr", "column": "viewed"},
                   {"name": "ctcvr", "all_of": ["viewed", "bought"]}],
        "id": "uid",
        "checks": {"implies": [["bought", "viewed"]]},
    }))
    assert main(["--config-dir", str(conf_dir), "ingest", "data=shop",
                 f"paths.work_dir={tmp_path / 'work'}"]) == 0
    out = tmp_path / "work" / "features" / "shop"
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert saved["data"]["name"] == "shop"
    manifest = yaml.safe_load((out / "manifest.json").read_text())
    assert manifest["rows_good"] == 40 and manifest["tasks"] == ["ctr", "ctcvr"]


def test_method_presets_compose_and_impossible_combinations_explain_why():
    dbmtl = config.load(["method=dbmtl"]).method
    assert (dbmtl.loss, dbmtl.aggregate, dbmtl.dbmtl.beta) == ("log", "dbmtl", 0.9)
    mixed = config.load(["method=mocograd", "method.loss=log", "method.name=log+mocograd",
                         "method.mocograd.lam=0.5"]).method
    assert (mixed.loss, mixed.aggregate, mixed.mocograd.lam) == ("log", "mocograd", 0.5)
    with pytest.raises(config.ConfigError, match="stl trains one model per task"):
        config.load(["method=stl", "method.aggregate=pcgrad"])
    with pytest.raises(config.ConfigError, match="task_weights only apply to weighting=fixed with aggregate=sum"):
        config.load(["method=pcgrad", "method.task_weights=[1,2]"])


def test_loss_weightings_do_not_mix_with_aggregators():
    assert config.load(["method=gls"]).method.weighting == "gls"
    with pytest.raises(config.ConfigError, match="weighting=rlw defines how the task losses combine"):
        config.load(["method=rlw", "method.aggregate=pcgrad"])


def test_training_settings_ignore_only_what_later_stages_read():
    """A benchmark asked for more seeds, or a report folder elsewhere, reuses the runs it
    finished; any setting that changes what is trained makes it train again."""
    base = config.load(["bench.seeds=1", "trainer.lr=0.001"])
    same = [["bench.seeds=3"], ["paths.reports=/elsewhere"], ["train.force=true"], ["serve.port=9000"],
            ["gate.auc_tolerance=0.5"]]
    differ = [["trainer.lr=0.003"], ["seed=1"], ["method=pcgrad"], ["synth.conflict_rho=-0.5"],
              ["model.embedding_dim=32"]]
    def settings(extra: list[str]) -> dict | None:
        return config.training_settings(config.to_yaml(config.load(["bench.seeds=1", "trainer.lr=0.001", *extra])))

    key = config.training_settings(config.to_yaml(base))
    for extra in same:
        assert settings(extra) == key, extra
    for extra in differ:
        assert settings(extra) != key, extra
    assert config.training_settings(None) is None
