"""Config loading, presets, overrides and validation errors (no training)."""

from __future__ import annotations

import numpy as np
import pytest
import yaml

from dml_study.config import (
    ConfigError,
    ExperimentConfig,
    config_from_dict,
    dotted_keys,
    flat_keys,
    load_config,
    parse_cli_value,
    preset_names,
    preset_path,
    replace,
    validate_against_labels,
)


def test_every_dataset_has_a_valid_preset_with_cited_sources():
    assert preset_names() == ["cars196", "cub200", "glyphs", "icons", "inshop", "sop"]
    for name in preset_names():
        cfg = load_config(name)
        assert cfg.data.dataset == name
        text = preset_path(name).read_text()
        # Every value line carries a source comment.
        for line in text.splitlines():
            if ":" in line and line.startswith("  ") and not line.strip().startswith("#"):
                assert "#" in line, f"{name}: uncited value {line.strip()!r}"


def test_paper_presets_follow_the_literature_recipe():
    cub = load_config("cub200")
    assert cub.model.backbone == "deit_small_distilled_patch16_224"
    assert cub.model.embedding_dim == 384 and cub.data.image_size == 224
    assert cub.optim.proxy_lr_mult == 100 and cub.optim.weight_decay == 1e-4
    assert cub.schedule.freeze_backbone_epochs == 1 and cub.schedule.step_epochs == 10
    assert load_config("cars196").schedule.step_epochs == 20
    assert load_config("sop").schedule.gamma == 0.25
    assert load_config("sop").eval.ks == (1, 10, 100, 1000)
    assert load_config("inshop").eval.ks == (1, 10, 20, 30, 40)
    icons = load_config("icons")
    assert icons.model.backbone == "efficientnet_lite0" and icons.data.image_size == 64


def test_resolution_order_defaults_preset_yaml_overrides(tmp_path):
    user = tmp_path / "exp.yaml"
    user.write_text(yaml.safe_dump({"optim": {"lr": 5e-4}, "loss": {"so_lambda": 0.3}}))
    cfg = load_config("cub200", yaml_path=user, so_lambda=0.7)
    assert cfg.optim.lr == 5e-4  # YAML beats the preset
    assert cfg.loss.so_lambda == 0.7  # keyword beats YAML
    assert cfg.data.batch_size == 180  # preset beats the default
    assert cfg.optim.eps == 1e-8  # default where nobody sets it


def test_flat_dotted_alias_keys_and_none_means_preset():
    a = load_config("icons", lr=0.01, loss="normsoftmax", **{"schedule.name": "step"})
    assert (a.optim.lr, a.loss.name, a.schedule.name) == (0.01, "normsoftmax", "step")
    b = load_config("icons", lr=None, embedding_dim=None)
    assert b.optim.lr == load_config("icons").optim.lr
    assert b.model.embedding_dim == load_config("icons").model.embedding_dim
    assert flat_keys()["loss"] == "loss.name" and "name" not in flat_keys()
    assert set(flat_keys().values()) == set(dotted_keys())
    # dataset can come from the overrides or the YAML file.
    assert load_config(dataset="sop").data.dataset == "sop"


