"""A killed or resumed run keeps the best model, the callbacks' memory and a consistent record."""

import csv
import json

import numpy as np
import pytest

import cnnkit
from cnnkit.callbacks import CSVLogger, EarlyStopping, JSONLinesLogger, ModelCheckpoint
from cnnkit.data import digits
from cnnkit.optim import SGD


def tiny_net(seed=0):
    from cnnkit.layers import Conv2d, Dense, Flatten, MaxPool2d, ReLU
    return cnnkit.Sequential([Conv2d(4, 3, padding=1), ReLU(), MaxPool2d(2), Flatten(), Dense(10)],
                             input_shape=(8, 8, 1), seed=seed)


def data(n, offset=0):
    x, y = digits("train").arrays()
    return x[offset:offset + n], y[offset:offset + n]


def one_label(train):
    """The same images all labelled 0: epochs trained on them make the validation loss worse."""
    x, y = train
    return x, np.zeros_like(y)


class Killed(BaseException):
    """Stands for kill -9: nothing after the point where it is raised runs."""


def callbacks(folder):
    return [ModelCheckpoint(folder / "model.safetensors"), CSVLogger(folder / "metrics.csv", append=True),
            JSONLinesLogger(folder / "metrics.jsonl", append=True)]


def fit(folder, epochs, train, resume=False, hooks=None):
    return tiny_net().fit(train, epochs=epochs, batch_size=32, optimizer=SGD(lr=0.05, momentum=0.9),
                          validation=data(128, offset=1000), callbacks=hooks or callbacks(folder), seed=1,
                          verbose=0, checkpoint=folder / "checkpoint.safetensors",
                          resume=folder / "checkpoint.safetensors" if resume else None)


def saved_val_loss(folder):
    return cnnkit.load(folder / "model.safetensors").evaluate(data(128, offset=1000))["loss"]


def test_a_resumed_run_does_not_overwrite_the_best_model_with_a_worse_epoch(tmp_path):
    good = data(512)
    fit(tmp_path, 3, good)
    history = fit(tmp_path, 5, one_label(good), resume=True)
    val_loss = history.history["val_loss"]
    assert min(val_loss[3:]) > min(val_loss[:3])   # the premise: the resumed epochs are all worse
    assert saved_val_loss(tmp_path) == pytest.approx(min(val_loss), rel=1e-5)


def test_early_stopping_patience_survives_a_resume(tmp_path):
    stopper = EarlyStopping(patience=2)
    fit(tmp_path, 3, data(256), hooks=[stopper])
    resumed = EarlyStopping(patience=2)
    history = fit(tmp_path, 10, one_label(data(256)), resume=True, hooks=[resumed])
    assert resumed._monitor.best == pytest.approx(min(history.history["val_loss"][:3]))
    assert resumed.stopped_epoch == 5 and history.epochs == [1, 2, 3, 4, 5]


@pytest.mark.parametrize("where", ["logs", "checkpoint"])
def test_a_kill_between_the_writes_loses_no_epoch_and_repeats_none(tmp_path, monkeypatch, where):
    import cnnkit.model_file as checkpoint_module   # where TrainingCheckpoint writes from
    original_log = CSVLogger.on_epoch_end
    original_save = checkpoint_module.save_training_checkpoint

    def log_then_die(self, epoch, logs):
        if epoch == 2:
            raise Killed
        original_log(self, epoch, logs)

    def save_then_die(path, model, optimizer, schedule, epoch, history, **kwargs):
        if epoch == 2:
            raise Killed
        original_save(path, model, optimizer, schedule, epoch, history, **kwargs)

    if where == "logs":
        monkeypatch.setattr(CSVLogger, "on_epoch_end", log_then_die)
    else:
        monkeypatch.setattr(checkpoint_module, "save_training_checkpoint", save_then_die)
    with pytest.raises(Killed):
        fit(tmp_path, 3, data(256))
    monkeypatch.undo()
    history = fit(tmp_path, 3, data(256), resume=True)
    rows = list(csv.DictReader((tmp_path / "metrics.csv").open()))
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [int(row["epoch"]) for row in rows] == [r["epoch"] for r in records] == [1, 2, 3]
    assert [float(row["val_loss"]) for row in rows] == pytest.approx(history.history["val_loss"])
    assert saved_val_loss(tmp_path) == pytest.approx(min(history.history["val_loss"]), rel=1e-5)


def test_fit_refuses_an_unwritable_checkpoint_before_training(tmp_path):
    (tmp_path / "file").write_text("not a folder")
    model = tiny_net()
    before = model.state_dict()["dense_1.weight"].copy()
    with pytest.raises(cnnkit.errors.ConfigError, match="checkpoint=.*cannot be written"):
        model.fit(data(64), epochs=1, verbose=0, checkpoint=tmp_path / "file" / "ckpt.safetensors")
    np.testing.assert_array_equal(model.state_dict()["dense_1.weight"], before)   # no step was taken


@pytest.mark.parametrize("call", ["fit", "evaluate"])
def test_empty_data_is_an_error_not_a_zero(call):
    x, y = data(0)
    model = tiny_net()
    with pytest.raises(cnnkit.errors.DataError, match="empty"):
        if call == "fit":
            model.fit((x, y), epochs=1, verbose=0)
        else:
            model.evaluate((x, y))


def test_integer_images_are_trained_on_as_float32():
    x, y = data(64)
    as_uint8 = np.clip(x * 16, 0, 255).astype(np.uint8)
    first, second = tiny_net(), tiny_net()
    first.fit((as_uint8, y), epochs=1, verbose=0)
    second.fit((as_uint8.astype(np.float32), y), epochs=1, verbose=0)
    for name, value in first.state_dict().items():
        assert value.dtype == np.float32
        np.testing.assert_array_equal(value, second.state_dict()[name], err_msg=name)


def test_rows_appended_to_an_older_log_keep_its_columns(tmp_path):
    path = tmp_path / "metrics.csv"
    path.write_text("epoch,loss\r\n1,0.5\r\n")   # begun before the lr column existed
    CSVLogger(path, append=True).on_epoch_end(2, {"loss": 0.25, "lr": 0.02})
    rows = list(csv.reader(path.open(newline="")))
    assert rows == [["epoch", "loss"], ["1", "0.5"], ["2", "0.25"]]
