from gbmcvr.config import PipelineConfig
from gbmcvr.fe.spec import default_spec
from gbmcvr.stages import feature_spec_of
from gbmcvr.workdir import Workdir


def test_feature_set_file_is_used_when_the_config_has_no_features_table(tmp_path):
    wd = Workdir(tmp_path)
    wd.features.mkdir()
    (wd.features / "mine.toml").write_text('[categorical]\nnative_max = 3\n\n[novelty]\nkeys = [["item"]]\n')
    spec = feature_spec_of(PipelineConfig(feature_set="mine"), wd)
    assert spec.categorical.native_max == 3 and spec.novelty.keys == (("item",),) and spec.target is None
    cfg = PipelineConfig(feature_set="other")
    assert feature_spec_of(cfg, wd) == default_spec(cfg.load_profile())
    inline = PipelineConfig(feature_set="mine", features={"count": {"columns": ["f_2"]}})
    assert feature_spec_of(inline, wd).novelty == default_spec(cfg.load_profile()).novelty  # not the file's
