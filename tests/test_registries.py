"""The name registries: one list each of losses, proxy initialisations and datasets."""

from __future__ import annotations

import typing

import pytest

from dml_study.config import ConfigError, load_config
from dml_study.data import DATASETS, dataset_info, is_dataset, list_datasets
from dml_study.losses import (
    LOSSES,
    PROXY_INITS,
    is_loss,
    is_proxy_init,
    list_losses,
    list_proxy_inits,
)
from dml_study.losses.base import ProxyInit
from dml_study.losses.so_scale import BENCHMARKS


def test_loss_registry_lists_its_classes():
    assert list_losses() == list(LOSSES)
    assert all(is_loss(name) for name in list_losses()) and not is_loss("triplet")
    assert all(cls.name == name for name, cls in LOSSES.items())


def test_every_loss_has_a_distinct_short_name_and_title():
    shorts = [cls.short_name for cls in LOSSES.values()]
    assert all(shorts) and len(set(shorts)) == len(shorts)
    assert all(cls.title for cls in LOSSES.values())
    # "adam" would read as the optimiser in run names.
    assert LOSSES["adaptive_margin"].short_name == "ada"


def test_proxy_inits_are_one_list():
    assert list_proxy_inits() == list(PROXY_INITS)
    assert typing.get_args(ProxyInit) == PROXY_INITS
    assert is_proxy_init("orthogonal") and not is_proxy_init("xavier")


def test_dataset_kinds_come_from_the_registry():
    assert list_datasets() == list(DATASETS)
    assert list_datasets(kind="benchmark") == ["cub200", "cars196", "sop", "inshop"]
    assert set(list_datasets(kind="embedded")) == {"icons", "glyphs"}
    assert dataset_info("icons").kind == "embedded" and dataset_info("sop").kind == "benchmark"
    assert is_dataset("glyphs") and not is_dataset("mnist")
    assert BENCHMARKS == tuple(list_datasets(kind="benchmark"))
    with pytest.raises(ValueError, match="unknown dataset kind"):
        list_datasets(kind="toy")


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"proxy_init": "orthgonal"},
         r"loss\.proxy_init: 'orthgonal' is not one of .*did you mean 'orthogonal'"),
        ({"loss": "proxy_anchr"}, r"loss\.name: .*did you mean 'proxy_anchor'"),
    ],
)
def test_config_checks_names_against_the_registries(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config("icons", **overrides)


def test_config_accepts_every_registered_name():
    for name in list_losses():
        assert load_config("icons", loss=name).loss.name == name
    for init in list_proxy_inits():
        assert load_config("icons", proxy_init=init).loss.proxy_init == init
