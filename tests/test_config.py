import pytest
from pydantic import ValidationError

from r2p1d_batch.config import Config, ConfigError, load


def test_defaults_load_from_yaml():
    cfg = load()
    assert isinstance(cfg, Config)
    assert cfg.sampling.mode == "dense" and cfg.sampling.clip_len == 16 and cfg.sampling.fps == 15.0
    assert cfg.model.weights == "kinetics400"
    assert cfg.decode.scaler == "exact"


def test_set_overrides_parse_yaml_values():
    cfg = load(overrides=["model.weights=random", "model.batch_size=4", "model.concurrency=[1, 3]",
                          "sampling.mode=uniform", "ray.address=null"])
    assert cfg.model.weights == "random"
    assert cfg.model.batch_size == 4
    assert cfg.model.concurrency == (1, 3)
    assert cfg.sampling.mode == "uniform"
    assert cfg.ray.address is None


def test_weights_path_stays_a_string():
    assert load(overrides=["model.weights=2024"]).model.weights == "2024"
    assert load(overrides=["model.weights=s3://b/k.pth"]).model.weights == "s3://b/k.pth"


@pytest.mark.parametrize(
    "override, needle",
    [
        ("model.wieghts=random", "model.wieghts: unknown key"),
        ("nosuch.key=1", "nosuch: unknown key"),
        ("sampling.mode=sparse", "sampling.mode"),
        ("model.batch_size=0", "model.batch_size"),
        ("model.concurrency=[3, 1]", "concurrency"),
        ("decode.scaler=bicubic", "decode.scaler"),
    ],
)
def test_bad_keys_and_values_are_clear_errors(override, needle):
    with pytest.raises(ConfigError) as e:
        load(overrides=[override])
    assert needle in str(e.value)


def test_malformed_override():
    with pytest.raises(ConfigError, match="key.sub=value"):
        load(overrides=["model.weights"])


def test_profile_layers_on_defaults(tmp_path):
    p = tmp_path / "p.yaml"
    p.write_text("model:\n  batch_size: 32\n")
    cfg = load(p)
    assert cfg.model.batch_size == 32 and cfg.model.topk == 5


def test_missing_profile(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load(tmp_path / "nope.yaml")


def test_config_is_frozen():
    cfg = load()
    with pytest.raises(ValidationError, match="frozen"):
        cfg.model.batch_size = 3


def test_cpu_profile_gives_the_classifier_the_spare_core():
    from r2p1d_batch.classifying.classifier import ClipClassifier
    from r2p1d_batch.config import CONFIG_DIR
    from r2p1d_batch.planning.sizing import WRITER_CPUS

    cfg = load(CONFIG_DIR / "cpu.yaml", ["model.weights=random"])
    assert cfg.decode.num_cpus + cfg.model.num_cpus + WRITER_CPUS == 2.0  # and the writer's quarter core
    assert ClipClassifier(cfg.model).threads == 2  # round(1.5): ORT intra-op threads
