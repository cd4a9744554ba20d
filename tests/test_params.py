"""params.yaml is the single source of truth: bad values fail early, naming the key and what is allowed."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from char_rnn.params import ParamsError, load_params, parse_params, with_overrides
from conftest import REPO


def test_repo_params_reproduce_the_blog(repo_params):
    """Each value against the blog's own script (benchmarks/blog.py, its code as published) and the Keras
    defaults it relied on, not against literals copied from params.yaml."""
    import ast

    import keras

    from char_rnn.corpus import read_source

    script = ast.parse((REPO / "benchmarks" / "blog.py").read_text(encoding="utf-8"))
    assigned = {t.id: n.value for n in ast.walk(script) if isinstance(n, ast.Assign) for t in n.targets
                if isinstance(t, ast.Name)}  # fmt: skip
    calls = {n.func.attr: n for n in ast.walk(script) if isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute)}
    keywords = {k.arg: k.value for k in calls["SimpleRNN"].keywords}
    p = repo_params
    assert read_source(p.corpus.source, REPO).strip() == ast.literal_eval(assigned["sentence"])
    assert p.window.length == ast.literal_eval(assigned["sequencelength"]) and p.window.stride == 1  # range(0, n - L)
    assert not (p.split.val_fraction or p.split.tune_fraction or p.split.test_fraction)  # fit and evaluate on it all
    assert p.vocab.units.value == "closed"  # `set(sentence)`: one id per character of the sentence
    assert (p.model.cell.value, p.model.layers, p.model.input.value) == ("simple_rnn", 1, "one_hot")  # to_categorical
    assert p.model.units == ast.literal_eval(keywords["units"]) and p.model.ensemble == 1
    calls_on_names = [n for n in ast.walk(script) if isinstance(n, ast.Call) and n.args]
    options = [n for n in calls_on_names if isinstance(n.args[0], ast.Constant)]
    (epochs,) = (k.value for n in options if n.args[0].value == "--epochs" for k in n.keywords if k.arg == "default")
    assert p.train.epochs == ast.literal_eval(epochs)  # the post's fit(epochs=100), the script's --epochs default
    assert p.train.batch_size == 32 and "batch_size" not in {k.arg for k in calls["fit"].keywords}  # fit's default
    assert p.train.learning_rate == keras.optimizers.Adam().learning_rate  # compile(optimizer="adam")
    assert (p.train.clipnorm, p.train.early_stopping_patience, p.train.lr_schedule.value) == (0.0, 0, "constant")


@pytest.mark.parametrize(
    ("key", "value", "allowed"),
    [
        ("window.length", 0, "greater than or equal to 1"),
        ("train.epochs", -1, "greater than or equal to 1"),
        ("model.cell", "transformer", "'simple_rnn', 'lstm' or 'gru'"),
        ("model.units", "many", "valid integer"),
        ("split.val_fraction", 1.5, "less than 1"),
        ("registry.metric", "f1", "'bits_per_char', 'hybrid_bits_per_char' or 'accuracy'"),
        ("tune.dynamic_rates", [0.1, 0.0], "every rate must be > 0"),
        ("tune.dynamic_segment", 0, "greater than or equal to 1"),
    ],
)
def test_bad_value_names_key_and_what_is_allowed(repo_params, key, value, allowed):
    with pytest.raises(ParamsError) as caught:
        with_overrides(repo_params, {key: value})
    assert f"{key}:" in str(caught.value)
    assert allowed in str(caught.value)


def test_missing_and_unknown_keys_are_rejected(tmp_path: Path):
    raw = yaml.safe_load((REPO / "params.yaml").read_text(encoding="utf-8"))
    del raw["train"]["seed"]
    raw["model"]["hidden"] = 128
    with pytest.raises(ParamsError) as caught:
        parse_params(raw)
    message = str(caught.value)
    assert "train.seed: Field required" in message
    assert "model.hidden: Extra inputs are not permitted" in message


def test_unknown_override_section_is_rejected(repo_params):
    with pytest.raises(ParamsError, match="trian.epochs: unknown key"):
        with_overrides(repo_params, {"trian.epochs": 3})


def test_digest_changes_with_any_value(repo_params):
    assert repo_params.digest() == load_params(REPO / "params.yaml").digest()
    assert repo_params.digest() != with_overrides(repo_params, {"train.seed": 7}).digest()


def test_cli_rejects_bad_params_before_importing_tensorflow(tmp_path: Path):
    """`char-rnn train` with a bad file must fail in milliseconds, not after a 20 s TensorFlow import."""
    raw = yaml.safe_load((REPO / "params.yaml").read_text(encoding="utf-8"))
    raw["window"]["length"] = 0
    bad = tmp_path / "params.yaml"
    bad.write_text(yaml.safe_dump(raw, allow_unicode=True), encoding="utf-8")
    probe = (
        "import sys\n"
        "from char_rnn.cli import app\n"
        "try:\n"
        f"    app(['train', '--params', {str(bad)!r}])\n"
        "except SystemExit as exit:\n"
        "    print('exit', exit.code, 'tensorflow' in sys.modules)\n"
    )
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=tmp_path)
    assert result.stdout.strip() == "exit 1 False"
    assert "window.length: Input should be greater than or equal to 1 (got 0)" in result.stderr


def test_dynamic_evaluation_needs_a_tuning_slice_and_a_validation_tail(repo_params):
    with pytest.raises(ParamsError, match="tune.dynamic_rates needs split.val_fraction and split.tune_fraction"):
        with_overrides(repo_params, {"tune.dynamic_rates": [0.1], "split.val_fraction": 0.2})
    split = {"split.val_fraction": 0.2, "split.tune_fraction": 0.1}
    assert with_overrides(repo_params, {**split, "tune.dynamic_rates": [0.1]}).tune.dynamic_rates == [0.1]


def test_each_corpus_is_its_own_registered_model_unless_named(repo_params):
    assert repo_params.registry.model_name == "char-rnn-seed"
    assert with_overrides(repo_params, {"corpus.source": "kolaw+kobill"}).registry.model_name == "char-rnn-kolaw-kobill"
    mine = with_overrides(repo_params, {"corpus.source": "data/raw/my text.txt"})
    assert mine.registry.model_name == "char-rnn-my-text"
    named = with_overrides(repo_params, {"registry.model_name": "team-model"})
    assert with_overrides(named, {"corpus.source": "kolaw"}).registry.model_name == "team-model"  # kept


def test_the_baseline_floor_needs_test_text(repo_params):
    with pytest.raises(ParamsError, match="registry.must_beat_baseline needs split.test_fraction > 0"):
        with_overrides(repo_params, {"registry.must_beat_baseline": True})
    assert with_overrides(repo_params, {"registry.must_beat_baseline": True, "split.test_fraction": 0.1})


@pytest.mark.parametrize("name", ["params.yaml", *(f"benchmarks/configs/{c}.yaml" for c in ("kolaw", "kolaw+kobill"))])
def test_dvc_exp_run_set_param_changes_only_the_line_it_sets(tmp_path: Path, name: str):
    """`dvc exp run -S` rewrites the whole file through DVC's YAML writer: the files are written as that
    writer writes them (block lists, no quotes, empty for null), so a set param is a one-line diff."""
    from dvc.utils.hydra import apply_overrides  # what `dvc exp run -S/--set-param` runs

    before = (REPO / name).read_text(encoding="utf-8")
    copy = tmp_path / "params.yaml"
    copy.write_text(before, encoding="utf-8")
    apply_overrides(str(copy), ["train.epochs=3"])
    after = copy.read_text(encoding="utf-8").splitlines()
    changed = [(old, new) for old, new in zip(before.splitlines(), after, strict=False) if old != new]
    assert len(before.splitlines()) == len(after)
    assert [new.split("#")[0].strip() for _, new in changed] == ["epochs: 3"], changed