def test_yaml_round_trip(tmp_path):
    cfg = load_config("inshop", so_lambda=0.2)
    path = tmp_path / "config.yaml"
    path.write_text(cfg.to_yaml())
    again = load_config(yaml_path=path)
    assert again == cfg
    assert config_from_dict(cfg.to_dict()) == cfg
    assert isinstance(again.optim.betas, tuple)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"lrr": 1.0}, r"unknown config key 'lrr'\. Did you mean lr\?.*Valid keys: .*batch_size"),
        ({"lr": -1e-4}, r"optim\.lr: must be > 0"),
        ({"so_lambda": -0.1}, r"loss\.so_lambda: must be >= 0"),
        ({"batch_size": 30, "m_per_class": 4}, r"data\.batch_size: 30 is not divisible"),
        ({"loss": "triplet"}, r"loss\.name: 'triplet' is not one of .*proxy_anchor"),
        ({"dataset": "mnist"}, r"no preset for 'mnist'; valid: \['cars196'"),
        ({"so_gram": "rows"}, r"loss\.so_gram: 'rows' is not one of 'classes', 'dims'"),
        ({"epochs": 2.5}, r"schedule\.epochs: expected an integer, got 2\.5"),
        ({"pretrained": "yes"}, r"model\.pretrained: expected true/false"),
        ({"lr": "fast"}, r"optim\.lr: expected a number"),
        ({"freeze_backbone_epochs": 9, "epochs": 3}, r"freeze_backbone_epochs: must lie in"),
        ({"device": "tpu"}, r"run\.device: 'tpu' is not one of"),
        ({"run_name": "../x"}, r"run\.run_name: '\.\./x' must be a plain directory name"),
        ({"betas": [0.9]}, r"optim\.betas: expected 2 values"),
        ({"crop_scale": [0.9, 0.1]}, r"data\.crop_scale"),
        ({"split": "valid"}, r"data\.split: 'valid' is not one of 'test', 'validation' "
                             r"\(did you mean 'validation'\?\)"),
        ({"split": "validation", "val_folds": 1}, r"data\.val_folds: must be >= 2"),
        ({"val_folds": 4, "val_fold": 4}, r"data\.val_fold: must lie in \[0, val_folds=4\)"),
        ({"val_fold": -1}, r"data\.val_fold: must lie in"),
        ({"max_train_per_class": 1}, r"data\.max_train_per_class: must be >= 2"),
        ({"max_test_per_class": 0}, r"data\.max_test_per_class: must be >= 2"),
        ({"dataset": "inshop", "max_test_per_class": 3}, r"query vs gallery"),
    ],
)
def test_invalid_configs_name_the_key_and_choices(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config(**{"dataset": "icons", **overrides})


def test_unknown_section_or_key_in_yaml(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("optimizer:\n  lr: 1\n")
    with pytest.raises(ConfigError, match=r"unknown section 'optimizer'; valid sections: data"):
        load_config("icons", yaml_path=bad)
    bad.write_text("optim:\n  learning_rate: 1\n")
    with pytest.raises(ConfigError, match=r"unknown config key 'optim\.learning_rate'"):
        load_config("icons", yaml_path=bad)


def test_yaml_1_1_exponent_strings_are_numbers(tmp_path):
    path = tmp_path / "exp.yaml"
    path.write_text("optim:\n  lr: 3e-5\n")  # PyYAML reads this as a string
    assert load_config("icons", yaml_path=path).optim.lr == 3e-5


def test_m_per_class_checked_against_the_smallest_class():
    cfg = load_config("icons", m_per_class=4, batch_size=8)
    labels = np.repeat(np.arange(5), [6, 6, 3, 6, 6])
    # Small classes are topped up with replacement by the sampler: a warning, not a refusal.
    with pytest.warns(UserWarning, match=r"m_per_class=4 is larger than the smallest .*3 images"):
        validate_against_labels(cfg, labels)
    validate_against_labels(replace(cfg, m_per_class=2, batch_size=8), labels)
    with pytest.raises(ConfigError, match=r"data\.batch_size: .* only 5 classes"):
        validate_against_labels(replace(cfg, m_per_class=2, batch_size=12), labels)


def test_cli_values_are_parsed_by_field_type():
    assert parse_cli_value("3e-5", "optim.lr") == 3e-5
    assert parse_cli_value("none", "model.embedding_dim") is None
    assert parse_cli_value("128", "model.embedding_dim") == 128
    assert parse_cli_value("[1, 2]", "eval.ks") == [1, 2]
    assert parse_cli_value("false", "model.pretrained") is False
    assert parse_cli_value("007", "run.run_name") == "007"  # strings stay strings


def test_default_run_name_is_deterministic():
    cfg: ExperimentConfig = load_config("icons", so_lambda=0.1, seed=3)
    assert cfg.default_run_name() == load_config("icons", so_lambda=0.1, seed=3).default_run_name()
    name = cfg.default_run_name()
    assert name.startswith("icons-pa-so0.1-d") and "-s3-" in name


def test_a_run_started_by_hand_and_the_study_cell_share_one_name():
    from dml_study.study.plan.grid import make_run_name

    params = {"dataset": "icons", "so_lambda": 0.1, "seed": 3, "epochs": 2}
    assert load_config("icons", so_lambda=0.1, seed=3, epochs=2).default_run_name() == \
        make_run_name(params)
    # the identity covers every setting that affects the result, and only those
    other = load_config("icons", so_lambda=0.1, seed=3, epochs=2, device="cpu", num_workers=3)
    assert other.default_run_name() == make_run_name(params)
    assert load_config("icons", so_lambda=0.1, seed=3, epochs=3).default_run_name() != \
        make_run_name(params)


def test_validation_keys_are_run_identity_and_defaults_keep_the_old_names():
    from dml_study.config import IDENTITY_OMITTED_DEFAULTS, VALIDATION_ONLY_KEYS, run_identity

    base = load_config("icons", so_lambda=0.1, seed=3)
    new_keys = set(IDENTITY_OMITTED_DEFAULTS) | VALIDATION_ONLY_KEYS
    assert new_keys == {"data.split", "data.val_folds", "data.val_fold", "data.val_seed",
                        "data.max_train_per_class", "data.max_test_per_class"}
    # A test-split run without subsets has exactly the identity (so the name) it had before
    # these keys existed: none of them is in it.
    assert not new_keys & set(run_identity(base))
    name = base.default_run_name()
    # ... whatever its (unused) fold settings
    assert load_config("icons", so_lambda=0.1, seed=3, val_fold=2, val_seed=9,
                       val_folds=5).default_run_name() == name
    # Everything else about the split is a different run.
    val = load_config("icons", so_lambda=0.1, seed=3, split="validation")
    assert {"data.split", "data.val_folds", "data.val_fold", "data.val_seed"} <= \
        set(run_identity(val))
    names = {name, val.default_run_name()}
    for kw in ({"val_fold": 1}, {"val_seed": 1}, {"val_folds": 5}, {"max_train_per_class": 4},
               {"max_test_per_class": 4}):
        names.add(load_config("icons", so_lambda=0.1, seed=3, split="validation",
                              **kw).default_run_name())
    names.add(load_config("icons", so_lambda=0.1, seed=3, max_train_per_class=4)
              .default_run_name())
    assert len(names) == 8
    assert "-val0-s3-" in val.default_run_name()
    assert "-val1-s3-" in replace(val, val_fold=1).default_run_name()


def test_a_checkpoint_from_before_the_split_keys_still_resumes():
    from dml_study.training.engine import _config_diff

    new = load_config("icons", epochs=2).to_dict()
    old = {section: dict(values) for section, values in new.items()}
    for key in ("split", "val_folds", "val_fold", "val_seed", "max_train_per_class",
                "max_test_per_class"):
        del old["data"][key]
    assert _config_diff(old, new) == []
    assert _config_diff(old, load_config("icons", epochs=2, split="validation").to_dict()) == [
        "data.split"]
