"""hpft.loggers: building a group of named nodes and ending a job's logger runs."""

from __future__ import annotations

from unittest import mock

from lightning.pytorch.loggers import CSVLogger, WandbLogger
from omegaconf import OmegaConf

from hpft.loggers import finish_loggers, instantiate_group


def test_instantiate_group_skips_empty_and_untargeted_nodes(tmp_path):
    cfg = OmegaConf.create(
        {
            "csv": {"_target_": "lightning.pytorch.loggers.CSVLogger", "save_dir": str(tmp_path), "name": "csv"},
            "wandb": None,
            "note": {"text": "not a target"},
        }
    )
    built = instantiate_group(cfg)
    assert [type(b) for b in built] == [CSVLogger]
    assert instantiate_group(None) == []


def test_finish_loggers_finishes_wandb_and_finalizes_the_rest(tmp_path):
    wandb = mock.MagicMock(spec=WandbLogger)
    csv = CSVLogger(save_dir=tmp_path, name="csv")
    csv.log_metrics({"val/needle/acc": 0.5}, step=0)
    finish_loggers([wandb, csv])
    wandb.experiment.finish.assert_called_once_with()
    wandb.finalize.assert_not_called()
    assert "val/needle/acc" in (tmp_path / "csv" / "version_0" / "metrics.csv").read_text()


def test_finish_loggers_leaves_finalizing_to_the_trainer(tmp_path):
    other = mock.MagicMock(spec=CSVLogger)
    wandb = mock.MagicMock(spec=WandbLogger)
    finish_loggers([other, wandb], finalize=False)
    other.finalize.assert_not_called()
    wandb.experiment.finish.assert_called_once_with()
